"""The process entry point: catch signals first, then load the command line."""

from __future__ import annotations

from .signals import catch_early, early_signal, ignore_from_now_on


def entry() -> None:
    """`imgfetch` and `python -m imgfetch` start here."""
    catch_early()
    try:
        from .cli import entry as run_cli  # the heavy imports happen here

        signum = early_signal()
        if signum is not None:
            # Stopped before anything was read or written: leave with the
            # shell's code.
            raise SystemExit(128 + signum)
        run_cli()
    finally:
        # The exit code is decided; a signal from here on must not change it.
        ignore_from_now_on()
