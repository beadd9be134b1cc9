// qlm-bench-serve: one serving workload (N requests, random prompts behind a shared system prompt,
// random output lengths, all at once or Poisson arrivals) run through the engine four ways: one
// request at a time (the baseline), static batching, continuous batching, and continuous batching
// with prefix caching. Prints throughput, time to first token, inter-token latency, peak KV usage,
// preemptions and the prompt tokens the prefix cache spared, one row per way.
#include "cli_model.hpp"

#include <qlm/backend/cpu/cpu_features.hpp>
#include <qlm/engine/engine.hpp>
#include <qlm/model/load_gpt2.hpp>
#include <qlm/model/random_weights.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

const char* kUsage = R"(usage: qlm-bench-serve [options]
  --model DIR          a GPT-2 checkpoint directory; default: random weights of --shape
  --shape NAME         tiny (default: the bundled model's shape) | 124m
  --method NAME        weights: fp32 (default), fp16, bf16, w8a8, wNgG, wNa8gG (as qlm-bench's --variants)
  --requests N         requests in the workload (default 64)
  --max-prompt P       each prompt adds 1..P random tokens to the system prompt (default 64)
  --max-output O       each request generates 1..O tokens, EOS ignored (default 64)
  --system-prompt S    tokens of a system prompt every request starts with (default 32)
  --rate R             Poisson arrivals, R requests/s; 0 (default): all at once
  --max-running N      sequences a step may run (default 16)
  --token-budget N     tokens a step may run (default 512)
  --kv-mb N            KV cache budget in MiB (default: room for max-running sequences of full length)
  --modes LIST         comma-separated, default one-at-a-time,static,continuous,continuous+prefix
  --threads N          default: all cores
  --seed N             workload seed (default 1)
)";

using clock_type = std::chrono::steady_clock;

struct Workload {
    std::vector<std::vector<std::int32_t>> prompts;
    std::vector<std::size_t> max_tokens;
    std::vector<double> arrival;  // seconds after the start
};

Workload make_workload(std::size_t n, std::size_t system, std::size_t max_prompt, std::size_t max_output, double rate,
                       std::size_t vocab, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<std::int32_t> token(0, static_cast<std::int32_t>(vocab) - 2);  // never EOS (vocab - 1)
    std::vector<std::int32_t> system_prompt(system);
    for (auto& t : system_prompt) t = token(rng);
    Workload w;
    double t = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
        auto prompt = system_prompt;
        for (std::size_t k = std::uniform_int_distribution<std::size_t>(1, max_prompt)(rng); k > 0; --k) prompt.push_back(token(rng));
        w.prompts.push_back(std::move(prompt));
        w.max_tokens.push_back(std::uniform_int_distribution<std::size_t>(1, max_output)(rng));
        if (rate > 0) t += std::exponential_distribution<double>(rate)(rng);
        w.arrival.push_back(t);
    }
    return w;
}

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    const auto rank = static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(rank, v.size() - 1)];
}

struct Row {
    std::string mode;
    double seconds = 0, tokens_per_second = 0, requests_per_second = 0, ttft_p50 = 0, ttft_p95 = 0, ttft_p99 = 0, itl_p50 = 0,
           itl_p95 = 0, kv_peak = 0, kv_util = 0, kv_contiguous = 0;
    std::uint64_t generated = 0, preemptions = 0, prefix_skipped = 0, steps = 0;
};

