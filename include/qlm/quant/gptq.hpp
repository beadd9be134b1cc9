#pragma once
// GPTQ (Frantar et al. 2022, arXiv 2210.17323): quantize a linear layer's weight column by column,
// feeding each column's rounding error back into the columns not yet quantized through the inverse
// Hessian of the layer's calibration inputs. Follows the reference `fasterquant` (IST-DASLab/gptq)
// and AutoGPTQ (`static_groups`, `g_idx`). Documentation: docs/gptq.md.
//
// Layer convention: W is [N (out), K (in)] row-major (nn.Linear layout); an input is a row of K
// floats; groups run along K. Scale / zero-point per (row, group) use the RTN conventions of
// quant/rtn.hpp (find_params), so GPTQ and RTN results are directly comparable.
//
//   HessianAccumulator acc(K);                 // H = 2/n · Σ xᵀx over all calibration rows
//   acc.add(pool, x, rows);                    // any number of batches
//   auto r = gptq::quantize(pool, W, acc.hessian(), {.bits = 4, .group_size = 128});
//   Tensor<float> w_hat = r.dequantize();      // [N, K], original column order
//
// Column order: codes, g_idx and dequantize() are in the ORIGINAL column order. With act_order the
// columns are processed in the order perm (descending diag(H)): perm[j] = original column processed
// j-th. Without static_groups, groups are formed in that processing order, so original column c
// belongs to group g_idx[c] and g_idx[perm[j]] = j / G (AutoGPTQ's g_idx). Otherwise g_idx[c] = c / G.
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/quant/detail/linalg.hpp>
#include <qlm/quant/quant_tensor.hpp>
#include <qlm/quant/rtn.hpp>
#include <qlm/quant/scheme.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iostream>
#include <mutex>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace qlm::gptq {

// ---- Hessian ------------------------------------------------------------------------------------
// Running H = 2/n · Σ_rows xᵀx (K x K), updated per batch as the reference does
// (H *= n/(n+rows); H += 2/(n+rows) · XᵀX). Storage is double; each batch's XᵀX is accumulated
// in float FMA over chunks of 256 rows and added to the double matrix, so the fp32 rate is kept
// and the error does not grow with the number of calibration rows. Only the upper triangle is
// computed (a blocked syrk), then mirrored.
class HessianAccumulator {
public:
    explicit HessianAccumulator(std::size_t k) : k_(k), h_(Shape{k, k}) {
        if (k == 0) throw invalid_argument("qlm::gptq::HessianAccumulator: k must be positive");
    }

    // x: rows x k floats, row-major (one calibration input per row).
    void add(const float* x, std::size_t rows) { add_impl(x, rows, nullptr); }
    void add(ThreadPool& pool, const float* x, std::size_t rows) { add_impl(x, rows, &pool); }
    // x: [rows, k] (or [batch, seq, k], flattened).
    void add(TensorView<const float> x) { add_impl(check_view(x), x.numel() / k_, nullptr); }
    void add(ThreadPool& pool, TensorView<const float> x) { add_impl(check_view(x), x.numel() / k_, &pool); }

    const Tensor<double>& hessian() const noexcept { return h_; }
    std::size_t samples() const noexcept { return n_; }
    std::size_t k() const noexcept { return k_; }
    void reset() {
        std::fill_n(h_.data(), h_.numel(), 0.0);
        n_ = 0;
    }

private:
    // columns per packed panel = the register tile's width (two SIMD vectors)
    static constexpr std::size_t kPanel = qlm::detail::GemmTile<float>::nr;
    static constexpr std::size_t kChunk = 256;  // rows per float accumulation piece
    static constexpr std::size_t kPack = 512;  // rows packed (and H streamed) at a time
    static constexpr std::size_t kSub = 4;      // tile rows per register block

    const float* check_view(TensorView<const float> x) const {
        if (x.rank() < 1 || x.dim(x.rank() - 1) != k_)
            throw shape_error("qlm::gptq::HessianAccumulator::add: expected inputs [..., " + std::to_string(k_) +
                              "], found " + x.shape().str());
        return x.data();
    }

    void add_impl(const float* x, std::size_t rows, ThreadPool* pool);

    std::size_t k_;
    std::size_t n_ = 0;
    Tensor<double> h_;
    std::vector<float> packed_;
};

