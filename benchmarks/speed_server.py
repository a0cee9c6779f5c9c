"""nginx on 127.0.0.1 serving generated images, optionally after a fixed delay.

The speed benchmark needs a server that is never the bottleneck: nginx with
sendfile and no access log answers tens of thousands of small requests a second
on one core. Delays come from the echo module (Debian's libnginx-mod-http-echo):
`echo_sleep` parks the request on a timer and `echo_exec` then hands it to the
static location, so a thousand delayed requests cost nginx next to nothing. A
Python delaying proxy would have been the bottleneck it is meant to simulate.

URL layout (one server, several behaviours):

- `/i/<name>NN.jpg`: the image body number NN (the last two digits of the name);
- `/d/<name>NN.jpg`: the same body after the configured delay;
- `/s/<name>NN.jpg`: the same body after an hour (a server that never answers).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
BODIES = 100  # distinct image bodies; a URL picks one by its last two digits
STUCK_SECONDS = 3600

_CONFIG = """\
{load_module}
daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    open_file_cache max=1024 inactive=600s;
    types {{ image/jpeg jpg; }}
    default_type image/jpeg;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root}/www;
        location ~ "^/i/.*(\\d\\d)\\.jpg$" {{ try_files /b/$1.jpg =404; }}
{delayed}
        location / {{ return 404; }}
    }}
}}
"""

_DELAYED = """\
        location ~ "^/d/(?<rest>.*)$" {{ echo_sleep {delay}; echo_exec /i/$rest; }}
        location ~ "^/s/(?<rest>.*)$" {{ echo_sleep {stuck}; echo_exec /i/$rest; }}
"""


class ServerError(RuntimeError):
    """nginx is missing or did not start."""


def jpeg_body(number: int, size: int) -> bytes:
    """A decodable 64x64 JPEG padded to `size` bytes with comment segments.

    Decodable so that a tool which decodes (img2dataset) can save it too; without
    Pillow the body is imgfetch's JPEG-looking test body, which only sniffs.
    """
    try:
        from PIL import Image
    except ImportError:
        from imgfetch.testimages import image_bytes

        return image_bytes(f"bench-{number}", "jpeg", size)
    red, green, blue = hashlib.sha256(str(number).encode()).digest()[:3]
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (red, green, blue)).save(buffer, "JPEG", quality=90)
    picture = buffer.getvalue()
    padding = b""
    seed = hashlib.sha256(f"pad-{number}".encode()).digest()
    while len(picture) + len(padding) + 4 <= size:
        # A COM segment: marker, 2-byte length that counts itself, payload.
        room = min(size - len(picture) - len(padding) - 4, 65533)
        payload = (seed * (room // len(seed) + 1))[:room]
        padding += b"\xff\xfe" + (room + 2).to_bytes(2, "big") + payload
    return picture[:2] + padding + picture[2:]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def nginx_binary() -> str | None:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    return found


class Nginx:
    """A foreground nginx in a temporary folder; use as a context manager."""

    def __init__(
        self, *, image_size: int, delay: float, workdir: Path | None = None
    ) -> None:
        binary = nginx_binary()
        if binary is None:
            raise ServerError("nginx is not installed (apt-get install -y nginx)")
        self.binary = binary
        self.image_size = image_size
        self.delay = delay
        self.root = Path(tempfile.mkdtemp(prefix="speed-nginx-", dir=workdir))
        # Started by root, nginx's workers run as an unprivileged user: they must
        # be able to read the bodies in this otherwise private folder.
        self.root.chmod(0o755)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def delays(self) -> bool:
        return ECHO_MODULE.exists()

    def url(self, kind: str, name: str) -> str:
        """URL of image `name` (must end in two digits) under /i/, /d/ or /s/."""
        return f"http://127.0.0.1:{self.port}/{kind}/{name}.jpg"

    def url_maker(self, kind: str) -> Callable[[str], str]:
        return lambda name: self.url(kind, name)

    def __enter__(self) -> Nginx:
        self._write_files()
        self.process = subprocess.Popen(
            [self.binary, "-p", f"{self.root}/", "-c", str(self.root / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ fails
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown of nginx
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def _write_files(self) -> None:
        bodies = self.root / "www" / "b"
        bodies.mkdir(parents=True)
        (self.root / "tmp").mkdir()
        for number in range(BODIES):
            body = jpeg_body(number, self.image_size)
            (bodies / f"{number:02d}.jpg").write_bytes(body)
        delayed = ""
        if self.delays:
            delayed = _DELAYED.format(delay=f"{self.delay:g}", stuck=STUCK_SECONDS)
        load = f"load_module {ECHO_MODULE};" if self.delays else ""
        config = _CONFIG.format(
            load_module=load, root=self.root, port=self.port, delayed=delayed
        )
        (self.root / "nginx.conf").write_text(config)

    def _wait_ready(self) -> None:
        assert self.process is not None
        probe = self.url("i", "ready00")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read() if self.process.stderr else b""
                raise ServerError(f"nginx exited: {stderr.decode(errors='replace')}")
            try:
                with urllib.request.urlopen(probe, timeout=1) as response:
                    if len(response.read()) == self.image_size:
                        return
            except OSError:
                time.sleep(0.05)
        raise ServerError(f"nginx did not answer {probe} within 10 s")


def nginx_version() -> str:
    binary = nginx_binary()
    if binary is None:
        return "not installed"
    done = subprocess.run([binary, "-v"], capture_output=True, text=True)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


def client_connections(port: int) -> int:
    """Established TCP connections to 127.0.0.1:`port`, counted at the client end."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()
                remote_port = int(fields[2].rpartition(":")[2], 16)
                if remote_port == port and fields[3] == "01":  # 01: ESTABLISHED
                    count += 1
    return count
