#pragma once
// Internals of the GPT-2 tokenizer (qlm/tokenizer/gpt2_tokenizer.hpp): GPT-2's byte alphabet,
// UTF-8 decoding, code point classes, the pre-tokenizer and the merge table.
#include <qlm/core/error.hpp>
#include <qlm/tokenizer/detail/unicode_tables.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qlm::detail {

// ---- GPT-2's reversible byte <-> printable code point alphabet (bytes_to_unicode) ------------------

struct byte_alphabet {
    std::array<char32_t, 256> byte_to_cp{};
    std::array<std::int16_t, 0x144> cp_to_byte{};  // -1 where the code point is not in the alphabet
};

constexpr byte_alphabet make_byte_alphabet() {
    byte_alphabet a{};
    for (auto& v : a.cp_to_byte) v = -1;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        const char32_t cp = printable ? static_cast<char32_t>(b) : next++;
        a.byte_to_cp[static_cast<std::size_t>(b)] = cp;
        a.cp_to_byte[cp] = static_cast<std::int16_t>(b);
    }
    return a;
}
inline constexpr byte_alphabet gpt2_bytes = make_byte_alphabet();

// ---- UTF-8 -----------------------------------------------------------------------------------------

struct utf8_char {
    char32_t cp;
    std::uint32_t len;  // bytes consumed (1 for an invalid byte)
    bool valid;
};

// Decodes the well-formed UTF-8 sequence at s[i] (Unicode table 3-7); anything else is one invalid byte.
inline utf8_char decode_utf8(std::string_view s, std::size_t i) noexcept {
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char b0 = byte(i);
    if (b0 < 0x80) return {b0, 1, true};
    const std::size_t left = s.size() - i;
    const auto cont = [&](std::size_t k, unsigned char lo = 0x80, unsigned char hi = 0xBF) {
        return k < left && byte(i + k) >= lo && byte(i + k) <= hi;
    };
    if (b0 >= 0xC2 && b0 <= 0xDF && cont(1)) return {char32_t(b0 & 0x1F) << 6 | (byte(i + 1) & 0x3F), 2, true};
    if (b0 >= 0xE0 && b0 <= 0xEF) {
        const unsigned char lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
        if (cont(1, lo, hi) && cont(2))
            return {char32_t(b0 & 0x0F) << 12 | char32_t(byte(i + 1) & 0x3F) << 6 | (byte(i + 2) & 0x3F), 3, true};
    }
    if (b0 >= 0xF0 && b0 <= 0xF4) {
        const unsigned char lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
        if (cont(1, lo, hi) && cont(2) && cont(3))
            return {char32_t(b0 & 0x07) << 18 | char32_t(byte(i + 1) & 0x3F) << 12 |
                        char32_t(byte(i + 2) & 0x3F) << 6 | (byte(i + 3) & 0x3F),
                    4, true};
    }
    return {0xFFFD, 1, false};
}

inline void append_utf8(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

// ---- code point classes ----------------------------------------------------------------------------

using unicode::cp_class;

inline cp_class classify_slow(char32_t cp) noexcept {
    const auto* first = std::begin(unicode::cp_ranges);
    const auto* last = std::end(unicode::cp_ranges);
    const auto* it = std::upper_bound(first, last, cp, [](char32_t c, const unicode::cp_range& r) { return c < r.lo; });
    if (it == first) return cp_class::other;
    --it;
    return cp <= it->hi ? it->cls : cp_class::other;
}

inline constexpr std::array<cp_class, 128> ascii_classes = [] {
    std::array<cp_class, 128> t{};
    for (const auto& r : unicode::cp_ranges)
        for (char32_t c = r.lo; c <= r.hi && c < 128; ++c) t[c] = r.cls;
    return t;
}();

// Class and byte length of the character at s[i] (i < s.size()).
inline std::pair<cp_class, std::uint32_t> char_at(std::string_view s, std::size_t i) noexcept {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) return {ascii_classes[b], 1};
    const utf8_char c = decode_utf8(s, i);
    return {c.valid ? classify_slow(c.cp) : cp_class::other, c.len};
}

// ---- pre-tokenizer ---------------------------------------------------------------------------------

