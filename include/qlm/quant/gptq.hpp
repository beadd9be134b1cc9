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

}  // namespace detail

// ---- GPTQ ---------------------------------------------------------------------------------------
// Quantizes W [N, K] with the Hessian H [K, K] (taken by value: it is permuted and damped).
// Throws invalid_argument (bad options, NaN/Inf inputs), shape_error, or qlm::error when the
// Hessian stays singular after the damping retries or the result is not finite.
inline Result quantize(ThreadPool& pool, TensorView<const float> w_in, Tensor<double> h, const Options& opt = {}) {
    if (w_in.rank() != 2) throw shape_error("qlm::gptq::quantize: expected W [N, K], found " + w_in.shape().str());
    const std::size_t n = w_in.dim(0), k = w_in.dim(1);
    if (h.shape() != Shape{k, k})
        throw shape_error("qlm::gptq::quantize: expected H [" + std::to_string(k) + ", " + std::to_string(k) + "] for W " +
                          w_in.shape().str() + ", found " + h.shape().str());
    if (opt.bits != 2 && opt.bits != 3 && opt.bits != 4 && opt.bits != 8)
        throw invalid_argument("qlm::gptq::quantize: bits must be 2, 3, 4 or 8, found " + std::to_string(opt.bits));
    if (opt.block_size == 0) throw invalid_argument("qlm::gptq::quantize: block_size must be positive");
    if (!(opt.percdamp >= 0.0) || !std::isfinite(opt.percdamp))
        throw invalid_argument("qlm::gptq::quantize: percdamp must be >= 0, found " + std::to_string(opt.percdamp));
    if (opt.mse && (opt.clip.grid <= 0 || !(opt.clip.max_shrink > 0.0f) || !(opt.clip.norm > 0.0f)))
        throw invalid_argument("qlm::gptq::quantize: clip search needs grid > 0, max_shrink > 0 and norm > 0");

    Result res;
    res.bits = opt.bits;
    res.symmetric = opt.symmetric;
    res.rows = n;
    res.cols = k;
    if (n == 0 || k == 0) return res;
    const bool per_channel = opt.group_size == 0 || opt.group_size >= k;
    const std::size_t gsz = per_channel ? k : opt.group_size;
    const std::size_t groups = (k + gsz - 1) / gsz;
    res.group_size = gsz;
    res.groups = groups;
    const int bits = opt.bits, maxq = (1 << bits) - 1;
    const bool sym = opt.symmetric;
    const ClipSearch* clip = opt.mse ? &opt.clip : nullptr;

    double* hd = h.data();
    for (std::size_t i = 0; i < k * k; ++i)
        if (!std::isfinite(hd[i])) throw invalid_argument("qlm::gptq::quantize: H holds NaN or Inf");

    // Working copy of W (fp32, as the reference).
    Tensor<float> w(Shape{n, k});
    std::copy_n(w_in.data(), n * k, w.data());
    res.codes = Tensor<std::uint8_t>(Shape{n, k});
    res.scales = Tensor<float>(Shape{n, groups});
    if (!sym) res.zeros = Tensor<std::uint8_t>(Shape{n, groups});
    const std::size_t grain = std::max<std::size_t>(1, 8192 / k);

    // Group params (row r, group g) -> res. find_params throws on NaN / Inf.
    const auto set_params = [&](std::size_t r, std::size_t g, std::span<const float> vals) -> QParams {
        QParams p;
        try {
            p = find_params(vals, bits, sym, clip);
        } catch (const invalid_argument&) {
            throw invalid_argument("qlm::gptq::quantize: row " + std::to_string(r) + " of W holds NaN or Inf");
        }
        res.scales.data()[r * groups + g] = p.scale;
        if (!sym) res.zeros.data()[r * groups + g] = static_cast<std::uint8_t>(p.zero_point);
        return p;
    };

    // Per output channel: params from the whole original row (the reference does this before the
    // dead-column step).
    if (per_channel)
        pool.parallel_for(n, grain, [&](std::size_t r0, std::size_t r1) {
            for (std::size_t r = r0; r < r1; ++r) set_params(r, 0, {w.row(r), k});
        });

    // Dead inputs: H_ii == 0 -> H_ii = 1, W[:, i] = 0.
    std::vector<std::size_t> dead;
    for (std::size_t i = 0; i < k; ++i)
        if (hd[i * k + i] == 0.0) {
            hd[i * k + i] = 1.0;
            dead.push_back(i);
        }
    res.dead_columns = dead.size();
    if (!dead.empty())
        for (std::size_t r = 0; r < n; ++r)
            for (std::size_t i : dead) w.row(r)[i] = 0.0f;

    // Static groups: params from the (dead-zeroed) original weights, original column groups.
    if (!per_channel && opt.static_groups)
        pool.parallel_for(n, grain, [&](std::size_t r0, std::size_t r1) {
            for (std::size_t r = r0; r < r1; ++r)
                for (std::size_t g = 0; g < groups; ++g)
                    set_params(r, g, {w.row(r) + g * gsz, std::min(gsz, k - g * gsz)});
        });

    // act_order: processing order by descending diag(H) (stable, so ties keep column order).
    std::vector<std::uint32_t> order(k);
    std::iota(order.begin(), order.end(), 0u);
    if (opt.act_order) {
        std::stable_sort(order.begin(), order.end(),
                         [&](std::uint32_t a, std::uint32_t b) { return hd[a * k + a] > hd[b * k + b]; });
        res.perm = order;
    }
    res.g_idx.resize(k);
    for (std::size_t j = 0; j < k; ++j)
        res.g_idx[order[j]] = static_cast<std::uint32_t>((per_channel || opt.static_groups ? order[j] : j) / gsz);

    // Permuted H (copied into hp) and W (columns in processing order, wp).
    Tensor<double> hp;
    Tensor<float> wp;
    if (opt.act_order) {
        hp = Tensor<double>(Shape{k, k});
        for (std::size_t i = 0; i < k; ++i)
            for (std::size_t j = 0; j < k; ++j) hp.data()[i * k + j] = hd[order[i] * k + order[j]];
        h = Tensor<double>();
        wp = Tensor<float>(Shape{n, k});
        pool.parallel_for(n, grain, [&](std::size_t r0, std::size_t r1) {
            for (std::size_t r = r0; r < r1; ++r)
                for (std::size_t j = 0; j < k; ++j) wp.row(r)[j] = w.row(r)[order[j]];
        });
        w = Tensor<float>();
    } else {
        hp = std::move(h);
        wp = std::move(w);
    }

    // Damping, inverse, and the fallback.
    double mean_diag = 0.0;
    for (std::size_t i = 0; i < k; ++i) mean_diag += hp.data()[i * k + i];
    mean_diag /= static_cast<double>(k);
    using clock = std::chrono::steady_clock;
    const auto since = [](clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); };
    auto t_start = clock::now();
    Tensor<float> u;
    double rel = opt.percdamp, added = 0.0;
    for (int attempt = 0;; ++attempt) {
        const double damp = rel * mean_diag;
        for (std::size_t i = 0; i < k; ++i) hp.data()[i * k + i] += damp - added;
        added = damp;
        if (detail::inverse_upper_factor(hp, u, &pool)) {
            res.percdamp = rel;
            res.damp = damp;
            res.damp_retries = attempt;
            break;
        }
        if (attempt >= opt.max_damp_retries)
            throw error("qlm::gptq::quantize: the Hessian [" + std::to_string(k) + ", " + std::to_string(k) +
                        "] is not positive definite even with percdamp " + std::to_string(rel) + " (after " +
                        std::to_string(attempt) + " retries)");
        const double next = rel > 0.0 ? rel * 10.0 : 1e-3;
        detail::warn(opt, "qlm::gptq: Hessian [" + std::to_string(k) + ", " + std::to_string(k) +
                              "] is not positive definite with percdamp " + std::to_string(rel) +
                              "; retrying with percdamp " + std::to_string(next));
        rel = next;
    }
    hp = Tensor<double>();
    res.seconds_inverse = since(t_start);
    t_start = clock::now();

    // Block boundaries. Without static groups, a block also ends at every group start, so a
    // group's params always come from fully updated weights (the reference reads W, which lacks
    // the in-block updates of the current block when G < block_size; identical when block_size | G).
    std::vector<std::size_t> bounds{0};
    while (bounds.back() < k) {
        const std::size_t i1 = bounds.back();
        std::size_t i2 = std::min(k, i1 + opt.block_size);
        if (!per_channel && !opt.static_groups) i2 = std::min(i2, (i1 / gsz + 1) * gsz);
        bounds.push_back(i2);
    }
    std::size_t max_block = 0;
    for (std::size_t b = 1; b < bounds.size(); ++b) max_block = std::max(max_block, bounds[b] - bounds[b - 1]);

    // The column loop. Rows are independent (each row's error feedback only touches that row), so
    // the threads take slabs of rows and run all blocks without synchronising.
    double loss = 0.0;
    bool finite = true;
    std::mutex mu;
    const float* ud = u.data();
    pool.parallel_for(n, std::max<std::size_t>(4, grain), [&](std::size_t r0, std::size_t r1) {
        const std::size_t m = r1 - r0;
        std::vector<float> err(m * max_block);
        std::vector<QParams> cur(m);  // current group params per row
        double local_loss = 0.0;
        bool ok = true;
        for (std::size_t b = 0; b + 1 < bounds.size(); ++b) {
            const std::size_t i1 = bounds[b], i2 = bounds[b + 1], bw = i2 - i1;
            for (std::size_t r = r0; r < r1; ++r) {
                float* wr = wp.row(r);
                float* er = err.data() + (r - r0) * bw;
                std::uint8_t* codes = res.codes.row(r);
                QParams& p = cur[r - r0];
                if (per_channel && i1 == 0) p = {res.scale(r, 0), res.zero(r, 0)};
                for (std::size_t j = i1; j < i2; ++j) {
                    const std::size_t c = order[j];
                    if (!per_channel) {
                        if (opt.static_groups) {
                            const std::size_t g = c / gsz;
                            p = {res.scale(r, g), res.zero(r, g)};
                        } else if (j % gsz == 0) {
                            p = set_params(r, j / gsz, {wr + j, std::min(gsz, k - j)});
                        }
                    }
                    const float wv = wr[j];
                    const std::uint8_t code = quantize_code(wv, p.scale, p.zero_point, maxq);
                    const float q = dequantize_code(code, p.scale, p.zero_point);
                    codes[c] = code;
                    const float* urow = ud + j * k;
                    const float d = urow[j];
                    const float e = (wv - q) / d;
                    local_loss += 0.5 * static_cast<double>(e) * static_cast<double>(e);
                    ok &= std::isfinite(e);
                    er[j - i1] = e;
                    wr[j] = q;
                    for (std::size_t t = j + 1; t < i2; ++t) wr[t] -= e * urow[t];
                }
            }
            // Lazy batch update: W[rows, i2:] -= Err[rows, block] · U[block, i2:]
            if (i2 < k)
                qlm::detail::gemm_sub<float>(m, k - i2, bw, err.data(), bw, ud + i1 * k + i2, k, wp.row(r0) + i2, k);
        }
        std::lock_guard lock(mu);
        loss += local_loss;
        finite = finite && ok;
    });
    res.loss = loss;
    res.seconds_columns = since(t_start);
    if (!finite || !std::isfinite(loss))
        throw error("qlm::gptq::quantize: the error feedback produced NaN / Inf (Hessian too ill-conditioned; raise percdamp)");
    for (float s : res.scales.span())
        if (!std::isfinite(s)) throw error("qlm::gptq::quantize: a group scale is NaN / Inf");
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
