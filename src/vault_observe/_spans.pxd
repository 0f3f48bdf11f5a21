# Packed spans: the compiled core's ready spans without one Python object per span.
# The core appends to a SpanStore; the daemon hands PackedSpans views of it to the
# sinks, whose compiled encoders read the C records directly (see _spans.pyx).

from libc.stdint cimport int64_t, uint16_t, uint64_t


cdef struct PackedSpan:
    unsigned char trace_id[16]  # big-endian, as SpanRecord.trace_id
    uint64_t span_id
    uint64_t parent_id          # 0: a root span
    int64_t start_ns
    int64_t end_ns
    int64_t sample_rate
    size_t attrs_off            # the strings are UTF-8 in the store's arena
    size_t attrs_len
    size_t name_off
    size_t name_len
    size_t error_off
    size_t error_len
    size_t rid_off
    size_t rid_len
    Py_ssize_t record           # -1, or where in ``records`` this span is kept whole
    int pairing
    uint16_t operation_len      # the name's first bytes are its operation (0: none),
    uint16_t mount_len          # its last bytes its mount (0: none); the record stays 136 bytes


cdef class SpanStore:
    cdef PackedSpan *spans
    cdef size_t n
    cdef size_t cap
    cdef char *arena
    cdef size_t used
    cdef size_t room
    cdef list records           # the SpanRecords of spans that do not fit a PackedSpan
    cdef size_t record_bytes    # what those SpanRecords hold (their objects' sizes)

    cdef PackedSpan *add(self) except NULL
    cdef int reserve_spans(self, size_t count) except -1
    cdef int shrink(self) except -1
    cdef void clear(self) noexcept
    cdef char *reserve(self, size_t extra) except NULL
    cdef int put(self, const char *p, size_t n, size_t *off, size_t *length) except -1
    cdef int add_record(self, object record) except -1


cdef class PackedSpans:
    cdef readonly SpanStore store
    cdef size_t lo
    cdef size_t hi
    cdef readonly bint plain    # every span of [lo, hi) is packed: none is kept whole


cdef PackedSpans packed_view(SpanStore store, size_t lo, size_t hi)
cdef size_t store_bytes(SpanStore store) noexcept
cdef PackedSpans copy_spans(SpanStore src, size_t lo, size_t hi, size_t max_bytes)

cdef object new_span(object trace_id, object span_id, object parent_span_id, object name,
                     object start_ns, object end_ns, object error, int pairing, object request_id,
                     object attrs_json, object sample_rate, object operation, object mount)
