#include <qlm/kv/block_pool.hpp>
#include <qlm/kv/memory_budget.hpp>
#include <qlm/kv/paged_cache.hpp>
#include <qlm/model/random_weights.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <random>
#include <set>

namespace {

using qlm_test::small_config;

qlm::KVCacheConfig config_for_blocks(std::size_t page_size, std::size_t n_layer, std::size_t n_embd, std::size_t blocks) {
    return {n_layer, n_embd, blocks * page_size * n_layer * 2 * n_embd * sizeof(float)};
}

// A recognisable value for element c of (tag, layer, pos): exact in float, keys positive, values negative.
float pattern(int tag, std::size_t layer, std::size_t pos, std::size_t c) {
    return static_cast<float>(tag * 1000000 + static_cast<int>(layer * 100000 + pos * 100 + c));
}

template <class Seq>
void fill(Seq& seq, std::size_t from, std::size_t to, int tag, std::size_t n_layer, std::size_t n_embd) {
    for (std::size_t l = 0; l < n_layer; ++l)
        for (std::size_t p = from; p < to; ++p)
            for (std::size_t c = 0; c < n_embd; ++c) {
                seq.key(l, p)[c] = pattern(tag, l, p, c);
                seq.value(l, p)[c] = -pattern(tag, l, p, c);
            }
}

// Whether positions [from, to) hold tag's pattern.
template <class Seq>
bool holds(const Seq& seq, std::size_t from, std::size_t to, int tag, std::size_t n_layer, std::size_t n_embd) {
    for (std::size_t l = 0; l < n_layer; ++l)
        for (std::size_t p = from; p < to; ++p)
            for (std::size_t c = 0; c < n_embd; ++c)
                if (seq.key(l, p)[c] != pattern(tag, l, p, c) || seq.value(l, p)[c] != -pattern(tag, l, p, c)) return false;
    return true;
}

// Grows seq to `to` positions filled with tag's pattern, as the model does.
template <class Seq>
void append(Seq& seq, std::size_t to, int tag, std::size_t n_layer, std::size_t n_embd) {
    seq.reserve(to);
    fill(seq, seq.length(), to, tag, n_layer, n_embd);
    seq.set_length(to);
}

std::vector<std::int32_t> iota_tokens(std::size_t n, std::int32_t first) {
    std::vector<std::int32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = first + static_cast<std::int32_t>(i);
    return t;
}

}  // namespace

TEST_CASE("block layout: each (layer, K/V, slot) row is n_embd contiguous floats, rows tile the block exactly once") {
    const qlm::KVBlockLayout<4> layout{3, 8};
    CHECK(layout.floats() == 4 * 3 * 2 * 8);
    std::vector<int> covered(layout.floats(), 0);
    for (std::size_t l = 0; l < 3; ++l)
        for (std::size_t s = 0; s < 4; ++s)
            for (std::size_t c = 0; c < 8; ++c) {
                ++covered[layout.key_offset(l, s) + c];
                ++covered[layout.value_offset(l, s) + c];
            }
    CHECK(std::all_of(covered.begin(), covered.end(), [](int n) { return n == 1; }));
    // One layer's keys of the block's positions are one tile: slot s+1 follows slot s.
    CHECK(layout.key_offset(1, 1) == layout.key_offset(1, 0) + 8);
    CHECK(layout.value_offset(1, 0) == layout.key_offset(1, 0) + 4 * 8);
}

TEST_CASE("the pool is sized from a byte budget") {
    const std::size_t block = 16 * 2 * 2 * 8 * sizeof(float);
    qlm::KVCache<16> cache({2, 8, 3 * block + block / 2});
    CHECK(cache.total_blocks() == 3);
    CHECK(cache.free_blocks() == 3);
    CHECK(cache.bytes() == 3 * block);
    CHECK(cache.layout().bytes() == block);
    CHECK_THROWS_AS(qlm::KVCache<16>({2, 8, block - 1}), qlm::capacity_error);
    CHECK_THROWS_AS(qlm::KVCache<16>({0, 8, block}), qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::KVCache<16>({2, 0, block}), qlm::invalid_argument);
}

TEST_CASE("the budget helper reads MemAvailable from /proc/meminfo") {
    const std::string text = "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:    2000000 kB\nBuffers: 1 kB\n";
    CHECK(qlm::detail::parse_mem_available(text, "meminfo") == 2000000ull * 1024);
    CHECK_THROWS_AS(qlm::detail::parse_mem_available("MemTotal: 5 kB\n", "meminfo"), qlm::format_error);
    CHECK_THROWS_AS(qlm::detail::parse_mem_available("MemAvailable: 5 MB\n", "meminfo"), qlm::format_error);
    CHECK_THROWS_AS(qlm::detail::parse_mem_available("MemAvailable: lots kB\n", "meminfo"), qlm::format_error);

    const auto dir = qlm_test::temp_dir("kv_meminfo");
    std::ofstream(dir / "meminfo") << text;
    CHECK(qlm::available_memory_bytes(dir / "meminfo") == 2000000ull * 1024);
    CHECK(qlm::kv_budget_from_available_memory(0.25, dir / "meminfo") == 500000ull * 1024);
    CHECK_THROWS_AS(qlm::kv_budget_from_available_memory(0.0, dir / "meminfo"), qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::kv_budget_from_available_memory(1.5, dir / "meminfo"), qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::available_memory_bytes(dir / "missing"), qlm::io_error);
    std::filesystem::remove_all(dir);
    if (std::filesystem::exists("/proc/meminfo")) CHECK(qlm::available_memory_bytes() > 0);
}

