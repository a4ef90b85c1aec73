// Row-wise s-th largest magnitude (see select.h).
//
// Why not torch.topk: P_s needs only the threshold, not the s indices in order, and at the
// solver's shapes (256 rows of 784) torch's CPU topk costs ~4-5 ms per call, as much as one of
// the packed generator's GEMMs; this costs ~0.8 ms (one radix pass, then nth_element over the
// few keys left).
#include "select.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "thread_pool.h"

namespace qgen {
namespace {

inline uint32_t magnitude_bits(float v) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    return u & 0x7fffffffu;
}

// The k-th largest (1-based) of keys[0, n) (max_key: their maximum): one counting pass over the
// top 11 bits (the exponent and 3 mantissa bits, so a row of similar magnitudes spreads over many
// buckets), keep only the bucket holding the k-th largest (compacted in place, typically a few
// dozen keys), and nth_element over those. Only buckets up to max_key's are cleared and scanned:
// for |z| < 1 that skips the upper half of the 2^11. counts: 2^11 scratch ints.
constexpr int kDigitShift = 20;

uint32_t kth_largest_key(uint32_t* keys, int64_t n, int64_t k, uint32_t max_key,
                         int32_t* counts) {
    const uint32_t top = max_key >> kDigitShift;
    std::fill(counts, counts + top + 1, 0);
    for (int64_t i = 0; i < n; ++i) ++counts[keys[i] >> kDigitShift];
    uint32_t bucket = top;
    for (; bucket > 0 && counts[bucket] < k; --bucket) k -= counts[bucket];
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i)
        if ((keys[i] >> kDigitShift) == bucket) keys[kept++] = keys[i];
    std::nth_element(keys, keys + (k - 1), keys + kept, std::greater<uint32_t>());
    return keys[k - 1];
}

}  // namespace

int resolve_threads(int threads) {
    if (threads > 0) return threads;
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
#endif
}

float kth_largest_abs_row(const float* row, int64_t d, int64_t s, uint32_t* keys,
                          int32_t* counts) {
    uint32_t max_key = 0;
    for (int64_t j = 0; j < d; ++j) {
        keys[j] = magnitude_bits(row[j]);
        max_key = std::max(max_key, keys[j]);
    }
    const uint32_t key = kth_largest_key(keys, d, s, max_key, counts);
    float t;
    std::memcpy(&t, &key, sizeof t);
    return t;
}

namespace {

// Rows in items of kRowsPerItem over up to `threads` threads, each thread with its own d keys
// and count scratch (allocated here: nothing allocates, or throws, in a worker).
// ~4 ns per entry: below ~0.5 ms of work a second thread costs more than it saves.
template <typename RowFn>
void for_rows(int64_t B, int64_t d, int threads, const RowFn& fn) {
    constexpr int64_t kRowsPerItem = 16;
    int nt = B * d < (1 << 17) ? 1 : resolve_threads(threads);
    const int64_t nitems = (B + kRowsPerItem - 1) / kRowsPerItem;
    nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, nitems)));
    std::vector<uint32_t> keys(static_cast<size_t>(nt) * d);
    std::vector<int32_t> counts(static_cast<size_t>(nt) * kSelectCounts);
    ThreadPool::instance().parallel_for(nitems, nt, [&](int64_t item, int slot) {
        const int64_t b1 = std::min(B, (item + 1) * kRowsPerItem);
        for (int64_t b = item * kRowsPerItem; b < b1; ++b)
            fn(b, keys.data() + slot * d, counts.data() + slot * kSelectCounts);
    });
}

}  // namespace

void kth_largest_abs(const float* z, int64_t B, int64_t d, int64_t s, float* out, int threads) {
    for_rows(B, d, threads, [&](int64_t b, uint32_t* keys, int32_t* counts) {
        out[b] = kth_largest_abs_row(z + b * d, d, s, keys, counts);
    });
}

void proximal_step(const float* z, const float* g, float beta, int64_t B, int64_t d, int64_t s,
                   bool project, float eps, float* out, int threads) {
    const bool threshold = s > 0 && s < d;
    for_rows(B, d, threads, [&](int64_t b, uint32_t* keys, int32_t* counts) {
        const float* zr = z + b * d;
        const float* gr = g + b * d;
        float* v = out + b * d;
        // two roundings, as torch's `z - beta * g` (this file is built without FMA contraction)
        for (int64_t j = 0; j < d; ++j) v[j] = zr[j] - beta * gr[j];
        if (threshold) {
            const float t = kth_largest_abs_row(v, d, s, keys, counts);
            // multiply by the 0/1 mask, as torch does: keeps the sign of zeros and NaNs alike
            for (int64_t j = 0; j < d; ++j) v[j] = v[j] * (std::fabs(v[j]) >= t ? 1.0f : 0.0f);
        }
        if (project) {
            double ss = 0.0;
            for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(v[j]) * v[j];
            const float nrm = std::max(static_cast<float>(std::sqrt(ss)), eps);
            for (int64_t j = 0; j < d; ++j) v[j] = v[j] / nrm;
        }
    });
}

}  // namespace qgen
