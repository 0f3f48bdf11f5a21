# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""Honeycomb batch and OTLP/HTTP JSON bodies, compiled.

``HoneycombEncoder`` gives the bytes of ``sinks.encoding.honeycomb.EventEncoder`` for a
whole batch (``[event,event,...]``) and ``OtlpEncoder`` the bytes of the
``sinks.encoding.otlp`` request body; the Python encoders stay the reference. Each span's
fields are read with the GIL held (from the compiled core's packed spans, straight
from their C records); the bytes are written without it, so the reader thread
keeps going meanwhile.

Both read ``attrs_json`` as the canonical compact JSON of ``_core_py.dump_attrs``:
its string escapes are the ones orjson writes, so strings are copied still
escaped, and its floats are Python's ``repr``, which orjson's form differs from
only in negative exponents. Values are read with explicit depth counts, so any
nesting the cores accept is written: in OTLP, an array or object deeper than
``MAX_VALUE_DEPTH`` is the stringValue of its JSON text (``sinks.encoding.otlp``). Whatever
does not fit these rules (a lone surrogate, an integer beyond uint64, a
non-canonical escape, an ``error`` attribute with another text than the span's)
makes ``encode`` return None, and the sink uses the Python encoder for that
batch: the bytes stay the reference's.
"""

from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memcpy
from libcpp.vector cimport vector
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from vault_observe._spans cimport PackedSpan, PackedSpans, SpanStore

from .model import SpanBatch


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL


cdef extern from *:
    """
    #include <math.h>
    #if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
    #include <emmintrin.h>
    /* The index of the first quote, backslash, control or non-ASCII byte in p[i:n],
       or of the tail shorter than 16 bytes, which the caller scans byte by byte. */
    static inline Py_ssize_t bj_skip_plain(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) {
        const __m128i quote = _mm_set1_epi8(0x22);
        const __m128i backslash = _mm_set1_epi8(0x5C);
        const __m128i control_max = _mm_set1_epi8(0x1F);
        while (i + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i*)(p + i));
            __m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, control_max), v);
            __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)), ctl);
            /* movemask also takes each byte's top bit: non-ASCII stops the run */
            int mask = _mm_movemask_epi8(hit) | _mm_movemask_epi8(v);
            if (mask) return i + __builtin_ctz((unsigned)mask);
            i += 16;
        }
        return i;
    }
    #else
    static inline Py_ssize_t bj_skip_plain(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) {
        (void)p; (void)n;
        return i;
    }
    #endif
    static inline int64_t bj_round_half_even(double x) { return (int64_t)nearbyint(x); }
    """
    Py_ssize_t bj_skip_plain(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil
    int64_t bj_round_half_even(double x) noexcept nogil


# Outcomes of the GIL-free part.
cdef enum:
    OK = 0
    FALLBACK = 1  # the Python encoder must write this batch
    NO_MEMORY = 2

cdef enum:
    # OTLP AnyValues nest this deep at most (sinks.encoding.otlp.MAX_VALUE_DEPTH); a deeper
    # array or object is the stringValue of its JSON text
    MAX_VALUE_DEPTH = 32
    # skip_value's bracket stack; the cores accept about 1,024 levels
    MAX_SKIP_DEPTH = 4096

# |end - start| below this many ns: the float division and the shortest repr of
# the duration are exact in C (see duration_ms).
cdef int64_t EXACT_DURATION_NS = 1_000_000_000_000_000

# Bytes that end a run of plain string bytes: quote, backslash, control, non-ASCII.
cdef unsigned char STOP[256]
# How orjson (and json's encode_basestring) escape a byte; 0: as it is.
cdef unsigned char ESCAPE[256]
cdef int _b
for _b in range(256):
    STOP[_b] = _b < 0x20 or _b == 0x22 or _b == 0x5C or _b >= 0x80
    ESCAPE[_b] = 0
    if _b < 0x20:
        ESCAPE[_b] = 0x75  # \u00XX
ESCAPE[0x22] = 0x22
ESCAPE[0x5C] = 0x5C
ESCAPE[0x08] = 0x62
ESCAPE[0x09] = 0x74
ESCAPE[0x0A] = 0x6E
ESCAPE[0x0C] = 0x66
ESCAPE[0x0D] = 0x72

cdef const char* HEX = b"0123456789abcdef"


include "_bytebuf.pxi"




cdef inline void put_hex64(Buf* b, uint64_t value) noexcept nogil:
    """``%016x``."""
    cdef int i
    for i in range(16):
        b.data[b.len + 15 - i] = HEX[value & 0xF]
        value >>= 4
    b.len += 16


cdef inline void put_hex_bytes(Buf* b, const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """``bytes.hex()``."""
    cdef Py_ssize_t i
    for i in range(n):
        b.data[b.len] = HEX[p[i] >> 4]
        b.data[b.len + 1] = HEX[p[i] & 0xF]
        b.len += 2


cdef inline void put_uint(Buf* b, uint64_t value) noexcept nogil:
    cdef char tmp[20]
    cdef int n = 0
    while True:
        tmp[19 - n] = <char>(0x30 + value % 10)
        n += 1
        value //= 10
        if value == 0:
            break
    put(b, tmp + 20 - n, n)


cdef inline void put_int(Buf* b, int64_t value) noexcept nogil:
    """Decimal, as ``str(int)`` (room: 20 bytes)."""
    if value < 0:
        put_byte(b, b'-')
        put_uint(b, <uint64_t>0 - <uint64_t>value)
    else:
        put_uint(b, <uint64_t>value)


cdef inline void put_digits(Buf* b, int value, int width) noexcept nogil:
    cdef int i
    for i in range(width):
        b.data[b.len + width - 1 - i] = <char>(0x30 + value % 10)
        value //= 10
    b.len += width


cdef bint put_string(Buf* b, const char* text, Py_ssize_t n) noexcept nogil:
    """A JSON string literal of UTF-8 ``text`` as orjson writes it."""
    cdef Py_ssize_t i
    cdef unsigned char c, e
    if not reserve(b, 2 + 6 * <size_t>n):
        return False
    put_byte(b, b'"')
    for i in range(n):
        c = <unsigned char>text[i]
        e = ESCAPE[c]
        if e == 0:
            b.data[b.len] = <char>c
            b.len += 1
        elif e == 0x75:
            put(b, b"\\u00", 4)
            put_byte(b, HEX[c >> 4])
            put_byte(b, HEX[c & 0xF])
        else:
            put_byte(b, b'\\')
            put_byte(b, <char>e)
    put_byte(b, b'"')
    return True


cdef void put_rfc3339(Buf* b, int64_t ns) noexcept nogil:
    """``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`` (UTC; room: 40 bytes), as ``http.rfc3339_ns``."""
    cdef int64_t second = ns // 1_000_000_000
    cdef int64_t frac = ns % 1_000_000_000
    if frac < 0:  # floor division, as divmod
        frac += 1_000_000_000
        second -= 1
    cdef int64_t days = second // 86400
    cdef int64_t rem = second % 86400
    if rem < 0:
        rem += 86400
        days -= 1
    # civil_from_days (H. Hinnant)
    cdef int64_t z = days + 719468
    cdef int64_t era = (z if z >= 0 else z - 146096) // 146097
    cdef int64_t doe = z - era * 146097
    cdef int64_t yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    cdef int64_t y = yoe + era * 400
    cdef int64_t doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef int64_t mp = (5 * doy + 2) // 153
    cdef int64_t d = doy - (153 * mp + 2) // 5 + 1
    cdef int64_t m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    put_digits(b, <int>y, 4)  # int64 ns: years 1677 to 2262
    put_byte(b, b'-')
    put_digits(b, <int>m, 2)
    put_byte(b, b'-')
    put_digits(b, <int>d, 2)
    put_byte(b, b'T')
    put_digits(b, <int>(rem // 3600), 2)
    put_byte(b, b':')
    put_digits(b, <int>(rem // 60 % 60), 2)
    put_byte(b, b':')
    put_digits(b, <int>(rem % 60), 2)
    put_byte(b, b'.')
    put_digits(b, <int>frac, 9)
    put_byte(b, b'Z')


cdef void put_duration_ms(Buf* b, int64_t delta) noexcept nogil:
    """``repr(round(delta / 1000) / 1000)`` for |delta| < EXACT_DURATION_NS (room: 32).

    delta fits a double exactly, so ``delta / 1000.0`` is Python's correctly rounded
    true division, and nearbyint rounds half to even as ``round``. The float
    ``r / 1000`` (|r| < 10**12) then has the decimal ``r / 1000`` as its shortest
    repr: its neighbours are far closer than 0.0005 apart.
    """
    cdef int64_t r = bj_round_half_even(<double>delta / 1000.0)
    cdef uint64_t mag
    cdef int frac, width
    if r < 0:
        put_byte(b, b'-')
        mag = <uint64_t>(-r)
    else:
        mag = <uint64_t>r  # round() gives an int: never -0.0
    put_uint(b, mag // 1000)
    put_byte(b, b'.')
    frac = <int>(mag % 1000)
    if frac == 0:
        put_byte(b, b'0')
        return
    width = 3
    while frac % 10 == 0:
        frac //= 10
        width -= 1
    put_digits(b, frac, width)


# ---------------------------------------------------------------- JSON scanning


cdef inline int utf8_length(const unsigned char* p, Py_ssize_t i, Py_ssize_t end) noexcept nogil:
    """The length of the valid UTF-8 sequence at p[i] (a byte >= 0x80), 0 if invalid."""
    cdef unsigned char c = p[i], c1, c2, c3
    if 0xC2 <= c <= 0xDF:
        if i + 1 < end and (p[i + 1] & 0xC0) == 0x80:
            return 2
        return 0
    if 0xE0 <= c <= 0xEF:
        if i + 2 >= end:
            return 0
        c1 = p[i + 1]
        c2 = p[i + 2]
        if (c1 & 0xC0) != 0x80 or (c2 & 0xC0) != 0x80:
            return 0
        if c == 0xE0 and c1 < 0xA0:
            return 0  # overlong
        if c == 0xED and c1 >= 0xA0:
            return 0  # a surrogate
        return 3
    if 0xF0 <= c <= 0xF4:
        if i + 3 >= end:
            return 0
        c1 = p[i + 1]
        c2 = p[i + 2]
        c3 = p[i + 3]
        if (c1 & 0xC0) != 0x80 or (c2 & 0xC0) != 0x80 or (c3 & 0xC0) != 0x80:
            return 0
        if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90):
            return 0
        return 4
    return 0


cdef inline int hex_lower(unsigned char c) noexcept nogil:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    return -1


cdef Py_ssize_t scan_string(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """``i`` is just past an opening quote: the index of the closing one, or -1 when
    the string is not as orjson would write it (a bad or non-canonical escape,
    a raw control byte, invalid UTF-8)."""
    cdef unsigned char c, e
    cdef int hi, lo, k
    while True:
        i = bj_skip_plain(p, i, n)
        while i < n and not STOP[p[i]]:
            i += 1
        if i >= n:
            return -1
        c = p[i]
        if c == 0x22:
            return i
        if c >= 0x80:
            k = utf8_length(p, i, n)
            if k == 0:
                return -1
            i += k
        elif c == 0x5C:
            if i + 1 >= n:
                return -1
            e = p[i + 1]
            if e == 0x22 or e == 0x5C or e == 0x6E or e == 0x72 or e == 0x74 or e == 0x62 or e == 0x66:
                i += 2
            elif e == 0x75:
                # only \u00XX of a control character without a short form
                if i + 6 > n or p[i + 2] != 0x30 or p[i + 3] != 0x30:
                    return -1
                hi = hex_lower(p[i + 4])
                lo = hex_lower(p[i + 5])
                if hi < 0 or hi > 1 or lo < 0:
                    return -1
                if ESCAPE[(hi << 4) | lo] != 0x75:
                    return -1
                i += 6
            else:
                return -1
        else:
            return -1  # a raw control byte


cdef inline Py_ssize_t skip_literal(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """``true``, ``false`` or ``null`` at p[i]: the index past it, or -1."""
    if i + 4 <= n and memcmp(p + i, b"true", 4) == 0:
        return i + 4
    if i + 4 <= n and memcmp(p + i, b"null", 4) == 0:
        return i + 4
    if i + 5 <= n and memcmp(p + i, b"false", 5) == 0:
        return i + 5
    return -1


cdef inline Py_ssize_t skip_key(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """A member name and its colon at p[i]: the index past them, or -1."""
    if i >= n or p[i] != 0x22:
        return -1
    i = scan_string(p, i + 1, n)
    if i < 0 or i + 1 >= n or p[i + 1] != 0x3A:
        return -1
    return i + 2


cdef Py_ssize_t skip_value(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """The index past the compact JSON value at p[i], or -1. Iterative: a stack of one
    bit per open bracket (set for an object), so any nesting the cores accept."""
    cdef uint64_t kinds[64]  # MAX_SKIP_DEPTH bits
    cdef int depth = 0
    cdef unsigned char c
    cdef bint obj
    while True:
        # a value at p[i]
        if i >= n:
            return -1
        c = p[i]
        if c == 0x22:
            i = scan_string(p, i + 1, n)
            if i < 0:
                return -1
            i += 1
        elif c == 0x5B or c == 0x7B:
            if depth >= MAX_SKIP_DEPTH:
                return -1
            if c == 0x7B:
                kinds[depth >> 6] |= (<uint64_t>1) << (depth & 63)
            else:
                kinds[depth >> 6] &= ~((<uint64_t>1) << (depth & 63))
            depth += 1
            i += 1
            if i < n and p[i] == c + 2:  # empty
                depth -= 1
                i += 1
            else:
                if c == 0x7B:
                    i = skip_key(p, i, n)
                    if i < 0:
                        return -1
                continue  # its first element
        elif is_number_byte(c):
            while i < n and is_number_byte(p[i]):
                i += 1
        else:
            i = skip_literal(p, i, n)
            if i < 0:
                return -1
        # after a value: close what ends here, then the next element
        while True:
            if depth == 0:
                return i
            if i >= n:
                return -1
            obj = (kinds[(depth - 1) >> 6] >> ((depth - 1) & 63)) & 1
            if p[i] == 0x2C:
                i += 1
                if obj:
                    i = skip_key(p, i, n)
                    if i < 0:
                        return -1
                break
            if p[i] == (0x7D if obj else 0x5D):
                depth -= 1
                i += 1
                continue
            return -1


# ---------------------------------------------------------------- a span's fields


# What both bodies take from a span, read with the GIL and written from without it.
cdef struct SpanFields:
    const unsigned char* attrs
    Py_ssize_t attrs_len
    const unsigned char* trace_id
    Py_ssize_t trace_id_len
    const char* name
    Py_ssize_t name_len
    const char* error
    Py_ssize_t error_len
    uint64_t span_id
    uint64_t parent_id
    int64_t start_ns
    int64_t end_ns


cdef int record_fields(object span, SpanFields* f, list keep) except -1:
    """The fields of a SpanRecord; ``keep`` gets the objects their pointers are into.
    UnicodeError, OverflowError or TypeError for what the Python encoders must write."""
    cdef bytes attrs = span.attrs_json
    cdef bytes trace_id = span.trace_id
    cdef str name = span.name
    cdef str error = span.error
    if attrs is None or trace_id is None:
        raise TypeError("attrs_json and trace_id must be bytes")
    keep.append((attrs, trace_id, name, error))
    f.attrs = <const unsigned char*>PyBytes_AS_STRING(attrs)
    f.attrs_len = PyBytes_GET_SIZE(attrs)
    f.trace_id = <const unsigned char*>PyBytes_AS_STRING(trace_id)
    f.trace_id_len = PyBytes_GET_SIZE(trace_id)
    f.name = PyUnicode_AsUTF8AndSize(name, &f.name_len)
    f.error = PyUnicode_AsUTF8AndSize(error, &f.error_len)
    f.span_id = span.span_id
    f.parent_id = span.parent_span_id
    f.start_ns = span.start_ns
    f.end_ns = span.end_ns
    return 0


cdef inline void packed_fields(const PackedSpan* sp, const char* arena, SpanFields* f) noexcept nogil:
    """The fields of a packed span (its strings are in ``arena``)."""
    f.attrs = <const unsigned char*> (arena + sp.attrs_off)
    f.attrs_len = <Py_ssize_t> sp.attrs_len
    f.trace_id = &sp.trace_id[0]
    f.trace_id_len = 16
    f.name = arena + sp.name_off
    f.name_len = <Py_ssize_t> sp.name_len
    f.error = arena + sp.error_off
    f.error_len = <Py_ssize_t> sp.error_len
    f.span_id = sp.span_id
    f.parent_id = sp.parent_id
    f.start_ns = sp.start_ns
    f.end_ns = sp.end_ns


# ---------------------------------------------------------------- Honeycomb


cdef struct HoneyIn:
    SpanFields f
    const char* request_id  # NULL: the hex trace id
    Py_ssize_t request_id_len
    const char* duration  # NULL: computed here
    Py_ssize_t duration_len
    int64_t delta_ns
    int64_t sample_rate


cdef int error_member(const unsigned char* p, Py_ssize_t n, const char* text, size_t tlen,
                      bint* add) noexcept nogil:
    """Whether the ``error`` member must be added (``add``): not when ``attrs`` has a
    top-level ``error`` key whose string value is ``text`` (escaped). FALLBACK when
    it holds another value (the reference drops it and re-encodes the attributes)
    or the attributes cannot be read here."""
    cdef Py_ssize_t i, ks, ke, vs, ve
    cdef int found = 0
    if n < 2 or p[0] != 0x7B:
        return FALLBACK
    add[0] = True
    if n == 2 and p[1] == 0x7D:
        return OK
    i = 1
    while True:
        if i >= n or p[i] != 0x22:
            return FALLBACK
        ks = i + 1
        ke = scan_string(p, ks, n)
        if ke < 0 or ke + 1 >= n or p[ke + 1] != 0x3A:
            return FALLBACK
        vs = ke + 2
        ve = skip_value(p, vs, n)
        if ve < 0 or ve >= n:
            return FALLBACK
        if ke - ks == 5 and memcmp(p + ks, b"error", 5) == 0:
            found += 1
            if (p[vs] == 0x22 and <size_t>(ve - vs - 2) == tlen
                    and memcmp(p + vs + 1, text, tlen) == 0):
                add[0] = False
            else:
                return FALLBACK
        i = ve
        if p[i] == 0x2C:
            i += 1
        elif p[i] == 0x7D and i == n - 1:
            break
        else:
            return FALLBACK
    if found > 1:
        return FALLBACK  # a duplicate key: the reference decodes it
    return OK


cdef inline bint contains(const unsigned char* p, Py_ssize_t n, const char* needle, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t i
    cdef unsigned char first = <unsigned char>needle[0]
    for i in range(n - m + 1):
        if p[i] == first and memcmp(p + i, needle, m) == 0:
            return True
    return False


cdef size_t _honey_records(object spans, vector[HoneyIn]& items, list keep,
                           size_t service_len) except? 0:
    """HoneyIn of each SpanRecord of ``spans``; the bytes they need, roughly."""
    cdef HoneyIn item
    cdef bytes duration
    cdef str request_id
    cdef size_t total = 0
    cdef object delta
    for span in spans:
        record_fields(span, &item.f, keep)
        request_id = span.request_id
        keep.append(request_id)
        if request_id and not item.f.parent_id:
            item.request_id = PyUnicode_AsUTF8AndSize(request_id, &item.request_id_len)
        else:
            item.request_id = NULL
            item.request_id_len = 0
        delta = span.end_ns - span.start_ns
        item.duration = NULL
        item.duration_len = 0
        item.delta_ns = 0
        if -EXACT_DURATION_NS < delta < EXACT_DURATION_NS:
            item.delta_ns = delta
        else:
            duration = repr(round(delta / 1000) / 1000).encode("ascii")
            keep.append(duration)
            item.duration = PyBytes_AS_STRING(duration)
            item.duration_len = PyBytes_GET_SIZE(duration)
        item.sample_rate = span.sample_rate
        items.push_back(item)
        total += _honey_room(&item, service_len)
    return total


cdef bint _honey_packed(PackedSpans chunk, vector[HoneyIn]& items, size_t* total,
                        size_t service_len) except -1:
    """HoneyIn of each packed span of ``chunk``; False (nothing added) when one has a
    duration that the records' path writes from Python's float repr."""
    cdef HoneyIn item
    cdef SpanStore store = chunk.store
    cdef const PackedSpan* sp
    cdef size_t i
    cdef size_t added = 0
    cdef int64_t delta
    for i in range(chunk.lo, chunk.hi):
        delta = store.spans[i].end_ns - store.spans[i].start_ns
        if not -EXACT_DURATION_NS < delta < EXACT_DURATION_NS:
            return False
    for i in range(chunk.lo, chunk.hi):
        sp = &store.spans[i]
        packed_fields(sp, store.arena, &item.f)
        if sp.rid_len and not sp.parent_id:
            item.request_id = store.arena + sp.rid_off
            item.request_id_len = <Py_ssize_t> sp.rid_len
        else:
            item.request_id = NULL
            item.request_id_len = 0
        item.delta_ns = sp.end_ns - sp.start_ns
        item.duration = NULL
        item.duration_len = 0
        item.sample_rate = sp.sample_rate
        items.push_back(item)
        added += _honey_room(&item, service_len)
    total[0] += added
    return True


cdef inline size_t _honey_room(const HoneyIn* item, size_t service_len) noexcept nogil:
    """About the most bytes an event can take (escapes may grow text sixfold)."""
    return (<size_t>item.f.attrs_len + 6 * <size_t>(item.f.name_len + item.f.error_len
            + item.request_id_len) + 2 * <size_t>item.f.trace_id_len + service_len + 256)


cdef class HoneycombEncoder:
    """The Honeycomb batch body of ``EventEncoder``, written for a whole batch."""

    cdef readonly str service_name
    cdef bytes _service  # ,"service_name":...,"service.name":...

    implementation = "c"

    def __init__(self, str service_name):
        self.service_name = service_name
        cdef Py_ssize_t size
        cdef const char* text = PyUnicode_AsUTF8AndSize(service_name, &size)
        cdef Buf b
        init_buf(&b)
        try:
            if not put_string(&b, text, size):
                raise MemoryError()
            literal = PyBytes_FromStringAndSize(b.data, b.len)
        finally:
            free(b.data)
        self._service = b',"service_name":' + literal + b',"service.name":' + literal

    def encode(self, spans):
        """``(body, ends)``: the batch body ``[event,...]`` and the offset in it just
        past each event (event ``i`` starts one byte after ``ends[i - 1]``, the first
        at 1); None when the Python encoder must write this batch."""
        cdef vector[HoneyIn] items
        cdef list keep = []  # owners of the buffers the GIL-free part reads
        cdef size_t total = 2
        cdef size_t service_len_ = PyBytes_GET_SIZE(self._service)
        try:
            for chunk in (spans.chunks if type(spans) is SpanBatch else (spans,)):
                if type(chunk) is PackedSpans and (<PackedSpans> chunk).plain:
                    keep.append(chunk)
                    if _honey_packed(<PackedSpans> chunk, items, &total, service_len_):
                        continue
                total += _honey_records(chunk, items, keep, service_len_)
        except (UnicodeError, OverflowError, TypeError):
            return None  # a lone surrogate, a number beyond 64 bits, ...
        cdef Buf out
        cdef int code = OK
        cdef size_t k
        cdef vector[Py_ssize_t] ends
        cdef const char* service = PyBytes_AS_STRING(self._service)
        cdef size_t service_len = PyBytes_GET_SIZE(self._service)
        take_scratch(&out)
        try:
            with nogil:
                ends.reserve(items.size())
                if not reserve(&out, total):
                    code = NO_MEMORY
                else:
                    put_byte(&out, b'[')
                    for k in range(items.size()):
                        if k:
                            if not reserve(&out, 1):
                                code = NO_MEMORY
                                break
                            put_byte(&out, b',')
                        code = honey_event(&items[k], &out, service, service_len)
                        if code != OK:
                            break
                        ends.push_back(<Py_ssize_t>out.len)
                    if code == OK:
                        if reserve(&out, 1):
                            put_byte(&out, b']')
                        else:
                            code = NO_MEMORY
            if code == NO_MEMORY:
                raise MemoryError()
            if code != OK:
                return None
            return to_bytes(&out), [x for x in ends]
        finally:
            keep_scratch(&out)


cdef int honey_event(HoneyIn* s, Buf* b, const char* service, size_t service_len) noexcept nogil:
    cdef bint add = False
    cdef int code
    cdef Buf err
    init_buf(&err)
    if s.f.error_len:
        # ``error`` is added unless the attributes hold it already (Vault's do)
        add = True
        if not put_string(&err, s.f.error, s.f.error_len):
            free(err.data)
            return NO_MEMORY
        if contains(s.f.attrs, s.f.attrs_len, b'"error":', 8):
            code = error_member(s.f.attrs, s.f.attrs_len, err.data + 1, err.len - 2, &add)
            if code != OK:
                free(err.data)
                return code
    if not reserve(b, 128 + <size_t>s.f.attrs_len + 2 * <size_t>s.f.trace_id_len + <size_t>s.duration_len):
        if s.f.error_len:
            free(err.data)
        return NO_MEMORY
    put(b, b'{"time":"', 9)
    put_rfc3339(b, s.f.start_ns)
    put(b, b'","samplerate":', 15)
    put_int(b, s.sample_rate)
    put(b, b',"data":', 8)
    # attributes first, trace fields after, as EventEncoder
    if s.f.attrs_len > 2:
        put(b, s.f.attrs, <size_t>s.f.attrs_len - 1)
        put(b, b',"trace.trace_id":', 18)
    else:
        put(b, b'{"trace.trace_id":', 18)
    if s.request_id != NULL:
        if not put_string(b, s.request_id, s.request_id_len):
            if s.f.error_len:
                free(err.data)
            return NO_MEMORY
    else:
        put_byte(b, b'"')
        put_hex_bytes(b, s.f.trace_id, s.f.trace_id_len)
        put_byte(b, b'"')
    if not reserve(b, 96 + service_len + <size_t>s.duration_len):
        if s.f.error_len:
            free(err.data)
        return NO_MEMORY
    put(b, b',"trace.span_id":"', 18)
    put_hex64(b, s.f.span_id)
    put_byte(b, b'"')
    if s.f.parent_id:
        put(b, b',"trace.parent_id":"', 20)
        put_hex64(b, s.f.parent_id)
        put_byte(b, b'"')
    put(b, service, service_len)
    put(b, b',"name":', 8)
    if not put_string(b, s.f.name, s.f.name_len):
        if s.f.error_len:
            free(err.data)
        return NO_MEMORY
    if not reserve(b, 48 + <size_t>s.duration_len + (err.len + 16 if s.f.error_len else 0)):
        if s.f.error_len:
            free(err.data)
        return NO_MEMORY
    put(b, b',"duration_ms":', 15)
    if s.duration != NULL:
        put(b, s.duration, <size_t>s.duration_len)
    else:
        put_duration_ms(b, s.delta_ns)
    if s.f.error_len:
        if add:
            put(b, b',"error":', 9)
            put(b, err.data, err.len)
        free(err.data)
    put(b, b'}}', 2)
    return OK


# ---------------------------------------------------------------- OTLP


ctypedef SpanFields OtlpIn


cdef const char* INT64_MAX_TEXT = b"9223372036854775807"
cdef const char* INT64_MIN_DIGITS = b"9223372036854775808"
cdef const char* UINT64_MAX_TEXT = b"18446744073709551615"


cdef int otlp_number(const unsigned char* p, Py_ssize_t s, Py_ssize_t e, Buf* b) noexcept nogil:
    """A JSON number token p[s:e] as an AnyValue, as ``otlp.any_value`` of its
    ``orjson.loads``: int64 as ``intValue``, up to uint64 as ``stringValue``, beyond
    (a float to orjson) FALLBACK; a float in orjson's form, which differs from
    ``repr`` only in negative exponents (``1e-05`` is ``0.00001``, ``1.5e-07``
    ``1.5e-7``)."""
    cdef Py_ssize_t i = s, digits_start, ndigits, exp_at = -1, j
    cdef bint neg = False, is_float = False
    cdef int expo = 0
    if not reserve(b, 64 + <size_t>(e - s)):
        return NO_MEMORY
    if p[i] == 0x2D:
        neg = True
        i += 1
    # -?(0|[1-9][0-9]*)(\.[0-9]+)?(e[+-][0-9]+)?  (uppercase E and a bare
    # exponent sign are left to the reference)
    digits_start = i
    while i < e and 0x30 <= p[i] <= 0x39:
        i += 1
    ndigits = i - digits_start
    if ndigits == 0 or (ndigits > 1 and p[digits_start] == 0x30):
        return FALLBACK
    if i < e and p[i] == 0x2E:
        is_float = True
        i += 1
        j = i
        while i < e and 0x30 <= p[i] <= 0x39:
            i += 1
        if i == j:
            return FALLBACK
    if i < e and p[i] == 0x65:
        is_float = True
        exp_at = i
        i += 1
        if i >= e or (p[i] != 0x2B and p[i] != 0x2D):
            return FALLBACK
        i += 1
        j = i
        while i < e and 0x30 <= p[i] <= 0x39:
            if expo < 10000:
                expo = expo * 10 + (p[i] - 0x30)
            i += 1
        if i == j or expo > 300:
            return FALLBACK  # near the double range's ends: the reference decides
    if i != e:
        return FALLBACK
    if not is_float:
        if neg:
            if ndigits == 1 and p[digits_start] == 0x30:
                put(b, b'{"intValue":"0"}', 16)  # -0 loads as 0
                return OK
            if ndigits > 19 or (ndigits == 19 and memcmp(p + digits_start, INT64_MIN_DIGITS, 19) > 0):
                return FALLBACK
            put(b, b'{"intValue":"', 13)
        elif ndigits < 19 or (ndigits == 19 and memcmp(p + digits_start, INT64_MAX_TEXT, 19) <= 0):
            put(b, b'{"intValue":"', 13)
        elif ndigits == 19 or (ndigits == 20 and memcmp(p + digits_start, UINT64_MAX_TEXT, 20) <= 0):
            put(b, b'{"stringValue":"', 16)
        else:
            return FALLBACK
        put(b, p + s, <size_t>(e - s))
        put(b, b'"}', 2)
        return OK
    put(b, b'{"doubleValue":', 15)
    if exp_at >= 0 and p[exp_at + 1] == 0x2D:
        if expo == 5:
            # 0.0000 and the mantissa's digits
            if neg:
                put_byte(b, b'-')
            put(b, b"0.0000", 6)
            for j in range(digits_start, exp_at):
                if p[j] != 0x2E:
                    put_byte(b, <char>p[j])
        else:
            put(b, p + s, <size_t>(exp_at - s))
            put(b, b"e-", 2)
            put_uint(b, <uint64_t>expo)
    else:
        put(b, p + s, <size_t>(e - s))
    put_byte(b, b'}')
    return OK


cdef int otlp_value(const unsigned char* p, Py_ssize_t* pos, Py_ssize_t n, Buf* b, int depth) noexcept nogil:
    """The JSON value at p[pos[0]] as an AnyValue; pos[0] moves past it."""
    cdef Py_ssize_t i = pos[0], s, ks, ke
    cdef unsigned char c
    cdef int code
    cdef bint first
    if i >= n:
        return FALLBACK
    c = p[i]
    if (c == 0x5B or c == 0x7B) and depth > MAX_VALUE_DEPTH:
        # too deep for AnyValues: the stringValue of its JSON text (still escaped)
        s = skip_value(p, i, n)
        if s < 0:
            return FALLBACK
        if not reserve(b, 17):
            return NO_MEMORY
        put(b, b'{"stringValue":', 15)
        if not put_string(b, <const char*>(p + i), s - i):
            return NO_MEMORY
        if not reserve(b, 1):
            return NO_MEMORY
        put_byte(b, b'}')
        pos[0] = s
        return OK
    if c == 0x22:
        s = i
        i = scan_string(p, i + 1, n)
        if i < 0:
            return FALLBACK
        i += 1
        if not reserve(b, 18 + <size_t>(i - s)):
            return NO_MEMORY
        put(b, b'{"stringValue":', 15)
        put(b, p + s, <size_t>(i - s))
        put_byte(b, b'}')
        pos[0] = i
        return OK
    if c == 0x5B or c == 0x7B:
        if not reserve(b, 32):
            return NO_MEMORY
        if c == 0x5B:
            put(b, b'{"arrayValue":{"values":[', 25)
        else:
            put(b, b'{"kvlistValue":{"values":[', 26)
        i += 1
        if i < n and p[i] == c + 2:
            i += 1
        else:
            first = True
            while True:
                if not reserve(b, 16):
                    return NO_MEMORY
                if not first:
                    put_byte(b, b',')
                first = False
                if c == 0x7B:
                    if i >= n or p[i] != 0x22:
                        return FALLBACK
                    ks = i
                    ke = scan_string(p, i + 1, n)
                    if ke < 0 or ke + 1 >= n or p[ke + 1] != 0x3A:
                        return FALLBACK
                    if not reserve(b, 20 + <size_t>(ke + 1 - ks)):
                        return NO_MEMORY
                    put(b, b'{"key":', 7)
                    put(b, p + ks, <size_t>(ke + 1 - ks))
                    put(b, b',"value":', 9)
                    i = ke + 2
                pos[0] = i
                code = otlp_value(p, pos, n, b, depth + 1)
                if code != OK:
                    return code
                i = pos[0]
                if c == 0x7B:
                    if not reserve(b, 1):
                        return NO_MEMORY
                    put_byte(b, b'}')
                if i >= n:
                    return FALLBACK
                if p[i] == 0x2C:
                    i += 1
                elif p[i] == c + 2:
                    i += 1
                    break
                else:
                    return FALLBACK
        if not reserve(b, 3):
            return NO_MEMORY
        put(b, b']}}', 3)
        pos[0] = i
        return OK
    if is_number_byte(c):
        s = i
        while i < n and is_number_byte(p[i]):
            i += 1
        pos[0] = i
        return otlp_number(p, s, i, b)
    s = skip_literal(p, i, n)
    if s < 0:
        return FALLBACK
    if not reserve(b, 20):
        return NO_MEMORY
    if c == 0x74:
        put(b, b'{"boolValue":true}', 18)
    elif c == 0x66:
        put(b, b'{"boolValue":false}', 19)
    else:
        put(b, b'{}', 2)  # null
    pos[0] = s
    return OK


cdef int otlp_attributes(const unsigned char* p, Py_ssize_t n, Buf* b) noexcept nogil:
    """``[{"key":...,"value":...},...]`` of the attributes object."""
    cdef Py_ssize_t i, ke
    cdef int code
    if n < 2 or p[0] != 0x7B:
        return FALLBACK
    if not reserve(b, 2):
        return NO_MEMORY
    put_byte(b, b'[')
    if n == 2 and p[1] == 0x7D:
        put_byte(b, b']')
        return OK
    i = 1
    while True:
        if i >= n or p[i] != 0x22:
            return FALLBACK
        ke = scan_string(p, i + 1, n)
        if ke < 0 or ke + 1 >= n or p[ke + 1] != 0x3A:
            return FALLBACK
        if not reserve(b, 20 + <size_t>(ke + 1 - i)):
            return NO_MEMORY
        put(b, b'{"key":', 7)
        put(b, p + i, <size_t>(ke + 1 - i))
        put(b, b',"value":', 9)
        i = ke + 2
        code = otlp_value(p, &i, n, b, 1)
        if code != OK:
            return code
        if i >= n or not reserve(b, 2):
            return FALLBACK if i >= n else NO_MEMORY
        put_byte(b, b'}')
        if p[i] == 0x2C:
            put_byte(b, b',')
            i += 1
        elif p[i] == 0x7D and i == n - 1:
            put_byte(b, b']')
            return OK
        else:
            return FALLBACK


cdef int otlp_span(OtlpIn* s, Buf* b) noexcept nogil:
    if not reserve(b, 160 + 2 * <size_t>s.trace_id_len):
        return NO_MEMORY
    put(b, b'{"traceId":"', 12)
    put_hex_bytes(b, s.trace_id, s.trace_id_len)
    put(b, b'","spanId":"', 12)
    put_hex64(b, s.span_id)
    if s.parent_id:
        put(b, b'","parentSpanId":"', 18)
        put_hex64(b, s.parent_id)
    put(b, b'","name":', 9)
    if not put_string(b, s.name, s.name_len):
        return NO_MEMORY
    if not reserve(b, 96):
        return NO_MEMORY
    put(b, b',"kind":2,"startTimeUnixNano":"', 31)
    put_int(b, s.start_ns)
    put(b, b'","endTimeUnixNano":"', 21)
    put_int(b, s.end_ns)
    put(b, b'","attributes":', 15)
    cdef int code = otlp_attributes(s.attrs, s.attrs_len, b)
    if code != OK:
        return code
    if s.error_len:
        if not reserve(b, 32):
            return NO_MEMORY
        put(b, b',"status":{"code":2,"message":', 30)
        if not put_string(b, s.error, s.error_len):
            return NO_MEMORY
        if not reserve(b, 1):
            return NO_MEMORY
        put_byte(b, b'}')
    if not reserve(b, 1):
        return NO_MEMORY
    put_byte(b, b'}')
    return OK


cdef size_t _otlp_records(object spans, vector[OtlpIn]& items, list keep) except? 0:
    """OtlpIn of each SpanRecord of ``spans``; the bytes they need, roughly."""
    cdef OtlpIn item
    cdef size_t total = 0
    for span in spans:
        record_fields(span, &item, keep)
        items.push_back(item)
        total += _otlp_room(&item)
    return total


cdef size_t _otlp_packed(PackedSpans chunk, vector[OtlpIn]& items) except? 0:
    """OtlpIn of each packed span of ``chunk``; the bytes they need, roughly."""
    cdef OtlpIn item
    cdef SpanStore store = chunk.store
    cdef size_t i
    cdef size_t total = 0
    for i in range(chunk.lo, chunk.hi):
        packed_fields(&store.spans[i], store.arena, &item)
        items.push_back(item)
        total += _otlp_room(&item)
    return total


cdef inline size_t _otlp_room(const OtlpIn* item) noexcept nogil:
    """About the most bytes a span can take: attributes grow about threefold (each gets
    its key/value wrapper), escapes may grow text sixfold."""
    return 3 * <size_t>item.attrs_len + 6 * <size_t>(item.name_len + item.error_len) + 256


cdef class OtlpEncoder:
    """The OTLP/HTTP JSON request body of ``sinks.encoding.otlp``: ``head``, the spans
    joined by commas, ``tail``."""

    cdef readonly bytes head
    cdef readonly bytes tail

    implementation = "c"

    def __init__(self, bytes head, bytes tail):
        self.head = head
        self.tail = tail

    def encode(self, spans):
        """``(body, ends)``: the request body and the offset in it just past each
        span (span ``i`` starts one byte after ``ends[i - 1]``, the first at
        ``len(head)``); None when the Python encoder must write this batch."""
        cdef vector[OtlpIn] items
        cdef list keep = []
        cdef size_t total = PyBytes_GET_SIZE(self.head) + PyBytes_GET_SIZE(self.tail)
        try:
            for chunk in (spans.chunks if type(spans) is SpanBatch else (spans,)):
                if type(chunk) is PackedSpans and (<PackedSpans> chunk).plain:
                    keep.append(chunk)
                    total += _otlp_packed(<PackedSpans> chunk, items)
                else:
                    total += _otlp_records(chunk, items, keep)
        except (UnicodeError, OverflowError, TypeError):
            return None
        cdef Buf out
        cdef int code = OK
        cdef size_t k
        cdef vector[Py_ssize_t] ends
        cdef const char* head = PyBytes_AS_STRING(self.head)
        cdef size_t head_len = PyBytes_GET_SIZE(self.head)
        cdef const char* tail = PyBytes_AS_STRING(self.tail)
        cdef size_t tail_len = PyBytes_GET_SIZE(self.tail)
        take_scratch(&out)
        try:
            with nogil:
                ends.reserve(items.size())
                if not reserve(&out, total):
                    code = NO_MEMORY
                else:
                    put(&out, head, head_len)
                    for k in range(items.size()):
                        if k:
                            if not reserve(&out, 1):
                                code = NO_MEMORY
                                break
                            put_byte(&out, b',')
                        code = otlp_span(&items[k], &out)
                        if code != OK:
                            break
                        ends.push_back(<Py_ssize_t>out.len)
                    if code == OK:
                        if reserve(&out, tail_len):
                            put(&out, tail, tail_len)
                        else:
                            code = NO_MEMORY
            if code == NO_MEMORY:
                raise MemoryError()
            if code != OK:
                return None
            return to_bytes(&out), [x for x in ends]
        finally:
            keep_scratch(&out)
