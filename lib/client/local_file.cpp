#include "client/local_file.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <chrono>
#include <utility>

#include "storage/names.hpp"

namespace ftx::client {
namespace {

// Staging files a signal handler must remove. Only async-signal-safe state: fixed buffers,
// each guarded by a lock-free atomic (free -> writing -> armed), so downloads on several
// threads each register their own file. Past kSlots at once, a file is not registered
// (it is still removed by the destructor, and by the next download after a kill). A folder
// download holds up to 64 files waiting for their group commit per connection, staged either
// by its receiving thread or by its publishing thread (a file staged on the receiving thread
// first waits until the publishing thread has finished), and get -r -P uses up to 64
// connections. The table is static (17 MiB of address space), but a slot's page is written
// only once a download uses it: it costs memory only as downloads fill it.
constexpr std::size_t kSlots = 64 * 64 + 128;
struct Slot {
  std::atomic<int> state{0};  // 0 free, 1 being written, 2 armed
  char path[4096];
};
// constinit: zeroes from the executable's .bss, not a loop at start-up that writes every
// slot (and so touched all 17 MiB in every ftx process, the server's too).
constinit Slot g_slots[kSlots]{};
static_assert(std::atomic<int>::is_always_lock_free, "signal handlers need lock-free atomics");

Slot* arm_cleanup(const std::string& s) {
  if (s.size() >= sizeof(Slot::path)) return nullptr;
  for (auto& slot : g_slots) {
    // A plain look first: a locked exchange on every busy slot passed would bounce their
    // cache lines between the threads of a get -r -P.
    if (slot.state.load(std::memory_order_relaxed) != 0) continue;
    int expected = 0;
    if (slot.state.compare_exchange_strong(expected, 1)) {
      std::memcpy(slot.path, s.c_str(), s.size() + 1);
      slot.state.store(2);
      return &slot;
    }
  }
  return nullptr;
}

void disarm_cleanup(Slot* slot) {
  if (slot != nullptr) slot->state.store(0);
}

// A get -r makes staging files on its publishing thread while the handler may run on
// another; a file made behind the handler's sweep, or made and not yet looked after when
// the process dies, would be left. So the handler sets g_dying before it sweeps, and
// waits (briefly: it may have interrupted the very thread making one) until no thread is
// inside StagedFile's making of a file (g_making). That thread looks at g_dying first (and
// then makes nothing) and again once the file exists and its slot is armed (and then
// removes it itself): a file is either swept or removed by its maker before the end.
std::atomic<bool> g_dying{false};
std::atomic<int> g_making{0};
static_assert(std::atomic<bool>::is_always_lock_free && std::atomic<int>::is_always_lock_free,
              "signal handlers need lock-free atomics");

extern "C" void on_fatal_signal(int sig) {
  g_dying.store(true);
  for (auto& slot : g_slots) {
    if (slot.state.load() == 2) ::unlink(slot.path);
  }
  for (int i = 0; i < 100000 && g_making.load() != 0; ++i) ::sched_yield();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// Never returns: the handler is ending the process.
[[noreturn]] void wait_for_the_end() {
  for (;;) ::pause();
}

// Staging names carry the pid; a folder download names thousands of them (getpid(2) is a
// system call each time in this glibc). The client never forks.
pid_t own_pid() {
  static const pid_t pid = ::getpid();
  return pid;
}

// Removes staging files in `dir` left by downloads whose process is gone (a SIGKILL cannot
// be caught). The pid in the name tells; a live process keeps its file.
void remove_dead_leftovers(const std::filesystem::path& dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    // Only names of exactly our shape: ".", target, ".ftx-", pid digits, '-', 12 hex
    // digits, ".part".
    const std::string name = entry.path().filename().string();
    if (!name.starts_with(".") || !name.ends_with(".part")) continue;
    const auto marker = name.rfind(".ftx-");
    if (marker == std::string::npos || marker == 0) continue;
    const std::size_t from = marker + 5;
    if (name.size() < from + 5) continue;
    const std::string_view rest(name.c_str() + from, name.size() - from - 5);
    const auto dash = rest.find('-');
    if (dash == 0 || dash == std::string_view::npos || rest.size() - dash - 1 != 12) continue;
    const auto pid_text = rest.substr(0, dash);
    const auto hex = rest.substr(dash + 1);
    if (pid_text.find_first_not_of("0123456789") != std::string_view::npos || pid_text.size() > 9) continue;
    if (hex.find_first_not_of("0123456789abcdef") != std::string_view::npos) continue;
    const long pid = std::strtol(std::string(pid_text).c_str(), nullptr, 10);
    if (pid <= 0 || pid == own_pid()) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == -1 && errno == ESRCH) ::unlink(entry.path().c_str());
  }
}

// 12 hex digits, unique within this process: a random half chosen once and a counter, so
// a folder download does not ask the kernel for randomness once per file.
std::string unique_suffix() {
  static const std::string random_half = storage::random_hex(3);
  static std::atomic<std::uint32_t> counter{0};
  char buf[8];
  std::snprintf(buf, sizeof buf, "%06x", counter.fetch_add(1) & 0xffffffu);
  return random_half + buf;
}

// The mode bits a new staging file gets in `dir` (0666 less the umask, or what the folder's
// default ACL makes of it), learnt from the first file created there: a folder download
// creates thousands of files in the same few folders, and an fstat each was one system
// call in ten. Assumes the process's umask does not change (the CLI never changes it).
// Thread-safe.
mode_t created_mode(std::string_view dir, int fd) {
  static std::mutex mutex;
  static std::string last;
  static mode_t mode = 0;
  {
    const std::lock_guard lock(mutex);
    if (!last.empty() && last == dir) return mode;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) return static_cast<mode_t>(-1);
  const std::lock_guard lock(mutex);
  last = dir;
  mode = st.st_mode & 07777;
  return mode;
}

}  // namespace

