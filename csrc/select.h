// Row-wise selection for the hard-thresholding operator P_s of the latent solver.
#pragma once

#include <cstdint>

namespace qgen {

// out[b] = the s-th largest |z[b, j]| over j (1 <= s <= d), for a row-major z [B, d].
//
// P_s keeps the entries with |z| >= out[b]: the threshold is an element of the row, so every
// implementation that selects it exactly (this one, torch.topk, torch.kthvalue) gives the same
// mask. Magnitudes are ordered through their IEEE-754 bits with the sign cleared, which for
// non-negative floats orders like the values and ranks NaN above +inf, as torch.topk does.
// Rows are split over up to `threads` threads (<= 0: the OpenMP default) when there is enough
// work; the caller must not hold the GIL-protected Python state (pure C++).
void kth_largest_abs(const float* z, int64_t B, int64_t d, int64_t s, float* out, int threads);

}  // namespace qgen
