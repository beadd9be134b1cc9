#pragma once
// GCC 12's AVX-512 intrinsic headers build their "undefined" vectors as `__m512i __Y = __Y;`
// (_mm512_undefined_*). Once such an intrinsic is inlined into optimised code (qlm's own AVX-512
// kernels, or xsimd's avx512bw exp / nearbyint / to_int / ldexp under -march=native on an AVX-512
// machine), GCC 12 reports the self-initialisation as -Wuninitialized / -Wmaybe-uninitialized in
// the compiler's own header: a false positive fixed in GCC 13 (PR 105593). With -Werror it breaks
// the build on AVX-512 machines only.
//
// Wrap exactly the code that inlines those intrinsics in QLM_INTRINSICS_BEGIN / QLM_INTRINSICS_END:
// the two diagnostics are ignored there, only on GCC < 13, and stay errors everywhere else in qlm.
// GCC 12 honours a diagnostic pragma at any location of the inlining stack, so wrapping the qlm
// function that calls xsimd is enough; the header's location alone is never the one that counts.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#define QLM_INTRINSICS_BEGIN                                   \
    _Pragma("GCC diagnostic push")                             \
    _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")      \
    _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define QLM_INTRINSICS_END _Pragma("GCC diagnostic pop")
#else
#define QLM_INTRINSICS_BEGIN
#define QLM_INTRINSICS_END
#endif
