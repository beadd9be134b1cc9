#pragma once
// get_model_size-style accounting: bytes of every parameter tensor as stored, grouped totals and
// the compression ratio against the same model in fp32.
#include <qlm/model/gpt2.hpp>
#include <qlm/model/quantized_linear.hpp>

#include <cstddef>
#include <string>
#include <vector>

namespace qlm {

struct TensorSize {
    std::string name;
    std::string kind;        // "fp32" or the scheme, e.g. "w4-g128-sym"
    std::size_t params = 0;  // weights (and biases) it stands for
    std::size_t bytes = 0;   // as stored, incl. scales and zero points
};

struct SizeReport {
    std::vector<TensorSize> tensors;
    std::size_t linear_params = 0, linear_bytes = 0;  // weights of the transformer blocks' linear layers
    std::size_t other_params = 0, other_bytes = 0;    // embeddings, norms, biases, head
    std::string embedding_kind = "fp32";               // the token embedding's storage: "fp32" or the tied head's scheme

    std::size_t total_bytes() const noexcept { return linear_bytes + other_bytes; }
    std::size_t total_params() const noexcept { return linear_params + other_params; }
    double fp32_bytes() const noexcept { return 4.0 * static_cast<double>(total_params()); }
    double compression() const noexcept { return fp32_bytes() / static_cast<double>(total_bytes()); }
    // Bytes per linear-layer weight, scales and zero points included.
    double linear_bytes_per_weight() const noexcept {
        return linear_params ? static_cast<double>(linear_bytes) / static_cast<double>(linear_params) : 0.0;
    }
};

template <LinearLayer Linear>
SizeReport size_report(const GPT2Model<Linear>& model) {
    SizeReport r;
    auto other = [&](const std::string& name, const Tensor<float>& t) {
        r.tensors.push_back({name, "fp32", t.numel(), t.bytes()});
        r.other_params += t.numel();
        r.other_bytes += t.bytes();
    };
    if (model.tied_head()) {
        const auto& head = *model.tied_head();
        std::string kind = "fp32";
        if constexpr (std::is_same_v<Linear, AnyLinear>)
            if (const AnyQuantLinear* q = head.quantized()) kind = to_string(q->spec());
        r.embedding_kind = kind;
        r.tensors.push_back({"wte (tied head)", kind, head.in_features() * head.out_features(), head.weight_bytes()});
        r.other_params += head.in_features() * head.out_features();
        r.other_bytes += head.weight_bytes();
    } else {
        other("wte.weight", model.wte());
    }
    other("wpe.weight", model.wpe());
    for (std::size_t i = 0; i < model.blocks().size(); ++i) {
        const auto& b = model.blocks()[i];
        const std::string p = "h." + std::to_string(i) + ".";
        other(p + "ln_1.weight", b.ln_1.weight);
        other(p + "ln_1.bias", b.ln_1.bias);
        other(p + "ln_2.weight", b.ln_2.weight);
        other(p + "ln_2.bias", b.ln_2.bias);
        if (b.mlp_act_scale.numel()) other(p + "mlp.act.scales", b.mlp_act_scale);
        for (const LinearSlot slot : kLinearSlots) {
            const auto& layer = linear_of(b, slot);
            const std::string name = p + hf_name(slot);
            const std::size_t weights = layer.in_features() * layer.out_features();
            std::size_t bias_bytes = 0, weight_bytes = layer.weight_bytes();
            std::string kind = "fp32";
            if constexpr (std::is_same_v<Linear, AnyLinear>) {
                std::visit(
                    [&](const auto& l) {
                        bias_bytes = l.bias().bytes();
                        using L = std::decay_t<decltype(l)>;
                        if constexpr (std::is_same_v<L, MixedLinear>) {
                            kind = to_string(l.base().spec()) + " + " + std::to_string(l.salient_columns().size()) +
                                   " salient ch. " + to_string(l.salient().spec());
                        } else if constexpr (std::is_same_v<L, AnyQuantLinear>) {
                            kind = to_string(l.spec());
                            if (l.activations() == ActQuant::int8_dynamic) kind += " a8-dynamic";
                            if (l.activations() == ActQuant::int8_static) kind += " a8-static";
                        }
                    },
                    layer.variant());
            } else {
                bias_bytes = layer.bias().bytes();
            }
            r.tensors.push_back({name + ".weight", kind, weights, weight_bytes - bias_bytes});
            r.linear_params += weights;
            r.linear_bytes += weight_bytes - bias_bytes;
            if (bias_bytes) {
                r.tensors.push_back({name + ".bias", "fp32", bias_bytes / sizeof(float), bias_bytes});
                r.other_params += bias_bytes / sizeof(float);
                r.other_bytes += bias_bytes;
            }
        }
    }
    other("ln_f.weight", model.ln_f().weight);
    other("ln_f.bias", model.ln_f().bias);
    if (model.untied_head()) other("lm_head.weight", model.untied_head()->weight());
    return r;
}

}  // namespace qlm
