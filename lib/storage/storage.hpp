#pragma once
// The server's file store: a root folder that no request can escape, and uploads that are
// published atomically only after their SHA-256 matched.
//
// Every path is resolved one component at a time with O_NOFOLLOW from a descriptor of the
// root, so ".." tricks are refused by check_name and symlinks are never followed at all —
// not even ones that point inside the root. Uploads are written to
// <root>/.ftx-staging/<random>.part and renamed over the final name after fsync; readers
// see the old file or the new one, never a mix.
//
// Thread-safety: a Storage may be used from many threads at once (it only holds the root's
// and the staging folder's descriptors). Upload and ReadFile objects belong to one thread
// at a time.

#include <atomic>
#include <chrono>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <cstdint>
#include <memory>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "hash/sha256.hpp"
#include "storage/fd.hpp"
#include "storage/names.hpp"
#include "storage/partial.hpp"

namespace ftx::storage {

struct FileInfo {
  std::string name;  // relative to the root, '/'-separated
  std::uint64_t size = 0;  // 0 for folders
  std::int64_t mtime_ns = 0;
  bool folder = false;
  bool executable = false;               // owner may execute (files only)
  std::optional<hash::Digest> digest;    // SHA-256, when asked for (files only)
  bool described = true;  // size, mtime_ns and executable are known (false: ListOptions::names_only)
};

struct ReadFile {
  UniqueFd fd;
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;
  bool executable = false;
  std::uint64_t inode = 0;
  std::uint64_t device = 0;
  std::int64_t ctime_ns = 0;  // status change: any write or metadata change moves it

  // The same description over a second descriptor of the same open file (close-on-exec),
  // for work that may outlive this one; its fd is empty when the dup failed (errno says why).
  ReadFile duplicate() const;
};

// An upload of at most this many bytes gets no digest record (the extended attribute
// user.ftx.sha256): its fstat and fsetxattr were a tenth of the server's work for each of
// many small uploads, while hashing such a file when someone asks for its SHA-256 costs a
// few microseconds (with the file in the page cache). Whoever needs it first (a GET, a STAT,
// `ls -l`) hashes it and records it then; a listing without hashing (ListOptions::
// hash_missing false, --skip-identical) leaves it out until then.
inline constexpr std::uint64_t kUnrecordedUploadMax = 16 * 1024;

// What list() returns besides plain files.
struct ListOptions {
  bool folders = false;  // include folders (FileInfo::folder), e.g. to recreate empty ones
  bool digests = false;  // fill FileInfo::digest (from the digest cache, else by hashing)
  bool hash_missing = true;  // with digests: false leaves out digests the cache lacks (no hashing)
  // Only names and kinds are needed: an entry whose kind the folder itself tells (readdir's
  // d_type, which ext4, xfs, btrfs and tmpfs fill in) is not stat'ed, and comes with
  // `described` false (size, mtime 0). Ignored with digests, which open every file anyway.
  bool names_only = false;
};

// Where a successful move() put the file, and whether it replaced one.
struct MoveResult {
  std::string to;  // final name (TO, or TO/<base name of FROM> when TO is a folder)
  bool replaced = false;
};

class Storage;

// A folder descriptor that is either shared-owned or borrowed (the root's, which Storage
// keeps open): resolving a name directly below the root then costs no extra open/close,
// and a FolderCache can hand the same descriptor to several uploads.
class DirFd {
 public:
  DirFd() = default;
  explicit DirFd(int borrowed) : fd_(borrowed) {}
  explicit DirFd(UniqueFd owned) : owned_(std::make_shared<UniqueFd>(std::move(owned))), fd_(owned_->get()) {}
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  std::shared_ptr<UniqueFd> owned_;
  int fd_ = -1;
};

// The last folder a connection resolved, so that a batch of uploads or downloads into one
// folder walks the path once, not once per file. Valid only while nothing renames or
// removes folders: the server clears it whenever the connection goes idle, and Storage
// invalidates every cache when its own rm/mv runs. One per connection; not thread-safe.
class FolderCache {
 public:
  void clear() { path_.clear(), dir_ = DirFd(), missing_.clear(); }
  // After a burst was published, the folder found missing may exist now: look again, so
  // that the uploads that follow hold it open from the start instead of each burst's
  // publishing opening it anew.
  void forget_missing() { missing_.clear(); }

