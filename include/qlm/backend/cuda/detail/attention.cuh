#pragma once
// Causal attention over a paged KV cache, decode and prefill through one kernel.
//
// One block of 128 threads per (query row, head). The keys are walked in tiles of 256 positions
// with an online softmax (running max and sum, rescaled per tile, device_math.hpp), so shared
// memory is 1 KiB of scores whatever the context length; max_keys sizes nothing.
//   scores  4 lanes per key, 32 keys at a time: lane j holds the float4 chunks j, j+4, ... of q
//           (head_dim <= 128: at most 8 chunks), reads the same chunks of the key row (the 4 lanes
//           read 64 contiguous bytes), and the 4 partial dots meet in two shuffles.
//   values  thread t owns dimension t % head_dim of slice t / head_dim (128 / head_dim slices,
//           2 for GPT-2's 64) and walks every slice-th key of the tile: a warp reads 128
//           contiguous bytes of one value row per step. The slices are summed at the end.
// All math in fp32 with the accurate expf. Every key and value row is read through its own pointer
// (blocks of the pool sit anywhere); a row that is not 16-byte aligned takes a scalar path.
#include <qlm/backend/cuda/detail/common.cuh>

namespace qlm::cuda::detail {

inline constexpr int kAttentionThreads = 128;
inline constexpr int kAttentionTile = 256;
inline constexpr int kAttentionMaxHeadDim = 128;
inline constexpr int kAttentionLanesPerKey = 4;
inline constexpr int kAttentionChunks = kAttentionMaxHeadDim / 4 / kAttentionLanesPerKey;  // float4s a lane holds

__device__ __forceinline__ float4 load_float4(const float* p, bool aligned) {
    if (aligned) return *reinterpret_cast<const float4*>(p);
    return make_float4(p[0], p[1], p[2], p[3]);
}

__global__ void __launch_bounds__(kAttentionThreads)
    attention_kernel(const float* __restrict__ qkv, int cols, int head_dim, const float* const* __restrict__ key_rows,
                     const float* const* __restrict__ value_rows, const AttentionRow* __restrict__ rows_info, float scale,
                     float* __restrict__ out) {
    __shared__ float scores[kAttentionTile];
    __shared__ float scratch[32];
    __shared__ float partial[kAttentionThreads];

    const int row = blockIdx.x, offset = blockIdx.y * head_dim;
    const AttentionRow info = rows_info[row];
    const int n = info.n_keys;
    const float* const* keys = key_rows + info.first_kv;
    const float* const* values = value_rows + info.first_kv;
    float* o = out + static_cast<std::size_t>(row) * cols + offset;
    if (n <= 0) {  // nothing to attend to (not produced by a causal caller): zeros, not 0/0
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) o[d] = 0.0f;
        return;
    }

    // Score lanes: q's chunks j, j + 4, ... of this head (qkv rows are 16-byte aligned: checked on the host).
    const int lane = threadIdx.x & 31, j = threadIdx.x % kAttentionLanesPerKey, slot = threadIdx.x / kAttentionLanesPerKey;
    const unsigned group_mask = 0xFu << (lane & ~3);
    const int chunks = head_dim / 4;
    const float* q = qkv + static_cast<std::size_t>(row) * 3 * cols + offset;
    float4 qv[kAttentionChunks];
#pragma unroll
    for (int i = 0; i < kAttentionChunks; ++i) {
        const int c = j + kAttentionLanesPerKey * i;
        qv[i] = c < chunks ? reinterpret_cast<const float4*>(q)[c] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }

    // Value lanes.
    const int slices = kAttentionThreads / head_dim;
    const int dim = threadIdx.x % head_dim, slice = threadIdx.x / head_dim;
    const bool value_lane = slice < slices;
    float acc = 0.0f;

    SoftmaxState state;
    constexpr int kSlots = kAttentionThreads / kAttentionLanesPerKey;
    for (int t0 = 0; t0 < n; t0 += kAttentionTile) {
        const int tn = n - t0 < kAttentionTile ? n - t0 : kAttentionTile;
        // The 4 lanes of a key share its loop trip count, so their shuffles see all of the group.
        for (int s = slot; s < tn; s += kSlots) {
            const float* k = keys[t0 + s] + offset;
            const bool aligned = aligned16_device(k);
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < kAttentionChunks; ++i) {
                const int c = j + kAttentionLanesPerKey * i;
                if (c < chunks) {
                    const float4 kv = load_float4(k + 4 * c, aligned);
                    dot = fmaf(qv[i].x, kv.x, dot);
                    dot = fmaf(qv[i].y, kv.y, dot);
                    dot = fmaf(qv[i].z, kv.z, dot);
                    dot = fmaf(qv[i].w, kv.w, dot);
                }
            }
            dot += __shfl_xor_sync(group_mask, dot, 1);
            dot += __shfl_xor_sync(group_mask, dot, 2);
            if (j == 0) scores[s] = dot * scale;
        }

        float local_max = -INFINITY;
        for (int s = threadIdx.x; s < tn; s += blockDim.x) local_max = fmaxf(local_max, scores[s]);
        const float factor = softmax_rescale(state, block_max(local_max, scratch));

        float local_sum = 0.0f;
        for (int s = threadIdx.x; s < tn; s += blockDim.x) {
            const float e = exp_f32(scores[s] - state.max);
            scores[s] = e;
            local_sum += e;
        }
        state.sum += block_sum(local_sum, scratch);  // its barriers publish the exponentials

        if (value_lane) {
            acc *= factor;
            for (int s = slice; s < tn; s += slices) acc = fmaf(scores[s], values[t0 + s][offset + dim], acc);
        }
        __syncthreads();  // the next tile overwrites scores
    }

    partial[threadIdx.x] = value_lane ? acc : 0.0f;
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float total = 0.0f;
        for (int s = 0; s < slices; ++s) total += partial[s * head_dim + d];
        o[d] = total / state.sum;
    }
}

}  // namespace qlm::cuda::detail
