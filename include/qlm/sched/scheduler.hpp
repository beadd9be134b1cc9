#pragma once
// Scheduler<Policy, PageSize>: which sequences run in the next forward pass, and how many tokens
// each. Every step has a token budget: running decodes go first (one token each, oldest first),
// then running sequences still in prefill continue (chunked prefill), then waiting requests are
// admitted while budget, sequence slots and KV blocks last. Admission looks the prompt up in the
// KV cache's prefix cache and skips the cached blocks; full blocks are committed to it after each
// step. When blocks run out, the youngest running sequence (in the policy's order) is preempted:
// its blocks are freed and it goes back to the waiting queue with its prompt and generated tokens,
// to be recomputed. The policy decides admission, order and preemption; see docs/engine.md.
// Single-threaded, like the KV cache it drives: the engine loop owns both.
#include <qlm/core/error.hpp>
#include <qlm/kv/paged_cache.hpp>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace qlm {

using RequestId = std::uint64_t;

// What a policy orders requests by: a priority (lower runs first, for policies that use it), the
// arrival number the scheduler gave the request, and its id (parallel samples share an arrival).
struct SequenceRank {
    int priority = 0;
    std::uint64_t arrival = 0;
    RequestId id = 0;
};

// A scheduling policy is a type with a few static members:
//   name                    for tables and logs;
//   admits_while_running    false: a batch is admitted only when nothing runs, and runs until all of it finishes;
//   before(a, b)            strict weak order: a is served before b (the waiting queue's order, the order in
//                           which running sequences get budget and blocks; the last one is preempted first);
//   preempts_for_waiting    whether a waiting request may preempt running ones when blocks or slots run short;
//   outranks(w, r)          with preempts_for_waiting: waiting request w may preempt running sequence r.
template <class P>
concept SchedulingPolicy = requires(const SequenceRank& a, const SequenceRank& b) {
    { P::name } -> std::convertible_to<std::string_view>;
    { P::admits_while_running } -> std::convertible_to<bool>;
    { P::preempts_for_waiting } -> std::convertible_to<bool>;
    { P::before(a, b) } -> std::same_as<bool>;
    { P::outranks(a, b) } -> std::same_as<bool>;
};

namespace detail {
constexpr bool first_come_first_served(const SequenceRank& a, const SequenceRank& b) noexcept {
    return a.arrival != b.arrival ? a.arrival < b.arrival : a.id < b.id;
}
}  // namespace detail

// First come, first served; new requests join the running batch at every step (the default).
struct ContinuousBatching {
    static constexpr std::string_view name = "continuous";
    static constexpr bool admits_while_running = true;
    static constexpr bool preempts_for_waiting = false;
    static constexpr bool before(const SequenceRank& a, const SequenceRank& b) noexcept {
        return detail::first_come_first_served(a, b);
    }
    static constexpr bool outranks(const SequenceRank&, const SequenceRank&) noexcept { return false; }
};

// The traditional baseline: admit a batch only when nothing runs, run it until every member finishes.
struct StaticBatching {
    static constexpr std::string_view name = "static";
    static constexpr bool admits_while_running = false;
    static constexpr bool preempts_for_waiting = false;
    static constexpr bool before(const SequenceRank& a, const SequenceRank& b) noexcept {
        return detail::first_come_first_served(a, b);
    }
    static constexpr bool outranks(const SequenceRank&, const SequenceRank&) noexcept { return false; }
};

// Lower priority value first, first come first served within a priority; a waiting request
// preempts running sequences of a strictly lower priority (higher value) when it cannot be admitted.
struct PriorityScheduling {
    static constexpr std::string_view name = "priority";
    static constexpr bool admits_while_running = true;
    static constexpr bool preempts_for_waiting = true;
    static constexpr bool before(const SequenceRank& a, const SequenceRank& b) noexcept {
        return a.priority != b.priority ? a.priority < b.priority : detail::first_come_first_served(a, b);
    }
    static constexpr bool outranks(const SequenceRank& waiting, const SequenceRank& running) noexcept {
        return waiting.priority < running.priority;
    }
};

static_assert(SchedulingPolicy<ContinuousBatching> && SchedulingPolicy<StaticBatching> && SchedulingPolicy<PriorityScheduling>);

