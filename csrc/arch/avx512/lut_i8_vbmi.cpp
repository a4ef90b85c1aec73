// AVX-512 VBMI + VNNI register tile of the integer-table LUT GEMM: one vpermb looks up 16 columns
// x 4 groups at once (the row's four 16-byte group tables fill one zmm; each index byte carries
// its group in bits 4-5), and one vpdpbusd sums each column's 4 looked-up bytes into its int32
// lane, weighted 2^b for plane b. So the sums need no 16-bit runs, flushes or even/odd split, and
// equal the other tiles' integers exactly (same tables q, integer adds). Weight layout: "quads"
// (qgen_cpu.h). Compiled for VBMI/VNNI by the target pragma; called only after the run-time check.
#include <cstdint>

#include "qgen_cpu.h"

#if defined(QGEN_X86)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi,avx512vnni")
// GCC 12 warns on vpermb's own _mm512_undefined operand inside the header (a false positive)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

namespace qgen {
namespace {

constexpr int kBlocks = 4;  // 16-column blocks per tile: 64 columns

// MR rows x 64 columns: out[m][16 n + c] = sum_b 2^b sum_g q[m][g][idx_b(col, g)] over the
// quads chunks; w[n] points at block n's bytes, Q4 chunks of 4 groups, BITS planes each.
template <int BITS, int MR>
void micro_vbmi(const uint8_t* tab, int64_t tstride, const uint8_t* const* w, int64_t Q4,
                int32_t* out) {
    __m512i acc[MR][kBlocks];
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < kBlocks; ++n) acc[m][n] = _mm512_setzero_si512();
    for (int64_t c = 0; c < Q4; ++c) {
        __m512i t[MR];
#pragma GCC unroll 8
        for (int m = 0; m < MR; ++m) t[m] = _mm512_loadu_si512(tab + m * tstride + c * 64);
#pragma GCC unroll 4
        for (int n = 0; n < kBlocks; ++n)
#pragma GCC unroll 4
            for (int b = 0; b < BITS; ++b) {
                const __m512i idx = _mm512_loadu_si512(w[n] + (c * BITS + b) * 64);
                const __m512i weight = _mm512_set1_epi8(static_cast<char>(1 << b));
#pragma GCC unroll 8
                for (int m = 0; m < MR; ++m)
                    acc[m][n] = _mm512_dpbusd_epi32(acc[m][n], _mm512_permutexvar_epi8(idx, t[m]),
                                                    weight);
            }
    }
    // the tables' +128 per looked-up byte: 4 Q4 groups, weighted sum_b 2^b
    const int32_t off = 128 * static_cast<int32_t>(4 * Q4) * ((1 << BITS) - 1);
    const __m512i voff = _mm512_set1_epi32(off);
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < kBlocks; ++n)
            _mm512_storeu_si512(out + m * 64 + n * 16, _mm512_sub_epi32(acc[m][n], voff));
}

// Rows per register tile: MR x 4 accumulators, MR tables and one index vector in 32 registers.
template <int BITS>
void tile(const uint8_t* tab, int64_t tstride, const uint8_t* const* w, int64_t Q4, int mr,
          int32_t* out) {
    constexpr int MR = 4;
    int m = 0;
    for (; m + MR <= mr; m += MR)
        micro_vbmi<BITS, MR>(tab + m * tstride, tstride, w, Q4, out + m * 64);
    for (; m < mr; ++m) micro_vbmi<BITS, 1>(tab + m * tstride, tstride, w, Q4, out + m * 64);
}

}  // namespace

void tile_i8_vbmi(int bits, const uint8_t* tab, int64_t tstride, const uint8_t* quads,
                  int64_t bstride, int blocks, int64_t Q4, int mr, int32_t* out) {
    const uint8_t* w[kBlocks];
    for (int n = 0; n < kBlocks; ++n) w[n] = quads + (n < blocks ? n : blocks - 1) * bstride;
    switch (bits) {
        case 1: tile<1>(tab, tstride, w, Q4, mr, out); break;
        case 2: tile<2>(tab, tstride, w, Q4, mr, out); break;
        case 3: tile<3>(tab, tstride, w, Q4, mr, out); break;
        default: tile<4>(tab, tstride, w, Q4, mr, out); break;
    }
}

}  // namespace qgen

#pragma GCC pop_options
#endif  // QGEN_X86