// Runs the workload, adding each request at its arrival time, stepping in between.
template <class Sched, class Model>
Row run(const std::string& mode, const Model& model, qlm::ThreadPool& pool, const Workload& w, const qlm::EngineConfig& config) {
    qlm::Engine<Model, Sched> engine(model, pool, config);
    qlm::SamplingParams params;
    params.temperature = 0.0f;
    params.ignore_eos = true;
    std::vector<clock_type::time_point> due(w.prompts.size());
    const auto start = clock_type::now();
    std::size_t next = 0;
    while (next < w.prompts.size() || engine.has_unfinished()) {
        const double now = std::chrono::duration<double>(clock_type::now() - start).count();
        for (; next < w.prompts.size() && w.arrival[next] <= now; ++next) {
            params.max_tokens = w.max_tokens[next];
            due[next] = start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(w.arrival[next]));
            engine.add_request(w.prompts[next], params);  // ids 1, 2, ... in workload order
        }
        if (!engine.step() && next < w.prompts.size())
            std::this_thread::sleep_until(start + std::chrono::duration_cast<clock_type::duration>(
                                                      std::chrono::duration<double>(w.arrival[next])));
    }
    const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    const auto outputs = engine.poll();
    const auto stats = engine.stats();
    Row row;
    row.mode = mode;
    row.seconds = seconds;
    std::vector<double> ttft, itl;
    for (const auto& o : outputs) {
        const std::size_t i = o.id - 1;
        if (o.finish_reason != qlm::RequestFinishReason::length || o.tokens.size() != w.max_tokens[i])
            throw qlm::error("request " + std::to_string(o.id) + " ended with " + qlm::to_string(o.finish_reason) + " after " +
                             std::to_string(o.tokens.size()) + " of " + std::to_string(w.max_tokens[i]) + " tokens: " + o.error);
        // From the arrival the workload scheduled (the engine saw the request at most one step later).
        ttft.push_back(std::chrono::duration<double>(o.timings.first_token - due[i]).count());
        for (const double gap : o.timings.inter_token_seconds()) itl.push_back(gap);
        row.generated += o.tokens.size();
    }
    row.tokens_per_second = static_cast<double>(row.generated) / seconds;
    row.ttft_p50 = percentile(ttft, 50);
    row.ttft_p95 = percentile(ttft, 95);
    row.ttft_p99 = percentile(ttft, 99);
    row.requests_per_second = static_cast<double>(outputs.size()) / seconds;
    row.itl_p50 = percentile(itl, 50);
    row.itl_p95 = percentile(itl, 95);
    row.kv_peak = stats.kv_peak_usage;
    row.kv_util = stats.kv_utilisation_mean;
    row.kv_contiguous = stats.kv_contiguous_utilisation_mean;
    row.preemptions = stats.preemptions;
    row.prefix_skipped = stats.prefix_skipped_tokens;
    row.steps = stats.steps;
    return row;
}

}  // namespace

