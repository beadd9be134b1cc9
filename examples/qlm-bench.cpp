// qlm-bench: end-to-end prefill and decode speed of a GPT-2 model, fp32 against quantized
// variants, measured in one process (random weights of a chosen shape, or a checkpoint). With
// --write-random-model it writes those random weights as a Hugging Face GPT-2 folder instead, so other
// engines (llama.cpp, through tools/hf_to_gguf_gpt2.py) can run the very same model.
#include "cli_device.hpp"
#include "cli_model.hpp"

#include <qlm/eval/size_report.hpp>
#include <qlm/eval/speed.hpp>
#include <qlm/io/safetensors.hpp>
#include <qlm/model/load_gpt2.hpp>
#include <qlm/model/quantize.hpp>
#include <qlm/model/random_weights.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace {

const char* kUsage = R"(usage: qlm-bench [options]
  --model DIR          a GPT-2 checkpoint directory; default: random weights of --shape
  --shape NAME         124m (default) | tiny (the bundled model's shape)
  --threads N          default: all cores
  --prompt-tokens N    prefill length (default 128)
  --decode-tokens N    decode steps (default 128)
  --repetitions N      runs per variant; the median is reported (default 3)
  --variants LIST      comma-separated, default fp32,bf16,w8a8,w4g128,w4a8g128,w3a8g128: fp32, fp16, bf16,
                       w8a8 (int8 per channel, int8 activations), wNgG (N-bit RTN, groups of G, float
                       activations), wNa8gG (the same with int8 activations per token)
  --profile            print where decode time goes (per operation) and the bandwidth reached
  --batch N[,N...]     also measure batched decode: N sequences (each prefilled with the prompt) adding
                       one token each per forward pass for --decode-tokens steps, aggregate tokens/s
  --device D           cpu (default), cuda or cuda:N (builds with the CUDA backend)
  --write-random-model DIR
                       write the random weights of --shape (the model benchmarked without --model)
                       to DIR as a Hugging Face GPT-2 folder (config.json, model.safetensors in
                       float32, GPT-2 tokenizer files), check that it loads back identically, and exit
)";

constexpr std::uint64_t kRandomSeed = 1;

bool same_values(const qlm::Tensor<float>& a, const qlm::Tensor<float>& b) {
    return a.shape() == b.shape() && std::equal(a.span().begin(), a.span().end(), b.span().begin());
}

bool same_weights(const qlm::GPT2FloatWeights& a, const qlm::GPT2FloatWeights& b) {
    auto same_ln = [](const qlm::LayerNormWeights& x, const qlm::LayerNormWeights& y) {
        return same_values(x.weight, y.weight) && same_values(x.bias, y.bias);
    };
    bool same = same_values(a.wte, b.wte) && same_values(a.wpe, b.wpe) && same_ln(a.ln_f, b.ln_f) &&
                a.blocks.size() == b.blocks.size() && !b.untied_head;
    for (std::size_t i = 0; same && i < a.blocks.size(); ++i) {
        same = same_ln(a.blocks[i].ln_1, b.blocks[i].ln_1) && same_ln(a.blocks[i].ln_2, b.blocks[i].ln_2);
        for (const qlm::LinearSlot slot : qlm::kLinearSlots) {
            const auto& x = qlm::linear_of(a.blocks[i], slot);
            const auto& y = qlm::linear_of(b.blocks[i], slot);
            same = same && same_values(x.weight(), y.weight()) && same_values(x.bias(), y.bias());
        }
    }
    return same;
}

