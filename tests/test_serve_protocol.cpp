// qlm::serve without sockets: request validation, response pieces, the Prometheus registry, token
// buckets, API keys and the chat template.
#include <qlm/serve/auth.hpp>
#include <qlm/serve/chat_template.hpp>
#include <qlm/serve/metrics.hpp>
#include <qlm/serve/protocol.hpp>
#include <qlm/serve/rate_limit.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace qlm::serve;

namespace {

const ModelLimits kLimits{50257, 1024, true};

GenerationRequest parse(Endpoint e, const std::string& body, const ModelLimits& limits = kLimits) {
    return parse_generation_request(e, parse_body(body), limits);
}

// The 400's param, or "(none)" if the body was accepted.
std::string rejected_param(Endpoint e, const std::string& body, const ModelLimits& limits = kLimits) {
    try {
        (void)parse(e, body, limits);
    } catch (const ApiError& err) {
        CHECK(err.status() == 400);
        CHECK(!std::string(err.what()).empty());
        return err.param().empty() ? "(body)" : err.param();
    }
    return "(none)";
}

}  // namespace

TEST_CASE("completions: defaults and fields") {
    const auto r = parse(Endpoint::completions, R"({"prompt": "hello", "model": "x", "user": "u"})");
    REQUIRE(r.prompts.size() == 1);
    CHECK(*r.prompts[0].text == "hello");
    CHECK(r.params.max_tokens == 16);
    CHECK(r.params.temperature == 1.0f);
    CHECK(r.n == 1);
    CHECK(!r.stream);
    CHECK(r.logprobs == -1);
    CHECK(!r.seed_given);

    const auto f = parse(Endpoint::completions, R"({"prompt": [[1, 2], "a", [3]], "max_tokens": 5, "temperature": 0, "top_p": 0.5,
        "n": 2, "stop": ["x", "y"], "seed": -3, "presence_penalty": 1.5, "frequency_penalty": -2, "logit_bias": {"50256": -100, "7": 2.5},
        "echo": true, "stream": true, "stream_options": {"include_usage": true}, "best_of": 2})");
    REQUIRE(f.prompts.size() == 3);
    CHECK(f.prompts[0].ids == std::vector<std::int32_t>{1, 2});
    CHECK(*f.prompts[1].text == "a");
    CHECK(f.params.max_tokens == 5);
    CHECK(f.params.top_p == 0.5f);
    CHECK(f.n == 2);
    CHECK(f.params.stop == std::vector<std::string>{"x", "y"});
    CHECK(f.seed_given);
    CHECK(f.params.seed == static_cast<std::uint64_t>(-3));
    CHECK(f.params.presence_penalty == 1.5f);
    CHECK(f.params.frequency_penalty == -2.0f);
    REQUIRE(f.params.logit_bias.size() == 2);
    CHECK(f.echo);
    CHECK(f.include_usage);
    CHECK(parse(Endpoint::completions, R"({"prompt": "x", "max_tokens": 4.0})").params.max_tokens == 4);  // an integral number
    CHECK(parse(Endpoint::completions, R"({"prompt": "x", "stop": "s"})").params.stop == std::vector<std::string>{"s"});
    CHECK(parse(Endpoint::completions, R"({"prompt": "x", "logprobs": 5})").logprobs == 5);
}

