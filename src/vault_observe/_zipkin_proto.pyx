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

include "_encode_common.pxi"


cdef enum:
    N_TAIL = 7  # service.name, 4 scope keys, otel.status_code, error
    N_PLAIN_TAIL = 5  # the ones every span gets

# The byte each escape of one letter stands for (n: newline...): ESCAPE read backwards.
cdef unsigned char UNESCAPE[256]
for _b in range(256):
    if ESCAPE[_b] != 0 and ESCAPE[_b] != 0x75:
        UNESCAPE[ESCAPE[_b]] = _b

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


cdef int unescape(const unsigned char* p, Py_ssize_t i, Py_ssize_t end, Buf* out) noexcept nogil:
    """Decode the canonical JSON string body ``p[i:end]`` (its escapes checked by
    ``scan_string_escaped``) into ``out`` (UTF-8, never longer)."""
    cdef unsigned char c
    out.len = 0
    if not reserve(out, <size_t>(end - i)):
        return NO_MEMORY
    while i < end:
        c = p[i]
        if c != 0x5C:
            put_byte(out, c)
            i += 1
            continue
        c = p[i + 1]
        i += 2
        if c == 0x75:  # \u00XX, a control character
            put_byte(out, (hex_lower(p[i + 2]) << 4) | hex_lower(p[i + 3]))
            i += 4
        else:
            put_byte(out, UNESCAPE[c])
    return OK


# What the GIL-free part needs of an encoder, and its buffers for unescaped text.
cdef struct ZipkinOut:
    const char* endpoint  # the whole local_endpoint field
    size_t endpoint_len
    const char* tail_key[N_TAIL]
    size_t tail_key_len[N_TAIL]
    const char* tail_value[N_TAIL]
    size_t tail_value_len[N_TAIL]
    Buf key  # an unescaped key
    Buf value  # an unescaped string value


cdef class ProtoEncoder:
    """Encode SpanRecords as a Zipkin ``ListOfSpans`` (protobuf, v2)."""

    cdef readonly str service_name
    cdef readonly str scope_name
    cdef readonly str scope_version
    cdef bytes _endpoint  # the whole local_endpoint field
    cdef tuple _tail  # (key, value) bytes: the tags the exporter adds after the attributes
    cdef ZipkinOut _out  # the same as C pointers (into the bytes above); no buffers

    implementation = "c"

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
        self._out.endpoint = PyBytes_AS_STRING(self._endpoint)
        self._out.endpoint_len = PyBytes_GET_SIZE(self._endpoint)
        cdef int j
        cdef bytes key, value
        for j in range(N_TAIL):
            key, value = self._tail[j]
            self._out.tail_key[j] = PyBytes_AS_STRING(key)
            self._out.tail_key_len[j] = PyBytes_GET_SIZE(key)
            self._out.tail_value[j] = PyBytes_AS_STRING(value)
            self._out.tail_value_len[j] = PyBytes_GET_SIZE(value)
        init_buf(&self._out.key)
        init_buf(&self._out.value)

    def encode(self, spans):
        """The ``ListOfSpans`` message for ``spans``; LeftToPython for a batch that the
        Python encoder must write."""
        cdef vector[SpanFields] items
        cdef list keep = gather(spans, items)  # owners of the buffers the GIL-free part reads
        cdef ZipkinOut out = self._out  # buffers of its own: two threads may encode at once
        try:
            return write_body(items, zipkin_span, zipkin_room, &out, b"", b"", PROTO_ITEMS, False)[0]
        finally:
            free(out.key.data)
            free(out.value.data)


cdef size_t zipkin_room(const void* ctx, const SpanFields* s) noexcept nogil:
    return <size_t>(s.attrs_len + s.name_len + s.error_len) + 320


