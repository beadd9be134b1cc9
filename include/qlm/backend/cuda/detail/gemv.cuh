#pragma once
// Quantized GEMV for m <= 8 activation rows (decode, small batches), weight-only (float x) and
// int8-activation (dp4a) alike; weights are dequantized in registers, never written anywhere.
//
// Block: 8 warps. A warp is two groups of 16 lanes; a group owns 2 output rows (32 rows a block).
// The k axis is walked in chunks of 16 blocks of 64 codes: per chunk, lane l of a group loads
// block l of each of its rows (16 lanes read consecutive blocks: 512 contiguous bytes a row at
// 4 bits) and its scales, then the block stages the chunk of the m activation rows in shared
// memory (zero past k and past m), so the weight loads are in flight while it does. Each staged
// 64-code block is padded (68 floats / 80 bytes) so the 16 lanes' 16-byte reads hit distinct banks.
// Each 32-code half of a block lies in one group (group sizes are multiples of 32):
//   float: Σ (u - z) · x over the half in fp32 (codes converted with one PRMT + FADD), times s;
//   int8:  Σ (u - 2^(b-1)) · a with dp4a, minus (z - 2^(b-1)) · Σ a when asymmetric, times s,
//          in fp32; after the loop times the row's activation scale.
// The 16 lanes' partial sums meet in four shuffles; M (1, 2, 4, 8 >= m) is a template parameter so
// the M x 2 accumulators stay in registers.
#include <qlm/backend/cuda/detail/quant_load.cuh>

namespace qlm::cuda::detail {

inline constexpr int kGemvWarps = 8;
inline constexpr int kGemvLanes = 16;        // lanes per row group, = blocks per chunk
inline constexpr int kGemvGroupRows = 2;     // output rows per group
inline constexpr int kGemvBlockRows = kGemvWarps * (32 / kGemvLanes) * kGemvGroupRows;
inline constexpr int kGemvChunk = kGemvLanes * 64;  // codes staged per pass
inline constexpr int kStagedF32 = 68;               // floats per staged 64-code block
inline constexpr int kStagedI8 = 80;                // bytes per staged 64-code block

// Rows row0, row0 + 1 of this group, block b: words and per-half scale / zero (rows past n or
// blocks past k: zeros and scale 0, so they add nothing).
template <int Bits>
struct GemvWeights {
    std::uint32_t words[kGemvGroupRows][kBlockWords<Bits>];
    HalfParams half[kGemvGroupRows][2];

    __device__ __forceinline__ void load(const QuantWeightView& w, int row0, int b, int groups, bool ragged) {
        const bool block_ok = b < (w.k + 63) / 64;
#pragma unroll
        for (int r = 0; r < kGemvGroupRows; ++r) {
            const int row = row0 + r;
            if (block_ok && row < w.n) {
                load_block<Bits>(w.codes + static_cast<std::size_t>(row) * w.row_bytes, b, w.k, ragged, words[r]);
#pragma unroll
                for (int h = 0; h < 2; ++h) half[r][h] = half_params<Bits>(w, row, 64 * b + 32 * h, groups);
            } else {
#pragma unroll
                for (int t = 0; t < kBlockWords<Bits>; ++t) words[r][t] = 0;
#pragma unroll
                for (int h = 0; h < 2; ++h) half[r][h] = {0.0f, 0};
            }
        }
    }
};

// Activation rows [0, M) x columns [col0, col0 + kGemvChunk) into the padded staging layout.
// Vec: 16-byte loads (k a multiple of the vector, x aligned).
template <int M, class T, int Staged>
__device__ __forceinline__ void stage_chunk(T (&xs)[M][kGemvLanes * Staged], const T* __restrict__ x, int m, int k, int col0, bool vec) {
    constexpr int kPerVec = 16 / static_cast<int>(sizeof(T));
    if (vec) {
        constexpr int kVecs = kGemvChunk / kPerVec;
        for (int idx = threadIdx.x; idx < M * kVecs; idx += blockDim.x) {
            const int i = idx / kVecs, c = (idx % kVecs) * kPerVec, col = col0 + c;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (i < m && col < k) v = *reinterpret_cast<const uint4*>(x + static_cast<std::size_t>(i) * k + col);
            *reinterpret_cast<uint4*>(&xs[i][(c / 64) * Staged + c % 64]) = v;
        }
    } else {
        for (int idx = threadIdx.x; idx < M * kGemvChunk; idx += blockDim.x) {
            const int i = idx / kGemvChunk, c = idx % kGemvChunk, col = col0 + c;
            xs[i][(c / 64) * Staged + c % 64] = i < m && col < k ? x[static_cast<std::size_t>(i) * k + col] : T{};
        }
    }
}

// Sums v over the 16 lanes of a row group.
__device__ __forceinline__ float group_sum(float v) {
    for (int offset = kGemvLanes / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
}

template <int Bits, int M>
__global__ void __launch_bounds__(kGemvWarps * 32, 2)
    gemv_weight_only_kernel(const float* __restrict__ x, int m, QuantWeightView w, const float* __restrict__ bias, bool vec_x,
                            bool ragged, float* __restrict__ y) {
    __shared__ __align__(16) float xs[M][kGemvLanes * kStagedF32];
    const int lane = threadIdx.x & 31, sub = lane % kGemvLanes;
    const int row0 = ((blockIdx.x * kGemvWarps + threadIdx.x / 32) * (32 / kGemvLanes) + lane / kGemvLanes) * kGemvGroupRows;
    const int groups = w.k / w.group_size, blocks = (w.k + 63) / 64;

    float acc[kGemvGroupRows][M] = {};
    for (int chunk = 0; chunk < blocks; chunk += kGemvLanes) {
        GemvWeights<Bits> wt;
        wt.load(w, row0, chunk + sub, groups, ragged);
        __syncthreads();  // the previous chunk's reads of xs are done
        stage_chunk<M, float, kStagedF32>(xs, x, m, w.k, chunk * 64, vec_x);
        __syncthreads();
        // Activations outermost: each staged float4 is read once and serves both rows.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float part[kGemvGroupRows][M] = {};
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                const int c = 32 * h + 4 * t;
                float d[kGemvGroupRows][4];
#pragma unroll
                for (int r = 0; r < kGemvGroupRows; ++r)
                    quad_minus_zero(code_quad<Bits>(wt.words[r], c), kTwoPow23 + static_cast<float>(wt.half[r][h].zero), d[r]);
#pragma unroll
                for (int i = 0; i < M; ++i) {
                    const float4 a = *reinterpret_cast<const float4*>(&xs[i][sub * kStagedF32 + c]);
#pragma unroll
                    for (int r = 0; r < kGemvGroupRows; ++r)
                        part[r][i] = fmaf(d[r][0], a.x, fmaf(d[r][1], a.y, fmaf(d[r][2], a.z, fmaf(d[r][3], a.w, part[r][i]))));
                }
            }
#pragma unroll
            for (int r = 0; r < kGemvGroupRows; ++r)
#pragma unroll
                for (int i = 0; i < M; ++i) acc[r][i] = fmaf(wt.half[r][h].scale, part[r][i], acc[r][i]);
        }
    }

#pragma unroll
    for (int r = 0; r < kGemvGroupRows; ++r) {
        const int row = row0 + r;
#pragma unroll
        for (int i = 0; i < M; ++i) {
            const float v = group_sum(acc[r][i]);
            if (sub == 0 && row < w.n && i < m) y[static_cast<std::size_t>(i) * w.n + row] = v + (bias ? bias[row] : 0.0f);
        }
    }
}

