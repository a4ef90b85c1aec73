// AVX2 + FMA tier: the bit-plane LUT GEMM on 8-lane registers. Layout and math: see qgen_cpu.h.
//
// AVX2 has no 16-entry float permute (vpermps ymm reads index bits 0..2), but the signed-plane
// tables are antisymmetric: entry 15 - i has every sign flipped, so T[i] = -T[15 - i] exactly
// (negation commutes with rounding). An index with bit 3 set therefore reads the lower half at
// 7 - (i & 7) = (i ^ 0b111) & 7 and flips the sign: one vpermps (table as its memory operand)
// and one xor per 8 columns x 4 inputs x plane, with the index xor and sign mask computed once
// per group and shared by every row of the tile. (The former two vpermps + vblendvps per lookup
// kept the shuffle port twice as busy.) A 16-lane column block is two 8-lane halves.
// Compiled for AVX2/FMA by the target pragma, called only after the run-time check.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "qgen_cpu.h"

#if defined(QGEN_X86)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "epilogue.h"  // after the pragma: the epilogue loops are compiled for AVX2

namespace qgen {
namespace {

alignas(32) const float kSign[kGroup][8] = {
    {-1, 1, -1, 1, -1, 1, -1, 1},
    {-1, -1, 1, 1, -1, -1, 1, 1},
    {-1, -1, -1, -1, 1, 1, 1, 1},
    {-1, -1, -1, -1, -1, -1, -1, -1},  // entries 0..7 have bit 3 clear
};

// Same arithmetic as the portable tier (exact sign products, adds in order e = 0..3).
double build_tables_avx2(const float* x, const float* rscale, const float* rz, int64_t R,
                         int64_t R32, float* tables) {
    const __m256 s0 = _mm256_load_ps(kSign[0]), s1 = _mm256_load_ps(kSign[1]);
    const __m256 s2 = _mm256_load_ps(kSign[2]), s3 = _mm256_load_ps(kSign[3]);
    double dot = 0.0;
    const int64_t groups = R32 * kGroupsPerWord;
    for (int64_t g = 0; g < groups; ++g) {
        float v[kGroup];
        for (int e = 0; e < kGroup; ++e) {
            const int64_t r = g * kGroup + e;
            v[e] = r < R ? (rscale ? x[r] * rscale[r] : x[r]) : 0.0f;
            if (r < R) dot += static_cast<double>(v[e]) * (rz ? rz[r] : 1.0f);
        }
        __m256 lo = _mm256_mul_ps(s0, _mm256_set1_ps(v[0]));
        lo = _mm256_fmadd_ps(s1, _mm256_set1_ps(v[1]), lo);
        lo = _mm256_fmadd_ps(s2, _mm256_set1_ps(v[2]), lo);
        lo = _mm256_fmadd_ps(s3, _mm256_set1_ps(v[3]), lo);
        // entries 0..7 only: the tile reads 8..15 as negated 7..0 (see the top of this file)
        _mm256_store_ps(tables + g * kTableFloats, lo);
    }
    return dot;
}

// MR rows x NB blocks (2 NB halves of 8 lanes); P accumulator sets alternate over the 8 groups
// to break the add/FMA dependency chains when MR * NB is small. Per group, plane and half: the
// index with bit 3 folded in (ix = idx ^ (bit 3 ? 0b111.. : 0)) and the sign to apply (bit 3
// moved to bit 31) once, then per row one vpermps from the row's table, an xor and an add/FMA.
template <int BITS, int MR, int NB, int P>
inline __attribute__((always_inline)) void micro(const TileArgs& a, int m0, int cb0) {
    constexpr int NH = 2 * NB;
    const __m256i sign_bit = _mm256_set1_epi32(static_cast<int>(0x80000000u));
    __m256 c[P][MR][NH];
    for (int p = 0; p < P; ++p)
        for (int m = 0; m < MR; ++m)
            for (int h = 0; h < NH; ++h) c[p][m][h] = _mm256_setzero_ps();
    const float* tab = a.tables + m0 * a.tstride;
    const uint32_t* w = a.w + cb0 * a.cbstride;
    for (int64_t rc = 0; rc < a.R32; ++rc) {
        __m256i idx[BITS][NH];
#pragma GCC unroll 4
        for (int b = 0; b < BITS; ++b)
#pragma GCC unroll 8
            for (int h = 0; h < NH; ++h)
                idx[b][h] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                    w + (h / 2) * a.cbstride + (rc * BITS + b) * kLanes + (h % 2) * 8));
        const float* t = tab + rc * kGroupsPerWord * kTableFloats;
#pragma GCC unroll 8
        for (int j = 0; j < kGroupsPerWord; ++j) {
#pragma GCC unroll 4
            for (int b = 0; b < BITS; ++b)
#pragma GCC unroll 8
                for (int h = 0; h < NH; ++h) {
                    const __m256i hi = _mm256_slli_epi32(idx[b][h], 28);  // bit 3 -> bit 31
                    const __m256i ix = _mm256_xor_si256(idx[b][h], _mm256_srai_epi32(hi, 31));
                    const __m256 sg = _mm256_castsi256_ps(_mm256_and_si256(hi, sign_bit));
#pragma GCC unroll 4
                    for (int m = 0; m < MR; ++m) {
                        const __m256 tlo = _mm256_load_ps(t + m * a.tstride + j * kTableFloats);
                        const __m256 v = _mm256_xor_ps(_mm256_permutevar8x32_ps(tlo, ix), sg);
                        __m256& acc = c[j % P][m][h];
                        acc = b == 0 ? _mm256_add_ps(acc, v)
                                     : _mm256_fmadd_ps(v, _mm256_set1_ps(float(1 << b)), acc);
                    }
                }
#pragma GCC unroll 4
            for (int b = 0; b < BITS; ++b)
#pragma GCC unroll 8
                for (int h = 0; h < NH; ++h) idx[b][h] = _mm256_srli_epi32(idx[b][h], 4);
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int h = 0; h < NH; ++h) {
            __m256 s = c[0][m][h];
            for (int p = 1; p < P; ++p) s = _mm256_add_ps(s, c[p][m][h]);
            _mm256_storeu_ps(a.acc + (m0 + m) * a.ldacc + cb0 * kLanes + h * 8, s);
        }
}

template <int BITS, int MR, int NB, int P>
void sweep(const TileArgs& a, int m0) {
    int n = 0;
    for (; n + NB <= a.nb; n += NB) micro<BITS, MR, NB, P>(a, m0, n);
    for (; n < a.nb; ++n) micro<BITS, MR, 1, P>(a, m0, n);
}

template <int BITS>
void tile_bits(const TileArgs& a) {
    int m = 0;
    // 4 rows share each group's index and sign work (measured 1-bit 500x500 at M = 256 with
    // torch on AVX2: 1.12 ms against 1.22 with row pairs; two row pairs x 2 blocks: 1.16)
    for (; m + 4 <= a.mr; m += 4) sweep<BITS, 4, 1, 1>(a, m);
    for (; m + 2 <= a.mr; m += 2) sweep<BITS, 2, 1, 1>(a, m);
    for (; m < a.mr; ++m) sweep<BITS, 1, 1, 2>(a, m);
}

void tile_avx2(const TileArgs& a) {
    switch (a.bits) {
        case 1: tile_bits<1>(a); break;
        case 2: tile_bits<2>(a); break;
        case 3: tile_bits<3>(a); break;
        default: tile_bits<4>(a); break;
    }
}

// Sparse rows (qgen_cpu.h, SparseRowArgs) on 8-lane registers, a 16-column block as two halves.
// No mask registers: the bit test is and + compare, and the masked add adds (mask & v), which is
// +0 where the bit is clear: the same sums as skipping the add, since an accumulator that starts
// at +0 and only ever gains nonzero values is never -0. Same order as the portable tier.
template <int BITS, int NB>
inline __attribute__((always_inline)) void sparse_blocks(const SparseRowArgs& a, int cb0) {
    __m256 c[NB][2];
    for (int n = 0; n < NB; ++n) c[n][0] = c[n][1] = _mm256_setzero_ps();
    const uint32_t* w = a.w + cb0 * a.cbstride;
    for (int64_t i = 0; i < a.nnz; ++i) {
        const int32_t r = a.idx[i];
        const __m256i bit = _mm256_set1_epi32(static_cast<int>(1u << (r % kChunkR)));
        const uint32_t* wr = w + (r / kChunkR) * BITS * kLanes;
#pragma GCC unroll 4
        for (int b = 0; b < BITS; ++b) {
            const __m256 v = _mm256_set1_ps(a.val[i] * static_cast<float>(2 << b));
#pragma GCC unroll 8
            for (int n = 0; n < NB; ++n)
#pragma GCC unroll 2
                for (int h = 0; h < 2; ++h) {
                    const __m256i word = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                        wr + n * a.cbstride + b * kLanes + h * 8));
                    const __m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(word, bit), bit);
                    c[n][h] = _mm256_add_ps(c[n][h], _mm256_and_ps(_mm256_castsi256_ps(on), v));
                }
        }
    }
    const __m256 corr = _mm256_set1_ps(static_cast<float>((1 << BITS) - 1) * a.xsum);
    for (int n = 0; n < NB; ++n)
        for (int h = 0; h < 2; ++h)
            _mm256_storeu_ps(a.acc + (cb0 + n) * kLanes + h * 8, _mm256_sub_ps(c[n][h], corr));
}

template <int BITS>
void sparse_row_bits(const SparseRowArgs& a) {
    int cb = 0;
    for (; cb + 4 <= a.nb; cb += 4) sparse_blocks<BITS, 4>(a, cb);
    for (; cb < a.nb; ++cb) sparse_blocks<BITS, 1>(a, cb);
}

void sparse_row_avx2(const SparseRowArgs& a) {
    switch (a.bits) {
        case 1: sparse_row_bits<1>(a); break;
        case 2: sparse_row_bits<2>(a); break;
        case 3: sparse_row_bits<3>(a); break;
        default: sparse_row_bits<4>(a); break;
    }
}

}  // namespace

KernelSet kernels_avx2() {
    return KernelSet{"avx2", build_tables_avx2, tile_avx2, 4, 8, 8, epilogue_row_impl,
                     grad_row_impl, sparse_row_avx2, gather_nonzeros_scalar};
}

}  // namespace qgen

#pragma GCC pop_options
#endif  // QGEN_X86
