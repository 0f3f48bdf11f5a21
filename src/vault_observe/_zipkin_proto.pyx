# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""Zipkin ``ListOfSpans`` protobuf encoder, compiled.

Gives the same bytes as ``vault_observe.sinks.encoding.zipkin_proto`` (whose docstring
states the encoding rules), but reads the tags straight out of ``attrs_json`` with
a small scanner instead of decoding it: the object is flat and canonical, so a
string value is its unescaped text and a number or an array is its JSON slice as
it stands. The spans' fields are read with the GIL held (from the compiled core's
packed spans, straight from their C records); the encoding itself runs without it,
so the reader thread keeps going meanwhile.
"""

from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memcpy, memmove
from libcpp.vector cimport vector
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from vault_observe._spans cimport PackedSpan, PackedSpans, SpanStore

from .model import SpanBatch


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL


cdef extern from *:
    """
    #if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
    #include <emmintrin.h>
    /* Skip plain string bytes 16 at a time: the index of the first quote, backslash
       or control byte in p[i:n], or of the tail shorter than 16 bytes, which the
       caller scans byte by byte. */
    static inline Py_ssize_t zk_skip_plain(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) {
        const __m128i quote = _mm_set1_epi8(0x22);
        const __m128i backslash = _mm_set1_epi8(0x5C);
        const __m128i control_max = _mm_set1_epi8(0x1F);
        while (i + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i*)(p + i));
            /* v <= 0x1F (unsigned) exactly when min(v, 0x1F) == v */
            __m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, control_max), v);
            __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)), ctl);
            int mask = _mm_movemask_epi8(hit);
            if (mask) return i + __builtin_ctz((unsigned)mask);
            i += 16;
        }
        return i;
    }
    #else
    static inline Py_ssize_t zk_skip_plain(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) {
        (void)p; (void)n;
        return i;
    }
    #endif
    """
    Py_ssize_t zk_skip_plain(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil


CONTENT_TYPE = "application/x-protobuf"

cdef enum:
    N_TAIL = 7  # service.name, 4 scope keys, otel.status_code, error
    N_PLAIN_TAIL = 5  # the ones every span gets

cdef struct SpanIn:
    const char* trace_id
    uint64_t span_id
    uint64_t parent_id
    const char* name
    Py_ssize_t name_len
    uint64_t timestamp
    uint64_t duration
    const char* error
    Py_ssize_t error_len
    const unsigned char* attrs
    Py_ssize_t attrs_len

# Error codes of the GIL-free part.
cdef enum:
    OK = 0
    BAD_JSON = 1
    BAD_ESCAPE = 2
    NO_MEMORY = 3

# Bytes that end a run of plain string bytes: quote, backslash, control characters.
cdef unsigned char STOP[256]
cdef int _b
for _b in range(256):
    STOP[_b] = _b < 0x20 or _b == 0x22 or _b == 0x5C


include "_bytebuf.pxi"




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


cdef inline void put_be64(Buf* b, uint64_t value) noexcept nogil:
    cdef int i
    for i in range(8):
        b.data[b.len + 7 - i] = <char>(value & 0xFF)
        value >>= 8
    b.len += 8


cdef inline void put_le64(Buf* b, uint64_t value) noexcept nogil:
    cdef int i
    for i in range(8):
        b.data[b.len + i] = <char>(value & 0xFF)
        value >>= 8
    b.len += 8


cdef inline bint put_entry(Buf* b, const char* key, size_t klen,
                           const char* value, size_t vlen) noexcept nogil:
    """One ``tags`` map entry (field 11): key and value are written even when empty."""
    cdef size_t size = 2 + varint_size(klen) + klen + varint_size(vlen) + vlen
    if not reserve(b, 1 + varint_size(size) + size):
        return False
    put_byte(b, 0x5A)
    put_varint(b, size)
    put_byte(b, 0x0A)
    put_varint(b, klen)
    put(b, key, klen)
    put_byte(b, 0x12)
    put_varint(b, vlen)
    put(b, value, vlen)
    return True


cdef inline int hex_value(unsigned char c) noexcept nogil:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    if 0x41 <= c <= 0x46:
        return c - 0x41 + 10
    return -1


cdef inline int read_hex4(const unsigned char* p) noexcept nogil:
    cdef int a = hex_value(p[0]), b = hex_value(p[1]), c = hex_value(p[2]), d = hex_value(p[3])
    if a < 0 or b < 0 or c < 0 or d < 0:
        return -1
    return (a << 12) | (b << 8) | (c << 4) | d


cdef inline void put_utf8(Buf* b, uint32_t cp) noexcept nogil:
    if cp < 0x80:
        put_byte(b, cp)
    elif cp < 0x800:
        put_byte(b, 0xC0 | (cp >> 6))
        put_byte(b, 0x80 | (cp & 0x3F))
    elif cp < 0x10000:
        put_byte(b, 0xE0 | (cp >> 12))
        put_byte(b, 0x80 | ((cp >> 6) & 0x3F))
        put_byte(b, 0x80 | (cp & 0x3F))
    else:
        put_byte(b, 0xF0 | (cp >> 18))
        put_byte(b, 0x80 | ((cp >> 12) & 0x3F))
        put_byte(b, 0x80 | ((cp >> 6) & 0x3F))
        put_byte(b, 0x80 | (cp & 0x3F))


cdef inline Py_ssize_t scan_string(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                   bint* escaped) noexcept nogil:
    """``i`` is just past the opening quote: the index of the closing one, or -1."""
    cdef unsigned char c
    escaped[0] = False
    while True:
        i = zk_skip_plain(p, i, n)
        while i < n and not STOP[p[i]]:
            i += 1
        if i >= n:
            return -1
        c = p[i]
        if c == 0x22:
            return i
        if c == 0x5C:  # the byte after a backslash cannot end the string
            escaped[0] = True
            i += 2
        else:
            return -1  # a raw control character is not JSON


cdef int unescape(const unsigned char* p, Py_ssize_t i, Py_ssize_t end, Buf* out) noexcept nogil:
    """Decode the JSON string body ``p[i:end]`` into ``out`` (UTF-8, never longer)."""
    cdef unsigned char c
    cdef int cp, low
    out.len = 0
    if not reserve(out, <size_t>(end - i)):
        return NO_MEMORY
    while i < end:
        c = p[i]
        if c != 0x5C:
            put_byte(out, c)
            i += 1
            continue
        if i + 1 >= end:
            return BAD_ESCAPE
        c = p[i + 1]
        i += 2
        if c == 0x22 or c == 0x5C or c == 0x2F:
            put_byte(out, c)
        elif c == 0x6E:
            put_byte(out, 0x0A)
        elif c == 0x74:
            put_byte(out, 0x09)
        elif c == 0x72:
            put_byte(out, 0x0D)
        elif c == 0x62:
            put_byte(out, 0x08)
        elif c == 0x66:
            put_byte(out, 0x0C)
        elif c == 0x75:  # \uXXXX, maybe half of a surrogate pair
            if i + 4 > end:
                return BAD_ESCAPE
            cp = read_hex4(p + i)
            if cp < 0:
                return BAD_ESCAPE
            i += 4
            if 0xD800 <= cp <= 0xDBFF:
                if i + 6 > end or p[i] != 0x5C or p[i + 1] != 0x75:
                    return BAD_ESCAPE  # a lone surrogate has no UTF-8 form
                low = read_hex4(p + i + 2)
                if low < 0xDC00 or low > 0xDFFF:
                    return BAD_ESCAPE
                i += 6
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
            elif 0xDC00 <= cp <= 0xDFFF:
                return BAD_ESCAPE
            put_utf8(out, <uint32_t>cp)
        else:
            return BAD_ESCAPE
    return OK


cdef Py_ssize_t skip_container(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """``p[i]`` opens an array or object: the index just past its end, or -1."""
    cdef int depth = 0
    cdef unsigned char c
    cdef bint escaped
    while i < n:
        c = p[i]
        if c == 0x22:
            i = scan_string(p, i + 1, n, &escaped)
            if i < 0:
                return -1
        elif c == 0x5B or c == 0x7B:
            depth += 1
        elif c == 0x5D or c == 0x7D:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


cdef struct Scratch:
    Buf key  # an unescaped key
    Buf value  # an unescaped string value


cdef size_t _gather_records(object spans, vector[SpanIn]& items, list keep) except? 0:
    """SpanIn of each SpanRecord of ``spans``; the bytes they need, roughly."""
    cdef SpanIn item
    cdef bytes trace_id, attrs
    cdef str name, error
    cdef Py_ssize_t size
    cdef size_t total = 0
    for span in spans:
        trace_id = span.trace_id
        if trace_id is None or PyBytes_GET_SIZE(trace_id) != 16:
            raise ValueError("trace_id must be 16 bytes")
        name = span.name
        error = span.error
        attrs = span.attrs_json
        if attrs is None:
            raise ValueError("attrs_json must be bytes")
        keep.append((trace_id, name, error, attrs))
        item.trace_id = PyBytes_AS_STRING(trace_id)
        item.span_id = span.span_id
        item.parent_id = span.parent_span_id
        item.name = PyUnicode_AsUTF8AndSize(name, &size)
        item.name_len = size
        item.error = PyUnicode_AsUTF8AndSize(error, &size)
        item.error_len = size
        item.attrs = <const unsigned char*>PyBytes_AS_STRING(attrs)
        item.attrs_len = PyBytes_GET_SIZE(attrs)
        # microseconds rounded half up, as the exporter does (Python ints: no overflow)
        start = span.start_ns
        timestamp = (start + 500) // 1000
        duration = (span.end_ns - start + 500) // 1000
        if timestamp < 0 or duration < 0:
            raise ValueError("span time out of range")
        item.timestamp = timestamp
        item.duration = duration
        items.push_back(item)
        total += <size_t>(item.attrs_len + item.name_len + item.error_len) + 320
    return total


cdef inline int64_t _floor_div(int64_t a, int64_t b) noexcept nogil:
    """Python's a // b for b > 0."""
    cdef int64_t q = a / b
    if a % b != 0 and a < 0:
        q -= 1
    return q


