#pragma once
// qlm's quantized checkpoint: a directory in Hugging Face shape (config.json with a
// "quantization_config", model.safetensors, tokenizer files) whose linear layers are stored
// packed. The layout is documented in docs/checkpoint-format.md.
#include <qlm/core/error.hpp>
#include <qlm/io/safetensors.hpp>
#include <qlm/model/config.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/model/hf_checkpoint.hpp>
#include <qlm/model/load_gpt2.hpp>
#include <qlm/model/quantized_linear.hpp>
#include <qlm/quant/scheme.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace qlm {

inline constexpr int kCheckpointFormatVersion = 1;

// What the checkpoint's quantization_config records about how it was made.
struct QuantizationInfo {
    std::string method = "fp32";       // fp32 | rtn | int8-dynamic | int8-static | gptq | awq
    QuantSpec weights{};               // the scheme of the quantized linear layers
    std::string activations = "float"; // float | int8-dynamic | int8-static
    nlohmann::json details = nlohmann::json::object();  // method parameters (damping, alpha, observer …)

    nlohmann::json to_json() const {
        return {{"quant_method", "qlm"},
                {"format_version", kCheckpointFormatVersion},
                {"method", method},
                {"scheme", to_string(weights)},
                {"bits", weights.bits},
                {"granularity", weights.granularity == GranularityKind::per_group     ? "group"
                                : weights.granularity == GranularityKind::per_channel ? "channel"
                                                                                      : "tensor"},
                {"group_size", weights.granularity == GranularityKind::per_group ? static_cast<long long>(weights.group_size) : -1},
                {"sym", weights.symmetric},
                {"activations", activations},
                {"code_layout", "qlm-packed-v1"},
                {"details", details}};
    }

    static QuantizationInfo from_json(const nlohmann::json& j, const std::string& origin) {
        auto fail = [&](const std::string& what) { return format_error("qlm: " + origin + ": quantization_config: " + what); };
        if (!j.is_object()) throw fail("expected an object");
        if (j.value("quant_method", "") != "qlm")
            throw fail("quant_method '" + j.value("quant_method", std::string("?")) +
                       "' is not 'qlm' (GPTQ / AWQ checkpoints are read by qlm's interop loaders)");
        if (j.value("format_version", 0) != kCheckpointFormatVersion)
            throw fail("format_version " + j.value("format_version", nlohmann::json(0)).dump() + " is not supported (expected " +
                       std::to_string(kCheckpointFormatVersion) + ")");
        if (j.value("code_layout", "") != "qlm-packed-v1") throw fail("code_layout must be 'qlm-packed-v1'");
        QuantizationInfo info;
        try {
            info.method = j.at("method").get<std::string>();
            info.weights = parse_quant_spec(j.at("scheme").get<std::string>());
            info.activations = j.at("activations").get<std::string>();
            if (j.contains("details")) info.details = j.at("details");
        } catch (const nlohmann::json::exception& e) {
            throw fail(e.what());
        } catch (const invalid_argument& e) {
            throw fail(e.what());
        }
        return info;
    }
};

namespace detail {

inline std::string layer_prefix(std::size_t layer, LinearSlot slot) {
    return "h." + std::to_string(layer) + "." + hf_name(slot);
}

inline std::vector<std::size_t> dims_of(const Shape& s) { return {s.dims().begin(), s.dims().end()}; }

// qlm.kind of a quantized layer, by how it treats activations ("w8a8-*" predates 4-bit weights
// with int8 activations and still names them).
inline const char* checkpoint_kind(ActQuant a) noexcept {
    switch (a) {
        case ActQuant::none: return "weight-only";
        case ActQuant::int8_dynamic: return "w8a8-dynamic";
        case ActQuant::int8_static: return "w8a8-static";
    }
    return "?";
}

}  // namespace detail

