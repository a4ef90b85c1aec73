// qgen_infer._cpu: pybind11 bindings, ISA dispatch, repacking and the threaded GEMM drivers.
//
// Arrays cross the boundary as numpy arrays (torch CPU tensors via .numpy(), sharing memory), so
// the extension never links libtorch nor depends on its C++ ABI. Every entry point checks dtype,
// contiguity and shapes and raises TypeError / ValueError; no input reaches a kernel unchecked.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "qgen_cpu.h"
#include "select.h"
#include "thread_pool.h"

namespace py = pybind11;
using namespace qgen;

namespace {

// ------------------------------------------------------------------------------------------
// ISA selection: explicit argument > QGEN_CPU_ISA environment variable > best supported.
// ------------------------------------------------------------------------------------------
const char* isa_name(Isa isa) {
    return isa == Isa::avx512 ? "avx512" : isa == Isa::avx2 ? "avx2" : "portable";
}

Isa parse_isa(const std::string& s, const char* where) {
    if (s == "portable") return Isa::portable;
    if (s == "avx2") return Isa::avx2;
    if (s == "avx512") return Isa::avx512;
    throw py::value_error(std::string(where) + ": unknown instruction set '" + s +
                          "' (expected portable, avx2 or avx512)");
}

Isa best_isa() {
    if (cpu_supports(Isa::avx512)) return Isa::avx512;
    if (cpu_supports(Isa::avx2)) return Isa::avx2;
    return Isa::portable;
}

Isa resolve_isa(const std::string& requested) {
    Isa isa;
    const char* source;
    if (!requested.empty() && requested != "auto") {
        isa = parse_isa(requested, "isa");
        source = "isa argument";
    } else if (const char* env = std::getenv("QGEN_CPU_ISA"); env && *env &&
                                                              std::string(env) != "auto") {
        isa = parse_isa(env, "QGEN_CPU_ISA");
        source = "QGEN_CPU_ISA";
    } else {
        return best_isa();
    }
    if (!cpu_supports(isa))
        throw py::value_error(std::string(source) + " asks for '" + isa_name(isa) +
                              "', which this CPU/OS does not support (supported: best is '" +
                              isa_name(best_isa()) + "')");
    return isa;
}

KernelSet kernel_set(Isa isa) {
#if defined(QGEN_X86)
    if (isa == Isa::avx512) return kernels_avx512();
    if (isa == Isa::avx2) return kernels_avx2();
#endif
    return kernels_portable();
}

// ------------------------------------------------------------------------------------------
// Input checks
// ------------------------------------------------------------------------------------------
template <typename T>
const T* checked(const py::array& a, const char* name, std::initializer_list<int64_t> shape,
                 const char* dtype_name) {
    if (!a.dtype().is(py::dtype::of<T>()))
        throw py::type_error(std::string(name) + " must be " + dtype_name + ", got " +
                             std::string(py::str(a.dtype())));
    if (a.ndim() != static_cast<py::ssize_t>(shape.size()))
        throw py::value_error(std::string(name) + " must be " + std::to_string(shape.size()) +
                              "-D, got " + std::to_string(a.ndim()) + "-D");
    int i = 0;
    for (int64_t s : shape) {
        if (s >= 0 && a.shape(i) != s)
            throw py::value_error(std::string(name) + ": dimension " + std::to_string(i) +
                                  " must be " + std::to_string(s) + ", got " +
                                  std::to_string(a.shape(i)));
        ++i;
    }
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + " must be C-contiguous");
    return static_cast<const T*>(a.data());
}

const float* optional_vec(const py::object& o, const char* name, int64_t n) {
    if (o.is_none()) return nullptr;
    if (!py::isinstance<py::array>(o))
        throw py::type_error(std::string(name) + " must be a float32 numpy array or None");
    return checked<float>(o.cast<py::array>(), name, {n}, "float32");
}

void check_bits(int bits) {
    if (bits < 1 || bits > 4) throw py::value_error("bits must be in 1..4, got " +
                                                    std::to_string(bits));
}

int64_t planes_words(int64_t C, int64_t R, int bits) {
    return ceil_div(C, kLanes) * ceil_div(R, kChunkR) * bits * kLanes;
}

struct AlignedFree {
    void operator()(float* p) const { std::free(p); }
};
using AlignedBuf = std::unique_ptr<float[], AlignedFree>;

