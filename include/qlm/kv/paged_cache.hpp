#pragma once
// KVCache<PageSize>: one pool of fixed-size blocks holding the keys and values of every sequence
// and layer, a block table per sequence, and prefix caching: full blocks keyed by a chained hash of
// their token ids, reference-counted, shared between sequences, copied before a shared block is
// written, and evicted least recently used. Single-threaded: the engine loop owns it.
// Layout, hashing, eviction and copy-on-write are described in docs/kv-cache.md.
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/kv/block_pool.hpp>
#include <qlm/kv/kv_view.hpp>
#include <qlm/kv/memory_budget.hpp>
#include <qlm/kv/pool_memory.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace qlm {

struct KVCacheConfig {
    std::size_t n_layer = 0;
    std::size_t n_embd = 0;
    std::size_t bytes = 0;  // budget for the key/value data (bookkeeping adds ~40 + 4·PageSize bytes a block)
    std::shared_ptr<KVPoolMemory> memory{};  // where the data lives; null: host memory
};

// Where a position's rows sit inside a block: [layer][K, V][slot][n_embd] floats. A position's key
// row for a layer is n_embd contiguous floats, and one layer's keys (or values) of all the block's
// positions form one contiguous PageSize x n_embd tile, the unit a paged attention kernel streams.
template <std::size_t PageSize>
struct KVBlockLayout {
    static constexpr std::size_t page_size = PageSize;
    std::size_t n_layer = 0;
    std::size_t n_embd = 0;

    constexpr std::size_t floats() const noexcept { return PageSize * n_layer * 2 * n_embd; }
    constexpr std::size_t bytes() const noexcept { return floats() * sizeof(float); }
    constexpr std::size_t key_offset(std::size_t layer, std::size_t slot) const noexcept {
        return (2 * layer * PageSize + slot) * n_embd;
    }
    constexpr std::size_t value_offset(std::size_t layer, std::size_t slot) const noexcept {
        return ((2 * layer + 1) * PageSize + slot) * n_embd;
    }
};

struct KVCacheStats {
    std::size_t blocks_total = 0;
    std::size_t blocks_free = 0;         // in the free list, cached ones included
    std::size_t blocks_cached = 0;       // registered in the prefix map, in use or free
    std::size_t blocks_cached_free = 0;  // cached and free: what the next allocations may evict
    std::size_t sequences = 0;
    std::size_t tokens_stored = 0;  // filled positions of referenced blocks (a shared block counts once)
    std::size_t token_slots = 0;    // PageSize x referenced blocks
    double utilisation = 1.0;       // tokens_stored / token_slots (1 when nothing is allocated)
    double fragmentation = 0.0;     // 1 - utilisation: slots allocated but empty
    std::uint64_t prefix_queries = 0;       // match_prefix calls
    std::uint64_t prefix_query_tokens = 0;  // prompt tokens they were asked about
    std::uint64_t prefix_hit_tokens = 0;    // prompt tokens they found cached
    std::uint64_t evictions = 0;            // cached blocks taken for reuse
    std::uint64_t cow_copies = 0;           // shared blocks copied before a write

    double prefix_hit_rate() const noexcept {
        return prefix_query_tokens ? static_cast<double>(prefix_hit_tokens) / static_cast<double>(prefix_query_tokens) : 0.0;
    }
};

template <std::size_t PageSize = 16, BlockHasher Hasher = ChainedBlockHash>
    requires(PageSize > 0)
class KVCache {
    using BlockId = detail::BlockId;
    struct SequenceState;

public:
    static constexpr std::size_t page_size = PageSize;

    // A handle to one sequence in the cache: the model's view of its keys and values (KVSequence).
    // Copyable and cheap; it stays valid until free_sequence(), after which the cache refuses it.
    class Sequence {
    public:
        Sequence() = default;

        float* key(std::size_t layer, std::size_t pos) noexcept { return cache_->key_row(id_, layer, pos); }
        float* value(std::size_t layer, std::size_t pos) noexcept { return cache_->value_row(id_, layer, pos); }
        const float* key(std::size_t layer, std::size_t pos) const noexcept { return cache_->key_row(id_, layer, pos); }
        const float* value(std::size_t layer, std::size_t pos) const noexcept { return cache_->value_row(id_, layer, pos); }

