#pragma once
// qlm-serve's request and response bodies, without any socket code: JSON -> a validated
// GenerationRequest (SamplingParams and the prompts), and the bodies of /generate, OpenAI's
// /v1/completions and /v1/chat/completions (whole and streamed), and OpenAI-style errors
// {"error": {"message", "type", "param", "code"}}. See docs/serving.md.
//
// Validation follows OpenAI's: an unknown field, a wrong type or a value out of range is a 400 that
// names the field in `param`.
#include <qlm/core/error.hpp>
#include <qlm/engine/engine_stats.hpp>
#include <qlm/sched/sampler.hpp>
#include <qlm/serve/chat_template.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qlm::serve {

using json = nlohmann::json;

// An error that becomes an HTTP response: status and OpenAI's error object.
class ApiError : public qlm::error {
public:
    ApiError(int status, const std::string& message, std::string param = {}, std::string code = {}, std::string type = {})
        : qlm::error(message), status_(status), param_(std::move(param)), code_(std::move(code)),
          type_(type.empty() ? default_type(status) : std::move(type)) {}
    int status() const noexcept { return status_; }
    const std::string& param() const noexcept { return param_; }
    const std::string& code() const noexcept { return code_; }
    const std::string& type() const noexcept { return type_; }

    json body() const {
        json e = {{"message", what()}, {"type", type_}, {"param", nullptr}, {"code", nullptr}};
        if (!param_.empty()) e["param"] = param_;
        if (!code_.empty()) e["code"] = code_;
        return json{{"error", e}};
    }

    static std::string default_type(int status) {
        switch (status) {
            case 401: return "authentication_error";
            case 404: return "not_found_error";
            case 429: return "rate_limit_error";
            case 503: return "service_unavailable";
            case 504: return "timeout_error";
            default: return status >= 500 ? "server_error" : "invalid_request_error";
        }
    }

private:
    int status_;
    std::string param_, code_, type_;
};

inline ApiError bad_request(const std::string& message, std::string param = {}, std::string code = "invalid_value") {
    return ApiError(400, message, std::move(param), std::move(code));
}

enum class Endpoint { generate, completions, chat };

inline const char* endpoint_path(Endpoint e) noexcept {
    switch (e) {
        case Endpoint::generate: return "/generate";
        case Endpoint::completions: return "/v1/completions";
        case Endpoint::chat: return "/v1/chat/completions";
    }
    return "/generate";
}

// What a request may ask of this model.
struct ModelLimits {
    std::size_t vocab_size = 50257;
    std::size_t n_positions = 1024;
    bool has_tokenizer = true;
};

// One prompt: text (to tokenize) or token ids.
struct PromptInput {
    std::optional<std::string> text;
    std::vector<std::int32_t> ids;
};

struct GenerationRequest {
    Endpoint endpoint = Endpoint::completions;
    std::vector<PromptInput> prompts;  // chat: one, the rendered template
    SamplingParams params;
    bool max_tokens_given = false;  // else: the rest of the context (chat), the endpoint's default otherwise
    bool seed_given = false;
    std::size_t n = 1;
    bool stream = false;
    bool include_usage = false;  // stream_options.include_usage
    bool echo = false;
    int logprobs = -1;           // completions: 0..5 alternatives; chat: top_logprobs when logprobs is true
};

inline constexpr std::size_t kMaxChoices = 64;    // prompts x n in one request
inline constexpr std::size_t kMaxStopStrings = 4;  // as OpenAI
inline constexpr int kMaxLogprobs = 5;
inline constexpr int kMaxTopLogprobs = 20;
inline constexpr std::size_t kMaxJsonDepth = 64;

