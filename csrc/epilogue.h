// The fused per-row epilogues of the GEMM drivers, written once in plain loops and compiled once
// per instruction-set tier: each tier's file includes this header inside its
// `#pragma GCC target(...)` region, so GCC vectorises the same source for 4, 8 or 16 lanes.
// Everything here has internal linkage (anonymous namespace): every tier gets its own copy, and
// no copy compiled for AVX-512 can be picked by the linker for a caller on an older CPU.
//
// Why per tier: the driver (drivers.h, instantiated in gemm.cpp) is compiled for the baseline x86-64 (SSE2), where the
// tanh epilogue of a 256 x 784 output cost 0.48 ms, as much as a third of the 1-bit product it
// follows; the AVX-512 copy of the same loop runs in a fraction of that.
//
// The arithmetic is IEEE single precision with no contraction (-ffp-contract=off) and no
// reassociation, so every tier produces bit-identical outputs (tests compare them exactly).
//
// A tier includes this header once, AFTER its target pragma, and includes <algorithm>, <cmath>,
// <cstring> and qgen_cpu.h (the Act codes and the function types) BEFORE the pragma, so that
// those are not compiled under it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>

#include "qgen_cpu.h"

namespace qgen {
namespace {

// tanh in plain arithmetic so that -O3 -fno-trapping-math vectorises the loop (std::tanh is a
// scalar libm call: ~40 ns each).
//   |x| < 1/8:  the odd Taylor series to x^7 (truncation < 2e-10; avoids the cancellation of
//               1 - 2/(e^2x + 1) near 0)
//   otherwise:  sign(x) (1 - 2 / (exp(2|x|) + 1)), exp by Cody-Waite reduction
//               2|x| = n ln2 + r, |r| <= ln2/2, and Cephes' degree-6 polynomial for e^r
//               (about 1 ulp); 2|x| is clamped at 88 where tanh is 1 in float anyway.
// Tested against torch.tanh in tests/test_cpu_kernels.py (relative error < 1e-6).
inline __attribute__((always_inline)) float tanh_epilogue(float x) {
    const float ax = std::fabs(x);
    const float x2 = x * x;
    const float small = x * (1.0f + x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315))));
    const float y = std::min(2.0f * ax, 88.0f);
    // round to nearest by adding and subtracting 1.5 * 2^23: plain arithmetic (std::floor would
    // need SSE4.1 on the baseline tier, and stop vectorisation there)
    const float n = (y * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = y - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = (static_cast<int32_t>(n) + 127) << 23;
    float two_n;
    std::memcpy(&two_n, &e, sizeof two_n);
    const float big = std::copysign(1.0f - 2.0f / (p * two_n + 1.0f), x);
    return ax < 0.125f ? small : big;
}

// One loop per activation so that each vectorises on its own; restrict pointers and by-value
// act/slope keep the compiler from reloading them after every store (a loop it cannot vectorise
// branches on the sign of y and mispredicts half the time).
void epilogue_row_impl(const float* __restrict acc, float xs, const float* __restrict a2,
                       const float* __restrict zc2, const float* __restrict beta,
                       float* __restrict y, int64_t n, int act, float slope) {
    switch (act) {
        case kRelu:
            for (int64_t j = 0; j < n; ++j)
                y[j] = std::max(a2[j] * (acc[j] + zc2[j] * xs) + beta[j], 0.0f);
            break;
        case kLeaky:
            for (int64_t j = 0; j < n; ++j) {
                const float v = a2[j] * (acc[j] + zc2[j] * xs) + beta[j];
                y[j] = v > 0.0f ? v : v * slope;
            }
            break;
        case kTanh:
            for (int64_t j = 0; j < n; ++j)
                y[j] = tanh_epilogue(a2[j] * (acc[j] + zc2[j] * xs) + beta[j]);
            break;
        default:
            for (int64_t j = 0; j < n; ++j) y[j] = a2[j] * (acc[j] + zc2[j] * xs) + beta[j];
    }
}

void grad_row_impl(const float* __restrict g, const float* __restrict y,
                   const float* __restrict alpha, float* __restrict h, int64_t n, int act,
                   float slope) {
    switch (act) {
        case kRelu:
            for (int64_t j = 0; j < n; ++j) h[j] = y[j] > 0.0f ? g[j] * alpha[j] : 0.0f;
            break;
        case kLeaky:
            for (int64_t j = 0; j < n; ++j) h[j] = g[j] * alpha[j] * (y[j] > 0.0f ? 1.0f : slope);
            break;
        case kTanh:
            for (int64_t j = 0; j < n; ++j) h[j] = g[j] * alpha[j] * (1.0f - y[j] * y[j]);
            break;
        default:
            for (int64_t j = 0; j < n; ++j) h[j] = g[j] * alpha[j];
    }
}

}  // namespace
}  // namespace qgen