TEST_CASE("the default block hash separates single-token changes, order and parents") {
    const qlm::ChainedBlockHash h;
    const auto base = iota_tokens(16, 100);
    std::set<std::uint64_t> seen{h(0, base)};
    for (std::size_t i = 0; i < base.size(); ++i) {
        auto t = base;
        t[i] += 1;
        seen.insert(h(0, t));
        t = base;
        std::swap(t[i], t[(i + 1) % t.size()]);
        seen.insert(h(0, t));
    }
    for (std::uint64_t parent = 1; parent <= 16; ++parent) seen.insert(h(parent, base));
    CHECK(seen.size() == 1 + 16 + 16 + 16);
    CHECK(h(7, base) == h(7, base));
}

TEST_CASE("free block list: push at both ends, pop at the head, unlink from the middle") {
    qlm::detail::BlockList list(5);
    for (qlm::detail::BlockId b : {2u, 3u, 4u}) list.push_back(b);
    list.push_front(0);
    list.remove(3);
    list.push_back(1);
    std::vector<qlm::detail::BlockId> order;
    while (list.size()) order.push_back(list.pop_front());
    CHECK(order == std::vector<qlm::detail::BlockId>{0, 2, 4, 1});
    CHECK(list.front() == qlm::detail::kNoBlock);
    CHECK(list.back() == qlm::detail::kNoBlock);
}

TEST_CASE("a sequence takes blocks as it grows and gives them all back; lengths need not be multiples of PageSize") {
    constexpr std::size_t L = 2, E = 8;
    qlm::KVCache<4> cache(config_for_blocks(4, L, E, 8));
    auto seq = cache.add_sequence();
    CHECK(seq.length() == 0);
    CHECK(seq.capacity() == 32);
    seq.reserve(1);
    CHECK(seq.block_table().size() == 1);
    seq.reserve(4);
    CHECK(seq.block_table().size() == 1);
    seq.reserve(5);
    CHECK(seq.block_table().size() == 2);
    CHECK(cache.free_blocks() == 6);
    fill(seq, 0, 5, 1, L, E);
    seq.set_length(5);
    append(seq, 13, 1, L, E);
    CHECK(seq.length() == 13);
    CHECK(seq.block_table().size() == 4);
    CHECK(holds(seq, 0, 13, 1, L, E));
    // Positions 3 and 4 sit in different blocks; 4 and 7 in the same one, three rows apart.
    CHECK(seq.key(0, 7) == seq.key(0, 4) + 3 * E);
    CHECK(seq.value(1, 4) - seq.key(1, 4) == static_cast<std::ptrdiff_t>(4 * E));
    const auto st = cache.stats();
    CHECK(st.tokens_stored == 13);
    CHECK(st.token_slots == 16);
    CHECK(st.utilisation == doctest::Approx(13.0 / 16.0));
    CHECK(st.fragmentation == doctest::Approx(3.0 / 16.0));
    cache.check_invariants();

    cache.free_sequence(seq);
    CHECK(cache.free_blocks() == 8);
    CHECK(cache.stats().sequences == 0);
    CHECK(cache.stats().utilisation == 1.0);
    cache.check_invariants();
    CHECK_THROWS_AS(seq.reserve(1), qlm::invalid_argument);        // the handle is retired
    CHECK_THROWS_AS(cache.free_sequence(seq), qlm::invalid_argument);
    const auto again = cache.add_sequence();                         // reuses the id, not the handle
    CHECK(again.id() == seq.id());
    CHECK_THROWS_AS(seq.set_length(0), qlm::invalid_argument);
    qlm::KVCache<4> other(config_for_blocks(4, L, E, 1));
    CHECK_THROWS_AS(other.free_sequence(again), qlm::invalid_argument);
}

