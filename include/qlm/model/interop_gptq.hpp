#pragma once
// AutoGPTQ / GPTQModel checkpoints of GPT-2: reading them into qlm (load_autogptq) and writing
// qlm's weight-only layers in AutoGPTQ's format (save_autogptq). Byte layouts and how they map to
// qlm's own layout: docs/interop-formats.md. The first part of this header (detail::interop) is
// shared with the AutoAWQ reader (interop_awq.hpp).
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
#include <qlm/core/half.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/io/safetensors.hpp>
#include <qlm/model/checkpoint.hpp>
#include <qlm/model/config.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/model/hf_checkpoint.hpp>
#include <qlm/model/load_gpt2.hpp>
#include <qlm/model/quantized_linear.hpp>
#include <qlm/quant/quant_tensor.hpp>
#include <qlm/quant/scheme.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace qlm {

namespace detail::interop {

// ---- bit streams of 32-bit words ---------------------------------------------------------------
// Field i (width bits) of a little-endian stream of 32-bit words whose word w is words[w * stride]:
// bits [bits*i, bits*i + bits) of the stream, so a 3-bit field may straddle two words.
inline std::uint32_t stream_get(const std::uint32_t* words, std::size_t stride, std::size_t i, int bits) noexcept {
    const std::size_t bit = i * static_cast<std::size_t>(bits);
    const std::size_t w = bit / 32, off = bit % 32;
    std::uint64_t v = words[w * stride] >> off;
    if (off + static_cast<std::size_t>(bits) > 32) v |= static_cast<std::uint64_t>(words[(w + 1) * stride]) << (32 - off);
    return static_cast<std::uint32_t>(v & ((std::uint64_t{1} << bits) - 1));
}

// ORs value (< 2^bits) into field i of such a stream (the words start zeroed).
inline void stream_put(std::uint32_t* words, std::size_t stride, std::size_t i, int bits, std::uint32_t value) noexcept {
    const std::size_t bit = i * static_cast<std::size_t>(bits);
    const std::size_t w = bit / 32, off = bit % 32;
    words[w * stride] |= value << off;
    if (off + static_cast<std::size_t>(bits) > 32) words[(w + 1) * stride] |= value >> (32 - off);
}

inline std::string dims_str(const std::vector<std::size_t>& d) {
    std::string s = "[";
    for (std::size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
    return s + "]";
}

// ---- JSON --------------------------------------------------------------------------------------
inline nlohmann::json read_json(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) throw io_error("qlm: cannot open " + path.string());
    try {
        return nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        throw format_error("qlm: " + path.string() + ": malformed JSON: " + e.what());
    }
}

inline void write_json(const std::filesystem::path& path, const nlohmann::json& j) {
    std::ofstream out(path);
    out << j.dump(2) << "\n";
    if (!out) throw io_error("qlm: cannot write " + path.string());
}

// config.json's "quantization_config" object, or null when there is none.
inline nlohmann::json quantization_config_of(const std::filesystem::path& dir) {
    const nlohmann::json config = read_json(dir / "config.json");
    if (!config.is_object()) throw format_error("qlm: " + (dir / "config.json").string() + ": expected a JSON object");
    const auto it = config.find("quantization_config");
    if (it == config.end() || it->is_null()) return nullptr;
    if (!it->is_object()) throw format_error("qlm: " + (dir / "config.json").string() + ": quantization_config is not an object");
    return *it;
}

// Typed field access with messages naming the file and the key.
struct ConfigReader {
    const nlohmann::json& j;
    std::string origin;

    bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }
    long long integer(const char* key) const {
        const auto& v = j.at(key);
        if (!v.is_number_integer()) throw format_error("qlm: " + origin + ": '" + key + "' must be an integer, found " + v.dump());
        return v.get<long long>();
    }
    bool boolean(const char* key) const {
        const auto& v = j.at(key);
        if (!v.is_boolean()) throw format_error("qlm: " + origin + ": '" + key + "' must be true or false, found " + v.dump());
        return v.get<bool>();
    }
    std::string string(const char* key) const {
        const auto& v = j.at(key);
        if (!v.is_string()) throw format_error("qlm: " + origin + ": '" + key + "' must be a string, found " + v.dump());
        return v.get<std::string>();
    }
};

