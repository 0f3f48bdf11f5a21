# A growable byte buffer for the compiled encoders, usable without the GIL.
# Included by _zipkin_proto.pyx and _batch_json.pyx (they cimport realloc and memcpy).

cdef struct Buf:
    char* data
    size_t len
    size_t cap


cdef bint reserve(Buf* b, size_t extra) noexcept nogil:
    """Room for ``extra`` more bytes; False when out of memory."""
    cdef size_t need = b.len + extra
    cdef size_t cap
    cdef char* data
    if need <= b.cap:
        return True
    cap = b.cap * 2 if b.cap else 65536
    if cap < need:
        cap = need
    data = <char*>realloc(b.data, cap)
    if data == NULL:
        return False
    b.data = data
    b.cap = cap
    return True


# The put_* functions write without a check: the caller reserved the room.

cdef inline void put_byte(Buf* b, unsigned char value) noexcept nogil:
    b.data[b.len] = <char>value
    b.len += 1


cdef inline void put(Buf* b, const void* src, size_t size) noexcept nogil:
    memcpy(b.data + b.len, src, size)
    b.len += size


cdef inline bint is_number_byte(unsigned char c) noexcept nogil:
    """A byte that may appear in a JSON number."""
    return (0x30 <= c <= 0x39) or c == 0x2D or c == 0x2B or c == 0x2E or c == 0x65 or c == 0x45
