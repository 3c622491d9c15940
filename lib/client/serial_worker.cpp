#include "client/serial_worker.hpp"

#include <utility>

namespace ftx::client {

SerialWorker::SerialWorker(std::size_t max_queued)
    : max_queued_(max_queued > 0 ? max_queued : 1), thread_([this] { run(); }) {}

SerialWorker::~SerialWorker() {
  {
    const std::lock_guard lock(mutex_);
    stop_ = true;
  }
  work_.notify_one();
  thread_.join();
}

void SerialWorker::push(std::function<void()> job) {
  std::unique_lock lock(mutex_);
  idle_.wait(lock, [&] { return queue_.size() < max_queued_; });
  queue_.push_back(std::move(job));
  lock.unlock();
  work_.notify_one();
}

void SerialWorker::drain() {
  std::unique_lock lock(mutex_);
  idle_.wait(lock, [&] { return queue_.empty() && !busy_; });
}

std::size_t SerialWorker::queued() {
  const std::lock_guard lock(mutex_);
  return queue_.size();
}

void SerialWorker::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    work_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stop_, and nothing left to run
    auto job = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    idle_.notify_all();  // room in the queue: a push() waiting for it goes on meanwhile
    job();
    job = nullptr;  // what it captured goes now, not when the next job replaces it
    lock.lock();
    busy_ = false;
    idle_.notify_all();
  }
}

}  // namespace ftx::client
