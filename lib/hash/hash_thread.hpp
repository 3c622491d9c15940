#pragma once
// SHA-256 on a thread of its own, so hashing (about 1.7 GB/s on one core with SHA-NI)
// overlaps the caller's socket and disk work instead of adding to it; optionally a second
// thread writes the same chunks to a file, so a receiver's socket reads, hashing and disk
// writes all overlap.
//
// The caller fills buffers that belong to the hasher and hands them over in order:
//
//   HashThread h(4, 1 << 20);
//   h.write_to(fd);                      // optional, per stream
//   for (...) { auto buf = h.buffer(); /* fill n bytes */ h.submit(n); /* may still read buf */ }
//   Digest d = h.finish();               // and h.write_error()
//
// A submitted buffer stays readable (never written) by the caller until its next buffer()
// call: that is when it may be recycled, so with `slots` >= 2 the caller can still use the
// bytes it just submitted while they are hashed. Memory is bounded by slots * slot_size.
// One producer thread; finish() makes the object ready for the next stream of bytes.

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <system_error>
#include <thread>
#include <vector>

#include "hash/sha256.hpp"

namespace ftx::hash {

class HashThread {
 public:
  HashThread(std::size_t slots, std::size_t slot_size);
  ~HashThread();  // stops the threads (a stream not finished is dropped)
  HashThread(const HashThread&) = delete;
  HashThread& operator=(const HashThread&) = delete;

  std::size_t slot_size() const { return slot_size_; }
  // Until the next finish() or reset(), every chunk submitted is also written to `fd` (at
  // its current offset, in order) by a writer thread, made on first use. Call before the
  // stream's first buffer(). After a failed write the rest are skipped; see write_error().
  void write_to(int fd);
  // The stream continues the SHA-256 of an earlier prefix (resumed transfers): finish()
  // then returns the digest of that prefix followed by the bytes submitted. Call before the
  // stream's first buffer(); false when the state is not at a block boundary.
  bool start_from(const State& s);
  // With write_to(): after each chunk is both hashed and written, `fn` is called on the
  // writer thread with the SHA-256 state after it (when at a block boundary), so the caller
  // can record how far the file is known good. For this stream only.
  void checkpoint(std::function<void(const State&)> fn);
  // The next buffer to fill (slot_size() bytes); waits while every slot is in use.
  std::span<std::uint8_t> buffer();
  // Queues the first n bytes of the buffer last returned by buffer().
  void submit(std::size_t n);
  // Waits for everything queued (hashed, and written with write_to) and returns the digest
  // of all submitted bytes, in order.
  Digest finish();
  // The first failed write of the stream in progress, else of the one finish() or reset()
  // last ended; none once write_to() starts the next.
  std::error_code write_error() const;
  // Drops the stream in progress, if any (a buffer handed out is taken back): for a
  // producer that gave up half-way, e.g. on a lost connection. Waits for pending writes.
  void reset();

 private:
  void hash_loop();
  void write_loop();
  // Chunks whose slot may be reused: hashed, and written when writing.
  std::size_t released() const { return write_fd_ >= 0 ? std::min(hashed_, written_) : hashed_; }
  void wait_idle(std::unique_lock<std::mutex>& lock);

  const std::size_t slot_size_;
  std::vector<std::unique_ptr<std::uint8_t[]>> slots_;
  std::vector<std::size_t> lengths_;
  std::vector<std::optional<State>> states_;  // after each slot was hashed
  std::function<void(const State&)> checkpoint_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::size_t head_ = 0;     // slots handed out (producer); the next is head_ % slots
  std::size_t queued_ = 0;   // slots submitted
  std::size_t hashed_ = 0;   // slots the hasher has finished
  std::size_t written_ = 0;  // slots the writer has finished (meaningful while write_fd_ >= 0)
  int write_fd_ = -1;
  std::error_code write_ec_;       // of the stream in progress
  std::error_code last_write_ec_;  // of the stream last ended
  bool stop_ = false;
  Sha256 sha_;               // touched only by the hasher between finish() calls
  std::thread hasher_;
  std::thread writer_;       // made by the first write_to()
};

}  // namespace ftx::hash
