#include "storage/fd.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include <cerrno>

namespace ftx::storage {

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);  // close() errors on a descriptor we only read are not actionable
  fd_ = fd;
}

CloseBatch::CloseBatch(std::size_t at_most) {
  struct rlimit lim {};
  const rlim_t soft = ::getrlimit(RLIMIT_NOFILE, &lim) == 0 ? lim.rlim_cur : 1024;
  batch_ = static_cast<std::size_t>(std::clamp<rlim_t>(soft / 16, 1, std::max<std::size_t>(at_most, 1)));
  fds_.reserve(batch_);
}

void CloseBatch::add(UniqueFd fd) {
  if (!fd) return;
  fds_.push_back(fd.release());
  if (fds_.size() >= batch_) close_all();
}

void CloseBatch::close_all() {
  std::sort(fds_.begin(), fds_.end());
  for (std::size_t first = 0; first < fds_.size();) {
    std::size_t last = first;
    while (last + 1 < fds_.size() && fds_[last + 1] == fds_[last] + 1) ++last;
    // close_range (Linux 5.9) unknown to the kernel, or refused (seccomp): one by one,
    // from then on without asking. Under ThreadSanitizer too, which does not intercept
    // close_range: it would take the next use of a number closed so, by another thread,
    // for a race on the old descriptor.
#if defined(__SANITIZE_THREAD__)
    static std::atomic<bool> no_close_range{true};
#else
    static std::atomic<bool> no_close_range{false};
#endif
    if (last == first || no_close_range.load(std::memory_order_relaxed) ||
        ::close_range(static_cast<unsigned>(fds_[first]), static_cast<unsigned>(fds_[last]), 0) != 0) {
      if (last != first) no_close_range.store(true, std::memory_order_relaxed);
      for (std::size_t i = first; i <= last; ++i) ::close(fds_[i]);
    }
    first = last + 1;
  }
  fds_.clear();
}

std::error_code last_error() { return {errno, std::system_category()}; }

std::error_code write_all(int fd, std::span<const std::uint8_t> data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return last_error();
    }
    data = data.subspan(static_cast<std::size_t>(n));
  }
  return {};
}

std::error_code pwrite_all(int fd, std::span<const std::uint8_t> data, std::uint64_t offset) {
  while (!data.empty()) {
    const ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return last_error();
    }
    data = data.subspan(static_cast<std::size_t>(n));
    offset += static_cast<std::uint64_t>(n);
  }
  return {};
}

std::error_code preallocate(int fd, std::uint64_t size) {
  if (size == 0) return {};
  if (::fallocate(fd, 0, 0, static_cast<off_t>(size)) == 0) return {};
  // Not every filesystem reserves blocks (EOPNOTSUPP); a sparse file of the right length
  // still takes writes at any offset.
  if (errno != EOPNOTSUPP && errno != ENOSYS) return last_error();
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) return last_error();
  return {};
}

void punch_hole(int fd, std::uint64_t begin, std::uint64_t end) {
  if (begin >= end) return;
  ::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(begin),
              static_cast<off_t>(end - begin));
}

std::error_code pread_full(int fd, std::span<std::uint8_t> buf, std::uint64_t offset, std::size_t& got) {
  got = 0;
  while (got < buf.size()) {
    const ssize_t n = ::pread(fd, buf.data() + got, buf.size() - got, static_cast<off_t>(offset + got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return last_error();
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  return {};
}

std::error_code hash_fd(int fd, std::uint64_t size, std::span<std::uint8_t> buf, hash::Digest& out,
                        std::error_code shrank, const std::function<void(std::size_t)>& on_chunk) {
  hash::Sha256 hasher;
  for (std::uint64_t off = 0; off < size;) {
    std::size_t got = 0;
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), size - off));
    if (auto ec = pread_full(fd, buf.first(want), off, got)) return ec;
    if (got != want) return shrank;
    hasher.update(std::span<const std::uint8_t>(buf.data(), got));
    off += got;
    if (on_chunk) on_chunk(got);
  }
  out = hasher.finish();
  return {};
}

