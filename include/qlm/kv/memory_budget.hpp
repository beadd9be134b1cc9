#pragma once
// How many bytes the KV cache may take: a fixed budget, or a fraction of the memory the kernel
// says is available (/proc/meminfo MemAvailable, which counts reclaimable page cache as free).
#include <qlm/core/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

namespace qlm {

namespace detail {

// Bytes of the "MemAvailable: <n> kB" line of /proc/meminfo text.
inline std::size_t parse_mem_available(std::string_view meminfo, const std::string& source) {
    constexpr std::string_view field = "MemAvailable:";
    std::size_t at = 0;
    while (at < meminfo.size()) {
        const std::size_t eol = std::min(meminfo.find('\n', at), meminfo.size());
        const std::string_view line = meminfo.substr(at, eol - at);
        at = eol + 1;
        if (!line.starts_with(field)) continue;
        std::istringstream in{std::string(line.substr(field.size()))};
        std::uint64_t kib = 0;
        std::string unit, rest;
        if (!(in >> kib >> unit) || unit != "kB" || (in >> rest))
            throw format_error("qlm: " + source + ": expected \"MemAvailable: <number> kB\", found \"" + std::string(line) + "\"");
        return static_cast<std::size_t>(kib) * 1024;
    }
    throw format_error("qlm: " + source + " has no MemAvailable line (Linux 3.14 or later writes one)");
}

}  // namespace detail

// Bytes of memory available for new allocations without swapping.
inline std::size_t available_memory_bytes(const std::filesystem::path& meminfo = "/proc/meminfo") {
    std::ifstream in(meminfo);
    if (!in) throw io_error("qlm: cannot read " + meminfo.string() + " to size the KV cache");
    std::ostringstream text;
    text << in.rdbuf();
    return detail::parse_mem_available(text.str(), meminfo.string());
}

// A KV cache budget of `fraction` (0, 1] of the available memory (like vLLM's gpu_memory_utilization).
inline std::size_t kv_budget_from_available_memory(double fraction, const std::filesystem::path& meminfo = "/proc/meminfo") {
    if (!(fraction > 0.0 && fraction <= 1.0))
        throw invalid_argument("qlm: the KV cache's share of available memory must be in (0, 1], got " + std::to_string(fraction));
    return static_cast<std::size_t>(std::floor(static_cast<double>(available_memory_bytes(meminfo)) * fraction));
}

}  // namespace qlm
