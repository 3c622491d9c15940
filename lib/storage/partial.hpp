#pragma once
// What makes a transfer resumable: beside the data file of an unfinished transfer (the
// server's staging file of an upload, the client's hidden file of a download) lives a small
// record of how far the data is known good, and the SHA-256 state at that point.
//
// The data file only ever grows in order, and the record is rewritten (one pwrite) after
// each whole chunk is on disk and hashed. Resuming truncates the data file to the record's
// offset and continues the whole-file SHA-256 from its state, so nothing before the resume
// point is read or hashed again. A record that fails its checksum (a torn write after a
// crash) is ignored: the transfer starts over. Local files only: native byte order.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <system_error>
#include <vector>

#include "hash/sha256.hpp"

namespace ftx::storage {

struct PartialRecord {
  std::string name;             // the remote name (server: final name; client: name asked for)
  std::uint64_t size = 0;       // the whole file's size
  std::int64_t mtime_ns = 0;    // put: the source's mtime; get: the server file's
  bool has_mtime = false;
  bool executable = false;
  hash::Digest digest{};        // get: the whole file's SHA-256 the server announced; put: zero
  hash::State good;             // after the verified prefix; good.bytes = the resume offset
  hash::State before;           // one chunk before `good` (the sample check); == good at 0
  std::int64_t created_ns = 0;  // wall clock (CLOCK_REALTIME), ns
  std::int64_t updated_ns = 0;  // last checkpoint
  // Transfers over parallel streams (ftx get -P) fill the file in ranges of `range_size`
  // bytes in any order: bit i of `ranges` (byte i / 8, bit i % 8) says range i is written.
  // 0 and empty for the sequential kind, which `good` describes.
  std::uint32_t range_size = 0;
  std::vector<std::uint8_t> ranges;
  // The server's uploads over parallel streams (ftx put -P) keep the byte intervals
  // [begin, end) that arrived verified instead, sorted, disjoint and not touching (the
  // client's range size is its own choice). At most kMaxHeld; `digest` is then the whole
  // file's SHA-256 the client announced.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> held;
  // The kernel's boot id when the record was written (encode() stamps it). The record says
  // which bytes were *written*, not that they reached the disk; a machine crash can lose
  // them while the record survives, so a record from another boot is never resumed
  // (current_boot()). A process crash keeps the page cache: same boot, resumed.
  std::string boot_id;

  bool operator==(const PartialRecord&) const = default;
};

// The record of a transfer that has not begun: nothing good yet (`good` and `before` are
// the SHA-256 state of no bytes), created and updated now.
PartialRecord new_record(std::string name, std::uint64_t size, std::optional<std::int64_t> mtime_ns, bool executable,
                         const hash::Digest& digest = {});

// The record as bytes, with a trailing checksum; decode() checks it and the layout.
std::vector<std::uint8_t> encode(const PartialRecord& r);
bool decode(std::span<const std::uint8_t> bytes, PartialRecord& out);

// Writes the record at offset 0 of `fd` in one pwrite. A shorter record than the last
// (merged intervals) leaves old bytes after its checksum, which decode() never reads. Reads
// one back; errc::bad_record when it is missing, torn or of another layout.
std::error_code save_record(int fd, const PartialRecord& r);
std::error_code load_record(int fd, PartialRecord& out);

// Moves `r` on after `bytes_written` more bytes ending in state `after`: `before` becomes the
// old `good` when a whole chunk was added, so the sample check always has one chunk to hash.
void advance(PartialRecord& r, const hash::State& after);

// Whether range i is marked in r.ranges; marks it.
bool has_range(const PartialRecord& r, std::uint64_t i);
void mark_range(PartialRecord& r, std::uint64_t i);

// The most intervals a record keeps (add_held drops the shortest beyond it: those bytes
// are then sent again, never trusted unverified).
inline constexpr std::size_t kMaxHeld = 1024;
// Adds [begin, end) to r.held, merging it with the intervals it overlaps or touches.
void add_held(PartialRecord& r, std::uint64_t begin, std::uint64_t end);
// Bytes the record says are good: the verified prefix, plus the held intervals.
std::uint64_t good_bytes(const PartialRecord& r);

// Whether `r` was written since this machine last booted (its data is then as recorded).
bool current_boot(const PartialRecord& r);

// Nanoseconds since the Unix epoch, now.
std::int64_t wall_clock_ns();

}  // namespace ftx::storage
