"""The StateStore contract: what the engine may ask of any place that keeps progress."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..catalog import InvalidRecord

# Finds the product id of an input record; raises ValueError when it has none.
ProductKey = Callable[[dict[str, Any]], str]

# A product's mapping entry: category -> image paths relative to the data directory.
Entry = dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class SavedSlot:
    """An image of an unfinished product that a per-image store has recorded."""

    url: str
    relpath: str


@dataclass(frozen=True, slots=True)
class Failure:
    """An image that could not be saved, and why."""

    category: str
    index: int
    url: str
    reason: str
    attempts: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Failure:
        """Parse one stored failure; raises ValueError when the shape is wrong."""
        if not isinstance(data, dict):
            raise InvalidRecord("failure_not_object")
        try:
            failure = cls(
                category=data["category"],
                index=data.get("index", 0),
                url=data["url"],
                reason=data.get("reason", ""),
                attempts=data.get("attempts", 1),
            )
        except KeyError as exc:
            raise InvalidRecord("failure_missing", key=exc.args[0]) from None
        # bool is an int to Python, not to a JSON reader.
        if not (
            isinstance(failure.category, str)
            and isinstance(failure.url, str)
            and isinstance(failure.reason, str)
            and _is_count(failure.index)
            and _is_count(failure.attempts)
        ):
            raise InvalidRecord("failure_types")
        return failure


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class StateStore(ABC):
    """Where completed, pending and failed products are kept between runs.

    Guarantees every store gives (tests/test_store_contract.py checks each one
    against every registered store):

    - *Recorded*: `record_product`, `record_many` and `add_pending` are recorded
      once the call has returned when `durable_on_record` is True, or once the next
      `flush` has returned when it is False. What was recorded survives kill -9;
      stores that sync to disk (all of ours) survive power loss too.
      `record_image` is advisory and durable from the next flush or record: losing
      it costs nothing, because the engine also reuses whole files it finds.
    - *Atomic*: stopping the process at any instruction (kill -9) leaves every file
      the store owns readable and every product either recorded whole or not at all.
    - *Disjoint*: recording a product removes it from pending, so a product is never
      both completed and pending, and an entry never names half of its images.
    - *Read-only open*: `open` writes nothing; a damaged file raises StateError
      naming the file and the position, and is left exactly as it was.
    - *Errors*: OSError from the file system (disk full, read-only) is raised as
      StorageError and is not retried: the engine stops and the state stays
      resumable. Only `StoreBusy` is transient (another process holds a database
      lock for longer than the store waited); callers may retry it.
    - *Threads*: every method may be called from several threads at once.

    Shared stores: a store used by several processes or machines at once (Redis is
    planned: workers claim products under leases that expire when a worker dies)
    implements `claim` so that each pending product goes to one worker at a time,
    renews its leases in `heartbeat`, and gives back unfinished claims in `close`.
    The engine only ever asks for work through `claim`, so it does not change.
    """

    name: ClassVar[str]
    durable_on_record: ClassVar[bool]
    # True when pending work is one file that exists only while work remains (the
    # spec's pending_tasks.json); the messages then speak of that file.
    pending_is_file: ClassVar[bool] = False

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._claim_cursor: Iterator[tuple[str, dict[str, Any]]] | None = None

    # -- what the store owns in the data directory -------------------------------

    @classmethod
    @abstractmethod
    def owned_paths(cls, data_dir: Path) -> list[Path]:
        """Files and folders this store writes in `data_dir`, existing or not.

        Used to tell which store wrote a directory and to remove a store's files
        after a migration; never images.
        """

    @classmethod
    def present(cls, data_dir: Path) -> bool:
        """True when `data_dir` holds state written by this store."""
        return any(path.exists() for path in cls.owned_paths(data_dir))

    # -- reading -----------------------------------------------------------------

    @abstractmethod
    def open(self, product_key: ProductKey) -> None:
        """Load or connect; validate what is there; write nothing.

        `product_key` finds the id of a stored input record, for stores (like the
        spec's pending file) that keep records without their ids.
        """

    @abstractmethod
    def is_completed(self, product_id: str) -> bool: ...

    @abstractmethod
    def completed_count(self) -> int: ...

    @abstractmethod
    def mapping_entry(self, product_id: str) -> Entry | None: ...

    @abstractmethod
    def iter_mapping(self) -> Iterator[tuple[str, Entry]]:
        """Every completed product with its entry, in the order the store keeps."""

    @abstractmethod
    def iter_pending(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Unfinished products as (id, the dict as read from the input), in the
        order they were added."""

    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        return list(self.iter_pending())

    @abstractmethod
    def pending_count(self) -> int: ...

    @abstractmethod
    def has_pending(self) -> bool:
        """True while pending work is stored (for the JSON store: the file exists)."""

    @abstractmethod
    def failures(self) -> dict[str, list[Failure]]:
        """Failed images per product, each list in (category, index) order."""

    def failure_count(self) -> int:
        return sum(len(items) for items in self.failures().values())

    def saved_images(self, product_id: str) -> dict[tuple[str, int], SavedSlot]:
        """Images of an unfinished product already saved, by (category, index).

        Stores that keep state per image return what `record_image` recorded; the
        others return nothing, and the engine falls back to the files on disk.
        """
        return {}

    # -- writing -----------------------------------------------------------------

    @abstractmethod
    def add_pending(self, products: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Remember products as unfinished, after those already pending; products
        already pending or completed are left as they are."""

    def record_image(  # noqa: B027 - optional: only per-image stores keep these
        self, product_id: str, category: str, index: int, url: str, relpath: str
    ) -> None:
        """One image of an unfinished product was saved at `relpath`.

        Must be cheap (no sync of its own): it is called once per image.
        """

    @abstractmethod
    def record_product(
        self, product_id: str, entry: Entry, failures: list[Failure]
    ) -> None:
        """Mark a product completed with its images and its (possibly no) failures.

        Replaces an earlier entry and earlier failures of the same product, which is
        how a retry of failed images updates it.
        """

    def record_many(self, products: Iterable[tuple[str, Entry, list[Failure]]]) -> None:
        """`record_product` for several products; stores may do it in one write."""
        for product_id, entry, failures in products:
            self.record_product(product_id, entry, failures)

    @abstractmethod
    def flush(self) -> None:
        """Make everything recorded so far durable; remove the pending record when
        no work remains."""

    def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release what `open` took (files, connections, leases)."""

    # -- handing out work ----------------------------------------------------------

    def claim(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """Up to `limit` pending products for this process to work on, in order.

        A product is handed out once per `open`. A store of one process (ours)
        needs no lease: the lock on the data directory keeps other processes out.
        A shared store takes a lease on each product it returns.
        """
        if self._claim_cursor is None:
            self._claim_cursor = iter(self.pending())
        batch = []
        for pid, raw in self._claim_cursor:
            if not self.is_completed(pid):
                batch.append((pid, raw))
                if len(batch) == limit:
                    break
        return batch

    def heartbeat(self) -> None:  # noqa: B027 - only shared stores hold leases
        """Called every few seconds during a run: renew leases on claimed work."""

    # -- how messages name the store ---------------------------------------------

    @property
    def mapping_label(self) -> str:
        """Where the mapping is kept, as the messages name it."""
        return str(self.data_dir)

    @property
    def pending_label(self) -> str:
        """Where pending work is kept, as the messages name it."""
        return str(self.data_dir)

    @property
    def failures_label(self) -> str:
        """Where failed images are listed, as the messages name it."""
        return str(self.data_dir)

    def pending_modified(self) -> float | None:
        """When pending work was last saved (epoch seconds), if the store knows."""
        return None


class StoreBusy(Exception):
    """A transient failure: another process held the store for too long."""
