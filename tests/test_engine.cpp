// Scheduler<Policy> on its own (fake steps: no model, the test advances the KV sequences), then
// Engine<Model, Scheduler> on the bundled model against qlm::generate, token for token.
#include <doctest/doctest.h>

#include <qlm/engine/engine.hpp>
#include <qlm/engine/generate.hpp>
#include <qlm/model/load_gpt2.hpp>
#include <qlm/model/random_weights.hpp>
#include <qlm/sched/scheduler.hpp>
#include <qlm/tokenizer/gpt2_tokenizer.hpp>

#include "test_util.hpp"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------
// Scheduler with fake steps

constexpr std::size_t kPage = 4;

qlm::KVCacheConfig tiny_kv(std::size_t blocks) {
    return {1, 4, blocks * qlm::KVBlockLayout<kPage>{1, 4}.bytes()};
}

std::vector<std::int32_t> tokens_from(std::int32_t first, std::size_t n) {
    std::vector<std::int32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = first + static_cast<std::int32_t>(i);
    return t;
}

// Drives a scheduler as the engine would, with a fake model: every chunk's sequence advances by its
// tokens; a sampled token is 1000 + its position; a request ends after max_tokens samples.
template <class Policy>
struct FakeEngine {
    qlm::KVCache<kPage> cache;
    qlm::Scheduler<Policy, kPage> sched;
    std::map<qlm::RequestId, std::size_t> max_tokens, generated;
    std::set<qlm::RequestId> finished;
    struct Ran {
        qlm::RequestId id;
        std::size_t start, n;
        bool logits;
    };

    FakeEngine(std::size_t blocks, qlm::SchedulerConfig config) : cache(tiny_kv(blocks)), sched(cache, config) {}

    void add(qlm::RequestId id, std::vector<std::int32_t> prompt, std::size_t max_new, int priority = 0,
             std::vector<qlm::RequestId> parallel = {}) {
        sched.add(id, std::move(prompt), max_new, priority, parallel);
        max_tokens[id] = max_new;
        for (auto f : parallel) max_tokens[f] = max_new;
    }
    void cancel(qlm::RequestId id) {
        if (sched.remove(id)) finished.insert(id);
    }

    std::vector<Ran> step() {
        std::vector<Ran> ran;
        const auto& batch = sched.schedule();
        for (const auto& c : batch) {
            // The fake forward pass writes nothing, but checks that the blocks were reserved.
            REQUIRE(c.kv->block_table().size() * kPage >= c.start + c.tokens.size());
            REQUIRE(c.kv->length() == c.start);
            c.kv->set_length(c.start + c.tokens.size());
            ran.push_back({c.id, c.start, c.tokens.size(), c.needs_logits});
        }
        if (batch.empty()) return ran;
        sched.finish_step();
        for (const auto& c : batch) {
            if (!c.needs_logits) continue;
            std::vector<qlm::RequestId> ids{c.id};
            ids.insert(ids.end(), c.forked.begin(), c.forked.end());
            for (auto id : ids) {
                const std::size_t pos = sched.tokens(id).size();
                if (++generated[id] >= max_tokens[id]) {
                    sched.remove(id);
                    finished.insert(id);
                } else {
                    sched.append_token(id, static_cast<std::int32_t>(1000 + pos));
                }
            }
        }
        sched.check_invariants();
        return ran;
    }
    void run(std::size_t max_steps = 10000) {
        for (std::size_t i = 0; i < max_steps && sched.has_unfinished(); ++i) REQUIRE(!step().empty());
        REQUIRE(!sched.has_unfinished());
    }
};

}  // namespace

TEST_CASE("scheduler: decodes go first, a long prompt is chunked into what budget is left") {
    FakeEngine<qlm::ContinuousBatching> e(64, {.max_running = 8, .max_tokens_per_step = 8, .max_context = 128});
    e.add(1, tokens_from(1, 3), 40);
    e.add(2, tokens_from(1, 2), 40);
    auto ran = e.step();  // both prompts in one step
    REQUIRE(ran.size() == 2);
    CHECK(ran[0].n == 3);
    CHECK(ran[1].n == 2);
    CHECK(ran[0].logits);

    e.add(3, tokens_from(100, 30), 5);
    std::size_t prefilled = 0, steps = 0;
    while (prefilled < 30) {
        ran = e.step();
        ++steps;
        // Every step: the two decodes first, then 6 prompt tokens (the last chunk: what is left).
        REQUIRE(ran.size() == 3);
        CHECK(ran[0].id == 1);
        CHECK(ran[0].n == 1);
        CHECK(ran[1].id == 2);
        CHECK(ran[1].n == 1);
        CHECK(ran[2].id == 3);
        CHECK(ran[2].start == prefilled);
        CHECK(ran[2].n == std::min<std::size_t>(6, 30 - prefilled));
        CHECK(ran[2].logits == (prefilled + ran[2].n == 30));
        prefilled += ran[2].n;
    }
    CHECK(steps == 5);
    CHECK(e.sched.stats().prompt_tokens_computed == 35);
    e.run();
    CHECK(e.cache.free_blocks() == e.cache.total_blocks());
}

