#pragma once
// AWQ: activation-aware weight quantization (Lin et al., 2023, arXiv 2306.00978), the per-layer-group
// algorithm. Model-level wiring (which activations feed which linears, folding into LayerNorms) is the
// caller's; this header gives the searches and the small folding helpers. Notes: docs/awq.md.
//
// Conventions: W [N out, K in] row-major; calibration inputs X [n, K] (one row per token), the input
// shared by a group of linears (GPT-2: ln_1's output -> c_attn = fused q,k,v; ln_2's output -> c_fc).
// Weights are quantized with qlm's RTN convention (rtn.hpp: params_from_range / quantize_code /
// dequantize_code), so what the searches measure is exactly what quantize_rtn later stores.
//
// Scale search (reference: llm-awq auto_scale.py `_search_module_scale`), for alpha = i / grid:
//   s       = clamp(x_mean^alpha, 1e-4);  s /= sqrt(max(s) * min(s))      (clamp first, as the reference)
//   W'      = Q(W diag(s)) diag(s)^-1                                    (for every W of the group)
//   loss    = sum_W ||X W^T - X W'^T||^2 / (rows * sum_W N)               (mean over the concatenated outputs)
// alpha = 0 gives s = 1 exactly, i.e. plain RTN, and ties keep the smaller alpha, so the chosen scales
// are never worse than RTN on the calibration rows. The reference measures the parent module's
// output (e.g. the whole attention block); measuring the linear outputs is qlm's simplification.
// Folding: X W^T = (X diag(s)^-1)(W diag(s))^T, so the caller divides the producer of X by s
// (fold_into_norm / fold_into_linear_output) and quantizes W diag(s) (scale_weight_columns).
//
// Clip search (reference: auto_clip.py `auto_clip_layer`), per output row and quantization group:
// max_val = max|w_g| (1 - i / n_grid), i = 0 .. max_shrink * n_grid - 1; error of the group's partial
// output mean_t (x_t,g . (Q(clamp(w_g, -max_val, max_val)) - w_g))^2 on a row subsample of X; keep the
// least (i = 0 is no clipping, so clipping never increases the measured error). Run it on the scaled
// weights W diag(s) with the scaled inputs X diag(s)^-1, as the reference does.
//
// Loss evaluation: `direct` forms X D^T with D = W - W' (the blocked gemm_f32); `gram` uses
// ||X d||^2 = d (X^T X) d^T, costing N K^2 per candidate instead of rows N K; `automatic` picks the
// cheaper. The clip search always uses per-group Gram matrices (group_size^2 per candidate).
// Results do not depend on the thread count.
#include <qlm/backend/cpu/gemm_f32.hpp>
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/quant/rtn.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <vector>