std::string_view folder_text(std::string_view target) {
  const std::string_view p = target;
  const auto slash = p.rfind('/');
  if (slash == std::string_view::npos) return ".";
  // "/x" is in "/"; "a//x" in "a/" (the same folder to the kernel).
  return slash == 0 ? p.substr(0, 1) : p.substr(0, slash);
}

std::filesystem::path folder_of(const std::filesystem::path& target) { return folder_text(target.native()); }

std::error_code sync_folder(const std::filesystem::path& dir) {
  // Not kept open between calls: a folder download syncs each folder once per group of
  // files, and a descriptor held for the process's life would keep its filesystem busy
  // (no unmount) in a program that uses this library.
  const storage::UniqueFd fd(::open(dir.c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC));
  // A folder one may write into but not read cannot be opened to sync; nothing to be done
  // there but what the filesystem does by itself (PostgreSQL's fsync_fname takes it so).
  if (!fd) return errno == EACCES ? std::error_code{} : storage::last_error();
  // The files are durable already; without this their names may not be. Some filesystems
  // cannot fsync a folder at all (EINVAL, ENOTSUP): not a failure of this download.
  if (::fsync(fd.get()) == 0 || errno == EINVAL || errno == ENOTSUP || errno == EBADF) return {};
  return storage::last_error();
}

void install_interrupt_cleanup() {
  for (const int sig : {SIGINT, SIGTERM, SIGHUP}) std::signal(sig, on_fatal_signal);
}

StagedFile::StagedFile(std::string target) : target_(std::move(target)) {
  // Text, not path operations: this runs once per file of a folder download.
  const std::string_view dir = folder_text(target_);
  const std::string_view whole = target_;
  const std::string_view leaf = whole.substr(whole.rfind('/') + 1);  // npos + 1 == 0
  // Once per folder and process: a folder download stages thousands of files in one
  // folder, and scanning it for each would cost time quadratic in its size.
  static std::mutex scanned_mutex;
  static std::set<std::string, std::less<>> scanned;
  static std::string last_scanned;  // most files go where the one before went
  {
    const std::lock_guard lock(scanned_mutex);
    if (last_scanned != dir) {
      if (scanned.find(dir) == scanned.end()) {
        scanned.emplace(dir);
        remove_dead_leftovers(std::filesystem::path(dir));
      }
      last_scanned = dir;
    }
  }
  std::string staging;
  staging.append(dir);
  if (staging.back() != '/') staging.push_back('/');
  staging.append(".").append(leaf).append(".ftx-").append(std::to_string(own_pid()));
  staging.append("-").append(unique_suffix()).append(".part");
  staging_ = std::move(staging);
  // Armed before the file exists, with g_dying looked at before and after: see
  // on_fatal_signal.
  g_making.fetch_add(1);
  if (g_dying.load()) {
    g_making.fetch_sub(1);
    wait_for_the_end();
  }
  cleanup_slot_ = arm_cleanup(staging_);
  fd_.reset(::open(staging_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666));
  const auto ec = fd_ ? std::error_code{} : storage::last_error();
  if (g_dying.load()) {
    if (fd_) ::unlink(staging_.c_str());
    g_making.fetch_sub(1);
    wait_for_the_end();
  }
  g_making.fetch_sub(1);
  if (ec) {
    disarm_cleanup(static_cast<Slot*>(cleanup_slot_));
    cleanup_slot_ = nullptr;
    throw std::system_error(ec, "cannot create " + staging_);
  }
}

