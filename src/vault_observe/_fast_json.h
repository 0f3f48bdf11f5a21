// C++ side of the compiled core: walk a simdjson DOM document, check its envelope
// and write the canonical flattened attribute bytes (see _core_py.dump_attrs).
//
// Everything here runs with the GIL held (floats are formatted by CPython itself,
// so their text is Python's repr byte for byte).
#ifndef VAULT_OBSERVE_FAST_JSON_H
#define VAULT_OBSERVE_FAST_JSON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "simdjson.h"
#include "_pending_entry.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

namespace vo {

using simdjson::dom::array;
using simdjson::dom::element;
using simdjson::dom::element_type;
using simdjson::dom::object;

// ------------------------------------------------------------------ output buffer

struct Buf {
    char *p = nullptr;
    size_t n = 0;
    size_t cap = 0;

    Buf() { grow(4096); }
    ~Buf() { std::free(p); }
    Buf(const Buf &) = delete;
    Buf &operator=(const Buf &) = delete;

    void grow(size_t need) {
        size_t c = cap ? cap : 4096;
        while (c < need) c *= 2;
        char *q = static_cast<char *>(std::realloc(p, c));
        if (!q) throw std::bad_alloc();
        p = q;
        cap = c;
    }
    inline void reserve(size_t extra) {
        if (n + extra > cap) grow(n + extra);
    }
    // The caller has reserved room.
    inline void put(char c) { p[n++] = c; }
    inline void put(const char *s, size_t len) {
        std::memcpy(p + n, s, len);
        n += len;
    }
    inline void append(const char *s, size_t len) {
        reserve(len);
        put(s, len);
    }
    inline void append(char c) {
        reserve(1);
        put(c);
    }
    // Keep big one-off lines from pinning their memory.
    void shrink(size_t keep) {
        if (cap > keep) {
            char *q = static_cast<char *>(std::realloc(p, keep));
            if (q) {
                p = q;
                cap = keep;
            }
        }
        n = 0;
    }
};

// ------------------------------------------------------------------ escaping

// 1: must be escaped in JSON output ('"', '\\', control characters).
static const uint8_t kEscape[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
};

static inline uint64_t load64(const char *s) {
    uint64_t w;
    std::memcpy(&w, s, 8);
    return w;
}

static inline uint32_t load32(const char *s) {
    uint32_t w;
    std::memcpy(&w, s, 4);
    return w;
}

// The bytes of a 1..7-byte string in one word, some repeated, the rest `fill`;
// reads nothing outside the string.
static inline uint64_t load_short(const char *s, size_t len, uint64_t fill) {
    if (len >= 4) return static_cast<uint64_t>(load32(s)) | (static_cast<uint64_t>(load32(s + len - 4)) << 32);
    uint64_t b = static_cast<unsigned char>(s[0]) | (static_cast<uint64_t>(static_cast<unsigned char>(s[len >> 1])) << 8) |
                 (static_cast<uint64_t>(static_cast<unsigned char>(s[len - 1])) << 16);
    return b | (fill & ~0xFFFFFFULL);
}

static inline uint64_t has_zero_byte(uint64_t x) {
    return (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;
}

static inline bool word_needs_escape(uint64_t x) {
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    uint64_t ctrl = (x - ones * 0x20) & ~x & high;  // some byte < 0x20
    uint64_t q = x ^ (ones * '"');
    uint64_t b = x ^ (ones * '\\');
    uint64_t quote = (q - ones) & ~q & high;
    uint64_t bslash = (b - ones) & ~b & high;
    return (ctrl | quote | bslash) != 0;
}

static inline void put_escaped_char(Buf &out, unsigned char c) {
    static const char hex[] = "0123456789abcdef";
    switch (c) {
        case '"': out.put("\\\"", 2); break;
        case '\\': out.put("\\\\", 2); break;
        case '\n': out.put("\\n", 2); break;
        case '\r': out.put("\\r", 2); break;
        case '\t': out.put("\\t", 2); break;
        case '\b': out.put("\\b", 2); break;
        case '\f': out.put("\\f", 2); break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            out.put(u, 6);
        }
    }
}

// json.dumps(s, ensure_ascii=False) without the quotes.
static inline void put_escaped(Buf &out, const char *s, size_t len) {
    out.reserve(len * 6 + 8);
    size_t i = 0, run = 0;
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
    const __m128i sign = _mm_set1_epi8(static_cast<char>(0x80));
    while (i + 16 <= len) {
        __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i *>(s + i));
        // unsigned v < 0x20 as a signed compare of both sides shifted by 0x80
        __m128i ctrl = _mm_cmplt_epi8(_mm_xor_si128(v, sign), _mm_xor_si128(space, sign));
        __m128i hit = _mm_or_si128(ctrl, _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)));
        int mask = _mm_movemask_epi8(hit);
        if (!mask) {
            i += 16;
            continue;
        }
        size_t j = i + static_cast<size_t>(__builtin_ctz(static_cast<unsigned>(mask)));
        out.put(s + run, j - run);
        put_escaped_char(out, static_cast<unsigned char>(s[j]));
        run = j + 1;
        i = j + 1;
    }
