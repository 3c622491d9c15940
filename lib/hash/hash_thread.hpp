#pragma once
// SHA-256 on a thread of its own, so hashing (about 1.7 GB/s on one core with SHA-NI)
// overlaps the caller's socket and disk work instead of adding to it.
//
// The caller fills buffers that belong to the hasher and hands them over in order:
//
//   HashThread h(4, 1 << 20);
//   for (...) { auto buf = h.buffer(); /* fill n bytes */ h.submit(n); /* may still read buf */ }
//   Digest d = h.finish();
//
// A submitted buffer stays readable (never written) by the caller until its next buffer()
// call: that is when it may be recycled, so with `slots` >= 2 the caller can write the bytes
// it just submitted to disk while they are hashed. Memory is bounded by slots * slot_size.
// One producer thread; finish() makes the object ready for the next stream of bytes.

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "hash/sha256.hpp"

namespace ftx::hash {

class HashThread {
 public:
  HashThread(std::size_t slots, std::size_t slot_size);
  ~HashThread();  // stops the thread (a stream not finished is dropped)
  HashThread(const HashThread&) = delete;
  HashThread& operator=(const HashThread&) = delete;

  std::size_t slot_size() const { return slot_size_; }
  // The next buffer to fill (slot_size() bytes); waits while every slot is queued.
  std::span<std::uint8_t> buffer();
  // Queues the first n bytes of the buffer last returned by buffer().
  void submit(std::size_t n);
  // Waits for everything queued and returns the digest of all submitted bytes, in order.
  Digest finish();
  // Drops the stream in progress, if any (a buffer handed out is taken back): for a
  // producer that gave up half-way, e.g. on a lost connection.
  void reset();

 private:
  void run();

  const std::size_t slot_size_;
  std::vector<std::unique_ptr<std::uint8_t[]>> slots_;
  std::vector<std::size_t> lengths_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::size_t head_ = 0;     // slots handed out (producer); the next is head_ % slots
  std::size_t queued_ = 0;   // slots submitted
  std::size_t hashed_ = 0;   // slots the worker has finished
  bool stop_ = false;
  Sha256 sha_;               // touched only by the worker between finish() calls
  std::thread worker_;
};

}  // namespace ftx::hash
