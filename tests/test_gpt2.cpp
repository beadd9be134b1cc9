// GPT-2 forward pass against golden logits from an independent PyTorch implementation
// (tools/make_golden_logits.py), with and without the KV cache, batched and unbatched.
#include <doctest/doctest.h>

#include <qlm/engine/generate.hpp>
#include <qlm/eval/perplexity.hpp>
#include <qlm/io/safetensors.hpp>
#include <qlm/kv/contiguous_cache.hpp>
#include <qlm/model/checkpoint.hpp>
#include <qlm/model/interop.hpp>
#include <qlm/model/load_gpt2.hpp>
#include <qlm/model/quantized_linear.hpp>
#include <qlm/model/random_weights.hpp>
#include <qlm/tokenizer/gpt2_tokenizer.hpp>

#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace {

const std::filesystem::path kRoot = QLM_SOURCE_DIR;

struct GoldenPrompt {
    std::vector<std::int32_t> tokens;
    std::vector<std::int32_t> positions;
    qlm::Tensor<float> logits;  // [positions, vocab]
};

std::vector<GoldenPrompt> load_golden(const std::filesystem::path& path) {
    const auto file = qlm::SafetensorsFile::open(path);
    std::vector<GoldenPrompt> prompts;
    for (int k = 0;; ++k) {
        std::string p = "p";  // appends only: GCC 12 reports a false -Wrestrict on "literal" + std::string temporaries
        p += std::to_string(k) + ".";
        if (!file.contains(p + "tokens")) break;
        GoldenPrompt g;
        const auto tokens = file.view<std::int32_t>(p + "tokens");
        const auto positions = file.view<std::int32_t>(p + "positions");
        g.tokens.assign(tokens.data(), tokens.data() + tokens.numel());
        g.positions.assign(positions.data(), positions.data() + positions.numel());
        g.logits = file.to_float(p + "logits");
        prompts.push_back(std::move(g));
    }
    REQUIRE(!prompts.empty());
    return prompts;
}

// max |a - b| / max |b| over one row of logits
double relative_error(std::span<const float> actual, std::span<const float> expected) {
    REQUIRE(actual.size() == expected.size());
    double diff = 0.0, scale = 0.0;
    for (std::size_t i = 0; i < actual.size(); ++i) {
        diff = std::max(diff, std::abs(static_cast<double>(actual[i]) - expected[i]));
        scale = std::max(scale, std::abs(static_cast<double>(expected[i])));
    }
    return diff / scale;
}

std::span<const float> golden_row(const GoldenPrompt& g, std::size_t i) {
    const std::size_t vocab = g.logits.dim(1);
    return {g.logits.data() + i * vocab, vocab};
}

void check_model_against_golden(const std::filesystem::path& model_dir, const std::filesystem::path& golden_path) {
    const auto model = qlm::load_gpt2(model_dir);
    const auto prompts = load_golden(golden_path);
    const auto& cfg = model.config();
    for (std::size_t threads : {1, 2, 3}) {
        qlm::ThreadPool pool(threads);
        for (std::size_t k = 0; k < prompts.size(); ++k) {
            const auto& g = prompts[k];
            const std::span<const std::int32_t> tokens(g.tokens);
            CAPTURE(k);
            CAPTURE(threads);
            CAPTURE(g.tokens.size());

            // 1. Prefill of the whole prompt, logits of every position.
            qlm::ContiguousKVCache cache(cfg.n_layer, cfg.n_positions, cfg.n_embd);
            qlm::ForwardWorkspace ws;
            model.forward(pool, cache, tokens, ws, qlm::LogitsFor::all_tokens);
            for (std::size_t i = 0; i < g.positions.size(); ++i)
                CHECK(relative_error(ws.logits_row(static_cast<std::size_t>(g.positions[i])), golden_row(g, i)) <= 1e-4);

            // 2. Token by token through the KV cache.
            cache.clear();
            std::vector<std::vector<float>> stepwise;
            for (std::size_t t = 0; t < tokens.size(); ++t) {
                const auto logits = model.forward(pool, cache, tokens.subspan(t, 1), ws);
                stepwise.emplace_back(logits.begin(), logits.end());
            }
            for (std::size_t i = 0; i < g.positions.size(); ++i)
                CHECK(relative_error(stepwise[static_cast<std::size_t>(g.positions[i])], golden_row(g, i)) <= 1e-4);

            // 3. Prefill half, decode the rest; 4. no cache: recompute the prefix for the last position.
            cache.clear();
            const std::size_t half = std::max<std::size_t>(1, tokens.size() / 2);
            auto logits = model.forward(pool, cache, tokens.first(half), ws);
            for (std::size_t t = half; t < tokens.size(); ++t) logits = model.forward(pool, cache, tokens.subspan(t, 1), ws);
            const std::size_t last = g.positions.size() - 1;
            REQUIRE(static_cast<std::size_t>(g.positions[last]) == tokens.size() - 1);
            CHECK(relative_error(logits, golden_row(g, last)) <= 1e-4);
            CHECK(cache.length() == tokens.size());
        }
    }
}

}  // namespace

