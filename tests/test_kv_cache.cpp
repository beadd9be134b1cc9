#include <qlm/kv/block_pool.hpp>
#include <qlm/kv/memory_budget.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <fstream>
#include <set>

namespace {

std::vector<std::int32_t> iota_tokens(std::size_t n, std::int32_t first) {
    std::vector<std::int32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = first + static_cast<std::int32_t>(i);
    return t;
}

}  // namespace

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
