// The Backend concept and the model's use of it: a backend that records each operation runs the
// same forward pass as CpuBackend (bit for bit), the KV pool and the one-sequence cache take their
// memory from the backend, a backend that lacks an operation fails its concept, and the CUDA
// backend's host-side layouts (weights, attention tables, KV budget) are right without a GPU.
#include "test_util.hpp"

#include <qlm/backend/backend.hpp>
#include <qlm/backend/cpu/cpu_backend.hpp>
#include <qlm/backend/cuda/host_layout.hpp>
#include <qlm/engine/engine.hpp>
#include <qlm/kv/contiguous_cache.hpp>
#include <qlm/kv/paged_cache.hpp>
#include <qlm/model/quantize.hpp>
#include <qlm/model/random_weights.hpp>
#include <qlm/quant/rtn.hpp>

#include <doctest/doctest.h>

#include <map>
#include <random>
#include <string>
#include <type_traits>

namespace {

// KV memory on the host that counts what the caches ask of it.
struct CountingPoolMemory final : qlm::KVPoolMemory {
    std::size_t allocations = 0, deallocations = 0, copies = 0, bytes = 0;
    qlm::HostPoolMemory host;
    void* allocate(std::size_t n) override {
        ++allocations;
        bytes += n;
        return host.allocate(n);
    }
    void deallocate(void* p) noexcept override {
        ++deallocations;
        host.deallocate(p);
    }
    void copy(void* dst, const void* src, std::size_t n) override {
        ++copies;
        host.copy(dst, src, n);
    }
    bool host_accessible() const noexcept override { return true; }
};

// CpuBackend with every operation counted, and its KV memory counted too.
struct RecordingBackend : qlm::CpuBackend {
    static constexpr const char* name = "recording";
    static inline std::map<std::string, std::size_t> calls;
    static inline std::shared_ptr<CountingPoolMemory> memory = std::make_shared<CountingPoolMemory>();

    static std::shared_ptr<qlm::KVPoolMemory> kv_memory(qlm::ThreadPool&) { return memory; }
    static void reserve(qlm::ThreadPool& pool, qlm::ForwardWorkspace& ws, const qlm::GPT2Config& c, std::size_t rows) {
        ++calls["reserve"];
        CpuBackend::reserve(pool, ws, c, rows);
    }
    template <class Model, class Cache>
    static void embed(qlm::ThreadPool& pool, const Model& m, const qlm::GPT2Config& c, std::span<const qlm::SequenceChunk<Cache>> chunks,
                      qlm::ForwardWorkspace& ws) {
        ++calls["embed"];
        CpuBackend::embed(pool, m, c, chunks, ws);
    }
    static void layer_norm(qlm::ThreadPool& pool, const float* x, const qlm::LayerNormWeights& ln, std::size_t rows, std::size_t cols,
                           float eps, float* y) {
        ++calls["layer_norm"];
        CpuBackend::layer_norm(pool, x, ln, rows, cols, eps, y);
    }
    template <class Linear>
    static void linear(qlm::ThreadPool& pool, const Linear& l, const float* x, std::size_t m, float* y) {
        ++calls["linear"];
        CpuBackend::linear(pool, l, x, m, y);
    }
    static void gelu(qlm::ThreadPool& pool, float* x, std::size_t rows, std::size_t cols, bool exact, const qlm::Tensor<float>& s) {
        ++calls["gelu"];
        CpuBackend::gelu(pool, x, rows, cols, exact, s);
    }
    static void add(qlm::ThreadPool& pool, float* y, const float* x, std::size_t n) {
        ++calls["add"];
        CpuBackend::add(pool, y, x, n);
    }
    template <class Cache>
    static void store_kv(qlm::ThreadPool& pool, const qlm::GPT2Config& c, std::size_t layer, std::span<const qlm::SequenceChunk<Cache>> chunks,
                         qlm::ForwardWorkspace& ws) {
        ++calls["store_kv"];
        CpuBackend::store_kv(pool, c, layer, chunks, ws);
    }
    template <class Cache>
    static void attention(qlm::ThreadPool& pool, const qlm::GPT2Config& c, std::size_t layer, std::span<const qlm::SequenceChunk<Cache>> chunks,
                          qlm::ForwardWorkspace& ws) {
        ++calls["attention"];
        CpuBackend::attention(pool, c, layer, chunks, ws);
    }
    template <class Model>
    static void output_head(qlm::ThreadPool& pool, const Model& m, const qlm::GPT2Config& c, qlm::ForwardWorkspace& ws) {
        ++calls["output_head"];
        CpuBackend::output_head(pool, m, c, ws);
    }
};

// Everything but gelu.
struct NoGeluBackend {
    using context = qlm::ThreadPool;
    using workspace = qlm::ForwardWorkspace;
    static constexpr const char* name = "no-gelu";
    static constexpr bool host_memory = true;
    static void layer_norm(qlm::ThreadPool&, const float*, const qlm::LayerNormWeights&, std::size_t, std::size_t, float, float*) {}
    static void add(qlm::ThreadPool&, float*, const float*, std::size_t) {}
};

template <int B, class G, class M>
qlm::QuantTensor<B, G, M> rtn_as(std::type_identity<qlm::QuantTensor<B, G, M>>, const qlm::Tensor<float>& w) {
    return qlm::quantize_rtn<B, G, M>(w.view());
}

template <class Backend>
qlm::GPT2Model<qlm::AnyLinear, Backend> quantized_model(const qlm::GPT2Config& c) {
    qlm::ThreadPool pool(1);
    qlm::QuantizeOptions o;
    o.method = "rtn";
    o.weights = qlm::QuantSpec{4, qlm::GranularityKind::per_group, 64, false};
    o.quantize_head = true;
    auto m = qlm::quantize_gpt2(pool, qlm::random_gpt2_weights(c, 11), o).model;
    return qlm::GPT2Model<qlm::AnyLinear, Backend>(m.config(), m.wte(), m.wpe(), m.blocks(), m.ln_f(), m.untied_head(), m.tied_head());
}

}  // namespace

