#include "storage/storage.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <linux/fs.h>
#include <fcntl.h>
#include <unistd.h>

#include "hash/sha256.hpp"
#include "support/test_support.hpp"

namespace ftx::storage {
namespace {

using test::read_file;
using test::write_file;

class StorageTest : public ::testing::Test {
 protected:
  std::filesystem::path root() const { return dir_ / "root"; }
  std::filesystem::path staging() const { return root() / std::string(kStagingDir); }

  // Stores `content` under `name` through the public API; returns the commit result.
  std::error_code store(Storage& s, const std::string& name, const std::string& content,
                        std::optional<hash::Digest> digest = std::nullopt) {
    Upload up;
    if (auto ec = s.begin_upload(name, content.size(), up)) return ec;
    const auto* p = reinterpret_cast<const std::uint8_t*>(content.data());
    if (auto ec = up.write({p, content.size()})) return ec;
    return up.commit(digest.value_or(hash::sha256(content)), std::nullopt);
  }

  static std::string read_all(const ReadFile& f) {
    std::string out(f.size, '\0');
    std::size_t got = 0;
    EXPECT_FALSE(pread_full(f.fd.get(), {reinterpret_cast<std::uint8_t*>(out.data()), out.size()}, 0, got));
    out.resize(got);
    return out;
  }

  test::TempDir dir_;
};

TEST_F(StorageTest, StoresAndReadsBackCreatingFolders) {
  Storage s(root());
  ASSERT_FALSE(store(s, "a/b/c.txt", "hello"));
  ReadFile f;
  ASSERT_FALSE(s.open_file("a/b/c.txt", f));
  EXPECT_EQ(f.size, 5u);
  EXPECT_EQ(read_all(f), "hello");
  EXPECT_TRUE(test::staging_files(staging()).empty());
}

TEST_F(StorageTest, RefusesHostileNamesEverywhere) {
  Storage s(root());
  write_file(dir_ / "outside.txt", "secret");
  const std::vector<std::string> hostile = {"../outside.txt", "a/../../outside.txt", "/etc/passwd",
                                            std::string("x\0y", 3),     std::string(),         ".ftx-staging/x",
                                            "a//b"};
  for (const auto& name : hostile) {
    Upload up;
    EXPECT_TRUE(s.begin_upload(name, 1, up)) << quote_name(name);
    ReadFile f;
    EXPECT_TRUE(s.open_file(name, f)) << quote_name(name);
    std::vector<FileInfo> files;
    if (!name.empty()) {  // "" lists the root
      EXPECT_TRUE(s.list(name, files)) << quote_name(name);
    }
  }
  EXPECT_EQ(read_file(dir_ / "outside.txt").size(), 6u);
}

TEST_F(StorageTest, NeverFollowsSymlinksOutOfTheRoot) {
  Storage s(root());
  std::filesystem::create_directories(dir_ / "outside");
  write_file(dir_ / "outside" / "secret", "secret");
  std::filesystem::create_directory_symlink(dir_ / "outside", root() / "dirlink");
  std::filesystem::create_symlink(dir_ / "outside" / "secret", root() / "filelink");

  ReadFile f;
  EXPECT_EQ(s.open_file("dirlink/secret", f), errc::symlink);
  EXPECT_EQ(s.open_file("filelink", f), errc::symlink);
  Upload up;
  EXPECT_EQ(s.begin_upload("dirlink/planted", 1, up), errc::symlink);
  std::vector<FileInfo> files;
  EXPECT_EQ(s.list("dirlink", files), errc::symlink);
  ASSERT_FALSE(s.list("", files));
  EXPECT_TRUE(files.empty()) << "symlinks are not listed";
  EXPECT_FALSE(std::filesystem::exists(dir_ / "outside" / "planted"));
}

TEST_F(StorageTest, FolderCreatedAsSymlinkDuringUploadIsNotFollowed) {
  // The parent is checked at begin and walked again, without following links, at commit.
  Storage s(root());
  std::filesystem::create_directories(dir_ / "outside");
  Upload up;
  ASSERT_FALSE(s.begin_upload("late/x", 1, up));
  std::filesystem::create_directory_symlink(dir_ / "outside", root() / "late");
  ASSERT_FALSE(up.write(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>("x"), 1)));
  EXPECT_EQ(up.commit(hash::sha256("x"), std::nullopt), errc::symlink);
  EXPECT_TRUE(test::list_dir(dir_ / "outside").empty());
  EXPECT_TRUE(test::staging_files(staging()).empty());
}

TEST_F(StorageTest, ReplaceIsAtomicForReaders) {
  Storage s(root());
  ASSERT_FALSE(store(s, "doc", "version one"));
  ReadFile before;
  ASSERT_FALSE(s.open_file("doc", before));

  Upload up;
  const std::string v2 = "version two, longer";
  ASSERT_FALSE(s.begin_upload("doc", v2.size(), up));
  ASSERT_FALSE(up.write({reinterpret_cast<const std::uint8_t*>(v2.data()), v2.size()}));
  ReadFile during;
  ASSERT_FALSE(s.open_file("doc", during));
  EXPECT_EQ(read_all(during), "version one") << "an unfinished upload is invisible";
  ASSERT_FALSE(up.commit(hash::sha256(v2), std::nullopt));

  EXPECT_EQ(read_all(before), "version one") << "a reader that opened the old file keeps it whole";
  ReadFile after;
  ASSERT_FALSE(s.open_file("doc", after));
  EXPECT_EQ(read_all(after), v2);
}

TEST_F(StorageTest, DigestMismatchPublishesNothingAndKeepsTheOldFile) {
  Storage s(root());
  ASSERT_FALSE(store(s, "kept", "old"));
  EXPECT_EQ(store(s, "kept", "new!", hash::sha256("something else")), errc::digest_mismatch);
  EXPECT_EQ(store(s, "fresh", "data", hash::sha256("other")), errc::digest_mismatch);
  ReadFile f;
  ASSERT_FALSE(s.open_file("kept", f));
  EXPECT_EQ(read_all(f), "old");
  EXPECT_EQ(s.open_file("fresh", f), std::errc::no_such_file_or_directory);
  EXPECT_TRUE(test::staging_files(staging()).empty());
}

TEST_F(StorageTest, SizeMismatchIsRefused) {
  Storage s(root());
  Upload up;
  ASSERT_FALSE(s.begin_upload("short", 10, up));
  ASSERT_FALSE(up.write(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>("abc"), 3)));
  EXPECT_EQ(up.commit(hash::sha256("abc"), std::nullopt), errc::size_mismatch);
  Upload over;
  ASSERT_FALSE(s.begin_upload("over", 2, over));
  EXPECT_EQ(over.write(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>("abc"), 3)),
            errc::size_mismatch);
}