TEST_CASE("scheduler: sequence slots and the token budget hold requests back in arrival order") {
    FakeEngine<qlm::ContinuousBatching> e(64, {.max_running = 2, .max_tokens_per_step = 64, .max_context = 128});
    e.add(1, tokens_from(1, 5), 3);
    e.add(2, tokens_from(1, 5), 6);
    e.add(3, tokens_from(1, 5), 2);
    e.step();
    CHECK(e.sched.running_ids() == std::vector<qlm::RequestId>{1, 2});
    CHECK(e.sched.waiting_count() == 1);
    e.step();
    e.step();  // request 1 makes its 3rd token and ends; 3 is admitted at the next step
    CHECK(e.finished.count(1));
    e.step();
    CHECK(e.sched.running_ids() == std::vector<qlm::RequestId>{2, 3});
    e.run();
}

TEST_CASE("scheduler: admission skips the prompt blocks found in the prefix cache") {
    for (const bool caching : {true, false}) {
        CAPTURE(caching);
        FakeEngine<qlm::ContinuousBatching> e(64, {.max_running = 4, .max_tokens_per_step = 64, .max_context = 128, .prefix_caching = caching});
        e.add(1, tokens_from(1, 10), 2);
        e.run();
        auto prompt = tokens_from(1, 9);  // shares 2 full blocks (8 tokens) with request 1
        prompt.push_back(77);
        e.add(2, prompt, 2);
        const auto ran = e.step();
        REQUIRE(ran.size() == 1);
        CHECK(ran[0].start == (caching ? 8u : 0u));
        CHECK(e.sched.prefix_skipped(2) == (caching ? 8u : 0u));
        CHECK(e.sched.stats().prefix_skipped_tokens == (caching ? 8u : 0u));
        e.run();
    }
}

TEST_CASE("scheduler: out of blocks, the youngest running sequence is preempted and recomputed with its tokens") {
    // 6 blocks of 4 positions; two requests of 4-token prompts growing to 4 + 12 - 1 positions (4 blocks each).
    FakeEngine<qlm::ContinuousBatching> e(6, {.max_running = 4, .max_tokens_per_step = 64, .max_context = 64, .prefix_caching = false});
    e.add(1, tokens_from(1, 4), 12);
    e.add(2, tokens_from(50, 4), 12);
    std::size_t steps = 0;
    while (e.sched.stats().preemptions == 0) {
        e.step();
        REQUIRE(++steps < 20);
    }
    // Request 2 (the younger) gave its blocks back and waits, first in line, with all its tokens.
    CHECK(e.sched.running_ids() == std::vector<qlm::RequestId>{1});
    CHECK_FALSE(e.sched.is_running(2));
    CHECK(e.sched.preemptions(2) == 1);
    CHECK(e.sched.computed(2) == 0);
    const auto t2 = e.sched.tokens(2);
    CHECK(t2.size() > 4);
    CHECK(std::equal(t2.begin(), t2.begin() + 4, tokens_from(50, 4).begin()));
    e.add(3, tokens_from(90, 4), 2);  // arrives later: waits behind request 2
    e.run();
    CHECK(e.finished.size() == 3);
    CHECK(e.sched.stats().decode_tokens_computed > 2 * 11 + 1);  // recomputation counted
    CHECK(e.cache.free_blocks() == e.cache.total_blocks());
}

TEST_CASE("scheduler: requests that can never run are refused at admission with capacity_error") {
    qlm::KVCache<kPage> cache(tiny_kv(4));
    qlm::Scheduler<qlm::ContinuousBatching, kPage> s(cache, {.max_running = 2, .max_tokens_per_step = 64, .max_context = 32});
    CHECK_THROWS_WITH_AS(s.add(1, tokens_from(1, 20), 13), doctest::Contains("exceeds the model's context of 32"), qlm::capacity_error);
    CHECK_THROWS_WITH_AS(s.add(1, tokens_from(1, 10), 8), doctest::Contains("the whole pool holds 4"), qlm::capacity_error);
    const qlm::RequestId more[] = {2, 3};
    CHECK_THROWS_AS(s.add(1, tokens_from(1, 4), 2, 0, more), qlm::capacity_error);
    CHECK_THROWS_AS(s.add(1, {}, 2), qlm::invalid_argument);
    CHECK(!s.has_unfinished());
    s.add(1, tokens_from(1, 10), 7);  // 16 positions: exactly the pool
    CHECK_THROWS_AS(s.add(1, tokens_from(1, 2), 2), qlm::invalid_argument);  // id in use
    CHECK(s.waiting_count() == 1);
}

TEST_CASE("scheduler: static batching admits a batch only when nothing runs") {
    FakeEngine<qlm::StaticBatching> e(64, {.max_running = 4, .max_tokens_per_step = 4, .max_context = 128});
    e.add(1, tokens_from(1, 6), 3);
    e.add(2, tokens_from(1, 3), 5);
    auto ran = e.step();  // both admitted; the budget of 4 covers only part of the prefill
    CHECK(e.sched.running_count() == 2);
    e.add(3, tokens_from(1, 2), 2);
    while (e.sched.running_count() > 0) {
        CHECK_FALSE(e.sched.is_running(3));
        e.step();
    }
    CHECK(e.finished == std::set<qlm::RequestId>{1, 2});
    e.step();
    CHECK(e.sched.is_running(3));
    e.run();
}

