// Integer-table LUT GEMM (T-MAC style): int8 group tables looked up with vpshufb, 32 columns per
// instruction here (AVX2; the driver below runs the AVX-512 64-column tile of
// arch/avx512/lut_i8_avx512.cpp instead when asked), summed in 16-bit lanes and widened to int32
// every 256 groups. Layout ("nibbles")
// and math: qgen_cpu.h, "The integer-table path". It rounds the activations' group sums to 8 bits
// per row, so it is a separate entry point (gemm_planes_i8) and never replaces the exact tiers.
// Compiled for AVX2 by the target pragma, called only after the run-time check (gemm_i8.cpp).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "qgen_cpu.h"
#include "select.h"
#include "thread_pool.h"

#if defined(QGEN_X86)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "epilogue.h"  // after the pragma: the epilogue loops are compiled for AVX2

namespace qgen {
namespace {

constexpr int64_t kFlushPairs = 128;  // group pairs per 16-bit run: 256 x 255 < 2^16

alignas(32) const float kSignLo[kGroup][8] = {
    {-1, 1, -1, 1, -1, 1, -1, 1},
    {-1, -1, 1, 1, -1, -1, 1, 1},
    {-1, -1, -1, -1, 1, 1, 1, 1},
    {-1, -1, -1, -1, -1, -1, -1, -1},  // entries 0..7: bit 3 clear; entries 8..15: +1
};

// One row's tables: T[g][i] in fp32 (the exact tier's arithmetic: sign products, adds in order
// e = 0..3), then q = rint(T * (127 / amax)) over the row, stored as q + 128 (uint8, 1..255).
// Returns the row scale amax / 127 (0 for an all-zero row); *dot = sum_k x[k] in double.
float build_tables_i8(const float* x, int64_t K, int64_t Q, float* ftmp, uint8_t* tab,
                      double* dot) {
    const __m256 s0 = _mm256_load_ps(kSignLo[0]), s1 = _mm256_load_ps(kSignLo[1]);
    const __m256 s2 = _mm256_load_ps(kSignLo[2]), s3 = _mm256_load_ps(kSignLo[3]);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 amax = _mm256_setzero_ps();
    double d[kGroup] = {};  // sum_k x by k mod 4: four independent add chains, not one
    for (int64_t g = 0; g < 2 * Q; ++g) {
        float v[kGroup];
        for (int e = 0; e < kGroup; ++e) {
            const int64_t k = g * kGroup + e;
            v[e] = k < K ? x[k] : 0.0f;
            d[e] += static_cast<double>(v[e]);
        }
        __m256 lo = _mm256_mul_ps(s0, _mm256_set1_ps(v[0]));
        lo = _mm256_fmadd_ps(s1, _mm256_set1_ps(v[1]), lo);
        lo = _mm256_fmadd_ps(s2, _mm256_set1_ps(v[2]), lo);
        __m256 hi = _mm256_add_ps(lo, _mm256_set1_ps(v[3]));  // entries 8..15
        lo = _mm256_fmadd_ps(s3, _mm256_set1_ps(v[3]), lo);
        _mm256_store_ps(ftmp + g * 16, lo);
        _mm256_store_ps(ftmp + g * 16 + 8, hi);
        amax = _mm256_max_ps(amax, _mm256_and_ps(lo, absmask));
    }
    *dot = (d[0] + d[1]) + (d[2] + d[3]);
    alignas(32) float am[8];
    _mm256_store_ps(am, amax);
    float a = 0.0f;
    for (float f : am) a = std::max(a, f);
    const float inv = a > 0.0f ? 127.0f / a : 0.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i offset = _mm256_set1_epi8(static_cast<char>(0x80));
    for (int64_t g = 0; g < 2 * Q; g += 2) {  // two groups = 32 bytes per store
        const float* f = ftmp + g * 16;
        const __m256i a0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(f), vinv));
        const __m256i a1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(f + 8), vinv));
        const __m256i b0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(f + 16), vinv));
        const __m256i b1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(f + 24), vinv));
        // packs interleave per 128-bit lane; the dword permute restores entry order
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(a0, a1), _mm256_packs_epi32(b0, b1));
        const __m256i q = _mm256_xor_si256(_mm256_permutevar8x32_epi32(p, order), offset);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(tab + g * 16), q);
    }
    return a / 127.0f;
}