namespace detail {

inline std::string type_name(const json& v) {
    if (v.is_null()) return "null";
    if (v.is_boolean()) return "a boolean";
    if (v.is_number_integer() || v.is_number_unsigned()) return "an integer";
    if (v.is_number()) return "a number";
    if (v.is_string()) return "a string";
    if (v.is_array()) return "an array";
    return "an object";
}

[[noreturn]] inline void wrong_type(const std::string& param, const json& v, const std::string& expected) {
    throw bad_request("'" + param + "' must be " + expected + ", found " + type_name(v), param, "invalid_type");
}

inline double number(const json& v, const std::string& param, double lo, double hi) {
    if (!v.is_number()) wrong_type(param, v, "a number");
    const double x = v.get<double>();
    if (!std::isfinite(x) || x < lo || x > hi)
        throw bad_request("'" + param + "' must be in [" + qlm::detail::number_text(lo) + ", " + qlm::detail::number_text(hi) +
                              "], found " + v.dump(),
                          param);
    return x;
}

inline std::int64_t integer(const json& v, const std::string& param, std::int64_t lo, std::int64_t hi) {
    // 5.0 is read as 5 (JSON has one number type; OpenAI's Python validation accepts it too).
    std::int64_t x = 0;
    if (v.is_number_unsigned()) {
        const auto u = v.get<std::uint64_t>();
        if (u > static_cast<std::uint64_t>(hi))
            throw bad_request("'" + param + "' must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], found " + v.dump(), param);
        x = static_cast<std::int64_t>(u);
    } else if (v.is_number_integer()) {
        x = v.get<std::int64_t>();
    } else if (v.is_number_float() && std::isfinite(v.get<double>()) && v.get<double>() == std::floor(v.get<double>()) &&
               std::fabs(v.get<double>()) < 9e15) {
        x = static_cast<std::int64_t>(v.get<double>());
    } else {
        wrong_type(param, v, "an integer");
    }
    if (x < lo || x > hi)
        throw bad_request("'" + param + "' must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], found " +
                              v.dump(),
                          param);
    return x;
}

inline bool boolean(const json& v, const std::string& param) {
    if (!v.is_boolean()) wrong_type(param, v, "a boolean");
    return v.get<bool>();
}

inline std::string utf8_string(const json& v, const std::string& param) {
    if (!v.is_string()) wrong_type(param, v, "a string");
    return v.get<std::string>();  // nlohmann's parser accepts valid UTF-8 only
}

inline std::vector<std::int32_t> token_ids(const json& v, const std::string& param, const ModelLimits& limits) {
    std::vector<std::int32_t> ids;
    ids.reserve(v.size());
    for (std::size_t i = 0; i < v.size(); ++i)
        ids.push_back(static_cast<std::int32_t>(
            integer(v[i], param + "[" + std::to_string(i) + "]", 0, static_cast<std::int64_t>(limits.vocab_size) - 1)));
    return ids;
}

inline bool is_id_list(const json& v) {
    return v.is_array() && !v.empty() && (v[0].is_number());
}

// prompt: a string, a list of strings, a list of token ids, or a list of lists of ids.
inline std::vector<PromptInput> prompts(const json& v, const ModelLimits& limits, bool allow_batch) {
    const std::string param = "prompt";
    std::vector<PromptInput> out;
    const auto text = [&](const json& s, const std::string& p) {
        if (!limits.has_tokenizer)
            throw bad_request("this model was loaded without a tokenizer: send the prompt as token ids", p, "tokenizer_missing");
        out.push_back({utf8_string(s, p), {}});
    };
    if (v.is_string()) {
        text(v, param);
    } else if (is_id_list(v)) {
        out.push_back({std::nullopt, token_ids(v, param, limits)});
    } else if (v.is_array() && allow_batch) {
        if (v.empty()) throw bad_request("'prompt' must not be an empty list", param);
        for (std::size_t i = 0; i < v.size(); ++i) {
            const std::string p = param + "[" + std::to_string(i) + "]";
            if (v[i].is_string())
                text(v[i], p);
            else if (v[i].is_array() && !v[i].empty())
                out.push_back({std::nullopt, token_ids(v[i], p, limits)});
            else
                wrong_type(p, v[i], "a string or a non-empty list of token ids");
        }
    } else {
        wrong_type(param, v, allow_batch ? "a string, a list of strings, a list of token ids or a list of lists of token ids"
                                         : "a string or a list of token ids");
    }
    return out;
}

inline std::vector<std::string> stop_strings(const json& v) {
    std::vector<std::string> out;
    if (v.is_null()) return out;
    if (v.is_string()) {
        out.push_back(utf8_string(v, "stop"));
    } else if (v.is_array()) {
        if (v.size() > kMaxStopStrings)
            throw bad_request("'stop' takes at most " + std::to_string(kMaxStopStrings) + " strings, found " + std::to_string(v.size()), "stop");
        for (std::size_t i = 0; i < v.size(); ++i) out.push_back(utf8_string(v[i], "stop[" + std::to_string(i) + "]"));
    } else {
        wrong_type("stop", v, "a string or a list of strings");
    }
    for (const auto& s : out)
        if (s.empty()) throw bad_request("'stop' strings must not be empty", "stop");
    return out;
}

inline std::vector<std::pair<std::int32_t, float>> logit_bias(const json& v, const ModelLimits& limits) {
    std::vector<std::pair<std::int32_t, float>> out;
    if (v.is_null()) return out;
    if (!v.is_object()) wrong_type("logit_bias", v, "an object {token id: bias}");
    if (v.size() > 300) throw bad_request("'logit_bias' takes at most 300 token ids", "logit_bias");
    for (const auto& [key, bias] : v.items()) {
        std::int64_t id = -1;
        if (!key.empty() && key.size() <= 9 && key.find_first_not_of("0123456789") == std::string::npos) id = std::stoll(key);
        if (id < 0 || id >= static_cast<std::int64_t>(limits.vocab_size))
            throw bad_request("'logit_bias' keys must be token ids in [0, " + std::to_string(limits.vocab_size - 1) + "], found '" + key + "'",
                              "logit_bias");
        out.push_back({static_cast<std::int32_t>(id), static_cast<float>(number(bias, "logit_bias." + key, -100.0, 100.0))});
    }
    return out;
}

inline std::vector<ChatMessage> messages(const json& v) {
    if (!v.is_array()) wrong_type("messages", v, "a list of {role, content} objects");
    if (v.empty()) throw bad_request("'messages' must hold at least one message", "messages");
    std::vector<ChatMessage> out;
    for (std::size_t i = 0; i < v.size(); ++i) {
        const std::string p = "messages[" + std::to_string(i) + "]";
        const json& m = v[i];
        if (!m.is_object()) wrong_type(p, m, "an object {role, content}");
        ChatMessage msg;
        bool has_role = false, has_content = false;
        for (const auto& [key, value] : m.items()) {
            if (key == "role") {
                msg.role = utf8_string(value, p + ".role");
                if (chat_role_label(msg.role).empty())
                    throw bad_request("'" + p + ".role' must be system, developer, user or assistant, found '" + msg.role + "'", p + ".role");
                has_role = true;
            } else if (key == "content") {
                if (value.is_string()) {
                    msg.content = value.get<std::string>();
                } else if (value.is_array()) {  // content parts: text only
                    for (std::size_t k = 0; k < value.size(); ++k) {
                        const std::string pp = p + ".content[" + std::to_string(k) + "]";
                        const json& part = value[k];
                        if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") ||
                            !part["text"].is_string())
                            throw bad_request("'" + pp + "' must be a text part {\"type\": \"text\", \"text\": ...} (this model reads text only)", pp);
                        msg.content += part["text"].get<std::string>();
                    }
                } else if (!value.is_null()) {
                    wrong_type(p + ".content", value, "a string or a list of text parts");
                }
                has_content = true;
            } else if (key == "name") {
                utf8_string(value, p + ".name");  // accepted, not shown to the model
            } else {
                throw bad_request("unrecognized field '" + key + "' in " + p, p + "." + key, "unknown_parameter");
            }
        }
        if (!has_role) throw bad_request("'" + p + "' needs a 'role'", p + ".role");
        if (!has_content) throw bad_request("'" + p + "' needs a 'content'", p + ".content");
        out.push_back(std::move(msg));
    }
    return out;
}