inline void HessianAccumulator::add_impl(const float* x, std::size_t rows, ThreadPool* pool) {
    if (rows == 0) return;
    const std::size_t k = k_;
    const double alpha = static_cast<double>(n_) / static_cast<double>(n_ + rows);
    n_ += rows;
    const double beta = 2.0 / static_cast<double>(n_);
    double* h = h_.data();
    const std::size_t panels = (k + kPanel - 1) / kPanel, kp = panels * kPanel;

    // Tiles (pi, pj), pj >= pi, of kPanel x kPanel; listed so that a tile index maps to a pair.
    std::vector<std::pair<std::uint32_t, std::uint32_t>> tiles;
    tiles.reserve(panels * (panels + 1) / 2);
    for (std::size_t pi = 0; pi < panels; ++pi)
        for (std::size_t pj = pi; pj < panels; ++pj)
            tiles.emplace_back(static_cast<std::uint32_t>(pi), static_cast<std::uint32_t>(pj));

    // Up to kPack rows are packed at a time; each tile then runs over all of them (float
    // accumulation in kChunk-row pieces, summed in double) and touches H once, folding in the
    // running-mean factor alpha, so H (75 MB at K = 3072) is streamed once per kPack rows.
    for (std::size_t r0 = 0; r0 < rows; r0 += kPack) {
        const std::size_t rc = std::min(kPack, rows - r0);
        const double a_scale = r0 == 0 ? alpha : 1.0;
        packed_.resize(kp * rc);
        // Pack: panel p holds rc rows of kPanel consecutive columns, zero padded past k.
        float* pk = packed_.data();
        qlm::detail::parallel_tiles(pool, panels, [&](std::size_t p) {
            float* dst = pk + p * rc * kPanel;
            const std::size_t c0 = p * kPanel, cw = std::min(kPanel, k - c0);
            for (std::size_t r = 0; r < rc; ++r) {
                const float* src = x + (r0 + r) * k + c0;
                float* d = dst + r * kPanel;
                for (std::size_t c = 0; c < cw; ++c) d[c] = src[c];
                for (std::size_t c = cw; c < kPanel; ++c) d[c] = 0.0f;
            }
        });
        qlm::detail::parallel_tiles(pool, tiles.size(), [&](std::size_t t) {
            const std::size_t pi = tiles[t].first, pj = tiles[t].second;
            const float* a = pk + pi * rc * kPanel;
            const float* b = pk + pj * rc * kPanel;
            const std::size_t j0 = pj * kPanel, jw = std::min(kPanel, k - j0);
            const std::size_t i_end = std::min(kPanel, k - pi * kPanel);  // valid tile rows
            alignas(64) float out[kSub * kPanel];
            double sum[kPanel * kPanel] = {};
            // pieces of kChunk rows outside, register blocks inside: a piece of both panels
            // (2 x kChunk x kPanel floats) stays in L1 while all the blocks use it
            for (std::size_t q0 = 0; q0 < rc; q0 += kChunk) {
                const std::size_t qc = std::min(kChunk, rc - q0);
                for (std::size_t s = 0; s < i_end; s += kSub) {
                    // out[u][v] = Σ_r x[r][i0 + s + u] · x[r][j0 + v] over this piece of rows
                    qlm::detail::tile_acc<float, static_cast<int>(kSub), qlm::detail::GemmTile<float>::nv>(
                        qc, a + q0 * kPanel + s, 1, kPanel, b + q0 * kPanel, kPanel, out);
                    double* sd = sum + s * kPanel;
                    for (std::size_t e = 0; e < kSub * kPanel; ++e) sd[e] += static_cast<double>(out[e]);
                }
            }
            for (std::size_t u = 0; u < i_end; ++u) {
                double* hr = h + (pi * kPanel + u) * k + j0;
                for (std::size_t v = 0; v < jw; ++v) hr[v] = a_scale * hr[v] + beta * sum[u * kPanel + v];
            }
        });
    }
    // Mirror the upper triangle into the lower one.
    qlm::detail::parallel_tiles(pool, panels, [&](std::size_t p) {
        for (std::size_t i = p * kPanel; i < std::min(k, (p + 1) * kPanel); ++i)
            for (std::size_t j = 0; j < i; ++j) h[i * k + j] = h[j * k + i];
    });
}

