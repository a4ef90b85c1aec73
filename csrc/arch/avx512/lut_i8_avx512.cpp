// AVX-512 (avx512bw) register tile of the integer-table LUT GEMM: the AVX2 tile's arithmetic on
// zmm, 64 columns per vpshufb (two adjacent 32-column blocks of the "nibbles" layout, one per
// 256-bit half; the 16 table bytes broadcast to all four 128-bit lanes). Same integers as the AVX2
// tile, bit for bit (integer sums: no rounding), so the same max relative error (qgen_cpu.h, "The
// integer-table path"). The driver (tables, threads, epilogue) is arch/avx2/lut_i8_avx2.cpp.
// Compiled for AVX-512 by the target pragma; called only when the run-time check found it.
#include <algorithm>
#include <cstdint>

#include "qgen_cpu.h"

#if defined(QGEN_X86)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl")
#include <immintrin.h>

namespace qgen {
namespace {

constexpr int kCols = 2 * kI8Cols;      // columns per tile: one byte each in a zmm
constexpr int64_t kFlushPairs = 128;    // group pairs per 16-bit run: 256 x 255 < 2^16

// MR rows x 64 columns: out[m][l] = sum_b 2^b sum_g q[m][g][idx_b(col l, g)]; columns 0..31 from
// the block at w0, 32..63 from the one at w1. 16-bit lane i holds columns 2i (low byte) and 2i + 1:
// `raw` sums whole lanes (mod 2^16), `odd` the high bytes, the even column is raw - 256 odd.
template <int BITS, int MR>
void micro_i8_zmm(const uint8_t* tab, int64_t tstride, const uint8_t* w0, const uint8_t* w1,
                  int64_t Q, int32_t* out) {
    alignas(64) int32_t tot[MR][BITS][kCols] = {};
    const __m512i nib = _mm512_set1_epi8(0x0f);
    for (int64_t q0 = 0; q0 < Q; q0 += kFlushPairs) {
        const int64_t q1 = std::min(Q, q0 + kFlushPairs);
        __m512i raw[MR][BITS], odd[MR][BITS];
        for (int m = 0; m < MR; ++m)
            for (int b = 0; b < BITS; ++b) raw[m][b] = odd[m][b] = _mm512_setzero_si512();
        for (int64_t q = q0; q < q1; ++q) {
            __m512i lo[BITS], hi[BITS];
#pragma GCC unroll 4
            for (int b = 0; b < BITS; ++b) {
                const int64_t off = (q * BITS + b) * kI8Cols;
                const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + off));
                const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1 + off));
                const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(v0), v1, 1);
                lo[b] = _mm512_and_si512(v, nib);
                hi[b] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
            }
#pragma GCC unroll 8
            for (int m = 0; m < MR; ++m) {
                const uint8_t* t = tab + m * tstride + q * 32;
                const __m512i t0 = _mm512_broadcast_i32x4(
                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
                const __m512i t1 = _mm512_broadcast_i32x4(
                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 16)));
#pragma GCC unroll 4
                for (int b = 0; b < BITS; ++b) {
                    const __m512i l0 = _mm512_shuffle_epi8(t0, lo[b]);
                    const __m512i l1 = _mm512_shuffle_epi8(t1, hi[b]);
                    raw[m][b] = _mm512_add_epi16(raw[m][b], _mm512_add_epi16(l0, l1));
                    odd[m][b] = _mm512_add_epi16(
                        odd[m][b],
                        _mm512_add_epi16(_mm512_srli_epi16(l0, 8), _mm512_srli_epi16(l1, 8)));
                }
            }
        }
        for (int m = 0; m < MR; ++m)
            for (int b = 0; b < BITS; ++b) {
                alignas(64) uint16_t r16[32], o16[32];
                _mm512_store_si512(r16, raw[m][b]);
                _mm512_store_si512(o16, odd[m][b]);
                for (int i = 0; i < 32; ++i) {
                    tot[m][b][2 * i] += static_cast<uint16_t>(r16[i] - (o16[i] << 8));
                    tot[m][b][2 * i + 1] += o16[i];
                }
            }
    }
    const int32_t off = 128 * static_cast<int32_t>(2 * Q);  // the tables' +128, per plane
    for (int m = 0; m < MR; ++m)
        for (int l = 0; l < kCols; ++l) {
            int32_t s = 0;
            for (int b = 0; b < BITS; ++b) s += (tot[m][b][l] - off) * (1 << b);
            out[m * kCols + l] = s;
        }
}

// Rows per register tile: 2 accumulators per row and plane plus 2 index vectors per plane and
// the two tables within the 32 zmm registers.
template <int BITS>
void tile(const uint8_t* tab, int64_t tstride, const uint8_t* w0, const uint8_t* w1, int64_t Q,
          int mr, int32_t* out) {
    constexpr int MR = BITS == 1 ? 8 : BITS == 2 ? 4 : 2;
    int m = 0;
    for (; m + MR <= mr; m += MR)
        micro_i8_zmm<BITS, MR>(tab + m * tstride, tstride, w0, w1, Q, out + m * kCols);
    for (; m < mr; ++m)
        micro_i8_zmm<BITS, 1>(tab + m * tstride, tstride, w0, w1, Q, out + m * kCols);
}

}  // namespace

void tile_i8_avx512(int bits, const uint8_t* tab, int64_t tstride, const uint8_t* w0,
                    const uint8_t* w1, int64_t Q, int mr, int32_t* out) {
    switch (bits) {
        case 1: tile<1>(tab, tstride, w0, w1, Q, mr, out); break;
        case 2: tile<2>(tab, tstride, w0, w1, Q, mr, out); break;
        case 3: tile<3>(tab, tstride, w0, w1, Q, mr, out); break;
        default: tile<4>(tab, tstride, w0, w1, Q, mr, out); break;
    }
}

}  // namespace qgen

#pragma GCC pop_options
#endif  // QGEN_X86