int main(int argc, char** argv) try {
    const qlm::cli::Args args(argc, argv, {"help"});
    if (args.has("help")) {
        std::fputs(kUsage, stdout);
        return 0;
    }
    const std::string model_dir = args.get("model", "");
    const std::string shape = args.get("shape", "tiny");
    const std::string method = args.get("method", "fp32");
    const std::size_t requests = args.number<std::size_t>("requests", 64);
    const std::size_t max_prompt = args.number<std::size_t>("max-prompt", 64);
    const std::size_t max_output = args.number<std::size_t>("max-output", 64);
    const std::size_t system = args.number<std::size_t>("system-prompt", 32);
    const double rate = args.number<double>("rate", 0.0);
    const std::size_t max_running = args.number<std::size_t>("max-running", 16);
    const std::size_t budget = args.number<std::size_t>("token-budget", 512);
    const std::size_t kv_mb = args.number<std::size_t>("kv-mb", 0);
    const std::string mode_list = args.get("modes", "one-at-a-time,static,continuous,continuous+prefix");
    std::vector<std::string> modes;
    for (std::size_t begin = 0; begin <= mode_list.size();) {
        const std::size_t comma = std::min(mode_list.find(',', begin), mode_list.size());
        modes.push_back(mode_list.substr(begin, comma - begin));
        if (modes.back() != "one-at-a-time" && modes.back() != "static" && modes.back() != "continuous" && modes.back() != "continuous+prefix")
            throw qlm::invalid_argument("unknown mode '" + modes.back() + "' (one-at-a-time, static, continuous, continuous+prefix)");
        begin = comma + 1;
    }
    const std::size_t threads = args.threads();
    const auto seed = args.number<std::uint64_t>("seed", 1);
    args.reject_unknown();
    if (requests == 0 || max_prompt == 0 || max_output == 0) throw qlm::invalid_argument("--requests, --max-prompt and --max-output must be > 0");
    if (!(rate >= 0.0)) throw qlm::invalid_argument("--rate must be >= 0");

    qlm::ThreadPool pool(threads);
    qlm::GPT2FloatWeights weights =
        model_dir.empty() ? qlm::random_gpt2_weights(qlm::cli::shape_config(shape), 1) : qlm::load_gpt2_weights(model_dir);
    const qlm::GPT2Config cfg = weights.config;
    if (system + max_prompt + max_output > cfg.n_positions)
        throw qlm::invalid_argument("--system-prompt + --max-prompt + --max-output = " + std::to_string(system + max_prompt + max_output) +
                                    " exceeds the model's context of " + std::to_string(cfg.n_positions));
    const auto model = qlm::cli::variant_model(pool, std::move(weights), method);
    const Workload w = make_workload(requests, system, max_prompt, max_output, rate, cfg.vocab_size, seed);

    qlm::EngineConfig config;
    const std::size_t block_bytes = qlm::KVBlockLayout<16>{cfg.n_layer, cfg.n_embd}.bytes();
    config.kv_cache_bytes = kv_mb ? kv_mb << 20
                                  : max_running * qlm::KVCache<16>::blocks_for(system + max_prompt + max_output) * block_bytes;
    config.scheduler.max_running = max_running;
    config.scheduler.max_tokens_per_step = budget;

    std::size_t prompt_tokens = 0, output_tokens = 0;
    for (std::size_t i = 0; i < requests; ++i) prompt_tokens += w.prompts[i].size(), output_tokens += w.max_tokens[i];
    std::printf("qlm-bench-serve: %s, %zu layers, n_embd %zu, method %s; %s, %s (%zu threads; shared machine)\n",
                model_dir.empty() ? ("random weights, shape " + shape).c_str() : model_dir.c_str(), cfg.n_layer, cfg.n_embd,
                method.c_str(), qlm::cli::cpu_name().c_str(), qlm::cpu::isa_name(qlm::cpu::best_isa()), pool.size());
    char arrivals[64] = "all at once";
    if (rate > 0) std::snprintf(arrivals, sizeof arrivals, "Poisson arrivals, %g requests/s", rate);
    std::printf("workload: %zu requests, system prompt %zu + 1..%zu tokens (%zu prompt tokens), 1..%zu new tokens (%zu), %s; "
                "max %zu running, %zu tokens a step, KV %.1f MiB (%zu blocks of 16)\n",
                requests, system, max_prompt, prompt_tokens, max_output, output_tokens,
                arrivals, max_running, budget,
                static_cast<double>(config.kv_cache_bytes) / (1 << 20), config.kv_cache_bytes / block_bytes);
    std::printf("%-18s %8s %9s %6s %7s %9s %9s %9s %8s %8s %8s %8s %8s %8s %9s %6s\n", "mode", "time s", "tok/s", "req/s", "x base",
                "TTFT p50", "TTFT p95", "TTFT p99", "ITL p50", "ITL p95", "KV peak", "KV util", "contig.", "preempt", "prefix", "steps");
    std::printf("%-18s %8s %9s %6s %7s %9s %9s %9s %8s %8s %8s %8s %8s %8s %9s %6s\n", "", "", "", "", "", "ms", "ms", "ms", "ms", "ms",
                "%", "% mean", "% mean", "", "skipped", "");
    double base = 0.0;
    for (const std::string& mode : modes) {
        qlm::EngineConfig c = config;
        c.scheduler.prefix_caching = mode == "continuous+prefix";
        Row row;
        if (mode == "one-at-a-time") {
            c.scheduler.max_running = 1;
            row = run<qlm::Scheduler<qlm::ContinuousBatching>>(mode, model, pool, w, c);
        } else if (mode == "static") {
            row = run<qlm::Scheduler<qlm::StaticBatching>>(mode, model, pool, w, c);
        } else {
            row = run<qlm::Scheduler<qlm::ContinuousBatching>>(mode, model, pool, w, c);
        }
        if (base == 0.0) base = row.tokens_per_second;
        std::printf("%-18s %8.2f %9.1f %6.1f %7.2f %9.1f %9.1f %9.1f %8.2f %8.2f %8.1f %8.1f %8.1f %8llu %9llu %6llu\n", row.mode.c_str(),
                    row.seconds, row.tokens_per_second, row.requests_per_second, row.tokens_per_second / base, 1e3 * row.ttft_p50,
                    1e3 * row.ttft_p95, 1e3 * row.ttft_p99, 1e3 * row.itl_p50, 1e3 * row.itl_p95, 100.0 * row.kv_peak, 100.0 * row.kv_util,
                    100.0 * row.kv_contiguous, static_cast<unsigned long long>(row.preemptions),
                    static_cast<unsigned long long>(row.prefix_skipped), static_cast<unsigned long long>(row.steps));
        std::fflush(stdout);
    }
    return 0;
} catch (const std::exception& e) {
    return qlm::cli::fail("qlm-bench-serve", e);
}