        std::size_t length() const noexcept { return cache_->seqs_[id_].length; }
        // Positions this sequence could grow to now (its blocks plus the free ones, less copies it would need).
        std::size_t capacity() const noexcept { return cache_->capacity(cache_->seqs_[id_]); }
        // Makes positions [0, positions) writable: copies shared blocks about to be written, takes new
        // blocks. Throws qlm::capacity_error, changing nothing, when the pool cannot supply them.
        void reserve(std::size_t positions) { cache_->reserve(*this, positions); }
        void set_length(std::size_t positions) { cache_->set_length(*this, positions); }

        std::span<const std::uint32_t> block_table() const noexcept { return cache_->seqs_[id_].table; }
        std::uint32_t id() const noexcept { return id_; }

    private:
        friend class KVCache;
        Sequence(KVCache* cache, std::uint32_t id, std::uint32_t generation) noexcept
            : cache_(cache), id_(id), generation_(generation) {}

        KVCache* cache_ = nullptr;
        std::uint32_t id_ = 0;
        std::uint32_t generation_ = 0;
    };

    explicit KVCache(const KVCacheConfig& config)
        : layout_{validated(config).n_layer, config.n_embd}, pool_(blocks_in_budget(config)),
          memory_(config.memory ? config.memory : std::make_shared<HostPoolMemory>()),
          storage_(memory_->allocate(pool_.size() * layout_.bytes()), StorageFree{memory_.get()}) {}
    // Sequence handles point at the cache: it stays where it was made.
    KVCache(const KVCache&) = delete;
    KVCache& operator=(const KVCache&) = delete;

    static constexpr std::size_t blocks_for(std::size_t positions) noexcept { return (positions + PageSize - 1) / PageSize; }

    const KVBlockLayout<PageSize>& layout() const noexcept { return layout_; }
    std::size_t total_blocks() const noexcept { return pool_.size(); }
    std::size_t free_blocks() const noexcept { return pool_.free_count(); }
    bool can_allocate(std::size_t n_blocks) const noexcept { return n_blocks <= pool_.free_count(); }
    std::size_t bytes() const noexcept { return pool_.size() * layout_.bytes(); }
    // Block b's data, laid out as layout() says (for kernels that walk block tables).
    float* block_data(std::uint32_t b) noexcept { return data() + b * layout_.floats(); }
    const float* block_data(std::uint32_t b) const noexcept { return data() + b * layout_.floats(); }

    Sequence add_sequence() {
        std::uint32_t id;
        if (!free_ids_.empty()) {
            id = free_ids_.back();
            free_ids_.pop_back();
        } else {
            id = static_cast<std::uint32_t>(seqs_.size());
            free_ids_.reserve(seqs_.size() + 1);  // so that free_sequence() cannot throw
            seqs_.emplace_back();
        }
        seqs_[id].live = true;
        return Sequence(this, id, seqs_[id].generation);
    }

    // Returns the sequence's blocks (it ended or is preempted) and retires the handle. Blocks go back
    // last first, so a sequence's tail blocks are evicted before the prefix blocks others may share.
    void free_sequence(const Sequence& seq) {
        SequenceState& s = state(seq);
        for (auto it = s.table.rbegin(); it != s.table.rend(); ++it) pool_.release(*it);
        const std::uint32_t generation = s.generation + 1;
        s = SequenceState{};
        s.generation = generation;
        free_ids_.push_back(seq.id_);
    }

    // A new sequence sharing all of parent's filled blocks (parallel sampling, beam search). The
    // first of the two to write into a shared partial block gets its own copy.
    Sequence fork(const Sequence& parent) {
        const SequenceState& p = state(parent);
        std::vector<BlockId> table(p.table.begin(), p.table.begin() + static_cast<std::ptrdiff_t>(blocks_for(p.length)));
        std::vector<ChainLink> chain = p.chain;
        const std::size_t length = p.length;
        const Sequence child = add_sequence();
        SequenceState& c = seqs_[child.id_];
        c.table = std::move(table);
        c.chain = std::move(chain);
        c.length = length;
        for (const BlockId b : c.table) pool_.acquire(b);
        return child;
    }

