// Tests for qlm/sched/sampler.hpp (SamplingParams, Sampler) and qlm/sched/sequence_output.hpp
// (IncrementalDetokenizer, StopStringMatcher, SequenceOutput), and their use by generate().
#include <doctest/doctest.h>

#include <qlm/engine/generate.hpp>
#include <qlm/model/load_gpt2.hpp>
#include <qlm/sched/sampler.hpp>
#include <qlm/sched/sequence_output.hpp>
#include <qlm/tokenizer/gpt2_tokenizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace {

const std::filesystem::path kRoot = QLM_SOURCE_DIR;
constexpr float kInf = std::numeric_limits<float>::infinity();
using ids_t = std::vector<std::int32_t>;

const qlm::GPT2Tokenizer& kjv_tokenizer() {
    static const auto t = qlm::GPT2Tokenizer::from_directory(kRoot / "models/gpt2-tiny-kjv");
    return t;
}

std::vector<float> normal_logits(std::size_t n, float sd, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, sd);
    std::vector<float> l(n);
    for (auto& x : l) x = d(rng);
    return l;
}

// A reference UTF-8 reader written differently from qlm's table: decode the code point
// arithmetically and ask whether the bytes read so far can still begin a valid scalar value
// (no overlong form, no surrogate, at most U+10FFFF). Ill-formed maximal subparts -> one U+FFFD.
std::string reference_replace(const std::string& s) {
    std::string out;
    std::size_t i = 0;
    while (i < s.size()) {
        const auto b0 = static_cast<unsigned char>(s[i]);
        int len = (b0 >> 7) == 0 ? 1 : (b0 >> 5) == 6 ? 2 : (b0 >> 4) == 14 ? 3 : (b0 >> 3) == 30 ? 4 : 0;
        if (len == 1) {
            out += s[i++];
            continue;
        }
        const std::uint32_t lo_cp[5] = {0, 0, 0x80, 0x800, 0x10000}, hi_cp[5] = {0, 0, 0x7FF, 0xFFFF, 0x10FFFF};
        const auto possible = [&](std::uint32_t bits, int have) {  // can `have` bytes start a valid char?
            const int missing = 6 * (len - have);
            const std::uint32_t lo = bits << missing, hi = (bits << missing) | ((1u << missing) - 1);
            const std::uint32_t a = std::max(lo, lo_cp[len]), b = std::min(hi, hi_cp[len]);
            if (a > b) return false;
            return !(a >= 0xD800 && b <= 0xDFFF);
        };
        std::uint32_t bits = len ? b0 & (0x7Fu >> len) : 0;
        int have = 1;
        if (len == 0 || !possible(bits, 1)) {
            out += "\xEF\xBF\xBD";
            ++i;
            continue;
        }
        while (have < len && i + static_cast<std::size_t>(have) < s.size()) {
            const auto b = static_cast<unsigned char>(s[i + static_cast<std::size_t>(have)]);
            if ((b >> 6) != 2 || !possible((bits << 6) | (b & 0x3F), have + 1)) break;
            bits = (bits << 6) | (b & 0x3F);
            ++have;
        }
        if (have == len)
            out.append(s, i, static_cast<std::size_t>(len));
        else
            out += "\xEF\xBF\xBD";
        i += static_cast<std::size_t>(have);
    }
    return out;
}

bool is_valid_utf8(const std::string& s) { return reference_replace(s) == s && s.find("\xEF\xBF\xBD") == std::string::npos; }

// A decoder over a fixed list of pieces (id -> piece), counting the ids it is asked to decode.
struct PieceDecoder {
    std::vector<std::string> pieces;
    std::size_t* decoded = nullptr;
    std::string operator()(std::span<const std::int32_t> ids) const {
        if (decoded) *decoded += ids.size();
        std::string s;
        for (const auto id : ids) s += pieces.at(static_cast<std::size_t>(id));
        return s;
    }
};

// Runs `tokens` through a SequenceOutput; returns the concatenated deltas.
struct Run {
    std::string text;
    std::vector<std::string> deltas;
    bool finished = false;
    qlm::FinishReason reason = qlm::FinishReason::length;
    std::size_t steps = 0;
};
Run run_output(qlm::SequenceOutput& out, const ids_t& tokens) {
    Run r;
    for (const auto t : tokens) {
        const auto step = out.append(t);
        ++r.steps;
        r.deltas.push_back(step.text_delta);
        r.text += step.text_delta;
        if (step.finished) {
            r.finished = true;
            r.reason = step.reason;
            break;
        }
    }
    if (!r.finished) r.text += out.flush();
    return r;
}

}  // namespace

