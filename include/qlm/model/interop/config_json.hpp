#pragma once
// The JSON side of foreign checkpoints: reading and writing files, config.json's
// "quantization_config", a tool's own config file merged under it, and typed field access.
#include <qlm/core/error.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

namespace qlm::detail::interop {

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

// A quantizer's configuration and where it came from (for messages).
struct QuantConfigJson {
    nlohmann::json j;
    std::string origin;
};

// The tool's own file (tool_file, e.g. quantize_config.json; older versions write only that one)
// merged with config.json's quantization_config, which wins where both say something.
// Throws format_error "not an <tool> checkpoint" when neither exists.
inline QuantConfigJson read_quant_config(const std::filesystem::path& dir, const char* tool_file, const char* tool) {
    QuantConfigJson c{nlohmann::json::object(), {}};
    if (std::filesystem::exists(dir / tool_file)) {
        const nlohmann::json q = read_json(dir / tool_file);
        if (!q.is_object()) throw format_error("qlm: " + (dir / tool_file).string() + ": expected a JSON object");
        c.j.update(q);
        c.origin = (dir / tool_file).string();
    }
    const nlohmann::json qc = quantization_config_of(dir);
    if (qc.is_object()) {
        c.j.update(qc);
        c.origin = (dir / "config.json").string() + " quantization_config" + (c.origin.empty() ? "" : " (+ " + c.origin + ")");
    }
    if (c.origin.empty())
        throw format_error("qlm: " + dir.string() + ": neither config.json 'quantization_config' nor " + tool_file + ": not an " +
                           tool + " checkpoint");
    return c;
}

// Config::from_json over the merged configuration of dir (see read_quant_config).
template <class Config>
Config read_config_as(const std::filesystem::path& dir, const char* tool_file, const char* tool) {
    const QuantConfigJson c = read_quant_config(dir, tool_file, tool);
    return Config::from_json(c.j, c.origin);
}

// Typed field access with messages naming the file and the key.
class ConfigReader {
public:
    // Throws format_error when the configuration names a quant_method other than `method`.
    ConfigReader(const nlohmann::json& j, std::string origin, const char* method) : j_(j), origin_(std::move(origin)) {
        if (has("quant_method") && string("quant_method") != method)
            throw format_error("qlm: " + origin_ + ": quant_method '" + string("quant_method") + "' is not '" + method + "'");
    }

    bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }
    long long integer(const char* key) const {
        const auto& v = j_.at(key);
        if (!v.is_number_integer()) throw format_error("qlm: " + origin_ + ": '" + key + "' must be an integer, found " + v.dump());
        return v.get<long long>();
    }
    bool boolean(const char* key) const {
        const auto& v = j_.at(key);
        if (!v.is_boolean()) throw format_error("qlm: " + origin_ + ": '" + key + "' must be true or false, found " + v.dump());
        return v.get<bool>();
    }
    std::string string(const char* key) const {
        const auto& v = j_.at(key);
        if (!v.is_string()) throw format_error("qlm: " + origin_ + ": '" + key + "' must be a string, found " + v.dump());
        return v.get<std::string>();
    }
    // group_size: positive, or -1 for one group per output channel.
    long long group_size(const char* key) const {
        const long long g = integer(key);
        if (g == 0 || g < -1) throw format_error("qlm: " + origin_ + ": group_size must be positive or -1, found " + std::to_string(g));
        return g;
    }

private:
    const nlohmann::json& j_;
    std::string origin_;
};

}  // namespace qlm::detail::interop