TEST_CASE("sequences growing in turn interleave their blocks and keep their own data") {
    constexpr std::size_t L = 3, E = 4;
    qlm::KVCache<4> cache(config_for_blocks(4, L, E, 16));
    std::vector<qlm::KVCache<4>::Sequence> seqs{cache.add_sequence(), cache.add_sequence(), cache.add_sequence()};
    const std::size_t target[3] = {17, 9, 21};
    for (std::size_t step = 0; step < 21; ++step)
        for (int s = 0; s < 3; ++s)
            if (seqs[s].length() < target[s]) append(seqs[s], seqs[s].length() + 1, s + 1, L, E);
    for (int s = 0; s < 3; ++s) CHECK(holds(seqs[s], 0, target[s], s + 1, L, E));
    CHECK(std::ranges::is_sorted(seqs[0].block_table()));
    CHECK(seqs[0].block_table()[1] - seqs[0].block_table()[0] > 1);  // the others' blocks lie between
    CHECK(cache.free_blocks() == 16 - 5 - 3 - 6);
    cache.check_invariants();
    for (auto& s : seqs) cache.free_sequence(s);
    CHECK(cache.free_blocks() == 16);
    cache.check_invariants();
}

TEST_CASE("growing past the pool throws capacity_error and changes nothing") {
    constexpr std::size_t L = 1, E = 4;
    qlm::KVCache<4> cache(config_for_blocks(4, L, E, 3));
    auto a = cache.add_sequence();
    append(a, 6, 1, L, E);
    CHECK(a.capacity() == 12);
    auto b = cache.add_sequence();
    CHECK(b.capacity() == 4);
    CHECK(cache.can_allocate(1));
    CHECK_FALSE(cache.can_allocate(2));
    CHECK(cache.blocks_to_grow(b, 5) == 2);
    CHECK_THROWS_AS(b.reserve(5), qlm::capacity_error);
    CHECK(b.block_table().empty());
    CHECK(cache.free_blocks() == 1);
    try {
        b.reserve(5);
    } catch (const qlm::capacity_error& e) {
        CHECK(std::string(e.what()).find("needs 2 free blocks") != std::string::npos);
        CHECK(std::string(e.what()).find("1 of 3 are free") != std::string::npos);
    }
    append(b, 4, 2, L, E);
    CHECK_THROWS_AS(a.reserve(9), qlm::capacity_error);
    CHECK(a.capacity() == 8);
    CHECK_THROWS_AS(a.set_length(9), qlm::invalid_argument);  // set_length past the reserved blocks
    CHECK(holds(a, 0, 6, 1, L, E));
    CHECK(holds(b, 0, 4, 2, L, E));
    cache.check_invariants();
}

TEST_CASE("prefix cache: hit, partial hit, miss; never the whole prompt; cached blocks outlive their sequence") {
    constexpr std::size_t L = 2, E = 4;
    qlm::KVCache<4> cache(config_for_blocks(4, L, E, 12));
    const auto prompt = iota_tokens(10, 1);
    auto a = cache.add_sequence();
    CHECK(cache.match_prefix(a, prompt) == 0);
    append(a, 10, 1, L, E);
    CHECK_THROWS_AS(cache.commit_full_blocks(a, std::span(prompt).first(9)), qlm::invalid_argument);
    cache.commit_full_blocks(a, prompt);
    CHECK(cache.stats().blocks_cached == 2);  // positions 0-7; the third block is partial
    CHECK_THROWS_AS(cache.match_prefix(a, prompt), qlm::invalid_argument);  // not a new sequence

    auto b = cache.add_sequence();
    CHECK(cache.match_prefix(b, prompt) == 8);
    CHECK(b.length() == 8);
    CHECK(b.block_table()[0] == a.block_table()[0]);
    CHECK(b.block_table()[1] == a.block_table()[1]);
    CHECK(holds(b, 0, 8, 1, L, E));
    append(b, 10, 2, L, E);  // b's own third block
    CHECK(b.block_table()[2] != a.block_table()[2]);
    CHECK(holds(a, 0, 10, 1, L, E));

    auto partial = prompt;
    partial[5] = 99;
    auto c = cache.add_sequence();
    CHECK(cache.match_prefix(c, partial) == 4);
    auto d = cache.add_sequence();
    CHECK(cache.match_prefix(d, iota_tokens(10, 2)) == 0);
    auto e = cache.add_sequence();
    CHECK(cache.match_prefix(e, std::span(prompt).first(8)) == 4);  // the last token is always recomputed
    auto f = cache.add_sequence();
    CHECK(cache.match_prefix(f, std::span(prompt).first(9)) == 8);
    auto g = cache.add_sequence();
    CHECK(cache.match_prefix(g, std::span<const std::int32_t>()) == 0);

    auto st = cache.stats();
    CHECK(st.prefix_queries == 7);
    CHECK(st.prefix_query_tokens == 10 + 10 + 10 + 10 + 8 + 9 + 0);
    CHECK(st.prefix_hit_tokens == 8 + 4 + 4 + 8);
    CHECK(st.prefix_hit_rate() == doctest::Approx(24.0 / 57.0));
    cache.check_invariants();

    for (auto* s : {&a, &b, &c, &d, &e, &f, &g}) cache.free_sequence(*s);
    st = cache.stats();
    CHECK(st.blocks_free == 12);
    CHECK(st.blocks_cached == 2);
    CHECK(st.blocks_cached_free == 2);
    cache.check_invariants();
    auto h = cache.add_sequence();  // cached blocks leave the free list again
    CHECK(cache.match_prefix(h, prompt) == 8);
    CHECK(cache.free_blocks() == 10);
    CHECK(holds(h, 0, 8, 1, L, E));
    cache.check_invariants();
}