cdef size_t _gather_packed(PackedSpans chunk, vector[SpanIn]& items) except? 0:
    """SpanIn of each packed span of ``chunk`` (their times fit 64 bits with room)."""
    cdef SpanIn item
    cdef SpanStore store = chunk.store
    cdef const PackedSpan* sp
    cdef const char* arena = store.arena
    cdef size_t i
    cdef size_t total = 0
    cdef int64_t timestamp, duration
    for i in range(chunk.lo, chunk.hi):
        sp = &store.spans[i]
        item.trace_id = <const char*> sp.trace_id
        item.span_id = sp.span_id
        item.parent_id = sp.parent_id
        item.name = arena + sp.name_off
        item.name_len = <Py_ssize_t> sp.name_len
        item.error = arena + sp.error_off
        item.error_len = <Py_ssize_t> sp.error_len
        item.attrs = <const unsigned char*> (arena + sp.attrs_off)
        item.attrs_len = <Py_ssize_t> sp.attrs_len
        # microseconds rounded half up, as the exporter does
        timestamp = _floor_div(sp.start_ns + 500, 1000)
        duration = _floor_div(sp.end_ns - sp.start_ns + 500, 1000)
        if timestamp < 0 or duration < 0:
            raise ValueError("span time out of range")
        item.timestamp = <uint64_t> timestamp
        item.duration = <uint64_t> duration
        items.push_back(item)
        total += sp.attrs_len + sp.name_len + sp.error_len + 320
    return total


