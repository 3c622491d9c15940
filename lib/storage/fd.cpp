#include "storage/fd.hpp"

#include <unistd.h>

#include <cerrno>

namespace ftx::storage {

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);  // close() errors on a descriptor we only read are not actionable
  fd_ = fd;
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

std::error_code read_full(int fd, std::span<std::uint8_t> buf, std::size_t& got) {
  got = 0;
  while (got < buf.size()) {
    const ssize_t n = ::read(fd, buf.data() + got, buf.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return last_error();
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  return {};
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

}  // namespace ftx::storage