AlignedBuf aligned_floats(int64_t n) {
    const size_t bytes = ((static_cast<size_t>(std::max<int64_t>(n, 16)) * 4 + 63) / 64) * 64;
    float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    return AlignedBuf(p);
}

// A calling thread's scratch floats, kept between calls and grown on demand. The tables of one
// product are up to ~1 MB: allocated per call, such a block can come from mmap and go back to
// the OS on free, so a call would pay ~250 fresh page faults. Thread-local, so concurrent
// callers (the GIL is released) never share it; a product's buffers live only during its call.
// Memory: the largest product's tables stay allocated per calling thread.
float* scratch_floats(int64_t n) {
    thread_local AlignedBuf buf;
    thread_local int64_t capacity = 0;
    if (n > capacity) {
        buf.reset();
        const int64_t want = std::max<int64_t>(n, capacity + capacity / 2);
        buf = aligned_floats(want);
        capacity = want;
    }
    return buf.get();
}

// The same for int32 (the sparse driver's nonzero indices).
int32_t* scratch_ints(int64_t n) {
    thread_local std::vector<int32_t> buf;
    if (static_cast<int64_t>(buf.size()) < n) buf.resize(std::max<int64_t>(n, buf.size() * 3 / 2));
    return buf.data();
}

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

// ------------------------------------------------------------------------------------------
// Entry points
// ------------------------------------------------------------------------------------------

// codes uint8 [N, K] -> planes words for the forward (col = n, r = k) or, transposed, for the
// input gradient (col = k, r = n). Layout: qgen_cpu.h. Items are blocks of 16 columns, on the
// kernels' ThreadPool (safe in a forked child, where an OpenMP loop would never start).
py::array_t<uint32_t> repack_planes(const py::array& codes_a, int bits, bool transposed,
                                    int threads) {
    check_bits(bits);
    const uint8_t* codes = checked<uint8_t>(codes_a, "codes", {-1, -1}, "uint8");
    const int64_t N = codes_a.shape(0), K = codes_a.shape(1);
    const int64_t C = transposed ? K : N, R = transposed ? N : K;
    const int64_t C16 = ceil_div(C, kLanes), R32 = ceil_div(R, kChunkR);
    py::array_t<uint32_t> out(planes_words(C, R, bits));
    uint32_t* w = out.mutable_data();
    const uint8_t top = static_cast<uint8_t>((1 << bits) - 1);
    std::atomic<bool> bad{false};
    {
        py::gil_scoped_release release;
        std::memset(w, 0, sizeof(uint32_t) * out.size());
        ThreadPool::instance().parallel_for(C16, resolve_threads(threads), [&](int64_t cb, int) {
            bool block_bad = false;
            for (int l = 0; l < kLanes; ++l) {
                const int64_t col = cb * kLanes + l;
                if (col >= C) break;
                for (int64_t r = 0; r < R; ++r) {
                    const uint8_t c = transposed ? codes[r * K + col] : codes[col * K + r];
                    block_bad = block_bad || c > top;
                    uint32_t* base = w + (cb * R32 + r / kChunkR) * bits * kLanes + l;
                    for (int b = 0; b < bits; ++b)
                        base[b * kLanes] |= static_cast<uint32_t>((c >> b) & 1u) << (r % kChunkR);
                }
            }
            if (block_bad) bad.store(true, std::memory_order_relaxed);
        });
    }
    if (bad.load())
        throw py::value_error("codes must lie in [0, " + std::to_string(top) + "] for " +
                              std::to_string(bits) + "-bit weights");
    return out;
}

