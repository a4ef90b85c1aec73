// Per-pixel packed convolutions for layers with few channels on one side (the DCGAN's 64 -> 3
// output layer): `conv_pixels_f32` and its input gradient `conv_pixels_t_f32`, the GEMM of the
// per-pixel view with col2im / im2col fused into the LUT driver's epilogue / row source, so the
// columns are never in memory. (csrc/conv.cpp puts output channels in SIMD lanes: with 3 of
// them, 13 of every 16 lanes would be padding; here the lanes hold taps x channels.)
//
// The math. A transposed convolution (a stride-1 conv2d is one too, of its flipped kernel, with
// padding d(k-1) - p: engine/packed_modules.py's "conv2d_per_pixel" view) with the tap-major
// view W [kh kw N, C] (row j = (ky kw + kx) N + n; qgen_cpu.h's planes, scale and zero per row):
//     acc[b, oy, ox, n] = sum over input pixels (iy, ix) and taps (ky, kx) with
//                         oy = iy s - p + ky d, ox = ix s - p + kx d of
//                         sum_c x[b, iy, ix, c] W[(ky kw + kx) N + n, c]
//     out = act(alpha[n] acc + beta[n])
// Forward: per image, one LUT GEMM of its H W pixel rows by W; each finished tile's columns are
// added into an fp32 [OH, OW, N] accumulator at their output pixels (taps outside are dropped),
// then the epilogue runs over it. Input gradient: grad_x[b, iy, ix, :] = r @ W with
// r[(ky kw + kx) N + n] = h[b, oy, ox, n] (0 outside the output), h = g alpha act'(y): the row
// source of the LUT driver gathers r per pixel (the transposed planes, as gemm_t_planes_f32).
// Threads: one image per work item, its GEMM on that thread.
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
#include "select.h"
#include "thread_pool.h"

namespace qgen {
namespace {

// geometry int64 [12]: H, W, OH, OW, kh, kw, sy, sx, py, px, dy, dx
struct PixelGeometry {
    int64_t H, W, OH, OW, kh, kw, sy, sx, py, px, dy, dx;
    // where tap (ky, kx) of input pixel (iy, ix) lands, or false outside the output
    bool target(int64_t iy, int64_t ix, int64_t ky, int64_t kx, int64_t* oy, int64_t* ox) const {
        *oy = iy * sy - py + ky * dy;
        *ox = ix * sx - px + kx * dx;
        return *oy >= 0 && *oy < OH && *ox >= 0 && *ox < OW;
    }
};

PixelGeometry read_geometry(const py::array& a) {
    const int64_t* g = checked<int64_t>(a, "geometry", {12}, "int64");
    PixelGeometry p{g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11]};
    if (p.H < 0 || p.W < 0 || p.OH < 0 || p.OW < 0 || p.kh < 1 || p.kw < 1 || p.sy < 1 ||
        p.sx < 1 || p.dy < 1 || p.dx < 1)
        throw py::value_error("geometry: sizes must be >= 0, kernel, stride, dilation >= 1");
    return p;
}

}  // namespace

py::array_t<float> conv_pixels_f32(const py::array& x_a, const py::array& words_a, int64_t N,
                                   int bits, const py::array& scale_a, const py::array& zero_a,
                                   const py::array& geometry_a, const py::object& alpha_o,
                                   const py::object& beta_o, int act, float slope,
                                   const std::string& isa_req, int threads) {
    check_bits(bits);
    const PixelGeometry g = read_geometry(geometry_a);
    const float* x = checked<float>(x_a, "x", {-1, g.H, g.W, -1}, "float32");
    const int64_t B = x_a.shape(0), C = x_a.shape(3);
    if (N < 0) throw py::value_error("N must be non-negative");
    const int64_t cols = g.kh * g.kw * N;
    const uint32_t* words = checked<uint32_t>(words_a, "words", {planes_words(cols, C, bits)},
                                              "uint32");
    const float* scale = checked<float>(scale_a, "scale", {cols}, "float32");
    const float* zero = checked<float>(zero_a, "zero", {cols}, "float32");
    const float* alpha = optional_vec(alpha_o, "alpha", N);
    const float* beta = optional_vec(beta_o, "beta", N);
    if (act < kNone || act > kTanh) throw py::value_error("unknown activation code");
    const KernelSet ks = kernel_set(resolve_isa(isa_req));
    py::array_t<float> out({B, g.OH, g.OW, N});
    float* op = out.mutable_data();
    if (B == 0 || g.OH * g.OW * N == 0) return out;
    // the GEMM's epilogue constants per column (gemm_planes_f32), then the layer's per channel
    std::vector<float> a2(cols), zc2(cols), al(N), bt(N), none(N, 0.0f);
    for (int64_t j = 0; j < cols; ++j) {
        a2[j] = 0.5f * scale[j];
        zc2[j] = static_cast<float>((1 << bits) - 1) - 2.0f * zero[j];
    }
    for (int64_t n = 0; n < N; ++n) {
        al[n] = alpha ? alpha[n] : 1.0f;
        bt[n] = beta ? beta[n] : 0.0f;
    }
    const int nt = std::max(1, std::min<int>(resolve_threads(threads), static_cast<int>(B)));
    const int64_t plane = g.OH * g.OW * N;
    std::vector<float> accs(nt * plane);
    {
        py::gil_scoped_release release;
        ThreadPool::instance().parallel_for(B, nt, [&](int64_t b, int s) {
            float* acc_img = accs.data() + s * plane;
            std::fill(acc_img, acc_img + plane, 0.0f);
            auto scatter = [&](int64_t m0, int mr, int64_t col0, int64_t ncols, const float* acc,
                               int64_t ldacc, const double* dots) {
                for (int m = 0; m < mr; ++m) {
                    const int64_t iy = (m0 + m) / g.W, ix = (m0 + m) % g.W;
                    const float xs = static_cast<float>(dots[m]);
                    const float* row = acc + m * ldacc;
                    for (int64_t j = col0; j < col0 + ncols;) {  // one tap's channels at a time
                        const int64_t tap = j / N, n0 = j % N;
                        const int64_t n1 = std::min(N, n0 + (col0 + ncols - j));
                        int64_t oy, ox;
                        if (g.target(iy, ix, tap / g.kw, tap % g.kw, &oy, &ox)) {
                            float* dst = acc_img + (oy * g.OW + ox) * N;
                            for (int64_t n = n0; n < n1; ++n) {
                                const int64_t c = tap * N + n;
                                dst[n] += a2[c] * (row[c - col0] + zc2[c] * xs);
                            }
                        }
                        j += n1 - n0;
                    }
                }
            };
            lut_gemm(ks, PlainRows{x + b * g.H * g.W * C, C}, g.H * g.W, C, nullptr, nullptr,
                     words, cols, bits, 1, scatter);
            float* ob = op + b * plane;
            for (int64_t q = 0; q < g.OH * g.OW; ++q)
                ks.epilogue_row(acc_img + q * N, 0.0f, al.data(), none.data(), bt.data(),
                                ob + q * N, N, act, slope);
        });
    }
    return out;
}

