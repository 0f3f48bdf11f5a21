"""Reference core: parse, flatten and correlate audit lines (pure Python on orjson).

The compiled core (``_fast.pyx``) implements the same API and must give the same
spans and counters for the same input; this module is its test oracle and the
fallback where the extension is not built. The rules both follow:

* ``feed(data)`` takes zero or more whole lines separated by ``\\n`` (a last line
  without ``\\n`` counts as whole: framing is done before the core). Empty lines
  are skipped. A line longer than ``max_line_bytes`` (without its ``\\n``) is
  counted ``oversize`` and skipped.
* A line that is not valid JSON (or not UTF-8) is ``malformed``. A JSON value that
  is not an object, or whose envelope has wrong types (``type`` or ``time`` not a
  string, ``time`` not RFC 3339, ``request`` not an object, ``request.id`` or
  ``error`` not a string), is ``invalid``. A ``type`` other than ``request`` or
  ``response`` is ``unknown_type``.
* A request stores its time under ``request.id`` until ``deadline = (now_ns or the
  entry's own time) + ttl``. The device's ``sys/audit/test`` probe is ignored
  (``probes``); a request without an id cannot be paired and is counted ``no_id``.
  A second request with a pending id replaces the first (``duplicates``). When the
  cache holds ``max_pending`` requests, the one with the smallest (deadline,
  arrival) is evicted as an EVICTED span.
* A response whose request is pending becomes a PAIRED span from the request's time
  to its own; any other response an ORPHAN span of zero length.
* A span's name is ``<operation> <mount_point>``, else ``<operation> <path>`` (each
  part only when a non-empty string; ``request`` or ``response`` when neither), read
  from the entry that made the span: the response, or for UNANSWERED and EVICTED the
  request. The span keeps the parts too: ``operation`` and ``mount`` ("" when absent,
  empty or not a string), whatever ``include``/``exclude`` keep of the attributes.
* ``expire(now_ns)`` turns every pending request with ``deadline <= now_ns`` into an
  UNANSWERED span, in (deadline, arrival) order; ``flush()`` does it for all.
* A pending request keeps its time, its span name and what its UNANSWERED or
  EVICTED span needs for its attributes: those a response would have (flattened,
  after ``include``/``exclude``) plus the pairing marker. It keeps its line when the
  line is at most ``pending_attrs_bytes`` long, else its attributes cut to that size.
  Attributes over ``pending_attrs_bytes`` (the compact JSON object's length) are cut
  down: first the keys of ``PENDING_FIRST`` in its order, then the others in
  document order, each whole and only while the object stays within the cap,
  written in document order. An UNANSWERED or EVICTED span whose attributes were cut
  is counted ``attrs_trimmed``.
* ``expire(now_ns, limit)`` and ``flush(limit)`` emit at most ``limit`` spans a call
  (all when ``limit`` is None), so a caller can send a mass expiry in chunks.
"""

from __future__ import annotations

import heapq
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

from .model import EVICTED, ORPHAN, PAIRED, PAIRING_KEY, PAIRING_NAMES, UNANSWERED, SpanRecord

MASK64 = (1 << 64) - 1


def _first_loads_json(data: bytes | str) -> Any:
    """``orjson.loads``, orjson imported on the first call: with the uuid, platform and
    datetime modules it imports, it costs ~4 ms of start-up, and the compiled core
    reads well-formed lines without it."""
    global loads_json
    import orjson

    loads_json = orjson.loads
    return orjson.loads(data)


# orjson.loads once a line has been read with it; its JSONDecodeError is json's.
loads_json: Callable[[bytes | str], Any] = _first_loads_json
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
GOLDEN = 0x9E3779B97F4A7C15
PROBE_PATH = "sys/audit/test"
BAD_SAMPLE_BYTES = 48

COUNTER_NAMES = (
    "lines",
    "requests",
    "responses",
    "spans",
    "paired",
    "orphans",
    "unanswered",
    "evicted",
    "duplicates",
    "probes",
    "no_id",
    "malformed",
    "invalid",
    "unknown_type",
    "oversize",
    "sampled_out",
    "reserved_keys",
    "attrs_trimmed",
)

# Attribute names of the daemon's own (the pairing marker): an entry's keys under this
# prefix are dropped and counted (``reserved_keys``), so the daemon's appear once.
RESERVED_PREFIX = "vault_observe."
RESERVED_REASON = "entry key under 'vault_observe.' dropped (reserved for the daemon's attributes)"