// Calls emit(std::string_view piece) for each match of GPT-2's regex, in order; the pieces cover
// `text` exactly. Equivalent to String.prototype.matchAll with
//   /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu
template <class Emit>
void pretokenize(std::string_view text, Emit&& emit) {
    const std::size_t n = text.size();
    std::size_t p = 0;
    while (p < n) {
        const char b = text[p];
        // 's 't 're 've 'm 'll 'd (ASCII, lower case only, like the reference)
        if (b == '\'' && p + 1 < n) {
            const char x = text[p + 1];
            std::size_t m = 0;
            if (x == 's' || x == 't' || x == 'm' || x == 'd') {
                m = 2;
            } else if (p + 2 < n) {
                const char y = text[p + 2];
                if ((x == 'r' && y == 'e') || (x == 'v' && y == 'e') || (x == 'l' && y == 'l')) m = 3;
            }
            if (m != 0) {
                emit(text.substr(p, m));
                p += m;
                continue;
            }
        }
        auto [cls, len] = char_at(text, p);
        const std::size_t start = p;
        if (b == ' ' && p + 1 < n) {  // " ?X+" : a space joins a following letter/number/other run
            const auto [cls2, len2] = char_at(text, p + 1);
            if (cls2 != cp_class::space) {
                cls = cls2;
                len = len2;
                p += 1;
            }
        }
        if (cls != cp_class::space) {  // \p{L}+ | \p{N}+ | [^\s\p{L}\p{N}]+
            std::size_t e = p + len;
            while (e < n) {
                const auto [c, l] = char_at(text, e);
                if (c != cls) break;
                e += l;
            }
            emit(text.substr(start, e - start));
            p = e;
            continue;
        }
        // \s+(?!\S) | \s+ : a whitespace run before non-space gives up its last character
        std::size_t e = p, last = p;
        while (e < n) {
            const auto [c, l] = char_at(text, e);
            if (c != cp_class::space) break;
            last = e;
            e += l;
        }
        const std::size_t end = (e == n || last == p) ? e : last;
        emit(text.substr(p, end - p));
        p = end;
    }
}

// ---- merge table: (left id, right id) -> (rank, merged id), open addressing --------------------------

class merge_table {
public:
    struct entry {
        std::uint64_t key = empty_key;
        std::int32_t rank = 0;
        std::int32_t merged = 0;
    };

    void reserve(std::size_t n) {
        std::size_t cap = 16;
        while (cap < 2 * n) cap *= 2;
        slots_.assign(cap, entry{});
        size_ = 0;
    }
    // Inserts or overwrites (a later duplicate merge line wins, as in encoder.py and Encoder.js).
    void insert(std::int32_t a, std::int32_t b, std::int32_t rank, std::int32_t merged) {
        if (2 * (size_ + 1) > slots_.size()) grow();
        entry& e = slot(key(a, b));
        if (e.key == empty_key) ++size_;
        e = {key(a, b), rank, merged};
    }
    const entry* find(std::int32_t a, std::int32_t b) const noexcept {
        if (slots_.empty()) return nullptr;
        const std::uint64_t k = key(a, b);
        const std::size_t mask = slots_.size() - 1;
        for (std::size_t i = hash(k) & mask;; i = (i + 1) & mask) {
            if (slots_[i].key == k) return &slots_[i];
            if (slots_[i].key == empty_key) return nullptr;
        }
    }
    std::size_t size() const noexcept { return size_; }

private:
    static constexpr std::uint64_t empty_key = ~std::uint64_t{0};
    static std::uint64_t key(std::int32_t a, std::int32_t b) noexcept {
        return std::uint64_t(std::uint32_t(a)) << 32 | std::uint32_t(b);
    }
    static std::size_t hash(std::uint64_t k) noexcept {
        return static_cast<std::size_t>((k * 0x9E3779B97F4A7C15ull) >> 29);
    }
    entry& slot(std::uint64_t k) noexcept {
        const std::size_t mask = slots_.size() - 1;
        std::size_t i = hash(k) & mask;
        while (slots_[i].key != empty_key && slots_[i].key != k) i = (i + 1) & mask;
        return slots_[i];
    }
    void grow() {
        std::vector<entry> old = std::move(slots_);
        reserve(std::max<std::size_t>(16, old.size()));
        for (const entry& e : old)
            if (e.key != empty_key) {
                slot(e.key) = e;
                ++size_;
            }
    }
    std::vector<entry> slots_;
    std::size_t size_ = 0;
};

// Concatenates strings (and string views, C strings, chars) for error messages.
template <class... Parts>
std::string cat(const Parts&... parts) {
    std::string s;
    ((s += parts), ...);
    return s;
}

inline std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw io_error(cat("cannot open '", path.string(), "'"));
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) throw io_error(cat("cannot read '", path.string(), "'"));
    return std::move(ss).str();
}

inline nlohmann::json parse_json_file(const std::filesystem::path& path) {
    const std::string text = read_file(path);
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw format_error(cat("'", path.string(), "': invalid JSON: ", e.what()));
    }
}

}  // namespace qlm::detail
