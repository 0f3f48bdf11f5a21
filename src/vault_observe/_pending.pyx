# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""The compiled core's pending requests (see _pending.pxd).

A request waits in an open-addressing table keyed by its trace id (linear probing,
backward-shift deletion), with its expiry order kept in a deadline-sorted list
(in-order arrivals, O(1)) plus a small heap for out-of-order ones, so the oldest
is found in O(1) and ``expire`` costs O(expired). Each request keeps its line, or
its attributes cut to ``attrs_cap``, in one malloc'd blob. The rules (what is kept,
what is cut, in which order requests leave) are those of ``_core_py.Core``; the
core (_fast.pyx) decides when a request is added, answered, expired or evicted.
"""

cimport cython
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcmp, memcpy, memmove, memset

from . import _core_py

# An empty table bigger than this many entries or slots gives its arrays back.
cdef size_t SMALL_TABLE = 4096
cdef const char *_HEXDIGITS = b"0123456789abcdef"

# PENDING_FIRST as C strings: (text, length, ends in ".*" and so is a prefix with its dot)
cdef list _FIRST_BYTES = [(n.removesuffix("*") if n.endswith(".*") else n).encode() for n in _core_py.PENDING_FIRST]
cdef size_t N_FIRST = len(_FIRST_BYTES)
cdef const char *_first_p[64]
cdef size_t _first_n[64]
cdef bint _first_prefix[64]
if N_FIRST > 64:
    raise ImportError("PENDING_FIRST is longer than the compiled core allows")
for _i, _name in enumerate(_core_py.PENDING_FIRST):
    _first_p[_i] = PyBytes_AS_STRING(_FIRST_BYTES[_i])
    _first_n[_i] = <size_t> PyBytes_GET_SIZE(_FIRST_BYTES[_i])
    _first_prefix[_i] = _name.endswith(".*")


cdef inline size_t _key_length(const char *p, size_t n) noexcept:
    """Length of the key that starts at ``p`` (after its opening quote)."""
    cdef size_t i = 0
    while i < n:
        if p[i] == 92:
            i += 2
            continue
        if p[i] == 34:
            return i
        i += 1
    return n


cdef void *_grown(void *array, size_t *cap, size_t item_size, size_t first) except NULL:
    """``array`` reallocated to twice its ``cap`` items (``first`` when it has none);
    ``cap`` updated."""
    cdef size_t n = cap[0] * 2 if cap[0] else first
    cdef void *q = realloc(array, n * item_size)
    if q == NULL:
        raise MemoryError()
    cap[0] = n
    return q


cdef inline int64_t _sat(i128 v) noexcept:
    if v > INT64_MAX:
        return INT64_MAX
    if v < INT64_MIN:
        return INT64_MIN
    return <int64_t> v


cdef inline size_t _home(uint64_t k0, uint64_t k1, size_t mask) noexcept:
    return <size_t> (mix64(k0 ^ (k1 * <uint64_t> 0xC2B2AE3D27D4EB4F)) & mask)


@cython.final
cdef class PendingTable:
    """The pending requests of one core; no Python API (the core calls its cdef methods)."""

    def __cinit__(self):
        self._head = NONE
        self._tail = NONE
        self._free = NONE
        self._ext_free = NONE
        self._nslots = 1024
        self._slots = <uint32_t *> malloc(self._nslots * sizeof(uint32_t))
        if self._slots == NULL:
            raise MemoryError()
        memset(self._slots, 0, self._nslots * sizeof(uint32_t))
        self.attrs_cap = _core_py.DEFAULT_PENDING_ATTRS_BYTES

    def __dealloc__(self):
        cdef uint32_t i
        if self.extras != NULL:
            for i in range(self._ext_used):
                self._clear_extra(i)
            free(self.extras)
        if self.entries != NULL:
            for i in range(self._ent_used):
                free(self.entries[i].attrs)  # NULL in free entries
        free(self.entries)
        free(self._slots)
        free(self._heap)
        free(self._runs)
        free(self._members)
        free(self.tbuf)
        free(self.popbuf)

    # ------------------------------------------------------------ requests

    cdef int add(self, uint64_t hi, uint64_t lo, bint canon, i128 start, i128 deadline,
                 uint32_t name_idx, object name, size_t op_len, size_t mount_len,
                 object request_id, object error, const Parent *par, char *blob,
                 bint trimmed) except -1:
        """A request of trace id (hi, lo), not pending (see find), keeping ``blob`` (see
        pack_attrs; the table owns it from here, freed should this fail). An uninterned
        ``name`` (``name_idx`` NONE) is kept with the lengths of its parts."""
        cdef Entry *e
        cdef Extra *x
        cdef uint32_t idx
        try:
            idx = self._alloc_entry()
        except MemoryError:
            free(blob)
            raise
        e = &self.entries[idx]
        e.k0 = hi
        e.k1 = lo
        self._seq += 1
        e.seq = self._seq
        self._mark_add(self._seq)
        e = &self.entries[idx]
        e.start = _sat(start)
        e.deadline = _sat(deadline)
        e.name = name_idx
        e.flags = F_CANON if canon else 0
        e.extra = 0
        e.attrs = blob
        if trimmed:
            e.flags |= F_TRIMMED
        if (not canon or error is not None or name_idx == NONE
                or e.start != start or e.deadline != deadline or par != NULL):
            e.extra = self._alloc_extra() + 1
            e = &self.entries[idx]
            x = &self.extras[e.extra - 1]
            if not canon:
                Py_INCREF(request_id)
                x.request_id = <PyObject *> request_id
            if error is not None:
                Py_INCREF(error)
                x.error = <PyObject *> error
            if name_idx == NONE:
                Py_INCREF(name)
                x.name = <PyObject *> name
                x.operation_len = op_len
                x.mount_len = mount_len
            if e.start != start or e.deadline != deadline:
                e.flags |= F_WIDE
                x.start = start
                x.deadline = deadline
            if par != NULL:
                x.has_parent = True
                x.parent = par[0]
        self._hash_insert(idx)
        self._order_insert(idx)
        self.count += 1
        return 0

    cdef void remove(self, uint32_t idx) noexcept:
        """A request leaves: answered, replaced, expired or evicted (its blob is freed
        unless the caller took it, setting ``attrs`` to NULL)."""
        self._detach(idx)
        self._release(idx)

    cdef object oldest_mark(self):
        """The smallest mark among the pending requests; None when none is."""
        cdef MarkRun *runs = self._runs
        while self._run_head < self._run_end and runs[self._run_head].live == 0:
            self._run_head += 1
        if self._run_head == self._run_end:
            return None
        if not self._runs_unsorted:
            return runs[self._run_head].mark
        self._compact_runs()
        cdef uint64_t low = runs[self._run_head].mark
        cdef size_t i
        for i in range(self._run_head + 1, self._run_end):
            if runs[i].mark < low:
                low = runs[i].mark
        return low

    # ------------------------------------------------------------ the table

    cdef i128 start_of(self, uint32_t idx) noexcept:
        cdef Entry *e = &self.entries[idx]
        if e.flags & F_WIDE:
            return self.extras[e.extra - 1].start
        return e.start

    cdef i128 deadline_of(self, uint32_t idx) noexcept:
        cdef Entry *e = &self.entries[idx]
        if e.flags & F_WIDE:
            return self.extras[e.extra - 1].deadline
        return e.deadline

    cdef bint _before(self, int64_t da, uint64_t sa, uint32_t ia,
                      int64_t db, uint64_t sb, uint32_t ib) noexcept:
        """(deadline, arrival) of a < that of b."""
        cdef i128 xa, xb
        if da != db:
            return da < db
        if da == INT64_MAX or da == INT64_MIN:
            xa = self.deadline_of(ia)
            xb = self.deadline_of(ib)
            if xa != xb:
                return xa < xb
        return sa < sb

    cdef uint32_t find(self, uint64_t hi, uint64_t lo, bint canon, const char *id,
                       size_t id_len) except? 0xFFFFFFFE:
        """The pending request of trace id (hi, lo) and id text ``id`` (compared only
        for a non-canonical id), or NONE."""
        cdef size_t mask = self._nslots - 1
        cdef size_t i = _home(hi, lo, mask)
        cdef uint32_t s
        cdef Entry *e
        cdef const char *t
        cdef Py_ssize_t tn
        while True:
            s = self._slots[i]
            if s == 0:
                return NONE
            e = &self.entries[s - 1]
            if e.k0 == hi and e.k1 == lo and ((e.flags & F_CANON) != 0) == canon:
                if canon:
                    return s - 1
                t = PyUnicode_AsUTF8AndSize(<object> self.extras[e.extra - 1].request_id, &tn)
                if <size_t> tn == id_len and memcmp(t, id, id_len) == 0:
                    return s - 1
            i = (i + 1) & mask

    cdef int _hash_insert(self, uint32_t idx) except -1:
        cdef size_t mask
        cdef size_t i
        if (<size_t> self.count + 1) * 2 > self._nslots:
            self._rehash(self._nslots * 2)
        mask = self._nslots - 1
        i = _home(self.entries[idx].k0, self.entries[idx].k1, mask)
        while self._slots[i] != 0:
            i = (i + 1) & mask
        self._slots[i] = idx + 1
        return 0

    cdef int _rehash(self, size_t nslots) except -1:
        cdef uint32_t *old = self._slots
        cdef size_t oldn = self._nslots
        cdef uint32_t *slots = <uint32_t *> malloc(nslots * sizeof(uint32_t))
        cdef size_t i, j, mask = nslots - 1
        cdef uint32_t s
        if slots == NULL:
            raise MemoryError()
        memset(slots, 0, nslots * sizeof(uint32_t))
        for i in range(oldn):
            s = old[i]
            if s:
                j = _home(self.entries[s - 1].k0, self.entries[s - 1].k1, mask)
                while slots[j] != 0:
                    j = (j + 1) & mask
                slots[j] = s
        self._slots = slots
        self._nslots = nslots
        free(old)
        return 0

    cdef void _hash_remove(self, uint32_t idx) noexcept:
        cdef size_t mask = self._nslots - 1
        cdef size_t i = _home(self.entries[idx].k0, self.entries[idx].k1, mask)
        cdef size_t j, k
        cdef uint32_t s
        while self._slots[i] != idx + 1:
            i = (i + 1) & mask
        # backward-shift deletion: no tombstones
        j = i
        while True:
            j = (j + 1) & mask
            s = self._slots[j]
            if s == 0:
                break
            k = _home(self.entries[s - 1].k0, self.entries[s - 1].k1, mask)
            if (j > i and (k <= i or k > j)) or (j < i and k <= i and k > j):
                self._slots[i] = s
                i = j
        self._slots[i] = 0

    cdef uint32_t _alloc_entry(self) except? 0xFFFFFFFE:
        cdef uint32_t idx
        if self._free != NONE:
            idx = self._free
            self._free = self.entries[idx].next
            return idx
        if self._ent_used == self._ent_cap:
            self.entries = <Entry *> _grown(self.entries, &self._ent_cap, sizeof(Entry), 256)
        idx = self._ent_used
        self._ent_used += 1
        return idx

    cdef uint32_t _alloc_extra(self) except? 0xFFFFFFFE:
        cdef uint32_t i
        if self._ext_free != NONE:
            i = self._ext_free
            self._ext_free = self.extras[i].next_free
        else:
            if self._ext_used == self._ext_cap:
                self.extras = <Extra *> _grown(self.extras, &self._ext_cap, sizeof(Extra), 64)
            i = self._ext_used
            self._ext_used += 1
        memset(&self.extras[i], 0, sizeof(Extra))
        return i

    cdef void _clear_extra(self, uint32_t i) noexcept:
        cdef Extra *x = &self.extras[i]
        Py_XDECREF(x.request_id)
        Py_XDECREF(x.error)
        Py_XDECREF(x.name)
        x.request_id = NULL
        x.error = NULL
        x.name = NULL

    cdef void _release(self, uint32_t idx) noexcept:
        """Free a detached entry and its extra."""
        cdef Entry *e = &self.entries[idx]
        cdef uint32_t x
        self._mark_remove(e.seq)
        free(e.attrs)
        e.attrs = NULL
        if e.extra:
            x = e.extra - 1
            e.extra = 0
            self._clear_extra(x)
            self.extras[x].next_free = self._ext_free
            self._ext_free = x
        e.next = self._free
        self._free = idx
        self.count -= 1
        if self.count == 0 and (self._ent_cap > SMALL_TABLE or self._nslots > SMALL_TABLE):
            self._shrink_table()

    cdef void _shrink_table(self) noexcept:
        """The table is empty: give back its arrays, which a burst may have grown."""
        cdef uint32_t *slots
        cdef uint32_t i
        for i in range(self._ext_used):
            self._clear_extra(i)  # all free already; NULLs
        free(self.extras)
        self.extras = NULL
        self._ext_cap = self._ext_used = 0
        self._ext_free = NONE
        free(self.entries)
        self.entries = NULL
        self._ent_cap = self._ent_used = 0
        self._free = NONE
        self._head = self._tail = NONE
        slots = <uint32_t *> malloc(1024 * sizeof(uint32_t))
        if slots != NULL:
            memset(slots, 0, 1024 * sizeof(uint32_t))
            free(self._slots)
            self._slots = slots
            self._nslots = 1024
        else:
            memset(self._slots, 0, self._nslots * sizeof(uint32_t))

    cdef void _detach(self, uint32_t idx) noexcept:
        """Take an entry out of the table and the expiry order."""
        self._hash_remove(idx)
        cdef Entry *e = &self.entries[idx]
        if e.flags & F_IN_HEAP:
            self._heap_remove(e.prev)
            e.flags &= ~F_IN_HEAP
            return
        if e.prev != NONE:
            self.entries[e.prev].next = e.next
        else:
            self._head = e.next
        if e.next != NONE:
            self.entries[e.next].prev = e.prev
        else:
            self._tail = e.prev

    cdef int _order_insert(self, uint32_t idx) except -1:
        cdef Entry *e = &self.entries[idx]
        cdef Entry *t
        if self._tail != NONE:
            t = &self.entries[self._tail]
            if self._before(e.deadline, e.seq, idx, t.deadline, t.seq, self._tail):
                return self._heap_push(idx)
        e.flags &= ~F_IN_HEAP
        e.prev = self._tail
        e.next = NONE
        if self._tail != NONE:
            self.entries[self._tail].next = idx
        else:
            self._head = idx
        self._tail = idx
        return 0

    cdef uint32_t oldest(self) noexcept:
        """The pending entry with the smallest (deadline, arrival), or NONE."""
        cdef uint32_t h = self._head
        cdef HeapItem *top
        cdef Entry *e
        if self._heap_n == 0:
            return h
        top = &self._heap[0]
        if h == NONE:
            return top.idx
        e = &self.entries[h]
        if self._before(top.deadline, top.seq, top.idx, e.deadline, e.seq, h):
            return top.idx
        return h


    # ------------------------------------------------------------ attributes

    cdef char *pack_attrs(self, const char *p, size_t n, bint raw, i128 time_ns, bint canon,
                          uint64_t hi, uint64_t lo) except NULL:
        """A waiting request's blob (see _pack_blob): its line (``raw``), else its
        attributes cut to the cap (``trimmed`` says whether)."""
        self.trimmed = not raw and n > self.attrs_cap
        if self.trimmed:
            n = self.trim(p, n)
            p = self.tbuf
        return _pack_blob(p, n, raw, time_ns, canon, hi, lo)

    cdef size_t trim(self, const char *p, size_t n) except? 0:
        """_core_py.trim_attrs of the flat JSON object ``p`` into ``tbuf``; its length."""
        cdef size_t i, r, k, m, start, klen, used, budget, cost
        cdef size_t *mem
        cdef char *d
        m = self._split_members(p, n)
        mem = self._members
        # rank: the place of the member's key in PENDING_FIRST, else N_FIRST
        for i in range(m):
            start = mem[3 * i]
            klen = _key_length(p + start + 1, mem[3 * i + 1] - 1)
            mem[3 * i + 2] = N_FIRST
            for r in range(N_FIRST):
                if _first_prefix[r]:
                    if klen > _first_n[r] and memcmp(p + start + 1, _first_p[r], _first_n[r]) == 0:
                        mem[3 * i + 2] = r
                        break
                elif klen == _first_n[r] and memcmp(p + start + 1, _first_p[r], klen) == 0:
                    mem[3 * i + 2] = r
                    break
        # choose by (rank, place): a chosen member's rank becomes N_FIRST + 1
        budget = self.attrs_cap - 1
        for r in range(N_FIRST + 1):
            for i in range(m):
                if mem[3 * i + 2] == r:
                    cost = mem[3 * i + 1] + 1
                    if cost <= budget:
                        budget -= cost
                        mem[3 * i + 2] = N_FIRST + 1
        used = self.attrs_cap - 1 - budget
        if not grow_to(&self.tbuf, &self._tbuf_cap, used + 2):
            raise MemoryError()
        d = self.tbuf
        d[0] = 123  # {
        k = 1
        for i in range(m):
            if mem[3 * i + 2] == N_FIRST + 1:
                memcpy(d + k, p + mem[3 * i], mem[3 * i + 1])
                k += mem[3 * i + 1]
                d[k] = 44  # ,
                k += 1
        if k == 1:
            d[1] = 125
            k = 2
        else:
            d[k - 1] = 125  # the last "," becomes "}"
        return k

    cdef size_t unpack_attrs(self, const char *blob, uint64_t hi, uint64_t lo, i128 start,
                             size_t padding, bint *is_line) except? 0:
        """The bytes a blob was packed from, into ``popbuf`` with ``padding`` spaces after
        them; their length. ``is_line``: they are the request's line, not its attributes."""
        cdef uint32_t n, id_at
        cdef uint8_t head = <uint8_t> blob[8]
        cdef size_t total, k = 0
        cdef const char *body = blob + BLOB_HEAD
        cdef char *d
        cdef char tbuf[32]
        cdef size_t tl = 0
        memcpy(&n, blob, 4)
        memcpy(&id_at, blob + 4, 4)
        is_line[0] = (head & BLOB_RAW) != 0
        head &= BLOB_DIGITS
        total = n
        if head:
            tl = _format_time(start, head - 1, tbuf)
            total += 9 + tl + 18
        if id_at:
            total += 36
        if not grow_to(&self.popbuf, &self._popbuf_cap, total + padding):
            raise MemoryError()
        d = self.popbuf
        if head:
            memcpy(d, b'{"time":"', 9)
            memcpy(d + 9, tbuf, tl)
            memcpy(d + 9 + tl, b'","type":"request"', 18)
            k = 9 + tl + 18
        if id_at:
            memcpy(d + k, body, id_at - 1)
            k += id_at - 1
            uuid_into(hi, lo, d + k)
            k += 36
            memcpy(d + k, body + id_at - 1, n - (id_at - 1))
            k += n - (id_at - 1)
        else:
            memcpy(d + k, body, n)
            k += n
        memset(d + k, 32, padding)
        return k

    cdef size_t _split_members(self, const char *p, size_t n) except? 0:
        """(start, length) of each ``"key":value`` of the flat JSON object ``p`` into
        _members (three slots each); their number."""
        cdef size_t i = 1, end = n - 1, start, m = 0
        cdef int depth
        cdef bint in_string
        cdef char c
        while i < end:
            start = i
            depth = 0
            in_string = False
            while i < end:
                c = p[i]
                if in_string:
                    if c == 92:  # backslash: the next byte is escaped
                        i += 1
                    elif c == 34:
                        in_string = False
                elif c == 34:
                    in_string = True
                elif c == 91 or c == 123:
                    depth += 1
                elif c == 93 or c == 125:
                    depth -= 1
                elif c == 44 and depth == 0:
                    break
                i += 1
            if 3 * (m + 1) > self._members_cap:
                self._members = <size_t *> _grown(self._members, &self._members_cap, sizeof(size_t), 3 * 64)
            self._members[3 * m] = start
            self._members[3 * m + 1] = i - start
            m += 1
            i += 1  # the comma
        return m

    # -- marks

    cdef int _mark_add(self, uint64_t seq) except -1:
        """The request of arrival ``seq`` was stored under the mark at hand."""
        cdef MarkRun *r
        if self._run_end > self._run_head:
            r = &self._runs[self._run_end - 1]
            if r.mark == self.mark:
                if r.live == 0:
                    self._runs_live += 1
                r.live += 1
                return 0
            if self.mark < r.mark:
                self._runs_unsorted = True
        if self._run_end == self._run_cap:
            if self._run_head:
                memmove(self._runs, self._runs + self._run_head,
                        (self._run_end - self._run_head) * sizeof(MarkRun))
                self._run_end -= self._run_head
                self._run_head = 0
            if self._run_end > 2 * self._runs_live + 16:
                self._compact_runs()
            if self._run_end == self._run_cap:
                self._runs = <MarkRun *> _grown(self._runs, &self._run_cap, sizeof(MarkRun), 16)
        r = &self._runs[self._run_end]
        r.first_seq = seq
        r.mark = self.mark
        r.live = 1
        self._run_end += 1
        self._runs_live += 1
        return 0

    cdef void _mark_remove(self, uint64_t seq) noexcept:
        """The request of arrival ``seq`` left the table."""
        cdef size_t lo = self._run_head, hi = self._run_end, mid
        cdef MarkRun *r
        while hi - lo > 1:  # the last run with first_seq <= seq
            mid = (lo + hi) >> 1
            if self._runs[mid].first_seq <= seq:
                lo = mid
            else:
                hi = mid
        r = &self._runs[lo]
        r.live -= 1
        if r.live == 0:
            self._runs_live -= 1
            if self._runs_live == 0:
                self._run_head = self._run_end = 0
                self._runs_unsorted = False

    cdef void _compact_runs(self) noexcept:
        """Drop the runs without live requests (none of their seqs can be asked for
        again); see whether the marks of the rest are in order."""
        cdef size_t i, out = 0
        cdef MarkRun *runs = self._runs
        self._runs_unsorted = False
        for i in range(self._run_head, self._run_end):
            if runs[i].live:
                if out and runs[i].mark < runs[out - 1].mark:
                    self._runs_unsorted = True
                runs[out] = runs[i]
                out += 1
        self._run_head = 0
        self._run_end = out

    # -- the heap of out-of-order entries (entry.prev = position)

    cdef bint _heap_less(self, size_t a, size_t b) noexcept:
        cdef HeapItem *x = &self._heap[a]
        cdef HeapItem *y = &self._heap[b]
        return self._before(x.deadline, x.seq, x.idx, y.deadline, y.seq, y.idx)

    cdef void _heap_swap(self, size_t a, size_t b) noexcept:
        cdef HeapItem t = self._heap[a]
        self._heap[a] = self._heap[b]
        self._heap[b] = t
        self.entries[self._heap[a].idx].prev = <uint32_t> a
        self.entries[self._heap[b].idx].prev = <uint32_t> b

    cdef void _sift_up(self, size_t i) noexcept:
        cdef size_t parent
        while i > 0:
            parent = (i - 1) >> 1
            if not self._heap_less(i, parent):
                break
            self._heap_swap(i, parent)
            i = parent

    cdef void _sift_down(self, size_t i) noexcept:
        cdef size_t left, right, best
        while True:
            left = 2 * i + 1
            if left >= self._heap_n:
                break
            best = left
            right = left + 1
            if right < self._heap_n and self._heap_less(right, left):
                best = right
            if not self._heap_less(best, i):
                break
            self._heap_swap(i, best)
            i = best

    cdef int _heap_push(self, uint32_t idx) except -1:
        cdef Entry *e = &self.entries[idx]
        if self._heap_n == self._heap_cap:
            self._heap = <HeapItem *> _grown(self._heap, &self._heap_cap, sizeof(HeapItem), 64)
        self._heap[self._heap_n].deadline = e.deadline
        self._heap[self._heap_n].seq = e.seq
        self._heap[self._heap_n].idx = idx
        e.prev = <uint32_t> self._heap_n
        e.next = NONE
        e.flags |= F_IN_HEAP
        self._heap_n += 1
        self._sift_up(self._heap_n - 1)
        return 0

    cdef void _heap_remove(self, size_t pos) noexcept:
        cdef size_t last = self._heap_n - 1
        if pos != last:
            self._heap_swap(pos, last)
        self._heap_n -= 1
        if pos < self._heap_n:
            self._sift_down(pos)
            self._sift_up(pos)
        if self._heap_n == 0 and self._heap_cap > 4096:
            free(self._heap)
            self._heap = NULL
            self._heap_cap = 0


