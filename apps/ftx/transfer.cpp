// put and get: one file, or with -r a whole folder over one pipelined connection (-P: several).

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <unordered_map>

#include "apps/ftx/commands.hpp"
#include "apps/ftx/exit_codes.hpp"
#include "apps/ftx/output.hpp"
#include "client/compare.hpp"
#include "client/local_file.hpp"
#include "hash/sha256.hpp"
#include "storage/fd.hpp"
#include "storage/names.hpp"

namespace ftx::app {
namespace fs = std::filesystem;

namespace {

nlohmann::json json_result(const char* op, const std::string& local, const std::string& remote,
                           const client::BatchResult& r) {
  nlohmann::json j = r.error ? json_error(*r.error) : nlohmann::json{{"ok", true}};
  j["op"] = op;
  j["local"] = local;
  j["remote"] = remote;
  if (!r.error) {
    j["bytes"] = r.result.bytes;
    j["sha256"] = hash::to_hex(r.result.digest);
    j["executable"] = r.result.executable;
  }
  return j;
}

// --skip-identical: the JSON object of a file left alone because the other side holds it
// already (nothing moved; bytes and sha256 are the file's).
nlohmann::json json_identical(const char* op, const std::string& local, const std::string& remote,
                              const client::Entry& e) {
  return {{"ok", true},
          {"op", op},
          {"local", local},
          {"remote", remote},
          {"bytes", e.size},
          {"sha256", hash::to_hex(*e.digest)},
          {"executable", e.executable},
          {"identical", true}};
}

// The outcome of a folder transfer, for the summary line and the exit code.
struct Tally {
  std::uint64_t files = 0;
  std::uint64_t failed = 0;
  std::uint64_t identical = 0;  // --skip-identical: not moved, the other side has them
  std::uint64_t bytes = 0;
  std::uint64_t folders_failed = 0;  // put -r: an empty folder the server refused to make
  int first_failure = kOk;  // the exit code: that of the first file (in sorted order) that failed
  std::size_t first_failed_index = SIZE_MAX;  // -P reports files out of order
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();

  void add(const client::BatchResult& r) {
    ++files;
    if (r.error) {
      ++failed;
      if (r.index < first_failed_index) {
        first_failed_index = r.index;
        first_failure = exit_code_for(r.error->kind());
      }
    } else {
      bytes += r.result.bytes;
    }
  }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  nlohmann::json json(const char* op, std::uint64_t skipped) const {
    return {{"op", op},         {"summary", true},      {"ok", failed == 0 && folders_failed == 0}, {"files", files - failed},
            {"failed", failed}, {"identical", identical}, {"skipped", skipped}, {"bytes", bytes},
            {"seconds", seconds()}};
  }
  // The summary line's tail: ", 2 failed", ", 9998 identical (not sent)".
  std::string tail(const char* not_moved) const {
    std::string t;
    if (failed > 0) t += ", " + std::to_string(failed) + " failed";
    if (folders_failed > 0) t += ", an empty folder not made";
    if (identical > 0) t += ", " + std::to_string(identical) + " identical (" + not_moved + ")";
    return t;
  }
};

// After --skip-identical's local check, which may take long (reading and hashing files):
// whether the server kept the connection `c` meanwhile -- it closes one that waited longer
// than its --idle-timeout between requests, without a word. One PING tells; a connection that
// fails it is replaced with `reconnect`. (Not closed for the check and opened anew after it:
// a server that allows one connection per client, --max-per-client 1, might not have let go
// of the old one yet.)
void keep_alive(std::unique_ptr<client::Client>& c, const std::function<std::unique_ptr<client::Client>()>& reconnect) {
  try {
    c->ping();
    return;
  } catch (const client::Error& e) {
    if (e.kind() != client::Failure::kConnection) throw;
  }
  c = reconnect();
}

// --skip-identical for a folder: leaves out of `items` the files the other side holds
// already, `listed[i]` being the server's file of items[i]'s name as a listing described it
// (nullptr: none), and returns the rest, in order. Each left out is counted in `tally`, its
// bytes taken off `bytes`, and with `json` reported.
//  1. A stat per local file (client::may_be_identical) keeps those whose size, mtime and
//     mode match.
//  2. Their SHA-256s: from the listing where the server had them on record (a listing
//     asked for no others: the server would hash every file it has none for), else one
//     pipelined STAT each, for which the server hashes the file.
//  3. They are read and hashed under a "checking" bar that counts their bytes. That may take
//     longer than the server lets a connection wait between requests: when files remain to
//     be moved, keep_alive() checks `c` and has `reconnect` replace it if need be.
std::vector<client::BatchItem> leave_out_identical(std::vector<client::BatchItem> items,
                                                   const std::vector<const client::Entry*>& listed,
                                                   client::Direction direction, bool json, bool bar_wanted,
                                                   Tally& tally, std::uint64_t& bytes,
                                                   std::unique_ptr<client::Client>& c,
                                                   const std::function<std::unique_ptr<client::Client>()>& reconnect) {
  const char* op = direction == client::Direction::kUpload ? "put" : "get";
  std::vector<std::optional<client::Entry>> stored(items.size());  // candidates with their SHA-256
  std::vector<std::size_t> unknown;  // candidates whose SHA-256 the listing did not carry
  std::vector<std::string> names;    // theirs
  std::uint64_t to_check = 0;
  std::uint64_t candidates = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (listed[i] == nullptr || !client::may_be_identical(items[i].local, *listed[i], direction)) continue;
    ++candidates;
    if (listed[i]->digest) {
      stored[i] = *listed[i];
      to_check += listed[i]->size;
    } else {
      unknown.push_back(i);
      names.push_back(items[i].remote);
    }
  }
  if (candidates == 0) return items;
  if (!names.empty()) {
    c->stat_many(names, [&](std::size_t k, std::optional<client::Entry> e) {
      if (e) to_check += e->size;
      stored[unknown[k]] = std::move(e);
    });
  }
  std::vector<client::BatchItem> rest;
  {
    ProgressBar bar(bar_wanted, to_check, candidates, "checking");
    std::uint64_t checked = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
      const auto& e = stored[i];
      const bool same =
          e && client::is_identical(items[i].local, *e, direction, [&](std::uint64_t n) { bar.add_bytes(n); });
      if (e) {
        checked += e->size;
        bar.bytes(checked);  // a file that differed counts as checked all the same
        bar.file_done();
      }
      if (!same) {
        rest.push_back(std::move(items[i]));
        continue;
      }
      ++tally.identical;
      bytes -= std::min(bytes, e->size);
      if (json) print_json(json_identical(op, items[i].local, items[i].remote, *e));
    }
    bar.finish();
  }
  if (!rest.empty()) keep_alive(c, reconnect);
  return rest;
}