namespace qlm::awq {

// How search_scales evaluates a candidate's loss (same value up to float rounding).
enum class LossMethod { automatic, direct, gram };

struct ScaleSearchOptions {
    int bits = 4;                   // 2 .. 8
    std::size_t group_size = 128;   // must divide K; 0 = one group per row (per-channel)
    bool symmetric = false;         // AWQ default: asymmetric (zero point)
    std::size_t grid = 20;          // alpha in {0, 1/grid, ..., (grid-1)/grid}
    std::size_t max_samples = 4096; // rows of X used (evenly strided subsample when X has more)
    bool duo_scaling = false;       // AutoAWQ's variant: s = x_mean^a / (w_mean^(1-a) + 1e-4)
    LossMethod method = LossMethod::automatic;
};

struct ScaleSearchResult {
    Tensor<float> scales;        // [K], the best alpha's s
    float best_alpha = 0.0f;
    double best_loss = 0.0;
    double loss_alpha0 = 0.0;    // alpha = 0: s = 1, plain RTN
    std::vector<double> losses;  // [grid], losses[i] for alpha = i / grid
};

struct ClipOptions {
    int bits = 4;
    std::size_t group_size = 128;  // must divide K; 0 = one group per row
    bool symmetric = false;
    std::size_t n_grid = 20;
    float max_shrink = 0.5f;        // candidates i = 0 .. int(max_shrink * n_grid) - 1
    std::size_t max_samples = 512;  // rows of X used (reference: n_sample_token = 512)
    // Only rows in [row_begin, row_end) are searched; the others get max_val = max|w| (no clipping).
    // GPT-2's fused c_attn: row_begin = 2 * n_embd clips v only (the reference skips q and k).
    std::size_t row_begin = 0;
    std::size_t row_end = std::numeric_limits<std::size_t>::max();
};

namespace detail {

inline std::size_t checked_group_size(int bits, std::size_t group_size, std::size_t k, const char* who) {
    if (bits < 2 || bits > 8)
        throw invalid_argument(std::string(who) + ": bits must be in [2, 8], found " + std::to_string(bits));
    const std::size_t gs = group_size == 0 ? k : group_size;
    if (k == 0 || k % gs != 0)
        throw shape_error(std::string(who) + ": K = " + std::to_string(k) + " is not a positive multiple of group size " +
                          std::to_string(gs));
    return gs;
}

inline void check_matrix(const Tensor<float>& t, const char* who, const char* name) {
    if (t.shape().rank() != 2 || t.numel() == 0)
        throw shape_error(std::string(who) + ": expected " + name + " to be a non-empty rank-2 tensor, found " +
                          t.shape().str());
}

inline void check_finite(std::span<const float> v, const char* who, const char* name) {
    for (std::size_t i = 0; i < v.size(); ++i)
        if (!std::isfinite(v[i]))
            throw invalid_argument(std::string(who) + ": " + name + " holds NaN or Inf at flat index " + std::to_string(i));
}

// min(n, max_rows) rows of X, row floor(i * n / m) for i < m (all rows, in order, when n <= max_rows).
inline Tensor<float> subsample_rows(const Tensor<float>& x, std::size_t max_rows, const char* who) {
    const std::size_t n = x.dim(0), k = x.dim(1);
    const std::size_t m = std::min(n, std::max<std::size_t>(1, max_rows));
    Tensor<float> out(Shape{m, k});
    for (std::size_t i = 0; i < m; ++i) std::copy_n(x.row(i * n / m), k, out.row(i));
    check_finite(out.span(), who, "X");
    return out;
}

// out = dequantize(quantize(w)) for a row of k values in groups of gs (qlm's RTN convention).
inline void fake_quant_row(const float* w, std::size_t k, std::size_t gs, int bits, bool sym, float* out) noexcept {
    const int maxq = (1 << bits) - 1;
    for (std::size_t g0 = 0; g0 < k; g0 += gs) {
        float lo = w[g0], hi = w[g0];
        for (std::size_t c = g0 + 1; c < g0 + gs; ++c) {
            lo = std::min(lo, w[c]);
            hi = std::max(hi, w[c]);
        }
        const QParams p = params_from_range(lo, hi, bits, sym);
        for (std::size_t c = g0; c < g0 + gs; ++c)
            out[c] = dequantize_code(quantize_code(w[c], p.scale, p.zero_point, maxq), p.scale, p.zero_point);
    }
}

// d = W - Q(W diag(s)) diag(s)^-1, [N, K].
inline void scaled_quant_error(ThreadPool& pool, const Tensor<float>& w, std::span<const float> s, std::size_t gs,
                               int bits, bool sym, Tensor<float>& d) {
    const std::size_t n = w.dim(0), k = w.dim(1);
    pool.parallel_for(n, 8, [&](std::size_t r0, std::size_t r1) {
        std::vector<float> ws(k), q(k);
        for (std::size_t r = r0; r < r1; ++r) {
            const float* wr = w.row(r);
            for (std::size_t c = 0; c < k; ++c) ws[c] = wr[c] * s[c];
            fake_quant_row(ws.data(), k, gs, bits, sym, q.data());
            float* dr = d.row(r);
            for (std::size_t c = 0; c < k; ++c) dr[c] = wr[c] - q[c] / s[c];
        }
    });
}

// Σ_rows Σ_cols a ∘ b over [rows, cols] (double, per-row partials summed in order: thread-count free).
inline double sum_products(ThreadPool& pool, const float* a, const float* b, std::size_t rows, std::size_t cols) {
    std::vector<double> part(rows, 0.0);
    pool.parallel_for(rows, 16, [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
            double acc = 0.0;
            const float* ar = a + r * cols;
            const float* br = b + r * cols;
            for (std::size_t c = 0; c < cols; ++c) acc += static_cast<double>(ar[c]) * br[c];
            part[r] = acc;
        }
    });
    return std::accumulate(part.begin(), part.end(), 0.0);
}

// ||X D^T||_F^2, X [m, K], D [N, K], in row chunks of X so the output stays small.
inline double output_error_direct(ThreadPool& pool, const Tensor<float>& x, const Tensor<float>& d, std::vector<float>& y) {
    const std::size_t m = x.dim(0), k = x.dim(1), n = d.dim(0);
    const std::size_t chunk = std::max<std::size_t>(64, std::min<std::size_t>(m, (std::size_t{4} << 20) / n));
    y.resize(std::min(chunk, m) * n);
    double total = 0.0;
    for (std::size_t i0 = 0; i0 < m; i0 += chunk) {
        const std::size_t rows = std::min(chunk, m - i0);
        cpu::gemm_f32(pool, x.row(i0), rows, k, d.data(), n, nullptr, y.data());
        total += sum_products(pool, y.data(), y.data(), rows, n);
    }
    return total;
}

// ||X D^T||_F^2 = Σ D ∘ (D G) with G = X^T X [K, K] (symmetric, so it is its own w for gemm_f32).
inline double output_error_gram(ThreadPool& pool, const Tensor<float>& gram, const Tensor<float>& d, Tensor<float>& p) {
    const std::size_t n = d.dim(0), k = d.dim(1);
    if (!(p.shape() == d.shape())) p = Tensor<float>(d.shape());
    cpu::gemm_f32(pool, d.data(), n, k, gram.data(), k, nullptr, p.data());
    return sum_products(pool, d.data(), p.data(), n, k);
}

// X^T X for X [m, K].
inline Tensor<float> gram_matrix(ThreadPool& pool, const Tensor<float>& x) {
    const std::size_t k = x.dim(1);
    const Tensor<float> xt = qlm::transpose(x);
    Tensor<float> g(Shape{k, k});
    cpu::gemm_f32(pool, xt.data(), k, x.dim(0), xt.data(), k, nullptr, g.data());
    return g;
}

// AutoAWQ's w_mean: per column, the mean over all rows of |w| / (max|w| of its group + 1e-6).
inline std::vector<double> weight_group_relative_mean(std::span<const Tensor<float>* const> weights, std::size_t gs) {
    const std::size_t k = weights.front()->dim(1);
    std::vector<double> sum(k, 0.0);
    std::size_t rows = 0;
    for (const Tensor<float>* w : weights) {
        for (std::size_t r = 0; r < w->dim(0); ++r) {
            const float* wr = w->row(r);
            for (std::size_t g0 = 0; g0 < k; g0 += gs) {
                float mx = 0.0f;
                for (std::size_t c = g0; c < g0 + gs; ++c) mx = std::max(mx, std::fabs(wr[c]));
                for (std::size_t c = g0; c < g0 + gs; ++c) sum[c] += std::fabs(wr[c]) / (static_cast<double>(mx) + 1e-6);
            }
        }
        rows += w->dim(0);
    }
    for (double& v : sum) v /= static_cast<double>(rows);
    return sum;
}

inline void check_scales(std::span<const float> s, std::size_t k, const char* who) {
    if (s.size() != k)
        throw shape_error(std::string(who) + ": expected " + std::to_string(k) + " scales, found " + std::to_string(s.size()));
    for (std::size_t j = 0; j < k; ++j)
        if (!(std::isfinite(s[j]) && s[j] > 0.0f))
            throw invalid_argument(std::string(who) + ": scale " + std::to_string(j) + " must be positive and finite, found " +
                                   std::to_string(s[j]));
}

}  // namespace detail