// MR rows x one 32-column block: out[m][l] = sum_b 2^b sum_g q[m][g][idx_b(col l, g)].
// Per group pair and plane: the block's 32 index bytes (low nibble: group 2q, high: 2q + 1), and
// per row two vpshufb from the row's tables (broadcast to both 128-bit lanes). A 16-bit lane holds
// an even and an odd column's bytes: `raw` sums the whole lanes (mod 2^16) and `odd` the high
// bytes (srli 8), so the even column's sum is raw - 256 odd (mod 2^16), exact while each sum of
// at most 256 bytes of <= 255 stays below 2^16; every kFlushPairs pairs they move to int32.
template <int BITS, int MR>
void micro_i8(const uint8_t* tab, int64_t tstride, const uint8_t* w, int64_t Q, int32_t* out) {
    alignas(32) int32_t tot[MR][BITS][kI8Cols] = {};
    const __m256i nib = _mm256_set1_epi8(0x0f);
    for (int64_t q0 = 0; q0 < Q; q0 += kFlushPairs) {
        const int64_t q1 = std::min(Q, q0 + kFlushPairs);
        __m256i raw[MR][BITS], odd[MR][BITS];
        for (int m = 0; m < MR; ++m)
            for (int b = 0; b < BITS; ++b) raw[m][b] = odd[m][b] = _mm256_setzero_si256();
        for (int64_t q = q0; q < q1; ++q) {
            __m256i lo[BITS], hi[BITS];
#pragma GCC unroll 4
            for (int b = 0; b < BITS; ++b) {
                const __m256i v = _mm256_loadu_si256(
                    reinterpret_cast<const __m256i*>(w + (q * BITS + b) * kI8Cols));
                lo[b] = _mm256_and_si256(v, nib);
                hi[b] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
            }
#pragma GCC unroll 4
            for (int m = 0; m < MR; ++m) {
                const uint8_t* t = tab + m * tstride + q * 32;
                const __m256i t0 = _mm256_broadcastsi128_si256(
                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
                const __m256i t1 = _mm256_broadcastsi128_si256(
                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 16)));
#pragma GCC unroll 4
                for (int b = 0; b < BITS; ++b) {
                    const __m256i l0 = _mm256_shuffle_epi8(t0, lo[b]);
                    const __m256i l1 = _mm256_shuffle_epi8(t1, hi[b]);
                    raw[m][b] = _mm256_add_epi16(raw[m][b], _mm256_add_epi16(l0, l1));
                    odd[m][b] = _mm256_add_epi16(
                        odd[m][b],
                        _mm256_add_epi16(_mm256_srli_epi16(l0, 8), _mm256_srli_epi16(l1, 8)));
                }
            }
        }
        for (int m = 0; m < MR; ++m)
            for (int b = 0; b < BITS; ++b) {
                alignas(32) uint16_t r16[16], o16[16];
                _mm256_store_si256(reinterpret_cast<__m256i*>(r16), raw[m][b]);
                _mm256_store_si256(reinterpret_cast<__m256i*>(o16), odd[m][b]);
                for (int i = 0; i < 16; ++i) {  // 16-bit lane i holds columns 2i, 2i + 1
                    tot[m][b][2 * i] += static_cast<uint16_t>(r16[i] - (o16[i] << 8));
                    tot[m][b][2 * i + 1] += o16[i];
                }
            }
    }
    const int32_t off = 128 * static_cast<int32_t>(2 * Q);  // the tables' +128, per plane
    for (int m = 0; m < MR; ++m)
        for (int l = 0; l < kI8Cols; ++l) {
            int32_t s = 0;
            for (int b = 0; b < BITS; ++b) s += (tot[m][b][l] - off) * (1 << b);
            out[m * kI8Cols + l] = s;
        }
}

// Rows per register tile: the accumulators (2 per row and plane) and the shared index vectors
// must fit the 16 ymm registers.
template <int BITS>
void tile_i8(const uint8_t* tab, int64_t tstride, const uint8_t* w, int64_t Q, int mr,
             int32_t* out) {
    constexpr int MR = BITS == 1 ? 4 : BITS == 2 ? 2 : 1;
    int m = 0;
    for (; m + MR <= mr; m += MR)
        micro_i8<BITS, MR>(tab + m * tstride, tstride, w, Q, out + m * kI8Cols);
    for (; m < mr; ++m) micro_i8<BITS, 1>(tab + m * tstride, tstride, w, Q, out + m * kI8Cols);
}

void tile_i8_bits(int bits, const uint8_t* tab, int64_t tstride, const uint8_t* w, int64_t Q,
                  int mr, int32_t* out) {
    switch (bits) {
        case 1: tile_i8<1>(tab, tstride, w, Q, mr, out); break;
        case 2: tile_i8<2>(tab, tstride, w, Q, mr, out); break;
        case 3: tile_i8<3>(tab, tstride, w, Q, mr, out); break;
        default: tile_i8<4>(tab, tstride, w, Q, mr, out); break;
    }
}

}  // namespace