py::array_t<float> conv_pixels_t_f32(const py::array& g_a, const py::array& words_t_a,
                                     int64_t C, int bits, const py::array& scale_a,
                                     const py::array& zero_a, const py::array& geometry_a,
                                     const py::object& y_o, const py::object& alpha_o, int act,
                                     float slope, const std::string& isa_req, int threads) {
    check_bits(bits);
    const PixelGeometry geo = read_geometry(geometry_a);
    const float* g = checked<float>(g_a, "g", {-1, geo.OH, geo.OW, -1}, "float32");
    const int64_t B = g_a.shape(0), N = g_a.shape(3);
    if (C < 0) throw py::value_error("C must be non-negative");
    const int64_t R = geo.kh * geo.kw * N;
    const uint32_t* words = checked<uint32_t>(words_t_a, "words_t", {planes_words(C, R, bits)},
                                              "uint32");
    const float* scale = checked<float>(scale_a, "scale", {R}, "float32");
    const float* zero = checked<float>(zero_a, "zero", {R}, "float32");
    const float* y = optional_f32(y_o, "y", {B, geo.OH, geo.OW, N});
    const float* alpha = optional_vec(alpha_o, "alpha", N);
    if (act < kNone || act > kTanh) throw py::value_error("unknown activation code");
    if (!y && (alpha || act != kNone))
        throw py::value_error("alpha and act need the forward output y");
    const KernelSet ks = kernel_set(resolve_isa(isa_req));
    py::array_t<float> out({B, geo.H, geo.W, C});
    float* op = out.mutable_data();
    if (B == 0 || geo.H * geo.W * C == 0) return out;
    std::vector<float> zc(R), al(N, 1.0f);
    const float mid = 0.5f * static_cast<float>((1 << bits) - 1);
    for (int64_t r = 0; r < R; ++r) zc[r] = mid - zero[r];
    if (alpha) std::copy(alpha, alpha + N, al.begin());
    const int nt = std::max(1, std::min<int>(resolve_threads(threads), static_cast<int>(B)));
    {
        py::gil_scoped_release release;
        ThreadPool::instance().parallel_for(B, nt, [&](int64_t b, int) {
            const int64_t img = b * geo.OH * geo.OW * N;
            auto gather = [&](int64_t m, float* r) -> const float* {
                const int64_t iy = m / geo.W, ix = m % geo.W;
                for (int64_t tap = 0; tap < geo.kh * geo.kw; ++tap) {
                    int64_t oy, ox;
                    float* dst = r + tap * N;
                    if (!geo.target(iy, ix, tap / geo.kw, tap % geo.kw, &oy, &ox)) {
                        std::fill(dst, dst + N, 0.0f);
                        continue;
                    }
                    const int64_t q = img + (oy * geo.OW + ox) * N;
                    if (y)
                        ks.grad_row(g + q, y + q, al.data(), dst, N, act, slope);
                    else
                        std::copy(g + q, g + q + N, dst);
                }
                return r;
            };
            float* ob = op + b * geo.H * geo.W * C;
            auto epi = [&](int64_t m0, int mr, int64_t col0, int64_t ncols, const float* acc,
                           int64_t ldacc, const double* dots) {
                transposed_tile_rows(acc, ldacc, mr, ncols, dots, ob + m0 * C + col0, C);
            };
            lut_gemm(ks, gather, geo.H * geo.W, R, scale, zc.data(), words, C, bits, 1, epi);
        });
    }
    return out;
}

}  // namespace qgen