# What an unanswered span keeps first when its request's attributes are over the
# cap: who called what, where. A name ending in ".*" stands for every key under it.
PENDING_FIRST = (
    "time",
    "type",
    "request.id",
    "error",
    "request.operation",
    "request.path",
    "request.mount_point",
    "request.mount_type",
    "request.namespace.*",
    "request.remote_address",
    "request.remote_port",
    "auth.display_name",
    "auth.entity_id",
    "auth.policies",
    "auth.token_policies",
    "auth.token_type",
    "auth.metadata.*",
    "request.client_id",
    "request.headers.*",
)
DEFAULT_PENDING_ATTRS_BYTES = 2048

_HEX = frozenset(b"0123456789abcdefABCDEF")
_LOWER_HEX_STR = frozenset("0123456789abcdef")
_DASHES = (8, 13, 18, 23)


# ---------------------------------------------------------------- ids


def fnv1a64(data: bytes, h: int = FNV_OFFSET) -> int:
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & MASK64
    return h


def splitmix64(x: int) -> int:
    z = (x + GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def uuid_bytes(text: bytes) -> bytes | None:
    """The 16 bytes of a 36-character UUID (any case), else None. The nil UUID is
    None too: an all-zero trace id is invalid in W3C trace context and OTLP, so
    that id is hashed like any other non-UUID id."""
    if len(text) != 36:
        return None
    for i, ch in enumerate(text):
        if i in _DASHES:
            if ch != 0x2D:
                return None
        elif ch not in _HEX:
            return None
    raw = bytes.fromhex(text.replace(b"-", b"").decode("ascii"))
    return raw if any(raw) else None


def trace_id_for(key: bytes) -> bytes:
    """Trace id: the UUID's own bytes, else a stable 128-bit hash of the id."""
    raw = uuid_bytes(key)
    if raw is not None:
        return raw
    hi = fnv1a64(key)
    lo = fnv1a64(key, FNV_OFFSET ^ GOLDEN)
    if hi == 0 and lo == 0:
        lo = 1
    return hi.to_bytes(8, "big") + lo.to_bytes(8, "big")


def span_id_for(trace_id: bytes) -> int:
    """Span id: stable, derived from the trace id, never zero."""
    hi = int.from_bytes(trace_id[:8], "big")
    lo = int.from_bytes(trace_id[8:], "big")
    rot = ((lo << 32) | (lo >> 32)) & MASK64
    return splitmix64(hi ^ rot) or 1


def sample_hash(trace_id: bytes) -> int:
    """A well-mixed 64-bit value of a trace id, for sampling decisions."""
    return splitmix64(int.from_bytes(trace_id[:8], "big") ^ int.from_bytes(trace_id[8:], "big"))


def parse_traceparent(value: Any) -> tuple[bytes, int] | None:
    """(trace id, parent span id) of a W3C ``traceparent`` value, else None.

    Vault audits request headers as arrays of strings; the first one counts. A
    header audited with hmac=true is an HMAC string and is ignored.
    """
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str) or len(value) < 55:
        return None
    parts = value.split("-")
    if len(parts) < 4:
        return None
    version, trace_hex, parent_hex, flags = parts[0], parts[1], parts[2], parts[3]
    if (
        len(version) != 2
        or len(trace_hex) != 32
        or len(parent_hex) != 16
        or len(flags) != 2
        or not all(c in _LOWER_HEX_STR for c in version + trace_hex + parent_hex + flags)
        or version == "ff"
        or (version == "00" and len(parts) != 4)
    ):
        return None
    trace_id = bytes.fromhex(trace_hex)
    parent_id = int(parent_hex, 16)
    if not any(trace_id) or parent_id == 0:
        return None
    return trace_id, parent_id


class KeyFilter:
    """``--include``/``--exclude``: glob patterns (fnmatch, case-sensitive) on flattened keys.

    With include patterns, only matching keys are kept; then excluded keys are dropped.
    Decisions are cached per key (keys repeat across entries), in a bounded cache.
    """

    CACHE_SIZE = 65536

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self._cache: dict[str, bool] = {}

    def keep(self, key: str) -> bool:
        decision = self._cache.get(key)
        if decision is None:
            decision = (not self.include or any(fnmatchcase(key, p) for p in self.include)) and not any(
                fnmatchcase(key, p) for p in self.exclude
            )
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = decision
        return decision


# ---------------------------------------------------------------- time


def _days_from_civil(y: int, m: int, d: int) -> int:
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _digits(s: bytes, start: int, count: int) -> int:
    part = s[start : start + count]
    if len(part) != count or not part.isdigit():
        raise ValueError
    return int(part)