// ---- Options and result -------------------------------------------------------------------------
struct Options {
    int bits = 4;                   // 2, 3, 4 or 8
    std::size_t group_size = 128;   // columns per group along K; 0 = one group per output channel
    bool symmetric = true;          // zero point fixed at 2^(bits-1) (else stored per group, u8)
    double percdamp = 0.01;         // damping: percdamp · mean(diag H) added to diag H
    std::size_t block_size = 128;   // columns per lazy-update block
    bool act_order = false;         // process columns by descending diag(H)
    bool static_groups = false;     // group params from the original weights, original column groups
    bool mse = false;               // MSE clipping search in find_params (rtn.hpp ClipSearch)
    ClipSearch clip{};              // its grid / max_shrink / norm (reference defaults)
    int max_damp_retries = 5;       // on a Cholesky failure: damping x10 (0 -> 1e-3), this many times
    // Warnings (damping fallback). Empty: std::cerr.
    std::function<void(const std::string&)> warn{};
};

struct Result {
    int bits = 0;
    bool symmetric = true;
    std::size_t rows = 0, cols = 0;     // N, K
    std::size_t group_size = 0;         // effective G (K for one group per channel)
    std::size_t groups = 0;             // ceil(K / G)
    Tensor<std::uint8_t> codes;         // [N, K] unpacked codes, original column order
    Tensor<float> scales;               // [N, groups]
    Tensor<std::uint8_t> zeros;         // [N, groups] (asymmetric); empty when symmetric
    std::vector<std::uint32_t> g_idx;   // [K]: group of each original column
    std::vector<std::uint32_t> perm;    // [K] processing order (perm[j] = original column); empty without act_order
    double percdamp = 0.0;              // relative damping finally used (after retries)
    double damp = 0.0;                  // absolute value added to diag H
    int damp_retries = 0;               // Cholesky retries needed
    std::size_t dead_columns = 0;       // columns with H_ii == 0 (weights zeroed)
    double loss = 0.0;                  // Σ (w - q)² / Hinv_jj² / 2 as the reference's Losses
    double seconds_inverse = 0.0;       // wall time: damping + Cholesky + inverse (all attempts)
    double seconds_columns = 0.0;       // wall time: the column loop with its lazy updates

    int zero(std::size_t r, std::size_t g) const noexcept {
        return symmetric ? (1 << (bits - 1)) : zeros.data()[r * groups + g];
    }
    float scale(std::size_t r, std::size_t g) const noexcept { return scales.data()[r * groups + g]; }
    // Ŵ[r, c] = (codes[r, c] - z[r, g_idx[c]]) · s[r, g_idx[c]], [N, K] in original column order.
    Tensor<float> dequantize() const {
        Tensor<float> out(Shape{rows, cols});
        for (std::size_t r = 0; r < rows; ++r) {
            const std::uint8_t* cr = codes.row(r);
            float* o = out.row(r);
            for (std::size_t c = 0; c < cols; ++c) o[c] = dequantize_code(cr[c], scale(r, g_idx[c]), zero(r, g_idx[c]));
        }
        return out;
    }
    // True when g_idx[c] == c / group_size for every c (no act_order, or act_order with
    // static_groups): the result then fits the plain grouped layout of QuantTensor.
    bool ordered_groups() const noexcept {
        for (std::size_t c = 0; c < cols; ++c)
            if (g_idx[c] != c / group_size) return false;
        return true;
    }
};

// Packs a result into qlm's grouped format (quant_tensor.hpp). Needs ordered_groups() and a
// group size / K that the packed format accepts (throws invalid_argument / shape_error otherwise).
inline AnyQuantTensor to_quant_tensor(const Result& r) {
    if (!r.ordered_groups())
        throw invalid_argument("qlm::gptq::to_quant_tensor: act_order without static_groups permutes the groups (g_idx); "
                               "the grouped format needs g_idx[c] == c / group_size");
    QuantSpec spec;
    spec.bits = r.bits;
    spec.symmetric = r.symmetric;
    if (r.groups == 1) {
        spec.granularity = GranularityKind::per_channel;
        spec.group_size = 0;
    } else {
        spec.granularity = GranularityKind::per_group;
        spec.group_size = r.group_size;
    }
    AnyQuantTensor out(spec, r.rows, r.cols);
    for (std::size_t i = 0; i < r.rows; ++i)
        out.set_row(i, {r.codes.row(i), r.cols}, {r.scales.row(i), r.groups},
                    r.symmetric ? std::span<const std::uint8_t>{} : std::span<const std::uint8_t>{r.zeros.row(i), r.groups});
    return out;
}

