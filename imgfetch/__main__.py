"""`python -m imgfetch`: the same as the `imgfetch` command."""

from .launch import main

main()
