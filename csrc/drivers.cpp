// The drivers' non-template parts (drivers.h).
#include "drivers.h"

#include <algorithm>

namespace qgen {

// Whether at most 1/kSparseMaxDensity of X [M, K] is nonzero. Counted in blocks (the inner loop
// vectorises); a first block more than twice that dense ends the count: a dense input pays ~1k
// comparisons.
bool sparse_enough(const float* X, int64_t M, int64_t K) {
    const int64_t total = M * K, limit = total / kSparseMaxDensity;
    int64_t nnz = 0;
    for (int64_t start = 0; start < total; start += 1024) {
        const int64_t end = std::min(total, start + 1024);
        int32_t c = 0;  // 32-bit, so that the loop vectorises on any tier
        for (int64_t i = start; i < end; ++i) c += X[i] != 0.0f;
        nnz += c;
        if (nnz > limit || (start == 0 && c * kSparseMaxDensity > 2 * (end - start)))
            return false;
    }
    return true;
}

}  // namespace qgen
