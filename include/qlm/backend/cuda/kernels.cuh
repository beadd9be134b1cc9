#pragma once
// Definitions of the launchers declared in launch.hpp, and their kernels (detail/*.cuh). Compile
// this header in exactly one nvcc translation unit of a program (cmake/cuda/qlm_cuda_kernels.cu,
// the qlm::cuda_kernels library): the launchers are ordinary external functions, so host code
// built by any compiler links against them.
//
// Every launcher checks its arguments on the host (throwing qlm::shape_error / invalid_argument),
// returns at once for empty work, picks the vectorised form of a kernel when sizes and pointers
// allow 16-byte accesses, launches on `stream` and checks the launch (qlm::cuda_error).
#include <qlm/backend/cuda/detail/attention.cuh>
#include <qlm/backend/cuda/detail/common.cuh>
#include <qlm/backend/cuda/detail/elementwise.cuh>
#include <qlm/backend/cuda/detail/gemm.cuh>
#include <qlm/backend/cuda/detail/gemv.cuh>

namespace qlm::cuda {

namespace detail {

inline constexpr int kElementwiseThreads = 256;
inline constexpr int kGemvMaxRows = 8;

// The quantized weight's invariants the kernels rely on (see QuantWeightView and the 32-code
// halves of core/packed_matrix.hpp / quant/scheme.hpp).
inline void check_weight(const QuantWeightView& w, const char* who) {
    if (w.bits != 3 && w.bits != 4 && w.bits != 8)
        fail_argument(who, "the GPU runs 3-, 4- and 8-bit weights, found " + std::to_string(w.bits) + " bits");
    if (w.n <= 0 || w.k <= 0) fail_shape(who, "weight shape [" + std::to_string(w.n) + ", " + std::to_string(w.k) + "] is empty");
    require_pointers(who, {w.codes, w.scales});
    if (w.bits != 8 && w.k % 64 != 0)
        fail_shape(who, std::to_string(w.bits) + "-bit weights need k to be a multiple of 64, found " + std::to_string(w.k));
    if (w.group_size <= 0 || w.k % w.group_size != 0 || (w.group_size != w.k && w.group_size % 32 != 0))
        fail_shape(who, "group size " + std::to_string(w.group_size) + " must be k (" + std::to_string(w.k) +
                            ") or a multiple of 32 that divides it");
    const long long packed = w.bits == 8 ? w.k : static_cast<long long>(w.k) / 64 * 8 * w.bits;  // 8 * bits bytes a block
    if (w.row_bytes < packed)
        fail_shape(who, "row_bytes " + std::to_string(w.row_bytes) + " is below the packed row size " + std::to_string(packed));
    const int vector = w.bits == 3 ? 8 : 16;  // the block loads of 3- and 4-bit rows
    if (w.bits != 8 && (w.row_bytes % vector != 0 || reinterpret_cast<std::uintptr_t>(w.codes) % vector != 0))
        fail_argument(who, std::to_string(w.bits) + "-bit codes and row_bytes must be " + std::to_string(vector) + "-byte aligned");
}

inline void check_linear(const void* x, int m, const QuantWeightView& w, float* y, const char* who) {
    check_weight(w, who);
    require_non_negative(who, {m});
    if (m > 0) require_pointers(who, {x, y});
}

template <int Bits, int M>
void launch_gemv_weight_only(const float* x, int m, const QuantWeightView& w, const float* bias, float* y, cudaStream_t stream) {
    const unsigned grid = static_cast<unsigned>((w.n + kGemvBlockRows - 1) / kGemvBlockRows);
    const bool vec_x = w.k % 4 == 0 && aligned16(x);
    gemv_weight_only_kernel<Bits, M><<<grid, kGemvWarps * 32, 0, stream>>>(x, m, w, bias, vec_x, ragged_rows(w), y);
}

template <int Bits, int M>
void launch_gemv_int8(const std::int8_t* xq, const float* x_scale, int m, const QuantWeightView& w, const float* bias, float* y,
                      cudaStream_t stream) {
    const unsigned grid = static_cast<unsigned>((w.n + kGemvBlockRows - 1) / kGemvBlockRows);
    const bool vec_x = w.k % 16 == 0 && aligned16(xq);
    gemv_int8_kernel<Bits, M><<<grid, kGemvWarps * 32, 0, stream>>>(xq, x_scale, m, w, bias, vec_x, ragged_rows(w), y);
}

inline dim3 gemm_grid(int m, int n) {
    return dim3(static_cast<unsigned>((n + kGemmTile - 1) / kGemmTile), static_cast<unsigned>((m + kGemmTile - 1) / kGemmTile));
}

template <int Bits>
void linear_weight_only_bits(const float* x, int m, const QuantWeightView& w, const float* bias, float* y, cudaStream_t stream) {
    if (m <= 1) return launch_gemv_weight_only<Bits, 1>(x, m, w, bias, y, stream);
    if (m <= 2) return launch_gemv_weight_only<Bits, 2>(x, m, w, bias, y, stream);
    if (m <= 4) return launch_gemv_weight_only<Bits, 4>(x, m, w, bias, y, stream);
    if (m <= kGemvMaxRows) return launch_gemv_weight_only<Bits, kGemvMaxRows>(x, m, w, bias, y, stream);
    const bool vec_x = w.k % 4 == 0 && aligned16(x);
    gemm_weight_only_kernel<Bits><<<gemm_grid(m, w.n), kGemmF32Threads, 0, stream>>>(x, m, w, bias, vec_x, ragged_rows(w), y);
}

template <int Bits>
void linear_int8_bits(const std::int8_t* xq, const float* x_scale, int m, const QuantWeightView& w, const float* bias, float* y,
                      cudaStream_t stream) {
    if (m <= 1) return launch_gemv_int8<Bits, 1>(xq, x_scale, m, w, bias, y, stream);
    if (m <= 2) return launch_gemv_int8<Bits, 2>(xq, x_scale, m, w, bias, y, stream);
    if (m <= 4) return launch_gemv_int8<Bits, 4>(xq, x_scale, m, w, bias, y, stream);
    if (m <= kGemvMaxRows) return launch_gemv_int8<Bits, kGemvMaxRows>(xq, x_scale, m, w, bias, y, stream);
    const bool vec_x = w.k % 16 == 0 && aligned16(xq);
    gemm_int8_kernel<Bits><<<gemm_grid(m, w.n), kGemmI8Threads, 0, stream>>>(xq, x_scale, m, w, bias, vec_x, ragged_rows(w), y);
}

inline void layer_norm_launch(const float* x, const std::int32_t* row_ids, const float* weight, const float* bias, int rows, int cols,
                              float eps, float* y, cudaStream_t stream, const char* who) {
    require_non_negative(who, {rows, cols});
    if (rows == 0) return;
    if (cols == 0) fail_shape(who, "rows of 0 columns");
    require_pointers(who, {x, weight, bias, y});
    if (!(eps >= 0.0f)) fail_argument(who, "epsilon must be >= 0");
    const bool vec = cols % 4 == 0 && aligned16(x) && aligned16(y) && aligned16(weight) && aligned16(bias);
    const int threads = row_threads(vec ? cols / 4 : cols);
    if (vec) layer_norm_kernel<true><<<static_cast<unsigned>(rows), threads, 0, stream>>>(x, row_ids, weight, bias, cols, eps, y);
    else layer_norm_kernel<false><<<static_cast<unsigned>(rows), threads, 0, stream>>>(x, row_ids, weight, bias, cols, eps, y);
    check_launch(who);
}

}  // namespace detail

void layer_norm(const float* x, const float* weight, const float* bias, int rows, int cols, float eps, float* y, cudaStream_t stream) {
    detail::layer_norm_launch(x, nullptr, weight, bias, rows, cols, eps, y, stream, "layer_norm");
}

void layer_norm_rows(const float* x, const std::int32_t* row_ids, const float* weight, const float* bias, int rows, int cols, float eps,
                     float* y, cudaStream_t stream) {
    if (rows > 0) detail::require_pointers("layer_norm_rows", {row_ids});
    detail::layer_norm_launch(x, row_ids, weight, bias, rows, cols, eps, y, stream, "layer_norm_rows");
}

void gelu(float* x, int rows, int cols, bool exact, const float* col_scale, cudaStream_t stream) {
    using namespace detail;
    require_non_negative("gelu", {rows, cols});
    const std::size_t n = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols);
    if (n == 0) return;
    require_pointers("gelu", {x});
    const bool vec = cols % 4 == 0 && aligned16(x) && (!col_scale || aligned16(col_scale));
    if (vec) gelu_kernel<true><<<grid_for(n / 4, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(x, n, cols, exact, col_scale);
    else gelu_kernel<false><<<grid_for(n, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(x, n, cols, exact, col_scale);
    check_launch("gelu");
}

void add_inplace(float* y, const float* x, std::size_t n, cudaStream_t stream) {
    using namespace detail;
    if (n == 0) return;
    require_pointers("add_inplace", {y, x});
    if (aligned16(y) && aligned16(x))
        add_inplace_kernel<true><<<grid_for(n / 4 + 1, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(y, x, n);
    else
        add_inplace_kernel<false><<<grid_for(n, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(y, x, n);
    check_launch("add_inplace");
}

void add_bias(float* y, const float* bias, int m, int n, cudaStream_t stream) {
    using namespace detail;
    require_non_negative("add_bias", {m, n});
    const std::size_t total = static_cast<std::size_t>(m) * static_cast<std::size_t>(n);
    if (total == 0) return;
    require_pointers("add_bias", {y, bias});
    if (n % 4 == 0 && aligned16(y) && aligned16(bias))
        add_bias_kernel<true><<<grid_for(total / 4, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(y, bias, total, n);
    else
        add_bias_kernel<false><<<grid_for(total, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(y, bias, total, n);
    check_launch("add_bias");
}

void embed(const std::int32_t* tokens, const std::int32_t* positions, int rows, const float* wte, const float* wpe, int cols, float* x,
           cudaStream_t stream) {
    using namespace detail;
    require_non_negative("embed", {rows, cols});
    if (rows == 0 || cols == 0) return;
    require_pointers("embed", {tokens, positions, wte, wpe, x});
    const bool vec = cols % 4 == 0 && aligned16(wte) && aligned16(wpe) && aligned16(x);
    const int threads = row_threads(vec ? cols / 4 : cols);
    if (vec) embed_kernel<true><<<static_cast<unsigned>(rows), threads, 0, stream>>>(tokens, positions, wte, wpe, cols, x);
    else embed_kernel<false><<<static_cast<unsigned>(rows), threads, 0, stream>>>(tokens, positions, wte, wpe, cols, x);
    check_launch("embed");
}

void gather_columns(const float* x, int m, int k_in, const std::int32_t* order, int k_out, float* out, cudaStream_t stream) {
    using namespace detail;
    require_non_negative("gather_columns", {m, k_in, k_out});
    const std::size_t total = static_cast<std::size_t>(m) * static_cast<std::size_t>(k_out);
    if (total == 0) return;
    if (k_in == 0) fail_shape("gather_columns", "gathering from rows of 0 columns");
    require_pointers("gather_columns", {x, order, out});
    gather_columns_kernel<<<grid_for(total, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(x, k_in, order, k_out, total, out);
    check_launch("gather_columns");
}

namespace detail {
template <class Half2>
void to_half_launch(const float* x, std::size_t n, void* out, cudaStream_t stream, const char* who) {
    if (n == 0) return;
    require_pointers(who, {x, out});
    if (aligned16(x) && reinterpret_cast<std::uintptr_t>(out) % 8 == 0)
        to_half_kernel<Half2, true><<<grid_for(n / 4 + 1, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(x, n, out);
    else
        to_half_kernel<Half2, false><<<grid_for(n, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(x, n, out);
    check_launch(who);
}
}  // namespace detail

void to_fp16(const float* x, std::size_t n, void* out, cudaStream_t stream) { detail::to_half_launch<__half2>(x, n, out, stream, "to_fp16"); }
void to_bf16(const float* x, std::size_t n, void* out, cudaStream_t stream) {
    detail::to_half_launch<__nv_bfloat162>(x, n, out, stream, "to_bf16");
}

void store_kv(const float* qkv, int rows, int cols, float* const* key_rows, float* const* value_rows, cudaStream_t stream) {
    using namespace detail;
    require_non_negative("store_kv", {rows, cols});
    if (rows == 0 || cols == 0) return;
    require_pointers("store_kv", {qkv, key_rows, value_rows});
    const int threads = row_threads(cols % 4 == 0 ? cols / 4 : cols);
    store_kv_kernel<<<static_cast<unsigned>(rows), threads, 0, stream>>>(qkv, cols, key_rows, value_rows);
    check_launch("store_kv");
}

void attention(const float* qkv, int rows, int cols, int n_head, const float* const* key_rows, const float* const* value_rows,
               const AttentionRow* rows_info, int max_keys, float scale, float* out, cudaStream_t stream) {
    using namespace detail;
    constexpr const char* who = "attention";
    require_non_negative(who, {rows, cols});
    if (rows == 0) return;
    if (n_head <= 0 || cols <= 0 || cols % n_head != 0)
        fail_shape(who, std::to_string(cols) + " columns do not split into " + std::to_string(n_head) + " heads");
    const int head_dim = cols / n_head;
    if (head_dim % 4 != 0 || head_dim > kAttentionMaxHeadDim)
        fail_shape(who, "head_dim must be a multiple of 4 and at most " + std::to_string(kAttentionMaxHeadDim) + ", found " +
                            std::to_string(head_dim));
    if (max_keys < 1) fail_shape(who, "max_keys must be at least 1 (a causal row sees itself), found " + std::to_string(max_keys));
    if (n_head > 65535) fail_shape(who, "at most 65535 heads");
    require_pointers(who, {qkv, key_rows, value_rows, rows_info, out});
    if (!aligned16(qkv)) fail_argument(who, "qkv must be 16-byte aligned");
    attention_kernel<<<dim3(static_cast<unsigned>(rows), static_cast<unsigned>(n_head)), kAttentionThreads, 0, stream>>>(
        qkv, cols, head_dim, key_rows, value_rows, rows_info, scale, out);
    check_launch(who);
}

void quantize_rows_int8(const float* x, int m, int k, float static_scale, std::int8_t* q, float* scale, cudaStream_t stream) {
    using namespace detail;
    require_non_negative("quantize_rows_int8", {m, k});
    if (m == 0) return;
    if (k == 0) fail_shape("quantize_rows_int8", "rows of 0 columns");
    require_pointers("quantize_rows_int8", {x, q, scale});
    const bool vec = k % 4 == 0 && aligned16(x) && reinterpret_cast<std::uintptr_t>(q) % 4 == 0;
    const int threads = row_threads(vec ? k / 4 : k);
    if (vec) quantize_rows_int8_kernel<true><<<static_cast<unsigned>(m), threads, 0, stream>>>(x, k, static_scale, q, scale);
    else quantize_rows_int8_kernel<false><<<static_cast<unsigned>(m), threads, 0, stream>>>(x, k, static_scale, q, scale);
    check_launch("quantize_rows_int8");
}

void linear_weight_only(const float* x, int m, const QuantWeightView& w, const float* bias, float* y, cudaStream_t stream) {
    using namespace detail;
    check_linear(x, m, w, y, "linear_weight_only");
    if (m == 0) return;
    switch (w.bits) {
        case 3: linear_weight_only_bits<3>(x, m, w, bias, y, stream); break;
        case 4: linear_weight_only_bits<4>(x, m, w, bias, y, stream); break;
        default: linear_weight_only_bits<8>(x, m, w, bias, y, stream); break;
    }
    check_launch("linear_weight_only");
}

void linear_int8_act(const std::int8_t* xq, const float* x_scale, int m, const QuantWeightView& w, const float* bias, float* y,
                     cudaStream_t stream) {
    using namespace detail;
    check_linear(xq, m, w, y, "linear_int8_act");
    if (m == 0) return;
    require_pointers("linear_int8_act", {x_scale});
    switch (w.bits) {
        case 3: linear_int8_bits<3>(xq, x_scale, m, w, bias, y, stream); break;
        case 4: linear_int8_bits<4>(xq, x_scale, m, w, bias, y, stream); break;
        default: linear_int8_bits<8>(xq, x_scale, m, w, bias, y, stream); break;
    }
    check_launch("linear_int8_act");
}

}  // namespace qlm::cuda