TEST_CASE("commits after a sequence's blocks were computed twice keep one cached copy") {
    constexpr std::size_t L = 1, E = 4;
    qlm::KVCache<4> cache(config_for_blocks(4, L, E, 8));
    const auto prompt = iota_tokens(9, 5);
    auto a = cache.add_sequence(), b = cache.add_sequence();  // both miss: neither has committed yet
    CHECK(cache.match_prefix(a, prompt) == 0);
    CHECK(cache.match_prefix(b, prompt) == 0);
    append(a, 9, 1, L, E);
    append(b, 9, 2, L, E);
    cache.commit_full_blocks(a, prompt);
    cache.commit_full_blocks(b, prompt);
    CHECK(cache.stats().blocks_cached == 2);
    cache.free_sequence(a);
    auto c = cache.add_sequence();
    CHECK(cache.match_prefix(c, prompt) == 8);
    CHECK(holds(c, 0, 8, 1, L, E));  // a's blocks, the ones registered first
    cache.check_invariants();
}

namespace {
// A deliberately bad hash: the block's first token only, whatever the parent and other tokens.
struct FirstTokenHash {
    std::uint64_t operator()(std::uint64_t, std::span<const std::int32_t> tokens) const noexcept {
        return static_cast<std::uint32_t>(tokens[0]);
    }
};
}  // namespace

TEST_CASE("a hash collision costs a miss, never another prefix's keys and values") {
    constexpr std::size_t L = 1, E = 4;
    qlm::KVCache<4, FirstTokenHash> cache(config_for_blocks(4, L, E, 12));
    const std::vector<std::int32_t> x{1, 2, 3, 4, 5, 6, 7, 8, 0};
    const std::vector<std::int32_t> same_first{1, 9, 9, 9, 5, 6, 7, 8, 0};   // block 0 collides with x's
    const std::vector<std::int32_t> other_parent{2, 2, 2, 2, 5, 6, 7, 8, 0}; // block 1 = x's tokens, other prefix

    auto a = cache.add_sequence();
    append(a, 9, 1, L, E);
    cache.commit_full_blocks(a, x);
    auto b = cache.add_sequence();
    CHECK(cache.match_prefix(b, same_first) == 0);  // same key, tokens differ
    auto c = cache.add_sequence();
    append(c, 9, 3, L, E);
    cache.commit_full_blocks(c, other_parent);  // takes key "5" from x's second block
    auto d = cache.add_sequence();
    CHECK(cache.match_prefix(d, x) == 4);  // x's first block; the block under key 5 has another parent
    CHECK(holds(d, 0, 4, 1, L, E));
    auto e = cache.add_sequence();
    CHECK(cache.match_prefix(e, other_parent) == 8);
    CHECK(holds(e, 0, 8, 3, L, E));
    cache.check_invariants();
}

TEST_CASE("eviction takes uncached free blocks first, then cached ones least recently used; an evicted block is not found") {
    constexpr std::size_t L = 1, E = 4;
    qlm::KVCache<4> cache(config_for_blocks(4, L, E, 6));
    const auto pa = iota_tokens(9, 10), pb = iota_tokens(9, 50);
    auto a = cache.add_sequence(), b = cache.add_sequence();
    append(a, 9, 1, L, E);
    append(b, 9, 2, L, E);
    cache.commit_full_blocks(a, pa);
    cache.commit_full_blocks(b, pb);
    const std::vector<std::uint32_t> ta(a.block_table().begin(), a.block_table().end());
    const std::vector<std::uint32_t> tb(b.block_table().begin(), b.block_table().end());
    CHECK(cache.free_blocks() == 0);
    cache.free_sequence(a);  // a's blocks become older than b's
    cache.free_sequence(b);
    CHECK(cache.stats().blocks_cached_free == 4);

    auto c = cache.add_sequence();
    append(c, 8, 3, L, E);  // the two partial (uncached) blocks
    CHECK(std::set<std::uint32_t>(c.block_table().begin(), c.block_table().end()) == std::set<std::uint32_t>{ta[2], tb[2]});
    CHECK(cache.stats().evictions == 0);
    append(c, 9, 3, L, E);  // evicts a's second block: a's tail goes before a's first block and before b
    CHECK(c.block_table()[2] == ta[1]);
    CHECK(cache.stats().evictions == 1);
    CHECK(cache.stats().blocks_cached == 3);

    auto d = cache.add_sequence();
    CHECK(cache.match_prefix(d, pa) == 4);  // a's first block is still there, its second is gone
    auto e = cache.add_sequence();
    CHECK(cache.match_prefix(e, pb) == 8);
    CHECK(holds(e, 0, 8, 2, L, E));
    CHECK(holds(c, 0, 9, 3, L, E));
    cache.free_sequence(e);
    cache.free_sequence(d);  // d's block (a's first) is now the most recently used
    auto f = cache.add_sequence();
    append(f, 8, 4, L, E);
    CHECK(std::vector<std::uint32_t>(f.block_table().begin(), f.block_table().end()) == std::vector<std::uint32_t>{tb[1], tb[0]});
    CHECK(cache.stats().evictions == 3);
    auto g = cache.add_sequence();
    CHECK(cache.match_prefix(g, pb) == 0);
    CHECK(cache.match_prefix(cache.add_sequence(), pa) == 4);
    cache.check_invariants();
}