namespace detail {

// Relative pivot tolerance of the Cholesky factorisation: a pivot <= 1e-10 · its diagonal entry
// counts as a failure (numerically singular), which the damping fallback then fixes.
inline constexpr double kPivotTolerance = 1e-10;

inline void warn(const Options& opt, const std::string& msg) {
    if (opt.warn)
        opt.warn(msg);
    else
        std::cerr << msg << '\n';
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Hinv = upper Cholesky factor U of H^-1 (H^-1 = Uᵀ U), as the reference's
// cholesky(cholesky_inverse(cholesky(H)), upper=True), computed with one factorisation: with
// J the reversal, J H J = L Lᵀ gives H = Ũ Ũᵀ for the upper Ũ = J L J, so H^-1 = Ũ^-ᵀ Ũ^-1 and
// U = Ũ^-1 = J L^-1 J (the Cholesky factor is unique). `hp` is the (permuted) H with damping on its
// diagonal; returns false when the factorisation fails.
inline bool inverse_upper_factor(const Tensor<double>& hp, Tensor<float>& u, ThreadPool* pool) {
    const std::size_t k = hp.dim(0);
    Tensor<double> a(Shape{k, k});
    const double* h = hp.data();
    double* ad = a.data();
    qlm::detail::parallel_tiles(pool, (k + 63) / 64, [&](std::size_t t) {
        for (std::size_t i = t * 64; i < std::min(k, t * 64 + 64); ++i)
            for (std::size_t j = 0; j <= i; ++j) ad[i * k + j] = h[(k - 1 - i) * k + (k - 1 - j)];
    });
    if (qlm::detail::cholesky_lower(ad, k, pool, kPivotTolerance) >= 0) return false;
    const qlm::detail::PanelMatrix x = qlm::detail::invert_lower(ad, k, pool);
    a = Tensor<double>();  // (free it early: K = 3072 is 75 MB)
    bool finite = true;
    std::mutex mu;
    u = Tensor<float>(Shape{k, k});
    float* ud = u.data();
    qlm::detail::parallel_tiles(pool, (k + 63) / 64, [&](std::size_t t) {
        bool ok = true;
        for (std::size_t i = t * 64; i < std::min(k, t * 64 + 64); ++i)
            for (std::size_t j = i; j < k; ++j) {
                const double v = x.at(k - 1 - i, k - 1 - j);
                ok &= std::isfinite(v);
                ud[i * k + j] = static_cast<float>(v);
            }
        if (!ok) {
            std::lock_guard lock(mu);
            finite = false;
        }
    });
    return finite;
}

// What quantize() derives from the options and W's shape, shared by the steps below.
struct Plan {
    std::size_t n = 0, k = 0;
    std::size_t group_size = 0;        // G; K for one group per output channel
    std::size_t groups = 0;            // ceil(K / G)
    bool per_channel = false;
    bool static_groups = false;        // Options::static_groups, with more than one group
    int bits = 4, maxq = 15;
    bool symmetric = true;
    const ClipSearch* clip = nullptr;  // MSE clipping search, or plain min/max
    std::size_t block_size = 128;
    std::size_t grain = 1;             // fewest rows a parallel task takes

    // Per channel and with static groups, every group's params exist before the column loop and a
    // group is G consecutive original columns; otherwise it is G consecutive processed columns.
    bool params_up_front() const noexcept { return per_channel || static_groups; }
    // Group of original column c, processed j-th.
    std::size_t group_of(std::size_t j, std::size_t c) const noexcept { return (params_up_front() ? c : j) / group_size; }
};

inline void check_arguments(TensorView<const float> w, const Tensor<double>& h, const Options& opt) {
    if (w.rank() != 2) throw shape_error("qlm::gptq::quantize: expected W [N, K], found " + w.shape().str());
    const std::size_t k = w.dim(1);
    if (h.shape() != Shape{k, k})
        throw shape_error("qlm::gptq::quantize: expected H [" + std::to_string(k) + ", " + std::to_string(k) + "] for W " +
                          w.shape().str() + ", found " + h.shape().str());
    if (opt.bits != 2 && opt.bits != 3 && opt.bits != 4 && opt.bits != 8)
        throw invalid_argument("qlm::gptq::quantize: bits must be 2, 3, 4 or 8, found " + std::to_string(opt.bits));
    if (opt.block_size == 0) throw invalid_argument("qlm::gptq::quantize: block_size must be positive");
    if (!(opt.percdamp >= 0.0) || !std::isfinite(opt.percdamp))
        throw invalid_argument("qlm::gptq::quantize: percdamp must be >= 0, found " + std::to_string(opt.percdamp));
    if (opt.mse && (opt.clip.grid <= 0 || !(opt.clip.max_shrink > 0.0f) || !(opt.clip.norm > 0.0f)))
        throw invalid_argument("qlm::gptq::quantize: clip search needs grid > 0, max_shrink > 0 and norm > 0");
}

inline void check_finite(const Tensor<double>& h) {
    for (double v : h.span())
        if (!std::isfinite(v)) throw invalid_argument("qlm::gptq::quantize: H holds NaN or Inf");
}

// For n, k > 0.
inline Plan make_plan(std::size_t n, std::size_t k, const Options& opt) {
    Plan p;
    p.n = n;
    p.k = k;
    p.per_channel = opt.group_size == 0 || opt.group_size >= k;
    p.group_size = p.per_channel ? k : opt.group_size;
    p.groups = (k + p.group_size - 1) / p.group_size;
    p.static_groups = opt.static_groups && !p.per_channel;
    p.bits = opt.bits;
    p.maxq = (1 << opt.bits) - 1;
    p.symmetric = opt.symmetric;
    p.clip = opt.mse ? &opt.clip : nullptr;
    p.block_size = opt.block_size;
    p.grain = std::max<std::size_t>(1, 8192 / k);  // ~8k weights a task
    return p;
}

// The result's metadata and zero-initialised outputs; the steps below fill them in.
inline Result allocate_result(const Plan& plan) {
    Result res;
    res.bits = plan.bits;
    res.symmetric = plan.symmetric;
    res.rows = plan.n;
    res.cols = plan.k;
    res.group_size = plan.group_size;
    res.groups = plan.groups;
    res.codes = Tensor<std::uint8_t>(Shape{plan.n, plan.k});
    res.scales = Tensor<float>(Shape{plan.n, plan.groups});
    if (!plan.symmetric) res.zeros = Tensor<std::uint8_t>(Shape{plan.n, plan.groups});
    return res;
}

// Scale / zero point of group g of row r from `values` (RTN's find_params), stored in res.
inline QParams set_group_params(Result& res, const Plan& plan, std::size_t r, std::size_t g, std::span<const float> values) {
    QParams p;
    try {
        p = find_params(values, plan.bits, plan.symmetric, plan.clip);
    } catch (const invalid_argument&) {  // find_params' message cannot name the row
        throw invalid_argument("qlm::gptq::quantize: row " + std::to_string(r) + " of W holds NaN or Inf");
    }
    res.scales.data()[r * plan.groups + g] = p.scale;
    if (!plan.symmetric) res.zeros.data()[r * plan.groups + g] = static_cast<std::uint8_t>(p.zero_point);
    return p;
}

// Params of every group of G consecutive original columns (per channel: the whole row), from w as
// it is now: the params that exist before the column loop (Plan::params_up_front).
inline void set_params_up_front(ThreadPool& pool, const Tensor<float>& w, Result& res, const Plan& plan) {
    pool.parallel_for(plan.n, plan.grain, [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r)
            for (std::size_t g = 0; g < plan.groups; ++g) {
                const std::size_t c0 = g * plan.group_size;
                set_group_params(res, plan, r, g, {w.row(r) + c0, std::min(plan.group_size, plan.k - c0)});
            }
    });
}

// Inputs that calibration never saw (H_ii == 0): H_ii = 1 keeps H invertible, and W[:, i] = 0
// makes those weights quantize to exactly 0 (the reference's `dead`). Returns how many there are.
inline std::size_t zero_dead_columns(Tensor<double>& h, Tensor<float>& w) {
    const std::size_t k = h.dim(0);
    std::vector<std::size_t> dead;
    for (std::size_t i = 0; i < k; ++i)
        if (h.data()[i * k + i] == 0.0) {
            h.data()[i * k + i] = 1.0;
            dead.push_back(i);
        }
    for (std::size_t r = 0; r < w.dim(0) && !dead.empty(); ++r)
        for (std::size_t i : dead) w.row(r)[i] = 0.0f;
    return dead.size();
}

// Columns by descending diag(H) with act_order (stable: ties keep column order, so dead columns,
// whose diagonal is now 1, come last), else in order. order[j] = original column processed j-th.
inline std::vector<std::uint32_t> processing_order(const Tensor<double>& h, bool act_order) {
    const std::size_t k = h.dim(0);
    std::vector<std::uint32_t> order(k);
    std::iota(order.begin(), order.end(), 0u);
    if (act_order) {
        const double* hd = h.data();
        std::stable_sort(order.begin(), order.end(),
                         [&](std::uint32_t a, std::uint32_t b) { return hd[a * k + a] > hd[b * k + b]; });
    }
    return order;
}

// g_idx[c]: the group of original column c (docs/gptq.md, "perm and g_idx").
inline std::vector<std::uint32_t> group_index(const std::vector<std::uint32_t>& order, const Plan& plan) {
    std::vector<std::uint32_t> g_idx(plan.k);
    for (std::size_t j = 0; j < plan.k; ++j) g_idx[order[j]] = static_cast<std::uint32_t>(plan.group_of(j, order[j]));
    return g_idx;
}

// H with rows and columns in processing order.
inline Tensor<double> permute_hessian(const Tensor<double>& h, const std::vector<std::uint32_t>& order) {
    const std::size_t k = h.dim(0);
    Tensor<double> hp(Shape{k, k});
    for (std::size_t i = 0; i < k; ++i)
        for (std::size_t j = 0; j < k; ++j) hp.data()[i * k + j] = h.data()[order[i] * k + order[j]];
    return hp;
}

// W with columns in processing order.
inline Tensor<float> permute_columns(ThreadPool& pool, const Tensor<float>& w, const std::vector<std::uint32_t>& order,
                                     std::size_t grain) {
    const std::size_t n = w.dim(0), k = w.dim(1);
    Tensor<float> wp(Shape{n, k});
    pool.parallel_for(n, grain, [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r)
            for (std::size_t j = 0; j < k; ++j) wp.row(r)[j] = w.row(r)[order[j]];
    });
    return wp;
}

