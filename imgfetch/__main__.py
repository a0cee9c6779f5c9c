"""`python -m imgfetch`: the same as the `imgfetch` command."""

from .cli import entry

entry()
