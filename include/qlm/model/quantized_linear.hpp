#pragma once
// Quantized linear layers.
//
//   QuantLinear<QuantTensor<Bits, G, M>>  the typed layer: its weights repacked for the kernels
//                      (cpu::PanelMatrix<Bits>), whose forward() runs that bit width's kernel only.
//                      Compose a model from it directly: GPT2Model<QuantLinear<QuantTensor<4, PerGroup<128>>>>.
//   AnyQuantLinear     one of the typed layers, chosen at run time from a tensor's scheme (what a
//                      checkpoint of any scheme loads into); forward() visits once per call.
//   HalfLinear<fp16_t / bf16_t>  16-bit float weights, fp32 arithmetic.
//   MixedLinear        a low-bit layer plus the most salient input channels at 8 bits.
//   AnyLinear          float (fp32 / fp16 / bf16), quantized or mixed, chosen at run time.
//
// Activations: weight-only layers multiply float activations (GPTQ / AWQ / RTN as their authors
// run them); ActQuant::int8_dynamic quantizes them per token at run time (W8A8, W4A8 ...), and
// int8_static with a calibrated per-tensor scale.
#include <qlm/backend/cpu/gemm.hpp>
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/model/linear.hpp>
#include <qlm/model/load_gpt2.hpp>
#include <qlm/quant/quant_tensor.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace qlm {

enum class ActQuant : std::uint8_t {
    none,          // float activations (weight-only quantization)
    int8_dynamic,  // int8 per token, scale from each row at run time
    int8_static,   // int8 with one calibrated scale
};

inline const char* to_string(ActQuant a) noexcept {
    switch (a) {
        case ActQuant::none: return "float";
        case ActQuant::int8_dynamic: return "int8-dynamic";
        case ActQuant::int8_static: return "int8-static";
    }
    return "?";
}

template <class T>
inline constexpr bool is_quant_tensor = false;
template <int B, class G, class M>
inline constexpr bool is_quant_tensor<QuantTensor<B, G, M>> = true;

template <class T>
concept TypedQuantTensor = is_quant_tensor<T>;

namespace detail {

inline void check_bias(const Tensor<float>& bias, std::size_t n, const char* who) {
    if (bias.numel() != 0 && bias.numel() != n)
        throw shape_error(std::string("qlm::") + who + ": bias of " + std::to_string(bias.numel()) + " values for " +
                          std::to_string(n) + " outputs");
}

inline void check_permutation(const std::vector<std::int32_t>& order, std::size_t k, const char* who) {
    if (order.empty()) return;
    if (order.size() != k)
        throw shape_error(std::string("qlm::") + who + ": input order of " + std::to_string(order.size()) + " entries for " +
                          std::to_string(k) + " inputs");
    std::vector<bool> seen(k);
    for (const auto j : order) {
        if (j < 0 || static_cast<std::size_t>(j) >= k || seen[static_cast<std::size_t>(j)])
            throw format_error(std::string("qlm::") + who + ": input order is not a permutation");
        seen[static_cast<std::size_t>(j)] = true;
    }
}

}  // namespace detail

// A quantized linear layer whose scheme is its type. With act-order GPTQ the columns are stored in
// quantization order; input_order maps stored column j to input feature input_order[j], and
// forward() gathers the input to match.
template <TypedQuantTensor QT>
class QuantLinear {
public:
    using tensor_type = QT;
    static constexpr int bits = QT::bits;

    QuantLinear() = default;
    explicit QuantLinear(const QT& weight, Tensor<float> bias = {}, std::vector<std::int32_t> input_order = {},
                         ActQuant activations = ActQuant::none, float static_scale = 0.0f)
        : spec_(weight.runtime_spec()), panels_(weight.ref()), bias_(std::move(bias)), input_order_(std::move(input_order)) {
        detail::check_bias(bias_, panels_.rows(), "QuantLinear");
        detail::check_permutation(input_order_, panels_.cols(), "QuantLinear");
        set_activations(activations, static_scale);
    }