TEST_CASE("copy-on-write: a forked sequence copies a shared block before writing into it") {
    constexpr std::size_t L = 2, E = 4;
    qlm::KVCache<4> cache(config_for_blocks(4, L, E, 8));
    auto parent = cache.add_sequence();
    append(parent, 6, 1, L, E);
    parent.reserve(12);  // blocks past the length are not shared by a fork
    auto child = cache.fork(parent);
    CHECK(child.length() == 6);
    CHECK(child.block_table().size() == 2);
    CHECK(std::ranges::equal(child.block_table(), parent.block_table().first(2)));
    CHECK(child.key(1, 5) == parent.key(1, 5));
    CHECK(cache.blocks_to_grow(child, 7) == 1);  // the copy of the shared partial block
    CHECK(child.capacity() == (2 + 5 - 1) * 4);  // its blocks + the 5 free, less the copy
    cache.check_invariants();

    append(child, 7, 2, L, E);
    CHECK(cache.stats().cow_copies == 1);
    CHECK(child.block_table()[0] == parent.block_table()[0]);  // full blocks stay shared
    CHECK(child.block_table()[1] != parent.block_table()[1]);
    CHECK(holds(child, 0, 6, 1, L, E));  // the copy carries the filled positions
    CHECK(holds(child, 6, 7, 2, L, E));
    append(parent, 7, 3, L, E);  // parent's block 1 is private again: written in place
    CHECK(cache.stats().cow_copies == 1);
    CHECK(holds(parent, 6, 7, 3, L, E));
    CHECK(holds(child, 6, 7, 2, L, E));
    cache.check_invariants();

    auto at_boundary = cache.fork(child);  // child has 7 positions; fork and grow past 8
    append(child, 8, 2, L, E);
    CHECK(cache.stats().cow_copies == 2);
    auto grandchild = cache.fork(child);
    append(grandchild, 9, 4, L, E);  // position 8 starts a new block: nothing to copy
    CHECK(cache.stats().cow_copies == 2);
    CHECK(holds(grandchild, 0, 6, 1, L, E));
    CHECK(holds(at_boundary, 6, 7, 2, L, E));
    cache.check_invariants();
    for (auto* s : {&parent, &child, &at_boundary, &grandchild}) cache.free_sequence(*s);
    CHECK(cache.free_blocks() == 8);
    cache.check_invariants();
}

TEST_CASE("rewriting positions of a cached block: copied when shared, dropped from the prefix map when private") {
    constexpr std::size_t L = 1, E = 4;
    qlm::KVCache<4> cache(config_for_blocks(4, L, E, 8));
    const auto prompt = iota_tokens(9, 1);
    auto a = cache.add_sequence();
    append(a, 9, 1, L, E);
    cache.commit_full_blocks(a, prompt);
    auto b = cache.add_sequence();
    CHECK(cache.match_prefix(b, prompt) == 8);
    b.set_length(6);  // roll back into the shared, cached second block
    append(b, 8, 2, L, E);
    CHECK(cache.stats().cow_copies == 1);
    CHECK(holds(a, 0, 9, 1, L, E));
    CHECK(holds(b, 0, 6, 1, L, E));
    CHECK(holds(b, 6, 8, 2, L, E));
    cache.free_sequence(b);
    a.set_length(5);  // a alone holds its second block now
    append(a, 8, 3, L, E);
    CHECK(cache.stats().cow_copies == 1);
    CHECK(cache.stats().blocks_cached == 1);
    auto c = cache.add_sequence();
    CHECK(cache.match_prefix(c, prompt) == 4);
    cache.commit_full_blocks(a, prompt);  // a's new second block registers under the same key
    auto d = cache.add_sequence();
    CHECK(cache.match_prefix(d, prompt) == 8);
    CHECK(holds(d, 5, 8, 3, L, E));
    cache.check_invariants();
}

