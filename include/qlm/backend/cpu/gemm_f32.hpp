#pragma once
// fp32 GEMM / GEMV: y[m, n] = x[m, k] · wᵀ + bias, w is [n, k] row-major (nn.Linear layout).
//
// Kernel shape ("dot-product" tiles, no packing): a tile of MR x rows and NR w rows accumulates
// MR*NR vector accumulators along k (x and w are both contiguous along k), then reduces each
// accumulator with one fixed horizontal tree. The GEMM walks k in blocks of kc, so an x tile and a
// w tile stay in L1 and a block of w rows stays in L2 while every x row tile streams over it.
// Each output element is always computed by the same sequence of operations whatever tile,
// block or thread it lands in (tails reuse the full kernel on duplicated rows), so the result does
// not depend on the number of threads. M == 1 uses a GEMV kernel (1 x 8 rows, whole k).
#include <qlm/backend/cpu/cpu_features.hpp>
#include <qlm/backend/cpu/detail/isa_kernels.hpp>
#include <qlm/core/detail/intrinsics_diagnostics.hpp>
#include <qlm/core/error.hpp>
#include <qlm/core/thread_pool.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace qlm::cpu {

namespace reference {

// Plain scalar reference (double accumulation): the ground truth the fast paths are tested against.
inline void gemm_f32(const float* x, std::size_t m, std::size_t k, const float* w, std::size_t n, const float* bias,
                     float* y) {
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t j = 0; j < n; ++j) {
            double acc = bias ? bias[j] : 0.0;
            for (std::size_t p = 0; p < k; ++p) acc += static_cast<double>(x[i * k + p]) * w[j * k + p];
            y[i * n + j] = static_cast<float>(acc);
        }
}

}  // namespace reference

namespace detail {

// A tile kernel: out[r * NR + c] = Σ_{p < len} xr[r][p] * wr[c][p].
using TileFn = void (*)(const float* const* xr, const float* const* wr, std::size_t len, float* out);

// Where the w rows of a block come from: a pointer to row `j0` at column `k0`, and the row stride.
struct WBlock {
    const float* base;
    std::size_t stride;
};

// The GEMM loop nest shared by every ISA and by the quantized GEMM (whose `get_block` dequantizes
// into a scratch buffer). Work items are (block of nb w rows) x (block of mb x rows); each item
// walks k in blocks of kc. get_block(j0, j1, k0, len, scratch) -> WBlock, where scratch is a
// std::vector<float> local to the calling thread's chunk (the quantized GEMM dequantizes into it).
template <std::size_t MR, std::size_t NR, class GetBlock>
void gemm_blocked(ThreadPool& pool, TileFn tile, const float* x, std::size_t m, std::size_t k, std::size_t n,
                  const float* bias, float* y, std::size_t kc, std::size_t nb, GetBlock&& get_block) {
    const std::size_t n_blocks = (n + nb - 1) / nb;
    // Split m too when there are few column blocks (thread count only changes the split, never the
    // per-element arithmetic).
    std::size_t mb = m;
    const std::size_t threads = pool.size();
    if (n_blocks < 2 * threads && m > 4 * MR) {
        const std::size_t parts = std::min<std::size_t>(2 * threads, (m + MR - 1) / MR);
        mb = ((m + parts - 1) / parts + MR - 1) / MR * MR;
    }
    const std::size_t m_blocks = (m + mb - 1) / mb;
    const std::size_t items = n_blocks * m_blocks;
    auto body = [&](std::size_t it0, std::size_t it1) {
        std::vector<float> scratch;
        for (std::size_t it = it0; it < it1; ++it) {
            const std::size_t jb = (it / m_blocks) * nb, je = std::min(n, jb + nb);
            const std::size_t ib = (it % m_blocks) * mb, ie = std::min(m, ib + mb);
            for (std::size_t k0 = 0; k0 < k; k0 += kc) {
                const std::size_t len = std::min(kc, k - k0);
                const WBlock blk = get_block(jb, je, k0, len, scratch);
                for (std::size_t i0 = ib; i0 < ie; i0 += MR) {
                    const float* xr[MR];
                    for (std::size_t r = 0; r < MR; ++r) xr[r] = x + std::min(i0 + r, ie - 1) * k + k0;
                    const std::size_t rows = std::min(MR, ie - i0);
                    for (std::size_t j0 = jb; j0 < je; j0 += NR) {
                        const float* wr[NR];
                        for (std::size_t c = 0; c < NR; ++c) wr[c] = blk.base + (std::min(j0 + c, je - 1) - jb) * blk.stride;
                        alignas(64) float out[MR * NR];
                        tile(xr, wr, len, out);
                        const std::size_t cols = std::min(NR, je - j0);
                        for (std::size_t r = 0; r < rows; ++r) {
                            float* yr = y + (i0 + r) * n + j0;
                            if (k0 == 0)
                                for (std::size_t c = 0; c < cols; ++c) yr[c] = out[r * NR + c];
                            else
                                for (std::size_t c = 0; c < cols; ++c) yr[c] += out[r * NR + c];
                        }
                    }
                }
            }
            if (bias)
                for (std::size_t i = ib; i < ie; ++i)
                    for (std::size_t j = jb; j < je; ++j) y[i * n + j] += bias[j];
        }
    };
    if (m * n * k < kParallelMinMacs) body(0, items);
    else pool.parallel_for(items, 1, body);
}

// GEMV driver: rows of w in groups of NR (tail rows duplicated). k is walked in the GEMM's kc
// blocks, each block's sums added to y in the same order as gemm_blocked does and the bias last,
// so a row's result is bitwise the same whether it is decoded alone or inside a batch.
template <std::size_t NR>
void gemv_rows(ThreadPool& pool, TileFn tile, const float* x, std::size_t k, const float* w, std::size_t n,
               const float* bias, float* y, std::size_t kc) {
    auto body = [&](std::size_t j0, std::size_t j1) {
        for (std::size_t j = j0; j < j1; j += NR) {
            const std::size_t cols = std::min(NR, j1 - j);
            for (std::size_t k0 = 0; k0 < k; k0 += kc) {
                const std::size_t len = std::min(kc, k - k0);
                const float* xr[1] = {x + k0};
                const float* wr[NR];
                for (std::size_t c = 0; c < NR; ++c) wr[c] = w + std::min(j + c, j1 - 1) * k + k0;
                alignas(64) float out[NR];
                tile(xr, wr, len, out);
                for (std::size_t c = 0; c < cols; ++c) y[j + c] = k0 == 0 ? out[c] : y[j + c] + out[c];
            }
            if (bias)
                for (std::size_t c = 0; c < cols; ++c) y[j + c] += bias[j + c];
        }
    };
    if (n * k < kParallelMinMacs) body(0, n);  // too small to be worth waking the workers
    else pool.parallel_for(n, 4 * NR, body);
}


inline void check_gemm_args(const void* x, std::size_t m, std::size_t k, const void* w, std::size_t n, const float* y) {
    if (m == 0 || n == 0) return;
    if (k == 0) throw shape_error("qlm::cpu::gemm: k must be positive");
    if (!x || !w || !y) throw invalid_argument("qlm::cpu::gemm: null x, w or y");
}

}  // namespace detail

