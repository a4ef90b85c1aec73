// ISA dispatch (dispatch.h). Everything here is decided once per process: CPU support is probed
// once (cpu_features.cpp), the best tier, QGEN_CPU_ISA's tier and each tier's KernelSet are each
// built at their first use; a later change of QGEN_CPU_ISA in the process is not seen (the tests
// that set it run a subprocess), so a call never reads the environment on the hot path.
#include "dispatch.h"

#include <pybind11/pybind11.h>

#include <cstdlib>
#include <string>

namespace py = pybind11;

namespace qgen {

namespace {

Isa parse_isa(const std::string& s, const char* where) {
    if (s == "portable") return Isa::portable;
    if (s == "avx2") return Isa::avx2;
    if (s == "avx512") return Isa::avx512;
    throw py::value_error(std::string(where) + ": unknown instruction set '" + s +
                          "' (expected portable, avx2 or avx512)");
}

Isa checked_isa(Isa isa, const char* source) {
    if (!cpu_supports(isa))
        throw py::value_error(std::string(source) + " asks for '" + isa_name(isa) +
                              "', which this CPU/OS does not support (supported: best is '" +
                              isa_name(best_isa()) + "')");
    return isa;
}

}  // namespace

const char* isa_name(Isa isa) {
    return isa == Isa::avx512 ? "avx512" : isa == Isa::avx2 ? "avx2" : "portable";
}

Isa best_isa() {
    static const Isa best = [] {
        if (cpu_supports(Isa::avx512)) return Isa::avx512;
        if (cpu_supports(Isa::avx2)) return Isa::avx2;
        return Isa::portable;
    }();
    return best;
}

Isa resolve_isa(const std::string& requested) {
    if (!requested.empty() && requested != "auto")
        return checked_isa(parse_isa(requested, "isa"), "isa argument");
    // A static initialiser that throws runs again on the next call, so an invalid value raises
    // at every call rather than being half-remembered.
    static const Isa from_env = [] {
        const char* env = std::getenv("QGEN_CPU_ISA");
        if (!env || !*env || std::string(env) == "auto") return best_isa();
        return checked_isa(parse_isa(env, "QGEN_CPU_ISA"), "QGEN_CPU_ISA");
    }();
    return from_env;
}

const KernelSet& kernel_set(Isa isa) {
    // Each set is built on first use only: a tier's constructor is compiled for its ISA, so it
    // must not run on a CPU that lacks it (resolve_isa checks that first).
#if defined(QGEN_X86)
    if (isa == Isa::avx512) {
        static const KernelSet s = kernels_avx512();
        return s;
    }
    if (isa == Isa::avx2) {
        static const KernelSet s = kernels_avx2();
        return s;
    }
#endif
    (void)isa;
    static const KernelSet s = kernels_portable();
    return s;
}

std::vector<std::string> supported_isas() {
    std::vector<std::string> out;
    for (Isa i : {Isa::portable, Isa::avx2, Isa::avx512})
        if (cpu_supports(i)) out.emplace_back(isa_name(i));
    return out;
}

}  // namespace qgen
