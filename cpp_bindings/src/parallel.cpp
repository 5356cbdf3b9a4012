#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

namespace evlm {
namespace {

class Helpers {
public:
    explicit Helpers(int count) {
        for (int i = 0; i < count; ++i) threads_.emplace_back([this, i] { loop(i); });
    }
    ~Helpers() {
        {
            std::lock_guard<std::mutex> hold(lock_);
            stop_ = true;
        }
        wake_.notify_all();
        for (std::thread &t : threads_) t.join();
    }
    int size() const { return int(threads_.size()); }

    // Runs parts[0..helpers) on the helpers and returns once they are done.
    void run(int helpers, const std::function<void(int)> &part, const std::function<void()> &own) {
        {
            std::lock_guard<std::mutex> hold(lock_);
            part_ = &part;
            active_ = helpers;
            pending_ = helpers;
            error_ = nullptr;
            generation_.fetch_add(1);
        }
        wake_.notify_all();
        std::exception_ptr mine;
        try {
            own();
        } catch (...) {
            mine = std::current_exception();
        }
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);  // as in loop()
        while (pending_.load() != 0 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
        std::unique_lock<std::mutex> hold(lock_);
        done_.wait(hold, [&] { return pending_.load() == 0; });
        part_ = nullptr;
        if (mine) std::rethrow_exception(mine);
        if (error_) std::rethrow_exception(error_);
    }

private:
    // A helper that finished a part watches for the next one for a short while before it sleeps: an image's
    // passes come back to back, and waking a sleeping thread took 0.1-0.3 ms here (a virtual CPU going idle).
    void loop(int index) {
        unsigned long seen = 0;
        for (;;) {
            const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
            while (generation_.load() == seen && std::chrono::steady_clock::now() < until) std::this_thread::yield();
            std::unique_lock<std::mutex> hold(lock_);
            wake_.wait(hold, [&] { return stop_ || generation_.load() != seen; });
            if (stop_) return;
            seen = generation_.load();
            if (index >= active_) continue;
            const std::function<void(int)> *part = part_;
            hold.unlock();
            std::exception_ptr error;
            try {
                (*part)(index);
            } catch (...) {
                error = std::current_exception();
            }
            hold.lock();
            if (error && !error_) error_ = error;
            if (--pending_ == 0) done_.notify_one();
        }
    }

    std::vector<std::thread> threads_;
    std::mutex lock_;
    std::condition_variable wake_, done_;
    const std::function<void(int)> *part_ = nullptr;
    int active_ = 0;
    std::atomic<int> pending_{0};
    std::atomic<unsigned long> generation_{0};
    bool stop_ = false;
    std::exception_ptr error_;
};

std::mutex pool_lock;  // held by the caller that uses the helpers
std::unique_ptr<Helpers> pool;
pid_t pool_pid = 0;

}  // namespace

void parallel_for(int n, int threads, const std::function<void(int, int)> &fn) {
    const int parts = std::max(1, std::min(threads, n));
    std::unique_lock<std::mutex> hold(pool_lock, std::try_to_lock);
    if (parts == 1 || !hold.owns_lock()) {
        if (n > 0) fn(0, n);
        return;
    }
    // A forked child has the parent's pool object but none of its threads: it starts its own (the old object is
    // left alone, its threads do not exist here to be joined).
    if (pool && pool_pid != getpid()) (void)pool.release();
    if (!pool || pool->size() < parts - 1) {
        pool.reset();
        pool = std::make_unique<Helpers>(parts - 1);
        pool_pid = getpid();
    }
    auto range = [&](int i) { fn(int(int64_t(n) * i / parts), int(int64_t(n) * (i + 1) / parts)); };
    pool->run(parts - 1, range, [&] { range(parts - 1); });
}

}  // namespace evlm