#endif
    // A word at a time where 8 bytes are left, skipping plain words; byte by byte
    // through a word that needs escaping and through the tail.
    while (i < len) {
        size_t end = len;
        if (i + 8 <= len) {
            uint64_t w;
            std::memcpy(&w, s + i, 8);
            if (!word_needs_escape(w)) {
                i += 8;
                continue;
            }
            end = i + 8;
        }
        for (; i < end; i++) {
            unsigned char c = static_cast<unsigned char>(s[i]);
            if (kEscape[c]) {
                out.put(s + run, i - run);
                put_escaped_char(out, c);
                run = i + 1;
            }
        }
    }
    out.put(s + run, len - run);
}

static inline void put_string(Buf &out, const char *s, size_t len) {
    out.reserve(len * 6 + 8);
    out.put('"');
    put_escaped(out, s, len);
    out.put('"');
}

static inline void put_u64(Buf &out, uint64_t v) {
    char tmp[24];
    char *e = tmp + sizeof tmp, *q = e;
    do {
        *--q = static_cast<char>('0' + v % 10);
        v /= 10;
    } while (v);
    out.append(q, static_cast<size_t>(e - q));
}

static inline void put_i64(Buf &out, int64_t v) {
    if (v < 0) {
        out.append('-');
        put_u64(out, static_cast<uint64_t>(0) - static_cast<uint64_t>(v));
    } else {
        put_u64(out, static_cast<uint64_t>(v));
    }
}

// float.__repr__, which is what json.dumps writes for a float.
static inline int put_double(Buf &out, double d) {
    char *s = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, nullptr);
    if (!s) return -1;
    out.append(s, std::strlen(s));
    PyMem_Free(s);
    return 0;
}

// ------------------------------------------------------------------ hashing

// mix64: _pending_entry.h

// A function of the bytes only (the words overlap at the end); no reads outside.
static inline uint64_t hash_bytes(const char *s, size_t len) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (len * 0xC2B2AE3D27D4EB4FULL);
    if (len < 8) {
        if (len == 0) return h;
        return (h ^ load_short(s, len, 0)) * 0x9FB21C651E98DF25ULL;
    }
    size_t i = 0;
    for (; i + 8 < len; i += 8) {
        h = (h ^ load64(s + i)) * 0x9FB21C651E98DF25ULL;
        h ^= h >> 29;
    }
    return (h ^ load64(s + len - 8)) * 0x9FB21C651E98DF25ULL;
}

// Hash of a flattened name `parent + "." + key`, computed from the pieces between
// dots, so that {"a.b": 1} and {"a": {"b": 1}} give the same value.
static inline uint64_t fold_piece(uint64_t parent, const char *s, size_t len) {
    return mix64(parent * 0x9E3779B97F4A7C15ULL + hash_bytes(s, len));
}

static inline uint64_t fold_key(uint64_t parent, const char *s, size_t len, bool has_dot) {
    if (!has_dot) return fold_piece(parent, s, len);
    const char *end = s + len;
    for (;;) {
        const char *dot = static_cast<const char *>(std::memchr(s, '.', static_cast<size_t>(end - s)));
        if (!dot) return fold_piece(parent, s, static_cast<size_t>(end - s));
        parent = fold_piece(parent, s, static_cast<size_t>(dot - s));
        s = dot + 1;
    }
}

// Per-document set of name hashes: finds duplicate keys, which orjson resolves as
// Python dicts do (last value, first position) and the fast path leaves to it.
struct SeenSet {
    struct Slot {
        uint64_t h;
        uint32_t gen;
    };
    std::vector<Slot> slots;
    uint32_t cur = 1;
    size_t count = 0;
    size_t mask = 0;

    SeenSet() { resize(1024); }
    void resize(size_t n) {
        slots.assign(n, Slot{0, 0});
        mask = n - 1;
        cur = 1;
        count = 0;
    }
    void clear() {
        if (slots.size() > 65536) {
            resize(1024);
            return;
        }
        count = 0;
        if (++cur == 0) {
            for (Slot &s : slots) s.gen = 0;
            cur = 1;
        }
    }
    // False when the hash was already present.
    inline bool insert(uint64_t x) {
        if ((count + 1) * 2 > slots.size()) rehash();
        size_t i = static_cast<size_t>(x) & mask;
        while (slots[i].gen == cur) {
            if (slots[i].h == x) return false;
            i = (i + 1) & mask;
        }
        slots[i].gen = cur;
        slots[i].h = x;
        count++;
        return true;
    }
    void rehash() {
        std::vector<uint64_t> old;
        old.reserve(count);
        for (const Slot &s : slots)
            if (s.gen == cur) old.push_back(s.h);
        resize(slots.size() * 2);
        for (uint64_t x : old) insert(x);
    }
};

// ------------------------------------------------------------------ envelope

enum Status { OK = 0, INVALID = 1, FALLBACK = 2, ERROR = 3 };