// Per-input-channel mean |x| over the rows of X [n, K] (the reference's x_max / AutoAWQ's x_mean).
inline Tensor<float> activation_mean_abs(const Tensor<float>& x) {
    detail::check_matrix(x, "qlm::awq::activation_mean_abs", "X");
    const std::size_t n = x.dim(0), k = x.dim(1);
    std::vector<double> acc(k, 0.0);
    for (std::size_t i = 0; i < n; ++i) {
        const float* xr = x.row(i);
        for (std::size_t j = 0; j < k; ++j) acc[j] += std::fabs(xr[j]);
    }
    Tensor<float> out(Shape{k});
    for (std::size_t j = 0; j < k; ++j) out.data()[j] = static_cast<float>(acc[j] / static_cast<double>(n));
    return out;
}

// The normalised AWQ scales for one alpha: s = clamp(x_mean^alpha, 1e-4), s /= sqrt(max(s) min(s)).
// (w_mean, if not empty: AutoAWQ's duo scaling, s = clamp(x_mean^alpha / (w_mean^(1-alpha) + 1e-4), 1e-4).)
inline Tensor<float> scales_for_alpha(std::span<const float> x_mean_abs, double alpha, std::span<const double> w_mean = {}) {
    const std::size_t k = x_mean_abs.size();
    if (!w_mean.empty() && w_mean.size() != k)
        throw shape_error("qlm::awq::scales_for_alpha: w_mean has " + std::to_string(w_mean.size()) + " entries, expected " +
                          std::to_string(k));
    std::vector<double> s(k);
    for (std::size_t j = 0; j < k; ++j) {
        double v = std::pow(static_cast<double>(x_mean_abs[j]), alpha);  // pow(0, 0) = 1
        if (!w_mean.empty()) v /= std::pow(w_mean[j], 1.0 - alpha) + 1e-4;
        s[j] = std::max(v, 1e-4);
    }
    const auto [mn, mx] = std::minmax_element(s.begin(), s.end());
    const double norm = std::sqrt(*mn * *mx);
    Tensor<float> out(Shape{k});
    for (std::size_t j = 0; j < k; ++j) out.data()[j] = static_cast<float>(s[j] / norm);
    return out;
}

