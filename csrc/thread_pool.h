// A parallel-for whose join never waits for a thread that took no work.
//
// Why not a plain OpenMP region: its closing barrier waits until EVERY team thread arrives. On a
// machine shared with other busy processes (the development box runs training jobs on both
// cores) a worker is often descheduled, and the caller then waits for its next time slice:
// measured 8-100 ms for a 0.5 ms product, on most calls. Here items are claimed from an atomic
// counter by whichever threads are running (the caller included), and the caller waits only
// for items that were claimed and are still running. A worker that wakes late finds nothing
// left and goes back to sleep; if no worker ever wakes (or the process forked and has none),
// the caller does all the items itself.
//
// The exception (set_use_openmp): when this extension shares its OpenMP runtime with torch (the
// Python backend checks: torch.set_num_threads reaches our omp_get_max_threads), an OpenMP team
// with the same dynamic claiming runs the items instead. torch's workers spin-wait after each of
// its parallel regions (the solver's sensing net runs between our products), so a team made of
// those very threads starts at once, where our own workers would compete with them for the cores:
// measured on this 2-vCPU machine, a torch matmul + our 1-bit gemm + gemm_t loop at 2 threads
// took 2.24-2.37 ms per iteration with the team against 2.60-2.70 with our pool (idle machine),
// 7.8-8.1 against 11.6-13.5 ms beside two training jobs.
//
// Lifetime: a job is shared (shared_ptr) between the caller and workers, so a late worker only
// ever touches the job's counters, never the caller's stack; it calls `fn` only after claiming
// an item, which cannot happen once the caller has returned (all items claimed and done).
// The pool is created on first use and deliberately never destroyed (no join at interpreter
// shutdown). Between jobs a worker polls for ~kSpinMicros (a solver calls products back to back,
// and a polling worker starts at once where a sleeping one waits to be scheduled), then sleeps
// on a condition variable.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace qgen {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

class ThreadPool {
public:
    using Fn = std::function<void(int64_t item, int slot)>;

    static ThreadPool& instance() {
        static ThreadPool* pool = new ThreadPool();  // leaked on purpose, see above
        return *pool;
    }

    // Calls fn(item, slot) for every item in [0, n) on up to `threads` threads. `slot` in
    // [0, threads) is unique among the threads running concurrently (per-thread scratch index);
    // the caller is slot 0.
    void parallel_for(int64_t n, int threads, const Fn& fn) {
        if (threads <= 1 || n <= 1) {
            for (int64_t i = 0; i < n; ++i) fn(i, 0);
            return;
        }
#ifdef _OPENMP
        // Not in a forked child: GNU OpenMP's team threads do not survive fork() and a team
        // there never starts (torch's own operators hang the same way); the own-worker path
        // below then runs every item on the caller, whose workers did not survive either.
        if (use_openmp_.load(std::memory_order_relaxed) &&
            ::getpid() == openmp_pid_.load(std::memory_order_relaxed)) {
            std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(threads)
            {
                const int slot = omp_get_thread_num();
                for (;;) {
                    const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
                    if (i >= n) break;
                    fn(i, slot);
                    (slot == 0 ? items_by_caller_ : items_by_workers_)
                        .fetch_add(1, std::memory_order_relaxed);
                }
            }
            return;
        }
#endif
        ensure_workers(threads - 1);
        auto job = std::make_shared<Job>();
        job->n = n;
        job->fn = &fn;
        job->max_slots = threads;
        {
            std::lock_guard<std::mutex> lk(mu_);
            job_ = job;
            generation_.fetch_add(1, std::memory_order_release);
        }
        cv_.notify_all();
        work(*job, 0);
        // Only items already claimed by running workers remain: wait for those.
        while (job->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
        std::lock_guard<std::mutex> lk(mu_);
        if (job_ == job) job_.reset();
    }

    // Run parallel_for's items on an OpenMP team instead of the pool's own workers (see the top
    // of this file); false without OpenMP. Returns whether it is now in effect.
    bool set_use_openmp(bool on) {
#ifdef _OPENMP
        openmp_pid_.store(::getpid(), std::memory_order_relaxed);
        use_openmp_.store(on, std::memory_order_relaxed);
        return on;
#else
        (void)on;
        return false;
#endif
    }
    bool uses_openmp() const { return use_openmp_.load(std::memory_order_relaxed); }

    // Diagnostics: how many items the caller and the workers ran since the pool started.
    int64_t items_by_caller() const { return items_by_caller_.load(); }
    int64_t items_by_workers() const { return items_by_workers_.load(); }

private:
    struct Job {
        std::atomic<int64_t> next{0};
        std::atomic<int64_t> done{0};
        std::atomic<int> slots{1};  // slot 0 is the caller's
        int64_t n = 0;
        int max_slots = 1;
        const Fn* fn = nullptr;
    };

    void work(Job& job, int slot) {
        for (;;) {
            const int64_t i = job.next.fetch_add(1, std::memory_order_relaxed);
            if (i >= job.n) return;
            (*job.fn)(i, slot);
            job.done.fetch_add(1, std::memory_order_release);
            (slot == 0 ? items_by_caller_ : items_by_workers_).fetch_add(1, std::memory_order_relaxed);
        }
    }

    void ensure_workers(int count) {
        std::lock_guard<std::mutex> lk(mu_);
        while (static_cast<int>(workers_.size()) < count)
            workers_.emplace_back([this] { worker_loop(); });
    }

    static constexpr int kSpinMicros = 200;

    void worker_loop() {
        uint64_t seen = 0;
        for (;;) {
            const auto t0 = std::chrono::steady_clock::now();
            for (int i = 0; generation_.load(std::memory_order_acquire) == seen; ++i) {
                if ((i & 255) == 255 && std::chrono::steady_clock::now() - t0 >
                                            std::chrono::microseconds(kSpinMicros))
                    break;
                cpu_relax();  // not yield(): under CFS that hands the core away for a slice
            }
            std::shared_ptr<Job> job;
            {
                std::unique_lock<std::mutex> lk(mu_);
                cv_.wait(lk, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
                seen = generation_.load(std::memory_order_relaxed);
                job = job_;
            }
            if (!job) continue;
            const int slot = job->slots.fetch_add(1, std::memory_order_relaxed);
            if (slot < job->max_slots) work(*job, slot);
        }
    }

    std::mutex mu_;
    std::condition_variable cv_;
    std::shared_ptr<Job> job_;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int64_t> items_by_caller_{0}, items_by_workers_{0};
    std::atomic<bool> use_openmp_{false};
    std::atomic<pid_t> openmp_pid_{0};  // the process that chose OpenMP teams
    std::vector<std::thread> workers_;
};

}  // namespace qgen
