// qlm-cost: what serving costs. From an instance's price per hour (the editable table
// examples/data/prices.json, or --price-per-hour) and the throughput one replica sustains (entered,
// or measured here by a short continuous-batching run of the engine), prints $ per 1K generated
// tokens and per 1K requests, on demand and on spot, the monthly bill of a fleet, and the replicas a
// target traffic needs; one block per instance type, a comparison table, and --json. docs/cost.md.
#include "cli_model.hpp"

#include <qlm/backend/cpu/cpu_features.hpp>
#include <qlm/engine/engine.hpp>
#include <qlm/eval/cost.hpp>
#include <qlm/eval/price_table.hpp>
#include <qlm/model/load_gpt2.hpp>
#include <qlm/model/random_weights.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace {

const char* kUsage = R"(usage: qlm-cost [options]
 prices (default: every instance type of the table):
  --prices FILE            the price table (default: )" QLM_SOURCE_DIR R"(/examples/data/prices.json)
  --instance NAME          an instance type of the table (repeatable)
  --price-per-hour X       your own price instead of the table ($/hour on demand)
  --spot-discount F        with --price-per-hour: the fraction off on spot, [0, 1) (default 0)
 throughput of one replica (one of):
  --throughput TOK_S       generated tokens/s one replica sustains at full load
  --throughput-rps R       requests/s one replica sustains (times --tokens-per-request)
  --measure                measure it here: a short run of the engine (continuous batching)
    --model DIR            a GPT-2 checkpoint; default: random weights of --shape
    --shape NAME           124m (default) | tiny
    --method NAME          fp32, fp16, bf16, w8a8 (default), wNgG, wNa8gG (as qlm-bench's --variants)
    --measure-requests N   concurrent requests (default 64)
    --measure-prompt P     prompt tokens each (default 16)
    --measure-tokens T     generated tokens each (default 64)
    --threads N            default: all cores
 workload and fleet:
  --tokens-per-request M   mean generated tokens per request (default 100)
  --utilisation U          the fraction of capacity planned to be used, (0, 1] (default 0.7)
  --replicas N             the fleet whose bill is reported (default 1)
  --target-qps Q           size a fleet for Q requests/s ...
  --target-tokens-per-second T   ... or for T generated tokens/s
  --hours-per-month H      (default 730)
  --json FILE              write the report as JSON
An instance with its own "tokens_per_second" in the table uses it; the others use the throughput above.
)";

using clock_type = std::chrono::steady_clock;

struct Measurement {
    double tokens_per_second = 0.0, seconds = 0.0;
    std::size_t requests = 0, generated = 0, threads = 0;
    std::string model, cpu, isa;
};