// Searches the per-input-channel scales for the linears in `weights` (each [N_i, K]) that share input X.
inline ScaleSearchResult search_scales(ThreadPool& pool, const Tensor<float>& x, std::span<const Tensor<float>* const> weights,
                                       const ScaleSearchOptions& opt = {}) {
    constexpr const char* who = "qlm::awq::search_scales";
    detail::check_matrix(x, who, "X");
    if (weights.empty()) throw invalid_argument(std::string(who) + ": needs at least one weight");
    if (opt.grid == 0) throw invalid_argument(std::string(who) + ": grid must be positive");
    const std::size_t k = x.dim(1);
    const std::size_t gs = detail::checked_group_size(opt.bits, opt.group_size, k, who);
    std::size_t n_total = 0;
    for (std::size_t i = 0; i < weights.size(); ++i) {
        const Tensor<float>* w = weights[i];
        if (!w) throw invalid_argument(std::string(who) + ": weight " + std::to_string(i) + " is null");
        if (w->shape().rank() != 2 || w->dim(1) != k || w->dim(0) == 0)
            throw shape_error(std::string(who) + ": weight " + std::to_string(i) + " must be [N, " + std::to_string(k) +
                              "] to match X " + x.shape().str() + ", found " + w->shape().str());
        detail::check_finite(w->span(), who, ("weight " + std::to_string(i)).c_str());
        n_total += w->dim(0);
    }

    const Tensor<float> xs = detail::subsample_rows(x, opt.max_samples, who);
    const std::size_t m = xs.dim(0);
    const Tensor<float> x_mean = activation_mean_abs(x);
    std::vector<double> w_mean;
    if (opt.duo_scaling) w_mean = detail::weight_group_relative_mean(weights, gs);

    // Cost (multiply-adds) of each way to evaluate all candidates.
    const double direct_cost = static_cast<double>(opt.grid) * static_cast<double>(m) * static_cast<double>(n_total) * static_cast<double>(k);
    const double gram_cost = static_cast<double>(k) * static_cast<double>(k) *
                             (static_cast<double>(m) + static_cast<double>(opt.grid) * static_cast<double>(n_total));
    const bool use_gram = opt.method == LossMethod::gram || (opt.method == LossMethod::automatic && gram_cost < direct_cost);
    Tensor<float> gram;
    if (use_gram) gram = detail::gram_matrix(pool, xs);

    ScaleSearchResult res;
    res.losses.reserve(opt.grid);
    std::vector<float> ybuf;
    Tensor<float> pbuf;
    std::vector<Tensor<float>> d;
    for (const Tensor<float>* w : weights) d.emplace_back(w->shape());
    double best = std::numeric_limits<double>::infinity();
    for (std::size_t i = 0; i < opt.grid; ++i) {
        const double alpha = static_cast<double>(i) / static_cast<double>(opt.grid);
        Tensor<float> s = scales_for_alpha(x_mean.span(), alpha, w_mean);
        double err = 0.0;
        for (std::size_t wi = 0; wi < weights.size(); ++wi) {
            detail::scaled_quant_error(pool, *weights[wi], s.span(), gs, opt.bits, opt.symmetric, d[wi]);
            err += use_gram ? detail::output_error_gram(pool, gram, d[wi], pbuf)
                            : detail::output_error_direct(pool, xs, d[wi], ybuf);
        }
        const double loss = err / (static_cast<double>(m) * static_cast<double>(n_total));
        res.losses.push_back(loss);
        if (loss < best) {  // strict: ties keep the smaller alpha
            best = loss;
            res.best_alpha = static_cast<float>(alpha);
            res.scales = std::move(s);
        }
    }
    if (res.scales.numel() == 0)  // every loss was NaN (cannot happen with finite inputs); fall back to RTN
        res.scales = scales_for_alpha(x_mean.span(), 0.0);
    res.best_loss = std::isfinite(best) ? best : res.losses.front();
    res.loss_alpha0 = res.losses.front();
    return res;
}