TEST_CASE("bundled model matches PyTorch golden logits with and without the KV cache") {
    check_model_against_golden(kRoot / "models/gpt2-tiny-kjv", kRoot / "tests/data/golden_logits.safetensors");
}

TEST_CASE("random-weight model with transformer. prefix and explicit lm_head matches golden logits") {
    check_model_against_golden(kRoot / "tests/data/golden_random_model", kRoot / "tests/data/golden_random_logits.safetensors");
}

TEST_CASE("a batch of sequences gives the same logits as each sequence alone") {
    const auto model = qlm::load_gpt2(kRoot / "tests/data/golden_random_model");
    const auto& cfg = model.config();
    qlm::ThreadPool pool(2);
    const std::vector<std::vector<std::int32_t>> prompts{{5, 17, 300, 2, 9}, {42}, {7, 7, 7, 7, 7, 7, 7, 7, 1, 2, 3}};

    std::vector<std::vector<float>> alone;
    std::vector<qlm::ContiguousKVCache> caches;
    for (const auto& p : prompts) {
        qlm::ContiguousKVCache cache(cfg.n_layer, cfg.n_positions, cfg.n_embd);
        qlm::ForwardWorkspace ws;
        model.forward(pool, cache, std::span<const std::int32_t>(p).first(p.size() - 1 ? p.size() - 1 : 1), ws);
        if (p.size() > 1) {
            const auto logits = model.forward(pool, cache, std::span<const std::int32_t>(p).last(1), ws);
            alone.emplace_back(logits.begin(), logits.end());
        } else {
            alone.emplace_back(ws.logits_row(0).begin(), ws.logits_row(0).end());
        }
    }
    // Batched: prefill all (mixed lengths) in one call, then one batched decode step for the long ones.
    std::vector<qlm::ContiguousKVCache> batch_caches;
    for (std::size_t i = 0; i < prompts.size(); ++i) batch_caches.emplace_back(cfg.n_layer, cfg.n_positions, cfg.n_embd);
    std::vector<qlm::SequenceChunk<qlm::ContiguousKVCache>> chunks;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        const auto& p = prompts[i];
        chunks.push_back({&batch_caches[i], std::span<const std::int32_t>(p).first(p.size() > 1 ? p.size() - 1 : 1)});
    }
    qlm::ForwardWorkspace ws;
    model.forward(pool, std::span<const qlm::SequenceChunk<qlm::ContiguousKVCache>>(chunks), ws);
    CHECK(relative_error(ws.logits_row(1), alone[1]) <= 1e-5);
    chunks.clear();
    for (std::size_t i : {0u, 2u}) chunks.push_back({&batch_caches[i], std::span<const std::int32_t>(prompts[i]).last(1)});
    model.forward(pool, std::span<const qlm::SequenceChunk<qlm::ContiguousKVCache>>(chunks), ws);
    CHECK(relative_error(ws.logits_row(0), alone[0]) <= 1e-5);
    CHECK(relative_error(ws.logits_row(1), alone[2]) <= 1e-5);
}

