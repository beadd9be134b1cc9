// Model-level quantization (RTN, INT8 dynamic / static, GPTQ, AWQ), qlm checkpoints and the size
// report, on a small random GPT-2 whose float logits are the reference.
#include <doctest/doctest.h>

#include <qlm/eval/perplexity.hpp>
#include <qlm/eval/size_report.hpp>
#include <qlm/model/quantize.hpp>
#include <qlm/model/random_weights.hpp>

#include "test_util.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace fs = std::filesystem;

using qlm_test::last_logits;
using qlm_test::relative_error;
using qlm_test::small_config;
using qlm_test::temp_dir;
using qlm_test::token_stream;

}  // namespace

TEST_CASE("every method quantizes every linear layer, runs, and round-trips through a checkpoint") {
    qlm::ThreadPool pool(2);
    const auto cfg = small_config();
    const auto weights = qlm::random_gpt2_weights(cfg, 7);
    const auto stream = token_stream(2000, cfg.vocab_size);
    const auto calibration = qlm_test::calibration_from(stream, 8, 64);
    const auto prompt = std::span<const std::int32_t>(stream).subspan(100, 40);
    const auto reference = last_logits(pool, qlm::to_any_linear(weights), prompt);

    struct Case {
        std::string method;
        qlm::QuantSpec spec;
        double tolerance;  // relative logit error against fp32 allowed for this scheme
    };
    const std::vector<Case> cases{
        {"rtn", {8, qlm::GranularityKind::per_channel, 0, true}, 0.02},
        {"rtn", {4, qlm::GranularityKind::per_group, 64, true}, 0.3},
        {"rtn", {3, qlm::GranularityKind::per_group, 64, false}, 0.6},
        {"int8-dynamic", {}, 0.03},
        {"int8-static", {}, 0.05},
        {"gptq", {4, qlm::GranularityKind::per_group, 64, true}, 0.3},
        {"awq", {4, qlm::GranularityKind::per_group, 64, false}, 0.3},
    };
    for (const auto& c : cases) {
        CAPTURE(c.method);
        CAPTURE(qlm::to_string(c.spec));
        qlm::QuantizeOptions options;
        options.method = c.method;
        options.weights = c.spec;
        options.quantize_head = c.method == "gptq" || c.method == "int8-dynamic";
        const auto result = qlm::quantize_gpt2(pool, weights, options, &calibration);
        for (const auto& block : result.model.blocks())
            for (const auto slot : qlm::kLinearSlots) CHECK_FALSE(qlm::linear_of(block, slot).holds<qlm::DenseLinear>());
        const auto logits = last_logits(pool, result.model, prompt);
        for (float v : logits) REQUIRE(std::isfinite(v));
        const double err = relative_error(logits, reference);
        CHECK(err > 0.0);
        CHECK(err < c.tolerance);

        const fs::path dir = temp_dir("ckpt_" + c.method);
        qlm::save_checkpoint(result.model, result.info, dir);
        const auto loaded = qlm::load_checkpoint(dir);
        CHECK(loaded.info.method == c.method);
        CHECK(loaded.model.tied_head().has_value() == options.quantize_head);
        CHECK(loaded.model.parameter_bytes() == result.model.parameter_bytes());
        CHECK(last_logits(pool, loaded.model, prompt) == logits);  // bit-exact after a round trip
        fs::remove_all(dir);
    }
}

TEST_CASE("GPTQ with act-order stores a permutation and matches its own dequantized weights") {
    qlm::ThreadPool pool(2);
    const auto cfg = small_config();
    const auto stream = token_stream(2000, cfg.vocab_size);
    const auto calibration = qlm_test::calibration_from(stream, 4, 64);
    qlm::QuantizeOptions options;
    options.method = "gptq";
    options.weights = {4, qlm::GranularityKind::per_group, 64, true};
    options.gptq_act_order = true;
    const auto result = qlm::quantize_gpt2(pool, qlm::random_gpt2_weights(cfg, 3), options, &calibration);
    const auto& layer = result.model.blocks()[0].c_fc.get<qlm::AnyQuantLinear>();
    REQUIRE(layer.input_order().size() == cfg.n_embd);
    // forward() with the gathered input equals x · dequantize()ᵀ in the original feature order.
    const auto w = layer.dequantize();
    std::vector<float> x(3 * cfg.n_embd), y(3 * layer.out_features()), expected(y.size());
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i)) + 0.1f;
    layer.forward(pool, x.data(), 3, y.data());
    for (std::size_t r = 0; r < 3; ++r)
        for (std::size_t o = 0; o < layer.out_features(); ++o) {
            double acc = layer.bias().data()[o];
            for (std::size_t k = 0; k < cfg.n_embd; ++k) acc += static_cast<double>(x[r * cfg.n_embd + k]) * w.data()[o * cfg.n_embd + k];
            expected[r * layer.out_features() + o] = static_cast<float>(acc);
        }
    CHECK(relative_error(y, expected) < 1e-5);
    const fs::path dir = temp_dir("ckpt_actorder");
    qlm::save_checkpoint(result.model, result.info, dir);
    const auto prompt = std::span<const std::int32_t>(stream).first(20);
    CHECK(last_logits(pool, qlm::load_checkpoint(dir).model, prompt) == last_logits(pool, result.model, prompt));
    fs::remove_all(dir);
}

