#pragma once
// SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights with a
// per-input-channel factor s_j, exactly:  X W^T = (X diag(s)^-1) (W diag(s))^T.
//
//   s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
//
// max|X_j| is the calibration absmax of input channel j (ChannelAbsMaxObserver), max|W_j| the
// absmax of column j over every linear layer fed by that activation (GPT-2: q/k/v fused in c_attn
// after ln_1; c_fc after ln_2). Weights here are [N out, K in] row-major, so channel j is column j.
// Clamping (as the reference implementation, plus an upper bound): absmax values are clamped to
// >= 1e-5 before the powers, s_j to [1e-5, 1e5]; a channel never seen active (act absmax 0) or
// with an all-zero weight column gets s_j = 1 (nothing to migrate).
//
// Applying: divide the producer of X by s (LayerNorm gamma and beta: smooth_layernorm; or the
// rows and bias of a preceding linear layer: smooth_linear_output), multiply W's columns by s
// (smooth_weight_columns) for every consumer.
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

namespace qlm {

struct SmoothQuantOptions {
    float alpha = 0.5f;       // migration strength in [0, 1]
    float min_value = 1e-5f;  // absmax clamp before the powers, and the lower bound of s
    float max_scale = 1e5f;   // upper bound of s
};

// max |W[:, j]| of a [N, K] weight.
inline std::vector<float> weight_column_absmax(TensorView<const float> w) {
    if (w.rank() != 2) throw shape_error("qlm::weight_column_absmax: expected [N, K], found " + w.shape().str());
    std::vector<float> m(w.dim(1), 0.0f);
    for (std::size_t r = 0; r < w.dim(0); ++r)
        for (std::size_t j = 0; j < m.size(); ++j) m[j] = std::max(m[j], std::fabs(w.row(r)[j]));
    return m;
}

// Smoothing factors for the K input channels shared by `weights` (each [N_i, K]).
inline std::vector<float> smoothquant_scales(std::span<const float> act_absmax, std::span<const TensorView<const float>> weights,
                                             const SmoothQuantOptions& opt = {}) {
    if (!(opt.alpha >= 0.0f && opt.alpha <= 1.0f))
        throw invalid_argument("qlm::smoothquant_scales: alpha must be in [0, 1], found " + std::to_string(opt.alpha));
    if (weights.empty()) throw invalid_argument("qlm::smoothquant_scales: needs at least one weight");
    const std::size_t k = act_absmax.size();
    std::vector<float> wmax(k, 0.0f);
    for (const auto& w : weights) {
        if (w.rank() != 2 || w.dim(1) != k)
            throw shape_error("qlm::smoothquant_scales: expected weights [N, " + std::to_string(k) + "], found " + w.shape().str());
        const auto m = weight_column_absmax(w);
        for (std::size_t j = 0; j < k; ++j) wmax[j] = std::max(wmax[j], m[j]);
    }
    std::vector<float> s(k, 1.0f);
    for (std::size_t j = 0; j < k; ++j) {
        const float a = act_absmax[j];
        if (!std::isfinite(a) || a < 0.0f)
            throw invalid_argument("qlm::smoothquant_scales: activation absmax of channel " + std::to_string(j) + " is " +
                                   std::to_string(a));
        if (a == 0.0f || wmax[j] == 0.0f) continue;
        const double v = std::pow(static_cast<double>(std::max(a, opt.min_value)), static_cast<double>(opt.alpha)) /
                         std::pow(static_cast<double>(std::max(wmax[j], opt.min_value)), 1.0 - opt.alpha);
        s[j] = static_cast<float>(std::clamp(v, static_cast<double>(opt.min_value), static_cast<double>(opt.max_scale)));
    }
    return s;
}

inline std::vector<float> smoothquant_scales(std::span<const float> act_absmax,
                                             std::initializer_list<TensorView<const float>> weights,
                                             const SmoothQuantOptions& opt = {}) {
    return smoothquant_scales(act_absmax, std::span<const TensorView<const float>>(weights.begin(), weights.size()), opt);
}

namespace detail {
inline void check_smooth_len(std::size_t want, std::size_t got, const char* who) {
    if (want != got)
        throw shape_error(std::string("qlm::") + who + ": expected " + std::to_string(want) + " smoothing factors, found " +
                          std::to_string(got));
}
}  // namespace detail

// LayerNorm y = gamma * xhat + beta feeding the smoothed layers: gamma /= s, beta /= s.
inline void smooth_layernorm(std::span<float> gamma, std::span<float> beta, std::span<const float> s) {
    detail::check_smooth_len(gamma.size(), s.size(), "smooth_layernorm");
    detail::check_smooth_len(beta.size(), s.size(), "smooth_layernorm");
    for (std::size_t j = 0; j < s.size(); ++j) {
        gamma[j] /= s[j];
        beta[j] /= s[j];
    }
}

// A consumer W [N, K]: column j *= s_j.
inline void smooth_weight_columns(TensorView<float> w, std::span<const float> s) {
    if (w.rank() != 2) throw shape_error("qlm::smooth_weight_columns: expected [N, K], found " + w.shape().str());
    detail::check_smooth_len(w.dim(1), s.size(), "smooth_weight_columns");
    for (std::size_t r = 0; r < w.dim(0); ++r)
        for (std::size_t j = 0; j < s.size(); ++j) w.row(r)[j] *= s[j];
}

// A producer linear layer W_prev [K, K_prev] (+ bias [K], may be empty) whose output is X: row j /= s_j.
inline void smooth_linear_output(TensorView<float> w_prev, std::span<float> bias, std::span<const float> s) {
    if (w_prev.rank() != 2) throw shape_error("qlm::smooth_linear_output: expected [K, K_prev], found " + w_prev.shape().str());
    detail::check_smooth_len(w_prev.dim(0), s.size(), "smooth_linear_output");
    if (!bias.empty()) detail::check_smooth_len(bias.size(), s.size(), "smooth_linear_output");
    for (std::size_t j = 0; j < s.size(); ++j) {
        for (std::size_t c = 0; c < w_prev.dim(1); ++c) w_prev.row(j)[c] /= s[j];
        if (!bias.empty()) bias[j] /= s[j];
    }
}

// Activations X [M, K] directly (reference / tests): column j /= s_j.
inline void smooth_activations(TensorView<float> x, std::span<const float> s) {
    if (x.rank() != 2) throw shape_error("qlm::smooth_activations: expected [M, K], found " + x.shape().str());
    detail::check_smooth_len(x.dim(1), s.size(), "smooth_activations");
    for (std::size_t r = 0; r < x.dim(0); ++r)
        for (std::size_t j = 0; j < s.size(); ++j) x.row(r)[j] /= s[j];
}

}  // namespace qlm
