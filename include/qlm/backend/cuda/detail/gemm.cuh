#pragma once
// Quantized GEMMs for m > 8 rows (prefill, large batches): 64 x 64 output tiles, k in steps of one
// 64-code block. Each step's global loads go to registers while the previous step computes
// (register prefetch), then to shared memory between two barriers. Loader roles: thread t takes
// row t % 64 of the tile and 16-code pieces t / 64 + 4j (weight-only) or t / 64 + 2j (int8), so
// a warp's shared-memory stores hit 32 consecutive rows (conflict-free).
//
// Weight-only: a tiled fp32 SIMT GEMM (256 threads, 4 x 4 outputs a thread, operands read as
// float4 from k-major tiles). The weight tile is dequantized to fp32 exactly as the CPU does it,
// (u - z) * s, and accumulated in fp32. Why not fp16 tensor cores: the activations here are fp32
// (the CPU backend's semantics); rounding them to fp16 costs ~1e-3 relative error and overflows on
// GPT-2's large activation outliers, while the fp32 path matches the CPU to ~1e-6. The int8 path
// below is the tensor-core one.
//
// Int8 activations: int8 tensor cores through WMMA (16x16x16, s8 x s8 -> s32; 4 warps, 32 x 32
// outputs a warp). Codes are stored as u - 2^(b-1) (signed, exact), so the integer products are
// exact; whenever a weight group ends (group sizes are multiples of 32) the warps store their s32
// tiles to shared memory and each thread folds its 32 outputs (one column, every other row) into
// fp32: acc += s · (dot - (z - 2^(b-1)) · Σa), Σa kept per row from the staged tiles.
#include <qlm/backend/cuda/detail/quant_load.cuh>

#include <mma.h>

namespace qlm::cuda::detail {

inline constexpr int kGemmTile = 64;
inline constexpr int kGemmF32Threads = 256;
inline constexpr int kGemmI8Threads = 128;

template <int Bits>
__global__ void __launch_bounds__(kGemmF32Threads)
    gemm_weight_only_kernel(const float* __restrict__ x, int m, QuantWeightView w, const float* __restrict__ bias, bool vec_x,
                            bool ragged, float* __restrict__ y) {
    __shared__ __align__(16) float as[kGemmTile][kGemmTile];  // [k][row of x]
    __shared__ __align__(16) float ws[kGemmTile][kGemmTile];  // [k][output]: (u - z) * s
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * kGemmTile, n0 = blockIdx.x * kGemmTile;
    const int k = w.k, groups = w.k / w.group_size, blocks = (k + 63) / 64;

    // Loader: x row m0 + lr, float4 columns lp + 4j; weight row n0 + lr, piece lp.
    const int lr = tid % kGemmTile, lp = tid / kGemmTile;
    const bool a_ok = m0 + lr < m, w_ok = n0 + lr < w.n;
    const float* xr = x + static_cast<std::size_t>(a_ok ? m0 + lr : 0) * k;
    const std::uint8_t* wr = w.codes + static_cast<std::size_t>(w_ok ? n0 + lr : 0) * w.row_bytes;

    float4 ra[4];
    std::uint32_t rw[4], rmask = 0;
    HalfParams rp{0.0f, 0};
    const auto load = [&](int b) {
        const int col0 = 64 * b;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = col0 + 4 * (lp + 4 * j);
            if (!a_ok) {
                ra[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            } else if (vec_x) {
                ra[j] = col < k ? *reinterpret_cast<const float4*>(xr + col) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            } else {
                ra[j] = make_float4(col < k ? xr[col] : 0.0f, col + 1 < k ? xr[col + 1] : 0.0f, col + 2 < k ? xr[col + 2] : 0.0f,
                                    col + 3 < k ? xr[col + 3] : 0.0f);
            }
        }
        if (w_ok) {
            load_piece<Bits>(wr, b, lp, k, ragged, rw, rmask);
            rp = half_params<Bits>(w, n0 + lr, col0 + 32 * (lp >> 1), groups);
        } else {
            rw[0] = rw[1] = rw[2] = rw[3] = 0;
            rmask = 0;
            rp = {0.0f, 0};
        }
    };
    const auto store = [&] {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int c = 4 * (lp + 4 * j);
            as[c][lr] = ra[j].x;
            as[c + 1][lr] = ra[j].y;
            as[c + 2][lr] = ra[j].z;
            as[c + 3][lr] = ra[j].w;
        }
        const float zero = kTwoPow23 + static_cast<float>(rp.zero);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            float d[4];
            dequantize_quad(piece_quad<Bits>(rw, rmask, lp, i), zero, rp.scale, d);
#pragma unroll
            for (int e = 0; e < 4; ++e) ws[16 * lp + 4 * i + e][lr] = d[e];
        }
    };

    float acc[4][4] = {};
    load(0);
    for (int b = 0; b < blocks; ++b) {
        store();
        __syncthreads();
        if (b + 1 < blocks) load(b + 1);
#pragma unroll 8
        for (int kk = 0; kk < kGemmTile; ++kk) {
            const float4 a = *reinterpret_cast<const float4*>(&as[kk][4 * ty]);
            const float4 v = *reinterpret_cast<const float4*>(&ws[kk][4 * tx]);
            const float av[4] = {a.x, a.y, a.z, a.w}, wv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], wv[j], acc[i][j]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = m0 + 4 * ty + i;
        if (row >= m) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = n0 + 4 * tx + j;
            if (col < w.n) y[static_cast<std::size_t>(row) * w.n + col] = acc[i][j] + (bias ? bias[col] : 0.0f);
        }
    }
}