TEST_CASE("SamplingParams::validate: every out-of-range value is refused with a message naming it") {
    using P = qlm::SamplingParams;
    const qlm::SamplingParams ok;
    CHECK_NOTHROW(ok.validate());
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const std::vector<std::pair<std::function<void(P&)>, std::string>> bad{
        {[](P& p) { p.temperature = -0.5f; }, "temperature must be a finite number >= 0, found -0.5"},
        {[&](P& p) { p.temperature = nan; }, "temperature"},
        {[](P& p) { p.temperature = kInf; }, "temperature"},
        {[](P& p) { p.top_p = 0.0f; }, "top_p must be in (0, 1], found 0"},
        {[](P& p) { p.top_p = 1.5f; }, "top_p must be in (0, 1], found 1.5"},
        {[&](P& p) { p.top_p = nan; }, "top_p must be in (0, 1], found nan"},
        {[](P& p) { p.min_p = -0.1f; }, "min_p must be in [0, 1]"},
        {[](P& p) { p.min_p = 1.01f; }, "min_p must be in [0, 1]"},
        {[&](P& p) { p.min_p = nan; }, "min_p must be in [0, 1], found nan"},
        {[](P& p) { p.repetition_penalty = 0.0f; }, "repetition_penalty must be a finite number > 0 (1 = off), found 0"},
        {[](P& p) { p.repetition_penalty = -1.2f; }, "repetition_penalty must be a finite number > 0"},
        {[&](P& p) { p.repetition_penalty = nan; }, "repetition_penalty"},
        {[](P& p) { p.repetition_penalty = kInf; }, "repetition_penalty"},
        {[](P& p) { p.presence_penalty = 2.5f; }, "presence_penalty must be in [-2, 2], found 2.5"},
        {[](P& p) { p.presence_penalty = -3.0f; }, "presence_penalty must be in [-2, 2], found -3"},
        {[&](P& p) { p.presence_penalty = nan; }, "presence_penalty"},
        {[](P& p) { p.frequency_penalty = -2.01f; }, "frequency_penalty must be in [-2, 2]"},
        {[&](P& p) { p.frequency_penalty = nan; }, "frequency_penalty must be in [-2, 2], found nan"},
        {[](P& p) { p.logit_bias = {{-3, 1.0f}}; }, "logit_bias: token id -3 is negative"},
        {[&](P& p) { p.logit_bias = {{7, nan}}; }, "logit_bias for token id 7 must be a number (or -inf to ban it), found nan"},
        {[](P& p) { p.logit_bias = {{7, kInf}}; }, "found inf"},
        {[](P& p) { p.logit_bias = {{7, 1.0f}, {8, 2.0f}, {7, -1.0f}}; }, "logit_bias names token id 7 twice"},
        {[](P& p) { p.stop_token_ids = {5, -1}; }, "stop_token_ids: token id -1 is negative"},
        {[](P& p) { p.min_tokens = 65; }, "min_tokens (65) must not exceed max_tokens (64)"},
        {[](P& p) { p.stop = {"ok", ""}; }, "stop strings must not be empty"},
        {[](P& p) { p.stop = {"a\xE4\xB8"}; }, "stop string is not valid UTF-8"},
    };
    for (const auto& item : bad) {
        const std::string& message = item.second;  // not a structured binding: clang 14 cannot capture those
        P p;
        item.first(p);
        CAPTURE(message);
        CHECK_THROWS_WITH_AS(p.validate(), doctest::Contains(message.c_str()), qlm::invalid_argument);
        CHECK_THROWS_AS(qlm::Sampler{p}, qlm::invalid_argument);
        CHECK_THROWS_AS(qlm::SequenceOutput(p, {}, 0), qlm::invalid_argument);
    }
    // In range, at the edges.
    P edge;
    edge.temperature = 0.0f;
    edge.min_p = 1.0f;
    edge.presence_penalty = -2.0f;
    edge.frequency_penalty = 2.0f;
    edge.repetition_penalty = 0.01f;
    edge.logit_bias = {{0, -kInf}, {1, 100.0f}};
    edge.min_tokens = edge.max_tokens;
    CHECK_NOTHROW(edge.validate());

    // Ids are checked against the vocabulary when sampling.
    P bias;
    bias.logit_bias = {{2, 1.0f}, {10, 1.0f}};
    qlm::Sampler s(bias);
    const std::vector<float> logits(10, 0.0f);
    CHECK_THROWS_WITH_AS(s.sample(logits), doctest::Contains("logit_bias names token id 10, outside the vocabulary of 10 tokens"),
                         qlm::invalid_argument);
    P rep;
    rep.repetition_penalty = 1.2f;
    qlm::Sampler r(rep, ids_t{1, 12});
    CHECK_THROWS_WITH_AS(r.sample(logits), doctest::Contains("token id 12 of the prompt or output is outside the vocabulary of 10"),
                         qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::Sampler(rep, ids_t{-1}), qlm::invalid_argument);
    CHECK_THROWS_AS(s.sample(std::vector<float>{}), qlm::invalid_argument);
    // Everything banned: nothing to sample.
    P ban;
    ban.logit_bias = {{0, -kInf}, {1, -kInf}};
    qlm::Sampler b(ban);
    CHECK_THROWS_WITH_AS(b.sample(std::vector<float>{1.0f, 2.0f}), doctest::Contains("nothing to sample"), qlm::invalid_argument);
    ban.temperature = 0.0f;
    qlm::Sampler bg(ban);
    CHECK_THROWS_AS(bg.sample(std::vector<float>{1.0f, 2.0f}), qlm::invalid_argument);
}

