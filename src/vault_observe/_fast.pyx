# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""Compiled core: the same API, spans and counters as ``_core_py.Core``, faster.

Lines are parsed with simdjson's DOM parser (one reused parser, one parse per
line) and flattened straight into the canonical attribute bytes with an explicit
stack (``_fast_json.h``). Requests wait in a PendingTable (``_pending.pyx``: the
table keyed by trace id, the expiry order, the marks and the stored attributes),
so ``expire`` costs O(expired). A line that simdjson rejects, or whose keys repeat
(orjson keeps the last value of a repeated key), goes through the reference logic
on orjson, so both cores agree on every input. Ready spans are packed into a SpanStore
(``_spans.pyx``), not made into one Python object each.
"""

from cpython.exc cimport PyErr_Occurred
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport PyObject
from libc.stdint cimport SIZE_MAX, UINT16_MAX, int64_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcmp, memcpy, memset

import json
import math

from . import _core_py
from .model import PAIRING_KEY, PAIRING_NAMES

from vault_observe._pending cimport (
    F_TRIMMED, NONE, Entry, Extra, Parent, PendingTable, grow_to, i128, mix64, uuid_into,
)
from vault_observe._spans cimport (
    PackedSpan, PackedSpans, SpanStore, copy_spans, new_span, packed_view,
)

# ---------------------------------------------------------------- declarations

cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8(const char *s, Py_ssize_t size, const char *errors)
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    long long PyLong_AsLongLongAndOverflow(object o, int *overflow) except? -1
    void *PyUnicode_DATA(object o)

cdef extern from "simdjson.h" namespace "simdjson":
    cdef size_t SIMDJSON_PADDING
    ctypedef enum error_code "simdjson::error_code":
        SUCCESS "simdjson::SUCCESS"
    cdef cppclass simdjson_result[T]:
        simdjson_result()
        error_code error() nogil
        T &value_unsafe() nogil

cdef extern from "simdjson.h" namespace "simdjson::dom":
    cdef cppclass element "simdjson::dom::element":
        element()
    cdef cppclass dom_parser "simdjson::dom::parser":
        dom_parser() except +
        simdjson_result[element] parse(const char *buf, size_t length, bint realloc_if_needed) nogil
        error_code allocate(size_t capacity)
        size_t capacity()

cdef extern from "_fast_json.h" namespace "vo":
    cdef enum:
        OK "vo::OK"
        INVALID "vo::INVALID"
        FALLBACK "vo::FALLBACK"
        ERROR "vo::ERROR"
    cdef cppclass Buf "vo::Buf":
        char *p
        size_t n
        size_t cap
        void shrink(size_t keep)
        void append(const char *s, size_t length) except +
    cdef cppclass Envelope "vo::Envelope":
        const char *type
        const char *time
        const char *id
        const char *error
        size_t type_len, time_len, id_len, error_len
        bint has_id, has_error
        const char *operation
        const char *target
        size_t operation_len, target_len
        bint target_is_mount
        bint is_probe
        bint has_parent
        uint64_t parent_hi, parent_lo, parent_span
    int read_envelope(element root, Envelope &env, bint trace_context) nogil
    cdef cppclass KeyCache "vo::KeyCache":
        KeyCache(object keep) except +
    cdef cppclass Flattener "vo::Flattener":
        Buf out
        KeyCache *filter
        bint gil_free
        size_t reserved
        Flattener() except +
        int flatten(element root, bint flatten_arrays) except +
    int flatten_gil_free(Flattener &f, element root, bint flatten_arrays) nogil
    cdef cppclass NameTable "vo::NameTable":
        NameTable(size_t limit) except +
        uint32_t lookup(const char *s, size_t length, size_t operation_len, size_t mount_len) except +
        PyObject *get(uint32_t idx)
        size_t operation_len(uint32_t idx)
        size_t mount_len(uint32_t idx)
    object i128_to_py(i128 v)
    int py_to_i128(object o, i128 *out, int limit_bits, int *sign) except -1

# ---------------------------------------------------------------- constants

cdef enum:
    C_LINES
    C_REQUESTS
    C_RESPONSES
    C_SPANS
    C_PAIRED
    C_ORPHANS
    C_UNANSWERED
    C_EVICTED
    C_DUPLICATES
    C_PROBES
    C_NO_ID
    C_MALFORMED
    C_INVALID
    C_UNKNOWN_TYPE
    C_OVERSIZE
    C_SAMPLED_OUT
    C_RESERVED_KEYS
    C_ATTRS_TRIMMED
    N_COUNTERS

COUNTER_NAMES = _core_py.COUNTER_NAMES
if COUNTER_NAMES != (
    "lines", "requests", "responses", "spans", "paired", "orphans", "unanswered", "evicted",
    "duplicates", "probes", "no_id", "malformed", "invalid", "unknown_type", "oversize",
    "sampled_out", "reserved_keys", "attrs_trimmed",
):
    raise ImportError("the counters of _core_py changed; update the compiled core")

cdef enum:
    PAIRED = 0
    ORPHAN = 1
    UNANSWERED = 2
    EVICTED = 3

cdef enum:
    KIND_UNKNOWN = 0
    KIND_REQUEST = 1
    KIND_RESPONSE = 2

cdef uint64_t FNV_OFFSET = 0xCBF29CE484222325
cdef uint64_t FNV_PRIME = 0x100000001B3
cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15
# How many distinct span names a core shares as one str each (read when a core is made).
NAME_LIMIT = 65536
# Lines above this size leave no big buffers behind.
cdef size_t BIG_LINE = 4 << 20

# Times a PackedSpan holds (the encoders' arithmetic on them cannot overflow); a
# span beyond them is kept as its SpanRecord.
cdef i128 PACK_TIME_LIMIT = (<i128> 1) << 62  # about the year 2116
cdef i128 PACK_DURATION_LIMIT = 1_000_000_000_000_000_000
# A new span store sets aside the last one's size, up to this.
cdef size_t STORE_HINT_MAX = 4 << 20
# Drained spans up to this many bytes are copied out of the core's store, which is kept;
# a larger store is handed out whole (trimmed) and replaced.
cdef size_t STORE_COPY_MAX = 256 << 10
# The kept store gives back room beyond this.
cdef size_t STORE_KEEP_MAX = 1 << 20

cdef object _PROBE_PATH = _core_py.PROBE_PATH
cdef object _span_parts = _core_py.span_parts
cdef object _entry_attrs = _core_py.entry_attrs
cdef object _read_entry = _core_py.read_entry
cdef object _SkippedLine = _core_py.SkippedLine
cdef dict _COUNTER_INDEX = {name: i for i, name in enumerate(_core_py.COUNTER_NAMES)}
cdef str _RESERVED_REASON = _core_py.RESERVED_REASON
cdef object _dump_attrs = _core_py.dump_attrs
cdef object _traceparent_of = _core_py.traceparent_of
cdef object _check_mark = _core_py.check_mark
cdef object _with_pairing = _core_py.with_pairing


cdef tuple _filter_args(str caller, dict filters):
    """(include, exclude) of ``**filters``: ``include`` is a word of Cython's own."""
    include_ = filters.pop("include", ())
    exclude = filters.pop("exclude", ())
    if filters:
        raise TypeError(f"{caller} got an unexpected keyword argument {next(iter(filters))!r}")
    return include_, exclude