static_assert(qlm::BackendTypes<qlm::CpuBackend>);
static_assert(qlm::BackendWorkspace<qlm::CpuBackend>);
static_assert(qlm::BackendKVMemory<qlm::CpuBackend>);
static_assert(qlm::BackendLinear<qlm::CpuBackend, qlm::AnyLinear>);
static_assert(qlm::BackendLinear<qlm::CpuBackend, qlm::QuantLinear<qlm::QuantTensor<4, qlm::PerGroup<128>>>>);
static_assert(qlm::BackendAttention<qlm::CpuBackend, qlm::KVCache<16>::Sequence>);
static_assert(qlm::BackendAttention<qlm::CpuBackend, qlm::ContiguousKVCache>);
static_assert(qlm::BackendLayerNorm<NoGeluBackend, qlm::LayerNormWeights>);
static_assert(qlm::BackendResidual<NoGeluBackend>);
static_assert(!qlm::BackendGelu<NoGeluBackend, qlm::Tensor<float>>);
static_assert(!qlm::BackendWorkspace<NoGeluBackend>);
static_assert(!qlm::BackendLinear<NoGeluBackend, qlm::DenseLinear>);

TEST_CASE("a backend of its own runs every operation of the forward pass and gives CpuBackend's logits bit for bit") {
    const qlm::GPT2Config c = qlm_test::small_config();
    const auto cpu = quantized_model<qlm::CpuBackend>(c);
    const auto recording = quantized_model<RecordingBackend>(c);
    qlm::ThreadPool pool(2);
    const auto tokens = qlm_test::token_stream(20, c.vocab_size);
    qlm::ContiguousKVCache a(c.n_layer, c.n_positions, c.n_embd), b(c.n_layer, c.n_positions, c.n_embd);
    qlm::ForwardWorkspace wa, wb;
    RecordingBackend::calls.clear();
    const auto la = cpu.forward(pool, a, std::span<const std::int32_t>(tokens), wa);
    const auto lb = recording.forward(pool, b, std::span<const std::int32_t>(tokens), wb);
    REQUIRE(la.size() == lb.size());
    for (std::size_t i = 0; i < la.size(); ++i) REQUIRE(la[i] == lb[i]);
    auto& calls = RecordingBackend::calls;
    CHECK(calls["embed"] == 1);
    CHECK(calls["reserve"] == 1);
    CHECK(calls["layer_norm"] == 2 * c.n_layer);
    CHECK(calls["linear"] == 4 * c.n_layer);
    CHECK(calls["gelu"] == c.n_layer);
    CHECK(calls["add"] == 2 * c.n_layer);
    CHECK(calls["store_kv"] == c.n_layer);
    CHECK(calls["attention"] == c.n_layer);
    CHECK(calls["output_head"] == 1);
}