// y[m, n] = act(alpha[n] * scale[n] * sum_k x[m, k] (c[n, k] - zero[n]) + beta[n])
//         = act(a2[n] * (acc[m, n] + zc2[n] * sum_k x[m, k]) + beta[n]),
//   a2 = alpha * scale / 2, zc2 = (2^k - 1) - 2 zero  (qgen_cpu.h: c = acc-half + mid).
py::array_t<float> gemm_planes_f32(const py::array& x_a, const py::array& words_a, int64_t N,
                                   int bits, const py::array& scale_a, const py::array& zero_a,
                                   const py::object& alpha_o, const py::object& beta_o,
                                   int act, float slope, const std::string& isa_req, int threads) {
    check_bits(bits);
    const float* x = checked<float>(x_a, "x", {-1, -1}, "float32");
    const int64_t M = x_a.shape(0), K = x_a.shape(1);
    if (N < 0) throw py::value_error("N must be non-negative");
    const uint32_t* words =
        checked<uint32_t>(words_a, "words", {planes_words(N, K, bits)}, "uint32");
    const float* scale = checked<float>(scale_a, "scale", {N}, "float32");
    const float* zero = checked<float>(zero_a, "zero", {N}, "float32");
    const float* alpha = optional_vec(alpha_o, "alpha", N);
    const float* beta = optional_vec(beta_o, "beta", N);
    if (act < kNone || act > kTanh) throw py::value_error("unknown activation code");
    const KernelSet ks = kernel_set(resolve_isa(isa_req));
    py::array_t<float> y({M, N});
    float* yp = y.mutable_data();
    if (M == 0) return y;
    std::vector<float> a2(N), zc2(N), b(N);
    for (int64_t n = 0; n < N; ++n) {
        a2[n] = 0.5f * scale[n] * (alpha ? alpha[n] : 1.0f);
        zc2[n] = static_cast<float>((1 << bits) - 1) - 2.0f * zero[n];
        b[n] = beta ? beta[n] : 0.0f;
    }
    {
        py::gil_scoped_release release;
        auto epi = [&](int64_t m0, int mr, int64_t col0, int64_t ncols, const float* acc,
                       int64_t ldacc, const double* dots) {
            const float* A = a2.data() + col0;
            const float* Z = zc2.data() + col0;
            const float* B = b.data() + col0;
            for (int m = 0; m < mr; ++m)
                ks.epilogue_row(acc + m * ldacc, static_cast<float>(dots[m]), A, Z, B,
                                yp + (m0 + m) * N + col0, ncols, act, slope);
        };
        if (ks.sparse_row != nullptr && K > 0 && sparse_enough(x, M, K))
            sparse_gemm(ks, x, M, K, words, N, bits, threads, epi);
        else
            lut_gemm(ks, PlainRows{x, K}, M, K, nullptr, nullptr, words, N, bits, threads, epi);
    }
    return y;
}

// g'[m, k] = sum_n h[m, n] scale[n] (c[n, k] - zero[n])
//          = acc[m, k] / 2 + sum_n h[m, n] scale[n] (mid - zero[n]),
// with acc over the transposed planes (col = k, r = n) and the rows pre-scaled by scale[n].
// h = g, or, given the forward's output y, the gradient through its epilogue
//     h[m, n] = g[m, n] * alpha[n] * act'(y[m, n])
// (act' from the output, as in engine/backend.py's activation_grad_from_output), computed per
// row while the tables are built instead of in separate passes over [M, N].
py::array_t<float> gemm_t_planes_f32(const py::array& g_a, const py::array& words_t_a, int64_t K,
                                     int bits, const py::array& scale_a, const py::array& zero_a,
                                     const std::string& isa_req, int threads,
                                     const py::object& y_o, const py::object& alpha_o, int act,
                                     float slope) {
    check_bits(bits);
    const float* g = checked<float>(g_a, "g", {-1, -1}, "float32");
    const int64_t M = g_a.shape(0), N = g_a.shape(1);
    if (K < 0) throw py::value_error("K must be non-negative");
    const uint32_t* words =
        checked<uint32_t>(words_t_a, "words_t", {planes_words(K, N, bits)}, "uint32");
    const float* scale = checked<float>(scale_a, "scale", {N}, "float32");
    const float* zero = checked<float>(zero_a, "zero", {N}, "float32");
    const float* y = nullptr;
    if (!y_o.is_none()) {
        if (!py::isinstance<py::array>(y_o))
            throw py::type_error("y must be a float32 numpy array or None");
        y = checked<float>(y_o.cast<py::array>(), "y", {M, N}, "float32");
    }
    const float* alpha = optional_vec(alpha_o, "alpha", N);
    if (act < kNone || act > kTanh) throw py::value_error("unknown activation code");
    if (!y && (alpha || act != kNone))
        throw py::value_error("alpha and act need the forward output y");
    const KernelSet ks = kernel_set(resolve_isa(isa_req));
    py::array_t<float> out({M, K});
    float* op = out.mutable_data();
    if (M == 0) return out;
    std::vector<float> zc(N), al(N, 1.0f);
    const float mid = 0.5f * static_cast<float>((1 << bits) - 1);
    for (int64_t n = 0; n < N; ++n) zc[n] = mid - zero[n];
    if (alpha) std::copy(alpha, alpha + N, al.begin());
    {
        py::gil_scoped_release release;
        auto epi = [&](int64_t m0, int mr, int64_t col0, int64_t ncols, const float* acc,
                       int64_t ldacc, const double* dots) {
            for (int m = 0; m < mr; ++m) {
                const float d = static_cast<float>(dots[m]);
                float* orow = op + (m0 + m) * K + col0;
                const float* ar = acc + m * ldacc;
                for (int64_t j = 0; j < ncols; ++j) orow[j] = 0.5f * ar[j] + d;
            }
        };
        if (!y) {
            lut_gemm(ks, PlainRows{g, N}, M, N, scale, zc.data(), words, K, bits, threads, epi);
        } else {
            const float* A = al.data();
            auto rows = [&, act, slope](int64_t m, float* h) -> const float* {
                ks.grad_row(g + m * N, y + m * N, A, h, N, act, slope);
                return h;
            };
            lut_gemm(ks, rows, M, N, scale, zc.data(), words, K, bits, threads, epi);
        }
    }
    return out;
}