TEST_CASE("penalties and logit_bias: hand-computed values, in the order bias -> repetition -> frequency/presence") {
    const std::vector<float> logits{2.0f, -1.0f, 0.5f, 0.0f, 3.0f, -2.5f, 1.0f};
    const ids_t prompt{0, 1, 1};
    const ids_t output{4, 4, 2};

    qlm::SamplingParams p;
    p.repetition_penalty = 1.25f;  // prompt and output ids {0, 1, 2, 4}
    {
        qlm::Sampler s(p, prompt);
        for (auto t : output) s.accept(t);
        const auto l = s.processed_logits(logits);
        const std::vector<float> expected{1.6f, -1.25f, 0.4f, 0.0f, 2.4f, -2.5f, 1.0f};
        for (std::size_t i = 0; i < logits.size(); ++i) CHECK(l[i] == doctest::Approx(expected[i]).epsilon(1e-6));
    }
    p.repetition_penalty = 1.0f;
    p.frequency_penalty = 0.5f;  // output counts: 4 twice, 2 once; the prompt does not count
    p.presence_penalty = 0.25f;
    {
        qlm::Sampler s(p, prompt);
        for (auto t : output) s.accept(t);
        const auto l = s.processed_logits(logits);
        const std::vector<float> expected{2.0f, -1.0f, -0.25f, 0.0f, 1.75f, -2.5f, 1.0f};
        for (std::size_t i = 0; i < logits.size(); ++i) CHECK(l[i] == doctest::Approx(expected[i]).epsilon(1e-6));
    }
    p.repetition_penalty = 1.25f;
    p.logit_bias = {{2, -1.0f}, {3, 0.5f}};
    {
        qlm::Sampler s(p, prompt);
        for (auto t : output) s.accept(t);
        const auto l = s.processed_logits(logits);
        // id 2: (0.5 - 1) * 1.25 - (0.5 + 0.25) = -1.375 (bias first: penalties first would give -1.35)
        // id 4: 3 / 1.25 - (2 * 0.5 + 0.25) = 1.15; id 0: 2 / 1.25; id 1: -1 * 1.25; id 3: 0 + 0.5
        const std::vector<float> expected{1.6f, -1.25f, -1.375f, 0.5f, 1.15f, -2.5f, 1.0f};
        for (std::size_t i = 0; i < logits.size(); ++i) CHECK(l[i] == doctest::Approx(expected[i]).epsilon(1e-6));
        p.temperature = 0.0f;
        qlm::Sampler g(p, prompt);
        for (auto t : output) g.accept(t);
        CHECK(g.sample(logits) == 0);  // 1.6 beats the penalised 3.0
    }
    // Negative presence / frequency penalties (OpenAI allows [-2, 2]) favour repeats.
    qlm::SamplingParams neg;
    neg.temperature = 0.0f;
    neg.presence_penalty = -2.0f;
    qlm::Sampler n(neg);
    n.accept(5);
    CHECK(n.processed_logits(logits)[5] == doctest::Approx(-0.5f));
    CHECK(n.sample(logits) == 4);
    // With nothing to apply, the logits are returned as they are (no copy).
    qlm::Sampler plain(qlm::SamplingParams{});
    CHECK(plain.processed_logits(logits).data() == logits.data());
}

TEST_CASE("penalties: the incremental state equals a recount of the whole history at every step") {
    constexpr std::size_t V = 97;
    std::mt19937 rng(20240611);
    for (int trial = 0; trial < 8; ++trial) {
        qlm::SamplingParams p;
        std::uniform_real_distribution<float> u(0.0f, 1.0f);
        p.repetition_penalty = 0.6f + 1.2f * u(rng);
        p.frequency_penalty = -2.0f + 4.0f * u(rng);
        p.presence_penalty = -2.0f + 4.0f * u(rng);
        p.logit_bias = {{static_cast<std::int32_t>(rng() % V), 3.0f * u(rng) - 1.5f}};
        ids_t prompt(1 + rng() % 20);
        for (auto& t : prompt) t = static_cast<std::int32_t>(rng() % 30);  // repeats, and ids the output also uses
        qlm::Sampler s(p, prompt);
        ids_t history;
        for (int step = 0; step < 150; ++step) {
            const auto logits = normal_logits(V, 2.0f, rng());
            // Reference: recount from scratch.
            std::vector<float> ref = logits;
            ref[static_cast<std::size_t>(p.logit_bias[0].first)] += p.logit_bias[0].second;
            std::set<std::int32_t> seen(prompt.begin(), prompt.end());
            seen.insert(history.begin(), history.end());
            for (auto id : seen) {
                float& x = ref[static_cast<std::size_t>(id)];
                x = x > 0.0f ? x / p.repetition_penalty : x * p.repetition_penalty;
            }
            std::map<std::int32_t, int> count;
            for (auto id : history) ++count[id];
            for (auto [id, c] : count) ref[static_cast<std::size_t>(id)] -= p.frequency_penalty * static_cast<float>(c) + p.presence_penalty;
            const auto got = s.processed_logits(logits);
            for (std::size_t i = 0; i < V; ++i) REQUIRE(got[i] == doctest::Approx(ref[i]).epsilon(1e-6));
            const auto t = static_cast<std::int32_t>(rng() % 40);
            s.accept(t);
            history.push_back(t);
        }
        CHECK(s.accepted() == history.size());
    }
}