// ---- the tensors of a checkpoint directory -----------------------------------------------------
// model.safetensors / model.safetensors.index.json (through HfCheckpoint), or, for older AutoGPTQ
// directories, <model_file_base_name>.safetensors or the directory's only *.safetensors file.
// Names resolve with or without the "transformer." prefix.
class TensorSource {
public:
    static TensorSource open(const std::filesystem::path& dir, const std::string& base_name = {}) {
        namespace fs = std::filesystem;
        if (!fs::is_directory(dir)) throw io_error("qlm: model directory " + dir.string() + " does not exist");
        TensorSource src;
        if (fs::exists(dir / "model.safetensors") || fs::exists(dir / "model.safetensors.index.json")) {
            src.hf_ = std::make_unique<HfCheckpoint>(HfCheckpoint::open(dir));
            return src;
        }
        fs::path file;
        if (!base_name.empty() && fs::exists(dir / (base_name + ".safetensors"))) {
            file = dir / (base_name + ".safetensors");
        } else {
            std::vector<fs::path> found;
            for (const auto& e : fs::directory_iterator(dir))
                if (e.is_regular_file() && e.path().extension() == ".safetensors") found.push_back(e.path());
            if (found.size() != 1)
                throw io_error("qlm: " + dir.string() + " has no model.safetensors" +
                               (found.empty() ? std::string(" nor any *.safetensors file")
                                              : ", and " + std::to_string(found.size()) +
                                                    " other *.safetensors files (expected exactly one)"));
            file = found.front();
        }
        src.single_ = std::make_unique<SafetensorsFile>(SafetensorsFile::open(file));
        return src;
    }

    // The stored name (name itself or "transformer." + name); empty when absent.
    std::string resolve(const std::string& name) const {
        if (hf_) return hf_->resolve(name);
        if (single_->contains(name)) return name;
        if (single_->contains("transformer." + name)) return "transformer." + name;
        return {};
    }
    bool contains(const std::string& name) const { return !resolve(name).empty(); }

    const SafetensorsFile& file_of(const std::string& name) const {
        if (hf_) return hf_->file_of(name);
        if (resolve(name).empty())
            throw format_error("qlm: " + single_->path() + " has no tensor '" + name + "' (nor 'transformer." + name + "')");
        return *single_;
    }

    // "file: tensor 'stored name': " for messages.
    std::string where(const std::string& name) const {
        const std::string stored = resolve(name);
        return "qlm: " + file_of(name).path() + ": tensor '" + (stored.empty() ? name : stored) + "': ";
    }

    const TensorInfo& info(const std::string& name) const { return file_of(name).info(resolve(name)); }

    Tensor<float> load_float(const std::string& name, Shape expected) const {
        if (hf_) return hf_->load_float(name, expected);
        Tensor<float> t = file_of(name).to_float(resolve(name));
        if (!(t.shape() == expected))
            throw shape_error(where(name) + "has shape " + t.shape().str() + ", expected " + expected.str());
        return t;
    }

    // Throws format_error naming tensors nothing has read (HfCheckpoint::check_all_consumed). Not
    // checked yet for a single file found by name (older AutoGPTQ directories).
    void check_all_consumed() const {
        if (hf_) hf_->check_all_consumed();
    }

    // An int32 (or uint32) tensor of exactly `dims`, as words. what: why that shape (for messages).
    std::vector<std::uint32_t> load_words(const std::string& name, const std::vector<std::size_t>& dims,
                                          const std::string& what) const {
        const TensorInfo& t = info(name);
        if (t.dtype != DType::I32 && t.dtype != DType::U32)
            throw format_error(where(name) + "stored as " + std::string(dtype_name(t.dtype)) + ", expected I32 (packed codes)");
        if (t.dims != dims)
            throw shape_error(where(name) + "has shape " + dims_str(t.dims) + ", expected " + dims_str(dims) + " (" + what + ")");
        std::vector<std::uint32_t> out(t.numel());
        if (!out.empty()) std::memcpy(out.data(), t.bytes.data(), out.size() * sizeof(std::uint32_t));
        return out;
    }

private:
    std::unique_ptr<HfCheckpoint> hf_;
    std::unique_ptr<SafetensorsFile> single_;
};

