#pragma once
// What every kernel file shares: warp / block reductions, alignment tests, grid sizing and the
// launchers' argument checks.
#include <qlm/backend/cuda/device_math.hpp>
#include <qlm/backend/cuda/error.hpp>
#include <qlm/backend/cuda/launch.hpp>
#include <qlm/core/error.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace qlm::cuda::detail {

inline constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
    return v;
}

// Block-wide sum / max for blockDim.x a multiple of 32; every thread gets the result. scratch: 32
// floats of shared memory. The leading barrier lets consecutive calls share the scratch, and makes
// shared-memory writes before the call visible to every thread after it.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_sum(lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : 0.0f);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_max(lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : -INFINITY);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }
__device__ __forceinline__ bool aligned16_device(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

// Grid of a grid-stride loop: enough blocks to cover `items`, capped (the loop does the rest).
inline unsigned grid_for(std::size_t items, int threads) {
    const std::size_t blocks = (items + static_cast<std::size_t>(threads) - 1) / static_cast<std::size_t>(threads);
    return static_cast<unsigned>(std::clamp<std::size_t>(blocks, 1, 8192));
}

// Threads for one block per row of `items` work items: a multiple of 32, at most 256.
inline int row_threads(int items) { return std::clamp((items + 31) / 32 * 32, 32, 256); }

[[noreturn]] inline void fail_argument(const char* who, const std::string& what) {
    throw invalid_argument(std::string("qlm::cuda::") + who + ": " + what);
}
[[noreturn]] inline void fail_shape(const char* who, const std::string& what) {
    throw shape_error(std::string("qlm::cuda::") + who + ": " + what);
}

inline void require_pointers(const char* who, std::initializer_list<const void*> pointers) {
    for (const void* p : pointers)
        if (!p) fail_argument(who, "null device pointer");
}

inline void require_non_negative(const char* who, std::initializer_list<long long> sizes) {
    for (const long long s : sizes)
        if (s < 0) fail_shape(who, "negative size " + std::to_string(s));
}

}  // namespace qlm::cuda::detail