TEST_CASE("top-k, top-p and min-p keep exactly the right sets, with the right probabilities") {
    // Probabilities by rank, given to shuffled ids; logits are their logs plus an offset.
    const std::vector<double> probs{0.30, 0.20, 0.15, 0.10, 0.08, 0.07, 0.05, 0.03, 0.02};
    const std::size_t V = probs.size();
    std::vector<std::int32_t> id_of_rank(V);
    std::iota(id_of_rank.begin(), id_of_rank.end(), 0);
    std::shuffle(id_of_rank.begin(), id_of_rank.end(), std::mt19937(99));
    std::vector<float> logits(V);
    for (std::size_t r = 0; r < V; ++r) logits[static_cast<std::size_t>(id_of_rank[r])] = static_cast<float>(std::log(probs[r]) + 3.7);

    struct Case {
        std::size_t top_k;
        float top_p, min_p, temperature;
        std::size_t keep;  // the kept ranks are 0 .. keep-1
    };
    const std::vector<Case> cases{
        {0, 1.0f, 0.0f, 1.0f, 9},   // everything
        {5, 1.0f, 0.0f, 1.0f, 5},   // top-k
        {0, 0.6f, 0.0f, 1.0f, 3},   // 0.30 + 0.20 < 0.6 <= + 0.15
        {0, 0.8f, 0.0f, 1.0f, 5},   // 0.75 < 0.8 <= 0.83
        {5, 0.8f, 0.0f, 1.0f, 4},   // over the top-5 mass 0.83: 0.65 < 0.664 <= 0.75
        {0, 1.0f, 0.3f, 1.0f, 4},   // p >= 0.3 * 0.30 = 0.09
        {0, 1.0f, 0.45f, 1.0f, 3},  // p >= 0.135
        {5, 0.8f, 0.45f, 1.0f, 3},  // min-p after top-k and top-p
        {0, 0.99f, 0.2f, 1.0f, 6},  // top-p keeps all 9 (0.98 < 0.99), min-p: p >= 0.06
        {0, 1.0f, 0.2f, 0.5f, 3},   // at T = 0.5, p ~ probs^2: (p / 0.30)^2 >= 0.2 <=> p >= 0.134
        {0, 0.6f, 0.0f, 0.5f, 2},   // at T = 0.5 (p ~ probs^2) the top one holds 0.09 of 0.1776 (0.51), two 0.73
        {3, 1.0f, 0.0f, 2.0f, 3},
    };
    for (const auto& c : cases) {
        CAPTURE(c.top_k);
        CAPTURE(c.top_p);
        CAPTURE(c.min_p);
        CAPTURE(c.temperature);
        qlm::SamplingParams p;
        p.top_k = c.top_k;
        p.top_p = c.top_p;
        p.min_p = c.min_p;
        p.temperature = c.temperature;
        p.seed = 1000 + c.keep;
        qlm::Sampler s(p);
        constexpr int N = 20000;
        std::vector<int> count(V);
        for (int i = 0; i < N; ++i) ++count[static_cast<std::size_t>(s.sample(logits))];
        double kept_mass = 0.0;
        for (std::size_t r = 0; r < c.keep; ++r) kept_mass += std::pow(probs[r], 1.0 / c.temperature);
        for (std::size_t r = 0; r < V; ++r) {
            const int n = count[static_cast<std::size_t>(id_of_rank[r])];
            CAPTURE(r);
            if (r < c.keep) {
                CHECK(n > 0);  // every member drawn
                const double expected = std::pow(probs[r], 1.0 / c.temperature) / kept_mass;
                CHECK(std::abs(n / static_cast<double>(N) - expected) < 0.015);
            } else {
                CHECK(n == 0);  // nothing outside the set
            }
        }
    }
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;  // ~25x slower: fewer draws and configurations (the same checks)
#else
constexpr bool kSanitized = false;
#endif

TEST_CASE("top-p over a 50257-token vocabulary: the brute-force nucleus, ties to the lower id") {
    constexpr std::size_t V = 50257;
    // Flat: every token equally likely; ties rank by id, so the nucleus is ids 0 .. 45231 (0.9 * V = 45231.3).
    {
        const std::vector<float> flat(V, 0.25f);
        qlm::SamplingParams p;
        p.top_p = 0.9f;
        p.seed = 5;
        qlm::Sampler s(p);
        std::int32_t hi = 0;
        for (int i = 0; i < 2000; ++i) {  // P(all 2000 below 44500) = e^-32
            const auto t = s.sample(flat);
            REQUIRE(t < 45232);
            hi = std::max(hi, t);
        }
        CHECK(hi > 44500);
        p.top_k = 100;  // top-k's ties also go to the lower ids
        qlm::Sampler k(p);
        for (int i = 0; i < 2000; ++i) REQUIRE(k.sample(flat) < 90);  // 0.9 of 100
    }
    // Peaked, random: compare with a full sort.
    std::mt19937 rng(77);
    for (const float sd : {1.0f, 2.5f, 4.0f}) {
        for (const float top_p : {0.5f, 0.9f, 0.97f}) {
            for (const float temperature : {0.7f, 1.0f, 1.3f}) {
                if (kSanitized && temperature != 1.0f) continue;
                const auto logits = normal_logits(V, sd, rng());
                std::vector<std::int32_t> order(V);
                std::iota(order.begin(), order.end(), 0);
                std::sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
                    return logits[static_cast<std::size_t>(a)] > logits[static_cast<std::size_t>(b)] ||
                           (logits[static_cast<std::size_t>(a)] == logits[static_cast<std::size_t>(b)] && a < b);
                });
                const double m = logits[static_cast<std::size_t>(order[0])];
                std::vector<double> w(V);
                double z = 0.0;
                for (std::size_t i = 0; i < V; ++i) z += (w[i] = std::exp((logits[i] - m) / temperature));
                std::set<std::int32_t> nucleus;
                double cumulative = 0.0;
                for (const auto id : order) {
                    nucleus.insert(id);
                    cumulative += w[static_cast<std::size_t>(id)];
                    if (cumulative >= top_p * z) break;
                }
                qlm::SamplingParams p;
                p.top_p = top_p;
                p.temperature = temperature;
                p.seed = rng();
                qlm::Sampler s(p);
                std::map<std::int32_t, int> drawn;
                constexpr int N = kSanitized ? 500 : 1500;
                for (int i = 0; i < N; ++i) ++drawn[s.sample(logits)];
                CAPTURE(sd);
                CAPTURE(top_p);
                CAPTURE(temperature);
                CAPTURE(nucleus.size());
                for (const auto& kv : drawn) REQUIRE(nucleus.count(kv.first) == 1);
                for (const auto id : nucleus) {  // every member likely to be drawn was drawn
                    const double expected = N * w[static_cast<std::size_t>(id)] / cumulative;
                    if (expected > 15) CHECK(drawn.count(id) == 1);  // missed with probability < e^-15
                }
            }
        }
    }
}