TEST_CASE("size report: bytes per linear weight and compression") {
    qlm::ThreadPool pool(1);
    auto cfg = small_config();
    cfg.n_embd = 256;
    const auto weights = qlm::random_gpt2_weights(cfg, 1);
    const auto fp32 = qlm::size_report(qlm::to_any_linear(weights));
    CHECK(fp32.linear_bytes_per_weight() == doctest::Approx(4.0));
    CHECK(fp32.compression() == doctest::Approx(1.0));

    qlm::QuantizeOptions options;
    options.weights = {4, qlm::GranularityKind::per_group, 128, true};
    const auto w4 = qlm::size_report(qlm::quantize_gpt2(pool, weights, options).model);
    CHECK(w4.linear_bytes_per_weight() == doctest::Approx(0.5 + 4.0 / 128));  // codes + fp32 scale per 128
    CHECK(w4.linear_bytes_per_weight() <= 0.6);
    options.method = "int8-dynamic";
    const auto w8 = qlm::size_report(qlm::quantize_gpt2(pool, weights, options).model);
    CHECK(w8.linear_bytes_per_weight() == doctest::Approx(1.0 + 4.0 / cfg.n_embd).epsilon(0.02));
    CHECK(w4.compression() > w8.compression());
    CHECK(w8.compression() > 1.0);
}

TEST_CASE("quantization options and calibration are validated") {
    qlm::ThreadPool pool(1);
    const auto weights = qlm::random_gpt2_weights(small_config(), 1);
    qlm::QuantizeOptions options;
    options.method = "gptq";
    CHECK_THROWS_AS(qlm::quantize_gpt2(pool, weights, options), qlm::invalid_argument);  // no calibration
    options.method = "magic";
    CHECK_THROWS_AS(qlm::quantize_gpt2(pool, weights, options), qlm::invalid_argument);
    options.method = "rtn";
    options.weights = {5, qlm::GranularityKind::per_channel, 0, true};
    CHECK_THROWS_AS(qlm::quantize_gpt2(pool, weights, options), qlm::invalid_argument);
    const std::vector<std::int32_t> one{1};
    CHECK_THROWS_AS(qlm::calibration::from_tokens(one, {}), qlm::invalid_argument);
}

TEST_CASE("the method table: names, calibration, what each method records and reports") {
    const std::vector<std::string> names{"rtn", "int8-dynamic", "int8-static", "gptq", "awq", "fp16", "bf16"};
    CHECK(qlm::quantize_methods() == names);
    for (const auto& name : names)
        CHECK(qlm::method_needs_calibration(name) == (name == "int8-static" || name == "gptq" || name == "awq"));
    CHECK_FALSE(qlm::method_needs_calibration("magic"));

    qlm::QuantizeOptions options;
    CHECK_FALSE(qlm::needs_calibration(options));
    options.salient_fraction = 0.01;
    CHECK(qlm::needs_calibration(options));  // rtn with salient channels
    options.method = "int8-dynamic";
    CHECK_FALSE(qlm::needs_calibration(options));  // salient channels are rtn's only (refused below)

    qlm::ThreadPool pool(2);
    const auto cfg = small_config();
    const auto weights = qlm::random_gpt2_weights(cfg, 3);
    const auto calibration = qlm_test::calibration_from(token_stream(1000, cfg.vocab_size), 4, 32);
    CHECK_THROWS_WITH_AS(qlm::quantize_gpt2(pool, weights, options, &calibration),
                         "qlm: salient_fraction must be in [0, 1) and is supported with rtn only", qlm::invalid_argument);
    options.method = "rtn";
    CHECK_THROWS_WITH_AS(qlm::quantize_gpt2(pool, weights, options),
                         "qlm: method 'rtn' with salient channels needs calibration data", qlm::invalid_argument);
    options.method = "magic";
    CHECK_THROWS_WITH_AS(qlm::quantize_gpt2(pool, weights, options),
                         "qlm: unknown quantization method 'magic' (rtn, int8-dynamic, int8-static, gptq, awq, fp16, bf16)", qlm::invalid_argument);

    for (const auto& name : names) {
        CAPTURE(name);
        qlm::QuantizeOptions o;
        o.method = name;
        o.weights = {4, qlm::GranularityKind::per_group, 64, true};
        std::vector<std::pair<std::size_t, std::string>> stages;
        o.on_progress = [&](const qlm::QuantizeProgress& p) {
            CHECK(p.layers == cfg.n_layer);
            stages.emplace_back(p.layer, p.stage);
        };
        const auto r = qlm::quantize_gpt2(pool, weights, o, &calibration);
        const bool int8 = name.rfind("int8", 0) == 0;
        CHECK(r.info.method == name);
        CHECK(r.info.activations == (int8 ? name : std::string("float")));
        CHECK(r.info.weights == (int8 ? qlm::QuantSpec{8, qlm::GranularityKind::per_channel, 0, true} : o.weights));
        CHECK(r.info.details.contains("calibration_samples") == qlm::method_needs_calibration(name));
        // Every block ends with "quantized", in order.
        std::vector<std::size_t> done;
        for (const auto& [layer, stage] : stages)
            if (stage == "quantized") done.push_back(layer);
        std::vector<std::size_t> blocks(cfg.n_layer);
        for (std::size_t i = 0; i < blocks.size(); ++i) blocks[i] = i;
        CHECK(done == blocks);
        CHECK(stages.back().second == "quantized");
    }
}