 private:
  friend class Storage;
  std::string path_;       // the folder's name ("" = nothing cached)
  DirFd dir_;
  std::string missing_;    // a folder the last streamed upload found missing ("" = none)
  std::uint64_t generation_ = 0;
};

// Whether an upload may be resumed (begin_upload).
enum class Resume {
  kNo,   // destroying the upload removes its staging file; a partial of the same file is dropped
  kYes,  // continue the partial of the same file if there is one; keep this one if interrupted
};

// One resumable upload that was interrupted (list_partials).
struct PartialInfo {
  std::string name;
  std::uint64_t size = 0;      // the whole file
  std::uint64_t received = 0;  // bytes kept, from the start
  std::int64_t updated_ns = 0; // last progress, wall clock
  bool active = false;         // a connection is sending it right now
};

// An upload in progress. Destroying it before commit() succeeded removes the staging file,
// so an upload that fails for any reason (bad digest, dropped connection, server shutdown)
// leaves nothing behind -- except a resumable one (Resume::kYes) that holds a chunk or
// more: its staging file and resume record stay in the staging area's partial/ folder until
// it is resumed, restarted or expires.
class Upload {
 public:
  Upload() = default;
  ~Upload();
  Upload(Upload&&) noexcept;
  Upload& operator=(Upload&&) noexcept;
  Upload(const Upload&) = delete;
  Upload& operator=(const Upload&) = delete;

  // Appends body bytes and feeds them to the running SHA-256.
  std::error_code write(std::span<const std::uint8_t> data);
  std::uint64_t written() const { return written_; }
  // Whether it was renamed over its final name (its folder perhaps not yet synced).
  bool placed() const { return placed_; }
  std::uint64_t expected_size() const { return size_; }

  // Checks size and SHA-256 against the announced values, applies `mtime_ns`, fsyncs,
  // creates missing folders, renames over the final name and fsyncs that folder. On
  // success the file is durable and visible. On a failure before the rename the staging
  // file is removed and whatever was stored under the name before is untouched; only the
  // final folder fsync can fail after it: then the new file is in place but may not
  // survive a crash, and the result is errc::not_durable. The verified digest is kept
  // with the file (digest cache, see Storage::digest) so downloads need not hash it again.
  std::error_code commit(const hash::Digest& expected, std::optional<std::int64_t> mtime_ns,
                         bool executable = false);

  // Group commit, first half: checks size and SHA-256 as commit() does and remembers mode,
  // mtime and digest; Storage::publish_staged() applies them, makes the data durable and
  // renames, with others. Until then the file stays invisible in the staging area. On a
  // failure the staging file is removed. Not for resumable uploads.
  std::error_code stage(const hash::Digest& expected, std::optional<std::int64_t> mtime_ns,
                        bool executable = false);

  // Uploads whose bytes arrive out of order, over several connections (parallel streams):
  // preallocate() gives the staging file its whole size first; write_at() then stores a
  // range at its offset (safe from several threads at once, as long as nothing else runs on
  // this Upload meanwhile); commit_written() hashes the staging file from disk, start to
  // end, and publishes it like commit() when that SHA-256 is `expected`. A resumable one
  // (Storage::begin_parallel_upload) records each range that arrived verified with
  // record_range() (not thread-safe: one call at a time, under the caller's lock).
  std::error_code preallocate();
  std::error_code write_at(std::uint64_t offset, std::span<const std::uint8_t> data) const;
  void record_range(std::uint64_t begin, std::uint64_t end);
  // Reads back staged bytes [offset, offset + buf.size()) (a resumed upload's sample).
  std::error_code read_at(std::uint64_t offset, std::span<std::uint8_t> buf) const;
  std::error_code commit_written(const hash::Digest& expected, std::optional<std::int64_t> mtime_ns,
                                 bool executable = false);

  // Removes the staging file (and a resumable upload's record) now. The destructor does
  // the same, except that it keeps a resumable upload for later.
  void abort();

  // Resumable uploads: the record of what the server holds. When resumed, `good.bytes` bytes
  // of the file are already here (written() starts there) and `good` is the SHA-256 state
  // after them. nullptr for an upload that is not resumable.
  const PartialRecord* record() const { return resumable_ ? &record_ : nullptr; }

