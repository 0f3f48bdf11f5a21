"""Wire formatting the body encoders share: RFC 3339 times, JSON string literals,
and ``JoinedBody``, a body of comma-joined items that can be split without encoding
anything again (``pack`` groups items under a size and count limit).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence

_last_second: tuple[int, str] = (-1, "")


def rfc3339_ns(ns: int) -> str:
    """Unix nanoseconds as ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`` (UTC, always 9 digits)."""
    global _last_second
    second, frac = divmod(ns, 1_000_000_000)
    cached = _last_second  # one tuple read: safe to share between threads
    if cached[0] == second:
        prefix = cached[1]
    else:
        t = time.gmtime(second)
        prefix = (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        )
        _last_second = (second, prefix)
    return f"{prefix}.{frac:09d}Z"


def duration_ms(start_ns: int, end_ns: int) -> float:
    """Milliseconds as a float with microsecond precision."""
    return round((end_ns - start_ns) / 1000) / 1000


def _first_dumps(value: str) -> bytes:
    """``orjson.dumps``, orjson imported on the first call: the compiled encoders, which
    import this module for ``JoinedBody``, do not need its ~4 ms of start-up."""
    global _dumps
    import orjson

    _dumps = orjson.dumps
    return orjson.dumps(value)


_dumps: Callable[[str], bytes] = _first_dumps  # orjson.dumps once called


def json_str(text: str) -> bytes:
    """A JSON string literal (UTF-8). Lone surrogates, which orjson refuses, are escaped."""
    try:
        return _dumps(text)
    except TypeError:
        return json.dumps(text).encode("ascii")


def pack(items: Sequence[bytes], max_bytes: int, max_items: int, overhead: int = 2) -> Iterable[list[int]]:
    """Group item indexes into runs whose joined size (items, commas and ``overhead``
    bytes of envelope) stays within ``max_bytes`` and ``max_items``.

    An item too large to fit alone still gets its own run: the caller decides.
    """
    return pack_sizes([len(item) for item in items], max_bytes, max_items, overhead)


def pack_sizes(
    sizes: Sequence[int], max_bytes: int, max_items: int, overhead: int = 2
) -> Iterable[list[int]]:
    """``pack`` given the items' sizes."""
    run: list[int] = []
    size = overhead
    for i, item_size in enumerate(sizes):
        extra = item_size + (1 if run else 0)
        if run and (size + extra > max_bytes or len(run) >= max_items):
            yield run
            run = []
            size = overhead
            extra = item_size
        run.append(i)
        size += extra
    if run:
        yield run


class JoinedBody:
    """A request body made of items joined by commas between ``head`` and ``tail``
    (a JSON array, an OTLP request) with the offset just past each item, so that
    the body can be split or an item taken out without encoding anything again."""

    __slots__ = ("body", "ends", "head_len", "tail_len")

    def __init__(self, body: bytes, ends: list[int], head_len: int, tail_len: int) -> None:
        self.body = body
        self.ends = ends  # item i is body[start(i):ends[i]]
        self.head_len = head_len
        self.tail_len = tail_len

    @classmethod
    def join(cls, items: Sequence[bytes], head: bytes, tail: bytes) -> JoinedBody:
        ends = []
        at = len(head) - 1
        for item in items:
            at += 1 + len(item)
            ends.append(at)
        return cls(head + b",".join(items) + tail, ends, len(head), len(tail))

    @classmethod
    def concat(cls, parts: Sequence[JoinedBody]) -> JoinedBody:
        """One body of the items of ``parts`` (same envelope), in order."""
        first = parts[0]
        head = first.body[: first.head_len]
        tail = first.body[len(first.body) - first.tail_len :]
        pieces = []
        ends: list[int] = []
        at = len(head) - 1  # the comma before the next item
        for part in parts:
            if not part.ends:
                continue
            inner = part.body[part.head_len : len(part.body) - part.tail_len]
            shift = at + 1 - part.head_len
            ends.extend(end + shift for end in part.ends)
            pieces.append(inner)
            at += 1 + len(inner)
        return cls(head + b",".join(pieces) + tail, ends, len(head), len(tail))

    def __len__(self) -> int:
        return len(self.ends)

    def start(self, i: int) -> int:
        return self.head_len if i == 0 else self.ends[i - 1] + 1

    def item(self, i: int) -> bytes:
        return self.body[self.start(i) : self.ends[i]]

    def sizes(self) -> list[int]:
        ends = self.ends
        starts = [self.head_len, *(e + 1 for e in ends[:-1])] if ends else []
        return [end - start for start, end in zip(starts, ends, strict=True)]

    def runs(self, max_bytes: int, max_items: int) -> Iterable[list[int]]:
        """``pack_sizes`` of the items, with the envelope as the overhead."""
        count = len(self.ends)
        if len(self.body) <= max_bytes and count <= max_items:
            return [list(range(count))] if count else []
        return pack_sizes(self.sizes(), max_bytes, max_items, self.head_len + self.tail_len)

    def run_body(self, run: Sequence[int]) -> bytes:
        """The body of the consecutive items ``run``, envelope included."""
        first, last = run[0], run[-1]
        if first == 0 and last == len(self.ends) - 1:
            return self.body
        body = self.body
        return (
            body[: self.head_len]
            + body[self.start(first) : self.ends[last]]
            + body[len(body) - self.tail_len :]
        )
