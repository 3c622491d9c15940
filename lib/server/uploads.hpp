#pragma once
// Uploads that arrive over several connections at once (`ftx put -P N`; docs/protocol.md,
// "Parallel streams"). Internal to the server library.
//
// kPutOpen makes one ParallelUpload: a staging file preallocated to the whole size, and
// what the file must turn out to be (name, size, mtime, mode, SHA-256). kPutRange requests,
// on any connection that knows the upload's id, write their bytes in place at their offset
// (pwrite), several at once; kPutCommit hashes the staging file start to end and publishes
// it like any upload.
//
// Lifetime: every connection that opened an upload or sent it a range holds a Lease on
// it. The upload ends when it is committed, or when the last Lease goes (the last of those
// connections closed) without a commit: then it is abandoned and its id is forgotten. A
// plain upload's staging file is removed then (when the last in-flight range on it is
// done), so it lingers no longer than the connections that use it, bounded by the idle
// timeout; a server that dies loses it with the other staging files. A resumable one
// (storage::Storage::begin_parallel_upload) is kept instead, with the intervals that arrived
// verified, until a later PUT_OPEN continues it or --partial-ttl expires it.
//
// Thread-safety: everything here may be used from the sessions' threads at once.

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <system_error>

#include "protocol/frame.hpp"
#include "storage/storage.hpp"

namespace ftx::server {

// Byte ranges received, merged: a range sent twice (a retry after an integrity error)
// counts once. Not thread-safe (ParallelUpload guards it).
class RangeSet {
 public:
  void add(std::uint64_t begin, std::uint64_t end);
  // Bytes covered by at least one range.
  std::uint64_t covered() const { return covered_; }

 private:
  std::map<std::uint64_t, std::uint64_t> ranges_;  // begin -> end, disjoint and not touching
  std::uint64_t covered_ = 0;
};

// What a kPutOpen promised.
struct ParallelSpec {
  std::string name;  // final name
  std::uint64_t size = 0;
  std::optional<std::int64_t> mtime_ns;
  bool executable = false;
  protocol::Digest digest{};  // the whole file's SHA-256
  // Who opened it: the subject of the client's TLS certificate with mutual TLS, else "".
  // Only connections of the same owner may join it (ParallelUploads::join).
  std::string owner;
};

class ParallelUpload {
 public:
  ParallelUpload(std::string id, storage::Upload upload, ParallelSpec spec);

  const std::string& id() const { return id_; }
  const ParallelSpec& spec() const { return spec_; }
  // True once committed, being committed, or abandoned: no range is taken any more.
  bool over() const;

  // A range is about to be written: false when the upload is over (committed, being
  // committed, or abandoned). Each true must be followed by one end_range().
  bool begin_range();
  // Writes range bytes at `offset` (pwrite; any thread, between begin_range and end_range).
  std::error_code write(std::uint64_t offset, std::span<const std::uint8_t> data) const {
    return upload_.write_at(offset, data);
  }
  // The range [offset, offset + length) is done; `verified` when its SHA-256 matched.
  void end_range(std::uint64_t offset, std::uint64_t length, bool verified);

  // Why a commit did not publish the file.
  enum class CommitResult {
    kDone,        // published (`ec` may still be errc::not_durable)
    kGone,        // already committed or abandoned
    kIncomplete,  // bytes missing (`missing` says how many, 0 when all are in but a range
                  // is still being written); the upload stays open
    kFailed,      // verification or storage failed (`ec`); the upload is over
  };
  // Publishes the file if every byte arrived and no range is being written: hashes the
  // staging file (long for a large file: the caller's thread is busy that long).
  CommitResult commit(std::error_code& ec, std::uint64_t& missing);

 private:
  friend class ParallelUploads;
  friend class Lease;

  const std::string id_;
  const ParallelSpec spec_;
  mutable std::mutex mu_;
  storage::Upload upload_;  // write() runs outside mu_: pwrite at distinct offsets needs no lock
  RangeSet received_;       // guarded by mu_, as are the counters below
  unsigned users_ = 0;      // Leases held
  unsigned carriers_ = 0;   // Leases that carried a range
  unsigned writing_ = 0;    // ranges between begin_range and end_range
  bool finished_ = false;   // committed, being committed, or abandoned
};

class ParallelUploads;

// One connection's hold on an upload (see the lifetime rule above). Movable; the hold ends
// with the object.
class Lease {
 public:
  Lease(ParallelUploads& registry, std::shared_ptr<ParallelUpload> upload);
  ~Lease();
  Lease(Lease&& o) noexcept;
  Lease& operator=(Lease&& o) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;

  ParallelUpload& upload() const { return *upload_; }
  // The upload itself, for work that may outlive this hold (a commit on another thread).
  std::shared_ptr<ParallelUpload> shared() const { return upload_; }
  // This connection carries ranges from now on: false when `cap` connections already do.
  bool carry();

 private:
  void release();

  ParallelUploads* registry_ = nullptr;
  std::shared_ptr<ParallelUpload> upload_;
  bool carrying_ = false;
};

class ParallelUploads {
 public:
  // `cap`: connections that may carry ranges of one upload at the same time.
  explicit ParallelUploads(unsigned cap) : cap_(cap) {}

  unsigned cap() const { return cap_; }

  // Registers a new upload under a fresh random id, held by the returned Lease.
  Lease open(storage::Upload upload, ParallelSpec spec);
  // A hold on the upload `id`, for a connection of `owner` that has none yet; nullopt when
  // no such upload is open (never was, committed, or abandoned) or another owner opened it
  // (with mutual TLS, a client that learnt another's id cannot write into its upload).
  std::optional<Lease> join(const std::string& id, const std::string& owner);
  // Forgets `id` (after its commit).
  void forget(const std::string& id);

  // Uploads open now, and the most connections that carried one upload at the same time
  // since the server started (for tests and operators).
  std::size_t open_uploads() const;
  unsigned peak_streams() const { return peak_streams_.load(); }

 private:
  friend class Lease;

  const unsigned cap_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<ParallelUpload>> uploads_;
  std::atomic<unsigned> peak_streams_{0};
};

}  // namespace ftx::server
