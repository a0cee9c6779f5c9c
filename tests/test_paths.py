"""product_dir_name: product ids made into folder names safe on any file system."""

from __future__ import annotations

import random
import re
import unicodedata
from pathlib import Path

import pytest

from imgfetch.paths import (
    FAILED_FILE,
    IMAGES_DIR,
    MAPPING_FILE,
    MAX_NAME,
    PENDING_FILE,
    image_relpath,
    is_temp_name,
    product_dir,
    product_dir_name,
)

# Windows refuses these base names whatever the extension (CON, CON.txt, con.a.b).
WINDOWS_RESERVED = {"con", "prn", "aux", "nul", "conin$", "conout$", "clock$"}
WINDOWS_RESERVED |= {f"{d}{i}" for d in ("com", "lpt") for i in range(10)}
WINDOWS_RESERVED |= {f"{d}{s}" for d in ("com", "lpt") for s in "¹²³"}
# Characters some file system refuses in a name (Windows, FAT, exFAT, SMB shares).
FORBIDDEN = set('<>:"/\\|?*') | {chr(c) for c in range(32)} | {"\x7f"}
SAFE_CHARS = re.compile(r"^[A-Za-z0-9_.~-]+$")

PLAIN_IDS = [
    # digits only (Taobao ids)
    "991466016025",
    # the test catalogs' ids
    "p0001",
    # lower-case letters, digits, _ . -
    "sku-12_a.b",
    # a dot inside is fine
    "v1.2",
    # a leading dash is fine for a folder (nothing is passed to a shell)
    "-x",
    # exactly the maximum length
    "a" * MAX_NAME,
    # reserved names only match whole base names
    "con1",
    "console",
    "com10",
    "lpt_1",
]

HOSTILE_IDS = [
    # path traversal
    "..",
    ".",
    "../x",
    "../../etc/passwd",
    "..\\..\\windows",
    # separators
    "a/b",
    "a\\b",
    "/abs",
    "C:\\x",
    "C:",
    # Windows reserved names in any case, with extensions, with trailing dot/space
    "CON",
    "con",
    "Con",
    "con.txt",
    "CON.jpg",
    "nul",
    "NUL.tar.gz",
    "aux",
    "prn.",
    "COM1",
    "com9.x",
    "lpt1",
    "LPT9",
    "com0",
    "com\u00b9",  # COM¹ is reserved too
    "conin$",
    "CONOUT$",
    "con ",
    # names Windows trims or refuses: trailing dot and space
    "abc.",
    "abc ",
    " abc",
    "...",
    # control characters
    "a\x00b",
    "\x00",
    "a\nb",
    "abc\n",  # `$` in a regex also matches before a final newline
    "a\tb",
    "a\rb",
    "\x1b[31mred",
    # characters FAT/NTFS refuse
    'a<b>c:d"e|f?g*h',
    # unicode: CJK, accents in both normal forms, emoji, RTL override, zero-width
    "商品一号",
    "caf\u00e9",
    "cafe\u0301",
    "\U0001f600",
    "a\u202eb",
    "\u200fab",
    "a\u200bb",
    "\ufeffx",
    # a lone surrogate (json.loads produces these from "\ud800")
    "\ud800",
    # upper case (case-insensitive file systems)
    "ABC",
    "Abc",
    "aBC",
    # the separator of the hashed form
    "a~0123456789abcdef",
    "~",
    # very long, ASCII and non-ASCII
    "x" * 65,
    "y" * 10_000,
    "長" * 1000,
    "../" * 500,
    # blanks
    " ",
    "",
]


def assert_safe(name: str) -> None:
    assert 1 <= len(name) <= MAX_NAME, name
    assert SAFE_CHARS.match(name) and "\n" not in name, repr(name)
    assert not set(name) & FORBIDDEN, repr(name)
    assert name not in (".", "..")
    assert not name.startswith(".")  # no hidden folders, no '..' prefix
    assert not name.endswith((".", " "))
    assert name.split(".", 1)[0].lower() not in WINDOWS_RESERVED, name


@pytest.mark.parametrize("pid", PLAIN_IDS)
def test_plain_ids_are_kept(pid: str) -> None:
    assert product_dir_name(pid) == pid
    assert_safe(pid)