def parse_rfc3339_ns(text: str) -> int | None:
    """Unix nanoseconds of ``YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)``, else None."""
    s = text.encode("utf-8", "surrogatepass")
    try:
        year = _digits(s, 0, 4)
        month = _digits(s, 5, 2)
        day = _digits(s, 8, 2)
        hour = _digits(s, 11, 2)
        minute = _digits(s, 14, 2)
        second = _digits(s, 17, 2)
    except ValueError:
        return None
    if (
        len(s) < 20
        or s[4:5] != b"-"
        or s[7:8] != b"-"
        or s[10:11] not in (b"T", b"t")
        or s[13:14] != b":"
        or s[16:17] != b":"
    ):
        return None
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        return None
    pos = 19
    frac = 0
    if s[pos : pos + 1] == b".":
        pos += 1
        start = pos
        while pos < len(s) and 0x30 <= s[pos] <= 0x39:
            pos += 1
        ndigits = pos - start
        if ndigits < 1 or ndigits > 9:
            return None
        frac = int(s[start:pos]) * 10 ** (9 - ndigits)
    offset = 0
    zone = s[pos:]
    if zone in (b"Z", b"z"):
        pass
    elif len(zone) == 6 and zone[0:1] in (b"+", b"-") and zone[3:4] == b":":
        try:
            oh = _digits(zone, 1, 2)
            om = _digits(zone, 4, 2)
        except ValueError:
            return None
        if oh > 23 or om > 59:
            return None
        offset = (oh * 3600 + om * 60) * (1 if zone[0:1] == b"+" else -1)
    else:
        return None
    days = _days_from_civil(year, month, day)
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
    return seconds * 1_000_000_000 + frac


# ---------------------------------------------------------------- flatten


def flatten(entry: dict[str, Any], flatten_arrays: bool = False) -> dict[str, Any]:
    """Nested objects -> dotted keys, in document order, with an explicit stack.

    Nulls, empty objects and empty arrays give no key. Arrays stay one value
    unless ``flatten_arrays`` (then ``key.0``, ``key.1``, ...). Names under
    ``RESERVED_PREFIX`` are dropped.
    """
    return flatten_counted(entry, flatten_arrays)[0]


def flatten_counted(entry: dict[str, Any], flatten_arrays: bool = False) -> tuple[dict[str, Any], int]:
    """``flatten`` and how many names it dropped as reserved (each one written counts)."""
    out: dict[str, Any] = {}
    reserved = 0
    stack: list[tuple[str, Any]] = [("", iter(entry.items()))]
    while stack:
        prefix, items = stack[-1]
        for key, value in items:
            name = prefix + str(key)
            if isinstance(value, dict):
                if value:
                    stack.append((name + ".", iter(value.items())))
                    break
            elif isinstance(value, list):
                if not value:
                    continue
                if flatten_arrays:
                    stack.append((name + ".", iter(enumerate(value))))
                    break
                if name.startswith(RESERVED_PREFIX):
                    reserved += 1
                else:
                    out[name] = value
            elif value is not None:
                if name.startswith(RESERVED_PREFIX):
                    reserved += 1
                else:
                    out[name] = value
        else:
            stack.pop()
    return out, reserved


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dump_attrs(attrs: dict[str, Any]) -> bytes:
    """The canonical attribute bytes that both cores produce, byte for byte.

    Compact JSON, non-ASCII kept as UTF-8, only ``"``, ``\\`` and control characters
    escaped (``\\n``, ``\\r``, ``\\t``, ``\\b``, ``\\f``, else ``\\u00XX``), floats
    as Python's ``repr`` (shortest round trip), integers in decimal. Zipkin tags are
    slices of these bytes, so both cores give the same tags too.
    """
    try:
        return _ENCODER.encode(attrs).encode("utf-8")
    except RecursionError:  # arrays nested near the parsers' depth limit of 1024
        return _dump_deep_text(attrs).encode("utf-8")


def dump_value(value: Any) -> str:
    """The canonical JSON text (as in ``dump_attrs``) of one decoded value, at any depth:
    what the value's bytes are inside canonical attribute bytes."""
    try:
        return _ENCODER.encode(value)
    except RecursionError:
        return _dump_deep_text(value)


