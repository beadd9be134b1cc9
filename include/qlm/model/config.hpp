#pragma once
// GPT-2 hyper-parameters, read from a Hugging Face config.json.
#include <qlm/core/error.hpp>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <string>

namespace qlm {

struct GPT2Config {
    std::size_t n_layer = 12;
    std::size_t n_head = 12;
    std::size_t n_embd = 768;
    std::size_t n_inner = 0;  // 0 = 4 * n_embd
    std::size_t n_positions = 1024;
    std::size_t vocab_size = 50257;
    float layer_norm_epsilon = 1e-5f;
    std::string activation = "gelu_new";
    int bos_token_id = 50256;
    int eos_token_id = 50256;

    std::size_t head_dim() const noexcept { return n_embd / n_head; }
    std::size_t inner() const noexcept { return n_inner ? n_inner : 4 * n_embd; }

    // Throws qlm::invalid_argument when the values cannot describe a model.
    void validate() const {
        auto fail = [](const std::string& what) { throw invalid_argument("qlm: invalid GPT-2 config: " + what); };
        if (n_layer == 0 || n_head == 0 || n_embd == 0 || n_positions == 0 || vocab_size == 0)
            fail("n_layer, n_head, n_embd, n_positions and vocab_size must all be positive");
        if (n_embd % n_head != 0)
            fail("n_embd (" + std::to_string(n_embd) + ") must be a multiple of n_head (" + std::to_string(n_head) + ")");
        if (!(layer_norm_epsilon > 0.0f)) fail("layer_norm_epsilon must be positive");
        if (activation != "gelu_new" && activation != "gelu_pytorch_tanh" && activation != "gelu")
            fail("activation_function '" + activation + "' is not supported (gelu_new, gelu_pytorch_tanh, gelu)");
    }

    // The exact (erf) GELU or the tanh approximation GPT-2 was trained with.
    bool gelu_exact() const noexcept { return activation == "gelu"; }

    static GPT2Config from_json(const nlohmann::json& j, const std::string& origin = "config.json") {
        if (!j.is_object()) throw format_error("qlm: " + origin + ": expected a JSON object");
        GPT2Config c;
        auto get_size = [&](const char* key, std::size_t& out, bool required) {
            const auto it = j.find(key);
            if (it == j.end() || it->is_null()) {
                if (required) throw format_error("qlm: " + origin + ": missing '" + key + "'");
                return;
            }
            if (!it->is_number_integer() || it->get<long long>() < 0)
                throw format_error("qlm: " + origin + ": '" + key + "' must be a non-negative integer, found " + it->dump());
            out = it->get<std::size_t>();
        };
        if (const auto mt = j.find("model_type"); mt != j.end() && mt->is_string() && *mt != "gpt2")
            throw format_error("qlm: " + origin + ": model_type '" + mt->get<std::string>() + "' is not gpt2");
        get_size("n_layer", c.n_layer, true);
        get_size("n_head", c.n_head, true);
        get_size("n_embd", c.n_embd, true);
        get_size("vocab_size", c.vocab_size, true);
        get_size("n_positions", c.n_positions, false);
        get_size("n_inner", c.n_inner, false);
        if (const auto it = j.find("layer_norm_epsilon"); it != j.end()) {
            if (!it->is_number()) throw format_error("qlm: " + origin + ": 'layer_norm_epsilon' must be a number");
            c.layer_norm_epsilon = it->get<float>();
        }
        if (const auto it = j.find("activation_function"); it != j.end()) {
            if (!it->is_string()) throw format_error("qlm: " + origin + ": 'activation_function' must be a string");
            c.activation = it->get<std::string>();
        }
        if (const auto it = j.find("bos_token_id"); it != j.end() && it->is_number_integer()) c.bos_token_id = it->get<int>();
        if (const auto it = j.find("eos_token_id"); it != j.end() && it->is_number_integer()) c.eos_token_id = it->get<int>();
        c.validate();
        return c;
    }

    static GPT2Config from_file(const std::filesystem::path& path) {
        std::ifstream in(path);
        if (!in) throw io_error("qlm: cannot open " + path.string());
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(in);
        } catch (const nlohmann::json::exception& e) {
            throw format_error("qlm: " + path.string() + ": malformed JSON: " + e.what());
        }
        return from_json(j, path.string());
    }

    nlohmann::json to_json() const {
        return {{"architectures", {"GPT2LMHeadModel"}},
                {"model_type", "gpt2"},
                {"n_layer", n_layer},
                {"n_head", n_head},
                {"n_embd", n_embd},
                {"n_inner", n_inner ? nlohmann::json(n_inner) : nlohmann::json(nullptr)},
                {"n_positions", n_positions},
                {"n_ctx", n_positions},
                {"vocab_size", vocab_size},
                {"layer_norm_epsilon", layer_norm_epsilon},
                {"activation_function", activation},
                {"bos_token_id", bos_token_id},
                {"eos_token_id", eos_token_id}};
    }
};

}  // namespace qlm