void gemm_i8(const I8GemmArgs& a) {
    const int64_t M = a.M, K = a.K, N = a.N;
    const int64_t Q = ceil_div(K, 8), C32 = ceil_div(N, kI8Cols);
    // the quads tile reads tables in chunks of 4 groups: Qt pairs, the padding groups all zero
    const int64_t Q4 = ceil_div(K, 16), Qt = a.quads ? 2 * Q4 : Q;
    const int64_t tstride = 2 * Qt * 16;             // table bytes per row
    const int64_t C16 = ceil_div(N, 16), qstride = Q4 * a.bits * 64;  // quads bytes per block
    const int64_t wstride = Q * a.bits * kI8Cols;    // nibble bytes per column block
    const int64_t step = a.zmm ? 2 : 1;              // 32-column blocks per tile
    const int cols = static_cast<int>(step) * kI8Cols;
    constexpr int kTileRows = 8;
    int nt = resolve_threads(a.threads);
    if (static_cast<double>(M) * N * K * a.bits < 3.2e7) nt = 1;  // as the exact driver
    const bool by_rows = nt == 1 || M >= 32;
    // rows per item: a panel whose tables stay within ~512 KiB (by rows), or all rows (by columns)
    int64_t P = M;
    if (by_rows) {
        P = std::max<int64_t>(kTileRows, (512 << 10) / tstride);
        if (nt > 1) P = std::min(P, ceil_div(M, 4 * nt));
        P = std::min(std::max<int64_t>(P, 1), M);
    }
    const int64_t nitems = by_rows ? ceil_div(M, P) : ceil_div(C32, step);
    nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, nitems)));
    // per-slot scratch, allocated before the workers start (nothing throws inside them)
    std::vector<std::vector<uint8_t>> tabs(nt, std::vector<uint8_t>(P * tstride + 32));
    std::vector<std::vector<float>> ftmp(nt, std::vector<float>(2 * Qt * 16 + 8));
    std::vector<std::vector<float>> rscale(nt, std::vector<float>(P)), accf(nt);
    std::vector<std::vector<double>> dots(nt, std::vector<double>(P));
    std::vector<std::vector<int32_t>> isum(nt, std::vector<int32_t>(kTileRows * cols));
    for (auto& v : accf) v.resize(cols + 8);
    std::vector<char> built(nt, 0);
    ThreadPool::instance().parallel_for(nitems, nt, [&](int64_t it, int slot) {
        uint8_t* tab = tabs[slot].data();
        float* ft = ftmp[slot].data();
        // ftmp must be 32-byte aligned for the aligned stores
        ft = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(ft) + 31) & ~uintptr_t{31});
        auto build = [&](int64_t p0, int64_t pm) {
            for (int64_t i = 0; i < pm; ++i) {
                rscale[slot][i] = build_tables_i8(a.x + (p0 + i) * K, K, Qt, ft,
                                                  tab + i * tstride, &dots[slot][i]);
                if (a.row_scale && by_rows) a.row_scale[p0 + i] = rscale[slot][i];
            }
        };
        auto sweep = [&](int64_t p0, int64_t pm, int64_t cb) {
            const int64_t col0 = cb * kI8Cols, ncols = std::min<int64_t>(cols, N - col0);
            const uint8_t* w0 = a.nibbles + cb * wstride;
            for (int64_t m0 = 0; m0 < pm; m0 += kTileRows) {
                const int mr = static_cast<int>(std::min<int64_t>(kTileRows, pm - m0));
                int32_t* s = isum[slot].data();
                if (a.quads)
                    tile_i8_vbmi(a.bits, tab + m0 * tstride, tstride,
                                 a.quads + (col0 / 16) * qstride, qstride,
                                 static_cast<int>(std::min<int64_t>(4, C16 - col0 / 16)), Q4, mr,
                                 s);
                else if (a.zmm)
                    tile_i8_avx512(a.bits, tab + m0 * tstride, tstride, w0,
                                   cb + 1 < C32 ? w0 + wstride : w0, Q, mr, s);
                else
                    tile_i8_bits(a.bits, tab + m0 * tstride, tstride, w0, Q, mr, s);
                for (int m = 0; m < mr; ++m) {
                    const int64_t row = p0 + m0 + m;
                    const int32_t* sr = s + m * cols;
                    if (a.sums) std::copy(sr, sr + ncols, a.sums + row * N + col0);
                    if (!a.y) continue;
                    float* acc = accf[slot].data();
                    const float rs = rscale[slot][m0 + m];
                    for (int64_t j = 0; j < ncols; ++j) acc[j] = rs * static_cast<float>(sr[j]);
                    epilogue_row_impl(acc, static_cast<float>(dots[slot][m0 + m]), a.a2 + col0,
                                      a.zc2 + col0, a.beta + col0, a.y + row * N + col0, ncols,
                                      a.act, a.slope);
                }
            }
        };
        if (by_rows) {
            const int64_t p0 = it * P, pm = std::min(P, M - p0);
            build(p0, pm);
            for (int64_t cb = 0; cb < C32; cb += step) sweep(p0, pm, cb);
        } else {
            if (!built[slot]) build(0, M);
            built[slot] = 1;
            sweep(0, M, it * step);
        }
    });
    if (a.row_scale && !by_rows)  // every slot built all rows; any that ran has the scales
        for (int s = 0; s < nt; ++s)
            if (built[s]) {
                std::copy(rscale[s].begin(), rscale[s].begin() + M, a.row_scale);
                break;
            }
}

}  // namespace qgen

#pragma GCC pop_options
#endif  // QGEN_X86