def _dump_deep_text(value: Any) -> str:
    """dump_value with an explicit stack instead of json's recursive encoder."""
    enc = _ENCODER.encode
    if isinstance(value, dict):
        out = ["{"]
        stack: list[tuple[Any, bool, str]] = [(iter(value.items()), True, "}")]
    elif isinstance(value, list):
        out = ["["]
        stack = [(iter(value), False, "]")]
    else:
        return enc(value)
    firsts = [True]
    while stack:
        it, is_dict, closer = stack[-1]
        for item in it:
            if not firsts[-1]:
                out.append(",")
            firsts[-1] = False
            if is_dict:
                key, item = item
                out.append(enc(key))
                out.append(":")
            if isinstance(item, dict):
                out.append("{")
                stack.append((iter(item.items()), True, "}"))
                firsts.append(True)
                break
            if isinstance(item, list):
                out.append("[")
                stack.append((iter(item), False, "]"))
                firsts.append(True)
                break
            out.append(enc(item))
        else:
            out.append(closer)
            stack.pop()
            firsts.pop()
    return "".join(out)


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET_OR_QUOTE = re.compile(rb'["\[\]{}]')
_SCALAR_END = re.compile(rb"[,}\] \t\n\r]")
_WHITESPACE = re.compile(rb"[ \t\n\r]*")


def attr_members(attrs_json: bytes) -> list[tuple[str, bytes]]:
    """(name, raw JSON text of the value) of each member of a JSON object, in order,
    repeats included, values left undecoded: a value nested deeper than
    ``json.loads`` goes (about 990 levels; the cores accept up to 1,023) is read too.
    ValueError when the bytes are not one object (values are checked only for their
    strings and brackets)."""
    data = attrs_json
    n = len(data)
    i = _WHITESPACE.match(data, 0).end()  # type: ignore[union-attr]
    if i >= n or data[i] != 0x7B:
        raise ValueError("not a JSON object")
    i = _WHITESPACE.match(data, i + 1).end()  # type: ignore[union-attr]
    out: list[tuple[str, bytes]] = []
    if i < n and data[i] == 0x7D:
        if _WHITESPACE.match(data, i + 1).end() != n:  # type: ignore[union-attr]
            raise ValueError("data after the object")
        return out
    while True:
        m = _JSON_STRING.match(data, i)
        if m is None:
            raise ValueError(f"a member name expected at {i}")
        key = json.loads(m.group())
        i = _WHITESPACE.match(data, m.end()).end()  # type: ignore[union-attr]
        if i >= n or data[i] != 0x3A:
            raise ValueError(f"':' expected at {i}")
        i = _WHITESPACE.match(data, i + 1).end()  # type: ignore[union-attr]
        end = _value_end(data, i)
        out.append((key, data[i:end]))
        i = _WHITESPACE.match(data, end).end()  # type: ignore[union-attr]
        if i < n and data[i] == 0x2C:
            i = _WHITESPACE.match(data, i + 1).end()  # type: ignore[union-attr]
            continue
        if i < n and data[i] == 0x7D and _WHITESPACE.match(data, i + 1).end() == n:  # type: ignore[union-attr]
            return out
        raise ValueError(f"',' or '}}' expected at {i}")


def _value_end(data: bytes, i: int) -> int:
    """The index just past the JSON value at ``i``, with an explicit depth count."""
    n = len(data)
    if i >= n:
        raise ValueError("a value expected")
    c = data[i]
    if c == 0x22:
        m = _JSON_STRING.match(data, i)
        if m is None:
            raise ValueError(f"unterminated string at {i}")
        return m.end()
    if c != 0x5B and c != 0x7B:
        m = _SCALAR_END.search(data, i)
        end = m.start() if m is not None else n
        if end == i:
            raise ValueError(f"a value expected at {i}")
        return end
    depth = 0
    while True:
        m = _BRACKET_OR_QUOTE.search(data, i)
        if m is None:
            raise ValueError("unclosed array or object")
        i = m.start()
        c = data[i]
        if c == 0x22:
            s = _JSON_STRING.match(data, i)
            if s is None:
                raise ValueError(f"unterminated string at {i}")
            i = s.end()
            continue
        depth += 1 if c == 0x5B or c == 0x7B else -1
        i += 1
        if depth == 0:
            return i


def with_pairing(attrs_json: bytes, pairing: int) -> bytes:
    """Append the pairing marker to a flat JSON object."""
    marker = b'"' + PAIRING_KEY.encode() + b'":"' + PAIRING_NAMES[pairing].encode() + b'"}'
    if attrs_json == b"{}":
        return b"{" + marker
    return attrs_json[:-1] + b"," + marker


# ---------------------------------------------------------------- the core


class SkippedLine(Exception):
    """A line that is no request or response: the counter it counts under and why."""

    def __init__(self, counter: str, reason: str) -> None:
        super().__init__(reason)
        self.counter = counter
        self.reason = reason


