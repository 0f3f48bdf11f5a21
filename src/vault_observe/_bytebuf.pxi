# A growable byte buffer for the compiled encoders, usable without the GIL.
# Included by _encode_common.pxi, which cimports realloc and memcpy for it.
#
# A request body is written into a buffer that each sender thread keeps from one
# body to the next (take_scratch ... keep_scratch), then copied into the bytes
# object that is sent without holding the GIL (to_bytes). A fresh buffer of a few
# megabytes for every body would cost page faults each time, and freeing it with
# the GIL held would hold up the reader.

cdef extern from *:
    """
    #include <stdlib.h>
    namespace vo_scratch {
    struct Scratch {
        char *data = nullptr;
        size_t cap = 0;
        ~Scratch() { free(data); }
    };
    static inline Scratch &mine() noexcept {
        static thread_local Scratch s;
        return s;
    }
    }
    """
    cdef cppclass ThreadScratch "vo_scratch::Scratch":
        char* data
        size_t cap
    ThreadScratch& thread_scratch "vo_scratch::mine"() noexcept nogil


# A sender keeps at most this much between bodies; a bigger one is freed after use.
cdef size_t SCRATCH_KEEP = 64 << 20


cdef struct Buf:
    char* data
    size_t len
    size_t cap


cdef inline void init_buf(Buf* b) noexcept nogil:
    b.data = NULL
    b.len = b.cap = 0


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


cdef inline void take_scratch(Buf* b) noexcept nogil:
    """Write ``b`` into this thread's buffer (empty), until keep_scratch."""
    cdef ThreadScratch* s = &thread_scratch()
    b.data = s.data
    b.cap = s.cap
    b.len = 0
    s.data = NULL
    s.cap = 0


cdef inline void keep_scratch(Buf* b) noexcept nogil:
    """Give ``b``'s memory back to this thread's buffer (freed when it is too big)."""
    cdef ThreadScratch* s = &thread_scratch()
    if b.cap > SCRATCH_KEEP or s.data != NULL:
        free(b.data)
    else:
        s.data = b.data
        s.cap = b.cap
    init_buf(b)


cdef object to_bytes(const Buf* b):
    """The buffer's bytes as a bytes object; a big one is copied without the GIL."""
    cdef object result = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>b.len)
    cdef char* dst = PyBytes_AS_STRING(result)
    if b.len < 65536:
        memcpy(dst, b.data, b.len)
    else:
        with nogil:
            memcpy(dst, b.data, b.len)
    return result


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
