"""Durable writes and the clean-up of temporary files a killed run left behind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from imgfetch import fsutil
from imgfetch.fsutil import (
    atomic_write_bytes,
    fsync_dir,
    remove_stale_temp_files,
    temp_file_beside,
)
from imgfetch.paths import is_temp_name


def temps(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".imgfetch-*.tmp"))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ------------------------------------------------------- atomic_write_bytes


def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "image_mapping.json"
    atomic_write_bytes(target, b'{"a": 1}')
    assert target.read_bytes() == b'{"a": 1}'
    atomic_write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}"  # shorter: no tail of the old content
    atomic_write_bytes(target, b"")
    assert target.read_bytes() == b""
    assert sorted(os.listdir(tmp_path)) == ["image_mapping.json"]


def test_atomic_write_readers_see_old_or_new(tmp_path: Path) -> None:
    # The file is replaced, never rewritten in place: an open reader keeps the
    # old content whole while the path already holds the new one.
    target = tmp_path / "pending_tasks.json"
    atomic_write_bytes(target, b"old" * 1000)
    with open(target, "rb") as reader:
        atomic_write_bytes(target, b"new")
        assert reader.read() == b"old" * 1000
    assert target.read_bytes() == b"new"
    assert temps(tmp_path) == []


def test_atomic_write_large(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    atomic_write_bytes(tmp_path / "big.bin", data)
    assert (tmp_path / "big.bin").read_bytes() == data


def test_atomic_write_failure_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "image_mapping.json"
    atomic_write_bytes(target, b"precious")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["image_mapping.json"]


def test_atomic_write_to_a_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "nope" / "x.json", b"x")
    assert not (tmp_path / "nope").exists()


def test_atomic_write_long_file_name(tmp_path: Path) -> None:
    # A final name near the 255-byte limit still gets a temporary file.
    for name in ("n" * 250 + ".json", "商" * 80 + ".jpg"):  # 245 bytes in UTF-8
        target = tmp_path / name
        atomic_write_bytes(target, b"data")
        assert target.read_bytes() == b"data"
    assert temps(tmp_path) == []


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what any program of this user creates


def test_atomic_write_mode_is_the_process_file_mode(tmp_path: Path) -> None:
    # Not a private 0600; replacing a 0600 file gives the normal mode too.
    target = tmp_path / "x.json"
    target.write_bytes(b"")
    os.chmod(target, 0o600)
    atomic_write_bytes(target, b"x")
    assert mode_of(target) == FILE_MODE
    assert FILE_MODE & 0o600 == 0o600  # the owner can always read and write


_UMASK_SCRIPT = """
import os, sys
from pathlib import Path
os.umask(int(sys.argv[1], 8))
from imgfetch.fsutil import atomic_write_bytes, temp_file_beside, commit
target = Path(sys.argv[2])
atomic_write_bytes(target / "state.json", b"{}")
with temp_file_beside(target / "main_1.jpg") as (handle, temp):
    handle.write(b"img")
    commit(handle, temp, target / "main_1.jpg")