class Envelope(NamedTuple):
    """What both cores read of a request or response line before correlating it."""

    entry: dict[str, Any]
    kind: str  # "request" or "response"
    time_ns: int
    request: dict[str, Any]  # {} when the entry has none
    request_id: str | None
    error: str  # "" for none


def read_entry(line: bytes) -> Envelope:
    """The envelope of one audit line by the rules above; SkippedLine for a line that
    is malformed, invalid or of an unknown type."""
    try:
        entry = loads_json(line)
    except json.JSONDecodeError as exc:
        raise SkippedLine("malformed", f"not JSON ({exc})") from None
    if not isinstance(entry, dict):
        raise SkippedLine("invalid", "not a JSON object")
    kind = entry.get("type")
    time_text = entry.get("time")
    request = entry.get("request")
    if not isinstance(kind, str) or not isinstance(time_text, str):
        raise SkippedLine("invalid", "'type' or 'time' missing or not a string")
    if request is None:
        request = {}
    elif not isinstance(request, dict):
        raise SkippedLine("invalid", "'request' is not an object")
    request_id = request.get("id")
    error = entry.get("error")
    if (request_id is not None and not isinstance(request_id, str)) or (
        error is not None and not isinstance(error, str)
    ):
        raise SkippedLine("invalid", "'request.id' or 'error' is not a string")
    time_ns = parse_rfc3339_ns(time_text)
    if time_ns is None:
        raise SkippedLine("invalid", "'time' is not RFC 3339")
    if kind != "request" and kind != "response":
        raise SkippedLine("unknown_type", f"unknown type {kind[:40]!r}")
    return Envelope(entry, kind, time_ns, request, request_id, error or "")


def traceparent_of(request: dict[str, Any]) -> tuple[bytes, int] | None:
    """(trace id, parent span id) of the request's valid traceparent header, if any."""
    headers = request.get("headers")
    if not isinstance(headers, dict):
        return None
    return parse_traceparent(headers.get("traceparent"))


def entry_attrs(
    entry: dict[str, Any], flatten_arrays: bool, key_filter: KeyFilter | None
) -> tuple[dict[str, Any], int]:
    """An entry's attributes: flattened, kept by the filter; and how many reserved keys
    were dropped."""
    attrs, reserved = flatten_counted(entry, flatten_arrays)
    if key_filter is not None:
        keep = key_filter.keep
        attrs = {key: value for key, value in attrs.items() if keep(key)}
    return attrs, reserved


class _Pending:
    __slots__ = (
        "attrs_json",
        "deadline",
        "error",
        "mark",
        "mount",
        "name",
        "operation",
        "parent",
        "raw",
        "request_id",
        "seq",
        "start_ns",
        "trace_id",
        "trimmed",
    )

    def __init__(
        self,
        trace_id: bytes,
        request_id: str,
        start_ns: int,
        deadline: int,
        seq: int,
        name: str,
        operation: str,
        mount: str,
        error: str,
        attrs_json: bytes,
        parent: tuple[bytes, int] | None,
        mark: int,
        trimmed: bool,
        raw: bool,
    ) -> None:
        self.trace_id = trace_id  # the id's own 16 bytes (UUID or hash)
        self.request_id = request_id
        self.start_ns = start_ns
        self.deadline = deadline
        self.seq = seq
        self.name = name
        self.operation = operation
        self.mount = mount
        self.error = error
        self.attrs_json = attrs_json
        self.parent = parent  # (trace id, parent span id) from a traceparent header
        self.mark = mark  # the mark of the feed() call that stored it
        self.trimmed = trimmed  # attrs_json was cut to the cap
        self.raw = raw  # attrs_json holds the request's line, not its attributes