TEST_CASE("seeds: the same seed gives the same tokens whatever else runs beside it; other seeds differ") {
    const auto logits = normal_logits(5000, 1.5f, 3);
    qlm::SamplingParams p;
    p.temperature = 0.9f;
    p.top_k = 200;
    p.top_p = 0.95f;
    p.min_p = 0.01f;
    p.repetition_penalty = 1.1f;
    p.seed = 424242;
    qlm::Sampler alone(p, ids_t{1, 2, 3});
    ids_t a;
    for (int i = 0; i < 300; ++i) {
        a.push_back(alone.sample(logits));
        alone.accept(a.back());
    }
    // Interleaved with two other requests (one with the next seed) as in a batch.
    qlm::Sampler again(p, ids_t{1, 2, 3});
    qlm::SamplingParams q = p;
    q.seed = p.seed + 1;
    qlm::Sampler other(q, ids_t{1, 2, 3});
    qlm::SamplingParams r;
    r.seed = 9;
    qlm::Sampler third(r);
    ids_t b, c;
    const auto noise = normal_logits(5000, 3.0f, 4);
    for (int i = 0; i < 300; ++i) {
        third.sample(noise);
        b.push_back(again.sample(logits));
        again.accept(b.back());
        c.push_back(other.sample(logits));
        other.accept(c.back());
    }
    CHECK(a == b);
    CHECK(a != c);
    std::size_t same = 0;
    for (std::size_t i = 0; i < a.size(); ++i) same += a[i] == c[i];
    CHECK(same < a.size() / 2);
}

TEST_CASE("logit_bias: +100 forces a token, -inf (or -1e30) bans one") {
    const auto logits = normal_logits(1000, 2.0f, 11);
    const auto best = qlm::Sampler::argmax(logits);
    qlm::SamplingParams p;
    p.temperature = 1.5f;
    p.seed = 8;
    p.logit_bias = {{777, 100.0f}};
    qlm::Sampler force(p);
    for (int i = 0; i < 2000; ++i) REQUIRE(force.sample(logits) == 777);
    p.temperature = 0.0f;
    qlm::Sampler force_greedy(p);
    CHECK(force_greedy.sample(logits) == 777);

    for (const float ban : {-kInf, -1e30f}) {
        qlm::SamplingParams b;
        b.temperature = 0.0f;
        b.logit_bias = {{best, ban}};
        qlm::Sampler greedy(b);
        std::vector<float> rest = logits;
        rest[static_cast<std::size_t>(best)] = -kInf;
        CHECK(greedy.sample(logits) == qlm::Sampler::argmax(rest));
        b.temperature = 5.0f;  // nearly flat: every other token comes up
        b.top_k = 0;
        qlm::Sampler hot(b);
        std::set<std::int32_t> seen;
        for (int i = 0; i < 20000; ++i) {
            const auto t = hot.sample(logits);
            REQUIRE(t != best);
            seen.insert(t);
        }
        CHECK(seen.size() > 900);
    }
}

TEST_CASE("min_tokens masks EOS and stop token ids until that many tokens are accepted") {
    constexpr std::int32_t eos = 9, stop_id = 4;
    std::vector<float> logits(10, 0.0f);
    logits[eos] = 20.0f;
    logits[stop_id] = 19.0f;
    logits[6] = 1.0f;
    for (const float temperature : {0.0f, 1.0f}) {
        qlm::SamplingParams p;
        p.temperature = temperature;
        p.min_tokens = 5;
        p.stop_token_ids = {stop_id};
        p.seed = 3;
        qlm::Sampler s(p, ids_t{1}, eos);
        for (int i = 0; i < 5; ++i) {
            const auto t = s.sample(logits);
            CHECK(t != eos);
            CHECK(t != stop_id);
            if (temperature == 0.0f) CHECK(t == 6);
            s.accept(t);
        }
        int eos_drawn = 0;  // unmasked from the sixth token on
        for (int i = 0; i < 100; ++i) eos_drawn += s.sample(logits) == eos;
        CHECK(eos_drawn > (temperature == 0.0f ? 99 : 50));
        qlm::Sampler unmasked_check(p, {}, eos);
        for (int i = 0; i < 5; ++i) unmasked_check.accept(6);
        CHECK(unmasked_check.processed_logits(logits)[eos] == 20.0f);
    }
    // ignore_eos: EOS is an ordinary token, so min_tokens does not mask it.
    qlm::SamplingParams p;
    p.temperature = 0.0f;
    p.min_tokens = 3;
    p.ignore_eos = true;
    qlm::Sampler s(p, {}, eos);
    CHECK(s.sample(logits) == eos);
}

TEST_CASE("IncrementalDetokenizer: the Unicode standard's example of ill-formed sequences, byte by byte") {
    // Unicode 15, section 3.9, table 3-8: 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64.
    const std::vector<unsigned char> bytes{0x61, 0xF1, 0x80, 0x80, 0xE1, 0x80, 0xC2, 0x62, 0x80, 0x63, 0x80, 0xBF, 0x64};
    const std::string expected = "a\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" "b\xEF\xBF\xBD" "c\xEF\xBF\xBD\xEF\xBF\xBD" "d";
    std::string raw(bytes.begin(), bytes.end());
    CHECK(reference_replace(raw) == expected);
    PieceDecoder dec;
    for (int b = 0; b < 256; ++b) dec.pieces.emplace_back(1, static_cast<char>(b));
    qlm::IncrementalDetokenizer d(dec);
    std::string out;
    for (const auto b : bytes) {
        const std::string delta = d.append(b);
        CHECK(is_valid_utf8(delta) == (delta.find("\xEF\xBF\xBD") == std::string::npos));
        CHECK(reference_replace(delta) == delta);
        out += delta;
    }
    out += d.finish();
    CHECK(out == expected);
    // A truncated character at the end: one U+FFFD at finish, none before.
    qlm::IncrementalDetokenizer t(dec);
    CHECK(t.append('x') == "x");
    CHECK(t.append(0xE4).empty());
    CHECK(t.append(0xB8).empty());
    CHECK(t.held_tokens() == 2);
    CHECK(t.finish() == "\xEF\xBF\xBD");
    CHECK(t.finish().empty());
}

