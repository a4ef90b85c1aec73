// Packed Conv2d / ConvTranspose2d as implicit GEMM on the CPU: `conv_planes_f32`, over the same
// bit-plane LUT tiles as the GEMMs (qgen_cpu.h), with no im2col and no col2im in memory.
//
// ---------------------------------------------------------------------------------------------
// The math
// ---------------------------------------------------------------------------------------------
// Activations are channels-last: x [B, H, W, C], out [B, OH, OW, N]. A weight V[n, c, ky, kx] =
// s (code - z), the scale and zero either on the output channel n ("column scale", a layer's
// forward) or on the reduction channel c ("reduction scale", the other direction: its input
// gradient). Every output pixel o of both convolutions is a sum over taps of one input pixel's
// channels:
//     out[b, o, n] = act(alpha[n] * sum_{taps t of o} sum_c x[b, in(o, t), c] V_t[n, c] + beta[n])
//     conv2d:            in((oy, ox), (ky, kx)) = (oy s - p + ky d, ox s - p + kx d)
//     conv_transpose2d:  in = ((oy + p - ky d) / s, ...), only the taps where s divides it,
// (taps outside x read 0). The transposed convolution is split into its s_h s_w output phases
// (oy mod s, ox mod s), as kernels/conv.py does: inside a phase the valid taps are fixed and the
// input pixel moves by 1 per phase pixel, a plain stride-1 convolution.
//
// The LUT trick needs a pixel's tables only (qgen_cpu.h: 16 signed sums per 4 channels), and a
// table does not depend on the output pixel or tap that reads it: each input pixel's tables are
// built ONCE per call, where im2col would copy the pixel kh*kw times. Along x, the taps of one
// tap row read consecutive input pixels (dilation 1), whose tables are consecutive in memory, so
// one LUT tile call reduces over a whole "run" of taps: reduction index r = t * Cp + c (tap t of
// the run, channel c, Cp = C rounded up to 32) over tables at pixel (iy, ix + t). A tile of mr
// output pixels of one (phase) row reads input pixels ax apart: the tile's row stride.
//
// ---------------------------------------------------------------------------------------------
// Layout and geometry (made in qgen_infer/engine/cpu_conv.py)
// ---------------------------------------------------------------------------------------------
// words: uint32, the runs' weights one after another; run j's are the "planes" layout
//     (qgen_cpu.h) of the [N, ntaps_j * Cp] matrix V_run[n, t * Cp + c] (codes 0 for c >= C),
//     at words[offset_j ...].
// Tables: float [HP][WP][Cp * 4] per image: the input zero-padded by (PT, PL) on the top/left to
//     HP x WP (padding pixels' tables are 0, so taps outside x need no test), plus one double per
//     pixel, the row term of the zero correction (sum_c x, or with a reduction scale
//     sum_c x s[c] (mid - z[c])).
// geometry int64 [8]: OH, OW, HP, WP, PT, PL, ay, ax.
// phases int64 [P, 6]: oy0, ox0, sy, sx, QH, QW: phase pixel (qy, qx) is output pixel
//     (oy0 + sy qy, ox0 + sx qx); the P = sy sx phases (same sy, sx) cover the output once.
// runs int64 [R, 5]: phase, iy0, ix0, ntaps, offset (sorted by phase): the run's tap t reads the
//     padded-table pixel (iy0 + ay qy, ix0 + ax qx + t) for phase pixel (qy, qx).
// A phase without runs (a transposed convolution whose stride exceeds its kernel) is act(beta).
//
// Epilogue (epilogue.h, as gemm_planes_f32): y = act(a2[n] (acc + zc2[n] xs) + beta[n]), xs the
// sum of the row terms of the pixels the output pixel's taps read; column scale: a2 = alpha s / 2,
// zc2 = 2^k - 1 - 2 z; reduction scale (tables of x s[c]): a2 = alpha / 2, zc2 = 2.
// Threads: one image per work item (its tables stay in cache while every output pixel reads them).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "checks.h"
#include "dispatch.h"
#include "entry_points.h"
#include "qgen_cpu.h"
#include "scratch.h"
#include "select.h"
#include "thread_pool.h"

