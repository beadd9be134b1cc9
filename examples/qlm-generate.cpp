// qlm-generate: load a GPT-2 checkpoint (the bundled model by default) and generate text, or
// token ids (--prompt-ids / --print-ids: any checkpoint, with or without usable tokenizer files).
#include "cli.hpp"
#include "cli_device.hpp"

#include <qlm/engine/generate.hpp>
#include <qlm/model/interop.hpp>
#include <qlm/tokenizer/gpt2_tokenizer.hpp>

#include <charconv>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

const char* kUsage = R"(usage: qlm-generate [options]
  --model DIR         Hugging Face GPT-2, qlm, AutoGPTQ or AutoAWQ checkpoint (config.json, model.safetensors, tokenizer files)
                      default: the bundled model, )" QLM_SOURCE_DIR R"(/models/gpt2-tiny-kjv
  --prompt TEXT       default "Once upon a time"
  --prompt-ids LIST   the prompt as comma-separated token ids, e.g. 464,2068 (instead of --prompt)
  --print-ids         print the generated token ids, comma-separated, instead of text; with --prompt-ids
                      no tokenizer is needed (nor loaded), so any checkpoint can run
  --max-tokens N      tokens to generate (default 64)
  --temperature T     0 = greedy (default 0.8)
  --top-k K           0 = off (default 40)
  --top-p P           (0, 1] (default 0.95)
  --min-p P           [0, 1], 0 = off: keep tokens with p >= P * p_max (default 0)
  --repetition-penalty R   > 0, 1 = off: divides positive / multiplies negative logits of prompt
                      and output tokens (default 1)
  --presence-penalty X     [-2, 2]: subtracted once from the logit of every token the output holds (default 0)
  --frequency-penalty X    [-2, 2]: subtracted per occurrence in the output (default 0)
  --logit-bias ID:BIAS     add BIAS to token ID's logit (repeatable; -inf bans it, +100 forces it)
  --seed S            sampling seed (default 42)
  --stop TEXT         stop when the output contains TEXT (repeatable; needs the tokenizer)
  --stop-token-id ID  stop when token ID is generated (repeatable)
  --include-stop      keep the stop string or stop token that ended the output
  --min-tokens N      no EOS, stop token or stop string ends the output before N tokens (default 0)
  --ignore-eos        generate past the end-of-text token
  --threads N         default: all cores
  --device D          cpu (default), cuda or cuda:N (builds with the CUDA backend)
  --no-cache          recompute the whole prefix every step (no KV cache)
  --compare-cache     generate with and without the KV cache and report the speed-up
  --quiet             print only the generated text (or ids)
)";

// "464,2068,1" -> {464, 2068, 1}
std::vector<std::int32_t> parse_ids(const std::string& list) {
    std::vector<std::int32_t> ids;
    std::size_t at = 0;
    while (at <= list.size()) {
        const std::size_t comma = std::min(list.find(',', at), list.size());
        const std::string item = list.substr(at, comma - at);
        std::int32_t id = 0;
        const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
        if (item.empty() || ec != std::errc() || end != item.data() + item.size() || id < 0)
            throw qlm::invalid_argument("option --prompt-ids: '" + item + "' is not a token id (expected comma-separated integers >= 0)");
        ids.push_back(id);
        at = comma + 1;
    }
    return ids;
}

// "50256:-inf" -> {50256, -inf}
std::pair<std::int32_t, float> parse_bias(const std::string& item) {
    const std::size_t colon = item.find(':');
    std::int32_t id = -1;
    float bias = 0.0f;
    bool ok = colon != std::string::npos && colon > 0 && colon + 1 < item.size();
    if (ok) {
        const auto [e1, c1] = std::from_chars(item.data(), item.data() + colon, id);
        const std::size_t at = colon + 1 + (item[colon + 1] == '+' && colon + 2 < item.size());  // "+100"
        const auto [e2, c2] = std::from_chars(item.data() + at, item.data() + item.size(), bias);
        ok = c1 == std::errc() && e1 == item.data() + colon && c2 == std::errc() && e2 == item.data() + item.size() && id >= 0;
    }
    if (!ok) throw qlm::invalid_argument("option --logit-bias: '" + item + "' is not ID:BIAS (a token id >= 0, a number, e.g. 50256:-inf)");
    return {id, bias};
}

std::int32_t parse_id(const std::string& option, const std::string& item) {
    std::int32_t id = -1;
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size() || id < 0)
        throw qlm::invalid_argument("option --" + option + ": '" + item + "' is not a token id (an integer >= 0)");
    return id;
}

