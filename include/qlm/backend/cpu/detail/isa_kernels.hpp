#pragma once
// Stamps the kernels of detail/isa_kernels.inl out once per instruction set, as
// qlm::cpu::detail::avx512::* and qlm::cpu::detail::avx2::* (see the .inl and docs/kernels.md).
#include <qlm/backend/cpu/cpu_features.hpp>
#include <qlm/backend/cpu/detail/simd_ops.hpp>
#include <qlm/backend/cpu/elementwise.hpp>
#include <qlm/backend/cpu/panel_matrix.hpp>
#include <qlm/core/detail/intrinsics_diagnostics.hpp>
#include <qlm/core/half.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#if QLM_CPU_X86
QLM_INTRINSICS_BEGIN
namespace qlm::cpu::detail::avx512 {
#define QLM_PANEL_TARGET QLM_TARGET_AVX512
#define QLM_PANEL_OPS ::qlm::cpu::detail::Avx512Ops
#include <qlm/backend/cpu/detail/isa_kernels.inl>
#undef QLM_PANEL_TARGET
#undef QLM_PANEL_OPS
}  // namespace qlm::cpu::detail::avx512
namespace qlm::cpu::detail::avx2 {
#define QLM_PANEL_TARGET QLM_TARGET_AVX2
#define QLM_PANEL_OPS ::qlm::cpu::detail::Avx2Ops
#include <qlm/backend/cpu/detail/isa_kernels.inl>
#undef QLM_PANEL_TARGET
#undef QLM_PANEL_OPS
}  // namespace qlm::cpu::detail::avx2
QLM_INTRINSICS_END
#endif
