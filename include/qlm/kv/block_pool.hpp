#pragma once
// The bookkeeping of a paged KV cache, apart from the key/value data itself: which blocks are free
// (one intrusive doubly linked list that is also the LRU order of cached prefix blocks), how many
// block-table entries reference each block, and the prefix cache (chained block hash -> block).
#include <qlm/core/error.hpp>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace qlm {

// Key of a full block: hash of the previous block's key (0 for the first block) and the block's token ids.
template <class H>
concept BlockHasher = std::default_initializable<H> &&
                      requires(const H& h, std::uint64_t parent, std::span<const std::int32_t> tokens) {
                          { h(parent, tokens) } -> std::same_as<std::uint64_t>;
                      };

namespace detail {

// splitmix64's finaliser: a bijection on 64 bits in which every input bit flips each output bit
// with probability close to 1/2.
constexpr std::uint64_t mix64(std::uint64_t x) noexcept {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

}  // namespace detail

// The default block key: every token passes through a full 64-bit mix, so a token change anywhere
// in the chain changes every later key. The hash is only an index: lookups compare token ids and
// parent blocks too, so a collision costs a cache miss, never wrong keys/values.
struct ChainedBlockHash {
    std::uint64_t operator()(std::uint64_t parent, std::span<const std::int32_t> tokens) const noexcept {
        constexpr std::uint64_t golden = 0x9e3779b97f4a7c15ull;
        std::uint64_t h = detail::mix64(parent + golden);
        for (const std::int32_t t : tokens) h = detail::mix64((h ^ static_cast<std::uint32_t>(t)) + golden);
        return detail::mix64(h ^ tokens.size());
    }
};
static_assert(BlockHasher<ChainedBlockHash>);

namespace detail {

using BlockId = std::uint32_t;
inline constexpr BlockId kNoBlock = std::numeric_limits<BlockId>::max();

// Intrusive doubly linked list over block indices [0, n): O(1) push at either end, pop at the
// head and unlink from the middle (a cached block taken back by a prefix hit).
class BlockList {
public:
    explicit BlockList(std::size_t n) : prev_(n, kNoBlock), next_(n, kNoBlock) {}

    std::size_t size() const noexcept { return size_; }
    BlockId front() const noexcept { return head_; }
    BlockId next(BlockId b) const noexcept { return next_[b]; }
    BlockId prev(BlockId b) const noexcept { return prev_[b]; }
    BlockId back() const noexcept { return tail_; }

    void push_back(BlockId b) noexcept {
        prev_[b] = tail_;
        next_[b] = kNoBlock;
        (tail_ == kNoBlock ? head_ : next_[tail_]) = b;
        tail_ = b;
        ++size_;
    }
    void push_front(BlockId b) noexcept {
        prev_[b] = kNoBlock;
        next_[b] = head_;
        (head_ == kNoBlock ? tail_ : prev_[head_]) = b;
        head_ = b;
        ++size_;
    }
    void remove(BlockId b) noexcept {
        (prev_[b] == kNoBlock ? head_ : next_[prev_[b]]) = next_[b];
        (next_[b] == kNoBlock ? tail_ : prev_[next_[b]]) = prev_[b];
        prev_[b] = next_[b] = kNoBlock;
        --size_;
    }
    BlockId pop_front() noexcept {
        const BlockId b = head_;
        remove(b);
        return b;
    }

private:
    std::vector<BlockId> prev_, next_;
    BlockId head_ = kNoBlock, tail_ = kNoBlock;
    std::size_t size_ = 0;
};

// Free list, reference counts and prefix map of n blocks of PageSize tokens.
// A block is either free (refcount 0, in the free list) or referenced by block tables (refcount > 0,
// not in the list). Independently, a *full* block may be registered in the prefix map; a registered
// block whose refcount drops to 0 stays registered while it waits in the free list, and is
// unregistered (evicted) only when it is popped for reuse.
template <std::size_t PageSize, BlockHasher Hasher>
class BlockPool {
public:
    struct Counters {
        std::uint64_t evictions = 0;  // registered blocks popped for reuse
    };

    explicit BlockPool(std::size_t n_blocks)
        : free_(n_blocks), refcount_(n_blocks, 0), meta_(n_blocks), tokens_(n_blocks * PageSize) {
        if (n_blocks == 0 || n_blocks >= kNoBlock)
            throw capacity_error("qlm: a KV block pool holds 1 to " + std::to_string(kNoBlock - 1) + " blocks, asked for " +
                                 std::to_string(n_blocks));
        for (BlockId b = 0; b < n_blocks; ++b) free_.push_back(b);
    }

    std::size_t size() const noexcept { return refcount_.size(); }
    std::size_t free_count() const noexcept { return free_.size(); }
    std::size_t registered_count() const noexcept { return map_.size(); }
    std::uint32_t refcount(BlockId b) const noexcept { return refcount_[b]; }
    bool registered(BlockId b) const noexcept { return meta_[b].id != 0; }
    std::uint64_t block_key(BlockId b) const noexcept { return meta_[b].key; }
    std::uint64_t cache_id(BlockId b) const noexcept { return meta_[b].id; }
    const Counters& counters() const noexcept { return counters_; }
    const BlockList& free_list() const noexcept { return free_; }