    // Free blocks that reserve(positions) would take (new blocks plus copies of shared ones).
    std::size_t blocks_to_grow(const Sequence& seq, std::size_t positions) const {
        return grow_cost(state(seq), positions);
    }

    // Attaches the cached blocks that hold a prefix of `prompt` to a new, empty sequence and returns
    // how many prompt tokens they cover: a multiple of PageSize, and never the whole prompt (the last
    // token is always recomputed, for its logits).
    std::size_t match_prefix(const Sequence& seq, std::span<const std::int32_t> prompt) {
        SequenceState& s = state(seq);
        if (s.length != 0 || !s.table.empty())
            throw invalid_argument("qlm: match_prefix needs a new, empty sequence; sequence " + std::to_string(seq.id_) +
                                   " holds " + std::to_string(s.length) + " positions in " + std::to_string(s.table.size()) +
                                   " blocks");
        const std::size_t candidates = prompt.empty() ? 0 : (prompt.size() - 1) / PageSize;
        s.table.reserve(candidates);  // so that nothing below throws once blocks are acquired
        s.chain.reserve(candidates);
        ++prefix_queries_;
        prefix_query_tokens_ += prompt.size();
        for (std::size_t j = 0; j < candidates; ++j) {
            const auto tokens = prompt.subspan(j * PageSize, PageSize);
            const ChainLink parent = j ? s.chain.back() : ChainLink{};
            const std::uint64_t key = hasher_(parent.key, tokens);
            const auto block = pool_.lookup(key, parent.id, tokens);
            if (!block) break;
            pool_.acquire(*block);
            s.table.push_back(*block);
            s.chain.push_back({key, pool_.cache_id(*block)});
        }
        s.length = s.table.size() * PageSize;
        prefix_hit_tokens_ += s.length;
        return s.length;
    }

    // Registers the sequence's full blocks not registered yet in the prefix map. `tokens` are the
    // sequence's token ids (prompt and generated) from position 0, at least length() of them.
    void commit_full_blocks(const Sequence& seq, std::span<const std::int32_t> tokens) {
        SequenceState& s = state(seq);
        if (tokens.size() < s.length)
            throw invalid_argument("qlm: commit_full_blocks needs the token ids of all " + std::to_string(s.length) +
                                   " positions of sequence " + std::to_string(seq.id_) + ", got " + std::to_string(tokens.size()));
        for (std::size_t j = s.chain.size(); j < s.length / PageSize; ++j) {
            const auto block_tokens = tokens.subspan(j * PageSize, PageSize);
            const ChainLink parent = j ? s.chain.back() : ChainLink{};
            const std::uint64_t key = hasher_(parent.key, block_tokens);
            s.chain.push_back({key, pool_.register_block(s.table[j], key, parent.id, block_tokens)});
        }
    }

    KVCacheStats stats() const {
        KVCacheStats st;
        st.blocks_total = pool_.size();
        st.blocks_free = pool_.free_count();
        st.blocks_cached = pool_.registered_count();
        std::vector<std::size_t> fill(pool_.size(), 0);
        for (const SequenceState& s : seqs_) {
            if (!s.live) continue;
            ++st.sequences;
            for (std::size_t j = 0; j < s.table.size(); ++j) fill[s.table[j]] = std::max(fill[s.table[j]], filled(s, j));
        }
        for (BlockId b = 0; b < pool_.size(); ++b) {
            st.tokens_stored += fill[b];
            if (pool_.refcount(b) == 0 && pool_.registered(b)) ++st.blocks_cached_free;
        }
        st.token_slots = (st.blocks_total - st.blocks_free) * PageSize;
        if (st.token_slots) st.utilisation = static_cast<double>(st.tokens_stored) / static_cast<double>(st.token_slots);
        st.fragmentation = 1.0 - st.utilisation;
        st.prefix_queries = prefix_queries_;
        st.prefix_query_tokens = prefix_query_tokens_;
        st.prefix_hit_tokens = prefix_hit_tokens_;
        st.evictions = pool_.counters().evictions;
        st.cow_copies = cow_copies_;
        return st;
    }