cdef inline int span_micros(const SpanFields* s, uint64_t* timestamp, uint64_t* duration) noexcept nogil:
    """The span's start and duration in microseconds rounded half up, as the exporter
    does; FALLBACK when one is negative (the Python encoder refuses the span)."""
    cdef uint64_t magnitude
    if s.start_ns < -500:
        return FALLBACK
    timestamp[0] = (<uint64_t>(s.start_ns + 500)) // 1000 if s.start_ns < 0 else (
        <uint64_t>s.start_ns // 1000 + (<uint64_t>s.start_ns % 1000 + 500) // 1000)
    if s.end_ns >= s.start_ns:
        magnitude = <uint64_t>s.end_ns - <uint64_t>s.start_ns  # exact, even past int64
        duration[0] = magnitude // 1000 + (magnitude % 1000 + 500) // 1000
        return OK
    if <uint64_t>s.start_ns - <uint64_t>s.end_ns > 500:
        return FALLBACK
    duration[0] = 0
    return OK


cdef int zipkin_span(void* ctx, const SpanFields* s, Buf* b) noexcept nogil:
    """Append the Span message to ``b``."""
    cdef ZipkinOut* out = <ZipkinOut*>ctx
    cdef uint64_t timestamp, duration
    if s.trace_id_len != 16 or span_micros(s, &timestamp, &duration) != OK:
        return FALLBACK
    if not reserve(b, 64 + <size_t>s.name_len + out.endpoint_len):
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
    if timestamp:
        put_byte(b, 0x31)
        put_le64(b, timestamp)
    if duration:
        put_byte(b, 0x38)
        put_varint(b, duration)
    put(b, out.endpoint, out.endpoint_len)
    cdef int code = zipkin_tags(out, s, b)
    if code != OK:
        return code
    if not reserve(b, 2):
        return NO_MEMORY
    put(b, b"\x60\x01", 2)  # debug: the span is sampled
    return OK


cdef inline int string_text(const unsigned char* p, Py_ssize_t start, Py_ssize_t end, bint escaped,
                            Buf* scratch, const char** text, size_t* size) noexcept nogil:
    """The text of the string body p[start:end]: the bytes themselves, or unescaped
    into ``scratch``."""
    cdef int code
    if not escaped:
        text[0] = <const char*>(p + start)
        size[0] = <size_t>(end - start)
        return OK
    code = unescape(p, start, end, scratch)
    text[0] = scratch.data
    size[0] = scratch.len
    return code


cdef inline void tail_value(const ZipkinOut* out, const SpanFields* s, int j,
                            const char** value, size_t* size) noexcept nogil:
    """The value of the tag ``out.tail_key[j]``: the span's error for the last one."""
    if j == N_TAIL - 1:
        value[0] = s.error
        size[0] = <size_t>s.error_len
    else:
        value[0] = out.tail_value[j]
        size[0] = out.tail_value_len[j]


cdef int zipkin_tags(ZipkinOut* out, const SpanFields* s, Buf* b) noexcept nogil:
    """The attributes as tags (their text as the exporter writes it), then the
    resource's, the scope's and the error's."""
    cdef const unsigned char* p = s.attrs
    cdef Py_ssize_t n = s.attrs_len
    cdef Py_ssize_t i = first_member(p, n)
    cdef Member m
    cdef int code, j
    cdef int active = N_TAIL if s.error_len else N_PLAIN_TAIL
    cdef unsigned int used = 0
    cdef const char* key
    cdef size_t klen
    cdef const char* value
    cdef size_t vlen
    if i < 0:
        return FALLBACK
    while i < n:
        i = next_member(p, i, n, &m)
        if i < 0:
            return FALLBACK
        if m.kind == 0x7B or m.kind == 0x6E:
            continue  # an object or null: no tag, as the exporter skips them
        code = string_text(p, m.key_start, m.key_end, m.key_escaped, &out.key, &key, &klen)
        if code == OK:
            code = string_text(p, m.value_start, m.value_end, m.value_escaped, &out.value, &value, &vlen)
        if code != OK:
            return code
        # a key the exporter sets later keeps this place and takes the later value
        if klen <= 20:
            for j in range(active):
                if klen == out.tail_key_len[j] and memcmp(key, out.tail_key[j], klen) == 0:
                    used |= 1u << j
                    tail_value(out, s, j, &value, &vlen)
                    break
        if not put_entry(b, key, klen, value, vlen):
            return NO_MEMORY
    for j in range(active):
        if used & (1u << j):
            continue
        tail_value(out, s, j, &value, &vlen)
        if not put_entry(b, out.tail_key[j], out.tail_key_len[j], value, vlen):
            return NO_MEMORY
    return OK
