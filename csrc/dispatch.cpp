// ISA dispatch (dispatch.h). CPU support is probed once (cpu_features.cpp) and the best tier and
// each tier's KernelSet are built once; QGEN_CPU_ISA is parsed and checked once per value it
// takes (a cached resolution, re-done only if the variable changes: the Python backend resolves
// it when a backend is created, and tests change it within a process).
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
    const char* env = std::getenv("QGEN_CPU_ISA");
    if (!env || !*env || std::string(env) == "auto") return best_isa();
    // The last value seen and its resolution, per thread (no lock); an invalid value is never
    // cached, so it raises on every call, as before.
    thread_local std::string cached_env;
    thread_local Isa cached_isa = Isa::portable;
    thread_local bool cached = false;
    if (!cached || cached_env != env) {
        cached = false;
        cached_isa = checked_isa(parse_isa(env, "QGEN_CPU_ISA"), "QGEN_CPU_ISA");
        cached_env = env;
        cached = true;
    }
    return cached_isa;
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