namespace qgen {
namespace {

struct Phase {
    int64_t oy0, ox0, sy, sx, qh, qw;
};
struct Run {
    int64_t phase, iy0, ix0, ntaps, offset;
};

struct ConvProblem {
    const float* x;       // [B, H, W, C]
    const float* yfwd;    // optional [B, H, W, C]: rows are x * galpha * act'(yfwd)
    const float* galpha;  // [C] (ones without one)
    int gact;
    float gslope;
    int64_t B, H, W, C, N, Cp;
    int64_t OH, OW, HP, WP, PT, PL, ay, ax;
    std::vector<Phase> phases;
    std::vector<Run> runs;
    const uint32_t* words;
    int bits;
    const float* rscale;  // reduction scale [C] or nullptr
    const float* rz;      // mid - zero[c], or nullptr
    std::vector<float> a2, zc2, beta;
    int act;
    float slope;
    float* out;           // [B, OH, OW, N]
};

// One image: its padded tables, then every phase row in tiles of mr pixels x tile_nb blocks,
// the runs' tiles summed, then the epilogue.
void conv_image(const KernelSet& ks, const ConvProblem& p, int64_t b, float* tables, double* dots,
                float* rowtmp, float* acc, float* tmp) {
    const int64_t R32c = p.Cp / kChunkR, tpx = R32c * kGroupsPerWord * kTableFloats;
    const int64_t npx = p.HP * p.WP;
    std::fill(dots, dots + npx, 0.0);
    for (int64_t iy = 0; iy < p.HP; ++iy) {
        const int64_t sy = iy - p.PT;
        for (int64_t ix = 0; ix < p.WP; ++ix) {
            const int64_t sx = ix - p.PL, px = iy * p.WP + ix;
            float* t = tables + px * tpx;
            if (sy < 0 || sy >= p.H || sx < 0 || sx >= p.W) {
                std::memset(t, 0, sizeof(float) * tpx);
                continue;
            }
            const int64_t off = ((b * p.H + sy) * p.W + sx) * p.C;
            const float* row = p.x + off;
            if (p.yfwd) {
                ks.grad_row(row, p.yfwd + off, p.galpha, rowtmp, p.C, p.gact, p.gslope);
                row = rowtmp;
            }
            dots[px] = ks.build_tables(row, p.rscale, p.rz, p.C, R32c, t);
        }
    }
    const int mr_max = ks.gemm_mr, tile_nb = ks.gemm_nb;
    const int64_t C16 = ceil_div(p.N, kLanes), ldacc = int64_t{tile_nb} * kLanes;
    size_t r0 = 0;
    for (size_t ph = 0; ph < p.phases.size(); ++ph) {
        const Phase& f = p.phases[ph];
        size_t r1 = r0;
        while (r1 < p.runs.size() && p.runs[r1].phase == static_cast<int64_t>(ph)) ++r1;
        for (int64_t qy = 0; qy < f.qh; ++qy) {
            const int64_t oy = f.oy0 + f.sy * qy;
            for (int64_t qx0 = 0; qx0 < f.qw; qx0 += mr_max) {
                const int mr = static_cast<int>(std::min<int64_t>(mr_max, f.qw - qx0));
                double xs[kMaxTileRows] = {};
                for (size_t r = r0; r < r1; ++r) {
                    const Run& u = p.runs[r];
                    const int64_t base = (u.iy0 + p.ay * qy) * p.WP + u.ix0 + p.ax * qx0;
                    for (int m = 0; m < mr; ++m)
                        for (int64_t t = 0; t < u.ntaps; ++t) xs[m] += dots[base + p.ax * m + t];
                }
                for (int64_t cb0 = 0; cb0 < C16; cb0 += tile_nb) {
                    const int nb = static_cast<int>(std::min<int64_t>(tile_nb, C16 - cb0));
                    const int64_t col0 = cb0 * kLanes;
                    const int64_t ncols = std::min<int64_t>(int64_t{nb} * kLanes, p.N - col0);
                    if (r0 == r1)
                        for (int m = 0; m < mr; ++m)
                            std::fill(acc + m * ldacc, acc + m * ldacc + nb * kLanes, 0.0f);
                    for (size_t r = r0; r < r1; ++r) {
                        const Run& u = p.runs[r];
                        const int64_t R32 = u.ntaps * R32c;
                        const int64_t px = (u.iy0 + p.ay * qy) * p.WP + u.ix0 + p.ax * qx0;
                        TileArgs a;
                        a.tables = tables + px * tpx;
                        a.tstride = p.ax * tpx;
                        a.cbstride = R32 * p.bits * kLanes;
                        a.w = p.words + u.offset + cb0 * a.cbstride;
                        a.R32 = R32;
                        a.acc = r == r0 ? acc : tmp;
                        a.ldacc = ldacc;
                        a.mr = mr;
                        a.nb = nb;
                        a.bits = p.bits;
                        ks.tile(a);
                        if (r == r0) continue;
                        for (int m = 0; m < mr; ++m) {
                            float* dst = acc + m * ldacc;
                            const float* src = tmp + m * ldacc;
                            for (int64_t j = 0; j < int64_t{nb} * kLanes; ++j) dst[j] += src[j];
                        }
                    }
                    for (int m = 0; m < mr; ++m) {
                        const int64_t ox = f.ox0 + f.sx * (qx0 + m);
                        float* orow = p.out + ((b * p.OH + oy) * p.OW + ox) * p.N + col0;
                        ks.epilogue_row(acc + m * ldacc, static_cast<float>(xs[m]),
                                        p.a2.data() + col0, p.zc2.data() + col0,
                                        p.beta.data() + col0, orow, ncols, p.act, p.slope);
                    }
                }
            }
        }
        r0 = r1;
    }
}

void fail(const std::string& what) { throw py::value_error(what); }

}  // namespace

py::array_t<float> conv_planes_f32(const py::array& x_a, const py::array& words_a, int64_t N,
                                   int bits, const py::array& geometry_a,
                                   const py::array& phases_a, const py::array& runs_a,
                                   const py::object& col_scale_o, const py::object& col_zero_o,
                                   const py::object& red_scale_o, const py::object& red_zero_o,
                                   const py::object& alpha_o, const py::object& beta_o, int act,
                                   float slope, const py::object& yfwd_o,
                                   const py::object& galpha_o, int gact, float gslope,
                                   const std::string& isa_req, int threads) {
    check_bits(bits);
    ConvProblem p;
    p.x = checked<float>(x_a, "x", {-1, -1, -1, -1}, "float32");
    p.B = x_a.shape(0), p.H = x_a.shape(1), p.W = x_a.shape(2), p.C = x_a.shape(3);
    if (N < 0) fail("N must be non-negative");
    p.N = N;
    p.Cp = ceil_div(std::max<int64_t>(p.C, 1), kChunkR) * kChunkR;
    p.bits = bits;
    p.words = checked<uint32_t>(words_a, "words", {-1}, "uint32");
    const int64_t nwords = words_a.shape(0);
    const int64_t* geo = checked<int64_t>(geometry_a, "geometry", {8}, "int64");
    p.OH = geo[0], p.OW = geo[1], p.HP = geo[2], p.WP = geo[3], p.PT = geo[4], p.PL = geo[5];
    p.ay = geo[6], p.ax = geo[7];
    if (p.OH < 0 || p.OW < 0 || p.PT < 0 || p.PL < 0 || p.ay < 0 || p.ax < 1 ||
        p.HP < p.PT + p.H || p.WP < p.PL + p.W)
        fail("geometry: bad output size, padding or input steps");
    const int64_t* ph = checked<int64_t>(phases_a, "phases", {-1, 6}, "int64");
    const int64_t P = phases_a.shape(0);
    std::vector<char> seen;
    for (int64_t i = 0; i < P; ++i) {
        const int64_t* v = ph + 6 * i;
        Phase f{v[0], v[1], v[2], v[3], v[4], v[5]};
        if (f.sy < 1 || f.sx < 1 || f.sy != ph[2] || f.sx != ph[3] || P != f.sy * f.sx ||
            f.oy0 < 0 || f.oy0 >= f.sy || f.ox0 < 0 || f.ox0 >= f.sx ||
            f.qh != std::max<int64_t>(0, ceil_div(p.OH - f.oy0, f.sy)) ||
            f.qw != std::max<int64_t>(0, ceil_div(p.OW - f.ox0, f.sx)))
            fail("phases: each must be (oy0 < sy, ox0 < sx, sy, sx, QH, QW) covering the output");
        seen.resize(f.sy * f.sx, 0);
        if (seen[f.oy0 * f.sx + f.ox0]++) fail("phases: a phase is listed twice");
        p.phases.push_back(f);
    }
    if (P == 0 && p.OH * p.OW > 0) fail("phases: none given for a non-empty output");
    const int64_t* rn = checked<int64_t>(runs_a, "runs", {-1, 5}, "int64");
    const int64_t nruns = runs_a.shape(0);
    for (int64_t i = 0; i < nruns; ++i) {
        const int64_t* v = rn + 5 * i;
        Run u{v[0], v[1], v[2], v[3], v[4]};
        if (u.phase < 0 || u.phase >= P || (i > 0 && u.phase < rn[5 * (i - 1)]))
            fail("runs: phase index out of range or not sorted");
        const Phase& f = p.phases[u.phase];
        if (u.ntaps < 1 || u.iy0 < 0 || u.ix0 < 0 || u.offset < 0 ||
            (f.qh > 0 && u.iy0 + p.ay * (f.qh - 1) >= p.HP) ||
            (f.qw > 0 && u.ix0 + p.ax * (f.qw - 1) + u.ntaps - 1 >= p.WP))
            fail("runs: a run reads outside the padded input");
        if (u.offset + planes_words(N, u.ntaps * p.Cp, bits) > nwords)
            fail("runs: a run's weights extend past words");
        p.runs.push_back(u);
    }
    const float* cs = optional_vec(col_scale_o, "col_scale", N);
    const float* cz = optional_vec(col_zero_o, "col_zero", N);
    const float* rs = optional_vec(red_scale_o, "red_scale", p.C);
    const float* rzero = optional_vec(red_zero_o, "red_zero", p.C);
    if ((cs == nullptr) == (rs == nullptr) || (cs == nullptr) != (cz == nullptr) ||
        (rs == nullptr) != (rzero == nullptr))
        fail("give either col_scale and col_zero or red_scale and red_zero");
    const float* alpha = optional_vec(alpha_o, "alpha", N);
    const float* beta = optional_vec(beta_o, "beta", N);
    if (act < kNone || act > kTanh || gact < kNone || gact > kTanh)
        fail("unknown activation code");
    p.yfwd = optional_f32(yfwd_o, "y", {p.B, p.H, p.W, p.C});
    const float* galpha = optional_vec(galpha_o, "grad_alpha", p.C);
    if (!p.yfwd && (galpha || gact != kNone))
        fail("grad_alpha and grad_act need the forward output y");
    std::vector<float> gal(p.C, 1.0f);
    if (galpha) std::copy(galpha, galpha + p.C, gal.begin());
    p.galpha = gal.data();
    p.gact = gact;
    p.gslope = gslope;
    const float mid = 0.5f * static_cast<float>((1 << bits) - 1);
    std::vector<float> rzv;
    p.rscale = rs;
    if (rs) {
        rzv.resize(p.C);
        for (int64_t c = 0; c < p.C; ++c) rzv[c] = mid - rzero[c];
    }
    p.rz = rs ? rzv.data() : nullptr;
    // the epilogue reads whole column blocks' constants: pad them to C16 * 16
    const int64_t Npad = ceil_div(std::max<int64_t>(N, 1), kLanes) * kLanes;
    p.a2.assign(Npad, 0.0f), p.zc2.assign(Npad, 0.0f), p.beta.assign(Npad, 0.0f);
    for (int64_t n = 0; n < N; ++n) {
        const float al = alpha ? alpha[n] : 1.0f;
        p.a2[n] = 0.5f * al * (cs ? cs[n] : 1.0f);
        p.zc2[n] = cs ? static_cast<float>((1 << bits) - 1) - 2.0f * cz[n] : 2.0f;
        p.beta[n] = beta ? beta[n] : 0.0f;
    }
    p.act = act;
    p.slope = slope;
    const KernelSet ks = kernel_set(resolve_isa(isa_req));
    py::array_t<float> out({p.B, p.OH, p.OW, N});
    p.out = out.mutable_data();
    if (p.B == 0 || p.OH * p.OW == 0 || N == 0) return out;
    {
        py::gil_scoped_release release;
        const int64_t tpx = p.Cp / kChunkR * kGroupsPerWord * kTableFloats;
        const int64_t per_image = p.HP * p.WP * tpx;
        const int64_t C16f = ceil_div(std::max<int64_t>(p.C, 1), kLanes) * kLanes;
        const int64_t accf = int64_t{kMaxTileRows} * kMaxTileBlocks * kLanes;
        // per slot: tables, then the gradient row, then two accumulator tiles (all 64-byte
        // multiples), and the pixels' row terms; allocated here so nothing throws in a worker
        int nt = std::max(1, std::min<int>(resolve_threads(threads), static_cast<int>(p.B)));
        const int64_t slot = per_image + C16f + 2 * accf;
        float* const base = scratch_floats(nt * slot);
        std::vector<double> dots_all(nt * p.HP * p.WP);
        ThreadPool::instance().parallel_for(p.B, nt, [&](int64_t b, int s) {
            float* tables = base + s * slot;
            conv_image(ks, p, b, tables, dots_all.data() + s * p.HP * p.WP, tables + per_image,
                       tables + per_image + C16f, tables + per_image + C16f + accf);
        });
    }
    return out;
}

}  // namespace qgen
