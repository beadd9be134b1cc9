#pragma once
// The one place qlm includes xsimd. xsimd's avx512 math (exp's nearbyint / to_int / ldexp) is
// defined in its headers and instantiated out of line, so GCC 12's intrinsic false positive
// (see intrinsics_diagnostics.hpp) is judged at xsimd's own definitions: the include itself is
// wrapped. This holds as long as qlm is the first to include xsimd in a translation unit.
#include <qlm/core/detail/intrinsics_diagnostics.hpp>

QLM_INTRINSICS_BEGIN
#include <xsimd/xsimd.hpp>
QLM_INTRINSICS_END