    // Every block is free xor referenced, reference counts equal block-table references, the free
    // list is a proper list, the prefix map and the registered blocks agree, and each sequence's
    // blocks cover its length. Throws qlm::error naming the first broken invariant.
    void check_invariants() const {
        std::vector<std::uint32_t> references(pool_.size(), 0);
        std::size_t live = 0;
        for (std::size_t id = 0; id < seqs_.size(); ++id) {
            const SequenceState& s = seqs_[id];
            if (!s.live) continue;
            ++live;
            if (s.table.size() < blocks_for(s.length) || s.chain.size() > s.length / PageSize)
                throw error("qlm: KV cache invariant broken: sequence " + std::to_string(id) + " of length " +
                            std::to_string(s.length) + " has " + std::to_string(s.table.size()) + " blocks and " +
                            std::to_string(s.chain.size()) + " committed");
            for (const BlockId b : s.table) {
                if (b >= pool_.size())
                    throw error("qlm: KV cache invariant broken: sequence " + std::to_string(id) + " references block " +
                                std::to_string(b) + " of " + std::to_string(pool_.size()));
                ++references[b];
            }
        }
        if (live + free_ids_.size() != seqs_.size())
            throw error("qlm: KV cache invariant broken: " + std::to_string(live) + " live and " + std::to_string(free_ids_.size()) +
                        " free sequence ids of " + std::to_string(seqs_.size()));
        pool_.check_invariants(references);
    }

private:
    // Key and cache entry id of a committed full block: the parent of the sequence's next block.
    struct ChainLink {
        std::uint64_t key = 0;
        std::uint64_t id = 0;
    };
    struct SequenceState {
        std::vector<BlockId> table;
        std::vector<ChainLink> chain;  // one per leading full block registered (or found) in the prefix map
        std::size_t length = 0;
        std::uint32_t generation = 0;
        bool live = false;
    };

    static const KVCacheConfig& validated(const KVCacheConfig& config) {
        if (config.n_layer == 0 || config.n_embd == 0)
            throw invalid_argument("qlm: a KV cache needs n_layer and n_embd > 0, got " + std::to_string(config.n_layer) +
                                   " and " + std::to_string(config.n_embd));
        return config;
    }
    static std::size_t blocks_in_budget(const KVCacheConfig& config) {
        const KVBlockLayout<PageSize> layout{config.n_layer, config.n_embd};
        const std::size_t n = config.bytes / layout.bytes();
        if (n == 0)
            throw capacity_error("qlm: a KV cache budget of " + std::to_string(config.bytes) + " bytes holds no block: one block of " +
                                 std::to_string(PageSize) + " positions x " + std::to_string(config.n_layer) + " layers x K,V x " +
                                 std::to_string(config.n_embd) + " floats takes " + std::to_string(layout.bytes()) + " bytes");
        return n;
    }

    float* data() const noexcept { return static_cast<float*>(storage_.get()); }
    float* block_of(std::uint32_t id, std::size_t pos) const noexcept {
        return data() + static_cast<std::size_t>(seqs_[id].table[pos / PageSize]) * layout_.floats();
    }
    float* key_row(std::uint32_t id, std::size_t layer, std::size_t pos) const noexcept {
        return block_of(id, pos) + layout_.key_offset(layer, pos % PageSize);
    }
    float* value_row(std::uint32_t id, std::size_t layer, std::size_t pos) const noexcept {
        return block_of(id, pos) + layout_.value_offset(layer, pos % PageSize);
    }

    SequenceState& state(const Sequence& seq) {
        return const_cast<SequenceState&>(std::as_const(*this).state(seq));
    }
    const SequenceState& state(const Sequence& seq) const {
        if (seq.cache_ != this || seq.id_ >= seqs_.size() || !seqs_[seq.id_].live || seqs_[seq.id_].generation != seq.generation_)
            throw invalid_argument("qlm: KV sequence handle " + std::to_string(seq.id_) +
                                   " does not name a live sequence of this cache (freed, or made by another cache)");
        return seqs_[seq.id_];
    }

