"""The StateStore contract: what the engine may ask of any place that keeps progress."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..catalog import InvalidRecord

# Finds the product id of an input record; raises ValueError when it has none.
ProductKey = Callable[[dict[str, Any]], str]

# A product's mapping entry: category -> image paths relative to the data directory.
Entry = dict[str, list[str]]


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
        if not isinstance(failure.url, str) or not isinstance(failure.index, int):
            raise InvalidRecord("failure_types")
        return failure


class StateStore(ABC):
    """Where completed, pending and failed products are kept between runs.

    Guarantees every store gives:
    - A product is *recorded* once `record_product` has returned and, for stores
      whose `durable_on_record` is False, the next `flush` has returned. A recorded
      product survives kill -9 and power loss.
    - Stopping the process at any instruction (kill -9) leaves every file the store
      owns readable: either its previous or its next content, never a mix.
    - Recording a product removes it from pending, so a product is never both.
    - `open` never writes; a damaged file raises StateError naming the file and the
      position, and is left exactly as it was.
    - OSError from the file system propagates as StorageError; it is not retried.

    The engine calls a store from one thread at a time today, but stores must be
    thread-safe: a store shared by several processes or machines (Redis, with
    leases on claimed products) is planned behind this same interface.
    """

    name: ClassVar[str]
    durable_on_record: ClassVar[bool]

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

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
    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        """Unfinished products as (id, the dict as read from the input), in order."""

    @abstractmethod
    def has_pending(self) -> bool:
        """True while pending work is stored (for the JSON store: the file exists)."""

    @abstractmethod
    def failures(self) -> dict[str, list[Failure]]: ...

    @abstractmethod
    def add_pending(self, products: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Remember products as unfinished, after those already pending."""

    @abstractmethod
    def record_product(
        self, product_id: str, entry: Entry, failures: list[Failure]
    ) -> None:
        """Mark a product completed with its images and its (possibly no) failures.

        Replaces an earlier entry and earlier failures of the same product, which is
        how a retry of failed images updates it.
        """

    @abstractmethod
    def flush(self) -> None:
        """Make everything recorded so far durable; remove the pending record when
        no work remains."""

    def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release what `open` took; the default store holds nothing open."""

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
