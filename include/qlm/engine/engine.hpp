#pragma once
// Engine<Model, Scheduler>: continuous batching over a paged KV cache. Other threads add and
// cancel requests and collect results; one thread calls step(), which runs one scheduled batch
// (decodes and prefill chunks of many requests) through a single forward pass, samples a token for
// every sequence whose chunk ended its pending tokens, and finishes requests. See docs/engine.md.
//
// Threading: add_request / add_parallel_requests / cancel / poll / wait / stats may be called from
// any thread. They touch only the command queue, the finished results and the published stats,
// under one mutex. step() takes that mutex only to take the queued commands and to hand results
// over: the scheduler, the KV cache, the samplers and the forward pass belong to the stepping thread.
#include <qlm/core/error.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/engine/engine_stats.hpp>
#include <qlm/kv/memory_budget.hpp>
#include <qlm/kv/paged_cache.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/sched/sampler.hpp>
#include <qlm/sched/scheduler.hpp>
#include <qlm/sched/sequence_output.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <cmath>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace qlm {

// A model the engine can drive: a GPT-2 shaped config, a backend (its context, workspace and KV
// memory) and a batched forward pass over sequence chunks appended to their KV sequences, one
// logits row per chunk, on the host.
template <class M, class Seq>
concept BatchedLanguageModel =
    BackendKVMemory<typename M::backend_type> &&
    requires(const M& m, typename M::context_type& ctx, std::span<const SequenceChunk<Seq>> chunks, typename M::workspace_type& ws) {
        { m.config() } -> std::convertible_to<const GPT2Config&>;
        m.forward(ctx, chunks, ws, LogitsFor::last_token);
    };

template <class S>
concept EngineScheduler = SchedulingPolicy<typename S::policy_type> &&
                          std::same_as<S, Scheduler<typename S::policy_type, S::page_size>>;

struct EngineConfig {
    std::size_t kv_cache_bytes = 0;    // the KV pool's byte budget; 0: kv_memory_fraction of available memory
    double kv_memory_fraction = 0.25;  // used when kv_cache_bytes is 0
    SchedulerConfig scheduler{};       // max_context is taken from the model's n_positions
    std::int32_t eos_token_id = 50256;
    Decoder decoder;  // token ids -> text (a tokenizer's decode): RequestOutput::text and stop strings; none: ids only
};

struct RequestOptions {
    int priority = 0;  // PriorityScheduling: lower runs first
    // >= 0: each kept generated token's log-probability under the model (log-softmax of the raw
    // logits, before penalties and temperature, as vLLM reports them) and this many most likely
    // alternatives, in RequestOutput::logprobs and on_logprob. -1: not computed (it costs a pass
    // over the vocabulary per token).
    int logprobs = -1;
    std::function<void(RequestId, const TokenLogprob&)> on_logprob;  // before on_token, for each kept token
    // Called on the stepping thread: for each generated token, and once with the finished result.
    std::function<void(RequestId, std::int32_t)> on_token;
    std::function<void(RequestId, std::string_view)> on_text;  // each piece of released text, as it is released (needs a decoder)
    std::function<void(const RequestOutput&)> on_finish;
};

template <class Model, EngineScheduler Sched = Scheduler<ContinuousBatching>>
    requires BatchedLanguageModel<Model, typename Sched::Sequence>
class Engine {
public:
    using scheduler_type = Sched;
    using cache_type = typename Sched::cache_type;
    using clock = std::chrono::steady_clock;

    using backend_type = typename Model::backend_type;
    using context_type = typename Model::context_type;

    // The KV pool lives in the backend's memory (host RAM, or device memory for CUDA), sized by
    // config.kv_cache_bytes or a fraction of what that memory has free.
    Engine(const Model& model, context_type& ctx, EngineConfig config = {})
        : model_(model), pool_(ctx), config_(with_context(config, model.config())),
          cache_(KVCacheConfig{model.config().n_layer, model.config().n_embd, kv_bytes(ctx, config_), backend_type::kv_memory(ctx)}),
          scheduler_(cache_, config_.scheduler), total_blocks_(cache_.total_blocks()) {
        published_.kv_blocks_total = total_blocks_;
    }
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    const EngineConfig& config() const noexcept { return config_; }
    std::size_t kv_blocks_total() const noexcept { return total_blocks_; }