TEST_CASE("10,000 random operations keep the invariants, the data, and leave the pool fully free") {
    constexpr std::size_t L = 2, E = 2, P = 4, Blocks = 48;
    qlm::KVCache<P> cache(config_for_blocks(P, L, E, Blocks));
    std::mt19937_64 rng(42);
    auto uniform = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };

    // What each position must hold: a function of the token prefix, as real keys and values are.
    struct Live {
        qlm::KVCache<P>::Sequence seq;
        std::vector<std::int32_t> tokens;
        std::vector<std::uint64_t> prefix;  // rolling hash of tokens[0..p]
    };
    auto value_of = [](std::uint64_t prefix, std::size_t layer, std::size_t c) {
        return static_cast<float>((prefix >> 20) % 1000003) + static_cast<float>(layer * 2 + c) * 0.25f;
    };
    auto extend = [](Live& s, std::int32_t t) {
        s.prefix.push_back(qlm::detail::mix64((s.prefix.empty() ? 0 : s.prefix.back()) ^ static_cast<std::uint32_t>(t)));
        s.tokens.push_back(t);
    };
    auto write = [&](Live& s, std::size_t from, std::size_t to) {
        for (std::size_t p = from; p < to; ++p)
            for (std::size_t l = 0; l < L; ++l)
                for (std::size_t c = 0; c < E; ++c) {
                    s.seq.key(l, p)[c] = value_of(s.prefix[p], l, c);
                    s.seq.value(l, p)[c] = -value_of(s.prefix[p], l, c);
                }
    };
    auto intact = [&](const Live& s) {
        for (std::size_t p = 0; p < s.seq.length(); ++p)
            for (std::size_t l = 0; l < L; ++l)
                for (std::size_t c = 0; c < E; ++c)
                    if (s.seq.key(l, p)[c] != value_of(s.prefix[p], l, c) || s.seq.value(l, p)[c] != -value_of(s.prefix[p], l, c))
                        return false;
        return true;
    };
    // Grows s by n new tokens (from a 3-token alphabet, so prefixes repeat); false if the pool is short.
    auto grow = [&](Live& s, std::size_t n) {
        const std::size_t from = s.seq.length(), to = from + n;
        const std::size_t need = cache.blocks_to_grow(s.seq, to);
        CHECK((to <= s.seq.capacity()) == (need <= cache.free_blocks()));
        try {
            s.seq.reserve(to);
        } catch (const qlm::capacity_error&) {
            CHECK(need > cache.free_blocks());
            return false;
        }
        for (std::size_t i = 0; i < n; ++i) extend(s, static_cast<std::int32_t>(uniform(3)));
        write(s, from, to);
        s.seq.set_length(to);
        cache.commit_full_blocks(s.seq, s.tokens);
        return true;
    };

    std::vector<Live> live;
    std::size_t grown = 0, refused = 0, hits = 0;
    for (int op = 0; op < 10000; ++op) {
        const std::size_t kind = uniform(10);
        if (live.empty() || kind < 3) {  // a new request: match its prompt, prefill the rest
            Live s{cache.add_sequence(), {}, {}};
            std::vector<std::int32_t> prompt(1 + uniform(20));
            for (auto& t : prompt) t = static_cast<std::int32_t>(uniform(3));
            const std::size_t cached = cache.match_prefix(s.seq, prompt);
            hits += cached > 0;
            for (std::size_t i = 0; i < cached; ++i) extend(s, prompt[i]);
            CHECK(intact(s));
            const bool fits = cache.blocks_to_grow(s.seq, prompt.size()) <= cache.free_blocks();
            CHECK(fits == (s.seq.capacity() >= prompt.size()));
            if (fits) {
                s.seq.reserve(prompt.size());
                for (std::size_t i = cached; i < prompt.size(); ++i) extend(s, prompt[i]);
                write(s, cached, prompt.size());
                s.seq.set_length(prompt.size());
                cache.commit_full_blocks(s.seq, s.tokens);
                live.push_back(std::move(s));
            } else {
                cache.free_sequence(s.seq);  // refused at admission
                ++refused;
            }
        } else if (kind < 6) {
            Live& s = live[uniform(live.size())];
            if (grow(s, 1 + uniform(kind == 5 ? 9 : 2)))
                ++grown;
            else
                ++refused;
        } else if (kind < 8) {  // finish or preempt
            const std::size_t i = uniform(live.size());
            cache.free_sequence(live[i].seq);
            live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
        } else if (kind == 8) {  // fork, then both go on
            Live& parent = live[uniform(live.size())];
            Live child{cache.fork(parent.seq), parent.tokens, parent.prefix};
            live.push_back(std::move(child));
        } else {  // roll back a few positions, then regrow
            Live& s = live[uniform(live.size())];
            const std::size_t back = std::min(s.seq.length(), uniform(6));
            s.seq.set_length(s.seq.length() - back);
            s.tokens.resize(s.seq.length());
            s.prefix.resize(s.seq.length());
            grow(s, 1 + uniform(4));
        }
        cache.check_invariants();
        for (const Live& s : live) REQUIRE(intact(s));
    }
    const auto st = cache.stats();
    MESSAGE("grown " << grown << ", refused " << refused << ", prompts with cache hits " << hits << ", cow copies "
                     << st.cow_copies << ", evictions " << st.evictions);
    CHECK(hits > 100);
    CHECK(refused > 0);
    CHECK(st.cow_copies > 0);
    CHECK(st.evictions > 0);
    for (Live& s : live) cache.free_sequence(s.seq);
    CHECK(cache.free_blocks() == Blocks);
    CHECK(cache.stats().sequences == 0);
    cache.check_invariants();
}

