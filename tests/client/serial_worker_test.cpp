// SerialWorker: the thread a folder download publishes its groups on.

#include "client/serial_worker.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

namespace ftx::client {
namespace {

TEST(SerialWorker, RunsJobsInOrderOnItsOwnThreadAndDrainWaitsForThemAll) {
  SerialWorker w(4);
  std::mutex m;
  std::vector<int> ran;
  std::atomic<bool> on_caller{false};
  const auto caller = std::this_thread::get_id();
  for (int i = 0; i < 200; ++i) {
    w.push([&, i] {
      if (std::this_thread::get_id() == caller) on_caller = true;
      const std::lock_guard lock(m);
      ran.push_back(i);
    });
  }
  w.drain();
  const std::lock_guard lock(m);  // drain() returned: every job has finished
  ASSERT_EQ(ran.size(), 200u);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(ran[static_cast<std::size_t>(i)], i);
  EXPECT_FALSE(on_caller);
}

TEST(SerialWorker, PushWaitsWhileTheQueueIsFull) {
  // One job may wait besides the one running: when job i starts, job i+1 may have been
  // pushed (and its push returned), job i+2 not yet. The first job holds the worker until
  // two pushes have returned, so that a queue without a bound would let the producer run
  // far ahead while it holds.
  constexpr int kJobs = 50;
  SerialWorker w(1);
  std::atomic<int> returned{0};
  std::atomic<int> worst{0};  // the most pushes that had returned when job i started, minus i
  for (int i = 0; i < kJobs; ++i) {
    w.push([&, i] {
      if (i == 0) {
        while (returned.load() < 2) std::this_thread::yield();
      }
      const int ahead = returned.load() - i;
      int seen = worst.load();
      while (ahead > seen && !worst.compare_exchange_weak(seen, ahead)) {
      }
    });
    returned.fetch_add(1);
  }
  w.drain();
  EXPECT_LE(worst.load(), 2);
  EXPECT_EQ(returned.load(), kJobs);
}

TEST(SerialWorker, QueuedCountsTheJobsNotYetTakenButNotTheOneRunning) {
  SerialWorker w(4);
  EXPECT_EQ(w.queued(), 0u);
  std::promise<void> started;
  std::promise<void> go;
  auto go_future = go.get_future();
  w.push([&] {
    started.set_value();
    go_future.wait();
  });
  started.get_future().wait();
  EXPECT_EQ(w.queued(), 0u) << "the running job is not queued";
  w.push([] {});
  w.push([] {});
  EXPECT_EQ(w.queued(), 2u);
  go.set_value();
  w.drain();
  EXPECT_EQ(w.queued(), 0u);
}

TEST(SerialWorker, DestructorRunsWhatIsStillQueued) {
  std::atomic<int> ran{0};
  {
    SerialWorker w(8);
    for (int i = 0; i < 8; ++i) w.push([&] { ran.fetch_add(1); });
  }
  EXPECT_EQ(ran.load(), 8);
}

}  // namespace
}  // namespace ftx::client
