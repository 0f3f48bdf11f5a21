# What the compiled encoders (_batch_json.pyx, _zipkin_proto.pyx) share: the byte
# buffer, the scanner of canonical attribute bytes, the span gatherer and the write
# loop. Included by both.
#
# The contract with the Python layer: an encoder raises LeftToPython for a batch it
# cannot write as its Python twin would (a lone surrogate, a number beyond 64 bits,
# JSON that is not canonical...). The Python encoder then writes that batch, and
# only its exceptions mean that a span cannot be encoded at all.

from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memcpy, memmove
from libcpp.vector cimport vector
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from vault_observe._spans cimport PackedSpan, PackedSpans, SpanStore

from .errors import LeftToPython
from .model import SpanBatch


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL


cdef extern from *:
    """
    #if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
    #include <emmintrin.h>
    /* The index of the first quote, backslash, control or non-ASCII byte in p[i:n],
       or of the tail shorter than 16 bytes, which the caller scans byte by byte. */
    static inline Py_ssize_t vo_skip_plain(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) {
        const __m128i quote = _mm_set1_epi8(0x22);
        const __m128i backslash = _mm_set1_epi8(0x5C);
        const __m128i control_max = _mm_set1_epi8(0x1F);
        while (i + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i*)(p + i));
            /* v <= 0x1F (unsigned) exactly when min(v, 0x1F) == v */
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
    static inline Py_ssize_t vo_skip_plain(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) {
        (void)p; (void)n;
        return i;
    }
    #endif

    #if defined(__GNUC__) || defined(__clang__)
    #define VO_ALWAYS_INLINE inline __attribute__((always_inline))
    #else
    #define VO_ALWAYS_INLINE inline
    #endif

    /* Bytes that end a run of plain string bytes: quote, backslash, control,
       non-ASCII. How orjson (and json's encode_basestring, hence canonical
       attributes) escape a byte; 0: as it is. Both filled at import. */
    static unsigned char vo_STOP[256];
    static unsigned char vo_ESCAPE[256];

    /* The length of the valid UTF-8 sequence at p[i] (a byte >= 0x80), 0 if invalid. */
    static VO_ALWAYS_INLINE int vo_utf8_length(const unsigned char* p, Py_ssize_t i, Py_ssize_t end) {
        unsigned char c = p[i], c1, c2, c3;
        if (0xC2 <= c && c <= 0xDF)
            return (i + 1 < end && (p[i + 1] & 0xC0) == 0x80) ? 2 : 0;
        if (0xE0 <= c && c <= 0xEF) {
            if (i + 2 >= end) return 0;
            c1 = p[i + 1]; c2 = p[i + 2];
            if ((c1 & 0xC0) != 0x80 || (c2 & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && c1 < 0xA0) return 0;  /* overlong */
            if (c == 0xED && c1 >= 0xA0) return 0;  /* a surrogate */
            return 3;
        }
        if (0xF0 <= c && c <= 0xF4) {
            if (i + 3 >= end) return 0;
            c1 = p[i + 1]; c2 = p[i + 2]; c3 = p[i + 3];
            if ((c1 & 0xC0) != 0x80 || (c2 & 0xC0) != 0x80 || (c3 & 0xC0) != 0x80) return 0;
            if ((c == 0xF0 && c1 < 0x90) || (c == 0xF4 && c1 >= 0x90)) return 0;
            return 4;
        }
        return 0;
    }

    static inline int vo_hex_lower(unsigned char c) {
        if (0x30 <= c && c <= 0x39) return c - 0x30;
        if (0x61 <= c && c <= 0x66) return c - 0x61 + 10;
        return -1;
    }

    /* i is just past an opening quote: the index of the closing one, or -1 when the
       string is not as canonical attributes (and orjson) write it: a bad or
       non-canonical escape, a raw control byte, invalid UTF-8. *escaped tells whether
       it holds an escape. Always inlined: it runs for every key and string value. */
    static VO_ALWAYS_INLINE Py_ssize_t vo_scan_string(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                                      int* escaped) {
        unsigned char c, e;
        int hi, lo, k;
        *escaped = 0;
        for (;;) {
            i = vo_skip_plain(p, i, n);
            while (i < n && !vo_STOP[p[i]]) i++;
            if (i >= n) return -1;
            c = p[i];
            if (c == 0x22) return i;
            if (c >= 0x80) {
                k = vo_utf8_length(p, i, n);
                if (k == 0) return -1;
                i += k;
            } else if (c == 0x5C) {
                if (i + 1 >= n) return -1;
                *escaped = 1;
                e = p[i + 1];
                if (e == 0x22 || e == 0x5C || e == 0x6E || e == 0x72 || e == 0x74 || e == 0x62 || e == 0x66) {
                    i += 2;
                } else if (e == 0x75) {
                    /* only backslash-u00XX of a control character without a short form */
                    if (i + 6 > n || p[i + 2] != 0x30 || p[i + 3] != 0x30) return -1;
                    hi = vo_hex_lower(p[i + 4]);
                    lo = vo_hex_lower(p[i + 5]);
                    if (hi < 0 || hi > 1 || lo < 0) return -1;
                    if (vo_ESCAPE[(hi << 4) | lo] != 0x75) return -1;
                    i += 6;
                } else {
                    return -1;
                }
            } else {
                return -1;  /* a raw control byte */
            }
        }
    }
    """
    Py_ssize_t skip_plain "vo_skip_plain"(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil
    unsigned char STOP "vo_STOP"[256]
    unsigned char ESCAPE "vo_ESCAPE"[256]
    int hex_lower "vo_hex_lower"(unsigned char c) noexcept nogil
    Py_ssize_t scan_string_escaped "vo_scan_string"(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                                    bint* escaped) noexcept nogil


include "_bytebuf.pxi"


# Outcomes of the GIL-free part.
cdef enum:
    OK = 0
    FALLBACK = 1  # the Python encoder must write this batch
    NO_MEMORY = 2

cdef enum:
    # skip_value's bracket stack; the cores accept about 1,024 levels
    MAX_SKIP_DEPTH = 4096

# STOP and ESCAPE (declared in C above, for the scanner): filled once.
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


# ---------------------------------------------------------------- varints


cdef inline void put_varint(Buf* b, uint64_t value) noexcept nogil:
    while value >= 0x80:
        b.data[b.len] = <char>((value & 0x7F) | 0x80)
        b.len += 1
        value >>= 7
    b.data[b.len] = <char>value
    b.len += 1


cdef inline size_t varint_size(uint64_t value) noexcept nogil:
    cdef size_t n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


# ---------------------------------------------------------------- canonical attributes


cdef inline Py_ssize_t scan_string(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """``scan_string_escaped`` when whether it held an escape does not matter."""
    cdef bint escaped
    return scan_string_escaped(p, i, n, &escaped)


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


# One top-level member of the attributes object: the name's bytes between its quotes
# and the value's JSON text (a string's between its quotes).
cdef struct Member:
    Py_ssize_t key_start
    Py_ssize_t key_end
    Py_ssize_t value_start
    Py_ssize_t value_end
    unsigned char kind  # the value's first byte: '"', '[', '{', 't', 'f', 'n' or a number's
    bint key_escaped
    bint value_escaped


cdef inline Py_ssize_t first_member(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Where the first member of the attributes object p[:n] starts (n for ``{}``), or
    -1 when the bytes do not start an object."""
    if n < 2 or p[0] != 0x7B:
        return -1
    if p[1] == 0x7D:
        return n if n == 2 else -1
    return 1


cdef inline Py_ssize_t next_member(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, Member* m) noexcept nogil:
    """Read the member at p[i] into ``m``: the index of the next member (n after the
    last), or -1 when the object is not canonical JSON."""
    if i >= n or p[i] != 0x22:
        return -1
    m.key_start = i + 1
    m.key_end = scan_string_escaped(p, i + 1, n, &m.key_escaped)
    if m.key_end < 0 or m.key_end + 2 >= n or p[m.key_end + 1] != 0x3A:
        return -1
    i = m.key_end + 2
    m.kind = p[i]
    m.value_escaped = False
    if m.kind == 0x22:
        m.value_start = i + 1
        m.value_end = scan_string_escaped(p, i + 1, n, &m.value_escaped)
        if m.value_end < 0:
            return -1
        i = m.value_end + 1
    else:
        m.value_start = i
        i = skip_value(p, i, n)
        if i < 0:
            return -1
        m.value_end = i
    # , or the final }
    if i >= n:
        return -1
    if p[i] == 0x2C:
        return i + 1
    if p[i] == 0x7D and i == n - 1:
        return n
    return -1


# ---------------------------------------------------------------- a span's fields


# What the encoders take from a span, read with the GIL and written from without it.
cdef struct SpanFields:
    const unsigned char* attrs
    Py_ssize_t attrs_len
    const unsigned char* trace_id
    Py_ssize_t trace_id_len
    const char* name
    Py_ssize_t name_len
    const char* error
    Py_ssize_t error_len
    const char* request_id
    Py_ssize_t request_id_len
    uint64_t span_id
    uint64_t parent_id
    int64_t start_ns
    int64_t end_ns
    int64_t sample_rate
    # set by an encoder that writes a field from Python text (NULL: none)
    const char* text
    Py_ssize_t text_len


cdef int record_fields(object span, SpanFields* f, list keep) except -1:
    """The fields of a SpanRecord; ``keep`` gets the objects their pointers are into.
    UnicodeError, OverflowError or TypeError for what the Python encoders must write."""
    cdef bytes attrs = span.attrs_json
    cdef bytes trace_id = span.trace_id
    cdef str name = span.name
    cdef str error = span.error
    cdef str request_id = span.request_id
    if attrs is None or trace_id is None:
        raise TypeError("attrs_json and trace_id must be bytes")
    keep.append((attrs, trace_id, name, error, request_id))
    f.attrs = <const unsigned char*>PyBytes_AS_STRING(attrs)
    f.attrs_len = PyBytes_GET_SIZE(attrs)
    f.trace_id = <const unsigned char*>PyBytes_AS_STRING(trace_id)
    f.trace_id_len = PyBytes_GET_SIZE(trace_id)
    f.name = PyUnicode_AsUTF8AndSize(name, &f.name_len)
    f.error = PyUnicode_AsUTF8AndSize(error, &f.error_len)
    f.request_id = PyUnicode_AsUTF8AndSize(request_id, &f.request_id_len)
    f.span_id = span.span_id
    f.parent_id = span.parent_span_id
    f.start_ns = span.start_ns
    f.end_ns = span.end_ns
    f.sample_rate = span.sample_rate
    f.text = NULL
    f.text_len = 0
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
    f.request_id = arena + sp.rid_off
    f.request_id_len = <Py_ssize_t> sp.rid_len
    f.span_id = sp.span_id
    f.parent_id = sp.parent_id
    f.start_ns = sp.start_ns
    f.end_ns = sp.end_ns
    f.sample_rate = sp.sample_rate
    f.text = NULL
    f.text_len = 0


cdef list gather(object spans, vector[SpanFields]& items):
    """The fields of every span of ``spans`` (SpanRecords, packed spans or a SpanBatch of
    them) into ``items``; the objects whose buffers they point into, to keep alive while
    they are read. LeftToPython when a field does not fit its C type."""
    cdef list keep = []
    cdef SpanFields item
    cdef SpanStore store
    cdef size_t i
    try:
        for chunk in (spans.chunks if type(spans) is SpanBatch else (spans,)):
            if type(chunk) is PackedSpans and (<PackedSpans> chunk).plain:
                keep.append(chunk)
                store = (<PackedSpans> chunk).store
                for i in range((<PackedSpans> chunk).lo, (<PackedSpans> chunk).hi):
                    packed_fields(&store.spans[i], store.arena, &item)
                    items.push_back(item)
            else:
                for span in chunk:
                    record_fields(span, &item, keep)
                    items.push_back(item)
    except (UnicodeError, OverflowError, TypeError) as exc:
        # a lone surrogate, a number beyond 64 bits, a field of another type
        raise LeftToPython(f"{type(exc).__name__}: {exc}") from None
    return keep


# ---------------------------------------------------------------- the write loop


# Appends one span to the body; OK, FALLBACK or NO_MEMORY.
ctypedef int (*write_span_fn)(void* ctx, const SpanFields* span, Buf* out) noexcept nogil
# About the most bytes a span can take in the body.
ctypedef size_t (*span_room_fn)(const void* ctx, const SpanFields* span) noexcept nogil

cdef enum Framing:
    JSON_ITEMS = 0  # spans joined by commas
    PROTO_ITEMS = 1  # each span a length-delimited field 1 (a repeated message)


cdef object write_body(vector[SpanFields]& items, write_span_fn write_span, span_room_fn span_room,
                       void* ctx, bytes head, bytes tail, Framing framing, bint with_ends):
    """``head``, every span as ``write_span`` writes it (framed), ``tail``: the body, and
    with ``with_ends`` the offset in it just past each span (else None). Written into
    this thread's scratch buffer without the GIL. LeftToPython when a span is left to
    the Python encoder."""
    cdef Buf out
    cdef int code = OK
    cdef size_t k, total, guess, start, size, used
    cdef Py_ssize_t failed = -1
    cdef vector[Py_ssize_t] ends
    cdef const char* head_p = PyBytes_AS_STRING(head)
    cdef size_t head_len = PyBytes_GET_SIZE(head)
    cdef const char* tail_p = PyBytes_AS_STRING(tail)
    cdef size_t tail_len = PyBytes_GET_SIZE(tail)
    take_scratch(&out)
    try:
        with nogil:
            total = head_len + tail_len + items.size()
            for k in range(items.size()):
                total += span_room(ctx, &items[k])
            if with_ends:
                ends.reserve(items.size())
            if not reserve(&out, total):
                code = NO_MEMORY
            else:
                put(&out, head_p, head_len)
            for k in range(items.size()):
                if code != OK:
                    break
                guess = 0
                if framing == JSON_ITEMS:
                    if k:
                        if not reserve(&out, 1):
                            code = NO_MEMORY
                            break
                        put_byte(&out, b',')
                else:
                    # The span goes straight after room for its length, guessed from
                    # its attributes' size: a wrong guess costs a memmove.
                    guess = varint_size(<size_t>items[k].attrs_len + 192)
                    if not reserve(&out, 1 + guess):
                        code = NO_MEMORY
                        break
                    put_byte(&out, 0x0A)
                    out.len += guess
                start = out.len
                code = write_span(ctx, &items[k], &out)
                if code != OK:
                    failed = <Py_ssize_t>k
                    break
                if framing == PROTO_ITEMS:
                    size = out.len - start
                    used = varint_size(size)
                    if used != guess:
                        if used > guess and not reserve(&out, used - guess):
                            code = NO_MEMORY
                            break
                        memmove(out.data + start - guess + used, out.data + start, size)
                    out.len = start - guess
                    put_varint(&out, size)
                    out.len += size
                if with_ends:
                    ends.push_back(<Py_ssize_t>out.len)
            if code == OK:
                if reserve(&out, tail_len):
                    put(&out, tail_p, tail_len)
                else:
                    code = NO_MEMORY
        if code == NO_MEMORY:
            raise MemoryError()
        if code != OK:
            raise LeftToPython(f"span {failed} of {items.size()} is left to the Python encoder")
        return to_bytes(&out), ([x for x in ends] if with_ends else None)
    finally:
        keep_scratch(&out)
