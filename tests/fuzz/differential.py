"""Differential mutation fuzzer: both cores and every encoder on mutated audit lines.

Seeds are the lines of ``tests/data/*.jsonl`` and, when present, of the shared
corpus (``../shared/corpus``). Each step feeds the same chunk (a random number of
lines, some of them mutated; now and then one big enough for the compiled core's
GIL-free two-pass path; as bytes, bytearray or memoryview) to the compiled core and
to the reference core, built with the same options, and compares their counters,
pending counts, watermarks and skipped-line samples, then every span (all fields
and the attribute bytes). Each batch of spans is then encoded by every encoder:
the compiled Zipkin protobuf, Honeycomb and OTLP encoders on the compiled core's
packed spans against the Python encoders on the reference core's records, byte
for byte, and every body is decoded (protobuf, JSON) and checked for its span
count, non-zero trace ids and unique attribute names. The Zipkin JSON and stdout
encoders are run and decoded too.

Mutations: byte flips, truncation, splicing of two lines, deep nesting (up to past
the parsers' limit), huge and odd numbers, invalid UTF-8, escaped lone surrogates,
NUL bytes, long, empty, dotted and reserved (``vault_observe.``) keys, type changes
of ``type``/``time``/``request.id``/``error``, odd RFC 3339 times, duplicate and
nil request ids, and random chunk boundaries.

``--threads`` adds the thread-misuse cases: several threads calling feed, expire,
flush and drain on one compiled core (each call either works or raises the core's
RuntimeError), and a buffer changed by another thread during a GIL-free feed.

Exit status 0 when nothing was found; 1 with the offending chunk written to
``--out`` on a core difference, an encoder difference or an encoder failure. A
sanitizer report, a crash or a hang (``--step-timeout``) ends the process with
another non-zero status. Run it as ``python -m tests.fuzz.differential`` from the
repository root; see tests/fuzz/README.md for the sanitized build.
"""

from __future__ import annotations

import argparse
import copy
import faulthandler
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]
ENCODE_SPANS = 48
NIL = "00000000-0000-0000-0000-000000000000"
T0 = "2026-11-27T08:00:00.000000000Z"

# ---------------------------------------------------------------- seeds


def seed_files(extra: Sequence[str]) -> list[Path]:
    files = sorted((REPO / "tests" / "data").glob("*.jsonl"))
    corpus = Path(os.environ.get("VAULT_OBSERVE_CORPUS_DIR", REPO.parent / "shared" / "corpus"))
    if corpus.is_dir():
        files += sorted(corpus.glob("*.jsonl"))
    files += [Path(p) for p in extra]
    return files


def load_seeds(files: Sequence[Path]) -> list[bytes]:
    lines: list[bytes] = []
    for path in files:
        lines += [line for line in path.read_bytes().split(b"\n") if line.strip()]
    if not lines:
        raise SystemExit("no seed lines found")
    return lines


# ---------------------------------------------------------------- mutations

ODD_NUMBERS = (
    "0", "-0", "-0.0", "1e308", "-1e-320", "5e-324", "2.2250738585072014e-308", "1e16", "1.5e-7",
    "1E5", "1e+5", "0.1", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
    "-9223372036854775809", "18446744073709551615", "18446744073709551616",
    "123456789012345678901234567890", "1e400", "-1e400", "00", "1.", ".5", "+1", "1e", "NaN",
)
ODD_TIMES = (
    "2026-11-27T08:00:00Z", "2026-11-27t08:00:00z", "2026-11-27T08:00:00.1Z",
    "2026-11-27T08:00:00.123456789+23:59", "2026-11-27T08:00:00.1234567891Z", "2026-02-30T00:00:00Z",
    "2026-13-01T00:00:00Z", "2026-11-27T24:00:00Z", "2026-11-27T23:59:60Z", "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999-23:59", "2026-11-27T08:00:00", "2026-11-27 08:00:00Z",
    "2026-11-27T08:00:00+24:00", "2026-11-27T08:00:00.Z", "", "2026-11-27T08:00:00Z ",
    "\u0662026-11-27T08:00:00Z",
)
ODD_STRINGS = (
    "", "x", "a.b", "vault_observe.pairing", "\u00e9\u4e2d\U0001f600", "\n\t\x00\x1f\"\\", "\u2028",
    "x" * 5000, NIL, NIL.upper(), "2F0C5A4E-7B1D-4C3E-9A8F-1D2E3F405162",
)
ODD_KEYS = ("", ".", "a.b", "a..b", ".x", "x.", "vault_observe.pairing", "vault_observe.x", "k" * 3000,
            "\u00e9", "\x00", "\"", "error", "type", "request.id")
