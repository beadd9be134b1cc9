#pragma once
// The tensors of a foreign checkpoint directory (TensorSource), the GPT-2 assembled from them, and
// the per-layer pieces the AutoGPTQ and AutoAWQ readers share.
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/io/safetensors.hpp>
#include <qlm/model/checkpoint.hpp>
#include <qlm/model/config.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/model/hf_checkpoint.hpp>
#include <qlm/model/quantized_linear.hpp>
#include <qlm/quant/scheme.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace qlm::detail::interop {

inline std::string dims_str(const std::vector<std::size_t>& d) {
    std::string s = "[";
    for (std::size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
    return s + "]";
}

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

    // Throws format_error naming tensors nothing has read (HfCheckpoint::check_all_consumed). Not
    // checked yet for a single file found by name (older AutoGPTQ directories).
    void check_all_consumed() const {
        if (hf_) hf_->check_all_consumed();
    }

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

// A foreign checkpoint directory as a loaded model: the GPT-2 with each linear layer made by
// load_linear(src, hf name, in, out, seen), where seen keeps the first quantized layer's spec (the
// model's info.weights).
template <class LoadLinear>
LoadedModel load_foreign_gpt2(const std::filesystem::path& dir, const std::string& base_name, const char* method,
                              nlohmann::json details, LoadLinear&& load_linear) {
    const GPT2Config config = GPT2Config::from_file(dir / "config.json");
    const auto src = TensorSource::open(dir, base_name);
    std::optional<QuantSpec> seen;
    GPT2Model<AnyLinear> model = assemble_gpt2(config, src, [&](const std::string& name, std::size_t in, std::size_t out) {
        return load_linear(src, name, in, out, seen);
    });
    src.check_all_consumed();
    QuantizationInfo info;
    info.method = method;
    if (seen) info.weights = *seen;
    info.details = std::move(details);
    return {std::move(model), std::move(info)};
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
                           " bits does not fit qlm's packed layout (a positive multiple of 32)");
    return spec;
}

// ---- what both readers do for each layer -------------------------------------------------------

// The float layer a checkpoint keeps unquantized (P.weight instead of P.qweight), or nothing when
// P.qweight is there. tool names the format in the message when neither is.
inline std::optional<AnyLinear> unquantized_layer(const TensorSource& src, const std::string& name, std::size_t K, std::size_t N,
                                                  const char* tool) {
    if (src.contains(name + ".qweight")) return std::nullopt;
    if (src.contains(name + ".weight")) return float_conv1d(src, name, K, N);
    throw format_error(std::string("qlm: ") + tool + " checkpoint has neither '" + name + ".qweight' nor '" + name + ".weight'");
}

// Columns a group (K for group_size -1); K must be a whole number of groups.
inline std::size_t columns_per_group(const TensorSource& src, const std::string& qweight, std::size_t K, long long group_size) {
    const std::size_t G = group_size < 0 ? K : static_cast<std::size_t>(group_size);
    if (K % G != 0)
        throw shape_error(src.where(qweight) + "in_features " + std::to_string(K) + " is not a multiple of group_size " +
                          std::to_string(G));
    return G;
}

// P.scales [groups, N] (fp16 in the file), every one finite and >= 0.
inline Tensor<float> load_scales(const TensorSource& src, const std::string& name, std::size_t groups, std::size_t N) {
    Tensor<float> scales = src.load_float(name, Shape{groups, N});
    for (std::size_t i = 0; i < scales.numel(); ++i)
        if (!std::isfinite(scales.data()[i]) || scales.data()[i] < 0.0f)
            throw format_error(src.where(name) + "scale [" + std::to_string(i / N) + ", " + std::to_string(i % N) + "] is " +
                               std::to_string(scales.data()[i]) + ", expected a finite value >= 0");
    return scales;
}

// scales[g, n] of output n, for AnyQuantTensor::set_row.
inline void scales_row(const Tensor<float>& scales, std::size_t n, std::vector<float>& row) {
    const std::size_t N = scales.shape()[1];
    for (std::size_t g = 0; g < row.size(); ++g) row[g] = scales.data()[g * N + n];
}

}  // namespace qlm::detail::interop
