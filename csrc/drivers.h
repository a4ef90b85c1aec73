// The threaded GEMM drivers over the "planes" layout (qgen_cpu.h): the LUT-tile driver and the
// sparse-input driver. Templates on the epilogue (and the row source), so they live in a header;
// the entry points that instantiate them are in gemm.cpp.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "qgen_cpu.h"
#include "scratch.h"
#include "select.h"
#include "thread_pool.h"

namespace qgen {

// ------------------------------------------------------------------------------------------
// The driver: acc = sum_b 2^b S_b over packed planes for M activation rows, tiled and threaded,
// each finished tile handed to `epi` while it is hot in cache.
//
// Threads: ThreadPool::parallel_for (thread_pool.h), no barrier anywhere: work items are
// claimed dynamically, each thread builds the tables it needs itself, and the caller never waits
// for a thread that took no item (an OpenMP region's closing barrier does, which on this shared,
// oversubscribed machine cost 8-100 ms per call instead of 0.5 ms).
//   by rows (M >= kRowsModeMinM, or one thread): an item is a panel of P rows; its thread builds
//     the panel's tables (<= kTableBudget) and sweeps every column group over them;
//   by columns (small M, several threads): an item is a column group (tile_nb blocks of 16);
//     every thread builds the tables of all M rows once (cheap for small M: 4 FMAs per 4 inputs
//     per row) and the weights are streamed once in total.
// Tiles are (mr <= gemm_mr rows) x (tile_nb column blocks), row blocks inner so a column
// group's weights stay in cache across them.
// ------------------------------------------------------------------------------------------
constexpr int64_t kTableBudget = 1 << 20;
constexpr int64_t kRowsModeMinM = 32;

// The activation rows a product reads: row m of a row-major X [M, R] as it is (`rows(m, tmp)`
// returns a pointer to it), or computed into the caller's R-float scratch `tmp` (the fused input
// gradient's g ⊙ act'(y) ⊙ alpha), which saves a pass over [M, R] in memory.
struct PlainRows {
    const float* X;
    int64_t R;
    const float* operator()(int64_t m, float*) const { return X + m * R; }
};

// The transposed product's rows out of a finished tile (gemm_t_planes_f32's math):
//     out[m][j] = acc[m][j] / 2 + dots[m],   m < mr, j < ncols.
inline void transposed_tile_rows(const float* acc, int64_t ldacc, int mr, int64_t ncols,
                                 const double* dots, float* out, int64_t ldout) {
    for (int m = 0; m < mr; ++m) {
        const float d = static_cast<float>(dots[m]);
        const float* ar = acc + m * ldacc;
        float* orow = out + m * ldout;
        for (int64_t j = 0; j < ncols; ++j) orow[j] = 0.5f * ar[j] + d;
    }
}

template <typename Epi, typename Rows>
void lut_gemm(const KernelSet& ks, const Rows& rows, int64_t M, int64_t R, const float* rscale,
              const float* rz, const uint32_t* words, int64_t C, int bits, int threads,
              const Epi& epi) {
    const int64_t R32 = ceil_div(R, kChunkR), C16 = ceil_div(C, kLanes);
    const int64_t tstride = R32 * kGroupsPerWord * kTableFloats;  // floats per row's tables
    const int mr_max = M == 1 ? 1 : ks.gemm_mr;
    const int tile_nb = M == 1 ? ks.gemv_nb : ks.gemm_nb;
    const int64_t ngroups = ceil_div(C16, tile_nb);
    const int64_t cbstride = R32 * bits * kLanes;

    int nt = resolve_threads(threads);
    // The LUT kernel retires ~64 weight-bit x activation products per cycle per core, so this
    // is ~0.5 M cycles (~0.15 ms) of work: below it, waking a second thread (tens of us when
    // it sleeps, a whole time slice when the machine is oversubscribed) costs more than it saves.
    if (static_cast<double>(M) * C * R * bits < 3.2e7) nt = 1;
    const bool by_rows = nt == 1 || M >= kRowsModeMinM;
    int64_t P = M;  // rows whose tables one thread holds at a time
    if (by_rows) {
        P = std::max<int64_t>(1, kTableBudget / (std::max<int64_t>(tstride, 1) * 4));
        if (nt > 1) P = std::min(P, ceil_div(M, 4 * nt));  // >= 4 items per thread
        P = std::min(std::max<int64_t>(P, mr_max), M);
        if (P > mr_max) P -= P % mr_max;
    }
    const int64_t nitems = by_rows ? ceil_div(M, P) : ngroups;
    nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, nitems)));
    // Per-slot buffers, allocated here so that nothing can throw inside a worker.
    // tables, then the row scratch, each slot's part 64-byte aligned (tstride, R16 multiples of 16)
    const int64_t R16 = ceil_div(std::max<int64_t>(R, 1), 16) * 16;
    float* const tables_base = scratch_floats(nt * P * tstride + nt * R16);
    float* const rowtmp_base = tables_base + nt * P * tstride;
    std::vector<double> dots_all(nt * P);

    std::vector<char> built(nt, 0);
    ThreadPool::instance().parallel_for(nitems, nt, [&](int64_t it, int slot) {
        float* tables = tables_base + slot * P * tstride;
        double* dots = dots_all.data() + slot * P;
        alignas(64) float acc[kMaxTileRows * kMaxTileBlocks * kLanes];
        float* rowtmp = rowtmp_base + slot * R16;
        auto build = [&](int64_t p0, int64_t pm) {
            for (int64_t i = 0; i < pm; ++i)
                dots[i] = ks.build_tables(rows(p0 + i, rowtmp), rscale, rz, R, R32,
                                          tables + i * tstride);
        };
        auto sweep = [&](int64_t p0, int64_t pm, int64_t g) {
            const int64_t cb0 = g * tile_nb, col0 = cb0 * kLanes;
            for (int64_t m0 = 0; m0 < pm; m0 += mr_max) {
                TileArgs a;
                a.tables = tables + m0 * tstride;
                a.tstride = tstride;
                a.w = words + cb0 * cbstride;
                a.cbstride = cbstride;
                a.R32 = R32;
                a.acc = acc;
                a.ldacc = tile_nb * kLanes;
                a.mr = static_cast<int>(std::min<int64_t>(mr_max, pm - m0));
                a.nb = static_cast<int>(std::min<int64_t>(tile_nb, C16 - cb0));
                a.bits = bits;
                ks.tile(a);
                epi(p0 + m0, a.mr, col0, std::min<int64_t>(a.nb * kLanes, C - col0), acc,
                    a.ldacc, dots + m0);
            }
        };
        if (by_rows) {
            const int64_t p0 = it * P, pm = std::min(P, M - p0);
            build(p0, pm);
            for (int64_t g = 0; g < ngroups; ++g) sweep(p0, pm, g);
        } else {
            if (!built[slot]) build(0, M);
            built[slot] = 1;
            sweep(0, M, it);
        }
    });
}


