"""The downloaders under test: how each is installed, invoked and measured.

Every tool gets the same URLs, the same concurrency and an empty output folder;
a run is measured from outside the process: wall time, user + system CPU of the
process and the children it waited for (`os.wait4`), and the peak resident set of
the largest process of that tree. A run that did not save every image is an
error, never a number.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
TOOLS = ("imgfetch", "wget2", "aria2c", "img2dataset")
APT_PACKAGES = {"wget2": "wget2", "aria2c": "aria2"}
IMG2DATASET_VENV = Path(
    os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
    "imgfetch-bench",
    "img2dataset-venv",
)
IMG2DATASET_INSTALL_TIMEOUT = 600  # seconds; "installs within a few minutes"
CATEGORIES = (("main_images", 4), ("sku_images", 1), ("qc_images", 1))
IMAGES_PER_PRODUCT = sum(count for _field, count in CATEGORIES)


class ToolError(RuntimeError):
    """A tool is missing, failed, or did not save every image."""


@dataclass
class Workload:
    """One list of images, as a catalog for imgfetch and a URL list for the rest."""

    folder: Path
    urls: list[str]
    catalog: Path
    url_list: Path

    @property
    def images(self) -> int:
        return len(self.urls)


def make_workload(
    folder: Path, products: int, url_of: Callable[[str], str], prefix: str = "p"
) -> Workload:
    """`products` products of IMAGES_PER_PRODUCT images each, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    urls: list[str] = []
    catalog = folder / "catalog.jsonl"
    with catalog.open("w") as out:
        for number in range(products):
            pid = f"{prefix}{number:07d}"
            record: dict[str, object] = {"id": pid}
            slot = 0
            for field, count in CATEGORIES:
                links = []
                for _ in range(count):
                    # Unique basenames (wget2 and aria2c save by basename) that
                    # end in two digits, which pick the body nginx serves.
                    links.append(url_of(f"{pid}-{slot}{number % 10}"))
                    slot += 1
                record[field] = links
                urls += links
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
    url_list = folder / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n")
    return Workload(folder, urls, catalog, url_list)


@dataclass
class Run:
    tool: str
    workers: int
    images: int
    wall: float
    cpu: float  # user + system seconds, the process tree
    peak_mb: float
    saved: int
    exit_code: int

    @property
    def rate(self) -> float:
        return self.saved / self.wall

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu / max(self.saved, 1) * 1000


# -- commands ------------------------------------------------------------------