class Core:
    """Pure-Python core; see the module docstring for the rules."""

    implementation = "py"

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
        pending_attrs_bytes: int = DEFAULT_PENDING_ATTRS_BYTES,
    ) -> None:
        # The compiled core may parse big chunks without the GIL, for the threads
        # that wait for it; this one cannot, and keeps the setting for the same API.
        self.release_gil = bool(release_gil)
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if sample_rate < 1:
            raise ValueError("sample_rate must be at least 1")
        self.pending_attrs_bytes = check_pending_attrs_bytes(pending_attrs_bytes)
        self.key_filter = KeyFilter(include, exclude) if include or exclude else None
        self.sample_rate = sample_rate
        self.trace_context = trace_context
        self.ttl_ns = int(ttl_s * 1_000_000_000)
        self.max_pending = max_pending
        self.max_line_bytes = max_line_bytes
        self.prefix = prefix
        self.flatten_arrays = flatten_arrays
        self._pending: dict[bytes, _Pending] = {}
        self._heap: list[tuple[int, int, bytes]] = []
        self._seq = 0
        # Pending requests per mark, in the order the marks were first stored: with
        # marks that never decrease from one feed() to the next, the first key is the
        # smallest (oldest_pending_mark is then O(1)).
        self._marks: OrderedDict[int, int] = OrderedDict()
        self._marks_sorted = True
        self._mark = 0
        self._ready: list[SpanRecord] = []
        self._counts = dict.fromkeys(COUNTER_NAMES, 0)
        self._watermark = 0
        self._bad_samples: dict[str, tuple[str, bytes]] = {}

    def set_filters(self, *, include: Sequence[str] = (), exclude: Sequence[str] = (), sample_rate: int = 1) -> None:
        """Change --include, --exclude and --sample-rate for the lines fed from now on (a reload)."""
        if sample_rate < 1:
            raise ValueError("sample_rate must be at least 1")
        self.key_filter = KeyFilter(include, exclude) if include or exclude else None
        self.sample_rate = sample_rate

    # -- public API

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def watermark_ns(self) -> int:
        """The latest entry time seen (0 before any)."""
        return self._watermark

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    def take_bad_samples(self) -> dict[str, tuple[str, bytes]]:
        """Per counter, (reason, first bytes) of its latest skipped line since the last call."""
        samples, self._bad_samples = self._bad_samples, {}
        return samples

    def feed(self, data: bytes | bytearray | memoryview, now_ns: int | None = None, mark: int = 0) -> int:
        """Process whole lines; return how many spans are ready. Every request stored
        meanwhile remembers ``mark`` (a non-negative int; in follow mode the offset of
        the chunk in its file), for ``oldest_pending_mark``."""
        self._mark = check_mark(mark)
        if not isinstance(data, bytes):
            # any buffer, contiguous or not; TypeError for what is not one (an int
            # would make bytes() a run of NULs), as in the compiled core
            data = memoryview(data).tobytes()
        counts = self._counts
        prefix = self.prefix
        for line in data.split(b"\n"):
            if not line:
                continue
            counts["lines"] += 1
            if len(line) > self.max_line_bytes:
                counts["oversize"] += 1
                self._bad("oversize", f"line of {len(line)} bytes is over the limit", line)
                continue
            if prefix and line.startswith(prefix):
                line = line[len(prefix) :]
            self._line(line, now_ns)
        return len(self._ready)

    def oldest_pending_mark(self) -> int | None:
        """The smallest mark among the requests still pending; None when none is."""
        marks = self._marks
        if not marks:
            return None
        if self._marks_sorted:
            return next(iter(marks))
        keys = list(marks)
        self._marks_sorted = all(a < b for a, b in zip(keys, keys[1:], strict=False))
        return min(keys)

    def expire(self, now_ns: int, limit: int | None = None) -> int:
        """Pending requests due by ``now_ns`` become UNANSWERED spans (at most ``limit``);
        return how many spans are ready."""
        heap = self._heap
        left = check_limit(limit)
        while heap and heap[0][0] <= now_ns and left:
            _deadline, seq, key = heap[0]
            pending = self._pending.get(key)
            if pending is None or pending.seq != seq:
                heapq.heappop(heap)  # stale: answered or replaced
                continue
            self._pop_oldest(UNANSWERED)
            left -= 1
        return len(self._ready)

    def flush(self, limit: int | None = None) -> int:
        """Pending requests become UNANSWERED spans (at most ``limit``); return how many
        spans are ready."""
        left = check_limit(limit)
        while self._pending and left:
            self._pop_oldest(UNANSWERED)
            left -= 1
        return len(self._ready)

    def drain(self) -> list[SpanRecord]:
        ready, self._ready = self._ready, []
        return ready

    def drain_spans(self) -> Sequence[SpanRecord]:
        """The ready spans as one sequence, what the daemon queues for the sinks (the
        compiled core packs them; here it is the list of ``drain``)."""
        return self.drain()

    # -- internals

    def _line(self, line: bytes, now_ns: int | None) -> None:
        counts = self._counts
        try:
            envelope = read_entry(line)
        except SkippedLine as skipped:
            counts[skipped.counter] += 1
            self._bad(skipped.counter, skipped.reason, line)
            return
        entry, kind, time_ns, request, request_id, error = envelope
        counts["requests" if kind == "request" else "responses"] += 1
        if time_ns > self._watermark:
            self._watermark = time_ns
        naming = span_parts(request, kind)
        if kind == "request":
            if request.get("path") == PROBE_PATH:
                counts["probes"] += 1
                return
            if not request_id:
                counts["no_id"] += 1
                self._bad("no_id", "request without request.id", line)
                return
            key = request_id.encode("utf-8", "surrogatepass")
            # the line when it fits the cap: flattened only if no response comes
            raw = len(line) <= self.pending_attrs_bytes
            attrs_json, trimmed = (line, False) if raw else self._pending_attrs(entry, line)
            self._store(
                key,
                request_id,
                time_ns,
                (now_ns if now_ns is not None else time_ns) + self.ttl_ns,
                naming,
                error,
                attrs_json,
                trimmed,
                raw,
                self._parent(request),
            )
            return
        attrs_json = self._attrs_json(entry, line)
        parent = self._parent(request)
        # an ORPHAN span of zero length unless the request is pending
        start_ns, pairing = time_ns, ORPHAN
        if not request_id:
            id_bytes = trace_id_for(line)
        else:
            key = request_id.encode("utf-8", "surrogatepass")
            pending = self._pending.pop(key, None)
            if pending is None:
                id_bytes = trace_id_for(key)
            else:
                self._unmark(pending.mark)
                id_bytes, start_ns, pairing = pending.trace_id, pending.start_ns, PAIRED
        end_ns = max(time_ns, start_ns)
        self._emit(id_bytes, request_id or "", naming, start_ns, end_ns, error, pairing, attrs_json, parent)

    def _parent(self, request: dict[str, Any]) -> tuple[bytes, int] | None:
        return traceparent_of(request) if self.trace_context else None

    def _bad(self, counter: str, reason: str, line: bytes) -> None:
        # Only the head of the line: with log_raw=true, lines hold secrets.
        self._bad_samples[counter] = (reason, line[:BAD_SAMPLE_BYTES])

    def _attrs(self, entry: dict[str, Any], line: bytes) -> dict[str, Any]:
        attrs, reserved = entry_attrs(entry, self.flatten_arrays, self.key_filter)
        if reserved:
            self._counts["reserved_keys"] += reserved
            self._bad("reserved_keys", RESERVED_REASON, line)
        return attrs

    def _attrs_json(self, entry: dict[str, Any], line: bytes) -> bytes:
        return dump_attrs(self._attrs(entry, line))

    def _pending_attrs(self, entry: dict[str, Any], line: bytes) -> tuple[bytes, bool]:
        """A request's attribute bytes as it waits (cut to the cap), and whether cut."""
        attrs = self._attrs(entry, line)
        whole = dump_attrs(attrs)
        if len(whole) <= self.pending_attrs_bytes:
            return whole, False
        return trim_attrs(
            [dump_attrs({k: v})[1:-1] for k, v in attrs.items()], list(attrs), self.pending_attrs_bytes
        ), True

    def _store(
        self,
        key: bytes,
        request_id: str,
        time_ns: int,
        deadline: int,
        naming: tuple[str, str, str],
        error: str,
        attrs_json: bytes,
        trimmed: bool,
        raw: bool,
        parent: tuple[bytes, int] | None,
    ) -> None:
        replaced = self._pending.pop(key, None)
        if replaced is not None:
            self._counts["duplicates"] += 1  # its heap entry goes stale
            self._unmark(replaced.mark)
        elif len(self._pending) >= self.max_pending:
            self._pop_oldest(EVICTED)
        self._seq += 1
        mark = self._mark
        self._pending[key] = _Pending(
            trace_id_for(key),
            request_id,
            time_ns,
            deadline,
            self._seq,
            *naming,
            error,
            attrs_json,
            parent,
            mark,
            trimmed,
            raw,
        )
        heapq.heappush(self._heap, (deadline, self._seq, key))
        marks = self._marks
        count = marks.get(mark)
        if count is None:
            if marks and mark < next(reversed(marks)):
                self._marks_sorted = False
            marks[mark] = 1
        else:
            marks[mark] = count + 1

    def _unmark(self, mark: int) -> None:
        """A request of ``mark`` left the table."""
        marks = self._marks
        count = marks[mark] - 1
        if count:
            marks[mark] = count
        else:
            del marks[mark]
            if not marks:
                # The table is empty: give back what a burst grew (a dict keeps its
                # size when emptied; the heap may hold stale entries).
                self._pending = {}
                self._heap = []
                self._marks = OrderedDict()

    def _pop_oldest(self, pairing: int) -> None:
        """Remove the live pending entry with the smallest (deadline, seq)."""
        heap = self._heap
        while heap:
            _deadline, seq, key = heapq.heappop(heap)
            pending = self._pending.get(key)
            if pending is None or pending.seq != seq:
                continue  # stale: answered or replaced
            del self._pending[key]
            self._unmark(pending.mark)
            attrs_json, trimmed = pending.attrs_json, pending.trimmed
            if pending.raw:
                attrs_json, trimmed = self._pending_attrs(loads_json(attrs_json), attrs_json)
            if trimmed:
                self._counts["attrs_trimmed"] += 1
            self._emit(
                pending.trace_id,
                pending.request_id,
                (pending.name, pending.operation, pending.mount),
                pending.start_ns,
                pending.start_ns,
                pending.error,
                pairing,
                attrs_json,
                pending.parent,
            )
            return

    def _emit(
        self,
        id_bytes: bytes,
        request_id: str,
        naming: tuple[str, str, str],
        start_ns: int,
        end_ns: int,
        error: str,
        pairing: int,
        attrs_json: bytes,
        parent: tuple[bytes, int] | None,
    ) -> None:
        """``id_bytes``: the request id's 16 bytes; the span id comes from them even when a
        traceparent header puts the span into the caller's trace. ``naming``: the span's
        (name, operation, mount)."""
        counts = self._counts
        counts[("paired", "orphans", "unanswered", "evicted")[pairing]] += 1
        sample_rate = 1
        if self.sample_rate > 1 and pairing == PAIRED and not error:
            # Keep 1 in N successful spans, by trace id so the choice is stable; errors always.
            trace_id = parent[0] if parent is not None else id_bytes
            if sample_hash(trace_id) % self.sample_rate:
                counts["sampled_out"] += 1
                return
            sample_rate = self.sample_rate
        counts["spans"] += 1
        if pairing != PAIRED:
            attrs_json = with_pairing(attrs_json, pairing)
        self._ready.append(
            SpanRecord(
                parent[0] if parent is not None else id_bytes,
                span_id_for(id_bytes),
                parent[1] if parent is not None else 0,
                naming[0],
                start_ns,
                end_ns,
                error,
                pairing,
                request_id,
                attrs_json,
                sample_rate,
                naming[1],
                naming[2],
            )
        )