cdef int64_t _check_limit(object limit) except? -2:
    """_core_py.check_limit: -1 (never reaches 0 counting down) for None."""
    return <int64_t> _core_py.check_limit(limit) if limit is not None else -1


cdef Py_ssize_t BAD_SAMPLE_BYTES = _core_py.BAD_SAMPLE_BYTES
cdef object _JSONDecodeError = json.JSONDecodeError  # orjson's is a subclass
cdef object _ZERO = 0
cdef object _ONE = 1
cdef object _EMPTY = ""
cdef list _MARKERS = [
    ('"' + PAIRING_KEY + '":"' + name + '"}').encode() for name in PAIRING_NAMES
]

# ---------------------------------------------------------------- ids


cdef inline uint64_t _fnv1a64(const unsigned char *p, size_t n, uint64_t h) noexcept nogil:
    cdef size_t i
    for i in range(n):
        h = (h ^ p[i]) * FNV_PRIME
    return h


cdef inline uint64_t _splitmix64(uint64_t x) noexcept nogil:
    return mix64(x + GOLDEN)  # _core_py.splitmix64


cdef signed char _HEXVAL[256]
memset(_HEXVAL, -1, 256)
for _i in range(10):
    _HEXVAL[48 + _i] = _i
for _i in range(6):
    _HEXVAL[97 + _i] = 10 + _i
    _HEXVAL[65 + _i] = 10 + _i


cdef inline bint _uuid(const unsigned char *s, size_t n, uint64_t *hi, uint64_t *lo, bint *lower) noexcept nogil:
    """The 16 bytes of a 36-character UUID of any case, not the nil UUID (see
    _core_py.uuid_bytes)."""
    if n != 36:
        return False
    if s[8] != 45 or s[13] != 45 or s[18] != 45 or s[23] != 45:
        return False
    cdef uint64_t a = 0, b = 0
    cdef int i, k = 0
    cdef signed char v
    cdef bint low = True
    for i in range(36):
        if i == 8 or i == 13 or i == 18 or i == 23:
            continue
        v = _HEXVAL[s[i]]
        if v < 0:
            return False
        if s[i] <= 70 and s[i] >= 65:
            low = False
        if k < 16:
            a = (a << 4) | <uint64_t> v
        else:
            b = (b << 4) | <uint64_t> v
        k += 1
    if a == 0 and b == 0:
        return False  # an all-zero trace id is invalid: hashed like a non-UUID id
    hi[0] = a
    lo[0] = b
    lower[0] = low
    return True


cdef inline bint _trace_for(const char *p, size_t n, uint64_t *hi, uint64_t *lo) noexcept nogil:
    """_core_py.trace_id_for as two big-endian halves; True when the text is canonical."""
    cdef bint lower
    if _uuid(<const unsigned char *> p, n, hi, lo, &lower):
        return lower
    hi[0] = _fnv1a64(<const unsigned char *> p, n, FNV_OFFSET)
    lo[0] = _fnv1a64(<const unsigned char *> p, n, FNV_OFFSET ^ GOLDEN)
    if hi[0] == 0 and lo[0] == 0:
        lo[0] = 1
    return False


cdef inline uint64_t _span_id(uint64_t hi, uint64_t lo) noexcept:
    cdef uint64_t rot = (lo << 32) | (lo >> 32)
    cdef uint64_t s = _splitmix64(hi ^ rot)
    return s if s else 1


cdef inline object _trace_bytes(uint64_t hi, uint64_t lo):
    cdef object b = PyBytes_FromStringAndSize(NULL, 16)
    cdef unsigned char *d = <unsigned char *> PyBytes_AS_STRING(b)
    cdef int i
    for i in range(8):
        d[i] = <unsigned char> (hi >> (56 - 8 * i))
        d[8 + i] = <unsigned char> (lo >> (56 - 8 * i))
    return b


cdef object _uuid_text(uint64_t hi, uint64_t lo):
    cdef object s = PyUnicode_New(36, 127)
    uuid_into(hi, lo, <char *> PyUnicode_DATA(s))
    return s


cdef inline object _text(const char *p, size_t n):
    return PyUnicode_DecodeUTF8(p, <Py_ssize_t> n, "surrogatepass")


cdef tuple _name_parts(object name, size_t op_len, size_t mount_len):
    """(operation, mount) of a span name: its first ``op_len`` and last ``mount_len``
    UTF-8 bytes (for a span kept as its SpanRecord)."""
    if op_len == 0 and mount_len == 0:
        return ("", "")
    cdef bytes raw = (<str> name).encode("utf-8", "surrogatepass")
    cdef Py_ssize_t n = len(raw)
    return (raw[:op_len].decode("utf-8", "surrogatepass"),
            raw[n - <Py_ssize_t> mount_len:].decode("utf-8", "surrogatepass"))

# ---------------------------------------------------------------- time


cdef inline int _d2(const unsigned char *s) noexcept nogil:
    cdef unsigned int a = s[0] - 48, b = s[1] - 48
    if a > 9 or b > 9:
        return -1
    return <int> (a * 10 + b)


cdef inline int64_t _days_from_civil(int64_t y, int64_t m, int64_t d) noexcept nogil:
    # y >= -1 here, so C's truncating division floors like Python's //
    y -= (m <= 2)
    cdef int64_t era = (y if y >= 0 else y - 399) // 400
    cdef int64_t yoe = y - era * 400
    cdef int64_t doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    cdef int64_t doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef bint _parse_time(const char *text, size_t n, i128 *out) noexcept nogil:
    """_core_py.parse_rfc3339_ns: YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)."""
    cdef const unsigned char *s = <const unsigned char *> text
    if n < 20:
        return False
    cdef int y1 = _d2(s), y2 = _d2(s + 2), month = _d2(s + 5), day = _d2(s + 8)
    cdef int hour = _d2(s + 11), minute = _d2(s + 14), second = _d2(s + 17)
    if y1 < 0 or y2 < 0 or month < 0 or day < 0 or hour < 0 or minute < 0 or second < 0:
        return False
    if s[4] != 45 or s[7] != 45 or (s[10] != 84 and s[10] != 116) or s[13] != 58 or s[16] != 58:
        return False
    if month < 1 or month > 12 or day < 1 or day > 31 or hour > 23 or minute > 59 or second > 60:
        return False
    cdef size_t pos = 19, start, i
    cdef int64_t frac = 0
    cdef size_t ndigits
    if s[pos] == 46:
        pos += 1
        start = pos
        while pos < n and s[pos] >= 48 and s[pos] <= 57:
            pos += 1
        ndigits = pos - start
        if ndigits < 1 or ndigits > 9:
            return False
        for i in range(start, pos):
            frac = frac * 10 + (s[i] - 48)
        for i in range(9 - ndigits):
            frac *= 10
    cdef int64_t offset = 0
    cdef int oh, om
    cdef size_t rest = n - pos
    if rest == 1 and (s[pos] == 90 or s[pos] == 122):
        pass
    elif rest == 6 and (s[pos] == 43 or s[pos] == 45) and s[pos + 3] == 58:
        oh = _d2(s + pos + 1)
        om = _d2(s + pos + 4)
        if oh < 0 or om < 0 or oh > 23 or om > 59:
            return False
        offset = oh * 3600 + om * 60
        if s[pos] == 45:
            offset = -offset
    else:
        return False
    cdef int64_t days = _days_from_civil(y1 * 100 + y2, month, day)
    cdef int64_t seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
    out[0] = <i128> seconds * <i128> 1000000000 + <i128> frac
    return True