inline Tensor<float> optional_bias(const TensorSource& src, const std::string& name, std::size_t n) {
    return src.contains(name + ".bias") ? src.load_float(name + ".bias", Shape{n}) : Tensor<float>();
}

// A float Conv1D layer ([in, out] weight) as DenseLinear.
inline AnyLinear float_conv1d(const TensorSource& src, const std::string& name, std::size_t in, std::size_t out) {
    return DenseLinear(transpose(src.load_float(name + ".weight", Shape{in, out})), optional_bias(src, name, out));
}

// The whole GPT-2 with its linear layers made by load_linear(hf name, in, out) -> AnyLinear.
template <class LoadLinear>
GPT2Model<AnyLinear> assemble_gpt2(const GPT2Config& config, const TensorSource& src, LoadLinear&& load_linear) {
    const std::size_t C = config.n_embd;
    auto layer_norm = [&](const std::string& p) {
        return LayerNormWeights{src.load_float(p + ".weight", Shape{C}), src.load_float(p + ".bias", Shape{C})};
    };
    Tensor<float> wte = src.load_float("wte.weight", Shape{config.vocab_size, C});
    Tensor<float> wpe = src.load_float("wpe.weight", Shape{config.n_positions, C});
    std::vector<GPT2Block<AnyLinear>> blocks;
    for (std::size_t i = 0; i < config.n_layer; ++i) {
        const std::string p = "h." + std::to_string(i) + ".";
        blocks.push_back({layer_norm(p + "ln_1"), load_linear(layer_prefix(i, LinearSlot::c_attn), C, 3 * C),
                          load_linear(layer_prefix(i, LinearSlot::attn_proj), C, C), layer_norm(p + "ln_2"),
                          load_linear(layer_prefix(i, LinearSlot::c_fc), C, config.inner()),
                          load_linear(layer_prefix(i, LinearSlot::mlp_proj), config.inner(), C)});
        if (src.contains(p + "mlp.act.scales"))  // AutoAWQ's ScaledActivation
            blocks.back().mlp_act_scale = src.load_float(p + "mlp.act.scales", Shape{config.inner()});
    }
    LayerNormWeights ln_f = layer_norm("ln_f");
    std::optional<DenseLinear> head;
    if (src.contains("lm_head.weight")) {  // tied to wte unless the values differ
        Tensor<float> h = src.load_float("lm_head.weight", Shape{config.vocab_size, C});
        if (!std::equal(h.span().begin(), h.span().end(), wte.span().begin())) head = DenseLinear(std::move(h), Tensor<float>());
    }
    return GPT2Model<AnyLinear>(config, std::move(wte), std::move(wpe), std::move(blocks), std::move(ln_f), std::move(head));
}

// The qlm spec of a foreign layer: per channel when group_size < 0, else per group. Throws
// format_error (naming `where`) when qlm's packing cannot hold it.
inline QuantSpec foreign_spec(int bits, long long group_size, bool symmetric, const std::string& where) {
    QuantSpec spec;
    spec.bits = bits;
    spec.symmetric = symmetric;
    if (group_size < 0) {
        spec.granularity = GranularityKind::per_channel;
        spec.group_size = 0;
    } else {
        spec.granularity = GranularityKind::per_group;
        spec.group_size = static_cast<std::size_t>(group_size);
    }
    if (!spec.valid())
        throw format_error(where + "group size " + std::to_string(group_size) + " at " + std::to_string(bits) +
                           " bits does not fit qlm's packed layout (a multiple of 32, or of 64 for 2 and 3 bits)");
    return spec;
}

// Copies the tokenizer files qlm and Hugging Face use.
inline void copy_tokenizer(const std::filesystem::path& from, const std::filesystem::path& to) {
    namespace fs = std::filesystem;
    if (from.empty() || fs::absolute(from) == fs::absolute(to)) return;
    for (const char* f : {"vocab.json", "merges.txt", "encoder.json", "vocab.bpe", "tokenizer.json", "tokenizer_config.json",
                          "special_tokens_map.json"})
        if (fs::exists(from / f)) fs::copy_file(from / f, to / f, fs::copy_options::overwrite_existing);
}

}  // namespace detail::interop

// ================================================================================================
// AutoGPTQ / GPTQModel
// ================================================================================================