 private:
  friend class Storage;
  // Called by the destructor: keeps a resumable upload, else aborts.
  void release();
  // Records that the data up to written_ is on disk and hashed (resumable uploads).
  void checkpoint();
  // Size and SHA-256 against the announced values (commit, stage).
  std::error_code verify(const hash::Digest& expected);
  // The second half of commit() and commit_written(): with `ec` clear (the data was
  // verified), seal()s, then place()s and fsyncs the folder; with `ec` set, or on any
  // failure, removes the staging file and returns why.
  std::error_code publish(std::error_code ec, const hash::Digest& expected, std::optional<std::int64_t> mtime_ns,
                          bool executable);
  // Applies mode, mtime and then the digest record to the staging file.
  std::error_code seal(const hash::Digest& expected, std::optional<std::int64_t> mtime_ns, bool executable);
  // fsyncs the data (unless `data_synced`: the caller made it durable), creates missing
  // folders and renames the staging file over the final name (links an anonymous one). On
  // success the file is visible, `folder` is its folder, and it is durable once the caller
  // has fsynced that folder. On a failure the staging file is removed. When the folder
  // cannot be opened for want of descriptors, the anonymous staging files of `burst` (and
  // this one) get names in the staging folder and are closed, and the open is tried again
  // (after `closing` closed what it held). A placed file's descriptor goes to `closing`
  // when given, else is closed.
  std::error_code place(bool data_synced, DirFd& folder, FolderCache* cache = nullptr,
                        std::span<Upload* const> burst = {}, CloseBatch* closing = nullptr);
  // An anonymous staging file gets a name in the staging folder, and its descriptor is
  // closed: from then on it is an ordinary named staging file. Nothing changes on failure.
  std::error_code name_in_staging();

  const Storage* store_ = nullptr;
  std::string name_;          // final name
  std::string staging_name_;  // file name inside the staging folder (or its partial/ folder)
  int staging_dir_ = -1;      // the folder staging_name_ is in (owned by Storage)
  bool resumable_ = false;
  std::string key_;           // resumable: the partial's key (file names key.part, key.state)
  UniqueFd state_fd_;         // resumable: the record file
  PartialRecord record_;
  UniqueFd fd_;
  DirFd parent_;              // the final name's folder, when it existed at begin_upload
  hash::Sha256 hasher_;
  std::uint64_t size_ = 0;
  std::uint64_t written_ = 0;
  std::uint64_t opened_ = 0;  // plain uploads: when the staging file was made, in this store's order
  // A streamed upload staged as a file without a name (O_TMPFILE; Storage::Staging): place()
  // links it under its final name. Nothing is left on disk when it is closed unlinked.
  bool anonymous_ = false;
  // Whether there is a staging file (named or not).
  bool staged() const { return anonymous_ || !staging_name_.empty(); }
  // stage(): what publish_staged() seals the file with.
  struct Seal {
    hash::Digest digest{};
    std::optional<std::int64_t> mtime_ns;
    bool executable = false;
  };
  std::optional<Seal> seal_;
  bool placed_ = false;
};

// How streamed uploads (put -r) are staged. A named staging file costs two changes of the
// namespace per upload (its creation in the staging folder, and the rename over the final
// name); a file made with O_TMPFILE has no name until it is linked in place, which costs
// one: 10,000 new uploads of 4 KiB about 8 % quicker on tmpfs. One that replaces a file
// costs three (a link refused, a link in the staging folder, a rename). It needs O_TMPFILE
// and linkat(AT_EMPTY_PATH), which before Linux 6.10 needs CAP_DAC_READ_SEARCH; the
// constructor tries both once and uses named files where either fails.
enum class Staging {
  kAnonymousWherePossible,
  kNamed,  // always named (tests that look at the staging folder)
};

class Storage {
 public:
  // Opens `root`, creating it (and its staging folder) if needed, and removes upload
  // leftovers from an earlier run. Throws std::system_error when the root is unusable.
  explicit Storage(const std::filesystem::path& root, Staging staging = Staging::kAnonymousWherePossible);

  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  const std::filesystem::path& root() const { return root_; }
  // How many leftover staging files the constructor removed.
  std::size_t leftovers_removed() const { return leftovers_removed_; }
  // Whether streamed uploads are staged without a name (Staging).
  bool anonymous_staging() const { return anonymous_staging_; }

  // Starts an upload of `size` bytes to `name`. Refuses early what is bound to fail at
  // commit: a bad name, a name that is a folder, a parent path that runs through a file.
  // `cache` (optional) remembers the folder for the next call. `streamed` skips the early
  // "is the name a folder?" check: the body is on its way regardless, and commit refuses it.
  std::error_code begin_upload(std::string_view name, std::uint64_t size, Upload& out,
                               FolderCache* cache = nullptr, bool streamed = false) const;

