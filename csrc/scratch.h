// Per-thread scratch buffers of the drivers (scratch.cpp).
#pragma once

#include <cstdint>

namespace qgen {

// A calling thread's scratch floats (64-byte aligned), kept between calls and grown on demand.
float* scratch_floats(int64_t n);
// The same for int32 (the sparse driver's nonzero indices).
int32_t* scratch_ints(int64_t n);

}  // namespace qgen