inline ScaleSearchResult search_scales(ThreadPool& pool, const Tensor<float>& x,
                                       std::initializer_list<const Tensor<float>*> weights, const ScaleSearchOptions& opt = {}) {
    return search_scales(pool, x, std::span<const Tensor<float>* const>(weights.begin(), weights.size()), opt);
}

// Searches the clipping threshold per (row, group) of W [N, K] on inputs X [n, K]; returns max_val [N, K / gs].
inline Tensor<float> search_clip(ThreadPool& pool, const Tensor<float>& x, const Tensor<float>& w, const ClipOptions& opt = {}) {
    constexpr const char* who = "qlm::awq::search_clip";
    detail::check_matrix(x, who, "X");
    detail::check_matrix(w, who, "W");
    const std::size_t n = w.dim(0), k = w.dim(1);
    if (x.dim(1) != k)
        throw shape_error(std::string(who) + ": X " + x.shape().str() + " and W " + w.shape().str() + " disagree on K");
    const std::size_t gs = detail::checked_group_size(opt.bits, opt.group_size, k, who);
    if (opt.n_grid == 0 || !(opt.max_shrink >= 0.0f && opt.max_shrink < 1.0f))
        throw invalid_argument(std::string(who) + ": needs n_grid > 0 and max_shrink in [0, 1)");
    detail::check_finite(w.span(), who, "W");
    const std::size_t groups = k / gs;
    const std::size_t cands =
        std::max<std::size_t>(1, static_cast<std::size_t>(opt.max_shrink * static_cast<float>(opt.n_grid)));
    const auto factor = [&](std::size_t i) { return 1.0f - static_cast<float>(i) / static_cast<float>(opt.n_grid); };

    Tensor<float> max_val(Shape{n, groups});
    for (std::size_t r = 0; r < n; ++r)
        for (std::size_t g = 0; g < groups; ++g) {
            float mx = 0.0f;
            for (std::size_t c = g * gs; c < (g + 1) * gs; ++c) mx = std::max(mx, std::fabs(w.row(r)[c]));
            max_val.row(r)[g] = mx;
        }
    const std::size_t rb = std::min(opt.row_begin, n), re = std::max(rb, std::min(opt.row_end, n));
    const std::size_t nr = re - rb;
    if (nr == 0 || cands == 1) return max_val;

    const Tensor<float> xt = qlm::transpose(detail::subsample_rows(x, opt.max_samples, who));  // [K, m]
    const std::size_t m = xt.dim(1);
    Tensor<float> gram(Shape{gs, gs});
    Tensor<float> dq(Shape{nr * cands, gs}), pq(Shape{nr * cands, gs});
    for (std::size_t g = 0; g < groups; ++g) {
        const float* xg = xt.row(g * gs);  // [gs, m]: the group's channels as rows
        cpu::gemm_f32(pool, xg, gs, m, xg, gs, nullptr, gram.data());
        // Candidate errors d = Q(clamp(w)) - w, one row per (row, candidate).
        pool.parallel_for(nr, 8, [&](std::size_t r0, std::size_t r1) {
            std::vector<float> cw(gs);
            for (std::size_t r = r0; r < r1; ++r) {
                const float* wg = w.row(rb + r) + g * gs;
                const float mx = max_val.row(rb + r)[g];
                for (std::size_t i = 0; i < cands; ++i) {
                    const float mv = mx * factor(i);
                    for (std::size_t c = 0; c < gs; ++c) cw[c] = std::clamp(wg[c], -mv, mv);
                    float* dr = dq.row(r * cands + i);
                    detail::fake_quant_row(cw.data(), gs, gs, opt.bits, opt.symmetric, dr);
                    for (std::size_t c = 0; c < gs; ++c) dr[c] -= wg[c];
                }
            }
        });
        cpu::gemm_f32(pool, dq.data(), nr * cands, gs, gram.data(), gs, nullptr, pq.data());  // d G
        pool.parallel_for(nr, 8, [&](std::size_t r0, std::size_t r1) {
            for (std::size_t r = r0; r < r1; ++r) {
                double best = std::numeric_limits<double>::infinity();
                std::size_t best_i = 0;
                for (std::size_t i = 0; i < cands; ++i) {
                    const float* dr = dq.row(r * cands + i);
                    const float* pr = pq.row(r * cands + i);
                    double e = 0.0;
                    for (std::size_t c = 0; c < gs; ++c) e += static_cast<double>(dr[c]) * pr[c];
                    if (e < best) {  // strict: ties keep the larger max_val (less clipping)
                        best = e;
                        best_i = i;
                    }
                }
                float& mv = max_val.row(rb + r)[g];
                mv *= factor(best_i);
            }
        });
    }
    return max_val;
}

