"""Type stub of the packed spans the compiled core hands the sinks (``_spans.pyx``)."""

from collections.abc import Iterator, Sequence
from typing import overload

from .model import SpanRecord

class SpanStore: ...

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

def tune_allocator() -> bool:
    """glibc only: serve blocks up to 32 MiB from the heap and keep up to 64 MiB of
    freed heap for reuse (mallopt); False elsewhere."""
