#pragma once
// Quantized checkpoints made by other tools, and export to them (docs/interop-formats.md):
//
//   load_autogptq(dir)      AutoGPTQ / GPTQModel GPT-2 ("gptq" and "gptq_v2"; 2, 3, 4, 8 bits)
//   load_autoawq(dir)       AutoAWQ GEMM GPT-2 (4 bits)
//   save_autogptq(model, info, dir, tokenizer_dir, options)   qlm weight-only layers -> AutoGPTQ
//   load_any_checkpoint(dir)   qlm, AutoGPTQ, AutoAWQ or float Hugging Face, chosen by the config
//
// The pieces, in interop/: config_json.hpp (config files), tensor_source.hpp (the tensors, shared
// by both readers), gptq_config.hpp, gptq_reader.hpp, gptq_export.hpp, awq_reader.hpp.
#include <qlm/core/error.hpp>
#include <qlm/model/checkpoint.hpp>
#include <qlm/model/interop/awq_reader.hpp>
#include <qlm/model/interop/config_json.hpp>
#include <qlm/model/interop/gptq_export.hpp>
#include <qlm/model/interop/gptq_reader.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>

namespace qlm {

enum class CheckpointKind { qlm, autogptq, autoawq, float_hf };

inline const char* to_string(CheckpointKind k) noexcept {
    switch (k) {
        case CheckpointKind::qlm: return "qlm";
        case CheckpointKind::autogptq: return "autogptq";
        case CheckpointKind::autoawq: return "autoawq";
        case CheckpointKind::float_hf: return "float";
    }
    return "?";
}

// By config.json's quantization_config.quant_method ("qlm", "gptq", "awq"); without one, by the
// presence of quantize_config.json (AutoGPTQ) or quant_config.json (AutoAWQ); otherwise a float
// Hugging Face checkpoint. Another quant_method throws format_error.
inline CheckpointKind detect_checkpoint_kind(const std::filesystem::path& dir) {
    namespace fs = std::filesystem;
    const nlohmann::json qc = detail::interop::quantization_config_of(dir);
    if (qc.is_object()) {
        const auto it = qc.find("quant_method");
        const std::string method = it != qc.end() && it->is_string() ? it->get<std::string>() : std::string();
        if (method == "qlm") return CheckpointKind::qlm;
        if (method == "gptq") return CheckpointKind::autogptq;
        if (method == "awq") return CheckpointKind::autoawq;
        throw format_error("qlm: " + (dir / "config.json").string() + ": quantization_config.quant_method '" +
                           (it == qc.end() ? std::string("(missing)") : it->dump()) +
                           "' is not one qlm reads (qlm, gptq, awq)");
    }
    if (fs::exists(dir / "quantize_config.json")) return CheckpointKind::autogptq;
    if (fs::exists(dir / "quant_config.json")) return CheckpointKind::autoawq;
    return CheckpointKind::float_hf;
}

// Loads whichever kind of checkpoint `dir` holds (see detect_checkpoint_kind).
inline LoadedModel load_any_checkpoint(const std::filesystem::path& dir) {
    switch (detect_checkpoint_kind(dir)) {
        case CheckpointKind::autogptq: return load_autogptq(dir);
        case CheckpointKind::autoawq: return load_autoawq(dir);
        case CheckpointKind::qlm:
        case CheckpointKind::float_hf: break;
    }
    return load_checkpoint(dir);  // qlm's format, or a float GPT-2 (info.method "fp32")
}

}  // namespace qlm