TEST_CASE("bad inputs to the forward pass are reported, not computed") {
    const auto model = qlm::load_gpt2(kRoot / "tests/data/golden_random_model");
    const auto& cfg = model.config();
    qlm::ThreadPool pool(1);
    qlm::ForwardWorkspace ws;
    qlm::ContiguousKVCache cache(cfg.n_layer, cfg.n_positions, cfg.n_embd);
    const std::vector<std::int32_t> bad_token{1, static_cast<std::int32_t>(cfg.vocab_size)};
    CHECK_THROWS_AS(model.forward(pool, cache, std::span<const std::int32_t>(bad_token), ws), qlm::invalid_argument);
    const std::vector<std::int32_t> negative{-1};
    CHECK_THROWS_AS(model.forward(pool, cache, std::span<const std::int32_t>(negative), ws), qlm::invalid_argument);
    const std::vector<std::int32_t> too_long(cfg.n_positions + 1, 3);
    CHECK_THROWS_AS(model.forward(pool, cache, std::span<const std::int32_t>(too_long), ws), qlm::capacity_error);
    CHECK(cache.length() == 0);
}

TEST_CASE("checkpoint loading errors name the file and tensor") {
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / "qlm_test_gpt2_bad";
    fs::remove_all(dir);
    fs::create_directories(dir);
    CHECK_THROWS_AS(qlm::load_gpt2(dir / "missing"), qlm::io_error);
    CHECK_THROWS_AS(qlm::load_gpt2(dir), qlm::io_error);  // no config.json

    const fs::path src = kRoot / "tests/data/golden_random_model";
    fs::copy_file(src / "config.json", dir / "config.json");
    CHECK_THROWS_AS(qlm::load_gpt2(dir), qlm::io_error);  // no weights

    // A checkpoint that lacks one tensor.
    const auto original = qlm::SafetensorsFile::open(src / "model.safetensors");
    qlm::SafetensorsWriter writer;
    std::vector<qlm::Tensor<float>> keep;
    for (const auto& name : original.names()) {
        if (name.find("h.1.mlp.c_fc.bias") != std::string::npos) continue;
        keep.push_back(original.to_float(name));
        const auto& info = original.info(name);
        writer.add(name, std::vector<std::size_t>(info.dims), std::span<const float>(keep.back().span()));
    }
    writer.write(dir / "model.safetensors");
    try {
        qlm::load_gpt2(dir);
        FAIL("expected a format_error");
    } catch (const qlm::format_error& e) {
        CHECK(std::string(e.what()).find("h.1.mlp.c_fc.bias") != std::string::npos);
    }

    // A config that does not fit the weights.
    std::ofstream(dir / "config.json") << R"({"model_type": "gpt2", "n_layer": 2, "n_head": 3, "n_embd": 64, "vocab_size": 512})";
    CHECK_THROWS_AS(qlm::load_gpt2(dir), qlm::invalid_argument);
    std::ofstream(dir / "config.json") << R"({"model_type": "gpt2", "n_layer": 2)";
    CHECK_THROWS_AS(qlm::load_gpt2(dir), qlm::format_error);
    fs::remove_all(dir);
}

namespace {

// The tensors of a checkpoint as float, by stored name: read, edit, write back.
struct FloatTensor {
    std::vector<std::size_t> dims;
    std::vector<float> values;
};
using FloatFile = std::map<std::string, FloatTensor>;

FloatFile read_floats(const std::filesystem::path& file) {
    const auto f = qlm::SafetensorsFile::open(file);
    FloatFile out;
    for (const auto& name : f.names()) {
        const auto t = f.to_float(name);
        out[name] = {f.info(name).dims, {t.span().begin(), t.span().end()}};
    }
    return out;
}

// `to` = a copy of the checkpoint folder `from` whose model.safetensors holds `tensors`.
void write_copy(const std::filesystem::path& from, const std::filesystem::path& to, const FloatFile& tensors) {
    std::filesystem::remove_all(to);
    std::filesystem::create_directories(to);
    std::filesystem::copy_file(from / "config.json", to / "config.json");
    qlm::SafetensorsWriter writer;
    for (const auto& [name, t] : tensors) writer.add(name, std::vector<std::size_t>(t.dims), std::span<const float>(t.values));
    writer.write(to / "model.safetensors");
}

// A model of qlm_test::small_config() with random weights, saved as a float Hugging Face checkpoint
// with no tokenizer files.
std::filesystem::path random_checkpoint(const std::string& name) {
    const auto dir = qlm_test::temp_dir(name);
    qlm::save_gpt2_weights(qlm::random_gpt2_weights(qlm_test::small_config(), 3), dir);
    return dir;
}

}  // namespace

