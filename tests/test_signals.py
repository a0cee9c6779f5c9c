"""Signals that arrive before the engine runs: recorded, never a default death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from imgfetch import signals
from imgfetch.signals import SignalWatcher, catch_early


def test_a_watcher_takes_over_signals_recorded_before_it() -> None:
    previous = {sig: signal.getsignal(sig) for sig in signals.WATCHED}
    try:
        catch_early()
        os.kill(os.getpid(), signal.SIGTERM)  # handled before os.kill returns
        with SignalWatcher() as watcher:
            assert watcher.triggered.is_set()
            assert watcher.first_signal == signal.SIGTERM
            assert watcher.exit_code == 143
        assert signals.early_signal() is None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_launcher_exits_with_the_shells_code_for_a_signal_during_imports() -> None:
    # The signal lands after catch_early and before the CLI is loaded, the window
    # the launcher exists for; the launcher must not run the command at all.
    script = (
        "import os, signal, sys\n"
        "from imgfetch import signals\n"
        "signals.catch_early()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.argv = ['imgfetch', 'version']\n"
        "from imgfetch.launch import entry\n"
        "entry()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 130
    assert result.stdout == ""  # `version` never ran
    assert "Traceback" not in result.stderr