// y[m, n] = x[m, k] · wᵀ + bias. x row stride k, y row stride n, w [n, k] row-major, bias may be null.
inline void gemm_f32(ThreadPool& pool, const float* x, std::size_t m, std::size_t k, const float* w, std::size_t n,
                     const float* bias, float* y, Isa isa = Isa::automatic) {
    detail::check_gemm_args(x, m, k, w, n, y);
    if (m == 0 || n == 0) return;
    isa = resolve_isa(isa);
    constexpr std::size_t kKc = 512;  // k block of the GEMM and of the GEMV alike (batch-invariant sums)
    auto fp32_block = [&](std::size_t j0, std::size_t, std::size_t k0, std::size_t, std::vector<float>&) {
        return detail::WBlock{w + j0 * k + k0, k};
    };
    switch (isa) {
#if QLM_CPU_X86
        case Isa::avx2:
            if (m == 1) detail::gemv_rows<8>(pool, &detail::avx2::tile_f32<1, 8>, x, k, w, n, bias, y, kKc);
            else detail::gemm_blocked<3, 4>(pool, &detail::avx2::tile_f32<3, 4>, x, m, k, n, bias, y, kKc, 64, fp32_block);
            return;
        case Isa::avx512:
            if (m == 1) detail::gemv_rows<8>(pool, &detail::avx512::tile_f32<1, 8>, x, k, w, n, bias, y, kKc);
            else detail::gemm_blocked<4, 4>(pool, &detail::avx512::tile_f32<4, 4>, x, m, k, n, bias, y, kKc, 64, fp32_block);
            return;
#endif
        default:
            pool.parallel_for(n, 16, [&](std::size_t j0, std::size_t j1) {
                for (std::size_t i = 0; i < m; ++i)
                    for (std::size_t j = j0; j < j1; ++j) {
                        double acc = bias ? bias[j] : 0.0;
                        for (std::size_t p = 0; p < k; ++p) acc += static_cast<double>(x[i * k + p]) * w[j * k + p];
                        y[i * n + j] = static_cast<float>(acc);
                    }
            });
            return;
    }
}

}  // namespace qlm::cpu
