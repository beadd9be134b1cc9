#pragma once
// Quantized GEMM / GEMV over repacked weights (PanelMatrix<Bits>, panel_matrix.hpp), one code path
// for decode (m = 1), batched decode and prefill:
//
//   gemm_a8   int8 activations (per token, W8A8 / W4A8 / W3A8): y = xs · Σ_g s (Σ u·a − z·A) + bias,
//             integer dot products with vpdpbusd (AVX-512 VNNI) or vpmaddubsw (AVX2);
//   gemm_wo   float activations (weight-only semantics, GPTQ/AWQ as their authors run them):
//             y = Σ_g s (Σ u·x − z·X) + bias.
//   linear_a8 / linear_wo take float x and do the per-token quantization (or group sums) first,
//             in per-thread scratch that is reused from call to call.
//
// Every output element is computed by the same operations whichever tile, work item or thread
// produces it, so results do not depend on the thread count. Docs: docs/kernels.md.
#include <qlm/backend/cpu/cpu_features.hpp>
#include <qlm/backend/cpu/detail/isa_kernels.hpp>
#include <qlm/backend/cpu/panel_matrix.hpp>
#include <qlm/backend/cpu/quant_reference.hpp>
#include <qlm/core/detail/intrinsics_diagnostics.hpp>
#include <qlm/core/error.hpp>
#include <qlm/core/thread_pool.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace qlm::cpu {

