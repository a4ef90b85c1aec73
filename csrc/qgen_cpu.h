// qgen_infer._cpu: bit-plane look-up-table (LUT) GEMM over packed 1..4-bit codes, fp32 activations.
//
// ---------------------------------------------------------------------------------------------
// The math (docs/ARCHITECTURE.md, "The backend contract", states it for every backend)
// ---------------------------------------------------------------------------------------------
// A code c in [0, 2^k) is written with SIGNED bit planes p_b in {-1, +1} (p_b = 2*bit_b - 1):
//
//     c = 1/2 * sum_b 2^b p_b + mid,          mid = (2^k - 1) / 2
//
// so for a reduction over r of x[r] * (c[col, r] - zero[col]):
//
//     sum_r x[r] (c - zero) = 1/2 * sum_b 2^b S_b + (mid - zero) * sum_r x[r],
//     S_b = sum_r x[r] p_b[col, r].
//
// Signed planes keep S_b centred (no large sum_r x c that a zero correction then cancels), which
// matters for non-negative activations such as ReLU outputs.
//
// S_b is computed T-MAC style: for each group of g = 4 consecutive r, the 16 signed sums
//     T[grp][i] = sum_{e<4} (bit e of i ? +x[4 grp + e] : -x[4 grp + e])
// are tabulated once per activation row, and the 4 plane bits of a column in that group are the
// index i. On AVX-512 one vpermps looks up 16 columns at once from a 16-float table register.
//
// ---------------------------------------------------------------------------------------------
// The "planes" layout (built by repack_planes, consumed by every ISA tier)
// ---------------------------------------------------------------------------------------------
// A matrix of codes with C output columns (lanes) and R reduction entries:
//     words: uint32 [C16][R32][bits][16],   C16 = ceil(C / 16), R32 = ceil(R / 32)
//     bit (4 j + e) of words[cb][rc][b][l] = bit b of code(col = 16 cb + l, r = 32 rc + 4 j + e)
// i.e. one 64-byte vector holds one plane of a 16-column x 32-r tile; nibble j of each lane is the
// LUT index of group j. Padding columns and r are zero bits; padded r have x = 0, so their table
// entries are 0 and contribute nothing. The forward product uses (col = n, r = k); the transposed
// product (input gradient) uses a second copy with (col = k, r = n).
//
// Tables: float [R32 * 8][16] per activation row (16 * R32 * 32 bytes; 64-byte aligned).
#pragma once

#include <cstddef>
#include <cstdint>

