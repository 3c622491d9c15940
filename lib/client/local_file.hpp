#pragma once
// The client's side of "nothing half-written is ever visible": a download is written to a
// hidden staging file beside its target (".<name>.ftx-<pid>-<random>.part") and renamed over
// the target only after its SHA-256 matched. Until then an existing target is untouched.
// Ctrl-C removes the staging file (install_interrupt_cleanup); one left by a killed process
// is removed by the next download to the same target.

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <system_error>
#include <vector>

#include "storage/fd.hpp"
#include "storage/partial.hpp"

namespace ftx::client {

class StagedFile {
 public:
  // Creates the staging file in `target`'s folder. Throws std::system_error on failure.
  explicit StagedFile(std::string target);

  // A resumable download's staging file: ".<name>.ftx-partial" beside the target, with its
  // resume record in ".<name>.ftx-partial.rec" (storage/partial.hpp). Both stay when the
  // process dies or the connection fails, so the next download of the same file continues
  // them; commit() and discard() remove them. nullopt when another process is using them
  // (the caller then stages the usual way). Throws std::system_error when they cannot be
  // created.
  static std::optional<StagedFile> resumable(const std::filesystem::path& target);
  // Removes a resumable download's files for `target`, if any and not in use (--no-resume).
  static void discard_resumable(const std::filesystem::path& target);

  // Resumable only: the record found on disk (nullptr if none, or damaged).
  const storage::PartialRecord* found() const { return found_ ? &record_ : nullptr; }
  // Resumable only: continue the found record's data (cut to its good bytes, positioned
  // there), or start afresh with `fresh` (data emptied, record written).
  std::error_code continue_found();
  // Resumable only: keep the found data as it is, under the record `r` (get -P).
  std::error_code keep_found(storage::PartialRecord r);
  std::error_code start(storage::PartialRecord fresh);
  // Resumable only: the data up to `after.bytes` is written and hashed; records it.
  void checkpoint(const hash::State& after);
  // Resumable only, parallel streams: range i (of the record's range_size) is written;
  // records it. Not thread-safe: callers serialise.
  void range_done(std::uint64_t i);
  // Removes the staging file (and record) now; the object is then inert.
  void discard();
  bool is_resumable() const { return resumable_; }

  StagedFile(StagedFile&&) noexcept;
  // Removes the staging file unless commit() succeeded -- except a resumable one holding a
  // chunk or more, kept for the next attempt.
  ~StagedFile();
  StagedFile(const StagedFile&) = delete;
  StagedFile& operator=(const StagedFile&) = delete;

  int fd() const { return fd_.get(); }
  const std::string& staging_path() const { return staging_; }

  // fsyncs, applies `mtime_ns`, keeps the permission bits of the file it replaces (else the
  // umask's), sets or clears the execute bits when `executable` is given (execute where
  // read is allowed, as chmod +x would under the umask), renames over the target and
  // fsyncs the folder -- unless `sync_folder` is false: then the caller calls
  // client::sync_folder() for the target's folder before it reports the file saved (one
  // fsync for a group of files). storage::errc::not_durable when only that folder fsync
  // failed: the file is in place, but its name may not survive a crash.
  std::error_code commit(std::optional<std::int64_t> mtime_ns, std::optional<bool> executable = std::nullopt,
                         bool sync_folder = true);

  // Group commit, first half: applies mode and `mtime_ns` as commit() does, but neither
  // fsyncs nor renames; publish_staged() then publishes a group of them at once.
  std::error_code seal(std::optional<std::int64_t> mtime_ns, std::optional<bool> executable = std::nullopt);

 private:
  friend std::vector<std::error_code> publish_staged(std::span<StagedFile* const> files);
  StagedFile() = default;
  // The second half of commit(): fsyncs the data (unless `data_synced`: the caller made it
  // durable) and renames over the target, keeping an existing target's permission bits.
  // Its descriptor then goes to `closing` when given (publish_staged), else is closed.
  std::error_code place(bool data_synced, storage::CloseBatch* closing = nullptr);
  mode_t with_exec_bits(mode_t m) const;

  // Text, not paths: a folder download makes one StagedFile per file (see BatchItem).
  std::string target_;
  std::string staging_;
  storage::UniqueFd fd_;
  bool committed_ = false;
  bool resumable_ = false;
  std::filesystem::path record_path_;
  storage::UniqueFd record_fd_;  // holds the flock that says "in use"
  storage::PartialRecord record_;
  bool found_ = false;
  mode_t mode_ = 0;                    // seal(): the mode for a new target
  std::optional<bool> executable_;     // seal(): set or clear the execute bits
  void* cleanup_slot_ = nullptr;  // this file's entry in the signal handler's table
  // Resumable only: while it holds nothing worth resuming, Ctrl-C removes it and its record
  // too (two more entries in that table); armed by guard_while_empty(true).
  void* record_cleanup_slot_ = nullptr;
  void guard_while_empty(bool empty);
};

// The folder a file `target` is in ("." for a bare name).
std::filesystem::path folder_of(const std::filesystem::path& target);
// The same as text, a view into target (or of "."): what a folder download compares per
// file, where building a path (and comparing paths part by part) was most of its own work.
// A std::string_view, not a path: a path made from text to call this would be a temporary,
// and the view would point into it.
std::string_view folder_text(std::string_view target);

// Group commit, second half: publishes files seal()ed, given in the order they were created
// -- their data made durable together (one syncfs per filesystem they are on where it
// reports every write-back failure, storage::syncfs_covers; else each its own fsync), each renamed
// over its target. results[i] is files[i]'s outcome, as commit() would have returned it; the
// caller then sync_folder()s their folders before it reports them saved.
std::vector<std::error_code> publish_staged(std::span<StagedFile* const> files);

// fsyncs the folder `dir`: the files in it are durable already, this makes their names
// so. The error of the open or the fsync, if any -- but for a folder that cannot be opened
// for reading (EACCES) or a filesystem that cannot sync folders (EINVAL, ENOTSUP), where
// nothing more can be done and the download is not failed for it. Thread-safe.
std::error_code sync_folder(const std::filesystem::path& dir);

// Makes SIGINT, SIGTERM and SIGHUP remove the staging file in progress before the process
// dies, so Ctrl-C during `ftx get` leaves nothing behind -- but for a resumable download
// that holds a chunk or more, which is kept for the next attempt. Call once from main.
void install_interrupt_cleanup();

}  // namespace ftx::client