// What the core reads from an entry; `has_*` false means absent or null.
struct Envelope {
    const char *type = nullptr, *time = nullptr, *id = nullptr, *error = nullptr;
    size_t type_len = 0, time_len = 0, id_len = 0, error_len = 0;
    bool has_id = false, has_error = false;
    // The two parts of the span name; nullptr when absent, not a string or empty.
    const char *operation = nullptr, *target = nullptr;
    size_t operation_len = 0, target_len = 0;
    bool target_is_mount = false;  // the target is request.mount_point, not request.path
    bool is_probe = false;
    // A valid W3C traceparent in request.headers (read only when asked for).
    bool has_parent = false;
    uint64_t parent_hi = 0, parent_lo = 0, parent_span = 0;
};

static inline int hex_lower(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static inline bool hex_word(const char *s, size_t digits, uint64_t &out) {
    uint64_t v = 0;
    for (size_t i = 0; i < digits; i++) {
        int d = hex_lower(s[i]);
        if (d < 0) return false;
        v = (v << 4) | static_cast<uint64_t>(d);
    }
    out = v;
    return true;
}

// _core_py.parse_traceparent on a string's UTF-8 bytes: version-trace-parent-flags,
// lower-case hex of 2-32-16-2 digits; more '-' parts only after a version other
// than 00; version ff, an all-zero trace id or an all-zero parent are invalid.
static inline bool parse_traceparent(const char *s, size_t n, uint64_t &hi, uint64_t &lo, uint64_t &span) {
    if (n < 55 || s[2] != '-' || s[35] != '-' || s[52] != '-') return false;
    if (n > 55 && s[55] != '-') return false;
    uint64_t version, flags;
    if (!hex_word(s, 2, version) || !hex_word(s + 53, 2, flags)) return false;
    if (version == 0xff || (version == 0 && n != 55)) return false;
    if (!hex_word(s + 3, 16, hi) || !hex_word(s + 19, 16, lo) || !hex_word(s + 36, 16, span)) return false;
    return (hi | lo) != 0 && span != 0;
}

static inline bool key_is(const object::iterator &it, const char *lit, uint32_t len) {
    return it.key_length() == len && std::memcmp(it.key_c_str(), lit, len) == 0;
}

// Keeps the value at `it` in `value`; false when `seen` says the object already had
// that key (a repeated key the checks read: the line goes to the fallback). Always
// inlined: left to itself, GCC then stops inlining the key comparisons around it,
// which costs read_envelope about 8% more instructions.
static inline __attribute__((always_inline)) bool take_once(const object::iterator &it, bool &seen, element &value) {
    if (seen) return false;
    seen = true;
    value = it.value();
    return true;
}

static inline bool str_of(element e, const char **p, size_t *n) {
    std::string_view v;
    if (e.get_string().get(v)) return false;
    *p = v.data();
    *n = v.size();
    return true;
}

// Mirrors the checks of _core_py.Core._line; FALLBACK when a key that the checks
// read appears twice in its object.
static inline int read_envelope(element root, Envelope &env, bool trace_context) {
    object top;
    if (root.get_object().get(top)) return INVALID;
    element e_type, e_time, e_request, e_error;
    bool s_type = false, s_time = false, s_request = false, s_error = false;
    for (object::iterator it = top.begin(), end = top.end(); it != end; ++it) {
        switch (it.key_length()) {
            case 4:
                if (key_is(it, "type", 4)) {
                    if (!take_once(it, s_type, e_type)) return FALLBACK;
                } else if (key_is(it, "time", 4)) {
                    if (!take_once(it, s_time, e_time)) return FALLBACK;
                }
                break;
            case 5:
                if (key_is(it, "error", 5) && !take_once(it, s_error, e_error)) return FALLBACK;
                break;
            case 7:
                if (key_is(it, "request", 7) && !take_once(it, s_request, e_request)) return FALLBACK;
                break;
        }
    }
    if (!s_type || !str_of(e_type, &env.type, &env.type_len)) return INVALID;
    if (!s_time || !str_of(e_time, &env.time, &env.time_len)) return INVALID;
    element e_id, e_path, e_op, e_mount, e_headers;
    bool s_id = false, s_path = false, s_op = false, s_mount = false, s_headers = false;
    if (s_request && !e_request.is_null()) {
        object req;
        if (e_request.get_object().get(req)) return INVALID;
        for (object::iterator it = req.begin(), end = req.end(); it != end; ++it) {
            switch (it.key_length()) {
                case 2:
                    if (key_is(it, "id", 2) && !take_once(it, s_id, e_id)) return FALLBACK;
                    break;
                case 4:
                    if (key_is(it, "path", 4) && !take_once(it, s_path, e_path)) return FALLBACK;
                    break;
                case 7:
                    if (key_is(it, "headers", 7) && !take_once(it, s_headers, e_headers)) return FALLBACK;
                    break;
                case 9:
                    if (key_is(it, "operation", 9) && !take_once(it, s_op, e_op)) return FALLBACK;
                    break;
                case 11:
                    if (key_is(it, "mount_point", 11) && !take_once(it, s_mount, e_mount)) return FALLBACK;
                    break;
            }
        }
    }
    env.has_id = false;
    if (s_id && !e_id.is_null()) {
        if (!str_of(e_id, &env.id, &env.id_len)) return INVALID;
        env.has_id = true;
    }
    env.has_error = false;
    if (s_error && !e_error.is_null()) {
        if (!str_of(e_error, &env.error, &env.error_len)) return INVALID;
        env.has_error = true;
    }
    const char *p;
    size_t n;
    env.operation = nullptr;
    env.target = nullptr;
    env.target_is_mount = false;
    env.is_probe = false;
    if (s_op && str_of(e_op, &p, &n) && n) {
        env.operation = p;
        env.operation_len = n;
    }
    bool have_path = s_path && str_of(e_path, &p, &n);
    if (have_path && n == 14 && std::memcmp(p, "sys/audit/test", 14) == 0) env.is_probe = true;
    const char *mp;
    size_t mn;
    if (s_mount && str_of(e_mount, &mp, &mn) && mn) {
        env.target = mp;
        env.target_len = mn;
        env.target_is_mount = true;
    } else if (have_path && n) {
        env.target = p;
        env.target_len = n;
    }
    env.has_parent = false;
    object headers;
    if (trace_context && s_headers && !e_headers.get_object().get(headers)) {
        element e_tp;
        bool s_tp = false;
        for (object::iterator it = headers.begin(), end = headers.end(); it != end; ++it) {
            if (key_is(it, "traceparent", 11) && !take_once(it, s_tp, e_tp)) return FALLBACK;
        }
        if (s_tp) {
            array values;
            if (!e_tp.get_array().get(values)) {
                // Vault audits header values as arrays: the first one counts
                if (values.begin() != values.end()) {
                    e_tp = *values.begin();
                } else {
                    s_tp = false;
                }
            }
            if (s_tp && str_of(e_tp, &p, &n))
                env.has_parent = parse_traceparent(p, n, env.parent_hi, env.parent_lo, env.parent_span);
        }
    }
    return OK;
}

// ------------------------------------------------------------------ flatten

// Finds a key repeated within one object, which orjson resolves as a Python dict
// does (last value, first position): the fast path then leaves the line to it.
// Small objects compare cheap signatures pairwise; big ones hash their keys.
class KeyCheck {
   public:
    SeenSet seen;
    uint64_t objects = 0;

    KeyCheck() { grow(256); }
    ~KeyCheck() {
        std::free(sigs_);
        std::free(ptrs_);
        std::free(lens_);
    }
    KeyCheck(const KeyCheck &) = delete;
    KeyCheck &operator=(const KeyCheck &) = delete;

    void reset() {
        n_ = 0;
        seen.clear();
    }
    // Scope of one object: where its keys start, or a seed for a hashed object.
    struct Scope {
        size_t begin;
        uint64_t seed;  // 0: pairwise
    };
    inline Scope open(size_t nkeys) {
        Scope s{n_, 0};
        if (nkeys > 32) s.seed = mix64(++objects ^ 0x5851F42D4C957F2DULL) | 1;
        return s;
    }
    inline void close(const Scope &s) { n_ = s.begin; }
    // False when the key is already in the object.
    inline bool add(const Scope &s, const char *p, size_t len, uint64_t sig) {
        if (s.seed) return seen.insert(fold_piece(s.seed, p, len));
        for (size_t i = s.begin; i < n_; i++) {
            if (sigs_[i] == sig && lens_[i] == len && std::memcmp(ptrs_[i], p, len) == 0) return false;
        }
        if (n_ == cap_) grow(cap_ * 2);
        sigs_[n_] = sig;
        ptrs_[n_] = p;
        lens_[n_] = len;
        n_++;
        return true;
    }

   private:
    void grow(size_t cap) {
        uint64_t *a = static_cast<uint64_t *>(std::realloc(sigs_, cap * sizeof(uint64_t)));
        if (a) sigs_ = a;
        const char **b = static_cast<const char **>(std::realloc(ptrs_, cap * sizeof(const char *)));
        if (b) ptrs_ = b;
        size_t *c = static_cast<size_t *>(std::realloc(lens_, cap * sizeof(size_t)));
        if (c) lens_ = c;
        if (!a || !b || !c) throw std::bad_alloc();
        cap_ = cap;
    }
    uint64_t *sigs_ = nullptr;
    const char **ptrs_ = nullptr;
    size_t *lens_ = nullptr;
    size_t n_ = 0, cap_ = 0;
};

// One scan of a key: its signature, whether it holds a '.', whether it needs escaping.
struct KeyInfo {
    uint64_t sig;
    bool has_dot;
    bool needs_escape;
};

static inline KeyInfo scan_key(const char *s, size_t len) {
    const uint64_t ones = 0x0101010101010101ULL;
    KeyInfo ki{len * 0x9E3779B97F4A7C15ULL, false, false};
    if (len == 0) return ki;
    uint64_t dot = 0;
    bool esc = false;
    uint64_t first, last;
    if (len < 8) {
        first = last = load_short(s, len, ones * 'a');
    } else {
        first = load64(s);
        last = load64(s + len - 8);
        for (size_t i = 8; i + 8 < len; i += 8) {
            uint64_t w = load64(s + i);
            dot |= has_zero_byte(w ^ (ones * '.'));
            esc |= word_needs_escape(w);
        }
    }
    dot |= has_zero_byte(first ^ (ones * '.')) | has_zero_byte(last ^ (ones * '.'));
    esc |= word_needs_escape(first) || word_needs_escape(last);
    ki.sig ^= first ^ ((last << 29) | (last >> 35));
    ki.has_dot = dot != 0;
    ki.needs_escape = esc;
    return ki;
}

// Decisions of an include/exclude filter (a Python callable str -> bool) per
// flattened name, keyed by the name as written (JSON-escaped, which is one-to-one).
class KeyCache {
   public:
    explicit KeyCache(PyObject *keep) : keep_(keep) {
        Py_INCREF(keep_);
        resize(1024);
    }
    ~KeyCache() { Py_XDECREF(keep_); }
    KeyCache(const KeyCache &) = delete;
    KeyCache &operator=(const KeyCache &) = delete;

    static const size_t LIMIT = 65536;

    // 1 keep, 0 drop, -1 error (a Python exception is set).
    inline int keep(const char *s, size_t len) {
        uint64_t hv = hash_bytes(s, len);
        size_t i = static_cast<size_t>(hv) & mask_;
        while (slots_[i]) {
            uint32_t idx = slots_[i] - 1;
            if (hashes_[idx] == hv && keys_[idx].size() == len && std::memcmp(keys_[idx].data(), s, len) == 0)
                return vals_[idx];
            i = (i + 1) & mask_;
        }
        int v = ask(s, len);
        if (v < 0) return v;
        if (keys_.size() >= LIMIT) {
            keys_.clear();
            hashes_.clear();
            vals_.clear();
            resize(1024);
            i = static_cast<size_t>(hv) & mask_;
            while (slots_[i]) i = (i + 1) & mask_;
        }
        uint32_t idx = static_cast<uint32_t>(keys_.size());
        keys_.emplace_back(s, len);
        hashes_.push_back(hv);
        vals_.push_back(static_cast<char>(v));
        slots_[i] = idx + 1;
        if (keys_.size() * 2 > slots_.size()) resize(slots_.size() * 2);
        return v;
    }

   private:
    // Undo put_escaped and ask the filter.
    int ask(const char *s, size_t len) {
        std::string raw;
        raw.reserve(len);
        for (size_t i = 0; i < len; i++) {
            char c = s[i];
            if (c != '\\' || i + 1 >= len) {
                raw.push_back(c);
                continue;
            }
            char e = s[++i];
            switch (e) {
                case 'n': raw.push_back('\n'); break;
                case 'r': raw.push_back('\r'); break;
                case 't': raw.push_back('\t'); break;
                case 'b': raw.push_back('\b'); break;
                case 'f': raw.push_back('\f'); break;
                case 'u':  // only \u00XX is written
                    if (i + 4 < len) {
                        uint64_t v = 0;
                        hex_word(s + i + 1, 4, v);
                        raw.push_back(static_cast<char>(v));
                        i += 4;
                    }
                    break;
                default: raw.push_back(e);  // '"' or '\\'
            }
        }
        PyObject *key = PyUnicode_DecodeUTF8(raw.data(), static_cast<Py_ssize_t>(raw.size()), "surrogatepass");
        if (!key) return -1;
        PyObject *r = PyObject_CallOneArg(keep_, key);
        Py_DECREF(key);
        if (!r) return -1;
        int v = PyObject_IsTrue(r);
        Py_DECREF(r);
        return v;
    }
    void resize(size_t n) {
        slots_.assign(n, 0);
        mask_ = n - 1;
        for (uint32_t idx = 0; idx < keys_.size(); idx++) {
            size_t i = static_cast<size_t>(hashes_[idx]) & mask_;
            while (slots_[i]) i = (i + 1) & mask_;
            slots_[i] = idx + 1;
        }
    }
    PyObject *keep_;
    size_t mask_ = 0;
    std::vector<uint32_t> slots_;
    std::vector<std::string> keys_;
    std::vector<uint64_t> hashes_;
    std::vector<char> vals_;
};

struct Frame {
    bool is_array;
    object::iterator oit, oend;
    array::iterator ait, aend;
    size_t index;       // next array index
    size_t prefix_len;  // length of the prefix to restore when done
    uint64_t h;         // dotted pass: hash of the container's own name
    KeyCheck::Scope scope;
};

struct EncFrame {
    bool is_array;
    bool first;
    object::iterator oit, oend;
    array::iterator ait, aend;
    KeyCheck::Scope scope;
};

class Flattener {
   public:
    Buf out;  // canonical attrs JSON of the last flatten()
    Buf prefix;
    KeyCache *filter = nullptr;  // include/exclude on flattened names; not owned
    // Set while flattening without the GIL: a float (written by CPython's repr,
    // which allocates with the GIL held) then gives ERROR, and the caller redoes
    // the line with the GIL.
    bool gil_free = false;
    // Names of the last flatten() dropped as reserved (see reserved_name).
    size_t reserved = 0;
    KeyCheck check;
    std::vector<Frame> stack;
    std::vector<EncFrame> enc;

    Flattener() {
        stack.reserve(1100);
        enc.reserve(1100);
    }

    // {"flat.key":value,...} in `out`: OK, FALLBACK when two keys give one name
    // (orjson's dict semantics decide), ERROR with a Python exception set.
    int flatten(element root, bool flatten_arrays) {
        // two instances: no cost of filtering when there is no filter
        if (filter) {
            int r = pass<true>(root, flatten_arrays, false);
            if (r == RETRY) r = pass<true>(root, flatten_arrays, true);
            return r;
        }
        int r = pass<false>(root, flatten_arrays, false);
        if (r == RETRY) r = pass<false>(root, flatten_arrays, true);
        return r;
    }

   private:
    static constexpr int RETRY = 100;

    // A name can come out twice only from a key repeated in an object or from a
    // key with a dot ({"a.b":1,"a":{"b":2}}). The first pass checks each object's
    // keys and gives up at the first dot; the dotted pass hashes every full name
    // piece by piece, so equal names give equal hashes whatever their nesting.
    template <bool Filtered>
    int pass(element root, bool flatten_arrays, bool dotted) {
        out.n = 0;
        prefix.n = 0;
        reserved = 0;
        check.reset();
        stack.clear();
        object top;
        if (root.get_object().get(top)) return INVALID;
        out.append('{');
        bool first = true;
        Frame f0{};
        f0.is_array = false;
        f0.oit = top.begin();
        f0.oend = top.end();
        f0.prefix_len = 0;
        f0.h = 0x243F6A8885A308D3ULL;
        f0.scope = check.open(dotted ? 0 : top.size());
        stack.push_back(f0);
        char numbuf[24];
        while (!stack.empty()) {
            Frame &f = stack.back();
            const char *key;
            size_t key_len;
            element value;
            KeyInfo ki;
            if (f.is_array) {
                if (!(f.ait != f.aend)) {
                    prefix.n = f.prefix_len;
                    stack.pop_back();
                    continue;
                }
                value = *f.ait;
                ++f.ait;
                char *e = numbuf + sizeof numbuf, *q = e;
                size_t v = f.index++;
                do {
                    *--q = static_cast<char>('0' + v % 10);
                    v /= 10;
                } while (v);
                key = q;
                key_len = static_cast<size_t>(e - q);
                ki = KeyInfo{0, false, false};
            } else {
                if (!(f.oit != f.oend)) {
                    prefix.n = f.prefix_len;
                    if (!dotted) check.close(f.scope);
                    stack.pop_back();
                    continue;
                }
                key = f.oit.key_c_str();
                key_len = f.oit.key_length();
                value = f.oit.value();
                ++f.oit;
                ki = scan_key(key, key_len);
                if (!dotted) {
                    if (ki.has_dot) return RETRY;
                    if (!check.add(f.scope, key, key_len, ki.sig)) return FALLBACK;
                }
            }
            uint64_t h = 0;
            if (dotted) {
                h = fold_key(f.h, key, key_len, ki.has_dot);
                if (!check.seen.insert(h)) return FALLBACK;
            }
            element_type t = value.type();
            if (t == element_type::NULL_VALUE) continue;
            if (t == element_type::OBJECT || t == element_type::ARRAY) {
                Frame nf{};
                if (t == element_type::ARRAY) {
                    array a = value.get_array().value_unsafe();
                    if (!(a.begin() != a.end())) continue;
                    if (!flatten_arrays) {
                        size_t mark = out.n;
                        put_name(first, key, key_len, ki.needs_escape);
                        if (reserved_name(mark, first)) continue;
                        if (Filtered) {
                            int k = filtered(mark, first);
                            if (k < 0) return ERROR;
                            if (!k) continue;
                        }
                        first = false;
                        int r = encode(value);
                        if (r != OK) return r;
                        continue;
                    }
                    nf.is_array = true;
                    nf.ait = a.begin();
                    nf.aend = a.end();
                    nf.index = 0;
                } else {
                    object o = value.get_object().value_unsafe();
                    if (!(o.begin() != o.end())) continue;
                    nf.is_array = false;
                    nf.oit = o.begin();
                    nf.oend = o.end();
                    nf.scope = check.open(dotted ? 0 : o.size());
                }
                nf.prefix_len = prefix.n;
                nf.h = h;
                if (ki.needs_escape) {
                    put_escaped(prefix, key, key_len);
                } else {
                    prefix.append(key, key_len);
                }
                prefix.append('.');
                stack.push_back(nf);  // `f` may dangle from here on
                continue;
            }
            size_t mark = out.n;
            put_name(first, key, key_len, ki.needs_escape);
            if (reserved_name(mark, first)) continue;
            if (Filtered) {
                int k = filtered(mark, first);
                if (k < 0) return ERROR;
                if (!k) continue;
            }
            first = false;
            if (put_scalar(value, t) != OK) return ERROR;
        }
        out.append('}');
        return OK;
    }

    // A name under "vault_observe." (_core_py.RESERVED_PREFIX: the daemon's own
    // attributes) just written from `mark`: taken back and counted. The prefix has
    // no byte that is escaped, so the written name starts with it when the key does.
    inline bool reserved_name(size_t mark, bool first) {
        size_t begin = mark + (first ? 1 : 2);  // past ',' and '"'
        size_t len = out.n - 2 - begin;         // without '":'
        if (len < 14 || out.p[begin] != 'v' || std::memcmp(out.p + begin, "vault_observe.", 14) != 0)
            return false;
        out.n = mark;
        reserved++;
        return true;
    }

    // The filter's decision on the name just written from `mark`; takes it back
    // when dropped. 1 keep, 0 drop, -1 error.
    inline int filtered(size_t mark, bool first) {
        size_t begin = mark + (first ? 1 : 2);  // past ',' and '"'
        int k = filter->keep(out.p + begin, out.n - 2 - begin);  // without '":'
        if (k == 0) out.n = mark;
        return k;
    }

    inline void put_name(bool first, const char *key, size_t key_len, bool needs_escape) {
        out.reserve(prefix.n + key_len * 6 + 8);
        if (!first) out.put(',');
        out.put('"');
        out.put(prefix.p, prefix.n);
        if (needs_escape) {
            put_escaped(out, key, key_len);
        } else {
            out.put(key, key_len);
        }
        out.put('"');
        out.put(':');
    }

    inline int put_scalar(element value, element_type t) {
        switch (t) {
            case element_type::STRING: {
                std::string_view s = value.get_string().value_unsafe();
                put_string(out, s.data(), s.size());
                return OK;
            }
            case element_type::INT64:
                put_i64(out, value.get_int64().value_unsafe());
                return OK;
            case element_type::UINT64:
                put_u64(out, value.get_uint64().value_unsafe());
                return OK;
            case element_type::DOUBLE:
                if (gil_free) return ERROR;
                return put_double(out, value.get_double().value_unsafe()) == 0 ? OK : ERROR;
            case element_type::BOOL:
                if (value.get_bool().value_unsafe()) {
                    out.append("true", 4);
                } else {
                    out.append("false", 5);
                }
                return OK;
            case element_type::NULL_VALUE:
                out.append("null", 4);
                return OK;
            default:
                return ERROR;
        }
    }

    // A value kept whole (an array when arrays are not flattened): json.dumps of
    // what orjson would give, with an explicit stack. OK, FALLBACK or ERROR.
    int encode(element value) {
        enc.clear();
        if (!open(value)) return put_scalar(value, value.type());
        while (!enc.empty()) {
            EncFrame &f = enc.back();
            element v;
            if (f.is_array) {
                if (!(f.ait != f.aend)) {
                    out.append(']');
                    enc.pop_back();
                    continue;
                }
                v = *f.ait;
                ++f.ait;
                if (!f.first) out.append(',');
                f.first = false;
            } else {
                if (!(f.oit != f.oend)) {
                    out.append('}');
                    check.close(f.scope);
                    enc.pop_back();
                    continue;
                }
                const char *key = f.oit.key_c_str();
                size_t key_len = f.oit.key_length();
                v = f.oit.value();
                ++f.oit;
                if (!check.add(f.scope, key, key_len, scan_key(key, key_len).sig)) return FALLBACK;
                out.reserve(key_len * 6 + 8);
                if (!f.first) out.put(',');
                f.first = false;
                put_string(out, key, key_len);
                out.append(':');
            }
            // `f` may dangle from here on
            if (!open(v)) {
                int r = put_scalar(v, v.type());
                if (r != OK) return r;
            }
        }
        return OK;
    }

    // Pushes a container (writing its opening bracket); false for a scalar.
    inline bool open(element v) {
        element_type t = v.type();
        if (t == element_type::ARRAY) {
            array a = v.get_array().value_unsafe();
            EncFrame nf{};
            nf.is_array = true;
            nf.first = true;
            nf.ait = a.begin();
            nf.aend = a.end();
            out.append('[');
            enc.push_back(nf);
            return true;
        }
        if (t == element_type::OBJECT) {
            object o = v.get_object().value_unsafe();
            EncFrame nf{};
            nf.is_array = false;
            nf.first = true;
            nf.oit = o.begin();
            nf.oend = o.end();
            nf.scope = check.open(o.size());
            out.append('{');
            enc.push_back(nf);
            return true;
        }
        return false;
    }
};

// ------------------------------------------------------------------ span names

// Interned span names: "<operation> <target>" -> one shared str. Bounded; past
// the bound a name is built per span instead. A name is kept with its parts: how
// many of its first bytes are the operation and of its last bytes the mount (the
// same text can be "<operation> <path>", whose mount is none).
class NameTable {
   public:
    explicit NameTable(size_t limit) : limit_(limit) { resize(1024); }
    ~NameTable() {
        for (PyObject *o : objs_) Py_XDECREF(o);
    }
    NameTable(const NameTable &) = delete;
    NameTable &operator=(const NameTable &) = delete;

    static const uint32_t NONE = 0xFFFFFFFFu;

    // Index of the name; NONE when the table is full or the name does not decode
    // (the caller decodes it again and gets the error).
    uint32_t lookup(const char *s, size_t len, size_t operation_len, size_t mount_len) {
        uint64_t hv = hash_bytes(s, len);
        size_t i = static_cast<size_t>(hv) & mask_;
        while (slots_[i]) {
            uint32_t idx = slots_[i] - 1;
            if (hashes_[idx] == hv && keys_[idx].size() == len && std::memcmp(keys_[idx].data(), s, len) == 0
                && parts_[idx].first == operation_len && parts_[idx].second == mount_len)
                return idx;
            i = (i + 1) & mask_;
        }
        if (objs_.size() >= limit_) return NONE;
        PyObject *o = PyUnicode_DecodeUTF8(s, static_cast<Py_ssize_t>(len), "surrogatepass");
        if (!o) {
            PyErr_Clear();
            return NONE;
        }
        uint32_t idx = static_cast<uint32_t>(objs_.size());
        objs_.push_back(o);
        keys_.emplace_back(s, len);
        parts_.emplace_back(operation_len, mount_len);
        hashes_.push_back(hv);
        slots_[i] = idx + 1;
        if (objs_.size() * 2 > slots_.size()) resize(slots_.size() * 2);
        return idx;
    }
    PyObject *get(uint32_t idx) const { return objs_[idx]; }
    size_t operation_len(uint32_t idx) const { return parts_[idx].first; }
    size_t mount_len(uint32_t idx) const { return parts_[idx].second; }

   private:
    void resize(size_t n) {
        slots_.assign(n, 0);
        mask_ = n - 1;
        for (uint32_t idx = 0; idx < objs_.size(); idx++) {
            size_t i = static_cast<size_t>(hashes_[idx]) & mask_;
            while (slots_[i]) i = (i + 1) & mask_;
            slots_[i] = idx + 1;
        }
    }
    size_t limit_;
    size_t mask_ = 0;
    std::vector<uint32_t> slots_;
    std::vector<PyObject *> objs_;
    std::vector<std::string> keys_;
    std::vector<std::pair<size_t, size_t>> parts_;  // (operation, mount) lengths in bytes
    std::vector<uint64_t> hashes_;
};

// ------------------------------------------------------------------ 128-bit ints

// Public API only: the byte-array calls of CPython are private and have changed.
static inline PyObject *i128_to_py(i128 v) {
    if (v >= INT64_MIN && v <= INT64_MAX) return PyLong_FromLongLong(static_cast<long long>(v));
    // v = hi * 2**64 + lo, hi fits 64 bits for any value the core holds
    PyObject *hi = PyLong_FromLongLong(static_cast<long long>(v >> 64));
    PyObject *lo = PyLong_FromUnsignedLongLong(static_cast<unsigned long long>(static_cast<uint64_t>(v)));
    PyObject *shift = PyLong_FromLong(64);
    PyObject *r = nullptr;
    if (hi && lo && shift) {
        PyObject *high = PyNumber_Lshift(hi, shift);
        if (high) {
            r = PyNumber_Add(high, lo);
            Py_DECREF(high);
        }
    }
    Py_XDECREF(hi);
    Py_XDECREF(lo);
    Py_XDECREF(shift);
    return r;
}

// Python int -> i128 when -2**limit_bits <= v < 2**limit_bits (64 < limit_bits <= 126):
// 0, or 1 = out of range (its sign in *sign), or -1 = error (not an int, ...).
static inline int py_to_i128(PyObject *o, i128 *out, int limit_bits, int *sign) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (!overflow) {
        *out = v;
        return 0;
    }
    *sign = overflow;
    PyObject *shift = PyLong_FromLong(64);
    if (!shift) return -1;
    PyObject *high = PyNumber_Rshift(o, shift);  // floor(v / 2**64)
    Py_DECREF(shift);
    if (!high) return -1;
    long long hi = PyLong_AsLongLongAndOverflow(high, &overflow);
    Py_DECREF(high);
    if (hi == -1 && PyErr_Occurred()) return -1;
    const long long bound = 1LL << (limit_bits - 64);
    if (overflow || hi >= bound || hi < -bound) return 1;
    PyObject *mask = PyLong_FromUnsignedLongLong(~0ULL);
    if (!mask) return -1;
    PyObject *low = PyNumber_And(o, mask);  // v mod 2**64
    Py_DECREF(mask);
    if (!low) return -1;
    unsigned long long lo = PyLong_AsUnsignedLongLong(low);
    Py_DECREF(low);
    if (lo == static_cast<unsigned long long>(-1) && PyErr_Occurred()) return -1;
    *out = static_cast<i128>(static_cast<unsigned __int128>(static_cast<uint64_t>(hi)) << 64 | lo);
    return 0;
}

// Flatten without the GIL: a float, a filter or no memory give ERROR (no Python
// exception), and the caller redoes the line with the GIL.
static inline int flatten_gil_free(Flattener &f, element root, bool flatten_arrays) noexcept {
    if (f.filter) return ERROR;
    f.gil_free = true;
    int r;
    try {
        r = f.flatten(root, flatten_arrays);
    } catch (...) {
        r = ERROR;
    }
    f.gil_free = false;
    return r;
}

}  // namespace vo

#endif