TEST_CASE("first_non_finite finds NaN and infinities, and nothing in finite data") {
    constexpr float inf = std::numeric_limits<float>::infinity();
    std::vector<float> v(1000, 1.0f);
    v[7] = std::numeric_limits<float>::max();
    v[8] = -std::numeric_limits<float>::max();
    v[9] = std::numeric_limits<float>::denorm_min();
    v[10] = -0.0f;
    CHECK(qlm::detail::first_non_finite(v) == v.size());
    CHECK(qlm::detail::first_non_finite({}) == 0);
    for (const float bad : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(), inf, -inf}) {
        for (const std::size_t at : {std::size_t{0}, std::size_t{517}, std::size_t{999}}) {
            auto w = v;
            w[at] = bad;
            w[998] = at == 999 ? 1.0f : bad;  // the first one is reported
            CHECK(qlm::detail::first_non_finite(w) == at);
        }
    }
}

TEST_CASE("float weights must be finite: NaN or infinity anywhere is refused, naming tensor and index") {
    const auto dir = random_checkpoint("finite");
    const auto weights = qlm::load_gpt2_weights(dir);  // save_gpt2_weights round-trips bit for bit
    const auto again = qlm::random_gpt2_weights(qlm_test::small_config(), 3);
    CHECK(std::equal(weights.wte.span().begin(), weights.wte.span().end(), again.wte.span().begin()));
    CHECK(std::equal(weights.blocks[1].c_fc.weight().span().begin(), weights.blocks[1].c_fc.weight().span().end(),
                     again.blocks[1].c_fc.weight().span().begin()));

    const auto bad = dir.parent_path() / (dir.filename().string() + "_bad");
    const FloatFile original = read_floats(dir / "model.safetensors");
    struct Case {
        std::string tensor;
        std::size_t flat;
        float value;
        std::string expected;
    };
    const std::vector<Case> cases{
        {"h.1.mlp.c_fc.weight", 3 * 512 + 17, std::numeric_limits<float>::quiet_NaN(), "'h.1.mlp.c_fc.weight' holds nan at [3, 17]"},
        {"wpe.weight", 5, std::numeric_limits<float>::infinity(), "'wpe.weight' holds inf at [0, 5]"},
        {"ln_f.bias", 127, -std::numeric_limits<float>::infinity(), "'ln_f.bias' holds -inf at [127]"},
        {"wte.weight", 299 * 128 + 1, std::numeric_limits<float>::quiet_NaN(), "'wte.weight' holds nan at [299, 1]"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.tensor);
        FloatFile edited = original;
        edited.at(c.tensor).values.at(c.flat) = c.value;
        write_copy(dir, bad, edited);
        CHECK_THROWS_WITH_AS(qlm::load_gpt2(bad), doctest::Contains(c.expected.c_str()), qlm::format_error);
        CHECK_THROWS_WITH_AS(qlm::load_any_checkpoint(bad), doctest::Contains(c.expected.c_str()), qlm::format_error);
    }
    std::filesystem::remove_all(bad);
    std::filesystem::remove_all(dir);
}