// What qlm reads from an AutoGPTQ checkpoint's configuration: config.json "quantization_config",
// completed by quantize_config.json (AutoGPTQ writes both; older versions only the latter).
struct AutoGptqConfig {
    int bits = 4;                            // 2, 3, 4 or 8
    long long group_size = 128;              // -1: one group per output channel
    bool desc_act = false;                   // act-order: g_idx is a permutation of groups
    bool sym = true;
    std::string checkpoint_format = "gptq";  // "gptq": qzeros hold z - 1;  "gptq_v2": z
    std::string model_file_base_name;        // older directories: <base>.safetensors
    double damp_percent = 0.01;

    static AutoGptqConfig read(const std::filesystem::path& dir) {
        namespace fs = std::filesystem;
        nlohmann::json merged = nlohmann::json::object();
        std::string origin;
        if (fs::exists(dir / "quantize_config.json")) {
            const nlohmann::json q = detail::interop::read_json(dir / "quantize_config.json");
            if (!q.is_object()) throw format_error("qlm: " + (dir / "quantize_config.json").string() + ": expected a JSON object");
            merged.update(q);
            origin = (dir / "quantize_config.json").string();
        }
        const nlohmann::json qc = detail::interop::quantization_config_of(dir);
        if (qc.is_object()) {
            merged.update(qc);  // config.json wins where both say something
            origin = (dir / "config.json").string() + " quantization_config" + (origin.empty() ? "" : " (+ " + origin + ")");
        }
        if (origin.empty())
            throw format_error("qlm: " + dir.string() + ": neither config.json 'quantization_config' nor quantize_config.json: "
                               "not an AutoGPTQ checkpoint");
        return from_json(merged, origin);
    }

    static AutoGptqConfig from_json(const nlohmann::json& j, const std::string& origin) {
        const detail::interop::ConfigReader r{j, origin};
        AutoGptqConfig c;
        if (r.has("quant_method") && r.string("quant_method") != "gptq")
            throw format_error("qlm: " + origin + ": quant_method '" + r.string("quant_method") + "' is not 'gptq'");
        if (!r.has("bits")) throw format_error("qlm: " + origin + ": missing 'bits'");
        const long long bits = r.integer("bits");
        if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
            throw format_error("qlm: " + origin + ": GPTQ checkpoints with bits = " + std::to_string(bits) +
                               " are not supported (qlm reads 2, 3, 4 and 8 bits)");
        c.bits = static_cast<int>(bits);
        if (!r.has("group_size")) throw format_error("qlm: " + origin + ": missing 'group_size'");
        c.group_size = r.integer("group_size");
        if (c.group_size == 0 || c.group_size < -1)
            throw format_error("qlm: " + origin + ": group_size must be positive or -1, found " + std::to_string(c.group_size));
        if (r.has("desc_act")) c.desc_act = r.boolean("desc_act");
        if (r.has("sym")) c.sym = r.boolean("sym");
        if (r.has("checkpoint_format")) c.checkpoint_format = r.string("checkpoint_format");
        if (r.has("is_marlin_format") && r.boolean("is_marlin_format")) c.checkpoint_format = "marlin";
        if (c.checkpoint_format != "gptq" && c.checkpoint_format != "gptq_v2")
            throw format_error("qlm: " + origin + ": checkpoint_format '" + c.checkpoint_format +
                               "' is not supported (qlm reads 'gptq' and 'gptq_v2')");
        if (r.has("pack_dtype") && r.string("pack_dtype") != "int32")
            throw format_error("qlm: " + origin + ": pack_dtype '" + r.string("pack_dtype") + "' is not supported (int32)");
        if (r.has("model_file_base_name")) c.model_file_base_name = r.string("model_file_base_name");
        if (r.has("damp_percent") && j.at("damp_percent").is_number()) c.damp_percent = j.at("damp_percent").get<double>();
        return c;
    }

    bool zero_minus_one() const noexcept { return checkpoint_format == "gptq"; }
};