TYPE_VALUES: tuple[Any, ...] = (None, 0, 1.5, True, [], {}, ["request"], {"a": 1}, "", "kmip-request")
DEEP_LEVELS = (2, 31, 32, 33, 63, 64, 65, 83, 84, 85, 255, 256, 300, 985, 986, 990, 1000, 1015, 1020,
               1021, 1022, 1023, 1024, 1030)


def nested(depth: int, rng: random.Random) -> Any:
    value: Any = rng.choice(["leaf\"\\\u00e9", 1.5, None, True, -7, {"k": [1, {"z": None}]}])
    for _ in range(depth - 1):
        if rng.random() < 0.2:
            value = {rng.choice(["a", "b.c", "vault_observe.p"]): value, "n": 1}
        else:
            value = [value] if rng.random() < 0.7 else [1, value, "x"]
    return value


class Mutator:
    def __init__(self, rng: random.Random, seeds: list[bytes]) -> None:
        self.rng = rng
        self.seeds = seeds
        self.ids: list[str] = []
        self.nested: dict[int, list[Any]] = {}
        self.structured: list[Callable[[dict[str, Any]], None]] = [
            self.deep,
            self.odd_number,
            self.odd_key,
            self.type_change,
            self.odd_time,
            self.duplicate_id,
            self.odd_string,
            self.reserved,
        ]
        self.raw: list[Callable[[bytes], bytes]] = [
            self.flip,
            self.truncate,
            self.splice,
            self.bad_utf8,
            self.surrogate,
            self.nul,
            self.raw_number,
        ]

    def line(self) -> bytes:
        rng = self.rng
        line = rng.choice(self.seeds)
        r = rng.random()
        if r < 0.4:
            return self.remember(line)
        if r < 0.8:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                return line
            if isinstance(entry, dict):
                for _ in range(rng.choice((1, 1, 1, 2, 3))):
                    rng.choice(self.structured)(entry)
                out = json.dumps(entry, ensure_ascii=rng.random() < 0.2, separators=(",", ":"))
                return out.encode("utf-8", "surrogatepass")
            return line
        for _ in range(rng.choice((1, 1, 2))):
            line = rng.choice(self.raw)(line)
        return line.replace(b"\n", b" ")

    def remember(self, line: bytes) -> bytes:
        try:
            rid = orjson.loads(line).get("request", {}).get("id")
        except (orjson.JSONDecodeError, AttributeError):
            return line
        if isinstance(rid, str):
            self.ids.append(rid)
            if len(self.ids) > 2000:
                del self.ids[:1000]
        return line

    # -- structured: on a decoded entry

    def where(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A random object of the entry to put something in."""
        rng = self.rng
        spots = [entry]
        for key in ("request", "response", "auth"):
            value = entry.get(key)
            if isinstance(value, dict):
                spots.append(value)
                for inner in value.values():
                    if isinstance(inner, dict):
                        spots.append(inner)
        return rng.choice(spots)

    def deep(self, entry: dict[str, Any]) -> None:
        spot = self.where(entry)
        depth = self.rng.choice(DEEP_LEVELS)
        pool = self.nested.setdefault(depth, [])
        if len(pool) < 4:  # a few shapes per depth, made once (the values are only read)
            pool.append(nested(depth, self.rng))
        # in a fresh list: later mutations of this line pick objects to write into
        # (``where``) and must never reach a pooled value, or the pool would change
        spot[self.rng.choice(["deep", "data", "x.y", "error_detail"])] = [self.rng.choice(pool)]
        if self.rng.random() < 0.5 and "error" not in entry:
            entry["error"] = "permission denied"  # an error before the deep value's key
            entry.update({k: entry.pop(k) for k in list(entry) if k != "error"})

    def odd_number(self, entry: dict[str, Any]) -> None:
        text = self.rng.choice(ODD_NUMBERS)
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        self.where(entry)[self.rng.choice(["n", "ttl", "count"])] = value

    def odd_key(self, entry: dict[str, Any]) -> None:
        self.where(entry)[self.rng.choice(ODD_KEYS)] = self.rng.choice([1, "v", [1, 2], {"a": None}, None])

    def type_change(self, entry: dict[str, Any]) -> None:
        rng = self.rng
        field = rng.choice(["type", "time", "request.id", "error", "request", "request.headers"])
        value = copy.deepcopy(rng.choice(TYPE_VALUES))
        if field == "request.id" or field == "request.headers":
            request = entry.get("request")
            if isinstance(request, dict):
                if field == "request.headers":
                    tp = f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"
                    request["headers"] = {"traceparent": rng.choice([[tp], tp, [], [1], "00-" + "0" * 50])}
                else:
                    request["id"] = value
        else:
            entry[field] = value

    def odd_time(self, entry: dict[str, Any]) -> None:
        entry["time"] = self.rng.choice(ODD_TIMES)

    def duplicate_id(self, entry: dict[str, Any]) -> None:
        request = entry.get("request")
        if isinstance(request, dict):
            pool = self.ids or [NIL]
            request["id"] = self.rng.choice([*pool[-50:], NIL, NIL.upper(), "dup-id"])
            if self.rng.random() < 0.3:
                entry["type"] = self.rng.choice(["request", "response"])

    def odd_string(self, entry: dict[str, Any]) -> None:
        spot = self.where(entry)
        spot[self.rng.choice(["s", "path", "operation", "mount_point", "id"])] = self.rng.choice(ODD_STRINGS)

    def reserved(self, entry: dict[str, Any]) -> None:
        rng = self.rng
        if rng.random() < 0.5:
            entry["vault_observe.pairing"] = rng.choice(["orphan", "paired", 1, ["x"]])
        else:
            entry["vault_observe"] = {"pairing": rng.choice(["evicted", None, {"x": [1]}])}

    # -- raw: on the bytes

    def flip(self, line: bytes) -> bytes:
        data = bytearray(line)
        for _ in range(self.rng.choice((1, 1, 2, 4))):
            if data:
                i = self.rng.randrange(len(data))
                data[i] = self.rng.choice((data[i] ^ (1 << self.rng.randrange(8)), self.rng.randrange(256)))
        return bytes(data)

    def truncate(self, line: bytes) -> bytes:
        return line[: self.rng.randrange(len(line) + 1)]

    def splice(self, line: bytes) -> bytes:
        other = self.rng.choice(self.seeds)
        return line[: self.rng.randrange(len(line) + 1)] + other[self.rng.randrange(len(other) + 1) :]

    def insert_in_string(self, line: bytes, what: bytes) -> bytes:
        i = line.find(b'"', self.rng.randrange(len(line) + 1))
        if i < 0:
            i = line.find(b'"')
        if i < 0:
            return line + what
        return line[: i + 1] + what + line[i + 1 :]

    def bad_utf8(self, line: bytes) -> bytes:
        return self.insert_in_string(line, self.rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                                                            b"\xe2\x82", b"\xc0\xaf"]))

    def surrogate(self, line: bytes) -> bytes:
        return self.insert_in_string(line, self.rng.choice([b"\\ud800", b"\\udfff", b"\\ud83d\\ude00", b"\\ud83dx",
                                                            b"\\uDC00"]))

    def nul(self, line: bytes) -> bytes:
        return self.insert_in_string(line, self.rng.choice([b"\x00", b"\\u0000", b"\x01"]))

    def raw_number(self, line: bytes) -> bytes:
        i = line.find(b":")
        if i < 0:
            return line
        return line[: i + 1] + self.rng.choice(ODD_NUMBERS).encode() + b"," + line[i + 1 :]


# ---------------------------------------------------------------- the comparison


class Finding(Exception):
    pass


def core_options(rng: random.Random) -> dict[str, Any]:
    options: dict[str, Any] = {"max_pending": rng.choice([1_000_000, 50, 1]), "ttl_s": rng.choice([10.0, 0.5])}
    r = rng.random()
    if r < 0.15:
        options["include"] = ["request.*", "error", "type", "vault_observe*"]
        options["exclude"] = ["request.data.*"]
    elif r < 0.3:
        options["flatten_arrays"] = True
    elif r < 0.4:
        options["sample_rate"] = 3
    elif r < 0.45:
        options["prefix"] = b"@cee: "
    return options


def state(core: Any) -> tuple[Any, ...]:
    bad = {name: head for name, (_reason, head) in core.take_bad_samples().items()}
    return core.counters(), core.pending, core.watermark_ns, bad


def compare_cores(fast: Any, ref: Any, where: str) -> None:
    a, b = state(fast), state(ref)
    if a != b:
        raise Finding(f"cores differ ({where}): compiled {a!r} reference {b!r}")


def compare_spans(packed: Any, records: list[Any]) -> None:
    fast = list(packed)
    if len(fast) != len(records):
        raise Finding(f"span counts differ: compiled {len(fast)} reference {len(records)}")
    for i, (x, y) in enumerate(zip(fast, records, strict=True)):
        # equal attribute bytes are equal attributes: no need to decode them
        if x.attrs_json != y.attrs_json or fields(x) != fields(y):
            raise Finding(f"span {i} differs:\n compiled  {x.as_tuple()!r}\n reference {y.as_tuple()!r}")


def fields(span: Any) -> tuple[Any, ...]:
    return (span.trace_id, span.span_id, span.parent_span_id, span.name, span.start_ns, span.end_ns, span.error,
            span.pairing, span.request_id, span.sample_rate, span.operation, span.mount, type(span.name),
            type(span.start_ns))


class Encoders:
    """Every encoder of the sinks, compiled and Python."""

    def __init__(self) -> None:
        from vault_observe import __version__
        from vault_observe.sinks import zipkin as zipkin_sink
        from vault_observe.sinks.encoding import honeycomb, otlp, zipkin, zipkin_proto

        scope = (zipkin_sink.SCOPE_NAME, __version__)
        self.zipkin_fast = zipkin.ProtoBodyEncoder("vault", *scope)
        self.zipkin_py = zipkin_proto.ProtoEncoder("vault", *scope)
        self.zipkin_json = zipkin.JsonEncoder("vault", *scope)
        self.honey_fast = honeycomb.BatchEncoder("vault")
        self.honey_py = honeycomb.BatchEncoder("vault", compiled=False)
        self.otlp_fast = otlp.BodyEncoder("vault")
        self.otlp_py = otlp.BodyEncoder("vault", compiled=False)
        if self.zipkin_fast.implementation != "c":
            raise SystemExit("the compiled _zipkin_proto is not importable")
        if self.honey_fast.implementation != "c" or self.otlp_fast.implementation != "c":
            raise SystemExit("the compiled _batch_json is not importable")
        self.declined = 0  # batches a compiled encoder left to the Python one
        self.bodies = 0
        self.checked = 0

    def check(self, packed: Any, records: list[Any]) -> None:
        from tests.receivers import decode_zipkin_proto
        from vault_observe.errors import LeftToPython
        from vault_observe.sinks.encoding.wire import JoinedBody
        from vault_observe.sinks.isolate import EncodeGuard
        from vault_observe.sinks.stdout import encode_line

        n = len(records)
        if not n:
            return
        guard = EncodeGuard("fuzz", _quiet)

        def joined(body: Any) -> Any:
            return None if body is None else body.body

        def proto(encode: Callable[[Any], bytes], spans: Any) -> tuple[Any, int]:
            return guard.encode(encode, spans, b"".join)

        def batch(encode: Callable[[Any], Any], spans: Any) -> tuple[Any, int]:
            body, dropped = guard.encode(encode, spans, JoinedBody.concat)
            return joined(body), dropped

        # Zipkin has no room for a time before 1970 or beyond 2**64 microseconds: such a
        # span is refused, and only such a span
        out_of_range = sum(1 for r in records if not _zipkin_times_fit(r))
        checks: list[tuple[str, Callable[[], tuple[Any, int]], list[Callable[[], tuple[Any, int]]], int]] = [
            ("zipkin-proto", lambda: proto(self.zipkin_py.encode, records),
             [lambda: proto(self.zipkin_fast.encode, packed), lambda: proto(self.zipkin_fast.encode, records)],
             out_of_range),
            ("honeycomb", lambda: batch(self.honey_py.encode, records),
             [lambda: batch(self.honey_fast.encode, packed), lambda: batch(self.honey_fast.encode, records)], 0),
            ("otlp", lambda: batch(self.otlp_py.encode, records),
             [lambda: batch(self.otlp_fast.encode, packed), lambda: batch(self.otlp_fast.encode, records)], 0),
        ]
        bodies: dict[str, Any] = {}
        for name, ref, fasts, refused in checks:
            expected, dropped = ref()
            if dropped != refused:
                raise Finding(f"{name}: the Python encoder could not encode {dropped} of {n} spans "
                              f"({refused} expected): {_quiet.last!r}")
            for source, fast in zip(("packed spans", "records"), fasts, strict=True):
                got, got_dropped = fast()
                if (got, got_dropped) != (expected, dropped):
                    raise Finding(f"{name} ({source}): compiled and Python differ ({got_dropped} and {dropped} "
                                  f"spans dropped):\n {(got or b'')[:300]!r}\n {(expected or b'')[:300]!r}")
                self.bodies += 1
            bodies[name] = expected
        for fast in (self.zipkin_fast, self.honey_fast, self.otlp_fast):
            try:
                fast.compiled_encode(packed)
            except LeftToPython:
                self.declined += 1
        from vault_observe.sinks.encoding.zipkin import merge_bodies

        json_body, json_dropped = guard.encode(
            self.zipkin_json.encode, records, lambda bodies: merge_bodies("application/json", bodies)
        )
        if json_dropped != out_of_range:
            raise Finding(f"zipkin-json: {json_dropped} spans could not be encoded: {_quiet.last!r}")
        # every body decoded
        self.checked += 1
        decoded = {
            # pure-Python protobuf is slow: every fourth body
            "zipkin-proto": decode_zipkin_proto(bodies["zipkin-proto"] or b"") if self.checked % 4 == 0 else None,
            "zipkin-json": json.loads(json_body) if json_body is not None else [],
            "honeycomb": json.loads(bodies["honeycomb"]),
            "otlp": json.loads(bodies["otlp"])["resourceSpans"][0]["scopeSpans"][0]["spans"],
            "stdout": [json.loads(line) for line in b"".join(encode_line(r) for r in records).splitlines()],
        }
        for name, spans in decoded.items():
            if spans is None:
                continue
            want = n - out_of_range if name.startswith("zipkin") else n
            if len(spans) != want:
                raise Finding(f"{name}: {len(spans)} spans decoded of {want}")
        for span in decoded["otlp"]:
            if span["traceId"] == "0" * 32:
                raise Finding("otlp: an all-zero trace id")
            keys = [a["key"] for a in span["attributes"]]
            if len(keys) != len(set(keys)):
                raise Finding(f"otlp: repeated attribute names in {span['spanId']}")
        for record in records:
            if not any(record.trace_id):
                raise Finding(f"an all-zero trace id: {record!r}")
            pairs = json.loads(record.attrs_json, object_pairs_hook=lambda items: items)
            reserved = [k for k, _v in pairs if k.startswith("vault_observe.")]
            if len(reserved) > 1 or (reserved and reserved != ["vault_observe.pairing"]):
                raise Finding(f"reserved names in the attributes: {reserved!r}")


_U64 = 1 << 64


def _zipkin_times_fit(record: Any) -> bool:
    timestamp = (record.start_ns + 500) // 1000
    duration = (record.end_ns - record.start_ns + 500) // 1000
    return 0 <= timestamp < _U64 and 0 <= duration < _U64


class _Quiet:
    """A rate log that keeps the last message instead of logging it."""

    def __init__(self) -> None:
        self.last = ""

    def __call__(self, key: str, level: int, msg: str, *args: object) -> None:
        self.last = msg % args


_quiet = _Quiet()


def feed_both(fast: Any, ref: Any, data: bytes, now: int | None, rng: random.Random) -> None:
    kind = rng.random()
    view: Any = data
    if kind < 0.3:
        view = bytearray(data)
    elif kind < 0.4:
        view = memoryview(data)
    errors = []
    for core, arg in ((fast, view), (ref, data)):
        try:
            core.feed(arg, now)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        else:
            errors.append("")
    if errors[0] != errors[1] and (errors[0] or errors[1]):
        raise Finding(f"feed outcomes differ: compiled {errors[0]!r} reference {errors[1]!r}")


class Watchdog:
    """A step that takes longer than ``timeout`` is a hang: every thread's stack is
    printed and the process ends with status 3."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.last = time.monotonic()
        self._stop = threading.Event()
        threading.Thread(target=self._watch, name="fuzz-watchdog", daemon=True).start()

    def beat(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            if time.monotonic() - self.last > self.timeout:
                print(f"fuzz: HANG: a step took over {self.timeout:.0f} s", file=sys.stderr, flush=True)
                faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
                os._exit(3)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.seeds = load_seeds(seed_files(args.corpus))
        self.mutator = Mutator(self.rng, self.seeds)
        self.encoders = Encoders()
        self.lines = 0
        self.spans = 0
        self.steps = 0
        self.watchdog = Watchdog(args.step_timeout)

    def cores(self) -> tuple[Any, Any, dict[str, Any]]:
        from vault_observe import _core_py, _fast

        options = core_options(self.rng)
        return _fast.Core(release_gil=True, **options), _core_py.Core(**options), options

    def chunks(self) -> Iterator[tuple[bytes, int]]:
        rng = self.rng
        while True:
            # now and then 64 KiB and more: the compiled core's GIL-free first pass
            count = rng.randrange(300, 900) if rng.random() < 0.05 else rng.choice((1, 1, 2, 5, 20, 100))
            yield b"\n".join(self.mutator.line() for _ in range(count)) + b"\n", count

    def drain(self, fast: Any, ref: Any) -> None:
        packed = fast.drain_spans()
        records = ref.drain()
        compare_spans(packed, records)
        # the encoders take a batch of at most ENCODE_SPANS (a sink's batches are bigger,
        # but the Python encoders are the slowest part of a run)
        if len(records) > ENCODE_SPANS:
            at = self.rng.randrange(len(records) - ENCODE_SPANS)
            packed, records = packed[at : at + ENCODE_SPANS], records[at : at + ENCODE_SPANS]
        self.encoders.check(packed, records)
        self.spans += len(records)

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.watchdog.stop()

    def _run(self) -> int:
        args = self.args
        start = time.monotonic()
        next_report = start + args.report_every
        fast, ref, options = self.cores()
        steps_left = self.rng.randrange(20, 400)
        chunk = b""
        try:
            for chunk, count in self.chunks():
                self.watchdog.beat()
                self.steps += 1
                now = None if self.rng.random() < 0.5 else 1_795_766_400_000_000_000 + self.rng.randrange(10**12)
                feed_both(fast, ref, chunk, now, self.rng)
                self.lines += count
                compare_cores(fast, ref, "after a feed")
                if self.rng.random() < 0.2:
                    t = self.rng.choice([0, fast.watermark_ns, fast.watermark_ns + 10**10, 2**70])
                    fast.expire(t)
                    ref.expire(t)
                    compare_cores(fast, ref, f"after expire({t})")
                self.drain(fast, ref)
                steps_left -= 1
                if steps_left <= 0:
                    fast.flush()
                    ref.flush()
                    compare_cores(fast, ref, "after flush")
                    self.drain(fast, ref)
                    fast, ref, options = self.cores()
                    steps_left = self.rng.randrange(20, 400)
                if time.monotonic() >= next_report:
                    self.report(start)
                    next_report = time.monotonic() + args.report_every
                if self.lines >= args.lines:
                    break
        except Finding as finding:
            return self.found(finding, chunk, options)
        except Exception as exc:  # the comparison itself failed on this input: a finding too
            import traceback

            traceback.print_exc()
            return self.found(Finding(f"{type(exc).__name__}: {exc}"), chunk, options)
        self.report(start)
        return 0

    def report(self, start: float) -> None:
        elapsed = time.monotonic() - start
        print(
            f"fuzz: seed {self.args.seed}: {self.lines} lines in {self.steps} steps, {self.spans} spans encoded, "
            f"{self.encoders.bodies} bodies compared ({self.encoders.declined} left to Python), "
            f"{elapsed:.0f} s, no finding",
            flush=True,
        )

    def found(self, finding: Finding, chunk: bytes, options: dict[str, Any]) -> int:
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"finding-seed{self.args.seed}-step{self.steps}.jsonl"
        path.write_bytes(chunk)
        print(f"fuzz: FINDING at step {self.steps} (seed {self.args.seed}, core options {options!r}): "
              f"{finding}\nthe last chunk is in {path}", file=sys.stderr, flush=True)
        return 1


# ---------------------------------------------------------------- thread misuse


def thread_misuse(seconds: float, seeds: list[bytes]) -> int:
    """Several threads on one compiled core; a buffer changed during a GIL-free feed."""
    from vault_observe import _fast

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    chunk = b"\n".join(seeds[:600]) + b"\n"
    while len(chunk) < (80 << 10):
        chunk += chunk
    counts = {"ok": 0, "refused": 0}
    errors: list[str] = []
    try:
        for options in ({"release_gil": True}, {"include": ["*"]}, {"release_gil": True, "exclude": ["x.*"]}):
            core = _fast.Core(max_pending=100, **options)
            stop = time.monotonic() + seconds / 4

            def work(op: str, core: Any = core, stop: float = stop) -> None:
                while time.monotonic() < stop:
                    try:
                        if op == "feed":
                            core.feed(chunk, 0)
                        elif op == "expire":
                            core.expire(2**70)
                        elif op == "flush":
                            core.flush()
                        else:
                            for span in core.drain():
                                if len(span.trace_id) != 16:
                                    errors.append("a span without its trace id")
                        counts["ok"] += 1
                    except RuntimeError as exc:
                        if "one call at a time" not in str(exc):
                            errors.append(repr(exc))
                        counts["refused"] += 1
                    except Exception as exc:
                        errors.append(f"{op}: {type(exc).__name__}: {exc}")

            threads = [threading.Thread(target=work, args=(op,)) for op in
                       ("feed", "feed", "expire", "flush", "drain", "drain_spans")]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        # a buffer whose newlines move while the first pass runs without the GIL
        core = _fast.Core(release_gil=True)
        buf = bytearray(chunk)
        done = threading.Event()
        rng = random.Random(1)
        spots = [rng.randrange(len(buf)) for _ in range(2000)]

        def scribble() -> None:
            k = 0
            while not done.is_set():
                for i in spots:
                    buf[i] = 10 if (i + k) % 3 == 0 else chunk[i]
                k += 1

        thread = threading.Thread(target=scribble)
        thread.start()
        stop = time.monotonic() + seconds / 4
        feeds = 0
        try:
            while time.monotonic() < stop:
                core.feed(buf, 0)
                core.drain()
                feeds += 1
        finally:
            done.set()
            thread.join()
        core.flush()
        core.drain()
    finally:
        sys.setswitchinterval(old)
    print(f"fuzz: thread misuse: {counts['ok']} calls, {counts['refused']} refused, "
          f"{feeds} feeds of a changing buffer, {len(errors)} errors", flush=True)
    if errors:
        print("fuzz: FINDING in the thread cases: " + "; ".join(errors[:5]), file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- main


def run_jobs(args: argparse.Namespace) -> int:
    """``--jobs N``: N processes, seeds seed..seed+N-1, the lines shared, the thread
    cases in the first; the worst exit status."""
    import subprocess

    share = -(-args.lines // args.jobs)
    procs = []
    for job in range(args.jobs):
        argv = [sys.executable, "-m", "tests.fuzz.differential", "--seed", str(args.seed + job),
                "--lines", str(share), "--out", args.out, "--step-timeout", str(args.step_timeout),
                "--report-every", str(args.report_every)]
        argv += [arg for path in args.corpus for arg in ("--corpus", path)]
        if job == 0 and args.threads:
            argv += ["--threads", str(args.threads)]
        if args.expect_sanitized:
            argv.append("--expect-sanitized")
        procs.append(subprocess.Popen(argv, cwd=REPO))
    statuses = [proc.wait() for proc in procs]
    print(f"fuzz: {args.jobs} jobs ended with {statuses}", flush=True)
    return max(statuses, key=abs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000, help="lines to feed (default 200,000)")
    parser.add_argument("--long", action="store_true", help="the long run: 10,000,000 lines")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the time)")
    parser.add_argument("--threads", type=float, default=0.0, metavar="SECONDS",
                        help="also run the thread-misuse cases for about this long")
    parser.add_argument("--corpus", action="append", default=[], help="another seed file (repeatable)")
    parser.add_argument("--out", default=str(REPO / "build" / "fuzz-findings"), help="where findings go")
    parser.add_argument("--step-timeout", type=float, default=300.0, help="a step taking longer is a hang")
    parser.add_argument("--report-every", type=float, default=30.0, help="seconds between progress lines")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes sharing the lines, each with its own seed (default 1)")
    parser.add_argument("--expect-sanitized", action="store_true",
                        help="fail unless the compiled modules come from a sanitized build (ASan loaded)")
    args = parser.parse_args(argv)
    if args.long:
        args.lines = 10_000_000
    if args.seed is None:
        args.seed = int(time.time())
    if args.jobs > 1:
        return run_jobs(args)
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 20_000))  # json at the cores' depth limit
    try:
        return _main(args)
    finally:
        sys.setrecursionlimit(old_limit)


def _main(args: argparse.Namespace) -> int:
    try:
        faulthandler.enable(file=sys.__stderr__)
    except (AttributeError, ValueError, OSError):  # no real stderr (a test captures it)
        pass
    from vault_observe import _batch_json, _fast, _pending, _spans, _zipkin_proto

    modules = [_fast.__file__, _pending.__file__, _spans.__file__, _batch_json.__file__, _zipkin_proto.__file__]
    print(f"fuzz: seed {args.seed}, modules {', '.join(str(m) for m in modules)}", flush=True)
    if args.expect_sanitized:
        maps = Path("/proc/self/maps").read_text()
        if "libasan" not in maps:
            raise SystemExit("fuzz: --expect-sanitized, but the ASan runtime is not loaded (LD_PRELOAD?)")
        plain = [m for m in modules if "sanitize" not in str(m)]
        if plain:
            raise SystemExit(f"fuzz: --expect-sanitized, but these are not from a sanitized build: {plain}")
    status = 0
    if args.threads > 0:
        status = thread_misuse(args.threads, load_seeds(seed_files(args.corpus)))
    if status == 0 and args.lines > 0:
        status = Run(args).run()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