// Nesting depth of a JSON text, without parsing it (brackets outside strings): refused above
// kMaxJsonDepth before the parser and the destructor recurse into it.
inline std::size_t json_depth(std::string_view text) {
    std::size_t depth = 0, max_depth = 0;
    bool in_string = false, escaped = false;
    for (const char c : text) {
        if (in_string) {
            if (escaped) escaped = false;
            else if (c == '\\') escaped = true;
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            max_depth = std::max(max_depth, ++depth);
        } else if ((c == ']' || c == '}') && depth > 0) {
            --depth;
        }
    }
    return max_depth;
}

}  // namespace detail

// The request body as a JSON object: 400 for what is not one.
inline json parse_body(std::string_view body) {
    if (detail::json_depth(body) > kMaxJsonDepth)
        throw bad_request("the request body nests deeper than " + std::to_string(kMaxJsonDepth) + " levels", {}, "invalid_json");
    json j;
    try {
        j = json::parse(body);
    } catch (const json::exception& e) {
        throw bad_request(std::string("the request body is not valid JSON: ") + e.what(), {}, "invalid_json");
    }
    if (!j.is_object()) throw bad_request("the request body must be a JSON object, found " + detail::type_name(j), {}, "invalid_json");
    return j;
}

// Validates a request of `endpoint`. Chat: the messages become one prompt through the chat template,
// with its turn markers as extra stop strings. max_tokens not given: 100 for /generate, 16 for
// completions (OpenAI's defaults); chat: resolve_max_tokens() fills in the rest of the context.
inline GenerationRequest parse_generation_request(Endpoint endpoint, const json& body, const ModelLimits& limits) {
    using namespace detail;
    GenerationRequest r;
    r.endpoint = endpoint;
    SamplingParams& p = r.params;
    const bool openai = endpoint != Endpoint::generate;
    p.temperature = endpoint == Endpoint::generate ? 0.8f : 1.0f;
    p.max_tokens = endpoint == Endpoint::generate ? 100 : 16;
    const auto max_tokens_limit = static_cast<std::int64_t>(limits.n_positions);
    bool has_prompt = false, logprobs_flag = false;
    int top_logprobs = -1;
    std::optional<std::int64_t> best_of;
    std::vector<std::string> stop;
    const auto reject_unknown = [&](const std::string& key) {
        throw bad_request("unrecognized request argument supplied: " + key, key, "unknown_parameter");
    };
    for (const auto& [key, v] : body.items()) {
        if (key == "prompt" && endpoint != Endpoint::chat) {
            r.prompts = prompts(v, limits, openai);
            has_prompt = true;
        } else if (key == "messages" && endpoint == Endpoint::chat) {
            r.prompts.push_back({apply_chat_template(messages(v)), {}});
            if (!limits.has_tokenizer)
                throw bad_request("this model was loaded without a tokenizer: chat needs one", "messages", "tokenizer_missing");
            has_prompt = true;
        } else if (key == "max_tokens" || (key == "max_completion_tokens" && endpoint == Endpoint::chat)) {
            if (v.is_null()) continue;
            p.max_tokens = static_cast<std::size_t>(integer(v, key, openai ? 0 : 1, max_tokens_limit));
            r.max_tokens_given = true;
        } else if (key == "temperature") {
            if (!v.is_null()) p.temperature = static_cast<float>(number(v, key, 0.0, 2.0));
        } else if (key == "top_p") {
            if (!v.is_null()) {
                p.top_p = static_cast<float>(number(v, key, 0.0, 1.0));
                if (p.top_p <= 0.0f) throw bad_request("'top_p' must be in (0, 1], found " + v.dump(), key);
            }
        } else if (key == "top_k" && !openai) {
            if (!v.is_null()) p.top_k = static_cast<std::size_t>(integer(v, key, 0, static_cast<std::int64_t>(limits.vocab_size)));
        } else if (key == "seed") {
            if (!v.is_null()) {
                p.seed = static_cast<std::uint64_t>(integer(v, key, std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()));
                r.seed_given = true;
            }
        } else if (key == "stop") {
            stop = stop_strings(v);
        } else if (key == "model" && openai) {
            if (!v.is_null()) utf8_string(v, key);  // any name: one model is served
        } else if (key == "n" && openai) {
            if (!v.is_null()) r.n = static_cast<std::size_t>(integer(v, key, 1, static_cast<std::int64_t>(kMaxChoices)));
        } else if (key == "stream" && openai) {
            if (!v.is_null()) r.stream = boolean(v, key);
        } else if (key == "stream_options" && openai) {
            if (v.is_null()) continue;
            if (!v.is_object()) wrong_type(key, v, "an object");
            for (const auto& [k2, v2] : v.items()) {
                if (k2 != "include_usage") reject_unknown("stream_options." + k2);
                r.include_usage = boolean(v2, "stream_options.include_usage");
            }
        } else if ((key == "presence_penalty" || key == "frequency_penalty") && openai) {
            if (v.is_null()) continue;
            (key == "presence_penalty" ? p.presence_penalty : p.frequency_penalty) = static_cast<float>(number(v, key, -2.0, 2.0));
        } else if (key == "logit_bias" && openai) {
            p.logit_bias = logit_bias(v, limits);
        } else if (key == "user" && openai) {
            if (!v.is_null()) utf8_string(v, key);  // accepted, not used
        } else if (key == "echo" && endpoint == Endpoint::completions) {
            if (!v.is_null()) r.echo = boolean(v, key);
        } else if (key == "logprobs" && endpoint == Endpoint::completions) {
            if (!v.is_null()) r.logprobs = static_cast<int>(integer(v, key, 0, kMaxLogprobs));
        } else if (key == "logprobs" && endpoint == Endpoint::chat) {
            if (!v.is_null()) logprobs_flag = boolean(v, key);
        } else if (key == "top_logprobs" && endpoint == Endpoint::chat) {
            if (!v.is_null()) top_logprobs = static_cast<int>(integer(v, key, 0, kMaxTopLogprobs));
        } else if (key == "best_of" && endpoint == Endpoint::completions) {
            if (!v.is_null()) best_of = integer(v, key, 1, static_cast<std::int64_t>(kMaxChoices));
        } else if (key == "suffix" && endpoint == Endpoint::completions) {
            if (!v.is_null())
                throw bad_request("'suffix' is not supported: GPT-2 has no fill-in-the-middle training", key, "unsupported_parameter");
        } else {
            reject_unknown(key);
        }
    }
    if (!has_prompt) {
        const char* name = endpoint == Endpoint::chat ? "messages" : "prompt";
        throw bad_request(std::string("'") + name + "' is required", name, "missing_required_parameter");
    }
    if (best_of && static_cast<std::size_t>(*best_of) != r.n) {
        if (static_cast<std::size_t>(*best_of) < r.n)
            throw bad_request("'best_of' must be >= 'n'", "best_of");
        throw bad_request("'best_of' > 'n' is not supported: qlm-serve returns every sample it draws (use n)", "best_of",
                          "unsupported_parameter");
    }
    if (r.prompts.size() * r.n > kMaxChoices)
        throw bad_request("prompts x n = " + std::to_string(r.prompts.size() * r.n) + " choices; at most " + std::to_string(kMaxChoices) +
                              " in one request",
                          "n");
    if (r.stream && r.echo && r.logprobs >= 0) throw bad_request("'echo' with 'logprobs' is not supported", "echo", "unsupported_parameter");
    if (r.echo && r.logprobs >= 0)
        throw bad_request("'echo' with 'logprobs' is not supported: the prompt tokens' log-probabilities are not computed", "echo",
                          "unsupported_parameter");
    if (r.include_usage && !r.stream) throw bad_request("'stream_options' is only allowed with 'stream': true", "stream_options");
    if (endpoint == Endpoint::chat) {
        if (top_logprobs >= 0 && !logprobs_flag) throw bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs");
        if (logprobs_flag) r.logprobs = std::max(top_logprobs, 0);
        for (const auto m : kChatTurnMarkers) stop.emplace_back(m);
    }
    if (!openai && p.max_tokens == 0) throw bad_request("'max_tokens' must be >= 1", "max_tokens");
    p.stop = std::move(stop);
    return r;
}