namespace qgen {

constexpr int kLanes = 16;       // columns per block (one zmm of fp32 / uint32)
constexpr int kChunkR = 32;      // reduction entries per 32-bit word per lane
constexpr int kGroup = 4;        // LUT group size g: 2^4 = 16 table entries
constexpr int kGroupsPerWord = kChunkR / kGroup;
constexpr int kTableFloats = 16; // entries per group table
constexpr int kMaxTileBlocks = 32;
constexpr int kMaxTileRows = 8;  // the driver's accumulator scratch: gemm_mr <= this

enum class Isa : int { portable = 0, avx2 = 1, avx512 = 2 };

// Activation codes of the fused epilogues (engine/cpu_backend.py's _ACT_CODES follows them).
enum Act : int { kNone = 0, kRelu = 1, kLeaky = 2, kTanh = 3 };

// One output row of the forward epilogue (see gemm_planes_f32 in gemm.cpp):
//     y[j] = act(a2[j] * (acc[j] + zc2[j] * xs) + beta[j]),   j < n.
using EpilogueRowFn = void (*)(const float* acc, float xs, const float* a2, const float* zc2,
                               const float* beta, float* y, int64_t n, int act, float slope);

// One row of the input gradient through the epilogue (gemm_t_planes_f32), act' from the output:
//     h[j] = g[j] * alpha[j] * act'(y[j]).
using GradRowFn = void (*)(const float* g, const float* y, const float* alpha, float* h,
                           int64_t n, int act, float slope);

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Build one activation row's tables. x has R entries (times rscale[r] when rscale is non-null);
// tables covers R32 * 8 groups (groups past R read x = 0).
// Returns sum_r x[r] * rscale[r] * rz[r] in double (rz == nullptr means rz = 1): the row term of
// the zero correction (forward: sum_r x; transposed: sum_n g[n] scale[n] (mid - zero[n])).
using BuildTablesFn = double (*)(const float* x, const float* rscale, const float* rz, int64_t R,
                                 int64_t R32, float* tables);

// The micro-kernel over one tile: mr <= max_mr activation rows x nb <= max_nb column blocks.
//     acc[m][16 nb' + l] = sum_b 2^b S_b(row m, col 16 (cb0 + nb') + l)
// tables: row m's tables at tables + m * tstride; w: words of column block cb0 (next block at
// + cbstride words); acc: row stride ldacc floats.
struct TileArgs {
    const float* tables;
    int64_t tstride;
    const uint32_t* w;
    int64_t cbstride;
    int64_t R32;
    float* acc;
    int64_t ldacc;
    int mr;
    int nb;
    int bits;
};
using LutTileFn = void (*)(const TileArgs&);

// One activation row with few nonzeros (the s-sparse latent entering the generator's first
// layer), over the same "planes" words as the tile but without tables:
//     acc[16 nb' + l] = sum_b 2^b S_b(col 16 (cb0 + nb') + l),  nb' < nb,
// the tile's quantity, rewritten with p_b = 2 bit_b - 1 as
//     sum_b 2^b S_b = sum_b 2^(b+1) sum_{i: bit_b(col, idx[i]) = 1} val[i] - (2^bits - 1) xsum,
// i.e. per nonzero, plane and 16 columns one bit test and one masked add (AVX-512: vptestmd +
// vaddps{k}): 2 instructions per 16 products against the LUT's 2 per 64, but over the nonzeros
// only instead of every reduction entry.
struct SparseRowArgs {
    const int32_t* idx;  // reduction indices of the nonzeros
    const float* val;    // their values
    int64_t nnz;
    float xsum;          // sum_i val[i] (the driver's double sum, rounded once)
    const uint32_t* w;   // words of column block cb0; the next block at + cbstride
    int64_t cbstride;
    int nb;              // column blocks
    int bits;
    float* acc;          // nb * 16 floats
};
using SparseRowFn = void (*)(const SparseRowArgs&);

// The nonzeros of x[0..R) in order: idx[i], val[i] for i < the returned count. idx and val have
// room for R + 16 entries (a SIMD tier may store whole vectors past the count).
using GatherFn = int64_t (*)(const float* x, int64_t R, int32_t* idx, float* val);
// The scalar, branch-free gather (lut_portable.cpp), for tiers without a compress instruction.
int64_t gather_nonzeros_scalar(const float* x, int64_t R, int32_t* idx, float* val);

struct KernelSet {
    const char* isa_name;
    BuildTablesFn build_tables;
    LutTileFn tile;
    int gemm_mr;  // tile rows when M > 1 (at most kMaxTileRows)
    int gemm_nb;  // tile column blocks when M > 1 (at most kMaxTileBlocks) ...
    int gemv_nb;  // ... and when M == 1
    // The fused epilogues, compiled for the tier (csrc/epilogue.h): same arithmetic everywhere.
    EpilogueRowFn epilogue_row;
    GradRowFn grad_row;
    SparseRowFn sparse_row;  // nullptr: no sparse path in this tier (sparse inputs take the LUT)
    GatherFn gather_nonzeros;
};

// Each tier fills its set; the AVX ones exist only on x86-64 builds (QGEN_PORTABLE_ONLY drops
// them there too, which is how the non-x86 build is checked on an x86 machine).
KernelSet kernels_portable();
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(QGEN_PORTABLE_ONLY)
#define QGEN_X86 1
KernelSet kernels_avx2();
KernelSet kernels_avx512();
#endif

// ---------------------------------------------------------------------------------------------
// The integer-table path (AVX2 and AVX-512: arch/avx2/lut_i8_avx2.cpp drives either tile, the
// AVX-512 one in arch/avx512/lut_i8_avx512.cpp; entry point gemm_planes_i8)
// ---------------------------------------------------------------------------------------------
// Same signed-plane math and the same group tables T[g][i] (g = 4 consecutive k) as above, but
// each activation row's tables are rounded to int8 with one scale per row:
//     s = max_{g,i} |T[g][i]| / 127,   q[g][i] = rint(T[g][i] * (127 / max|T|))  in [-127, 127]
// (fp32 products, round half to even; antisymmetric like T), stored as q + 128 (uint8). Then
//     acc[m, n] = s_m * sum_b 2^b sum_g q_m[g][idx_b(n, g)]        (exact int32 sum, one rounding)
// replaces sum_b 2^b S_b in the exact tiers' epilogue (the zero term uses the exact sum_k x).
// Error per column: at most s/2 per group and plane, i.e. |err| <= (2^bits - 1) (K/4) s/2.
// Lookups: vpshufb, 32 columns per instruction on AVX2 (16 table bytes broadcast to both 128-bit
// lanes), 64 on AVX-512 (two adjacent 32-column blocks, broadcast to all four lanes): the same
// integer sums either way.
//
// The "nibbles" layout (repack_nibbles), for 32-column blocks and pairs of groups:
//     uint8 [C32][Q][bits][32],   C32 = ceil(N / 32), Q = ceil(K / 8)
//     byte l of [cb][q][b] = idx_b(col 32 cb + l, group 2q) | idx_b(col, group 2q + 1) << 4,
//     idx_b(col, g) = sum_{e<4} bit_b(code(col, 4 g + e)) << e
// Padding columns and k are zero bits (padded k have x = 0: T = 0, q = 0).
// Tables: uint8 [2Q][16] per row (8 bytes per k: twice x's size).
//
// The "quads" layout (repack_quads), for the VBMI/VNNI tile: 16-column blocks and chunks of 4
// groups (16 k), one byte per column, group and plane, with the group in bits 4-5:
//     uint8 [C16][Q4][bits][64],   C16 = ceil(N / 16), Q4 = ceil(K / 16)
//     byte 4 c + j of [cb][q][b] = idx_b(col 16 cb + c, group 4 q + j) + 16 j
// so that vpermb over a row's 64 table bytes of groups 4q..4q+3 looks up all 4 groups of 16
// columns, and vpdpbusd sums each column's 4 bytes (padding: idx 0, whose table entry is 0).
constexpr int kI8Cols = 32;  // columns per block of the nibbles layout
struct I8GemmArgs {
    const float* x;          // [M, K]
    int64_t M, K, N;
    const uint8_t* nibbles;  // the nibbles layout of the [N, K] codes
    int bits;
    int threads;
    int32_t* sums;           // optional [M, N]: the integer sums (tests)
    float* row_scale;        // optional [M]: s per row (tests)
    float* y;                // optional [M, N]: the epilogue's output, with a2, zc2, beta, act
    const float* a2;
    const float* zc2;
    const float* beta;
    int act;
    float slope;
    bool zmm;                // AVX-512 tiles (64 columns), else AVX2 (32)
    const uint8_t* quads;    // with zmm: the quads layout, for the VBMI/VNNI tile (else null)
};
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(QGEN_PORTABLE_ONLY)
void gemm_i8(const I8GemmArgs& a);
// mr <= 8 rows x 64 columns of integer sums, out[m * 64 + l]: columns 0..31 from the block at w0,
// 32..63 from the one at w1 (the last block's neighbour: pass w0 again, those sums are unused).
void tile_i8_avx512(int bits, const uint8_t* tab, int64_t tstride, const uint8_t* w0,
                    const uint8_t* w1, int64_t Q, int mr, int32_t* out);
// The same sums from the quads layout: `blocks` (1..4) 16-column blocks from `quads`, bstride
// bytes apart (missing ones repeat the last; their sums are unused); tables of Q4 chunks.
void tile_i8_vbmi(int bits, const uint8_t* tab, int64_t tstride, const uint8_t* quads,
                  int64_t bstride, int blocks, int64_t Q4, int mr, int32_t* out);
#endif

}  // namespace qgen

namespace qgen {
// Run-time instruction-set support (cpu_features.cpp): CPUID feature bits AND the OS saving the
// register state (XGETBV), so a kernel is never run where the OS would fault on its registers.
bool cpu_supports(Isa isa);
// AVX-512 VBMI and VNNI on top of the avx512 tier (vpermb, vpdpbusd: the quads tile).
bool cpu_has_vbmi_vnni();
}  // namespace qgen
