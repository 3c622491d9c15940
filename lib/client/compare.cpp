#include "client/compare.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "hash/sha256.hpp"
#include "storage/fd.hpp"

namespace ftx::client {

namespace {

// The execute bits as a transfer in `direction` leaves them (see Direction).
bool same_mode(mode_t mode, bool executable, Direction direction) {
  if (direction == Direction::kUpload) return ((mode & S_IXUSR) != 0) == executable;
  return (mode & 0111) == (executable ? (mode & 0444) >> 2 : 0);
}

// The metadata a transfer carries (size, mtime in ns, execute bits), compared first: it
// rules out nearly every changed file without reading it.
bool same_metadata(const struct stat& st, const Entry& remote, Direction direction) {
  return S_ISREG(st.st_mode) && !remote.folder && remote.described &&
         static_cast<std::uint64_t>(st.st_size) == remote.size && storage::mtime_ns(st) == remote.mtime_ns &&
         same_mode(st.st_mode, remote.executable, direction);
}

}  // namespace

bool may_be_identical(const std::string& local, const Entry& remote, Direction direction) {
  struct stat st {};
  return ::lstat(local.c_str(), &st) == 0 && same_metadata(st, remote, direction);
}

bool is_identical(const std::string& local, const Entry& remote, Direction direction,
                  const std::function<void(std::uint64_t)>& on_bytes) {
  if (!remote.digest) return false;
  // A stat first: most changed files end here, and nothing but a regular file is opened (a
  // FIFO would block the open, a device might act on it).
  struct stat found {};
  if (::lstat(local.c_str(), &found) != 0 || !same_metadata(found, remote, direction)) return false;
  const storage::UniqueFd fd(::open(local.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  struct stat before {};
  if (!fd || ::fstat(fd.get(), &before) != 0 || before.st_dev != found.st_dev || before.st_ino != found.st_ino ||
      !same_metadata(before, remote, direction)) {
    return false;
  }
  // Exactly the size both sides agree on, in chunks of up to 1 MiB through a buffer kept for
  // the next file (a new 1 MiB buffer per file was a map and unmap each: most of the cost of
  // checking a small one). A file that grew meanwhile is caught by the fstat below.
  constexpr std::size_t kChunk = 1 << 20;
  thread_local std::vector<std::uint8_t> buf;
  const auto wanted = static_cast<std::size_t>(std::clamp<std::uint64_t>(remote.size, 1, kChunk));
  if (buf.size() < wanted) buf.resize(wanted);
  hash::Digest actual{};
  if (storage::hash_fd(fd.get(), remote.size, buf, actual, std::make_error_code(std::errc::io_error), on_bytes)) {
    return false;
  }
  // A file written to while it was read is not known to be anything: send it (its upload
  // hashes what it sends).
  struct stat after {};
  if (::fstat(fd.get(), &after) != 0 || !same_metadata(after, remote, direction) ||
      after.st_ctim.tv_sec != before.st_ctim.tv_sec || after.st_ctim.tv_nsec != before.st_ctim.tv_nsec) {
    return false;
  }
  return actual == *remote.digest;
}

}  // namespace ftx::client
