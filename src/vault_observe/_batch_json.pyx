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
makes ``encode`` raise LeftToPython, and the Python encoder writes that batch:
the bytes stay the reference's.
"""

include "_encode_common.pxi"


cdef extern from *:
    """
    #include <math.h>
    static inline int64_t bj_round_half_even(double x) { return (int64_t)nearbyint(x); }
    """
    int64_t bj_round_half_even(double x) noexcept nogil


cdef enum:
    # OTLP AnyValues nest this deep at most (sinks.encoding.otlp.MAX_VALUE_DEPTH); a deeper
    # array or object is the stringValue of its JSON text
    MAX_VALUE_DEPTH = 32

# |end - start| below this many ns: the float division and the shortest repr of
# the duration are exact in C (see duration_ms).
cdef int64_t EXACT_DURATION_NS = 1_000_000_000_000_000

cdef const char* HEX = b"0123456789abcdef"


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


cdef bint put_string(Buf* b, const char* text, Py_ssize_t n, size_t after) noexcept nogil:
    """A JSON string literal of UTF-8 ``text`` as orjson writes it, with room for ``after``
    more bytes behind it."""
    cdef Py_ssize_t i
    cdef unsigned char c, e
    if not reserve(b, 2 + 6 * <size_t>n + after):
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


# ---------------------------------------------------------------- Honeycomb


cdef int error_member(const unsigned char* p, Py_ssize_t n, const char* text, size_t tlen,
                      bint* add) noexcept nogil:
    """Whether the ``error`` member must be added (``add``): not when ``attrs`` has a
    top-level ``error`` key whose string value is ``text`` (escaped). FALLBACK when
    it holds another value (the reference drops it and re-encodes the attributes)
    or the attributes cannot be read here."""
    cdef Py_ssize_t i = first_member(p, n)
    cdef Member m
    cdef int found = 0
    if i < 0:
        return FALLBACK
    add[0] = True
    while i < n:
        i = next_member(p, i, n, &m)
        if i < 0:
            return FALLBACK
        if m.key_end - m.key_start == 5 and memcmp(p + m.key_start, b"error", 5) == 0:
            found += 1
            if (m.kind == 0x22 and <size_t>(m.value_end - m.value_start) == tlen
                    and memcmp(p + m.value_start, text, tlen) == 0):
                add[0] = False
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


cdef inline bint exact_delta(int64_t start, int64_t end, int64_t* delta) noexcept nogil:
    """``end - start`` (without overflow) when it is within EXACT_DURATION_NS."""
    cdef uint64_t magnitude
    if end >= start:
        magnitude = <uint64_t>end - <uint64_t>start
        if magnitude >= <uint64_t>EXACT_DURATION_NS:
            return False
        delta[0] = <int64_t>magnitude
    else:
        magnitude = <uint64_t>start - <uint64_t>end
        if magnitude >= <uint64_t>EXACT_DURATION_NS:
            return False
        delta[0] = -<int64_t>magnitude
    return True


# What the GIL-free part needs of a HoneycombEncoder.
cdef struct HoneycombOut:
    const char* service  # ,"service_name":...,"service.name":...
    size_t service_len


cdef size_t honey_room(const void* ctx, const SpanFields* s) noexcept nogil:
    """About the most bytes an event can take (escapes may grow text sixfold)."""
    return (<size_t>s.attrs_len + 6 * <size_t>(s.name_len + s.error_len + s.request_id_len)
            + 2 * <size_t>s.trace_id_len + (<const HoneycombOut*>ctx).service_len + 256)


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
            if not put_string(&b, text, size, 0):
                raise MemoryError()
            literal = PyBytes_FromStringAndSize(b.data, b.len)
        finally:
            free(b.data)
        self._service = b',"service_name":' + literal + b',"service.name":' + literal

    def encode(self, spans):
        """``(body, ends)``: the batch body ``[event,...]`` and the offset in it just
        past each event (event ``i`` starts one byte after ``ends[i - 1]``, the first
        at 1); LeftToPython for a batch that the Python encoder must write."""
        cdef vector[SpanFields] items
        cdef list keep = gather(spans, items)  # owners of the buffers the GIL-free part reads
        cdef HoneycombOut out
        cdef SpanFields* item
        cdef size_t k
        cdef int64_t delta
        cdef object start, end
        cdef bytes duration
        for k in range(items.size()):
            item = &items[k]
            if not exact_delta(item.start_ns, item.end_ns, &delta):
                # beyond C's exact range: the duration as EventEncoder writes it
                start, end = item.start_ns, item.end_ns
                duration = repr(round((end - start) / 1000) / 1000).encode()
                keep.append(duration)
                item.text = PyBytes_AS_STRING(duration)
                item.text_len = PyBytes_GET_SIZE(duration)
        out.service = PyBytes_AS_STRING(self._service)
        out.service_len = PyBytes_GET_SIZE(self._service)
        return write_body(items, honey_event, honey_room, &out, b"[", b"]", JSON_ITEMS, True)


cdef int honey_event(void* ctx, const SpanFields* s, Buf* b) noexcept nogil:
    cdef Buf err  # the error's string literal
    init_buf(&err)
    cdef int code = write_event(<const HoneycombOut*>ctx, s, b, &err)
    free(err.data)
    return code


cdef int write_event(const HoneycombOut* out, const SpanFields* s, Buf* b, Buf* err) noexcept nogil:
    cdef bint add = False
    cdef int code
    cdef int64_t delta = 0
    if s.text == NULL and not exact_delta(s.start_ns, s.end_ns, &delta):
        return FALLBACK  # the duration must be written from Python's float repr
    if s.error_len:
        # ``error`` is added unless the attributes hold it already (Vault's do)
        add = True
        if not put_string(err, s.error, s.error_len, 0):
            return NO_MEMORY
        if contains(s.attrs, s.attrs_len, b'"error":', 8):
            code = error_member(s.attrs, s.attrs_len, err.data + 1, err.len - 2, &add)
            if code != OK:
                return code
    if not reserve(b, 128 + <size_t>s.attrs_len + 2 * <size_t>s.trace_id_len):
        return NO_MEMORY
    put(b, b'{"time":"', 9)
    put_rfc3339(b, s.start_ns)
    put(b, b'","samplerate":', 15)
    put_int(b, s.sample_rate)
    put(b, b',"data":', 8)
    # attributes first, trace fields after, as EventEncoder
    if s.attrs_len > 2:
        put(b, s.attrs, <size_t>s.attrs_len - 1)
        put(b, b',"trace.trace_id":', 18)
    else:
        put(b, b'{"trace.trace_id":', 18)
    if s.request_id_len and not s.parent_id:  # the request id as Vault wrote it
        if not put_string(b, s.request_id, s.request_id_len, 0):
            return NO_MEMORY
    else:
        put_byte(b, b'"')
        put_hex_bytes(b, s.trace_id, s.trace_id_len)
        put_byte(b, b'"')
    if not reserve(b, 96 + out.service_len):
        return NO_MEMORY
    put(b, b',"trace.span_id":"', 18)
    put_hex64(b, s.span_id)
    put_byte(b, b'"')
    if s.parent_id:
        put(b, b',"trace.parent_id":"', 20)
        put_hex64(b, s.parent_id)
        put_byte(b, b'"')
    put(b, out.service, out.service_len)
    put(b, b',"name":', 8)
    if not put_string(b, s.name, s.name_len, 48 + <size_t>s.text_len + (err.len + 16 if s.error_len else 0)):
        return NO_MEMORY
    put(b, b',"duration_ms":', 15)
    if s.text != NULL:  # the duration's text, when beyond C's exact range
        put(b, s.text, <size_t>s.text_len)
    else:
        put_duration_ms(b, delta)
    if add:
        put(b, b',"error":', 9)
        put(b, err.data, err.len)
    put(b, b'}}', 2)
    return OK


# ---------------------------------------------------------------- OTLP


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
    cdef Py_ssize_t i = pos[0], s
    cdef unsigned char c
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
        if not put_string(b, <const char*>(p + i), s - i, 1):
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
    if c == 0x5B:
        return otlp_items(p, pos, n, b, depth + 1, b'{"arrayValue":{"values":[', 25, b']}}', 3)
    if c == 0x7B:
        return otlp_items(p, pos, n, b, depth + 1, b'{"kvlistValue":{"values":[', 26, b']}}', 3)
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


cdef int otlp_items(const unsigned char* p, Py_ssize_t* pos, Py_ssize_t n, Buf* b, int depth,
                    const char* head, size_t head_len, const char* tail, size_t tail_len) noexcept nogil:
    """The array or object at p[pos[0]] as ``head``, its items (an object's as
    ``{"key":...,"value":...}``) as AnyValues at ``depth``, ``tail``; pos[0] moves past it."""
    cdef Py_ssize_t i = pos[0], ks, ke
    cdef unsigned char c = p[i]  # [ or {
    cdef int code
    cdef bint first = True
    if not reserve(b, head_len):
        return NO_MEMORY
    put(b, head, head_len)
    i += 1
    if i < n and p[i] == c + 2:
        i += 1
    else:
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
            code = otlp_value(p, pos, n, b, depth)
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
    if not reserve(b, tail_len):
        return NO_MEMORY
    put(b, tail, tail_len)
    pos[0] = i
    return OK


cdef int otlp_attributes(const unsigned char* p, Py_ssize_t n, Buf* b) noexcept nogil:
    """``[{"key":...,"value":...},...]`` of the attributes object."""
    cdef Py_ssize_t i = 0
    cdef int code
    if n < 2 or p[0] != 0x7B:
        return FALLBACK
    code = otlp_items(p, &i, n, b, 1, b'[', 1, b']', 1)
    if code == OK and i != n:
        return FALLBACK  # bytes after the object
    return code


cdef int otlp_span(void* ctx, const SpanFields* s, Buf* b) noexcept nogil:
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
    if not put_string(b, s.name, s.name_len, 96):
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
        if not put_string(b, s.error, s.error_len, 1):
            return NO_MEMORY
        put_byte(b, b'}')
    if not reserve(b, 1):
        return NO_MEMORY
    put_byte(b, b'}')
    return OK


cdef size_t otlp_room(const void* ctx, const SpanFields* s) noexcept nogil:
    """About the most bytes a span can take: attributes grow about threefold (each gets
    its key/value wrapper), escapes may grow text sixfold."""
    return 3 * <size_t>s.attrs_len + 6 * <size_t>(s.name_len + s.error_len) + 256


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
        ``len(head)``); LeftToPython for a batch that the Python encoder must write."""
        cdef vector[SpanFields] items
        cdef list keep = gather(spans, items)  # owners of the buffers the GIL-free part reads
        return write_body(items, otlp_span, otlp_room, NULL, self.head, self.tail, JSON_ITEMS, True)
