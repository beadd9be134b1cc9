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
#include <qlm/model/parameters.hpp>
#include <qlm/model/quantized_linear.hpp>
#include <qlm/quant/scheme.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
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
        if (info.activations != "float" && info.activations != "int8-dynamic" && info.activations != "int8-static")
            throw fail("activations '" + info.activations + "' is not float, int8-dynamic or int8-static");
        // These repeat the scheme for readers that do not parse it; a copy that disagrees would tell
        // them something else than the layers hold.
        const nlohmann::json implied = info.to_json();
        for (const char* key : {"bits", "granularity", "group_size", "sym"})
            if (j.contains(key) && j[key] != implied[key])
                throw fail(std::string(key) + " is " + j[key].dump() + " but scheme '" + to_string(info.weights) + "' means " +
                           implied[key].dump());
        return info;
    }
};

namespace detail {

// interop_gptq's name for linear_name().
inline std::string layer_prefix(std::size_t layer, LinearSlot slot) { return linear_name(layer, slot); }

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

// The part of a layer that carries the checkpoint's scheme: a quantized layer, or a mixed layer's
// low-bit base (its salient part is 8-bit whatever the scheme); null for a float layer.
inline const AnyQuantLinear* scheme_part(const AnyLinear& layer) noexcept {
    if (layer.holds<MixedLinear>()) return &layer.get<MixedLinear>().base();
    return layer.quantized();
}

// "fp16" / "bf16" for a 16-bit float layer, "" for any other.
inline std::string half_kind(const AnyLinear& layer) {
    if (layer.holds<HalfLinear<fp16_t>>()) return "fp16";
    if (layer.holds<HalfLinear<bf16_t>>()) return "bf16";
    return "";
}

// A 16-bit matrix [rows, cols] of raw bits, transposed (HF Conv1D layout <-> nn.Linear layout).
inline std::vector<std::uint16_t> transpose_bits(std::span<const std::uint16_t> in, std::size_t rows, std::size_t cols) {
    std::vector<std::uint16_t> out(in.size());
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) out[c * rows + r] = in[r * cols + c];
    return out;
}

template <class Half>
constexpr DType half_dtype() noexcept {
    return std::is_same_v<Half, fp16_t> ? DType::F16 : DType::BF16;
}

// A scheme as it applies to a layer of k inputs: one group that spans the row is per channel (GPTQ
// stores such a layer so, e.g. a 128-input layer of a w4-g128 model).
inline QuantSpec scheme_on_rows_of(QuantSpec spec, std::size_t k) noexcept {
    if (spec.granularity == GranularityKind::per_group && spec.group_size >= k) {
        spec.granularity = GranularityKind::per_channel;
        spec.group_size = 0;
    }
    return spec;
}

// How the layers of `model` contradict `declared` (its quantization_config; null when the config has
// none), or nothing when they agree. A tool shows the config, so it must describe what runs. The
// tied head is 8-bit per channel whatever the scheme (details.head names it) and is not compared.
inline std::optional<std::string> config_mismatch(const QuantizationInfo* declared, const GPT2Model<AnyLinear>& model) {
    const std::string half_method = declared && (declared->method == "fp16" || declared->method == "bf16") ? declared->method : "";
    const bool float_config = !declared || declared->method == "fp32" || !half_method.empty();
    std::optional<std::string> problem;
    std::size_t quantized_blocks = 0;
    auto check = [&](const std::string& name, const AnyLinear& layer, LinearRole role) {
        if (!problem && !half_method.empty() && role == LinearRole::block && half_kind(layer) != half_method)
            problem = "layer '" + name + "' is not stored in " + half_method + " but quantization_config's method is '" + half_method + "'";
        const AnyQuantLinear* q = scheme_part(layer);
        if (problem || !q) return;
        if (float_config) {
            problem = "layer '" + name + "' is quantized (" + to_string(q->spec()) + ") but the config has " +
                      (declared ? "method 'fp32'" : "no quantization_config");
        } else if (role == LinearRole::block) {
            ++quantized_blocks;
            if (scheme_on_rows_of(q->spec(), q->in_features()) != scheme_on_rows_of(declared->weights, q->in_features()))
                problem = "layer '" + name + "' is stored as " + to_string(q->spec()) + " but quantization_config's scheme is " +
                          to_string(declared->weights);
            else if (to_string(q->activations()) != declared->activations)
                problem = "layer '" + name + "' takes " + to_string(q->activations()) +
                          " activations but quantization_config's activations are " + declared->activations;
        }
    };
    for_each_parameter(model, [](const std::string&, const Tensor<float>&) {}, check);
    if (!problem && !float_config && quantized_blocks == 0)
        problem = "quantization_config's method is '" + declared->method + "' but no layer of the blocks is quantized";
    return problem;
}