TEST_CASE("IncrementalDetokenizer with GPT-2's tokenizer: multi-byte characters split across tokens") {
    const auto& tok = kjv_tokenizer();
    const std::vector<std::string> alphabet{"a", "b", "e", "s", "t", " ", " ", "\n", ".", "é", "ß", "ñ", "Ω", "ж", "Я",
                                            "中", "文", "字", "語", "😀", "🎉", "🦀", "ا", "ह", "\u0301", "€", "™", "𝔘"};
    std::mt19937 rng(20250101);
    std::size_t held_steps = 0, total_tokens = 0, decoded = 0;
    for (int trial = 0; trial < 300; ++trial) {
        std::string text;
        const std::size_t len = 1 + rng() % 60;
        for (std::size_t i = 0; i < len; ++i) text += alphabet[rng() % alphabet.size()];
        const ids_t ids = tok.encode(text);
        REQUIRE(tok.decode(ids) == text);
        qlm::IncrementalDetokenizer d([&](std::span<const std::int32_t> w) {
            decoded += w.size();
            return tok.decode(w);
        });
        std::string out;
        for (const auto id : ids) {
            const std::string delta = d.append(id);
            REQUIRE(is_valid_utf8(delta));
            out += delta;
            held_steps += d.held_tokens() > 0;
        }
        CHECK(d.finish().empty());
        CHECK(out == text);
        total_tokens += ids.size();
    }
    CHECK(held_steps > 100);                // characters really were split across tokens
    CHECK(decoded <= 5 * total_tokens);     // a bounded window each step, never the whole output

    // Random token ids: ill-formed bytes become U+FFFD exactly as the reference reader says.
    const std::size_t vocab = tok.vocab_size();
    for (int trial = 0; trial < 300; ++trial) {
        ids_t ids(1 + rng() % 40);
        for (auto& id : ids) id = static_cast<std::int32_t>(rng() % (vocab - 1));  // not <|endoftext|>
        if (trial % 2 == 0)  // favour byte tokens, which split characters most
            for (auto& id : ids)
                if (rng() % 2) id = tok.token_to_id(std::string(1, static_cast<char>(0x80 + rng() % 0x78)));
        qlm::IncrementalDetokenizer d(qlm::make_decoder(tok));
        std::string out;
        for (const auto id : ids) {
            const std::string delta = d.append(id);
            REQUIRE(reference_replace(delta) == delta);
            out += delta;
        }
        out += d.finish();
        CHECK(out == reference_replace(tok.decode(ids)));
    }
}

TEST_CASE("StopStringMatcher and SequenceOutput: stop strings split across tokens") {
    PieceDecoder dec{{"Hel", "lo", " wor", "ld", "!", "w", "or", "wo", "a", "bc", "d", "e", "STOP", "x", "ld!", "zbcd"}};
    auto params = [](std::vector<std::string> stop, bool include) {
        qlm::SamplingParams p;
        p.stop = std::move(stop);
        p.include_stop_str_in_output = include;
        return p;
    };
    SUBCASE("two tokens; released once, held only what may begin the stop string") {
        for (const bool include : {false, true}) {
            qlm::SequenceOutput out(params({"world"}, include), dec, -1);
            const auto r = run_output(out, {0, 1, 2, 3, 4});
            CHECK(r.deltas == std::vector<std::string>{"Hel", "lo", " ", include ? "world" : ""});
            CHECK(r.finished);
            CHECK(r.reason == qlm::FinishReason::stop);
            CHECK(r.text == (include ? "Hello world" : "Hello "));
            CHECK(out.text() == r.text);
            CHECK(out.tokens() == ids_t{0, 1, 2, 3});
        }
    }
    SUBCASE("three tokens, and text after the stop string in its last token is dropped") {
        for (const bool include : {false, true}) {
            qlm::SequenceOutput out(params({"world"}, include), dec, -1);
            const auto r = run_output(out, {0, 1, 5, 6, 14, 4});
            CHECK(r.steps == 5);
            CHECK(r.deltas[2].empty());
            CHECK(r.deltas[3].empty());
            CHECK(r.text == (include ? "Helloworld" : "Hello"));
        }
    }
    SUBCASE("a false start is released, the real match found") {
        qlm::SequenceOutput out(params({"world"}, false), dec, -1);
        const auto r = run_output(out, {7, 6, 3});  // "wo" "or" "ld": "woorld" holds no "world"
        CHECK(r.deltas == std::vector<std::string>{"", "woor", "ld"});
        CHECK(r.reason == qlm::FinishReason::length);
        CHECK(r.text == "woorld");
        qlm::SequenceOutput out2(params({"world"}, false), dec, -1);
        const auto r2 = run_output(out2, {7, 7, 6, 3});  // "wowoorld": no match either
        CHECK(r2.text == "wowoorld");
        qlm::SequenceOutput out3(params({"world"}, false), dec, -1);
        const auto r3 = run_output(out3, {7, 5, 6, 3, 4});  // "wo" "w" "or" "ld": "wo" + "world"
        CHECK(r3.deltas == std::vector<std::string>{"", "wo", "", ""});
        CHECK(r3.text == "wo");
        CHECK(r3.reason == qlm::FinishReason::stop);
    }
    SUBCASE("several stop strings: the earliest-starting wins, whatever the order of the list") {
        for (const auto& stops : {std::vector<std::string>{"cd", "bcd"}, std::vector<std::string>{"bcd", "cd"}}) {
            for (const bool include : {false, true}) {
                qlm::SequenceOutput out(params(stops, include), dec, -1);
                const auto r = run_output(out, {8, 9, 10, 11});
                CHECK(r.deltas.front() == "a");
                CHECK(r.text == (include ? "abcd" : "a"));
                CHECK(r.steps == 3);
            }
        }
        // Both complete in the same token: the later-listed one starts earlier.
        qlm::SequenceOutput out(params({"cd", "zb"}, false), dec, -1);
        CHECK(run_output(out, {8, 15, 4}).text == "a");
        qlm::SequenceOutput out2(params({"cd", "zb"}, true), dec, -1);
        CHECK(run_output(out2, {8, 15, 4}).text == "azb");
    }
    SUBCASE("held text is released when the sequence ends otherwise") {
        auto p = params({"world"}, false);
        p.max_tokens = 3;
        qlm::SequenceOutput out(p, dec, -1);
        const auto r = run_output(out, {0, 1, 2});
        CHECK(r.deltas == std::vector<std::string>{"Hel", "lo", " wor"});
        CHECK(r.reason == qlm::FinishReason::length);
        CHECK(out.flush().empty());
        qlm::SequenceOutput cut(params({"world"}, false), dec, -1);
        CHECK(cut.append(2).text_delta == " ");
        CHECK(cut.flush(qlm::FinishReason::abort) == "wor");
        CHECK(cut.finish_reason() == qlm::FinishReason::abort);
        CHECK_THROWS_AS(cut.append(3), qlm::invalid_argument);
    }
    SUBCASE("min_tokens: a stop string completed before it ends nothing") {
        for (const std::size_t min_tokens : {std::size_t{2}, std::size_t{3}, std::size_t{4}}) {
            auto p = params({"STOP"}, false);
            p.min_tokens = min_tokens;
            qlm::SequenceOutput out(p, dec, -1);
            const auto r = run_output(out, {8, 10, 12, 13, 12, 13});  // a d STOP x STOP x
            CAPTURE(min_tokens);
            CHECK(r.reason == qlm::FinishReason::stop);
            CHECK(r.text == (min_tokens <= 3 ? "ad" : "adSTOPx"));
        }
    }
}

