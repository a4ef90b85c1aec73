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
// work.
void kth_largest_abs(const float* z, int64_t B, int64_t d, int64_t s, float* out, int threads);

// One row of the above: scratch holds d keys and kSelectCounts ints.
constexpr int64_t kSelectCounts = int64_t{1} << 11;
float kth_largest_abs_row(const float* row, int64_t d, int64_t s, uint32_t* keys,
                          int32_t* counts);

// Thread count for `threads` (<= 0: the OpenMP default, else every hardware thread).
int resolve_threads(int threads);

// The solver's update for a row-major z, g [B, d] (select.cpp):
//     v = z - beta * g;   v = v * [|v| >= s-th largest |v|]   (s <= 0 or s >= d: no P_s);
//     v = v / max(||v||, eps)                                  (when project)
// the same arithmetic, in the same order, as solve/proximal.py's torch path (the norm is
// accumulated in double, so it may differ from torch's in the last bit).
void proximal_step(const float* z, const float* g, float beta, int64_t B, int64_t d, int64_t s,
                   bool project, float eps, float* out, int threads);

}  // namespace qgen