TEST_CASE("every tensor of a checkpoint must be used: fewer layers in config.json or unknown tensors are refused") {
    namespace fs = std::filesystem;
    const auto dir = random_checkpoint("consumed");
    const auto copy = dir.parent_path() / (dir.filename().string() + "_copy");
    const FloatFile original = read_floats(dir / "model.safetensors");
    auto load_all = [](const fs::path& d) {
        qlm::load_gpt2(d);
        qlm::load_checkpoint(d);
        qlm::load_any_checkpoint(d);
    };

    // config.json says 1 layer, the file holds 2: h.1 would be dropped without a word.
    write_copy(dir, copy, original);
    auto config = qlm_test::small_config();
    config.n_layer = 1;
    std::ofstream(copy / "config.json") << config.to_json().dump();
    for (const auto& load : {+[](const fs::path& d) { qlm::load_gpt2(d); }, +[](const fs::path& d) { qlm::load_checkpoint(d); },
                             +[](const fs::path& d) { qlm::load_any_checkpoint(d); }})
        CHECK_THROWS_WITH_AS(load(copy), doctest::Contains("12 tensor(s) that the model described by its config.json does not use: "
                                                           "h.1.attn.c_attn.bias, h.1.attn.c_attn.weight"),
                             qlm::format_error);

    // A tensor no GPT-2 has.
    FloatFile extra = original;
    extra["h.0.attn.rotary.inv_freq"] = {{4}, {1, 2, 3, 4}};
    write_copy(dir, copy, extra);
    CHECK_THROWS_WITH_AS(load_all(copy), doctest::Contains("1 tensor(s) that the model described by its config.json does not use: "
                                                           "h.0.attn.rotary.inv_freq"),
                         qlm::format_error);

    // Hugging Face's attention buffers (older transformers saved them) and an lm_head equal to wte are read or ignored.
    FloatFile hf = original;
    const std::size_t P = qlm_test::small_config().n_positions;
    hf["h.0.attn.bias"] = {{1, 1, P, P}, std::vector<float>(P * P, 1.0f)};
    hf["h.1.attn.bias"] = {{1, 1, P, P}, std::vector<float>(P * P, 1.0f)};
    hf["h.0.attn.masked_bias"] = {{}, {-1e4f}};
    hf["lm_head.weight"] = original.at("wte.weight");
    write_copy(dir, copy, hf);
    CHECK_NOTHROW(load_all(copy));
    CHECK(!qlm::load_gpt2_weights(copy).untied_head);
    const auto golden = read_floats(kRoot / "tests/data/golden_random_model/model.safetensors");  // "transformer." names
    FloatFile prefixed = golden;
    prefixed["transformer.h.1.attn.bias"] = {{1, 1, 64, 64}, std::vector<float>(64 * 64, 1.0f)};
    write_copy(kRoot / "tests/data/golden_random_model", copy, prefixed);
    CHECK_NOTHROW(load_all(copy));
    prefixed["transformer.h.2.attn.c_proj.weight"] = prefixed.at("transformer.h.1.attn.c_proj.weight");  // but not a third layer
    write_copy(kRoot / "tests/data/golden_random_model", copy, prefixed);
    CHECK_THROWS_WITH_AS(qlm::load_gpt2(copy), doctest::Contains("transformer.h.2.attn.c_proj.weight"), qlm::format_error);
    fs::remove_all(copy);
    fs::remove_all(dir);
}

TEST_CASE("sampler: greedy, seeded, top-k and top-p") {
    const std::vector<float> logits{0.1f, 2.0f, -1.0f, 1.5f, 0.0f, 1.9f};
    qlm::SamplingParams greedy;
    greedy.temperature = 0.0f;
    qlm::Sampler g(greedy);
    CHECK(g.sample(logits) == 1);

    qlm::SamplingParams p;
    p.temperature = 1.0f;
    p.seed = 1234;
    qlm::Sampler a(p), b(p);
    std::vector<int> counts(logits.size());
    for (int i = 0; i < 20000; ++i) {
        const auto x = a.sample(logits);
        CHECK(x == b.sample(logits));
        ++counts[static_cast<std::size_t>(x)];
    }
    double z = 0.0;
    for (float l : logits) z += std::exp(l);
    for (std::size_t i = 0; i < logits.size(); ++i) CHECK(std::abs(counts[i] / 20000.0 - std::exp(logits[i]) / z) < 0.015);

    p.top_k = 2;  // only ids 1 and 5
    qlm::Sampler k2(p);
    for (int i = 0; i < 500; ++i) {
        const auto x = k2.sample(logits);
        CHECK((x == 1 || x == 5));
    }
    p.top_k = 0;
    p.top_p = 0.3f;  // the top token alone holds ~0.32 of the mass
    qlm::Sampler nucleus(p);
    for (int i = 0; i < 200; ++i) CHECK(nucleus.sample(logits) == 1);

    p.top_p = 1.5f;
    CHECK_THROWS_AS(qlm::Sampler{p}, qlm::invalid_argument);
    p.top_p = 1.0f;
    p.temperature = -1.0f;
    CHECK_THROWS_AS(qlm::Sampler{p}, qlm::invalid_argument);
}