TEST_CASE("StopStringMatcher: random texts, stops and token splits against a reference") {
    std::mt19937 rng(31337);
    const std::string letters = "abc";
    for (int trial = 0; trial < 3000; ++trial) {
        std::vector<std::string> stops(1 + rng() % 3);
        for (auto& s : stops) {
            s.resize(1 + rng() % 4);
            for (auto& ch : s) ch = letters[rng() % 3];
        }
        const bool include = rng() % 2;
        std::vector<std::string> pieces(1 + rng() % 12);
        for (auto& piece : pieces) {
            piece.resize(rng() % 4);
            for (auto& ch : piece) ch = letters[rng() % 3];
        }
        // Reference: after each piece, the earliest-starting (then shortest) stop in the text so far.
        std::string text, expected;
        bool stopped = false;
        std::vector<std::string> expected_released;  // the text released after each piece
        for (const auto& piece : pieces) {
            text += piece;
            std::size_t best = std::string::npos, len = 0;
            for (const auto& s : stops)
                if (const auto at = text.find(s); at != std::string::npos && (at < best || (at == best && s.size() < len))) {
                    best = at;
                    len = s.size();
                }
            if (best != std::string::npos) {
                expected = text.substr(0, include ? best + len : best);
                stopped = true;
                expected_released.push_back(expected);
                break;
            }
            std::size_t hold = 0;
            for (const auto& s : stops)
                for (std::size_t k = 1; k < s.size() && k <= text.size(); ++k)
                    if (text.compare(text.size() - k, k, s, 0, k) == 0) hold = std::max(hold, k);
            expected_released.push_back(text.substr(0, text.size() - hold));
        }
        if (!stopped) expected = text;
        qlm::StopStringMatcher m(stops, include);
        std::string released;
        bool got_stop = false;
        for (std::size_t i = 0; i < expected_released.size(); ++i) {
            const auto r = m.feed(pieces[i]);
            released += r.text;
            REQUIRE(released == expected_released[i]);
            got_stop = r.stopped;
        }
        if (!got_stop) released += m.flush();
        CHECK(got_stop == stopped);
        CHECK(released == expected);
    }
}