TEST_CASE("completions: every bad field is a 400 naming it") {
    const std::map<std::string, std::string> cases = {
        {R"({})", "prompt"},
        {R"({"prompt": 5})", "prompt"},
        {R"({"prompt": []})", "prompt"},
        {R"({"prompt": [1, "a"]})", "prompt[1]"},
        {R"({"prompt": [1, 50257]})", "prompt[1]"},
        {R"({"prompt": [[1], {}]})", "prompt[1]"},
        {R"({"prompt": "x", "max_tokens": -1})", "max_tokens"},
        {R"({"prompt": "x", "max_tokens": 1025})", "max_tokens"},
        {R"({"prompt": "x", "max_tokens": true})", "max_tokens"},
        {R"({"prompt": "x", "max_tokens": 18446744073709551615})", "max_tokens"},
        {R"({"prompt": "x", "temperature": -0.1})", "temperature"},
        {R"({"prompt": "x", "temperature": [1]})", "temperature"},
        {R"({"prompt": "x", "top_p": 1.01})", "top_p"},
        {R"({"prompt": "x", "top_p": 0})", "top_p"},
        {R"({"prompt": "x", "n": 65})", "n"},
        {R"({"prompt": ["a", "b"], "n": 40})", "n"},
        {R"({"prompt": "x", "stop": [""]})", "stop"},
        {R"({"prompt": "x", "stop": [1]})", "stop[0]"},
        {R"({"prompt": "x", "seed": 1.5})", "seed"},
        {R"({"prompt": "x", "seed": 18446744073709551615})", "seed"},
        {R"({"prompt": "x", "logit_bias": []})", "logit_bias"},
        {R"({"prompt": "x", "logit_bias": {"-1": 1}})", "logit_bias"},
        {R"({"prompt": "x", "logit_bias": {"1": -101}})", "logit_bias.1"},
        {R"({"prompt": "x", "logprobs": -1})", "logprobs"},
        {R"({"prompt": "x", "echo": 1})", "echo"},
        {R"({"prompt": "x", "echo": true, "logprobs": 0})", "echo"},
        {R"({"prompt": "x", "stream_options": {"include_usage": true}})", "stream_options"},
        {R"({"prompt": "x", "stream": true, "stream_options": {"other": true}})", "stream_options.other"},
        {R"({"prompt": "x", "best_of": 2})", "best_of"},
        {R"({"prompt": "x", "suffix": "y"})", "suffix"},
        {R"({"prompt": "x", "top_k": 3})", "top_k"},  // not OpenAI's
        {R"({"prompt": "x", "messages": []})", "messages"},
        {R"({"prompt": "x", "typo": 1})", "typo"},
    };
    for (const auto& [body, param] : cases) {
        INFO(body);
        CHECK(rejected_param(Endpoint::completions, body) == param);
    }
    CHECK(rejected_param(Endpoint::completions, R"({"prompt": "x", "suffix": null, "best_of": 1})") == "(none)");
    // without a tokenizer text is refused, ids are fine
    const ModelLimits no_tokenizer{50257, 1024, false};
    CHECK(rejected_param(Endpoint::completions, R"({"prompt": "x"})", no_tokenizer) == "prompt");
    CHECK(rejected_param(Endpoint::completions, R"({"prompt": [1, 2]})", no_tokenizer) == "(none)");
}

TEST_CASE("the body must be a JSON object, not too deep") {
    for (const std::string body : {"", "{", "[1]", "null", "\"x\"", "{\"prompt\": NaN}", "{\"a\": Infinity}", "{\"a\": 1e999}",
                                   "{\"a\": \"\\ud800\"}", "{\"a\": \"\xc3\x28\"}", "{\"a\": 1,}"}) {
        INFO(body);
        CHECK_THROWS_AS((void)parse_body(body), ApiError);
    }
    std::string deep(kMaxJsonDepth + 1, '[');
    deep += std::string(kMaxJsonDepth + 1, ']');
    CHECK_THROWS_AS((void)parse_body("{\"a\":" + deep + "}"), ApiError);
    CHECK(detail::json_depth(R"({"a": "[[[[", "b": [{}]})") == 3);  // brackets inside strings do not count
}

TEST_CASE("chat: template, stop markers, logprobs") {
    const auto r = parse(Endpoint::chat, R"({"messages": [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}], "name": "ann"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Who?"}], "max_completion_tokens": 9,
        "logprobs": true, "top_logprobs": 3, "stop": "END"})");
    REQUIRE(r.prompts.size() == 1);
    CHECK(*r.prompts[0].text == "System: Be brief.\n\nUser: Hi!\n\nAssistant: Hello.\n\nUser: Who?\n\nAssistant:");
    CHECK(r.params.max_tokens == 9);
    CHECK(r.logprobs == 3);
    CHECK(r.params.stop == std::vector<std::string>{"END", "\nUser:", "\nSystem:", "\nAssistant:"});
    CHECK(!parse(Endpoint::chat, R"({"messages": [{"role": "user", "content": "x"}]})").max_tokens_given);

    CHECK(rejected_param(Endpoint::chat, R"({"messages": []})") == "messages");
    CHECK(rejected_param(Endpoint::chat, R"({"messages": [{"role": "bot", "content": "x"}]})") == "messages[0].role");
    CHECK(rejected_param(Endpoint::chat, R"({"messages": [{"content": "x"}]})") == "messages[0].role");
    CHECK(rejected_param(Endpoint::chat, R"({"messages": [{"role": "user", "content": 3}]})") == "messages[0].content");
    CHECK(rejected_param(Endpoint::chat, R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})") == "messages[0].content[0]");
    CHECK(rejected_param(Endpoint::chat, R"({"messages": [{"role": "user", "content": "x"}], "echo": true})") == "echo");
    CHECK(rejected_param(Endpoint::chat, R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 1})") == "top_logprobs");
    CHECK(rejected_param(Endpoint::chat, R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 21, "logprobs": true})") ==
          "top_logprobs");
    CHECK(rejected_param(Endpoint::chat, R"({"prompt": "x"})") == "prompt");
}

