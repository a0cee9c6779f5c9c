"""`imgfetch demo`: the newcomer's first run works offline, and resumes."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

from conftest import interrupt, run_imgfetch, start_imgfetch, wait_for_progress


def test_demo_downloads_its_catalog(tmp_path: Path) -> None:
    result = run_imgfetch(
        ["demo", "--dir", str(tmp_path), "--products", "6", "--delay", "0"]
    )
    assert result.returncode == 0, result.stderr
    catalog = json.loads((tmp_path / "catalog.json").read_text())
    mapping = json.loads((tmp_path / "data_clean" / "image_mapping.json").read_text())
    assert set(mapping) == {str(p["id"]) for p in catalog}
    saved = [
        path for entry in mapping.values() for paths in entry.values() for path in paths
    ]
    assert saved and all((tmp_path / "data_clean" / p).is_file() for p in saved)
    assert "All tasks completed" in result.stdout


def test_interrupted_demo_resumes_on_its_old_port(tmp_path: Path) -> None:
    proc = start_imgfetch(
        ["demo", "--dir", str(tmp_path), "--products", "30", "--delay", "0.2"]
    )
    wait_for_progress(tmp_path / "data_clean", 3)
    code, out, _err = interrupt(proc, signal.SIGINT)
    assert code == 130
    assert (tmp_path / "data_clean" / "pending_tasks.json").exists()

    result = run_imgfetch(["demo", "--dir", str(tmp_path), "--delay", "0"])
    assert result.returncode == 0, result.stderr
    assert "Found unfinished tasks" in result.stdout
    assert not (tmp_path / "data_clean" / "pending_tasks.json").exists()
    old_port = out.split("127.0.0.1:")[1].split(";")[0]
    assert f"127.0.0.1:{old_port};" in result.stdout


def test_a_busy_port_named_on_the_command_line_is_a_usage_error(
    tmp_path: Path,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_imgfetch(["demo", "--dir", str(tmp_path), "--port", str(port)])
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