TEST_CASE("greedy generation is deterministic and identical with and without the KV cache") {
    const auto model = qlm::load_gpt2(kRoot / "models/gpt2-tiny-kjv");
    const auto tokenizer = qlm::GPT2Tokenizer::from_directory(kRoot / "models/gpt2-tiny-kjv");
    qlm::ThreadPool pool(2);
    qlm::GenerateOptions options;
    options.sampling.temperature = 0.0f;
    options.sampling.max_tokens = 40;
    options.sampling.ignore_eos = true;
    const auto a = qlm::generate(pool, model, tokenizer, "And the LORD said unto Moses", options);
    const auto b = qlm::generate(pool, model, tokenizer, "And the LORD said unto Moses", options);
    options.cache = qlm::CacheMode::recompute;
    const auto c = qlm::generate(pool, model, tokenizer, "And the LORD said unto Moses", options);
    CHECK(a.tokens.size() == 40);
    CHECK(a.tokens == b.tokens);
    CHECK(a.tokens == c.tokens);
    CHECK(a.text == tokenizer.decode(a.tokens));

    // Seeded sampling repeats itself; stop strings end the text before them.
    options.cache = qlm::CacheMode::kv_cache;
    options.sampling.temperature = 0.9f;
    options.sampling.top_k = 40;
    options.sampling.seed = 7;
    const auto s1 = qlm::generate(pool, model, tokenizer, "Once upon a time", options);
    const auto s2 = qlm::generate(pool, model, tokenizer, "Once upon a time", options);
    CHECK(s1.tokens == s2.tokens);
    options.sampling.stop = {" the"};
    const auto stopped = qlm::generate(pool, model, tokenizer, "And the LORD said unto Moses", options);
    CHECK(stopped.finish_reason == qlm::FinishReason::stop);  // " the" is the commonest KJV bigram start
    CHECK(stopped.text.find(" the") == std::string::npos);
    CHECK(stopped.tokens.size() < options.sampling.max_tokens);
}

TEST_CASE("generation from token ids: any checkpoint, no tokenizer, the same ids as the text path") {
    // A model folder without tokenizer files (like Hugging Face's tiny test models without GPT-2's byte tokens).
    const auto dir = random_checkpoint("generate_ids");
    REQUIRE_THROWS_AS(qlm::GPT2Tokenizer::from_directory(dir), qlm::error);
    const auto model = qlm::load_any_checkpoint(dir).model;
    const auto& cfg = model.config();
    qlm::ThreadPool pool(2);
    qlm::GenerateOptions options;
    options.sampling.temperature = 0.0f;
    options.sampling.max_tokens = 12;
    options.eos_token_id = cfg.eos_token_id;  // 50256: outside this 300-token vocabulary, never sampled
    const std::vector<std::int32_t> prompt{5, 17, 299, 0, 42};

    // Reference: greedy decoding written out with the forward pass.
    std::vector<std::int32_t> expected, context = prompt;
    {
        qlm::ContiguousKVCache cache(cfg.n_layer, cfg.n_positions, cfg.n_embd);
        qlm::ForwardWorkspace ws;
        auto logits = model.forward(pool, cache, std::span<const std::int32_t>(context), ws);
        while (expected.size() < options.sampling.max_tokens) {
            expected.push_back(qlm::Sampler::argmax(logits));
            logits = model.forward(pool, cache, std::span<const std::int32_t>(&expected.back(), 1), ws);
        }
    }
    std::vector<std::int32_t> streamed;
    options.on_token = [&](std::int32_t t) { streamed.push_back(t); };
    const auto result = qlm::generate(pool, model, prompt, options);
    CHECK(result.prompt_tokens == prompt);
    CHECK(result.tokens == expected);
    CHECK(streamed == expected);
    CHECK(result.text.empty());
    CHECK(result.finish_reason == qlm::FinishReason::length);
    options.on_token = nullptr;
    options.cache = qlm::CacheMode::recompute;
    CHECK(qlm::generate(pool, model, prompt, options).tokens == expected);

    // With a tokenizer the ids are the same and the text is theirs.
    const auto tokenizer = qlm::GPT2Tokenizer::from_directory(kRoot / "models/gpt2-tiny-kjv");
    const auto with_text = qlm::generate(pool, model, tokenizer, prompt, options);
    CHECK(with_text.tokens == expected);
    CHECK(with_text.text == tokenizer.decode(expected));

    // What the ids path refuses.
    options.sampling.stop = {"x"};
    CHECK_THROWS_WITH_AS(qlm::generate(pool, model, prompt, options), doctest::Contains("stop strings need a tokenizer"),
                         qlm::invalid_argument);
    options.sampling.stop.clear();
    CHECK_THROWS_AS(qlm::generate(pool, model, std::vector<std::int32_t>{}, options), qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::generate(pool, model, std::vector<std::int32_t>{1, 300}, options), qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::generate(pool, model, std::vector<std::int32_t>{-1}, options), qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::generate(pool, model, std::vector<std::int32_t>(cfg.n_positions, 1), options), qlm::capacity_error);
    std::filesystem::remove_all(dir);
}

