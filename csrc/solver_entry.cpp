// The solver's entry points: checks around select.h's radix select and proximal step.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "checks.h"
#include "entry_points.h"
#include "select.h"

namespace qgen {

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

}  // namespace qgen
