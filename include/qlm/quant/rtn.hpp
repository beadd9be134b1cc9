#pragma once
// Round-to-nearest (RTN) weight quantization: W [N, K] fp32 (row = output channel) -> QuantTensor.
// Conventions (docs/quant-format.md), the same as the GPTQ reference Quantizer and PyTorch's
// observers, b = Bits, maxq = 2^b - 1:
//   every group's range is first widened to include 0: lo = min(min w, 0), hi = max(max w, 0)
//   symmetric:  m = max(-lo, hi), s = 2m / maxq,     z = 2^(b-1)
//   asymmetric: s = (hi - lo) / maxq,                z = clamp(round(-lo / s), 0, maxq)
//   q = clamp(round(w / s) + z, 0, maxq)  (round half to even),  w ~ (q - z) * s
// so |w - (q - z) s| <= s/2 for every w in the group (no clipping), all 2^b codes are used, and
// 0 is exact. A group whose range is 0 (all zeros) gets s = 1 and z = 2^(b-1) (sym) / 0 (asym),
// so nothing divides by zero and every element quantizes to the value 0.
// Optional MSE clipping search (GPTQ `find_params(mse=True)`): candidate ranges p*[lo, hi] for
// p = 1 - i/grid, i = 0 .. max_shrink*grid - 1, keep the one minimising sum |w - deq(q(w))|^norm.
// p = 1 is a candidate, so the search is never worse than plain min/max in its own norm.
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/quant/quant_tensor.hpp>
#include <qlm/quant/scheme.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace qlm {

// Scale and zero point of one group (zero: the code of the value 0).
struct QParams {
    float scale = 1.0f;
    int zero_point = 0;
};

// MSE clipping search, defaults of the GPTQ reference (grid 100, maxshrink 0.8, norm 2.4).
struct ClipSearch {
    int grid = 100;
    float max_shrink = 0.8f;
    float norm = 2.4f;
};

struct RtnOptions {
    // Search a shrunk range per group: ~max_shrink*grid extra passes over W, each with a pow()
    // per weight unless norm == 2 (about 7 s for a 3072x768 matrix on 2 busy cores).
    bool mse_clip = false;
    ClipSearch clip{};
};

// Params for the range [lo, hi] (widened to include 0) under the conventions above.
inline QParams params_from_range(float lo, float hi, int bits, bool symmetric) noexcept {
    const int maxq = (1 << bits) - 1;
    const double l = std::min(static_cast<double>(lo), 0.0);
    const double h = std::max(static_cast<double>(hi), 0.0);
    QParams p;
    if (symmetric) {
        p.zero_point = 1 << (bits - 1);
        p.scale = static_cast<float>(2.0 * std::max(-l, h) / maxq);
    } else {
        p.scale = static_cast<float>((h - l) / maxq);
        p.zero_point = 0;
        if (p.scale >= std::numeric_limits<float>::min())
            p.zero_point = static_cast<int>(std::clamp(std::nearbyint(static_cast<float>(-l) / p.scale), 0.0f, static_cast<float>(maxq)));
    }
    if (!(p.scale >= std::numeric_limits<float>::min())) {  // zero (or denormal) range
        p.scale = 1.0f;
        p.zero_point = symmetric ? 1 << (bits - 1) : 0;
    }
    return p;
}

// q = clamp(round(w / s) + z, 0, maxq), round half to even (as torch.round).
inline std::uint8_t quantize_code(float w, float scale, int zero, int max_code) noexcept {
    const float q = std::nearbyint(w / scale) + static_cast<float>(zero);
    return static_cast<std::uint8_t>(std::clamp(q, 0.0f, static_cast<float>(max_code)));
}

inline float dequantize_code(std::uint8_t q, float scale, int zero) noexcept {
    return static_cast<float>(static_cast<int>(q) - zero) * scale;
}

