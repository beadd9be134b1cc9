#pragma once
// Quantized linear layers and AnyLinear, the run-time choice among float and quantized layers
// that a model loaded from a file (or quantized by a method picked on the command line) holds.
#include <qlm/backend/cpu/gemm.hpp>
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/model/linear.hpp>
#include <qlm/quant/quant_tensor.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace qlm {

namespace detail {
inline void check_bias(const Tensor<float>& bias, std::size_t n, const char* who) {
    if (bias.numel() != 0 && bias.numel() != n)
        throw shape_error(std::string("qlm::") + who + ": bias of " + std::to_string(bias.numel()) + " values for " +
                          std::to_string(n) + " outputs");
}
}  // namespace detail

// Weight-only quantization (RTN, GPTQ, AWQ): packed codes with group scales, float activations.
// With act-order GPTQ the columns are stored in quantization order; input_order maps stored
// column j to input feature input_order[j], and forward() gathers the input to match.
class QuantLinear {
public:
    QuantLinear() = default;
    QuantLinear(AnyQuantTensor weight, Tensor<float> bias, std::vector<std::int32_t> input_order = {})
        : weight_(std::move(weight)), bias_(std::move(bias)), input_order_(std::move(input_order)) {
        detail::check_bias(bias_, weight_.rows(), "QuantLinear");
        if (!input_order_.empty()) {
            if (input_order_.size() != weight_.cols())
                throw shape_error("qlm::QuantLinear: input order of " + std::to_string(input_order_.size()) +
                                  " entries for " + std::to_string(weight_.cols()) + " inputs");
            std::vector<bool> seen(input_order_.size());
            for (const auto j : input_order_) {
                if (j < 0 || static_cast<std::size_t>(j) >= seen.size() || seen[static_cast<std::size_t>(j)])
                    throw format_error("qlm::QuantLinear: input order is not a permutation");
                seen[static_cast<std::size_t>(j)] = true;
            }
        }
    }

    std::size_t in_features() const noexcept { return weight_.cols(); }
    std::size_t out_features() const noexcept { return weight_.rows(); }
    std::size_t weight_bytes() const noexcept {
        return weight_.storage_bytes() + bias_.bytes() + input_order_.size() * sizeof(std::int32_t);
    }
    const AnyQuantTensor& weight() const noexcept { return weight_; }
    const Tensor<float>& bias() const noexcept { return bias_; }
    const std::vector<std::int32_t>& input_order() const noexcept { return input_order_; }

    void forward(ThreadPool& pool, const float* x, std::size_t m, float* y) const {
        const float* bias = bias_.numel() ? bias_.data() : nullptr;
        if (input_order_.empty()) {
            cpu::linear(pool, x, m, weight_.ref(), bias, y);
            return;
        }
        const std::size_t k = in_features();
        std::vector<float> gathered(m * k);
        for (std::size_t r = 0; r < m; ++r)
            for (std::size_t j = 0; j < k; ++j) gathered[r * k + j] = x[r * k + static_cast<std::size_t>(input_order_[j])];
        cpu::linear(pool, gathered.data(), m, weight_.ref(), bias, y);
    }

    // Row r of the weight in stored column order (the tied head has no input order).
    void dequantize_row(std::size_t r, std::span<float> out) const { weight_.dequantize_row(r, out); }

    // The float weight [out, in] in input-feature order (for tests and re-export).
    Tensor<float> dequantize() const {
        Tensor<float> stored = weight_.dequantize();
        if (input_order_.empty()) return stored;
        Tensor<float> out(stored.shape());
        const std::size_t k = in_features();
        for (std::size_t r = 0; r < out_features(); ++r)
            for (std::size_t j = 0; j < k; ++j) out.data()[r * k + static_cast<std::size_t>(input_order_[j])] = stored.data()[r * k + j];
        return out;
    }

private:
    AnyQuantTensor weight_;
    Tensor<float> bias_;
    std::vector<std::int32_t> input_order_;
};

// W8A8: 8-bit weights (per output channel or per group) and 8-bit activations, quantized per
// token at run time (dynamic, static_scale == 0) or with a calibrated per-tensor scale (static).
class W8A8Linear {
public:
    W8A8Linear() = default;
    W8A8Linear(AnyQuantTensor weight, Tensor<float> bias, float static_scale = 0.0f)
        : weight_(std::move(weight)), bias_(std::move(bias)), static_scale_(static_scale) {
        if (weight_.bits() != 8)
            throw invalid_argument("qlm::W8A8Linear: weights must be 8-bit, found " + std::to_string(weight_.bits()));
        if (!(static_scale_ >= 0.0f) || !std::isfinite(static_scale_))
            throw format_error("qlm::W8A8Linear: activation scale must be finite and >= 0");
        detail::check_bias(bias_, weight_.rows(), "W8A8Linear");
    }

    std::size_t in_features() const noexcept { return weight_.cols(); }
    std::size_t out_features() const noexcept { return weight_.rows(); }
    std::size_t weight_bytes() const noexcept { return weight_.storage_bytes() + bias_.bytes(); }
    const AnyQuantTensor& weight() const noexcept { return weight_; }
    const Tensor<float>& bias() const noexcept { return bias_; }
    float static_scale() const noexcept { return static_scale_; }
    bool is_static() const noexcept { return static_scale_ > 0.0f; }

    void dequantize_row(std::size_t r, std::span<float> out) const { weight_.dequantize_row(r, out); }

