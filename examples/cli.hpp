#pragma once
// Minimal command-line parsing shared by the qlm example tools.
#include <qlm/core/error.hpp>
#include <qlm/core/thread_pool.hpp>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <exception>
#include <map>
#include <string>
#include <string_view>
#include <thread>
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

    // --threads N (0, the default: every hardware thread). Refuses more than 8 threads per hardware
    // thread: qlm's pool splits every loop into one chunk per thread and waits for the slowest, so
    // threads beyond the cores only take turns (spinning at each loop's end); a number that large
    // is a typo, not a setting.
    std::size_t threads() const {
        const std::size_t n = number<std::size_t>("threads", 0);
        const std::size_t hardware = std::thread::hardware_concurrency();
        const std::size_t limit = hardware ? std::min(ThreadPool::max_threads(), 8 * hardware) : ThreadPool::max_threads();
        if (n > limit)
            throw invalid_argument("option --threads: " + std::to_string(n) + " is more than this machine can use: at most " +
                                   std::to_string(limit) + " (8 per hardware thread; it has " + std::to_string(hardware) +
                                   "), or 0 for one per hardware thread");
        return n;
    }

private:
    void used(const std::string& name) const { known_[name] = true; }
    std::map<std::string, std::vector<std::string>> values_;
    mutable std::map<std::string, bool> known_;
};

// A tool's last word on an exception: "<tool>: error: <message>" on stderr, and exit status 1.
// Every tool's main() ends in `catch (const std::exception& e) { return qlm::cli::fail("qlm-x", e); }`,
// so a bad allocation or a refused thread is reported like a bad option, never as an abort.
inline int fail(const char* tool, const std::exception& e) {
    std::string_view message = e.what();
    if (message.starts_with("qlm: ")) message.remove_prefix(5);  // the tool's name already says where
    std::fprintf(stderr, "%s: error: %.*s\n", tool, static_cast<int>(message.size()), message.data());
    return 1;
}

}  // namespace qlm::cli
