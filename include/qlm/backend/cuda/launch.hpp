#pragma once
// The CUDA kernels' host entry points: plain C++ declarations, so code compiled by the host
// compiler (CudaBackend, the tools) can call them. Their definitions are in kernels.cuh, compiled
// by nvcc in exactly one translation unit of the program (cmake/cuda/qlm_cuda_kernels.cu, or the
// user's own .cu that includes <qlm/backend/cuda/kernels.cuh>).
//
// Every pointer is device memory unless its name says host. Every launcher enqueues on `stream`
// and returns without synchronising; launch errors are checked (cudaGetLastError) and thrown as
// qlm::cuda_error. Matrices are row-major; m = rows of activations, k = input features,
// n = output features.
#include <qlm/backend/cuda/host_layout.hpp>

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace qlm::cuda {

// y[r, :] = layer_norm(x[r, :]) * weight + bias, rows of `cols` floats.
void layer_norm(const float* x, const float* weight, const float* bias, int rows, int cols, float eps, float* y,
                cudaStream_t stream);
// Layer norm of the rows x[row_ids[i], :] into y[i, :] (the final norm of the rows that need logits).
void layer_norm_rows(const float* x, const std::int32_t* row_ids, const float* weight, const float* bias, int rows, int cols,
                     float eps, float* y, cudaStream_t stream);
// In place; exact = erf form, else the tanh approximation. col_scale (or null): then divide each
// row of `cols` values by col_scale (AWQ's ScaledActivation).
void gelu(float* x, int rows, int cols, bool exact, const float* col_scale, cudaStream_t stream);
// y += x, n floats.
void add_inplace(float* y, const float* x, std::size_t n, cudaStream_t stream);
// y[r, :] += bias (n floats a row), m rows.
void add_bias(float* y, const float* bias, int m, int n, cudaStream_t stream);
// x[r, :] = wte[tokens[r], :] + wpe[positions[r], :]. Tokens are checked on the host beforehand.
void embed(const std::int32_t* tokens, const std::int32_t* positions, int rows, const float* wte, const float* wpe, int cols,
           float* x, cudaStream_t stream);
// out[r, j] = x[r, order[j]] (act-order input permutation, or a salient-column gather).
void gather_columns(const float* x, int m, int k_in, const std::int32_t* order, int k_out, float* out, cudaStream_t stream);
// fp32 -> fp16 / bf16 (the activations of a cuBLAS half GEMM), n values; out is __half / __nv_bfloat16.
void to_fp16(const float* x, std::size_t n, void* out, cudaStream_t stream);
void to_bf16(const float* x, std::size_t n, void* out, cudaStream_t stream);

// Writes the k and v parts of qkv rows [rows, 3 * cols] (q | k | v) to the cache rows
// key_rows[i] / value_rows[i] (cols floats each).
void store_kv(const float* qkv, int rows, int cols, float* const* key_rows, float* const* value_rows, cudaStream_t stream);
// Causal multi-head attention, decode and prefill alike: query row r (its q in qkv[r, 0:cols])
// attends to key_rows[rows_info[r].first_kv + p], p < rows_info[r].n_keys, for each of n_head heads
// of head_dim = cols / n_head; out[r, h * head_dim ...] = softmax(q·kᵀ · scale) · v. max_keys: the
// largest n_keys (sizes shared memory).
void attention(const float* qkv, int rows, int cols, int n_head, const float* const* key_rows, const float* const* value_rows,
               const AttentionRow* rows_info, int max_keys, float scale, float* out, cudaStream_t stream);

// Dynamic int8 per row: scale[r] = max|x[r, :]| / 127, q = round(x / scale). static_scale > 0:
// every row uses it instead.
void quantize_rows_int8(const float* x, int m, int k, float static_scale, std::int8_t* q, float* scale, cudaStream_t stream);
// y = x · dequant(w)ᵀ (+ bias), float activations (weight-only quantization): a GEMV for small m
// (dequantizing in registers), a tiled GEMM otherwise.
void linear_weight_only(const float* x, int m, const QuantWeightView& w, const float* bias, float* y, cudaStream_t stream);
// y = (xq · scale_x) · dequant(w)ᵀ (+ bias) with int8 activations from quantize_rows_int8 and
// integer dot products (dp4a / int8 tensor cores), per weight group rescaled in float.
void linear_int8_act(const std::int8_t* xq, const float* x_scale, int m, const QuantWeightView& w, const float* bias, float* y,
                     cudaStream_t stream);

// The largest workspace (bytes) a launcher needs for m rows of k inputs is what the caller
// allocates; the launchers above allocate nothing.
}  // namespace qlm::cuda
