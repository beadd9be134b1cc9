#pragma once
// Reading AutoGPTQ / GPTQModel checkpoints of GPT-2 into qlm (load_autogptq). Byte layouts and how
// they map to qlm's own layout: docs/interop-formats.md.
//
// AutoGPTQ, per linear layer P (GPT-2's Conv1D, K = in_features, N = out_features, b bits):
//   P.qweight  int32 [K*b/32, N]       codes packed along K: column n is a little-endian stream
//                                       of 32-bit words, code of input k at bits b*k .. b*k+b-1
//                                       (4-bit: word i holds k = 8i..8i+7; 3-bit crosses words)
//   P.qzeros   int32 [groups, N*b/32]  zero points packed the same way along N;
//                                       checkpoint_format "gptq" stores z - 1, "gptq_v2" stores z
//   P.scales   fp16  [groups, N]
//   P.g_idx    int32 [K]               group of each input column (permuted with desc_act)
//   P.bias     fp16  [N]
// value(n, k) = (q(n, k) - z(n, g_idx[k])) * s(n, g_idx[k]).
#include <qlm/core/error.hpp>
#include <qlm/model/checkpoint.hpp>
#include <qlm/model/interop/gptq_config.hpp>
#include <qlm/model/interop/tensor_source.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace qlm {