// After the error of a connection failure that ended a folder transfer half-way (a lost
// connection, a stopping server), on stderr: what got through before it is not hidden
// behind the error. (Other failures of the whole command, such as an extra connection of
// -P N refused for its certificate, come before anything could go.)
// `done` says where the files went ("were stored under photos"), `rest` what became of the
// others ("are not confirmed").
void print_cut_short(const Tally& t, std::size_t total, const std::string& done, const char* rest) {
  std::string line = "before that, " + std::to_string(t.files - t.failed) + " of " + std::to_string(total) +
                     " files " + done;
  if (t.failed > 0) line += ", " + std::to_string(t.failed) + " failed";
  line += "; the other " + std::to_string(total - t.files) + " " + rest;
  print_error(line);
}

// "photos/" -> "photos"; "." -> the current folder's name.
std::string folder_base_name(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  if (p == "." || p.empty()) {
    std::error_code ec;
    p = fs::current_path(ec);
  }
  return p.filename().string();
}

// The batch options of a folder transfer: -P connections. Each may hold up to 64 staging
// files open at once (get -r) besides its socket, its io_context's three (epoll, eventfd,
// timerfd) and a folder being synced: the soft limit on open descriptors (1024 on most
// systems) is raised to the hard limit, and the connections are as many as that allows
// (after 64 for everything else), at least one.
client::BatchOptions folder_batch_options(unsigned parallel) {
  constexpr std::uint64_t kPerConnection = 64 + 8;
  client::BatchOptions o;
  o.connections = parallel;
  if (parallel > 1) {
    const std::uint64_t limit = raise_descriptor_limit();
    if (limit != 0 && limit != RLIM_INFINITY) {
      const std::uint64_t fits = limit > 64 ? (limit - 64) / kPerConnection : 0;
      o.connections = static_cast<unsigned>(std::clamp<std::uint64_t>(fits, 1, parallel));
    }
  }
  return o;
}

// ------------------------------------------------------------------ put -r

struct LocalTree {
  std::vector<client::BatchItem> files;
  std::vector<std::string> empty_folders;  // remote names of folders with no file below
  std::uint64_t bytes = 0;
  std::uint64_t skipped = 0;
};