    std::size_t in_features() const noexcept { return panels_.cols(); }
    std::size_t out_features() const noexcept { return panels_.rows(); }
    std::size_t weight_bytes() const noexcept {
        return panels_.storage_bytes() + bias_.bytes() + input_order_.size() * sizeof(std::int32_t);
    }
    const QuantSpec& spec() const noexcept { return spec_; }
    const cpu::PanelMatrix<bits>& panels() const noexcept { return panels_; }
    const Tensor<float>& bias() const noexcept { return bias_; }
    const std::vector<std::int32_t>& input_order() const noexcept { return input_order_; }
    ActQuant activations() const noexcept { return activations_; }
    float static_scale() const noexcept { return static_scale_; }

    // int8_static needs a finite scale > 0; the other modes ignore it.
    void set_activations(ActQuant activations, float static_scale = 0.0f) {
        if (activations == ActQuant::int8_static && (!(static_scale > 0.0f) || !std::isfinite(static_scale)))
            throw invalid_argument("qlm::QuantLinear: a static activation scale must be finite and > 0, found " +
                                   std::to_string(static_scale));
        activations_ = activations;
        static_scale_ = activations == ActQuant::int8_static ? static_scale : 0.0f;
    }

    void forward(ThreadPool& pool, const float* x, std::size_t m, float* y) const {
        const float* bias = bias_.numel() ? bias_.data() : nullptr;
        if (!input_order_.empty()) x = gather(x, m);
        if (activations_ == ActQuant::none)
            cpu::linear_wo<bits>(pool, x, m, panels_, bias, y);
        else
            cpu::linear_a8<bits>(pool, x, m, panels_, bias, y, static_scale_);
    }

    // The weight in stored column order, as the canonical packed tensor (for saving, exporting).
    QT weight() const {
        const std::size_t n = out_features(), groups = panels_.groups();
        std::vector<std::uint8_t> packed(n * Packing<bits>::row_bytes(in_features())), zeros(spec_.symmetric ? 0 : n * groups);
        std::vector<float> scales(n * groups);
        panels_.canonical(packed, scales, zeros);
        return QT::from_any(AnyQuantTensor::from_parts(spec_, out_features(), in_features(), packed, scales, zeros));
    }

    // Row r of the weight in stored column order (the tied head's embedding rows).
    void dequantize_row(std::size_t r, std::span<float> out) const { panels_.dequantize_row(r, out); }

    // The float weight [out, in] in input-feature order.
    Tensor<float> dequantize() const {
        const std::size_t k = in_features();
        Tensor<float> out(Shape{out_features(), k});
        std::vector<float> row(k);
        for (std::size_t r = 0; r < out_features(); ++r) {
            panels_.dequantize_row(r, row);
            for (std::size_t j = 0; j < k; ++j)
                out.data()[r * k + (input_order_.empty() ? j : static_cast<std::size_t>(input_order_[j]))] = row[j];
        }
        return out;
    }

private:
    const float* gather(const float* x, std::size_t m) const {
        auto& g = cpu::detail::activation_scratch().gathered;
        const std::size_t k = in_features();
        g.resize(m * k);
        for (std::size_t r = 0; r < m; ++r)
            for (std::size_t j = 0; j < k; ++j) g[r * k + j] = x[r * k + static_cast<std::size_t>(input_order_[j])];
        return g.data();
    }

    QuantSpec spec_{};
    cpu::PanelMatrix<bits> panels_;
    Tensor<float> bias_;
    std::vector<std::int32_t> input_order_;
    ActQuant activations_ = ActQuant::none;
    float static_scale_ = 0.0f;
};

