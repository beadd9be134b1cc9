#pragma once
// Synthetic GPT-2 weights (GPT-2's initialisation: N(0, 0.02), residual projections scaled by
// 1/sqrt(2·n_layer)) for benchmarks and tests of model shapes that no bundled checkpoint has.
#include <qlm/core/thread_pool.hpp>
#include <qlm/model/load_gpt2.hpp>

#include <cmath>
#include <cstdint>
#include <random>

namespace qlm {

inline GPT2FloatWeights random_gpt2_weights(const GPT2Config& config, std::uint64_t seed = 0) {
    config.validate();
    std::mt19937_64 rng(seed);
    auto normal = [&](Shape shape, float stddev) {
        Tensor<float> t(shape);
        std::normal_distribution<float> dist(0.0f, stddev);
        for (auto& v : t.span()) v = dist(rng);
        return t;
    };
    auto layer_norm = [&](std::size_t n) {
        LayerNormWeights ln{normal(Shape{n}, 0.05f), normal(Shape{n}, 0.02f)};
        for (auto& v : ln.weight.span()) v += 1.0f;
        return ln;
    };
    const std::size_t C = config.n_embd;
    const float residual_std = 0.02f / std::sqrt(2.0f * static_cast<float>(config.n_layer));
    GPT2FloatWeights w;
    w.config = config;
    w.wte = normal(Shape{config.vocab_size, C}, 0.02f);
    w.wpe = normal(Shape{config.n_positions, C}, 0.01f);
    for (std::size_t i = 0; i < config.n_layer; ++i) {
        w.blocks.push_back({layer_norm(C),
                            DenseLinear(normal(Shape{3 * C, C}, 0.02f), normal(Shape{3 * C}, 0.02f)),
                            DenseLinear(normal(Shape{C, C}, residual_std), normal(Shape{C}, 0.02f)),
                            layer_norm(C),
                            DenseLinear(normal(Shape{config.inner(), C}, 0.02f), normal(Shape{config.inner()}, 0.02f)),
                            DenseLinear(normal(Shape{C, config.inner()}, residual_std), normal(Shape{C}, 0.02f))});
    }
    w.ln_f = layer_norm(C);
    return w;
}

// GPT-2 124M ("gpt2"): 12 layers, 12 heads, n_embd 768, context 1024, vocabulary 50257.
inline GPT2Config gpt2_124m_config() {
    GPT2Config c;
    c.n_layer = 12;
    c.n_head = 12;
    c.n_embd = 768;
    c.n_positions = 1024;
    c.vocab_size = 50257;
    return c;
}

}  // namespace qlm