TEST_CASE("/generate: the tutorial's fields") {
    const auto r = parse(Endpoint::generate, R"({"prompt": "x"})");
    CHECK(r.params.max_tokens == 100);
    CHECK(r.params.temperature == doctest::Approx(0.8));
    CHECK(parse(Endpoint::generate, R"({"prompt": "x", "top_k": 40, "top_p": 0.9, "seed": 1, "stop": ["."]})").params.top_k == 40);
    CHECK(rejected_param(Endpoint::generate, R"({"prompt": "x", "n": 2})") == "n");
    CHECK(rejected_param(Endpoint::generate, R"({"prompt": "x", "max_tokens": 0})") == "max_tokens");
    CHECK(rejected_param(Endpoint::generate, R"({"prompt": ["a", "b"]})") == "prompt");
}

TEST_CASE("errors and logprobs bodies") {
    const ApiError e(429, "slow down", {}, "queue_full");
    const json b = e.body();
    CHECK(b["error"]["message"] == "slow down");
    CHECK(b["error"]["type"] == "rate_limit_error");
    CHECK(b["error"]["param"].is_null());
    CHECK(b["error"]["code"] == "queue_full");
    CHECK(bad_request("x", "n").body()["error"]["param"] == "n");
    CHECK(ApiError(401, "k").body()["error"]["type"] == "authentication_error");

    const std::vector<qlm::TokenLogprob> lps = {{5, -0.5f, {{5, -0.5f}, {6, -1.5f}}}, {7, -0.25f, {{7, -0.25f}, {8, -2.0f}}}};
    const auto text = [](std::int32_t id) { return std::string(static_cast<std::size_t>(id % 3 + 1), 'a'); };
    const json c = completion_logprobs(lps, text, 10);
    CHECK(c["tokens"] == json::array({"aaa", "aa"}));
    CHECK(c["token_logprobs"][1] == doctest::Approx(-0.25));
    CHECK(c["text_offset"] == json::array({10, 13}));
    CHECK(c["top_logprobs"][0].size() == 2);
    const json h = chat_logprobs(lps, text);
    CHECK(h["content"][0]["token"] == "aaa");
    CHECK(h["content"][0]["bytes"] == json::array({97, 97, 97}));
    CHECK(h["content"][1]["top_logprobs"][1]["logprob"] == doctest::Approx(-2.0));
    CHECK(std::string(openai_finish_reason(qlm::RequestFinishReason::eos)) == "stop");
    CHECK(std::string(openai_finish_reason(qlm::RequestFinishReason::length)) == "length");
}

