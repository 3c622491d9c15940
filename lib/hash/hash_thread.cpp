#include "hash/hash_thread.hpp"

#include <stdexcept>

namespace ftx::hash {

HashThread::HashThread(std::size_t slots, std::size_t slot_size) : slot_size_(slot_size) {
  if (slots < 2 || slot_size == 0) throw std::invalid_argument("HashThread needs two slots or more");
  for (std::size_t i = 0; i < slots; ++i) slots_.push_back(std::make_unique_for_overwrite<std::uint8_t[]>(slot_size));
  lengths_.assign(slots, 0);
  worker_ = std::thread([this] { run(); });
}

HashThread::~HashThread() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

std::span<std::uint8_t> HashThread::buffer() {
  std::unique_lock lock(mu_);
  // The slot handed out now is the one submitted `slots` buffers ago: reusable once hashed.
  // The caller's last buffer (head_ - 1) is not reused here, so it stays readable.
  cv_.wait(lock, [&] { return head_ - hashed_ < slots_.size(); });
  const std::size_t i = head_ % slots_.size();
  ++head_;
  return {slots_[i].get(), slot_size_};
}

void HashThread::submit(std::size_t n) {
  {
    std::lock_guard lock(mu_);
    if (queued_ + 1 != head_) throw std::logic_error("HashThread::submit without buffer()");
    lengths_[queued_ % slots_.size()] = std::min(n, slot_size_);
    ++queued_;
  }
  cv_.notify_all();
}

Digest HashThread::finish() {
  std::unique_lock lock(mu_);
  if (queued_ != head_) throw std::logic_error("HashThread::finish with a buffer not submitted");
  cv_.wait(lock, [&] { return hashed_ == queued_; });
  // The worker is idle until the next submit: sha_ is ours for this moment.
  return sha_.finish();
}

void HashThread::reset() {
  std::unique_lock lock(mu_);
  if (queued_ != head_) {
    lengths_[queued_ % slots_.size()] = 0;  // the buffer handed out: nothing to hash
    queued_ = head_;
    cv_.notify_all();
  }
  cv_.wait(lock, [&] { return hashed_ == queued_; });
  sha_.finish();
}

void HashThread::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || hashed_ < queued_; });
    if (stop_) return;
    const std::size_t i = hashed_ % slots_.size();
    const std::span<const std::uint8_t> data(slots_[i].get(), lengths_[i]);
    lock.unlock();  // hash without the lock: the producer fills other slots meanwhile
    sha_.update(data);
    lock.lock();
    ++hashed_;
    cv_.notify_all();
  }
}

}  // namespace ftx::hash