// Adds a model's tensors to a SafetensorsWriter under the names of docs/checkpoint-format.md. The
// writer borrows them: the model's own tensors outlive write(), and the converted ones (Conv1D
// layout, canonical packed codes) are kept here, in deques, where they never move.
class CheckpointTensorWriter {
public:
    void tensor(const std::string& name, const Tensor<float>& t) {
        writer_.add_borrowed(name, DType::F32, dims_of(t.shape()), std::as_bytes(t.span()));
    }
    void linear(const std::string& name, const AnyLinear& layer, LinearRole role) {
        if (role == LinearRole::tied_head) return tied_head(name, layer);
        std::visit([&](const auto& l) { add_layer(name, l); }, layer.variant());
    }
    void write(const std::filesystem::path& path) {
        writer_.set_metadata("format", "qlm");
        writer_.write(path);
    }

private:
    void add_layer(const std::string& name, const DenseLinear& d) {
        tensor(name + ".weight", keep_.emplace_back(transpose(d.weight())));  // HF Conv1D layout [in, out]
        bias(name, d.bias());
        kind(name, "float");
    }
    void add_layer(const std::string& name, const AnyQuantLinear& q) {
        quant_tensor(name, q.weight());
        bias(name, q.bias());
        int32s(name + ".input_order", q.input_order());
        if (q.activations() == ActQuant::int8_static) {
            Tensor<float>& scale = keep_.emplace_back(Shape{1});
            scale.data()[0] = q.static_scale();
            tensor(name + ".input_scale", scale);
        }
        kind(name, checkpoint_kind(q.activations()));
    }
    template <class Half>
    void add_layer(const std::string& name, const HalfLinear<Half>& h) {
        const auto& w = h.weight();
        half(name + ".weight", transpose_bits(w.row_major(), w.rows(), w.cols()), {w.cols(), w.rows()}, half_dtype<Half>());
        bias(name, h.bias());
        kind(name, std::is_same_v<Half, fp16_t> ? "fp16" : "bf16");
    }
    void add_layer(const std::string& name, const MixedLinear& m) {
        quant_tensor(name, m.base().weight());
        bias(name, m.bias());
        quant_tensor(name + ".salient", m.salient().weight());
        int32s(name + ".salient_columns", m.salient_columns());
        kind(name, "mixed");
    }
    // The tied embedding / head: "wte" holds it under the linear-layer naming.
    void tied_head(const std::string& name, const AnyLinear& layer) {
        if (const std::string k = half_kind(layer); !k.empty()) {  // the embedding in 16 bits, HF's own layout
            auto put = [&](const auto& h) {
                half(name + ".weight", h.weight().row_major(), {h.weight().rows(), h.weight().cols()},
                     half_dtype<typename std::decay_t<decltype(h)>::value_type>());
            };
            if (k == "fp16") put(layer.get<HalfLinear<fp16_t>>());
            else put(layer.get<HalfLinear<bf16_t>>());
            return;
        }
        const AnyQuantLinear* head = layer.quantized();
        if (!head || !head->input_order().empty() || head->activations() == ActQuant::int8_static)
            throw invalid_argument("qlm: a tied head must be a quantized layer without input order or static activation scale");
        quant_tensor(name, head->weight());
        kind(name, "weight-only");
    }