TEST_CASE("metrics: exposition format") {
    Registry reg;
    auto& c = reg.add<Counter>("t_requests_total", "Requests.\nSecond line \\ here.", Labels{"endpoint", "status"});
    auto& g = reg.add<Gauge>("t_ratio", "A ratio.");
    auto& h = reg.add<Histogram>("t_seconds", "Latency.", std::vector<double>{0.1, 1.0});
    c.inc({"/a", "200"});
    c.inc({"/a", "200"}, 2);
    c.inc({"say \"hi\"\n\\", "500"});
    g.set(0.25);
    h.observe(0.05);
    h.observe(0.1);  // le is inclusive
    h.observe(5.0);
    const std::string text = reg.render();
    CHECK(text.find("# HELP t_requests_total Requests.\\nSecond line \\\\ here.\n# TYPE t_requests_total counter\n") != std::string::npos);
    CHECK(text.find("t_requests_total{endpoint=\"/a\",status=\"200\"} 3\n") != std::string::npos);
    CHECK(text.find("t_requests_total{endpoint=\"say \\\"hi\\\"\\n\\\\\",status=\"500\"} 1\n") != std::string::npos);
    CHECK(text.find("# TYPE t_ratio gauge\nt_ratio 0.25\n") != std::string::npos);
    CHECK(text.find("t_seconds_bucket{le=\"0.1\"} 2\nt_seconds_bucket{le=\"1\"} 2\nt_seconds_bucket{le=\"+Inf\"} 3\nt_seconds_sum 5.15") !=
          std::string::npos);
    CHECK(text.find("\nt_seconds_count 3\n") != std::string::npos);
    CHECK(c.value({"/a", "200"}) == 3);
    CHECK(h.count() == 3);
    CHECK_THROWS_AS(c.inc({"/a"}), qlm::invalid_argument);         // wrong number of labels
    CHECK_THROWS_AS(c.inc({"/a", "1"}, -1), qlm::invalid_argument);  // counters only go up
    CHECK_THROWS_AS(reg.add<Gauge>("t_ratio", "again"), qlm::invalid_argument);
    CHECK_THROWS_AS(reg.add<Gauge>("bad-name", "x"), qlm::invalid_argument);
    CHECK_THROWS_AS(reg.add<Histogram>("t_h2", "x", std::vector<double>{1.0, 0.5}), qlm::invalid_argument);
    CHECK_THROWS_AS(reg.add<Counter>("t_c2", "x", Labels{"le"}), qlm::invalid_argument);
    // a fresh unlabelled counter reads 0 from the start
    Registry r2;
    r2.add<Counter>("t_zero_total", "zero");
    CHECK(r2.render().find("\nt_zero_total 0\n") != std::string::npos);
}

TEST_CASE("metrics: thread-safe increments") {
    Registry reg;
    auto& c = reg.add<Counter>("t_total", "x", Labels{"k"});
    auto& h = reg.add<Histogram>("t_h", "x", std::vector<double>{1.0});
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
            for (int i = 0; i < 10000; ++i) {
                c.inc({t % 2 ? "a" : "b"});
                h.observe(0.5);
                if (i % 1000 == 0) (void)reg.render();
            }
        });
    for (auto& t : threads) t.join();
    CHECK(c.value({"a"}) + c.value({"b"}) == 40000);
    CHECK(h.count() == 40000);
}

TEST_CASE("rate limit: token buckets per key") {
    using clock = RateLimiter::clock;
    RateLimiter off;
    CHECK(!off.enabled());
    CHECK(off.acquire("k") == 0.0);
    RateLimiter rl(2.0, 3.0);  // 2/s, bursts of 3
    const auto t0 = clock::now();
    CHECK(rl.acquire("a", t0) == 0.0);
    CHECK(rl.acquire("a", t0) == 0.0);
    CHECK(rl.acquire("a", t0) == 0.0);
    const double wait = rl.acquire("a", t0);
    CHECK(wait == doctest::Approx(0.5));
    CHECK(rl.acquire("b", t0) == 0.0);                                  // its own bucket
    CHECK(rl.acquire("a", t0 + std::chrono::milliseconds(499)) > 0.0);  // not yet
    CHECK(rl.acquire("a", t0 + std::chrono::milliseconds(501)) == 0.0);
    CHECK_THROWS_AS(RateLimiter(-1.0), qlm::invalid_argument);
    CHECK_THROWS_AS(RateLimiter(1.0, 0.5), qlm::invalid_argument);
}

TEST_CASE("API keys: bearer parsing, constant-time compare") {
    CHECK(bearer_token("Bearer abc") == "abc");
    CHECK(bearer_token("bearer  abc ") == "abc");
    CHECK(bearer_token("Basic abc").empty());
    CHECK(bearer_token("Bearer").empty());
    CHECK(constant_time_equal("abc", "abc"));
    CHECK(!constant_time_equal("abc", "abd"));
    CHECK(!constant_time_equal("abc", "abcd"));
    CHECK(!constant_time_equal("", "a"));
    CHECK(constant_time_equal("", ""));
    ApiKeys keys({"k1", ""});
    keys.add_list(" k2 ,,k3");
    CHECK(keys.size() == 3);
    CHECK(keys.match("k2") != nullptr);
    CHECK(*keys.match("k3") == "k3");
    CHECK(keys.match("k") == nullptr);
    CHECK(keys.match("") == nullptr);
    CHECK(!ApiKeys().enabled());
}
