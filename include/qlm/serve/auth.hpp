#pragma once
// API keys: `Authorization: Bearer KEY` checked against the configured keys in constant time, so
// the time a refusal takes says nothing about how much of a key was right.
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace qlm::serve {

// Equal strings, comparing every byte of the longer one whatever differs first (no early exit).
inline bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
    const std::size_t n = a.size() > b.size() ? a.size() : b.size();
    unsigned diff = a.size() == b.size() ? 0u : 1u;
    for (std::size_t i = 0; i < n; ++i) {
        const auto x = static_cast<unsigned char>(i < a.size() ? a[i] : 0);
        const auto y = static_cast<unsigned char>(i < b.size() ? b[i] : 0);
        diff |= static_cast<unsigned>(x ^ y);
    }
    return diff == 0;
}

// "Bearer KEY" -> KEY (scheme case-insensitive, as RFC 7235 says); empty if the header is not that.
inline std::string_view bearer_token(std::string_view header) noexcept {
    constexpr std::string_view scheme = "bearer ";
    if (header.size() <= scheme.size()) return {};
    for (std::size_t i = 0; i < scheme.size(); ++i) {
        char c = header[i];
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        if (c != scheme[i]) return {};
    }
    header.remove_prefix(scheme.size());
    while (!header.empty() && header.front() == ' ') header.remove_prefix(1);
    while (!header.empty() && header.back() == ' ') header.remove_suffix(1);
    return header;
}

class ApiKeys {
public:
    ApiKeys() = default;
    explicit ApiKeys(std::vector<std::string> keys) {
        for (auto& k : keys)
            if (!k.empty()) keys_.push_back(std::move(k));
    }
    // Adds the comma-separated keys of `list` (QLM_API_KEYS), skipping empty items.
    void add_list(std::string_view list) {
        while (!list.empty()) {
            const std::size_t comma = list.find(',');
            std::string_view item = list.substr(0, comma);
            while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
            while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
            if (!item.empty()) keys_.emplace_back(item);
            if (comma == std::string_view::npos) break;
            list.remove_prefix(comma + 1);
        }
    }
    bool enabled() const noexcept { return !keys_.empty(); }
    std::size_t size() const noexcept { return keys_.size(); }

    // The matching key (checks all of them, whichever matches), or nullptr.
    const std::string* match(std::string_view presented) const noexcept {
        const std::string* found = nullptr;
        for (const auto& k : keys_)
            if (constant_time_equal(k, presented) && !found) found = &k;
        return found;
    }

private:
    std::vector<std::string> keys_;
};

}  // namespace qlm::serve