# A waiting request's line or attributes: a malloc'd blob of a 9-byte head (uint32_t
# length of the body; uint32_t 1 + where the 36 characters of its canonical id go
# back into it, 0 for nowhere; uint8_t: BLOB_RAW for a line, and in BLOB_DIGITS 1 +
# the digits of the second's fraction when the body starts after '{"time":"<the
# request's time>","type":"request"', else 0), then the body. What the entry holds
# already (its time, its id) is left out of the body where writing it again gives
# the same bytes; unpack_attrs puts it back.
cdef size_t BLOB_HEAD = 9
cdef uint8_t BLOB_DIGITS = 0x0F
cdef uint8_t BLOB_RAW = 0x10


cdef char *_pack_blob(const char *p, size_t n, bint raw, i128 time_ns, bint canon, uint64_t hi,
                      uint64_t lo) except NULL:
    cdef char tbuf[32]
    cdef char idbuf[36]
    cdef size_t hl = 0, tl, q, id_at = 0, body_n
    cdef int digits = -1
    cdef const char *close
    cdef char *blob
    cdef char *d
    cdef uint32_t u32
    # the head: '{"time":"' T '","type":"request"' then "," or "}"
    if n > 9 + 20 + 18 and memcmp(p, b'{"time":"', 9) == 0:
        close = <const char *> memchr(p + 9, 34, n - 9)
        if close != NULL:
            tl = <size_t> (close - (p + 9))
            if tl == 20:
                digits = 0
            elif 22 <= tl <= 30:
                digits = <int> (tl - 21)
            if (digits >= 0 and 9 + tl + 18 < n
                    and _format_time(time_ns, digits, tbuf) == tl and memcmp(tbuf, p + 9, tl) == 0
                    and memcmp(p + 9 + tl, b'","type":"request"', 18) == 0
                    and (p[9 + tl + 18] == 44 or p[9 + tl + 18] == 125)):
                hl = 9 + tl + 18
            else:
                digits = -1
    # the id: its first place as a string's whole text
    if canon:
        uuid_into(hi, lo, idbuf)
        q = hl
        while q + 38 <= n:
            close = <const char *> memchr(p + q, 34, n - q)
            if close == NULL:
                break
            q = <size_t> (close - p)
            if q + 38 <= n and p[q + 37] == 34 and memcmp(p + q + 1, idbuf, 36) == 0:
                id_at = q + 1 - hl + 1
                break
            q += 1
    body_n = n - hl - (36 if id_at else 0)
    blob = <char *> malloc(BLOB_HEAD + body_n)
    if blob == NULL:
        raise MemoryError()
    u32 = <uint32_t> body_n
    memcpy(blob, &u32, 4)
    u32 = <uint32_t> id_at
    memcpy(blob + 4, &u32, 4)
    blob[8] = <char> ((digits + 1 if hl else 0) | (BLOB_RAW if raw else 0))
    d = blob + BLOB_HEAD
    if id_at:
        memcpy(d, p + hl, id_at - 1)
        memcpy(d + id_at - 1, p + hl + id_at - 1 + 36, n - hl - (id_at - 1) - 36)
    else:
        memcpy(d, p + hl, n - hl)
    return blob