cdef class ProtoEncoder:
    """Encode SpanRecords as a Zipkin ``ListOfSpans`` (protobuf, v2)."""

    cdef readonly str service_name
    cdef readonly str scope_name
    cdef readonly str scope_version
    cdef bytes _endpoint  # the whole local_endpoint field
    cdef tuple _tail  # (key, value) bytes: the tags the exporter adds after the attributes
    # the same as C pointers (into the bytes above), for the GIL-free part
    cdef const char* _endpoint_p
    cdef size_t _endpoint_len
    cdef const char* _tail_key[N_TAIL]
    cdef size_t _tail_key_len[N_TAIL]
    cdef const char* _tail_value[N_TAIL]
    cdef size_t _tail_value_len[N_TAIL]

    implementation = "c"
    content_type = CONTENT_TYPE

    def __init__(self, str service_name, str scope_name, str scope_version):
        self.service_name = service_name
        self.scope_name = scope_name
        self.scope_version = scope_version
        cdef bytes name = service_name.encode()
        cdef Buf b
        init_buf(&b)
        if not reserve(&b, 16 + len(name)):
            raise MemoryError()
        put_byte(&b, 0x42)
        if name:
            put_varint(&b, 1 + varint_size(len(name)) + len(name))
            put_byte(&b, 0x0A)
            put_varint(&b, len(name))
            put(&b, <const char*>name, len(name))
        else:
            put_byte(&b, 0)
        self._endpoint = PyBytes_FromStringAndSize(b.data, b.len)
        free(b.data)
        scope = scope_name.encode()
        version = scope_version.encode()
        self._tail = (
            (b"service.name", name),
            (b"otel.library.name", scope),
            (b"otel.library.version", version),
            (b"otel.scope.name", scope),
            (b"otel.scope.version", version),
            (b"otel.status_code", b"ERROR"),
            (b"error", b""),  # the span's own error text
        )
        self._endpoint_p = PyBytes_AS_STRING(self._endpoint)
        self._endpoint_len = PyBytes_GET_SIZE(self._endpoint)
        cdef int j
        cdef bytes key, value
        for j in range(N_TAIL):
            key, value = self._tail[j]
            self._tail_key[j] = PyBytes_AS_STRING(key)
            self._tail_key_len[j] = PyBytes_GET_SIZE(key)
            self._tail_value[j] = PyBytes_AS_STRING(value)
            self._tail_value_len[j] = PyBytes_GET_SIZE(value)

    def encode(self, spans):
        """The ``ListOfSpans`` message for ``spans``; ValueError (or another
        exception) if one of them cannot be encoded."""
        return self._encode(spans, True)

    def encode_span(self, span):
        """One ``Span`` message."""
        return self._encode((span,), False)

    cdef object _encode(self, spans, bint wrap):
        cdef vector[SpanIn] items
        cdef list keep = []  # owners of the buffers the GIL-free part reads
        cdef size_t total = 0
        for chunk in (spans.chunks if type(spans) is SpanBatch else (spans,)):
            if type(chunk) is PackedSpans and (<PackedSpans> chunk).plain:
                keep.append(chunk)
                total += _gather_packed(<PackedSpans> chunk, items)
            else:
                total += _gather_records(chunk, items, keep)
        return self._write(items, wrap, total)

    cdef object _write(self, vector[SpanIn]& items, bint wrap, size_t total):
        cdef Buf out
        cdef Scratch scratch
        cdef Py_ssize_t failed = -1
        cdef int code = OK
        cdef size_t k, guess, body, body_len, used
        take_scratch(&out)
        init_buf(&scratch.key)
        init_buf(&scratch.value)
        try:
            with nogil:
                if not reserve(&out, total):
                    code = NO_MEMORY
                for k in range(items.size()):
                    if code != OK:
                        break
                    # The span goes straight after room for its length, guessed from
                    # its attributes' size: a wrong guess costs a memmove.
                    guess = 0
                    if wrap:
                        guess = varint_size(<size_t>items[k].attrs_len + 192)
                        if not reserve(&out, 1 + guess):
                            code = NO_MEMORY
                            break
                        put_byte(&out, 0x0A)
                        out.len += guess
                    body = out.len
                    code = self._span(&items[k], &out, &scratch)
                    if code != OK:
                        failed = <Py_ssize_t>k
                        break
                    if wrap:
                        body_len = out.len - body
                        used = varint_size(body_len)
                        if used != guess:
                            if used > guess and not reserve(&out, used - guess):
                                code = NO_MEMORY
                                break
                            memmove(out.data + body - guess + used, out.data + body, body_len)
                        out.len = body - guess
                        put_varint(&out, body_len)
                        out.len += body_len
            if code == NO_MEMORY:
                raise MemoryError()
            if code != OK:
                what = "a bad escape" if code == BAD_ESCAPE else "malformed JSON"
                raise ValueError(f"span {failed}: attrs_json holds {what}")
            return to_bytes(&out)
        finally:
            keep_scratch(&out)
            free(scratch.key.data)
            free(scratch.value.data)

    cdef int _span(self, SpanIn* s, Buf* b, Scratch* scratch) noexcept nogil:
        """Append the Span message to ``b``."""
        if not reserve(b, 64 + <size_t>s.name_len + self._endpoint_len):
            return NO_MEMORY
        put(b, b"\x0a\x10", 2)
        put(b, s.trace_id, 16)
        if s.parent_id:
            put(b, b"\x12\x08", 2)
            put_be64(b, s.parent_id)
        put(b, b"\x1a\x08", 2)
        put_be64(b, s.span_id)
        put(b, b"\x20\x02", 2)  # kind SERVER
        if s.name_len:
            put_byte(b, 0x2A)
            put_varint(b, s.name_len)
            put(b, s.name, s.name_len)
        if s.timestamp:
            put_byte(b, 0x31)
            put_le64(b, s.timestamp)
        if s.duration:
            put_byte(b, 0x38)
            put_varint(b, s.duration)
        put(b, self._endpoint_p, self._endpoint_len)
        cdef int code = self._tags(s, b, scratch)
        if code != OK:
            return code
        if not reserve(b, 2):
            return NO_MEMORY
        put(b, b"\x60\x01", 2)  # debug: the span is sampled
        return OK

    cdef int _tags(self, SpanIn* s, Buf* b, Scratch* scratch) noexcept nogil:
        cdef const unsigned char* p = s.attrs
        cdef Py_ssize_t n = s.attrs_len
        cdef Py_ssize_t i, ks, ke, vs, ve
        cdef bint key_escaped, value_escaped, skip
        cdef int code, j
        cdef int active = N_TAIL if s.error_len else N_PLAIN_TAIL
        cdef unsigned int used = 0
        cdef const char* key
        cdef size_t klen
        cdef const char* value
        cdef size_t vlen
        cdef unsigned char c
        if n < 2 or p[0] != 0x7B:
            return BAD_JSON
        i = 1
        if p[1] == 0x7D:
            if n != 2:
                return BAD_JSON
            i = n  # {}
        while i < n:
            # "key":
            if p[i] != 0x22:
                return BAD_JSON
            ks = i + 1
            ke = scan_string(p, ks, n, &key_escaped)
            if ke < 0 or ke + 2 >= n or p[ke + 1] != 0x3A:
                return BAD_JSON
            i = ke + 2
            # value
            c = p[i]
            vs = i
            value_escaped = False
            skip = False
            if c == 0x22:
                vs = i + 1
                ve = scan_string(p, vs, n, &value_escaped)
                if ve < 0:
                    return BAD_JSON
                i = ve + 1
            elif c == 0x5B or c == 0x7B:
                ve = skip_container(p, i, n)
                if ve < 0:
                    return BAD_JSON
                i = ve
                skip = c == 0x7B  # an object: no tag, as the exporter skips it
            elif c == 0x74:
                if i + 4 > n or memcmp(p + i, b"true", 4) != 0:
                    return BAD_JSON
                i += 4
                ve = i
            elif c == 0x66:
                if i + 5 > n or memcmp(p + i, b"false", 5) != 0:
                    return BAD_JSON
                i += 5
                ve = i
            elif c == 0x6E:
                if i + 4 > n or memcmp(p + i, b"null", 4) != 0:
                    return BAD_JSON
                i += 4
                ve = i
                skip = True  # null: no tag, as the exporter skips it
            elif is_number_byte(c):
                while i < n and is_number_byte(p[i]):
                    i += 1
                ve = i
            else:
                return BAD_JSON
            # , or the final }
            if i >= n:
                return BAD_JSON
            if p[i] == 0x2C:
                i += 1
            elif p[i] == 0x7D and i == n - 1:
                i = n
            else:
                return BAD_JSON
            if skip:
                continue
            if key_escaped:
                code = unescape(p, ks, ke, &scratch.key)
                if code != OK:
                    return code
                key = scratch.key.data
                klen = scratch.key.len
            else:
                key = <const char*>(p + ks)
                klen = <size_t>(ke - ks)
            if value_escaped:
                code = unescape(p, vs, ve, &scratch.value)
                if code != OK:
                    return code
                value = scratch.value.data
                vlen = scratch.value.len
            else:
                value = <const char*>(p + vs)
                vlen = <size_t>(ve - vs)
            # a key the exporter sets later keeps this place and takes the later value
            if klen <= 20:
                for j in range(active):
                    if klen == self._tail_key_len[j] and memcmp(key, self._tail_key[j], klen) == 0:
                        used |= 1u << j
                        if j == N_TAIL - 1:
                            value = s.error
                            vlen = <size_t>s.error_len
                        else:
                            value = self._tail_value[j]
                            vlen = self._tail_value_len[j]
                        break
            if not put_entry(b, key, klen, value, vlen):
                return NO_MEMORY
        for j in range(active):
            if used & (1u << j):
                continue
            if j == N_TAIL - 1:
                value = s.error
                vlen = <size_t>s.error_len
            else:
                value = self._tail_value[j]
                vlen = self._tail_value_len[j]
            if not put_entry(b, self._tail_key[j], self._tail_key_len[j], value, vlen):
                return NO_MEMORY
        return OK