    // Positions of block j that hold data.
    static std::size_t filled(const SequenceState& s, std::size_t j) noexcept {
        return s.length > j * PageSize ? std::min(PageSize, s.length - j * PageSize) : 0;
    }

    std::size_t grow_cost(const SequenceState& s, std::size_t positions) const noexcept {
        if (positions <= s.length) return 0;
        const std::size_t want = blocks_for(positions), have = s.table.size();
        std::size_t need = want > have ? want - have : 0;
        for (std::size_t j = s.length / PageSize; j < std::min(want, have); ++j) need += pool_.refcount(s.table[j]) > 1;
        return need;
    }

    std::size_t capacity(const SequenceState& s) const noexcept {
        std::size_t free = pool_.free_count();
        for (std::size_t j = s.length / PageSize; j < s.table.size(); ++j) {
            if (pool_.refcount(s.table[j]) == 1) continue;
            if (free == 0) return std::max(s.length, j * PageSize);  // block j cannot be copied
            --free;
        }
        return (s.table.size() + free) * PageSize;
    }

    void reserve(const Sequence& seq, std::size_t positions) {
        SequenceState& s = state(seq);
        if (positions <= s.length) return;
        const std::size_t need = grow_cost(s, positions);
        if (need > pool_.free_count())
            throw capacity_error("qlm: KV cache full: growing sequence " + std::to_string(seq.id_) + " from " + std::to_string(s.length) +
                                 " to " + std::to_string(positions) + " positions needs " + std::to_string(need) + " free blocks of " +
                                 std::to_string(PageSize) + " positions, " + std::to_string(pool_.free_count()) + " of " +
                                 std::to_string(pool_.size()) + " are free");
        const std::size_t want = blocks_for(positions);
        s.table.reserve(want);  // so that nothing below throws once blocks are taken
        for (std::size_t j = s.length / PageSize; j < std::min(want, s.table.size()); ++j) make_writable(s, j);
        while (s.table.size() < want) s.table.push_back(pool_.allocate());
    }

    // Block j is about to be written: a shared block is replaced by a private copy of its filled
    // positions; a private block that is cached leaves the prefix map (its content will change).
    void make_writable(SequenceState& s, std::size_t j) {
        const BlockId old = s.table[j];
        if (pool_.refcount(old) > 1) {
            const BlockId copy = pool_.allocate();
            const std::size_t n = filled(s, j) * layout_.n_embd;
            for (std::size_t seg = 0; seg < 2 * layout_.n_layer; ++seg)
                memory_->copy(block_data(copy) + seg * PageSize * layout_.n_embd, block_data(old) + seg * PageSize * layout_.n_embd,
                              n * sizeof(float));
            pool_.release(old);
            s.table[j] = copy;
            ++cow_copies_;
        } else if (pool_.registered(old)) {
            pool_.unregister(old);
        }
    }

    void set_length(const Sequence& seq, std::size_t positions) {
        SequenceState& s = state(seq);
        if (positions > s.table.size() * PageSize)
            throw invalid_argument("qlm: set_length(" + std::to_string(positions) + ") on sequence " + std::to_string(seq.id_) +
                                   " beyond its " + std::to_string(s.table.size() * PageSize) + " reserved positions (reserve first)");
        s.length = positions;
        if (s.chain.size() > positions / PageSize) s.chain.resize(positions / PageSize);
    }

    KVBlockLayout<PageSize> layout_;
    detail::BlockPool<PageSize, Hasher> pool_;
    struct StorageFree {
        KVPoolMemory* memory;
        void operator()(void* p) const noexcept { memory->deallocate(p); }
    };
    std::shared_ptr<KVPoolMemory> memory_;
    std::unique_ptr<void, StorageFree> storage_;
    std::vector<SequenceState> seqs_;
    std::vector<std::uint32_t> free_ids_;
    [[no_unique_address]] Hasher hasher_{};
    std::uint64_t prefix_queries_ = 0, prefix_query_tokens_ = 0, prefix_hit_tokens_ = 0, cow_copies_ = 0;
};

static_assert(KVSequence<KVCache<>::Sequence>);

}  // namespace qlm
