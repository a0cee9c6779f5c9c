"""Reading a state file's JSON array a piece at a time (json's pending file)."""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgfetch.backends import state_files
from imgfetch.backends.state_files import load_state_json, scan_state_array
from imgfetch.errors import StateError
from imgfetch.messages import Text

SHAPE = Text("shape_products")

# Each document is read with reads of every size below, so that a read ends
# inside a multi-byte character, an escape, a number, a keyword and a blank run.
DOCUMENTS = [
    b"[]",
    b"  [ ]  \n",
    b'[{"id": "1"}]',
    json.dumps(
        [
            {"id": "中文", "main_images": ["http://x/图片.jpg"], "n": 123456789012},
            {"quote": 'say "hi" \\ back', "u": "\\u00e9\u00e9", "emoji": "\U0001f600"},
            [1, 2.5e-3, True, False, None, [[]], {}],
            -0.0,
            "plain",
        ],
        ensure_ascii=False,
        indent=2,
    ).encode(),
    codecs.BOM_UTF8 + b'[{"id": "bom"}, {"id": "2"}]',
    b'[\r\n\t{"id":"a"}\r\n,\t\r\n{"id":"b"}\n]\n',
]
READ_SIZES = [1, 2, 3, 5, 7, 16, 1 << 20]


def scan(path: Path) -> Iterator[tuple[int, int, Any]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        yield from scan_state_array(fd, path, SHAPE)
    finally:
        os.close(fd)


@pytest.mark.parametrize("read_size", READ_SIZES)
@pytest.mark.parametrize("document", DOCUMENTS, ids=range(len(DOCUMENTS)))
def test_elements_and_their_byte_spans_match_a_whole_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, document: bytes, read_size: int
) -> None:
    monkeypatch.setattr(state_files, "_READ", read_size)
    path = tmp_path / "pending_tasks.json"
    path.write_bytes(document)

    found = list(scan(path))

    assert [value for _offset, _length, value in found] == load_state_json(
        path, list, SHAPE
    )
    for offset, length, value in found:
        # The span is the element's own text (blanks in front of it included):
        # the json store copies it into the next pending file as it is.
        assert json.loads(document[offset : offset + length]) == value


@pytest.mark.parametrize("read_size", [1, 3, 1 << 20])
@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"   ",
        b'{"id": "1"}',
        b'[{"id": "1"}',
        b'[{"id": "1"},]',
        b'[{"id": "1"} {"id": "2"}]',
        b'[{"id": "1"}] trailing',
        b'[{"id": "1\xff"}]',
        b'[{"id": "unterminated}]',
        b"[tru]",
        b"[1,,2]",
    ],
)
def test_damage_is_reported_as_a_whole_parse_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, document: bytes, read_size: int
) -> None:
    monkeypatch.setattr(state_files, "_READ", read_size)
    path = tmp_path / "pending_tasks.json"
    path.write_bytes(document)
    with pytest.raises(StateError) as whole:
        load_state_json(path, list, SHAPE)

    with pytest.raises(StateError) as scanned:
        list(scan(path))

    assert str(scanned.value) == str(whole.value)
    assert path.read_bytes() == document
