// qgen_infer._cpu: the pybind11 bindings, nothing else. The entry points are in gemm.cpp,
// gemm_i8.cpp, conv.cpp, conv_pixels.cpp, repack.cpp and solver_entry.cpp (entry_points.h);
// the ISA choice in dispatch.cpp.
//
// Arrays cross the boundary as numpy arrays (torch CPU tensors via .numpy(), sharing memory), so
// the extension never links libtorch nor depends on its C++ ABI. Every entry point checks dtype,
// contiguity and shapes (checks.h) and raises TypeError / ValueError; no input reaches a kernel
// unchecked.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "checks.h"
#include "dispatch.h"
#include "entry_points.h"
#include "qgen_cpu.h"
#include "thread_pool.h"

namespace py = pybind11;
using namespace qgen;

namespace {

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
    m.def("quads_bytes", &quads_bytes, py::arg("n"), py::arg("k"), py::arg("bits"));
    m.def("repack_quads", &repack_quads, py::arg("codes"), py::arg("bits"),
          py::arg("threads") = 0,
          "uint8 codes [N, K] -> the VBMI/VNNI integer-table tile's quads bytes (qgen_cpu.h).");
    m.def("has_vbmi_vnni", &cpu_has_vbmi_vnni,
          "Whether this CPU has AVX-512 VBMI and VNNI (the integer tables' avx512vbmi tile).");
    m.def("gemm_planes_i8", &gemm_planes_i8, py::arg("x"), py::arg("nibbles"), py::arg("n"),
          py::arg("bits"), py::arg("scale"), py::arg("zero"), py::arg("alpha") = py::none(),
          py::arg("beta") = py::none(), py::arg("act") = 0, py::arg("slope") = 0.01f,
          py::arg("threads") = 0, py::arg("isa") = "",
          "gemm_planes_f32 with int8 activation tables (isa avx2: vpshufb, 32 columns; avx512: "
          "64; avx512vbmi: vpermb + vpdpbusd over the quads layout; rounds: see qgen_cpu.h).");
    m.def("lut_i8_sums", &lut_i8_sums, py::arg("x"), py::arg("nibbles"), py::arg("n"),
          py::arg("bits"), py::arg("threads") = 0, py::arg("isa") = "",
          "(int32 sums [M, N], row scales [M]) of the integer-table path: its exact integers.");
    m.def("kth_largest_abs_f32", &kth_largest_abs_f32, py::arg("z"), py::arg("s"),
          py::arg("threads") = 0,
          "Per row of float32 z [B, d]: the s-th largest |z| (NaN ranks above inf) -> [B].");
    m.def("proximal_step_f32", &proximal_step_f32, py::arg("z"), py::arg("g"),
          py::arg("beta"), py::arg("s"), py::arg("project"), py::arg("eps") = 1e-12f,
          py::arg("threads") = 0,
          "float32 z, g [B, d] -> P_s(z - beta g) (s = 0: no P_s), then / max(||.||, eps) "
          "per row when project.");
    m.def("conv_planes_f32", &conv_planes_f32, py::arg("x"), py::arg("words"), py::arg("n"),
          py::arg("bits"), py::arg("geometry"), py::arg("phases"), py::arg("runs"),
          py::arg("col_scale") = py::none(), py::arg("col_zero") = py::none(),
          py::arg("red_scale") = py::none(), py::arg("red_zero") = py::none(),
          py::arg("alpha") = py::none(), py::arg("beta") = py::none(), py::arg("act") = 0,
          py::arg("slope") = 0.01f, py::arg("y") = py::none(), py::arg("grad_alpha") = py::none(),
          py::arg("grad_act") = 0, py::arg("grad_slope") = 0.01f, py::arg("isa") = "",
          py::arg("threads") = 0,
          "Implicit-GEMM packed convolution over tap runs (csrc/conv.cpp): x float32 "
          "[B, H, W, C] channels-last -> [B, OH, OW, n]; given y [B, H, W, C], the rows are "
          "x * grad_alpha * grad_act'(y) (an input gradient through the epilogue).");
    m.def("conv_pixels_f32", &conv_pixels_f32, py::arg("x"), py::arg("words"), py::arg("n"),
          py::arg("bits"), py::arg("scale"), py::arg("zero"), py::arg("geometry"),
          py::arg("alpha") = py::none(), py::arg("beta") = py::none(), py::arg("act") = 0,
          py::arg("slope") = 0.01f, py::arg("isa") = "", py::arg("threads") = 0,
          "Per-pixel packed (transposed) convolution, col2im fused (csrc/conv_pixels.cpp): x "
          "float32 [B, H, W, C], words of the tap-major [kh*kw*n, C] view -> [B, OH, OW, n].");
    m.def("conv_pixels_t_f32", &conv_pixels_t_f32, py::arg("g"), py::arg("words_t"),
          py::arg("c"), py::arg("bits"), py::arg("scale"), py::arg("zero"), py::arg("geometry"),
          py::arg("y") = py::none(), py::arg("alpha") = py::none(), py::arg("act") = 0,
          py::arg("slope") = 0.01f, py::arg("isa") = "", py::arg("threads") = 0,
          "The input gradient of conv_pixels_f32, im2col fused: g float32 [B, OH, OW, n] "
          "(through the epilogue given its output y) -> [B, H, W, c].");
    m.def("gemm_t_planes_f32", &gemm_t_planes_f32, py::arg("g"), py::arg("words_t"), py::arg("k"),
          py::arg("bits"), py::arg("scale"), py::arg("zero"), py::arg("isa") = "",
          py::arg("threads") = 0, py::arg("y") = py::none(), py::arg("alpha") = py::none(),
          py::arg("act") = 0, py::arg("slope") = 0.01f,
          "g @ W for g float32 [M, N] -> [M, K]; given the forward's output y [M, N], "
          "(g * alpha * act'(y)) @ W: the input gradient through the forward's epilogue.");
}