// Writes `w` (tied head) as a GPT2LMHeadModel folder: config.json, model.safetensors with Hugging
// Face's names and Conv1D layout ([in, out]; qlm's DenseLinear holds [out, in]), and the GPT-2
// tokenizer (models/gpt2-tokenizer, under Hugging Face's file names). Then loads it back and throws
// qlm::format_error unless every tensor is bit-identical.
void write_hf_gpt2(const qlm::GPT2FloatWeights& w, const std::filesystem::path& dir) {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw qlm::io_error("cannot create " + dir.string() + ": " + ec.message());

    qlm::SafetensorsWriter writer;
    const std::string t = "transformer.";
    auto add_layer_norm = [&](const std::string& name, const qlm::LayerNormWeights& ln) {
        writer.add(name + ".weight", ln.weight);
        writer.add(name + ".bias", ln.bias);
    };
    writer.add(t + "wte.weight", w.wte);
    writer.add(t + "wpe.weight", w.wpe);
    for (std::size_t i = 0; i < w.blocks.size(); ++i) {
        const auto& b = w.blocks[i];
        const std::string p = t + "h." + std::to_string(i) + ".";
        add_layer_norm(p + "ln_1", b.ln_1);
        add_layer_norm(p + "ln_2", b.ln_2);
        for (const qlm::LinearSlot slot : qlm::kLinearSlots) {
            const qlm::DenseLinear& l = qlm::linear_of(b, slot);
            writer.add(p + qlm::hf_name(slot) + ".weight", qlm::transpose(l.weight()));
            writer.add(p + qlm::hf_name(slot) + ".bias", l.bias());
        }
    }
    add_layer_norm(t + "ln_f", w.ln_f);
    writer.set_metadata("format", "pt");
    writer.write(dir / "model.safetensors");

    nlohmann::json config = w.config.to_json();
    config["torch_dtype"] = "float32";
    std::ofstream out(dir / "config.json");
    out << config.dump(2) << "\n";
    out.close();
    if (!out) throw qlm::io_error("cannot write " + (dir / "config.json").string());

    const fs::path tokenizer = fs::path(QLM_SOURCE_DIR) / "models" / "gpt2-tokenizer";
    for (const auto& [from, to] : {std::pair{"encoder.json", "vocab.json"}, std::pair{"vocab.bpe", "merges.txt"}}) {
        fs::copy_file(tokenizer / from, dir / to, fs::copy_options::overwrite_existing, ec);
        if (ec) throw qlm::io_error("cannot copy " + (tokenizer / from).string() + " to " + (dir / to).string() + ": " + ec.message());
    }

    if (!same_weights(w, qlm::load_gpt2_weights(dir)))
        throw qlm::format_error("the model written to " + dir.string() + " does not load back to the same weights");
}

}  // namespace