namespace detail::interop {

// One AutoGPTQ layer as a quantized layer (or DenseLinear when the file holds it unquantized).
// The qlm tensor stores the columns sorted stably by g_idx (so groups are contiguous) and
// input_order maps them back; without a permutation input_order stays empty.
inline AnyLinear load_gptq_linear(const TensorSource& src, const AutoGptqConfig& cfg, const std::string& name,
                                  std::size_t K, std::size_t N, std::optional<QuantSpec>& seen) {
    const std::string qw = name + ".qweight", qz = name + ".qzeros", sc = name + ".scales", gi = name + ".g_idx";
    if (!src.contains(qw)) {
        if (src.contains(name + ".weight")) return float_conv1d(src, name, K, N);
        throw format_error("qlm: AutoGPTQ checkpoint has neither '" + qw + "' nor '" + name + ".weight'");
    }
    const int b = cfg.bits;
    const std::size_t ub = static_cast<std::size_t>(b);
    if (K * ub % 32 != 0 || N * ub % 32 != 0)
        throw shape_error(src.where(qw) + "layer [in " + std::to_string(K) + ", out " + std::to_string(N) + "] at " +
                          std::to_string(b) + " bits does not pack into whole 32-bit words");
    const std::size_t G = cfg.group_size < 0 ? K : static_cast<std::size_t>(cfg.group_size);
    if (K % G != 0)
        throw shape_error(src.where(qw) + "in_features " + std::to_string(K) + " is not a multiple of group_size " + std::to_string(G));
    const std::size_t groups = K / G;
    const std::uint32_t maxq = (1u << b) - 1, mid = 1u << (b - 1);
    QuantSpec spec = foreign_spec(b, cfg.group_size, /*symmetric=*/false, src.where(qw));  // mode decided below
    AnyQuantTensor::check_shape(spec, N, K, src.resolve(qw));

    const auto qweight = src.load_words(qw, {K * ub / 32, N}, "in_features * bits / 32, out_features");
    const auto qzeros = src.load_words(qz, {groups, N * ub / 32}, "groups, out_features * bits / 32");
    const Tensor<float> scales = src.load_float(sc, Shape{groups, N});
    for (std::size_t i = 0; i < scales.numel(); ++i)
        if (!std::isfinite(scales.data()[i]) || scales.data()[i] < 0.0f)
            throw format_error(src.where(sc) + "scale [" + std::to_string(i / N) + ", " + std::to_string(i % N) + "] is " +
                               std::to_string(scales.data()[i]) + ", expected a finite value >= 0");

    // g_idx: validate, then the stable sort of the columns by group.
    std::vector<std::int32_t> order;
    if (src.contains(gi)) {
        const TensorInfo& t = src.info(gi);
        if (t.dtype != DType::I32) throw format_error(src.where(gi) + "stored as " + std::string(dtype_name(t.dtype)) + ", expected I32");
        if (t.dims != std::vector<std::size_t>{K})
            throw shape_error(src.where(gi) + "has shape " + dims_str(t.dims) + ", expected [" + std::to_string(K) + "] (in_features)");
        std::vector<std::int32_t> g_idx(K);
        std::memcpy(g_idx.data(), t.bytes.data(), K * sizeof(std::int32_t));
        std::vector<std::size_t> count(groups, 0);
        bool ordered = true;
        for (std::size_t c = 0; c < K; ++c) {
            const std::int32_t g = g_idx[c];
            if (g < 0 || static_cast<std::size_t>(g) >= groups)
                throw format_error(src.where(gi) + "column " + std::to_string(c) + " is in group " + std::to_string(g) +
                                   ", outside [0, " + std::to_string(groups) + ")");
            ++count[static_cast<std::size_t>(g)];
            ordered = ordered && static_cast<std::size_t>(g) == c / G;
        }
        for (std::size_t g = 0; g < groups; ++g)
            if (count[g] != G)
                throw format_error(src.where(gi) + "group " + std::to_string(g) + " has " + std::to_string(count[g]) +
                                   " columns, expected group_size " + std::to_string(G) +
                                   " (qlm needs every group to have exactly group_size columns)");
        if (!ordered) {
            std::vector<std::size_t> next(groups);
            for (std::size_t g = 0; g < groups; ++g) next[g] = g * G;
            order.resize(K);
            for (std::size_t c = 0; c < K; ++c) order[next[static_cast<std::size_t>(g_idx[c])]++] = static_cast<std::int32_t>(c);
        }
    }

    // Zero points, [N, groups] in qlm's layout.
    std::vector<std::uint8_t> zeros(N * groups);
    bool all_mid = true;
    const std::size_t zwords = N * ub / 32;
    for (std::size_t g = 0; g < groups; ++g)
        for (std::size_t n = 0; n < N; ++n) {
            const std::uint32_t field = stream_get(qzeros.data() + g * zwords, 1, n, b);
            const std::uint32_t z = cfg.zero_minus_one() ? field + 1 : field;
            if (z > maxq)
                throw format_error(src.where(qz) + "group " + std::to_string(g) + ", output " + std::to_string(n) +
                                   ": stored field " + std::to_string(field) + " means zero point " + std::to_string(z) +
                                   " in checkpoint_format 'gptq' (which stores z - 1), outside [0, " + std::to_string(maxq) +
                                   "]; the 'gptq' format cannot represent z = 0 (use 'gptq_v2')");
            zeros[n * groups + g] = static_cast<std::uint8_t>(z);
            all_mid = all_mid && z == mid;
        }
    const bool symmetric = cfg.sym && all_mid;
    spec.symmetric = symmetric;
    if (!seen) seen = spec;

    AnyQuantTensor weight(spec, N, K);
    std::vector<std::uint8_t> codes(K);
    std::vector<float> srow(groups);
    for (std::size_t n = 0; n < N; ++n) {
        for (std::size_t j = 0; j < K; ++j) {
            const std::size_t c = order.empty() ? j : static_cast<std::size_t>(order[j]);
            codes[j] = static_cast<std::uint8_t>(stream_get(qweight.data() + n, N, c, b));
        }
        for (std::size_t g = 0; g < groups; ++g) srow[g] = scales.data()[g * N + n];
        weight.set_row(n, codes, srow,
                       symmetric ? std::span<const std::uint8_t>{} : std::span<const std::uint8_t>(zeros.data() + n * groups, groups));
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
    const GPT2Config config = GPT2Config::from_file(dir / "config.json");
    const auto src = detail::interop::TensorSource::open(dir, cfg.model_file_base_name);
    std::optional<QuantSpec> seen;
    GPT2Model<AnyLinear> model = detail::interop::assemble_gpt2(config, src, [&](const std::string& name, std::size_t in, std::size_t out) {
        return detail::interop::load_gptq_linear(src, cfg, name, in, out, seen);
    });
    src.check_all_consumed();
    QuantizationInfo info;
    info.method = "gptq";
    if (seen) info.weights = *seen;
    info.details = {{"source_format", "autogptq"},   {"checkpoint_format", cfg.checkpoint_format},
                    {"desc_act", cfg.desc_act},       {"sym", cfg.sym},
                    {"group_size", cfg.group_size},   {"damp_percent", cfg.damp_percent}};
    return {std::move(model), std::move(info)};
}

// ---- export ------------------------------------------------------------------------------------

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

// Writes one quantized layer as P.qweight / P.qzeros / P.scales / P.g_idx / P.bias.
inline void write_gptq_layer(SafetensorsWriter& w, const std::string& name, const AnyQuantLinear& layer,
                             const AutoGptqSaveOptions& options, AutoGptqExportStats& stats) {
    const AnyQuantTensor q = layer.weight();
    const std::size_t N = q.rows(), K = q.cols(), G = q.group_size(), groups = q.groups();
    const int b = q.bits();
    const std::size_t ub = static_cast<std::size_t>(b);
    if (K * ub % 32 != 0 || N * ub % 32 != 0)
        throw shape_error("qlm::save_autogptq: layer '" + name + "' [out " + std::to_string(N) + ", in " + std::to_string(K) +
                          "] at " + std::to_string(b) + " bits does not pack into whole 32-bit words");
    const bool v1 = options.checkpoint_format == "gptq";
    const auto& order = layer.input_order();

    std::vector<std::int32_t> g_idx(K);
    for (std::size_t j = 0; j < K; ++j) g_idx[order.empty() ? j : static_cast<std::size_t>(order[j])] = static_cast<std::int32_t>(j / G);

    std::vector<std::uint32_t> qweight(K * ub / 32 * N, 0);
    std::vector<std::uint8_t> codes(K);
    for (std::size_t n = 0; n < N; ++n) {
        q.codes_row(n, codes);
        for (std::size_t j = 0; j < K; ++j)
            stream_put(qweight.data() + n, N, order.empty() ? j : static_cast<std::size_t>(order[j]), b, codes[j]);
    }

    const std::size_t zwords = N * ub / 32;
    std::vector<std::uint32_t> qzeros(groups * zwords, 0);
    std::vector<fp16_t> scales(groups * N);
    for (std::size_t g = 0; g < groups; ++g)
        for (std::size_t n = 0; n < N; ++n) {
            const int z = q.zero(n, g);
            if (v1 && z == 0)
                throw invalid_argument("qlm::save_autogptq: layer '" + name + "' has zero point 0 (output " + std::to_string(n) +
                                       ", group " + std::to_string(g) + "), which checkpoint_format 'gptq' cannot store "
                                       "(it stores z - 1); export with checkpoint_format 'gptq_v2'");
            stream_put(qzeros.data() + g * zwords, 1, n, b, static_cast<std::uint32_t>(v1 ? z - 1 : z));
            const float s = q.scale(n, g);
            const std::uint16_t h = float_to_fp16(s);
            const float back = fp16_to_float(h);
            if (!std::isfinite(back))
                throw invalid_argument("qlm::save_autogptq: layer '" + name + "' scale " + std::to_string(s) + " (output " +
                                       std::to_string(n) + ", group " + std::to_string(g) + ") overflows fp16");
            if (s > 0.0f)
                stats.max_scale_rel_change =
                    std::max(stats.max_scale_rel_change, std::abs(static_cast<double>(back) - s) / static_cast<double>(s));
            scales[g * N + n] = fp16_t{h};
        }
    stats.scales += groups * N;

    const std::string p = "transformer." + name;
    w.add(p + ".qweight", DType::I32, {K * ub / 32, N}, std::as_bytes(std::span<const std::uint32_t>(qweight)));
    w.add(p + ".qzeros", DType::I32, {groups, zwords}, std::as_bytes(std::span<const std::uint32_t>(qzeros)));
    w.add(p + ".scales", DType::F16, {groups, N}, std::as_bytes(std::span<const fp16_t>(scales)));
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

}  // namespace detail::interop

// Writes `model` as an AutoGPTQ GPT-2 checkpoint in `dir`: model.safetensors with "transformer."
// names, config.json with quantization_config, quantize_config.json, and the tokenizer files of
// tokenizer_dir when given. Every QuantLinear must share one bit width (2, 3, 4 or 8) and one
// group size (per-channel and per-tensor layers are written with group_size -1); a layer with an
// input_order is written in the original column order with its g_idx, and desc_act is true.
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
    namespace fs = std::filesystem;
    using namespace detail::interop;
    if (options.checkpoint_format != "gptq" && options.checkpoint_format != "gptq_v2")
        throw invalid_argument("qlm::save_autogptq: checkpoint_format must be 'gptq' or 'gptq_v2', found '" +
                               options.checkpoint_format + "'");
    if (options.float_dtype != DType::F32 && options.float_dtype != DType::F16)
        throw invalid_argument("qlm::save_autogptq: float_dtype must be F32 or F16");

    // One scheme for the whole file (the config holds one bits / group_size / sym).
    std::optional<int> bits;
    std::optional<long long> group_size;
    bool sym = true, desc_act = false;
    nlohmann::json not_converted = nlohmann::json::array();
    struct LayerGroups {
        std::string name;
        bool per_group;
        long long columns_per_group;
        std::string scheme;
    };
    std::vector<LayerGroups> layer_groups;
    for (std::size_t i = 0; i < model.blocks().size(); ++i)
        if (model.blocks()[i].mlp_act_scale.numel())
            throw invalid_argument("qlm::save_autogptq: block " + std::to_string(i) +
                                   " divides GELU's output by activation scales (AWQ), which AutoGPTQ's GPT-2 cannot hold");
    for (std::size_t i = 0; i < model.blocks().size(); ++i)
        for (const LinearSlot slot : kLinearSlots) {
            const std::string name = detail::layer_prefix(i, slot);
            const AnyLinear& l = linear_of(model.blocks()[i], slot);
            if (l.quantized() && l.quantized()->activations() != ActQuant::none)
                throw invalid_argument("qlm::save_autogptq: layer '" + name + "' is W8A8 (int8 activations); AutoGPTQ "
                                       "checkpoints hold weight-only layers");
            if (l.holds<DenseLinear>()) {
                not_converted.push_back("transformer." + name);
                continue;
            }
            if (!l.quantized())
                throw invalid_argument("qlm::save_autogptq: layer '" + name + "' is a mixed-precision layer, which AutoGPTQ "
                                       "checkpoints cannot express");
            const AnyQuantTensor w = l.quantized()->weight();
            // A per-channel layer whose row is one group of G columns is the same as group_size G.
            const bool per_group = w.granularity() == GranularityKind::per_group;
            const long long columns_per_group = static_cast<long long>(per_group ? w.group_size() : w.cols());
            if (bits && *bits != w.bits())
                throw invalid_argument("qlm::save_autogptq: layer '" + name + "' is " + to_string(w.spec()) +
                                       ", but earlier layers use " + std::to_string(*bits) +
                                       " bits (an AutoGPTQ checkpoint has one scheme)");
            bits = w.bits();
            layer_groups.push_back({name, per_group, columns_per_group, to_string(w.spec())});
            sym = sym && w.symmetric();
            desc_act = desc_act || !l.quantized()->input_order().empty();
        }
    // group_size -1 when every layer is per channel; otherwise one G that every layer's groups match.
    for (const auto& lg : layer_groups)
        if (lg.per_group) group_size = lg.columns_per_group;
    if (!group_size) group_size = -1;
    for (const auto& lg : layer_groups)
        if (*group_size != -1 && lg.columns_per_group != *group_size)
            throw invalid_argument("qlm::save_autogptq: layer '" + lg.name + "' is " + lg.scheme + ", but other layers use " +
                                   "group_size " + std::to_string(*group_size) + " (an AutoGPTQ checkpoint has one scheme)");
    if (!bits) throw invalid_argument("qlm::save_autogptq: the model has no quantized (weight-only) layers to export");

    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw io_error("qlm: cannot create " + dir.string() + ": " + ec.message());

    AutoGptqExportStats stats;
    SafetensorsWriter writer;
    const DType fd = options.float_dtype;
    if (model.tied_head()) {
        // A quantized tied embedding / head (QuantizeOptions::quantize_head): AutoGPTQ keeps GPT-2's
        // wte in float, so the head's dequantized values (exactly what qlm computes with) become wte.
        add_float_tensor(writer, "transformer.wte.weight", detail::interop::dequantized_head(*model.tied_head()), fd);
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
            const std::string name = detail::layer_prefix(i, slot);
            const AnyLinear& l = linear_of(b, slot);
            if (const AnyQuantLinear* q = l.quantized()) {
                write_gptq_layer(writer, name, *q, options, stats);
            } else {
                const auto& d = l.get<DenseLinear>();
                add_float_tensor(writer, "transformer." + name + ".weight", transpose(d.weight()), fd);  // Conv1D [in, out]
                if (d.bias().numel()) add_float_tensor(writer, "transformer." + name + ".bias", d.bias(), fd);
                ++stats.float_layers;
            }
        }
    }
    writer.set_metadata("format", "pt");
    writer.set_metadata("quantizer", "qlm");
    writer.write(dir / "model.safetensors");

    double damp = 0.01;
    if (info.details.is_object() && info.details.contains("percdamp") && info.details["percdamp"].is_number())
        damp = info.details["percdamp"].get<double>();
    nlohmann::json qc = {{"quant_method", "gptq"},
                         {"bits", *bits},
                         {"group_size", *group_size},
                         {"desc_act", desc_act},
                         {"sym", sym},
                         {"static_groups", false},
                         {"true_sequential", true},
                         {"damp_percent", damp},
                         {"checkpoint_format", options.checkpoint_format},
                         {"model_name_or_path", nullptr},
                         {"model_file_base_name", "model"},
                         {"meta", {{"quantizer", "qlm"}, {"qlm_method", info.method}}}};
    if (!not_converted.empty()) qc["modules_to_not_convert"] = not_converted;
    nlohmann::json config = model.config().to_json();
    config["torch_dtype"] = fd == DType::F16 ? "float16" : "float32";
    config["quantization_config"] = qc;
    write_json(dir / "config.json", config);
    write_json(dir / "quantize_config.json", qc);
    copy_tokenizer(tokenizer_dir, dir);
    return stats;
}

}  // namespace qlm
