# A growable byte buffer for the compiled encoders, usable without the GIL.
# Included by _zipkin_proto.pyx and _batch_json.pyx (they cimport realloc and memcpy).
#
# A request body is written straight into the bytes object that is sent
# (start_bytes ... end_bytes): no copy of it with the GIL held, and no free of a
# few megabytes with it either. Should the body outgrow the object, the buffer
# moves to malloc'd memory and end_bytes copies it out once.

from cpython.ref cimport PyObject
from libc.stdlib cimport malloc


cdef extern from "Python.h":
    PyObject* _bytes_new "PyBytes_FromStringAndSize"(const char* v, Py_ssize_t n)
    char* _bytes_data "PyBytes_AS_STRING"(PyObject* o)
    int _bytes_resize "_PyBytes_Resize"(PyObject** o, Py_ssize_t n)
    void _bytes_decref "Py_DECREF"(PyObject* o)


cdef struct Buf:
    char* data
    size_t len
    size_t cap
    bint borrowed  # data is a bytes object's (start_bytes): grown by moving out of it


cdef inline void init_buf(Buf* b) noexcept nogil:
    b.data = NULL
    b.len = b.cap = 0
    b.borrowed = False


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
    if b.borrowed:
        data = <char*>malloc(cap)
        if data == NULL:
            return False
        memcpy(data, b.data, b.len)
        b.borrowed = False
    else:
        data = <char*>realloc(b.data, cap)
        if data == NULL:
            return False
    b.data = data
    b.cap = cap
    return True


cdef PyObject* start_bytes(Buf* b, size_t cap) except NULL:
    """A new bytes object of ``cap`` bytes that ``b`` writes into (a new reference for
    ``end_bytes`` or ``drop_bytes``)."""
    cdef PyObject* raw = _bytes_new(NULL, <Py_ssize_t>cap)
    if raw == NULL:
        raise MemoryError()
    b.data = _bytes_data(raw)
    b.len = 0
    b.cap = cap
    b.borrowed = True
    return raw


cdef object end_bytes(Buf* b, PyObject** raw):
    """What ``b`` holds, as bytes: the object of start_bytes cut to size, or a copy of
    the buffer it moved to. Takes ``raw`` over (sets it to NULL)."""
    cdef object result
    cdef size_t n = b.len
    if b.borrowed:
        init_buf(b)  # the bytes object owns the data
        # in place: the only reference is ours (on failure the object is freed)
        if _bytes_resize(raw, <Py_ssize_t>n) != 0:
            raw[0] = NULL
            raise MemoryError()
        result = <object>raw[0]
        _bytes_decref(raw[0])
        raw[0] = NULL
        return result
    result = PyBytes_FromStringAndSize(b.data, <Py_ssize_t>n)
    free(b.data)
    init_buf(b)
    _bytes_decref(raw[0])
    raw[0] = NULL
    return result


cdef void drop_bytes(Buf* b, PyObject* raw) noexcept:
    """Free what start_bytes and the writing left (``raw`` may be NULL)."""
    if raw != NULL:
        _bytes_decref(raw)
    if not b.borrowed:
        free(b.data)
    init_buf(b)


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