TEST_F(StorageTest, AbandonedUploadLeavesNothing) {
  Storage s(root());
  {
    Upload up;
    ASSERT_FALSE(s.begin_upload("gone", 100, up));
    ASSERT_FALSE(up.write(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>("abc"), 3)));
    EXPECT_EQ(test::staging_files(staging()).size(), 1u);
  }
  EXPECT_TRUE(test::staging_files(staging()).empty());
  EXPECT_FALSE(std::filesystem::exists(root() / "gone"));
}

TEST_F(StorageTest, CrashLeftoversAreRemovedAtStartup) {
  std::filesystem::create_directories(staging());
  write_file(staging() / "deadbeef.part", "half an upload");
  write_file(staging() / "cafe.part", "another");
  Storage s(root());
  EXPECT_EQ(s.leftovers_removed(), 2u);
  EXPECT_TRUE(test::staging_files(staging()).empty());
}

TEST_F(StorageTest, FoldersAndSpecialFilesAreNotRegularFiles) {
  Storage s(root());
  ASSERT_FALSE(store(s, "dir/file", "x"));
  ReadFile f;
  EXPECT_EQ(s.open_file("dir", f), errc::not_regular);
  ASSERT_EQ(::mkfifo((root() / "fifo").c_str(), 0600), 0);
  EXPECT_EQ(s.open_file("fifo", f), errc::not_regular) << "and opening it did not block";
  Upload up;
  EXPECT_EQ(s.begin_upload("dir", 1, up), std::errc::is_a_directory);
  EXPECT_EQ(s.begin_upload("dir/file/below", 1, up), std::errc::not_a_directory);
}

