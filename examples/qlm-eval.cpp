// qlm-eval: perplexity of a model on a text file, or (--report) the evaluation report of several
// models side by side: size, compression, prefill / decode speed, perplexity and its degradation
// against the first model (the baseline, normally the fp32 original).
#include "cli.hpp"
#include "cli_device.hpp"

#include <qlm/eval/perplexity.hpp>
#include <qlm/eval/size_report.hpp>
#include <qlm/eval/speed.hpp>
#include <qlm/model/interop.hpp>
#include <qlm/quant/calibration.hpp>
#include <qlm/tokenizer/gpt2_tokenizer.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

const char* kUsage = R"(usage: qlm-eval --model DIR [--model DIR ...] [options]
  --model DIR          a float HF GPT-2, qlm, AutoGPTQ or AutoAWQ checkpoint (repeatable; default: the bundled model)
  --name NAME          display name of the corresponding --model (repeatable, in order)
  --text FILE          evaluation text (default: the first model's heldout.txt)
  --max-length N       perplexity window (default: the model's context)
  --stride N           perplexity stride (default: max-length / 2)
  --report             also measure size and speed; print the comparison table
  --json FILE          write the results (the report with --report) as JSON
  --markdown FILE      write the results (the report with --report) as a Markdown table
  --prompt-tokens N    speed test prompt length (default 128, at most half the context)
  --decode-tokens N    speed test decode steps (default 64, at least 1)
  --threads N          default: all cores
  --device D           cpu (default), cuda or cuda:N (builds with the CUDA backend)
)";

struct Row {
    std::string name, path, method, scheme;
    double size_mb = 0, compression = 0, prefill = 0, decode = 0, perplexity = 0, seconds = 0;
    std::size_t scored_tokens = 0, max_length = 0, stride = 0;
};

void write_file(const std::string& path, const std::string& text) {
    std::ofstream out(path);
    out << text;
    if (!out) throw qlm::io_error("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) try {
    const qlm::cli::Args args(argc, argv, {"report", "help"});
    if (args.has("help")) {
        std::fputs(kUsage, stdout);
        return 0;
    }
    std::vector<std::string> models = args.all("model");
    if (models.empty()) models.push_back(std::string(QLM_SOURCE_DIR) + "/models/gpt2-tiny-kjv");
    const std::vector<std::string> names = args.all("name");
    const std::string text_path = args.get("text", (std::filesystem::path(models.front()) / "heldout.txt").string());
    const std::size_t max_length = args.number<std::size_t>("max-length", 0);
    const std::size_t stride = args.number<std::size_t>("stride", 0);
    const bool report = args.has("report");
    const std::string json_path = args.get("json", "");
    const std::string markdown_path = args.get("markdown", "");
    std::size_t prompt_tokens = args.number<std::size_t>("prompt-tokens", 128);
    const std::size_t decode_tokens = args.number<std::size_t>("decode-tokens", 64);
    const std::size_t threads = args.threads();
    const qlm::cli::DeviceChoice device = qlm::cli::parse_device(args.get("device", "cpu"));
    args.reject_unknown();
    if (report && decode_tokens == 0)
        throw qlm::invalid_argument("option --decode-tokens: 0 steps measure no decode speed, and the report compares it; give at least 1");

    qlm::ThreadPool pool(threads);
    const auto tokenizer = qlm::GPT2Tokenizer::from_directory(models.front());
    const std::vector<std::int32_t> tokens = tokenizer.encode(qlm::calibration::read_text(text_path));
    std::fprintf(stderr, "qlm-eval: %s: %zu tokens, %s\n", text_path.c_str(), tokens.size(),
                 device.cuda ? "CUDA" : qlm::cli::device_name(pool).c_str());

    std::vector<Row> rows;
    for (std::size_t i = 0; i < models.size(); ++i) {
        auto loaded = qlm::load_any_checkpoint(models[i]);
        Row row;
        row.path = models[i];
        row.name = i < names.size() ? names[i] : std::filesystem::path(models[i]).filename().string();
        row.method = loaded.info.method;
        const bool float_method = row.method == "fp32" || row.method == "fp16" || row.method == "bf16";  // their scheme fields are unused
        row.scheme = float_method ? row.method : qlm::to_string(loaded.info.weights);
        if (report) {
            const auto size = qlm::size_report(loaded.model);
            row.size_mb = size.total_bytes() / 1e6;
            row.compression = size.compression();
            prompt_tokens = std::min(prompt_tokens, loaded.model.config().n_positions / 2);
        }
        qlm::cli::on_device(device, pool, std::move(loaded.model), [&](auto& ctx, const auto& model) {
            qlm::PerplexityOptions po;
            po.max_length = max_length;
            po.stride = stride;
            const auto ppl = qlm::perplexity(ctx, model, tokens, po);
            row.perplexity = ppl.perplexity;
            row.scored_tokens = ppl.scored_tokens;
            row.max_length = ppl.max_length;
            row.stride = ppl.stride;
            row.seconds = ppl.seconds;
            if (report) {
                const auto speed = qlm::measure_speed(ctx, model, prompt_tokens, decode_tokens);
                row.prefill = speed.prefill_tokens_per_second;
                row.decode = speed.decode_tokens_per_second;
            }
        });
        std::fprintf(stderr, "  %-20s perplexity %.4f (%zu tokens scored, window %zu, stride %zu, %.1f s)\n", row.name.c_str(),
                     row.perplexity, row.scored_tokens, row.max_length, row.stride, row.seconds);
        rows.push_back(row);
    }

    nlohmann::json json = {{"text", text_path}, {"tokens", tokens.size()}, {"threads", pool.size()}, {"device", device.cuda ? "cuda" : "cpu"}, {"models", nlohmann::json::array()}};
    if (!report) {
        std::string md = "| model | method | scheme | perplexity | tokens scored | window | stride |\n|---|---|---|---:|---:|---:|---:|\n";
        for (const auto& r : rows) {
            std::printf("%s\t%.4f\n", r.name.c_str(), r.perplexity);
            char line[512];
            std::snprintf(line, sizeof line, "| %s | %s | %s | %.4f | %zu | %zu | %zu |\n", r.name.c_str(), r.method.c_str(),
                          r.scheme.c_str(), r.perplexity, r.scored_tokens, r.max_length, r.stride);
            md += line;
            json["models"].push_back({{"name", r.name}, {"path", r.path}, {"method", r.method}, {"scheme", r.scheme},
                                      {"perplexity", r.perplexity}, {"scored_tokens", r.scored_tokens}, {"max_length", r.max_length},
                                      {"stride", r.stride}, {"seconds", r.seconds}});
        }
        if (!json_path.empty()) write_file(json_path, json.dump(2) + "\n");
        if (!markdown_path.empty()) write_file(markdown_path, md);
        return 0;
    }
    const Row& base = rows.front();
    json["prompt_tokens"] = prompt_tokens;
    json["decode_tokens"] = decode_tokens;
    json["baseline"] = base.name;
    std::string md = "| model | method | scheme | size MB | compression | prefill tok/s | decode tok/s | speed-up | perplexity | degradation |\n"
                     "|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n";
    std::printf("\n%-18s %-13s %-14s %9s %7s %11s %11s %8s %11s %17s\n", "model", "method", "scheme", "size MB", "compr.",
                "prefill t/s", "decode t/s", "speed-up", "perplexity", "degradation");
    for (const auto& r : rows) {
        const double speedup = r.decode / base.decode;
        const double delta = r.perplexity - base.perplexity;
        const double pct = 100.0 * delta / base.perplexity;
        std::printf("%-18s %-13s %-14s %9.2f %6.2fx %11.1f %11.1f %7.2fx %11.4f %+8.4f (%+.2f%%)\n", r.name.c_str(), r.method.c_str(),
                    r.scheme.c_str(), r.size_mb, r.compression, r.prefill, r.decode, speedup, r.perplexity, delta, pct);
        char line[512];
        std::snprintf(line, sizeof line, "| %s | %s | %s | %.2f | %.2fx | %.1f | %.1f | %.2fx | %.4f | %+.4f (%+.2f%%) |\n",
                      r.name.c_str(), r.method.c_str(), r.scheme.c_str(), r.size_mb, r.compression, r.prefill, r.decode, speedup,
                      r.perplexity, delta, pct);
        md += line;
        json["models"].push_back({{"name", r.name}, {"path", r.path}, {"method", r.method}, {"scheme", r.scheme},
                                  {"size_mb", r.size_mb}, {"compression", r.compression}, {"prefill_tokens_per_second", r.prefill},
                                  {"decode_tokens_per_second", r.decode}, {"speedup", speedup}, {"perplexity", r.perplexity},
                                  {"degradation", delta}, {"degradation_percent", pct}, {"scored_tokens", r.scored_tokens}});
    }
    if (!json_path.empty()) write_file(json_path, json.dump(2) + "\n");
    if (!markdown_path.empty()) write_file(markdown_path, md);
    return 0;
} catch (const std::exception& e) {
    return qlm::cli::fail("qlm-eval", e);
}