namespace detail {

// Every (bits, granularity, mode) a checkpoint can hold, as the typed layers AnyQuantLinear chooses
// among; group sizes are run-time values within PerGroup<dynamic_group>.
template <class... Layers>
struct QuantLayerList {
    using variant = std::variant<Layers...>;
};
template <int B>
using QuantLayersOf = QuantLayerList<QuantLinear<QuantTensor<B, PerTensor, Symmetric>>, QuantLinear<QuantTensor<B, PerTensor, Asymmetric>>,
                                     QuantLinear<QuantTensor<B, PerChannel, Symmetric>>, QuantLinear<QuantTensor<B, PerChannel, Asymmetric>>,
                                     QuantLinear<QuantTensor<B, PerGroup<dynamic_group>, Symmetric>>,
                                     QuantLinear<QuantTensor<B, PerGroup<dynamic_group>, Asymmetric>>>;
template <class... Lists>
struct concat_layers;
template <class... A, class... B, class... C, class... D>
struct concat_layers<QuantLayerList<A...>, QuantLayerList<B...>, QuantLayerList<C...>, QuantLayerList<D...>> {
    using type = std::variant<A..., B..., C..., D...>;
};
using QuantLayerVariant = concat_layers<QuantLayersOf<2>, QuantLayersOf<3>, QuantLayersOf<4>, QuantLayersOf<8>>::type;

// Calls fn(QuantTensor<B, G, M>{} as a type tag) for the typed scheme that holds `spec`.
template <class F>
decltype(auto) dispatch_scheme(const QuantSpec& spec, F&& fn) {
    return dispatch_bits(spec.bits, [&](auto b) -> decltype(auto) {
        constexpr int B = decltype(b)::value;
        auto by_mode = [&]<class G>(std::type_identity<G>) -> decltype(auto) {
            if (spec.symmetric) return fn(std::type_identity<QuantTensor<B, G, Symmetric>>{});
            return fn(std::type_identity<QuantTensor<B, G, Asymmetric>>{});
        };
        switch (spec.granularity) {
            case GranularityKind::per_tensor: return by_mode(std::type_identity<PerTensor>{});
            case GranularityKind::per_channel: return by_mode(std::type_identity<PerChannel>{});
            case GranularityKind::per_group: break;
        }
        return by_mode(std::type_identity<PerGroup<dynamic_group>>{});
    });
}

}  // namespace detail

// A quantized layer of any scheme, chosen at run time; each call visits its typed layer once.
class AnyQuantLinear {
    using variant_type_ = detail::QuantLayerVariant;
    variant_type_ layer_;
    template <class F>
    decltype(auto) visit(F&& fn) const {
        return std::visit(std::forward<F>(fn), layer_);
    }

public:
    using variant_type = variant_type_;

    AnyQuantLinear() = default;
    template <TypedQuantTensor QT>
    AnyQuantLinear(QuantLinear<QT> layer) : layer_(std::move(layer)) {}  // NOLINT: implicit by design
    // From a run-time tensor: picks the typed layer for its scheme.
    AnyQuantLinear(AnyQuantTensor weight, Tensor<float> bias, std::vector<std::int32_t> input_order = {},
                   ActQuant activations = ActQuant::none, float static_scale = 0.0f) {
        if (weight.empty()) throw invalid_argument("qlm::AnyQuantLinear: empty weight");
        const QuantSpec spec = weight.spec();
        layer_ = detail::dispatch_scheme(spec, [&]<class QT>(std::type_identity<QT>) -> variant_type {
            return QuantLinear<QT>(QT::from_any(std::move(weight)), std::move(bias), std::move(input_order), activations, static_scale);
        });
    }

    std::size_t in_features() const noexcept { return visit([](const auto& l) { return l.in_features(); }); }
    std::size_t out_features() const noexcept { return visit([](const auto& l) { return l.out_features(); }); }
    std::size_t weight_bytes() const noexcept { return visit([](const auto& l) { return l.weight_bytes(); }); }
    const QuantSpec& spec() const noexcept { return visit([](const auto& l) -> const QuantSpec& { return l.spec(); }); }
    int bits() const noexcept { return spec().bits; }
    const Tensor<float>& bias() const noexcept { return visit([](const auto& l) -> const Tensor<float>& { return l.bias(); }); }
    const std::vector<std::int32_t>& input_order() const noexcept {
        return visit([](const auto& l) -> const std::vector<std::int32_t>& { return l.input_order(); });
    }
    ActQuant activations() const noexcept { return visit([](const auto& l) { return l.activations(); }); }
    float static_scale() const noexcept { return visit([](const auto& l) { return l.static_scale(); }); }
    void set_activations(ActQuant activations, float static_scale = 0.0f) {
        std::visit([&](auto& l) { l.set_activations(activations, static_scale); }, layer_);
    }

    void forward(ThreadPool& pool, const float* x, std::size_t m, float* y) const {
        visit([&](const auto& l) { l.forward(pool, x, m, y); });
    }
    // The canonical packed weight in stored column order.
    AnyQuantTensor weight() const {
        return visit([](const auto& l) { return AnyQuantTensor(l.weight()); });
    }
    void dequantize_row(std::size_t r, std::span<float> out) const { visit([&](const auto& l) { l.dequantize_row(r, out); }); }
    Tensor<float> dequantize() const { return visit([](const auto& l) { return l.dequantize(); }); }