TEST_CASE("scheduler: priority runs lower values first and preempts lower priorities for blocks") {
    FakeEngine<qlm::PriorityScheduling> e(6, {.max_running = 4, .max_tokens_per_step = 64, .max_context = 64, .prefix_caching = false});
    e.add(1, tokens_from(1, 8), 12, 5);  // grows to 5 blocks
    for (int i = 0; i < 6; ++i) e.step();  // 13 positions: 4 blocks
    CHECK(e.cache.free_blocks() == 2);
    e.add(2, tokens_from(20, 8), 4, 1);  // its prefill and a growth block for each running sequence: 3 blocks; 2 outranks 1
    e.add(3, tokens_from(40, 2), 2, 1);  // same priority as 2: after it
    e.step();
    CHECK(e.sched.preemptions(1) == 1);
    CHECK(e.sched.running_ids() == std::vector<qlm::RequestId>{2, 3});
    e.run();

    // Equal priorities never preempt each other: first come, first served.
    FakeEngine<qlm::PriorityScheduling> f(6, {.max_running = 1, .max_tokens_per_step = 64, .max_context = 64});
    f.add(1, tokens_from(1, 4), 3, 2);
    f.add(2, tokens_from(1, 4), 3, 2);
    f.add(3, tokens_from(1, 4), 3, 0);
    f.step();  // 3 outranks everyone: it takes the single slot first
    CHECK(f.sched.running_ids() == std::vector<qlm::RequestId>{3});
    f.run();
    CHECK(f.sched.stats().preemptions == 0);
}

TEST_CASE("scheduler: parallel samples fork after the prefill; cancelling frees blocks wherever a request is") {
    FakeEngine<qlm::ContinuousBatching> e(16, {.max_running = 3, .max_tokens_per_step = 64, .max_context = 64, .prefix_caching = false});
    e.add(1, tokens_from(1, 6), 4, 0, {2, 3});
    CHECK(e.sched.waiting_count() == 3);
    auto ran = e.step();
    REQUIRE(ran.size() == 1);  // one prefill for the three samples
    CHECK(e.sched.running_ids() == std::vector<qlm::RequestId>{1, 2, 3});
    CHECK(e.cache.stats().tokens_stored == 6);  // shared blocks
    ran = e.step();
    CHECK(ran.size() == 3);
    CHECK(e.cache.stats().cow_copies == 2);  // the shared partial block, copied by two of the three
    e.cancel(2);
    e.add(4, tokens_from(1, 5), 10);
    e.add(5, tokens_from(1, 5), 10);  // no slot: waits
    e.step();
    CHECK(e.sched.waiting_count() == 1);
    e.cancel(5);  // waiting
    e.cancel(1);  // running
    e.sched.check_invariants();
    e.cancel(3);
    e.cancel(4);
    CHECK(!e.sched.has_unfinished());
    CHECK(e.cache.free_blocks() == e.cache.total_blocks());
    CHECK(e.cache.stats().sequences == 0);

    // A leader cancelled before its prefill: its first parallel sample takes its place.
    e.add(10, tokens_from(1, 6), 3, 0, {11, 12});
    e.cancel(10);
    e.sched.check_invariants();
    CHECK(e.sched.waiting_count() == 2);
    e.run();
    CHECK(e.generated[11] == 3);
    CHECK(e.generated[12] == 3);
}

TEST_CASE_TEMPLATE("scheduler: random adds, cancels and steps keep the invariants and finish everything", Policy, qlm::ContinuousBatching,
                   qlm::StaticBatching, qlm::PriorityScheduling) {
    std::mt19937 rng(11);
    auto pick = [&](std::size_t lo, std::size_t hi) { return std::uniform_int_distribution<std::size_t>(lo, hi)(rng); };
    FakeEngine<Policy> e(12, {.max_running = 5, .max_tokens_per_step = 9, .max_context = 40});
    qlm::RequestId next = 1;
    std::vector<qlm::RequestId> ids;
    for (int op = 0; op < 2000; ++op) {
        const std::size_t what = pick(0, 9);
        if (what < 3) {
            // Prompts from a few shared prefixes, so that the prefix cache hits.
            auto prompt = tokens_from(static_cast<std::int32_t>(pick(0, 2) * 100), pick(1, 12));
            for (std::size_t i = pick(0, 8); i > 0; --i) prompt.push_back(static_cast<std::int32_t>(pick(0, 500)));
            const std::size_t max_new = pick(1, 40 - prompt.size());
            std::vector<qlm::RequestId> parallel;
            const qlm::RequestId id = next++;
            if (pick(0, 5) == 0) parallel = {next++, next++};
            e.add(id, prompt, max_new, static_cast<int>(pick(0, 3)), parallel);
            ids.push_back(id);
            ids.insert(ids.end(), parallel.begin(), parallel.end());
        } else if (what < 4 && !ids.empty()) {
            e.cancel(ids[pick(0, ids.size() - 1)]);
        } else {
            e.step();
        }
        e.sched.check_invariants();
    }
    e.run();
    CHECK(e.finished.size() == ids.size());
    CHECK(e.cache.free_blocks() == e.cache.total_blocks());
    CHECK(e.sched.stats().preemptions > 0);
    CHECK(e.sched.stats().prefix_skipped_tokens > 0);
}

