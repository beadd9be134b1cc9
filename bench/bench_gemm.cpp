// Microbenchmarks for the CPU GEMM kernels at GPT-2 124M shapes, M = 1 (decode), 16, 64 (batched
// decode) and 256 (prefill), 1 and 2 threads.
//   Counters: GB/s = weight bytes read per second; GOP/s = 2·M·N·K per second (multiply-adds of
//   the integer kernels count as float ones do); %bw and %ops = those against this machine's peak,
//   measured at start-up by a streaming read over 512 MiB and by a loop of independent FMAs /
//   int8 dot products (VNNI vpdpbusd, or vpmaddubsw+vpmaddwd on AVX2), per thread count.
//   At M = 1 the weights rotate through copies totalling >= 256 MiB, so every call reads them from
//   DRAM as a real decode step does.
// Rates are wall-clock (UseRealTime), so the 2-thread figures include the worker's share.
// Run with --benchmark_repetitions=3 and compare medians; the context lines name the CPU and ISA.
#include <qlm/backend/cpu/gemm.hpp>
#include <qlm/core/packed_matrix.hpp>

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
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
    const std::size_t target = std::size_t{256} << 20;
    return bytes >= target ? 1 : (target + bytes - 1) / bytes;
}

// ---- the machine's peaks ------------------------------------------------------------------------

struct Peaks {
    double read_gbs[3] = {};  // by thread count (1, 2)
    double fma_gops[3] = {};  // fp32, 2 ops per multiply-add
    double int8_gops[3] = {};
};

template <class F>
double best_seconds(F&& fn, int reps = 5) {
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        fn();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

// Runs fn(t) on `threads` threads at once and returns the wall time of the slowest.
template <class F>
double on_threads(std::size_t threads, F&& fn) {
    return best_seconds([&] {
        std::vector<std::thread> ts;
        for (std::size_t t = 1; t < threads; ++t) ts.emplace_back([&, t] { fn(t); });
        fn(0);
        for (auto& t : ts) t.join();
    });
}

#if QLM_CPU_X86
QLM_INTRINSICS_BEGIN
QLM_TARGET_AVX512 std::int64_t read_avx512(const std::uint8_t* p, std::size_t n) {
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    for (std::size_t i = 0; i + 256 <= n; i += 256) {
        a = _mm512_add_epi64(a, _mm512_loadu_si512(p + i));
        b = _mm512_add_epi64(b, _mm512_loadu_si512(p + i + 64));
        c = _mm512_add_epi64(c, _mm512_loadu_si512(p + i + 128));
        d = _mm512_add_epi64(d, _mm512_loadu_si512(p + i + 192));
    }
    return _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a, b), _mm512_add_epi64(c, d)));
}
QLM_TARGET_AVX2 std::int64_t read_avx2(const std::uint8_t* p, std::size_t n) {
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (std::size_t i = 0; i + 128 <= n; i += 128) {
        a = _mm256_add_epi64(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
        b = _mm256_add_epi64(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
        c = _mm256_add_epi64(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
        d = _mm256_add_epi64(d, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
    }
    alignas(32) std::int64_t out[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(out), _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d)));
    return out[0] + out[1] + out[2] + out[3];
}
// 12 independent accumulators hide the FMA / VNNI latency; returns a value so nothing is elided.
QLM_TARGET_AVX512 float fma_loop_avx512(std::size_t iters) {
    __m512 acc[12];
    for (auto& a : acc) a = _mm512_set1_ps(1.0f);
    const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (std::size_t i = 0; i < iters; ++i)
        for (auto& a : acc) a = _mm512_fmadd_ps(a, m, c);
    __m512 s = acc[0];
    for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, acc[i]);
    return _mm512_reduce_add_ps(s);
}
QLM_TARGET_AVX2 float fma_loop_avx2(std::size_t iters) {
    __m256 acc[12];
    for (auto& a : acc) a = _mm256_set1_ps(1.0f);
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (std::size_t i = 0; i < iters; ++i)
        for (auto& a : acc) a = _mm256_fmadd_ps(a, m, c);
    __m256 s = acc[0];
    for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
    alignas(32) float out[8];
    _mm256_store_ps(out, s);
    return out[0] + out[7];
}
QLM_TARGET_AVX512 int vnni_loop_avx512(std::size_t iters) {
    __m512i acc[12];
    for (auto& a : acc) a = _mm512_setzero_si512();
    const __m512i u = _mm512_set1_epi8(3), s = _mm512_set1_epi8(-2);
    for (std::size_t i = 0; i < iters; ++i)
        for (auto& a : acc) a = _mm512_dpbusd_epi32(a, u, s);
    __m512i t = acc[0];
    for (int i = 1; i < 12; ++i) t = _mm512_add_epi32(t, acc[i]);
    return _mm512_reduce_add_epi32(t);
}
QLM_TARGET_AVX2 int maddubs_loop_avx2(std::size_t iters) {
    __m256i acc[12];
    for (auto& a : acc) a = _mm256_setzero_si256();
    const __m256i u = _mm256_set1_epi8(3), s = _mm256_set1_epi8(-2), one = _mm256_set1_epi16(1);
    for (std::size_t i = 0; i < iters; ++i)
        for (auto& a : acc) a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), one));
    __m256i t = acc[0];
    for (int i = 1; i < 12; ++i) t = _mm256_add_epi32(t, acc[i]);
    return _mm256_extract_epi32(t, 0);
}
QLM_INTRINSICS_END
#endif

