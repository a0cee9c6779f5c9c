"""Property-based tests: the id-to-folder mapping and every store's round trip.

Hypothesis generates the inputs. A failing example is printed with a blob that
`@reproduce_failure` replays; no example database is written to the checkout.
"""

from __future__ import annotations

import copy
import os
import posixpath
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgfetch.backends import backend_names, open_store
from imgfetch.backends.base import Entry, Failure, StateStore
from imgfetch.paths import (
    IMAGES_DIR,
    MAX_NAME,
    image_relpath,
    product_dir,
    product_dir_name,
)

# too_slow: a busy CI machine must not fail a test for generating slowly.
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

# Linux refuses names longer than 255 bytes; Windows refuses these characters and
# these base names (CON, con.jpg, Con.a.b); macOS and Windows compare names
# without case, and macOS normalises them to NFD.
NAME_MAX_BYTES = 255
WINDOWS_FORBIDDEN = set('<>:"/\\|?*') | {chr(c) for c in range(32)} | {"\x7f"}
WINDOWS_RESERVED = {"con", "prn", "aux", "nul"}
WINDOWS_RESERVED |= {f"{d}{i}" for d in ("com", "lpt") for i in range(10)}

# Every code point, lone surrogates included: JSON input may hold "\ud800".
ANY_CHAR = st.characters(exclude_categories=())
# Ids that are almost plain (lower-case letters, digits, _ . -): the mapping keeps
# those as they are, so their edges are where collisions would hide.
NEAR_PLAIN = st.text(st.sampled_from("abz09_.-~A /\\\x00é"), min_size=1, max_size=70)
RESERVED = st.sampled_from(sorted(WINDOWS_RESERVED)).flatmap(
    lambda name: st.sampled_from([name, name.upper(), f"{name}.jpg", f"{name}.a.b"])
)
IDS = st.one_of(
    st.text(ANY_CHAR, min_size=1, max_size=80),
    NEAR_PLAIN,
    RESERVED,
    st.text(ANY_CHAR, min_size=200, max_size=400),
)


# ------------------------------------------------------------ id -> folder


@SETTINGS
@given(IDS)
def test_folder_name_is_one_safe_component(pid: str) -> None:
    name = product_dir_name(pid)
    assert name == product_dir_name(pid), "not deterministic"
    assert name not in ("", ".", ".."), name
    assert "/" not in name and "\x00" not in name, name
    assert len(name) <= MAX_NAME and len(name.encode()) <= NAME_MAX_BYTES, name
    # ASCII and lower case: the same name under NFD (macOS) and without case.
    assert name.isascii() and name == name.lower(), name
    assert not WINDOWS_FORBIDDEN & set(name), name
    assert not name.endswith((".", " ")), name
    assert name.split(".", 1)[0] not in WINDOWS_RESERVED, name


@SETTINGS
@given(IDS)
def test_folder_is_created_inside_the_images_folder(pid: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        images = data / IMAGES_DIR
        images.mkdir(parents=True)
        target = product_dir(data, pid)
        os.mkdir(target)  # Linux accepts the name as it is
        assert target.resolve().parent == images.resolve()
        assert [p.name for p in images.iterdir()] == [product_dir_name(pid)]
    relpath = image_relpath(pid, "main_1", "jpg")
    assert posixpath.normpath(relpath) == relpath
    assert relpath.split("/") == [IMAGES_DIR, product_dir_name(pid), "main_1.jpg"]


@SETTINGS
@given(st.lists(IDS, min_size=2, max_size=40, unique=True))
def test_distinct_ids_get_distinct_folders(pids: list[str]) -> None:
    names = [product_dir_name(pid) for pid in pids]
    assert len(set(names)) == len(pids)
    # ...also where names are compared without case (macOS, Windows).
    assert len({name.casefold() for name in names}) == len(pids)


@SETTINGS
@given(IDS)
def test_look_alike_ids_get_distinct_folders(pid: str) -> None:
    # The ids a folder name could be confused with: the other case, the cleaned
    # text, the folder name itself used as an id, a trailing dot or blank.
    name = product_dir_name(pid)
    twins = {
        pid,
        pid.upper(),
        pid.lower(),
        pid.swapcase(),
        name,
        name.split("~")[0],
        f"{pid}.",
        f"{pid} ",
        f"{pid}~",
    }
    names = {product_dir_name(twin) for twin in twins}
    assert len(names) == len(twins)


# ------------------------------------------------------------ store round trip

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.text(ANY_CHAR, max_size=12),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(ANY_CHAR, max_size=6), inner, max_size=3),
    ),
    max_leaves=8,
)
RECORD_FIELDS = st.dictionaries(st.text(ANY_CHAR, max_size=8), JSON_VALUES, max_size=3)
CATEGORIES = st.from_regex(r"[a-z0-9][a-z0-9_]{0,31}", fullmatch=True)
ENTRIES = st.dictionaries(
    st.sampled_from(["main", "sku", "qc", "detail"]),
    # Paths as the engine writes them: stores refuse ones that leave the data
    # directory (state_files.is_valid_entry), which is tested on its own.
    st.lists(
        st.from_regex(
            r"images/[a-z0-9~_-]{1,20}/[a-z]{1,5}_[0-9]{1,3}\.(jpg|png|webp)",
            fullmatch=True,
        ),
        max_size=3,
    ),
    max_size=4,
)
FAILURES = st.lists(
    st.builds(
        Failure,
        category=CATEGORIES,
        index=st.integers(1, 10**6),
        url=st.text(ANY_CHAR, max_size=40),
        reason=st.text(ANY_CHAR, max_size=40),
        attempts=st.integers(0, 100),
    ),
    max_size=3,
    # A product has one outcome per image.
    unique_by=lambda failure: (failure.category, failure.index),
)