TEST_CASE("corrupt or inconsistent quantized checkpoints give clear errors") {
    qlm::ThreadPool pool(1);
    const auto weights = qlm::random_gpt2_weights(small_config(), 2);
    qlm::QuantizeOptions options;
    options.weights = {4, qlm::GranularityKind::per_group, 64, false};
    const auto result = qlm::quantize_gpt2(pool, weights, options);
    const fs::path dir = temp_dir("ckpt_bad");
    qlm::save_checkpoint(result.model, result.info, dir);
    const auto original = qlm::SafetensorsFile::open(dir / "model.safetensors");

    // Rewrites model.safetensors with one tensor dropped or replaced, and expects `E`.
    auto rewrite = [&](const std::string& target, bool drop, std::vector<std::size_t> new_shape, auto expected) {
        qlm::SafetensorsWriter writer;
        for (const auto& [k, v] : original.metadata()) writer.set_metadata(k, v);
        for (const auto& name : original.names()) {
            const auto& info = original.info(name);
            if (name == target && drop) continue;
            if (name == target) {
                std::size_t n = 1;
                for (auto d : new_shape) n *= d;
                std::vector<std::byte> bytes(n * qlm::dtype_size(info.dtype));
                writer.add(name, info.dtype, new_shape, bytes);
            } else {
                writer.add(name, info.dtype, info.dims, info.bytes);
            }
        }
        writer.write(dir / "model.safetensors");
        using E = decltype(expected);
        CHECK_THROWS_AS(qlm::load_checkpoint(dir), E);
    };
    rewrite("h.0.attn.c_attn.scales", true, {}, qlm::format_error{""});
    rewrite("h.1.mlp.c_fc.qzeros", true, {}, qlm::format_error{""});
    rewrite("h.0.mlp.c_proj.qweight", false, {128, 7}, qlm::shape_error{""});
    rewrite("h.0.attn.c_proj.scales", false, {128, 3}, qlm::shape_error{""});
    fs::remove_all(dir);

    qlm::save_checkpoint(result.model, result.info, dir);
    std::ifstream in(dir / "config.json");
    auto config = nlohmann::json::parse(in);
    in.close();
    config["quantization_config"]["format_version"] = 99;
    std::ofstream(dir / "config.json") << config.dump();
    CHECK_THROWS_AS(qlm::load_checkpoint(dir), qlm::format_error);
    config["quantization_config"]["format_version"] = 1;
    config["quantization_config"]["scheme"] = "w5-g64-sym";
    std::ofstream(dir / "config.json") << config.dump();
    CHECK_THROWS_AS(qlm::load_checkpoint(dir), qlm::format_error);
    fs::remove_all(dir);
}

TEST_CASE("size report: the tied embedding's storage is named, not assumed fp32") {
    qlm::ThreadPool pool(1);
    const auto weights = qlm::random_gpt2_weights(small_config(), 1);
    CHECK(qlm::size_report(qlm::to_any_linear(weights)).embedding_kind == "fp32");
    qlm::QuantizeOptions options;
    options.weights = {4, qlm::GranularityKind::per_group, 64, true};
    CHECK(qlm::size_report(qlm::quantize_gpt2(pool, weights, options).model).embedding_kind == "fp32");
    options.quantize_head = true;
    const auto head8 = qlm::size_report(qlm::quantize_gpt2(pool, weights, options).model);
    CHECK(head8.embedding_kind == "w8-channel-sym");
    const auto& c = small_config();
    CHECK(head8.other_bytes < 4 * c.vocab_size * c.n_embd);  // the embedding at 8 bits, not 32
}