// ---------------------------------------------------------------------------------------------
// Engine on the bundled model

namespace {

using Model = qlm::GPT2Model<qlm::DenseLinear>;

const Model& bundled_model() {
    static const Model model = qlm::load_gpt2(std::filesystem::path(QLM_SOURCE_DIR) / "models/gpt2-tiny-kjv");
    return model;
}

qlm::ThreadPool& pool() {
    static qlm::ThreadPool p(2);
    return p;
}

// 64 KiB a block of 16 positions for the tiny model (4 layers, n_embd 128).
std::size_t kv_bytes_for_blocks(std::size_t blocks) {
    const auto& c = bundled_model().config();
    return blocks * qlm::KVBlockLayout<16>{c.n_layer, c.n_embd}.bytes();
}

qlm::RequestOptions with_priority(int priority) {
    qlm::RequestOptions o;
    o.priority = priority;
    return o;
}

struct Job {
    std::vector<std::int32_t> prompt;
    qlm::SamplingParams params;
    int priority = 0;
};

// Eight prompts of 3 to 70 tokens, five of them sharing a 36-token prefix, 4 to 24 new tokens each.
std::vector<Job> mixed_jobs() {
    std::vector<std::int32_t> shared;
    for (std::size_t i = 0; i < 36; ++i) shared.push_back(static_cast<std::int32_t>((i * 7919 + 13) % 50000));
    const std::size_t own[8] = {3, 17, 0, 34, 9, 1, 22, 5};
    const std::size_t max_new[8] = {8, 24, 4, 14, 20, 11, 6, 16};
    std::vector<Job> jobs;
    for (std::size_t k = 0; k < 8; ++k) {
        Job j;
        if (k % 3 != 1) j.prompt = std::vector<std::int32_t>(shared.begin(), shared.begin() + static_cast<std::ptrdiff_t>(k == 2 ? 20 : 36));
        for (std::size_t i = 0; i < own[k] + (k == 5 ? 2 : 0); ++i)
            j.prompt.push_back(static_cast<std::int32_t>((i * 104729 + 977 * k + 5) % 50257));
        j.params.temperature = 0.0f;
        j.params.max_tokens = max_new[k];
        j.priority = static_cast<int>(k % 3);
        jobs.push_back(j);
    }
    return jobs;
}

// generate() itself runs on an Engine; its recompute mode (no KV cache, its own loop) is the
// independent reference.
qlm::GenerationResult reference(const Job& j) {
    qlm::GenerateOptions o;
    o.sampling = j.params;
    o.cache = qlm::CacheMode::recompute;
    return qlm::generate(pool(), bundled_model(), std::span<const std::int32_t>(j.prompt), o);
}

const std::vector<qlm::GenerationResult>& mixed_references() {
    static const std::vector<qlm::GenerationResult> refs = [] {
        std::vector<qlm::GenerationResult> r;
        for (const Job& j : mixed_jobs()) r.push_back(reference(j));
        return r;
    }();
    return refs;
}

qlm::RequestFinishReason as_request_reason(qlm::FinishReason r) { return qlm::to_request_reason(r); }

template <class Sched>
qlm::EngineStats run_mixed(qlm::EngineConfig config) {
    qlm::Engine<Model, Sched> engine(bundled_model(), pool(), config);
    const auto jobs = mixed_jobs();
    const auto& refs = mixed_references();
    std::vector<qlm::RequestId> ids;
    // The first request runs a step alone, so that the others can find its prompt's blocks.
    ids.push_back(engine.add_request(jobs[0].prompt, jobs[0].params, with_priority(jobs[0].priority)));
    REQUIRE(engine.step());
    for (std::size_t k = 1; k < jobs.size(); ++k) ids.push_back(engine.add_request(jobs[k].prompt, jobs[k].params, with_priority(jobs[k].priority)));
    std::size_t steps = 0;
    while (engine.step()) {
        engine.check_invariants();
        REQUIRE(++steps < 2000);
    }
    const auto outputs = engine.poll();
    REQUIRE(outputs.size() == jobs.size());
    for (std::size_t k = 0; k < jobs.size(); ++k) {
        CAPTURE(k);
        REQUIRE(outputs[k].id == ids[k]);
        CHECK(outputs[k].prompt_tokens == jobs[k].prompt);
        CHECK(outputs[k].tokens == refs[k].tokens);
        CHECK(outputs[k].finish_reason == as_request_reason(refs[k].finish_reason));
        CHECK(outputs[k].ttft > 0.0);
        CHECK(outputs[k].timings.token_seconds.size() == outputs[k].tokens.size());
    }
    const auto stats = engine.stats();
    CHECK(!engine.has_unfinished());
    CHECK(stats.kv_blocks_used == 0);
    CHECK(stats.kv_tokens_stored == 0);
    CHECK(stats.running == 0);
    CHECK(stats.waiting == 0);
    CHECK(stats.requests_finished == jobs.size());
    std::size_t generated = 0;
    for (const auto& o : outputs) generated += o.tokens.size();
    CHECK(stats.generated_tokens == generated);
    CHECK(stats.kv_peak_usage > 0.0);
    CHECK(stats.kv_peak_usage <= 1.0);
    CHECK(stats.busy_seconds > 0.0);
    return stats;
}

qlm::EngineConfig engine_config(std::size_t blocks, std::size_t budget, bool prefix_caching, std::size_t max_running = 16) {
    qlm::EngineConfig c;
    c.kv_cache_bytes = kv_bytes_for_blocks(blocks);
    c.scheduler.max_running = max_running;
    c.scheduler.max_tokens_per_step = budget;
    c.scheduler.prefix_caching = prefix_caching;
    return c;
}

}  // namespace

