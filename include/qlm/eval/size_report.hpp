#pragma once
// get_model_size-style accounting: bytes of every parameter tensor as stored, grouped totals and
// the compression ratio against the same model in fp32.
#include <qlm/model/gpt2.hpp>
#include <qlm/model/parameters.hpp>
#include <qlm/model/quantized_linear.hpp>

#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
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

namespace detail {

// A block linear layer's scheme as the report shows it, and the bytes of its bias.
template <LinearLayer Linear>
std::pair<std::string, std::size_t> describe_linear(const Linear& layer) {
    if constexpr (std::is_same_v<Linear, AnyLinear>) {
        return std::visit([](const auto& l) { return describe_linear(l); }, layer.variant());
    } else if constexpr (std::is_same_v<Linear, MixedLinear>) {
        return {to_string(layer.base().spec()) + " + " + std::to_string(layer.salient_columns().size()) + " salient ch. " +
                    to_string(layer.salient().spec()),
                layer.bias().bytes()};
    } else if constexpr (requires { layer.spec(); layer.activations(); }) {  // AnyQuantLinear, QuantLinear<QT>
        std::string kind = to_string(layer.spec());
        if (layer.activations() == ActQuant::int8_dynamic) kind += " a8-dynamic";
        if (layer.activations() == ActQuant::int8_static) kind += " a8-static";
        return {kind, layer.bias().bytes()};
    } else if constexpr (requires { typename Linear::value_type; }) {  // HalfLinear<fp16_t / bf16_t>
        return {std::is_same_v<typename Linear::value_type, fp16_t> ? "fp16" : "bf16", layer.bias().bytes()};
    } else {
        return {"fp32", layer.bias().bytes()};
    }
}

}  // namespace detail

template <LinearLayer Linear>
SizeReport size_report(const GPT2Model<Linear>& model) {
    SizeReport r;
    auto other = [&](const std::string& name, const std::string& kind, std::size_t params, std::size_t bytes) {
        r.tensors.push_back({name, kind, params, bytes});
        r.other_params += params;
        r.other_bytes += bytes;
    };
    auto on_tensor = [&](const std::string& name, const Tensor<float>& t) { other(name, "fp32", t.numel(), t.bytes()); };
    auto on_linear = [&](const std::string& name, const Linear& layer, LinearRole role) {
        const std::size_t weights = layer.in_features() * layer.out_features();
        if (role == LinearRole::tied_head) {
            r.embedding_kind = detail::describe_linear(layer).first;
            return other(name + " (tied head)", r.embedding_kind, weights, layer.weight_bytes());
        }
        const auto [kind, bias_bytes] = detail::describe_linear(layer);
        r.tensors.push_back({name + ".weight", kind, weights, layer.weight_bytes() - bias_bytes});
        r.linear_params += weights;
        r.linear_bytes += layer.weight_bytes() - bias_bytes;
        if (bias_bytes) other(name + ".bias", "fp32", bias_bytes / sizeof(float), bias_bytes);
    };
    for_each_parameter(model, on_tensor, on_linear);
    return r;
}

}  // namespace qlm