    template <class L>
    bool holds() const noexcept { return std::holds_alternative<L>(layer_); }
    template <class L>
    const L& get() const { return std::get<L>(layer_); }
    const variant_type& variant() const noexcept { return layer_; }
};

// 16-bit float weights (fp16_t or bf16_t), fp32 arithmetic: the unquantized fast path, half the
// bytes of fp32 per decode step.
template <class Half>
    requires(std::is_same_v<Half, fp16_t> || std::is_same_v<Half, bf16_t>)
class HalfLinear {
public:
    using value_type = Half;
    HalfLinear() = default;
    HalfLinear(cpu::HalfPanelMatrix<Half> weight, Tensor<float> bias) : weight_(std::move(weight)), bias_(std::move(bias)) {
        detail::check_bias(bias_, weight_.rows(), "HalfLinear");
    }
    // Rounds a float layer to 16 bits (nearest even).
    explicit HalfLinear(const DenseLinear& d)
        : HalfLinear(cpu::HalfPanelMatrix<Half>::from_float(d.weight().span(), d.out_features(), d.in_features()), d.bias()) {}

    std::size_t in_features() const noexcept { return weight_.cols(); }
    std::size_t out_features() const noexcept { return weight_.rows(); }
    std::size_t weight_bytes() const noexcept { return weight_.storage_bytes() + bias_.bytes(); }
    const cpu::HalfPanelMatrix<Half>& weight() const noexcept { return weight_; }
    const Tensor<float>& bias() const noexcept { return bias_; }

    void forward(ThreadPool& pool, const float* x, std::size_t m, float* y) const {
        cpu::linear_half(pool, x, m, weight_, bias_.numel() ? bias_.data() : nullptr, y);
    }
    void dequantize_row(std::size_t r, std::span<float> out) const {
        for (std::size_t c = 0; c < out.size(); ++c) out[c] = weight_.value(r, c);
    }
    Tensor<float> dequantize() const {
        Tensor<float> out(Shape{out_features(), in_features()});
        for (std::size_t r = 0; r < out_features(); ++r) dequantize_row(r, {out.row(r), in_features()});
        return out;
    }

private:
    cpu::HalfPanelMatrix<Half> weight_;
    Tensor<float> bias_;
};

static_assert(LinearLayer<HalfLinear<bf16_t>>);

// Mixed precision (the seed's idea, kept as a measured comparison): the most activation-salient
// input channels at 8 bits per output channel, the rest in the low-bit base layer, whose columns
// for those channels are zero. y = base(x) + salient · x[:, salient_columns].
class MixedLinear {
public:
    MixedLinear() = default;
    MixedLinear(AnyQuantLinear base, AnyQuantLinear salient, std::vector<std::int32_t> salient_columns)
        : base_(std::move(base)), salient_(std::move(salient)), columns_(std::move(salient_columns)) {
        if (!base_.input_order().empty()) throw invalid_argument("qlm::MixedLinear: the base layer must keep the input order");
        if (salient_.out_features() != base_.out_features() || salient_.in_features() != columns_.size() || columns_.empty())
            throw shape_error("qlm::MixedLinear: salient part [" + std::to_string(salient_.out_features()) + ", " +
                              std::to_string(salient_.in_features()) + "] does not fit " + std::to_string(base_.out_features()) +
                              " outputs and " + std::to_string(columns_.size()) + " salient columns");
        if (salient_.bias().numel() != 0 || !salient_.input_order().empty())
            throw invalid_argument("qlm::MixedLinear: the salient part has no bias and no input order");
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
        return base_.weight_bytes() + salient_.weight_bytes() + columns_.size() * sizeof(std::int32_t);
    }
    const AnyQuantLinear& base() const noexcept { return base_; }
    const AnyQuantLinear& salient() const noexcept { return salient_; }
    const std::vector<std::int32_t>& salient_columns() const noexcept { return columns_; }
    const Tensor<float>& bias() const noexcept { return base_.bias(); }