// Writes `model` (any mix of float and quantized layers) to `dir`; copies tokenizer files from
// `tokenizer_dir` when given.
inline void save_checkpoint(const GPT2Model<AnyLinear>& model, const QuantizationInfo& info, const std::filesystem::path& dir,
                            const std::filesystem::path& tokenizer_dir = {}) {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw io_error("qlm: cannot create " + dir.string() + ": " + ec.message());

    SafetensorsWriter writer;
    std::vector<Tensor<float>> keep;         // transposed float weights must outlive write()
    std::vector<AnyQuantTensor> keep_quant;  // so must the canonical form of repacked layers
    auto add_float = [&](const std::string& name, const Tensor<float>& t) { writer.add(name, t); };
    auto add_quant = [&](const std::string& name, AnyQuantTensor w) {
        const AnyQuantTensor& k = keep_quant.emplace_back(std::move(w));
        writer.add(name + ".qweight", DType::U8, {k.rows(), k.row_bytes()}, std::as_bytes(k.packed()));
        writer.add(name + ".scales", DType::F32, {k.rows(), k.groups()}, std::as_bytes(k.scales()));
        if (!k.symmetric()) writer.add(name + ".qzeros", DType::U8, {k.rows(), k.groups()}, std::as_bytes(k.zeros()));
        writer.set_metadata("qlm.scheme." + name, to_string(k.spec()));
    };
    if (!model.tied_head()) add_float("wte.weight", model.wte());
    add_float("wpe.weight", model.wpe());
    add_float("ln_f.weight", model.ln_f().weight);
    add_float("ln_f.bias", model.ln_f().bias);
    if (model.untied_head()) add_float("lm_head.weight", model.untied_head()->weight());
    for (std::size_t i = 0; i < model.blocks().size(); ++i) {
        const auto& b = model.blocks()[i];
        const std::string p = "h." + std::to_string(i) + ".";
        add_float(p + "ln_1.weight", b.ln_1.weight);
        add_float(p + "ln_1.bias", b.ln_1.bias);
        add_float(p + "ln_2.weight", b.ln_2.weight);
        add_float(p + "ln_2.bias", b.ln_2.bias);
        if (b.mlp_act_scale.numel()) add_float(p + "mlp.act.scales", b.mlp_act_scale);
        for (const LinearSlot slot : kLinearSlots) {
            const std::string name = detail::layer_prefix(i, slot);
            const AnyLinear& layer = linear_of(b, slot);
            if (layer.holds<DenseLinear>()) {
                const auto& d = layer.get<DenseLinear>();
                keep.push_back(transpose(d.weight()));  // HF Conv1D layout [in, out]
                add_float(name + ".weight", keep.back());
                if (d.bias().numel()) add_float(name + ".bias", d.bias());
                writer.set_metadata("qlm.kind." + name, "float");
            } else if (const AnyQuantLinear* q = layer.quantized()) {
                add_quant(name, q->weight());
                if (q->bias().numel()) add_float(name + ".bias", q->bias());
                if (!q->input_order().empty())
                    writer.add(name + ".input_order", DType::I32, {q->input_order().size()}, std::as_bytes(std::span(q->input_order())));
                if (q->activations() == ActQuant::int8_static) {
                    keep.push_back(Tensor<float>(Shape{1}));
                    keep.back().data()[0] = q->static_scale();
                    add_float(name + ".input_scale", keep.back());
                }
                writer.set_metadata("qlm.kind." + name, detail::checkpoint_kind(q->activations()));
            } else {
                const auto& mixed = layer.get<MixedLinear>();
                add_quant(name, mixed.base().weight());
                if (mixed.bias().numel()) add_float(name + ".bias", mixed.bias());
                add_quant(name + ".salient", mixed.salient().weight());
                writer.add(name + ".salient_columns", DType::I32, {mixed.salient_columns().size()},
                           std::as_bytes(std::span(mixed.salient_columns())));
                writer.set_metadata("qlm.kind." + name, "mixed");
            }
        }
    }
    if (model.tied_head()) {
        // The tied embedding / head, quantized: "wte" holds it under the linear-layer naming.
        const AnyQuantLinear* head = model.tied_head()->quantized();
        if (!head || !head->input_order().empty() || head->activations() != ActQuant::none)
            throw invalid_argument("qlm: a tied head must be a weight-only quantized layer without input order");
        add_quant("wte", head->weight());
        writer.set_metadata("qlm.kind.wte", "weight-only");
    }
    writer.set_metadata("format", "qlm");
    writer.write(dir / "model.safetensors");

    nlohmann::json config = model.config().to_json();
    config["quantization_config"] = info.to_json();
    {
        std::ofstream out(dir / "config.json");
        out << config.dump(2) << "\n";
        if (!out) throw io_error("qlm: cannot write " + (dir / "config.json").string());
    }
    if (!tokenizer_dir.empty() && fs::absolute(tokenizer_dir) != fs::absolute(dir)) {
        for (const char* f : {"vocab.json", "merges.txt", "encoder.json", "vocab.bpe", "tokenizer.json"})
            if (fs::exists(tokenizer_dir / f)) fs::copy_file(tokenizer_dir / f, dir / f, fs::copy_options::overwrite_existing);
    }
}

