// ISA dispatch: which tier's KernelSet a call runs (dispatch.cpp).
// Order: explicit isa argument > QGEN_CPU_ISA environment variable > best supported.
#pragma once

#include <string>
#include <vector>

#include "qgen_cpu.h"

namespace qgen {

const char* isa_name(Isa isa);
// The best tier this CPU and OS support (probed once).
Isa best_isa();
// The tier a call with `requested` ("" or "auto": QGEN_CPU_ISA as it was at the first such call,
// else best) runs; raises ValueError for an unknown name or one this CPU/OS does not support.
Isa resolve_isa(const std::string& requested);
// The tier's kernels (built once per tier).
const KernelSet& kernel_set(Isa isa);
// Tiers this CPU and OS support, from "portable" up.
std::vector<std::string> supported_isas();

}  // namespace qgen