namespace detail {


// Plain C++ tiles for CPUs without AVX2 (and Isa::scalar): the same arithmetic as the vector
// tiles, one output at a time.
namespace portable {

template <class Half, std::size_t MR, std::size_t NP>
void tile_half(const HalfPanelMatrix<Half>& w, std::size_t p0, const float* const* xr, const float* const*, float* out) {
    for (std::size_t p = 0; p < NP; ++p) {
        const std::size_t panel = std::min(p0 + p, w.panels() - 1);
        for (std::size_t lane = 0; lane < kPanelRows; ++lane) {
            const std::size_t row = std::min(panel * kPanelRows + lane, w.rows() - 1);
            for (std::size_t r = 0; r < MR; ++r) {
                float acc = 0.0f;
                for (std::size_t c = 0; c < w.cols(); ++c) acc = std::fma(w.value(row, c), xr[r][c], acc);
                out[r * NP * kPanelRows + p * kPanelRows + lane] = acc;
            }
        }
    }
}

template <int Bits, std::size_t MR, std::size_t NP, class X>
void tile(const PanelMatrix<Bits>& w, std::size_t p0, const X* const* xr, const float* const* aux, float* out) {
    const std::size_t spg = w.kernel_group_size(), groups = w.groups();
    for (std::size_t p = 0; p < NP; ++p) {
        const std::size_t panel = std::min(p0 + p, w.panels() - 1);
        for (std::size_t lane = 0; lane < kPanelRows; ++lane) {
            const std::size_t row = std::min(panel * kPanelRows + lane, w.rows() - 1);
            const bool padding = panel * kPanelRows + lane >= w.rows();
            for (std::size_t r = 0; r < MR; ++r) {
                float facc = 0.0f;
                for (std::size_t g = 0; g < groups && !padding; ++g) {
                    std::conditional_t<std::is_same_v<X, float>, float, std::int32_t> acc{};
                    for (std::size_t c = g * spg; c < std::min((g + 1) * spg, w.cols()); ++c)
                        acc += static_cast<decltype(acc)>(w.code(row, c)) * xr[r][c];
                    const float s = w.scale(row, g);
                    const float sz = s * static_cast<float>(w.zero(row, g));
                    facc = std::fma(-sz, aux[r][g], std::fma(static_cast<float>(acc), s, facc));
                }
                out[r * NP * kPanelRows + p * kPanelRows + lane] = facc;
            }
        }
    }
}

inline void quantize_rows(const float* x, std::size_t k, std::size_t r0, std::size_t r1, std::size_t group_size, float static_scale,
                          std::int8_t* xq, float* scales, float* sums) {
    reference::quantize_activations(x + r0 * k, r1 - r0, k, static_scale, xq + r0 * k, scales + r0);
    const std::size_t groups = k / group_size;
    for (std::size_t r = r0; r < r1; ++r)
        for (std::size_t g = 0; g < groups; ++g) {
            std::int32_t s = 0;
            for (std::size_t p = g * group_size; p < (g + 1) * group_size; ++p) s += xq[r * k + p];
            sums[r * groups + g] = static_cast<float>(s);
        }
}

inline void group_sums_rows(const float* x, std::size_t k, std::size_t r0, std::size_t r1, std::size_t group_size, float* sums) {
    const std::size_t groups = k / group_size;
    for (std::size_t r = r0; r < r1; ++r)
        for (std::size_t g = 0; g < groups; ++g) {
            float s = 0.0f;
            for (std::size_t p = g * group_size; p < (g + 1) * group_size; ++p) s += x[r * k + p];
            sums[r * groups + g] = s;
        }
}

}  // namespace portable

template <class Matrix, class X>
using PanelTile = void (*)(const Matrix&, std::size_t, const X* const*, const float* const*, float*);

// Work items are (NP panels) x (block of x rows); a thread walks its items' x rows MR at a time
// against the same panels, which stay in L2. Short row tails reuse the full tile on duplicated
// rows and drop the extra outputs.
template <class Matrix, class X, std::size_t MR, std::size_t NP>
void run_panels(ThreadPool& pool, const Matrix& w, PanelTile<Matrix, X> tile, const X* x, const float* aux, std::size_t m,
                const float* row_scales, const float* bias, float* y) {
    const std::size_t n = w.rows(), k = w.padded_cols(), groups = w.groups();
    const std::size_t panel_groups = (w.panels() + NP - 1) / NP;
    std::size_t mb = m;
    const std::size_t threads = pool.size();
    if (panel_groups < 4 * threads && m > 4 * MR) {
        const std::size_t parts = std::min<std::size_t>(4 * threads, (m + MR - 1) / MR);
        mb = ((m + parts - 1) / parts + MR - 1) / MR * MR;
    }
    const std::size_t m_blocks = (m + mb - 1) / mb;
    auto body = [&](std::size_t it0, std::size_t it1) {
        for (std::size_t it = it0; it < it1; ++it) {
            const std::size_t p0 = (it / m_blocks) * NP;
            const std::size_t ib = (it % m_blocks) * mb, ie = std::min(m, ib + mb);
            const std::size_t j0 = p0 * kPanelRows;
            const std::size_t cols = std::min(NP * kPanelRows, n - j0);
            for (std::size_t i0 = ib; i0 < ie; i0 += MR) {
                const X* xr[MR];
                const float* ar[MR];
                for (std::size_t r = 0; r < MR; ++r) {
                    const std::size_t i = std::min(i0 + r, ie - 1);
                    xr[r] = x + i * k;
                    ar[r] = aux ? aux + i * groups : nullptr;
                }
                alignas(64) float out[MR * NP * kPanelRows];
                tile(w, p0, xr, ar, out);
                const std::size_t rows = std::min(MR, ie - i0);
                for (std::size_t r = 0; r < rows; ++r) {
                    float* yr = y + (i0 + r) * n + j0;
                    const float* o = out + r * NP * kPanelRows;
                    const float rs = row_scales ? row_scales[i0 + r] : 1.0f;
                    for (std::size_t c = 0; c < cols; ++c) yr[c] = std::fma(o[c], rs, bias ? bias[j0 + c] : 0.0f);
                }
            }
        }
    };
    const std::size_t items = panel_groups * m_blocks;
    if (m * n * k < kParallelMinMacs) body(0, items);
    else pool.parallel_for(items, 1, body);
}

// Tile shapes (MR x rows against NP panels) per ISA, sorted by MR: m rows take the first shape with
// MR >= m, else the last. AVX-512 has 32 vector registers, AVX2 16. A row's arithmetic is the same
// in every shape (batch invariance).
struct TileShape {
    std::size_t mr, np;
};
inline constexpr std::array<TileShape, 3> kQuantAvx512Shapes{{{1, 4}, {3, 2}, {4, 2}}};
inline constexpr std::array<TileShape, 2> kQuantAvx2Shapes{{{1, 1}, {2, 1}}};
inline constexpr std::array<TileShape, 1> kPortableShapes{{{1, 1}}};

template <auto Shapes, class Run>
void with_tile_shape(std::size_t m, Run&& run) {
    [&]<std::size_t... S>(std::index_sequence<S...>) {
        bool done = false;
        ((done = done || ((Shapes[S].mr >= m || S + 1 == Shapes.size()) &&
                          (run.template operator()<Shapes[S].mr, Shapes[S].np>(), true))),
         ...);
    }(std::make_index_sequence<Shapes.size()>{});
}

// Family::tile<Isa, MR, NP>() names the tile function; Family::avx512_shapes / avx2_shapes its shapes.
template <class Family, class Matrix, class X>
void dispatch_tiles(ThreadPool& pool, Isa isa, const Matrix& w, const X* x, const float* aux, std::size_t m,
                    const float* row_scales, const float* bias, float* y) {
    auto run_on = [&]<Isa I>() {
        return [&]<std::size_t MR, std::size_t NP>() {
            run_panels<Matrix, X, MR, NP>(pool, w, Family::template tile<I, MR, NP>(), x, aux, m, row_scales, bias, y);
        };
    };
    switch (isa) {
#if QLM_CPU_X86
        case Isa::avx512: return with_tile_shape<Family::avx512_shapes>(m, run_on.template operator()<Isa::avx512>());
        case Isa::avx2: return with_tile_shape<Family::avx2_shapes>(m, run_on.template operator()<Isa::avx2>());
#endif
        default: return with_tile_shape<kPortableShapes>(m, run_on.template operator()<Isa::scalar>());
    }
}

template <int Bits>
struct A8Tiles {
    // Wider codes decode to fewer operands per load: room for four panels at two rows.
    static constexpr auto avx512_shapes = [] {
        if constexpr (Bits >= 4) return std::array<TileShape, 4>{{{1, 4}, {2, 4}, {3, 2}, {4, 2}}};
        else return kQuantAvx512Shapes;
    }();
    static constexpr auto avx2_shapes = kQuantAvx2Shapes;
    template <Isa I, std::size_t MR, std::size_t NP>
    static constexpr PanelTile<PanelMatrix<Bits>, std::int8_t> tile() {
#if QLM_CPU_X86
        if constexpr (I == Isa::avx512) return &avx512::tile_a8<Bits, MR, NP>;
        else if constexpr (I == Isa::avx2) return &avx2::tile_a8<Bits, MR, NP>;
        else
#endif
            return &portable::tile<Bits, MR, NP, std::int8_t>;
    }
};

template <int Bits>
struct WeightOnlyTiles {
    static constexpr auto avx512_shapes = kQuantAvx512Shapes;
    static constexpr auto avx2_shapes = kQuantAvx2Shapes;
    template <Isa I, std::size_t MR, std::size_t NP>
    static constexpr PanelTile<PanelMatrix<Bits>, float> tile() {
#if QLM_CPU_X86
        if constexpr (I == Isa::avx512) return &avx512::tile_wo<Bits, MR, NP>;
        else if constexpr (I == Isa::avx2) return &avx2::tile_wo<Bits, MR, NP>;
        else
#endif
            return &portable::tile<Bits, MR, NP, float>;
    }
};

template <class Half>
struct HalfTiles {
    // No decoding: more rows per panel load pay off.
    static constexpr std::array<TileShape, 3> avx512_shapes{{{1, 4}, {3, 2}, {6, 2}}};
    static constexpr std::array<TileShape, 2> avx2_shapes{{{1, 2}, {3, 1}}};
    template <Isa I, std::size_t MR, std::size_t NP>
    static constexpr PanelTile<HalfPanelMatrix<Half>, float> tile() {
#if QLM_CPU_X86
        if constexpr (I == Isa::avx512) return &avx512::tile_half<Half, MR, NP>;
        else if constexpr (I == Isa::avx2) return &avx2::tile_half<Half, MR, NP>;
        else
#endif
            return &portable::tile_half<Half, MR, NP>;
    }
};

template <class Matrix>
void check_panel_args(const Matrix& w, const void* x, std::size_t m, const float* y, const char* who) {
    if (m == 0) return;
    if (w.rows() == 0) throw invalid_argument(std::string("qlm::cpu::") + who + ": empty weight matrix");
    if (!x || !y) throw invalid_argument(std::string("qlm::cpu::") + who + ": null x or y");
}

// Scratch of the calling thread, reused across calls (no allocation once it has grown).
struct ActivationScratch {
    std::vector<std::int8_t> xq;
    std::vector<float> scales, sums, gathered, padded;
};

// x itself, or a copy with rows of w.padded_cols() (zeros after cols()) when the two differ.
template <int Bits>
const float* padded_rows(const float* x, std::size_t m, const PanelMatrix<Bits>& w, std::vector<float>& buffer) {
    const std::size_t k = w.cols(), kp = w.padded_cols();
    if (k == kp) return x;
    buffer.assign(m * kp, 0.0f);
    for (std::size_t r = 0; r < m; ++r) std::copy_n(x + r * k, k, buffer.data() + r * kp);
    return buffer.data();
}
inline ActivationScratch& activation_scratch() {
    thread_local ActivationScratch scratch;
    return scratch;
}

}  // namespace detail