int main(int argc, char** argv) try {
    const qlm::cli::Args args(argc, argv, {"help", "profile"});
    if (args.has("help")) {
        std::fputs(kUsage, stdout);
        return 0;
    }
    const std::string model_dir = args.get("model", "");
    const std::string shape = args.get("shape", "124m");
    const std::size_t threads = args.threads();
    const std::size_t prompt_tokens = args.number<std::size_t>("prompt-tokens", 128);
    const std::size_t decode_tokens = args.number<std::size_t>("decode-tokens", 128);
    const int reps = args.number<int>("repetitions", 3);
    const std::string write_dir = args.get("write-random-model", "");
    if (!write_dir.empty() && !model_dir.empty())
        throw qlm::invalid_argument("--write-random-model writes random weights of --shape; it cannot be combined with --model");

    qlm::GPT2FloatWeights weights;
    if (!model_dir.empty()) {
        weights = qlm::load_gpt2_weights(model_dir);
    } else {
        const qlm::GPT2Config config = qlm::cli::shape_config(shape);
        weights = qlm::random_gpt2_weights(config, kRandomSeed);
    }
    if (!write_dir.empty()) {
        args.reject_unknown();
        write_hf_gpt2(weights, write_dir);
        std::printf("qlm-bench: wrote the random weights of shape %s (seed %llu) to %s\n", shape.c_str(),
                    static_cast<unsigned long long>(kRandomSeed), write_dir.c_str());
        return 0;
    }
    if (prompt_tokens + decode_tokens > weights.config.n_positions)
        throw qlm::invalid_argument("prompt + decode tokens exceed the context of " + std::to_string(weights.config.n_positions));
    const std::string variants = args.get("variants", "fp32,bf16,w8a8,w4g128,w4a8g128,w3a8g128");
    const bool profile = args.has("profile");
    const std::vector<std::size_t> batches = qlm::cli::count_list("batch", args.get("batch", ""));
    const qlm::cli::DeviceChoice device = qlm::cli::parse_device(args.get("device", "cpu"));
    args.reject_unknown();
    qlm::ThreadPool pool(threads);
    const auto& c = weights.config;
    std::printf("qlm-bench: %s, %zu layers, n_embd %zu, vocab %zu, %s, prompt %zu, decode %zu, median of %d\n",
                model_dir.empty() ? ("random weights, shape " + shape).c_str() : model_dir.c_str(), c.n_layer, c.n_embd,
                c.vocab_size, device.cuda ? "CUDA" : qlm::cli::device_name(pool).c_str(), prompt_tokens, decode_tokens, reps);
    std::printf("%-10s %10s %12s %14s %14s %10s %10s\n", "weights", "size MB", "linear B/w", "prefill tok/s", "decode tok/s",
                "prefill x", "decode x");
    qlm::SpeedResult base{};
    std::size_t at = 0;
    while (at < variants.size()) {
        const std::size_t comma = std::min(variants.find(',', at), variants.size());
        const std::string v = variants.substr(at, comma - at);
        at = comma + 1;
        auto model = qlm::cli::variant_model(pool, weights, v);  // a copy of the weights for each variant
        const auto size = qlm::size_report(model);
        // Decode reads every linear weight and the tied head (wte) once per token.
        const double head_bytes = model.tied_head() ? static_cast<double>(model.tied_head()->weight_bytes())
                                                    : static_cast<double>(model.wte().bytes());
        const double bytes_per_token = static_cast<double>(size.linear_bytes) + head_bytes;
        qlm::cli::on_device(device, pool, std::move(model), [&](auto& ctx, const auto& on_device) {
            qlm::ForwardProfile decode_profile;
            const auto speed = qlm::measure_speed(ctx, on_device, prompt_tokens, decode_tokens, reps, profile ? &decode_profile : nullptr);
            if (v == "fp32" || base.decode_tokens_per_second == 0.0) base = speed;
            std::printf("%-10s %10.1f %12.3f %14.1f %14.1f %10.2f %10.2f\n", v.c_str(), size.total_bytes() / 1e6,
                        size.linear_bytes_per_weight(), speed.prefill_tokens_per_second, speed.decode_tokens_per_second,
                        speed.prefill_tokens_per_second / base.prefill_tokens_per_second,
                        speed.decode_tokens_per_second / base.decode_tokens_per_second);
            const double gbs = bytes_per_token * speed.decode_tokens_per_second / 1e9;
            if (const double peak = qlm::cli::peak_bandwidth_gbs(ctx); peak > 0)
                std::printf("  decode reads %.1f MB of weights a token: %.1f GB/s, %.1f%% of the device's %.0f GB/s\n", bytes_per_token / 1e6,
                            gbs, 100.0 * gbs / peak, peak);
            for (const std::size_t batch : batches) {
                const double rate = qlm::measure_batched_decode(ctx, on_device, batch, prompt_tokens, decode_tokens, reps);
                std::printf("  batched decode, %zu sequences: %.1f tokens/s aggregate\n", batch, rate);
            }
            if (profile) {
                std::printf("  decode profile (%zu tokens, %.2f ms/token; weights %.1f MB/token -> %.1f GB/s):\n", decode_tokens,
                            1e3 * decode_profile.total() / static_cast<double>(decode_tokens), bytes_per_token / 1e6, gbs);
                for (int op = 0; op < qlm::ForwardProfile::count; ++op)
                    if (decode_profile.seconds[op] > 0)
                        std::printf("    %-14s %8.3f ms/token %6.1f%%\n", qlm::ForwardProfile::names[op],
                                    1e3 * decode_profile.seconds[op] / static_cast<double>(decode_tokens),
                                    100.0 * decode_profile.seconds[op] / decode_profile.total());
            }
        });
        std::fflush(stdout);
    }
    return 0;
} catch (const std::exception& e) {
    return qlm::cli::fail("qlm-bench", e);
}