    // Takes the block at the head of the free list (refcount 1), evicting it from the prefix map
    // if it held a cached block. The caller checks free_count() first.
    BlockId allocate() noexcept {
        const BlockId b = free_.pop_front();
        if (registered(b)) {
            unregister(b);
            ++counters_.evictions;
        }
        refcount_[b] = 1;
        return b;
    }

    // One more block-table reference to b; a free (cached) block leaves the free list.
    void acquire(BlockId b) noexcept {
        if (refcount_[b]++ == 0) free_.remove(b);
    }

    // One reference fewer. At zero a cached block goes to the tail (most recently used, evicted
    // last); a block with nothing cached goes to the head, to be reused before any cached block.
    void release(BlockId b) noexcept {
        if (--refcount_[b] != 0) return;
        if (registered(b))
            free_.push_back(b);
        else
            free_.push_front(b);
    }

    // The cached block with this key whose tokens are `tokens` and whose parent block is the cache
    // entry `parent_id` (0: first block), if any. Comparing the parent entry, not its key, makes the
    // match exact along the whole chain: a hash collision anywhere cannot return another prefix.
    std::optional<BlockId> lookup(std::uint64_t key, std::uint64_t parent_id, std::span<const std::int32_t> tokens) const {
        const auto it = map_.find(key);
        if (it == map_.end() || !holds(it->second, parent_id, tokens)) return std::nullopt;
        return it->second;
    }

    // Registers full block b (key, parent entry, token ids) and returns its cache entry id. If a
    // block with the same content is already registered, b stays unregistered and that block's
    // entry id is returned (it stands for the same prefix). Any other entry under the key (a
    // collision, or a block whose parent was evicted) is replaced.
    std::uint64_t register_block(BlockId b, std::uint64_t key, std::uint64_t parent_id, std::span<const std::int32_t> tokens) {
        if (registered(b)) return meta_[b].id;
        const auto it = map_.find(key);
        if (it != map_.end()) {
            if (holds(it->second, parent_id, tokens)) return meta_[it->second].id;
            unregister(it->second);
        }
        map_.emplace(key, b);
        meta_[b] = {key, parent_id, ++last_id_};
        std::copy(tokens.begin(), tokens.end(), tokens_.begin() + static_cast<std::ptrdiff_t>(b * PageSize));
        return meta_[b].id;
    }

    // Drops b from the prefix map (it is about to be overwritten, or its key was taken).
    void unregister(BlockId b) {
        map_.erase(meta_[b].key);
        meta_[b] = {};
    }

    // Checks the pool against the block tables' reference counts (one entry per block); throws
    // qlm::error naming the first broken invariant.
    void check_invariants(std::span<const std::uint32_t> expected_refcounts) const {
        auto fail = [](const std::string& what) { throw error("qlm: KV block pool invariant broken: " + what); };
        const std::size_t n = size();
        if (expected_refcounts.size() != n)
            fail("expected " + std::to_string(n) + " reference counts, got " + std::to_string(expected_refcounts.size()));
        std::vector<bool> in_list(n, false);
        std::size_t walked = 0;
        BlockId prev = kNoBlock;
        for (BlockId b = free_.front(); b != kNoBlock; prev = b, b = free_.next(b)) {
            if (b >= n || in_list[b] || ++walked > n) fail("the free list revisits or leaves the pool at block " + std::to_string(b));
            if (free_.prev(b) != prev) fail("block " + std::to_string(b) + "'s back link does not point to its predecessor");
            in_list[b] = true;
        }
        if (free_.back() != prev) fail("the free list's tail is not its last block");
        if (walked != free_.size())
            fail("the free list holds " + std::to_string(walked) + " blocks, its size says " + std::to_string(free_.size()));
        for (BlockId b = 0; b < n; ++b) {
            const std::string name = "block " + std::to_string(b);
            if (refcount_[b] != expected_refcounts[b])
                fail(name + " has refcount " + std::to_string(refcount_[b]) + ", block tables reference it " +
                     std::to_string(expected_refcounts[b]) + " times");
            if (in_list[b] == (refcount_[b] != 0))
                fail(name + " is " + (in_list[b] ? "free" : "not free") + " with refcount " + std::to_string(refcount_[b]));
            if (registered(b)) {
                const auto it = map_.find(meta_[b].key);
                if (it == map_.end() || it->second != b) fail(name + " is registered but the prefix map does not lead to it");
            }
        }
        for (const auto& [key, b] : map_)
            if (b >= n || !registered(b) || meta_[b].key != key) fail("a prefix map entry leads to an unregistered block");
    }

private:
    struct Meta {
        std::uint64_t key = 0;
        std::uint64_t parent_id = 0;
        std::uint64_t id = 0;  // unique over the pool's life; 0: not registered
    };

    bool holds(BlockId b, std::uint64_t parent_id, std::span<const std::int32_t> tokens) const noexcept {
        return meta_[b].parent_id == parent_id &&
               std::equal(tokens.begin(), tokens.end(), tokens_.begin() + static_cast<std::ptrdiff_t>(b * PageSize));
    }

    BlockList free_;
    std::vector<std::uint32_t> refcount_;
    std::vector<Meta> meta_;
    std::vector<std::int32_t> tokens_;  // PageSize token ids a block, meaningful while registered
    std::unordered_map<std::uint64_t, BlockId> map_;
    std::uint64_t last_id_ = 0;
    Counters counters_;
};

}  // namespace detail
}  // namespace qlm