// Per-token int8 quantization of x [m, k]: xq = clamp(round(x / s), ±127) with s = max|x| / 127
// per row (or static_scale > 0 for every row), scales[m], and sums[m, k / group_size] = Σ xq per
// group, as floats (exact: |Σ| < 2^24 for k < 132k). Threaded over rows when m is large.
inline void quantize_activations(ThreadPool& pool, const float* x, std::size_t m, std::size_t k, std::size_t group_size,
                                 float static_scale, std::int8_t* xq, float* scales, float* sums, Isa isa = Isa::automatic) {
    if (group_size == 0 || k % group_size != 0)
        throw shape_error("qlm::cpu::quantize_activations: group size " + std::to_string(group_size) + " does not divide k = " +
                          std::to_string(k));
    isa = resolve_isa(isa);
    auto body = [&](std::size_t r0, std::size_t r1) {
        switch (isa) {
#if QLM_CPU_X86
            case Isa::avx512: detail::avx512::quantize_rows(x, k, r0, r1, group_size, static_scale, xq, scales, sums); return;
            case Isa::avx2: detail::avx2::quantize_rows(x, k, r0, r1, group_size, static_scale, xq, scales, sums); return;
#endif
            default: detail::portable::quantize_rows(x, k, r0, r1, group_size, static_scale, xq, scales, sums); return;
        }
    };
    if (m * k < 64 * 1024) body(0, m);
    else pool.parallel_for(m, 4, body);
}