// ------------------------------------------------------------------------------------------
// The sparse-input driver: the forward product when at most 1/kSparseMaxDensity of x is nonzero.
// The generator's first layer reads the s-sparse latent (s = 100 of 784 entries in the MNIST
// models). The tier's sparse-row kernel (qgen_cpu.h, SparseRowArgs) spends 2 instructions per
// nonzero and 16 columns where the LUT tile spends 2 per 4 reduction entries and 16 columns, so
// it is cheaper below ~1/4 density (half the instructions at the latent's 1/8). Each thread gathers a panel of rows' nonzeros once, then walks
// the column blocks in groups (plane words <= kSparseGroupBytes) while every row of the panel
// streams its nonzeros past them: the group's words stay cached across the panel's rows, and
// each nonzero's broadcasts serve the group's 4-8 register blocks. Measured on the MNIST first
// layer (256 x 784 -> 500, s = 100, AVX-512, 1 thread): 16 / 32 / 48 KiB groups 0.52 / 0.52 /
// 0.52 ms at 1 bit, 1.81 / 1.50 / 1.50 ms at 4 bits (groups of 2 blocks at 16 KiB); row by
// row over all blocks instead refetches the whole weight from L2 for every row (~2x slower).
constexpr int64_t kSparseMaxDensity = 5;
constexpr int64_t kSparseGroupBytes = 48 << 10;
constexpr int64_t kSparsePanel = 64;