const Peaks& peaks() {
    static const Peaks p = [] {
        Peaks r;
#if QLM_CPU_X86
        const bool avx512 = qlm::cpu::isa_supported(Isa::avx512);
        const std::size_t bytes = std::size_t{512} << 20;
        std::vector<std::uint8_t> buf(bytes, 1);
        volatile std::int64_t sink = 0;
        volatile float fsink = 0;
        volatile int isink = 0;
        for (std::size_t t : {1, 2}) {
            const std::size_t part = bytes / t;
            const double s = on_threads(t, [&](std::size_t i) {
                sink = sink + (avx512 ? read_avx512(buf.data() + i * part, part) : read_avx2(buf.data() + i * part, part));
            });
            r.read_gbs[t] = static_cast<double>(bytes) / s / 1e9;
            const std::size_t iters = 20'000'000;
            const double lanes = avx512 ? 16 : 8;
            const double sf = on_threads(t, [&](std::size_t) { fsink = fsink + (avx512 ? fma_loop_avx512(iters) : fma_loop_avx2(iters)); });
            r.fma_gops[t] = 2.0 * 12 * lanes * static_cast<double>(iters) * static_cast<double>(t) / sf / 1e9;
            const double si = on_threads(t, [&](std::size_t) { isink = isink + (avx512 ? vnni_loop_avx512(iters) : maddubs_loop_avx2(iters)); });
            r.int8_gops[t] = 2.0 * 12 * lanes * 4 * static_cast<double>(iters) * static_cast<double>(t) / si / 1e9;
        }
#endif
        return r;
    }();
    return p;
}

void set_counters(benchmark::State& state, double weight_bytes, double ops, bool integer, std::size_t threads) {
    using C = benchmark::Counter;
    state.counters["GB/s"] = C(weight_bytes, C::kIsIterationInvariantRate, C::OneK::kIs1000);
    state.counters["GOP/s"] = C(ops, C::kIsIterationInvariantRate, C::OneK::kIs1000);
    const Peaks& p = peaks();
    if (p.read_gbs[threads] > 0)
        state.counters["%bw"] = C(100.0 * weight_bytes / (p.read_gbs[threads] * 1e9), C::kIsIterationInvariantRate);
    const double peak_ops = integer ? p.int8_gops[threads] : p.fma_gops[threads];
    if (peak_ops > 0) state.counters["%ops"] = C(100.0 * ops / (peak_ops * 1e9), C::kIsIterationInvariantRate);
}

// ---- kernels ------------------------------------------------------------------------------------

void BM_f32(benchmark::State& state) {
    const std::size_t n = state.range(0), k = state.range(1), m = state.range(2), t = state.range(3);
    const std::size_t copies = copies_for(n * k * 4, m);
    std::vector<std::vector<float>> w;
    for (std::size_t c = 0; c < copies; ++c) w.push_back(random_floats(n * k, 1 + static_cast<unsigned>(c)));
    const auto x = random_floats(m * k, 100), bias = random_floats(n, 101);
    std::vector<float> y(m * n);
    std::size_t c = 0;
    for (auto _ : state) {
        qlm::cpu::gemm_f32(pool_of(t), x.data(), m, k, w[c].data(), n, bias.data(), y.data());
        benchmark::DoNotOptimize(y.data());
        c = (c + 1) % copies;
    }
    set_counters(state, double(n) * k * 4, 2.0 * m * n * k, false, t);
}