// All requests at once, greedy, EOS ignored so every request generates exactly `tokens`: the
// steady state of a busy replica. One untimed warm-up request first (first-touch of the weights).
Measurement measure_throughput(const qlm::cli::Args& args) {
    const std::string model_dir = args.get("model", "");
    const std::string shape = args.get("shape", "124m");
    const std::string method = args.get("method", "w8a8");
    const std::size_t requests = args.number<std::size_t>("measure-requests", 64);
    const std::size_t prompt_tokens = args.number<std::size_t>("measure-prompt", 16);
    const std::size_t tokens = args.number<std::size_t>("measure-tokens", 64);
    if (requests == 0 || prompt_tokens == 0 || tokens == 0)
        throw qlm::invalid_argument("--measure-requests, --measure-prompt and --measure-tokens must be > 0");

    qlm::ThreadPool pool(args.threads());
    qlm::GPT2FloatWeights weights =
        model_dir.empty() ? qlm::random_gpt2_weights(qlm::cli::shape_config(shape), 1) : qlm::load_gpt2_weights(model_dir);
    const qlm::GPT2Config cfg = weights.config;
    if (prompt_tokens + tokens > cfg.n_positions)
        throw qlm::invalid_argument("--measure-prompt + --measure-tokens = " + std::to_string(prompt_tokens + tokens) +
                                    " exceeds the model's context of " + std::to_string(cfg.n_positions));
    const auto model = qlm::cli::variant_model(pool, std::move(weights), method);

    qlm::EngineConfig config;
    const std::size_t block_bytes = qlm::KVBlockLayout<16>{cfg.n_layer, cfg.n_embd}.bytes();
    config.kv_cache_bytes = requests * qlm::KVCache<16>::blocks_for(prompt_tokens + tokens) * block_bytes;
    config.scheduler.max_running = requests;
    config.scheduler.max_tokens_per_step = std::max<std::size_t>(512, requests);
    qlm::Engine<std::remove_cvref_t<decltype(model)>> engine(model, pool, config);

    std::mt19937_64 rng(1);
    std::uniform_int_distribution<std::int32_t> token(0, static_cast<std::int32_t>(cfg.vocab_size) - 2);  // never EOS
    auto prompt = [&] {
        std::vector<std::int32_t> p(prompt_tokens);
        for (auto& t : p) t = token(rng);
        return p;
    };
    qlm::SamplingParams params;
    params.temperature = 0.0f;
    params.ignore_eos = true;
    params.max_tokens = std::min<std::size_t>(tokens, 4);
    engine.add_request(prompt(), params);
    engine.run_until_done();

    params.max_tokens = tokens;
    const auto start = clock_type::now();
    for (std::size_t i = 0; i < requests; ++i) engine.add_request(prompt(), params);
    const auto outputs = engine.run_until_done();
    Measurement m;
    m.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    for (const auto& o : outputs) {
        if (o.tokens.size() != tokens)
            throw qlm::error("measurement request " + std::to_string(o.id) + " ended with " + qlm::to_string(o.finish_reason) + " after " +
                             std::to_string(o.tokens.size()) + " of " + std::to_string(tokens) + " tokens: " + o.error);
        m.generated += o.tokens.size();
    }
    m.requests = outputs.size();
    m.tokens_per_second = static_cast<double>(m.generated) / m.seconds;
    m.threads = pool.size();
    m.model = (model_dir.empty() ? "random weights of GPT-2 " + shape + " shape" : model_dir) + ", " + method;
    m.cpu = qlm::cli::cpu_name();
    m.isa = qlm::cpu::isa_name(qlm::cpu::best_isa());
    return m;
}

// Dollar amounts span $0.000001 to $10,000: fixed notation (no exponents), four significant
// digits below $100, cents above.
std::string money(double x) {
    char buf[64];
    int decimals = 2;
    if (x > 0.0 && x < 100.0) decimals = std::clamp(3 - static_cast<int>(std::floor(std::log10(x))), 2, 12);
    std::snprintf(buf, sizeof buf, "$%.*f", decimals, x);
    return buf;
}

struct Row {
    qlm::InstancePrice instance;
    double tokens_per_second = 0.0;
    std::string throughput_source;
    qlm::CostEstimate estimate;
};

void print_block(const Row& row, const qlm::CostInputs& in) {
    const auto& i = row.instance;
    const auto& e = row.estimate;
    std::printf("\n== %s (%s%s%s) ==\n", i.name.c_str(), i.kind.c_str(), i.description.empty() ? "" : ": ", i.description.c_str());
    std::printf("  price                 %s/hour on demand, %s/hour spot (%.0f%% off)\n", money(i.price_per_hour).c_str(),
                money(e.spot_price_per_hour).c_str(), 100.0 * i.spot_discount);
    std::printf("  throughput            %.1f tokens/s per replica (%s); planned at %.0f%%: %.1f tokens/s, %.3g requests/s of %g tokens\n",
                row.tokens_per_second, row.throughput_source.c_str(), 100.0 * in.utilisation, e.planned_tokens_per_second,
                e.planned_requests_per_second, in.tokens_per_request);
    std::printf("  cost per 1K tokens    %-14s on demand, %s spot\n", money(e.dollars_per_1k_tokens).c_str(),
                money(e.spot_dollars_per_1k_tokens).c_str());
    std::printf("  cost per 1K requests  %-14s on demand, %s spot\n", money(e.dollars_per_1k_requests).c_str(),
                money(e.spot_dollars_per_1k_requests).c_str());
    std::printf("  fleet of %zu replica%s   %.1f tokens/s, %.3g requests/s; %s/hour, %s/month on demand, %s/month spot\n", in.replicas,
                in.replicas == 1 ? " " : "s", e.fleet_tokens_per_second, e.fleet_requests_per_second, money(e.fleet_dollars_per_hour).c_str(),
                money(e.fleet_dollars_per_month).c_str(), money(e.spot_fleet_dollars_per_month).c_str());
    if (e.has_target)
        std::printf("  target traffic        %.1f tokens/s: %zu replica%s at %.0f%% each, %s/month on demand, %s/month spot\n",
                    e.demand_tokens_per_second, e.replicas_needed, e.replicas_needed == 1 ? "" : "s", 100.0 * e.target_utilisation,
                    money(e.target_dollars_per_month).c_str(), money(e.spot_target_dollars_per_month).c_str());
}