TEST_CASE("the engine's KV pool takes its memory from the backend; copy-on-write copies through it") {
    const qlm::GPT2Config c = qlm_test::small_config();
    const auto model = quantized_model<RecordingBackend>(c);
    qlm::ThreadPool pool(2);
    auto& memory = *RecordingBackend::memory;
    const std::size_t allocations = memory.allocations, copies = memory.copies;
    {
        qlm::EngineConfig config;
        config.kv_cache_bytes = 64 * qlm::KVBlockLayout<16>{c.n_layer, c.n_embd}.bytes();
        qlm::Engine<qlm::GPT2Model<qlm::AnyLinear, RecordingBackend>> engine(model, pool, config);
        CHECK(memory.allocations == allocations + 1);
        qlm::SamplingParams params;
        params.max_tokens = 6;
        params.temperature = 0.0f;
        // Three samples of one 20-token prompt share its partial last block; each copies it before writing.
        engine.add_parallel_requests(qlm_test::token_stream(20, c.vocab_size), params, 3);
        const auto outputs = engine.run_until_done();
        REQUIRE(outputs.size() == 3);
        for (const auto& out : outputs) CHECK(out.tokens.size() == 6);
        CHECK(memory.copies > copies);
    }
    CHECK(memory.deallocations == memory.allocations);
}

TEST_CASE("the one-sequence cache takes its memory from the backend too") {
    const qlm::GPT2Config c = qlm_test::small_config();
    auto memory = std::make_shared<CountingPoolMemory>();
    {
        qlm::ContiguousKVCache cache(c.n_layer, 32, c.n_embd, memory);
        CHECK(memory->allocations == 1);
        CHECK(memory->bytes == cache.bytes());
        CHECK(cache.bytes() == 2 * c.n_layer * 32 * c.n_embd * sizeof(float));
        CHECK(cache.value(0, 0) == cache.key(0, 0) + c.n_layer * 32 * c.n_embd);
    }
    CHECK(memory->deallocations == 1);
}

TEST_CASE_TEMPLATE("CUDA weight layout: the staged codes, scales and zeros give the CPU layer's weights", Scheme,
                   qlm::QuantTensor<4, qlm::PerGroup<64>, qlm::Symmetric>, qlm::QuantTensor<4, qlm::PerGroup<128>, qlm::Asymmetric>,
                   qlm::QuantTensor<3, qlm::PerGroup<64>, qlm::Asymmetric>, qlm::QuantTensor<3, qlm::PerChannel, qlm::Symmetric>,
                   qlm::QuantTensor<8, qlm::PerChannel, qlm::Symmetric>, qlm::QuantTensor<8, qlm::PerTensor, qlm::Asymmetric>,
                   qlm::QuantTensor<8, qlm::PerGroup<64>, qlm::Asymmetric>) {
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 0.5f);
    const std::size_t n = 24, k = 256;
    qlm::Tensor<float> w(qlm::Shape{n, k});
    for (float& v : w.span()) v = normal(rng);
    const Scheme q = rtn_as(std::type_identity<Scheme>{}, w);
    const qlm::QuantLinear<Scheme> layer(q);
    const qlm::cuda::QuantWeightHost h = qlm::cuda::quant_weight_host(layer.weight().any());
    CHECK(h.bits == Scheme::bits);
    CHECK(h.n == static_cast<int>(n));
    CHECK(h.k == static_cast<int>(k));
    CHECK(h.codes.size() == n * static_cast<std::size_t>(h.row_bytes));
    CHECK(h.scales.size() == n * static_cast<std::size_t>(h.groups()));
    const qlm::Tensor<float> reference = layer.dequantize();
    for (std::size_t r = 0; r < n; ++r)
        for (std::size_t c = 0; c < k; ++c)
            REQUIRE(h.value(static_cast<int>(r), static_cast<int>(c)) == reference.data()[r * k + c]);
}