// --- the model on paged sequences -------------------------------------------------------------

namespace {

struct Chunk {
    std::size_t seq, count;
};

// Runs the same steps on contiguous caches and on paged sequences (all_tokens logits) and
// checks every logit is bitwise identical.
template <class Paged>
void check_same_logits(const qlm::GPT2Model<qlm::DenseLinear>& model, qlm::ThreadPool& pool,
                       const std::vector<std::vector<std::int32_t>>& tokens, std::vector<typename Paged::Sequence>& paged,
                       const std::vector<std::vector<Chunk>>& steps) {
    const auto& cfg = model.config();
    std::vector<qlm::ContiguousKVCache> contiguous;
    for (std::size_t i = 0; i < paged.size(); ++i) contiguous.emplace_back(cfg.n_layer, cfg.n_positions, cfg.n_embd);
    qlm::ForwardWorkspace ws_c, ws_p;
    for (const auto& step : steps) {
        std::vector<qlm::SequenceChunk<qlm::ContiguousKVCache>> cc;
        std::vector<qlm::SequenceChunk<typename Paged::Sequence>> pc;
        for (const Chunk& ch : step) {
            const auto t = std::span(tokens[ch.seq]).subspan(contiguous[ch.seq].length(), ch.count);
            cc.push_back({&contiguous[ch.seq], t});
            pc.push_back({&paged[ch.seq], t});
        }
        model.forward(pool, std::span<const qlm::SequenceChunk<qlm::ContiguousKVCache>>(cc), ws_c, qlm::LogitsFor::all_tokens);
        model.forward(pool, std::span<const qlm::SequenceChunk<typename Paged::Sequence>>(pc), ws_p, qlm::LogitsFor::all_tokens);
        REQUIRE(ws_c.logit_rows.size() == ws_p.logit_rows.size());
        for (std::size_t r = 0; r < ws_c.logit_rows.size(); ++r) {
            const auto a = ws_c.logits_row(r), b = ws_p.logits_row(r);
            REQUIRE(std::memcmp(a.data(), b.data(), a.size_bytes()) == 0);
        }
        for (std::size_t i = 0; i < paged.size(); ++i) REQUIRE(paged[i].length() == contiguous[i].length());
    }
}

qlm::GPT2Model<qlm::DenseLinear> tiny_model() { return qlm::make_float_model(qlm::random_gpt2_weights(small_config(), 7)); }

}  // namespace

TEST_CASE_TEMPLATE("the model on paged sequences gives the contiguous cache's logits bit for bit", Paged, qlm::KVCache<4>,
                   qlm::KVCache<16>) {
    const auto model = tiny_model();
    const auto& cfg = model.config();
    qlm::ThreadPool pool(2);
    Paged cache(config_for_blocks(Paged::page_size, cfg.n_layer, cfg.n_embd, 64 / Paged::page_size * 3));
    std::vector<typename Paged::Sequence> seqs{cache.add_sequence(), cache.add_sequence(), cache.add_sequence()};
    std::vector<std::vector<std::int32_t>> tokens;
    for (std::size_t i = 0; i < 3; ++i) {
        auto t = qlm_test::token_stream(64, cfg.vocab_size);
        std::rotate(t.begin(), t.begin() + static_cast<std::ptrdiff_t>(11 * i), t.end());
        tokens.push_back(t);
    }
    // Chunked prefill of three prompts (13, 7 and 22 tokens) in two steps, then token-by-token decode
    // of all three in one batch until they hold 23, 17 and 30 positions.
    std::vector<std::vector<Chunk>> steps{{{0, 5}, {1, 7}, {2, 9}}, {{0, 8}, {2, 13}}};
    for (std::size_t len[3] = {13, 7, 22}; len[0] < 23 || len[1] < 17 || len[2] < 30;) {
        std::vector<Chunk> step;
        const std::size_t target[3] = {23, 17, 30};
        for (std::size_t i = 0; i < 3; ++i)
            if (len[i] < target[i]) {
                step.push_back({i, 1});
                ++len[i];
            }
        steps.push_back(step);
    }
    check_same_logits<Paged>(model, pool, tokens, seqs, steps);

    // The three sequences' blocks interleave in the pool.
    std::vector<std::pair<std::uint32_t, std::size_t>> owner;
    for (std::size_t i = 0; i < 3; ++i)
        for (const auto b : seqs[i].block_table()) owner.push_back({b, i});
    std::ranges::sort(owner);
    std::size_t switches = 0;
    for (std::size_t i = 1; i < owner.size(); ++i) switches += owner[i].second != owner[i - 1].second;
    CHECK(switches > 2);
    cache.check_invariants();
}