// sums[m, k / group_size] = Σ x per group (the float path's zero-point term).
inline void activation_group_sums(ThreadPool& pool, const float* x, std::size_t m, std::size_t k, std::size_t group_size, float* sums,
                                  Isa isa = Isa::automatic) {
    isa = resolve_isa(isa);
    auto body = [&](std::size_t r0, std::size_t r1) {
        switch (isa) {
#if QLM_CPU_X86
            case Isa::avx512: detail::avx512::group_sums_rows(x, k, r0, r1, group_size, sums); return;
            case Isa::avx2: detail::avx2::group_sums_rows(x, k, r0, r1, group_size, sums); return;
#endif
            default: detail::portable::group_sums_rows(x, k, r0, r1, group_size, sums); return;
        }
    };
    if (m * k < 64 * 1024) body(0, m);
    else pool.parallel_for(m, 4, body);
}

// y[m, n] = x_scales ⊙ (xq · codes, with scales and zero points per group) + bias.
// xq [m, w.padded_cols()] int8 (zero in the padding), x_scales [m], x_sums [m, groups] from
// quantize_activations.
template <int Bits>
void gemm_a8(ThreadPool& pool, const std::int8_t* xq, const float* x_scales, const float* x_sums, std::size_t m,
             const PanelMatrix<Bits>& w, const float* bias, float* y, Isa isa = Isa::automatic) {
    detail::check_panel_args(w, xq, m, y, "gemm_a8");
    if (m == 0) return;
    if (!x_scales || !x_sums) throw invalid_argument("qlm::cpu::gemm_a8: null activation scales or sums");
    detail::dispatch_tiles<detail::A8Tiles<Bits>>(pool, resolve_isa(isa), w, xq, x_sums, m, x_scales, bias, y);
}

