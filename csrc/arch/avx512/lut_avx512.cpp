// AVX-512 tier (avx512f + avx512bw/dq/vl): the bit-plane LUT GEMM with one vpermps per
// 16 columns x 4 reduction entries x 1 plane. Layout and math: see qgen_cpu.h.
//
// Compiled for AVX-512 by the target pragma below, whatever the build flags; only called after
// the run-time check (cpu_features.cpp) found the CPU and the OS (XGETBV) support it.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "qgen_cpu.h"

#if defined(QGEN_X86)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
#include <immintrin.h>

#include "epilogue.h"  // after the pragma: the epilogue loops are compiled for AVX-512

namespace qgen {
namespace {

// Sign vectors: lane i of kSign[e] is +1 when bit e of i is set, else -1.
alignas(64) const float kSign[kGroup][kTableFloats] = {
    {-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1},
    {-1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1},
    {-1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1},
    {-1, -1, -1, -1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1, 1},
};

// Tables for 16 r at a time (4 groups): T = s0 v0 + s1 v1 + s2 v2 + s3 v3, each product exact
// (a sign), so the FMAs round exactly like the portable tier's adds: tables are bit-identical.
double build_tables_avx512(const float* x, const float* rscale, const float* rz, int64_t R,
                           int64_t R32, float* tables) {
    const __m512 s0 = _mm512_load_ps(kSign[0]), s1 = _mm512_load_ps(kSign[1]);
    const __m512 s2 = _mm512_load_ps(kSign[2]), s3 = _mm512_load_ps(kSign[3]);
    __m512d dot0 = _mm512_setzero_pd(), dot1 = _mm512_setzero_pd();
    alignas(64) float v[16];
    const int64_t Rp = R32 * kChunkR;
    for (int64_t r0 = 0; r0 < Rp; r0 += 16) {
        const int64_t left = R - r0;
        const __mmask16 mask = left >= 16 ? 0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
        __m512 xv = _mm512_maskz_loadu_ps(mask, x + r0);
        if (rscale) xv = _mm512_mul_ps(xv, _mm512_maskz_loadu_ps(mask, rscale + r0));
        const __m512 zv = rz ? _mm512_maskz_loadu_ps(mask, rz + r0) : _mm512_set1_ps(1.0f);
        dot0 = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(xv)),
                               _mm512_cvtps_pd(_mm512_castps512_ps256(zv)), dot0);
        dot1 = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(
                                   _mm512_castps_pd(xv), 1))),
                               _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(
                                   _mm512_castps_pd(zv), 1))),
                               dot1);
        _mm512_store_ps(v, xv);
        float* t = tables + (r0 / kGroup) * kTableFloats;
        for (int g = 0; g < 4; ++g) {
            __m512 acc = _mm512_mul_ps(s0, _mm512_set1_ps(v[4 * g]));
            acc = _mm512_fmadd_ps(s1, _mm512_set1_ps(v[4 * g + 1]), acc);
            acc = _mm512_fmadd_ps(s2, _mm512_set1_ps(v[4 * g + 2]), acc);
            acc = _mm512_fmadd_ps(s3, _mm512_set1_ps(v[4 * g + 3]), acc);
            _mm512_store_ps(t + g * kTableFloats, acc);
        }
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(dot0, dot1));
}