    void forward(ThreadPool& pool, const float* x, std::size_t m, float* y) const {
        base_.forward(pool, x, m, y);
        const std::size_t k = in_features(), ks = columns_.size(), n = out_features();
        std::vector<float> gathered(m * ks), extra(m * n);
        for (std::size_t r = 0; r < m; ++r)
            for (std::size_t j = 0; j < ks; ++j) gathered[r * ks + j] = x[r * k + static_cast<std::size_t>(columns_[j])];
        salient_.forward(pool, gathered.data(), m, extra.data());
        for (std::size_t i = 0; i < m * n; ++i) y[i] += extra[i];
    }

    void dequantize_row(std::size_t r, std::span<float> out) const {
        base_.dequantize_row(r, out);
        std::vector<float> row(columns_.size());
        salient_.dequantize_row(r, row);
        for (std::size_t j = 0; j < columns_.size(); ++j) out[static_cast<std::size_t>(columns_[j])] += row[j];
    }

private:
    AnyQuantLinear base_;
    AnyQuantLinear salient_;
    std::vector<std::int32_t> columns_;
};

static_assert(LinearLayer<QuantLinear<QuantTensor<4, PerGroup<128>>>>);
static_assert(LinearLayer<AnyQuantLinear>);
static_assert(LinearLayer<MixedLinear>);

// One of the linear kinds, chosen at run time; forward() dispatches once per layer call.
class AnyLinear {
public:
    using variant_type = std::variant<DenseLinear, AnyQuantLinear, MixedLinear, HalfLinear<fp16_t>, HalfLinear<bf16_t>>;

    AnyLinear() = default;
    template <class L>
        requires std::is_constructible_v<variant_type, L&&>
    AnyLinear(L&& layer) : layer_(std::forward<L>(layer)) {}  // NOLINT: implicit by design
    template <TypedQuantTensor QT>
    AnyLinear(QuantLinear<QT> layer) : layer_(AnyQuantLinear(std::move(layer))) {}  // NOLINT

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

    // The quantized layer, or null when this one is float or mixed.
    const AnyQuantLinear* quantized() const noexcept { return std::get_if<AnyQuantLinear>(&layer_); }
    AnyQuantLinear* quantized() noexcept { return std::get_if<AnyQuantLinear>(&layer_); }

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

// A model whose every block linear layer is make(const DenseLinear&) -> Linear: the typed way to
// build, e.g., GPT2Model<QuantLinear<QuantTensor<4, PerGroup<128>>>> from float weights.
template <LinearLayer Linear, class MakeLinear>
    requires std::is_invocable_r_v<Linear, MakeLinear&, const DenseLinear&>
GPT2Model<Linear> convert_linears(GPT2FloatWeights w, MakeLinear&& make) {
    std::vector<GPT2Block<Linear>> blocks;
    blocks.reserve(w.blocks.size());
    for (auto& b : w.blocks)
        blocks.push_back({std::move(b.ln_1), make(b.c_attn), make(b.attn_proj), std::move(b.ln_2), make(b.c_fc), make(b.mlp_proj),
                          std::move(b.mlp_act_scale)});
    return GPT2Model<Linear>(std::move(w.config), std::move(w.wte), std::move(w.wpe), std::move(blocks), std::move(w.ln_f),
                             std::move(w.untied_head));
}

// Runs every weight-only quantized layer of the model (the tied head included) with `activations`:
// ActQuant::int8_dynamic turns W4 into W4A8 (int8 per token, integer dot products), none turns it
// back. Layers calibrated with a static activation scale keep it. Returns how many layers changed.
inline std::size_t set_weight_only_activations(GPT2Model<AnyLinear>& model, ActQuant activations) {
    if (activations == ActQuant::int8_static)
        throw invalid_argument("qlm::set_weight_only_activations: static activation scales come from calibration");
    std::size_t changed = 0;
    auto apply = [&](AnyLinear& layer) {
        AnyQuantLinear* q = layer.quantized();
        if (!q || q->activations() == ActQuant::int8_static || q->activations() == activations) return;
        q->set_activations(activations);
        ++changed;
    };
    for (auto& block : model.mutable_blocks())
        for (const LinearSlot slot : kLinearSlots) apply(linear_of(block, slot));
    if (model.mutable_tied_head()) apply(*model.mutable_tied_head());
    return changed;
}

}  // namespace qlm
