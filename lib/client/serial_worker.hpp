#pragma once
// A thread that runs jobs one at a time, in the order they were pushed. A folder download
// uses one to create, write and publish each group of files while its connection's thread
// receives the next group (client.cpp, get_receiver).

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace ftx::client {

class SerialWorker {
 public:
  // At most `max_queued` jobs wait (besides the one running): push() blocks beyond that, so
  // that a producer faster than the jobs cannot pile up work (and the memory it holds).
  explicit SerialWorker(std::size_t max_queued);
  // Runs the jobs still queued, then ends the thread.
  ~SerialWorker();
  SerialWorker(const SerialWorker&) = delete;
  SerialWorker& operator=(const SerialWorker&) = delete;

  // Queues `job`, which must not throw (it runs on the worker's thread, where nobody could
  // catch it: catch inside and report through what the job captured).
  void push(std::function<void()> job);
  // Blocks until every job pushed so far has finished.
  void drain();
  // Jobs pushed and not yet taken by the thread (the one running is not counted).
  std::size_t queued();

 private:
  void run();

  const std::size_t max_queued_;
  std::mutex mutex_;
  std::condition_variable work_;  // a job was queued, or stop_
  std::condition_variable idle_;  // a job was taken or finished: room in the queue, or drained
  std::deque<std::function<void()>> queue_;
  bool busy_ = false;
  bool stop_ = false;
  std::thread thread_;  // last: started once the members above exist
};

}  // namespace ftx::client
