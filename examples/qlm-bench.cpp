// qlm-bench: end-to-end prefill and decode speed of a GPT-2 model, fp32 against quantized
// variants, measured in one process (random weights of a chosen shape, or a checkpoint).
#include "cli.hpp"

#include <qlm/eval/size_report.hpp>
#include <qlm/eval/speed.hpp>
#include <qlm/model/load_gpt2.hpp>
#include <qlm/model/quantize.hpp>
#include <qlm/model/random_weights.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace {

const char* kUsage = R"(usage: qlm-bench [options]
  --model DIR          a GPT-2 checkpoint directory; default: random weights of --shape
  --shape NAME         124m (default) | tiny (the bundled model's shape)
  --threads N          default: all cores
  --prompt-tokens N    prefill length (default 128)
  --decode-tokens N    decode steps (default 128)
  --repetitions N      runs per variant; the median is reported (default 3)
  --variants LIST      comma-separated: fp32,w8a8,w4g128,w3g128 (default: all)
  --profile            print where decode time goes (per operation) and the bandwidth reached
)";

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

    qlm::GPT2FloatWeights weights;
    if (!model_dir.empty()) {
        weights = qlm::load_gpt2_weights(model_dir);
    } else {
        qlm::GPT2Config config = qlm::gpt2_124m_config();
        if (shape == "tiny") {
            config.n_layer = 4;
            config.n_head = 4;
            config.n_embd = 128;
            config.n_positions = 256;
        } else if (shape != "124m") {
            throw qlm::invalid_argument("unknown --shape '" + shape + "' (124m, tiny)");
        }
        weights = qlm::random_gpt2_weights(config, 1);
    }
    if (prompt_tokens + decode_tokens > weights.config.n_positions)
        throw qlm::invalid_argument("prompt + decode tokens exceed the context of " + std::to_string(weights.config.n_positions));
    const std::string variants = args.get("variants", "fp32,w8a8,w4g128,w3g128");
    const bool profile = args.has("profile");
    args.reject_unknown();
    qlm::ThreadPool pool(threads);
    const auto& c = weights.config;
    std::printf("qlm-bench: %s, %zu layers, n_embd %zu, vocab %zu, %zu threads, prompt %zu, decode %zu, median of %d\n",
                model_dir.empty() ? ("random weights, shape " + shape).c_str() : model_dir.c_str(), c.n_layer, c.n_embd,
                c.vocab_size, pool.size(), prompt_tokens, decode_tokens, reps);
    std::printf("%-10s %10s %12s %14s %14s %10s %10s\n", "weights", "size MB", "linear B/w", "prefill tok/s", "decode tok/s",
                "prefill x", "decode x");
    qlm::SpeedResult base{};
    std::size_t at = 0;
    while (at < variants.size()) {
        const std::size_t comma = std::min(variants.find(',', at), variants.size());
        const std::string v = variants.substr(at, comma - at);
        at = comma + 1;
        qlm::QuantizeOptions o;
        o.quantize_head = true;  // as llama.cpp's quantized files do
        if (v == "w8a8") {
            o.method = "int8-dynamic";
        } else if (v == "w4g128" || v == "w3g128") {
            o.method = "rtn";
            o.weights = qlm::QuantSpec{v[1] - '0', qlm::GranularityKind::per_group, 128, true};
        } else if (v != "fp32") {
            throw qlm::invalid_argument("unknown variant '" + v + "' (fp32, w8a8, w4g128, w3g128)");
        }
        const auto model = v == "fp32" ? qlm::to_any_linear(weights) : qlm::quantize_gpt2(pool, weights, o).model;
        qlm::ForwardProfile decode_profile;
        const auto speed = qlm::measure_speed(pool, model, prompt_tokens, decode_tokens, reps, profile ? &decode_profile : nullptr);
        if (v == "fp32" || base.decode_tokens_per_second == 0.0) base = speed;
        const auto size = qlm::size_report(model);
        std::printf("%-10s %10.1f %12.3f %14.1f %14.1f %10.2f %10.2f\n", v.c_str(), size.total_bytes() / 1e6,
                    size.linear_bytes_per_weight(), speed.prefill_tokens_per_second, speed.decode_tokens_per_second,
                    speed.prefill_tokens_per_second / base.prefill_tokens_per_second,
                    speed.decode_tokens_per_second / base.decode_tokens_per_second);
        if (profile) {
            // Decode reads every linear weight and the tied head (wte) once per token.
            const double head_bytes = model.tied_head() ? static_cast<double>(model.tied_head()->weight_bytes())
                                                        : static_cast<double>(model.wte().bytes());
            const double bytes_per_token = static_cast<double>(size.linear_bytes) + head_bytes;
            std::printf("  decode profile (%zu tokens, %.2f ms/token; weights %.1f MB/token -> %.1f GB/s):\n", decode_tokens,
                        1e3 * decode_profile.total() / static_cast<double>(decode_tokens), bytes_per_token / 1e6,
                        bytes_per_token * speed.decode_tokens_per_second / 1e9);
            for (int op = 0; op < qlm::ForwardProfile::count; ++op)
                if (decode_profile.seconds[op] > 0)
                    std::printf("    %-14s %8.3f ms/token %6.1f%%\n", qlm::ForwardProfile::names[op],
                                1e3 * decode_profile.seconds[op] / static_cast<double>(decode_tokens),
                                100.0 * decode_profile.seconds[op] / decode_profile.total());
        }
        std::fflush(stdout);
    }
    return 0;
} catch (const std::exception& e) {
    return qlm::cli::fail("qlm-bench", e);
}
