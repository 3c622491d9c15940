#pragma once
// A file descriptor owner and the few POSIX helpers ftx needs, with errors as
// std::error_code (system_category). Plain POSIX on purpose: disk I/O does not go through
// asio, which only the server and client libraries see.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "hash/sha256.hpp"

struct stat;

namespace ftx::storage {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// Closes descriptors a batch at a time: each run of consecutive numbers with one
// close_range(2), a lone one with close(2). A system call costs about 1.5 us beyond its work
// on the virtual machines here, and a folder transfer closes a file per file: 10,000 of
// open, pread and close took 67 ms in a C loop, 51 ms with the closes batched by 64. A run
// may go to close_range because every number in it is one this batch holds open: no other
// descriptor can have that number meanwhile. Holds at most max(1, min(at_most, the soft
// RLIMIT_NOFILE / 16)) descriptors, so that under a low `ulimit -n` it keeps few open.
// Not thread-safe.
class CloseBatch {
 public:
  explicit CloseBatch(std::size_t at_most = 64);
  ~CloseBatch() { close_all(); }
  CloseBatch(const CloseBatch&) = delete;
  CloseBatch& operator=(const CloseBatch&) = delete;

  // Takes `fd` (none: nothing); closes the batch once it is full.
  void add(UniqueFd fd);
  void close_all();

 private:
  std::vector<int> fds_;
  std::size_t batch_;
};

// The current errno as an error_code.
std::error_code last_error();

// Writes all of `data` at the file's current offset, retrying on EINTR and short writes.
std::error_code write_all(int fd, std::span<const std::uint8_t> data);

// Writes all of `data` at `offset` without moving the file offset (pwrite), retrying on EINTR
// and short writes. Safe from several threads on one descriptor (parallel streams).
std::error_code pwrite_all(int fd, std::span<const std::uint8_t> data, std::uint64_t offset);

// Makes `fd` `size` bytes long with its blocks reserved (fallocate), so a transfer written
// out of order finds its space taken before the first byte and cannot fail half-way on a
// full disk; where the filesystem cannot reserve, just sets the length (ftruncate).
std::error_code preallocate(int fd, std::uint64_t size);

// Gives back the blocks of [begin, end) (reads then return zeros; the length stays). Best
// effort: where the filesystem cannot punch holes, nothing happens.
void punch_hole(int fd, std::uint64_t begin, std::uint64_t end);

// Reads until `buf` is full or EOF, from `offset` without moving the file offset.
std::error_code pread_full(int fd, std::span<std::uint8_t> buf, std::uint64_t offset, std::size_t& got);

// The SHA-256 of the first `size` bytes of `fd`, read through `buf` (pread_full, chunks of
// buf.size()); `shrank` is the error when the file ends before them (it changed behind our
// back). `on_chunk`, when set, is called with each chunk's length once it is hashed.
std::error_code hash_fd(int fd, std::uint64_t size, std::span<std::uint8_t> buf, hash::Digest& out,
                        std::error_code shrank, const std::function<void(std::size_t)>& on_chunk = {});

// One sendfile(2) from `fd` at `offset` to `socket` (up to n bytes); returns bytes sent, or -1
// with errno. A socket the peer has closed gives EPIPE but never SIGPIPE: sendfile cannot
// take MSG_NOSIGNAL, so SIGPIPE is blocked on this thread around the call and a SIGPIPE
// the call raised (with EPIPE, or with a partial count) is taken off the thread again: a
// library must not kill its process.
long sendfile_nosignal(int socket, int fd, std::uint64_t offset, std::size_t n);
// True for a sendfile errno that means "this file or socket does not support it" (the
// caller then copies through user space instead).
bool sendfile_unsupported(int err);

// Whether one syncfs(2) may stand in for an fsync of each file written on `fd`'s
// filesystem: it must write out all their data and report a failure to (a descriptor
// opened before the data was written: the kernel tells each open file of such an error
// once, so a descriptor shared by several writers can have it taken by another). True on
// Linux 5.17 or later -- before 5.8 syncfs reported no write-back error at all, before 5.17
// not the filesystem's own (a failed journal commit) -- for the filesystems known to do
// both: ext2/3/4, xfs, btrfs, tmpfs. False for the rest, where callers fsync each file:
// FUSE filesystems such as mergerfs, sshfs or ntfs-3g (they do not pass syncfs on),
// overlayfs, network filesystems.
bool syncfs_covers(int fd);
// The same test on a kernel release ("6.1.0-13-amd64") and a statfs f_type: what
// syncfs_covers() asks of the running system, as a pure function for tests.
bool syncfs_covers(std::string_view kernel_release, long fs_type);

// Modification time of `st` in ns since the Unix epoch.
std::int64_t mtime_ns(const struct ::stat& st);

// Sets the modification time of `fd` (access time: now). Negative times are not applied.
std::error_code set_mtime(int fd, std::int64_t mtime_ns);

// Fills `out` from the kernel's CSPRNG (getrandom); throws std::system_error on failure.
void fill_random(std::span<std::uint8_t> out);
// `bytes` random bytes as lower-case hex (2 * bytes characters), for unique file names.
std::string random_hex(std::size_t bytes);

}  // namespace ftx::storage