namespace detail::interop {

// P.g_idx, checked (every column in a group, every group exactly G columns), as the stable sort of
// the columns by group: the input_order of the qlm layer. Empty when g_idx is absent or k / G.
inline std::vector<std::int32_t> gptq_column_order(const TensorSource& src, const std::string& gi, std::size_t K, std::size_t G) {
    std::vector<std::int32_t> order;
    if (!src.contains(gi)) return order;
    const TensorInfo& t = src.info(gi);
    if (t.dtype != DType::I32) throw format_error(src.where(gi) + "stored as " + std::string(dtype_name(t.dtype)) + ", expected I32");
    if (t.dims != std::vector<std::size_t>{K})
        throw shape_error(src.where(gi) + "has shape " + dims_str(t.dims) + ", expected [" + std::to_string(K) + "] (in_features)");
    std::vector<std::int32_t> g_idx(K);
    std::memcpy(g_idx.data(), t.bytes.data(), K * sizeof(std::int32_t));
    const std::size_t groups = K / G;
    std::vector<std::size_t> count(groups, 0);
    bool ordered = true;
    for (std::size_t c = 0; c < K; ++c) {
        const std::int32_t g = g_idx[c];
        if (g < 0 || static_cast<std::size_t>(g) >= groups)
            throw format_error(src.where(gi) + "column " + std::to_string(c) + " is in group " + std::to_string(g) + ", outside [0, " +
                               std::to_string(groups) + ")");
        ++count[static_cast<std::size_t>(g)];
        ordered = ordered && static_cast<std::size_t>(g) == c / G;
    }
    for (std::size_t g = 0; g < groups; ++g)
        if (count[g] != G)
            throw format_error(src.where(gi) + "group " + std::to_string(g) + " has " + std::to_string(count[g]) +
                               " columns, expected group_size " + std::to_string(G) +
                               " (qlm needs every group to have exactly group_size columns)");
    if (ordered) return order;
    std::vector<std::size_t> next(groups);
    for (std::size_t g = 0; g < groups; ++g) next[g] = g * G;
    order.resize(K);
    for (std::size_t c = 0; c < K; ++c) order[next[static_cast<std::size_t>(g_idx[c])]++] = static_cast<std::int32_t>(c);
    return order;
}

// P.qzeros as qlm's [N, groups] zero points, and whether every one is the symmetric 2^(b-1).
struct GptqZeros {
    std::vector<std::uint8_t> zeros;
    bool all_mid = true;
};

inline GptqZeros gptq_zeros(const TensorSource& src, const AutoGptqConfig& cfg, const std::string& qz,
                            const std::vector<std::uint32_t>& qzeros, std::size_t N, std::size_t groups) {
    const int b = cfg.bits;
    const std::uint32_t maxq = (1u << b) - 1, mid = 1u << (b - 1);
    const std::size_t zwords = N * static_cast<std::size_t>(b) / 32;
    GptqZeros out{std::vector<std::uint8_t>(N * groups), true};
    for (std::size_t g = 0; g < groups; ++g)
        for (std::size_t n = 0; n < N; ++n) {
            const std::uint32_t field = stream_get(qzeros.data() + g * zwords, 1, n, b);
            const std::uint32_t z = cfg.zero_minus_one() ? field + 1 : field;
            if (z > maxq)
                throw format_error(src.where(qz) + "group " + std::to_string(g) + ", output " + std::to_string(n) + ": stored field " +
                                   std::to_string(field) + " means zero point " + std::to_string(z) +
                                   " in checkpoint_format 'gptq' (which stores z - 1), outside [0, " + std::to_string(maxq) +
                                   "]; the 'gptq' format cannot represent z = 0 (use 'gptq_v2')");
            out.zeros[n * groups + g] = static_cast<std::uint8_t>(z);
            out.all_mid = out.all_mid && z == mid;
        }
    return out;
}

// One AutoGPTQ layer as a quantized layer (or DenseLinear when the file holds it unquantized).
// The qlm tensor stores the columns sorted stably by g_idx (so groups are contiguous) and
// input_order maps them back; without a permutation input_order stays empty.
inline AnyLinear load_gptq_linear(const TensorSource& src, const AutoGptqConfig& cfg, const std::string& name, std::size_t K,
                                  std::size_t N, std::optional<QuantSpec>& seen) {
    if (auto dense = unquantized_layer(src, name, K, N, "AutoGPTQ")) return std::move(*dense);
    const std::string qw = name + ".qweight";
    const int b = cfg.bits;
    const std::size_t ub = static_cast<std::size_t>(b);
    if (K * ub % 32 != 0 || N * ub % 32 != 0)
        throw shape_error(src.where(qw) + "layer [in " + std::to_string(K) + ", out " + std::to_string(N) + "] at " +
                          std::to_string(b) + " bits does not pack into whole 32-bit words");
    const std::size_t G = columns_per_group(src, qw, K, cfg.group_size), groups = K / G;
    QuantSpec spec = foreign_spec(b, cfg.group_size, /*symmetric=*/false, src.where(qw));  // mode decided below
    AnyQuantTensor::check_shape(spec, N, K, src.resolve(qw));

    const std::string qz = name + ".qzeros";
    const auto qweight = src.load_words(qw, {K * ub / 32, N}, "in_features * bits / 32, out_features");
    const auto qzeros = src.load_words(qz, {groups, N * ub / 32}, "groups, out_features * bits / 32");
    const Tensor<float> scales = load_scales(src, name + ".scales", groups, N);
    std::vector<std::int32_t> order = gptq_column_order(src, name + ".g_idx", K, G);
    const GptqZeros z = gptq_zeros(src, cfg, qz, qzeros, N, groups);
    spec.symmetric = cfg.sym && z.all_mid;
    if (!seen) seen = spec;

    AnyQuantTensor weight(spec, N, K);
    std::vector<std::uint8_t> codes(K);
    std::vector<float> srow(groups);
    for (std::size_t n = 0; n < N; ++n) {
        for (std::size_t j = 0; j < K; ++j) {
            const std::size_t c = order.empty() ? j : static_cast<std::size_t>(order[j]);
            codes[j] = static_cast<std::uint8_t>(stream_get(qweight.data() + n, N, c, b));
        }
        scales_row(scales, n, srow);
        const std::span<const std::uint8_t> zrow(z.zeros.data() + n * groups, groups);
        weight.set_row(n, codes, srow, spec.symmetric ? std::span<const std::uint8_t>{} : zrow);
    }
    return AnyQuantLinear(std::move(weight), optional_bias(src, name, N), std::move(order));
}

}  // namespace detail::interop

// Loads an AutoGPTQ / GPTQModel GPT-2 checkpoint (checkpoint_format "gptq" or "gptq_v2"; 2, 3, 4
// or 8 bits; per group or per channel; with or without desc_act). Layers stored unquantized
// (P.weight instead of P.qweight) load as float layers. info.method is "gptq".
// Throws format_error / shape_error naming the file and tensor for anything it cannot read.
inline LoadedModel load_autogptq(const std::filesystem::path& dir) {
    const AutoGptqConfig cfg = AutoGptqConfig::read(dir);
    const nlohmann::json details = {{"source_format", "autogptq"}, {"checkpoint_format", cfg.checkpoint_format},
                                    {"desc_act", cfg.desc_act},     {"sym", cfg.sym},
                                    {"group_size", cfg.group_size}, {"damp_percent", cfg.damp_percent}};
    auto load_linear = [&](const detail::interop::TensorSource& src, const std::string& name, std::size_t in, std::size_t out,
                           std::optional<QuantSpec>& seen) { return detail::interop::load_gptq_linear(src, cfg, name, in, out, seen); };
    return detail::interop::load_foreign_gpt2(dir, cfg.model_file_base_name, "gptq", details, load_linear);
}

}  // namespace qlm