print(oct(os.stat(target / "state.json").st_mode & 0o777))
print(oct(os.stat(target / "main_1.jpg").st_mode & 0o777))
print(oct(os.umask(0)))
"""


@pytest.mark.parametrize(
    ("umask", "mode"),
    [("022", 0o644), ("027", 0o640), ("077", 0o600), ("002", 0o664)],
)
def test_mode_respects_umask(tmp_path: Path, umask: str, mode: int) -> None:
    # A fresh process per umask, as a user's shell would start imgfetch.
    out = subprocess.run(
        [sys.executable, "-c", _UMASK_SCRIPT, umask, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert [int(x, 8) for x in out] == [mode, mode, int(umask, 8)]
    assert mode_of(tmp_path / "state.json") == mode
    assert mode_of(tmp_path / "main_1.jpg") == mode


# --------------------------------------------------------- temp_file_beside


def test_temp_file_beside_is_in_the_same_folder_with_a_temp_name(
    tmp_path: Path,
) -> None:
    final = tmp_path / "p1" / "main_1.jpg"
    final.parent.mkdir()
    with temp_file_beside(final) as (handle, temp):
        assert temp.parent == final.parent  # same file system: rename is atomic
        assert is_temp_name(temp.name)
        assert temps(tmp_path) == [temp]
        handle.write(b"x")
        fsutil.commit(handle, temp, final)
    assert final.read_bytes() == b"x"
    assert temps(tmp_path) == []


def test_temp_file_beside_removed_on_error(tmp_path: Path) -> None:
    final = tmp_path / "main_1.jpg"
    final.write_bytes(b"kept")
    with pytest.raises(RuntimeError), temp_file_beside(final) as (handle, _temp):
        handle.write(b"half")
        raise RuntimeError("network gone")
    assert final.read_bytes() == b"kept"
    assert temps(tmp_path) == []


def test_temp_file_beside_removed_on_keyboard_interrupt(tmp_path: Path) -> None:
    final = tmp_path / "main_1.jpg"
    with pytest.raises(KeyboardInterrupt), temp_file_beside(final) as (handle, _t):
        handle.write(b"half")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_temp_file_beside_without_commit_leaves_nothing(tmp_path: Path) -> None:
    # A block that ends without commit (an early return) keeps no file at all.
    final = tmp_path / "main_1.jpg"
    with temp_file_beside(final) as (handle, _temp):
        handle.write(b"x")
    assert os.listdir(tmp_path) == []


def test_fsync_dir_tolerates_missing_and_non_folders(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    fsync_dir(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    fsync_dir(tmp_path / "file")


# --------------------------------------------------- remove_stale_temp_files


OURS = [
    ".imgfetch-main_1.jpg.a1b2c3.tmp",
    "p1/.imgfetch-main_1.jpg.k2j3h4.tmp",
    "p1/.imgfetch-sku_2.webp.zzzzzz.tmp",
    "p2/deep/.imgfetch-x.tmp",
    ".imgfetch-dir.tmp/.imgfetch-inner.tmp",
    "p3/.imgfetch-.tmp",
]
NOT_OURS = [
    "p1/main_1.jpg",
    "p1/main_1.jpg.tmp",  # the user's own temporary file
    "p1/imgfetch-main_1.tmp",  # no leading dot
    "p1/.imgfetch-main_1.tmp.bak",  # does not end in .tmp
    "p1/.imgfetch.lock",  # the data directory's lock
    "p1/.imgfetch-lock",
    "p1/x.imgfetch-y.tmp",
    "p1/.IMGFETCH-A.TMP",
    "p1/.hidden",
    "p2/a.tmp",
    ".imgfetch-dir.tmp/inside.jpg",  # a folder with a temp-like name is kept
]


def _touch_all(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())


def _all_files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() or p.is_symlink()
    }


def test_remove_stale_removes_only_imgfetch_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _touch_all(root, OURS + NOT_OURS)
    assert remove_stale_temp_files(root) == len(OURS)
    assert _all_files(root) == set(NOT_OURS)
    for name in NOT_OURS:
        assert (root / name).read_bytes() == name.encode()  # untouched
    assert (root / ".imgfetch-dir.tmp").is_dir()
    assert remove_stale_temp_files(root) == 0  # nothing left to do


def test_remove_stale_on_missing_or_empty_root(tmp_path: Path) -> None:
    assert remove_stale_temp_files(tmp_path / "missing") == 0
    assert remove_stale_temp_files(tmp_path) == 0


def test_remove_stale_never_reaches_outside_the_root(tmp_path: Path) -> None:
    # A temp-named symlink is removed as a link; its target stays. A symlinked
    # folder is not followed.
    outside = tmp_path / "outside"
    _touch_all(outside, [".imgfetch-victim.tmp", "photo.jpg"])
    root = tmp_path / "images"
    root.mkdir()
    (root / ".imgfetch-link.tmp").symlink_to(outside / "photo.jpg")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    assert remove_stale_temp_files(root) == 1
    assert not (root / ".imgfetch-link.tmp").is_symlink()
    assert (outside / "photo.jpg").read_bytes() == b"photo.jpg"
    assert (outside / ".imgfetch-victim.tmp").exists()


def test_remove_stale_survives_files_it_cannot_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file vanishing meanwhile, or one we may not delete, is skipped and not
    # counted; the others are still removed and the start goes on.
    root = tmp_path / "images"
    _touch_all(root, OURS)
    real_unlink = os.unlink

    def unlink(path: str | os.PathLike[str], *args: object, **kw: object) -> None:
        name = os.fspath(path)
        if name.endswith("a1b2c3.tmp"):
            real_unlink(name)  # someone else got there first
            real_unlink(name)
        if name.endswith("k2j3h4.tmp"):
            raise PermissionError(13, "Permission denied", name)
        real_unlink(name)

    monkeypatch.setattr(fsutil.os, "unlink", unlink)
    assert remove_stale_temp_files(root) == len(OURS) - 2
    assert _all_files(root) == {"p1/.imgfetch-main_1.jpg.k2j3h4.tmp"}