TEST_CASE("forked sequences decode on copied-on-write blocks with the logits of separate caches") {
    const auto model = tiny_model();
    const auto& cfg = model.config();
    qlm::ThreadPool pool(2);
    qlm::KVCache<4> cache(config_for_blocks(4, cfg.n_layer, cfg.n_embd, 32));
    const auto prompt = qlm_test::token_stream(10, cfg.vocab_size);  // ends inside a block

    // Paged: one prefill, then a fork; contiguous: the same prefill twice.
    auto parent = cache.add_sequence();
    qlm::ContiguousKVCache c0(cfg.n_layer, cfg.n_positions, cfg.n_embd), c1(cfg.n_layer, cfg.n_positions, cfg.n_embd);
    qlm::ForwardWorkspace ws_p, ws_c;
    model.forward(pool, parent, std::span(prompt), ws_p);
    model.forward(pool, c0, std::span(prompt), ws_c);
    model.forward(pool, c1, std::span(prompt), ws_c);
    auto child = cache.fork(parent);
    std::vector<qlm::KVCache<4>::Sequence> paged{parent, child};
    std::vector<qlm::ContiguousKVCache*> contiguous{&c0, &c1};

    for (std::int32_t step = 0; step < 6; ++step) {
        const std::int32_t next[2] = {static_cast<std::int32_t>(3 + step), static_cast<std::int32_t>(200 - step)};
        std::vector<qlm::SequenceChunk<qlm::KVCache<4>::Sequence>> pc;
        std::vector<qlm::SequenceChunk<qlm::ContiguousKVCache>> cc;
        for (std::size_t i = 0; i < 2; ++i) {
            pc.push_back({&paged[i], std::span(&next[i], 1)});
            cc.push_back({contiguous[i], std::span(&next[i], 1)});
        }
        model.forward(pool, std::span<const qlm::SequenceChunk<qlm::KVCache<4>::Sequence>>(pc), ws_p);
        model.forward(pool, std::span<const qlm::SequenceChunk<qlm::ContiguousKVCache>>(cc), ws_c);
        for (std::size_t r = 0; r < 2; ++r)
            REQUIRE(std::memcmp(ws_p.logits_row(r).data(), ws_c.logits_row(r).data(), ws_p.logits_row(r).size_bytes()) == 0);
    }
    CHECK(cache.stats().cow_copies == 1);  // the shared partial block (positions 8-11), by whichever wrote first
    CHECK(paged[0].block_table()[2] != paged[1].block_table()[2]);
    CHECK(paged[0].block_table()[1] == paged[1].block_table()[1]);
    cache.check_invariants();
}

TEST_CASE("a prompt whose prefix is cached skips it and gets the logits of a full prefill") {
    const auto model = tiny_model();
    const auto& cfg = model.config();
    qlm::ThreadPool pool(2);
    qlm::KVCache<4> cache(config_for_blocks(4, cfg.n_layer, cfg.n_embd, 32));
    const auto shared = qlm_test::token_stream(12, cfg.vocab_size);
    auto prompt_a = shared, prompt_b = shared;
    for (std::int32_t t : {1, 2, 3, 4, 5}) prompt_a.push_back(t);
    for (std::int32_t t : {9, 8, 7, 6, 5, 4}) prompt_b.push_back(t);

    // A is prefilled as [shared][its own tokens] and commits its full blocks.
    qlm::ForwardWorkspace ws;
    auto a = cache.add_sequence();
    CHECK(cache.match_prefix(a, prompt_a) == 0);
    model.forward(pool, a, std::span(prompt_a).first(12), ws);
    model.forward(pool, a, std::span(prompt_a).subspan(12), ws);
    cache.commit_full_blocks(a, prompt_a);

    // B finds the shared 12 tokens and runs only its own 6.
    auto b = cache.add_sequence();
    REQUIRE(cache.match_prefix(b, prompt_b) == 12);
    const auto paged = model.forward(pool, b, std::span(prompt_b).subspan(12), ws);
    const std::vector<float> from_cache(paged.begin(), paged.end());

    qlm::ContiguousKVCache c(cfg.n_layer, cfg.n_positions, cfg.n_embd);
    qlm::ForwardWorkspace ws_c;
    model.forward(pool, c, std::span(prompt_b).first(12), ws_c);
    const auto full = model.forward(pool, c, std::span(prompt_b).subspan(12), ws_c);
    CHECK(std::memcmp(from_cache.data(), full.data(), full.size_bytes()) == 0);
    cache.check_invariants();
}
