#pragma once
// A Hugging Face checkpoint directory: config.json plus model.safetensors, or several shards
// listed in model.safetensors.index.json. Tensor names are looked up with or without the
// "transformer." prefix that GPT2LMHeadModel checkpoints carry.
//
// Float tensors are checked to be finite as they are read. The checkpoint remembers which tensors
// were read, so that a loader can refuse a file holding more than it understood
// (check_all_consumed): a config.json with too few layers must not silently drop the rest.
// Reading marks tensors, so one checkpoint is read by one thread at a time.
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qlm {

namespace detail {

// The index of the first NaN or infinity in `values`, or values.size() when every value is finite.
// One pass over the bit patterns (a value is not finite when its exponent bits are all ones) that
// compiles to vector max instructions; the position is looked for only when there is one.
inline std::size_t first_non_finite(std::span<const float> values) noexcept {
    std::uint32_t max_magnitude = 0;
    for (const float v : values) max_magnitude = std::max(max_magnitude, std::bit_cast<std::uint32_t>(v) & 0x7fffffffu);
    if (max_magnitude < 0x7f800000u) return values.size();
    return static_cast<std::size_t>(std::find_if(values.begin(), values.end(), [](float v) { return !std::isfinite(v); }) -
                                    values.begin());
}

// "[i, j, k]": the multi-index of flat element `flat` in a row-major tensor of shape `shape`.
inline std::string index_str(const Shape& shape, std::size_t flat) {
    std::vector<std::size_t> index(shape.rank());
    for (std::size_t d = shape.rank(); d-- > 0;) {
        index[d] = flat % shape[d];
        flat /= shape[d];
    }
    std::string out = "[";
    for (std::size_t d = 0; d < index.size(); ++d) {
        if (d) out += ", ";
        out += std::to_string(index[d]);
    }
    return out + "]";
}

// Buffers that Hugging Face's GPT-2 stored next to the weights until transformers made them
// non-persistent: the causal mask "h.N.attn.bias" and "h.N.attn.masked_bias". qlm builds its own
// mask, so these are the tensors a GPT-2 loader may leave unread.
inline bool is_gpt2_attention_buffer(std::string_view name) {
    if (name.starts_with("transformer.")) name.remove_prefix(12);
    if (!name.starts_with("h.")) return false;
    name.remove_prefix(2);
    const std::size_t digits = name.find_first_not_of("0123456789");
    if (digits == 0 || digits == std::string_view::npos) return false;
    name.remove_prefix(digits);
    return name == ".attn.bias" || name == ".attn.masked_bias";
}

}  // namespace detail

class HfCheckpoint {
public:
    static HfCheckpoint open(const std::filesystem::path& dir) {
        namespace fs = std::filesystem;
        if (!fs::is_directory(dir)) throw io_error("qlm: model directory " + dir.string() + " does not exist");
        HfCheckpoint ckpt;
        ckpt.dir_ = dir;
        const fs::path single = dir / "model.safetensors";
        const fs::path index = dir / "model.safetensors.index.json";
        if (fs::exists(single)) {
            ckpt.files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(single)));
            for (const auto& name : ckpt.files_.back()->names()) ckpt.where_[name] = 0;
        } else if (fs::exists(index)) {
            ckpt.open_shards(index);
        } else if (fs::exists(dir / "pytorch_model.bin")) {
            throw format_error("qlm: " + dir.string() + " holds only pytorch_model.bin (a pickle, which qlm does not execute);"
                               " convert it to model.safetensors");
        } else {
            throw io_error("qlm: " + dir.string() + " has neither model.safetensors nor model.safetensors.index.json");
        }
        return ckpt;
    }

    const std::filesystem::path& directory() const noexcept { return dir_; }

    // The name as stored: `name` itself or "transformer." + name; empty when absent.
    std::string resolve(const std::string& name) const {
        if (where_.count(name)) return name;
        if (where_.count("transformer." + name)) return "transformer." + name;
        return {};
    }
    bool contains(const std::string& name) const { return !resolve(name).empty(); }

    // The file that holds `name`; marks the tensor as read (see unused_tensors()).
    const SafetensorsFile& file_of(const std::string& name) const {
        const std::string stored = resolve(name);
        if (stored.empty())
            throw format_error("qlm: checkpoint " + dir_.string() + " has no tensor '" + name + "' (nor 'transformer." + name + "')");
        read_.insert(stored);
        return *files_[where_.at(stored)];
    }

    // The tensor as float, checked against the expected shape and to hold no NaN or infinity.
    Tensor<float> load_float(const std::string& name, Shape expected) const {
        const SafetensorsFile& file = file_of(name);
        const std::string stored = resolve(name);
        Tensor<float> t = file.to_float(stored);
        if (!(t.shape() == expected))
            throw shape_error("qlm: " + file.path() + ": tensor '" + stored + "' has shape " + t.shape().str() +
                              ", expected " + expected.str());
        if (const std::size_t at = detail::first_non_finite(t.span()); at != t.numel())
            throw format_error("qlm: " + file.path() + ": tensor '" + stored + "' holds " + std::to_string(t.data()[at]) +
                               " at " + detail::index_str(t.shape(), at) + "; every weight must be a finite number");
        return t;
    }

    // The stored dtype of `name` (without marking it read).
    DType dtype_of(const std::string& name) const {
        const std::string stored = resolve(name);
        if (stored.empty()) throw format_error("qlm: checkpoint " + dir_.string() + " has no tensor '" + name + "'");
        return files_[where_.at(stored)]->info(stored).dtype;
    }

    // A 16-bit float tensor (F16 or BF16, as `dtype`) as its raw bit patterns, checked against the
    // expected shape and to hold no NaN or infinity.
    std::vector<std::uint16_t> load_half(const std::string& name, DType dtype, Shape expected) const {
        const SafetensorsFile& file = file_of(name);
        const std::string stored = resolve(name);
        const TensorInfo& info = file.info(stored);
        if (info.dtype != dtype)
            throw format_error("qlm: " + file.path() + ": tensor '" + stored + "' is " + std::string(dtype_name(info.dtype)) +
                               ", expected " + std::string(dtype_name(dtype)));
        if (!(Shape(info.dims.begin(), info.dims.end()) == expected))
            throw shape_error("qlm: " + file.path() + ": tensor '" + stored + "' has shape " +
                              Shape(info.dims.begin(), info.dims.end()).str() + ", expected " + expected.str());
        std::vector<std::uint16_t> bits(info.numel());
        std::memcpy(bits.data(), info.bytes.data(), bits.size() * sizeof(std::uint16_t));
        const std::uint16_t exponent = dtype == DType::F16 ? 0x7C00 : 0x7F80;  // all ones: infinity or NaN
        for (std::size_t i = 0; i < bits.size(); ++i)
            if ((bits[i] & exponent) == exponent)
                throw format_error("qlm: " + file.path() + ": tensor '" + stored + "' holds a non-finite value at " +
                                   detail::index_str(expected, i) + "; every weight must be a finite number");
        return bits;
    }

    std::vector<std::string> names() const {
        std::vector<std::string> out;
        for (const auto& [name, file] : where_) out.push_back(name);
        return out;
    }

    // Stored names that nothing has read through file_of() / load_float(), except GPT-2's attention
    // buffers (detail::is_gpt2_attention_buffer), in name order.
    std::vector<std::string> unused_tensors() const {
        std::vector<std::string> out;
        for (const auto& [name, file] : where_)
            if (!read_.count(name) && !detail::is_gpt2_attention_buffer(name)) out.push_back(name);
        return out;
    }

    // A loader's last step: throws format_error naming the tensors it did not read, which the
    // model it built therefore lacks.
    void check_all_consumed() const {
        const std::vector<std::string> unused = unused_tensors();
        if (unused.empty()) return;
        constexpr std::size_t kShown = 8;
        std::string list;
        for (std::size_t i = 0; i < std::min(unused.size(), kShown); ++i) {
            if (i) list += ", ";
            list += unused[i];
        }
        if (unused.size() > kShown) list += ", ... (" + std::to_string(unused.size() - kShown) + " more)";
        throw format_error("qlm: checkpoint " + dir_.string() + " holds " + std::to_string(unused.size()) +
                           " tensor(s) that the model described by its config.json does not use: " + list +
                           " (does config.json match the weights, e.g. n_layer?)");
    }

