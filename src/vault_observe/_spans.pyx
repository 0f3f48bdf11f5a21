# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""Packed spans: what the compiled core hands the sinks instead of SpanRecords.

A ``SpanStore`` holds the spans of one ``drain`` as fixed C records plus one arena
of their UTF-8 strings and attribute bytes: no Python object per span, so the
reader allocates nothing per span and a sender frees a whole chunk at once. The
compiled encoders read the records directly (``cimport`` of this module). Anything
else sees ``PackedSpans`` as a sequence of ``SpanRecord``, made on demand, equal
to what the reference core gives. A span with a value outside what a record holds
(a time beyond 2**62 ns, a lone surrogate in a string, a sample rate beyond 64
bits) is kept as its ``SpanRecord``; a view with such a span is not ``plain``.
"""

from collections.abc import Sequence

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.object cimport PyTypeObject
from cpython.ref cimport Py_INCREF, PyObject
from libc.stdint cimport SIZE_MAX, int64_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy

import sys
import types

from .model import SpanRecord

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member
    object PyUnicode_DecodeUTF8(const char *s, Py_ssize_t size, const char *errors)
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL
    object PyType_GenericAlloc(PyTypeObject *t, Py_ssize_t nitems)
    void PyObject_GC_UnTrack(void *op)
    object PyLong_FromLongLong(long long v)
    object PyLong_FromUnsignedLongLong(unsigned long long v)

cdef extern from *:
    """
    #if defined(__GLIBC__)
    #include <malloc.h>
    static size_t vo_usable_size(void *p) { return p ? malloc_usable_size(p) : 0; }
    static int vo_trim(void) { return malloc_trim(0); }
    #else
    static size_t vo_usable_size(void *p) { (void)p; return 0; }
    static int vo_trim(void) { return 0; }
    #endif
    """
    size_t vo_usable_size(void *p) nogil
    int vo_trim() nogil

cdef object _ZERO = 0
cdef object _ONE = 1
cdef object _EMPTY = ""
cdef tuple _PAIRING_OBJS = (0, 1, 2, 3)

# ---------------------------------------------------------------- SpanRecord

# SpanRecord has __slots__ only; its slots are filled directly, which is several
# times faster than calling its __init__. Falls back to the call if that changes.
cdef Py_ssize_t _OFF[13]
cdef bint _DIRECT = True
_FIELDS = (
    "trace_id", "span_id", "parent_span_id", "name", "start_ns",
    "end_ns", "error", "pairing", "request_id", "attrs_json", "sample_rate",
    "operation", "mount",
)
for _i, _f in enumerate(_FIELDS):
    _d = SpanRecord.__dict__.get(_f)
    if type(_d) is not types.MemberDescriptorType:
        _DIRECT = False
        break
    _OFF[_i] = (<PyMemberDescrObject *> <PyObject *> _d).d_member.offset
if SpanRecord.__new__ is not object.__new__ or "__dict__" in SpanRecord.__dict__:
    _DIRECT = False


cdef inline void _set_slot(object obj, Py_ssize_t off, object value) noexcept:
    Py_INCREF(value)
    (<PyObject **> ((<char *> <PyObject *> obj) + off))[0] = <PyObject *> value


cdef object new_span(object trace_id, object span_id, object parent_span_id, object name,
                     object start_ns, object end_ns, object error, int pairing, object request_id,
                     object attrs_json, object sample_rate, object operation, object mount):
    cdef object pairing_obj = _PAIRING_OBJS[pairing]
    if not _DIRECT:
        return SpanRecord(trace_id, span_id, parent_span_id, name, start_ns, end_ns, error,
                          pairing_obj, request_id, attrs_json, sample_rate, operation, mount)
    cdef object span = PyType_GenericAlloc(<PyTypeObject *> SpanRecord, 0)
    _set_slot(span, _OFF[0], trace_id)
    _set_slot(span, _OFF[1], span_id)
    _set_slot(span, _OFF[2], parent_span_id)
    _set_slot(span, _OFF[3], name)
    _set_slot(span, _OFF[4], start_ns)
    _set_slot(span, _OFF[5], end_ns)
    _set_slot(span, _OFF[6], error)
    _set_slot(span, _OFF[7], pairing_obj)
    _set_slot(span, _OFF[8], request_id)
    _set_slot(span, _OFF[9], attrs_json)
    _set_slot(span, _OFF[10], sample_rate)
    _set_slot(span, _OFF[11], operation)
    _set_slot(span, _OFF[12], mount)
    # Every slot holds an int, str, bytes or None, so a record can never be part of
    # a reference cycle: keep it out of the collector's lists. A full queue holds
    # hundreds of thousands of records that each collection would walk otherwise.
    PyObject_GC_UnTrack(<void *> span)
    return span


cdef inline object _text(const char *arena, size_t off, size_t n):
    if n == 0:
        return _EMPTY
    return PyUnicode_DecodeUTF8(arena + off, <Py_ssize_t> n, NULL)


# Operations and mounts are few and repeat from span to span: their str objects are
# kept in a small cache (one slot per hash of the bytes) and shared, which spares a
# SpanRecord two decodes. Only the GIL's holder reads or writes it.
cdef list _PARTS = [None] * 256
cdef size_t PART_MAX = 64  # longer ones are decoded each time


cdef object _part(const char *arena, size_t off, size_t n):
    """``_text`` for an operation or mount, shared through ``_PARTS`` when it fits."""
    cdef const char *p = arena + off
    cdef uint64_t h = 14695981039346656037ULL
    cdef size_t i
    cdef Py_ssize_t slot, cached_n
    cdef const char *cached_p
    if n == 0 or n > PART_MAX:
        return _text(arena, off, n)
    for i in range(n):
        h = (h ^ <unsigned char> p[i]) * 1099511628211ULL
    slot = <Py_ssize_t> (h & 255)
    cached = _PARTS[slot]
    if cached is not None:
        cached_p = PyUnicode_AsUTF8AndSize(cached, &cached_n)
        if <size_t> cached_n == n and memcmp(cached_p, p, n) == 0:
            return cached
    value = _text(arena, off, n)
    _PARTS[slot] = value
    return value


cdef object _record(SpanStore store, size_t i):
    """The SpanRecord of span ``i``."""
    cdef PackedSpan *sp = &store.spans[i]
    if sp.record >= 0:
        return store.records[sp.record]
    cdef const char *arena = store.arena
    start = PyLong_FromLongLong(sp.start_ns)
    end = start if sp.end_ns == sp.start_ns else PyLong_FromLongLong(sp.end_ns)
    return new_span(
        PyBytes_FromStringAndSize(<const char *> sp.trace_id, 16),
        PyLong_FromUnsignedLongLong(sp.span_id),
        _ZERO if sp.parent_id == 0 else PyLong_FromUnsignedLongLong(sp.parent_id),
        _text(arena, sp.name_off, sp.name_len),
        start,
        end,
        _text(arena, sp.error_off, sp.error_len),
        sp.pairing,
        _text(arena, sp.rid_off, sp.rid_len),
        PyBytes_FromStringAndSize(arena + sp.attrs_off, <Py_ssize_t> sp.attrs_len),
        _ONE if sp.sample_rate == 1 else PyLong_FromLongLong(sp.sample_rate),
        _part(arena, sp.name_off, sp.operation_len),
        _part(arena, sp.name_off + sp.name_len - sp.mount_len, sp.mount_len),
    )

# ---------------------------------------------------------------- the store

cdef object _getsizeof = sys.getsizeof
# A store's and a view's own objects, counted with the blocks they keep alive.
cdef size_t _OBJECT_BYTES = 0


cdef size_t _record_bytes(object record):
    """What a kept SpanRecord holds: the record and each value it alone refers to."""
    cdef size_t total = _getsizeof(record)
    for value in (record.trace_id, record.span_id, record.parent_span_id, record.name,
                  record.start_ns, record.end_ns, record.error, record.request_id,
                  record.attrs_json, record.sample_rate, record.operation, record.mount):
        total += _getsizeof(value)
    return total


cdef inline size_t _block_bytes(void *p, size_t asked) noexcept:
    """Bytes a malloc block takes: its usable size where the C library says it."""
    cdef size_t usable = vo_usable_size(p)
    return usable if usable > asked else asked


cdef size_t store_bytes(SpanStore store) noexcept:
    """The bytes a store keeps alive: both blocks as allocated, its kept records, its object."""
    return (_block_bytes(store.spans, store.cap * sizeof(PackedSpan))
            + _block_bytes(store.arena, store.room) + store.record_bytes + _OBJECT_BYTES)


cdef inline size_t _span_bytes(SpanStore store, size_t i) except? 0:
    """The bytes span ``i`` takes in a store of its own: its record and its strings."""
    cdef PackedSpan *sp = &store.spans[i]
    if sp.record >= 0:
        return sizeof(PackedSpan) + _record_bytes(store.records[sp.record])
    return sizeof(PackedSpan) + sp.attrs_len + sp.name_len + sp.error_len + sp.rid_len



cdef class SpanStore:
    """The spans of one drain, as the core writes them (append only)."""

    def __cinit__(self):
        self.records = []

    def __dealloc__(self):
        free(self.spans)
        free(self.arena)

    cdef PackedSpan *add(self) except NULL:
        """Room for one more span, which the caller fills (valid until the next add)."""
        cdef size_t cap
        cdef PackedSpan *spans
        if self.n == self.cap:
            cap = self.cap * 2 if self.cap else 64
            spans = <PackedSpan *> realloc(self.spans, cap * sizeof(PackedSpan))
            if spans == NULL:
                raise MemoryError()
            self.spans = spans
            self.cap = cap
        self.n += 1
        return &self.spans[self.n - 1]

    cdef int reserve_spans(self, size_t count) except -1:
        """Room for ``count`` more spans without growing."""
        cdef PackedSpan *spans
        if self.n + count > self.cap:
            spans = <PackedSpan *> realloc(self.spans, (self.n + count) * sizeof(PackedSpan))
            if spans == NULL:
                raise MemoryError()
            self.spans = spans
            self.cap = self.n + count
        return 0

    cdef int shrink(self) except -1:
        """Give back what the two blocks hold beyond their spans (the store is complete).

        A drain of a few spans would otherwise keep the room set aside for many while it
        waits in a queue: tens of KB for each socket read's worth of spans."""
        cdef PackedSpan *spans
        cdef char *arena
        if self.cap > self.n:
            if self.n == 0:
                free(self.spans)
                self.spans = NULL
                self.cap = 0
            else:
                spans = <PackedSpan *> realloc(self.spans, self.n * sizeof(PackedSpan))
                if spans != NULL:  # else the larger block stays, still valid
                    self.spans = spans
                    self.cap = self.n
        if self.room > self.used:
            if self.n == 0:
                free(self.arena)
                self.arena = NULL
                self.room = 0
            elif self.used:
                arena = <char *> realloc(self.arena, self.used)
                if arena != NULL:
                    self.arena = arena
                    self.room = self.used
        return 0

    cdef void clear(self) noexcept:
        """Empty, keeping both blocks for the next spans."""
        self.n = 0
        self.used = 0
        if self.records:
            self.records = []
            self.record_bytes = 0

    @property
    def nbytes(self) -> int:
        """The bytes this store keeps alive."""
        return store_bytes(self)

    cdef char *reserve(self, size_t extra) except NULL:
        """Room for ``extra`` more arena bytes at ``arena + used`` (the caller moves ``used``)."""
        cdef size_t room
        cdef char *arena
        if self.used + extra > self.room or self.arena == NULL:
            room = self.room * 2 if self.room else 16384
            if room < self.used + extra:
                room = self.used + extra
            arena = <char *> realloc(self.arena, room)
            if arena == NULL:
                raise MemoryError()
            self.arena = arena
            self.room = room
        return self.arena + self.used

    cdef int put(self, const char *p, size_t n, size_t *off, size_t *length) except -1:
        """Copy ``n`` bytes into the arena; their offset and length into ``off`` and ``length``."""
        cdef char *d = self.reserve(n)
        memcpy(d, p, n)
        off[0] = self.used
        length[0] = n
        self.used += n
        return 0

    cdef int add_record(self, object record) except -1:
        """A span kept whole, as its SpanRecord."""
        cdef PackedSpan *sp = self.add()
        sp.record = len(self.records)
        self.records.append(record)
        self.record_bytes += _record_bytes(record)
        return 0


