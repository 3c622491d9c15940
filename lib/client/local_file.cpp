#include "client/local_file.hpp"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>

namespace ftx::client {
namespace {

// The staging file a signal handler must remove. Only async-signal-safe state: a fixed
// buffer and a flag (one download at a time per process).
char g_cleanup_path[4096];
volatile std::sig_atomic_t g_cleanup_armed = 0;

void arm_cleanup(const std::filesystem::path& p) {
  g_cleanup_armed = 0;
  const std::string s = p.string();
  if (s.size() >= sizeof g_cleanup_path) return;
  std::memcpy(g_cleanup_path, s.c_str(), s.size() + 1);
  g_cleanup_armed = 1;
}

void disarm_cleanup() { g_cleanup_armed = 0; }

extern "C" void on_fatal_signal(int sig) {
  if (g_cleanup_armed) ::unlink(g_cleanup_path);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

std::string random_suffix() {
  std::uint8_t raw[6] = {};
  if (::getrandom(raw, sizeof raw, 0) != static_cast<ssize_t>(sizeof raw)) {
    throw std::system_error(errno, std::system_category(), "getrandom");
  }
  char out[13];
  for (std::size_t i = 0; i < sizeof raw; ++i) std::snprintf(out + 2 * i, 3, "%02x", raw[i]);
  return out;
}

}  // namespace

void install_interrupt_cleanup() {
  for (const int sig : {SIGINT, SIGTERM, SIGHUP}) std::signal(sig, on_fatal_signal);
}

StagedFile::StagedFile(std::filesystem::path target) : target_(std::move(target)) {
  const auto dir = target_.has_parent_path() ? target_.parent_path() : std::filesystem::path(".");
  staging_ = dir / ("." + target_.filename().string() + ".ftx-" + random_suffix() + ".part");
  fd_.reset(::open(staging_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666));
  if (!fd_) throw std::system_error(storage::last_error(), "cannot create " + staging_.string());
  arm_cleanup(staging_);
}

StagedFile::~StagedFile() {
  if (!committed_) {
    disarm_cleanup();
    ::unlink(staging_.c_str());
  }
}

std::error_code StagedFile::commit(std::optional<std::int64_t> mtime_ns) {
  struct stat old {};
  if (::stat(target_.c_str(), &old) == 0 && S_ISREG(old.st_mode)) {
    if (::fchmod(fd_.get(), old.st_mode & 07777) != 0) return storage::last_error();
  }
  if (mtime_ns && *mtime_ns >= 0) {
    const timespec times[2] = {{0, UTIME_NOW}, {*mtime_ns / 1'000'000'000, *mtime_ns % 1'000'000'000}};
    if (::futimens(fd_.get(), times) != 0) return storage::last_error();
  }
  if (::fsync(fd_.get()) != 0) return storage::last_error();
  if (::rename(staging_.c_str(), target_.c_str()) != 0) return storage::last_error();
  committed_ = true;
  disarm_cleanup();
  fd_.reset();
  const auto dir = target_.has_parent_path() ? target_.parent_path() : std::filesystem::path(".");
  storage::UniqueFd dfd(::open(dir.c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC));
  if (dfd) ::fsync(dfd.get());  // best effort: the file itself is already durable
  return {};
}

}  // namespace ftx::client