namespace {
constexpr auto kLockWait = std::chrono::milliseconds(50);
constexpr int kLockTries = 60;

// Holds back the signals install_interrupt_cleanup handles (this thread's mask) for its
// lifetime; one that came meanwhile is delivered when it ends. Between creating the
// resumable files and arming their cleanup a dozen calls go by, and a Ctrl-C there left
// both files beside the target (the CLI test that presses it as soon as the record appears
// failed 6 times in 40 when it did not wait between looks).
class HoldInterrupts {
 public:
  HoldInterrupts() {
    sigset_t held;
    sigemptyset(&held);
    for (const int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&held, sig);
    pthread_sigmask(SIG_BLOCK, &held, &old_);
  }
  ~HoldInterrupts() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  HoldInterrupts(const HoldInterrupts&) = delete;
  HoldInterrupts& operator=(const HoldInterrupts&) = delete;

 private:
  sigset_t old_{};
};

std::filesystem::path resumable_data(const std::filesystem::path& target) {
  return folder_of(target) / ("." + target.filename().string() + ".ftx-partial");
}
std::filesystem::path resumable_record(const std::filesystem::path& target) {
  return folder_of(target) / ("." + target.filename().string() + ".ftx-partial.rec");
}
}  // namespace

StagedFile::StagedFile(StagedFile&& o) noexcept
    : target_(std::move(o.target_)),
      staging_(std::move(o.staging_)),
      fd_(std::move(o.fd_)),
      committed_(std::exchange(o.committed_, true)),
      resumable_(o.resumable_),
      record_path_(std::move(o.record_path_)),
      record_fd_(std::move(o.record_fd_)),
      record_(std::move(o.record_)),
      found_(o.found_),
      mode_(o.mode_),
      executable_(o.executable_),
      cleanup_slot_(std::exchange(o.cleanup_slot_, nullptr)),
      record_cleanup_slot_(std::exchange(o.record_cleanup_slot_, nullptr)) {}

std::optional<StagedFile> StagedFile::resumable(const std::filesystem::path& target) {
  // Until both files are armed for removal (guard_while_empty) or known to hold a resume.
  // Also over the wait for another download's lock: a Ctrl-C then takes effect after at
  // most kLockTries x kLockWait (3 s), when this one gives up or gets the lock.
  const HoldInterrupts hold;
  StagedFile f;
  f.target_ = target;
  f.resumable_ = true;
  f.staging_ = resumable_data(target);
  f.record_path_ = resumable_record(target);
  // Fixed names in a folder others may write to (/tmp): never through a symlink, only a
  // regular file of ours with one name.
  const auto open_own = [](const std::filesystem::path& p, mode_t mode) {
    storage::UniqueFd fd(::open(p.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, mode));
    struct stat st {};
    if (!fd || ::fstat(fd.get(), &st) != 0) throw std::system_error(storage::last_error(), "cannot create " + p.string());
    if (!S_ISREG(st.st_mode) || st.st_uid != ::geteuid() || st.st_nlink != 1) {
      throw std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                              p.string() + " is not a regular file of this user's");
    }
    return fd;
  };
  // Two downloads to one target at once: the second stages the usual way. The lock goes
  // with the descriptor, so a killed process never leaves it held -- but a process killed
  // in the middle of a large write lets go only once the write is done: a retry started at
  // once waits a little for it. A lock taken on a record that its holder removed meanwhile
  // (it finished) is on a file nobody else will find: start again with the current one.
  f.committed_ = true;  // inert (its destructor removes nothing) until the lock is ours
  for (int tries = 0;; ++tries) {
    f.record_fd_ = open_own(f.record_path_, 0600);
    if (::flock(f.record_fd_.get(), LOCK_EX | LOCK_NB) == 0) {
      struct stat held {};
      struct stat now {};
      if (::fstat(f.record_fd_.get(), &held) == 0 && ::lstat(f.record_path_.c_str(), &now) == 0 &&
          held.st_ino == now.st_ino && held.st_dev == now.st_dev) {
        break;
      }
    } else if (errno != EWOULDBLOCK) {
      return std::nullopt;
    }
    if (tries == kLockTries) return std::nullopt;
    std::this_thread::sleep_for(kLockWait);
  }
  f.committed_ = false;
  f.fd_ = open_own(f.staging_, 0666);
  struct stat st {};
  f.found_ = !storage::load_record(f.record_fd_.get(), f.record_) && storage::current_boot(f.record_) &&
             ::fstat(f.fd_.get(), &st) == 0 &&
             static_cast<std::uint64_t>(st.st_size) >= f.record_.good.bytes;
  f.guard_while_empty(!f.found_);
  return f;
}