    void forward(ThreadPool& pool, const float* x, std::size_t m, float* y) const {
        cpu::linear_w8a8(pool, x, m, weight_.ref(), bias_.numel() ? bias_.data() : nullptr, y, static_scale_);
    }

private:
    AnyQuantTensor weight_;
    Tensor<float> bias_;
    float static_scale_ = 0.0f;
};

// Mixed precision (the seed's idea, kept as a measured comparison): the most activation-salient
// input channels at 8 bits per output channel, the rest in the low-bit base layer, whose columns
// for those channels are zero. y = base(x) + salient · x[:, salient_columns].
class MixedLinear {
public:
    MixedLinear() = default;
    MixedLinear(QuantLinear base, AnyQuantTensor salient, std::vector<std::int32_t> salient_columns)
        : base_(std::move(base)), salient_(std::move(salient)), columns_(std::move(salient_columns)) {
        if (!base_.input_order().empty()) throw invalid_argument("qlm::MixedLinear: the base layer must keep the input order");
        if (salient_.rows() != base_.out_features() || salient_.cols() != columns_.size() || columns_.empty())
            throw shape_error("qlm::MixedLinear: salient part [" + std::to_string(salient_.rows()) + ", " +
                              std::to_string(salient_.cols()) + "] does not fit " + std::to_string(base_.out_features()) +
                              " outputs and " + std::to_string(columns_.size()) + " salient columns");
        std::vector<bool> seen(base_.in_features());
        for (const auto c : columns_) {
            if (c < 0 || static_cast<std::size_t>(c) >= seen.size() || seen[static_cast<std::size_t>(c)])
                throw format_error("qlm::MixedLinear: salient columns must be distinct input channels");
            seen[static_cast<std::size_t>(c)] = true;
        }
    }

    std::size_t in_features() const noexcept { return base_.in_features(); }
    std::size_t out_features() const noexcept { return base_.out_features(); }
    std::size_t weight_bytes() const noexcept {
        return base_.weight_bytes() + salient_.storage_bytes() + columns_.size() * sizeof(std::int32_t);
    }
    const QuantLinear& base() const noexcept { return base_; }
    const AnyQuantTensor& salient() const noexcept { return salient_; }
    const std::vector<std::int32_t>& salient_columns() const noexcept { return columns_; }
    const Tensor<float>& bias() const noexcept { return base_.bias(); }

    void forward(ThreadPool& pool, const float* x, std::size_t m, float* y) const {
        base_.forward(pool, x, m, y);
        const std::size_t k = in_features(), ks = columns_.size(), n = out_features();
        std::vector<float> gathered(m * ks), extra(m * n);
        for (std::size_t r = 0; r < m; ++r)
            for (std::size_t j = 0; j < ks; ++j) gathered[r * ks + j] = x[r * k + static_cast<std::size_t>(columns_[j])];
        cpu::linear(pool, gathered.data(), m, salient_.ref(), nullptr, extra.data());
        for (std::size_t i = 0; i < m * n; ++i) y[i] += extra[i];
    }

    void dequantize_row(std::size_t r, std::span<float> out) const {
        base_.dequantize_row(r, out);
        std::vector<float> row(columns_.size());
        salient_.dequantize_row(r, row);
        for (std::size_t j = 0; j < columns_.size(); ++j) out[static_cast<std::size_t>(columns_[j])] += row[j];
    }

private:
    QuantLinear base_;
    AnyQuantTensor salient_;
    std::vector<std::int32_t> columns_;
};

static_assert(LinearLayer<QuantLinear>);
static_assert(LinearLayer<W8A8Linear>);
static_assert(LinearLayer<MixedLinear>);

// One of the linear kinds, chosen at run time; forward() dispatches once per layer call.
class AnyLinear {
public:
    using variant_type = std::variant<DenseLinear, QuantLinear, W8A8Linear, MixedLinear>;

    AnyLinear() = default;
    template <class L>
        requires std::is_constructible_v<variant_type, L&&>
    AnyLinear(L&& layer) : layer_(std::forward<L>(layer)) {}

    std::size_t in_features() const noexcept {
        return std::visit([](const auto& l) { return l.in_features(); }, layer_);
    }
    std::size_t out_features() const noexcept {
        return std::visit([](const auto& l) { return l.out_features(); }, layer_);
    }
    std::size_t weight_bytes() const noexcept {
        return std::visit([](const auto& l) { return l.weight_bytes(); }, layer_);
    }
    void forward(ThreadPool& pool, const float* x, std::size_t m, float* y) const {
        std::visit([&](const auto& l) { l.forward(pool, x, m, y); }, layer_);
    }

    void dequantize_row(std::size_t r, std::span<float> out) const {
        std::visit(
            [&](const auto& l) {
                if constexpr (std::is_same_v<std::decay_t<decltype(l)>, DenseLinear>)
                    std::copy_n(l.weight().row(r), out.size(), out.begin());
                else
                    l.dequantize_row(r, out);
            },
            layer_);
    }

    template <class L>
    bool holds() const noexcept { return std::holds_alternative<L>(layer_); }
    template <class L>
    const L& get() const { return std::get<L>(layer_); }
    template <class L>
    L& get() { return std::get<L>(layer_); }
    const variant_type& variant() const noexcept { return layer_; }

private:
    variant_type layer_;
};

static_assert(LinearLayer<AnyLinear>);

using QuantizedGPT2 = GPT2Model<AnyLinear>;

}  // namespace qlm
