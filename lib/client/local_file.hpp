#pragma once
// The client's side of "nothing half-written is ever visible": a download is written to a
// hidden staging file beside its target (".<name>.ftx-<pid>-<random>.part") and renamed over
// the target only after its SHA-256 matched. Until then an existing target is untouched.
// Ctrl-C removes the staging file (install_interrupt_cleanup); one left by a killed process
// is removed by the next download to the same target.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <system_error>

#include "storage/fd.hpp"

namespace ftx::client {

class StagedFile {
 public:
  // Creates the staging file in `target`'s folder. Throws std::system_error on failure.
  explicit StagedFile(std::filesystem::path target);
  // Removes the staging file unless commit() succeeded.
  ~StagedFile();
  StagedFile(const StagedFile&) = delete;
  StagedFile& operator=(const StagedFile&) = delete;

  int fd() const { return fd_.get(); }
  const std::filesystem::path& staging_path() const { return staging_; }

  // fsyncs, applies `mtime_ns`, keeps the permission bits of the file it replaces (else the
  // umask's), sets or clears the execute bits when `executable` is given (execute where
  // read is allowed, as chmod +x would under the umask), renames over the target and
  // fsyncs the folder.
  std::error_code commit(std::optional<std::int64_t> mtime_ns, std::optional<bool> executable = std::nullopt);

 private:
  std::filesystem::path target_;
  std::filesystem::path staging_;
  storage::UniqueFd fd_;
  bool committed_ = false;
  void* cleanup_slot_ = nullptr;  // this file's entry in the signal handler's table
};

// Makes SIGINT, SIGTERM and SIGHUP remove the staging file in progress before the process
// dies, so Ctrl-C during `ftx get` leaves nothing behind. Call once from main.
void install_interrupt_cleanup();

}  // namespace ftx::client