TEST_CASE("CUDA weight layout: 16-bit weights are staged row-major and exactly") {
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    qlm::Tensor<float> w(qlm::Shape{40, 96});
    for (float& v : w.span()) v = normal(rng);
    const qlm::DenseLinear dense(w, qlm::Tensor<float>());
    const qlm::HalfLinear<qlm::fp16_t> f16(dense);
    const qlm::HalfLinear<qlm::bf16_t> b16(dense);
    const auto f16_bits = qlm::cuda::half_weight_host<qlm::fp16_t>(f16);
    const auto b16_bits = qlm::cuda::half_weight_host<qlm::bf16_t>(b16);
    for (std::size_t r = 0; r < 40; ++r)
        for (std::size_t c = 0; c < 96; ++c) {
            const float v = w.data()[r * 96 + c];
            REQUIRE(f16_bits[r * 96 + c] == qlm::float_to_fp16(v));
            REQUIRE(b16_bits[r * 96 + c] == qlm::float_to_bf16(v));
        }
}

TEST_CASE("CUDA attention tables: each query row sees its own sequence's rows, causally, in a paged pool") {
    const std::size_t n_layer = 2, n_embd = 8;
    qlm::KVCache<4> cache(qlm::KVCacheConfig{n_layer, n_embd, 32 * qlm::KVBlockLayout<4>{n_layer, n_embd}.bytes()});
    auto a = cache.add_sequence(), b = cache.add_sequence();
    a.reserve(7);
    a.set_length(7);  // 7 cached positions, 2 new
    b.reserve(3);     // a new prompt of 3
    const std::vector<std::int32_t> ta{5, 6}, tb{1, 2, 3};
    using Seq = qlm::KVCache<4>::Sequence;
    const std::vector<qlm::SequenceChunk<Seq>> chunks{{&a, ta}, {&b, tb}};
    for (const auto& ch : chunks) ch.cache->reserve(ch.cache->length() + ch.tokens.size());
    qlm::cuda::AttentionTables t;
    qlm::cuda::build_attention_tables(std::span<const qlm::SequenceChunk<Seq>>(chunks), 1, t);
    REQUIRE(t.rows.size() == 5);
    CHECK(t.max_keys == 9);
    CHECK(t.keys.size() == 9 + 3);
    CHECK(t.rows[0].first_kv == 0);
    CHECK(t.rows[0].n_keys == 8);
    CHECK(t.rows[1].n_keys == 9);
    for (int i = 0; i < 3; ++i) {
        CHECK(t.rows[2 + static_cast<std::size_t>(i)].first_kv == 9);
        CHECK(t.rows[2 + static_cast<std::size_t>(i)].n_keys == i + 1);
    }
    for (std::size_t p = 0; p < 9; ++p) {
        CHECK(t.keys[p] == a.key(1, p));
        CHECK(t.values[p] == a.value(1, p));
    }
    for (std::size_t p = 0; p < 3; ++p) CHECK(t.keys[9 + p] == b.key(1, p));

    std::vector<float*> keys, values;
    qlm::cuda::build_store_tables(std::span<const qlm::SequenceChunk<Seq>>(chunks), 0, keys, values);
    REQUIRE(keys.size() == 5);
    CHECK(keys[0] == a.key(0, 7));
    CHECK(values[1] == a.value(0, 8));
    CHECK(keys[2] == b.key(0, 0));
    std::vector<std::int32_t> tokens, positions;
    qlm::cuda::build_embedding_rows(std::span<const qlm::SequenceChunk<Seq>>(chunks), tokens, positions);
    CHECK(tokens == std::vector<std::int32_t>{5, 6, 1, 2, 3});
    CHECK(positions == std::vector<std::int32_t>{7, 8, 0, 1, 2});
}

TEST_CASE("CUDA KV budget: a fraction of free device memory; a fraction outside (0, 1] is refused") {
    CHECK(qlm::cuda::kv_budget_from_free(80'000'000'000ull, 0.9) == 72'000'000'000ull);
    CHECK(qlm::cuda::kv_budget_from_free(1000, 1.0) == 1000);
    CHECK_THROWS_AS(qlm::cuda::kv_budget_from_free(1000, 0.0), qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::cuda::kv_budget_from_free(1000, 1.5), qlm::invalid_argument);
}

TEST_CASE("CUDA weight layout refuses what its kernels cannot read") {
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 0.5f);
    qlm::Tensor<float> w(qlm::Shape{4, 128});
    for (float& v : w.span()) v = normal(rng);
    using Q2 = qlm::QuantTensor<2, qlm::PerGroup<64>, qlm::Symmetric>;
    const qlm::QuantLinear<Q2> two_bit(rtn_as(std::type_identity<Q2>{}, w));
    CHECK_THROWS_AS(qlm::cuda::quant_weight_host(two_bit.weight().any()), qlm::invalid_argument);
}