TEST_CASE("engine: one greedy request gives qlm::generate's tokens") {
    Job j = mixed_jobs()[3];
    j.params.max_tokens = 30;
    const auto ref = reference(j);
    qlm::Engine<Model> engine(bundled_model(), pool(), engine_config(64, 512, true));
    std::vector<std::int32_t> streamed;
    qlm::RequestOptions options;
    options.on_token = [&](qlm::RequestId r, std::int32_t t) {
        CHECK(r == 1);
        streamed.push_back(t);
    };
    const auto id = engine.add_request(j.prompt, j.params, options);
    const auto outputs = engine.run_until_done();
    REQUIRE(outputs.size() == 1);
    CHECK(outputs[0].id == id);
    CHECK(outputs[0].tokens == ref.tokens);
    CHECK(streamed == ref.tokens);
    CHECK(engine.stats().steps == ref.tokens.size() + (ref.finish_reason == qlm::FinishReason::eos ? 1 : 0));
}

TEST_CASE("engine: eight mixed greedy requests each get the tokens they get alone") {
    SUBCASE("continuous batching, prefix caching on") {
        const auto s = run_mixed<qlm::Scheduler<qlm::ContinuousBatching>>(engine_config(256, 512, true));
        CHECK(s.prefix_skipped_tokens > 0);
        CHECK(s.preemptions == 0);
        CHECK(s.steps < 40);  // batched: far fewer steps than the 103 tokens generated
    }
    SUBCASE("continuous batching, prefix caching off") {
        const auto s = run_mixed<qlm::Scheduler<qlm::ContinuousBatching>>(engine_config(256, 512, false));
        CHECK(s.prefix_skipped_tokens == 0);
        std::size_t prompts = 0;
        for (const auto& j : mixed_jobs()) prompts += j.prompt.size();
        CHECK(s.prompt_tokens_computed == prompts);
    }
    SUBCASE("preemption forced by a pool of 7 blocks") {
        const auto s = run_mixed<qlm::Scheduler<qlm::ContinuousBatching>>(engine_config(7, 512, true));
        CHECK(s.preemptions > 0);
    }
    SUBCASE("preemption without prefix caching") {
        const auto s = run_mixed<qlm::Scheduler<qlm::ContinuousBatching>>(engine_config(7, 512, false));
        CHECK(s.preemptions > 0);
    }
    SUBCASE("chunked prefill with a budget of 5 tokens a step") {
        const auto s = run_mixed<qlm::Scheduler<qlm::ContinuousBatching>>(engine_config(256, 5, false));
        CHECK(s.steps > 40);
    }
    SUBCASE("static batching, 3 at a time") {
        run_mixed<qlm::Scheduler<qlm::StaticBatching>>(engine_config(256, 64, true, 3));
    }
    SUBCASE("priority scheduling with a small pool") {
        const auto s = run_mixed<qlm::Scheduler<qlm::PriorityScheduling>>(engine_config(9, 48, true));
        CHECK(s.preemptions > 0);
    }
}

TEST_CASE("engine: parallel samples share the prompt's blocks and equal separate requests seeded seed + i") {
    Job j = mixed_jobs()[4];
    j.params.temperature = 0.9f;
    j.params.top_k = 40;
    j.params.seed = 123;
    j.params.max_tokens = 12;
    j.params.ignore_eos = true;
    qlm::Engine<Model> engine(bundled_model(), pool(), engine_config(64, 512, false));
    const auto ids = engine.add_parallel_requests(j.prompt, j.params, 3);
    REQUIRE(ids.size() == 3);
    const auto together = engine.run_until_done();
    const auto stats = engine.stats();
    CHECK(stats.prompt_tokens_computed == j.prompt.size());  // the prompt ran once
    CHECK(stats.kv_cow_copies >= 1);

    std::set<std::vector<std::int32_t>> distinct;
    for (std::size_t i = 0; i < 3; ++i) {
        qlm::Engine<Model> alone(bundled_model(), pool(), engine_config(64, 512, false));
        auto p = j.params;
        p.seed += i;
        alone.add_request(j.prompt, p);
        const auto out = alone.run_until_done();
        REQUIRE(out.size() == 1);
        CHECK(together[i].id == ids[i]);
        CHECK(together[i].tokens == out[0].tokens);
        CHECK(together[i].tokens.size() == 12);
        distinct.insert(together[i].tokens);
    }
    CHECK(distinct.size() > 1);
}