// Random codes with group size G (0 = per channel), repacked into panels.
template <int Bits>
qlm::cpu::PanelMatrix<Bits> make_panels(std::size_t n, std::size_t k, std::size_t gs, unsigned seed) {
    std::mt19937 rng(seed);
    const std::size_t rb = qlm::Packing<Bits>::row_bytes(k);
    std::vector<std::uint8_t> packed(n * rb), codes(k);
    for (std::size_t j = 0; j < n; ++j) {
        for (auto& c : codes) c = static_cast<std::uint8_t>(rng() & ((1u << Bits) - 1));
        qlm::Packing<Bits>::pack_row(codes, std::span<std::uint8_t>(packed.data() + j * rb, rb));
    }
    std::vector<float> scales(n * (k / gs), 0.01f);
    qlm::QuantMatrixRef ref;
    ref.bits = Bits, ref.n = n, ref.k = k, ref.group_size = gs, ref.packed = packed.data();
    ref.row_bytes = rb, ref.scales = scales.data(), ref.zeros = nullptr;
    return qlm::cpu::PanelMatrix<Bits>(ref);
}

// int8 = true: per-token int8 activations (W8A8, W4A8 ...; the activation quantization is part of
// the timed work, as in a real layer); false: float activations (weight-only).
template <int Bits, bool Int8, std::size_t Group>
void BM_quant(benchmark::State& state) {
    const std::size_t n = state.range(0), k = state.range(1), m = state.range(2), t = state.range(3);
    const std::size_t gs = Group ? Group : k;
    std::vector<qlm::cpu::PanelMatrix<Bits>> w;
    w.push_back(make_panels<Bits>(n, k, gs, 1));
    const std::size_t bytes = w[0].storage_bytes();
    const std::size_t copies = copies_for(bytes, m);
    for (std::size_t c = 1; c < copies; ++c) w.push_back(w[0]);
    const auto x = random_floats(m * k, 100), bias = random_floats(n, 101);
    std::vector<float> y(m * n);
    std::size_t c = 0;
    for (auto _ : state) {
        if constexpr (Int8)
            qlm::cpu::linear_a8(pool_of(t), x.data(), m, w[c], bias.data(), y.data());
        else
            qlm::cpu::linear_wo(pool_of(t), x.data(), m, w[c], bias.data(), y.data());
        benchmark::DoNotOptimize(y.data());
        c = (c + 1) % copies;
    }
    set_counters(state, double(bytes), 2.0 * m * n * k, Int8, t);
}

void shapes(benchmark::internal::Benchmark* b) {
    for (int t : {1, 2}) {
        for (auto [n, k] : {std::pair{2304, 768}, {768, 768}, {3072, 768}, {768, 3072}, {50257, 768}}) b->Args({n, k, 1, t});
        for (int m : {16, 64, 256})
            for (auto [n, k] : {std::pair{2304, 768}, {3072, 768}, {768, 3072}}) b->Args({n, k, m, t});
    }
    b->UseRealTime()->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(BM_f32)->Apply(shapes);
BENCHMARK(BM_quant<8, true, 0>)->Name("BM_w8a8_channel")->Apply(shapes);
BENCHMARK(BM_quant<4, true, 128>)->Name("BM_w4a8_g128")->Apply(shapes);
BENCHMARK(BM_quant<4, false, 128>)->Name("BM_w4_g128_float_act")->Apply(shapes);
BENCHMARK(BM_quant<3, true, 128>)->Name("BM_w3a8_g128")->Apply(shapes);
BENCHMARK(BM_quant<3, false, 128>)->Name("BM_w3_g128_float_act")->Apply(shapes);

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    std::string cpu = "unknown";
    if (std::ifstream in("/proc/cpuinfo"); in)
        for (std::string line; std::getline(in, line);)
            if (line.rfind("model name", 0) == 0) {
                cpu = line.substr(line.find(':') + 2);
                break;
            }
    const Peaks& p = peaks();
    char buf[256];
    benchmark::AddCustomContext("qlm_cpu", cpu);
    benchmark::AddCustomContext("qlm_isa", qlm::cpu::isa_name(qlm::cpu::best_isa()));
    std::snprintf(buf, sizeof buf, "read %.1f / %.1f GB/s, fp32 %.0f / %.0f GFLOP/s, int8 %.0f / %.0f GOP/s (1 / 2 threads)",
                  p.read_gbs[1], p.read_gbs[2], p.fma_gops[1], p.fma_gops[2], p.int8_gops[1], p.int8_gops[2]);
    benchmark::AddCustomContext("qlm_peaks", buf);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
