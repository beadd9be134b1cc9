#pragma once
// Run-time CPU feature detection and the instruction-set choice for qlm's CPU kernels.
//
// Kernels are written with intrinsics inside functions carrying __attribute__((target(...))), so a
// binary built without -march flags still runs the AVX-512 code on a CPU that has it. The best
// path is detected once (function-local static); every entry point also takes an `Isa` argument so
// tests and benchmarks can force a path (Isa::automatic = the best one this CPU supports).
#include <qlm/core/error.hpp>

#include <string>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define QLM_CPU_X86 1
#include <cpuid.h>
#include <immintrin.h>
#define QLM_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define QLM_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#else
#define QLM_CPU_X86 0
#endif

namespace qlm::cpu {

// Below this many multiply-adds a kernel runs on the calling thread: waking the pool's workers
// costs tens of microseconds on a quiet machine and milliseconds on a busy one.
inline constexpr std::size_t kParallelMinMacs = std::size_t{1} << 18;

enum class Isa {
    automatic,  // the best path this CPU supports
    scalar,     // the plain C++ reference kernels
    avx2,       // AVX2 + FMA + F16C
    avx512,     // AVX-512 F/BW/VL + VNNI
};

inline const char* isa_name(Isa isa) noexcept {
    switch (isa) {
        case Isa::automatic: return "automatic";
        case Isa::scalar: return "scalar";
        case Isa::avx2: return "avx2";
        case Isa::avx512: return "avx512";
    }
    return "?";
}

struct CpuFeatures {
    bool avx2_fma = false;  // with F16C, which every AVX2 CPU has
    bool avx512 = false;  // avx512f + bw + vl + vnni, all four
};

inline const CpuFeatures& cpu_features() noexcept {
    static const CpuFeatures features = [] {
        CpuFeatures f;
#if QLM_CPU_X86
        __builtin_cpu_init();
        unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;  // F16C by CPUID: clang 14's __builtin_cpu_supports lacks it
        const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
        f.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
        f.avx512 = f.avx2_fma && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
        return f;
    }();
    return features;
}

inline bool isa_supported(Isa isa) noexcept {
    switch (isa) {
        case Isa::automatic:
        case Isa::scalar: return true;
        case Isa::avx2: return cpu_features().avx2_fma;
        case Isa::avx512: return cpu_features().avx512;
    }
    return false;
}

inline Isa best_isa() noexcept {
    static const Isa best = isa_supported(Isa::avx512) ? Isa::avx512
                            : isa_supported(Isa::avx2) ? Isa::avx2
                                                       : Isa::scalar;
    return best;
}

// automatic -> best_isa(); an explicit request this CPU cannot run is an error, not a silent fallback.
inline Isa resolve_isa(Isa requested) {
    if (requested == Isa::automatic) return best_isa();
    if (!isa_supported(requested))
        throw invalid_argument(std::string("qlm::cpu: instruction set '") + isa_name(requested) +
                               "' was requested but this CPU does not support it (best: " + isa_name(best_isa()) + ")");
    return requested;
}

}  // namespace qlm::cpu