struct SchedulerConfig {
    std::size_t max_running = 64;            // sequences in a step's batch
    std::size_t max_tokens_per_step = 512;   // token budget of a step (decodes + prefill chunks)
    std::size_t max_context = 1024;          // the model's n_positions: prompt + max_tokens must fit
    bool prefix_caching = true;

    void validate() const {
        if (max_running == 0 || max_tokens_per_step == 0 || max_context == 0)
            throw invalid_argument("qlm: scheduler limits must be > 0: max_running " + std::to_string(max_running) +
                                   ", max_tokens_per_step " + std::to_string(max_tokens_per_step) + ", max_context " +
                                   std::to_string(max_context));
    }
};

struct SchedulerStats {
    std::uint64_t steps = 0;                   // schedule() calls that returned work
    std::uint64_t prompt_tokens_computed = 0;  // prompt positions run (again, after a preemption)
    std::uint64_t decode_tokens_computed = 0;  // generated-token positions run (decodes, and recomputation)
    std::uint64_t prefix_skipped_tokens = 0;   // prompt positions found in the prefix cache at admission
    std::uint64_t preemptions = 0;
    std::uint64_t forks = 0;  // parallel samples forked from their leader after its prefill
};

template <SchedulingPolicy Policy, std::size_t PageSize = 16>
class Scheduler {
    struct Record;

public:
    using policy_type = Policy;
    using cache_type = KVCache<PageSize>;
    using Sequence = typename cache_type::Sequence;
    static constexpr std::size_t page_size = PageSize;

    // One entry of a step's batch: run `tokens` (positions start, start + 1, ...) on `kv`; when
    // needs_logits, the last token's logits are sampled for request `id`, and, after finish_step(),
    // for each request in `forked` too (parallel samples that now share id's prompt blocks).
    struct Chunk {
        RequestId id = 0;
        Sequence* kv = nullptr;
        std::span<const std::int32_t> tokens;
        std::size_t start = 0;
        bool needs_logits = false;
        std::vector<RequestId> forked;
    };

    Scheduler(cache_type& cache, SchedulerConfig config) : cache_(cache), config_(config) { config_.validate(); }
    Scheduler(const Scheduler&) = delete;
    Scheduler& operator=(const Scheduler&) = delete;

    const SchedulerConfig& config() const noexcept { return config_; }
    cache_type& cache() noexcept { return cache_; }
    const cache_type& cache() const noexcept { return cache_; }

    // Throws qlm::capacity_error for a request that could never run: prompt + max_tokens beyond
    // the context, a sequence larger than the whole KV pool, or more parallel samples than sequence
    // slots; qlm::invalid_argument for an empty prompt. Reads only limits fixed at construction.
    static void check_admissible(std::size_t prompt_tokens, std::size_t max_tokens, std::size_t parallel,
                                 const SchedulerConfig& config, std::size_t total_blocks) {
        if (prompt_tokens == 0) throw invalid_argument("qlm: a request needs at least one prompt token");
        if (parallel == 0) throw invalid_argument("qlm: a request needs at least one sample (parallel = 0)");
        if (prompt_tokens + max_tokens > config.max_context)
            throw capacity_error("qlm: request refused: prompt of " + std::to_string(prompt_tokens) + " tokens + max_tokens " +
                                 std::to_string(max_tokens) + " = " + std::to_string(prompt_tokens + max_tokens) +
                                 " tokens exceeds the model's context of " + std::to_string(config.max_context));
        // The last generated token is never fed back, so a sequence holds prompt + max_tokens - 1 positions.
        const std::size_t positions = prompt_tokens + std::max<std::size_t>(max_tokens, 1) - 1;
        if (cache_type::blocks_for(positions) > total_blocks)
            throw capacity_error("qlm: request refused: " + std::to_string(positions) + " positions (prompt " +
                                 std::to_string(prompt_tokens) + " + max_tokens " + std::to_string(max_tokens) + " - 1) need " +
                                 std::to_string(cache_type::blocks_for(positions)) + " KV blocks of " + std::to_string(PageSize) +
                                 " positions; the whole pool holds " + std::to_string(total_blocks));
        if (parallel > config.max_running)
            throw capacity_error("qlm: request refused: " + std::to_string(parallel) + " parallel samples, but at most " +
                                 std::to_string(config.max_running) + " sequences run at once");
    }

