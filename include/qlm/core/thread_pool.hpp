#pragma once
// A fixed-size thread pool for data-parallel loops. The calling thread takes part in every loop.
// After a loop, workers poll for the next one for a while (a decode step runs dozens of short
// loops back to back) and then sleep on a condition variable: an idle pool uses no CPU.
#include <qlm/core/error.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace qlm {

class ThreadPool {
public:
    // The largest pool accepted: 1024 threads, or every hardware thread on a machine with more. A
    // compute pool wider than the machine only adds context switches; this bound exists to refuse
    // sizes that are mistakes (100000, SIZE_MAX) before they exhaust the process's threads.
    static std::size_t max_threads() noexcept {
        return std::max<std::size_t>(1024, std::thread::hardware_concurrency());
    }

    // threads = total parallelism including the caller; 0 means std::thread::hardware_concurrency().
    // Throws invalid_argument above max_threads(), and capacity_error (after stopping the threads it
    // started) when the system refuses to start one.
    explicit ThreadPool(std::size_t threads = 0) {
        if (threads == 0) threads = std::max<std::size_t>(1, std::thread::hardware_concurrency());
        if (threads > max_threads())
            throw invalid_argument("qlm: a thread pool of " + std::to_string(threads) + " threads is refused: at most " +
                                   std::to_string(max_threads()) + " (this machine has " +
                                   std::to_string(std::thread::hardware_concurrency()) + " hardware threads)");
        workers_.reserve(threads - 1);
        try {
            for (std::size_t i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
        } catch (const std::system_error& e) {
            stop_workers();
            throw capacity_error("qlm: cannot start thread " + std::to_string(workers_.size() + 2) + " of a pool of " +
                                 std::to_string(threads) + ": " + e.what());
        }
    }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;
    ~ThreadPool() { stop_workers(); }

    std::size_t size() const noexcept { return workers_.size() + 1; }

    // Calls fn(thread_index) once on each of size() threads and waits for all of them.
    // The hand-off is lock-free while the workers are polling (a decode step runs dozens of short
    // loops back to back: a mutex and a condition variable per loop cost more than small loops);
    // the mutex is taken only to wake workers that went to sleep, and to record an exception.
    void run_on_all(const std::function<void(std::size_t)>& fn) {
        if (workers_.empty()) {
            fn(0);
            return;
        }
        std::unique_lock loop_lock(loop_mutex_);  // one loop at a time per pool
        task_.store(&fn, std::memory_order_relaxed);
        pending_.store(workers_.size(), std::memory_order_relaxed);
        generation_.fetch_add(1, std::memory_order_seq_cst);  // publishes task_ and pending_
        if (sleeping_.load(std::memory_order_seq_cst) != 0) {
            std::lock_guard lock(mutex_);  // a sleeper is in wait() or about to re-check under the lock
            wake_.notify_all();
        }
        std::exception_ptr caller_error;
        try {
            fn(0);
        } catch (...) {
            caller_error = std::current_exception();
        }
        for (int i = 0; pending_.load(std::memory_order_acquire) != 0; ++i) {
            if (i < kSpinIterations) {
                pause();
            } else {  // a worker was descheduled (a busy machine): give the core away
                std::this_thread::yield();
            }
        }
        std::exception_ptr worker_error;
        {
            std::lock_guard lock(mutex_);
            worker_error = std::exchange(error_, nullptr);
        }
        if (caller_error) std::rethrow_exception(caller_error);
        if (worker_error) std::rethrow_exception(worker_error);
    }

    // Splits [0, n) into contiguous chunks, at most one per thread, each a multiple of `grain`
    // (except the last), and calls fn(begin, end) for each non-empty chunk.
    template <class F>
    void parallel_for(std::size_t n, std::size_t grain, F&& fn) {
        if (n == 0) return;
        grain = std::max<std::size_t>(1, grain);
        const std::size_t units = (n + grain - 1) / grain;
        const std::size_t threads = std::min(size(), units);
        if (threads <= 1) {
            fn(std::size_t{0}, n);
            return;
        }
        run_on_all([&](std::size_t t) {
            if (t >= threads) return;
            const std::size_t begin = std::min(n, (units * t / threads) * grain);
            const std::size_t end = std::min(n, (units * (t + 1) / threads) * grain);
            if (begin < end) fn(begin, end);
        });
    }

private:
    static constexpr int kSpinIterations = 4000;  // a few tens of microseconds

    void stop_workers() noexcept {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (auto& t : workers_) t.join();
    }

    static void pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }

    void worker_loop(std::size_t index) {
        std::size_t seen = 0;
        for (;;) {
            for (int i = 0; i < kSpinIterations && generation_.load(std::memory_order_acquire) == seen; ++i) pause();
            if (generation_.load(std::memory_order_acquire) == seen) {
                std::unique_lock lock(mutex_);
                sleeping_.fetch_add(1, std::memory_order_seq_cst);  // then re-check: run_on_all reads it after publishing
                wake_.wait(lock, [&] { return stopping_ || generation_.load(std::memory_order_seq_cst) != seen; });
                sleeping_.fetch_sub(1, std::memory_order_relaxed);
                if (stopping_) return;
            }
            seen = generation_.load(std::memory_order_acquire);
            try {
                (*task_.load(std::memory_order_relaxed))(index);
            } catch (...) {
                std::lock_guard lock(mutex_);
                if (!error_) error_ = std::current_exception();
            }
            pending_.fetch_sub(1, std::memory_order_release);
        }
    }

    std::vector<std::thread> workers_;
    std::mutex loop_mutex_;
    std::mutex mutex_;  // guards sleeping workers' wake-up, error_ and stopping_
    std::condition_variable wake_;
    std::atomic<const std::function<void(std::size_t)>*> task_{nullptr};
    std::atomic<std::size_t> pending_{0};
    std::atomic<std::size_t> generation_{0};
    std::atomic<std::size_t> sleeping_{0};
    std::exception_ptr error_;
    bool stopping_ = false;
};

}  // namespace qlm
