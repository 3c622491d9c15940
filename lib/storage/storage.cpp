#include "storage/storage.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <utility>

namespace ftx::storage {
namespace {

constexpr int kDirFlags = O_DIRECTORY | O_NOFOLLOW | O_RDONLY | O_CLOEXEC;

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

std::string random_staging_name() { return random_hex(12) + ".part"; }

// Calls fn(dirfd, entry_name, stat) for each entry of the folder `dirfd` except . and ..
template <typename Fn>
std::error_code for_each_entry(int dirfd, Fn&& fn) {
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
    if (::fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // vanished meanwhile
    fn(name, st);
  }
  ::closedir(dir);
  return {};
}

void walk(int dirfd, const std::string& prefix, std::vector<FileInfo>& out) {
  for_each_entry(dirfd, [&](std::string_view name, const struct stat& st) {
    if (prefix.empty() && (name == kStagingDir || name == kTlsDir)) return;
    std::string rel = prefix.empty() ? std::string(name) : prefix + "/" + std::string(name);
    if (check_name(rel)) return;  // not fetchable, so not listed
    if (S_ISREG(st.st_mode)) {
      out.push_back({std::move(rel), static_cast<std::uint64_t>(st.st_size), mtime_ns(st)});
    } else if (S_ISDIR(st.st_mode)) {
      UniqueFd child(::openat(dirfd, std::string(name).c_str(), kDirFlags));
      if (child) walk(child.get(), rel, out);
    }
  });
}

}  // namespace

// ---------------------------------------------------------------- Upload

Upload::~Upload() { abort(); }

Upload::Upload(Upload&& o) noexcept
    : store_(o.store_),
      name_(std::move(o.name_)),
      staging_name_(std::exchange(o.staging_name_, {})),
      fd_(std::move(o.fd_)),
      hasher_(std::move(o.hasher_)),
      size_(o.size_),
      written_(o.written_) {}

Upload& Upload::operator=(Upload&& o) noexcept {
  if (this != &o) {
    abort();
    store_ = o.store_;
    name_ = std::move(o.name_);
    staging_name_ = std::exchange(o.staging_name_, {});
    fd_ = std::move(o.fd_);
    hasher_ = std::move(o.hasher_);
    size_ = o.size_;
    written_ = o.written_;
  }
  return *this;
}

void Upload::abort() {
  if (!staging_name_.empty() && store_ != nullptr) {
    ::unlinkat(store_->staging_fd_.get(), staging_name_.c_str(), 0);
  }
  staging_name_.clear();
  fd_.reset();
}

std::error_code Upload::write(std::span<const std::uint8_t> data) {
  if (written_ + data.size() > size_) return errc::size_mismatch;
  if (auto ec = write_all(fd_.get(), data)) return ec;
  hasher_.update(data);
  written_ += data.size();
  return {};
}

std::error_code Upload::commit(const hash::Digest& expected, std::optional<std::int64_t> mtime_ns) {
  if (staging_name_.empty()) return std::make_error_code(std::errc::bad_file_descriptor);
  std::error_code ec;
  if (written_ != size_) {
    ec = errc::size_mismatch;
  } else if (hasher_.finish() != expected) {
    ec = errc::digest_mismatch;
  }
  if (!ec && mtime_ns) ec = set_mtime(fd_.get(), *mtime_ns);
  // The data must be on disk before the rename makes it visible, or a crash could publish
  // a file whose blocks never arrived.
  if (!ec && ::fsync(fd_.get()) != 0) ec = last_error();
  UniqueFd dir;
  std::string leaf;
  if (!ec) ec = store_->open_parent(name_, /*create=*/true, dir, leaf);
  if (!ec && ::renameat(store_->staging_fd_.get(), staging_name_.c_str(), dir.get(), leaf.c_str()) != 0) {
    ec = last_error();
  }
  if (ec) {
    abort();
    return ec;
  }
  staging_name_.clear();  // it is the final file now
  fd_.reset();
  // The rename is durable only once the folder is: this is what lets the server say
  // "stored" and mean it.
  if (::fsync(dir.get()) != 0) return errc::not_durable;
  return {};
}

// ---------------------------------------------------------------- Storage

Storage::Storage(const std::filesystem::path& root) : root_(root) {
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
  leftovers_removed_ = clean_staging();
}

std::size_t Storage::clean_staging() const {
  std::size_t removed = 0;
  for_each_entry(staging_fd_.get(), [&](std::string_view name, const struct stat& st) {
    const int flags = S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0;
    if (::unlinkat(staging_fd_.get(), std::string(name).c_str(), flags) == 0) ++removed;
  });
  return removed;
}

std::error_code Storage::open_parent(std::string_view name, bool create, UniqueFd& dir, std::string& leaf) const {
  const auto parts = split_name(name);
  UniqueFd cur(::openat(root_fd_.get(), ".", O_DIRECTORY | O_RDONLY | O_CLOEXEC));
  if (!cur) return last_error();
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    const std::string comp(parts[i]);
    UniqueFd next(::openat(cur.get(), comp.c_str(), kDirFlags));
    if (!next && errno == ENOENT && create) {
      if (::mkdirat(cur.get(), comp.c_str(), 0755) != 0 && errno != EEXIST) return last_error();
      ::fsync(cur.get());  // make the new folder's entry durable along with the file
      next.reset(::openat(cur.get(), comp.c_str(), kDirFlags));
    }
    if (!next) return classify_open_error(cur.get(), comp, errno);
    cur = std::move(next);
  }
  leaf = std::string(parts.back());
  dir = std::move(cur);
  return {};
}