cdef PackedSpans packed_view(SpanStore store, size_t lo, size_t hi):
    cdef PackedSpans view = PackedSpans.__new__(PackedSpans)
    cdef size_t i
    view.store = store
    view.lo = lo
    view.hi = hi
    view.plain = True
    if store.records:
        for i in range(lo, hi):
            if store.spans[i].record >= 0:
                view.plain = False
                break
    return view


cdef class PackedSpans:
    """A read-only run of a store's spans; a sequence of SpanRecord to Python."""

    def __len__(self):
        return self.hi - self.lo

    def __getitem__(self, index):
        cdef Py_ssize_t n = <Py_ssize_t> (self.hi - self.lo)
        cdef Py_ssize_t start, stop, step
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                return self.records()[index]
            if stop < start:
                stop = start
            return packed_view(self.store, self.lo + <size_t> start, self.lo + <size_t> stop)
        i = index.__index__()
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("PackedSpans index out of range")
        return _record(self.store, self.lo + <size_t> i)

    def __iter__(self):
        cdef size_t i
        for i in range(self.lo, self.hi):
            yield _record(self.store, i)

    def records(self):
        """The spans as a list of SpanRecord."""
        cdef size_t i
        return [_record(self.store, i) for i in range(self.lo, self.hi)]

    @property
    def nbytes(self) -> int:
        """The bytes this view keeps alive: its whole store's, whatever part it shows."""
        return store_bytes(self.store)

    @property
    def span_bytes(self) -> int:
        """The bytes this view's spans take in a store of their own (see ``compact``)."""
        cdef size_t i
        cdef size_t total = _OBJECT_BYTES
        for i in range(self.lo, self.hi):
            total += _span_bytes(self.store, i)
        return total

    def compact(self, size_t max_bytes=SIZE_MAX):
        """A copy of the leading spans whose ``span_bytes`` fit ``max_bytes`` (maybe none), in a
        store of its own sized to them, so that it no longer keeps this view's store alive."""
        return copy_spans(self.store, self.lo, self.hi, max_bytes)

    def __repr__(self):
        return f"<PackedSpans of {self.hi - self.lo} spans>"