cdef size_t _format_time(i128 ns, int digits, char *out) noexcept:
    """``YYYY-MM-DDTHH:MM:SS[.f{digits}]Z`` of Unix nanoseconds from 1970 to 9999 (the
    first ``digits`` digits of the fraction); 0 outside those years."""
    cdef int64_t secs, frac, days, sod, y, m, d, era, doe, yoe, doy, mp, v
    cdef int i
    if ns < 0 or ns >= (<i128> 253402300800) * 1000000000:
        return 0
    secs = <int64_t> (ns // 1000000000)
    frac = <int64_t> (ns % 1000000000)
    days = secs // 86400
    sod = secs % 86400
    # civil_from_days (H. Hinnant), days >= 0 here
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    _digits_into(out, y, 4)
    out[4] = 45
    _digits_into(out + 5, m, 2)
    out[7] = 45
    _digits_into(out + 8, d, 2)
    out[10] = 84
    _digits_into(out + 11, sod // 3600, 2)
    out[13] = 58
    _digits_into(out + 14, (sod // 60) % 60, 2)
    out[16] = 58
    _digits_into(out + 17, sod % 60, 2)
    if digits == 0:
        out[19] = 90
        return 20
    out[19] = 46
    v = frac
    for i in range(9 - digits):
        v //= 10
    _digits_into(out + 20, v, digits)
    out[20 + digits] = 90
    return <size_t> (21 + digits)


cdef void _digits_into(char *out, int64_t v, int width) noexcept:
    cdef int i
    for i in range(width - 1, -1, -1):
        out[i] = <char> (48 + v % 10)
        v //= 10


cdef void uuid_into(uint64_t hi, uint64_t lo, char *d) noexcept:
    """The canonical text of a UUID's 16 bytes, 36 characters at ``d``."""
    cdef int i, pos = 0
    cdef uint64_t w
    for i in range(32):
        if i == 8 or i == 12 or i == 16 or i == 20:
            d[pos] = 45
            pos += 1
        w = hi if i < 16 else lo
        d[pos] = _HEXDIGITS[(w >> (60 - 4 * (i & 15))) & 15]
        pos += 1