    // Queues a request (its prompt; generated tokens come through append_token()). `parallel` are
    // the ids of further samples of the same prompt: they wait for this request's prefill, then fork
    // its blocks (copy-on-write) and decode on their own. Throws as check_admissible() says, and
    // invalid_argument for an id in use.
    void add(RequestId id, std::vector<std::int32_t> prompt, std::size_t max_tokens, int priority = 0,
             std::span<const RequestId> parallel = {}) {
        check_admissible(prompt.size(), max_tokens, 1 + parallel.size(), config_, cache_.total_blocks());
        if (records_.count(id)) throw invalid_argument("qlm: request id " + std::to_string(id) + " is already scheduled");
        for (std::size_t i = 0; i < parallel.size(); ++i)
            if (parallel[i] == id || records_.count(parallel[i]) || std::count(parallel.begin(), parallel.begin() + i, parallel[i]))
                throw invalid_argument("qlm: parallel sample id " + std::to_string(parallel[i]) + " is already in use");
        const SequenceRank rank{priority, next_arrival_++, id};
        auto leader = std::make_unique<Record>();
        leader->id = id;
        leader->prompt_len = prompt.size();
        leader->rank = rank;
        for (const RequestId f : parallel) {
            auto follower = std::make_unique<Record>();
            follower->id = f;
            follower->prompt_len = prompt.size();
            follower->rank = {priority, rank.arrival, f};
            follower->leader = id;
            leader->followers.push_back(f);
            records_.emplace(f, std::move(follower));
        }
        leader->tokens = std::move(prompt);
        Record* r = leader.get();
        records_.emplace(id, std::move(leader));
        insert_waiting(r);
    }

    // The next step's batch. Blocks for every chunk are reserved here (the forward pass finds them
    // in place); run the chunks through the model (which advances each sequence's length by its
    // chunk), then call finish_step() — or abort_step() if the forward pass failed.
    const std::vector<Chunk>& schedule() {
        if (in_step_) throw invalid_argument("qlm: schedule() called twice without finish_step() or abort_step()");
        batch_.clear();
        std::size_t budget = config_.max_tokens_per_step;
        const bool idle = running_.empty();

        if constexpr (Policy::preempts_for_waiting) preempt_for_waiting();

        // 1. Decodes (one token each; the last prompt token of a prefill counts as one), in policy order.
        for (std::size_t i = 0; i < running_.size() && budget > 0;) {
            Record& r = *running_[i];
            if (r.in_batch || pending(r) != 1) {
                ++i;
                continue;
            }
            if (make_room(i, r.kv->length() + 1)) {
                add_chunk(r, 1);
                --budget;
                ++i;
            } else {
                preempt(i);  // nothing younger left to preempt: this one yields its blocks to the older ones
            }
        }
        // 2. Running sequences in prefill continue with what budget is left (chunked prefill).
        for (std::size_t i = 0; i < running_.size() && budget > 0; ++i) {
            Record& r = *running_[i];
            if (r.in_batch || pending(r) == 0) continue;
            std::size_t n = std::min(pending(r), budget);
            if (!make_room(i, r.kv->length() + n)) {
                // Take what the free blocks allow; nothing younger was left to preempt.
                const std::size_t cap = r.kv->capacity();
                n = cap > r.kv->length() ? std::min(n, cap - r.kv->length()) : 0;
                if (n == 0) continue;
                r.kv->reserve(r.kv->length() + n);
            }
            add_chunk(r, n);
            budget -= n;
        }
        // 3. Admission, in policy order, head of line first.
        if (Policy::admits_while_running || idle) {
            while (!waiting_.empty() && (budget > 0 || !Policy::admits_while_running)) {
                Record& r = *waiting_.front();
                if (slots_in_use() + 1 + r.followers.size() > config_.max_running) break;
                std::optional<std::size_t> n = admit(r, budget);
                if (!n) break;
                budget -= *n;
            }
        }
        if (!batch_.empty()) {
            ++stats_.steps;
            in_step_ = true;
        }
        return batch_;
    }