    void quant_tensor(const std::string& name, AnyQuantTensor w) {
        const AnyQuantTensor& k = keep_quant_.emplace_back(std::move(w));
        writer_.add_borrowed(name + ".qweight", DType::U8, {k.rows(), k.row_bytes()}, std::as_bytes(k.packed()));
        writer_.add_borrowed(name + ".scales", DType::F32, {k.rows(), k.groups()}, std::as_bytes(k.scales()));
        if (!k.symmetric()) writer_.add_borrowed(name + ".qzeros", DType::U8, {k.rows(), k.groups()}, std::as_bytes(k.zeros()));
        writer_.set_metadata("qlm.scheme." + name, to_string(k.spec()));
    }
    void half(const std::string& name, std::vector<std::uint16_t> bits, std::vector<std::size_t> dims, DType dtype) {
        const auto& k = keep_half_.emplace_back(std::move(bits));
        writer_.add_borrowed(name, dtype, std::move(dims), std::as_bytes(std::span(k)));
    }
    void bias(const std::string& name, const Tensor<float>& b) {
        if (b.numel()) tensor(name + ".bias", b);
    }
    void int32s(const std::string& name, const std::vector<std::int32_t>& v) {
        if (!v.empty()) writer_.add_borrowed(name, DType::I32, {v.size()}, std::as_bytes(std::span(v)));
    }
    void kind(const std::string& name, const char* k) { writer_.set_metadata("qlm.kind." + name, k); }

    SafetensorsWriter writer_;
    std::deque<Tensor<float>> keep_;
    std::deque<AnyQuantTensor> keep_quant_;
    std::deque<std::vector<std::uint16_t>> keep_half_;
};

inline void write_config(const GPT2Config& config, const QuantizationInfo& info, const std::filesystem::path& path) {
    nlohmann::json j = config.to_json();
    j["quantization_config"] = info.to_json();
    std::ofstream out(path);
    out << j.dump(2) << "\n";
    if (!out) throw io_error("qlm: cannot write " + path.string());
}

inline void copy_tokenizer_files(const std::filesystem::path& from, const std::filesystem::path& to) {
    namespace fs = std::filesystem;
    if (fs::absolute(from) == fs::absolute(to)) return;
    for (const char* f : {"vocab.json", "merges.txt", "encoder.json", "vocab.bpe", "tokenizer.json"})
        if (fs::exists(from / f)) fs::copy_file(from / f, to / f, fs::copy_options::overwrite_existing);
}

}  // namespace detail

