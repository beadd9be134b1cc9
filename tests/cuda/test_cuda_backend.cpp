// The model, the engine and the evaluation on CudaBackend against CpuBackend, on the bundled
// model: logits of every weight type within its precision's bounds, the same greedy text, the
// perplexity of the held-out text within 0.1%, and the engine's batched requests. Needs a CUDA
// device; without one it says so and exits 77, which ctest reports as skipped.
#define DOCTEST_CONFIG_IMPLEMENT
#include <qlm/backend/cuda/cuda_backend.hpp>
#include <qlm/engine/engine.hpp>
#include <qlm/engine/generate.hpp>
#include <qlm/eval/perplexity.hpp>
#include <qlm/kv/contiguous_cache.hpp>
#include <qlm/model/load_gpt2.hpp>
#include <qlm/model/quantize.hpp>
#include <qlm/quant/calibration.hpp>
#include <qlm/tokenizer/gpt2_tokenizer.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace {

const std::string kModelDir = std::string(QLM_SOURCE_DIR) + "/models/gpt2-tiny-kjv";

struct Variant {
    const char* name;
    const char* method;  // quantize_gpt2's method, or "fp32"
    qlm::QuantSpec weights;
    bool int8_activations;
    double logits_bound;  // max |gpu - cpu| / max |cpu| of a prompt's last logits
};

// The GPU's fp16 / bf16 GEMMs round the activations to 16 bits too (the CPU keeps them fp32), and
// its int8 activations are rounded per row as the CPU's are: bounds from those roundings.
const Variant kVariants[] = {
    {"fp32", "fp32", {}, false, 1e-4},
    {"fp16", "fp16", {}, false, 5e-3},
    {"bf16", "bf16", {}, false, 3e-2},
    {"w8a8", "int8-dynamic", {}, false, 1e-2},
    {"w4g64", "rtn", {4, qlm::GranularityKind::per_group, 64, true}, false, 1e-4},
    {"w4g128-asym", "rtn", {4, qlm::GranularityKind::per_group, 128, false}, false, 1e-4},
    {"w3g64", "rtn", {3, qlm::GranularityKind::per_group, 64, false}, false, 1e-4},
    {"w4a8g128", "rtn", {4, qlm::GranularityKind::per_group, 128, true}, true, 1e-2},
};

qlm::GPT2Model<qlm::AnyLinear> host_model(const Variant& v) {
    qlm::ThreadPool pool(2);
    auto weights = qlm::load_gpt2_weights(kModelDir);
    if (std::string(v.method) == "fp32") return qlm::to_any_linear(std::move(weights));
    qlm::QuantizeOptions o;
    o.method = v.method;
    if (std::string(v.method) == "rtn") o.weights = v.weights;
    o.int8_activations = v.int8_activations;
    o.quantize_head = true;
    return qlm::quantize_gpt2(pool, std::move(weights), o).model;
}

using DeviceModel = qlm::GPT2Model<qlm::AnyLinear, qlm::CudaBackend>;

qlm::CudaContext& context() {
    static qlm::CudaContext ctx(0);
    return ctx;
}

template <class Model, class Ctx>
std::vector<float> last_logits(Ctx& ctx, const Model& model, const std::vector<std::int32_t>& tokens) {
    const auto& c = model.config();
    qlm::ContiguousKVCache cache(c.n_layer, c.n_positions, c.n_embd, Model::backend_type::kv_memory(ctx));
    typename Model::workspace_type ws;
    const auto logits = model.forward(ctx, cache, std::span<const std::int32_t>(tokens), ws);
    return {logits.begin(), logits.end()};
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
        scale = std::max(scale, std::abs(static_cast<double>(b[i])));
    }
    return diff / scale;
}

std::vector<std::int32_t> heldout_tokens() {
    const auto tokenizer = qlm::GPT2Tokenizer::from_directory(kModelDir);
    return tokenizer.encode(qlm::calibration::read_text(kModelDir + "/heldout.txt"));
}

}  // namespace

