// Scratch allocators of the drivers: per calling thread, kept between calls.
#include "scratch.h"

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

namespace qgen {

namespace {

struct AlignedFree {
    void operator()(float* p) const { std::free(p); }
};
using AlignedBuf = std::unique_ptr<float[], AlignedFree>;

AlignedBuf aligned_floats(int64_t n) {
    const size_t bytes = ((static_cast<size_t>(std::max<int64_t>(n, 16)) * 4 + 63) / 64) * 64;
    float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    return AlignedBuf(p);
}

}  // namespace

// A calling thread's scratch floats, kept between calls and grown on demand. The tables of one
// product are up to ~1 MB: allocated per call, such a block can come from mmap and go back to
// the OS on free, so a call would pay ~250 fresh page faults. Thread-local, so concurrent
// callers (the GIL is released) never share it; a product's buffers live only during its call.
// Memory: the largest product's tables stay allocated per calling thread.
float* scratch_floats(int64_t n) {
    thread_local AlignedBuf buf;
    thread_local int64_t capacity = 0;
    if (n > capacity) {
        buf.reset();
        const int64_t want = std::max<int64_t>(n, capacity + capacity / 2);
        buf = aligned_floats(want);
        capacity = want;
    }
    return buf.get();
}

// The same for int32 (the sparse driver's nonzero indices).
int32_t* scratch_ints(int64_t n) {
    thread_local std::vector<int32_t> buf;
    if (static_cast<int64_t>(buf.size()) < n) buf.resize(std::max<int64_t>(n, buf.size() * 3 / 2));
    return buf.data();
}

}  // namespace qgen
