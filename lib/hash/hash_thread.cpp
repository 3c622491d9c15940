#include "hash/hash_thread.hpp"

#include <unistd.h>

#include <cerrno>
#include <stdexcept>

namespace ftx::hash {

HashThread::HashThread(std::size_t slots, std::size_t slot_size) : slot_size_(slot_size) {
  if (slots < 2 || slot_size == 0) throw std::invalid_argument("HashThread needs two slots or more");
  for (std::size_t i = 0; i < slots; ++i) slots_.push_back(std::make_unique_for_overwrite<std::uint8_t[]>(slot_size));
  lengths_.assign(slots, 0);
  states_.assign(slots, std::nullopt);
  hasher_ = std::thread([this] { hash_loop(); });
}

HashThread::~HashThread() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  hasher_.join();
  if (writer_.joinable()) writer_.join();
}

void HashThread::write_to(int fd) {
  std::lock_guard lock(mu_);
  if (queued_ != head_ || hashed_ != queued_) throw std::logic_error("HashThread::write_to inside a stream");
  write_fd_ = fd;
  written_ = queued_;
  write_ec_.clear();
  last_write_ec_.clear();
  if (!writer_.joinable()) writer_ = std::thread([this] { write_loop(); });
}

bool HashThread::start_from(const State& s) {
  std::lock_guard lock(mu_);
  if (queued_ != head_ || hashed_ != queued_) throw std::logic_error("HashThread::start_from inside a stream");
  return sha_.restore(s);  // the hasher is idle: sha_ is ours
}

void HashThread::checkpoint(std::function<void(const State&)> fn) {
  std::lock_guard lock(mu_);
  if (queued_ != head_ || hashed_ != queued_) throw std::logic_error("HashThread::checkpoint inside a stream");
  checkpoint_ = std::move(fn);
}

std::span<std::uint8_t> HashThread::buffer() {
  std::unique_lock lock(mu_);
  if (queued_ != head_) throw std::logic_error("HashThread::buffer before the last one was submitted");
  // The slot handed out now is the one submitted `slots` buffers ago: reusable once it is
  // hashed (and written). The caller's last buffer (head_ - 1) is not reused here, so it
  // stays readable.
  cv_.wait(lock, [&] { return head_ - released() < slots_.size(); });
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

void HashThread::wait_idle(std::unique_lock<std::mutex>& lock) {
  cv_.wait(lock, [&] { return hashed_ == queued_ && (write_fd_ < 0 || written_ == queued_); });
  last_write_ec_ = write_ec_;
  write_ec_.clear();
  write_fd_ = -1;
  checkpoint_ = nullptr;
}

Digest HashThread::finish() {
  std::unique_lock lock(mu_);
  if (queued_ != head_) throw std::logic_error("HashThread::finish with a buffer not submitted");
  wait_idle(lock);
  // The hasher is idle until the next submit: sha_ is ours for this moment.
  return sha_.finish();
}

std::error_code HashThread::write_error() const {
  std::lock_guard lock(mu_);
  return write_ec_ ? write_ec_ : last_write_ec_;
}

void HashThread::reset() {
  std::unique_lock lock(mu_);
  if (queued_ != head_) {
    lengths_[queued_ % slots_.size()] = 0;  // the buffer handed out: nothing to hash or write
    queued_ = head_;
    cv_.notify_all();
  }
  wait_idle(lock);
  sha_.finish();
}

void HashThread::hash_loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || hashed_ < queued_; });
    if (stop_) return;
    const std::size_t i = hashed_ % slots_.size();
    const std::span<const std::uint8_t> data(slots_[i].get(), lengths_[i]);
    lock.unlock();  // hash without the lock: the producer fills other slots meanwhile
    sha_.update(data);
    auto state = sha_.state();
    lock.lock();
    states_[i] = state;
    ++hashed_;
    cv_.notify_all();
  }
}

void HashThread::write_loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || (write_fd_ >= 0 && written_ < queued_); });
    if (stop_) return;
    const std::size_t i = written_ % slots_.size();
    const std::uint8_t* p = slots_[i].get();
    std::size_t left = lengths_[i];
    const int fd = write_fd_;
    const bool failed = static_cast<bool>(write_ec_);
    lock.unlock();
    std::error_code ec;
    while (!failed && left > 0) {
      const ssize_t k = ::write(fd, p, left);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) {
        ec = std::error_code(k < 0 ? errno : ENOSPC, std::generic_category());
        break;
      }
      p += k;
      left -= static_cast<std::size_t>(k);
    }
    lock.lock();
    if (ec && !write_ec_) write_ec_ = ec;
    if (!failed && !ec && checkpoint_) {
      // Only a chunk that is on disk and hashed may be recorded as good; the slot is not
      // reused before written_ moves past it, so its state stays put meanwhile.
      const std::size_t index = written_;
      cv_.wait(lock, [&] { return stop_ || hashed_ > index; });
      if (stop_) return;
      const auto state = states_[i];
      const auto fn = checkpoint_;
      if (state) {
        lock.unlock();
        fn(*state);
        lock.lock();
      }
    }
    ++written_;
    cv_.notify_all();
  }
}

}  // namespace ftx::hash
