#pragma once
// AutoGPTQ / GPTQModel checkpoints: the configuration qlm reads, and the 32-bit word streams their
// qweight and qzeros are packed in. Layout: docs/interop-formats.md.
#include <qlm/core/error.hpp>
#include <qlm/model/interop/config_json.hpp>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace qlm {

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
        return detail::interop::read_config_as<AutoGptqConfig>(dir, "quantize_config.json", "AutoGPTQ");
    }

    static AutoGptqConfig from_json(const nlohmann::json& j, const std::string& origin) {
        const detail::interop::ConfigReader r(j, origin, "gptq");
        AutoGptqConfig c;
        if (!r.has("bits")) throw format_error("qlm: " + origin + ": missing 'bits'");
        const long long bits = r.integer("bits");
        if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
            throw format_error("qlm: " + origin + ": GPTQ checkpoints with bits = " + std::to_string(bits) +
                               " are not supported (qlm reads 2, 3, 4 and 8 bits)");
        c.bits = static_cast<int>(bits);
        if (!r.has("group_size")) throw format_error("qlm: " + origin + ": missing 'group_size'");
        c.group_size = r.group_size("group_size");
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

}  // namespace detail::interop

}  // namespace qlm
