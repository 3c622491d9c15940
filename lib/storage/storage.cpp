#include "storage/storage.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

namespace ftx::storage {
namespace {

constexpr int kDirFlags = O_DIRECTORY | O_NOFOLLOW | O_RDONLY | O_CLOEXEC;
constexpr const char* kPartialDir = "partial";

// A partial upload's key: the same file (name, size, mtime, executable bit, the client's
// source id) gets the same key, so the next attempt to upload it finds what the last one
// left. Sequential and parallel uploads of one file get different keys: their records
// describe the data differently (a prefix and its hash state; verified intervals).
std::string partial_key(std::string_view name, std::uint64_t size, std::optional<std::int64_t> mtime, bool exec,
                        const hash::Digest& source, bool parallel = false) {
  hash::Sha256 h;
  h.update(source);
  h.update(name);
  const std::string tail = std::string(1, '\0') + std::to_string(size) + "/" +
                           (mtime ? std::to_string(*mtime) : std::string("-")) + "/" + (exec ? "x" : "-") +
                           (parallel ? "/P" : "");
  h.update(tail);
  return hash::to_hex(h.finish()).substr(0, 32);
}

// After openat(.., O_NOFOLLOW) failed with ELOOP or ENOTDIR, tells a symlink (which we
// refuse on principle) from a plain "not a folder".
std::error_code classify_open_error(int dirfd, std::string_view comp, int saved_errno) {
  struct stat st {};
  if ((saved_errno == ELOOP || saved_errno == ENOTDIR) &&
      ::fstatat(dirfd, std::string(comp).c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
    return errc::symlink;
  }
  return {saved_errno, std::system_category()};
}


// The digest cache: an extended attribute on the stored file. It records what the file was
// when hashed (size, mtime, inode), so a file changed behind the server's back (edited in
// place, replaced by a copy) is hashed afresh instead of being served with a stale digest.
// Local to this machine, so native byte order.
constexpr const char* kDigestAttr = "user.ftx.sha256";
struct DigestRecord {
  std::uint32_t version = 1;
  std::uint32_t reserved = 0;
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;
  std::uint64_t inode = 0;
  hash::Digest digest{};
};
static_assert(sizeof(DigestRecord) == 64);

std::optional<hash::Digest> read_digest_record(int fd, std::uint64_t size, std::int64_t mtime, std::uint64_t inode) {
  DigestRecord rec;
  if (::fgetxattr(fd, kDigestAttr, &rec, sizeof rec) != static_cast<ssize_t>(sizeof rec)) return std::nullopt;
  if (rec.version != 1 || rec.size != size || rec.mtime_ns != mtime || rec.inode != inode) return std::nullopt;
  return rec.digest;
}

// Best effort: a filesystem without user xattrs (or a read-only one) only costs a rehash.
void write_digest_record(int fd, const hash::Digest& digest) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return;
  DigestRecord rec;
  rec.size = static_cast<std::uint64_t>(st.st_size);
  rec.mtime_ns = mtime_ns(st);
  rec.inode = st.st_ino;
  rec.digest = digest;
  ::fsetxattr(fd, kDigestAttr, &rec, sizeof rec, 0);
}

bool is_executable(const struct stat& st) { return (st.st_mode & S_IXUSR) != 0; }

// Calls fn(entry_name, stat, described) for each entry of the folder `dirfd` except . and ..
// `described` is true when `stat` came from fstatat. With stat_all false, an entry whose
// d_type says regular file or folder gets only st_mode (described false); others (DT_UNKNOWN
// on filesystems that do not fill d_type, symlinks, ...) are still stat'ed.
template <typename Fn>
std::error_code for_each_entry(int dirfd, Fn&& fn, bool stat_all = true) {
  // fdopendir takes ownership and shares the offset, so give it a fresh descriptor.
  const int own = ::openat(dirfd, ".", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
  if (own < 0) return last_error();
  DIR* dir = ::fdopendir(own);
  if (dir == nullptr) {
    const auto ec = last_error();
    ::close(own);
    return ec;
  }
  while (const dirent* e = ::readdir(dir)) {
    const std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat st {};
    if (!stat_all && (e->d_type == DT_REG || e->d_type == DT_DIR)) {
      // The kind is all the caller wants, and the folder told it: no stat (most of a
      // listing's time, 58 % of 10,000 entries' walk).
      st.st_mode = e->d_type == DT_REG ? S_IFREG : S_IFDIR;
      fn(name, st, false);
      continue;
    }
    if (::fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // vanished meanwhile
    fn(name, st, true);
  }
  ::closedir(dir);
  return {};
}

// `described` false: `st` holds only the kind (for_each_entry without stat_all).
FileInfo info_of(std::string name, const struct stat& st, bool described = true) {
  FileInfo f;
  f.name = std::move(name);
  f.described = described;
  f.folder = S_ISDIR(st.st_mode);
  f.size = f.folder ? 0 : static_cast<std::uint64_t>(st.st_size);
  f.mtime_ns = mtime_ns(st);
  f.executable = !f.folder && is_executable(st);
  return f;
}

void walk(int dirfd, const std::string& prefix, const ListOptions& opts, std::vector<FileInfo>& out) {
  const auto visit = [&](std::string_view name, const struct stat& st, bool described) {
    if (prefix.empty() && (name == kStagingDir || name == kTlsDir)) return;
    std::string rel = prefix.empty() ? std::string(name) : prefix + "/" + std::string(name);
    if (check_name(rel)) return;  // not fetchable, so not listed
    if (S_ISREG(st.st_mode)) {
      out.push_back(info_of(std::move(rel), st, described));
    } else if (S_ISDIR(st.st_mode)) {
      UniqueFd child(::openat(dirfd, std::string(name).c_str(), kDirFlags));
      if (!child) return;
      if (opts.folders) out.push_back(info_of(rel, st, described));
      walk(child.get(), rel, opts, out);
    }
  };
  for_each_entry(dirfd, visit, /*stat_all=*/!opts.names_only || opts.digests);
}

}  // namespace

// ---------------------------------------------------------------- ReadFile

ReadFile ReadFile::duplicate() const {
  ReadFile copy;
  copy.fd.reset(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
  copy.size = size;
  copy.mtime_ns = mtime_ns;
  copy.executable = executable;
  copy.inode = inode;
  copy.device = device;
  copy.ctime_ns = ctime_ns;
  return copy;
}

// ---------------------------------------------------------------- Upload

Upload::~Upload() { release(); }

Upload::Upload(Upload&& o) noexcept { *this = std::move(o); }

Upload& Upload::operator=(Upload&& o) noexcept {
  if (this != &o) {
    release();
    store_ = o.store_;
    name_ = std::move(o.name_);
    staging_name_ = std::exchange(o.staging_name_, {});
    staging_dir_ = o.staging_dir_;
    resumable_ = std::exchange(o.resumable_, false);
    key_ = std::exchange(o.key_, {});
    state_fd_ = std::move(o.state_fd_);
    record_ = std::move(o.record_);
    fd_ = std::move(o.fd_);
    parent_ = std::move(o.parent_);
    hasher_ = std::move(o.hasher_);
    size_ = o.size_;
    written_ = o.written_;
    opened_ = o.opened_;
    anonymous_ = std::exchange(o.anonymous_, false);
    seal_ = std::exchange(o.seal_, std::nullopt);
    placed_ = std::exchange(o.placed_, false);
  }
  return *this;
}

void Upload::abort() {
  if (!staging_name_.empty() && store_ != nullptr) {
    ::unlinkat(staging_dir_, staging_name_.c_str(), 0);
    if (resumable_) ::unlinkat(staging_dir_, (key_ + ".state").c_str(), 0);
  }
  staging_name_.clear();
  anonymous_ = false;
  fd_.reset();  // an anonymous staging file goes with its last descriptor
  state_fd_.reset();
  if (!key_.empty() && store_ != nullptr) store_->release_partial(key_);
  key_.clear();
  resumable_ = false;
}

void Upload::release() {
  if (resumable_ && !staging_name_.empty() && good_bytes(record_) >= protocol::kChunkSize) {
    // Kept for a later resume: the record already says how far the data is good (bytes
    // written after the last checkpoint are cut off when it resumes). One that holds no
    // whole chunk is not worth keeping.
    if (!record_.held.empty()) {
      // A parallel upload's file was preallocated to its whole size: kept, it occupies only
      // the bytes that arrived verified (a client cannot reserve a file's size on the
      // server's disk until --partial-ttl by sending one range). A resume preallocates again.
      std::uint64_t at = 0;
      for (const auto& [b, e] : record_.held) {
        punch_hole(fd_.get(), at, b);
        at = e;
      }
      punch_hole(fd_.get(), at, size_);
    }
    staging_name_.clear();
    fd_.reset();
    state_fd_.reset();
    store_->release_partial(key_);
    key_.clear();
    resumable_ = false;
    return;
  }
  abort();
}

void Upload::checkpoint() {
  const auto state = hasher_.state();
  if (!state) return;  // not at a block boundary (never at a chunk boundary)
  advance(record_, *state);
  // Best effort: a record that could not be saved only makes a resume start earlier.
  save_record(state_fd_.get(), record_);
}

std::error_code Upload::write(std::span<const std::uint8_t> data) {
  if (written_ + data.size() > size_) return errc::size_mismatch;
  while (!data.empty()) {
    // Resumable uploads are recorded at every chunk boundary: split the write there.
    std::size_t n = data.size();
    if (resumable_) {
      const auto to_boundary = protocol::kChunkSize - written_ % protocol::kChunkSize;
      n = static_cast<std::size_t>(std::min<std::uint64_t>(n, to_boundary));
    }
    const auto piece = data.first(n);
    if (auto ec = write_all(fd_.get(), piece)) return ec;
    hasher_.update(piece);
    written_ += n;
    data = data.subspan(n);
    if (resumable_ && written_ % protocol::kChunkSize == 0 && written_ < size_) checkpoint();
  }
  return {};
}

std::error_code Upload::commit(const hash::Digest& expected, std::optional<std::int64_t> mtime_ns,
                               bool executable) {
  return publish(verify(expected), expected, mtime_ns, executable);
}

std::error_code Upload::stage(const hash::Digest& expected, std::optional<std::int64_t> mtime_ns, bool executable) {
  // Only the checks here: sealing (three metadata calls) waits for publish_staged, which
  // the server runs on its disk pool while this connection's thread reads the next files.
  std::error_code ec = verify(expected);
  if (ec) {
    abort();
    return ec;
  }
  seal_ = Seal{expected, mtime_ns, executable};
  return {};
}

std::error_code Upload::verify(const hash::Digest& expected) {
  if (!staged()) return std::make_error_code(std::errc::bad_file_descriptor);
  if (written_ != size_) return errc::size_mismatch;
  if (hasher_.finish() != expected) return errc::digest_mismatch;
  return {};
}

std::error_code Upload::preallocate() {
  if (!fd_) return std::make_error_code(std::errc::bad_file_descriptor);
  return storage::preallocate(fd_.get(), size_);
}

std::error_code Upload::write_at(std::uint64_t offset, std::span<const std::uint8_t> data) const {
  if (offset > size_ || data.size() > size_ - offset) return errc::size_mismatch;
  return pwrite_all(fd_.get(), data, offset);
}

std::error_code Upload::read_at(std::uint64_t offset, std::span<std::uint8_t> buf) const {
  std::size_t got = 0;
  if (auto ec = pread_full(fd_.get(), buf, offset, got)) return ec;
  return got == buf.size() ? std::error_code{} : errc::size_mismatch;
}

void Upload::record_range(std::uint64_t begin, std::uint64_t end) {
  if (!resumable_) return;
  add_held(record_, begin, end);
  record_.updated_ns = wall_clock_ns();
  // Best effort, as checkpoint(): a record not saved only makes a resume send more.
  save_record(state_fd_.get(), record_);
}

std::error_code Upload::commit_written(const hash::Digest& expected, std::optional<std::int64_t> mtime_ns,
                                       bool executable) {
  if (staging_name_.empty()) return std::make_error_code(std::errc::bad_file_descriptor);
  // The ranges were checked one by one as they came, but only a hash of the file as it lies
  // on disk, in order, proves the whole: a range written twice, or a client that sent
  // overlapping ranges, cannot slip through.
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(std::clamp<std::uint64_t>(size_, 1, protocol::kChunkSize)));
  hash::Digest actual{};
  std::error_code ec = hash_fd(fd_.get(), size_, buf, actual, errc::size_mismatch);
  if (!ec && actual != expected) ec = errc::digest_mismatch;
  return publish(ec, expected, mtime_ns, executable);
}

std::error_code Upload::publish(std::error_code ec, const hash::Digest& expected, std::optional<std::int64_t> mtime_ns,
                                bool executable) {
  if (!ec) ec = seal(expected, mtime_ns, executable);
  if (ec) {
    abort();  // a resumable upload too: what it holds is not the file
    return ec;
  }
  DirFd dir;
  ec = place(/*data_synced=*/false, dir);
  if (ec) return ec;
  // The rename is durable only once the folder is: this is what lets the server say
  // "stored" and mean it.
  if (::fsync(dir.get()) != 0) return errc::not_durable;
  return {};
}

std::error_code Upload::seal(const hash::Digest& expected, std::optional<std::int64_t> mtime_ns, bool executable) {
  if (executable && ::fchmod(fd_.get(), 0755) != 0) return last_error();
  if (mtime_ns) {
    if (auto ec = set_mtime(fd_.get(), *mtime_ns)) return ec;
  }
  // After the mtime: the record must describe the file as published.
  if (size_ > kUnrecordedUploadMax) write_digest_record(fd_.get(), expected);
  return {};
}

std::error_code Upload::place(bool data_synced, DirFd& folder, FolderCache* cache, std::span<Upload* const> burst,
                              CloseBatch* closing) {
  std::error_code ec;
  // The data must be on disk before the rename makes it visible, or a crash could publish
  // a file whose blocks never arrived.
  if (!data_synced && ::fsync(fd_.get()) != 0) ec = last_error();
  // From here on a named file is known by its name: a burst being published holds no
  // descriptor per upload while it opens and makes folders (ulimit -n). An anonymous one
  // has nothing but its descriptor until it is linked.
  if (!anonymous_) fd_.reset();
  // The folder found at begin_upload, else (it did not exist yet) found and made now.
  DirFd dir = std::move(parent_);
  std::string leaf = name_.substr(name_.rfind('/') + 1);
  if (!ec && !dir) {
    ec = store_->open_parent(name_, /*create=*/true, dir, leaf, cache);
    // The burst's anonymous files hold a descriptor each until linked, where named ones were
    // closed before any folder was opened: at the limit (ulimit -n) they give theirs back.
    if (ec == std::errc::too_many_files_open || ec == std::errc::too_many_files_open_in_system) {
      if (closing != nullptr) closing->close_all();
      for (Upload* up : burst) {
        if (up->anonymous_) up->name_in_staging();
      }
      if (anonymous_) name_in_staging();
      ec = store_->open_parent(name_, /*create=*/true, dir, leaf, cache);  // once more
    }
  }
  // An anonymous file gets its name with one link, atomic like a rename (the name appears
  // with the whole file). linkat never replaces: over a file (or a folder) of that name it
  // is first named in the staging folder, then renamed below as a named staging file is.
  if (!ec && anonymous_ && ::linkat(fd_.get(), "", dir.get(), leaf.c_str(), AT_EMPTY_PATH) != 0) {
    ec = errno == EEXIST ? name_in_staging() : last_error();
  }
  if (!ec && !anonymous_ && ::renameat(staging_dir_, staging_name_.c_str(), dir.get(), leaf.c_str()) != 0) {
    ec = last_error();
  }
  if (ec) {
    abort();  // a resumable upload too: what it holds cannot be stored
    return ec;
  }
  staging_name_.clear();  // it is the final file now
  anonymous_ = false;
  if (closing != nullptr) {
    closing->add(std::move(fd_));
  } else {
    fd_.reset();
  }
  placed_ = true;
  if (resumable_) {
    ::unlinkat(staging_dir_, (key_ + ".state").c_str(), 0);
    abort();  // drops the record's descriptor and the claim on the key
  }
  folder = std::move(dir);
  return {};
}

std::error_code Upload::name_in_staging() {
  std::uint64_t seq = 0;
  std::string name = store_->next_staging_name(seq);
  if (::linkat(fd_.get(), "", staging_dir_, name.c_str(), AT_EMPTY_PATH) != 0) return last_error();
  staging_name_ = std::move(name);
  anonymous_ = false;
  fd_.reset();
  return {};
}

std::vector<std::error_code> Storage::publish_staged(std::span<Upload* const> uploads) const {
  std::vector<std::error_code> results(uploads.size());
  // Mode, mtime and digest record first: they must be as durable as the data.
  bool all_sealed = true;
  for (std::size_t i = 0; i < uploads.size(); ++i) {
    Upload& up = *uploads[i];
    if (!up.seal_) continue;
    results[i] = up.seal(up.seal_->digest, up.seal_->mtime_ns, up.seal_->executable);
    up.seal_.reset();
    if (results[i]) {
      up.abort();
      all_sealed = false;
    }
  }
  // On a disk, one fsync per file is one journal commit and one disk-cache flush per file
  // (about 0.3 ms each here, ~3 s for 10,000 small files), and fsyncing them one after
  // another commits nothing sooner: with delayed allocation each file's blocks are placed
  // only when its own data is written out. One syncfs writes out every staged file's data
  // and commits once. Its price: it also writes out whatever else is dirty on that
  // filesystem, so a burst waits for all of it, which can take far longer than per-file
  // fsyncs. A failed syncfs (an unrelated file's write error counts) falls back to
  // per-file fsyncs, which say which file it was.
  //
  // syncfs reports a write-back error once per open file, to those opened before it
  // happened: called on a descriptor the whole server shares, another connection's burst
  // could take the error meant for this one, which would then answer DONE for lost data.
  // So it is called on this burst's own staging file opened first: every byte of the burst
  // was written after that open, and no other burst uses that descriptor. (Should that file
  // have failed to seal, it is closed: then each file is fsynced, as on any failure.)
  bool synced = false;
  if (uploads.size() > 1 && all_sealed) {
    const Upload* first = *std::min_element(uploads.begin(), uploads.end(),
                                            [](const Upload* a, const Upload* b) { return a->opened_ < b->opened_; });
    synced = first->fd_ && syncfs_covers(first->fd_.get()) && ::syncfs(first->fd_.get()) == 0;
  }
  // Every file's data is made durable before any rename, and a named file's descriptor
  // closed: each is then a name to rename, and the descriptors would only crowd out the
  // folders the renames may have to open (ulimit -n). An anonymous file keeps its own until
  // it is linked (place() gives them back if a folder cannot be opened for want of them). A
  // file whose data could not be made durable is not published.
  for (std::size_t i = 0; i < uploads.size(); ++i) {
    if (results[i]) continue;
    if (!synced && ::fsync(uploads[i]->fd_.get()) != 0) {
      results[i] = last_error();
      uploads[i]->abort();
      continue;
    }
    if (!uploads[i]->anonymous_) uploads[i]->fd_.reset();  // an anonymous one is linked by it
  }
  // Each folder once, after all the renames into it: the renames are durable together.
  std::vector<std::pair<DirFd, std::vector<std::size_t>>> folders;
  // Uploads into a folder that did not exist when they began: the first makes it, the
  // others find it here.
  FolderCache made;
  CloseBatch closing;  // the linked files' descriptors: a close_range per run
  for (std::size_t i = 0; i < uploads.size(); ++i) {
    if (results[i]) continue;
    DirFd dir;
    results[i] = uploads[i]->place(/*data_synced=*/true, dir, &made, uploads.subspan(i + 1), &closing);
    if (results[i]) continue;
    auto it = std::find_if(folders.begin(), folders.end(), [&](const auto& f) { return f.first.get() == dir.get(); });
    if (it == folders.end()) it = folders.insert(folders.end(), {std::move(dir), {}});
    it->second.push_back(i);
  }
  for (const auto& [dir, members] : folders) {
    if (::fsync(dir.get()) == 0) continue;
    for (const auto i : members) results[i] = errc::not_durable;
  }
  return results;
}

// ---------------------------------------------------------------- Storage

Storage::Storage(const std::filesystem::path& root, Staging mode) : root_(root) {
  std::error_code ec;
  std::filesystem::create_directories(root_, ec);
  if (ec) throw std::system_error(ec, "cannot create root " + root_.string());
  root_fd_.reset(::open(root_.c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC));
  if (!root_fd_) throw std::system_error(last_error(), "cannot open root " + root_.string());
  const std::string staging(kStagingDir);
  if (::mkdirat(root_fd_.get(), staging.c_str(), 0700) != 0 && errno != EEXIST) {
    throw std::system_error(last_error(), "cannot create " + (root_ / staging).string());
  }
  staging_fd_.reset(::openat(root_fd_.get(), staging.c_str(), kDirFlags));
  if (!staging_fd_) throw std::system_error(last_error(), "cannot open " + (root_ / staging).string());
  staging_prefix_ = random_hex(6) + "-";
  leftovers_removed_ = clean_staging();
  anonymous_staging_ = mode == Staging::kAnonymousWherePossible && can_link_anonymous();
  if (::mkdirat(staging_fd_.get(), kPartialDir, 0700) != 0 && errno != EEXIST) {
    throw std::system_error(last_error(), "cannot create " + (root_ / staging / kPartialDir).string());
  }
  partial_fd_.reset(::openat(staging_fd_.get(), kPartialDir, kDirFlags));
  if (!partial_fd_) throw std::system_error(last_error(), "cannot open " + (root_ / staging / kPartialDir).string());
}

bool Storage::can_link_anonymous() const {
  UniqueFd fd(::openat(staging_fd_.get(), ".", O_RDWR | O_TMPFILE | O_CLOEXEC, 0600));
  if (!fd) return false;  // EOPNOTSUPP: a filesystem without O_TMPFILE
  std::uint64_t seq = 0;
  const std::string probe = next_staging_name(seq);
  // ENOENT without CAP_DAC_READ_SEARCH before Linux 6.10.
  if (::linkat(fd.get(), "", staging_fd_.get(), probe.c_str(), AT_EMPTY_PATH) != 0) return false;
  ::unlinkat(staging_fd_.get(), probe.c_str(), 0);
  return true;
}

std::size_t Storage::clean_staging() const {
  std::size_t removed = 0;
  for_each_entry(staging_fd_.get(), [&](std::string_view name, const struct stat& st, bool) {
    if (name == kPartialDir) return;  // resumable uploads outlive the server (expire_partials)
    const int flags = S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0;
    if (::unlinkat(staging_fd_.get(), std::string(name).c_str(), flags) == 0) ++removed;
  });
  return removed;
}

std::string Storage::next_staging_name(std::uint64_t& seq) const {
  seq = staging_counter_.fetch_add(1, std::memory_order_relaxed);
  return staging_prefix_ + std::to_string(seq) + ".part";
}

std::error_code Storage::open_parent(std::string_view name, bool create, DirFd& dir, std::string& leaf,
                                     FolderCache* cache) const {
  const auto slash = name.rfind('/');
  const std::string_view folder = slash == std::string_view::npos ? std::string_view() : name.substr(0, slash);
  const auto generation = folder_generation_.load(std::memory_order_acquire);
  if (cache != nullptr && !folder.empty() && cache->generation_ == generation && cache->path_ == folder) {
    leaf = std::string(name.substr(slash + 1));
    dir = cache->dir_;
    return {};
  }
  const auto parts = split_name(name);
  DirFd cur(root_fd_.get());
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    const std::string comp(parts[i]);
    UniqueFd next(::openat(cur.get(), comp.c_str(), kDirFlags));
    if (!next && errno == ENOENT && create) {
      if (::mkdirat(cur.get(), comp.c_str(), 0755) != 0 && errno != EEXIST) return last_error();
      // The new folder's entry must be as durable as the file that will be put in it. If it
      // cannot be made so, the folder goes again (best effort): the next upload into it
      // would otherwise find it and never sync its entry.
      if (::fsync(cur.get()) != 0) {
        const auto ec = last_error();
        ::unlinkat(cur.get(), comp.c_str(), AT_REMOVEDIR);
        return ec;
      }
      next.reset(::openat(cur.get(), comp.c_str(), kDirFlags));
    }
    if (!next) return classify_open_error(cur.get(), comp, errno);
    cur = DirFd(std::move(next));
  }
  leaf = std::string(parts.back());
  if (cache != nullptr && !folder.empty()) {
    cache->path_ = std::string(folder);
    cache->dir_ = cur;
    cache->generation_ = generation;
  }
  dir = std::move(cur);
  return {};
}

std::error_code Storage::begin_upload(std::string_view name, std::uint64_t size, Upload& out, FolderCache* cache,
                                      bool streamed) const {
  Upload up;
  if (auto ec = prepare_upload(name, size, up, cache, streamed)) return ec;
  if (auto ec = create_staging(up, /*anonymous=*/streamed)) return ec;
  out = std::move(up);
  return {};
}

std::error_code Storage::prepare_upload(std::string_view name, std::uint64_t size, Upload& up, FolderCache* cache,
                                        bool streamed) const {
  if (auto ec = check_name(name)) return ec;
  DirFd dir;
  std::string leaf;
  const auto slash = name.rfind('/');
  const std::string_view folder = slash == std::string_view::npos ? std::string_view() : name.substr(0, slash);
  // A streamed batch into a new folder: the folder is made when the first of them is
  // published, so the others need not each look for it first. Only streamed uploads trust
  // this (they skip the early checks anyway), and publishing opens the folder regardless.
  const bool known_missing = streamed && cache != nullptr && !folder.empty() && cache->missing_ == folder;
  auto ec = known_missing ? std::make_error_code(std::errc::no_such_file_or_directory)
                          : open_parent(name, /*create=*/false, dir, leaf, cache);
  if (ec && ec != std::errc::no_such_file_or_directory) return ec;  // missing folders are made at commit
  if (ec && streamed && cache != nullptr) cache->missing_ = std::string(folder);
  if (!ec && !streamed) {
    struct stat st {};
    if (::fstatat(dir.get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
      return std::make_error_code(std::errc::is_a_directory);
    }
  }
  up.store_ = this;
  up.name_ = std::string(name);
  up.size_ = size;
  if (!ec) up.parent_ = std::move(dir);
  return {};
}

std::error_code Storage::create_staging(Upload& up, bool anonymous) const {
  up.staging_dir_ = staging_fd_.get();
  if (anonymous && anonymous_staging_) {
    up.opened_ = staging_counter_.fetch_add(1, std::memory_order_relaxed);
    up.fd_.reset(::openat(staging_fd_.get(), ".", O_RDWR | O_TMPFILE | O_CLOEXEC, 0644));
    if (!up.fd_) return last_error();
    up.anonymous_ = true;
    return {};
  }
  up.staging_name_ = next_staging_name(up.opened_);
  // Readable too: commit_written() hashes what parallel streams wrote.
  up.fd_.reset(::openat(staging_fd_.get(), up.staging_name_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!up.fd_) {
    up.staging_name_.clear();
    return last_error();
  }
  return {};
}

std::error_code Storage::begin_upload(std::string_view name, std::uint64_t size, std::optional<std::int64_t> mtime_ns,
                                      bool executable, Resume resume, Upload& out, FolderCache* cache,
                                      const hash::Digest& source) const {
  Upload up;
  if (auto ec = prepare_upload(name, size, up, cache, /*streamed=*/false)) return ec;
  const std::string key = partial_key(name, size, mtime_ns, executable, source);
  // Someone is sending this very file now: this upload cannot share its partial.
  if (!claim_partial(key)) return errc::partial_busy;
  const std::string part = key + ".part";
  const std::string state = key + ".state";
  if (resume == Resume::kNo) {
    remove_partial_files(key);
    release_partial(key);
    drop_partials_named(name);
    if (auto ec = create_staging(up)) return ec;
    out = std::move(up);
    return {};
  }
  up.key_ = key;  // release_partial on every way out
  UniqueFd data(::openat(partial_fd_.get(), part.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  UniqueFd rec(::openat(partial_fd_.get(), state.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!data || !rec) return last_error();
  PartialRecord r;
  struct stat st {};
  const bool found = !load_record(rec.get(), r) && current_boot(r) && ::fstat(data.get(), &st) == 0 && r.name == name &&
                     r.size == size && r.has_mtime == mtime_ns.has_value() && r.mtime_ns == mtime_ns.value_or(0) &&
                     r.executable == executable && static_cast<std::uint64_t>(st.st_size) >= r.good.bytes &&
                     up.hasher_.restore(r.good);
  if (!found) {
    // Earlier versions of this name (another size or mtime) will not be resumed now.
    drop_partials_named(name);
    r = new_record(std::string(name), size, mtime_ns, executable);
    up.hasher_ = hash::Sha256();
    if (::ftruncate(rec.get(), 0) != 0) return last_error();
    if (auto ec = save_record(rec.get(), r)) return ec;
  }
  // Bytes past the last checkpoint were never recorded as good: cut them off.
  if (::ftruncate(data.get(), static_cast<off_t>(r.good.bytes)) != 0 ||
      ::lseek(data.get(), static_cast<off_t>(r.good.bytes), SEEK_SET) < 0) {
    return last_error();
  }
  up.staging_name_ = part;
  up.staging_dir_ = partial_fd_.get();
  up.resumable_ = true;
  up.fd_ = std::move(data);
  up.state_fd_ = std::move(rec);
  up.record_ = std::move(r);
  up.written_ = up.record_.good.bytes;
  out = std::move(up);
  return {};
}

std::error_code Storage::begin_parallel_upload(std::string_view name, std::uint64_t size,
                                               std::optional<std::int64_t> mtime_ns, bool executable,
                                               const hash::Digest& source, const std::optional<hash::Digest>& digest,
                                               Upload& out, FolderCache* cache) const {
  Upload up;
  if (auto ec = prepare_upload(name, size, up, cache, /*streamed=*/false)) return ec;
  const std::string key = partial_key(name, size, mtime_ns, executable, source, /*parallel=*/true);
  if (!claim_partial(key)) return errc::partial_busy;
  up.key_ = key;  // release_partial on every way out
  const std::string part = key + ".part";
  const std::string state = key + ".state";
  const int create = digest ? O_CREAT : 0;  // a look-up makes nothing
  UniqueFd data(::openat(partial_fd_.get(), part.c_str(), O_RDWR | create | O_CLOEXEC, 0644));
  UniqueFd rec(::openat(partial_fd_.get(), state.c_str(), O_RDWR | create | O_CLOEXEC, 0600));
  if ((!data || !rec) && !digest && errno == ENOENT) return errc::no_partial;
  if (!data || !rec) return last_error();
  PartialRecord r;
  struct stat st {};
  // The data file keeps its preallocated size; the held intervals say which bytes count.
  const bool found = !load_record(rec.get(), r) && current_boot(r) && ::fstat(data.get(), &st) == 0 &&
                     r.name == name && r.size == size && r.has_mtime == mtime_ns.has_value() &&
                     r.mtime_ns == mtime_ns.value_or(0) && r.executable == executable && r.range_size == 0 &&
                     static_cast<std::uint64_t>(st.st_size) == size && (!digest || r.digest == *digest);
  if (!found && !digest) {
    // What lies under this key cannot be continued (another boot, a torn record): gone.
    remove_partial_files(key);
    return errc::no_partial;
  }
  up.staging_name_ = part;
  up.staging_dir_ = partial_fd_.get();
  up.resumable_ = true;
  up.fd_ = std::move(data);
  up.state_fd_ = std::move(rec);
  if (found) {
    // Kept, it gave back the space of the bytes it lacks (release): take it again.
    if (auto ec = up.preallocate()) return ec;
  } else {
    drop_partials_named(name);  // older versions of this name will not be continued now
    r = new_record(std::string(name), size, mtime_ns, executable, *digest);
    if (::ftruncate(up.fd_.get(), 0) != 0 || ::ftruncate(up.state_fd_.get(), 0) != 0) return last_error();
    if (auto ec = save_record(up.state_fd_.get(), r)) return ec;
    if (auto ec = up.preallocate()) return ec;  // `up` removes both files on the way out
  }
  up.record_ = std::move(r);
  out = std::move(up);
  return {};
}

void Storage::drop_partials_named(std::string_view name) const {
  for_each_partial([&](const std::string& key, const PartialRecord* r, const struct stat*) {
    if (r == nullptr || r->name != name) return;
    if (!claim_partial(key)) return;  // ours, or another connection's
    remove_partial_files(key);
    release_partial(key);
  });
}

bool Storage::claim_partial(const std::string& key) const {
  std::lock_guard lock(partial_mu_);
  return active_partials_.insert(key).second;
}

void Storage::remove_partial_files(const std::string& key) const {
  ::unlinkat(partial_fd_.get(), (key + ".part").c_str(), 0);
  ::unlinkat(partial_fd_.get(), (key + ".state").c_str(), 0);
}

void Storage::release_partial(const std::string& key) const {
  std::lock_guard lock(partial_mu_);
  active_partials_.erase(key);
}

template <typename Fn>
void Storage::for_each_partial(Fn&& fn) const {
  // fn(key, record or nullptr, part file's stat or nullptr)
  std::vector<std::string> names;
  for_each_entry(partial_fd_.get(), [&](std::string_view name, const struct stat&, bool) { names.emplace_back(name); });
  std::sort(names.begin(), names.end());
  std::set<std::string> keys;
  for (const auto& n : names) {
    const auto dot = n.rfind('.');
    keys.insert(dot == std::string::npos ? n : n.substr(0, dot));
  }
  for (const auto& key : keys) {
    PartialRecord r;
    bool have = false;
    UniqueFd rec(::openat(partial_fd_.get(), (key + ".state").c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (rec && !load_record(rec.get(), r)) have = true;
    struct stat st {};
    const bool part = ::fstatat(partial_fd_.get(), (key + ".part").c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
    fn(key, have ? &r : nullptr, part ? &st : nullptr);
  }
}

std::size_t Storage::expire_partials(std::chrono::seconds ttl) const {
  const std::int64_t now = wall_clock_ns();
  const std::int64_t ttl_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(ttl).count();
  std::size_t removed = 0;
  for_each_partial([&](const std::string& key, const PartialRecord* r, const struct stat* part) {
    {
      std::lock_guard lock(partial_mu_);
      if (active_partials_.count(key) != 0) return;
      // A record or data file alone is a leftover of a crash between creating the two.
      const bool stale = r == nullptr || part == nullptr || now - r->updated_ns >= ttl_ns;
      if (!stale) return;
      // Claimed while removing, so a resume cannot open it half-way through.
      active_partials_.insert(key);
    }
    // A resume may have made progress between the read above and the claim: look again.
    PartialRecord now_r;
    UniqueFd again(::openat(partial_fd_.get(), (key + ".state").c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (r != nullptr && again && !load_record(again.get(), now_r) && now - now_r.updated_ns < ttl_ns) {
      release_partial(key);
      return;
    }
    remove_partial_files(key);
    release_partial(key);
    ++removed;
  });
  return removed;
}

std::vector<PartialInfo> Storage::list_partials() const {
  std::vector<PartialInfo> out;
  for_each_partial([&](const std::string& key, const PartialRecord* r, const struct stat* part) {
    if (r == nullptr || part == nullptr) return;
    PartialInfo p;
    p.name = r->name;
    p.size = r->size;
    p.received = good_bytes(*r);
    p.updated_ns = r->updated_ns;
    std::lock_guard lock(partial_mu_);
    p.active = active_partials_.count(key) != 0;
    out.push_back(std::move(p));
  });
  std::sort(out.begin(), out.end(), [](const PartialInfo& a, const PartialInfo& b) { return a.name < b.name; });
  return out;
}

std::error_code Storage::free_bytes(std::uint64_t& out) const {
  struct statvfs vfs {};
  if (::fstatvfs(staging_fd_.get(), &vfs) != 0) return last_error();
  out = static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  return {};
}

std::error_code Storage::open_file(std::string_view name, ReadFile& out, FolderCache* cache) const {
  if (auto ec = check_name(name)) return ec;
  DirFd dir;
  std::string leaf;
  if (auto ec = open_parent(name, /*create=*/false, dir, leaf, cache)) return ec;
  return open_in(dir, leaf, out);
}

std::error_code Storage::open_in(const DirFd& dir, const std::string& leaf, ReadFile& out) const {
  // O_NONBLOCK so that a FIFO planted in the root cannot block the open.
  UniqueFd fd(::openat(dir.get(), leaf.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
  if (!fd) return classify_open_error(dir.get(), leaf, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return last_error();
  if (!S_ISREG(st.st_mode)) return errc::not_regular;
  out.fd = std::move(fd);
  out.size = static_cast<std::uint64_t>(st.st_size);
  out.mtime_ns = mtime_ns(st);
  out.executable = is_executable(st);
  out.inode = st.st_ino;
  out.device = st.st_dev;
  out.ctime_ns = static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec;
  return {};
}

std::error_code Storage::lookup(std::string_view name, DirFd& dir, std::string& leaf, struct stat& st,
                                FolderCache* cache) const {
  if (auto ec = check_name(name)) return ec;
  if (auto ec = open_parent(name, /*create=*/false, dir, leaf, cache)) return ec;
  if (::fstatat(dir.get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return last_error();
  if (S_ISLNK(st.st_mode)) return errc::symlink;
  if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) return errc::not_regular;
  return {};
}

bool Storage::cached_digest(const ReadFile& file, hash::Digest& out) const {
  if (auto d = read_digest_record(file.fd.get(), file.size, file.mtime_ns, file.inode)) {
    out = *d;
    return true;
  }
  std::lock_guard lock(digest_mu_);
  const auto it = memory_digests_.find(DigestKey{file.device, file.inode, file.size, file.mtime_ns, file.ctime_ns});
  if (it == memory_digests_.end()) return false;
  out = it->second;
  return true;
}

std::error_code Storage::digest(const ReadFile& file, std::span<std::uint8_t> buf, hash::Digest& out,
                                bool& cached) const {
  cached = cached_digest(file, out);
  return cached ? std::error_code{} : compute_digest(file, buf, out);
}

std::error_code Storage::compute_digest(const ReadFile& file, std::span<std::uint8_t> buf, hash::Digest& out) const {
  if (auto ec = hash_fd(file.fd.get(), file.size, buf, out, std::make_error_code(std::errc::io_error))) return ec;
  const DigestKey key{file.device, file.inode, file.size, file.mtime_ns, file.ctime_ns};
  // Cache only if the file did not change while it was read.
  struct stat st {};
  if (::fstat(file.fd.get(), &st) == 0 && static_cast<std::uint64_t>(st.st_size) == file.size &&
      mtime_ns(st) == file.mtime_ns) {
    write_digest_record(file.fd.get(), out);
    std::lock_guard lock(digest_mu_);
    if (memory_digests_.insert_or_assign(key, out).second) memory_order_.push_back(key);
    if (memory_order_.size() > kMemoryDigests) {
      memory_digests_.erase(memory_order_.front());
      memory_order_.pop_front();
    }
  }
  return {};
}

std::error_code Storage::list(std::string_view folder, std::vector<FileInfo>& out, const ListOptions& opts) const {
  out.clear();
  UniqueFd dir;
  if (folder.empty()) {
    dir.reset(::openat(root_fd_.get(), ".", O_DIRECTORY | O_RDONLY | O_CLOEXEC));
    if (!dir) return last_error();
  } else {
    if (auto ec = check_name(folder)) return ec;
    DirFd parent;
    std::string leaf;
    if (auto ec = open_parent(folder, /*create=*/false, parent, leaf)) return ec;
    dir.reset(::openat(parent.get(), leaf.c_str(), kDirFlags));
    if (!dir) {
      const int saved = errno;
      struct stat st {};
      // `ls NAME` of a file lists that file, as ls(1) does.
      if (saved == ENOTDIR && ::fstatat(parent.get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
          S_ISREG(st.st_mode)) {
        out.push_back(info_of(std::string(folder), st));
      } else {
        return classify_open_error(parent.get(), leaf, saved);
      }
    }
  }
  if (dir) walk(dir.get(), std::string(folder), opts, out);
  std::sort(out.begin(), out.end(), [](const FileInfo& a, const FileInfo& b) { return a.name < b.name; });
  if (opts.digests) {
    std::vector<std::uint8_t> buf;
    FolderCache folders;  // the files come sorted: most share the previous one's folder
    for (auto& f : out) {
      if (f.folder) continue;
      ReadFile file;
      if (open_file(f.name, file, &folders)) continue;  // vanished or replaced by a folder meanwhile
      if (buf.empty()) buf.resize(1 << 20);
      hash::Digest d{};
      bool cached = false;
      if (opts.hash_missing ? !digest(file, buf, d, cached) : cached_digest(file, d)) f.digest = d;
      f.size = file.size;  // describe the version that was hashed
      f.mtime_ns = file.mtime_ns;
      f.executable = file.executable;
    }
  }
  return {};
}

std::error_code Storage::stat(std::string_view name, FileInfo& out, std::uint64_t hash_at_most,
                              FolderCache* cache) const {
  DirFd parent;
  std::string leaf;
  struct stat st {};
  if (auto ec = lookup(name, parent, leaf, st, cache)) return ec;
  if (S_ISDIR(st.st_mode)) {
    out = info_of(std::string(name), st);
    return {};
  }
  ReadFile file;
  if (auto ec = open_in(parent, leaf, file)) return ec;
  hash::Digest d{};
  std::optional<hash::Digest> known;
  if (cached_digest(file, d)) {
    known = d;
  } else if (file.size <= hash_at_most) {
    std::vector<std::uint8_t> buf(static_cast<std::size_t>(std::clamp<std::uint64_t>(file.size, 1, 1 << 20)));
    if (auto ec = compute_digest(file, buf, d)) return ec;
    known = d;
  }
  // Describe the version that was opened and hashed.
  out = FileInfo{std::string(name), file.size, file.mtime_ns, false, file.executable, known};
  return {};
}

std::error_code Storage::remove(std::string_view name) const {
  DirFd parent;
  std::string leaf;
  struct stat st {};
  if (auto ec = lookup(name, parent, leaf, st)) return ec;
  if (::unlinkat(parent.get(), leaf.c_str(), S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0) != 0) return last_error();
  // After the change, not before: a connection that read the old generation and resolved
  // the name before the change then cached it under a generation that is already past.
  if (S_ISDIR(st.st_mode)) folder_generation_.fetch_add(1, std::memory_order_acq_rel);
  if (::fsync(parent.get()) != 0) return errc::not_durable;
  return {};
}

std::error_code Storage::move(std::string_view from, std::string_view to, MoveResult& out) const {
  if (auto ec = check_name(to)) return ec;
  DirFd from_dir;
  std::string from_leaf;
  struct stat from_st {};
  if (auto ec = lookup(from, from_dir, from_leaf, from_st)) return ec;

  std::string target(to);
  DirFd to_dir;
  std::string to_leaf;
  auto ec = open_parent(target, /*create=*/false, to_dir, to_leaf);
  struct stat to_st {};
  bool exists = !ec && ::fstatat(to_dir.get(), to_leaf.c_str(), &to_st, AT_SYMLINK_NOFOLLOW) == 0;
  if (exists && S_ISLNK(to_st.st_mode)) return errc::symlink;
  if (exists && S_ISDIR(to_st.st_mode)) {
    // Into the folder, as mv(1) does.
    target += "/" + from_leaf;
    if (auto bad = check_name(target)) return bad;
    exists = false;
    ec = open_parent(target, /*create=*/false, to_dir, to_leaf);
    if (!ec) exists = ::fstatat(to_dir.get(), to_leaf.c_str(), &to_st, AT_SYMLINK_NOFOLLOW) == 0;
    if (exists && (S_ISLNK(to_st.st_mode) || S_ISDIR(to_st.st_mode))) {
      return std::make_error_code(std::errc::file_exists);
    }
  }
  if (target == from) {  // mv a a: nothing to do (and nothing replaced)
    out.to = target;
    out.replaced = false;
    return {};
  }
  if (S_ISDIR(from_st.st_mode) && target.size() > from.size() && target.starts_with(from) &&
      target[from.size()] == '/') {
    return std::make_error_code(std::errc::invalid_argument);  // into itself; refused before making folders
  }
  if (exists && S_ISDIR(from_st.st_mode) != S_ISDIR(to_st.st_mode)) {
    return std::make_error_code(S_ISDIR(to_st.st_mode) ? std::errc::is_a_directory : std::errc::not_a_directory);
  }
  if (ec) ec = open_parent(target, /*create=*/true, to_dir, to_leaf);
  if (ec) return ec;
  if (::renameat(from_dir.get(), from_leaf.c_str(), to_dir.get(), to_leaf.c_str()) != 0) return last_error();
  if (S_ISDIR(from_st.st_mode)) folder_generation_.fetch_add(1, std::memory_order_acq_rel);  // after: see remove()
  out.to = target;
  out.replaced = exists;
  if (::fsync(to_dir.get()) != 0 || ::fsync(from_dir.get()) != 0) return errc::not_durable;
  return {};
}

std::error_code Storage::make_folder(std::string_view name) const {
  if (auto ec = check_name(name)) return ec;
  DirFd parent;
  std::string leaf;
  if (auto ec = open_parent(name, /*create=*/true, parent, leaf)) return ec;
  if (::mkdirat(parent.get(), leaf.c_str(), 0755) == 0) {
    if (::fsync(parent.get()) != 0) return errc::not_durable;
    return {};
  }
  if (errno != EEXIST) return last_error();
  struct stat st {};
  if (::fstatat(parent.get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) return {};
  return std::make_error_code(std::errc::file_exists);
}

}  // namespace ftx::storage