// ------------------------------------------------------------------------------------------
// The integer-table path (qgen_cpu.h, "The integer-table path"): AVX2 only, rounds the tables.
// ------------------------------------------------------------------------------------------
int64_t nibbles_bytes(int64_t N, int64_t K, int bits) {
    return ceil_div(N, 32) * ceil_div(K, 8) * bits * 32;
}

void require_avx2() {
#if defined(QGEN_X86)
    if (cpu_supports(Isa::avx2)) return;
#endif
    throw py::value_error("the integer-table kernels need AVX2, which this CPU/build lacks");
}

// codes uint8 [N, K] -> the nibbles layout; items are 32-column blocks.
py::array_t<uint8_t> repack_nibbles(const py::array& codes_a, int bits, int threads) {
    check_bits(bits);
    const uint8_t* codes = checked<uint8_t>(codes_a, "codes", {-1, -1}, "uint8");
    const int64_t N = codes_a.shape(0), K = codes_a.shape(1), Q = ceil_div(K, 8);
    py::array_t<uint8_t> out(nibbles_bytes(N, K, bits));
    uint8_t* w = out.mutable_data();
    const uint8_t top = static_cast<uint8_t>((1 << bits) - 1);
    std::atomic<bool> bad{false};
    {
        py::gil_scoped_release release;
        std::memset(w, 0, out.size());
        ThreadPool::instance().parallel_for(ceil_div(N, 32), resolve_threads(threads),
                                            [&](int64_t cb, int) {
            bool block_bad = false;
            for (int l = 0; l < 32 && cb * 32 + l < N; ++l) {
                const uint8_t* row = codes + (cb * 32 + l) * K;
                for (int64_t k = 0; k < K; ++k) {
                    const uint8_t c = row[k];
                    block_bad = block_bad || c > top;
                    const int64_t g = k / 4, q = g / 2;
                    const int shift = static_cast<int>((g % 2) * 4 + k % 4);
                    uint8_t* base = w + ((cb * Q + q) * bits) * 32 + l;
                    for (int b = 0; b < bits; ++b)
                        base[b * 32] |= static_cast<uint8_t>(((c >> b) & 1u) << shift);
                }
            }
            if (block_bad) bad.store(true, std::memory_order_relaxed);
        });
    }
    if (bad.load())
        throw py::value_error("codes must lie in [0, " + std::to_string(top) + "] for " +
                              std::to_string(bits) + "-bit weights");
    return out;
}

I8GemmArgs i8_args(const py::array& x_a, const py::array& nib_a, int64_t N, int bits,
                   int threads) {
    check_bits(bits);
    require_avx2();
    I8GemmArgs a{};
    a.x = checked<float>(x_a, "x", {-1, -1}, "float32");
    a.M = x_a.shape(0);
    a.K = x_a.shape(1);
    if (N < 0) throw py::value_error("N must be non-negative");
    a.N = N;
    a.nibbles = checked<uint8_t>(nib_a, "nibbles", {nibbles_bytes(N, a.K, bits)}, "uint8");
    a.bits = bits;
    a.threads = threads;
    return a;
}