cdef PackedSpans copy_spans(SpanStore src, size_t lo, size_t hi, size_t max_bytes):
    """The leading spans of ``src[lo:hi]`` whose bytes fit ``max_bytes``, copied into a
    store of their own with blocks of exactly their size."""
    cdef SpanStore dst = SpanStore.__new__(SpanStore)
    cdef size_t total = _OBJECT_BYTES
    cdef size_t arena = 0
    cdef size_t end = lo
    cdef size_t one, i
    cdef PackedSpan *sp
    cdef PackedSpan *out
    while end < hi:
        one = _span_bytes(src, end)
        if total + one > max_bytes:
            break
        total += one
        sp = &src.spans[end]
        if sp.record < 0:
            arena += sp.attrs_len + sp.name_len + sp.error_len + sp.rid_len
        end += 1
    if end == lo:
        return packed_view(dst, 0, 0)
    dst.reserve_spans(end - lo)
    dst.arena = <char *> malloc(arena if arena else 1)  # exactly what the copies take
    if dst.arena == NULL:
        raise MemoryError()
    dst.room = arena if arena else 1
    for i in range(lo, end):
        sp = &src.spans[i]
        if sp.record >= 0:
            dst.add_record(src.records[sp.record])
            continue
        out = dst.add()
        out[0] = sp[0]
        dst.put(src.arena + sp.attrs_off, sp.attrs_len, &out.attrs_off, &out.attrs_len)
        dst.put(src.arena + sp.name_off, sp.name_len, &out.name_off, &out.name_len)
        dst.put(src.arena + sp.error_off, sp.error_len, &out.error_off, &out.error_len)
        dst.put(src.arena + sp.rid_off, sp.rid_len, &out.rid_off, &out.rid_len)
    return packed_view(dst, 0, dst.n)


