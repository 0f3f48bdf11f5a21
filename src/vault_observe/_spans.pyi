"""Type stub of the packed spans the compiled core hands the sinks (``_spans.pyx``)."""

from collections.abc import Iterator, Sequence
from typing import overload

from .model import SpanRecord

class SpanStore:
    @property
    def nbytes(self) -> int:
        """The bytes this store keeps alive."""

class PackedSpans(Sequence[SpanRecord]):
    """A read-only run of packed spans; SpanRecords are made on demand."""

    @property
    def store(self) -> SpanStore: ...
    @property
    def plain(self) -> bool:
        """Every span is packed (none is kept as its SpanRecord)."""
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, index: int) -> SpanRecord: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[SpanRecord]: ...
    def __iter__(self) -> Iterator[SpanRecord]: ...
    def records(self) -> list[SpanRecord]:
        """The spans as a list of SpanRecord."""
    @property
    def nbytes(self) -> int:
        """The bytes this view keeps alive: its whole store's, whatever part it shows."""
    @property
    def span_bytes(self) -> int:
        """The bytes this view's spans take in a store of their own (see ``compact``)."""
    def compact(self, max_bytes: int = ...) -> PackedSpans:
        """A copy of the leading spans whose ``span_bytes`` fit ``max_bytes`` (maybe none), in a
        store of its own sized to them, so that it no longer keeps this view's store alive."""

def tune_allocator() -> bool:
    """glibc only: serve blocks up to 32 MiB from the heap and keep up to 64 MiB of
    freed heap for reuse (mallopt); False elsewhere."""

def trim_allocator() -> bool:
    """glibc only: hand the freed memory inside the heap back to the system (malloc_trim).
    True if any was given back."""