def _pending_first_rank(key: str) -> int:
    """The place of a key in PENDING_FIRST, else len(PENDING_FIRST)."""
    for rank, name in enumerate(PENDING_FIRST):
        if key == name or (name.endswith(".*") and key.startswith(name[:-1]) and len(key) > len(name) - 1):
            return rank
    return len(PENDING_FIRST)


def trim_attrs(members: list[bytes], keys: list[str], cap: int) -> bytes:
    """The JSON object of the members (``"key":value`` each, in document order) that
    fit in ``cap`` bytes: those of PENDING_FIRST first, in its order, then the rest in
    document order; each whole and only if it still fits."""
    order = sorted(range(len(members)), key=lambda i: (_pending_first_rank(keys[i]), i))
    budget = cap - 1  # "{" and, per member, its length and a "," or the closing "}"
    chosen = []
    for i in order:
        cost = len(members[i]) + 1
        if cost <= budget:
            budget -= cost
            chosen.append(i)
    chosen.sort()
    return b"{" + b",".join(members[i] for i in chosen) + b"}"


def check_pending_attrs_bytes(cap: int) -> int:
    if isinstance(cap, bool) or not isinstance(cap, int) or not 2 <= cap < 1 << 31:
        raise ValueError("pending_attrs_bytes must be an int from 2 to 2**31 - 1")
    return cap