# ---------------------------------------------------------------- lines

# What the first pass over a chunk keeps of one line (see Core._prepare). The
# envelope's strings and the flattened attributes are offsets into the arena.
ctypedef struct Prepared:
    bint ready          # the second pass can take it from here; else the whole line again
    bint flattened
    int kind
    i128 time_ns
    Envelope env
    size_t attrs
    size_t attrs_n
    size_t reserved     # names the flattener dropped as reserved
    size_t id
    size_t error
    size_t operation
    size_t target

# Chunks at least this big are taken in two passes.
cdef size_t TWO_PASS_BYTES = 64 << 10


cdef inline const char *_line_end(const char *p, const char *end) noexcept nogil:
    """Where the line at ``p`` ends: its newline, or ``end``."""
    cdef const char *nl = <const char *> memchr(p, 10, <size_t> (end - p))
    return end if nl == NULL else nl


cdef inline size_t _prefix_length(const char *p, size_t n, const char *pre, size_t pre_n) noexcept nogil:
    """How many bytes at the line's start are the prefix to drop: ``pre_n`` or 0."""
    return pre_n if pre_n and n >= pre_n and memcmp(p, pre, pre_n) == 0 else 0


cdef inline int _kind_of(Envelope &env) noexcept nogil:
    if env.type_len == 7 and memcmp(env.type, b"request", 7) == 0:
        return KIND_REQUEST
    if env.type_len == 8 and memcmp(env.type, b"response", 8) == 0:
        return KIND_RESPONSE
    return KIND_UNKNOWN


cdef inline bint _flattens(Envelope &env, int kind, size_t n, size_t cap) noexcept nogil:
    """Whether a line's attributes are flattened as it is read: a response's always. A
    request that can wait for its response keeps its line (``n`` bytes) for the span
    made should none come; flattened and cut only when the line is over ``cap``."""
    return kind == KIND_RESPONSE or (not env.is_probe and env.has_id and env.id_len > 0 and n > cap)