TEST_F(StorageTest, ListIsSortedRecursiveAndHidesStaging) {
  Storage s(root());
  for (const char* n : {"b.txt", "a/z.txt", "a/b/c.txt", ".hidden"}) ASSERT_FALSE(store(s, n, n));
  Upload in_progress;
  ASSERT_FALSE(s.begin_upload("pending", 5, in_progress));
  std::vector<FileInfo> files;
  ASSERT_FALSE(s.list("", files));
  std::vector<std::string> names;
  for (const auto& f : files) names.push_back(f.name);
  EXPECT_EQ(names, (std::vector<std::string>{".hidden", "a/b/c.txt", "a/z.txt", "b.txt"}));
  EXPECT_EQ(files[3].size, 5u);
  ASSERT_FALSE(s.list("a", files));
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].name, "a/b/c.txt");
  EXPECT_EQ(s.list("missing", files), std::errc::no_such_file_or_directory);
}

TEST_F(StorageTest, CommitAppliesTheGivenMtime) {
  Storage s(root());
  Upload up;
  ASSERT_FALSE(s.begin_upload("old", 1, up));
  ASSERT_FALSE(up.write(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>("x"), 1)));
  const std::int64_t mtime = 1'000'000'000'123'456'789;
  ASSERT_FALSE(up.commit(hash::sha256("x"), mtime));
  ReadFile f;
  ASSERT_FALSE(s.open_file("old", f));
  EXPECT_EQ(f.mtime_ns, mtime);
}

// Group commit (a pipelined batch): stage() verifies and seals each upload, and nothing is
// visible until publish_staged() publishes them together, in order. Once with staging files
// without a name (O_TMPFILE, linked at publish: skipped where the kernel cannot link them)
// and once with named ones.
class StagedTest : public StorageTest, public ::testing::WithParamInterface<Staging> {
 protected:
  void SetUp() override {
    StorageTest::SetUp();
    if (GetParam() == Staging::kAnonymousWherePossible && !Storage(root()).anonymous_staging()) {
      GTEST_SKIP() << "O_TMPFILE files cannot be linked here (linkat AT_EMPTY_PATH)";
    }
  }
  static std::size_t open_descriptors() {
    const std::filesystem::directory_iterator fds("/proc/self/fd");
    return static_cast<std::size_t>(std::distance(begin(fds), end(fds)));
  }
  static std::string text(const std::filesystem::path& p) {
    const auto bytes = read_file(p);
    return {bytes.begin(), bytes.end()};
  }
  // Begins a streamed upload of `content` to `name` (as a batch does) and stages it.
  std::error_code stage(Storage& s, FolderCache& cache, const std::string& name, const std::string& content,
                        Upload& up, std::optional<hash::Digest> digest = std::nullopt,
                        std::optional<std::int64_t> mtime = std::nullopt) {
    if (auto ec = s.begin_upload(name, content.size(), up, &cache, /*streamed=*/true)) return ec;
    const auto* p = reinterpret_cast<const std::uint8_t*>(content.data());
    if (auto ec = up.write({p, content.size()})) return ec;
    return up.stage(digest.value_or(hash::sha256(content)), mtime);
  }
};

TEST_P(StagedTest, StagedUploadsAreInvisibleUntilPublishedTogether) {
  Storage s(root(), GetParam());
  FolderCache cache;
  const auto descriptors = open_descriptors();
  std::vector<Upload> ups(4);
  // Larger than kUnrecordedUploadMax, so that its digest is recorded at upload.
  const std::string two(kUnrecordedUploadMax + 2, '2');
  // Two into a folder that does not exist yet (made once, by the first to be published).
  ASSERT_FALSE(stage(s, cache, "new/one", "1", ups[0]));
  ASSERT_FALSE(stage(s, cache, "new/two", two, ups[1], std::nullopt, 1'000'000'000'000'000'007));
  ASSERT_FALSE(stage(s, cache, "top", "333", ups[2]));
  ASSERT_FALSE(stage(s, cache, "new/deeper/three", "4444", ups[3]));
  EXPECT_FALSE(std::filesystem::exists(root() / "new"));
  EXPECT_FALSE(std::filesystem::exists(root() / "top"));
  // Named, they wait in the staging folder; without a name, nowhere.
  EXPECT_EQ(test::staging_files(staging()).size(), GetParam() == Staging::kNamed ? 4u : 0u);

  std::vector<Upload*> batch{&ups[0], &ups[1], &ups[2], &ups[3]};
  const auto results = s.publish_staged(batch);
  ASSERT_EQ(results.size(), 4u);
  for (const auto& ec : results) EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(text(root() / "new/one"), "1");
  EXPECT_EQ(text(root() / "new/two"), two);
  EXPECT_EQ(text(root() / "top"), "333");
  EXPECT_EQ(text(root() / "new/deeper/three"), "4444");
  EXPECT_TRUE(test::staging_files(staging()).empty());
  EXPECT_EQ(open_descriptors(), descriptors) << "every staging file's descriptor closed";
  // Sealed as commit() seals: the mtime given, and the verified digest kept with the file.
  ReadFile f;
  ASSERT_FALSE(s.open_file("new/two", f));
  EXPECT_EQ(f.mtime_ns, 1'000'000'000'000'000'007);
  hash::Digest d{};
  ASSERT_TRUE(s.cached_digest(f, d));
  EXPECT_EQ(d, hash::sha256(two));
  // A small one gets no record: whoever needs its SHA-256 first hashes it.
  ASSERT_FALSE(s.open_file("new/one", f));
  EXPECT_FALSE(s.cached_digest(f, d));
}

