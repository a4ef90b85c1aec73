// Portable tier: the bit-plane LUT GEMM in plain C++ (any CPU; the oracle for the SIMD tiers'
// arithmetic order). Layout and math: see qgen_cpu.h.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "epilogue.h"
#include "qgen_cpu.h"

namespace qgen {
namespace {

// T[i] = sum_e (bit e of i ? +v_e : -v_e), summed in the order e = 0, 1, 2, 3 (all tiers do).
double build_tables_portable(const float* x, const float* rscale, const float* rz, int64_t R,
                             int64_t R32, float* tables) {
    double dot = 0.0;
    const int64_t groups = R32 * kGroupsPerWord;
    for (int64_t g = 0; g < groups; ++g) {
        float v[kGroup];
        for (int e = 0; e < kGroup; ++e) {
            const int64_t r = g * kGroup + e;
            v[e] = r < R ? (rscale ? x[r] * rscale[r] : x[r]) : 0.0f;
            if (r < R) dot += static_cast<double>(v[e]) * (rz ? rz[r] : 1.0f);
        }
        float* t = tables + g * kTableFloats;
        for (int i = 0; i < kTableFloats; ++i) {
            float s = (i & 1) ? v[0] : -v[0];
            for (int e = 1; e < kGroup; ++e) s += ((i >> e) & 1) ? v[e] : -v[e];
            t[i] = s;
        }
    }
    return dot;
}

void tile_portable(const TileArgs& a) {
    for (int m = 0; m < a.mr; ++m) {
        const float* tab = a.tables + m * a.tstride;
        for (int nb = 0; nb < a.nb; ++nb) {
            float acc[kLanes] = {};
            const uint32_t* w = a.w + nb * a.cbstride;
            for (int64_t rc = 0; rc < a.R32; ++rc) {
                const float* t = tab + rc * kGroupsPerWord * kTableFloats;
                for (int b = 0; b < a.bits; ++b) {
                    const float pw = static_cast<float>(1 << b);
                    const uint32_t* wb = w + (rc * a.bits + b) * kLanes;
                    for (int l = 0; l < kLanes; ++l) {
                        float s = 0.0f;
                        for (int j = 0; j < kGroupsPerWord; ++j)
                            s += t[j * kTableFloats + ((wb[l] >> (4 * j)) & 15u)];
                        acc[l] += pw * s;
                    }
                }
            }
            std::memcpy(a.acc + m * a.ldacc + nb * kLanes, acc, sizeof(acc));
        }
    }
}

// The reference of the SIMD tiers' sparse rows: the same terms in the same order (nonzeros in
// order, planes inside), so the tiers agree bit for bit.
void sparse_row_portable(const SparseRowArgs& a) {
    const float corr = static_cast<float>((1 << a.bits) - 1) * a.xsum;
    for (int cb = 0; cb < a.nb; ++cb) {
        float acc[kLanes] = {};
        const uint32_t* wc = a.w + cb * a.cbstride;
        for (int64_t i = 0; i < a.nnz; ++i) {
            const int32_t r = a.idx[i];
            const uint32_t bit = 1u << (r % kChunkR);
            const uint32_t* wr = wc + (r / kChunkR) * a.bits * kLanes;
            for (int b = 0; b < a.bits; ++b) {
                const float v = a.val[i] * static_cast<float>(2 << b);  // exact: a power of two
                for (int l = 0; l < kLanes; ++l)
                    if (wr[b * kLanes + l] & bit) acc[l] += v;
            }
        }
        for (int l = 0; l < kLanes; ++l) a.acc[cb * kLanes + l] = acc[l] - corr;
    }
}

}  // namespace

// Branch-free: a branch on x != 0 mispredicts on every few entries of a random sparse row.
int64_t gather_nonzeros_scalar(const float* x, int64_t R, int32_t* idx, float* val) {
    int64_t n = 0;
    for (int64_t r = 0; r < R; ++r) {
        idx[n] = static_cast<int32_t>(r);
        val[n] = x[r];
        n += x[r] != 0.0f;
    }
    return n;
}

KernelSet kernels_portable() {
    return KernelSet{"portable", build_tables_portable, tile_portable, 4, 1, 1,
                     epilogue_row_impl, grad_row_impl, sparse_row_portable,
                     gather_nonzeros_scalar};
}

}  // namespace qgen
