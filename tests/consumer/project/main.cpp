// A downstream program: builds a tiny random GPT-2 with qlm and runs one forward pass.
#include <qlm/qlm.hpp>

#include <cmath>
#include <cstdio>
#include <random>

int main() {
    qlm::GPT2Config config;
    config.n_layer = 1;
    config.n_head = 2;
    config.n_embd = 64;
    config.n_positions = 16;
    config.vocab_size = 100;
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    auto random = [&](qlm::Shape shape) {
        qlm::Tensor<float> t(shape);
        for (auto& v : t.span()) v = normal(rng);
        return t;
    };
    auto ones = [](std::size_t n) {
        qlm::Tensor<float> t(qlm::Shape{n});
        for (auto& v : t.span()) v = 1.0f;
        return t;
    };
    const std::size_t C = config.n_embd;
    std::vector<qlm::GPT2Block<qlm::DenseLinear>> blocks(1);
    blocks[0] = {{ones(C), random({C})},
                 qlm::DenseLinear(random({3 * C, C}), random({3 * C})),
                 qlm::DenseLinear(random({C, C}), random({C})),
                 {ones(C), random({C})},
                 qlm::DenseLinear(random({4 * C, C}), random({4 * C})),
                 qlm::DenseLinear(random({C, 4 * C}), random({C}))};
    const qlm::GPT2Model<qlm::DenseLinear> model(config, random({config.vocab_size, C}), random({config.n_positions, C}),
                                                 std::move(blocks), {ones(C), random({C})});
    qlm::ThreadPool pool(2);
    qlm::ContiguousKVCache cache(config.n_layer, config.n_positions, C);
    qlm::ForwardWorkspace ws;
    const std::vector<std::int32_t> tokens{1, 2, 3};
    const auto logits = model.forward(pool, cache, std::span<const std::int32_t>(tokens), ws);
    for (float v : logits)
        if (!std::isfinite(v)) return 1;
    std::printf("qlm consumer: %zu logits, cache length %zu\n", logits.size(), cache.length());
    return cache.length() == 3 ? 0 : 1;
}