def check_limit(limit: int | None) -> int:
    """A limit of expire() or flush(): None for all, else a positive int."""
    if limit is None:
        return -1  # counts down without reaching 0
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError("limit must be None or a positive int")
    return limit


MARK_LIMIT = 1 << 64


def check_mark(mark: int) -> int:
    """A feed() mark: an int from 0 to 2**64 - 1 (what the compiled core keeps)."""
    if isinstance(mark, bool) or not isinstance(mark, int):
        raise TypeError(f"mark must be an int, not {type(mark).__name__}")
    if not 0 <= mark < MARK_LIMIT:
        raise ValueError("mark must be from 0 to 2**64 - 1")
    return mark


def span_parts(request: dict[str, Any], kind: str) -> tuple[str, str, str]:
    """(name, operation, mount) of a span: the name is ``<operation> <mount_point>``,
    else ``<operation> <path>`` (low cardinality); operation and mount are "" when
    absent, empty or not a string."""
    operation = request.get("operation")
    if not isinstance(operation, str):
        operation = ""
    mount = request.get("mount_point")
    if not isinstance(mount, str):
        mount = ""
    target = mount or request.get("path")
    parts = [p for p in (operation, target) if isinstance(p, str) and p]
    return " ".join(parts) or kind, operation, mount
