"""The process entry point: catch signals first, then load the command line."""

from __future__ import annotations

import atexit
import os
import sys
import threading

from .signals import catch_early, early_signal, ignore_from_now_on


def entry() -> None:
    """The command, with signals caught from the first instant; `main` runs it
    as the whole program (`imgfetch` and `python -m imgfetch`)."""
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


def main() -> None:
    """`entry` as the whole program, whose process then ends at once.

    The interpreter's own exit frees every module and object one by one, tens of
    milliseconds after the last image (#6) for nothing anyone sees. `entry` stays
    an ordinary function that raises SystemExit, for callers that go on after it.
    """
    code: object = 0
    try:
        entry()
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
    if isinstance(code, int):
        _end_process(code)
    raise SystemExit(code)


def _end_process(code: int) -> None:
    """Do what the interpreter's exit does that shows, then end the process; return
    (for the ordinary exit) when a thread still runs or stdout cannot be flushed,
    where that exit waits for the thread, or reports the error, as it always did."""
    current = threading.current_thread()
    if any(t is not current and not t.daemon for t in threading.enumerate()):
        return
    atexit._run_exitfuncs()  # logging's flush, among others
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and not stream.closed:
                stream.flush()
        except (OSError, ValueError):
            return
    os._exit(code)