void StagedFile::guard_while_empty(bool empty) {
  if (empty) {
    // Each on its own: with the table full one may be armed and not the other.
    if (cleanup_slot_ == nullptr) cleanup_slot_ = arm_cleanup(staging_);
    if (record_cleanup_slot_ == nullptr) record_cleanup_slot_ = arm_cleanup(record_path_);
  } else {
    disarm_cleanup(static_cast<Slot*>(cleanup_slot_));
    disarm_cleanup(static_cast<Slot*>(record_cleanup_slot_));
    cleanup_slot_ = record_cleanup_slot_ = nullptr;
  }
}

void StagedFile::discard_resumable(const std::filesystem::path& target) {
  const auto rec = resumable_record(target);
  storage::UniqueFd fd(::open(rec.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd || ::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) return;  // none, or in use
  ::unlink(resumable_data(target).c_str());
  ::unlink(rec.c_str());
}

std::error_code StagedFile::continue_found() {
  if (!found_) return std::make_error_code(std::errc::invalid_argument);
  const auto at = static_cast<off_t>(record_.good.bytes);
  // Bytes past the last checkpoint were never recorded as good: cut them off.
  if (::ftruncate(fd_.get(), at) != 0 || ::lseek(fd_.get(), at, SEEK_SET) < 0) return storage::last_error();
  return {};
}

std::error_code StagedFile::keep_found(storage::PartialRecord r) {
  record_ = std::move(r);
  found_ = false;
  guard_while_empty(std::none_of(record_.ranges.begin(), record_.ranges.end(), [](std::uint8_t b) { return b != 0; }));
  if (::ftruncate(record_fd_.get(), 0) != 0) return storage::last_error();
  return storage::save_record(record_fd_.get(), record_);
}

std::error_code StagedFile::start(storage::PartialRecord fresh) {
  record_ = std::move(fresh);
  found_ = false;
  guard_while_empty(true);
  if (::ftruncate(fd_.get(), 0) != 0 || ::lseek(fd_.get(), 0, SEEK_SET) < 0) return storage::last_error();
  if (::ftruncate(record_fd_.get(), 0) != 0) return storage::last_error();
  return storage::save_record(record_fd_.get(), record_);
}

void StagedFile::checkpoint(const hash::State& after) {
  storage::advance(record_, after);
  storage::save_record(record_fd_.get(), record_);  // best effort: a resume then starts earlier
  guard_while_empty(false);  // holds a chunk now: Ctrl-C keeps it
}

void StagedFile::range_done(std::uint64_t i) {
  storage::mark_range(record_, i);
  record_.updated_ns = storage::wall_clock_ns();
  storage::save_record(record_fd_.get(), record_);  // best effort: a resume then fetches it again
  guard_while_empty(false);
}

void StagedFile::discard() {
  if (committed_) return;
  ::unlink(staging_.c_str());
  if (resumable_) ::unlink(record_path_.c_str());
  guard_while_empty(false);
  committed_ = true;
  fd_.reset();
  record_fd_.reset();
}

StagedFile::~StagedFile() {
  if (resumable_) {
    // Kept for the next attempt if it holds anything worth resuming; an empty one (a
    // request that failed, a transfer cut before its first chunk) is not left lying around.
    const bool holds_ranges =
        std::any_of(record_.ranges.begin(), record_.ranges.end(), [](std::uint8_t b) { return b != 0; });
    if (!committed_ && record_.good.bytes == 0 && !holds_ranges) discard();
    return;
  }
  if (!committed_) {
    ::unlink(staging_.c_str());  // before disarming, so a signal in between finds it gone
    disarm_cleanup(static_cast<Slot*>(cleanup_slot_));
  }
}

std::error_code StagedFile::commit(std::optional<std::int64_t> mtime_ns, std::optional<bool> executable,
                                   bool sync) {
  if (auto ec = seal(mtime_ns, executable)) return ec;
  if (auto ec = place(/*data_synced=*/false)) return ec;
  if (sync && sync_folder(folder_of(target_))) return storage::errc::not_durable;
  return {};
}

std::error_code StagedFile::seal(std::optional<std::int64_t> mtime_ns, std::optional<bool> executable) {
  // 0666 less the umask, from the open; a resumable file may come from an earlier run (and
  // another umask): asked each time.
  struct stat mine {};
  const mode_t created = !resumable_                        ? created_mode(folder_text(target_), fd_.get())
                         : ::fstat(fd_.get(), &mine) == 0 ? mine.st_mode & 07777
                                                          : static_cast<mode_t>(-1);
  if (created == static_cast<mode_t>(-1)) return storage::last_error();
  executable_ = executable;
  // The mode for a new target; one that exists keeps its permission bits (place()).
  mode_ = with_exec_bits(created);
  if (mode_ != created && ::fchmod(fd_.get(), mode_) != 0) return storage::last_error();
  if (mtime_ns) {
    if (auto ec = storage::set_mtime(fd_.get(), *mtime_ns)) return ec;
  }
  return {};
}

mode_t StagedFile::with_exec_bits(mode_t m) const {
  return executable_ ? (m & ~mode_t{0111}) | (*executable_ ? (m & 0444) >> 2 : 0) : m;
}

std::error_code StagedFile::place(bool data_synced, storage::CloseBatch* closing) {
  if (!data_synced && ::fsync(fd_.get()) != 0) return storage::last_error();
  // A target that does not exist yet -- every file of a fresh folder download -- is taken
  // in one call, without looking first (a stat per file was one system call in seven).
  if (::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, target_.c_str(), RENAME_NOREPLACE) != 0) {
    // EEXIST: replace it, keeping its permission bits; EINVAL or ENOSYS: a file system (or
    // kernel) that cannot refuse to replace -- then the same, looked at first.
    if (errno != EEXIST && errno != EINVAL && errno != ENOSYS) return storage::last_error();
    struct stat old {};
    if (::stat(target_.c_str(), &old) == 0 && S_ISREG(old.st_mode)) {
      const mode_t keep = with_exec_bits(old.st_mode & 07777);
      if (keep != mode_) {
        if (::fchmod(fd_.get(), keep) != 0 || ::fsync(fd_.get()) != 0) return storage::last_error();
      }
    }
    if (::rename(staging_.c_str(), target_.c_str()) != 0) return storage::last_error();
  }
  if (resumable_) ::unlink(record_path_.c_str());
  committed_ = true;
  guard_while_empty(false);
  if (closing != nullptr) {
    closing->add(std::move(fd_));
  } else {
    fd_.reset();
  }
  return {};
}