namespace detail {

struct MinMax {
    float lo = std::numeric_limits<float>::infinity();
    float hi = -std::numeric_limits<float>::infinity();
};

// Min / max of w; throws invalid_argument on NaN / Inf (`where` names the row for the message).
inline MinMax min_max_checked(std::span<const float> w, std::size_t row_for_message) {
    MinMax m;
    bool finite = true;
    for (float x : w) {
        finite &= std::isfinite(x);
        m.lo = std::min(m.lo, x);
        m.hi = std::max(m.hi, x);
    }
    if (!finite) throw invalid_argument("qlm::quantize_rtn: row " + std::to_string(row_for_message) + " holds NaN or Inf");
    return m;
}

// sum |w - deq(q(w))|^norm for one candidate.
inline double clip_error(std::span<const float> w, QParams p, int maxq, float norm) noexcept {
    double err = 0.0;
    if (norm == 2.0f) {
        for (float x : w) {
            const float e = dequantize_code(quantize_code(x, p.scale, p.zero_point, maxq), p.scale, p.zero_point) - x;
            err += static_cast<double>(e) * e;
        }
    } else {
        for (float x : w) {
            const float e = std::fabs(dequantize_code(quantize_code(x, p.scale, p.zero_point, maxq), p.scale, p.zero_point) - x);
            if (e > 0.0f) err += std::pow(static_cast<double>(e), static_cast<double>(norm));
        }
    }
    return err;
}

inline int clip_candidates(const ClipSearch& c) noexcept {
    return std::max(1, static_cast<int>(c.max_shrink * static_cast<float>(c.grid)));
}
inline float clip_factor(const ClipSearch& c, int i) noexcept {
    return 1.0f - static_cast<float>(i) / static_cast<float>(c.grid);
}

template <class F>
void for_rows(ThreadPool* pool, std::size_t n, std::size_t grain, F&& fn) {
    if (pool)
        pool->parallel_for(n, grain, fn);
    else if (n)
        fn(std::size_t{0}, n);
}

}  // namespace detail

// Params for one group of weights: min/max, then (if clip) the MSE clipping search.
// Throws invalid_argument on NaN / Inf.
inline QParams find_params(std::span<const float> w, int bits, bool symmetric, const ClipSearch* clip = nullptr) {
    const auto mm = detail::min_max_checked(w, 0);
    QParams best = params_from_range(mm.lo, mm.hi, bits, symmetric);
    if (!clip || w.empty()) return best;
    const int maxq = (1 << bits) - 1;
    double best_err = detail::clip_error(w, best, maxq, clip->norm);
    for (int i = 1; i < detail::clip_candidates(*clip); ++i) {
        const float p = detail::clip_factor(*clip, i);
        const QParams cand = params_from_range(p * mm.lo, p * mm.hi, bits, symmetric);
        const double err = detail::clip_error(w, cand, maxq, clip->norm);
        if (err < best_err) {
            best_err = err;
            best = cand;
        }
    }
    return best;
}