TEST_CASE("a quantized tied head loads without a float wte") {
    qlm::ThreadPool pool(1);
    qlm::QuantizeOptions options;
    options.weights = {4, qlm::GranularityKind::per_group, 64, true};
    options.quantize_head = true;
    auto cfg = small_config();
    cfg.vocab_size = 320;  // whole 16-row panels: the repacked head then holds exactly the file's bytes
    const auto result = qlm::quantize_gpt2(pool, qlm::random_gpt2_weights(cfg, 6), options);
    const fs::path dir = temp_dir("ckpt_tied_head");
    qlm::save_checkpoint(result.model, result.info, dir);
    const auto loaded = qlm::load_checkpoint(dir).model;
    REQUIRE(loaded.tied_head().has_value());
    CHECK(loaded.wte().numel() == 0);
    const auto file = qlm::SafetensorsFile::open(dir / "model.safetensors");
    CHECK_FALSE(file.contains("wte.weight"));
    std::size_t file_bytes = 0;
    for (const auto& name : file.names()) file_bytes += file.info(name).bytes.size();
    CHECK(loaded.parameter_bytes() == file_bytes);
    fs::remove_all(dir);
}

TEST_CASE("qlm checkpoints: tensors the model does not use, and non-finite scales, are refused") {
    qlm::ThreadPool pool(1);
    const auto weights = qlm::random_gpt2_weights(small_config(), 2);
    qlm::QuantizeOptions options;
    options.weights = {4, qlm::GranularityKind::per_group, 64, false};
    options.quantize_head = true;
    const auto result = qlm::quantize_gpt2(pool, weights, options);
    const fs::path dir = temp_dir("ckpt_unused");
    qlm::save_checkpoint(result.model, result.info, dir);
    CHECK_NOTHROW(qlm::load_checkpoint(dir));

    // config.json with one layer less: h.1 is in the file but the model would not have it.
    std::ifstream in(dir / "config.json");
    auto config = nlohmann::json::parse(in);
    in.close();
    config["n_layer"] = 1;
    std::ofstream(dir / "config.json") << config.dump();
    CHECK_THROWS_WITH_AS(qlm::load_checkpoint(dir),
                         doctest::Contains("20 tensor(s) that the model described by its config.json does not use: "
                                           "h.1.attn.c_attn.bias, h.1.attn.c_attn.qweight"),
                         qlm::format_error);
    config["n_layer"] = 2;
    std::ofstream(dir / "config.json") << config.dump();

    // A float copy of the tied embedding next to its quantized form, and a stray tensor.
    {
        const auto original = qlm::SafetensorsFile::open(dir / "model.safetensors");
        qlm::SafetensorsWriter writer;
        for (const auto& [k, v] : original.metadata()) writer.set_metadata(k, v);
        for (const auto& name : original.names()) {
            const auto& info = original.info(name);
            writer.add(name, info.dtype, info.dims, info.bytes);
        }
        writer.add("wte.weight", weights.wte);
        const std::vector<std::int32_t> g_idx{0, 0, 1, 1};
        writer.add("h.0.attn.c_attn.g_idx", qlm::DType::I32, {4}, std::as_bytes(std::span(g_idx)));
        writer.write(dir / "model.safetensors");
    }
    CHECK_THROWS_WITH_AS(qlm::load_checkpoint(dir), doctest::Contains("2 tensor(s) that the model described by its config.json "
                                                                      "does not use: h.0.attn.c_attn.g_idx, wte.weight"),
                         qlm::format_error);

    // A scale that is not a number.
    qlm::save_checkpoint(result.model, result.info, dir);
    {
        const auto original = qlm::SafetensorsFile::open(dir / "model.safetensors");
        qlm::SafetensorsWriter writer;
        for (const auto& [k, v] : original.metadata()) writer.set_metadata(k, v);
        qlm::Tensor<float> scales = original.to_float("h.1.mlp.c_proj.scales");
        scales.data()[5] = std::numeric_limits<float>::infinity();
        for (const auto& name : original.names()) {
            const auto& info = original.info(name);
            if (name == "h.1.mlp.c_proj.scales")
                writer.add(name, scales);
            else
                writer.add(name, info.dtype, info.dims, info.bytes);
        }
        writer.write(dir / "model.safetensors");
    }
    CHECK_THROWS_WITH_AS(qlm::load_checkpoint(dir), doctest::Contains("'h.1.mlp.c_proj.scales' holds inf at [0, 5]"),
                         qlm::format_error);
    fs::remove_all(dir);
}