private:
    void open_shards(const std::filesystem::path& index) {
        nlohmann::json j;
        std::ifstream in(index);
        if (!in) throw io_error("qlm: cannot open " + index.string());
        try {
            j = nlohmann::json::parse(in);
        } catch (const nlohmann::json::exception& e) {
            throw format_error("qlm: " + index.string() + ": malformed JSON: " + e.what());
        }
        const auto map = j.find("weight_map");
        if (map == j.end() || !map->is_object()) throw format_error("qlm: " + index.string() + ": missing object 'weight_map'");
        std::map<std::string, std::size_t> shard_index;
        for (const auto& [name, shard] : map->items()) {
            if (!shard.is_string()) throw format_error("qlm: " + index.string() + ": weight_map['" + name + "'] is not a file name");
            const std::string file = shard.get<std::string>();
            if (file.find('/') != std::string::npos || file.find("..") != std::string::npos)
                throw format_error("qlm: " + index.string() + ": shard name '" + file + "' is not a plain file name");
            auto [it, added] = shard_index.try_emplace(file, files_.size());
            if (added) files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(dir_ / file)));
            if (!files_[it->second]->contains(name))
                throw format_error("qlm: " + index.string() + " places '" + name + "' in " + file + ", which lacks it");
            where_[name] = it->second;
        }
    }

    std::filesystem::path dir_;
    std::vector<std::unique_ptr<SafetensorsFile>> files_;
    std::map<std::string, std::size_t> where_;
    mutable std::set<std::string> read_;  // stored names read so far
};

}  // namespace qlm