namespace detail {

// Quantizes w into `out` (already allocated with the right spec and shape).
inline void quantize_rtn_into(TensorView<const float> w, AnyQuantTensor& out, ThreadPool* pool, const RtnOptions& opt) {
    const std::size_t n = out.rows(), k = out.cols(), gs = out.group_size(), groups = out.groups();
    const int bits = out.bits(), maxq = out.max_code();
    const bool sym = out.symmetric();
    const ClipSearch* clip = opt.mse_clip ? &opt.clip : nullptr;
    if (clip && (clip->grid <= 0 || !(clip->max_shrink > 0.0f) || !(clip->norm > 0.0f)))
        throw invalid_argument("qlm::quantize_rtn: clip search needs grid > 0, max_shrink > 0 and norm > 0");
    const std::size_t grain = std::max<std::size_t>(1, 4096 / std::max<std::size_t>(1, k));

    // Per-tensor: one QParams for the whole matrix (rows are contiguous, so it is one span).
    QParams tensor_params;
    const bool per_tensor = out.granularity() == GranularityKind::per_tensor;
    if (per_tensor) {
        std::mutex mu;
        MinMax mm;
        for_rows(pool, n, grain, [&](std::size_t r0, std::size_t r1) {
            MinMax local;
            for (std::size_t r = r0; r < r1; ++r) {
                const auto m = min_max_checked({w.row(r), k}, r);
                local.lo = std::min(local.lo, m.lo);
                local.hi = std::max(local.hi, m.hi);
            }
            std::lock_guard lock(mu);
            mm.lo = std::min(mm.lo, local.lo);
            mm.hi = std::max(mm.hi, local.hi);
        });
        tensor_params = params_from_range(mm.lo, mm.hi, bits, sym);
        if (clip) {
            const int cands = clip_candidates(*clip);
            std::vector<QParams> params(static_cast<std::size_t>(cands));
            for (int i = 0; i < cands; ++i)
                params[static_cast<std::size_t>(i)] =
                    params_from_range(clip_factor(*clip, i) * mm.lo, clip_factor(*clip, i) * mm.hi, bits, sym);
            // per-row errors, summed in row order afterwards: the choice does not depend on threading
            std::vector<double> row_err(n * params.size(), 0.0);
            for_rows(pool, n, grain, [&](std::size_t r0, std::size_t r1) {
                for (std::size_t r = r0; r < r1; ++r)
                    for (std::size_t i = 0; i < params.size(); ++i)
                        row_err[r * params.size() + i] = clip_error({w.row(r), k}, params[i], maxq, clip->norm);
            });
            std::vector<double> err(params.size(), 0.0);
            for (std::size_t r = 0; r < n; ++r)
                for (std::size_t i = 0; i < params.size(); ++i) err[i] += row_err[r * params.size() + i];
            std::size_t best = 0;
            for (std::size_t i = 1; i < params.size(); ++i)
                if (err[i] < err[best]) best = i;
            tensor_params = params[best];
        }
    }

    for_rows(pool, n, grain, [&](std::size_t r0, std::size_t r1) {
        std::vector<std::uint8_t> codes(k), zeros(sym ? 0 : groups);
        std::vector<float> scales(groups);
        for (std::size_t r = r0; r < r1; ++r) {
            const float* row = w.row(r);
            for (std::size_t g = 0; g < groups; ++g) {
                const std::span<const float> grp{row + g * gs, gs};
                QParams p = tensor_params;
                if (!per_tensor) {
                    try {
                        p = find_params(grp, bits, sym, clip);
                    } catch (const invalid_argument&) {
                        throw invalid_argument("qlm::quantize_rtn: row " + std::to_string(r) + ", group " +
                                               std::to_string(g) + " holds NaN or Inf");
                    }
                }
                scales[g] = p.scale;
                if (!sym) zeros[g] = static_cast<std::uint8_t>(p.zero_point);
                for (std::size_t c = 0; c < gs; ++c) codes[g * gs + c] = quantize_code(grp[c], p.scale, p.zero_point, maxq);
            }
            out.set_row(r, codes, scales, zeros);
        }
    });
}

inline void check_weight_view(TensorView<const float> w) {
    if (w.rank() != 2)
        throw shape_error("qlm::quantize_rtn: expected a rank-2 weight [N, K], found shape " + w.shape().str());
}

}  // namespace detail

// ---- compile-time scheme ----
template <int Bits, class G, class M = Symmetric>
    requires ValidScheme<Bits, G, M>
QuantTensor<Bits, G, M> quantize_rtn(TensorView<const float> w, ThreadPool& pool, const RtnOptions& opt = {}) {
    detail::check_weight_view(w);
    AnyQuantTensor out(spec_of<Bits, G, M>(), w.dim(0), w.dim(1));
    detail::quantize_rtn_into(w, out, &pool, opt);
    return QuantTensor<Bits, G, M>::from_any(std::move(out));
}

// Single-threaded.
template <int Bits, class G, class M = Symmetric>
    requires ValidScheme<Bits, G, M>
QuantTensor<Bits, G, M> quantize_rtn(TensorView<const float> w, const RtnOptions& opt = {}) {
    detail::check_weight_view(w);
    AnyQuantTensor out(spec_of<Bits, G, M>(), w.dim(0), w.dim(1));
    detail::quantize_rtn_into(w, out, nullptr, opt);
    return QuantTensor<Bits, G, M>::from_any(std::move(out));
}

// ---- run-time scheme ----
inline AnyQuantTensor quantize_rtn(TensorView<const float> w, const QuantSpec& spec, ThreadPool& pool,
                                   const RtnOptions& opt = {}) {
    detail::check_weight_view(w);
    AnyQuantTensor out(spec, w.dim(0), w.dim(1));
    detail::quantize_rtn_into(w, out, &pool, opt);
    return out;
}

inline AnyQuantTensor quantize_rtn(TensorView<const float> w, const QuantSpec& spec, const RtnOptions& opt = {}) {
    detail::check_weight_view(w);
    AnyQuantTensor out(spec, w.dim(0), w.dim(1));
    detail::quantize_rtn_into(w, out, nullptr, opt);
    return out;
}

}  // namespace qlm
