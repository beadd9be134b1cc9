#pragma once
// AutoAWQ GEMM checkpoints of GPT-2 (load_autoawq). Byte layout: docs/interop-formats.md.
//
// Per linear layer P (K = in_features, N = out_features, 4 bits, zero point stored as is):
//   P.qweight  int32 [K, N/8]       codes packed along the OUTPUT dim: word j of row k holds outputs
//                                    8j..8j+7, nibble i (bits 4i..4i+3) = output 8j + kAwqPackOrder[i]
//   P.qzeros   int32 [groups, N/8]  the zero points, packed the same way
//   P.scales   fp16  [groups, N]
//   P.bias     fp16  [N]
// value(n, k) = (q(n, k) - z(n, k / G)) * s(n, k / G).
#include <qlm/core/error.hpp>
#include <qlm/model/checkpoint.hpp>
#include <qlm/model/interop/config_json.hpp>
#include <qlm/model/interop/tensor_source.hpp>

#include <nlohmann/json.hpp>

#include <array>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace qlm {

// AutoAWQ's interleaving of eight 4-bit outputs in one int32 (awq/utils/packing_utils.py AWQ_ORDER):
// nibble i holds output kAwqPackOrder[i] of the eight; kAwqReverseOrder[p] is the nibble of output p.
inline constexpr std::array<int, 8> kAwqPackOrder{0, 2, 4, 6, 1, 3, 5, 7};
inline constexpr std::array<int, 8> kAwqReverseOrder{0, 4, 1, 5, 2, 6, 3, 7};

// What qlm reads from an AutoAWQ configuration: config.json "quantization_config"
// {quant_method "awq", bits, group_size, zero_point, version}, or quant_config.json
// {w_bit, q_group_size, zero_point, version} (older AutoAWQ).
struct AutoAwqConfig {
    int bits = 4;
    long long group_size = 128;  // -1: one group per output channel
    bool zero_point = true;
    std::string version = "gemm";

    static AutoAwqConfig read(const std::filesystem::path& dir) {
        return detail::interop::read_config_as<AutoAwqConfig>(dir, "quant_config.json", "AutoAWQ");
    }

    static AutoAwqConfig from_json(const nlohmann::json& j, const std::string& origin) {
        const detail::interop::ConfigReader r(j, origin, "awq");
        AutoAwqConfig c;
        const char* bits_key = r.has("bits") ? "bits" : r.has("w_bit") ? "w_bit" : nullptr;
        const char* group_key = r.has("group_size") ? "group_size" : r.has("q_group_size") ? "q_group_size" : nullptr;
        if (!bits_key) throw format_error("qlm: " + origin + ": missing 'bits' (or 'w_bit')");
        if (!group_key) throw format_error("qlm: " + origin + ": missing 'group_size' (or 'q_group_size')");
        const long long bits = r.integer(bits_key);
        if (bits != 4)
            throw format_error("qlm: " + origin + ": AWQ checkpoints with bits = " + std::to_string(bits) +
                               " are not supported (AutoAWQ's GEMM format is 4-bit)");
        c.bits = 4;
        c.group_size = r.group_size(group_key);
        if (r.has("zero_point")) c.zero_point = r.boolean("zero_point");
        if (!c.zero_point)
            throw format_error("qlm: " + origin + ": zero_point false is not supported (AutoAWQ's GEMM layers store zero points)");
        if (r.has("version")) {
            c.version = r.string("version");
            for (char& ch : c.version) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        }
        if (c.version != "gemm")
            throw format_error("qlm: " + origin + ": AutoAWQ version '" + c.version +
                               "' is not supported (qlm reads the 'gemm' layout; gemv, marlin, exllama and ipex "
                               "checkpoints pack differently)");
        return c;
    }
};

namespace detail::interop {

// The code of output n in a row of AWQ words (N/8 words, outputs packed along the row).
inline std::uint32_t awq_get(const std::uint32_t* row, std::size_t n) noexcept {
    return (row[n / 8] >> (4 * kAwqReverseOrder[n % 8])) & 0xFu;
}

inline AnyLinear load_awq_linear(const TensorSource& src, const AutoAwqConfig& cfg, const std::string& name, std::size_t K,
                                 std::size_t N, std::optional<QuantSpec>& seen) {
    if (auto dense = unquantized_layer(src, name, K, N, "AutoAWQ")) return std::move(*dense);
    const std::string qw = name + ".qweight";
    if (N % 8 != 0)
        throw shape_error(src.where(qw) + "out_features " + std::to_string(N) + " is not a multiple of 8 (8 outputs an int32)");
    const std::size_t groups = K / columns_per_group(src, qw, K, cfg.group_size), W = N / 8;
    const QuantSpec spec = foreign_spec(4, cfg.group_size, /*symmetric=*/false, src.where(qw));
    AnyQuantTensor::check_shape(spec, N, K, src.resolve(qw));
    const auto qweight = src.load_words(qw, {K, W}, "in_features, out_features / 8");
    const auto qzeros = src.load_words(name + ".qzeros", {groups, W}, "groups, out_features / 8");
    const Tensor<float> scales = load_scales(src, name + ".scales", groups, N);

    if (!seen) seen = spec;
    AnyQuantTensor weight(spec, N, K);
    std::vector<std::uint8_t> codes(K), zrow(groups);
    std::vector<float> srow(groups);
    for (std::size_t n = 0; n < N; ++n) {
        for (std::size_t k = 0; k < K; ++k) codes[k] = static_cast<std::uint8_t>(awq_get(qweight.data() + k * W, n));
        for (std::size_t g = 0; g < groups; ++g) zrow[g] = static_cast<std::uint8_t>(awq_get(qzeros.data() + g * W, n));
        scales_row(scales, n, srow);
        weight.set_row(n, codes, srow, zrow);
    }
    return AnyQuantLinear(std::move(weight), optional_bias(src, name, N));
}

}  // namespace detail::interop

// Loads an AutoAWQ GEMM GPT-2 checkpoint (4-bit, zero points, per group or per channel). Every
// quantized layer becomes an asymmetric quantized layer; info.method is "awq". Other AutoAWQ versions
// (gemv, marlin, ...) throw format_error naming the version.
inline LoadedModel load_autoawq(const std::filesystem::path& dir) {
    const AutoAwqConfig cfg = AutoAwqConfig::read(dir);
    const nlohmann::json details = {
        {"source_format", "autoawq"}, {"version", cfg.version}, {"group_size", cfg.group_size}, {"zero_point", true}};
    auto load_linear = [&](const detail::interop::TensorSource& src, const std::string& name, std::size_t in, std::size_t out,
                           std::optional<QuantSpec>& seen) { return detail::interop::load_awq_linear(src, cfg, name, in, out, seen); };
    return detail::interop::load_foreign_gpt2(dir, {}, "awq", details, load_linear);
}

}  // namespace qlm
