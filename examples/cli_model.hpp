#pragma once
// What qlm-bench and qlm-bench-serve share: the random-weight shapes (--shape) and the weight
// variants (--variants / --method) they quantize a float model into.
#include "cli.hpp"

#include <qlm/model/config.hpp>
#include <qlm/model/random_weights.hpp>
#include <qlm/model/quantize.hpp>

#include <cctype>
#include <cstddef>
#include <fstream>
#include <optional>
#include <string>
#include <utility>

namespace qlm::cli {

inline constexpr const char* kVariantHelp =
    "fp32, fp16, bf16, w8a8 (int8 per channel, int8 activations), wNgG (N-bit RTN, groups of G, float "
    "activations), wNa8gG (the same with int8 activations per token)";

// GPT-2 124M, or the bundled model's shape (4 layers, 4 heads, n_embd 128, context 256).
inline GPT2Config shape_config(const std::string& shape) {
    GPT2Config config = gpt2_124m_config();
    if (shape == "tiny") {
        config.n_layer = 4;
        config.n_head = 4;
        config.n_embd = 128;
        config.n_positions = 256;
    } else if (shape != "124m") {
        throw invalid_argument("unknown --shape '" + shape + "' (124m, tiny)");
    }
    return config;
}

// "w4g128" (weight-only, float activations) or "w4a8g128" (int8 activations): RTN, symmetric.
struct WeightVariant {
    int bits;
    std::size_t group_size;
    bool int8_activations;
};
inline std::optional<WeightVariant> weight_variant(const std::string& v) {
    WeightVariant w{};
    std::size_t at = 0;
    if (v.size() < 4 || v[0] != 'w' || !std::isdigit(static_cast<unsigned char>(v[1]))) return std::nullopt;
    w.bits = v[1] - '0';
    at = 2;
    if (v.compare(at, 2, "a8") == 0) w.int8_activations = true, at += 2;
    if (at >= v.size() || v[at] != 'g') return std::nullopt;
    const std::string digits = v.substr(at + 1);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 6) return std::nullopt;
    w.group_size = std::stoul(digits);
    return w;
}

// The quantization a variant names; nullopt for fp32 (the float model as it is). Throws
// invalid_argument for an unknown name.
inline std::optional<QuantizeOptions> quantize_options(const std::string& v) {
    QuantizeOptions o;
    o.quantize_head = true;  // as llama.cpp's quantized files do
    if (v == "fp32") return std::nullopt;
    if (v == "w8a8") {
        o.method = "int8-dynamic";
    } else if (v == "fp16" || v == "bf16") {
        o.method = v;
    } else if (const auto spec = weight_variant(v)) {
        o.method = "rtn";
        o.weights = QuantSpec{spec->bits, GranularityKind::per_group, spec->group_size, true};
        o.int8_activations = spec->int8_activations;
    } else {
        throw invalid_argument("unknown variant '" + v + "' (fp32, fp16, bf16, w8a8, w<bits>g<group> such as w4g128, "
                               "w<bits>a8g<group> such as w4a8g128)");
    }
    return o;
}

// The float weights turned into the variant `v` names (quantized as quantize_options says, or fp32 as
// they are).
inline GPT2Model<AnyLinear> variant_model(ThreadPool& pool, GPT2FloatWeights weights, const std::string& v) {
    const auto options = quantize_options(v);
    return options ? quantize_gpt2(pool, std::move(weights), *options).model : to_any_linear(std::move(weights));
}

// /proc/cpuinfo's "model name", for the tools' banners and reports.
inline std::string cpu_name() {
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);)
        if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
    return "unknown CPU";
}

}  // namespace qlm::cli