// Walks `root` with readdir's file types, so a tree of small files costs no stat per entry
// (three per file before: a tenth of the client's system calls); the upload stats each file
// once when it opens it. `sizes`: also add up the files' sizes (for the progress bar), one
// fstatat each.
//
// A folder at a time, on demand (more()), so that put -r can send the first folder's files
// while the rest is still to be walked. The files come in the order of their remote names,
// as one sort of the whole list would give them: each folder's entries are sorted by name,
// a subfolder's as its name and a '/' -- every name below it starts so -- and a subfolder
// is walked where it sorts.
class TreeWalk {
 public:
  // Opens `root` (client::Error kLocalIo when it cannot be).
  TreeWalk(const fs::path& root, std::string remote_root, bool sizes)
      : root_(root), remote_root_(std::move(remote_root)), sizes_(sizes) {
    root_fd_.reset(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root_fd_) fail(root.string(), errno);
    // A file's local path is this text + its path below the root + its name (`root / rel`
    // made each time was most of a walk's time).
    root_text_ = root.string();
    if (!root_text_.empty() && root_text_.back() != '/') root_text_ += '/';
  }

  // Calls add() with the next files: kSome of them, fewer only where the walk ends. false:
  // it was over (nothing added).
  // Throws client::Error (kLocalIo) for a folder it cannot read.
  bool more(const std::function<void(client::BatchItem&&)>& add) {
    constexpr std::size_t kSome = 64;
    std::size_t added = 0;
    while (added < kSome) {
      if (!started_) {
        started_ = true;
        enter("");
        continue;
      }
      if (stack_.empty()) break;
      Folder& f = stack_.back();
      if (f.next == f.entries.size()) {
        if (!f.holds_files) {
          if (!f.remote.empty()) empty_folders_.push_back(f.remote);
        } else if (stack_.size() > 1) {
          stack_[stack_.size() - 2].holds_files = true;
        }
        stack_.pop_back();
        continue;
      }
      Entry& e = f.entries[f.next++];
      if (e.folder) {
        enter(f.rel.empty() ? e.name : f.rel + "/" + e.name);  // invalidates f
        continue;
      }
      f.holds_files = true;
      std::string local;
      local.reserve(f.local_text.size() + e.name.size());
      local.append(f.local_text).append(e.name);
      add({std::move(local), f.remote.empty() ? std::move(e.name) : f.remote + "/" + e.name});
      ++added;
    }
    if (stack_.empty()) std::sort(empty_folders_.begin(), empty_folders_.end());  // parents first
    return added > 0;
  }

  // Once the walk is over: remote names of the folders with no file below, sorted.
  const std::vector<std::string>& empty_folders() const { return empty_folders_; }
  std::uint64_t bytes() const { return bytes_; }          // with `sizes`: of the files so far
  std::uint64_t skipped() const { return skipped_; }      // symbolic links and the like so far

 private:
  struct Entry {
    std::string name;
    bool folder = false;
    std::string key;  // what it sorts by: the name, and for a folder a '/'
  };
  struct Folder {
    std::string rel;         // below the root ("" for the root)
    std::string remote;      // its remote name
    std::string local_text;  // its local path and a '/'
    std::vector<Entry> entries;
    std::size_t next = 0;
    bool holds_files = false;  // a file somewhere below
  };

  [[noreturn]] static void fail(const std::string& what, int err) {
    throw client::Error(client::Failure::kLocalIo, "cannot read folder " + what + ": " + std::strerror(err));
  }