    // Queues a request; any thread. Throws here, and queues nothing, for a request that could never
    // run: qlm::capacity_error when prompt + max_tokens exceeds the context or the sequence exceeds
    // the whole KV pool; qlm::invalid_argument for an empty prompt, a token outside the vocabulary,
    // bad sampling parameters, or stop strings without EngineConfig::decoder.
    RequestId add_request(std::vector<std::int32_t> prompt, const SamplingParams& params, RequestOptions options = {}) {
        return add(std::move(prompt), params, 1, std::move(options)).front();
    }

    // n samples of one prompt (sample i seeded params.seed + i), each its own request: the prompt
    // is computed once and its blocks shared copy-on-write by the n sequences.
    std::vector<RequestId> add_parallel_requests(std::vector<std::int32_t> prompt, const SamplingParams& params, std::size_t n,
                                                 RequestOptions options = {}) {
        return add(std::move(prompt), params, n, std::move(options));
    }

    // Ends a request (waiting or running) at the next step with reason cancelled, keeping the tokens
    // generated so far, and frees its blocks. Any thread; unknown or finished ids are ignored.
    void cancel(RequestId id) {
        {
            std::lock_guard lock(mutex_);
            incoming_.push_back(Command{Command::cancel, {id}, {}, {}, {}, {}});
        }
        work_.notify_all();
    }

    // Requests added and not finished yet (any thread).
    bool has_unfinished() const {
        std::lock_guard lock(mutex_);
        return unfinished_ != 0;
    }

    // Finished results not handed over yet, by id (any thread).
    std::vector<RequestOutput> poll() {
        std::lock_guard lock(mutex_);
        std::vector<RequestOutput> out;
        out.reserve(finished_.size());
        for (auto& [id, o] : finished_) {
            out.push_back(std::move(o));
            mark_taken(id);
        }
        finished_.clear();
        std::sort(out.begin(), out.end(), [](const RequestOutput& a, const RequestOutput& b) { return a.id < b.id; });
        return out;
    }

    // Blocks until request id finishes and hands its result over (any thread but the stepping one,
    // unless the request already finished). Throws invalid_argument for an id never issued or
    // already handed over by poll() or wait().
    RequestOutput wait(RequestId id) {
        std::unique_lock lock(mutex_);
        if (id == 0 || id >= next_id_ || is_taken(id))
            throw invalid_argument("qlm: wait(" + std::to_string(id) + "): no such request, or its result was already taken");
        done_.wait(lock, [&] { return finished_.count(id) != 0; });
        RequestOutput out = std::move(finished_.at(id));
        finished_.erase(id);
        mark_taken(id);
        return out;
    }

    // The stepping thread's idle wait: returns when commands are queued, or after `timeout`.
    void wait_for_work(std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex_);
        work_.wait_for(lock, timeout, [&] { return !incoming_.empty(); });
    }

    // Runs one step: applies queued adds and cancels, schedules a batch, runs it through one
    // forward pass, samples and finishes requests. Returns false if there was nothing to run.
    bool step() {
        const auto t0 = clock::now();
        apply_commands();
        const auto& batch = scheduler_.schedule();
        if (batch.empty()) {
            publish_stats();
            return false;
        }
        chunks_.clear();
        for (const auto& c : batch) chunks_.push_back({c.kv, c.tokens});
        try {
            model_.forward(pool_, std::span<const SequenceChunk<typename cache_type::Sequence>>(chunks_), ws_, LogitsFor::last_token);
        } catch (const std::exception& e) {
            scheduler_.abort_step();
            std::vector<RequestId> ids;
            for (const auto& c : batch) ids.push_back(c.id);
            for (const RequestId id : ids) finish(id, RequestFinishReason::error, std::string("forward pass failed: ") + e.what());
            stats_.busy_seconds += std::chrono::duration<double>(clock::now() - t0).count();
            publish_stats();
            return true;
        }
        scheduler_.finish_step();
        ++stats_.steps;
        note_kv_usage();
        const auto now = clock::now();
        for (std::size_t i = 0; i < batch.size(); ++i) {
            const auto& c = batch[i];
            if (!c.needs_logits) continue;
            const std::span<const float> logits = ws_.logits_row(i);
            sample_into(c.id, logits, now);
            for (const RequestId f : c.forked) sample_into(f, logits, now);
        }
        stats_.busy_seconds += std::chrono::duration<double>(clock::now() - t0).count();
        publish_stats();
        return true;
    }

    // Steps until every request added so far (and any added meanwhile) finished; returns the results
    // not handed over yet. Throws qlm::error if requests remain that nothing can run (a bug).
    std::vector<RequestOutput> run_until_done() {
        while (has_unfinished()) {
            if (step()) continue;
            std::lock_guard lock(mutex_);
            if (incoming_.empty() && unfinished_ != 0)
                throw error("qlm: engine stalled: " + std::to_string(unfinished_) + " unfinished requests and nothing to schedule");
        }
        return poll();
    }

    // A snapshot of the statistics as of the last step (any thread).
    EngineStats stats() const {
        std::lock_guard lock(mutex_);
        EngineStats s = published_;
        s.waiting += incoming_adds_;
        return s;
    }

    // The stepping thread's view, for tests and tools that step themselves.
    const Sched& scheduler() const noexcept { return scheduler_; }
    const cache_type& kv_cache() const noexcept { return cache_; }
    void check_invariants() const { scheduler_.check_invariants(); }

