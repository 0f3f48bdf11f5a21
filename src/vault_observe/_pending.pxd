# The requests the compiled core holds until their response comes, they expire or
# they are evicted: an open-addressing table keyed by the trace id, their expiry
# order, the marks they were fed under and their attributes as stored (see
# _pending.pyx). The core (_fast.pyx) cimports it and calls only these cdef methods.

from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport realloc

cdef extern from "_pending_entry.h" namespace "vo":
    ctypedef long long i128 "vo::i128"
    const uint32_t NONE "vo::NO_INDEX"
    uint64_t mix64(uint64_t z) noexcept nogil
    # seq and flags are bit fields there (56 + 8 bits)
    ctypedef struct Entry "vo::Entry":
        uint64_t k0
        uint64_t k1
        int64_t start
        int64_t deadline
        uint64_t seq
        uint32_t flags
        uint32_t prev
        uint32_t next
        uint32_t name
        uint32_t extra
        char *attrs

cdef enum:
    F_CANON = 1     # id is a lower-case UUID: its text is rebuilt from the key
    F_IN_HEAP = 2   # in the out-of-order heap, not in the sorted list
    F_WIDE = 4      # start or deadline does not fit 64 bits: exact values in the extra
    F_TRIMMED = 8   # its attributes were cut to the cap


# (trace id, parent span id) of a valid traceparent header
ctypedef struct Parent:
    uint64_t hi
    uint64_t lo
    uint64_t span

# Rarely needed per-request data: kept only for requests with an error, a
# non-canonical id, an uninterned name, times outside 64 bits or a traceparent.
ctypedef struct Extra:
    PyObject *request_id  # str; NULL for canonical ids
    PyObject *error       # str; NULL for none
    PyObject *name        # str; NULL when interned
    size_t operation_len  # ... and then its parts (see NameTable in _fast_json.h)
    size_t mount_len
    i128 start
    i128 deadline
    uint32_t next_free
    bint has_parent       # a traceparent header: the span joins that trace
    Parent parent

ctypedef struct HeapItem:
    int64_t deadline
    uint64_t seq
    uint32_t idx

# The requests added while one mark was at hand, from the arrival ``first_seq``
# on: an entry belongs to the last run whose first_seq <= its seq.
ctypedef struct MarkRun:
    uint64_t first_seq
    uint64_t mark
    uint64_t live       # how many of them are still pending


cdef class PendingTable:
    cdef Entry *entries       # by the index find/add/oldest give
    cdef Extra *extras        # entry.extra - 1
    cdef uint32_t count       # requests pending
    cdef uint64_t mark        # what the requests added from now on remember
    cdef size_t attrs_cap     # attributes stored are cut to this many bytes
    cdef bint trimmed         # the last pack_attrs cut its attributes
    cdef char *tbuf           # the attributes as trim cut them
    cdef char *popbuf         # what unpack_attrs gave back (with simdjson's padding after it)

    cdef size_t _ent_cap
    cdef uint32_t _ent_used
    cdef uint32_t _free
    cdef uint32_t *_slots
    cdef size_t _nslots
    cdef uint32_t _head       # the deadline-sorted list of in-order arrivals
    cdef uint32_t _tail
    cdef HeapItem *_heap      # the out-of-order ones (entry.prev = position)
    cdef size_t _heap_n
    cdef size_t _heap_cap
    cdef size_t _ext_cap
    cdef uint32_t _ext_used
    cdef uint32_t _ext_free
    cdef uint64_t _seq
    cdef size_t *_members     # (start, length, rank) of each member while trimming
    cdef size_t _members_cap
    cdef size_t _tbuf_cap
    cdef size_t _popbuf_cap
    # marks of the pending requests: runs in arrival order, dead ones dropped lazily
    cdef MarkRun *_runs
    cdef size_t _run_head
    cdef size_t _run_end
    cdef size_t _run_cap
    cdef size_t _runs_live    # runs with live > 0
    cdef bint _runs_unsorted  # a run's mark is below an earlier one's

    cdef uint32_t find(self, uint64_t hi, uint64_t lo, bint canon, const char *id,
                       size_t id_len) except? 0xFFFFFFFE
    cdef int add(self, uint64_t hi, uint64_t lo, bint canon, i128 start, i128 deadline,
                 uint32_t name_idx, object name, size_t op_len, size_t mount_len,
                 object request_id, object error, const Parent *par, char *blob,
                 bint trimmed) except -1
    cdef void remove(self, uint32_t idx) noexcept
    cdef uint32_t oldest(self) noexcept
    cdef i128 start_of(self, uint32_t idx) noexcept
    cdef i128 deadline_of(self, uint32_t idx) noexcept
    cdef object oldest_mark(self)

    cdef char *pack_attrs(self, const char *p, size_t n, bint raw, i128 time_ns, bint canon,
                          uint64_t hi, uint64_t lo) except NULL
    cdef size_t unpack_attrs(self, const char *blob, uint64_t hi, uint64_t lo, i128 start,
                             size_t padding, bint *is_line) except? 0
    cdef size_t trim(self, const char *p, size_t n) except? 0

    cdef uint32_t _alloc_entry(self) except? 0xFFFFFFFE
    cdef uint32_t _alloc_extra(self) except? 0xFFFFFFFE
    cdef void _clear_extra(self, uint32_t i) noexcept
    cdef void _release(self, uint32_t idx) noexcept
    cdef void _shrink_table(self) noexcept
    cdef void _detach(self, uint32_t idx) noexcept
    cdef bint _before(self, int64_t da, uint64_t sa, uint32_t ia,
                      int64_t db, uint64_t sb, uint32_t ib) noexcept
    cdef int _hash_insert(self, uint32_t idx) except -1
    cdef int _rehash(self, size_t nslots) except -1
    cdef void _hash_remove(self, uint32_t idx) noexcept
    cdef int _order_insert(self, uint32_t idx) except -1
    cdef int _mark_add(self, uint64_t seq) except -1
    cdef void _mark_remove(self, uint64_t seq) noexcept
    cdef void _compact_runs(self) noexcept
    cdef bint _heap_less(self, size_t a, size_t b) noexcept
    cdef void _heap_swap(self, size_t a, size_t b) noexcept
    cdef void _sift_up(self, size_t i) noexcept
    cdef void _sift_down(self, size_t i) noexcept
    cdef int _heap_push(self, uint32_t idx) except -1
    cdef void _heap_remove(self, size_t pos) noexcept
    cdef size_t _split_members(self, const char *p, size_t n) except? 0


cdef void uuid_into(uint64_t hi, uint64_t lo, char *d) noexcept


cdef inline bint grow_to(char **buf, size_t *cap, size_t need) noexcept nogil:
    """A buffer of ``cap`` bytes reallocated to ``need`` unless it holds that many
    already; False when out of memory (the buffer is then as it was)."""
    cdef char *grown
    if need > cap[0]:
        grown = <char *> realloc(buf[0], need)
        if grown == NULL:
            return False
        buf[0] = grown
        cap[0] = need
    return True