TEST_CASE("engine: cancellation keeps the tokens so far, ends the request and frees its blocks") {
    const auto jobs = mixed_jobs();
    const auto& refs = mixed_references();
    qlm::Engine<Model> engine(bundled_model(), pool(), engine_config(64, 512, true, 2));
    const auto a = engine.add_request(jobs[1].prompt, jobs[1].params);
    const auto b = engine.add_request(jobs[3].prompt, jobs[3].params);
    const auto c = engine.add_request(jobs[4].prompt, jobs[4].params);  // waits: 2 sequences at most
    for (int i = 0; i < 5; ++i) engine.step();
    CHECK(engine.stats().running == 2);
    CHECK(engine.stats().waiting == 1);
    engine.cancel(a);  // running
    engine.cancel(c);  // waiting
    engine.cancel(9999);  // unknown: ignored
    engine.step();
    const auto out_a = engine.wait(a);
    CHECK(out_a.finish_reason == qlm::RequestFinishReason::cancelled);
    CHECK(out_a.tokens.size() == 5);
    CHECK(std::equal(out_a.tokens.begin(), out_a.tokens.end(), refs[1].tokens.begin()));
    const auto out_c = engine.wait(c);
    CHECK(out_c.finish_reason == qlm::RequestFinishReason::cancelled);
    CHECK(out_c.tokens.empty());
    engine.cancel(b);
    engine.step();
    CHECK(engine.wait(b).finish_reason == qlm::RequestFinishReason::cancelled);
    CHECK(!engine.has_unfinished());
    const auto kv = engine.kv_cache().stats();
    CHECK(kv.sequences == 0);
    CHECK(kv.tokens_stored == 0);
    CHECK(kv.blocks_free == kv.blocks_total);
    CHECK(engine.stats().requests_cancelled == 3);
    CHECK_THROWS_AS(engine.wait(b), qlm::invalid_argument);  // handed over already
}

TEST_CASE("engine: requests that cannot run are refused at add_request, nothing is queued") {
    qlm::Engine<Model> engine(bundled_model(), pool(), engine_config(4, 512, true));  // 64 positions
    qlm::SamplingParams p;
    p.max_tokens = 10;
    CHECK_THROWS_WITH_AS(engine.add_request(std::vector<std::int32_t>(250, 1), p), doctest::Contains("context of 256"),
                         qlm::capacity_error);
    CHECK_THROWS_WITH_AS(engine.add_request(std::vector<std::int32_t>(60, 1), p), doctest::Contains("whole pool holds 4"),
                         qlm::capacity_error);
    CHECK_THROWS_AS(engine.add_parallel_requests(std::vector<std::int32_t>(6, 1), p, 17), qlm::capacity_error);
    CHECK_THROWS_AS(engine.add_request({}, p), qlm::invalid_argument);
    CHECK_THROWS_AS(engine.add_request({50257}, p), qlm::invalid_argument);
    p.stop = {"\n"};
    CHECK_THROWS_AS(engine.add_request({1, 2}, p), qlm::invalid_argument);
    CHECK(!engine.has_unfinished());
    CHECK_FALSE(engine.step());

    // max_tokens 0 ends at once; a stop token id ends the request before it.
    p.stop.clear();
    p.max_tokens = 0;
    const auto none = engine.add_request({1, 2, 3}, p);
    Job j = mixed_jobs()[0];
    const auto ref = reference(j);
    REQUIRE(ref.tokens.size() > 4);
    j.params.stop_token_ids = {ref.tokens[3]};
    const auto stop = engine.add_request(j.prompt, j.params);
    const auto out = engine.run_until_done();
    REQUIRE(out.size() == 2);
    CHECK(out[0].id == none);
    CHECK(out[0].tokens.empty());
    CHECK(out[0].finish_reason == qlm::RequestFinishReason::length);
    CHECK(out[1].id == stop);
    CHECK(out[1].finish_reason == qlm::RequestFinishReason::stop);
    const auto first = std::find(ref.tokens.begin(), ref.tokens.end(), ref.tokens[3]);
    CHECK(out[1].tokens == std::vector<std::int32_t>(ref.tokens.begin(), first));
}

TEST_CASE("engine: with a decoder, text and stop strings are qlm::generate's, batched") {
    const auto tokenizer = qlm::GPT2Tokenizer::from_directory(std::filesystem::path(QLM_SOURCE_DIR) / "models/gpt2-tiny-kjv");
    auto config = engine_config(64, 512, true);
    config.decoder = qlm::make_decoder(tokenizer);
    qlm::Engine<Model> engine(bundled_model(), pool(), config);
    std::vector<qlm::GenerationResult> refs;
    std::vector<qlm::RequestId> ids;
    for (const std::string prompt : {"And the LORD said unto Moses", "In the beginning", "Blessed are"}) {
        qlm::GenerateOptions o;
        o.sampling.temperature = 0.0f;
        o.sampling.max_tokens = 24;
        o.cache = qlm::CacheMode::recompute;
        const auto plain = qlm::generate(pool(), bundled_model(), tokenizer, prompt, o);
        REQUIRE(plain.text.size() > 12);
        o.sampling.stop = {plain.text.substr(plain.text.size() / 2, 3)};  // ends the output about half way
        refs.push_back(qlm::generate(pool(), bundled_model(), tokenizer, prompt, o));
        ids.push_back(engine.add_request(tokenizer.encode(prompt), o.sampling));
    }
    const auto outputs = engine.run_until_done();
    REQUIRE(outputs.size() == refs.size());
    for (std::size_t i = 0; i < refs.size(); ++i) {
        CAPTURE(i);
        CHECK(outputs[i].id == ids[i]);
        CHECK(outputs[i].text == refs[i].text);
        CHECK(outputs[i].tokens == refs[i].tokens);
        CHECK(outputs[i].finish_reason == qlm::RequestFinishReason::stop);
        CHECK(refs[i].finish_reason == qlm::FinishReason::stop);
    }
}