template <int Bits>
__global__ void __launch_bounds__(kGemmI8Threads)
    gemm_int8_kernel(const std::int8_t* __restrict__ xq, const float* __restrict__ x_scale, int m, QuantWeightView w,
                     const float* __restrict__ bias, bool vec_x, bool ragged, float* __restrict__ y) {
    namespace wmma = nvcuda::wmma;
    constexpr int kCStride = kGemmTile + 4;        // s32 tile row stride (a multiple of 4, 32-byte aligned sub-tiles)
    constexpr int kOutRows = kGemmTile * kGemmTile / kGemmI8Threads;  // outputs a thread folds: 32
    constexpr int kCodeBias = 1 << (Bits - 1);
    __shared__ __align__(32) std::int8_t as[4][kGemmTile][16];  // [piece][row of x][16 codes]: row-major A
    __shared__ __align__(32) std::int8_t bs[4][kGemmTile][16];  // [piece][output][16 codes]: column-major B
    __shared__ __align__(32) int cs[kGemmTile][kCStride];
    __shared__ int psum[4][kGemmTile];                          // Σa of each staged piece of each row

    const int tid = threadIdx.x, warp = tid / 32, wm = warp / 2, wn = warp % 2;
    const int m0 = blockIdx.y * kGemmTile, n0 = blockIdx.x * kGemmTile;
    const int k = w.k, groups = w.k / w.group_size, blocks = (k + 63) / 64;
    const bool asym = w.zeros != nullptr;

    // Loader: row lr of both tiles, pieces lp and lp + 2. The fold uses the same split: output
    // column n0 + lr, rows lp + 2i.
    const int lr = tid % kGemmTile, lp = tid / kGemmTile;
    const bool a_ok = m0 + lr < m, w_ok = n0 + lr < w.n;
    const std::int8_t* xr = xq + static_cast<std::size_t>(a_ok ? m0 + lr : 0) * k;
    const std::uint8_t* wr = w.codes + static_cast<std::size_t>(w_ok ? n0 + lr : 0) * w.row_bytes;

    uint4 ra[2], rb[2];
    const auto load = [&](int b) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int p = lp + 2 * j, col = 64 * b + 16 * p;
            if (!a_ok) {
                ra[j] = make_uint4(0, 0, 0, 0);
            } else if (vec_x) {
                ra[j] = col < k ? *reinterpret_cast<const uint4*>(xr + col) : make_uint4(0, 0, 0, 0);
            } else {
                std::uint32_t v[4];
#pragma unroll
                for (int t = 0; t < 4; ++t) {
                    v[t] = 0;
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        if (col + 4 * t + e < k) v[t] |= static_cast<std::uint32_t>(static_cast<std::uint8_t>(xr[col + 4 * t + e])) << (8 * e);
                }
                ra[j] = make_uint4(v[0], v[1], v[2], v[3]);
            }
            if (w_ok) {
                std::uint32_t words[4], mask;
                load_piece<Bits>(wr, b, p, k, ragged, words, mask);
                rb[j] = make_uint4(signed_quad<Bits>(piece_quad<Bits>(words, mask, p, 0)), signed_quad<Bits>(piece_quad<Bits>(words, mask, p, 1)),
                                   signed_quad<Bits>(piece_quad<Bits>(words, mask, p, 2)), signed_quad<Bits>(piece_quad<Bits>(words, mask, p, 3)));
            } else {
                rb[j] = make_uint4(0, 0, 0, 0);
            }
        }
    };
    const auto store = [&] {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int p = lp + 2 * j;
            *reinterpret_cast<uint4*>(&as[p][lr][0]) = ra[j];
            *reinterpret_cast<uint4*>(&bs[p][lr][0]) = rb[j];
            psum[p][lr] = dp4a(ra[j].x, 0x01010101u, dp4a(ra[j].y, 0x01010101u, dp4a(ra[j].z, 0x01010101u, dp4a(ra[j].w, 0x01010101u, 0))));
        }
    };

    wmma::fragment<wmma::accumulator, 16, 16, 16, int> c[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(c[i][j], 0);
    float acc[kOutRows] = {};
    int a_sum[kOutRows] = {};  // Σa of rows lp + 2i over the current group (asymmetric weights)

    load(0);
    for (int b = 0; b < blocks; ++b) {
        store();
        __syncthreads();
        if (b + 1 < blocks) load(b + 1);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int p = 2 * h; p < 2 * h + 2; ++p) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, signed char, wmma::row_major> fa[2];
                wmma::fragment<wmma::matrix_b, 16, 16, 16, signed char, wmma::col_major> fb[2];
#pragma unroll
                for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &as[p][32 * wm + 16 * i][0], 16);
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &bs[p][32 * wn + 16 * j][0], 16);
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < 2; ++j) wmma::mma_sync(c[i][j], fa[i], fb[j], c[i][j]);
            }
            if (asym) {
#pragma unroll
                for (int i = 0; i < kOutRows; ++i) a_sum[i] += psum[2 * h][lp + 2 * i] + psum[2 * h + 1][lp + 2 * i];
            }
            const int end = 64 * b + 32 * (h + 1);
            if (end % w.group_size == 0 || end >= k) {  // the group of this half ends here: fold it
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        wmma::store_matrix_sync(&cs[32 * wm + 16 * i][32 * wn + 16 * j], c[i][j], kCStride, wmma::mem_row_major);
                        wmma::fill_fragment(c[i][j], 0);
                    }
                __syncthreads();
                HalfParams hp{0.0f, kCodeBias};
                if (w_ok) hp = half_params<Bits>(w, n0 + lr, 64 * b + 32 * h, groups);
                const int zero = hp.zero - kCodeBias;
#pragma unroll
                for (int i = 0; i < kOutRows; ++i) {
                    acc[i] = fmaf(hp.scale, static_cast<float>(cs[lp + 2 * i][lr] - zero * a_sum[i]), acc[i]);
                    a_sum[i] = 0;
                }
                __syncthreads();  // cs is free for the next fold
            }
        }
        __syncthreads();  // the next step overwrites as, bs, psum
    }

    if (!w_ok) return;
    const float bias_value = bias ? bias[n0 + lr] : 0.0f;
#pragma unroll
    for (int i = 0; i < kOutRows; ++i) {
        const int row = m0 + lp + 2 * i;
        if (row < m) y[static_cast<std::size_t>(row) * w.n + n0 + lr] = fmaf(acc[i], x_scale[row], bias_value);
    }
}

}  // namespace qlm::cuda::detail