// Clamps W [N, K] to [-max_val, max_val] per (row, group); max_val is [N, K / gs] from search_clip.
inline void apply_clip(Tensor<float>& w, const Tensor<float>& max_val) {
    constexpr const char* who = "qlm::awq::apply_clip";
    detail::check_matrix(w, who, "W");
    const std::size_t n = w.dim(0), k = w.dim(1);
    if (max_val.shape().rank() != 2 || max_val.dim(0) != n || max_val.dim(1) == 0 || k % max_val.dim(1) != 0)
        throw shape_error(std::string(who) + ": max_val must be [" + std::to_string(n) + ", groups] with groups dividing " +
                          std::to_string(k) + ", found " + max_val.shape().str());
    const std::size_t groups = max_val.dim(1), gs = k / groups;
    for (std::size_t r = 0; r < n; ++r)
        for (std::size_t g = 0; g < groups; ++g) {
            const float mv = max_val.row(r)[g];
            if (!(mv >= 0.0f))
                throw invalid_argument(std::string(who) + ": max_val at row " + std::to_string(r) + ", group " +
                                       std::to_string(g) + " must be >= 0, found " + std::to_string(mv));
            float* wr = w.row(r) + g * gs;
            for (std::size_t c = 0; c < gs; ++c) wr[c] = std::clamp(wr[c], -mv, mv);
        }
}