  // A resumable upload (or, with Resume::kNo, a plain one that also drops any partial of
  // the same file). A partial belongs to the same file when name, size, mtime, the
  // executable bit and `source` (the client's name for its file: machine, path, inode) all
  // match. While another connection is sending that partial:
  // errc::partial_busy (the caller may wait for it, or make a plain upload with the other
  // overload, which leaves it alone). Check out.record()->good.bytes for where the body
  // continues.
  std::error_code begin_upload(std::string_view name, std::uint64_t size, std::optional<std::int64_t> mtime_ns,
                               bool executable, Resume resume, Upload& out, FolderCache* cache = nullptr,
                               const hash::Digest& source = {}) const;

  // A resumable upload over parallel streams (ftx put -P): its bytes arrive in ranges, in
  // any order, and a kept one holds the intervals that arrived verified (record()->held)
  // and the whole file's SHA-256 the first attempt announced (record()->digest). The file is
  // the same one when name, size, mtime, executable bit and `source` match, as for
  // begin_upload; the two kinds never continue each other.
  //   digest given: continues a kept upload of that file with that SHA-256, else drops the
  //     name's other partials and starts one (preallocated to `size`).
  //   digest nullopt: only continues a kept one; errc::no_partial when there is none.
  // errc::partial_busy while another connection sends it.
  std::error_code begin_parallel_upload(std::string_view name, std::uint64_t size, std::optional<std::int64_t> mtime_ns,
                                        bool executable, const hash::Digest& source,
                                        const std::optional<hash::Digest>& digest, Upload& out,
                                        FolderCache* cache = nullptr) const;

  // Group commit, second half: publishes uploads stage()d on this store, in order -- each
  // sealed (mode, mtime, digest record), their data made durable (one syncfs of the
  // filesystem for several where it reports every write-back failure,
  // storage::syncfs_covers, and every seal succeeded; else an fsync each), each
  // renamed over its final name, then each folder fsynced once. results[i] is uploads[i]'s
  // outcome, as commit() would have returned it: on success the file is durable and
  // visible; errc::not_durable when only its folder's fsync failed (the file is in place);
  // any other error means nothing was stored (its staging file is gone).
  std::vector<std::error_code> publish_staged(std::span<Upload* const> uploads) const;

  // Removes partial uploads (and stray files in the partial/ folder) that made no progress
  // for `ttl`, except those being sent right now. Returns how many were removed.
  std::size_t expire_partials(std::chrono::seconds ttl) const;
  // The partial uploads kept, sorted by name.
  std::vector<PartialInfo> list_partials() const;

  // Bytes an unprivileged writer may still use on the root's filesystem.
  std::error_code free_bytes(std::uint64_t& out) const;

  // Opens a stored regular file for reading.
  std::error_code open_file(std::string_view name, ReadFile& out, FolderCache* cache = nullptr) const;

  // The SHA-256 of an open file. Taken from the digest cache (an extended attribute
  // written at upload, valid only while size, mtime and inode still match) when it can be,
  // else computed by reading the file once and cached for next time. Where the attribute
  // cannot be written (a filesystem without user xattrs, a file the server may not tag),
  // the digest is also remembered in memory, under the same conditions, for the files
  // hashed last (kMemoryDigests): a get -P asks for it once per range. `buf` is scratch
  // space for that read. `cached` says whether no hashing was needed.
  std::error_code digest(const ReadFile& file, std::span<std::uint8_t> buf, hash::Digest& out,
                         bool& cached) const;
  // digest() without hashing: true (and `out` set) when a cache has it.
  bool cached_digest(const ReadFile& file, hash::Digest& out) const;
  // digest() without looking in the caches first: hashes the file and caches the result.
  std::error_code compute_digest(const ReadFile& file, std::span<std::uint8_t> buf, hash::Digest& out) const;

  // Every regular file below `folder` ("" = the root), sorted by name; `folder` naming a
  // file lists just that file. Symlinks, special files, names check_name would refuse and
  // the staging folder are skipped.
  std::error_code list(std::string_view folder, std::vector<FileInfo>& out, const ListOptions& opts = {}) const;

  // One file or folder, with the file's SHA-256. A digest the cache lacks is computed for a
  // file of at most `hash_at_most` bytes, else left out. `cache` as for open_file.
  std::error_code stat(std::string_view name, FileInfo& out,
                       std::uint64_t hash_at_most = std::numeric_limits<std::uint64_t>::max(),
                       FolderCache* cache = nullptr) const;