// The same product as gemm_planes_f32, with the int8 tables: y = act(a2 (acc + zc2 sum_k x) + beta).
py::array_t<float> gemm_planes_i8(const py::array& x_a, const py::array& nib_a, int64_t N,
                                  int bits, const py::array& scale_a, const py::array& zero_a,
                                  const py::object& alpha_o, const py::object& beta_o, int act,
                                  float slope, int threads) {
    I8GemmArgs a = i8_args(x_a, nib_a, N, bits, threads);
    const float* scale = checked<float>(scale_a, "scale", {N}, "float32");
    const float* zero = checked<float>(zero_a, "zero", {N}, "float32");
    const float* alpha = optional_vec(alpha_o, "alpha", N);
    const float* beta = optional_vec(beta_o, "beta", N);
    if (act < kNone || act > kTanh) throw py::value_error("unknown activation code");
    py::array_t<float> y({a.M, N});
    std::vector<float> a2(N), zc2(N), b(N);
    for (int64_t n = 0; n < N; ++n) {
        a2[n] = 0.5f * scale[n] * (alpha ? alpha[n] : 1.0f);
        zc2[n] = static_cast<float>((1 << bits) - 1) - 2.0f * zero[n];
        b[n] = beta ? beta[n] : 0.0f;
    }
    a.y = y.mutable_data();
    a.a2 = a2.data();
    a.zc2 = zc2.data();
    a.beta = b.data();
    a.act = act;
    a.slope = slope;
#if defined(QGEN_X86)
    if (a.M > 0) {
        py::gil_scoped_release release;
        gemm_i8_avx2(a);
    }
#endif
    return y;
}

// The integer sums sum_b 2^b sum_g q[g][idx] [M, N] and the row scales s [M]: the test hook.
py::tuple lut_i8_sums(const py::array& x_a, const py::array& nib_a, int64_t N, int bits,
                      int threads) {
    I8GemmArgs a = i8_args(x_a, nib_a, N, bits, threads);
    py::array_t<int32_t> sums({a.M, N});
    py::array_t<float> rs(a.M);
    a.sums = sums.mutable_data();
    a.row_scale = rs.mutable_data();
#if defined(QGEN_X86)
    if (a.M > 0) {
        py::gil_scoped_release release;
        gemm_i8_avx2(a);
    }
#endif
    return py::make_tuple(sums, rs);
}

// thresholds[b] = s-th largest |z[b, :]| (select.h): the threshold of the hard-thresholding P_s.
py::array_t<float> kth_largest_abs_f32(const py::array& z_a, int64_t s, int threads) {
    const float* z = checked<float>(z_a, "z", {-1, -1}, "float32");
    const int64_t B = z_a.shape(0), d = z_a.shape(1);
    if (s < 1 || s > d)
        throw py::value_error("s must be in 1.." + std::to_string(d) + ", got " +
                              std::to_string(s));
    py::array_t<float> out(B);
    float* op = out.mutable_data();
    py::gil_scoped_release release;
    kth_largest_abs(z, B, d, s, op, threads);
    return out;
}

// The solver's update P_s(z - beta g), then z / ||z|| (select.h), into a new array.
py::array_t<float> proximal_step_f32(const py::array& z_a, const py::array& g_a, float beta,
                                     int64_t s, bool project, float eps, int threads) {
    const float* z = checked<float>(z_a, "z", {-1, -1}, "float32");
    const int64_t B = z_a.shape(0), d = z_a.shape(1);
    const float* g = checked<float>(g_a, "g", {B, d}, "float32");
    if (s < 0) throw py::value_error("s must be >= 0 (0: no thresholding)");
    py::array_t<float> out({B, d});
    float* op = out.mutable_data();
    py::gil_scoped_release release;
    proximal_step(z, g, beta, B, d, s, project, eps, op, threads);
    return out;
}

std::vector<std::string> supported_isas() {
    std::vector<std::string> out;
    for (Isa i : {Isa::portable, Isa::avx2, Isa::avx512})
        if (cpu_supports(i)) out.emplace_back(isa_name(i));
    return out;
}

std::string kernel_name(int bits, bool transposed, const std::string& isa_req) {
    check_bits(bits);
    return std::string(transposed ? "gemm_t_w" : "gemm_w") + std::to_string(bits) +
           "_planes_f32[" + isa_name(resolve_isa(isa_req)) + "]";
}

