// qlm-quantize: quantize a GPT-2 checkpoint (RTN, INT8 dynamic/static, GPTQ, AWQ) and write a
// qlm checkpoint, with a progress bar per layer and a size report.
#include "cli.hpp"

#include <qlm/eval/size_report.hpp>
#include <qlm/model/interop.hpp>
#include <qlm/model/quantize.hpp>
#include <qlm/tokenizer/gpt2_tokenizer.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>

namespace {

const char* kUsage = R"(usage: qlm-quantize --model DIR --method METHOD --out DIR [options]
  --model DIR            float GPT-2 checkpoint (default: the bundled model)
  --method M             rtn | int8-dynamic | int8-static | gptq | awq | fp16 | bf16   (default rtn)
  --bits B               2 | 3 | 4 | 8 for rtn / gptq / awq                   (default 4)
  --group-size G         32 | 64 | 128 ..., 0 = per output channel            (default 128)
  --asym | --sym         zero point per group or not; default --sym, but --asym for awq (as AutoAWQ)
  --mse-clip             search the clipping range of each group (MSE) in RTN / GPTQ
  --calibration FILE     calibration text (repeatable; default: the bundled model's calibration.txt)
  --samples N            calibration samples (default 128)
  --sample-tokens L      tokens a sample (default 512, at most the model's context)
  --seed S               calibration sampling seed (default 0)
  --observer O           int8-static: minmax | moving-average | percentile | mse (default minmax)
  --smoothquant A        int8-static: migrate activation outliers into weights with alpha A
  --act-order            gptq: quantize columns by descending Hessian diagonal
  --static-groups        gptq: group params fixed up front, so --act-order stores no permutation
  --damp P               gptq: dampening fraction of mean(diag H) (default 0.01)
  --no-clip              awq: skip the weight clipping search
  --no-act-scale         awq: leave mlp.c_proj unscaled (no division after GELU)
  --activations A        rtn / gptq / awq: float (weight-only, default) | int8 (per token at run time: W4A8 ...)
  --float-head           keep the tied embedding / output head in fp32 (default: 8-bit per channel;
                         fp16 / bf16: in 16 bits)
  --salient P            rtn: keep the top P fraction of activation-salient input channels at 8 bits
                         (mixed precision, e.g. 0.01; uses calibration data)
  --export-autogptq DIR  also write the result in AutoGPTQ's format (weight-only methods)
  --threads N            default: all cores
  --verbose              print every tensor in the size report
)";

// `p` with every symbolic link resolved (as far as it exists) and no trailing separator.
std::filesystem::path resolved(const std::filesystem::path& p) {
    std::filesystem::path r = std::filesystem::weakly_canonical(std::filesystem::absolute(p));
    return r.has_filename() ? r : r.parent_path();
}

// Refuses to write `out` (given as --`option`) where it would replace or alter the input model:
// its directory (also through a symbolic link or a bind mount) or a directory inside it. A parent
// of the input is allowed: the files land next to the input's folder and none of its own changes.
void check_output_dir(const std::filesystem::path& out, const std::filesystem::path& model_dir, const char* option) {
    const std::filesystem::path target = resolved(out), model = resolved(model_dir);
    std::error_code ec;  // equivalent() fails, with no exception, when `out` does not exist yet
    const bool same = target == model || std::filesystem::equivalent(out, model_dir, ec);
    const bool inside = std::mismatch(model.begin(), model.end(), target.begin(), target.end()).first == model.end();
    if (same || inside)
        throw qlm::invalid_argument("option --" + std::string(option) + " " + out.string() + (same ? " is" : " is inside") +
                                    " the input model's directory " + model.string() +
                                    ": writing there would replace or alter the model being quantized; choose another directory");
}

void progress_bar(const qlm::QuantizeProgress& p) {
    const int width = 30;
    const int filled = static_cast<int>(width * (p.layer + 1) / std::max<std::size_t>(1, p.layers));
    std::fprintf(stderr, "\r  [%.*s%*s] layer %zu/%zu %-28s %7.2f s", filled, "##############################", width - filled, "",
                 p.layer + 1, p.layers, p.stage.c_str(), p.seconds);
    if (p.stage == "quantized") std::fprintf(stderr, "\n");
}

}  // namespace

int main(int argc, char** argv) try {
    const qlm::cli::Args args(argc, argv, {"asym", "sym", "mse-clip", "act-order", "static-groups", "no-clip", "no-act-scale", "float-head", "verbose", "help"});
    if (args.has("help")) {
        std::fputs(kUsage, stdout);
        return 0;
    }
    const std::string default_model = std::string(QLM_SOURCE_DIR) + "/models/gpt2-tiny-kjv";
    const std::filesystem::path model_dir = args.get("model", default_model);
    const std::string out = args.get("out", "");
    qlm::QuantizeOptions options;
    options.method = args.get("method", "rtn");
    const int bits = args.number<int>("bits", 4);
    const std::size_t group = args.number<std::size_t>("group-size", 128);
    const bool asym = args.has("asym") || (options.method == "awq" && !args.has("sym"));
    options.weights = qlm::QuantSpec{bits, group ? qlm::GranularityKind::per_group : qlm::GranularityKind::per_channel, group, !asym};
    options.rtn.mse_clip = args.has("mse-clip");
    options.observer = args.get("observer", "minmax");
    if (args.has("smoothquant")) options.smoothquant_alpha = args.number<float>("smoothquant", 0.5f);
    options.gptq_act_order = args.has("act-order");
    options.gptq_static_groups = args.has("static-groups");
    options.gptq_percdamp = args.number<double>("damp", 0.01);
    options.awq_clip = !args.has("no-clip");
    options.awq_scale_activation = !args.has("no-act-scale");
    options.quantize_head = !args.has("float-head");
    options.salient_fraction = args.number<double>("salient", 0.0);
    const std::string activations = args.get("activations", "float");
    if (activations != "float" && activations != "int8")
        throw qlm::invalid_argument("--activations must be float or int8, found '" + activations + "'");
    options.int8_activations = activations == "int8";
    auto calibration_files = args.all("calibration");
    qlm::calibration::Options cal_options;
    cal_options.samples = args.number<std::size_t>("samples", 128);
    cal_options.sample_tokens = args.number<std::size_t>("sample-tokens", 512);
    cal_options.seed = args.number<std::uint64_t>("seed", 0);
    const std::string autogptq_dir = args.get("export-autogptq", "");
    const std::size_t threads = args.threads();
    const bool verbose = args.has("verbose");
    args.reject_unknown();
    if (out.empty()) throw qlm::invalid_argument("--out DIR is required");
    check_output_dir(out, model_dir, "out");
    if (!autogptq_dir.empty()) {
        check_output_dir(autogptq_dir, model_dir, "export-autogptq");
        std::error_code ec;
        if (resolved(autogptq_dir) == resolved(out) || std::filesystem::equivalent(autogptq_dir, out, ec))
            throw qlm::invalid_argument("options --export-autogptq and --out name the same directory " + out +
                                        ": each writes its own config.json and model.safetensors there");
    }

    qlm::ThreadPool pool(threads);
    auto weights = qlm::load_gpt2_weights(model_dir);
    const auto& cfg = weights.config;
    std::fprintf(stderr, "qlm-quantize: %s (%zu layers, n_embd %zu) -> %s, method %s, %zu threads\n", model_dir.c_str(), cfg.n_layer,
                 cfg.n_embd, out.c_str(), options.method.c_str(), pool.size());

    qlm::calibration::CalibrationSet calibration;
    if (qlm::needs_calibration(options)) {
        if (calibration_files.empty()) calibration_files.push_back((model_dir / "calibration.txt").string());
        const auto tokenizer = qlm::GPT2Tokenizer::from_directory(model_dir);
        cal_options.sample_tokens = std::min(cal_options.sample_tokens, cfg.n_positions);
        std::vector<std::filesystem::path> files(calibration_files.begin(), calibration_files.end());
        calibration = qlm::calibration::from_files(tokenizer, files, cal_options);
        std::fprintf(stderr, "  calibration: %zu samples x %zu tokens from %zu file(s), seed %llu\n", calibration.samples.size(),
                     calibration.samples.front().size(), files.size(), static_cast<unsigned long long>(cal_options.seed));
    }
    options.on_progress = progress_bar;
    const auto result = qlm::quantize_gpt2(pool, std::move(weights), options, &calibration);
    qlm::save_checkpoint(result.model, result.info, out, model_dir);
    if (!autogptq_dir.empty()) {
        const auto stats = qlm::save_autogptq(result.model, result.info, autogptq_dir, model_dir);
        std::fprintf(stderr, "  AutoGPTQ export: %s (%zu quantized layers, fp16 scales: max relative change %.2e)\n",
                     autogptq_dir.c_str(), stats.quantized_layers, stats.max_scale_rel_change);
    }

    const auto report = qlm::size_report(result.model);
    if (verbose) {
        std::printf("%-28s %-26s %12s %12s\n", "tensor", "kind", "params", "bytes");
        for (const auto& t : report.tensors) std::printf("%-28s %-26s %12zu %12zu\n", t.name.c_str(), t.kind.c_str(), t.params, t.bytes);
    }
    const bool half = result.info.method == "fp16" || result.info.method == "bf16";
    std::printf("method %s (%s, %s activations): quantized in %.2f s\n", result.info.method.c_str(),
                half ? result.info.method.c_str() : qlm::to_string(result.info.weights).c_str(), result.info.activations.c_str(),
                result.seconds);
    std::printf("linear layers: %zu weights, %.2f MB, %.3f bytes/weight (fp32: 4)\n", report.linear_params, report.linear_bytes / 1e6,
                report.linear_bytes_per_weight());
    if (report.embedding_kind == "fp32")
        std::printf("embeddings, norms, biases: %.2f MB fp32\n", report.other_bytes / 1e6);
    else
        std::printf("embeddings, norms, biases: %.2f MB (wte at %s, the rest fp32)\n", report.other_bytes / 1e6,
                    report.embedding_kind.c_str());
    std::printf("model: %.2f MB (fp32 %.2f MB), compression %.2fx; written to %s\n", report.total_bytes() / 1e6,
                report.fp32_bytes() / 1e6, report.compression(), out.c_str());
    return 0;
} catch (const std::exception& e) {
    return qlm::cli::fail("qlm-quantize", e);
}