// OpenAI's finish_reason: EOS and stop strings are "stop", the token limit "length".
inline const char* openai_finish_reason(RequestFinishReason r) noexcept {
    switch (r) {
        case RequestFinishReason::stop:
        case RequestFinishReason::eos: return "stop";
        case RequestFinishReason::length: return "length";
        case RequestFinishReason::cancelled: return "cancelled";
        case RequestFinishReason::error: return "error";
    }
    return "stop";
}

struct Usage {
    std::size_t prompt_tokens = 0, completion_tokens = 0;
    json to_json() const {
        return {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens}, {"total_tokens", prompt_tokens + completion_tokens}};
    }
};

// A token's text for logprobs (its own bytes; a piece of a UTF-8 character shows as U+FFFD).
using TokenText = std::function<std::string(std::int32_t)>;

// Completions' logprobs object for `entries`, offsets counted from `offset` into the choice's text.
inline json completion_logprobs(const std::vector<TokenLogprob>& entries, const TokenText& text, std::size_t offset) {
    json tokens = json::array(), token_logprobs = json::array(), top = json::array(), offsets = json::array();
    for (const auto& e : entries) {
        const std::string t = text(e.token);
        tokens.push_back(t);
        token_logprobs.push_back(e.logprob);
        json alternatives = json::object();
        for (const auto& [id, lp] : e.top) alternatives[text(id)] = lp;
        top.push_back(alternatives);
        offsets.push_back(offset);
        offset += t.size();
    }
    return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
}

inline json chat_logprobs(const std::vector<TokenLogprob>& entries, const TokenText& text) {
    const auto bytes = [](const std::string& s) {
        json b = json::array();
        for (const char c : s) b.push_back(static_cast<unsigned char>(c));
        return b;
    };
    json content = json::array();
    for (const auto& e : entries) {
        const std::string t = text(e.token);
        json top = json::array();
        for (const auto& [id, lp] : e.top) {
            const std::string a = text(id);
            top.push_back({{"token", a}, {"logprob", lp}, {"bytes", bytes(a)}});
        }
        content.push_back({{"token", t}, {"logprob", e.logprob}, {"bytes", bytes(t)}, {"top_logprobs", top}});
    }
    return {{"content", content}};
}

}  // namespace qlm::serve