// Writes `model` (any mix of float and quantized layers) to `dir`; copies tokenizer files from
// `tokenizer_dir` when given. invalid_argument when `info` does not describe the model's layers
// (load_checkpoint would refuse the result).
inline void save_checkpoint(const GPT2Model<AnyLinear>& model, const QuantizationInfo& info, const std::filesystem::path& dir,
                            const std::filesystem::path& tokenizer_dir = {}) {
    if (const auto problem = detail::config_mismatch(&info, model))
        throw invalid_argument("qlm::save_checkpoint: the QuantizationInfo does not describe the model: " + *problem);
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw io_error("qlm: cannot create " + dir.string() + ": " + ec.message());

    detail::CheckpointTensorWriter tensors;
    for_each_parameter(
        model, [&](const std::string& name, const Tensor<float>& t) { tensors.tensor(name, t); },
        [&](const std::string& name, const AnyLinear& layer, LinearRole role) { tensors.linear(name, layer, role); });
    tensors.write(dir / "model.safetensors");
    detail::write_config(model.config(), info, dir / "config.json");
    if (!tokenizer_dir.empty()) detail::copy_tokenizer_files(tokenizer_dir, dir);
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

namespace detail {

// The config's quantization_config, or nothing when it has none (a float Hugging Face GPT-2).
inline std::optional<QuantizationInfo> read_quantization_config(const std::filesystem::path& config_json) {
    std::ifstream in(config_json);
    const auto j = nlohmann::json::parse(in, nullptr, false);
    if (!j.is_object() || !j.contains("quantization_config")) return std::nullopt;
    return QuantizationInfo::from_json(j["quantization_config"], config_json.string());
}

// Reads a checkpoint's tensors into a model: float tensors by their Hugging Face names, each linear
// layer as its qlm.kind says, or as a float Conv1D layer when it has no qweight.
class CheckpointReader {
public:
    CheckpointReader(const HfCheckpoint& ckpt, const GPT2Config& config) : ckpt_(ckpt), config_(config) {}

    GPT2Model<AnyLinear> model() const {
        const std::size_t C = config_.n_embd;
        // A quantized tied head holds the embedding: the model gets no float wte at all.
        std::optional<AnyLinear> tied_head;
        Tensor<float> wte;
        if (ckpt_.contains("wte.qweight"))
            tied_head = linear("wte", C, config_.vocab_size);
        else if (const DType t = ckpt_.dtype_of("wte.weight"); t == DType::F16 || t == DType::BF16)
            tied_head = half_embedding(t);  // a 16-bit checkpoint keeps its 16 bits: half the bytes per decoded token
        else
            wte = ckpt_.load_float("wte.weight", Shape{config_.vocab_size, C});
        Tensor<float> wpe = ckpt_.load_float("wpe.weight", Shape{config_.n_positions, C});
        std::vector<GPT2Block<AnyLinear>> blocks;
        for (std::size_t i = 0; i < config_.n_layer; ++i) blocks.push_back(block(i));
        std::optional<DenseLinear> untied_head = tied_head ? std::nullopt : lm_head(wte);
        LayerNormWeights ln_f = load_layer_norm(ckpt_, "ln_f", C);
        return GPT2Model<AnyLinear>(config_, std::move(wte), std::move(wpe), std::move(blocks), std::move(ln_f),
                                    std::move(untied_head), std::move(tied_head));
    }

private:
    GPT2Block<AnyLinear> block(std::size_t i) const {
        const std::size_t C = config_.n_embd, inner = config_.inner();
        const std::string p = block_prefix(i);
        GPT2Block<AnyLinear> b{load_layer_norm(ckpt_, p + "ln_1", C),
                               linear(linear_name(i, LinearSlot::c_attn), C, 3 * C),
                               linear(linear_name(i, LinearSlot::attn_proj), C, C),
                               load_layer_norm(ckpt_, p + "ln_2", C),
                               linear(linear_name(i, LinearSlot::c_fc), C, inner),
                               linear(linear_name(i, LinearSlot::mlp_proj), inner, C)};
        if (ckpt_.contains(p + "mlp.act.scales")) b.mlp_act_scale = ckpt_.load_float(p + "mlp.act.scales", Shape{inner});
        return b;
    }

    // The token embedding stored in 16 bits becomes the tied head ([vocab, n_embd], not transposed).
    // GPT2LMHeadModel files repeat it as lm_head.weight: that copy is read and dropped; a different
    // one would be an untied head, which qlm keeps in fp32 only.
    AnyLinear half_embedding(DType t) const {
        const Shape shape{config_.vocab_size, config_.n_embd};
        std::vector<std::uint16_t> bits = ckpt_.load_half("wte.weight", t, shape);
        if (ckpt_.contains("lm_head.weight") && ckpt_.dtype_of("lm_head.weight") == t &&
            ckpt_.load_half("lm_head.weight", t, shape) != bits)
            throw format_error("qlm: " + ckpt_.file_of("lm_head.weight").path() + ": a 16-bit lm_head.weight that differs from wte "
                               "(an untied head) is not supported; convert the checkpoint to fp32");
        if (t == DType::F16) return HalfLinear<fp16_t>(cpu::HalfPanelMatrix<fp16_t>(bits, shape[0], shape[1]), Tensor<float>());
        return HalfLinear<bf16_t>(cpu::HalfPanelMatrix<bf16_t>(bits, shape[0], shape[1]), Tensor<float>());
    }

    // GPT2LMHeadModel files repeat wte as lm_head.weight: only a different one is a separate head.
    std::optional<DenseLinear> lm_head(const Tensor<float>& wte) const {
        if (!ckpt_.contains("lm_head.weight")) return std::nullopt;
        Tensor<float> h = ckpt_.load_float("lm_head.weight", Shape{config_.vocab_size, config_.n_embd});
        if (std::equal(h.span().begin(), h.span().end(), wte.span().begin())) return std::nullopt;
        return DenseLinear(std::move(h), Tensor<float>());
    }

    AnyLinear linear(const std::string& name, std::size_t in, std::size_t out) const {
        Tensor<float> bias = ckpt_.contains(name + ".bias") ? ckpt_.load_float(name + ".bias", Shape{out}) : Tensor<float>();
        if (!ckpt_.contains(name + ".qweight")) {
            const DType t = ckpt_.dtype_of(name + ".weight");
            if (t == DType::F16 || t == DType::BF16) {  // kept in 16 bits (Conv1D layout [in, out] on file)
                const auto bits = transpose_bits(ckpt_.load_half(name + ".weight", t, Shape{in, out}), in, out);
                if (t == DType::F16) return HalfLinear<fp16_t>(cpu::HalfPanelMatrix<fp16_t>(bits, out, in), std::move(bias));
                return HalfLinear<bf16_t>(cpu::HalfPanelMatrix<bf16_t>(bits, out, in), std::move(bias));
            }
            return DenseLinear(transpose(ckpt_.load_float(name + ".weight", Shape{in, out})), std::move(bias));
        }
        const SafetensorsFile& f = ckpt_.file_of(name + ".qweight");
        const std::string& kind = metadata(f, "qlm.kind." + name, name);
        AnyQuantTensor weight = quant_tensor(name, spec(f, "qlm.scheme." + name, name), out, in);
        if (kind == "mixed") return mixed(f, name, std::move(weight), std::move(bias));
        return quantized(f, name, kind, std::move(weight), std::move(bias));
    }

    // The kinds "weight-only", "w8a8-dynamic" and "w8a8-static".
    AnyQuantLinear quantized(const SafetensorsFile& f, const std::string& name, const std::string& kind, AnyQuantTensor weight,
                             Tensor<float> bias) const {
        if (kind == "weight-only") {
            std::vector<std::int32_t> order;
            if (ckpt_.contains(name + ".input_order")) order = int32s(name + ".input_order");
            return AnyQuantLinear(std::move(weight), std::move(bias), std::move(order));
        }
        if (kind == "w8a8-dynamic") return AnyQuantLinear(std::move(weight), std::move(bias), {}, ActQuant::int8_dynamic);
        if (kind == "w8a8-static") {
            const Tensor<float> s = ckpt_.load_float(name + ".input_scale", Shape{1});
            if (!(s.data()[0] > 0.0f)) throw format_error("qlm: " + f.path() + ": " + name + ".input_scale must be > 0");
            return AnyQuantLinear(std::move(weight), std::move(bias), {}, ActQuant::int8_static, s.data()[0]);
        }
        throw format_error("qlm: " + f.path() + ": layer '" + name + "' has unknown kind '" + kind + "'");
    }

    MixedLinear mixed(const SafetensorsFile& f, const std::string& name, AnyQuantTensor weight, Tensor<float> bias) const {
        const QuantSpec salient_spec = spec(f, "qlm.scheme." + name + ".salient", name);
        std::vector<std::int32_t> columns = int32s(name + ".salient_columns");
        AnyQuantTensor salient = quant_tensor(name + ".salient", salient_spec, weight.rows(), columns.size());
        return MixedLinear(AnyQuantLinear(std::move(weight), std::move(bias)), AnyQuantLinear(std::move(salient), {}),
                           std::move(columns));
    }

    AnyQuantTensor quant_tensor(const std::string& prefix, const QuantSpec& qs, std::size_t rows, std::size_t cols) const {
        AnyQuantTensor::check_shape(qs, rows, cols, prefix);
        const std::size_t groups = qs.granularity == GranularityKind::per_group ? cols / qs.group_size : 1;
        Tensor<std::uint8_t> packed = u8(prefix + ".qweight", rows, packed_row_bytes(qs.bits, cols));
        Tensor<float> scales = ckpt_.load_float(prefix + ".scales", Shape{rows, groups});
        Tensor<std::uint8_t> zeros;
        if (!qs.symmetric) zeros = u8(prefix + ".qzeros", rows, groups);
        return AnyQuantTensor::from_parts(qs, rows, cols, std::move(packed), std::move(scales), std::move(zeros), prefix);
    }

    Tensor<std::uint8_t> u8(const std::string& name, std::size_t rows, std::size_t cols) const {
        const SafetensorsFile& f = ckpt_.file_of(name);
        const std::string stored = ckpt_.resolve(name);
        const auto view = f.view<std::uint8_t>(stored);
        if (!(view.shape() == Shape{rows, cols}))
            throw shape_error("qlm: " + f.path() + ": tensor '" + stored + "' has shape " + view.shape().str() + ", expected " +
                              Shape{rows, cols}.str());
        Tensor<std::uint8_t> t(Shape{rows, cols});
        std::copy_n(view.data(), view.numel(), t.data());
        return t;
    }

    std::vector<std::int32_t> int32s(const std::string& name) const {
        const auto v = ckpt_.file_of(name).view<std::int32_t>(ckpt_.resolve(name));
        return {v.data(), v.data() + v.numel()};
    }

    static const std::string& metadata(const SafetensorsFile& f, const std::string& key, const std::string& layer) {
        const auto it = f.metadata().find(key);
        if (it == f.metadata().end())
            throw format_error("qlm: " + f.path() + ": quantized layer '" + layer + "' has no " + key + " metadata");
        return it->second;
    }

    static QuantSpec spec(const SafetensorsFile& f, const std::string& key, const std::string& layer) {
        const std::string& scheme = metadata(f, key, layer);
        try {
            return parse_quant_spec(scheme);
        } catch (const invalid_argument& e) {
            throw format_error("qlm: " + f.path() + ": layer '" + layer + "': " + e.what());
        }
    }

    const HfCheckpoint& ckpt_;
    const GPT2Config& config_;
};

}  // namespace detail

// Loads a qlm checkpoint, or a plain float Hugging Face GPT-2 (then every layer is DenseLinear and
// info.method == "fp32"). A quantized checkpoint needs no float weights of its linear layers, nor a
// float wte when its head is quantized. format_error when the quantization_config and the layers
// disagree (a scheme other than the layers', quantized layers without a config, a method without
// quantized layers).
inline LoadedModel load_checkpoint(const std::filesystem::path& dir) {
    const GPT2Config config = GPT2Config::from_file(dir / "config.json");
    const std::optional<QuantizationInfo> declared = detail::read_quantization_config(dir / "config.json");
    const HfCheckpoint ckpt = HfCheckpoint::open(dir);
    GPT2Model<AnyLinear> model = detail::CheckpointReader(ckpt, config).model();
    ckpt.check_all_consumed();
    if (const auto problem = detail::config_mismatch(declared ? &*declared : nullptr, model))
        throw format_error("qlm: " + (dir / "config.json").string() + ": " + *problem);
    // The quantized tied head takes int8 activations when the blocks do (as quantize_gpt2 makes it).
    if (declared && declared->activations != "float" && model.tied_head())
        if (AnyQuantLinear* head = model.mutable_tied_head()->quantized()) head->set_activations(ActQuant::int8_dynamic);
    return {std::move(model), declared.value_or(QuantizationInfo{})};
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