// y[m, n] = x · dequant(w)ᵀ + bias with float activations; x rows of w.padded_cols() (zero in the
// padding), x_sums [m, groups] (Σ x per group) from activation_group_sums.
template <int Bits>
void gemm_wo(ThreadPool& pool, const float* x, const float* x_sums, std::size_t m, const PanelMatrix<Bits>& w, const float* bias,
             float* y, Isa isa = Isa::automatic) {
    detail::check_panel_args(w, x, m, y, "gemm_wo");
    if (m == 0) return;
    if (!x_sums) throw invalid_argument("qlm::cpu::gemm_wo: null activation group sums");
    detail::dispatch_tiles<detail::WeightOnlyTiles<Bits>>(pool, resolve_isa(isa), w, x, x_sums, m, nullptr, bias, y);
}

// Float x [m, k] in, int8 activations inside: quantizes per token (static_scale > 0: that scale
// for every row), then gemm_a8.
template <int Bits>
void linear_a8(ThreadPool& pool, const float* x, std::size_t m, const PanelMatrix<Bits>& w, const float* bias, float* y,
               float static_scale = 0.0f, Isa isa = Isa::automatic) {
    detail::check_panel_args(w, x, m, y, "linear_a8");
    if (m == 0) return;
    auto& s = detail::activation_scratch();
    x = detail::padded_rows(x, m, w, s.padded);
    const std::size_t k = w.padded_cols();
    s.xq.resize(m * k);
    s.scales.resize(m);
    s.sums.resize(m * w.groups());
    quantize_activations(pool, x, m, k, w.kernel_group_size(), static_scale, s.xq.data(), s.scales.data(), s.sums.data(), isa);
    gemm_a8(pool, s.xq.data(), s.scales.data(), s.sums.data(), m, w, bias, y, isa);
}

// Float x [m, k] in, weight-only semantics.
template <int Bits>
void linear_wo(ThreadPool& pool, const float* x, std::size_t m, const PanelMatrix<Bits>& w, const float* bias, float* y,
               Isa isa = Isa::automatic) {
    detail::check_panel_args(w, x, m, y, "linear_wo");
    if (m == 0) return;
    auto& s = detail::activation_scratch();
    x = detail::padded_rows(x, m, w, s.padded);
    s.sums.resize(m * w.groups());
    activation_group_sums(pool, x, m, w.padded_cols(), w.kernel_group_size(), s.sums.data(), isa);
    gemm_wo(pool, x, s.sums.data(), m, w, bias, y, isa);
}

// y[m, n] = x · wᵀ + bias with 16-bit float weights (fp16 or bf16), fp32 arithmetic.
template <class Half>
void linear_half(ThreadPool& pool, const float* x, std::size_t m, const HalfPanelMatrix<Half>& w, const float* bias, float* y,
                 Isa isa = Isa::automatic) {
    detail::check_panel_args(w, x, m, y, "linear_half");
    if (m == 0) return;
    detail::dispatch_tiles<detail::HalfTiles<Half>>(pool, resolve_isa(isa), w, x, static_cast<const float*>(nullptr), m, nullptr, bias, y);
}

}  // namespace qlm::cpu