TEST_P(StagedTest, OneThatCannotBePublishedFailsAloneAndTheLaterOfTwoSameNamesWins) {
  Storage s(root(), GetParam());
  const auto descriptors = open_descriptors();
  std::filesystem::create_directories(root() / "dir");
  FolderCache cache;
  std::vector<Upload> ups(3);
  ASSERT_FALSE(stage(s, cache, "same", "first", ups[0]));
  // A streamed upload is not checked against a folder of its name until it is published.
  ASSERT_FALSE(stage(s, cache, "dir", "x", ups[1]));
  ASSERT_FALSE(stage(s, cache, "same", "second", ups[2]));
  std::vector<Upload*> batch{&ups[0], &ups[1], &ups[2]};
  const auto results = s.publish_staged(batch);
  EXPECT_FALSE(results[0]);
  EXPECT_TRUE(results[1]);
  EXPECT_NE(results[1], errc::not_durable);  // nothing was stored for it
  EXPECT_FALSE(results[2]);
  EXPECT_EQ(text(root() / "same"), "second");
  EXPECT_TRUE(std::filesystem::is_directory(root() / "dir"));
  EXPECT_TRUE(test::staging_files(staging()).empty());
  EXPECT_EQ(open_descriptors(), descriptors);
  // An upload over a file that is there: replaced, in place.
  Upload again;
  ASSERT_FALSE(stage(s, cache, "same", "third", again));
  std::vector<Upload*> one{&again};
  EXPECT_FALSE(s.publish_staged(one)[0]);
  EXPECT_EQ(text(root() / "same"), "third");
  EXPECT_TRUE(test::staging_files(staging()).empty());
}

TEST_P(StagedTest, AWrongDigestIsRefusedAtStageAndLeavesNothing) {
  Storage s(root(), GetParam());
  ASSERT_FALSE(store(s, "kept", "old"));
  FolderCache cache;
  Upload up;
  EXPECT_EQ(stage(s, cache, "kept", "new", up, hash::sha256("other")), errc::digest_mismatch);
  EXPECT_TRUE(test::staging_files(staging()).empty());
  EXPECT_EQ(text(root() / "kept"), "old");
}

// At the descriptor limit (ulimit -n), a burst into a folder that does not exist yet is still
// published: its staging files give their descriptors back before the folder is opened
// (named ones are closed once durable; anonymous ones get a name in the staging folder first).
TEST_P(StagedTest, ABurstIntoANewFolderIsPublishedAtTheDescriptorLimit) {
  Storage s(root(), GetParam());
  FolderCache cache;
  std::vector<Upload> ups(8);
  for (std::size_t i = 0; i < ups.size(); ++i) {
    ASSERT_FALSE(stage(s, cache, "fresh/f" + std::to_string(i), std::string(i + 1, 'x'), ups[i]));
  }
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
  // Every descriptor number below the new limit taken: the process cannot open one more.
  struct Fill {
    rlimit old;
    std::vector<int> fds;
    ~Fill() {
      for (const int fd : fds) ::close(fd);
      ::setrlimit(RLIMIT_NOFILE, &old);
    }
  } fill{old, {}};
  int highest = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    highest = std::max(highest, std::stoi(e.path().filename().string()));
  }
  struct rlimit tight = old;
  tight.rlim_cur = static_cast<rlim_t>(highest) + 1;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &tight), 0);
  for (int fd; (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) fill.fds.push_back(fd);
  ASSERT_EQ(errno, EMFILE);

  std::vector<Upload*> batch;
  for (auto& up : ups) batch.push_back(&up);
  const auto results = s.publish_staged(batch);
  for (std::size_t i = 0; i < ups.size(); ++i) {
    EXPECT_FALSE(results[i]) << i << ": " << results[i].message();
    EXPECT_EQ(text(root() / ("fresh/f" + std::to_string(i))), std::string(i + 1, 'x'));
  }
  EXPECT_TRUE(test::staging_files(staging()).empty());
}