std::vector<std::error_code> publish_staged(std::span<StagedFile* const> files) {
  std::vector<std::error_code> results(files.size());
  // One fsync per file is a journal commit and a disk-cache flush per file on a disk (the
  // files' blocks are only placed as each is written out, so no fsync serves the next).
  // One syncfs per filesystem the files are on writes them all out and commits once; its
  // price is that it also writes out whatever else is dirty there. The folders of a folder
  // download may be on different filesystems (a mount inside it): one fstat per change of
  // folder tells. A failed syncfs leaves those files to their own fsync, which says which.
  // The syncfs goes to the first file of each filesystem: the kernel reports a write-back
  // error to the files opened before it, and the files come in the order they were made,
  // so every byte of the group was written after that one was opened. Where syncfs would
  // not say that some data was lost (storage::syncfs_covers), each file fsyncs.
  std::vector<bool> synced(files.size(), false);
  if (files.size() > 1) {
    struct Device {
      dev_t dev;
      int fd;
      std::vector<std::size_t> members;
    };
    std::vector<Device> devices;
    std::string_view folder;
    std::size_t current = 0;  // index into devices; devices.size() = none
    for (std::size_t i = 0; i < files.size(); ++i) {
      const std::string_view f = folder_text(files[i]->target_);
      if (devices.empty() || current == devices.size() || f != folder) {
        struct stat st {};
        folder = f;
        if (::fstat(files[i]->fd(), &st) != 0) {
          current = devices.size();  // this folder's files fsync on their own
          continue;
        }
        const auto it = std::find_if(devices.begin(), devices.end(), [&](const Device& d) { return d.dev == st.st_dev; });
        current = static_cast<std::size_t>(it - devices.begin());
        if (it == devices.end()) devices.push_back(Device{st.st_dev, files[i]->fd(), {}});
      }
      if (current < devices.size()) devices[current].members.push_back(i);
    }
    for (const auto& d : devices) {
      if (d.members.size() < 2 || !storage::syncfs_covers(d.fd) || ::syncfs(d.fd) != 0) continue;
      for (const auto i : d.members) synced[i] = true;
    }
  }
  storage::CloseBatch closing;  // the group's files, once renamed: a close_range per run
  for (std::size_t i = 0; i < files.size(); ++i) results[i] = files[i]->place(synced[i], &closing);
  return results;
}

}  // namespace ftx::client
