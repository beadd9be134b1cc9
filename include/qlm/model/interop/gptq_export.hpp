#pragma once
// Writing qlm's weight-only layers as an AutoGPTQ GPT-2 checkpoint (save_autogptq). Layout:
// docs/interop-formats.md and gptq_reader.hpp.
#include <qlm/core/error.hpp>
#include <qlm/core/half.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/io/safetensors.hpp>
#include <qlm/model/checkpoint.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/model/interop/config_json.hpp>
#include <qlm/model/interop/gptq_config.hpp>
#include <qlm/model/quantized_linear.hpp>
#include <qlm/quant/quant_tensor.hpp>
#include <qlm/quant/scheme.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

namespace qlm {

struct AutoGptqSaveOptions {
    std::string checkpoint_format = "gptq";  // "gptq" (AutoGPTQ, stores z - 1) or "gptq_v2" (GPTQModel, stores z)
    // Embeddings, layer norms, biases and float layers: F32 (lossless, the default) or F16 (what
    // AutoGPTQ itself writes, half the size). Scales are always F16, as AutoGPTQ's kernels expect.
    DType float_dtype = DType::F32;
};

// What an export changed.
struct AutoGptqExportStats {
    std::size_t quantized_layers = 0;
    std::size_t float_layers = 0;             // written as P.weight, listed in modules_to_not_convert
    std::size_t scales = 0;
    double max_scale_rel_change = 0.0;        // max |fp16(s) - s| / s over every scale s > 0
    bool head_dequantized = false;            // a quantized tied head was written as float wte
};

namespace detail::interop {

inline void add_float_tensor(SafetensorsWriter& w, const std::string& name, const Tensor<float>& t, DType dtype) {
    const std::vector<std::size_t> dims(t.shape().dims().begin(), t.shape().dims().end());
    if (dtype == DType::F32) {
        w.add(name, DType::F32, dims, std::as_bytes(t.span()));
        return;
    }
    std::vector<fp16_t> h(t.numel());
    for (std::size_t i = 0; i < h.size(); ++i) h[i] = fp16_t{float_to_fp16(t.data()[i])};
    w.add(name, DType::F16, dims, std::as_bytes(std::span<const fp16_t>(h)));
}

// The float [vocab, n_embd] values of a tied head held as a linear layer, in input order.
inline Tensor<float> dequantized_head(const AnyLinear& head) {
    if (const AnyQuantLinear* q = head.quantized()) return q->dequantize();
    return head.get<DenseLinear>().weight();
}

// Copies the tokenizer files qlm and Hugging Face use.
inline void copy_tokenizer(const std::filesystem::path& from, const std::filesystem::path& to) {
    namespace fs = std::filesystem;
    if (from.empty() || fs::absolute(from) == fs::absolute(to)) return;
    for (const char* f : {"vocab.json", "merges.txt", "encoder.json", "vocab.bpe", "tokenizer.json", "tokenizer_config.json",
                          "special_tokens_map.json"})
        if (fs::exists(from / f)) fs::copy_file(from / f, to / f, fs::copy_options::overwrite_existing);
}

// ---- one quantized layer -----------------------------------------------------------------------

// P.qweight: the codes in the original column order (stored column j is input input_order[j]).
inline std::vector<std::uint32_t> gptq_qweight(const AnyQuantTensor& q, std::span<const std::int32_t> order) {
    const std::size_t N = q.rows(), K = q.cols();
    const int b = q.bits();
    std::vector<std::uint32_t> qweight(K * static_cast<std::size_t>(b) / 32 * N, 0);
    std::vector<std::uint8_t> codes(K);
    for (std::size_t n = 0; n < N; ++n) {
        q.codes_row(n, codes);
        for (std::size_t j = 0; j < K; ++j)
            stream_put(qweight.data() + n, N, order.empty() ? j : static_cast<std::size_t>(order[j]), b, codes[j]);
    }
    return qweight;
}

// scale s as fp16; throws when it overflows, records how far it moved.
inline fp16_t gptq_scale(float s, const std::string& name, std::size_t n, std::size_t g, AutoGptqExportStats& stats) {
    const std::uint16_t h = float_to_fp16(s);
    const float back = fp16_to_float(h);
    if (!std::isfinite(back))
        throw invalid_argument("qlm::save_autogptq: layer '" + name + "' scale " + std::to_string(s) + " (output " + std::to_string(n) +
                               ", group " + std::to_string(g) + ") overflows fp16");
    if (s > 0.0f)
        stats.max_scale_rel_change =
            std::max(stats.max_scale_rel_change, std::abs(static_cast<double>(back) - s) / static_cast<double>(s));
    return fp16_t{h};
}

// Writes P.qzeros [groups, N*b/32] and P.scales [groups, N].
inline void write_gptq_zeros_scales(SafetensorsWriter& w, const std::string& name, const AnyQuantTensor& q, bool v1,
                                    AutoGptqExportStats& stats) {
    const std::size_t N = q.rows(), groups = q.groups(), zwords = N * static_cast<std::size_t>(q.bits()) / 32;
    std::vector<std::uint32_t> qzeros(groups * zwords, 0);
    std::vector<fp16_t> scales(groups * N);
    for (std::size_t g = 0; g < groups; ++g)
        for (std::size_t n = 0; n < N; ++n) {
            const int z = q.zero(n, g);
            if (v1 && z == 0)
                throw invalid_argument("qlm::save_autogptq: layer '" + name + "' has zero point 0 (output " + std::to_string(n) +
                                       ", group " + std::to_string(g) + "), which checkpoint_format 'gptq' cannot store "
                                       "(it stores z - 1); export with checkpoint_format 'gptq_v2'");
            stream_put(qzeros.data() + g * zwords, 1, n, q.bits(), static_cast<std::uint32_t>(v1 ? z - 1 : z));
            scales[g * N + n] = gptq_scale(q.scale(n, g), name, n, g, stats);
        }
    stats.scales += groups * N;
    const std::string p = "transformer." + name;
    w.add(p + ".qzeros", DType::I32, {groups, zwords}, std::as_bytes(std::span<const std::uint32_t>(qzeros)));
    w.add(p + ".scales", DType::F16, {groups, N}, std::as_bytes(std::span<const fp16_t>(scales)));
}

// Writes one quantized layer as P.qweight / P.qzeros / P.scales / P.g_idx / P.bias.
inline void write_gptq_layer(SafetensorsWriter& w, const std::string& name, const AnyQuantLinear& layer,
                             const AutoGptqSaveOptions& options, AutoGptqExportStats& stats) {
    const AnyQuantTensor q = layer.weight();
    const std::size_t N = q.rows(), K = q.cols(), G = q.group_size(), ub = static_cast<std::size_t>(q.bits());
    if (K * ub % 32 != 0 || N * ub % 32 != 0)
        throw shape_error("qlm::save_autogptq: layer '" + name + "' [out " + std::to_string(N) + ", in " + std::to_string(K) + "] at " +
                          std::to_string(q.bits()) + " bits does not pack into whole 32-bit words");
    const auto& order = layer.input_order();
    std::vector<std::int32_t> g_idx(K);
    for (std::size_t j = 0; j < K; ++j) g_idx[order.empty() ? j : static_cast<std::size_t>(order[j])] = static_cast<std::int32_t>(j / G);
    const auto qweight = gptq_qweight(q, order);

    const std::string p = "transformer." + name;
    w.add(p + ".qweight", DType::I32, {K * ub / 32, N}, std::as_bytes(std::span<const std::uint32_t>(qweight)));
    write_gptq_zeros_scales(w, name, q, options.checkpoint_format == "gptq", stats);
    w.add(p + ".g_idx", DType::I32, {K}, std::as_bytes(std::span<const std::int32_t>(g_idx)));
    if (layer.bias().numel()) {
        add_float_tensor(w, p + ".bias", layer.bias(), options.float_dtype);
    } else {  // AutoGPTQ's QuantLinear always has a bias buffer; zeros are the same layer
        Tensor<float> zero(Shape{N});
        std::fill_n(zero.data(), N, 0.0f);
        add_float_tensor(w, p + ".bias", zero, options.float_dtype);
    }
    ++stats.quantized_layers;
}

// ---- the whole model ---------------------------------------------------------------------------

// What the one quantization_config of the file says about every quantized layer.
struct GptqFileScheme {
    int bits = 0;
    long long group_size = -1;  // -1: every layer per channel
    bool sym = true;
    bool input_order = false;   // some layer stores its columns permuted (act-order)
    nlohmann::json not_converted = nlohmann::json::array();  // float layers
};

// A layer's scheme as the file would state it; a per-channel layer is one group of K columns.
struct GptqLayerScheme {
    std::string name;
    bool per_group;
    long long columns_per_group;
    std::string scheme;
};

// The layer's weight-only quantized form, or null for a float layer; throws for what AutoGPTQ
// cannot hold (W8A8 and mixed-precision layers).
inline const AnyQuantLinear* exportable_layer(const AnyLinear& l, const std::string& name) {
    if (l.quantized() && l.quantized()->activations() != ActQuant::none)
        throw invalid_argument("qlm::save_autogptq: layer '" + name + "' is W8A8 (int8 activations); AutoGPTQ "
                               "checkpoints hold weight-only layers");
    if (l.holds<DenseLinear>()) return nullptr;
    if (!l.quantized())
        throw invalid_argument("qlm::save_autogptq: layer '" + name + "' is a mixed-precision layer, which AutoGPTQ "
                               "checkpoints cannot express");
    return l.quantized();
}

// One bit width for every layer, and group_size -1 when every layer is per channel, otherwise the
// one G every layer's groups match.
inline void resolve_gptq_group_size(GptqFileScheme& file, const std::vector<GptqLayerScheme>& layers) {
    for (const auto& l : layers)
        if (l.per_group) file.group_size = l.columns_per_group;
    for (const auto& l : layers)
        if (file.group_size != -1 && l.columns_per_group != file.group_size)
            throw invalid_argument("qlm::save_autogptq: layer '" + l.name + "' is " + l.scheme + ", but other layers use " +
                                   "group_size " + std::to_string(file.group_size) + " (an AutoGPTQ checkpoint has one scheme)");
    if (file.bits == 0) throw invalid_argument("qlm::save_autogptq: the model has no quantized (weight-only) layers to export");
}

inline GptqFileScheme gptq_file_scheme(const GPT2Model<AnyLinear>& model) {
    for (std::size_t i = 0; i < model.blocks().size(); ++i)
        if (model.blocks()[i].mlp_act_scale.numel())
            throw invalid_argument("qlm::save_autogptq: block " + std::to_string(i) +
                                   " divides GELU's output by activation scales (AWQ), which AutoGPTQ's GPT-2 cannot hold");
    GptqFileScheme file;
    std::vector<GptqLayerScheme> layers;
    for (std::size_t i = 0; i < model.blocks().size(); ++i)
        for (const LinearSlot slot : kLinearSlots) {
            const std::string name = layer_prefix(i, slot);
            const AnyQuantLinear* q = exportable_layer(linear_of(model.blocks()[i], slot), name);
            if (q == nullptr) {
                file.not_converted.push_back("transformer." + name);
                continue;
            }
            const AnyQuantTensor w = q->weight();
            if (file.bits != 0 && file.bits != w.bits())
                throw invalid_argument("qlm::save_autogptq: layer '" + name + "' is " + to_string(w.spec()) + ", but earlier layers use " +
                                       std::to_string(file.bits) + " bits (an AutoGPTQ checkpoint has one scheme)");
            file.bits = w.bits();
            const bool per_group = w.granularity() == GranularityKind::per_group;
            layers.push_back({name, per_group, static_cast<long long>(per_group ? w.group_size() : w.cols()), to_string(w.spec())});
            file.sym = file.sym && w.symmetric();
            file.input_order = file.input_order || !q->input_order().empty();
        }
    resolve_gptq_group_size(file, layers);
    return file;
}

// model.safetensors: embeddings, norms, float and quantized layers under "transformer." names.
inline void write_gptq_tensors(const GPT2Model<AnyLinear>& model, const std::filesystem::path& file, const AutoGptqSaveOptions& options,
                               AutoGptqExportStats& stats) {
    SafetensorsWriter writer;
    const DType fd = options.float_dtype;
    if (model.tied_head()) {
        // A quantized tied embedding / head (QuantizeOptions::quantize_head): AutoGPTQ keeps GPT-2's
        // wte in float, so the head's dequantized values (exactly what qlm computes with) become wte.
        add_float_tensor(writer, "transformer.wte.weight", dequantized_head(*model.tied_head()), fd);
        stats.head_dequantized = true;
    } else {
        add_float_tensor(writer, "transformer.wte.weight", model.wte(), fd);
    }
    add_float_tensor(writer, "transformer.wpe.weight", model.wpe(), fd);
    add_float_tensor(writer, "transformer.ln_f.weight", model.ln_f().weight, fd);
    add_float_tensor(writer, "transformer.ln_f.bias", model.ln_f().bias, fd);
    if (model.untied_head()) add_float_tensor(writer, "lm_head.weight", model.untied_head()->weight(), fd);
    for (std::size_t i = 0; i < model.blocks().size(); ++i) {
        const auto& b = model.blocks()[i];
        const std::string p = "transformer.h." + std::to_string(i) + ".";
        add_float_tensor(writer, p + "ln_1.weight", b.ln_1.weight, fd);
        add_float_tensor(writer, p + "ln_1.bias", b.ln_1.bias, fd);
        add_float_tensor(writer, p + "ln_2.weight", b.ln_2.weight, fd);
        add_float_tensor(writer, p + "ln_2.bias", b.ln_2.bias, fd);
        for (const LinearSlot slot : kLinearSlots) {
            const std::string name = layer_prefix(i, slot);
            const AnyLinear& l = linear_of(b, slot);
            if (const AnyQuantLinear* q = l.quantized()) {
                write_gptq_layer(writer, name, *q, options, stats);
                continue;
            }
            const auto& d = l.get<DenseLinear>();
            add_float_tensor(writer, "transformer." + name + ".weight", transpose(d.weight()), fd);  // Conv1D [in, out]
            if (d.bias().numel()) add_float_tensor(writer, "transformer." + name + ".bias", d.bias(), fd);
            ++stats.float_layers;
        }
    }
    writer.set_metadata("format", "pt");
    writer.set_metadata("quantizer", "qlm");
    writer.write(file);
}

// info.details[key] when it holds a value of T's JSON kind, else fallback.
template <class T>
T detail_or(const QuantizationInfo& info, const char* key, T fallback) {
    if (!info.details.is_object() || !info.details.contains(key)) return fallback;
    const auto& v = info.details.at(key);
    if constexpr (std::is_same_v<T, bool>)
        return v.is_boolean() ? v.get<bool>() : fallback;
    else
        return v.is_number() ? v.get<T>() : fallback;
}

inline nlohmann::json gptq_quantization_config(const GptqFileScheme& file, const QuantizationInfo& info,
                                               const AutoGptqSaveOptions& options) {
    // act_order / static_groups as quantize_gpt2's GPTQ recorded them: act-order with static
    // groups stores no column order, yet the checkpoint is still desc_act.
    const bool desc_act = file.input_order || detail_or(info, "act_order", false);
    nlohmann::json qc = {{"quant_method", "gptq"},
                         {"bits", file.bits},
                         {"group_size", file.group_size},
                         {"desc_act", desc_act},
                         {"sym", file.sym},
                         {"static_groups", detail_or(info, "static_groups", false)},
                         {"true_sequential", true},
                         {"damp_percent", detail_or(info, "percdamp", 0.01)},
                         {"checkpoint_format", options.checkpoint_format},
                         {"model_name_or_path", nullptr},
                         {"model_file_base_name", "model"},
                         {"meta", {{"quantizer", "qlm"}, {"qlm_method", info.method}}}};
    if (!file.not_converted.empty()) qc["modules_to_not_convert"] = file.not_converted;
    return qc;
}

}  // namespace detail::interop

// Writes `model` as an AutoGPTQ GPT-2 checkpoint in `dir`: model.safetensors with "transformer."
// names, config.json with quantization_config, quantize_config.json, and the tokenizer files of
// tokenizer_dir when given. Every QuantLinear must share one bit width (2, 3, 4 or 8) and one
// group size (per-channel and per-tensor layers are written with group_size -1); a layer with an
// input_order is written in the original column order with its g_idx. desc_act is true when a
// layer has an input_order or info.details says act_order; static_groups comes from info.details.
// Float layers are written as Conv1D P.weight and listed in modules_to_not_convert (qlm and
// loaders honouring that key read them; AutoGPTQ itself expects every layer quantized).
// A quantized tied head (QuantizeOptions::quantize_head) is written dequantized as the float wte.
// Throws invalid_argument for W8A8 layers, mixed schemes, a model without quantized layers, a
// zero point 0 with checkpoint_format "gptq", or a scale that overflows fp16.
// Scales become fp16: the returned stats say how much they moved (at most 2^-11 relative for
// scales in fp16's normal range, >= 6.1e-5).
inline AutoGptqExportStats save_autogptq(const GPT2Model<AnyLinear>& model, const QuantizationInfo& info,
                                         const std::filesystem::path& dir, const std::filesystem::path& tokenizer_dir = {},
                                         const AutoGptqSaveOptions& options = {}) {
    using namespace detail::interop;
    if (options.checkpoint_format != "gptq" && options.checkpoint_format != "gptq_v2")
        throw invalid_argument("qlm::save_autogptq: checkpoint_format must be 'gptq' or 'gptq_v2', found '" + options.checkpoint_format +
                               "'");
    if (options.float_dtype != DType::F32 && options.float_dtype != DType::F16)
        throw invalid_argument("qlm::save_autogptq: float_dtype must be F32 or F16");
    const GptqFileScheme file = gptq_file_scheme(model);

    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw io_error("qlm: cannot create " + dir.string() + ": " + ec.message());
    AutoGptqExportStats stats;
    write_gptq_tensors(model, dir / "model.safetensors", options, stats);
    const nlohmann::json qc = gptq_quantization_config(file, info, options);
    nlohmann::json config = model.config().to_json();
    config["torch_dtype"] = options.float_dtype == DType::F16 ? "float16" : "float32";
    config["quantization_config"] = qc;
    write_json(dir / "config.json", config);
    write_json(dir / "quantize_config.json", qc);
    copy_tokenizer(tokenizer_dir, dir);
    return stats;
}

}  // namespace qlm