std::error_code Storage::begin_upload(std::string_view name, std::uint64_t size, Upload& out) const {
  if (auto ec = check_name(name)) return ec;
  UniqueFd dir;
  std::string leaf;
  auto ec = open_parent(name, /*create=*/false, dir, leaf);
  if (ec && ec != std::errc::no_such_file_or_directory) return ec;  // missing folders are made at commit
  if (!ec) {
    struct stat st {};
    if (::fstatat(dir.get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
      return std::make_error_code(std::errc::is_a_directory);
    }
  }
  Upload up;
  up.store_ = this;
  up.name_ = std::string(name);
  up.size_ = size;
  up.staging_name_ = random_staging_name();
  up.fd_.reset(::openat(staging_fd_.get(), up.staging_name_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!up.fd_) {
    up.staging_name_.clear();
    return last_error();
  }
  out = std::move(up);
  return {};
}

std::error_code Storage::free_bytes(std::uint64_t& out) const {
  struct statvfs vfs {};
  if (::fstatvfs(staging_fd_.get(), &vfs) != 0) return last_error();
  out = static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  return {};
}

std::error_code Storage::open_file(std::string_view name, ReadFile& out) const {
  if (auto ec = check_name(name)) return ec;
  UniqueFd dir;
  std::string leaf;
  if (auto ec = open_parent(name, /*create=*/false, dir, leaf)) return ec;
  // O_NONBLOCK so that a FIFO planted in the root cannot block the open.
  UniqueFd fd(::openat(dir.get(), leaf.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
  if (!fd) return classify_open_error(dir.get(), leaf, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return last_error();
  if (!S_ISREG(st.st_mode)) return errc::not_regular;
  out.fd = std::move(fd);
  out.size = static_cast<std::uint64_t>(st.st_size);
  out.mtime_ns = mtime_ns(st);
  return {};
}

std::error_code Storage::list(std::string_view folder, std::vector<FileInfo>& out) const {
  out.clear();
  UniqueFd dir;
  if (folder.empty()) {
    dir.reset(::openat(root_fd_.get(), ".", O_DIRECTORY | O_RDONLY | O_CLOEXEC));
    if (!dir) return last_error();
  } else {
    if (auto ec = check_name(folder)) return ec;
    UniqueFd parent;
    std::string leaf;
    if (auto ec = open_parent(folder, /*create=*/false, parent, leaf)) return ec;
    dir.reset(::openat(parent.get(), leaf.c_str(), kDirFlags));
    if (!dir) return classify_open_error(parent.get(), leaf, errno);
  }
  walk(dir.get(), std::string(folder), out);
  std::sort(out.begin(), out.end(), [](const FileInfo& a, const FileInfo& b) { return a.name < b.name; });
  return {};
}

}  // namespace ftx::storage