INSTANTIATE_TEST_SUITE_P(Staging, StagedTest, ::testing::Values(Staging::kAnonymousWherePossible, Staging::kNamed),
                         [](const ::testing::TestParamInfo<Staging>& p) {
                           return p.param == Staging::kNamed ? "Named" : "Anonymous";
                         });

TEST(SyncfsCovers, OnlyKernelsThatReportWriteBackErrorsAndFilesystemsThatPassItOn) {
  constexpr long kExt4 = 0xEF53, kXfs = 0x58465342, kBtrfs = 0x9123683E, kTmpfs = 0x01021994;
  constexpr long kFuse = 0x65735546, kOverlay = 0x794C7630, kNfs = 0x6969;
  for (const long fs : {kExt4, kXfs, kBtrfs, kTmpfs}) {
    EXPECT_TRUE(syncfs_covers("5.17.0", fs)) << std::hex << fs;
    EXPECT_TRUE(syncfs_covers("6.1.0-13-amd64", fs)) << std::hex << fs;
    EXPECT_TRUE(syncfs_covers("10.0", fs)) << std::hex << fs;
    // Before 5.8 syncfs reported no write-back error at all, before 5.17 not sync_fs's.
    EXPECT_FALSE(syncfs_covers("5.16.20", fs)) << std::hex << fs;
    EXPECT_FALSE(syncfs_covers("5.15.0-91-generic", fs)) << std::hex << fs;
    EXPECT_FALSE(syncfs_covers("5.7.19", fs)) << std::hex << fs;
    EXPECT_FALSE(syncfs_covers("4.19.0-21-amd64", fs)) << std::hex << fs;
    EXPECT_FALSE(syncfs_covers("", fs));
    EXPECT_FALSE(syncfs_covers("six.one", fs));
    EXPECT_FALSE(syncfs_covers("6", fs));
  }
  for (const long fs : {kFuse, kOverlay, kNfs, 0L}) EXPECT_FALSE(syncfs_covers("6.1.0", fs)) << std::hex << fs;
  // The running system: /proc is no place for data.
  const UniqueFd proc(::open("/proc", O_DIRECTORY | O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(proc);
  EXPECT_FALSE(syncfs_covers(proc.get()));
  EXPECT_FALSE(syncfs_covers(-1));
}

// Two connections' bursts, staged one after the other on a disk that cannot write their data
// out, then published one after the other. The kernel reports a write-back error once per
// open file: a syncfs through a descriptor the first burst already asked would tell the
// second burst nothing, and it would be acknowledged with its data lost. Whatever
// publish_staged() calls stored must read back from the device after a remount.
TEST(GroupCommitOnAFailingDisk, NoBurstIsAcknowledgedWhoseDataTheDiskLost) {
  test::FailingDisk disk;
  if (!disk.available()) GTEST_SKIP() << disk.why();
  constexpr std::size_t kFiles = 4, kSize = 1 << 20;
  std::vector<std::pair<std::string, std::vector<std::uint8_t>>> files;
  std::vector<std::error_code> results(2 * kFiles);
  {
    Storage s(disk.path() / "root");
    disk.fill_device();  // the folders are on the device: only the files' data is at stake
    std::vector<Upload> bursts[2];
    FolderCache caches[2];
    for (std::size_t b = 0; b < 2; ++b) {
      bursts[b].resize(kFiles);
      for (std::size_t i = 0; i < kFiles; ++i) {
        const std::string name = "burst" + std::to_string(b) + "-" + std::to_string(i);
        auto data = test::random_bytes(kSize, b * kFiles + i);
        auto& up = bursts[b][i];
        ASSERT_FALSE(s.begin_upload(name, data.size(), up, &caches[b], /*streamed=*/true));
        ASSERT_FALSE(up.write(data));
        ASSERT_FALSE(up.stage(hash::sha256(data), std::nullopt));
        files.emplace_back(name, std::move(data));
      }
    }
    // The later burst first: its syncfs writes out (and fails on) the earlier one's data too.
    for (const std::size_t b : {1, 0}) {
      std::vector<Upload*> batch;
      for (auto& up : bursts[b]) batch.push_back(&up);
      const auto r = s.publish_staged(batch);
      ASSERT_EQ(r.size(), kFiles);
      std::copy(r.begin(), r.end(), results.begin() + static_cast<std::ptrdiff_t>(b * kFiles));
    }
  }
  disk.remount();
  std::size_t failed = 0;
  for (std::size_t i = 0; i < files.size(); ++i) {
    const auto& [name, data] = files[i];
    if (results[i]) {
      ++failed;
      continue;
    }
    const auto path = disk.path() / "root" / name;
    std::error_code ec;  // a damaged inode reads as EBADMSG
    if (!std::filesystem::exists(path, ec)) {
      ADD_FAILURE() << name << " was acknowledged but is gone (" << ec.message() << ")";
      continue;
    }
    EXPECT_TRUE(read_file(path) == data) << name << " was acknowledged but its data did not reach the disk";
  }
  // Otherwise the disk lost nothing, and the test proved nothing.
  EXPECT_GT(failed, 0u);
}

TEST_F(StorageTest, RootThatIsAFileIsRefused) {
  write_file(dir_ / "plain", "x");
  EXPECT_THROW(Storage s(dir_ / "plain"), std::system_error);
}

// Sets or clears the file's immutable flag (chattr +i): then not even root may add an
// extended attribute -- a file the server cannot tag. False where the filesystem refuses.
bool set_immutable(const std::filesystem::path& p, bool on) {
  UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
  int flags = 0;
  if (!fd || ::ioctl(fd.get(), FS_IOC_GETFLAGS, &flags) != 0) return false;
  flags = on ? (flags | FS_IMMUTABLE_FL) : (flags & ~FS_IMMUTABLE_FL);
  return ::ioctl(fd.get(), FS_IOC_SETFLAGS, &flags) == 0;
}

TEST_F(StorageTest, DigestsAreRememberedInMemoryWhereNoAttributeCanBeKept) {
  Storage s(root());
  const auto path = root() / "placed.bin";
  write_file(path, std::string(300'000, 'x'));  // placed by hand: no digest yet
  if (!set_immutable(path, true)) GTEST_SKIP() << "this filesystem has no immutable flag";
  struct Unlock {  // whatever happens, so that the temporary folder can be removed
    std::filesystem::path p;
    ~Unlock() { set_immutable(p, false); }
  } unlock{path};
  std::vector<std::uint8_t> buf(64 * 1024);
  const auto digest_of = [&](bool& cached) {
    ReadFile f;
    EXPECT_FALSE(s.open_file("placed.bin", f));
    hash::Digest d{};
    EXPECT_FALSE(s.digest(f, buf, d, cached));
    return d;
  };
  bool cached = true;
  EXPECT_EQ(digest_of(cached), hash::sha256(std::string(300'000, 'x')));
  EXPECT_FALSE(cached) << "hashed the first time";
  char rec[64];
  EXPECT_LT(::getxattr(path.c_str(), "user.ftx.sha256", rec, sizeof rec), 0) << "the file could not be tagged";
  digest_of(cached);
  EXPECT_TRUE(cached) << "not hashed again: remembered in memory";
  // Changed (new size, mtime and ctime): hashed afresh, never the remembered digest.
  ASSERT_TRUE(set_immutable(path, false));
  write_file(path, std::string(300'001, 'y'));
  ASSERT_TRUE(set_immutable(path, true));
  EXPECT_EQ(digest_of(cached), hash::sha256(std::string(300'001, 'y')));
  EXPECT_FALSE(cached);
}

}  // namespace
}  // namespace ftx::storage
