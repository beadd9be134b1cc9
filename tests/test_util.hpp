// Helpers shared by the model-level tests: a small GPT-2 shape, a deterministic token stream, the
// logits of a prompt's last token, a max-norm relative error and per-process temporary folders.
#pragma once

#include <qlm/kv/contiguous_cache.hpp>
#include <qlm/model/config.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/model/quantized_linear.hpp>
#include <qlm/quant/calibration.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <unistd.h>

namespace qlm_test {

// 2 layers, 4 heads, n_embd 128 (one group of 128 or two of 64 per row), 300-token vocabulary.
inline qlm::GPT2Config small_config() {
    qlm::GPT2Config c;
    c.n_layer = 2;
    c.n_head = 4;
    c.n_embd = 128;
    c.n_positions = 64;
    c.vocab_size = 300;
    return c;
}

inline std::vector<std::int32_t> token_stream(std::size_t n, std::size_t vocab) {
    std::vector<std::int32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = static_cast<std::int32_t>((i * 37 + (i / 5) * 11) % vocab);
    return t;
}

// `samples` calibration samples of `sample_tokens` tokens cut from `stream` (default seed).
inline qlm::calibration::CalibrationSet calibration_from(std::span<const std::int32_t> stream, std::size_t samples,
                                                         std::size_t sample_tokens) {
    qlm::calibration::Options options;
    options.samples = samples;
    options.sample_tokens = sample_tokens;
    return qlm::calibration::from_tokens(stream, options);
}

inline std::vector<float> last_logits(qlm::ThreadPool& pool, const qlm::GPT2Model<qlm::AnyLinear>& model,
                                      std::span<const std::int32_t> tokens) {
    const auto& c = model.config();
    qlm::ContiguousKVCache cache(c.n_layer, c.n_positions, c.n_embd);
    qlm::ForwardWorkspace ws;
    const auto logits = model.forward(pool, cache, tokens, ws);
    return {logits.begin(), logits.end()};
}

// max |a - b| / max |b|
inline double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
        scale = std::max(scale, std::abs(static_cast<double>(b[i])));
    }
    return diff / scale;
}

// An empty folder under the system's temp directory, unique to this process (ctest runs tests in parallel).
inline std::filesystem::path temp_dir(const std::string& name) {
    const auto p = std::filesystem::temp_directory_path() / ("qlm_test_" + std::to_string(::getpid()) + "_" + name);
    std::filesystem::remove_all(p);
    std::filesystem::create_directories(p);
    return p;
}

}  // namespace qlm_test