// Indices (ascending) of the ceil(top_fraction * K) input channels with the largest mean |x|
// (ties: the lower index first). For keeping those channels at higher precision.
inline std::vector<std::size_t> salient_channels(const Tensor<float>& x_mean_abs, double top_fraction) {
    if (!(top_fraction >= 0.0 && top_fraction <= 1.0))
        throw invalid_argument("qlm::awq::salient_channels: top_fraction must be in [0, 1], found " + std::to_string(top_fraction));
    const std::size_t k = x_mean_abs.numel();
    const auto count = std::min(k, static_cast<std::size_t>(std::ceil(top_fraction * static_cast<double>(k) - 1e-9)));
    std::vector<std::size_t> idx(k);
    std::iota(idx.begin(), idx.end(), std::size_t{0});
    const float* v = x_mean_abs.data();
    std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return v[a] > v[b]; });
    idx.resize(count);
    std::sort(idx.begin(), idx.end());
    return idx;
}

// ---- Folding helpers -------------------------------------------------------------------------
// W diag(s): multiplies column j of W [N, K] by s_j (the weights that consume the scaled input).
inline void scale_weight_columns(Tensor<float>& w, std::span<const float> s) {
    detail::check_matrix(w, "qlm::awq::scale_weight_columns", "W");
    detail::check_scales(s, w.dim(1), "qlm::awq::scale_weight_columns");
    for (std::size_t r = 0; r < w.dim(0); ++r)
        for (std::size_t j = 0; j < s.size(); ++j) w.row(r)[j] *= s[j];
}

// X diag(s)^-1: divides column j of X [n, K] by s_j (calibration inputs after folding, for search_clip).
inline void divide_input_columns(Tensor<float>& x, std::span<const float> s) {
    detail::check_matrix(x, "qlm::awq::divide_input_columns", "X");
    detail::check_scales(s, x.dim(1), "qlm::awq::divide_input_columns");
    for (std::size_t r = 0; r < x.dim(0); ++r)
        for (std::size_t j = 0; j < s.size(); ++j) x.row(r)[j] /= s[j];
}

// A LayerNorm producing X: gamma /= s, beta /= s (beta may be empty).
inline void fold_into_norm(std::span<float> gamma, std::span<float> beta, std::span<const float> s) {
    detail::check_scales(s, gamma.size(), "qlm::awq::fold_into_norm");
    if (!beta.empty() && beta.size() != gamma.size())
        throw shape_error("qlm::awq::fold_into_norm: beta has " + std::to_string(beta.size()) + " entries, gamma " +
                          std::to_string(gamma.size()));
    for (std::size_t j = 0; j < s.size(); ++j) {
        gamma[j] /= s[j];
        if (!beta.empty()) beta[j] /= s[j];
    }
}

// A linear layer producing X in its output rows [row_offset, row_offset + K) (GPT-2: v inside c_attn,
// row_offset = 2 * n_embd, feeding attn c_proj through the attention mix, which is linear per channel):
// those rows of W_prev [N_prev, K_prev] and the matching bias entries (bias may be empty) are divided by s.
inline void fold_into_linear_output(Tensor<float>& w_prev, std::span<float> bias, std::size_t row_offset,
                                    std::span<const float> s) {
    constexpr const char* who = "qlm::awq::fold_into_linear_output";
    detail::check_matrix(w_prev, who, "W_prev");
    if (row_offset + s.size() > w_prev.dim(0) || (!bias.empty() && bias.size() != w_prev.dim(0)))
        throw shape_error(std::string(who) + ": rows [" + std::to_string(row_offset) + ", " +
                          std::to_string(row_offset + s.size()) + ") do not fit W_prev " + w_prev.shape().str() +
                          " / bias of " + std::to_string(bias.size()));
    detail::check_scales(s, s.size(), who);
    for (std::size_t j = 0; j < s.size(); ++j) {
        float* wr = w_prev.row(row_offset + j);
        for (std::size_t c = 0; c < w_prev.dim(1); ++c) wr[c] /= s[j];
        if (!bias.empty()) bias[row_offset + j] /= s[j];
    }
}

}  // namespace qlm::awq