@dataclass
class Model:
    """What a store must hold: pending in the order added, minus completed."""

    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    mapping: dict[str, Entry] = field(default_factory=dict)
    failures: dict[str, list[Failure]] = field(default_factory=dict)

    def add_pending(self, products: list[tuple[str, dict[str, Any]]]) -> None:
        for pid, raw in products:
            if pid not in self.mapping and pid not in self.pending:
                self.pending[pid] = raw

    def record(self, pid: str, entry: Entry, failures: list[Failure]) -> None:
        self.mapping[pid] = entry
        self.pending.pop(pid, None)
        if failures:
            self.failures[pid] = sorted(failures, key=lambda f: (f.category, f.index))
        else:
            self.failures.pop(pid, None)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A few ids, and operations on them (ids repeat, so products are added twice,
    recorded twice, recorded while pending and while not)."""
    pids = draw(st.lists(IDS, min_size=1, max_size=5, unique=True))
    pick = st.sampled_from(pids)
    add = st.tuples(
        st.just("add"),
        st.lists(st.tuples(pick, RECORD_FIELDS), min_size=1, max_size=4),
    )
    record = st.tuples(st.just("record"), pick, ENTRIES, FAILURES)
    ops = st.one_of(add, record, st.just(("flush",)), st.just(("reopen",)))
    return pids, draw(st.lists(ops, min_size=1, max_size=14))


def product_key(record: dict[str, Any]) -> str:
    return str(record["id"])


def opened(name: str, data: Path) -> StateStore:
    store = open_store(name, data)
    store.open(product_key)
    return store


@pytest.mark.parametrize("backend", backend_names())
@SETTINGS
@given(scenario=scenarios())
def test_store_round_trip(
    backend: str, scenario: tuple[list[str], list[tuple[Any, ...]]]
) -> None:
    pids, ops = scenario
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        store = opened(backend, data)
        model, saved = Model(), Model()
        durable = store.durable_on_record
        try:
            for op in ops:
                store, model, saved = apply(op, store, model, saved, durable, data)
                assert_matches(store, model, pids)
        finally:
            store.close()


def apply(
    op: tuple[Any, ...],
    store: StateStore,
    model: Model,
    saved: Model,
    durable: bool,
    data: Path,
) -> tuple[StateStore, Model, Model]:
    """Run one operation on the store and the model; `saved` is what a reopen must
    find (for a store that is durable only at `flush`, the state at the last one)."""
    kind = op[0]
    if kind == "add":
        products = [(pid, {**fields, "id": pid}) for pid, fields in op[1]]
        store.add_pending(products)
        model.add_pending(products)
    elif kind == "record":
        _, pid, entry, failures = op
        store.record_product(pid, entry, failures)
        model.record(pid, entry, failures)
    elif kind == "flush":
        store.flush()
        assert store.has_pending() == bool(model.pending)
    elif kind == "reopen":
        store.close()
        store = opened(store.name, data)
        model = copy.deepcopy(saved)
        assert_claims_pending(store, model)
    if durable or kind == "flush":
        saved = copy.deepcopy(model)
    return store, model, saved


def assert_matches(store: StateStore, model: Model, pids: list[str]) -> None:
    assert store.pending() == list(model.pending.items())
    assert store.pending_count() == len(model.pending)
    assert dict(store.iter_mapping()) == model.mapping
    assert store.completed_count() == len(model.mapping)
    for pid in pids:
        assert store.is_completed(pid) == (pid in model.mapping)
        assert store.mapping_entry(pid) == model.mapping.get(pid)
    assert store.failures() == model.failures
    assert store.failure_count() == sum(len(f) for f in model.failures.values())


def assert_claims_pending(store: StateStore, model: Model) -> None:
    """Right after open, claiming in small batches hands out the pending products
    once each, in order."""
    claimed: list[tuple[str, dict[str, Any]]] = []
    while batch := store.claim(2):
        claimed.extend(batch)
    assert claimed == list(model.pending.items())