// Whether at most 1/kSparseMaxDensity of X [M, K] is nonzero (drivers.cpp).
bool sparse_enough(const float* X, int64_t M, int64_t K);

template <typename Epi>
void sparse_gemm(const KernelSet& ks, const float* X, int64_t M, int64_t K,
                 const uint32_t* words, int64_t C, int bits, int threads, const Epi& epi) {
    const int64_t R32 = ceil_div(K, kChunkR), C16 = ceil_div(C, kLanes);
    const int64_t cbstride = R32 * bits * kLanes;
    int64_t group = std::max<int64_t>(1, kSparseGroupBytes / (cbstride * 4));
    if (group >= 8) group -= group % 8;  // the AVX-512 kernel's register tiles: 8, 4, 2, 1
    else if (group >= 4) group = 4;
    int nt = resolve_threads(threads);
    // ~2 instructions per nonzero, plane and 16 columns (at most M K / kSparseMaxDensity
    // nonzeros): below ~0.5 M cycles of work one thread is faster than waking another
    if (static_cast<double>(M) * K / kSparseMaxDensity * C16 * bits * 2 < 5e5) nt = 1;
    const int64_t P = std::max<int64_t>(1, std::min<int64_t>(kSparsePanel,
                                                             ceil_div(M, 2 * int64_t{nt})));
    const int64_t nitems = ceil_div(M, P);
    nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, nitems)));
    const int64_t Kp = K + kLanes;  // room for the gather's whole-vector stores
    // per slot: the panel's nonzeros (indices, values, counts, sums) and accumulators; allocated
    // here so that nothing can throw inside a worker
    float* const val_base = scratch_floats(nt * P * (Kp + C16 * kLanes));
    float* const acc_base = val_base + nt * P * Kp;
    int32_t* const idx_base = scratch_ints(nt * P * Kp);
    std::vector<int64_t> nnz_all(nt * P);
    std::vector<double> sum_all(nt * P);
    ThreadPool::instance().parallel_for(nitems, nt, [&](int64_t it, int slot) {
        const int64_t m0 = it * P, pm = std::min(P, M - m0);
        int32_t* idx = idx_base + slot * P * Kp;
        float* val = val_base + slot * P * Kp;
        int64_t* nnz = nnz_all.data() + slot * P;
        double* sum = sum_all.data() + slot * P;
        float* acc = acc_base + slot * P * C16 * kLanes;
        for (int64_t p = 0; p < pm; ++p) {
            nnz[p] = ks.gather_nonzeros(X + (m0 + p) * K, K, idx + p * Kp, val + p * Kp);
            double s = 0.0;  // zeros add nothing: the sum over the nonzeros is the row sum
            for (int64_t i = 0; i < nnz[p]; ++i) s += static_cast<double>(val[p * Kp + i]);
            sum[p] = s;
        }
        for (int64_t cb0 = 0; cb0 < C16; cb0 += group)
            for (int64_t p = 0; p < pm; ++p) {
                SparseRowArgs a;
                a.idx = idx + p * Kp;
                a.val = val + p * Kp;
                a.nnz = nnz[p];
                a.xsum = static_cast<float>(sum[p]);
                a.w = words + cb0 * cbstride;
                a.cbstride = cbstride;
                a.nb = static_cast<int>(std::min(group, C16 - cb0));
                a.bits = bits;
                a.acc = acc + p * C16 * kLanes + cb0 * kLanes;
                ks.sparse_row(a);
            }
        for (int64_t p = 0; p < pm; ++p)
            epi(m0 + p, 1, 0, C, acc + p * C16 * kLanes, C16 * kLanes, sum + p);
    });
}

}  // namespace qgen
