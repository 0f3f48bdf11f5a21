"""Type stub of the compiled core; its behaviour is that of ``_core_py.Core``."""

from collections.abc import Sequence
from typing import ClassVar

from ._core_py import KeyFilter
from ._spans import PackedSpans
from .model import SpanRecord

COUNTER_NAMES: tuple[str, ...]
NAME_LIMIT: int

class Core:
    implementation: ClassVar[str]
    @property
    def ttl_ns(self) -> int: ...
    @property
    def max_pending(self) -> int: ...
    @property
    def max_line_bytes(self) -> int: ...
    @property
    def prefix(self) -> bytes: ...
    @property
    def flatten_arrays(self) -> bool: ...
    @property
    def key_filter(self) -> KeyFilter | None: ...
    @property
    def sample_rate(self) -> int: ...
    @property
    def trace_context(self) -> bool: ...
    @property
    def release_gil(self) -> bool: ...
    @property
    def pending_attrs_bytes(self) -> int: ...
    def __init__(
        self,
        *,
        ttl_s: float = 10.0,
        max_pending: int = 1_000_000,
        max_line_bytes: int = 16 * 1024 * 1024,
        prefix: bytes = b"",
        flatten_arrays: bool = False,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        sample_rate: int = 1,
        trace_context: bool = True,
        release_gil: bool = False,
        pending_attrs_bytes: int = 2048,
    ) -> None: ...
    @property
    def pending(self) -> int: ...
    @property
    def watermark_ns(self) -> int:
        """The latest entry time seen (0 before any)."""
    def counters(self) -> dict[str, int]: ...
    def take_bad_samples(self) -> dict[str, tuple[str, bytes]]:
        """Per counter, (reason, first bytes) of its latest skipped line since the last call."""
    def feed(self, data: bytes | bytearray | memoryview, now_ns: int | None = None, mark: int = 0) -> int:
        """Process whole lines; return how many spans are ready. Every request stored
        meanwhile remembers ``mark``, for ``oldest_pending_mark``."""
    def oldest_pending_mark(self) -> int | None:
        """The smallest mark among the requests still pending; None when none is."""
    def expire(self, now_ns: int, limit: int | None = None) -> int:
        """Pending requests due by ``now_ns`` become UNANSWERED spans (at most ``limit``);
        return how many spans are ready."""
    def set_filters(
        self, *, include: Sequence[str] = (), exclude: Sequence[str] = (), sample_rate: int = 1
    ) -> None: ...
    def flush(self, limit: int | None = None) -> int:
        """Pending requests become UNANSWERED spans (at most ``limit``); return how many
        spans are ready."""
    def drain(self) -> list[SpanRecord]: ...
    def drain_spans(self) -> PackedSpans:
        """The ready spans as one packed sequence (what the daemon queues for the sinks)."""