  // Removes a file, or an empty folder (ENOTEMPTY otherwise), and syncs its folder.
  std::error_code remove(std::string_view name) const;

  // Renames `from` (file or folder) to `to`, creating `to`'s missing folders; a file at
  // `to` is replaced, a folder at `to` receives `from` under its base name. Atomic
  // (renameat); both folders are synced.
  std::error_code move(std::string_view from, std::string_view to, MoveResult& out) const;

  // Creates folder `name` and its missing parents. An existing folder is fine (like
  // mkdir -p); an existing file is std::errc::file_exists.
  std::error_code make_folder(std::string_view name) const;

 private:
  friend class Upload;
  // Opens the folder holding the last component of `name` (which check_name accepted),
  // creating missing folders when `create`. `leaf` receives the last component.
  std::error_code open_parent(std::string_view name, bool create, DirFd& dir, std::string& leaf,
                              FolderCache* cache = nullptr) const;
  // Opens the regular file `leaf` of `dir` for reading (no symlinks, FIFOs, folders).
  std::error_code open_in(const DirFd& dir, const std::string& leaf, ReadFile& out) const;
  // Resolves an existing file or folder `name` (check_name, parent folder, lstat) for the
  // commands that act on one; symlinks and special files are refused.
  std::error_code lookup(std::string_view name, DirFd& dir, std::string& leaf, struct ::stat& st,
                         FolderCache* cache = nullptr) const;
  // A new file name inside the staging folder, unique in this process and (by its random
  // prefix) among processes sharing the root; `seq` receives its number (rising).
  std::string next_staging_name(std::uint64_t& seq) const;
  std::size_t clean_staging() const;
  // begin_upload's checks (name, parent folders, not a folder unless `streamed`), filling in
  // `up` without a staging file yet; create_staging() then makes its plain staging file
  // (`anonymous`: one without a name, where the store can link such files).
  std::error_code prepare_upload(std::string_view name, std::uint64_t size, Upload& up, FolderCache* cache,
                                 bool streamed) const;
  std::error_code create_staging(Upload& up, bool anonymous = false) const;
  // Whether a file made with O_TMPFILE in the staging folder can be linked by descriptor.
  bool can_link_anonymous() const;
  // Claims the partial `key` for this caller: false when a connection is sending it (or
  // it is being removed). release_partial() ends the claim (Upload's destructor does).
  bool claim_partial(const std::string& key) const;
  void release_partial(const std::string& key) const;
  // Removes the partial's files (data and record); the caller holds the claim.
  void remove_partial_files(const std::string& key) const;
  // Removes the partials of `name` (any size, mtime, mode) that no connection is sending.
  void drop_partials_named(std::string_view name) const;

  template <typename Fn>
  void for_each_partial(Fn&& fn) const;

  std::filesystem::path root_;
  UniqueFd root_fd_;
  UniqueFd staging_fd_;
  UniqueFd partial_fd_;  // <staging>/partial: resumable uploads, key.part + key.state
  // The in-memory digest cache (digest()): what a file was when hashed, and its SHA-256.
  // The ctime too, which unlike the mtime no client can set back: an inode freed and reused
  // for a file of the same size and mtime is not taken for the old one.
  struct DigestKey {
    std::uint64_t device = 0, inode = 0, size = 0;
    std::int64_t mtime_ns = 0, ctime_ns = 0;
    auto operator<=>(const DigestKey&) const = default;
  };
  static constexpr std::size_t kMemoryDigests = 1024;
  mutable std::mutex digest_mu_;
  mutable std::map<DigestKey, hash::Digest> memory_digests_;
  mutable std::deque<DigestKey> memory_order_;  // oldest first: the first to go
  mutable std::mutex partial_mu_;
  mutable std::set<std::string> active_partials_;  // keys a connection is sending now
  std::size_t leftovers_removed_ = 0;
  bool anonymous_staging_ = false;
  std::string staging_prefix_;
  mutable std::atomic<std::uint64_t> staging_counter_{0};
  // Bumped by every rm/mv of a folder, once it is done: FolderCaches filled before then are
  // stale (one filled while it ran read the generation before the bump).
  mutable std::atomic<std::uint64_t> folder_generation_{1};
};

}  // namespace ftx::storage