  // Reads the folder `rel` (below the root) and puts it on top of the stack. It is opened
  // only now, so a folder with thousands of subfolders holds one descriptor, not thousands.
  void enter(const std::string& rel) {
    Folder f;
    f.rel = rel;
    f.remote = remote_root_.empty() ? rel : rel.empty() ? remote_root_ : remote_root_ + "/" + rel;
    f.local_text = rel.empty() ? root_text_ : root_text_ + rel + "/";
    const std::string shown = rel.empty() ? root_.string() : root_text_ + rel;
    const int dfd = rel.empty() ? ::dup(root_fd_.get())
                                : ::openat(root_fd_.get(), rel.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    // Gone (or no longer a folder) since its parent was read -- more likely now that the
    // walk goes on while files are sent: skipped, as a file gone meanwhile is.
    if (dfd < 0 && !rel.empty() && (errno == ENOENT || errno == ENOTDIR)) return;
    if (dfd < 0) fail(shown, errno);
    DIR* dir = ::fdopendir(dfd);
    if (dir == nullptr) {
      const int err = errno;
      ::close(dfd);
      fail(shown, err);
    }
    const std::unique_ptr<DIR, int (*)(DIR*)> closer(dir, ::closedir);  // closes dfd too
    for (;;) {
      errno = 0;  // readdir leaves errno alone at the end of the folder
      const dirent* e = ::readdir(dir);
      if (e == nullptr) {
        if (errno != 0) fail(shown, errno);
        break;
      }
      const std::string_view leaf(e->d_name);
      if (leaf == "." || leaf == "..") continue;
      unsigned char type = e->d_type;
      struct stat st {};
      bool have_stat = false;
      if (type == DT_UNKNOWN || (type == DT_REG && sizes_)) {
        if (::fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // gone meanwhile
        have_stat = true;
        type = S_ISREG(st.st_mode) ? DT_REG : S_ISDIR(st.st_mode) ? DT_DIR : S_ISLNK(st.st_mode) ? DT_LNK : DT_UNKNOWN;
      }
      if (type == DT_LNK) {
        print_error("skipping symbolic link " + f.local_text + e->d_name);
        ++skipped_;
      } else if (type == DT_DIR || type == DT_REG) {
        Entry entry{std::string(leaf), type == DT_DIR, {}};
        if (entry.folder) entry.key = entry.name + "/";
        f.entries.push_back(std::move(entry));
        if (have_stat && type == DT_REG) bytes_ += static_cast<std::uint64_t>(st.st_size);
      } else {
        print_error("skipping " + f.local_text + e->d_name + ": not a regular file or folder");
        ++skipped_;
      }
    }
    std::sort(f.entries.begin(), f.entries.end(), [](const Entry& a, const Entry& b) {
      return (a.folder ? a.key : a.name) < (b.folder ? b.key : b.name);
    });
    stack_.push_back(std::move(f));
  }

  fs::path root_;
  std::string remote_root_;
  bool sizes_;
  storage::UniqueFd root_fd_;
  std::string root_text_;
  bool started_ = false;
  std::vector<Folder> stack_;  // the folders being walked, innermost last
  std::vector<std::string> empty_folders_;
  std::uint64_t bytes_ = 0;
  std::uint64_t skipped_ = 0;
};

// The whole tree at once (the progress bar wants its totals, --skip-identical and -P the
// whole list).
LocalTree scan_local(const fs::path& root, const std::string& remote_root, bool sizes) {
  LocalTree t;
  TreeWalk walk(root, remote_root, sizes);
  while (walk.more([&](client::BatchItem&& item) { t.files.push_back(std::move(item)); })) {
  }
  t.empty_folders = walk.empty_folders();
  t.bytes = walk.bytes();
  t.skipped = walk.skipped();
  return t;
}

int put_folder(const PutOptions& opts, const protocol::Address& address) {
  const std::string remote_root = opts.remote.empty() ? folder_base_name(opts.local) : opts.remote;
  Tally tally;
  LocalTree tree;
  std::optional<TreeWalk> walk;  // the walk fed to the batch as it goes, if it was
  client::BatchFeed feed;        // its files so far
  bool sending = false;          // the files' batch began
  // After the files, so a refusal no longer keeps them from going: the first refused MKDIR
  // is reported (`ftx: server refused mkdir ...`), counted, and ends the folders; the
  // summary follows, and the exit code is the first failed file's, else the refusal's.
  const auto make_empty_folders = [&](client::Client& c, const std::vector<std::string>& folders) {
    for (const auto& folder : folders) {
      try {
        c.make_folder(folder);
      } catch (const client::Error& e) {
        if (!e.refused()) throw;
        print_error(e.what());
        ++tally.folders_failed;
        if (tally.first_failure == kOk) tally.first_failure = exit_code_for(e.kind());
        return;
      }
    }
  };
  const auto report = [&](const client::BatchItem& item, const client::BatchResult& r) {
    tally.add(r);
    if (r.error) print_error("put " + storage::quote_name(item.remote) + ": " + r.error->what());
    if (opts.client.json) print_json(json_result("put", item.local, item.remote, r));
  };
  const int rc = run_client_action(opts.client, "put", [&] {
    const bool bar_wanted = progress_wanted(opts.quiet, opts.client.json);
    if (!bar_wanted && !opts.skip_identical && opts.parallel <= 1) {
      // Walked as the files go, unless something wants the whole list first: the bar its
      // totals, --skip-identical its comparison, -P the files to share out. The walk's
      // first folder goes out while the rest is walked (TreeWalk); empty folders are made
      // at the end, when the walk knows them (so they are in the other case too). A folder
      // that cannot be read ends the batch there: what was sent is reported, then the error.
      walk.emplace(opts.local, remote_root, false);
      auto c = connect(opts.client, address);
      std::optional<client::Error> unreadable;
      feed.more = [&](std::deque<client::BatchItem>& items) {
        try {
          return walk->more([&](client::BatchItem&& item) { items.push_back(std::move(item)); });
        } catch (const client::Error& e) {
          unreadable = e;
          return false;
        }
      };
      sending = true;
      c->put_fed(feed, folder_batch_options(1),
                 [&](const client::BatchResult& r) { report(feed.items[r.index], r); });
      feed.more = nullptr;  // it refers to `unreadable`, which goes now
      if (unreadable) throw client::Error(*unreadable);
      make_empty_folders(*c, walk->empty_folders());
      return;
    }
    tree = scan_local(opts.local, remote_root, bar_wanted);
    auto c = connect(opts.client, address);
    if (opts.skip_identical) {
      // What the server holds under REMOTE_DIR: names, sizes, mtimes, modes and the SHA-256s
      // it has on record (none there yet is no error: nothing is identical then).
      std::unordered_map<std::string, client::Entry> stored;
      try {
        c->list(remote_root, [&](const client::Entry& e) { stored.emplace(e.name, e); },
                client::ListOptions{.digests = true, .known_digests_only = true});
      } catch (const client::Error& e) {
        // A refused listing leaves --skip-identical knowing nothing: the uploads go ahead and
        // meet the problem themselves, if it is one. Anything else ends the command.
        if (!e.refused()) throw;
      }
      std::vector<const client::Entry*> listed(tree.files.size(), nullptr);
      for (std::size_t i = 0; i < tree.files.size(); ++i) {
        const auto it = stored.find(tree.files[i].remote);
        if (it != stored.end()) listed[i] = &it->second;
      }
      tree.files = leave_out_identical(std::move(tree.files), listed, client::Direction::kUpload, opts.client.json,
                                       bar_wanted, tally, tree.bytes, c, [&] { return connect(opts.client, address); });
      if (tree.files.empty()) return make_empty_folders(*c, tree.empty_folders);  // all there already
    }
    ProgressBar bar(bar_wanted, tree.bytes, tree.files.size());
    sending = true;
    c->put_many(
        tree.files, folder_batch_options(opts.parallel),
        [&](const client::BatchResult& r) {
          report(tree.files[r.index], r);
          bar.file_done();
        },
        [&](std::uint64_t n) { bar.add_bytes(n); });
    bar.finish();
    // After the files, as when walked as they go (the uploads make the others).
    make_empty_folders(*c, tree.empty_folders);
  });
  // The files found: all of them, once a fed walk is over. One cut short is walked to its
  // end here, to say how many were not confirmed.
  std::size_t total = walk ? feed.items.size() : tree.files.size();
  if (rc != kOk) {
    if (rc == kConnection && sending && !opts.client.json) {
      try {
        while (walk && walk->more([&](client::BatchItem&&) { ++total; })) {
        }
      } catch (const client::Error&) {  // a folder it cannot read: the count so far
      }
      print_cut_short(tally, total, "were stored under " + printable(remote_root), "are not confirmed");
    }
    return rc;
  }
  if (opts.client.json) {
    print_json(tally.json("put", walk ? walk->skipped() : tree.skipped));
  } else {
    std::printf("stored %llu of %zu files (%s) under %s in %.1f s%s\n",
                static_cast<unsigned long long>(tally.files - tally.failed), total,
                human_size(tally.bytes).c_str(), printable(remote_root).c_str(), tally.seconds(),
                tally.tail("not sent").c_str());
  }
  return tally.first_failure;
}

// ------------------------------------------------------------------ get -r

int get_folder(const GetOptions& opts, const protocol::Address& address) {
  // "." (or "/" or "") names the whole store.
  std::string remote_root = opts.remote;
  while (remote_root.size() > 1 && remote_root.back() == '/') remote_root.pop_back();
  if (remote_root == "." || remote_root == "/") remote_root.clear();
  const fs::path local_root = !opts.local.empty()       ? fs::path(opts.local)
                              : remote_root.empty()     ? fs::path(".")
                                                        : fs::path(fs::path(remote_root).filename());
  Tally tally;
  std::vector<client::BatchItem> files;
  std::vector<client::Entry> remote_files;  // --skip-identical: files[i]'s entry, for the comparison
  std::uint64_t total = 0;
  std::uint64_t skipped = 0;
  bool receiving = false;  // the files' batch began
  const int rc = run_client_action(opts.client, "get", [&] {
    auto c = connect(opts.client, address);
    const bool bar_wanted = progress_wanted(opts.quiet, opts.client.json);
    std::vector<fs::path> folders{local_root};
    const std::string prefix = remote_root.empty() ? "" : remote_root + "/";
    // local_root / rel, as text (client::BatchItem says why): LOCAL_DIR and one slash.
    std::string root_text = local_root.native();
    if (!root_text.empty() && root_text.back() != '/') root_text += '/';
    c->list(
        remote_root,
        [&](const client::Entry& e) {
          std::string rel;
          if (e.name == remote_root) {
            rel = fs::path(e.name).filename().string();  // REMOTE_DIR is a file: fetch it into LOCAL_DIR
          } else if (e.name.starts_with(prefix)) {
            rel = e.name.substr(prefix.size());
          }
          // Names come from the server: never let one climb out of LOCAL_DIR.
          if (rel.empty() || storage::check_name(rel)) {
            print_error("skipping " + storage::quote_name(e.name) + ": not a safe local name");
            ++skipped;
            return;
          }
          if (e.folder) {
            folders.push_back(local_root / rel);
          } else {
            files.push_back({root_text + rel, e.name});
            if (opts.skip_identical) remote_files.push_back(e);
            total += e.size;
          }
        },
        // Sizes only for the bar's total or the comparison: without them the server need not
        // stat every entry (most of a 10,000-file listing's time, and nothing is fetched until
        // it is done). SHA-256s for the comparison, those on record only (leave_out_identical).
        client::ListOptions{.digests = opts.skip_identical,
                            .known_digests_only = true,
                            .folders = true,
                            .names_only = !bar_wanted && !opts.skip_identical});
    for (const auto& f : folders) {
      std::error_code ec;
      fs::create_directories(f, ec);
      if (ec) throw client::Error(client::Failure::kLocalIo, "cannot create folder " + f.string() + ": " + ec.message());
    }
    std::string made;  // files come sorted: most share the previous one's folder
    for (const auto& f : files) {
      const std::string_view folder = client::folder_text(f.local);
      if (folder == made) continue;
      made = folder;
      std::error_code ec;
      fs::create_directories(fs::path(made), ec);
      if (ec) throw client::Error(client::Failure::kLocalIo, "cannot create folder " + made + ": " + ec.message());
    }
    if (opts.skip_identical) {
      std::vector<const client::Entry*> listed;
      listed.reserve(remote_files.size());
      for (const auto& e : remote_files) listed.push_back(&e);
      files = leave_out_identical(std::move(files), listed, client::Direction::kDownload, opts.client.json, bar_wanted,
                                  tally, total, c, [&] { return connect(opts.client, address); });
      if (files.empty()) return;  // all there already
    }
    ProgressBar bar(bar_wanted, total, files.size());
    receiving = true;
    c->get_many(
        files, folder_batch_options(opts.parallel),
        [&](const client::BatchResult& r) {
          const auto& item = files[r.index];
          tally.add(r);
          bar.file_done();
          if (r.error) print_error("get " + storage::quote_name(item.remote) + ": " + r.error->what());
          if (opts.client.json) print_json(json_result("get", item.local, item.remote, r));
        },
        [&](std::uint64_t n) { bar.add_bytes(n); });
    bar.finish();
  });
  if (rc != kOk) {
    if (rc == kConnection && receiving && !opts.client.json) {
      print_cut_short(tally, files.size(), "were saved into " + printable(local_root.string()), "were not");
    }
    return rc;
  }
  if (opts.client.json) {
    print_json(tally.json("get", skipped));
  } else {
    std::printf("saved %llu of %zu files (%s) into %s in %.1f s%s\n",
                static_cast<unsigned long long>(tally.files - tally.failed), files.size(),
                human_size(tally.bytes).c_str(), local_root.c_str(), tally.seconds(), tally.tail("not fetched").c_str());
  }
  return tally.first_failure;
}

// -P/--parallel: the same words on put and get.
void add_parallel_option(CLI::App& cmd, unsigned& parallel, const char* what) {
  cmd.add_option("-P,--parallel", parallel,
                 std::string("move the file over N connections at once, each carrying ranges of it (for long, "
                             "lossy links where one TCP stream crawls); the server may allow fewer "
                             "(--max-streams). ") +
                     what +
                     " Files of 1 MiB or less use one connection. With -r: spread the folder's files over N "
                     "connections (more cores at work on both sides); each file travels whole on one of them")
      ->check(CLI::Range(1u, 64u))
      ->default_str("1");
}

// --skip-identical: the same words on put and get.
void add_skip_identical_option(CLI::App& cmd, bool& skip, const char* other_side) {
  cmd.add_flag("--skip-identical", skip,
               std::string("skip every file ") + other_side +
                   " already holds: same size, mtime, execute bits and SHA-256 (a file whose size, mtime and mode "
                   "match is read and hashed here to make sure); with -r, file by file");
}

// A single file left alone by --skip-identical: "identical <shown> (<size>, sha256 <hex>):
// not <sent|fetched>", or its JSON object.
void report_identical(const char* op, const std::string& local, const std::string& remote, const client::Entry& e,
                      bool json, const std::string& shown, const char* not_moved) {
  if (json) {
    print_json(json_identical(op, local, remote, e));
  } else {
    std::printf("identical %s (%s, sha256 %s): not %s\n", printable(shown).c_str(), human_size(e.size).c_str(),
                hash::to_hex(*e.digest).c_str(), not_moved);
  }
}

// --skip-identical for one file: the server's file `remote`, with its SHA-256, when the local
// file `local` may be identical to it; else nullopt. A LIST of the name first (size, mtime,
// mode), and only when those match a STAT for the SHA-256, which the server may have to
// compute.
std::optional<client::Entry> identical_candidate(client::Client& c, const std::string& remote,
                                                 const fs::path& local, client::Direction direction) {
  std::optional<client::Entry> listed;
  try {
    c.list(remote, [&](const client::Entry& e) {
      if (e.name == remote) listed = e;
    });
  } catch (const client::Error& e) {
    if (!e.refused()) throw;  // refused: nothing known, the transfer goes ahead (as put_folder)
  }
  if (!listed || !client::may_be_identical(local, *listed, direction)) return std::nullopt;
  std::optional<client::Entry> stored;
  c.stat_many({remote}, [&](std::size_t, std::optional<client::Entry> e) { stored = std::move(e); });
  return stored;
}

// Progress for put and get: the bar learns the total on the first call, which also says
// where a resumed transfer starts.
client::ProgressFn bar_progress(ProgressBar& bar) {
  return [&bar, started = false](std::uint64_t done, std::uint64_t total) mutable {
    bar.set_total(total);
    if (!std::exchange(started, true)) bar.start_at(done);
    bar.bytes(done);
  };
}

}  // namespace

CLI::App* setup_put(CLI::App& app, PutOptions& opts) {
  auto* cmd = app.add_subcommand("put", "upload a file (or with -r a folder); published on the server only after its "
                                        "SHA-256 matched");
  cmd->add_option("LOCAL_FILE", opts.local, "file to upload (with -r: a folder)")->required();
  cmd->add_option("REMOTE_NAME", opts.remote,
                  "name on the server (default: LOCAL_FILE's base name; with -r: the folder that receives the tree)");
  cmd->add_flag("-r,--recursive", opts.recursive,
                "upload a folder: its files and folders, with mtimes and executable bits; symbolic links are skipped");
  cmd->add_flag("-q,--quiet", opts.quiet, "no progress bar");
  cmd->add_flag("--no-resume", opts.no_resume,
                "start over: drop what an interrupted upload of this file left on the server, and leave nothing "
                "to resume should this one be interrupted (default: files over 1 MiB resume)");
  add_parallel_option(*cmd, opts.parallel,
                      "The server publishes the file once its whole SHA-256 matched; an interrupted one resumes "
                      "with the ranges the server lacks.");
  add_skip_identical_option(*cmd, opts.skip_identical, "the server");
  add_server_option(*cmd, opts.client);
  cmd->footer(
      "Examples:\n"
      "  ftx put report.pdf\n"
      "  ftx put big.iso                   run again after an interruption: only the rest is sent\n"
      "  ftx put build/app.tar.gz releases/1.0/app.tar.gz -s 10.0.0.5:7021\n"
      "  ftx put -r photos                 upload ./photos as photos/ (one connection, pipelined)\n"
      "  ftx put -r site/ www/2026         upload the tree under www/2026/\n"
      "  ftx put -P 8 big.iso              over 8 connections (a long, lossy link)\n"
      "  ftx put -r -P 2 photos            the tree's files over 2 connections\n"
      "  ftx put -r --skip-identical photos  again later: only new and changed files are sent\n"
      "  ftx put data.csv --json           {\"bytes\":...,\"executable\":false,...,\"ok\":true,\"op\":\"put\",...}");
  return cmd;
}

CLI::App* setup_get(CLI::App& app, GetOptions& opts) {
  auto* cmd = app.add_subcommand("get", "download a file (or with -r a folder); it replaces LOCAL_PATH only after its "
                                        "SHA-256 matched");
  cmd->add_option("REMOTE_NAME", opts.remote, "name on the server (with -r: a folder; \".\" for everything)")
      ->required();
  cmd->add_option("LOCAL_PATH", opts.local,
                  "where to write it (default: ./<base name>; a folder: <folder>/<base name>; "
                  "\"-\" or /dev/stdout: standard output; with -r: the folder that receives the tree)");
  cmd->add_flag("-r,--recursive", opts.recursive, "download a folder's files and folders, with mtimes and executable bits");
  cmd->add_flag("-q,--quiet", opts.quiet, "no progress bar");
  cmd->add_flag("--no-resume", opts.no_resume,
                "start over: drop the hidden .NAME.ftx-partial an interrupted download left beside the target, "
                "and leave none should this one be interrupted");
  add_parallel_option(*cmd, opts.parallel,
                      "The file replaces LOCAL_PATH once its whole SHA-256 matched; an interrupted one resumes with the ranges it lacks.");
  add_skip_identical_option(*cmd, opts.skip_identical, "LOCAL_PATH");
  add_server_option(*cmd, opts.client);
  cmd->footer(
      "Examples:\n"
      "  ftx get report.pdf\n"
      "  ftx get big.iso                   run again after an interruption: only the rest is fetched\n"
      "  ftx get -P 8 big.iso              over 8 connections (a long, lossy link)\n"
      "  ftx get releases/1.0/app.tar.gz /tmp/\n"
      "  ftx get notes.txt - | less\n"
      "  ftx get -r photos                 into ./photos\n"
      "  ftx get -r www/2026 /srv/site     into /srv/site\n"
      "  ftx get -r . backup/              everything stored\n"
      "  ftx get -r -P 2 photos            the tree's files over 2 connections\n"
      "  ftx get -r --skip-identical photos  fetch only what ./photos lacks or holds otherwise");
  return cmd;
}

int run_put(const PutOptions& opts) {
  const auto address = server_address(opts.client);
  if (!address) return kUsage;
  std::error_code ec;
  const bool is_folder = fs::is_directory(opts.local, ec);
  if (opts.recursive && is_folder) return put_folder(opts, *address);
  if (is_folder) {
    print_error(opts.local + " is a folder; use 'ftx put -r' to upload folders");
    return kLocalIo;  // as before -r existed: scripts may test for it
  }
  std::string remote = opts.remote;
  if (remote.empty()) remote = fs::path(opts.local).filename().string();
  if (remote.empty()) {
    print_error("cannot tell a remote name from \"" + opts.local + "\"; give REMOTE_NAME");
    return kUsage;
  }
  return run_client_action(opts.client, "put", [&] {
    auto c = connect(opts.client, *address);
    if (opts.skip_identical) {
      const auto e = identical_candidate(*c, remote, opts.local, client::Direction::kUpload);
      if (e) {
        if (client::is_identical(opts.local, *e, client::Direction::kUpload)) {
          return report_identical("put", opts.local, remote, *e, opts.client.json, remote, "sent");
        }
        keep_alive(c, [&] { return connect(opts.client, *address); });  // hashing a large file takes a while
      }
    }
    ProgressBar bar(progress_wanted(opts.quiet, opts.client.json), 0);
    const auto r = opts.parallel > 1
                       ? c->put_parallel(opts.local, remote, opts.parallel, bar_progress(bar),
                                         client::TransferOptions{!opts.no_resume})
                       : c->put(opts.local, remote, bar_progress(bar), client::TransferOptions{!opts.no_resume});
    bar.finish();
    if (opts.client.json) {
      print_json(json_result("put", opts.local, remote, client::BatchResult{0, r, std::nullopt}));
    } else {
      std::printf("stored %s (%s, sha256 %s)\n", printable(remote).c_str(), human_size(r.bytes).c_str(),
                  hash::to_hex(r.digest).c_str());
    }
  });
}

int run_get(const GetOptions& opts) {
  const auto address = server_address(opts.client);
  if (!address) return kUsage;
  if (opts.recursive) return get_folder(opts, *address);
  return run_client_action(opts.client, "get", [&] {
    auto c = connect(opts.client, *address);
    if (opts.skip_identical && opts.local != "-" && opts.local != "/dev/stdout") {
      const auto target = client::Client::download_target(opts.remote, opts.local);
      const auto e = identical_candidate(*c, opts.remote, target, client::Direction::kDownload);
      if (e) {
        if (client::is_identical(target, *e, client::Direction::kDownload)) {
          return report_identical("get", target.string(), opts.remote, *e, opts.client.json, target.string(), "fetched");
        }
        keep_alive(c, [&] { return connect(opts.client, *address); });
      }
    }
    ProgressBar bar(progress_wanted(opts.quiet, opts.client.json), 0);
    const auto r = opts.parallel > 1
                       ? c->get_parallel(opts.remote, opts.local, opts.parallel, bar_progress(bar),
                                         client::TransferOptions{!opts.no_resume})
                       : c->get(opts.remote, opts.local, bar_progress(bar), client::TransferOptions{!opts.no_resume});
    bar.finish();
    // With the file on standard output, the summary must not mix into it.
    std::FILE* out = r.local == "-" ? stderr : stdout;
    if (opts.client.json) {
      if (r.local != "-") print_json(json_result("get", r.local, opts.remote, client::BatchResult{0, r, std::nullopt}));
    } else {
      std::fprintf(out, "saved %s (%s, sha256 %s)\n", r.local == "-" ? "to standard output" : r.local.c_str(),
                   human_size(r.bytes).c_str(), hash::to_hex(r.digest).c_str());
    }
  });
}

}  // namespace ftx::app
