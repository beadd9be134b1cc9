#pragma once
// Calibration data: N samples of L tokens cut at seeded random offsets from a token stream (the
// GPTQ / AWQ reference recipe: random windows of a text corpus).
#include <qlm/core/error.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

namespace qlm::calibration {

struct Options {
    std::size_t samples = 128;
    std::size_t sample_tokens = 512;  // clamped to the model's context by the caller
    std::uint64_t seed = 0;
};

struct CalibrationSet {
    std::vector<std::vector<std::int32_t>> samples;
    std::size_t tokens() const noexcept {
        std::size_t n = 0;
        for (const auto& s : samples) n += s.size();
        return n;
    }
};

// Cuts options.samples windows of options.sample_tokens tokens at random offsets (seeded). A stream
// shorter than one window gives one sample of the whole stream.
inline CalibrationSet from_tokens(std::span<const std::int32_t> tokens, const Options& options) {
    if (options.samples == 0 || options.sample_tokens == 0)
        throw invalid_argument("qlm::calibration: samples and sample_tokens must be positive");
    if (tokens.size() < 2) throw invalid_argument("qlm::calibration: the calibration text has fewer than two tokens");
    CalibrationSet set;
    if (tokens.size() <= options.sample_tokens) {
        set.samples.emplace_back(tokens.begin(), tokens.end());
        return set;
    }
    std::mt19937_64 rng(options.seed);
    std::uniform_int_distribution<std::size_t> offset(0, tokens.size() - options.sample_tokens);
    for (std::size_t i = 0; i < options.samples; ++i) {
        const std::size_t at = offset(rng);
        set.samples.emplace_back(tokens.begin() + static_cast<std::ptrdiff_t>(at),
                                 tokens.begin() + static_cast<std::ptrdiff_t>(at + options.sample_tokens));
    }
    return set;
}

inline std::string read_text(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw io_error("qlm::calibration: cannot open " + path.string());
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// Tokenizes text files (concatenated, separated by newlines) and cuts samples from them.
template <class Tokenizer>
CalibrationSet from_files(const Tokenizer& tokenizer, std::span<const std::filesystem::path> files, const Options& options) {
    std::string text;
    for (const auto& f : files) {
        if (!text.empty()) text += '\n';
        text += read_text(f);
    }
    const std::vector<std::int32_t> tokens = tokenizer.encode(text);
    return from_tokens(tokens, options);
}

}  // namespace qlm::calibration