TEST_CASE("a quantization_config that contradicts the layers is refused, on load and on save") {
    qlm::ThreadPool pool(1);
    const auto weights = qlm::random_gpt2_weights(small_config(), 2);
    qlm::QuantizeOptions options;
    options.weights = {4, qlm::GranularityKind::per_group, 64, false};
    options.quantize_head = true;
    const auto result = qlm::quantize_gpt2(pool, weights, options);
    const fs::path dir = temp_dir("ckpt_config");
    nlohmann::json written;
    auto save = [&](const qlm::GPT2Model<qlm::AnyLinear>& model, const qlm::QuantizationInfo& info) {
        qlm::save_checkpoint(model, info, dir);
        std::ifstream in(dir / "config.json");
        written = nlohmann::json::parse(in);
    };
    // Loads the checkpoint with its config.json edited; returns the format_error's message, "" when it loads.
    auto load_with = [&](auto edit) -> std::string {
        nlohmann::json config = written;
        edit(config["quantization_config"], config);
        std::ofstream(dir / "config.json") << config.dump();
        try {
            qlm::load_checkpoint(dir);
        } catch (const qlm::format_error& e) {
            return e.what();
        }
        return "";
    };
    auto has = [](const std::string& message, const std::string& part) { return message.find(part) != std::string::npos; };
    using J = nlohmann::json;

    save(result.model, result.info);
    CHECK(load_with([](J&, J&) {}).empty());
    const std::string bits = load_with([](J& q, J&) { q["bits"] = 5; });
    CHECK(has(bits, "bits is 5"));
    CHECK(has(bits, "w4-g64-asym"));
    // Self-consistent, but not what the layers hold.
    const std::string scheme = load_with([](J& q, J&) {
        q["scheme"] = "w3-g64-asym";
        q["bits"] = 3;
    });
    CHECK(has(scheme, "layer 'h.0.attn.c_attn'"));
    CHECK(has(scheme, "w4-g64-asym"));
    CHECK(has(scheme, "w3-g64-asym"));
    CHECK(has(load_with([](J& q, J&) { q["activations"] = "int8-dynamic"; }), "activations"));
    // Without a quantization_config (or with method fp32) tools would show fp32 for a quantized model.
    const std::string removed = load_with([](J&, J& config) { config.erase("quantization_config"); });
    CHECK(has(removed, "layer 'wte' is quantized"));
    CHECK(has(removed, "no quantization_config"));
    CHECK(has(load_with([](J& q, J&) { q["method"] = "fp32"; }), "method 'fp32'"));

    // GPTQ stores a layer whose one group spans the row per channel: it agrees with w4-g128.
    qlm::QuantizeOptions gptq;
    gptq.method = "gptq";
    gptq.weights = {4, qlm::GranularityKind::per_group, 128, true};
    const auto calibration = qlm_test::calibration_from(token_stream(600, small_config().vocab_size), 4, 32);
    const auto grouped = qlm::quantize_gpt2(pool, weights, gptq, &calibration);
    REQUIRE(grouped.model.blocks()[0].c_attn.quantized()->spec().granularity == qlm::GranularityKind::per_channel);
    REQUIRE(grouped.model.blocks()[0].mlp_proj.quantized()->spec() == gptq.weights);
    save(grouped.model, grouped.info);
    CHECK(load_with([](J&, J&) {}).empty());
    const std::string asym = load_with([](J& q, J&) {
        q["scheme"] = "w4-g128-asym";
        q["sym"] = false;
    });
    CHECK(has(asym, "stored as w4-channel-sym"));
    CHECK(has(asym, "w4-g128-asym"));

    // A method whose quantized layers are absent.
    save(qlm::to_any_linear(weights), {});
    CHECK(load_with([](J&, J&) {}).empty());
    CHECK(has(load_with([](J& q, J&) { q["method"] = "gptq"; }), "no layer of the blocks is quantized"));

    // save_checkpoint does not write what load_checkpoint would refuse.
    auto wrong = result.info;
    wrong.weights.bits = 3;
    CHECK_THROWS_AS(qlm::save_checkpoint(result.model, wrong, dir), qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::save_checkpoint(result.model, {}, dir), qlm::invalid_argument);
    fs::remove_all(dir);
}