// Hinv = U (inverse_upper_factor) of H + damp · I, damp = percdamp · mean(diag H). A Hessian that
// is not positive definite (rank-deficient calibration, or worse) gets damping x10 (0 -> 1e-3) and
// another try, up to max_damp_retries times, each with a warning; res records what was used.
inline Tensor<float> damped_inverse_factor(ThreadPool& pool, Tensor<double> h, const Options& opt, Result& res) {
    const std::size_t k = h.dim(0);
    double mean_diag = 0.0;
    for (std::size_t i = 0; i < k; ++i) mean_diag += h.data()[i * k + i];
    mean_diag /= static_cast<double>(k);
    Tensor<float> u;
    double rel = opt.percdamp, added = 0.0;
    for (int attempt = 0;; ++attempt) {
        const double damp = rel * mean_diag;
        for (std::size_t i = 0; i < k; ++i) h.data()[i * k + i] += damp - added;
        added = damp;
        if (inverse_upper_factor(h, u, &pool)) {
            res.percdamp = rel;
            res.damp = damp;
            res.damp_retries = attempt;
            return u;
        }
        if (attempt >= opt.max_damp_retries)
            throw error("qlm::gptq::quantize: the Hessian [" + std::to_string(k) + ", " + std::to_string(k) +
                        "] is not positive definite even with percdamp " + std::to_string(rel) + " (after " +
                        std::to_string(attempt) + " retries)");
        const double next = rel > 0.0 ? rel * 10.0 : 1e-3;
        warn(opt, "qlm::gptq: Hessian [" + std::to_string(k) + ", " + std::to_string(k) +
                      "] is not positive definite with percdamp " + std::to_string(rel) + "; retrying with percdamp " +
                      std::to_string(next));
        rel = next;
    }
}