TEST_CASE("a text prompt generates what its token ids generate") {
    const auto model = qlm::load_gpt2(kRoot / "models/gpt2-tiny-kjv");
    const auto tokenizer = qlm::GPT2Tokenizer::from_directory(kRoot / "models/gpt2-tiny-kjv");
    qlm::ThreadPool pool(2);
    qlm::GenerateOptions options;
    options.sampling.temperature = 0.7f;
    options.sampling.seed = 3;
    options.sampling.max_tokens = 16;
    options.sampling.ignore_eos = true;
    const std::string prompt = "In the beginning";
    const auto ids = tokenizer.encode(prompt);
    const auto from_text = qlm::generate(pool, model, tokenizer, prompt, options);
    const auto from_ids = qlm::generate(pool, model, ids, options);
    CHECK(from_text.prompt_tokens == ids);
    CHECK(from_text.tokens == from_ids.tokens);
    CHECK(from_text.tokens.size() == 16);
}

TEST_CASE("perplexity refuses windows and strides that would score nothing or skip tokens") {
    const auto cfg = qlm_test::small_config();
    const auto model = qlm::make_float_model(qlm::random_gpt2_weights(cfg, 4));
    const auto tokens = qlm_test::token_stream(40, cfg.vocab_size);
    qlm::ThreadPool pool(1);
    qlm::PerplexityOptions options;
    options.max_length = 1;  // was: perplexity -nan, 0 tokens scored
    CHECK_THROWS_WITH_AS(qlm::perplexity(pool, model, tokens, options), doctest::Contains("window of 1 token(s) scores nothing"),
                         qlm::invalid_argument);
    options.stride = 1;
    CHECK_THROWS_AS(qlm::perplexity(pool, model, tokens, options), qlm::invalid_argument);
    options.max_length = 4;
    options.stride = 5;
    CHECK_THROWS_WITH_AS(qlm::perplexity(pool, model, tokens, options), doctest::Contains("stride of 5 exceeds the window of 4"),
                         qlm::invalid_argument);
    options.max_length = cfg.n_positions + 1;
    options.stride = 0;
    CHECK_THROWS_AS(qlm::perplexity(pool, model, tokens, options), qlm::invalid_argument);

    // The smallest window scores every token but the first; windows that do not overlap skip each window's first.
    options.max_length = 2;
    const auto two = qlm::perplexity(pool, model, tokens, options);
    CHECK(two.stride == 1);
    CHECK(two.scored_tokens == tokens.size() - 1);
    CHECK(std::isfinite(two.perplexity));
    options.stride = 2;
    CHECK(qlm::perplexity(pool, model, tokens, options).scored_tokens == tokens.size() / 2);
}