// MR rows x NB column blocks, all in registers: acc MR*NB zmm, plane words BITS*NB zmm.
// Chunks [rc0, rc1) of 32 r; `accumulate` adds to what acc already holds (later k slices).
// Per chunk: load the BITS*NB words once; for each of the 8 groups, one table load per row and
// one vpermps + add/FMA per (row, plane, block); then shift the words right by 4 to expose the
// next group's nibble (vpermps reads only the low 4 bits of each index lane). 2^b is exact, so
// the FMA by it rounds like an add.
template <int BITS, int MR, int NB>
inline __attribute__((always_inline)) void micro(const TileArgs& a, int m0, int cb0, int64_t rc0,
                                                 int64_t rc1, bool accumulate) {
    __m512 c[MR][NB];
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
        for (int n = 0; n < NB; ++n)
            c[m][n] = accumulate ? _mm512_loadu_ps(a.acc + (m0 + m) * a.ldacc + (cb0 + n) * kLanes)
                                 : _mm512_setzero_ps();
    const float* tab = a.tables + m0 * a.tstride;
    const uint32_t* w = a.w + cb0 * a.cbstride;
    for (int64_t rc = rc0; rc < rc1; ++rc) {
        __m512i idx[BITS][NB];
#pragma GCC unroll 4
        for (int b = 0; b < BITS; ++b)
#pragma GCC unroll 8
            for (int n = 0; n < NB; ++n)
                idx[b][n] = _mm512_loadu_si512(w + n * a.cbstride + (rc * BITS + b) * kLanes);
        const float* t = tab + rc * kGroupsPerWord * kTableFloats;
        // Not unrolled: unrolling the 8 groups lets the scheduler hoist loads and spill accs.
#pragma GCC unroll 1
        for (int j = 0; j < kGroupsPerWord; ++j) {
#pragma GCC unroll 8
            for (int m = 0; m < MR; ++m) {
                const __m512 tv = _mm512_load_ps(t + m * a.tstride + j * kTableFloats);
#pragma GCC unroll 4
                for (int b = 0; b < BITS; ++b)
#pragma GCC unroll 8
                    for (int n = 0; n < NB; ++n) {
                        const __m512 v = _mm512_permutexvar_ps(idx[b][n], tv);
                        // Plane 0 alternates add and FMA-by-1 (same rounding) so the
                        // adds spread over both the FADD and FMA pipes beside vpermps.
                        c[m][n] = (b == 0 && n % 2 == 0)
                                      ? _mm512_add_ps(c[m][n], v)
                                      : _mm512_fmadd_ps(v, _mm512_set1_ps(float(1 << b)),
                                                        c[m][n]);
                    }
            }
#pragma GCC unroll 4
            for (int b = 0; b < BITS; ++b)
#pragma GCC unroll 8
                for (int n = 0; n < NB; ++n) idx[b][n] = _mm512_srli_epi32(idx[b][n], 4);
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
        for (int n = 0; n < NB; ++n)
            _mm512_storeu_ps(a.acc + (m0 + m) * a.ldacc + (cb0 + n) * kLanes, c[m][n]);
}

// Column sweep for a fixed row count MR over chunks [rc0, rc1): full NB blocks, then singles.
template <int BITS, int MR, int NB>
void sweep(const TileArgs& a, int m0, int64_t rc0, int64_t rc1, bool accumulate) {
    int n = 0;
    for (; n + NB <= a.nb; n += NB) micro<BITS, MR, NB>(a, m0, n, rc0, rc1, accumulate);
    for (; n < a.nb; ++n) micro<BITS, MR, 1>(a, m0, n, rc0, rc1, accumulate);
}

// Rows in groups of 6, then 4 (GEMM regime): the reduction is cut in slices of kSlice chunks so
// the 6 rows' tables of a slice (6 * 8 * 8 * 64 B = 24 KiB) stay in L1 while the sweep walks
// every column block of the tile; each table vector is then reused by NB * BITS lookups from L1
// rather than re-read from L2 per block. Six rows is what the registers allow at 1 bit (6 * 4
// accumulators + 4 index words + the table vector = 29 of 32 zmm); against four it cuts the
// index shifts per lookup and measured 3-8% faster on the MNIST layers at M = 256.
// Leftover rows (and M = 1, the GEMV regime) use one row at a time with wide NB: the single
// row's tables are re-read per column group, but each load feeds NB * BITS lookups and NB
// independent accumulation chains hide the add latency.
constexpr int64_t kSlice = 8;

template <int BITS>
void tile_bits(const TileArgs& a) {
    constexpr int kGemmNb = BITS == 1 ? 4 : 2;
    constexpr int kGemvNb = BITS <= 2 ? 8 : 4;
    constexpr int kMr = 6;
    int m = 0;
    for (; m + kMr <= a.mr; m += kMr)
        for (int64_t rc0 = 0; rc0 == 0 || rc0 < a.R32; rc0 += kSlice)  // R32 = 0: zeros
            sweep<BITS, kMr, kGemmNb>(a, m, rc0, std::min(a.R32, rc0 + kSlice), rc0 > 0);
    for (; m + 4 <= a.mr; m += 4)
        for (int64_t rc0 = 0; rc0 == 0 || rc0 < a.R32; rc0 += kSlice)
            sweep<BITS, 4, kGemmNb>(a, m, rc0, std::min(a.R32, rc0 + kSlice), rc0 > 0);
    for (; m < a.mr; ++m) sweep<BITS, 1, kGemvNb>(a, m, 0, a.R32, false);
}

void tile_avx512(const TileArgs& a) {
    switch (a.bits) {
        case 1: tile_bits<1>(a); break;
        case 2: tile_bits<2>(a); break;
        case 3: tile_bits<3>(a); break;
        default: tile_bits<4>(a); break;
    }
}

// Sparse rows (qgen_cpu.h, SparseRowArgs): NB blocks' accumulators in registers while the
// nonzeros stream past; per nonzero one broadcast bit mask, per plane one broadcast value, and per
// block one vptestmd on the plane word and one masked add. Same terms in the same order as the
// portable tier.
template <int BITS, int NB>
inline __attribute__((always_inline)) void sparse_blocks(const SparseRowArgs& a, int cb0) {
    __m512 c[NB];
#pragma GCC unroll 16
    for (int n = 0; n < NB; ++n) c[n] = _mm512_setzero_ps();
    const uint32_t* w = a.w + cb0 * a.cbstride;
    for (int64_t i = 0; i < a.nnz; ++i) {
        const int32_t r = a.idx[i];
        const __m512i bit = _mm512_set1_epi32(static_cast<int>(1u << (r % kChunkR)));
        const uint32_t* wr = w + (r / kChunkR) * BITS * kLanes;
#pragma GCC unroll 4
        for (int b = 0; b < BITS; ++b) {
            const __m512 v = _mm512_set1_ps(a.val[i] * static_cast<float>(2 << b));
#pragma GCC unroll 16
            for (int n = 0; n < NB; ++n) {
                const __mmask16 k = _mm512_test_epi32_mask(
                    _mm512_loadu_si512(wr + n * a.cbstride + b * kLanes), bit);
                c[n] = _mm512_mask_add_ps(c[n], k, c[n], v);
            }
        }
    }
    const __m512 corr = _mm512_set1_ps(static_cast<float>((1 << BITS) - 1) * a.xsum);
#pragma GCC unroll 16
    for (int n = 0; n < NB; ++n)
        _mm512_storeu_ps(a.acc + (cb0 + n) * kLanes, _mm512_sub_ps(c[n], corr));
}

// 16 entries at a time: compare, compress values and indices into registers, store whole vectors
// (a compressing store to memory is microcoded on some AVX-512 CPUs).
int64_t gather_nonzeros_avx512(const float* x, int64_t R, int32_t* idx, float* val) {
    int64_t n = 0;
    __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step = _mm512_set1_epi32(16);
    for (int64_t r0 = 0; r0 < R; r0 += 16) {
        const int64_t left = R - r0;
        const __mmask16 in = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(in, x + r0);
        const __mmask16 nz = _mm512_mask_cmp_ps_mask(in, v, _mm512_setzero_ps(), _CMP_NEQ_UQ);
        _mm512_storeu_ps(val + n, _mm512_maskz_compress_ps(nz, v));
        _mm512_storeu_si512(idx + n, _mm512_maskz_compress_epi32(nz, iota));
        n += __builtin_popcount(nz);
        iota = _mm512_add_epi32(iota, step);
    }
    return n;
}

template <int BITS>
void sparse_row_bits(const SparseRowArgs& a) {
    int cb = 0;
    for (; cb + 8 <= a.nb; cb += 8) sparse_blocks<BITS, 8>(a, cb);
    for (; cb + 4 <= a.nb; cb += 4) sparse_blocks<BITS, 4>(a, cb);
    for (; cb + 2 <= a.nb; cb += 2) sparse_blocks<BITS, 2>(a, cb);
    for (; cb < a.nb; ++cb) sparse_blocks<BITS, 1>(a, cb);
}

void sparse_row_avx512(const SparseRowArgs& a) {
    switch (a.bits) {
        case 1: sparse_row_bits<1>(a); break;
        case 2: sparse_row_bits<2>(a); break;
        case 3: sparse_row_bits<3>(a); break;
        default: sparse_row_bits<4>(a); break;
    }
}

}  // namespace

KernelSet kernels_avx512() {
    return KernelSet{"avx512", build_tables_avx512, tile_avx512, 6, 32, 8, epilogue_row_impl,
                     grad_row_impl, sparse_row_avx512, gather_nonzeros_avx512};
}

}  // namespace qgen

#pragma GCC pop_options
#endif  // QGEN_X86