inline bool is_qlm_checkpoint(const std::filesystem::path& dir) {
    std::ifstream in(dir / "config.json");
    if (!in) return false;
    const auto j = nlohmann::json::parse(in, nullptr, false);
    return j.is_object() && j.contains("quantization_config") && j["quantization_config"].is_object() &&
           j["quantization_config"].value("quant_method", "") == "qlm";
}

struct LoadedModel {
    GPT2Model<AnyLinear> model;
    QuantizationInfo info;
};

// Loads a qlm checkpoint, or a plain float Hugging Face GPT-2 (then every layer is DenseLinear and
// info.method == "fp32"). A quantized checkpoint needs no float weights of its linear layers.
inline LoadedModel load_checkpoint(const std::filesystem::path& dir) {
    const GPT2Config config = GPT2Config::from_file(dir / "config.json");
    QuantizationInfo info;
    {
        std::ifstream in(dir / "config.json");
        const auto j = nlohmann::json::parse(in, nullptr, false);
        if (j.is_object() && j.contains("quantization_config"))
            info = QuantizationInfo::from_json(j["quantization_config"], (dir / "config.json").string());
    }
    const HfCheckpoint ckpt = HfCheckpoint::open(dir);
    const std::size_t C = config.n_embd;

    auto load_u8 = [&](const std::string& name, std::size_t rows, std::size_t cols) {
        const SafetensorsFile& f = ckpt.file_of(name);
        const std::string stored = ckpt.resolve(name);
        const auto view = f.view<std::uint8_t>(stored);
        if (!(view.shape() == Shape{rows, cols}))
            throw shape_error("qlm: " + f.path() + ": tensor '" + stored + "' has shape " + view.shape().str() + ", expected " +
                              Shape{rows, cols}.str());
        Tensor<std::uint8_t> t(Shape{rows, cols});
        std::copy_n(view.data(), view.numel(), t.data());
        return t;
    };
    auto load_linear = [&](const std::string& name, std::size_t in, std::size_t out) -> AnyLinear {
        const Tensor<float> bias = ckpt.contains(name + ".bias") ? ckpt.load_float(name + ".bias", Shape{out}) : Tensor<float>();
        if (!ckpt.contains(name + ".qweight")) {
            return DenseLinear(transpose(ckpt.load_float(name + ".weight", Shape{in, out})), bias);
        }
        const SafetensorsFile& f = ckpt.file_of(name + ".qweight");
        const auto& meta = f.metadata();
        const auto scheme_it = meta.find("qlm.scheme." + name);
        const auto kind_it = meta.find("qlm.kind." + name);
        if (scheme_it == meta.end() || kind_it == meta.end())
            throw format_error("qlm: " + f.path() + ": quantized layer '" + name + "' has no qlm.scheme / qlm.kind metadata");
        QuantSpec spec;
        try {
            spec = parse_quant_spec(scheme_it->second);
        } catch (const invalid_argument& e) {
            throw format_error("qlm: " + f.path() + ": layer '" + name + "': " + e.what());
        }
        auto load_quant = [&](const std::string& prefix, const QuantSpec& qs, std::size_t cols) {
            AnyQuantTensor::check_shape(qs, out, cols, prefix);
            const std::size_t row_bytes = detail::packed_row_bytes(qs.bits, cols);
            const std::size_t groups = qs.granularity == GranularityKind::per_group ? cols / qs.group_size : 1;
            Tensor<std::uint8_t> packed = load_u8(prefix + ".qweight", out, row_bytes);
            Tensor<float> scales = ckpt.load_float(prefix + ".scales", Shape{out, groups});
            Tensor<std::uint8_t> zeros;
            if (!qs.symmetric) zeros = load_u8(prefix + ".qzeros", out, groups);
            return AnyQuantTensor::from_parts(qs, out, cols, std::move(packed), std::move(scales), std::move(zeros), prefix);
        };
        AnyQuantTensor weight = load_quant(name, spec, in);
        const std::string& kind = kind_it->second;
        if (kind == "mixed") {
            const auto salient_it = meta.find("qlm.scheme." + name + ".salient");
            if (salient_it == meta.end()) throw format_error("qlm: " + f.path() + ": mixed layer '" + name + "' has no salient scheme");
            QuantSpec salient_spec;
            try {
                salient_spec = parse_quant_spec(salient_it->second);
            } catch (const invalid_argument& e) {
                throw format_error("qlm: " + f.path() + ": layer '" + name + "': " + e.what());
            }
            const auto cols_view = ckpt.file_of(name + ".salient_columns").view<std::int32_t>(ckpt.resolve(name + ".salient_columns"));
            std::vector<std::int32_t> columns(cols_view.data(), cols_view.data() + cols_view.numel());
            AnyQuantTensor salient = load_quant(name + ".salient", salient_spec, columns.size());
            return MixedLinear(AnyQuantLinear(std::move(weight), bias), AnyQuantLinear(std::move(salient), {}), std::move(columns));
        }
        if (kind == "weight-only") {
            std::vector<std::int32_t> order;
            if (ckpt.contains(name + ".input_order")) {
                const auto v = ckpt.file_of(name + ".input_order").view<std::int32_t>(ckpt.resolve(name + ".input_order"));
                order.assign(v.data(), v.data() + v.numel());
            }
            return AnyQuantLinear(std::move(weight), bias, std::move(order));
        }
        if (kind == "w8a8-dynamic") return AnyQuantLinear(std::move(weight), bias, {}, ActQuant::int8_dynamic);
        if (kind == "w8a8-static") {
            const Tensor<float> s = ckpt.load_float(name + ".input_scale", Shape{1});
            if (!(s.data()[0] > 0.0f)) throw format_error("qlm: " + f.path() + ": " + name + ".input_scale must be > 0");
            return AnyQuantLinear(std::move(weight), bias, {}, ActQuant::int8_static, s.data()[0]);
        }
        throw format_error("qlm: " + f.path() + ": layer '" + name + "' has unknown kind '" + kind + "'");
    };

    std::optional<AnyLinear> tied_head;
    Tensor<float> wte;
    if (ckpt.contains("wte.qweight")) {
        tied_head = load_linear("wte", C, config.vocab_size);
        wte = Tensor<float>(Shape{config.vocab_size, C});  // placeholder for the constructor's shape check
    } else {
        wte = ckpt.load_float("wte.weight", Shape{config.vocab_size, C});
    }
    Tensor<float> wpe = ckpt.load_float("wpe.weight", Shape{config.n_positions, C});
    std::vector<GPT2Block<AnyLinear>> blocks;
    for (std::size_t i = 0; i < config.n_layer; ++i) {
        const std::string p = "h." + std::to_string(i) + ".";
        blocks.push_back({detail::load_layer_norm(ckpt, p + "ln_1", C), load_linear(p + "attn.c_attn", C, 3 * C),
                          load_linear(p + "attn.c_proj", C, C), detail::load_layer_norm(ckpt, p + "ln_2", C),
                          load_linear(p + "mlp.c_fc", C, config.inner()), load_linear(p + "mlp.c_proj", config.inner(), C)});
        if (ckpt.contains(p + "mlp.act.scales")) blocks.back().mlp_act_scale = ckpt.load_float(p + "mlp.act.scales", Shape{config.inner()});
    }
    std::optional<DenseLinear> head;
    if (ckpt.contains("lm_head.weight") && !tied_head) {
        Tensor<float> h = ckpt.load_float("lm_head.weight", Shape{config.vocab_size, C});
        if (!std::equal(h.span().begin(), h.span().end(), wte.span().begin())) head = DenseLinear(std::move(h), Tensor<float>());
    }
    LayerNormWeights ln_f = detail::load_layer_norm(ckpt, "ln_f", C);
    GPT2Model<AnyLinear> model(config, std::move(wte), std::move(wpe), std::move(blocks), std::move(ln_f), std::move(head));
    if (tied_head) model.set_tied_head(std::move(*tied_head));
    ckpt.check_all_consumed();
    return {std::move(model), info};
}

// A float model as GPT2Model<AnyLinear> (every layer DenseLinear), the starting point of quantizers.
inline GPT2Model<AnyLinear> to_any_linear(GPT2FloatWeights w) {
    std::vector<GPT2Block<AnyLinear>> blocks;
    for (auto& b : w.blocks)
        blocks.push_back({std::move(b.ln_1), std::move(b.c_attn), std::move(b.attn_proj), std::move(b.ln_2), std::move(b.c_fc),
                          std::move(b.mlp_proj)});
    return GPT2Model<AnyLinear>(std::move(w.config), std::move(w.wte), std::move(w.wpe), std::move(blocks), std::move(w.ln_f),
                                std::move(w.untied_head));
}

}  // namespace qlm