TEST_CASE("engine: random adds, cancels and steps on a small pool keep the invariants; greedy outputs match generate") {
    std::mt19937 rng(5);
    auto pick = [&](std::size_t lo, std::size_t hi) { return std::uniform_int_distribution<std::size_t>(lo, hi)(rng); };
    qlm::Engine<Model, qlm::Scheduler<qlm::PriorityScheduling>> engine(bundled_model(), pool(), engine_config(8, 24, true, 6));
    std::map<qlm::RequestId, Job> jobs;
    std::set<qlm::RequestId> cancelled;
    for (int op = 0; op < 200; ++op) {
        const std::size_t what = pick(0, 9);
        if (what < 3) {
            Job j;
            const std::size_t shared = pick(0, 2) * 16;
            for (std::size_t i = 0; i < shared; ++i) j.prompt.push_back(static_cast<std::int32_t>(i * 31 + 7));
            for (std::size_t i = pick(1, 12); i > 0; --i) j.prompt.push_back(static_cast<std::int32_t>(pick(0, 50256)));
            j.params.temperature = 0.0f;
            j.params.max_tokens = pick(1, 6);
            jobs[engine.add_request(j.prompt, j.params, with_priority(static_cast<int>(pick(0, 2))))] = j;
        } else if (what < 4 && !jobs.empty()) {
            auto it = jobs.begin();
            std::advance(it, static_cast<std::ptrdiff_t>(pick(0, jobs.size() - 1)));
            engine.cancel(it->first);
            cancelled.insert(it->first);
        } else {
            engine.step();
        }
        engine.check_invariants();
    }
    auto outputs = engine.run_until_done();
    REQUIRE(outputs.size() == jobs.size());
    const auto stats = engine.stats();
    CHECK(stats.preemptions > 0);
    CHECK(stats.prefix_skipped_tokens > 0);
    CHECK(engine.kv_cache().stats().sequences == 0);
    std::size_t compared = 0;
    for (const auto& o : outputs) {
        const Job& j = jobs.at(o.id);
        const auto ref = reference(j);
        if (o.finish_reason == qlm::RequestFinishReason::cancelled) {
            CHECK(cancelled.count(o.id));
            CHECK(std::equal(o.tokens.begin(), o.tokens.end(), ref.tokens.begin(), ref.tokens.begin() + static_cast<std::ptrdiff_t>(o.tokens.size())));
        } else {
            CHECK(o.tokens == ref.tokens);
            ++compared;
        }
    }
    CHECK(compared > 10);
}

TEST_CASE("engine: producers add, cancel and wait from other threads while one thread steps") {
    qlm::Engine<Model> engine(bundled_model(), pool(), engine_config(24, 64, true, 8));
    constexpr int kProducers = 3, kEach = 8;
    std::atomic<int> producers_done{0};
    std::vector<std::vector<qlm::RequestOutput>> results(kProducers);
    std::vector<std::thread> producers;
    for (int t = 0; t < kProducers; ++t)
        producers.emplace_back([&, t] {
            std::mt19937 rng(static_cast<unsigned>(100 + t));
            std::vector<qlm::RequestId> mine;
            for (int i = 0; i < kEach; ++i) {
                std::vector<std::int32_t> prompt;
                for (std::size_t k = 0; k < 4 + rng() % 20; ++k) prompt.push_back(static_cast<std::int32_t>(rng() % 50257));
                qlm::SamplingParams p;
                p.temperature = 0.8f;
                p.seed = rng();
                p.max_tokens = 1 + rng() % 6;
                p.ignore_eos = true;
                mine.push_back(engine.add_request(prompt, p));
                if (rng() % 4 == 0) engine.cancel(mine[rng() % mine.size()]);
                std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
            }
            for (const auto id : mine) results[static_cast<std::size_t>(t)].push_back(engine.wait(id));
            ++producers_done;
        });
    while (producers_done.load() < kProducers || engine.has_unfinished()) {
        if (!engine.step()) engine.wait_for_work(std::chrono::milliseconds(1));
    }
    for (auto& th : producers) th.join();
    std::set<qlm::RequestId> seen;
    for (const auto& rs : results) {
        REQUIRE(rs.size() == kEach);
        for (const auto& o : rs) {
            CHECK(seen.insert(o.id).second);
            if (o.finish_reason != qlm::RequestFinishReason::cancelled) {
                CHECK(o.finish_reason == qlm::RequestFinishReason::length);
                CHECK(o.tokens.size() >= 1);
            }
        }
    }
    CHECK(seen.size() == kProducers * kEach);
    CHECK(engine.stats().requests_finished == kProducers * kEach);
    CHECK(engine.kv_cache().stats().sequences == 0);
    CHECK(engine.poll().empty());
}

