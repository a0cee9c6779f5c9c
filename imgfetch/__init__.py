"""imgfetch: download every image of a product catalog, safe against interrupts."""

__version__ = "0.1.0"