nlohmann::json row_json(const Row& row) {
    const auto& e = row.estimate;
    nlohmann::json j = {{"name", row.instance.name},
                        {"kind", row.instance.kind},
                        {"description", row.instance.description},
                        {"price_per_hour", row.instance.price_per_hour},
                        {"spot_discount", row.instance.spot_discount},
                        {"spot_price_per_hour", e.spot_price_per_hour},
                        {"tokens_per_second", row.tokens_per_second},
                        {"throughput_source", row.throughput_source},
                        {"planned_tokens_per_second", e.planned_tokens_per_second},
                        {"planned_requests_per_second", e.planned_requests_per_second},
                        {"dollars_per_1k_tokens", e.dollars_per_1k_tokens},
                        {"spot_dollars_per_1k_tokens", e.spot_dollars_per_1k_tokens},
                        {"dollars_per_1k_requests", e.dollars_per_1k_requests},
                        {"spot_dollars_per_1k_requests", e.spot_dollars_per_1k_requests},
                        {"fleet_tokens_per_second", e.fleet_tokens_per_second},
                        {"fleet_requests_per_second", e.fleet_requests_per_second},
                        {"fleet_dollars_per_hour", e.fleet_dollars_per_hour},
                        {"fleet_dollars_per_month", e.fleet_dollars_per_month},
                        {"spot_fleet_dollars_per_month", e.spot_fleet_dollars_per_month}};
    if (e.has_target) {
        j["target"] = {{"demand_tokens_per_second", e.demand_tokens_per_second},
                       {"replicas_needed", e.replicas_needed},
                       {"utilisation", e.target_utilisation},
                       {"dollars_per_month", e.target_dollars_per_month},
                       {"spot_dollars_per_month", e.spot_target_dollars_per_month}};
    }
    return j;
}

}  // namespace