@pytest.mark.parametrize("pid", HOSTILE_IDS)
def test_hostile_ids_give_safe_names(pid: str, tmp_path: Path) -> None:
    name = product_dir_name(pid)
    assert_safe(name)
    assert ".." not in name
    assert product_dir_name(pid) == name  # deterministic
    # the folder can be created and stays directly inside images/
    folder = product_dir(tmp_path, pid)
    folder.mkdir(parents=True)
    assert folder.resolve().parent == (tmp_path / IMAGES_DIR).resolve()
    assert [p.name for p in (tmp_path / IMAGES_DIR).iterdir()] == [name]


def test_distinct_ids_never_share_a_folder() -> None:
    ids = list(dict.fromkeys(PLAIN_IDS + HOSTILE_IDS))
    names = [product_dir_name(pid) for pid in ids]
    assert len(set(names)) == len(ids)
    # ... not even on a case-insensitive file system (macOS, Windows)
    assert len({n.casefold() for n in names}) == len(ids)


CASE_PAIRS = [
    # the plain lower-case id and its capitalised twin
    ("abc", "ABC"),
    ("abc", "Abc"),
    # two non-plain ids differing in case only
    ("Abc", "aBC"),
    ("CON", "con"),
    # reserved name vs its hashed look-alike
    ("con", "_con"),
    # unicode case pairs
    ("STRASSE", "straße"),
    ("É", "é"),
    # normal forms: visually identical, different code points
    ("caf\u00e9", "cafe\u0301"),
    # invisible characters
    ("ab", "a\u200bb"),
    ("ab", "\u200fab"),
    # ids whose sanitised prefixes are equal
    ("a/b", "a\\b"),
    ("a/b", "a_b"),
    ("a b", "a_b"),
    ("a:b", "a?b"),
    # long ids equal in their first 40, 64 or 9999 characters
    ("x" * 100 + "1", "x" * 100 + "2"),
    ("a" * 64, "a" * 65),
    ("y" * 9999 + "A", "y" * 9999 + "a"),
    # a plain id that looks like a hashed name
    ("abc~0123456789abcdef", "abc"),
    # trailing newline vs none
    ("abc\n", "abc"),
]


@pytest.mark.parametrize(("a", "b"), CASE_PAIRS)
def test_case_insensitive_collisions(a: str, b: str) -> None:
    name_a, name_b = product_dir_name(a), product_dir_name(b)
    assert name_a.casefold() != name_b.casefold(), (a, b, name_a)
    assert unicodedata.normalize("NFC", name_a) != unicodedata.normalize("NFC", name_b)


def test_random_ids_are_safe_and_injective() -> None:
    # Seeded, so a failure repeats: ids mixing every kind of character.
    rng = random.Random(20240601)
    alphabet = (
        'abcABC019_.-~/\\:*?"<>| \t\n\x00\u202e\u200b\u00e9e\u0301商品\U0001f600\ud800'
    )
    ids = {"".join(rng.choices(alphabet, k=rng.randint(1, 90))) for _ in range(5000)}
    ids |= {
        rng.choice(["con", "CON", "Nul", "lpt1"]) + rng.choice(alphabet)
        for _ in range(200)
    }
    names: dict[str, str] = {}
    for pid in ids:
        name = product_dir_name(pid)
        assert_safe(name)
        folded = name.casefold()
        assert folded not in names, (pid, names.get(folded))
        names[folded] = pid


@pytest.mark.parametrize("pid", ["p1", "../x", "CON", "a/b", "商品", "z" * 300])
def test_image_relpath(pid: str) -> None:
    rel = image_relpath(pid, "main_1", "jpg")
    parts = rel.split("/")
    assert parts == [IMAGES_DIR, product_dir_name(pid), "main_1.jpg"]
    assert "\\" not in rel and not rel.startswith("/")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # what fsutil.temp_file_beside creates
        (".imgfetch-main_1.jpg.abc123.tmp", True),
        (".imgfetch-image_mapping.json.x.tmp", True),
        # final names
        ("main_1.jpg", False),
        (MAPPING_FILE, False),
        (PENDING_FILE, False),
        (FAILED_FILE, False),
        # a user's own temporary file is not ours
        ("main_1.jpg.tmp", False),
        (".imgfetch-lock", False),
    ],
)
def test_is_temp_name(name: str, expected: bool) -> None:
    assert is_temp_name(name) is expected
