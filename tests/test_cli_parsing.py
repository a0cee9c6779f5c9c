"""The command line's own conversion of option values (a start-up cost, #6):
the same values and the same errors as typer's, without importing pydantic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imgfetch import cli

# Each argv touches other kinds of parameter: paths, choices, whole and decimal
# numbers through parsers, repeatable options, flags, and values typer refuses.
ARGVS = [
    ["download", "c.json"],
    ["download", "c.json", "--data-dir", "d", "--workers", "8", "--per-host", "2"],
    ["download", "c.json", "--backend", "sqlite", "--progress", "plain"],
    ["download", "c.json", "--lang", "zh", "--field", "main=pics", "--field", "qc=q"],
    ["download", "c.json", "--header", "X-A: b", "--header", "X-C: d", "--original"],
    ["download", "c.json", "--rate", "2.5", "--deadline", "30", "--skip-invalid"],
    ["download", "c.json", "--referer", "https://shop.example/", "--verbose"],
    ["download", "c.json", "--backend", "redis-ish"],  # checked later, by name
    ["resume", "--data-dir", "d", "--grace-period", "0.5", "--retries", "0"],
    ["inspect-pending", "--data-dir", "d", "--backend", "markers"],
    ["failures", "--data-dir", "d", "--json"],
    ["migrate", "--from", "json", "--to", "markers", "--data-dir", "d"],
    ["demo", "--dir", "x", "--products", "5"],
]
REFUSED = [  # the message must be typer's
    ["download", "c.json", "--progress", "fancy"],
    ["download", "c.json", "--workers", "many"],
    ["download", "c.json", "--lang", "fr"],
    ["download", "c.json", "--rate", "fast"],
]


def parsed(argv: list[str]) -> dict[str, Any] | str:
    """The values the command would be called with, or the error typer gives."""
    group = cli._click_command(argv)
    try:
        with group.make_context("imgfetch", list(argv)) as ctx:
            # The command's name and arguments, as the group's invoke finds them.
            left = [*ctx._protected_args, *ctx.args]
            name, command, rest = group.resolve_command(ctx, left)
            with command.make_context(name, rest, parent=ctx) as sub:
                return dict(sub.params)
    except Exception as exc:  # noqa: BLE001 - compared as text
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("argv", ARGVS, ids=[" ".join(a) for a in ARGVS])
def test_values_are_typers_own(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli._DIRECT, "this typer has none of the internals the fast path uses"
    direct = parsed(argv)
    monkeypatch.setattr(cli, "_DIRECT", False)
    own = parsed(argv)
    assert isinstance(own, dict), own
    assert direct == own


@pytest.mark.parametrize("argv", REFUSED, ids=[" ".join(a) for a in REFUSED])
def test_errors_are_typers_own(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = parsed(argv)
    monkeypatch.setattr(cli, "_DIRECT", False)
    own = parsed(argv)
    assert isinstance(own, str), own
    assert direct == own


def test_a_download_starts_without_importing_pydantic(tmp_path: Path) -> None:
    catalog = tmp_path / "c.json"
    catalog.write_text('[{"id": "p1", "main_images": []}]')
    script = (
        "import sys\n"
        "from imgfetch import cli\n"
        f"code = cli.main(['download', {str(catalog)!r}, '--data-dir',"
        f" {str(tmp_path / 'data')!r}, '--progress', 'none', '--workers', '3',"
        " '--header', 'X-A: b', '--lang', 'en'])\n"
        "print(code, 'pydantic' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "0 False"
