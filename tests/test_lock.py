"""More than one process on a data directory: the lock, and inspect-pending.

The first download is held mid-image by a gated server that answers only when the
test opens the gate, so these tests do not depend on timing or machine speed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import load_json, run_imgfetch, start_imgfetch, write_catalog

from imgfetch.testimages import image_bytes

BUSY = 3
HOLD_LIMIT = 60.0  # seconds a gated request waits at most, so nothing hangs forever


class GatedServer:
    """Serves /gate/<name>.jpg only after `release()`; `wait_hit` sees requests."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.hits: set[str] = set()
        self.hit = threading.Condition()
        gated = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.rpartition("/")[2].partition(".")[0]
                with gated.hit:
                    gated.hits.add(name)
                    gated.hit.notify_all()
                gated.gate.wait(HOLD_LIMIT)
                body = gated.body(name)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/gate/{name}.jpg"

    @staticmethod
    def body(name: str) -> bytes:
        return image_bytes(name, "jpeg", 3000)

    def wait_hit(self, *names: str, timeout: float = 30) -> None:
        with self.hit:
            ok = self.hit.wait_for(lambda: set(names) <= self.hits, timeout)
        assert ok, f"imgfetch never asked for {names}"

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def gated() -> Iterator[GatedServer]:
    srv = GatedServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.close()


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def held_download(
    tmp_path: Path, gated: GatedServer
) -> tuple[subprocess.Popen[str], Path, Path]:
    """Start a download whose two products both wait at the gate."""
    catalog = [
        {"id": "held", "main_images": [gated.url("held-1")]},
        {"id": "later", "main_images": [gated.url("later-1")], "qc_images": []},
    ]
    source = write_catalog(tmp_path / "c.json", catalog)
    data = tmp_path / "data"
    proc = start_imgfetch(
        ["download", str(source), "-d", str(data), "-w", "4", "--progress", "plain"]
    )
    gated.wait_hit("held-1", "later-1")
    assert (data / "pending_tasks.json").exists()  # written before any download
    return proc, source, data


def finish(proc: subprocess.Popen[str], gated: GatedServer, data: Path) -> None:
    """Open the gate; the first run must end normally with everything saved."""
    assert proc.poll() is None, "the first run did not wait for its images"
    gated.release()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "error" not in err.lower(), err
    assert "Mapping file saved: image_mapping.json (2 products in total)" in out
    mapping = load_json(data / "image_mapping.json")
    assert mapping == {
        "held": {"main": ["images/held/main_1.jpg"], "sku": [], "qc": []},
        "later": {"main": ["images/later/main_1.jpg"], "sku": [], "qc": []},
    }
    for pid in ("held", "later"):
        saved = (data / "images" / pid / "main_1.jpg").read_bytes()
        assert saved == gated.body(f"{pid}-1")
    assert not (data / "pending_tasks.json").exists()


@pytest.mark.parametrize("command", ["download", "resume"])
def test_second_run_on_a_busy_data_dir_exits_at_once(
    tmp_path: Path, gated: GatedServer, command: str
) -> None:
    proc, source, data = held_download(tmp_path, gated)
    try:
        before = snapshot(data)
        args = [command, str(source)] if command == "download" else [command]
        began = time.monotonic()
        second = run_imgfetch([*args, "-d", str(data), "-w", "4"], timeout=20)
        took = time.monotonic() - began
        assert second.returncode == BUSY, (second.returncode, second.stderr)
        lines = second.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert str(data) in lines[0]
        assert "another imgfetch" in lines[0]
        assert second.stdout == ""
        assert took < 15, "the second run waited for the lock"
        assert snapshot(data) == before, "the second run changed the data directory"
        finish(proc, gated, data)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # the lock is released with the first run: a third one goes ahead
    third = run_imgfetch(["resume", "-d", str(data)])
    assert third.returncode == 0, third.stderr
    assert "nothing to resume" in third.stdout


def test_inspect_pending_while_a_download_runs(
    tmp_path: Path, gated: GatedServer
) -> None:
    proc, _source, data = held_download(tmp_path, gated)
    try:
        before = snapshot(data)
        report = run_imgfetch(["inspect-pending", "-d", str(data), "--json"])
        assert report.returncode == 0, report.stderr
        summary = json.loads(report.stdout)
        assert summary["exists"] is True
        assert summary["products"] == 2
        assert summary["images"] == {"main": 2, "sku": 0, "qc": 0}
        assert summary["images_total"] == 2
        assert summary["first_ids"] == ["held", "later"]
        assert summary["pending_file"].endswith("pending_tasks.json")
        assert 0 <= summary["age_seconds"] < 60

        human = run_imgfetch(["inspect-pending", "-d", str(data)])
        assert human.returncode == 0, human.stderr
        assert "Pending tasks: 2 products" in human.stdout
        assert "held, later" in human.stdout
        assert snapshot(data) == before, "inspect-pending changed the data directory"
        finish(proc, gated, data)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    after = run_imgfetch(["inspect-pending", "-d", str(data), "--json"])
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["products"] == 0
    assert json.loads(after.stdout)["completed"] == 2


def test_a_killed_holder_does_not_leave_the_directory_locked(
    tmp_path: Path, gated: GatedServer
) -> None:
    proc, _source, data = held_download(tmp_path, gated)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    gated.release()
    result = run_imgfetch(["resume", "-d", str(data), "-w", "4"], timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Found unfinished tasks: 2 products" in result.stdout
    mapping = load_json(data / "image_mapping.json")
    assert set(mapping) == {"held", "later"}
    assert not (data / "pending_tasks.json").exists()