TEST_CASE("perplexity is the same number whatever the thread count") {
    const auto cfg = small_config();
    const auto model = qlm::to_any_linear(qlm::random_gpt2_weights(cfg, 5));
    const auto stream = token_stream(300, cfg.vocab_size);
    qlm::PerplexityOptions o;
    o.max_length = 64;
    o.stride = 24;
    std::vector<double> values;
    for (std::size_t threads : {1, 2, 3}) {
        qlm::ThreadPool pool(threads);
        const auto r = qlm::perplexity(pool, model, stream, o);
        CHECK(r.scored_tokens == stream.size() - 1);
        values.push_back(r.perplexity);
    }
    CHECK(values[0] == values[1]);
    CHECK(values[0] == values[2]);
    CHECK(values[0] > 1.0);
}

TEST_CASE("mixed precision: salient input channels at 8 bits, the rest at 4") {
    qlm::ThreadPool pool(2);
    const auto cfg = small_config();
    const auto weights = qlm::random_gpt2_weights(cfg, 11);
    const auto stream = token_stream(2000, cfg.vocab_size);
    const auto calibration = qlm_test::calibration_from(stream, 6, 64);
    qlm::QuantizeOptions options;
    options.weights = {4, qlm::GranularityKind::per_group, 64, true};
    options.salient_fraction = 0.05;
    const auto mixed = qlm::quantize_gpt2(pool, weights, options, &calibration);
    const auto& layer = mixed.model.blocks()[1].c_fc.get<qlm::MixedLinear>();
    CHECK(layer.salient_columns().size() == 7);  // ceil(0.05 · 128)
    CHECK(layer.salient().bits() == 8);

    // forward() equals x · Ŵᵀ with Ŵ = the base layer's weights plus the salient part.
    const std::size_t k = layer.in_features(), n = layer.out_features();
    std::vector<float> x(2 * k), y(2 * n), row(k);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.11f * static_cast<float>(i)) - 0.2f;
    layer.forward(pool, x.data(), 2, y.data());
    std::vector<float> expected(y.size());
    for (std::size_t o = 0; o < n; ++o) {
        layer.dequantize_row(o, row);
        for (std::size_t r = 0; r < 2; ++r) {
            double acc = layer.bias().data()[o];
            for (std::size_t j = 0; j < k; ++j) acc += static_cast<double>(x[r * k + j]) * row[j];
            expected[r * n + o] = static_cast<float>(acc);
        }
    }
    CHECK(relative_error(y, expected) < 1e-5);

    // Closer to the float model than plain 4-bit RTN, and a bit-exact checkpoint round trip.
    const auto prompt = std::span<const std::int32_t>(stream).subspan(50, 40);
    const auto reference = last_logits(pool, qlm::to_any_linear(weights), prompt);
    options.salient_fraction = 0.0;
    const auto plain = qlm::quantize_gpt2(pool, weights, options);
    const auto mixed_logits = last_logits(pool, mixed.model, prompt);
    CHECK(relative_error(mixed_logits, reference) < relative_error(last_logits(pool, plain.model, prompt), reference));
    const fs::path dir = temp_dir("ckpt_mixed");
    qlm::save_checkpoint(mixed.model, mixed.info, dir);
    CHECK(last_logits(pool, qlm::load_checkpoint(dir).model, prompt) == mixed_logits);
    CHECK(qlm::size_report(mixed.model).linear_bytes > qlm::size_report(plain.model).linear_bytes);
    fs::remove_all(dir);

    options.method = "gptq";
    options.salient_fraction = 0.05;
    CHECK_THROWS_AS(qlm::quantize_gpt2(pool, weights, options, &calibration), qlm::invalid_argument);
}

