// The integer-table path's entry points (qgen_cpu.h, "The integer-table path"): AVX2 and AVX-512
// tiles, rounds the tables. The driver itself is arch/avx2/lut_i8_avx2.cpp; the repack is in
// repack.cpp.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "checks.h"
#include "dispatch.h"
#include "entry_points.h"
#include "qgen_cpu.h"

namespace qgen {

namespace {

// The integer-table tile for `isa`: "avx512vbmi" the VBMI/VNNI tile over the quads layout, else
// as the exact kernels' tier resolves (argument > QGEN_CPU_ISA > best): AVX-512 -> the zmm
// vpshufb tile, AVX2 -> ymm; the portable tier has no integer tables.
enum class I8Tile { ymm, zmm, vbmi };

I8Tile i8_tile(const std::string& isa) {
    if (isa == "avx512vbmi") {
        if (!cpu_has_vbmi_vnni())
            throw py::value_error("isa avx512vbmi needs AVX-512 VBMI and VNNI, which this "
                                  "CPU/OS lacks");
        return I8Tile::vbmi;
    }
    const Isa tier = resolve_isa(isa);
    if (tier == Isa::portable)
        throw py::value_error("the integer-table kernels need AVX2 or AVX-512, not the portable "
                              "tier");
    return tier == Isa::avx512 ? I8Tile::zmm : I8Tile::ymm;
}

I8GemmArgs i8_args(const py::array& x_a, const py::array& w_a, int64_t N, int bits,
                   int threads, const std::string& isa) {
    check_bits(bits);
    I8GemmArgs a{};
    const I8Tile tile = i8_tile(isa);
    a.zmm = tile != I8Tile::ymm;
    a.x = checked<float>(x_a, "x", {-1, -1}, "float32");
    a.M = x_a.shape(0);
    a.K = x_a.shape(1);
    if (N < 0) throw py::value_error("N must be non-negative");
    a.N = N;
    if (tile == I8Tile::vbmi)
        a.quads = checked<uint8_t>(w_a, "quads", {quads_bytes(N, a.K, bits)}, "uint8");
    else
        a.nibbles = checked<uint8_t>(w_a, "nibbles", {nibbles_bytes(N, a.K, bits)}, "uint8");
    a.bits = bits;
    a.threads = threads;
    return a;
}

}  // namespace

// The same product as gemm_planes_f32, with the int8 tables (`nib_a`: the nibbles layout, or
// quads for isa avx512vbmi): y = act(a2 (acc + zc2 sum_k x) + beta).
py::array_t<float> gemm_planes_i8(const py::array& x_a, const py::array& nib_a, int64_t N,
                                  int bits, const py::array& scale_a, const py::array& zero_a,
                                  const py::object& alpha_o, const py::object& beta_o, int act,
                                  float slope, int threads, const std::string& isa) {
    I8GemmArgs a = i8_args(x_a, nib_a, N, bits, threads, isa);
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
        gemm_i8(a);
    }
#endif
    return y;
}

// The integer sums sum_b 2^b sum_g q[g][idx] [M, N] and the row scales s [M]: the test hook.
py::tuple lut_i8_sums(const py::array& x_a, const py::array& nib_a, int64_t N, int bits,
                      int threads, const std::string& isa) {
    I8GemmArgs a = i8_args(x_a, nib_a, N, bits, threads, isa);
    py::array_t<int32_t> sums({a.M, N});
    py::array_t<float> rs(a.M);
    a.sums = sums.mutable_data();
    a.row_scale = rs.mutable_data();
#if defined(QGEN_X86)
    if (a.M > 0) {
        py::gil_scoped_release release;
        gemm_i8(a);
    }
#endif
    return py::make_tuple(sums, rs);
}

}  // namespace qgen