    // After the forward pass of schedule()'s batch: commits newly full blocks to the prefix cache
    // and forks the parallel samples of prefills that completed (listed in their chunk's `forked`).
    // Throws qlm::error if a chunk's sequence did not advance by its tokens.
    const std::vector<Chunk>& finish_step() {
        if (!in_step_) throw invalid_argument("qlm: finish_step() without a scheduled step");
        in_step_ = false;
        for (Chunk& c : batch_) {
            Record& r = *records_.at(c.id);
            r.in_batch = false;
            if (r.kv->length() != c.start + c.tokens.size())
                throw error("qlm: scheduler: sequence " + std::to_string(c.id) + " should hold " +
                            std::to_string(c.start + c.tokens.size()) + " positions after the step, holds " +
                            std::to_string(r.kv->length()));
            if (config_.prefix_caching) cache_.commit_full_blocks(*r.kv, r.tokens);
            if (c.needs_logits && !r.followers.empty()) {
                for (const RequestId f : r.followers) {
                    Record& child = *records_.at(f);
                    child.leader.reset();
                    child.tokens = r.tokens;
                    child.kv = cache_.fork(*r.kv);
                    child.kv_running = true;
                    insert_sorted(running_, &child);
                    c.forked.push_back(f);
                    ++stats_.forks;
                }
                r.followers.clear();
            }
        }
        return batch_;
    }

    // The forward pass failed: the batch's sequences keep their reserved blocks and lengths; the
    // caller finishes (or retries) them.
    void abort_step() {
        for (Chunk& c : batch_) records_.at(c.id)->in_batch = false;
        in_step_ = false;
    }

    // A token sampled for request id: its next decode feeds it.
    void append_token(RequestId id, std::int32_t token) { record(id).tokens.push_back(token); }

    // Removes a request wherever it is (waiting, running, or a parallel sample waiting for its
    // leader's prefill) and frees its blocks: it finished or was cancelled. A leader's parallel
    // samples that have not forked yet carry on (the first takes its place). Returns false for an
    // unknown id. Refused between schedule() and finish_step() for a sequence in the batch.
    bool remove(RequestId id) {
        const auto it = records_.find(id);
        if (it == records_.end()) return false;
        Record& r = *it->second;
        if (r.in_batch) throw invalid_argument("qlm: request " + std::to_string(id) + " is in the step being run; remove it after finish_step()");
        if (r.leader) {
            auto& fs = records_.at(*r.leader)->followers;
            fs.erase(std::find(fs.begin(), fs.end(), id));
        } else if (!r.followers.empty()) {
            Record& heir = *records_.at(r.followers.front());  // takes the leader's place, blocks and progress
            heir.leader.reset();
            heir.tokens = std::move(r.tokens);
            heir.kv = std::move(r.kv);
            heir.followers.assign(r.followers.begin() + 1, r.followers.end());
            for (const RequestId f : heir.followers) records_.at(f)->leader = heir.id;
            heir.kv_running = r.kv_running;
            heir.prefix_skipped = r.prefix_skipped;
            heir.preemptions = r.preemptions;
            if (r.kv_running)
                *std::find(running_.begin(), running_.end(), &r) = &heir;
            else
                *std::find(waiting_.begin(), waiting_.end(), &r) = &heir;
        } else if (r.kv_running) {
            cache_.free_sequence(*r.kv);
            running_.erase(std::find(running_.begin(), running_.end(), &r));
        } else {
            waiting_.erase(std::find(waiting_.begin(), waiting_.end(), &r));
        }
        records_.erase(it);
        return true;
    }

    bool has_unfinished() const noexcept { return !records_.empty(); }
    bool contains(RequestId id) const noexcept { return records_.count(id) != 0; }
    std::size_t running_count() const noexcept { return running_.size(); }
    // Waiting requests, parallel samples waiting for their leader's prefill included.
    std::size_t waiting_count() const noexcept { return records_.size() - running_.size(); }
    const SchedulerStats& stats() const noexcept { return stats_; }

    // A request's tokens (prompt, then generated) and how many of them its KV cache holds.
    std::span<const std::int32_t> tokens(RequestId id) const { return record(id).tokens; }
    std::size_t computed(RequestId id) const {
        const Record& r = record(id);
        return r.kv ? r.kv->length() : 0;
    }
    bool is_running(RequestId id) const { return record(id).kv_running; }
    std::size_t preemptions(RequestId id) const { return record(id).preemptions; }
    std::size_t prefix_skipped(RequestId id) const { return record(id).prefix_skipped; }
    // Running requests, in the order the policy serves them.
    std::vector<RequestId> running_ids() const {
        std::vector<RequestId> ids;
        for (const Record* r : running_) ids.push_back(r->id);
        return ids;
    }

