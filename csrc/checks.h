// Input checks of the entry points: dtype, rank, shape and contiguity of every array, raised as
// TypeError / ValueError before anything reaches a kernel.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "qgen_cpu.h"

namespace qgen {

namespace py = pybind11;

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

// An optional float32 argument: None -> nullptr, else checked like `checked`.
inline const float* optional_f32(const py::object& o, const char* name,
                                 std::initializer_list<int64_t> shape) {
    if (o.is_none()) return nullptr;
    if (!py::isinstance<py::array>(o))
        throw py::type_error(std::string(name) + " must be a float32 numpy array or None");
    return checked<float>(o.cast<py::array>(), name, shape, "float32");
}

inline const float* optional_vec(const py::object& o, const char* name, int64_t n) {
    return optional_f32(o, name, {n});
}

inline void check_bits(int bits) {
    if (bits < 1 || bits > 4) throw py::value_error("bits must be in 1..4, got " +
                                                    std::to_string(bits));
}

}  // namespace qgen
