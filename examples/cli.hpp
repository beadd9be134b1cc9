#pragma once
// Minimal command-line parsing shared by the qlm example tools.
#include <qlm/core/error.hpp>

#include <charconv>
#include <cstdio>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace qlm::cli {

class Args {
public:
    // flags: options that take no value.
    Args(int argc, char** argv, std::vector<std::string> flags = {}) {
        for (int i = 1; i < argc; ++i) {
            std::string arg = argv[i];
            if (arg.rfind("--", 0) != 0) throw invalid_argument("unexpected argument '" + arg + "'");
            if (const auto eq = arg.find('='); eq != std::string::npos) {
                values_[arg.substr(2, eq - 2)].push_back(arg.substr(eq + 1));
                continue;
            }
            const std::string name = arg.substr(2);
            bool is_flag = false;
            for (const auto& f : flags) is_flag = is_flag || f == name;
            if (is_flag) {
                values_[name].push_back("1");
            } else {
                if (i + 1 >= argc) throw invalid_argument("option --" + name + " needs a value");
                values_[name].push_back(argv[++i]);
            }
        }
    }

    bool has(const std::string& name) const {
        used(name);
        return values_.count(name) != 0;
    }
    std::string get(const std::string& name, std::string fallback) const {
        used(name);
        return has(name) ? values_.at(name).back() : fallback;
    }
    std::vector<std::string> all(const std::string& name) const {
        used(name);
        return has(name) ? values_.at(name) : std::vector<std::string>{};
    }
    template <class T>
    T number(const std::string& name, T fallback) const {
        used(name);
        if (!has(name)) return fallback;
        const std::string& s = values_.at(name).back();
        T value{};
        const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
        if (ec != std::errc() || end != s.data() + s.size())
            throw invalid_argument("option --" + name + ": '" + s + "' is not a valid number");
        return value;
    }
    // Throws for options nobody asked for (typos).
    void reject_unknown() const {
        for (const auto& [name, v] : values_)
            if (!known_.count(name)) throw invalid_argument("unknown option --" + name);
    }

private:
    void used(const std::string& name) const { known_[name] = true; }
    std::map<std::string, std::vector<std::string>> values_;
    mutable std::map<std::string, bool> known_;
};

}  // namespace qlm::cli