    // Every request is in exactly one place (running with a live KV sequence, waiting without one,
    // or a parallel sample attached to a leader that has not forked yet), both queues are in policy
    // order, the sequence limit holds, each KV sequence holds no more than its tokens, and the KV
    // cache's own invariants hold with one live sequence per running request. Throws qlm::error.
    void check_invariants() const {
        auto fail = [](const std::string& what) { throw error("qlm: scheduler invariant broken: " + what); };
        std::size_t running = 0, waiting = 0, attached = 0, slots = 0;
        std::unordered_map<const Record*, std::pair<std::size_t, std::size_t>> places;  // entries in running_, waiting_
        for (const Record* r : running_) ++places[r].first;
        for (const Record* r : waiting_) ++places[r].second;
        for (const auto& [id, p] : records_) {
            const Record& r = *p;
            const RequestId rid = id;
            const auto name = [rid] { return "request " + std::to_string(rid); };
            if (r.id != id) fail(name() + " is filed under another id");
            const auto place = places.find(&r);
            const bool in_running = place != places.end() && place->second.first == 1;
            const bool in_waiting = place != places.end() && place->second.second == 1;
            if (r.leader) {
                const auto l = records_.find(*r.leader);
                if (l == records_.end() || std::count(l->second->followers.begin(), l->second->followers.end(), id) != 1)
                    fail(name() + " waits for a leader that does not list it");
                if (in_running || in_waiting || r.kv) fail(name() + " is attached to a leader and also queued or holding blocks");
                ++attached;
                continue;
            }
            if (in_running == in_waiting) fail(name() + " is " + (in_running ? "both running and waiting" : "neither running nor waiting"));
            if (in_running != r.kv_running || in_running != r.kv.has_value()) fail(name() + " has KV state that does not match its queue");
            if (r.in_batch && !in_step_) fail(name() + " is marked in a batch outside a step");
            if (r.kv && r.kv->length() > r.tokens.size())
                fail(name() + " holds " + std::to_string(r.kv->length()) + " positions for " + std::to_string(r.tokens.size()) + " tokens");
            if (r.tokens.size() < r.prompt_len) fail(name() + " lost prompt tokens");
            running += in_running;
            waiting += in_waiting;
            if (in_running) slots += 1 + r.followers.size();
        }
        if (running != running_.size() || waiting != waiting_.size() || running + waiting + attached != records_.size())
            fail("the queues hold " + std::to_string(running_.size()) + " running and " + std::to_string(waiting_.size()) +
                 " waiting entries for " + std::to_string(records_.size()) + " requests");
        if (slots > config_.max_running)
            fail(std::to_string(slots) + " sequences hold running slots, the limit is " + std::to_string(config_.max_running));
        auto sorted = [](const auto& list) {
            return std::is_sorted(list.begin(), list.end(), [](const Record* a, const Record* b) { return Policy::before(a->rank, b->rank); });
        };
        if (!sorted(running_) || !sorted(waiting_)) fail("a queue is out of the policy's order");
        cache_.check_invariants();
        if (cache_.stats().sequences != running_.size())
            fail("the KV cache holds " + std::to_string(cache_.stats().sequences) + " sequences for " +
                 std::to_string(running_.size()) + " running requests");
    }

private:
    struct Record {
        RequestId id = 0;
        std::vector<std::int32_t> tokens;  // prompt, then generated tokens
        std::size_t prompt_len = 0;
        SequenceRank rank;
        std::optional<Sequence> kv;  // while running
        bool kv_running = false;     // in running_ (else in waiting_, or attached to a leader)
        bool in_batch = false;
        std::optional<RequestId> leader;   // a parallel sample waiting for this leader's prefill
        std::vector<RequestId> followers;  // this leader's parallel samples not forked yet
        std::size_t preemptions = 0;
        std::size_t prefix_skipped = 0;
    };

    Record& record(RequestId id) { return const_cast<Record&>(std::as_const(*this).record(id)); }
    const Record& record(RequestId id) const {
        const auto it = records_.find(id);
        if (it == records_.end()) throw invalid_argument("qlm: scheduler has no request " + std::to_string(id));
        return *it->second;
    }

    // Running sequences and the parallel samples that running leaders will fork.
    std::size_t slots_in_use() const noexcept {
        std::size_t n = running_.size();
        for (const Record* r : running_) n += r->followers.size();
        return n;
    }

    // Tokens of r not yet in its KV cache.
    static std::size_t pending(const Record& r) noexcept { return r.tokens.size() - (r.kv ? r.kv->length() : 0); }

