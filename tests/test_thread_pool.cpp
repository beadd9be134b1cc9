// qlm::ThreadPool: sizes it refuses, and a system that refuses it threads.
#include <doctest/doctest.h>

#include <qlm/core/thread_pool.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <thread>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;  // ASan reserves terabytes of address space: an address-space limit breaks it
#else
constexpr bool kSanitized = false;
#endif

}  // namespace

TEST_CASE("a pool runs every index once, and refuses sizes beyond max_threads() before starting a thread") {
    qlm::ThreadPool pool(3);
    CHECK(pool.size() == 3);
    std::atomic<int> calls{0};
    pool.run_on_all([&](std::size_t) { ++calls; });
    CHECK(calls == 3);

    CHECK(qlm::ThreadPool::max_threads() >= 1024);
    CHECK_THROWS_WITH_AS(qlm::ThreadPool(qlm::ThreadPool::max_threads() + 1), doctest::Contains("threads is refused: at most"),
                         qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::ThreadPool(100000), qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::ThreadPool(std::numeric_limits<std::size_t>::max()), qlm::invalid_argument);  // was std::length_error
}

// Before: std::system_error escaped the constructor with joinable std::threads in workers_, and
// their destructors called std::terminate (exit 134) however the caller caught it.
TEST_CASE("a pool the system cannot start throws capacity_error and stops the threads it started" *
          doctest::skip(kSanitized)) {
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        std::signal(SIGABRT, SIG_DFL);  // die of std::terminate at once, not in doctest's crash handler
        alarm(60);
        // Room for a few thread stacks (8 MiB each by default), not for 999 of them.
        long pages = 0;
        if (FILE* f = std::fopen("/proc/self/statm", "r")) {
            if (std::fscanf(f, "%ld", &pages) != 1) pages = 0;
            std::fclose(f);
        }
        if (pages == 0) _exit(3);
        const rlim_t limit = static_cast<rlim_t>(pages) * static_cast<rlim_t>(sysconf(_SC_PAGESIZE)) + (32u << 20);
        const rlimit rl{limit, limit};
        if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(3);
        try {
            qlm::ThreadPool pool(1000);
            _exit(2);  // every thread started: the limit did not bite
        } catch (const qlm::capacity_error& e) {
            _exit(std::string(e.what()).find("cannot start thread") != std::string::npos ? 0 : 1);
        } catch (...) {
            _exit(1);
        }
    }
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));  // not killed by SIGABRT (std::terminate)
    CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("back-to-back loops hand every index over exactly once, and a worker's exception reaches the caller") {
    qlm::ThreadPool pool(3);
    std::atomic<std::uint64_t> sum{0};
    for (int loop = 0; loop < 20000; ++loop)
        pool.run_on_all([&](std::size_t t) { sum.fetch_add(t + 1, std::memory_order_relaxed); });
    CHECK(sum == 20000u * (1 + 2 + 3));
    CHECK_THROWS_WITH_AS(pool.run_on_all([](std::size_t t) {
        if (t == 2) throw qlm::invalid_argument("from worker 2");
    }),
                         "from worker 2", qlm::invalid_argument);
    std::atomic<int> after{0};
    pool.run_on_all([&](std::size_t) { ++after; });  // still usable, and the old error is gone
    CHECK(after == 3);
    // Workers that went to sleep (idle for a while) wake up for the next loop.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    pool.run_on_all([&](std::size_t) { ++after; });
    CHECK(after == 6);
}