Sequence.register(PackedSpans)
_OBJECT_BYTES = SpanStore.__basicsize__ + PackedSpans.__basicsize__

# ---------------------------------------------------------------- the allocator

cdef extern from *:
    """
    #if defined(__GLIBC__)
    #include <malloc.h>
    static int vo_tune_malloc(int mmap_threshold, int trim_threshold) {
        return mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
            && mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1;
    }
    #else
    static int vo_tune_malloc(int mmap_threshold, int trim_threshold) {
        (void)mmap_threshold;
        (void)trim_threshold;
        return 0;
    }
    #endif
    """
    int vo_tune_malloc(int mmap_threshold, int trim_threshold) nogil


def tune_allocator() -> bool:
    """glibc only: serve blocks up to 32 MiB from the heap and keep up to 64 MiB of
    freed heap for reuse. Span stores and request bodies are blocks of a few MiB
    made and freed all the time; left to glibc's own threshold, which only grows
    with the largest block freed so far, many get a fresh mapping and pay a page
    fault per 4 KiB touched. False where this C library has no such setting."""
    return bool(vo_tune_malloc(32 << 20, 64 << 20))


def trim_allocator() -> bool:
    """glibc only: hand the freed memory inside the heap back to the system (malloc_trim).
    True if any was given back."""
    return bool(vo_trim())