TEST_CASE("every weight type: the GPU's logits match the CPU's within its precision, prefill and decode") {
    const auto tokens = heldout_tokens();
    const std::vector<std::int32_t> prompt(tokens.begin(), tokens.begin() + 100);
    for (const Variant& v : kVariants) {
        CAPTURE(v.name);
        qlm::ThreadPool pool(2);
        auto host = host_model(v);
        const auto cpu = last_logits(pool, host, prompt);
        const DeviceModel gpu(host_model(v), context());
        const auto dev = last_logits(context(), gpu, prompt);
        const double err = relative_error(dev, cpu);
        MESSAGE(v.name << ": prefill logits relative error " << err);
        CHECK(err < v.logits_bound);

        // Decode: one token at a time after a prefill, through a paged KV cache on the device.
        qlm::KVCache<16> cpu_cache(qlm::KVCacheConfig{host.config().n_layer, host.config().n_embd, 1u << 24});
        qlm::KVCache<16> gpu_cache(qlm::KVCacheConfig{host.config().n_layer, host.config().n_embd, 1u << 24,
                                                      qlm::CudaBackend::kv_memory(context())});
        auto cs = cpu_cache.add_sequence();
        auto gs = gpu_cache.add_sequence();
        qlm::ForwardWorkspace cws;
        qlm::CudaBackend::workspace gws;
        host.forward(pool, cs, std::span<const std::int32_t>(prompt).first(40), cws);
        gpu.forward(context(), gs, std::span<const std::int32_t>(prompt).first(40), gws);
        double worst = 0;
        for (std::size_t i = 40; i < 60; ++i) {
            const auto a = host.forward(pool, cs, std::span<const std::int32_t>(&prompt[i], 1), cws);
            const auto b = gpu.forward(context(), gs, std::span<const std::int32_t>(&prompt[i], 1), gws);
            worst = std::max(worst, relative_error({b.begin(), b.end()}, {a.begin(), a.end()}));
        }
        MESSAGE(v.name << ": decode logits relative error " << worst);
        CHECK(worst < v.logits_bound);
    }
}

TEST_CASE("greedy generation gives the CPU's tokens (fp32, W8A8, W4)") {
    for (const Variant& v : {kVariants[0], kVariants[3], kVariants[4]}) {
        CAPTURE(v.name);
        qlm::ThreadPool pool(2);
        const auto host = host_model(v);
        const DeviceModel gpu(host_model(v), context());
        const auto tokenizer = qlm::GPT2Tokenizer::from_directory(kModelDir);
        qlm::GenerateOptions o;
        o.sampling.max_tokens = 48;
        o.sampling.temperature = 0.0f;
        o.sampling.ignore_eos = true;
        const auto a = qlm::generate(pool, host, tokenizer, "In the beginning", o);
        const auto b = qlm::generate(context(), gpu, tokenizer, "In the beginning", o);
        MESSAGE(v.name << ": " << b.text);
        CHECK(a.tokens == b.tokens);
    }
}

TEST_CASE("perplexity of the held-out text within 0.1% of the CPU's (fp16, W8A8, W4)") {
    const auto tokens = heldout_tokens();
    for (const Variant& v : {kVariants[1], kVariants[3], kVariants[4]}) {
        CAPTURE(v.name);
        qlm::ThreadPool pool(2);
        const auto host = host_model(v);
        const DeviceModel gpu(host_model(v), context());
        const double cpu = qlm::perplexity(pool, host, tokens).perplexity;
        const double dev = qlm::perplexity(context(), gpu, tokens).perplexity;
        MESSAGE(v.name << ": perplexity CPU " << cpu << ", GPU " << dev);
        CHECK(std::abs(dev - cpu) / cpu < 1e-3);
    }
}

TEST_CASE("the engine on the GPU: batched requests with a device KV pool give the CPU engine's tokens") {
    const Variant& v = kVariants[0];
    qlm::ThreadPool pool(2);
    const auto host = host_model(v);
    const DeviceModel gpu(host_model(v), context());
    const auto tokens = heldout_tokens();
    auto run = [&](auto& ctx, const auto& model) {
        qlm::EngineConfig config;
        config.kv_cache_bytes = 64u << 20;
        qlm::Engine<std::remove_cvref_t<decltype(model)>> engine(model, ctx, config);
        qlm::SamplingParams params;
        params.max_tokens = 24;
        params.temperature = 0.0f;
        params.ignore_eos = true;
        for (std::size_t r = 0; r < 12; ++r)
            engine.add_request(std::vector<std::int32_t>(tokens.begin() + static_cast<long>(r * 7), tokens.begin() + static_cast<long>(r * 7 + 5 + r * 3)),
                               params);
        auto outputs = engine.run_until_done();
        std::sort(outputs.begin(), outputs.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
        std::vector<std::vector<std::int32_t>> out;
        for (const auto& o : outputs) out.push_back(o.tokens);
        return out;
    };
    CHECK(run(pool, host) == run(context(), gpu));
}

TEST_CASE("device errors are qlm errors: a device that does not exist, a KV pool larger than the device") {
    CHECK_THROWS_AS(qlm::CudaContext(1 << 20), qlm::cuda_error);
    const auto [free_bytes, total] = context().memory_info();
    CHECK(free_bytes <= total);
    CHECK_THROWS_AS(qlm::cuda::DevicePoolMemory(context().stream()).allocate(total * 4), qlm::cuda_error);
}

int main(int argc, char** argv) {
    int devices = 0;
    if (const cudaError_t status = cudaGetDeviceCount(&devices); status != cudaSuccess || devices == 0) {
        std::printf("SKIPPED: no CUDA device (%s)\n", status != cudaSuccess ? cudaGetErrorString(status) : "0 devices");
        return 77;
    }
    doctest::Context context(argc, argv);
    return context.run();
}