TEST_CASE("AWQ activation scales (mlp.act.scales): same function, saved, loaded and validated") {
    qlm::ThreadPool pool(2);
    const auto cfg = small_config();
    auto weights = qlm::random_gpt2_weights(cfg, 11);
    const auto stream = token_stream(600, cfg.vocab_size);
    const auto prompt = std::span<const std::int32_t>(stream).subspan(20, 30);
    const auto reference = last_logits(pool, qlm::to_any_linear(weights), prompt);

    // GELU(x) / s followed by W diag(s) is the same function as GELU(x) followed by W.
    auto model = qlm::to_any_linear(weights);
    const std::size_t inner = cfg.inner();
    qlm::Tensor<float> s(qlm::Shape{inner});
    for (std::size_t j = 0; j < inner; ++j) s.data()[j] = 0.25f + static_cast<float>((j * 7919) % 97) / 24.0f;
    auto& block = model.mutable_blocks()[1];
    const auto& proj = block.mlp_proj.get<qlm::DenseLinear>();
    qlm::Tensor<float> w = proj.weight();
    for (std::size_t r = 0; r < w.dim(0); ++r)
        for (std::size_t j = 0; j < inner; ++j) w.data()[r * inner + j] *= s.data()[j];
    block.mlp_proj = qlm::DenseLinear(std::move(w), proj.bias());
    block.mlp_act_scale = s;
    const auto scaled = last_logits(pool, model, prompt);
    CHECK(relative_error(scaled, reference) < 1e-5);

    const fs::path dir = temp_dir("act_scales");
    qlm::save_checkpoint(model, {}, dir);
    CHECK(qlm::SafetensorsFile::open(dir / "model.safetensors").contains("h.1.mlp.act.scales"));
    const auto loaded = qlm::load_checkpoint(dir);
    CHECK(loaded.model.blocks()[1].mlp_act_scale.numel() == inner);
    CHECK(loaded.model.blocks()[0].mlp_act_scale.numel() == 0);
    CHECK(last_logits(pool, loaded.model, prompt) == scaled);
    fs::remove_all(dir);

    auto bad = loaded.model.blocks();
    bad[1].mlp_act_scale.data()[5] = 0.0f;
    CHECK_THROWS_AS(qlm::GPT2Model<qlm::AnyLinear>(cfg, loaded.model.wte(), loaded.model.wpe(), bad, loaded.model.ln_f()),
                    qlm::invalid_argument);
    bad[1].mlp_act_scale = qlm::Tensor<float>(qlm::Shape{inner - 1});
    CHECK_THROWS_AS(qlm::GPT2Model<qlm::AnyLinear>(cfg, loaded.model.wte(), loaded.model.wpe(), bad, loaded.model.ln_f()),
                    qlm::shape_error);

    // A few hidden units with large activations: AWQ scales mlp.c_proj through them, and it helps.
    for (auto& b : weights.blocks) {
        qlm::Tensor<float> fc = b.c_fc.weight(), bias = b.c_fc.bias();
        for (std::size_t j = 0; j < inner; j += 37) {
            for (std::size_t k = 0; k < cfg.n_embd; ++k) fc.data()[j * cfg.n_embd + k] *= 12.0f;
            bias.data()[j] = std::abs(bias.data()[j]) * 12.0f + 1.0f;
        }
        b.c_fc = qlm::DenseLinear(std::move(fc), std::move(bias));
    }
    const auto outlier_reference = last_logits(pool, qlm::to_any_linear(weights), prompt);
    const auto calibration = qlm_test::calibration_from(token_stream(2000, cfg.vocab_size), 8, 64);
    qlm::QuantizeOptions options;
    options.method = "awq";
    options.weights = {3, qlm::GranularityKind::per_group, 64, false};
    options.awq_scale_activation = false;
    const auto plain = qlm::quantize_gpt2(pool, weights, options, &calibration);
    options.awq_scale_activation = true;
    const auto with_act = qlm::quantize_gpt2(pool, weights, options, &calibration);
    std::size_t scaled_blocks = 0;
    for (const auto& b : plain.model.blocks()) CHECK(b.mlp_act_scale.numel() == 0);
    for (const auto& b : with_act.model.blocks()) scaled_blocks += b.mlp_act_scale.numel() == inner;
    CHECK(scaled_blocks > 0);
    const double err_plain = relative_error(last_logits(pool, plain.model, prompt), outlier_reference);
    const double err_act = relative_error(last_logits(pool, with_act.model, prompt), outlier_reference);
    MESSAGE("AWQ W3 logit error, mlp.c_proj unscaled " << err_plain << ", with activation scales " << err_act);
    CHECK(err_act < err_plain);
}

TEST_CASE("fp16 and bf16: layers and the tied head in 16 bits, saved and loaded as such, close to fp32") {
    qlm::ThreadPool pool(2);
    const auto tokens = token_stream(12, small_config().vocab_size);
    const auto weights = qlm::random_gpt2_weights(small_config(), 8);
    const auto reference = last_logits(pool, qlm::to_any_linear(weights), tokens);
    for (const std::string method : {"fp16", "bf16"}) {
        INFO(method);
        qlm::QuantizeOptions options;
        options.method = method;
        options.quantize_head = true;
        const auto result = qlm::quantize_gpt2(pool, weights, options);
        const bool fp16 = method == "fp16";
        CHECK((fp16 ? result.model.blocks()[1].c_fc.holds<qlm::HalfLinear<qlm::fp16_t>>()
                    : result.model.blocks()[1].c_fc.holds<qlm::HalfLinear<qlm::bf16_t>>()));
        CHECK(result.info.details["head"] == method);
        const auto logits = last_logits(pool, result.model, tokens);
        const double err = relative_error(logits, reference);
        MESSAGE(method << " logits vs fp32: relative error " << err);
        CHECK(err < (fp16 ? 2e-3 : 2e-2));  // 11 vs 8 significant bits
        const auto size = qlm::size_report(result.model);
        CHECK(size.linear_bytes_per_weight() == doctest::Approx(2.0));
        CHECK(size.embedding_kind == method);

        const fs::path dir = temp_dir("ckpt_" + method);
        qlm::save_checkpoint(result.model, result.info, dir);
        const auto file = qlm::SafetensorsFile::open(dir / "model.safetensors");
        CHECK(file.info("h.0.attn.c_attn.weight").dtype == (fp16 ? qlm::DType::F16 : qlm::DType::BF16));
        CHECK(file.info("wte.weight").dtype == (fp16 ? qlm::DType::F16 : qlm::DType::BF16));
        const auto loaded = qlm::load_checkpoint(dir);
        CHECK(loaded.info.method == method);
        CHECK(loaded.model.wte().numel() == 0);  // the embedding lives in the 16-bit tied head
        CHECK(last_logits(pool, loaded.model, tokens) == logits);
        fs::remove_all(dir);
    }
}