int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
    m.doc() = "Bit-plane LUT GEMM over packed 1..4-bit codes with fp32 activations "
              "(see csrc/qgen_cpu.h for the layout and the math).";
    m.def("supported_isas", &supported_isas,
          "Instruction sets this CPU and OS support, from 'portable' up.");
    m.def("best_isa", [] { return std::string(isa_name(best_isa())); });
    m.def("resolve_isa", [](const std::string& s) { return std::string(isa_name(resolve_isa(s))); },
          py::arg("isa") = "",
          "The ISA a call with this argument runs: the argument, else QGEN_CPU_ISA, else best.");
    m.def("kernel_name", &kernel_name, py::arg("bits"), py::arg("transposed") = false,
          py::arg("isa") = "");
    m.def("max_threads", &max_threads);
    m.def("set_use_openmp", [](bool on) { return ThreadPool::instance().set_use_openmp(on); },
          py::arg("on"),
          "Run the kernels' parallel items on an OpenMP team (True) or the extension's own "
          "workers (False); True only helps when the OpenMP runtime is the one torch uses. "
          "Returns whether OpenMP teams are now in effect (False without OpenMP).");
    m.def("uses_openmp", [] { return ThreadPool::instance().uses_openmp(); });
    m.def("pool_stats", [] {
        auto& p = ThreadPool::instance();
        return py::make_tuple(p.items_by_caller(), p.items_by_workers());
    }, "(items run by calling threads, items run by pool workers) since start: a diagnostic.");
    m.def("planes_words", &planes_words, py::arg("cols"), py::arg("red"), py::arg("bits"));
    m.def("repack_planes", &repack_planes, py::arg("codes"), py::arg("bits"),
          py::arg("transposed") = false, py::arg("threads") = 0,
          "uint8 codes [N, K] -> uint32 bit-plane words (transposed: columns are k).");
    m.def("gemm_planes_f32", &gemm_planes_f32, py::arg("x"), py::arg("words"), py::arg("n"),
          py::arg("bits"), py::arg("scale"), py::arg("zero"), py::arg("alpha") = py::none(),
          py::arg("beta") = py::none(), py::arg("act") = 0, py::arg("slope") = 0.01f,
          py::arg("isa") = "", py::arg("threads") = 0,
          "y = act(alpha * (x @ W^T) + beta), W = scale * (codes - zero); x float32 [M, K].");
    m.def("nibbles_bytes", &nibbles_bytes, py::arg("n"), py::arg("k"), py::arg("bits"));
    m.def("repack_nibbles", &repack_nibbles, py::arg("codes"), py::arg("bits"),
          py::arg("threads") = 0,
          "uint8 codes [N, K] -> the integer-table path's nibble bytes (qgen_cpu.h).");
    m.def("gemm_planes_i8", &gemm_planes_i8, py::arg("x"), py::arg("nibbles"), py::arg("n"),
          py::arg("bits"), py::arg("scale"), py::arg("zero"), py::arg("alpha") = py::none(),
          py::arg("beta") = py::none(), py::arg("act") = 0, py::arg("slope") = 0.01f,
          py::arg("threads") = 0,
          "gemm_planes_f32 with int8 activation tables (AVX2, vpshufb; rounds: see qgen_cpu.h).");
    m.def("lut_i8_sums", &lut_i8_sums, py::arg("x"), py::arg("nibbles"), py::arg("n"),
          py::arg("bits"), py::arg("threads") = 0,
          "(int32 sums [M, N], row scales [M]) of the integer-table path: its exact integers.");
    m.def("kth_largest_abs_f32", &kth_largest_abs_f32, py::arg("z"), py::arg("s"),
          py::arg("threads") = 0,
          "Per row of float32 z [B, d]: the s-th largest |z| (NaN ranks above inf) -> [B].");
    m.def("proximal_step_f32", &proximal_step_f32, py::arg("z"), py::arg("g"),
          py::arg("beta"), py::arg("s"), py::arg("project"), py::arg("eps") = 1e-12f,
          py::arg("threads") = 0,
          "float32 z, g [B, d] -> P_s(z - beta g) (s = 0: no P_s), then / max(||.||, eps) "
          "per row when project.");
    m.def("gemm_t_planes_f32", &gemm_t_planes_f32, py::arg("g"), py::arg("words_t"), py::arg("k"),
          py::arg("bits"), py::arg("scale"), py::arg("zero"), py::arg("isa") = "",
          py::arg("threads") = 0, py::arg("y") = py::none(), py::arg("alpha") = py::none(),
          py::arg("act") = 0, py::arg("slope") = 0.01f,
          "g @ W for g float32 [M, N] -> [M, K]; given the forward's output y [M, N], "
          "(g * alpha * act'(y)) @ W: the input gradient through the forward's epilogue.");
}
