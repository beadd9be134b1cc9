#pragma once
// Loading packed weight codes (core/packed_matrix.hpp) from global memory, for the GEMVs (a whole
// 64-code block a lane) and the tiled GEMMs (a 16-code piece a thread). Rows are row_bytes apart.
// 3- and 4-bit rows, and 8-bit rows whose k is a multiple of 64 with 16-byte row strides, are read
// with 8- and 16-byte loads; other 8-bit rows ("ragged": the salient parts of mixed layers, any k)
// byte by byte, codes past k read as 0.
#include <qlm/backend/cuda/detail/common.cuh>

namespace qlm::cuda::detail {

template <int Bits>
inline constexpr int kBlockBytes = Bits * 8;

// Whether an 8-bit matrix needs the byte-by-byte loads (3 and 4 bits never do: the launchers
// require k % 64 == 0 and aligned rows).
inline bool ragged_rows(const QuantWeightView& w) {
    return w.bits == 8 && !(w.k % 64 == 0 && w.row_bytes % 16 == 0 && aligned16(w.codes));
}

// Every word of block b of a row (row points at the row's first byte).
template <int Bits>
__device__ __forceinline__ void load_block(const std::uint8_t* row, int b, int k, bool ragged, std::uint32_t (&words)[kBlockWords<Bits>]) {
    const std::uint8_t* p = row + static_cast<std::size_t>(b) * kBlockBytes<Bits>;
    if constexpr (Bits == 3) {
#pragma unroll
        for (int i = 0; i < 3; ++i) {
            const uint2 v = __ldg(reinterpret_cast<const uint2*>(p) + i);
            words[2 * i] = v.x;
            words[2 * i + 1] = v.y;
        }
    } else {
        if constexpr (Bits == 8) {
            if (ragged) {
                const int valid = k - 64 * b;
#pragma unroll
                for (int t = 0; t < kBlockWords<Bits>; ++t) {
                    std::uint32_t word = 0;
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        if (4 * t + e < valid) word |= static_cast<std::uint32_t>(__ldg(p + 4 * t + e)) << (8 * e);
                    words[t] = word;
                }
                return;
            }
        }
#pragma unroll
        for (int i = 0; i < kBlockWords<Bits> / 4; ++i) {
            const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + i);
            words[4 * i] = v.x;
            words[4 * i + 1] = v.y;
            words[4 * i + 2] = v.z;
            words[4 * i + 3] = v.w;
        }
    }
}

// The words of piece p (codes 16p..16p+15) of block b: see piece_offset / piece_quad in device_math.hpp.
template <int Bits>
__device__ __forceinline__ void load_piece(const std::uint8_t* row, int b, int p, int k, bool ragged, std::uint32_t (&words)[4],
                                           std::uint32_t& mask) {
    const std::uint8_t* block = row + static_cast<std::size_t>(b) * kBlockBytes<Bits>;
    mask = 0;
    if constexpr (Bits == 3) {
        const uint2 lo = __ldg(reinterpret_cast<const uint2*>(block));
        const uint2 hi = __ldg(reinterpret_cast<const uint2*>(block) + 1);
        words[0] = lo.x;
        words[1] = lo.y;
        words[2] = hi.x;
        words[3] = hi.y;
        mask = __ldg(reinterpret_cast<const std::uint32_t*>(block + piece_mask_offset(p)));
    } else {
        const std::uint8_t* piece = block + piece_offset<Bits>(p);
        if constexpr (Bits == 8) {
            if (ragged) {
                const int valid = k - 64 * b - 16 * p;
#pragma unroll
                for (int t = 0; t < 4; ++t) {
                    std::uint32_t word = 0;
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        if (4 * t + e < valid) word |= static_cast<std::uint32_t>(__ldg(piece + 4 * t + e)) << (8 * e);
                    words[t] = word;
                }
                return;
            }
        }
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(piece));
        words[0] = v.x;
        words[1] = v.y;
        words[2] = v.z;
        words[3] = v.w;
    }
}

// Scale and zero point of the 32-code half starting at column col of row r.
struct HalfParams {
    float scale;
    int zero;
};
template <int Bits>
__device__ __forceinline__ HalfParams half_params(const QuantWeightView& w, int r, int col, int groups) {
    const std::size_t i = static_cast<std::size_t>(r) * groups + half_group(col, w.group_size, groups);
    return {__ldg(w.scales + i), w.zeros ? static_cast<int>(__ldg(w.zeros + i)) : (1 << (Bits - 1))};
}

}  // namespace qlm::cuda::detail