private:
    struct Command {
        enum Kind { add, cancel } kind;
        std::vector<RequestId> ids;  // add: the request and its parallel samples
        std::vector<std::int32_t> prompt;
        SamplingParams params;
        RequestOptions options;
        clock::time_point arrival;
    };
    struct Active {
        Sampler sampler;          // penalties over the prompt and the accepted tokens
        SequenceOutput sequence;  // the finish rules, kept tokens and released text
        RequestOptions options;
        RequestOutput output;
    };

    static EngineConfig with_context(EngineConfig c, const GPT2Config& model) {
        c.scheduler.max_context = model.n_positions;
        c.scheduler.validate();
        return c;
    }
    static std::size_t kv_bytes(context_type& ctx, const EngineConfig& c) {
        return c.kv_cache_bytes ? c.kv_cache_bytes : backend_type::kv_budget_bytes(ctx, c.kv_memory_fraction);
    }

    std::vector<RequestId> add(std::vector<std::int32_t> prompt, const SamplingParams& params, std::size_t n, RequestOptions options) {
        params.validate();
        if (!params.stop.empty() && !config_.decoder)
            throw invalid_argument("qlm: stop strings need a tokenizer to decode the generated tokens (EngineConfig::decoder)");
        Sched::check_admissible(prompt.size(), params.max_tokens, n, config_.scheduler, total_blocks_);
        const std::size_t vocab = model_.config().vocab_size;
        for (const std::int32_t t : prompt)
            if (t < 0 || static_cast<std::size_t>(t) >= vocab)
                throw invalid_argument("qlm: prompt token id " + std::to_string(t) + " outside the vocabulary of " + std::to_string(vocab));
        Command cmd{Command::add, {}, std::move(prompt), params, std::move(options), clock::now()};
        {
            std::lock_guard lock(mutex_);
            for (std::size_t i = 0; i < n; ++i) cmd.ids.push_back(next_id_++);
            unfinished_ += n;
            incoming_adds_ += n;
            incoming_.push_back(cmd);  // a copy: cmd.ids is returned
        }
        work_.notify_all();
        return cmd.ids;
    }

    void apply_commands() {
        std::vector<Command> commands;
        {
            std::lock_guard lock(mutex_);
            commands.swap(incoming_);
            incoming_adds_ = 0;
        }
        for (Command& cmd : commands) {
            if (cmd.kind == Command::cancel) {
                if (active_.count(cmd.ids.front())) finish(cmd.ids.front(), RequestFinishReason::cancelled);
                continue;
            }
            for (std::size_t i = 0; i < cmd.ids.size(); ++i) {
                SamplingParams p = cmd.params;
                p.seed += i;
                Active a{Sampler(p, cmd.prompt, config_.eos_token_id), SequenceOutput(p, config_.decoder, config_.eos_token_id),
                         cmd.options, {}};
                a.output.id = cmd.ids[i];
                a.output.prompt_tokens = cmd.prompt;
                a.output.timings.arrival = cmd.arrival;
                active_.emplace(cmd.ids[i], std::move(a));
            }
            if (cmd.params.max_tokens == 0) {
                for (const RequestId id : cmd.ids) finish(id, RequestFinishReason::length);
                continue;
            }
            try {
                scheduler_.add(cmd.ids.front(), std::move(cmd.prompt), cmd.params.max_tokens, cmd.options.priority,
                               std::span<const RequestId>(cmd.ids).subspan(1));
            } catch (const std::exception& e) {
                for (const RequestId id : cmd.ids) finish(id, RequestFinishReason::error, e.what());
            }
        }
    }

    void sample_into(RequestId id, std::span<const float> logits, clock::time_point now) {
        Active& a = active_.at(id);
        const std::int32_t token = a.sampler.sample(logits);
        if (a.output.timings.first_token == clock::time_point{}) {
            a.output.timings.first_token = now;
            a.output.ttft = std::chrono::duration<double>(now - a.output.timings.arrival).count();
        }
        std::optional<TokenLogprob> logprob;
        if (a.options.logprobs >= 0) logprob = token_logprob(logits, token, static_cast<std::size_t>(a.options.logprobs));
        if (const auto reason = on_token(a, token, now, logprob))
            finish(id, *reason);
        else
            scheduler_.append_token(id, token);
    }

    // Every per-token decision in one place: the sampler and the SequenceOutput take the token
    // (EOS, stop token ids, stop strings, min_tokens and max_tokens are SequenceOutput's rules, as in
    // qlm::generate), the kept token reaches the output and the token callback, and a full context
    // ends the request. Returns the reason when the request ends.
    std::optional<RequestFinishReason> on_token(Active& a, std::int32_t token, clock::time_point now,
                                                const std::optional<TokenLogprob>& logprob) {
        RequestOutput& out = a.output;
        a.sampler.accept(token);
        const SequenceOutput::Step step = a.sequence.append(token);
        release(a, step.text_delta);
        if (a.sequence.tokens().size() > out.tokens.size()) {
            out.tokens.push_back(token);
            out.timings.token_seconds.push_back(std::chrono::duration<double>(now - out.timings.arrival).count());
            ++stats_.generated_tokens;
            if (logprob) {
                out.logprobs.push_back(*logprob);
                if (a.options.on_logprob) a.options.on_logprob(out.id, *logprob);
            }
            if (a.options.on_token) a.options.on_token(out.id, token);
        }
        if (step.finished) return to_request_reason(step.reason);
        if (out.prompt_tokens.size() + out.tokens.size() >= config_.scheduler.max_context) {
            release(a, a.sequence.flush(FinishReason::length));
            return RequestFinishReason::length;
        }
        return std::nullopt;
    }

    void release(Active& a, const std::string& text) {
        if (text.empty()) return;
        a.output.text += text;
        if (a.options.on_text) a.options.on_text(a.output.id, text);
    }

    void finish(RequestId id, RequestFinishReason reason, std::string message = {}) {
        const auto it = active_.find(id);
        Active& a = it->second;
        RequestOutput& out = a.output;
        if (scheduler_.contains(id)) {
            out.prefix_cached_tokens = scheduler_.prefix_skipped(id);
            out.preemptions = scheduler_.preemptions(id);
            scheduler_.remove(id);
        }
        if (!a.sequence.finished()) release(a, a.sequence.flush(reason == RequestFinishReason::cancelled ? FinishReason::abort : FinishReason::length));
        out.finish_reason = reason;
        out.error = std::move(message);
        out.timings.finished = clock::now();
        ++stats_.requests_finished;
        stats_.requests_cancelled += reason == RequestFinishReason::cancelled;
        stats_.requests_failed += reason == RequestFinishReason::error;
        if (a.options.on_finish) a.options.on_finish(out);
        {
            std::lock_guard lock(mutex_);
            finished_.emplace(id, std::move(out));
            --unfinished_;
        }
        active_.erase(it);
        done_.notify_all();
    }

    // log-softmax of the raw logits at `token`, and the `top` most likely ids with theirs.
    static TokenLogprob token_logprob(std::span<const float> logits, std::int32_t token, std::size_t top) {
        float max = -std::numeric_limits<float>::infinity();
        for (const float l : logits) max = std::max(max, l);
        double sum = 0.0;
        for (const float l : logits) sum += std::exp(static_cast<double>(l - max));
        const double log_norm = static_cast<double>(max) + std::log(sum);
        TokenLogprob lp{token, static_cast<float>(logits[static_cast<std::size_t>(token)] - log_norm), {}};
        top = std::min(top, logits.size());
        for (std::size_t i = 0; i < logits.size() && top > 0; ++i) {  // a small sorted list: top is at most a few
            const float v = logits[i];
            if (lp.top.size() == top && v <= lp.top.back().second) continue;
            auto at = std::find_if(lp.top.begin(), lp.top.end(), [&](const auto& e) { return v > e.second; });
            lp.top.insert(at, {static_cast<std::int32_t>(i), v});
            if (lp.top.size() > top) lp.top.pop_back();
        }
        for (auto& [id, l] : lp.top) l = static_cast<float>(l - log_norm);
        return lp;
    }

    // Handed-over ids: every id below taken_below_, and those in taken_ above it. Results are
    // mostly taken in id order, so the set stays as small as the requests in flight (a server runs
    // for months).
    bool is_taken(RequestId id) const { return id < taken_below_ || taken_.count(id) != 0; }
    void mark_taken(RequestId id) {
        taken_.insert(id);
        while (taken_.erase(taken_below_)) ++taken_below_;
    }

    void note_kv_usage() {
        const KVCacheStats kv = cache_.stats();
        const double usage = static_cast<double>(kv.tokens_stored) / static_cast<double>(kv.blocks_total * cache_type::page_size);
        stats_.kv_peak_usage = std::max(stats_.kv_peak_usage, usage);
        const std::size_t running = scheduler_.running_count();
        if (running == 0 || kv.token_slots == 0) return;
        kv_samples_ += 1.0;
        kv_utilisation_sum_ += kv.utilisation;
        kv_contiguous_sum_ += static_cast<double>(kv.tokens_stored) / static_cast<double>(running * config_.scheduler.max_context);
        stats_.kv_utilisation_mean = kv_utilisation_sum_ / kv_samples_;
        stats_.kv_contiguous_utilisation_mean = kv_contiguous_sum_ / kv_samples_;
    }
    double kv_samples_ = 0.0, kv_utilisation_sum_ = 0.0, kv_contiguous_sum_ = 0.0;

    void publish_stats() {
        EngineStats s = stats_;
        const SchedulerStats& ss = scheduler_.stats();
        s.prompt_tokens_computed = ss.prompt_tokens_computed;
        s.decode_tokens_computed = ss.decode_tokens_computed;
        s.prefix_skipped_tokens = ss.prefix_skipped_tokens;
        s.preemptions = ss.preemptions;
        s.running = scheduler_.running_count();
        s.waiting = scheduler_.waiting_count();
        const KVCacheStats kv = cache_.stats();
        s.kv_blocks_total = kv.blocks_total;
        s.kv_blocks_used = kv.blocks_total - kv.blocks_free;
        s.kv_tokens_stored = kv.tokens_stored;
        s.kv_usage = static_cast<double>(kv.tokens_stored) / static_cast<double>(kv.blocks_total * cache_type::page_size);
        s.kv_utilisation = kv.utilisation;
        s.kv_cow_copies = kv.cow_copies;
        s.kv_evictions = kv.evictions;
        std::lock_guard lock(mutex_);
        published_ = s;
    }

    const Model& model_;
    context_type& pool_;
    EngineConfig config_;
    cache_type cache_;
    Sched scheduler_;
    const std::size_t total_blocks_;

    // The stepping thread's state.
    typename Model::workspace_type ws_;
    std::vector<SequenceChunk<typename cache_type::Sequence>> chunks_;
    std::unordered_map<RequestId, Active> active_;
    EngineStats stats_;

    // Shared with other threads, under mutex_.
    mutable std::mutex mutex_;
    std::condition_variable done_;  // a request finished
    std::condition_variable work_;  // a command was queued
    std::vector<Command> incoming_;
    std::size_t incoming_adds_ = 0;
    RequestId next_id_ = 1;
    std::size_t unfinished_ = 0;
    std::unordered_map<RequestId, RequestOutput> finished_;
    std::unordered_set<RequestId> taken_;
    RequestId taken_below_ = 1;
    EngineStats published_;
};

}  // namespace qlm
