#pragma once
// Row-wise and element-wise kernels: layer norm, GELU, residual / bias adds, embedding, column
// gather, fp16 / bf16 conversion, the KV-cache store and the per-token int8 quantization.
// Element-wise kernels are grid-stride loops; each has a float4 form (Vec) that the launcher picks
// when the sizes and pointers allow 16-byte accesses, and a scalar form otherwise.
#include <qlm/backend/cuda/detail/common.cuh>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace qlm::cuda::detail {

__device__ __forceinline__ std::size_t global_thread() {
    return static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ std::size_t grid_stride() { return static_cast<std::size_t>(gridDim.x) * blockDim.x; }

// One block per output row; two passes over the row in fp32 (mean, then the variance of the
// centred values: no cancellation for rows with a large offset), the row re-read from L1/L2.
// row_ids (or null): output row i normalises input row row_ids[i]. x may equal y when row_ids is null.
template <bool Vec>
__global__ void layer_norm_kernel(const float* x, const std::int32_t* __restrict__ row_ids, const float* __restrict__ weight,
                                  const float* __restrict__ bias, int cols, float eps, float* y) {
    __shared__ float scratch[32];
    const std::size_t src = row_ids ? static_cast<std::size_t>(row_ids[blockIdx.x]) : blockIdx.x;
    const float* xr = x + src * cols;
    float* yr = y + static_cast<std::size_t>(blockIdx.x) * cols;
    const int items = Vec ? cols / 4 : cols;

    float sum = 0.0f;
    for (int i = threadIdx.x; i < items; i += blockDim.x) {
        if constexpr (Vec) {
            const float4 v = reinterpret_cast<const float4*>(xr)[i];
            sum += (v.x + v.y) + (v.z + v.w);
        } else {
            sum += xr[i];
        }
    }
    const float mean = block_sum(sum, scratch) / static_cast<float>(cols);

    float sq = 0.0f;
    for (int i = threadIdx.x; i < items; i += blockDim.x) {
        if constexpr (Vec) {
            const float4 v = reinterpret_cast<const float4*>(xr)[i];
            const float a = v.x - mean, b = v.y - mean, c = v.z - mean, d = v.w - mean;
            sq += (a * a + b * b) + (c * c + d * d);
        } else {
            const float a = xr[i] - mean;
            sq = fmaf(a, a, sq);
        }
    }
    const float inv = 1.0f / sqrtf(block_sum(sq, scratch) / static_cast<float>(cols) + eps);

    for (int i = threadIdx.x; i < items; i += blockDim.x) {
        if constexpr (Vec) {
            const float4 v = reinterpret_cast<const float4*>(xr)[i];
            const float4 w = reinterpret_cast<const float4*>(weight)[i];
            const float4 b = reinterpret_cast<const float4*>(bias)[i];
            reinterpret_cast<float4*>(yr)[i] = make_float4(fmaf((v.x - mean) * inv, w.x, b.x), fmaf((v.y - mean) * inv, w.y, b.y),
                                                           fmaf((v.z - mean) * inv, w.z, b.z), fmaf((v.w - mean) * inv, w.w, b.w));
        } else {
            yr[i] = fmaf((xr[i] - mean) * inv, weight[i], bias[i]);
        }
    }
}

__device__ __forceinline__ float gelu(float v, bool exact) { return exact ? gelu_erf(v) : gelu_tanh(v); }

// In place over n = rows * cols values; col_scale (or null) divides column c afterwards.
// Vec: cols % 4 == 0, so a float4 never straddles two rows.
template <bool Vec>
__global__ void gelu_kernel(float* x, std::size_t n, int cols, bool exact, const float* __restrict__ col_scale) {
    if constexpr (Vec) {
        float4* x4 = reinterpret_cast<float4*>(x);
        const float4* s4 = reinterpret_cast<const float4*>(col_scale);
        const std::size_t cols4 = static_cast<std::size_t>(cols) / 4;
        for (std::size_t i = global_thread(); i < n / 4; i += grid_stride()) {
            float4 v = x4[i];
            v = make_float4(gelu(v.x, exact), gelu(v.y, exact), gelu(v.z, exact), gelu(v.w, exact));
            if (col_scale) {
                const float4 s = s4[i % cols4];
                v = make_float4(v.x / s.x, v.y / s.y, v.z / s.z, v.w / s.w);
            }
            x4[i] = v;
        }
    } else {
        for (std::size_t i = global_thread(); i < n; i += grid_stride()) {
            float v = gelu(x[i], exact);
            if (col_scale) v /= col_scale[i % static_cast<std::size_t>(cols)];
            x[i] = v;
        }
    }
}

// y += x; Vec: the first n / 4 float4s, then the scalar tail.
template <bool Vec>
__global__ void add_inplace_kernel(float* __restrict__ y, const float* __restrict__ x, std::size_t n) {
    std::size_t start = 0;
    if constexpr (Vec) {
        float4* y4 = reinterpret_cast<float4*>(y);
        const float4* x4 = reinterpret_cast<const float4*>(x);
        for (std::size_t i = global_thread(); i < n / 4; i += grid_stride()) {
            const float4 a = y4[i], b = x4[i];
            y4[i] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
        }
        start = n / 4 * 4;
    }
    for (std::size_t i = start + global_thread(); i < n; i += grid_stride()) y[i] += x[i];
}

// y[r, :] += bias over m rows of n; Vec: n % 4 == 0.
template <bool Vec>
__global__ void add_bias_kernel(float* __restrict__ y, const float* __restrict__ bias, std::size_t total, int n) {
    if constexpr (Vec) {
        float4* y4 = reinterpret_cast<float4*>(y);
        const float4* b4 = reinterpret_cast<const float4*>(bias);
        const std::size_t n4 = static_cast<std::size_t>(n) / 4;
        for (std::size_t i = global_thread(); i < total / 4; i += grid_stride()) {
            const float4 a = y4[i], b = b4[i % n4];
            y4[i] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
        }
    } else {
        for (std::size_t i = global_thread(); i < total; i += grid_stride()) y[i] += bias[i % static_cast<std::size_t>(n)];
    }
}

// One block per row: x[r, :] = wte[tokens[r], :] + wpe[positions[r], :].
template <bool Vec>
__global__ void embed_kernel(const std::int32_t* __restrict__ tokens, const std::int32_t* __restrict__ positions,
                             const float* __restrict__ wte, const float* __restrict__ wpe, int cols, float* __restrict__ x) {
    const float* te = wte + static_cast<std::size_t>(tokens[blockIdx.x]) * cols;
    const float* pe = wpe + static_cast<std::size_t>(positions[blockIdx.x]) * cols;
    float* out = x + static_cast<std::size_t>(blockIdx.x) * cols;
    if constexpr (Vec) {
        for (int i = threadIdx.x; i < cols / 4; i += blockDim.x) {
            const float4 a = reinterpret_cast<const float4*>(te)[i], b = reinterpret_cast<const float4*>(pe)[i];
            reinterpret_cast<float4*>(out)[i] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
        }
    } else {
        for (int i = threadIdx.x; i < cols; i += blockDim.x) out[i] = te[i] + pe[i];
    }
}

__global__ void gather_columns_kernel(const float* __restrict__ x, int k_in, const std::int32_t* __restrict__ order, int k_out,
                                      std::size_t total, float* __restrict__ out) {
    for (std::size_t i = global_thread(); i < total; i += grid_stride()) {
        const std::size_t r = i / static_cast<std::size_t>(k_out), j = i % static_cast<std::size_t>(k_out);
        out[i] = x[r * static_cast<std::size_t>(k_in) + static_cast<std::size_t>(order[j])];
    }
}

// fp32 -> 16-bit float, round to nearest even; Vec: float4 in, two 2-wide stores out.
template <class Half2, bool Vec>
__global__ void to_half_kernel(const float* __restrict__ x, std::size_t n, void* out) {
    using Half = decltype(Half2{}.x);
    Half* o = static_cast<Half*>(out);
    std::size_t start = 0;
    if constexpr (Vec) {
        Half2* o2 = static_cast<Half2*>(out);
        const float4* x4 = reinterpret_cast<const float4*>(x);
        for (std::size_t i = global_thread(); i < n / 4; i += grid_stride()) {
            const float4 v = x4[i];
            if constexpr (std::is_same_v<Half2, __half2>) {
                o2[2 * i] = __floats2half2_rn(v.x, v.y);
                o2[2 * i + 1] = __floats2half2_rn(v.z, v.w);
            } else {
                o2[2 * i] = __floats2bfloat162_rn(v.x, v.y);
                o2[2 * i + 1] = __floats2bfloat162_rn(v.z, v.w);
            }
        }
        start = n / 4 * 4;
    }
    for (std::size_t i = start + global_thread(); i < n; i += grid_stride()) {
        if constexpr (std::is_same_v<Half2, __half2>) o[i] = __float2half_rn(x[i]);
        else o[i] = __float2bfloat16_rn(x[i]);
    }
}

// One block per row: the k and v thirds of qkv[r] to their cache rows (which sit anywhere: a
// block takes the float4 path when its three rows allow it).
__global__ void store_kv_kernel(const float* __restrict__ qkv, int cols, float* const* __restrict__ key_rows,
                                float* const* __restrict__ value_rows) {
    const float* src = qkv + static_cast<std::size_t>(blockIdx.x) * 3 * cols;
    float* kd = key_rows[blockIdx.x];
    float* vd = value_rows[blockIdx.x];
    if (cols % 4 == 0 && aligned16_device(src) && aligned16_device(kd) && aligned16_device(vd)) {
        const float4* k4 = reinterpret_cast<const float4*>(src + cols);
        const float4* v4 = reinterpret_cast<const float4*>(src + 2 * cols);
        for (int i = threadIdx.x; i < cols / 4; i += blockDim.x) {
            reinterpret_cast<float4*>(kd)[i] = k4[i];
            reinterpret_cast<float4*>(vd)[i] = v4[i];
        }
    } else {
        for (int i = threadIdx.x; i < cols; i += blockDim.x) {
            kd[i] = src[cols + i];
            vd[i] = src[2 * cols + i];
        }
    }
}

// One block per row: absmax (a block reduction), then q = quantize_int8(x, 1/s). Vec: k % 4 == 0,
// float4 in, one 32-bit store of four codes out.
template <bool Vec>
__global__ void quantize_rows_int8_kernel(const float* __restrict__ x, int k, float static_scale, std::int8_t* __restrict__ q,
                                          float* __restrict__ scales) {
    __shared__ float scratch[32];
    const float* xr = x + static_cast<std::size_t>(blockIdx.x) * k;
    std::int8_t* qr = q + static_cast<std::size_t>(blockIdx.x) * k;
    const int items = Vec ? k / 4 : k;
    float scale = static_scale;
    if (!(scale > 0.0f)) {
        float amax = 0.0f;
        for (int i = threadIdx.x; i < items; i += blockDim.x) {
            if constexpr (Vec) {
                const float4 v = reinterpret_cast<const float4*>(xr)[i];
                amax = fmaxf(amax, fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
            } else {
                amax = fmaxf(amax, fabsf(xr[i]));
            }
        }
        scale = int8_scale(block_max(amax, scratch));
    }
    if (threadIdx.x == 0) scales[blockIdx.x] = scale;
    const float inv = int8_inverse_scale(scale);
    for (int i = threadIdx.x; i < items; i += blockDim.x) {
        if constexpr (Vec) {
            const float4 v = reinterpret_cast<const float4*>(xr)[i];
            reinterpret_cast<std::uint32_t*>(qr)[i] =
                pack_int8x4(quantize_int8(v.x, inv), quantize_int8(v.y, inv), quantize_int8(v.z, inv), quantize_int8(v.w, inv));
        } else {
            qr[i] = quantize_int8(xr[i], inv);
        }
    }
}

}  // namespace qlm::cuda::detail
