// What the pending requests' table (_pending.pyx) keeps that Cython cannot declare
// itself: 128-bit times and an entry with bit fields. The compiled core's JSON side
// (_fast_json.h) shares the integer type and the hash mixer.
#ifndef VAULT_OBSERVE_PENDING_ENTRY_H
#define VAULT_OBSERVE_PENDING_ENTRY_H

#include <cstdint>

namespace vo {

typedef __int128 i128;

// No entry, no interned name (an index that is never one).
static const uint32_t NO_INDEX = 0xFFFFFFFFu;

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// One pending request: 64 bytes.
struct Entry {
    uint64_t k0;            // trace id, high half (the UUID bytes or the id's hash)
    uint64_t k1;            // trace id, low half
    int64_t start;          // request time (saturated; exact in the extra when wide)
    int64_t deadline;       // (saturated likewise)
    uint64_t seq : 56;      // arrival order
    uint64_t flags : 8;
    uint32_t prev;          // sorted list links; for heap entries prev = heap position
    uint32_t next;          // also the free-list link
    uint32_t name;          // interned span name, or NO_INDEX when the extra holds it
    uint32_t extra;         // 1 + index into the extras, 0 = none
    char *attrs;            // malloc'd blob: the request's line or attributes
};
static_assert(sizeof(Entry) == 64, "pending entry size");

}  // namespace vo

#endif