cdef class Core:
    """Compiled core; see ``_core_py`` for the rules it shares with the reference."""

    implementation = "c"

    cdef readonly object ttl_ns
    cdef readonly object max_pending
    cdef readonly object max_line_bytes
    cdef readonly bytes prefix
    cdef readonly bint flatten_arrays
    cdef readonly object key_filter
    cdef readonly object sample_rate
    cdef readonly bint trace_context
    cdef readonly bint release_gil
    cdef readonly object pending_attrs_bytes

    cdef KeyCache *_filter
    cdef bint _sampling   # sample_rate > 1
    cdef bint _rate_c     # ... and an int of 64 bits, used as _rate
    cdef uint64_t _rate
    cdef dict _bad

    cdef i128 _ttl
    cdef int64_t _max_line
    cdef uint64_t _max_pending
    cdef PendingTable _table   # the requests waiting for their response
    cdef object _pop_attrs     # its attributes, when the reference logic made them
    cdef dom_parser *_parser
    cdef Flattener *_fl
    cdef NameTable *_names
    cdef char *_pad
    cdef size_t _pad_cap
    cdef Prepared *_prep      # the first pass's records, one per non-empty line
    cdef size_t _prep_n
    cdef size_t _prep_cap
    cdef char *_arena         # their strings and attributes
    cdef size_t _arena_n
    cdef size_t _arena_cap
    cdef bint _busy           # a call is in progress (it may let the GIL go): no other meanwhile
    cdef const char *_attrs_p  # the flattened attributes of the line at hand
    cdef size_t _attrs_n
    cdef size_t _attrs_reserved  # names dropped as reserved from them
    cdef char *_namebuf
    cdef size_t _namebuf_cap
    cdef uint64_t _counts[N_COUNTERS]
    cdef SpanStore _spans     # the ready spans, until drained
    cdef i128 _watermark
    cdef uint32_t _name_idx
    cdef size_t _name_op      # ... and the lengths of its parts, operation and mount
    cdef size_t _name_mount

    def __cinit__(self):
        self._parser = new dom_parser()
        self._fl = new Flattener()
        self._names = new NameTable(<size_t> NAME_LIMIT)
        self._spans = SpanStore.__new__(SpanStore)
        self._table = PendingTable.__new__(PendingTable)
        self._bad = {}
        self.trace_context = True
        memset(self._counts, 0, sizeof(self._counts))
        # the defaults of __init__, should a subclass skip it
        self._ttl = 10_000_000_000
        self._max_pending = 1_000_000
        self._max_line = 16 * 1024 * 1024
        self.pending_attrs_bytes = _core_py.DEFAULT_PENDING_ATTRS_BYTES
        self.prefix = b""

    def __init__(
        self,
        *,
        ttl_s=10.0,
        max_pending=1_000_000,
        max_line_bytes=16 * 1024 * 1024,
        prefix=b"",
        flatten_arrays=False,
        sample_rate=1,
        trace_context=True,
        release_gil=False,
        pending_attrs_bytes=_core_py.DEFAULT_PENDING_ATTRS_BYTES,
        **filters,
    ):
        cdef int sign = 0
        self._enter()
        try:
            include_, exclude = _filter_args("Core()", filters)
            if max_pending < 1:
                raise ValueError("max_pending must be at least 1")
            if sample_rate < 1:
                raise ValueError("sample_rate must be at least 1")
            self.pending_attrs_bytes = _core_py.check_pending_attrs_bytes(pending_attrs_bytes)
            self._table.attrs_cap = <size_t> self.pending_attrs_bytes
            self._set_filters(include_, exclude, sample_rate)
            self.trace_context = bool(trace_context)
            self.release_gil = bool(release_gil)
            self.ttl_ns = int(ttl_s * 1_000_000_000)
            if py_to_i128(self.ttl_ns, &self._ttl, 100, &sign) != 0:
                raise OverflowError("ttl_s is too large")
            self.max_pending = max_pending
            # the reference compares counts and lengths with these numbers as given
            self._max_pending = <uint64_t> min(math.ceil(max_pending), 0xFFFFFFF0)
            self.max_line_bytes = max_line_bytes
            self._max_line = <int64_t> max(-1, min(math.floor(max_line_bytes), 1 << 62))
            self.prefix = bytes(prefix)
            self.flatten_arrays = bool(flatten_arrays)
        finally:
            self._busy = False

    cdef int _enter(self) except -1:
        """Mark the core busy for one public call. Every call may let the GIL go (the
        GIL-free first pass, the key filter and the orjson fallback call Python), and a
        second call on the same core meanwhile would share its parser, buffers and
        table: it is refused. Check and set run with the GIL held, so two threads
        cannot both pass."""
        if self._busy:
            raise RuntimeError(
                "this Core is already running a call (feed, expire, flush, drain) in another "
                "thread or from inside one: a Core takes one call at a time"
            )
        self._busy = True
        return 0

    def set_filters(self, *, sample_rate=1, **filters):
        """Change --include, --exclude and --sample-rate for the lines fed from now on (a reload)."""
        include_, exclude = _filter_args("set_filters()", filters)
        if sample_rate < 1:
            raise ValueError("sample_rate must be at least 1")
        self._set_filters(include_, exclude, sample_rate)

    cdef int _set_filters(self, object include_, object exclude, object sample_rate) except -1:
        self.key_filter = _core_py.KeyFilter(include_, exclude) if include_ or exclude else None
        self._fl.filter = NULL
        if self._filter != NULL:
            del self._filter
            self._filter = NULL
        if self.key_filter is not None:
            self._filter = new KeyCache(self.key_filter.keep)
            self._fl.filter = self._filter
        self.sample_rate = sample_rate
        self._sampling = sample_rate > 1
        self._rate_c = self._sampling and type(sample_rate) is int and sample_rate <= 0xFFFFFFFFFFFFFFFF
        self._rate = sample_rate if self._rate_c else 1
        return 0

    def __dealloc__(self):
        free(self._pad)
        free(self._prep)
        free(self._arena)
        free(self._namebuf)
        del self._parser
        del self._fl
        del self._names
        if self._filter != NULL:
            del self._filter

    # ------------------------------------------------------------ public API

    @property
    def pending(self) -> int:
        return self._table.count

    @property
    def watermark_ns(self) -> int:
        """The latest entry time seen (0 before any)."""
        return i128_to_py(self._watermark)

    def counters(self) -> dict[str, int]:
        return {name: self._counts[i] for i, name in enumerate(COUNTER_NAMES)}

    def take_bad_samples(self) -> dict:
        """Per counter, (reason, first bytes) of its latest skipped line since the last call."""
        samples = self._bad
        self._bad = {}
        return samples

    def feed(self, data, now_ns=None, mark=0) -> int:
        """Process whole lines; return how many spans are ready. Every request stored
        meanwhile remembers ``mark``, for ``oldest_pending_mark``."""
        cdef Py_buffer view
        cdef i128 now = 0
        cdef int sign = 0
        cdef bint has_now = now_ns is not None
        self._enter()
        try:
            self._table.mark = _check_mark(mark)
            if has_now and py_to_i128(now_ns, &now, 100, &sign) != 0:
                raise OverflowError("now_ns is out of range")
            try:
                PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            except BufferError:
                # not contiguous: its bytes, as the reference takes them (TypeError for
                # what is no buffer at all, in both cores)
                data = memoryview(data).tobytes()
                PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                self._feed(<const char *> view.buf, <size_t> view.len, has_now, now, not view.readonly)
            finally:
                PyBuffer_Release(&view)
        finally:
            self._busy = False
        return self._spans.n

    def oldest_pending_mark(self):
        """The smallest mark among the requests still pending; None when none is."""
        return self._table.oldest_mark()

    def expire(self, now_ns, limit=None) -> int:
        """Pending requests due by ``now_ns`` become UNANSWERED spans (at most ``limit``);
        return how many spans are ready."""
        cdef i128 now = 0
        cdef int sign = 0
        cdef uint32_t idx
        cdef int64_t left
        self._enter()
        try:
            left = _check_limit(limit)
            if py_to_i128(now_ns, &now, 120, &sign) != 0:
                # beyond any deadline the core can hold
                now = (<i128> 1) << 121
                if sign < 0:
                    now = -now
            while left:
                idx = self._table.oldest()
                if idx == NONE or self._table.deadline_of(idx) > now:
                    break
                self._pop(idx, UNANSWERED)
                left -= 1
            return self._spans.n
        finally:
            self._busy = False

    def flush(self, limit=None) -> int:
        """Pending requests become UNANSWERED spans (at most ``limit``); return how many
        spans are ready."""
        cdef uint32_t idx
        cdef int64_t left
        self._enter()
        try:
            left = _check_limit(limit)
            while left:
                idx = self._table.oldest()
                if idx == NONE:
                    break
                self._pop(idx, UNANSWERED)
                left -= 1
            return self._spans.n
        finally:
            self._busy = False

    def drain(self) -> list:
        return self.drain_spans().records()

    def drain_spans(self) -> PackedSpans:
        """The ready spans as one packed sequence (what the daemon queues for the sinks)."""
        cdef SpanStore store, fresh
        cdef PackedSpans out
        self._enter()
        try:
            store = self._spans
            if store.used <= STORE_COPY_MAX and store.n * sizeof(PackedSpan) <= STORE_COPY_MAX:
                # A few spans (a socket read's worth) leave in blocks of their exact size and
                # the store keeps its own for the next ones: handing out the store itself,
                # trimmed, left the heap as much free as used after a long sink outage
                # (measured with mallinfo2), each trimmed tail a hole too small to reuse.
                out = copy_spans(store, 0, store.n, SIZE_MAX)
                store.clear()
                if store.room > STORE_KEEP_MAX:  # after a burst: do not keep its room
                    store.shrink()
                return out
            fresh = SpanStore.__new__(SpanStore)
            if store.used:
                # room for about as much as the last drain took (a burst's size is not kept)
                fresh.reserve(min(store.used + store.used // 4, STORE_HINT_MAX))
                fresh.reserve_spans(min(store.n + store.n // 4, STORE_HINT_MAX // sizeof(PackedSpan)))
            self._spans = fresh
            # The store may wait in a sink's queue for as long as the sink is down: keep
            # only what its spans take (measured: without this, ~21 KB a queued span).
            store.shrink()
            return packed_view(store, 0, store.n)
        finally:
            self._busy = False

    # ------------------------------------------------------------ lines

    cdef int _feed(self, const char *data, size_t n, bint has_now, i128 now, bint writable) except -1:
        cdef const char *p = data
        cdef const char *end = data + n
        cdef const char *nl
        cdef size_t length
        cdef const char *pre = PyBytes_AS_STRING(self.prefix)
        cdef size_t pre_n = <size_t> PyBytes_GET_SIZE(self.prefix)
        cdef bint two_pass = self.release_gil and n >= TWO_PASS_BYTES and self._filter == NULL
        cdef size_t k = 0, skip
        cdef Prepared *rec
        if two_pass:
            with nogil:
                two_pass = self._prepare(data, n, pre, pre_n, writable)
        while p < end:
            nl = _line_end(p, end)
            length = <size_t> (nl - p)
            if length:
                self._counts[C_LINES] += 1
                # bounded: another thread may have changed the bytes (not the size:
                # the buffer is exported) since the first pass found its lines
                rec = &self._prep[k] if two_pass and k < self._prep_n else NULL
                k += 1
                if <int64_t> length > self._max_line:
                    self._counts[C_OVERSIZE] += 1
                    self._bad_line("oversize", f"line of {length} bytes is over the limit", p, length)
                else:
                    skip = _prefix_length(p, length, pre, pre_n)
                    if rec != NULL and rec.ready:
                        self._prepared_entry(rec, p + skip, length - skip, has_now, now)
                    else:
                        self._line(p + skip, length - skip, end, has_now, now)
                        if length - skip > BIG_LINE:
                            self._shrink()
            p = nl + 1
        return 0

    cdef int _line(self, const char *p, size_t n, const char *buf_end, bint has_now, i128 now) except -1:
        cdef const char *src = p
        cdef simdjson_result[element] res
        cdef element root
        cdef Envelope env
        cdef int r, kind
        cdef i128 time_ns
        if n >= 3 and memcmp(p, b"\xef\xbb\xbf", 3) == 0:
            return self._line_slow(p, n, has_now, now)  # simdjson skips a BOM, orjson does not
        if <size_t> (buf_end - p) < n + SIMDJSON_PADDING:
            src = self._padded_gil_free(p, n)
            if src == NULL:
                raise MemoryError()
        res = self._parser.parse(src, n, False)
        if res.error() != SUCCESS:
            return self._line_slow(p, n, has_now, now)
        root = res.value_unsafe()
        r = read_envelope(root, env, self.trace_context)
        if r == INVALID:
            self._counts[C_INVALID] += 1
            self._bad_line("invalid", "not an object, or 'type', 'time', 'request', 'request.id' or "
                           "'error' of the wrong type", p, n)
            return 0
        if r == FALLBACK:
            return self._line_slow(p, n, has_now, now)
        if not _parse_time(env.time, env.time_len, &time_ns):
            self._counts[C_INVALID] += 1
            self._bad_line("invalid", "'time' is not RFC 3339", p, n)
            return 0
        kind = _kind_of(env)
        if kind == KIND_UNKNOWN:
            self._counts[C_UNKNOWN_TYPE] += 1
            self._bad_line("unknown_type", f"unknown type {_text(env.type, env.type_len)[:40]!r}", p, n)
            return 0
        return self._entry(env, kind, time_ns, &root, p, n, has_now, now)

    cdef int _entry(self, Envelope &env, int kind, i128 time_ns, element *root, const char *p,
                    size_t n, bint has_now, i128 now) except -1:
        """A request or response whose envelope is read. With ``root`` NULL, the first
        pass flattened it already (``_attrs_p``)."""
        cdef bint flat = _flattens(env, kind, n, self._table.attrs_cap)
        cdef Parent par
        cdef const Parent *pp = NULL
        if env.has_parent:
            par.hi = env.parent_hi
            par.lo = env.parent_lo
            par.span = env.parent_span
            pp = &par
        if flat and root != NULL and self._flatten_root(root) == FALLBACK:
            return self._line_slow(p, n, has_now, now)
        if flat and self._attrs_reserved:
            self._reserved(self._attrs_reserved, p, n)
        self._counts[C_REQUESTS if kind == KIND_REQUEST else C_RESPONSES] += 1
        if time_ns > self._watermark:
            self._watermark = time_ns
        if kind == KIND_REQUEST:
            if env.is_probe:
                self._counts[C_PROBES] += 1
                return 0
            if not env.has_id or env.id_len == 0:
                self._counts[C_NO_ID] += 1
                self._bad_line("no_id", "request without request.id", p, n)
                return 0
            # a flattened request is stored as its attributes, else as its line
            self._request_fast(env, time_ns, (now if has_now else time_ns) + self._ttl,
                               <const char *> NULL if flat else p, n, pp)
            return 0
        name = self._name_fast(env, kind)
        self._respond(
            env.id if env.has_id else NULL,
            env.id_len if env.has_id else 0,
            None,
            time_ns,
            name,
            self._name_op,
            self._name_mount,
            _text(env.error, env.error_len) if env.has_error and env.error_len else _EMPTY,
            p,
            n,
            None,
            pp,
        )
        return 0

    cdef int _flatten_root(self, element *root) except -1:
        """Flatten ``root`` into the attributes at hand (``_attrs_p``): OK, or FALLBACK
        when the line must go through the reference logic."""
        cdef int r = self._fl.flatten(root[0], self.flatten_arrays)
        if r == FALLBACK:
            return FALLBACK
        if r != OK:
            return _flatten_failed()
        self._attrs_p = self._fl.out.p
        self._attrs_n = self._fl.out.n
        self._attrs_reserved = self._fl.reserved
        return OK

    cdef int _reserved(self, size_t count, const char *p, size_t n) except -1:
        self._counts[C_RESERVED_KEYS] += count
        return self._bad_line("reserved_keys", _RESERVED_REASON, p, n)

    # ------------------------------------------------------------ two passes
    # With release_gil, a big chunk is taken in two passes. The first, without the GIL, parses and
    # flattens every line it can and keeps what the second needs (the envelope's
    # strings, the flattened attributes) in an arena; sender threads run their
    # Python meanwhile instead of stopping the reader. The second, with the GIL,
    # goes through the lines in order and does the rest exactly as the one-pass
    # path does; a line the first pass left (a float, a BOM, bad JSON, a big line,
    # a filter...) takes the one-pass path whole.

    cdef bint _prepare(self, const char *data, size_t n, const char *pre, size_t pre_n,
                       bint writable) noexcept nogil:
        """First pass over ``data``: one record per non-empty line; False when out of memory.
        A ``writable`` buffer may change meanwhile (another thread holds the GIL): each
        line is then parsed from a copy, as simdjson must not see its bytes change."""
        cdef const char *p = data
        cdef const char *end = data + n
        cdef const char *nl
        cdef size_t length, skip
        cdef Prepared *rec
        cdef Prepared *grown
        self._prep_n = 0
        self._arena_n = 0
        while p < end:
            nl = _line_end(p, end)
            length = <size_t> (nl - p)
            if length:
                if self._prep_n == self._prep_cap:
                    grown = <Prepared *> realloc(self._prep, (self._prep_cap * 2 + 256) * sizeof(Prepared))
                    if grown == NULL:
                        return False
                    self._prep = grown
                    self._prep_cap = self._prep_cap * 2 + 256
                rec = &self._prep[self._prep_n]
                self._prep_n += 1
                rec.ready = False
                if <int64_t> length <= self._max_line:
                    skip = _prefix_length(p, length, pre, pre_n)
                    rec.ready = self._prepare_line(p + skip, length - skip, end, rec, writable)
            p = nl + 1
        return True

    cdef bint _prepare_line(self, const char *p, size_t n, const char *buf_end,
                            Prepared *rec, bint copy) noexcept nogil:
        cdef const char *src = p
        cdef simdjson_result[element] res
        cdef element root
        cdef Envelope env
        cdef i128 time_ns
        cdef int kind
        if n > BIG_LINE or (n >= 3 and memcmp(p, b"\xef\xbb\xbf", 3) == 0):
            return False
        if copy or <size_t> (buf_end - p) < n + SIMDJSON_PADDING:
            src = self._padded_gil_free(p, n)
            if src == NULL:
                return False
        res = self._parser.parse(src, n, False)
        if res.error() != SUCCESS:
            return False
        root = res.value_unsafe()
        if read_envelope(root, env, self.trace_context) != OK:
            return False
        if not _parse_time(env.time, env.time_len, &time_ns):
            return False
        kind = _kind_of(env)
        if kind == KIND_UNKNOWN:
            return False
        rec.flattened = _flattens(env, kind, n, self._table.attrs_cap)
        if rec.flattened:
            if flatten_gil_free(self._fl[0], root, self.flatten_arrays) != OK:
                return False
            if not self._keep(self._fl.out.p, self._fl.out.n, &rec.attrs):
                return False
            rec.attrs_n = self._fl.out.n
            rec.reserved = self._fl.reserved
        rec.kind = kind
        rec.time_ns = time_ns
        rec.env = env  # its strings point into the parsed document: moved to the arena
        rec.env.type = rec.env.time = NULL
        return (self._keep(env.id, env.id_len if env.has_id else 0, &rec.id)
                and self._keep(env.error, env.error_len if env.has_error else 0, &rec.error)
                and self._keep(env.operation, env.operation_len if env.operation != NULL else 0,
                               &rec.operation)
                and self._keep(env.target, env.target_len if env.target != NULL else 0, &rec.target))

    cdef bint _keep(self, const char *s, size_t n, size_t *offset) noexcept nogil:
        """Copy ``s`` to the arena; its offset there in ``offset``. False when out of memory."""
        if (self._arena_n + n > self._arena_cap
                and not grow_to(&self._arena, &self._arena_cap, self._arena_cap * 2 + n + 65536)):
            return False
        if n:
            memcpy(self._arena + self._arena_n, s, n)
        offset[0] = self._arena_n
        self._arena_n += n
        return True

    cdef const char *_padded_gil_free(self, const char *p, size_t n) noexcept nogil:
        """The line copied into a buffer with simdjson's padding after it; NULL when out
        of memory."""
        if not grow_to(&self._pad, &self._pad_cap, n + SIMDJSON_PADDING):
            return NULL
        memcpy(self._pad, p, n)
        memset(self._pad + n, 32, SIMDJSON_PADDING)
        return self._pad

    cdef int _prepared_entry(self, Prepared *rec, const char *p, size_t n, bint has_now,
                             i128 now) except -1:
        """Second pass for a line the first one prepared."""
        cdef Envelope env = rec.env
        cdef const char *arena = self._arena
        if env.has_id:
            env.id = arena + rec.id
        if env.has_error:
            env.error = arena + rec.error
        if env.operation != NULL:
            env.operation = arena + rec.operation
        if env.target != NULL:
            env.target = arena + rec.target
        self._attrs_reserved = 0
        if rec.flattened:
            self._attrs_p = arena + rec.attrs
            self._attrs_n = rec.attrs_n
            self._attrs_reserved = rec.reserved
        return self._entry(env, rec.kind, rec.time_ns, NULL, p, n, has_now, now)

    cdef int _bad_line(self, str counter, str reason, const char *p, size_t n) except -1:
        # Only the head of the line: with log_raw=true, lines hold secrets.
        self._bad[counter] = (reason, PyBytes_FromStringAndSize(
            p, <Py_ssize_t> (n if n < <size_t> BAD_SAMPLE_BYTES else <size_t> BAD_SAMPLE_BYTES)))
        return 0

    cdef void _shrink(self) noexcept:
        cdef error_code ignored = self._parser.allocate(1 << 16)
        self._fl.out.shrink(1 << 16)
        if self._pad_cap > (1 << 16):
            free(self._pad)
            self._pad = NULL
            self._pad_cap = 0

    cdef object _name_fast(self, Envelope &env, int kind):
        """_core_py.span_parts from the envelope's parts."""
        cdef const char *s
        cdef size_t n
        cdef size_t op_len = env.operation_len if env.operation != NULL else 0
        cdef size_t mount_len = env.target_len if env.target != NULL and env.target_is_mount else 0
        if env.operation != NULL and env.target != NULL:
            n = env.operation_len + 1 + env.target_len
            if not grow_to(&self._namebuf, &self._namebuf_cap, n):
                raise MemoryError()
            memcpy(self._namebuf, env.operation, env.operation_len)
            self._namebuf[env.operation_len] = 32
            memcpy(self._namebuf + env.operation_len + 1, env.target, env.target_len)
            s = self._namebuf
        elif env.operation != NULL:
            s = env.operation
            n = env.operation_len
        elif env.target != NULL:
            s = env.target
            n = env.target_len
        elif kind == KIND_REQUEST:
            s = b"request"
            n = 7
        else:
            s = b"response"
            n = 8
        return self._intern(s, n, op_len, mount_len)

    cdef object _intern(self, const char *s, size_t n, size_t op_len, size_t mount_len):
        """The shared str of a span name whose first ``op_len`` bytes are its operation
        and last ``mount_len`` its mount; its index is left in _name_idx, the lengths
        in _name_op and _name_mount."""
        cdef uint32_t idx = self._names.lookup(s, n, op_len, mount_len)
        self._name_idx = idx
        self._name_op = op_len
        self._name_mount = mount_len
        if idx != NONE:
            return <object> self._names.get(idx)
        return _text(s, n)  # raises what made the table refuse it, if anything

    cdef int _request_fast(self, Envelope &env, i128 time_ns, i128 deadline, const char *line,
                           size_t line_n, const Parent *par) except -1:
        """Store a request: its ``line``, or with ``line`` NULL the flattener's output."""
        cdef object error = None
        if env.has_error and env.error_len:
            error = _text(env.error, env.error_len)
        name = self._name_fast(env, KIND_REQUEST)
        return self._store(env.id, env.id_len, None, time_ns, deadline, name, self._name_idx,
                           self._name_op, self._name_mount, error, None, line, line_n, par)

    cdef int _line_slow(self, const char *p, size_t n, bint has_now, i128 now) except -1:
        """The lines simdjson leaves: read by the reference core (_core_py.read_entry),
        then stored or answered here."""
        cdef bytes line = PyBytes_FromStringAndSize(p, <Py_ssize_t> n)
        cdef i128 time_ns
        cdef int sign = 0
        cdef const char *s
        cdef Py_ssize_t sn, op_n, mount_n
        cdef bytes key
        cdef uint32_t name_idx
        cdef Parent par
        cdef const Parent *pp
        cdef const char *raw_line
        try:
            envelope = _read_entry(line)
        except _SkippedLine as skipped:
            self._counts[<Py_ssize_t> _COUNTER_INDEX[skipped.counter]] += 1
            self._bad_line(skipped.counter, skipped.reason, p, n)
            return 0
        entry, kind, time_obj, request, request_id, error = envelope
        if py_to_i128(time_obj, &time_ns, 100, &sign) != 0:  # RFC 3339 years: 0 to 9999
            raise OverflowError("time_ns is out of range")
        self._counts[C_REQUESTS if kind == "request" else C_RESPONSES] += 1
        if time_ns > self._watermark:
            self._watermark = time_ns
        name_text, operation, mount = _span_parts(request, kind)  # held: ``s`` points into it
        PyUnicode_AsUTF8AndSize(operation, &op_n)
        PyUnicode_AsUTF8AndSize(mount, &mount_n)
        s = PyUnicode_AsUTF8AndSize(name_text, &sn)
        name = self._intern(s, <size_t> sn, <size_t> op_n, <size_t> mount_n)
        name_idx = self._name_idx
        pp = &par if self._slow_parent(request, &par) else NULL
        # b"" without an id: an orphan response
        key = (<str> request_id).encode("utf-8", "surrogatepass") if request_id else b""
        if kind == "request":
            if request.get("path") == _PROBE_PATH:
                self._counts[C_PROBES] += 1
                return 0
            if not request_id:
                self._counts[C_NO_ID] += 1
                self._bad_line("no_id", "request without request.id", p, n)
                return 0
            attrs = None
            raw_line = p
            if n > self._table.attrs_cap:  # stored flattened
                attrs = self._dump(entry, p, n)
                raw_line = NULL
            return self._store(PyBytes_AS_STRING(key), <size_t> PyBytes_GET_SIZE(key), request_id,
                               time_ns, (now if has_now else time_ns) + self._ttl, name,
                               name_idx, <size_t> op_n, <size_t> mount_n, error if error else None,
                               attrs, raw_line, n, pp)
        attrs = self._dump(entry, p, n)
        return self._respond(PyBytes_AS_STRING(key), <size_t> PyBytes_GET_SIZE(key), request_id,
                             time_ns, name, <size_t> op_n, <size_t> mount_n, error, p, n, attrs, pp)

    cdef bint _slow_parent(self, object request, Parent *out) except -1:
        """_core_py.traceparent_of into ``out``; False when there is none."""
        if not self.trace_context:
            return False
        parent = _traceparent_of(request)
        if parent is None:
            return False
        trace = <bytes> parent[0]
        out.hi = int.from_bytes(trace[:8], "big")
        out.lo = int.from_bytes(trace[8:], "big")
        out.span = parent[1]
        return True

    cdef bytes _dump(self, entry, const char *p, size_t n):
        """_core_py.Core._attrs_json: the attribute bytes of an entry, reserved keys counted."""
        flat, reserved = _entry_attrs(entry, self.flatten_arrays, self.key_filter)
        if reserved:
            self._reserved(reserved, p, n)
        return _dump_attrs(flat)

    # ------------------------------------------------------------ correlation

    cdef int _respond(self, const char *id, size_t id_len, object request_id, i128 time_ns,
                      object name, size_t op_len, size_t mount_len, object error,
                      const char *line, size_t line_n, object attrs, const Parent *par) except -1:
        """A response; its attributes are ``attrs`` or else the flattener's output."""
        cdef uint64_t hi, lo
        cdef bint canon
        cdef uint32_t idx
        cdef i128 start
        if id == NULL or id_len == 0:
            _trace_for(line, line_n, &hi, &lo)
            return self._emit(hi, lo, _EMPTY, name, op_len, mount_len, time_ns, time_ns, error, ORPHAN,
                              attrs, True, par)
        canon = _trace_for(id, id_len, &hi, &lo)
        if request_id is None:
            request_id = _text(id, id_len)
        idx = self._table.find(hi, lo, canon, id, id_len)
        if idx == NONE:
            return self._emit(hi, lo, request_id, name, op_len, mount_len, time_ns, time_ns, error,
                              ORPHAN, attrs, True, par)
        start = self._table.start_of(idx)
        self._table.remove(idx)
        return self._emit(hi, lo, request_id, name, op_len, mount_len, start,
                          time_ns if time_ns > start else start, error, PAIRED, attrs, True, par)

    cdef int _store(self, const char *id, size_t id_len, object request_id, i128 time_ns,
                    i128 deadline, object name, uint32_t name_idx, size_t op_len, size_t mount_len,
                    object error, object attrs, const char *line, size_t line_n,
                    const Parent *par) except -1:
        """Store a request with its ``line`` (at most the cap), else its attributes:
        ``attrs`` (bytes) or the flattener's output. They are in a blob before an
        eviction, which may reuse the parser and the flattener."""
        cdef PendingTable table = self._table
        cdef uint64_t hi, lo
        cdef bint canon = _trace_for(id, id_len, &hi, &lo)
        cdef uint32_t idx = table.find(hi, lo, canon, id, id_len)
        cdef char *blob
        if line != NULL:
            blob = table.pack_attrs(line, line_n, True, time_ns, canon, hi, lo)
        elif attrs is None:
            blob = table.pack_attrs(self._attrs_p, self._attrs_n, False, time_ns, canon, hi, lo)
        else:
            blob = table.pack_attrs(PyBytes_AS_STRING(attrs), <size_t> PyBytes_GET_SIZE(attrs),
                                    False, time_ns, canon, hi, lo)
        cdef bint trimmed = table.trimmed
        if not canon and request_id is None:
            try:
                request_id = _text(id, id_len)
            except BaseException:
                free(blob)
                raise
        # ``id`` may point into the parsed line: not used past here
        if idx != NONE:
            self._counts[C_DUPLICATES] += 1
            table.remove(idx)
        elif table.count >= self._max_pending:
            self._pop(table.oldest(), EVICTED)
        return table.add(hi, lo, canon, time_ns, deadline, name_idx, name, op_len, mount_len,
                         request_id, error, par, blob, trimmed)

    cdef int _pop(self, uint32_t idx, int pairing) except -1:
        """Emit a pending request as an UNANSWERED or EVICTED span."""
        cdef PendingTable table = self._table
        cdef Entry *e = &table.entries[idx]
        cdef Extra *x = NULL
        cdef uint64_t hi = e.k0, lo = e.k1
        cdef i128 start = table.start_of(idx)
        cdef object request_id, name, error
        cdef size_t op_len, mount_len
        cdef Parent par
        cdef const Parent *pp = NULL
        cdef char *blob = e.attrs
        cdef const char *saved_p = self._attrs_p
        cdef size_t saved_n = self._attrs_n
        cdef bint is_line
        if e.extra:
            x = &table.extras[e.extra - 1]
            if x.has_parent:
                par = x.parent  # a copy: the table may free its extras below
                pp = &par
        if x != NULL and x.request_id != NULL:
            request_id = <object> x.request_id
        else:
            request_id = _uuid_text(hi, lo)
        if e.name != NONE:
            name = <object> self._names.get(e.name)
            op_len = self._names.operation_len(e.name)
            mount_len = self._names.mount_len(e.name)
        else:
            name = <object> x.name
            op_len = x.operation_len
            mount_len = x.mount_len
        error = <object> x.error if x != NULL and x.error != NULL else _EMPTY
        if e.flags & F_TRIMMED:
            self._counts[C_ATTRS_TRIMMED] += 1
        e.attrs = NULL  # the span takes the attributes from the blob, freed below
        table.remove(idx)
        # As "the attributes at hand", which an eviction in the middle of storing a
        # request must give back.
        try:
            self._attrs_n = table.unpack_attrs(blob, hi, lo, start, SIMDJSON_PADDING, &is_line)
            self._attrs_p = table.popbuf
            if is_line:
                self._attrs_of_line()
            return self._emit(hi, lo, request_id, name, op_len, mount_len, start, start, error,
                              pairing, None, True, pp)
        finally:
            self._attrs_p = saved_p
            self._attrs_n = saved_n
            self._pop_attrs = None
            free(blob)

    cdef int _attrs_of_line(self) except -1:
        """The attributes of the request line at hand (_attrs_p), flattened as a
        response's are and cut to the cap (counted), as the attributes at hand."""
        cdef const char *line = self._attrs_p
        cdef size_t line_n = self._attrs_n
        cdef simdjson_result[element] res = self._parser.parse(line, line_n, False)
        cdef int r = FALLBACK
        cdef const char *p
        cdef size_t n
        if res.error() == SUCCESS:
            r = self._fl.flatten(res.value_unsafe(), self.flatten_arrays)
            if r != OK and r != FALLBACK and r != INVALID:  # INVALID: not an object any more
                return _flatten_failed()
        if r == OK:
            p = self._fl.out.p
            n = self._fl.out.n
            if self._fl.reserved:
                self._reserved(self._fl.reserved, line, line_n)
        else:
            try:
                # _core_py imports orjson on the first line that needs it (start-up cost)
                entry = _core_py.loads_json(PyBytes_FromStringAndSize(line, <Py_ssize_t> line_n))
            except _JSONDecodeError:
                entry = None
            # Only a buffer changed by another thread while a feed read it gives a line
            # that no longer reads as the request it was: its span then has no attributes.
            self._pop_attrs = self._dump(entry, line, line_n) if type(entry) is dict else b"{}"
            p = PyBytes_AS_STRING(self._pop_attrs)
            n = <size_t> PyBytes_GET_SIZE(self._pop_attrs)
        if n > self._table.attrs_cap:
            n = self._table.trim(p, n)
            p = self._table.tbuf
            self._counts[C_ATTRS_TRIMMED] += 1
        self._attrs_p = p
        self._attrs_n = n
        return 0

    cdef int _emit(self, uint64_t hi, uint64_t lo, object request_id, object name, size_t op_len,
                   size_t mount_len, i128 start, i128 end, object error, int pairing, object attrs,
                   bint raw, const Parent *par) except -1:
        """A span of the request id (hi, lo), in the trace of ``par`` when given; ``attrs``
        are final, or with ``raw`` still without the marker (None: the flattener's output).
        The first ``op_len`` bytes of ``name`` are its operation, the last ``mount_len`` its mount."""
        cdef object rate = _ONE
        cdef uint64_t thi = hi, tlo = lo
        if par != NULL:
            thi = par.hi
            tlo = par.lo
        self._counts[C_PAIRED + pairing] += 1
        if self._sampling and pairing == PAIRED and not error:
            # Keep 1 in N successful spans, by trace id so the choice is stable; errors always.
            if not self._sampled_in(thi, tlo):
                self._counts[C_SAMPLED_OUT] += 1
                return 0
            rate = self.sample_rate
        self._counts[C_SPANS] += 1
        if self._pack(hi, lo, thi, tlo, request_id, name, op_len, mount_len, start, end, error,
                      pairing, attrs, raw, par, rate):
            return 0
        if raw:  # the attribute bytes, with the pairing marker unless PAIRED
            if attrs is None:
                attrs = PyBytes_FromStringAndSize(self._attrs_p, <Py_ssize_t> self._attrs_n)
            if pairing != PAIRED:
                attrs = _with_pairing(attrs, pairing)
        start_obj = i128_to_py(start)
        end_obj = start_obj if end == start else i128_to_py(end)
        parts = _name_parts(name, op_len, mount_len)
        self._spans.add_record(new_span(_trace_bytes(thi, tlo), _span_id(hi, lo),
                                        _ZERO if par == NULL else <object> par.span, name,
                                        start_obj, end_obj, error, pairing, request_id, attrs,
                                        rate, parts[0], parts[1]))
        return 0

    cdef bint _pack(self, uint64_t hi, uint64_t lo, uint64_t thi, uint64_t tlo,
                    object request_id, object name, size_t op_len, size_t mount_len, i128 start,
                    i128 end, object error, int pairing, object attrs, bint raw, const Parent *par,
                    object rate) except -1:
        """Append the span to the store as a PackedSpan; False (nothing added) when a
        PackedSpan cannot hold one of its values."""
        cdef int64_t rate_c = 1
        cdef int overflow = 0
        cdef Py_ssize_t name_n, error_n, rid_n
        cdef const char *name_p
        cdef const char *error_p
        cdef const char *rid_p
        cdef const char *attrs_p
        cdef size_t attrs_n
        cdef SpanStore store = self._spans
        cdef PackedSpan *sp
        cdef size_t name_off, name_len, error_off, error_len, rid_off, rid_len
        cdef size_t attrs_off, attrs_len
        cdef int i
        if (start < -PACK_TIME_LIMIT or start > PACK_TIME_LIMIT or end < -PACK_TIME_LIMIT
                or end > PACK_TIME_LIMIT or end - start >= PACK_DURATION_LIMIT):
            return False
        if rate is not _ONE:
            if type(rate) is not int:
                return False
            rate_c = PyLong_AsLongLongAndOverflow(rate, &overflow)
            if overflow:
                return False
        if type(name) is not str or type(error) is not str or type(request_id) is not str:
            return False
        try:
            name_p = PyUnicode_AsUTF8AndSize(name, &name_n)
            error_p = PyUnicode_AsUTF8AndSize(error, &error_n)
            rid_p = PyUnicode_AsUTF8AndSize(request_id, &rid_n)
        except UnicodeError:
            return False  # a lone surrogate: the record keeps the str as it is
        if op_len > UINT16_MAX or mount_len > UINT16_MAX:
            return False  # parts longer than a PackedSpan holds
        if raw and attrs is None:
            attrs_p = self._attrs_p
            attrs_n = self._attrs_n
        else:
            attrs_p = PyBytes_AS_STRING(attrs)
            attrs_n = <size_t> PyBytes_GET_SIZE(attrs)
        if raw and pairing != PAIRED:
            _put_with_marker(store, attrs_p, attrs_n, pairing, &attrs_off, &attrs_len)
        else:
            store.put(attrs_p, attrs_n, &attrs_off, &attrs_len)
        store.put(name_p, <size_t> name_n, &name_off, &name_len)
        store.put(error_p, <size_t> error_n, &error_off, &error_len)
        store.put(rid_p, <size_t> rid_n, &rid_off, &rid_len)
        sp = store.add()
        for i in range(8):
            sp.trace_id[i] = <unsigned char> (thi >> (56 - 8 * i))
            sp.trace_id[8 + i] = <unsigned char> (tlo >> (56 - 8 * i))
        sp.span_id = _span_id(hi, lo)
        sp.parent_id = 0 if par == NULL else par.span
        sp.start_ns = <int64_t> start
        sp.end_ns = <int64_t> end
        sp.sample_rate = rate_c
        sp.attrs_off = attrs_off
        sp.attrs_len = attrs_len
        sp.name_off = name_off
        sp.name_len = name_len
        sp.error_off = error_off
        sp.error_len = error_len
        sp.rid_off = rid_off
        sp.rid_len = rid_len
        sp.record = -1
        sp.pairing = pairing
        sp.operation_len = <uint16_t> op_len
        sp.mount_len = <uint16_t> mount_len
        return True

    cdef bint _sampled_in(self, uint64_t hi, uint64_t lo) except -1:
        """_core_py.sample_hash(trace id) % sample_rate == 0."""
        cdef uint64_t h = _splitmix64(hi ^ lo)
        if self._rate_c:
            return h % self._rate == 0
        return not (<object> h % self.sample_rate)

cdef int _flatten_failed() except -1:
    """After the flattener failed: its Python exception, else out of memory."""
    if PyErr_Occurred() == NULL:
        raise MemoryError()
    return -1


cdef int _put_with_marker(SpanStore store, const char *p, size_t n, int pairing,
                          size_t *off, size_t *length) except -1:
    """_core_py.with_pairing of the attribute bytes ``p``, written into the store's arena."""
    cdef bytes marker = _MARKERS[pairing]
    cdef size_t mn = <size_t> PyBytes_GET_SIZE(marker)
    cdef char *d = store.reserve(n + mn)
    if n == 2 and p[0] == 123 and p[1] == 125:
        n = 1  # "{}": no comma after its "{"
    else:
        memcpy(d, p, n - 1)
        d[n - 1] = 44  # the closing brace becomes a comma
    d[0] = 123
    memcpy(d + n, PyBytes_AS_STRING(marker), mn)
    off[0] = store.used
    length[0] = n + mn
    store.used += n + mn
    return 0
