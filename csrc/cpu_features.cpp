// Run-time CPU feature detection for the ISA dispatch (x86-64: CPUID + XGETBV; elsewhere only the
// portable tier exists). Detected once, on first use.
#include "qgen_cpu.h"

#if defined(QGEN_X86)
#include <cpuid.h>
#endif

namespace qgen {

#if defined(QGEN_X86)
namespace {

// XCR0: which register states the OS saves on context switch. Read with inline asm so this file
// needs no -mxsave.
uint64_t read_xcr0() {
    uint32_t lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (static_cast<uint64_t>(hi) << 32) | lo;
}

struct Features {
    bool avx2_fma = false;
    bool avx512 = false;
    bool vbmi_vnni = false;  // avx512 + AVX512_VBMI + AVX512_VNNI
};

Features detect() {
    Features f;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12);
    if (!(osxsave && avx)) return f;
    const uint64_t xcr0 = read_xcr0();
    const bool os_ymm = (xcr0 & 0x6) == 0x6;     // SSE + AVX state
    const bool os_zmm = (xcr0 & 0xE6) == 0xE6;   // + opmask, ZMM_Hi256, Hi16_ZMM
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
    const bool avx2 = b & (1u << 5);
    const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17);
    const bool avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
    f.avx2_fma = os_ymm && avx2 && fma;
    f.avx512 = f.avx2_fma && os_zmm && avx512f && avx512dq && avx512bw && avx512vl;
    f.vbmi_vnni = f.avx512 && (c & (1u << 1)) && (c & (1u << 11));
    return f;
}

const Features& features() {
    static const Features f = detect();  // CPUID traps to the hypervisor in a VM: detect once
    return f;
}

}  // namespace

bool cpu_supports(Isa isa) {
    const Features& f = features();
    switch (isa) {
        case Isa::portable: return true;
        case Isa::avx2: return f.avx2_fma;
        case Isa::avx512: return f.avx512;
    }
    return false;
}

bool cpu_has_vbmi_vnni() { return features().vbmi_vnni; }
#else
bool cpu_supports(Isa isa) { return isa == Isa::portable; }
bool cpu_has_vbmi_vnni() { return false; }
#endif

}  // namespace qgen