// Lazy-update blocks [bounds[b], bounds[b + 1]) of at most block_size columns. Unless the params
// exist up front, a block also ends at every group start, so a group's params come from fully
// updated weights (the reference reads W, which lacks the in-block updates of the current block
// when G < block_size; the two agree when block_size divides G).
inline std::vector<std::size_t> block_bounds(const Plan& plan) {
    std::vector<std::size_t> bounds{0};
    while (bounds.back() < plan.k) {
        const std::size_t i1 = bounds.back();
        std::size_t i2 = std::min(plan.k, i1 + plan.block_size);
        if (!plan.params_up_front()) i2 = std::min(i2, (i1 / plan.group_size + 1) * plan.group_size);
        bounds.push_back(i2);
    }
    return bounds;
}

// The column loop over W (processing order, updated in place) with Hinv = U, writing codes and
// (dynamic) group params into res. Rows are independent (a row's error feedback only moves along
// that row), so each thread takes a slab of rows and runs every block on it without synchronising.
class ColumnLoop {
public:
    struct Outcome {
        double loss = 0.0;   // Σ e² / 2, e = (w - q) / U_jj (the reference's Losses)
        bool finite = true;  // every e was finite
    };

    ColumnLoop(const Plan& plan, Tensor<float>& w, const Tensor<float>& u, const std::vector<std::uint32_t>& order, Result& res)
        : plan_(plan), w_(w), u_(u.data()), order_(order), res_(res), bounds_(block_bounds(plan)) {
        for (std::size_t b = 1; b < bounds_.size(); ++b) max_block_ = std::max(max_block_, bounds_[b] - bounds_[b - 1]);
    }