namespace {

// qlm's sliding-window perplexity of the bundled model against tools/reference_perplexity.py's (float64).
void check_reference_perplexity(const std::filesystem::path& reference_file) {
    std::ifstream in(reference_file);
    REQUIRE(in);
    const auto ref = nlohmann::json::parse(in);
    const auto model = qlm::load_gpt2(kRoot / "models/gpt2-tiny-kjv");
    const auto tokenizer = qlm::GPT2Tokenizer::from_directory(kRoot / "models/gpt2-tiny-kjv");
    std::ifstream text_in(kRoot / "models/gpt2-tiny-kjv/heldout.txt", std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(text_in)), std::istreambuf_iterator<char>());
    auto tokens = tokenizer.encode(text);
    if (const auto limit = ref.value("token_limit", std::size_t{0}); limit && limit < tokens.size()) tokens.resize(limit);
    CHECK(tokens.size() == ref["tokens"].get<std::size_t>());
    qlm::ThreadPool pool(2);
    qlm::PerplexityOptions options;
    options.max_length = ref["max_length"].get<std::size_t>();
    options.stride = ref["stride"].get<std::size_t>();
    const auto result = qlm::perplexity(pool, model, tokens, options);
    CHECK(result.scored_tokens == ref["scored_tokens"].get<std::size_t>());
    const double expected = ref["perplexity"].get<double>();
    CHECK(std::abs(result.perplexity - expected) / expected < 1e-4);
    CHECK(std::abs(result.nll_sum - ref["nll_sum"].get<double>()) / ref["nll_sum"].get<double>() < 1e-5);
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;  // the whole text is 315 windows of the full model: slow under ASan
#else
constexpr bool kSanitized = false;
#endif

}  // namespace

TEST_CASE("perplexity of the first 2048 held-out tokens matches the PyTorch reference") {
    check_reference_perplexity(kRoot / "tests/data/reference_perplexity_2048.json");
}

TEST_CASE("held-out perplexity matches the PyTorch reference (sliding window, same stride)" * doctest::skip(kSanitized)) {
    check_reference_perplexity(kRoot / "tests/data/reference_perplexity.json");
}

TEST_CASE("a model constructed with its tied head holds no float wte") {
    qlm::ThreadPool pool(1);
    const auto cfg = qlm_test::small_config();
    const auto weights = qlm::random_gpt2_weights(cfg, 4);
    const auto as_any = [](const qlm::DenseLinear& d) { return qlm::AnyLinear(d); };
    const auto reference = qlm::convert_linears<qlm::AnyLinear>(weights, as_any);  // wte embeds and is the head
    auto build = [&](qlm::Tensor<float> wte, std::optional<qlm::AnyLinear> tied_head, std::optional<qlm::DenseLinear> untied = {}) {
        return qlm::GPT2Model<qlm::AnyLinear>(cfg, std::move(wte), reference.wpe(), reference.blocks(), reference.ln_f(),
                                              std::move(untied), std::move(tied_head));
    };
    // The same matrix as a tied head layer: embedding rows come from it, and so do the logits.
    const qlm::AnyLinear head = qlm::DenseLinear(weights.wte, {});
    const auto tied = build({}, head);
    CHECK(tied.wte().numel() == 0);
    CHECK(tied.parameter_bytes() == reference.parameter_bytes());
    const auto prompt = qlm_test::token_stream(24, cfg.vocab_size);
    CHECK(qlm_test::last_logits(pool, tied, prompt) == qlm_test::last_logits(pool, reference, prompt));

    CHECK_THROWS_AS(build(weights.wte, head), qlm::shape_error);  // a tied head leaves no room for a float wte
    CHECK_THROWS_AS(build({}, std::nullopt), qlm::shape_error);    // nor does a model without either
    CHECK_THROWS_AS(build({}, head, qlm::DenseLinear(weights.wte, {})), qlm::invalid_argument);  // tied and untied
    CHECK_THROWS_AS(build({}, qlm::AnyLinear(qlm::DenseLinear(qlm::Tensor<float>(qlm::Shape{cfg.vocab_size, cfg.n_embd / 2}), {}))),
                    qlm::shape_error);
    // DenseLinear cannot dequantize embedding rows, so a float-only model cannot take a tied head.
    CHECK_THROWS_AS(qlm::GPT2Model<qlm::DenseLinear>(cfg, {}, weights.wpe, weights.blocks, weights.ln_f, std::nullopt,
                                                     qlm::DenseLinear(weights.wte, {})),
                    qlm::invalid_argument);
}