bool syncfs_covers(std::string_view kernel_release, long fs_type) {
  // Write-back errors reach syncfs from 5.8 on ("vfs: track per-sb writeback errors and
  // report them to syncfs"), and the filesystem's own sync_fs errors (a failed journal
  // commit) from 5.17 on ("vfs: make sync_filesystem return errors from ->sync_fs"). An
  // unreadable release is taken as too old.
  unsigned major = 0, minor = 0;
  std::size_t i = 0;
  const auto number = [&](unsigned& out) {
    const std::size_t begin = i;
    while (i < kernel_release.size() && kernel_release[i] >= '0' && kernel_release[i] <= '9' && i - begin < 6) {
      out = out * 10 + static_cast<unsigned>(kernel_release[i++] - '0');
    }
    return i > begin;
  };
  if (!number(major) || i >= kernel_release.size() || kernel_release[i++] != '.' || !number(minor)) return false;
  if (major < 5 || (major == 5 && minor < 17)) return false;
  // linux/magic.h: the filesystems whose sync_fs writes out every dirty file's data and
  // records a failure where syncfs finds it. Anything else gets an fsync per file.
  constexpr long kExt4 = 0xEF53, kXfs = 0x58465342, kBtrfs = 0x9123683E, kTmpfs = 0x01021994;
  return fs_type == kExt4 || fs_type == kXfs || fs_type == kBtrfs || fs_type == kTmpfs;
}

bool syncfs_covers(int fd) {
  static const std::string release = [] {
    utsname u{};
    return ::uname(&u) == 0 ? std::string(u.release) : std::string();
  }();
  struct statfs fs {};
  if (::fstatfs(fd, &fs) != 0) return false;
  return syncfs_covers(release, static_cast<long>(fs.f_type));
}

std::int64_t mtime_ns(const struct ::stat& st) {
  return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

std::error_code set_mtime(int fd, std::int64_t mtime_ns) {
  if (mtime_ns < 0) return {};
  const timespec times[2] = {{0, UTIME_NOW}, {mtime_ns / 1'000'000'000, mtime_ns % 1'000'000'000}};
  if (::futimens(fd, times) != 0) return last_error();
  return {};
}

void fill_random(std::span<std::uint8_t> out) {
  std::size_t got = 0;
  while (got < out.size()) {
    const ssize_t n = ::getrandom(out.data() + got, out.size() - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::system_error(errno, std::system_category(), "getrandom");
    got += static_cast<std::size_t>(n);
  }
}

std::string random_hex(std::size_t bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::vector<std::uint8_t> raw(bytes);
  fill_random(raw);
  std::string s;
  s.reserve(2 * bytes);
  for (const auto b : raw) {
    s += kHex[b >> 4];
    s += kHex[b & 0xF];
  }
  return s;
}

long sendfile_nosignal(int socket, int fd, std::uint64_t offset, std::size_t n) {
  sigset_t pipe_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  // A SIGPIPE already pending for this thread is not ours to take.
  sigset_t pending;
  sigpending(&pending);
  const bool was_pending = sigismember(&pending, SIGPIPE) == 1;
  sigset_t old;
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  auto off = static_cast<off_t>(offset);
  ssize_t k;
  do {
    k = ::sendfile(socket, fd, &off, n);
  } while (k < 0 && errno == EINTR);
  const int saved = errno;
  // Not only on EPIPE: a call that sent some bytes before the peer's reset returns their
  // count and has raised SIGPIPE all the same.
  if (!was_pending) {
    sigpending(&pending);
    if (sigismember(&pending, SIGPIPE) == 1) {
      const timespec zero{};
      sigtimedwait(&pipe_set, nullptr, &zero);
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  errno = saved;
  return static_cast<long>(k);
}

bool sendfile_unsupported(int err) { return err == EINVAL || err == ENOSYS || err == EOPNOTSUPP; }

}  // namespace ftx::storage
