// sample() over GPT-2's 50257-token vocabulary (docs/sampling.md lists the results).
//   build/release/bench/bench_sampling
#include <qlm/sched/sampler.hpp>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

namespace {

constexpr std::size_t kVocab = 50257;

// Logits like a language model's: most tokens far below a few likely ones (normal, sd 2.5), or
// flat (every token equally likely: the worst case for top-p).
std::vector<float> logits(bool flat) {
    std::vector<float> l(kVocab, 0.0f);
    if (flat) return l;
    std::mt19937 rng(1);
    std::normal_distribution<float> d(0.0f, 2.5f);
    for (auto& x : l) x = d(rng);
    return l;
}

void run(benchmark::State& state, qlm::SamplingParams p, bool flat, std::size_t history = 0) {
    const auto l = logits(flat);
    std::vector<std::int32_t> prompt(history);
    for (std::size_t i = 0; i < history; ++i) prompt[i] = static_cast<std::int32_t>((i * 7919) % kVocab);
    qlm::Sampler s(p, prompt);
    for (std::size_t i = 0; i < history; ++i) s.accept(prompt[i]);
    for (auto _ : state) benchmark::DoNotOptimize(s.sample(l));
}

qlm::SamplingParams params(float temperature, std::size_t top_k, float top_p, float min_p = 0.0f) {
    qlm::SamplingParams p;
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    return p;
}

void greedy(benchmark::State& s) { run(s, params(0.0f, 0, 1.0f), false); }
void temperature_only(benchmark::State& s) { run(s, params(0.8f, 0, 1.0f), false); }
void top_k_40(benchmark::State& s) { run(s, params(0.8f, 40, 1.0f), false); }
void top_p_09(benchmark::State& s) { run(s, params(0.8f, 0, 0.9f), false); }
void top_p_09_flat(benchmark::State& s) { run(s, params(1.0f, 0, 0.9f), true); }
void top_k_40_top_p_09(benchmark::State& s) { run(s, params(0.8f, 40, 0.9f), false); }
void min_p_005(benchmark::State& s) { run(s, params(0.8f, 0, 1.0f, 0.05f), false); }
void greedy_penalties_1000(benchmark::State& s) {
    auto p = params(0.0f, 0, 1.0f);
    p.repetition_penalty = 1.1f;
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.5f;
    run(s, p, false, 1000);
}

}  // namespace

BENCHMARK(greedy);
BENCHMARK(temperature_only);
BENCHMARK(top_k_40);
BENCHMARK(top_p_09);
BENCHMARK(top_p_09_flat);
BENCHMARK(top_k_40_top_p_09);
BENCHMARK(min_p_005);
BENCHMARK(greedy_penalties_1000);
BENCHMARK_MAIN();