TEST_CASE("SequenceOutput: EOS, stop token ids, max_tokens, and text with GPT-2's tokenizer") {
    const auto& tok = kjv_tokenizer();
    const std::int32_t eos = tok.eos_token_id();
    const ids_t hello = tok.encode("Hello, 世界!");
    qlm::SamplingParams p;
    {
        qlm::SequenceOutput out(p, qlm::make_decoder(tok), eos);
        ids_t with_eos = hello;
        with_eos.push_back(eos);
        with_eos.push_back(hello[0]);
        const auto r = run_output(out, with_eos);
        CHECK(r.reason == qlm::FinishReason::eos);
        CHECK(r.text == "Hello, 世界!");
        CHECK(out.tokens() == hello);  // EOS is not kept
    }
    {
        p.ignore_eos = true;
        qlm::SequenceOutput out(p, qlm::make_decoder(tok), eos);
        ids_t with_eos = hello;
        with_eos.push_back(eos);
        const auto r = run_output(out, with_eos);
        CHECK(r.reason == qlm::FinishReason::length);
        CHECK(r.text == "Hello, 世界!<|endoftext|>");
        p.ignore_eos = false;
    }
    // min_tokens: an EOS sampled before it (the Sampler would mask it) is an ordinary token.
    {
        p.min_tokens = 2;
        qlm::SequenceOutput out(p, qlm::make_decoder(tok), eos);
        const auto r = run_output(out, {hello[0], eos, eos});
        CHECK(r.reason == qlm::FinishReason::eos);
        CHECK(out.tokens() == ids_t{hello[0], eos});
        p.min_tokens = 0;
    }
    // A stop token id: kept only with include_stop_str_in_output.
    const std::int32_t bang = tok.encode("!")[0];
    for (const bool include : {false, true}) {
        p.stop_token_ids = {bang};
        p.include_stop_str_in_output = include;
        qlm::SequenceOutput out(p, qlm::make_decoder(tok), eos);
        const auto r = run_output(out, hello);
        CHECK(r.reason == qlm::FinishReason::stop);
        CHECK(r.text == (include ? "Hello, 世界!" : "Hello, 世界"));
        CHECK(out.tokens().size() == (include ? hello.size() : hello.size() - 1));
    }
    p.stop_token_ids.clear();
    p.include_stop_str_in_output = false;
    // A stop string made of a character split across byte tokens.
    {
        const ids_t ids = tok.encode("abc中文def");
        REQUIRE(ids.size() > 4);
        p.stop = {"文"};
        qlm::SequenceOutput out(p, qlm::make_decoder(tok), eos);
        const auto r = run_output(out, ids);
        CHECK(r.reason == qlm::FinishReason::stop);
        CHECK(r.text == "abc中");
        p.stop.clear();
    }
    // max_tokens in the middle of a character: the held bytes end as U+FFFD.
    {
        const ids_t ids = tok.encode("x🦀");
        REQUIRE(ids.size() >= 3);
        p.max_tokens = 2;
        qlm::SequenceOutput out(p, qlm::make_decoder(tok), eos);
        const auto r = run_output(out, ids);
        CHECK(r.reason == qlm::FinishReason::length);
        CHECK(r.text == "x\xEF\xBF\xBD");
        CHECK(out.text() == r.text);
        p.max_tokens = 64;
    }
    // Without a decoder: ids only, and stop strings refused.
    {
        qlm::SequenceOutput ids_only(p, {}, eos);
        CHECK(ids_only.append(5).text_delta.empty());
        CHECK(ids_only.append(eos).reason == qlm::FinishReason::eos);
        p.stop = {"x"};
        CHECK_THROWS_WITH_AS(qlm::SequenceOutput(p, {}, eos), doctest::Contains("stop strings need a tokenizer"), qlm::invalid_argument);
    }
}

TEST_CASE("generate: on_text streams the released text; penalties, logit_bias, stop ids and min_tokens reach the loop") {
    const auto model = qlm::load_gpt2(kRoot / "models/gpt2-tiny-kjv");
    const auto& tok = kjv_tokenizer();
    qlm::ThreadPool pool(2);
    qlm::GenerateOptions o;
    o.sampling.temperature = 0.8f;
    o.sampling.top_k = 40;
    o.sampling.seed = 5;
    o.sampling.max_tokens = 48;
    o.sampling.ignore_eos = true;
    std::string streamed;
    ids_t tokens;
    o.on_text = [&](std::string_view d) {
        CHECK(!d.empty());
        streamed += d;
    };
    o.on_token = [&](std::int32_t t) { tokens.push_back(t); };
    const auto a = qlm::generate(pool, model, tok, "And God said", o);
    CHECK(streamed == a.text);
    CHECK(tokens == a.tokens);
    CHECK(a.text == reference_replace(tok.decode(a.tokens)));
    CHECK(a.tokens.size() == 48);

    // A strong repetition penalty changes greedy output and repeats fewer tokens.
    o.on_text = nullptr;
    o.on_token = nullptr;
    o.sampling.temperature = 0.0f;
    const auto greedy = qlm::generate(pool, model, tok, "And God said", o);
    o.sampling.repetition_penalty = 3.0f;
    const auto penalised = qlm::generate(pool, model, tok, "And God said", o);
    const auto distinct = [](const ids_t& t) { return std::set<std::int32_t>(t.begin(), t.end()).size(); };
    CHECK(greedy.tokens != penalised.tokens);
    CHECK(distinct(penalised.tokens) > distinct(greedy.tokens));
    o.sampling.repetition_penalty = 1.0f;

    // logit_bias forces a token; with it as a stop id the output ends there, after min_tokens.
    const std::int32_t amen = tok.encode(" Amen")[0];
    o.sampling.logit_bias = {{amen, 100.0f}};
    const auto forced = qlm::generate(pool, model, tok, "And God said", o);
    CHECK(forced.tokens == ids_t(48, amen));
    o.sampling.stop_token_ids = {amen};
    o.sampling.min_tokens = 5;
    const auto stopped = qlm::generate(pool, model, tok, "And God said", o);
    CHECK(stopped.finish_reason == qlm::FinishReason::stop);
    CHECK(stopped.tokens.size() == 5);
    CHECK(std::find(stopped.tokens.begin(), stopped.tokens.end(), amen) == stopped.tokens.end());
    o.sampling.include_stop_str_in_output = true;
    const auto kept = qlm::generate(pool, model, tok, "And God said", o);
    CHECK(kept.tokens.size() == 6);
    CHECK(kept.tokens.back() == amen);
    CHECK(kept.text == stopped.text + tok.decode(ids_t{amen}));
}
