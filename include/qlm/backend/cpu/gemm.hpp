#pragma once
// The CPU GEMM front door: include this to get every kernel (see docs/kernels.md).
//   gemm_f32                 fp32 weights [n, k]
//   gemm_a8 / linear_a8      repacked quantized weights (PanelMatrix<Bits>), int8 activations
//   gemm_wo / linear_wo      repacked quantized weights, float activations (weight-only)
//   reference::*             the scalar references they are tested against
#include <qlm/backend/cpu/cpu_features.hpp>
#include <qlm/backend/cpu/gemm_f32.hpp>
#include <qlm/backend/cpu/gemm_panel.hpp>
#include <qlm/backend/cpu/panel_matrix.hpp>
#include <qlm/backend/cpu/quant_reference.hpp>