template <int Bits, int M>
__global__ void __launch_bounds__(kGemvWarps * 32, 2)
    gemv_int8_kernel(const std::int8_t* __restrict__ xq, const float* __restrict__ x_scale, int m, QuantWeightView w,
                     const float* __restrict__ bias, bool vec_x, bool ragged, float* __restrict__ y) {
    __shared__ __align__(16) std::int8_t xs[M][kGemvLanes * kStagedI8];
    const int lane = threadIdx.x & 31, sub = lane % kGemvLanes;
    const int row0 = ((blockIdx.x * kGemvWarps + threadIdx.x / 32) * (32 / kGemvLanes) + lane / kGemvLanes) * kGemvGroupRows;
    const int groups = w.k / w.group_size, blocks = (w.k + 63) / 64;
    constexpr int kCodeBias = 1 << (Bits - 1);

    float acc[kGemvGroupRows][M] = {};
    for (int chunk = 0; chunk < blocks; chunk += kGemvLanes) {
        GemvWeights<Bits> wt;
        wt.load(w, row0, chunk + sub, groups, ragged);
        __syncthreads();
        stage_chunk<M, std::int8_t, kStagedI8>(xs, xq, m, w.k, chunk * 64, vec_x);
        __syncthreads();
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            int dot[kGemvGroupRows][M] = {};
            int a_sum[M] = {};  // Σa over the half (asymmetric weights only)
            // Activations outermost, 16 bytes (four quads) per row at a time: read once for both rows.
#pragma unroll
            for (int v = 0; v < 2; ++v) {
                std::uint32_t q[kGemvGroupRows][4];
#pragma unroll
                for (int r = 0; r < kGemvGroupRows; ++r)
#pragma unroll
                    for (int t = 0; t < 4; ++t) q[r][t] = signed_quad<Bits>(code_quad<Bits>(wt.words[r], 32 * h + 16 * v + 4 * t));
#pragma unroll
                for (int i = 0; i < M; ++i) {
                    const uint4 a4 = *reinterpret_cast<const uint4*>(&xs[i][sub * kStagedI8 + 32 * h + 16 * v]);
                    const std::uint32_t a[4] = {a4.x, a4.y, a4.z, a4.w};
#pragma unroll
                    for (int t = 0; t < 4; ++t) {
#pragma unroll
                        for (int r = 0; r < kGemvGroupRows; ++r) dot[r][i] = dp4a(q[r][t], a[t], dot[r][i]);
                        if (w.zeros) a_sum[i] = dp4a(a[t], 0x01010101u, a_sum[i]);
                    }
                }
            }
#pragma unroll
            for (int r = 0; r < kGemvGroupRows; ++r) {
                const int zero = wt.half[r][h].zero - kCodeBias;
#pragma unroll
                for (int i = 0; i < M; ++i)
                    acc[r][i] = fmaf(wt.half[r][h].scale, static_cast<float>(dot[r][i] - zero * a_sum[i]), acc[r][i]);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < kGemvGroupRows; ++r) {
        const int row = row0 + r;
#pragma unroll
        for (int i = 0; i < M; ++i) {
            const float v = group_sum(acc[r][i]);
            if (sub == 0 && row < w.n && i < m)
                y[static_cast<std::size_t>(i) * w.n + row] = fmaf(v, x_scale[i], bias ? bias[row] : 0.0f);
        }
    }
}

}  // namespace qlm::cuda::detail