    Outcome run(ThreadPool& pool) {
        Outcome total;
        std::mutex mu;
        pool.parallel_for(plan_.n, std::max<std::size_t>(4, plan_.grain), [&](std::size_t r0, std::size_t r1) {
            const Outcome slab = quantize_rows(r0, r1);
            std::lock_guard lock(mu);
            total.loss += slab.loss;
            total.finite = total.finite && slab.finite;
        });
        return total;
    }

private:
    // Rows [r0, r1), block by block: the block's columns one at a time, then the lazy update of the
    // columns after it, W[rows, i2:] -= Err[rows, block] · U[block, i2:] (a GEMM).
    Outcome quantize_rows(std::size_t r0, std::size_t r1) {
        const std::size_t m = r1 - r0, k = plan_.k;
        std::vector<float> err(m * max_block_);
        std::vector<QParams> params(m);  // each row's current group params
        Outcome out;
        for (std::size_t b = 0; b + 1 < bounds_.size(); ++b) {
            const std::size_t i1 = bounds_[b], i2 = bounds_[b + 1], bw = i2 - i1;
            for (std::size_t r = r0; r < r1; ++r) quantize_block(r, i1, i2, params[r - r0], err.data() + (r - r0) * bw, out);
            if (i2 < k) qlm::detail::gemm_sub<float>(m, k - i2, bw, err.data(), bw, u_ + i1 * k + i2, k, w_.row(r0) + i2, k);
        }
        return out;
    }

    // Columns [i1, i2) of row r; err[j - i1] receives each column's e.
    void quantize_block(std::size_t r, std::size_t i1, std::size_t i2, QParams& p, float* err, Outcome& out) {
        float* wr = w_.row(r);
        std::uint8_t* codes = res_.codes.row(r);
        for (std::size_t j = i1; j < i2; ++j) {
            update_params(r, j, wr, p);
            const float e = quantize_and_propagate(wr, j, i2, p, codes[order_[j]]);
            out.loss += 0.5 * static_cast<double>(e) * static_cast<double>(e);
            out.finite = out.finite && std::isfinite(e);
            err[j - i1] = e;
        }
    }

    // The params for column j of row r: those set up front for its original group, or, at the start
    // of a dynamic group, new ones from the row's current (error-updated) weights of that group.
    void update_params(std::size_t r, std::size_t j, const float* wr, QParams& p) {
        if (plan_.params_up_front()) {
            const std::size_t g = plan_.group_of(j, order_[j]);
            p = {res_.scale(r, g), res_.zero(r, g)};
        } else if (j % plan_.group_size == 0) {
            p = set_group_params(res_, plan_, r, j / plan_.group_size, {wr + j, std::min(plan_.group_size, plan_.k - j)});
        }
    }

