// The Python-facing functions that bindings.cpp exposes: each checks its inputs (checks.h) and
// raises TypeError / ValueError before anything reaches a kernel.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace qgen {

namespace py = pybind11;

// repack.cpp: the layouts' sizes and the repacks.
int64_t planes_words(int64_t C, int64_t R, int bits);
int64_t nibbles_bytes(int64_t N, int64_t K, int bits);
py::array_t<uint32_t> repack_planes(const py::array& codes_a, int bits, bool transposed,
                                    int threads);
py::array_t<uint8_t> repack_nibbles(const py::array& codes_a, int bits, int threads);
int64_t quads_bytes(int64_t N, int64_t K, int bits);
py::array_t<uint8_t> repack_quads(const py::array& codes_a, int bits, int threads);

// gemm.cpp: the fp32 products (forward; input gradient, optionally through the epilogue).
py::array_t<float> gemm_planes_f32(const py::array& x_a, const py::array& words_a, int64_t N,
                                   int bits, const py::array& scale_a, const py::array& zero_a,
                                   const py::object& alpha_o, const py::object& beta_o,
                                   int act, float slope, const std::string& isa_req, int threads);
py::array_t<float> gemm_t_planes_f32(const py::array& g_a, const py::array& words_t_a, int64_t K,
                                     int bits, const py::array& scale_a, const py::array& zero_a,
                                     const std::string& isa_req, int threads,
                                     const py::object& y_o, const py::object& alpha_o, int act,
                                     float slope);

// conv.cpp: implicit-GEMM convolution over the planes of tap runs (layout in conv.cpp).
py::array_t<float> conv_planes_f32(const py::array& x_a, const py::array& words_a, int64_t N,
                                   int bits, const py::array& geometry_a,
                                   const py::array& phases_a, const py::array& runs_a,
                                   const py::object& col_scale_o, const py::object& col_zero_o,
                                   const py::object& red_scale_o, const py::object& red_zero_o,
                                   const py::object& alpha_o, const py::object& beta_o, int act,
                                   float slope, const py::object& yfwd_o,
                                   const py::object& galpha_o, int gact, float gslope,
                                   const std::string& isa_req, int threads);

// conv_pixels.cpp: per-pixel (transposed) convolution with col2im / im2col fused.
py::array_t<float> conv_pixels_f32(const py::array& x_a, const py::array& words_a, int64_t N,
                                   int bits, const py::array& scale_a, const py::array& zero_a,
                                   const py::array& geometry_a, const py::object& alpha_o,
                                   const py::object& beta_o, int act, float slope,
                                   const std::string& isa_req, int threads);
py::array_t<float> conv_pixels_t_f32(const py::array& g_a, const py::array& words_t_a,
                                     int64_t C, int bits, const py::array& scale_a,
                                     const py::array& zero_a, const py::array& geometry_a,
                                     const py::object& y_o, const py::object& alpha_o, int act,
                                     float slope, const std::string& isa_req, int threads);

// gemm_i8.cpp: the integer-table path (AVX2, AVX-512).
py::array_t<float> gemm_planes_i8(const py::array& x_a, const py::array& nib_a, int64_t N,
                                  int bits, const py::array& scale_a, const py::array& zero_a,
                                  const py::object& alpha_o, const py::object& beta_o, int act,
                                  float slope, int threads, const std::string& isa);
py::tuple lut_i8_sums(const py::array& x_a, const py::array& nib_a, int64_t N, int bits,
                      int threads, const std::string& isa);

// solver_entry.cpp: the latent solver's selection and proximal step.
py::array_t<float> kth_largest_abs_f32(const py::array& z_a, int64_t s, int threads);
py::array_t<float> proximal_step_f32(const py::array& z_a, const py::array& g_a, float beta,
                                     int64_t s, bool project, float eps, int threads);

}  // namespace qgen