    template <class List>
    static void insert_sorted(List& list, Record* r) {
        const auto by_rank = [](const Record* a, const Record* b) { return Policy::before(a->rank, b->rank); };
        if (list.empty() || by_rank(list.back(), r))
            list.push_back(r);  // the common case: a new arrival
        else
            list.insert(std::upper_bound(list.begin(), list.end(), r, by_rank), r);
    }
    void insert_waiting(Record* r) {
        r->kv_running = false;
        insert_sorted(waiting_, r);
    }

    void add_chunk(Record& r, std::size_t n) {
        const std::size_t start = r.kv->length();
        batch_.push_back({r.id, &*r.kv, std::span<const std::int32_t>(r.tokens).subspan(start, n), start, start + n == r.tokens.size(), {}});
        r.in_batch = true;
        const std::size_t prompt_part = start < r.prompt_len ? std::min(n, r.prompt_len - start) : 0;
        stats_.prompt_tokens_computed += prompt_part;
        stats_.decode_tokens_computed += n - prompt_part;
    }

    // Reserves blocks for running_[i] to hold `positions`, preempting running sequences after it in
    // policy order (youngest first) that are not in this step's batch. False if they do not suffice.
    bool make_room(std::size_t i, std::size_t positions) {
        Record& r = *running_[i];
        for (;;) {
            if (cache_.blocks_to_grow(*r.kv, positions) <= cache_.free_blocks()) {
                r.kv->reserve(positions);
                return true;
            }
            std::size_t v = running_.size();
            while (v > i + 1 && running_[v - 1]->in_batch) --v;
            if (v == i + 1) return false;
            preempt(v - 1);
        }
    }

    // Preemption by recomputation: running_[i] frees its blocks and waits again, in its old place
    // in the policy's order (ahead of everything that arrived after it), with all its tokens.
    void preempt(std::size_t i) {
        Record* r = running_[i];
        cache_.free_sequence(*r->kv);
        r->kv.reset();
        running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
        insert_waiting(r);
        ++r->preemptions;
        ++stats_.preemptions;
    }

    // Priority: while the head of the queue outranks the last running sequence and lacks slots or
    // blocks for its first chunk (plus one block for each running sequence's growth), preempt that one.
    void preempt_for_waiting() {
        while (!waiting_.empty() && !running_.empty()) {
            const Record& head = *waiting_.front();
            if (!Policy::outranks(head.rank, running_.back()->rank)) return;
            const std::size_t first = std::min(head.tokens.size(), config_.max_tokens_per_step);
            const bool slots = slots_in_use() + 1 + head.followers.size() <= config_.max_running;
            const bool blocks = cache_.free_blocks() >= cache_type::blocks_for(first) + running_.size();
            if (slots && blocks) return;
            preempt(running_.size() - 1);
        }
    }

    // Admits the head of the waiting queue with up to `budget` tokens of its prefill, after the
    // prefix cache's hit. Returns the tokens scheduled, or nullopt (nothing changed) when its blocks
    // are not free. StaticBatching reserves the whole prefill at admission (the batch runs to the end).
    std::optional<std::size_t> admit(Record& r, std::size_t budget) {
        Sequence kv = cache_.add_sequence();
        const std::size_t matched = config_.prefix_caching ? cache_.match_prefix(kv, r.tokens) : 0;
        const std::size_t n = std::min(r.tokens.size() - matched, budget);
        const std::size_t reserve = Policy::admits_while_running ? matched + n : r.tokens.size();
        if (cache_.blocks_to_grow(kv, reserve) > cache_.free_blocks()) {
            cache_.free_sequence(kv);
            return std::nullopt;
        }
        kv.reserve(reserve);
        waiting_.pop_front();
        r.kv = kv;
        r.kv_running = true;
        r.prefix_skipped += matched;
        stats_.prefix_skipped_tokens += matched;
        insert_sorted(running_, &r);
        if (n) add_chunk(r, n);
        return n;
    }

    cache_type& cache_;
    SchedulerConfig config_;
    std::unordered_map<RequestId, std::unique_ptr<Record>> records_;
    std::vector<Record*> running_;  // in policy order
    std::deque<Record*> waiting_;   // in policy order
    std::vector<Chunk> batch_;
    std::uint64_t next_arrival_ = 0;
    bool in_step_ = false;
    SchedulerStats stats_;
};

}  // namespace qlm