    // Quantizes wr[j] with p into `code`, replaces it by its dequantized value, and pushes the
    // error onto the rest of the block: wr[t] -= e · U[j, t] with e = (w - q) / U_jj. Returns e.
    float quantize_and_propagate(float* wr, std::size_t j, std::size_t i2, const QParams& p, std::uint8_t& code) const {
        const float wv = wr[j];
        code = quantize_code(wv, p.scale, p.zero_point, plan_.maxq);
        const float q = dequantize_code(code, p.scale, p.zero_point);
        const float* urow = u_ + j * plan_.k;
        const float e = (wv - q) / urow[j];
        wr[j] = q;
        for (std::size_t t = j + 1; t < i2; ++t) wr[t] -= e * urow[t];
        return e;
    }

    const Plan& plan_;
    Tensor<float>& w_;
    const float* u_;
    const std::vector<std::uint32_t>& order_;
    Result& res_;
    std::vector<std::size_t> bounds_;
    std::size_t max_block_ = 0;
};

// A NaN that got this far would otherwise reach the model unnoticed.
inline void check_finite_result(const Result& res, bool feedback_finite) {
    if (!feedback_finite || !std::isfinite(res.loss))
        throw error("qlm::gptq::quantize: the error feedback produced NaN / Inf (Hessian too ill-conditioned; raise percdamp)");
    for (float s : res.scales.span())
        if (!std::isfinite(s)) throw error("qlm::gptq::quantize: a group scale is NaN / Inf");
}

}  // namespace detail

// ---- GPTQ ---------------------------------------------------------------------------------------
// Quantizes W [N, K] with the Hessian H [K, K] (taken by value: it is permuted and damped).
// Throws invalid_argument (bad options, NaN/Inf inputs), shape_error, or qlm::error when the
// Hessian stays singular after the damping retries or the result is not finite.
inline Result quantize(ThreadPool& pool, TensorView<const float> w_in, Tensor<double> h, const Options& opt = {}) {
    detail::check_arguments(w_in, h, opt);
    const std::size_t n = w_in.dim(0), k = w_in.dim(1);
    if (n == 0 || k == 0) {
        Result empty;
        empty.bits = opt.bits;
        empty.symmetric = opt.symmetric;
        empty.rows = n;
        empty.cols = k;
        return empty;
    }
    detail::check_finite(h);
    const detail::Plan plan = detail::make_plan(n, k, opt);
    Result res = detail::allocate_result(plan);

    Tensor<float> w(Shape{n, k});  // working copy, fp32 as the reference's
    std::copy_n(w_in.data(), n * k, w.data());
    // The reference takes per-channel params from the original rows, before the dead-column step,
    // and static-group params from the dead-zeroed weights, after it.
    if (plan.per_channel) detail::set_params_up_front(pool, w, res, plan);
    res.dead_columns = detail::zero_dead_columns(h, w);
    if (plan.static_groups) detail::set_params_up_front(pool, w, res, plan);

    const std::vector<std::uint32_t> order = detail::processing_order(h, opt.act_order);
    res.g_idx = detail::group_index(order, plan);
    if (opt.act_order) {
        res.perm = order;
        h = detail::permute_hessian(h, order);
        w = detail::permute_columns(pool, w, order, plan.grain);
    }

    auto t0 = std::chrono::steady_clock::now();
    const Tensor<float> u = detail::damped_inverse_factor(pool, std::move(h), opt, res);
    res.seconds_inverse = detail::seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    const auto outcome = detail::ColumnLoop(plan, w, u, order, res).run(pool);
    res.loss = outcome.loss;
    res.seconds_columns = detail::seconds_since(t0);
    detail::check_finite_result(res, outcome.finite);
    return res;
}

// Single-threaded.
inline Result quantize(TensorView<const float> w, Tensor<double> h, const Options& opt = {}) {
    ThreadPool pool(1);
    return quantize(pool, w, std::move(h), opt);
}

// From an accumulator (copies its Hessian).
inline Result quantize(ThreadPool& pool, TensorView<const float> w, const HessianAccumulator& acc, const Options& opt = {}) {
    return quantize(pool, w, Tensor<double>(acc.hessian()), opt);
}

}  // namespace qlm::gptq