def imgfetch_command(
    work: Workload,
    out: Path,
    workers: int,
    *,
    backend: str = "json",
    grace: float | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    command = [
        str(VENV_BIN / "imgfetch"),
        "download",
        str(work.catalog),
        "--data-dir",
        str(out),
        "--workers",
        str(workers),
        # One host serves everything here: without this the default politeness
        # (4 connections per host) would cap the concurrency the others get.
        "--per-host",
        str(workers),
        "--progress",
        "none",
        "--lang",
        "en",
        "--backend",
        backend,
    ]
    if grace is not None:
        command += ["--grace-period", f"{grace:g}"]
    return command + list(extra)


def wget2_command(work: Workload, out: Path, workers: int) -> list[str]:
    return [
        "wget2",
        "--no-config",
        f"--max-threads={workers}",
        "--input-file",
        str(work.url_list),
        "--directory-prefix",
        str(out),
        "--quiet",
        "--progress=none",
        "--robots=off",
        "--tries=1",
        "--no-tcp-fastopen",
    ]


def aria2c_command(work: Workload, out: Path, workers: int) -> list[str]:
    return [
        "aria2c",
        "--no-conf",
        "--input-file",
        str(work.url_list),
        f"--max-concurrent-downloads={workers}",
        "--max-connection-per-server=1",
        "--split=1",
        "--dir",
        str(out),
        "--quiet",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--file-allocation=none",
        "--remote-time=false",
        "--max-tries=1",
        "--summary-interval=0",
    ]


def img2dataset_command(work: Workload, out: Path, workers: int) -> list[str]:
    # Processes like its docs recommend (one per core), threads to make up the
    # same concurrency as the others; no resizing, no re-encoding, no EXIF.
    processes = min(os.cpu_count() or 1, workers)
    return [
        str(IMG2DATASET_VENV / "bin" / "img2dataset"),
        "--url_list",
        str(work.url_list),
        "--input_format",
        "txt",
        "--output_folder",
        str(out),
        "--output_format",
        "files",
        "--processes_count",
        str(processes),
        "--thread_count",
        str(max(1, workers // processes)),
        "--resize_mode",
        "no",
        "--disable_all_reencoding",
        "True",
        "--extract_exif",
        "False",
        "--compute_hash",
        "None",
        "--retries",
        "0",
        "--timeout",
        "30",
        "--number_sample_per_shard",
        "1000",
        "--enable_wandb",
        "False",
        "--distributor",
        "multiprocessing",
    ]


COMMANDS: dict[str, Callable[[Workload, Path, int], list[str]]] = {
    "imgfetch": imgfetch_command,
    "wget2": wget2_command,
    "aria2c": aria2c_command,
    "img2dataset": img2dataset_command,
}


def saved_images(tool: str, out: Path) -> int:
    """Images the tool saved under `out` (its own bookkeeping files excluded)."""
    if not out.exists():
        return 0
    count = 0
    for _folder, _dirs, files in os.walk(out):
        count += sum(1 for name in files if name.endswith(".jpg"))
    return count


# -- running and measuring -----------------------------------------------------


@dataclass
class Finished:
    wall: float
    cpu: float
    peak_mb: float
    exit_code: int


def wait_measured(process: subprocess.Popen[bytes], began: float) -> Finished:
    """Reap `process` with wait4, which reports its own resource use."""
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    return Finished(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        peak_mb=usage.ru_maxrss / 1024,  # kilobytes on Linux
        exit_code=process.returncode,
    )


def start(command: list[str], log: Path) -> tuple[subprocess.Popen[bytes], float]:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1")
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(name, None)
    with log.open("ab") as sink:
        sink.write(("$ " + " ".join(command) + "\n").encode())
        sink.flush()
        began = time.monotonic()
        process = subprocess.Popen(
            command, stdout=sink, stderr=sink, stdin=subprocess.DEVNULL, env=env
        )
    return process, began


def run_tool(tool: str, work: Workload, out: Path, workers: int, log: Path) -> Run:
    """One measured run of `tool` into the empty folder `out`; checks every image."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.sync()  # the previous run's dirty pages must not be written during this one
    process, began = start(COMMANDS[tool](work, out, workers), log)
    done = wait_measured(process, began)
    saved = saved_images(tool, out)
    if saved != work.images:
        raise ToolError(
            f"{tool} saved {saved} of {work.images} images (exit {done.exit_code}); "
            f"see {log}"
        )
    return Run(
        tool,
        workers,
        work.images,
        done.wall,
        done.cpu,
        done.peak_mb,
        saved,
        done.exit_code,
    )


def wait_until(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float
) -> None:
    """Wait until `ready()` or `timeout`; the process must still be running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None and not ready():
        time.sleep(0.02)
    if process.poll() is not None:
        raise ToolError(f"the process ended before the interrupt ({process.args!r})")


# -- installing ----------------------------------------------------------------


def ensure_apt(binaries: Sequence[str], packages: Sequence[str], install: bool) -> None:
    """Install Debian packages when one of `binaries` is missing (root only)."""
    missing = [b for b in binaries if shutil.which(b, path=_SBIN_PATH) is None]
    if not missing:
        return
    if not install:
        raise ToolError(
            f"missing {', '.join(missing)}; apt-get install -y "
            f"{' '.join(packages)} (or drop --no-install)"
        )
    if os.geteuid() != 0:
        raise ToolError(
            f"missing {', '.join(missing)}; as root: apt-get install "
            f"-y {' '.join(packages)}"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"installing {' '.join(packages)} with apt-get ...", file=sys.stderr)
    if subprocess.run(["apt-get", "install", "-y", *packages], env=env).returncode:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", *packages], env=env, check=True)


_SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def ensure_img2dataset(install: bool) -> str | None:
    """None when img2dataset is ready, else why it is left out."""
    binary = IMG2DATASET_VENV / "bin" / "img2dataset"
    if binary.exists():
        return None
    if not install:
        return "not installed (run without --no-install to try)"
    print(f"installing img2dataset into {IMG2DATASET_VENV} ...", file=sys.stderr)
    began = time.monotonic()
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(IMG2DATASET_VENV)], check=True
        )
        subprocess.run(
            [str(IMG2DATASET_VENV / "bin" / "pip"), "install", "-q", "img2dataset"],
            check=True,
            timeout=IMG2DATASET_INSTALL_TIMEOUT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(IMG2DATASET_VENV, ignore_errors=True)
        return (
            f"did not install from PyPI within {IMG2DATASET_INSTALL_TIMEOUT} s ({exc})"
        )
    print(f"img2dataset installed in {time.monotonic() - began:.0f} s", file=sys.stderr)
    return None


def versions() -> dict[str, str]:
    """One line per tool: what exactly was measured."""
    found: dict[str, str] = {}
    probes = {
        "imgfetch": [str(VENV_BIN / "imgfetch"), "version"],
        "wget2": ["wget2", "--version"],
        "aria2c": ["aria2c", "--version"],
        "img2dataset": [
            str(IMG2DATASET_VENV / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('img2dataset'))",
        ],
    }
    for tool, command in probes.items():
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            found[tool] = "not installed"
            continue
        lines = (done.stdout or done.stderr).strip().splitlines()
        found[tool] = lines[0] if lines else "unknown"
    return found