TEST_CASE("a Hugging Face checkpoint stored in fp16 loads in 16 bits, exactly as its fp32 conversion computes") {
    qlm::ThreadPool pool(1);
    const auto tokens = token_stream(12, small_config().vocab_size);
    auto weights = qlm::random_gpt2_weights(small_config(), 9);
    // Round the float weights to fp16 first: then fp32 and fp16 storage hold the same values.
    auto round = [](qlm::Tensor<float>& t) {
        for (auto& v : t.span()) v = qlm::fp16_to_float(qlm::float_to_fp16(v));
    };
    round(weights.wte);
    for (auto& b : weights.blocks)
        for (auto* l : {&b.c_attn, &b.attn_proj, &b.c_fc, &b.mlp_proj}) {
            qlm::Tensor<float> w = l->weight();
            round(w);
            *l = qlm::DenseLinear(std::move(w), l->bias());
        }
    const auto fp32 = last_logits(pool, qlm::to_any_linear(weights), tokens);
    qlm::QuantizeOptions options;
    options.method = "fp16";
    options.quantize_head = true;
    const auto result = qlm::quantize_gpt2(pool, weights, options);
    const fs::path dir = temp_dir("hf_fp16");
    qlm::save_checkpoint(result.model, result.info, dir);
    // Drop the quantization_config and the qlm metadata: a plain Hugging Face fp16 folder.
    {
        std::ifstream in(dir / "config.json");
        auto config = nlohmann::json::parse(in);
        in.close();
        config.erase("quantization_config");
        std::ofstream(dir / "config.json") << config.dump();
    }
    const auto loaded = qlm::load_checkpoint(dir);
    CHECK(loaded.info.method == "fp32");
    CHECK(loaded.model.blocks()[0].c_attn.holds<qlm::HalfLinear<qlm::fp16_t>>());
    CHECK(relative_error(last_logits(pool, loaded.model, tokens), fp32) < 1e-5);  // same values, another summation order
    fs::remove_all(dir);
}

TEST_CASE("int8 activations on a weight-only method (W4A8): recorded, saved, loaded, and the head follows") {
    qlm::ThreadPool pool(2);
    const auto tokens = token_stream(12, small_config().vocab_size);
    const auto weights = qlm::random_gpt2_weights(small_config(), 10);
    qlm::QuantizeOptions options;
    options.weights = {4, qlm::GranularityKind::per_group, 64, true};
    options.quantize_head = true;
    options.int8_activations = true;
    const auto result = qlm::quantize_gpt2(pool, weights, options);
    CHECK(result.info.activations == "int8-dynamic");
    CHECK(result.model.blocks()[0].mlp_proj.quantized()->activations() == qlm::ActQuant::int8_dynamic);
    CHECK(result.model.tied_head()->quantized()->activations() == qlm::ActQuant::int8_dynamic);
    const fs::path dir = temp_dir("ckpt_w4a8");
    qlm::save_checkpoint(result.model, result.info, dir);
    const auto loaded = qlm::load_checkpoint(dir);
    CHECK(loaded.model.blocks()[0].mlp_proj.quantized()->activations() == qlm::ActQuant::int8_dynamic);
    CHECK(loaded.model.tied_head()->quantized()->activations() == qlm::ActQuant::int8_dynamic);
    CHECK(last_logits(pool, loaded.model, tokens) == last_logits(pool, result.model, tokens));
    fs::remove_all(dir);
    options.method = "int8-dynamic";  // already int8 activations: the flag is for weight-only methods
    CHECK_THROWS_AS(qlm::quantize_gpt2(pool, weights, options), qlm::invalid_argument);
    options.method = "bf16";
    CHECK_THROWS_AS(qlm::quantize_gpt2(pool, weights, options), qlm::invalid_argument);
}