std::string ids_text(const std::vector<std::int32_t>& ids) {
    std::string out;
    for (std::size_t i = 0; i < ids.size(); ++i) {
        if (i) out += ',';  // appends only: GCC 12's false -Wrestrict on "literal" + std::string
        out += std::to_string(ids[i]);
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) try {
    const qlm::cli::Args args(argc, argv, {"no-cache", "compare-cache", "quiet", "print-ids", "include-stop", "ignore-eos", "help"});
    if (args.has("help")) {
        std::fputs(kUsage, stdout);
        return 0;
    }
    const std::string model_dir = args.get("model", std::string(QLM_SOURCE_DIR) + "/models/gpt2-tiny-kjv");
    if (args.has("prompt") && args.has("prompt-ids")) throw qlm::invalid_argument("give --prompt or --prompt-ids, not both");
    const std::string prompt = args.get("prompt", "Once upon a time");
    const std::optional<std::vector<std::int32_t>> prompt_ids =
        args.has("prompt-ids") ? std::optional(parse_ids(args.get("prompt-ids", ""))) : std::nullopt;
    const bool print_ids = args.has("print-ids");
    qlm::GenerateOptions options;
    options.sampling.max_tokens = args.number<std::size_t>("max-tokens", 64);
    options.sampling.temperature = args.number<float>("temperature", 0.8f);
    options.sampling.top_k = args.number<std::size_t>("top-k", 40);
    options.sampling.top_p = args.number<float>("top-p", 0.95f);
    options.sampling.seed = args.number<std::uint64_t>("seed", 42);
    options.sampling.min_p = args.number<float>("min-p", 0.0f);
    options.sampling.repetition_penalty = args.number<float>("repetition-penalty", 1.0f);
    options.sampling.presence_penalty = args.number<float>("presence-penalty", 0.0f);
    options.sampling.frequency_penalty = args.number<float>("frequency-penalty", 0.0f);
    for (const auto& item : args.all("logit-bias")) options.sampling.logit_bias.push_back(parse_bias(item));
    for (const auto& item : args.all("stop-token-id")) options.sampling.stop_token_ids.push_back(parse_id("stop-token-id", item));
    options.sampling.min_tokens = args.number<std::size_t>("min-tokens", 0);
    options.sampling.include_stop_str_in_output = args.has("include-stop");
    options.sampling.ignore_eos = args.has("ignore-eos");
    options.sampling.stop = args.all("stop");
    options.sampling.validate();
    const std::size_t threads = args.threads();
    const qlm::cli::DeviceChoice device = qlm::cli::parse_device(args.get("device", "cpu"));
    const bool quiet = args.has("quiet");
    const bool compare = args.has("compare-cache");
    options.cache = args.has("no-cache") ? qlm::CacheMode::recompute : qlm::CacheMode::kv_cache;
    args.reject_unknown();

    const auto t0 = std::chrono::steady_clock::now();
    auto loaded = qlm::load_any_checkpoint(model_dir);
    std::optional<qlm::GPT2Tokenizer> tokenizer;
    if (!prompt_ids || !print_ids || !options.sampling.stop.empty()) {
        try {
            tokenizer = qlm::GPT2Tokenizer::from_directory(model_dir);
        } catch (const qlm::error& e) {
            throw qlm::error(std::string(e.what()) + " (--prompt-ids with --print-ids runs without a tokenizer)");
        }
    }
    const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    options.eos_token_id = loaded.model.config().eos_token_id;
    qlm::ThreadPool pool(threads);
    return qlm::cli::on_device(device, pool, std::move(loaded.model), [&](auto& ctx, const auto& model) {
        auto run = [&](const qlm::GenerateOptions& o) {
            if (!prompt_ids) return qlm::generate(ctx, model, *tokenizer, prompt, o);
            return tokenizer ? qlm::generate(ctx, model, *tokenizer, *prompt_ids, o) : qlm::generate(ctx, model, *prompt_ids, o);
        };
        if (!quiet) {
            const auto& c = model.config();
            std::fprintf(stderr, "qlm-generate: %s: %zu layers, %zu heads, n_embd %zu, context %zu, %s (%s), %.1f MB, loaded in %.2f s, %s\n",
                         model_dir.c_str(), c.n_layer, c.n_head, c.n_embd, c.n_positions, loaded.info.method.c_str(),
                         loaded.info.method == "fp32" ? "fp32" : qlm::to_string(loaded.info.weights).c_str(),
                         model.parameter_bytes() / 1e6, load_seconds, qlm::cli::device_name(ctx).c_str());
            if (print_ids) {
                options.on_token = [first = true](std::int32_t token) mutable {
                    std::printf("%s%d", first ? "" : ",", token);
                    std::fflush(stdout);
                    first = false;
                };
            } else {
                std::printf("%s", prompt_ids ? tokenizer->decode(*prompt_ids).c_str() : prompt.c_str());
                std::fflush(stdout);
                options.on_text = [](std::string_view delta) {  // released text: whole UTF-8 characters, stop strings cut
                    std::fwrite(delta.data(), 1, delta.size(), stdout);
                    std::fflush(stdout);
                };
            }
        }
        const auto result = run(options);
        if (quiet) {
            if (print_ids)
                std::printf("%s\n", ids_text(result.tokens).c_str());
            else
                std::printf("%s%s\n", prompt_ids ? tokenizer->decode(*prompt_ids).c_str() : prompt.c_str(), result.text.c_str());
        } else {
            std::printf("\n");
            std::fprintf(stderr, "\nprompt: %zu tokens, %.1f tokens/s | generated: %zu tokens, %.1f tokens/s (%s) | finish: %s\n",
                         result.prompt_tokens.size(), result.prefill_tokens_per_second(), result.tokens.size(),
                         result.decode_tokens_per_second(), options.cache == qlm::CacheMode::kv_cache ? "KV cache" : "no cache",
                         qlm::to_string(result.finish_reason));
        }
        if (compare) {
            auto other = options;
            other.on_token = nullptr;
            other.on_text = nullptr;
            other.cache = options.cache == qlm::CacheMode::kv_cache ? qlm::CacheMode::recompute : qlm::CacheMode::kv_cache;
            const auto second = run(other);
            const auto& cached = options.cache == qlm::CacheMode::kv_cache ? result : second;
            const auto& uncached = options.cache == qlm::CacheMode::kv_cache ? second : result;
            std::fprintf(stderr, "KV cache: %.1f tokens/s, no cache: %.1f tokens/s, speed-up %.1fx over %zu tokens; same tokens: %s\n",
                         cached.decode_tokens_per_second(), uncached.decode_tokens_per_second(),
                         cached.decode_tokens_per_second() / uncached.decode_tokens_per_second(), cached.tokens.size(),
                         cached.tokens == uncached.tokens ? "yes" : "no");
        }
        return 0;
    });
} catch (const std::exception& e) {
    return qlm::cli::fail("qlm-generate", e);
}