int main(int argc, char** argv) try {
    const qlm::cli::Args args(argc, argv, {"help", "measure"});
    if (args.has("help")) {
        std::fputs(kUsage, stdout);
        return 0;
    }
    const std::string prices_path = args.get("prices", std::string(QLM_SOURCE_DIR) + "/examples/data/prices.json");
    const auto instance_names = args.all("instance");
    const bool own_price = args.has("price-per-hour");
    const double own_price_per_hour = args.number<double>("price-per-hour", 0.0);
    const bool has_spot_discount = args.has("spot-discount");
    const double own_spot_discount = args.number<double>("spot-discount", 0.0);
    const bool measure = args.has("measure");
    const bool has_throughput = args.has("throughput"), has_rps = args.has("throughput-rps");
    const double throughput = args.number<double>("throughput", 0.0);
    const double throughput_rps = args.number<double>("throughput-rps", 0.0);

    qlm::CostInputs base;
    base.tokens_per_request = args.number<double>("tokens-per-request", base.tokens_per_request);
    base.utilisation = args.number<double>("utilisation", base.utilisation);
    base.replicas = args.number<std::size_t>("replicas", base.replicas);
    base.target_qps = args.number<double>("target-qps", 0.0);
    base.target_tokens_per_second = args.number<double>("target-tokens-per-second", 0.0);
    base.hours_per_month = args.number<double>("hours-per-month", base.hours_per_month);
    const std::string json_path = args.get("json", "");
    // The measurement's options, read now so that reject_unknown knows them, used only with --measure.
    for (const char* name : {"model", "shape", "method", "measure-requests", "measure-prompt", "measure-tokens", "threads"})
        if (args.has(name) && !measure) throw qlm::invalid_argument(std::string("--") + name + " is an option of --measure");
    args.reject_unknown();

    if (own_price && !instance_names.empty()) throw qlm::invalid_argument("give --instance or --price-per-hour, not both");
    if (has_spot_discount && !own_price) throw qlm::invalid_argument("--spot-discount goes with --price-per-hour (the table has its own)");
    if (static_cast<int>(measure) + static_cast<int>(has_throughput) + static_cast<int>(has_rps) > 1)
        throw qlm::invalid_argument("give the throughput one way: --throughput, --throughput-rps or --measure");
    if (has_throughput && !(std::isfinite(throughput) && throughput > 0.0))
        throw qlm::invalid_argument("--throughput must be > 0 tokens/s, got " + args.get("throughput", ""));
    if (has_rps && !(std::isfinite(throughput_rps) && throughput_rps > 0.0))
        throw qlm::invalid_argument("--throughput-rps must be > 0 requests/s, got " + args.get("throughput-rps", ""));
    if (own_price && !(std::isfinite(own_price_per_hour) && own_price_per_hour > 0.0))
        throw qlm::invalid_argument("--price-per-hour must be > 0, got " + args.get("price-per-hour", ""));
    // Checks every other input before a measurement takes seconds.
    {
        qlm::CostInputs probe = base;
        probe.price_per_hour = 1.0;
        probe.tokens_per_second = 1.0;
        probe.spot_discount = own_spot_discount;
        qlm::estimate_cost(probe);
    }

    // The instances to price.
    std::vector<qlm::InstancePrice> instances;
    std::optional<qlm::PriceTable> table;
    if (own_price) {
        qlm::InstancePrice p;
        p.name = "your-price";
        p.kind = "cpu";
        p.description = "--price-per-hour";
        p.price_per_hour = own_price_per_hour;
        p.spot_discount = own_spot_discount;
        instances.push_back(p);
    } else {
        table = qlm::load_price_table(prices_path);
        if (instance_names.empty()) instances = table->instances;
        for (const auto& name : instance_names) instances.push_back(table->find(name));
    }

    // The throughput every instance without its own uses.
    std::optional<double> common_throughput;
    std::string common_source;
    std::optional<Measurement> measured;
    if (measure) {
        std::printf("qlm-cost: measuring the throughput on this machine...\n");
        std::fflush(stdout);
        measured = measure_throughput(args);
        common_throughput = measured->tokens_per_second;
        common_source = "measured here";
        std::printf("measured: %.1f tokens/s (%zu requests x %zu tokens in %.2f s; %s; %s, %s, %zu threads; shared machine)\n",
                    measured->tokens_per_second, measured->requests, measured->generated / std::max<std::size_t>(1, measured->requests),
                    measured->seconds, measured->model.c_str(), measured->cpu.c_str(), measured->isa.c_str(), measured->threads);
    } else if (has_throughput) {
        common_throughput = throughput;
        common_source = "entered";
    } else if (has_rps) {
        common_throughput = throughput_rps * base.tokens_per_request;
        common_source = "entered as requests/s";
    }

    std::vector<Row> rows;
    for (const auto& instance : instances) {
        Row row;
        row.instance = instance;
        if (instance.tokens_per_second) {
            row.tokens_per_second = *instance.tokens_per_second;
            row.throughput_source = "from the price table";
        } else if (common_throughput) {
            row.tokens_per_second = *common_throughput;
            row.throughput_source = common_source;
        } else {
            throw qlm::invalid_argument("no throughput for instance type '" + instance.name +
                                        "': give --throughput, --throughput-rps or --measure (or its tokens_per_second in the table)");
        }
        qlm::CostInputs in = base;
        in.price_per_hour = instance.price_per_hour;
        in.spot_discount = instance.spot_discount;
        in.tokens_per_second = row.tokens_per_second;
        row.estimate = qlm::estimate_cost(in);
        rows.push_back(std::move(row));
    }

    if (table)
        std::printf("prices: %s (%s, written down %s)\n  %s\n", prices_path.c_str(), table->currency.c_str(), table->date.c_str(),
                    table->note.c_str());
    std::printf("workload: %g generated tokens a request, planned utilisation %.0f%%, %zu replica%s, %g hours a month", base.tokens_per_request,
                100.0 * base.utilisation, base.replicas, base.replicas == 1 ? "" : "s", base.hours_per_month);
    if (base.target_qps > 0) std::printf(", target %g requests/s", base.target_qps);
    if (base.target_tokens_per_second > 0) std::printf(", target %g tokens/s", base.target_tokens_per_second);
    std::printf("\n");
    for (const auto& row : rows) print_block(row, base);

    std::printf("\ncomparison\n%-22s %5s %10s %10s %13s %13s %13s %13s", "instance", "kind", "tok/s", "$/hour", "$/1K tokens", "spot", "$/1K req",
                "$/month");
    if (base.target_qps > 0 || base.target_tokens_per_second > 0) std::printf(" %9s %13s", "replicas", "target $/mo");
    std::printf("\n");
    for (const auto& row : rows) {
        const auto& e = row.estimate;
        std::printf("%-22s %5s %10.1f %10s %13s %13s %13s %13s", row.instance.name.c_str(), row.instance.kind.c_str(), row.tokens_per_second,
                    money(row.instance.price_per_hour).c_str(), money(e.dollars_per_1k_tokens).c_str(),
                    money(e.spot_dollars_per_1k_tokens).c_str(), money(e.dollars_per_1k_requests).c_str(),
                    money(e.fleet_dollars_per_month).c_str());
        if (e.has_target) std::printf(" %9zu %13s", e.replicas_needed, money(e.target_dollars_per_month).c_str());
        std::printf("\n");
    }
    if (std::any_of(rows.begin(), rows.end(), [](const Row& r) { return r.instance.kind == "gpu" && r.throughput_source == "measured here"; }))
        std::printf("(a throughput measured on this machine's CPU says little about a GPU instance: put the tokens/s measured there\n"
                    " in the table's \"tokens_per_second\" for it)\n");

    if (!json_path.empty()) {
        nlohmann::json j;
        j["inputs"] = {{"tokens_per_request", base.tokens_per_request},
                       {"utilisation", base.utilisation},
                       {"replicas", base.replicas},
                       {"target_qps", base.target_qps},
                       {"target_tokens_per_second", base.target_tokens_per_second},
                       {"hours_per_month", base.hours_per_month},
                       {"throughput_source", common_source.empty() ? nlohmann::json(nullptr) : nlohmann::json(common_source)},
                       {"tokens_per_second", common_throughput ? nlohmann::json(*common_throughput) : nlohmann::json(nullptr)}};
        if (table) j["prices"] = {{"file", prices_path}, {"currency", table->currency}, {"date", table->date}};
        if (measured)
            j["measurement"] = {{"tokens_per_second", measured->tokens_per_second},
                                {"seconds", measured->seconds},
                                {"requests", measured->requests},
                                {"generated_tokens", measured->generated},
                                {"model", measured->model},
                                {"cpu", measured->cpu},
                                {"isa", measured->isa},
                                {"threads", measured->threads}};
        j["instances"] = nlohmann::json::array();
        for (const auto& row : rows) j["instances"].push_back(row_json(row));
        std::ofstream out(json_path);
        if (!out) throw qlm::io_error("cannot write " + json_path);
        out << j.dump(2) << '\n';
        if (!out) throw qlm::io_error("cannot write " + json_path);
    }
    return 0;
} catch (const std::exception& e) {
    return qlm::cli::fail("qlm-cost", e);
}
