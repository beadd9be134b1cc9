// Microbenchmarks for the CPU GEMM kernels at GPT-2 124M shapes.
//   GEMV (M = 1, decode): weights rotate through copies totalling >= 128 MiB, so every call reads
//   them from DRAM as a real decode step does; counter GB/s = weight bytes read per second.
//   GEMM (M = 128 / 512, prefill): counter GFLOP/s (GOP/s for integer kernels) = 2*M*N*K per second.
// Args: {N, K, M, threads}. Run with --benchmark_repetitions=3 and compare medians.
// Rates are per CPU second of the calling thread (Google Benchmark's default), which on a shared,
// oversubscribed machine tracks the kernel better than wall time; for threads = 2 the callee's
// share is only counted through the wall-clock-bounded caller time, so read those with care.
#include <qlm/backend/cpu/gemm.hpp>
#include <qlm/quant/packing.hpp>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <vector>

namespace {

using qlm::cpu::Isa;

qlm::ThreadPool& pool_of(std::size_t threads) {
    static qlm::ThreadPool p1(1), p2(2);
    return threads == 1 ? p1 : p2;
}

std::vector<float> random_floats(std::size_t count, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> v(count);
    for (auto& f : v) f = dist(rng);
    return v;
}

std::size_t copies_for(std::size_t bytes, std::size_t m) {
    if (m > 1) return 1;
    const std::size_t target = std::size_t{128} << 20;
    return bytes >= target ? 1 : (target + bytes - 1) / bytes;
}

void set_counters(benchmark::State& state, double weight_bytes, double ops) {
    state.counters["GB/s"] = benchmark::Counter(weight_bytes, benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::OneK::kIs1000);
    state.counters["GFLOP/s"] = benchmark::Counter(ops, benchmark::Counter::kIsIterationInvariantRate,
                                                   benchmark::Counter::OneK::kIs1000);
}

void BM_f32(benchmark::State& state, Isa isa) {
    const std::size_t n = state.range(0), k = state.range(1), m = state.range(2), t = state.range(3);
    const std::size_t copies = copies_for(n * k * 4, m);
    std::vector<std::vector<float>> w;
    for (std::size_t c = 0; c < copies; ++c) w.push_back(random_floats(n * k, 1 + c));
    const auto x = random_floats(m * k, 100), bias = random_floats(n, 101);
    std::vector<float> y(m * n);
    std::size_t c = 0;
    for (auto _ : state) {
        qlm::cpu::gemm_f32(pool_of(t), x.data(), m, k, w[c].data(), n, bias.data(), y.data(), isa);
        benchmark::DoNotOptimize(y.data());
        c = (c + 1) % copies;
    }
    set_counters(state, double(n) * k * 4, 2.0 * m * n * k);
}

// A random quantized matrix (codes packed with qlm::Packing) and its QuantMatrixRef.
struct QuantWeights {
    std::vector<std::uint8_t> packed;
    std::vector<float> scales;
    qlm::QuantMatrixRef ref;
};

template <int Bits>
std::unique_ptr<QuantWeights> make_quant(std::size_t n, std::size_t k, std::size_t gs, unsigned seed) {
    auto q = std::make_unique<QuantWeights>();
    std::mt19937 rng(seed);
    const std::size_t rb = qlm::Packing<Bits>::row_bytes(k);
    q->packed.resize(n * rb);
    std::vector<std::uint8_t> codes(k);
    for (std::size_t j = 0; j < n; ++j) {
        for (auto& c : codes) c = static_cast<std::uint8_t>(rng() & ((1u << Bits) - 1));
        qlm::Packing<Bits>::pack_row(codes, std::span<std::uint8_t>(q->packed.data() + j * rb, rb));
    }
    q->scales.assign(n * (k / gs), 0.01f);
    q->ref.bits = Bits, q->ref.n = n, q->ref.k = k, q->ref.group_size = gs, q->ref.packed = q->packed.data();
    q->ref.row_bytes = rb, q->ref.scales = q->scales.data(), q->ref.zeros = nullptr;
    return q;
}

// Weight-only quantized (float activations), group size 128. Bytes = codes + scales.
template <int Bits>
void BM_wq(benchmark::State& state, Isa isa) {
    const std::size_t n = state.range(0), k = state.range(1), m = state.range(2), t = state.range(3);
    const std::size_t bytes = n * qlm::Packing<Bits>::row_bytes(k) + n * (k / 128) * 4;
    const std::size_t copies = copies_for(bytes, m);
    std::vector<std::unique_ptr<QuantWeights>> w;
    for (std::size_t c = 0; c < copies; ++c) w.push_back(make_quant<Bits>(n, k, 128, 1 + c));
    const auto x = random_floats(m * k, 100), bias = random_floats(n, 101);
    std::vector<float> y(m * n);
    std::size_t c = 0;
    for (auto _ : state) {
        qlm::cpu::gemm_quant(pool_of(t), x.data(), m, w[c]->ref, bias.data(), y.data(), isa);
        benchmark::DoNotOptimize(y.data());
        c = (c + 1) % copies;
    }
    set_counters(state, double(bytes), 2.0 * m * n * k);
}

void BM_w4(benchmark::State& state, Isa isa) { BM_wq<4>(state, isa); }
void BM_w3(benchmark::State& state, Isa isa) { BM_wq<3>(state, isa); }

// W8A8, per-channel 8-bit weights, dynamic per-token activations; the activation quantization is
// part of the timed work (as in a real layer).
void BM_w8a8(benchmark::State& state, Isa isa) {
    const std::size_t n = state.range(0), k = state.range(1), m = state.range(2), t = state.range(3);
    const std::size_t bytes = n * k + n * 4;
    const std::size_t copies = copies_for(bytes, m);
    std::vector<std::unique_ptr<QuantWeights>> w;
    for (std::size_t c = 0; c < copies; ++c) w.push_back(make_quant<8>(n, k, k, 1 + c));
    const auto x = random_floats(m * k, 100), bias = random_floats(n, 101);
    std::vector<std::int8_t> xq(m * k);
    std::vector<float> xs(m);
    std::vector<std::int32_t> sums(m);
    std::vector<float> y(m * n);
    std::size_t c = 0;
    for (auto _ : state) {
        qlm::cpu::quantize_activations_s8(x.data(), m, k, xq.data(), xs.data());
        qlm::cpu::activation_group_sums(xq.data(), m, k, k, sums.data());
        qlm::cpu::gemm_w8a8(pool_of(t), xq.data(), xs.data(), sums.data(), m, w[c]->ref, bias.data(), y.data(), isa);
        benchmark::DoNotOptimize(y.data());
        c = (c + 1) % copies;
    }
    set_counters(state, double(bytes), 2.0 * m * n * k);
}

void gemv_args(benchmark::internal::Benchmark* b) {
    for (int t : {1, 2})
        for (auto [n, k] : {std::pair{2304, 768}, {768, 768}, {3072, 768}, {768, 3072}, {50257, 768}}) b->Args({n, k, 1, t});
    b->Unit(benchmark::kMicrosecond);
}
void gemm_args(benchmark::internal::Benchmark* b) {
    for (int t : {1, 2})
        for (int m : {128, 512})
            for (auto [n, k] : {std::pair{2304, 768}, {768, 768}, {3072, 768}, {768, 3072}}) b->Args({n, k, m, t});
    b->Unit(benchmark::kMillisecond);
}
void small_args(benchmark::internal::Benchmark* b) {
    b->Args({768, 768, 1, 1})->Args({768, 768, 16, 1})->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK_CAPTURE(BM_f32, gemv, Isa::automatic)->Apply(gemv_args);
BENCHMARK_CAPTURE(BM_f32, gemm, Isa::automatic)->Apply(gemm_args);
BENCHMARK_CAPTURE(BM_w8a8, gemv, Isa::automatic)->Apply(gemv_args);
BENCHMARK_CAPTURE(BM_w8a8, gemm, Isa::automatic)->Apply(gemm_args);
BENCHMARK_CAPTURE(BM_w4, gemv_w4g128, Isa::automatic)->Apply(gemv_args);
BENCHMARK_CAPTURE(BM_w4, gemm_w4g128, Isa::automatic)->Apply(gemm_args);
BENCHMARK_CAPTURE(BM_w3, gemv_w3g128, Isa::automatic)->Apply(gemv_args);
BENCHMARK_CAPTURE(BM_w3, gemm_w3g128, Isa::automatic)->Apply(gemm_args);

// Scalar reference vs the fast path on one small shape (ratios).
BENCHMARK_CAPTURE(BM_f32, scalar_ref, Isa::scalar)->Apply(small_args);
BENCHMARK_CAPTURE(BM_f32, fast_small, Isa::automatic)->Apply(small_args);
BENCHMARK_CAPTURE(BM_w4, scalar_ref_w4, Isa::scalar)->Apply(small_args);
BENCHMARK_CAPTURE(BM_w4, fast_small_w4, Isa::automatic)->Apply(small_args);
BENCHMARK_CAPTURE(BM_w8a8, scalar_ref, Isa::scalar)->Apply(small_args);
BENCHMARK_CAPTURE(BM_w8a8, fast_small, Isa::automatic)->Apply(small_args);
