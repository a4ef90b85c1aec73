// The fp32 entry points: checks, the per-column epilogue constants, then the drivers (drivers.h)
// on the tier that dispatch.h resolves.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

#include "checks.h"
#include "dispatch.h"
#include "drivers.h"
#include "entry_points.h"
#include "qgen_cpu.h"

namespace qgen {

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
    const float* y = optional_f32(y_o, "y", {M, N});
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
            transposed_tile_rows(acc, ldacc, mr, ncols, dots, op + m0 * K + col0, K);
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

}  // namespace qgen