TEST_CASE("engine: greedy and seeded requests are identical alone and inside a batch of 64 with others arriving and leaving") {
    std::mt19937 rng(11);
    auto pick = [&](std::size_t lo, std::size_t hi) { return std::uniform_int_distribution<std::size_t>(lo, hi)(rng); };
    auto random_job = [&](std::size_t max_prompt, std::size_t min_new, std::size_t max_new) {
        Job j;
        for (std::size_t i = pick(1, max_prompt); i > 0; --i) j.prompt.push_back(static_cast<std::int32_t>(pick(0, 50256)));
        j.params.temperature = 0.0f;
        j.params.max_tokens = pick(min_new, max_new);
        return j;
    };
    qlm::Engine<Model> engine(bundled_model(), pool(), engine_config(400, 256, true, 64));
    // Tracked: two greedy requests and two sampled ones (temperature, top-p, penalties, own seeds).
    std::vector<Job> tracked;
    for (int k = 0; k < 4; ++k) {
        Job j = random_job(40, 1, 1);
        j.params.max_tokens = 24;
        if (k >= 2) {
            j.params.temperature = 0.9f;
            j.params.top_p = 0.95f;
            j.params.presence_penalty = 0.5f;
            j.params.seed = 100 + static_cast<std::uint64_t>(k);
        }
        tracked.push_back(j);
    }
    std::vector<qlm::RequestId> tracked_ids;
    std::size_t background = 0, max_running = 0;
    for (int i = 0; i < 70; ++i, ++background) {
        const Job j = random_job(24, 8, 40);
        engine.add_request(j.prompt, j.params);
    }
    for (int step = 0; engine.has_unfinished() || tracked_ids.size() < tracked.size(); ++step) {
        if (step % 3 == 1 && tracked_ids.size() < tracked.size()) {
            const Job& j = tracked[tracked_ids.size()];
            tracked_ids.push_back(engine.add_request(j.prompt, j.params));
        }
        if (engine.stats().waiting < 4)  // others keep arriving as some leave (stats as of the last step)
            for (int i = 0; i < 3 && background < 200; ++i, ++background) {
                const Job j = random_job(24, 8, 40);
                engine.add_request(j.prompt, j.params);
            }
        engine.step();
        max_running = std::max(max_running, engine.stats().running);
    }
    CHECK(max_running == 64);
    for (std::size_t k = 0; k < tracked.size(); ++k) {
        const auto out = engine.wait(tracked_ids[k]);
        const auto ref = reference(tracked[k]);
        CHECK(out.tokens == ref.tokens);
        CHECK(out.tokens.size() == 24);
    }
}

TEST_CASE("engine: 10,000 mixed requests with random cancellations leave no block behind") {
    qlm::GPT2Config config = qlm_test::small_config();  // a small random model: the test is about bookkeeping
    config.n_layer = 1;
    config.n_head = 2;
    config.n_embd = 32;
    const auto model = qlm::make_float_model(qlm::random_gpt2_weights(config, 3));
    qlm::EngineConfig ec;
    ec.kv_cache_bytes = 24 * qlm::KVBlockLayout<16>{config.n_layer, config.n_embd}.bytes();  // tight: preemption happens
    ec.scheduler.max_running = 16;
    ec.scheduler.max_tokens_per_step = 96;
    qlm::Engine<qlm::GPT2Model<qlm::DenseLinear>> engine(model, pool(), ec);
    std::mt19937 rng(12);
    auto pick = [&](std::size_t lo, std::size_t hi) { return std::uniform_int_distribution<std::size_t>(lo, hi)(rng); };
    std::vector<qlm::RequestId> live;
    std::size_t added = 0, cancels = 0;
    while (added < 10000) {
        for (std::size_t n = pick(0, 12); n > 0 && added < 10000; --n, ++added) {
            std::vector<std::int32_t> prompt(pick(1, 40));
            for (auto& t : prompt) t = static_cast<std::int32_t>(pick(0, config.vocab_size - 1));
            if (pick(0, 1))  // a shared first block for the prefix cache
                for (std::size_t i = 0; i < std::min<std::size_t>(16, prompt.size()); ++i) prompt[i] = static_cast<std::int32_t>(i + 1);
            qlm::SamplingParams p;
            p.temperature = pick(0, 1) ? 0.0f : 1.0f;
            p.seed = added;
            p.max_tokens = pick(1, 20);
            live.push_back(engine.add_request(std::move(prompt), p));
        }
        if (!live.empty() && pick(0, 3) == 0) {
            const std::size_t i = pick(0, live.size() - 1);
            engine.cancel(live[i]);
            live[i] = live.back();
            live.pop_back();
            ++cancels;
        }
        engine.step();
        if (live.size() > 256) live.erase(live.begin(), live.begin() + 128);  // old ids are mostly finished
    }
    const auto rest = engine.run_until_done();
    (void)rest;
    engine.check_invariants();
    const auto stats = engine.stats();
    CHECK(stats.requests_finished == 10000);
    CHECK(stats.requests_cancelled > 100);
    CHECK(stats.preemptions > 0);
    CHECK(stats.prefix_skipped_tokens > 0);
    const auto kv = engine.kv_cache().stats();
    CHECK(kv.sequences == 0);
    CHECK(kv.blocks_free == kv.blocks_total);
    CHECK(kv.tokens_stored == 0);
    MESSAGE("10,000 requests: ", stats.steps, " steps, ", stats.requests_cancelled, " cancelled, ", stats.preemptions, " preemptions");
}
