// Resumed transfers, end to end against a real server: an interrupted put or get continues
// from the last chunk both sides know is good, and -- the point of it -- reads, hashes and
// sends only the rest. The I/O is counted by the kernel (/proc/self/io: bytes passed to
// read/pread/sendfile and write/pwrite/sendfile), not by the code under test.

#include <fcntl.h>
#include <sys/stat.h>

#include <fstream>

#include <gtest/gtest.h>

#include "client/client.hpp"
#include "hash/sha256.hpp"
#include "integration/server_fixture.hpp"
#include "client/local_file.hpp"
#include "storage/partial.hpp"

namespace ftx::test {
namespace {

constexpr std::uint64_t kChunk = protocol::kChunkSize;

struct IoCount {
  std::uint64_t rchar = 0;  // bytes through read(2), pread(2), sendfile(2) (its reading side)...
  std::uint64_t wchar = 0;  // ...and write(2), pwrite(2), sendfile(2) (its writing side)
};

// This process's I/O so far (server and client run in it; nothing else does I/O here).
IoCount io_now() {
  std::ifstream f("/proc/self/io");
  IoCount c;
  std::string key;
  std::uint64_t value = 0;
  while (f >> key >> value) {
    if (key == "rchar:") c.rchar = value;
    if (key == "wchar:") c.wchar = value;
  }
  return c;
}

struct Interrupted {};

class Resume : public ServerTest {
 protected:
  // Starts a put of `local` and breaks it off (the client goes away, as if killed) once
  // `at` bytes were sent; then waits until the server has let go of the partial upload.
  // Returns the bytes the server kept.
  std::uint64_t interrupted_put(const std::filesystem::path& local, const std::string& remote, std::uint64_t at) {
    {
      client::Client c(address());
      EXPECT_THROW(c.put(local, remote,
                         [&](std::uint64_t done, std::uint64_t) {
                           if (done >= at) throw Interrupted{};
                         }),
                   Interrupted);
    }
    return settled_partial(remote);
  }

  // The bytes the server keeps of `remote`, once no connection holds it (bounded poll: the
  // server notices the closed connection after draining what was in flight).
  std::uint64_t settled_partial(const std::string& remote) {
    for (int i = 0; i < 500; ++i) {
      for (const auto& p : server_->storage().list_partials()) {
        if (p.name == remote && !p.active) return p.received;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "no settled partial upload of " << remote;
    return 0;
  }

  std::uint64_t interrupted_get(const std::string& remote, const std::filesystem::path& local, std::uint64_t at) {
    client::Client c(address());
    EXPECT_THROW(c.get(remote, local,
                       [&](std::uint64_t done, std::uint64_t) {
                         if (done >= at) throw Interrupted{};
                       }),
                 Interrupted);
    struct stat st {};
    const auto partial = local.parent_path() / ("." + local.filename().string() + ".ftx-partial");
    return ::stat(partial.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
  }

  // What the progress reports of a transfer of data_ must look like: at least one, never
  // backwards, ending at the whole size. Returns the first (where the transfer began).
  std::uint64_t progress_began(const std::vector<std::uint64_t>& seen) const {
    EXPECT_FALSE(seen.empty());
    if (seen.empty()) return data_.size() + 1;  // fails the caller's check too
    EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
    EXPECT_EQ(seen.back(), data_.size());
    return seen.front();
  }

  std::vector<std::uint8_t> data_ = random_bytes(48 * kChunk + 777, 70);
};

TEST_F(Resume, AResumedPutReadsAndSendsOnlyTheRest) {
  write_file(dir_ / "big", data_);
  const auto kept = interrupted_put(dir_ / "big", "big", 40 * kChunk);
  ASSERT_GE(kept, 30 * kChunk);
  ASSERT_EQ(kept % kChunk, 0u);
  const std::uint64_t rest = data_.size() - kept;

  client::Client c(address());
  std::vector<std::uint64_t> seen;
  const auto before = io_now();
  const auto r = c.put(dir_ / "big", "big", [&](std::uint64_t done, std::uint64_t) { seen.push_back(done); });
  const auto after = io_now();

  EXPECT_EQ(r.digest, hash::sha256(data_)) << "the whole-file SHA-256, continued from the server's state";
  EXPECT_EQ(read_file(root() / "big"), data_);
  EXPECT_TRUE(server_->storage().list_partials().empty());
  // Client: each remaining chunk read once to hash it and once by sendfile, plus the chunk
  // before the offer read to check it. Server: the rest written once. A put that started
  // over would read 2 x 48 MiB and write 96.
  EXPECT_LE(after.rchar - before.rchar, 2 * rest + kChunk + 256 * 1024);
  EXPECT_LE(after.wchar - before.wchar, 2 * rest + 256 * 1024);
  // Progress starts where the resume does and never goes backwards.
  EXPECT_EQ(progress_began(seen), kept);
}

TEST_F(Resume, AResumedGetReadsAndWritesOnlyTheRest) {
  write_file(dir_ / "src", data_);
  client::Client(address()).put(dir_ / "src", "big");
  const auto target = dir_ / "got";
  write_file(target, std::string("precious"));
  const auto held = interrupted_get("big", target, 30 * kChunk);
  ASSERT_GE(held, 20 * kChunk);
  const auto untouched = read_file(target);
  EXPECT_EQ(std::string(untouched.begin(), untouched.end()), "precious") << "untouched until the file is verified";

  client::Client c(address());
  std::vector<std::uint64_t> seen;
  const auto before = io_now();
  const auto r = c.get("big", target, [&](std::uint64_t done, std::uint64_t) { seen.push_back(done); });
  const auto after = io_now();

  EXPECT_EQ(r.digest, hash::sha256(data_));
  EXPECT_EQ(read_file(target), data_);
  for (const auto& n : list_dir(dir_.path())) EXPECT_EQ(n.find(".ftx-"), std::string::npos) << "left: " << n;
  // At most the chunk the interruption cut through comes again (the partial file may hold
  // part of it past the last checkpoint). Server: sendfile reads and writes the rest;
  // client: writes it. A get that started over would move 48 MiB each way.
  const std::uint64_t rest = data_.size() - held + kChunk;
  EXPECT_LE(after.rchar - before.rchar, rest + 256 * 1024);
  EXPECT_LE(after.wchar - before.wchar, 2 * rest + 256 * 1024);
  EXPECT_GE(progress_began(seen), held - kChunk);
}

TEST_F(Resume, AResumedParallelGetFetchesOnlyTheRangesItLacks) {
  write_file(dir_ / "src", data_);
  client::Client(address()).put(dir_ / "src", "big");
  const auto target = dir_ / "got";
  std::uint64_t written = 0;  // bytes on disk when the download broke off
  {
    client::Client c(address());
    EXPECT_THROW(c.get_parallel("big", target, 4,
                                [&](std::uint64_t done, std::uint64_t) {
                                  written = done;
                                  if (done >= 24 * kChunk) throw Interrupted{};
                                }),
                 Interrupted);
  }
  // What the interrupted download recorded: whole ranges, in any order.
  storage::UniqueFd rec(::open((dir_ / ".got.ftx-partial.rec").c_str(), O_RDONLY));
  storage::PartialRecord r;
  ASSERT_FALSE(storage::load_record(rec.get(), r));
  ASSERT_GT(r.range_size, 0u);
  std::uint64_t held = 0;
  for (std::uint64_t i = 0; i * r.range_size < data_.size(); ++i) {
    if (storage::has_range(r, i)) held += std::min<std::uint64_t>(r.range_size, data_.size() - i * r.range_size);
  }
  ASSERT_GE(held, 8 * kChunk);
  // Of what it had written, the download lost at most the range (one chunk) each of its 4
  // connections was in the middle of.
  EXPECT_EQ(r.range_size, kChunk);
  EXPECT_GE(held + 4 * kChunk, written);

  client::Client c(address());
  std::vector<std::uint64_t> seen;
  const auto before = io_now();
  const auto result = c.get_parallel("big", target, 4, [&](std::uint64_t done, std::uint64_t) { seen.push_back(done); });
  const auto after = io_now();
  EXPECT_EQ(result.digest, hash::sha256(data_));
  EXPECT_EQ(read_file(target), data_);
  // Only the missing ranges move: the server's sendfile and the client's pwrite each write
  // them once (the client then reads the whole file once to hash it: rchar, not counted).
  EXPECT_LE(after.wchar - before.wchar, 2 * (data_.size() - held) + 256 * 1024);
  EXPECT_EQ(progress_began(seen), held);
  for (const auto& n : list_dir(dir_.path())) EXPECT_EQ(n.find(".ftx-"), std::string::npos) << "left: " << n;
}

class ParallelResume : public Resume {
 protected:
  // Starts a put -P of `local` over 4 connections and breaks it off once `at` bytes were
  // sent; returns the bytes the server kept once it let go of the upload.
  std::uint64_t interrupted_put_parallel(const std::filesystem::path& local, const std::string& remote,
                                         std::uint64_t at) {
    {
      client::Client c(address());
      EXPECT_THROW(c.put_parallel(local, remote, 4,
                                  [&](std::uint64_t done, std::uint64_t) {
                                    if (done >= at) throw Interrupted{};
                                  }),
                   Interrupted);
    }
    return settled_partial(remote);
  }

  // The record the server keeps for the only partial upload.
  storage::PartialRecord kept_record() {
    storage::PartialRecord r;
    for (const auto& e : std::filesystem::directory_iterator(root() / ".ftx-staging" / "partial")) {
      if (e.path().extension() != ".state") continue;
      storage::UniqueFd fd(::open(e.path().c_str(), O_RDONLY));
      EXPECT_FALSE(storage::load_record(fd.get(), r));
    }
    return r;
  }
};

TEST_F(ParallelResume, AResumedParallelPutSendsOnlyTheRangesTheServerLacks) {
  write_file(dir_ / "big", data_);
  const auto kept = interrupted_put_parallel(dir_ / "big", "big", 24 * kChunk);
  ASSERT_GE(kept, 8 * kChunk);
  ASSERT_LT(kept, data_.size());
  const std::uint64_t rest = data_.size() - kept;

  client::Client c(address());
  std::vector<std::uint64_t> seen;
  const auto before = io_now();
  const auto r = c.put_parallel(dir_ / "big", "big", 4, [&](std::uint64_t done, std::uint64_t) { seen.push_back(done); });
  const auto after = io_now();
  EXPECT_EQ(r.digest, hash::sha256(data_)) << "the SHA-256 the first attempt announced, checked at commit";
  EXPECT_EQ(read_file(root() / "big"), data_);
  EXPECT_TRUE(server_->storage().list_partials().empty());
  // Client: the missing ranges read once, and the sample (at most a chunk); the file is
  // not hashed again. Server: the sample read to hash it, the missing ranges written once,
  // the staging file read once at commit. Starting over would read 3 x 48 MiB, write 48.
  EXPECT_LE(after.rchar - before.rchar, rest + 2 * kChunk + data_.size() + 256 * 1024);
  EXPECT_LE(after.wchar - before.wchar, rest + 256 * 1024);
  EXPECT_EQ(progress_began(seen), kept) << "progress starts where the resume does";
}

TEST_F(ParallelResume, AParallelPutWhoseSampleChangedStartsOver) {
  write_file(dir_ / "big", data_);
  struct stat st {};
  ASSERT_EQ(::stat((dir_ / "big").c_str(), &st), 0);
  ASSERT_GT(interrupted_put_parallel(dir_ / "big", "big", 24 * kChunk), 0u);
  // Every chunk edited, size and mtime kept: the sample the server offers cannot match.
  for (std::size_t i = 0; i < data_.size(); i += kChunk) data_[i + 100] ^= 0xFF;
  write_file(dir_ / "big", data_);
  const struct timespec times[2] = {st.st_atim, st.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, (dir_ / "big").c_str(), times, 0), 0);

  std::vector<std::uint64_t> seen;
  const auto r = client::Client(address()).put_parallel(dir_ / "big", "big", 4,
                                                        [&](std::uint64_t done, std::uint64_t) { seen.push_back(done); });
  EXPECT_EQ(seen.front(), 0u) << "started over";
  EXPECT_EQ(r.digest, hash::sha256(data_));
  EXPECT_EQ(read_file(root() / "big"), data_);
  EXPECT_TRUE(server_->storage().list_partials().empty());
}

TEST_F(ParallelResume, AChangeOutsideTheSampleFailsTheCommitAndTheNextAttemptStartsOver) {
  write_file(dir_ / "big", data_);
  struct stat st {};
  ASSERT_EQ(::stat((dir_ / "big").c_str(), &st), 0);
  ASSERT_GT(interrupted_put_parallel(dir_ / "big", "big", 24 * kChunk), 0u);
  // A byte the server does not hold: it is sent now, from the changed file, and the file
  // the server then has is neither version.
  const auto rec = kept_record();
  ASSERT_FALSE(rec.held.empty());
  ASSERT_LT(rec.held.back().second, data_.size()) << "the last range was never sent";
  data_.back() ^= 0xFF;
  write_file(dir_ / "big", data_);
  const struct timespec times[2] = {st.st_atim, st.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, (dir_ / "big").c_str(), times, 0), 0);

  try {
    client::Client(address()).put_parallel(dir_ / "big", "big", 4);
    ADD_FAILURE() << "a stitched file was accepted";
  } catch (const client::Error& e) {
    EXPECT_EQ(e.kind(), client::Failure::kIntegrity) << e.what();
    EXPECT_NE(std::string(e.what()).find("changed since the interrupted upload"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(root() / "big")) << "nothing stitched is published";
  EXPECT_TRUE(server_->storage().list_partials().empty()) << "the server dropped the upload";
  const auto r = client::Client(address()).put_parallel(dir_ / "big", "big", 4);
  EXPECT_EQ(r.digest, hash::sha256(data_));
  EXPECT_EQ(read_file(root() / "big"), data_);
}

TEST_F(ParallelResume, NoResumeStartsOverDropsWhatWasKeptAndKeepsNothing) {
  write_file(dir_ / "big", data_);
  ASSERT_GT(interrupted_put_parallel(dir_ / "big", "big", 24 * kChunk), 0u);
  std::vector<std::uint64_t> seen;
  client::Client(address()).put_parallel(dir_ / "big", "big", 4,
                                         [&](std::uint64_t done, std::uint64_t) { seen.push_back(done); },
                                         client::TransferOptions{false});
  EXPECT_EQ(seen.front(), 0u) << "started over";
  EXPECT_EQ(read_file(root() / "big"), data_);
  EXPECT_TRUE(server_->storage().list_partials().empty()) << "the kept upload was dropped";

  {
    client::Client c(address());
    EXPECT_THROW(c.put_parallel(dir_ / "big", "again", 4,
                                [&](std::uint64_t done, std::uint64_t) {
                                  if (done >= 24 * kChunk) throw Interrupted{};
                                },
                                client::TransferOptions{false}),
                 Interrupted);
  }
  for (int i = 0; i < 500 && server_->parallel_uploads().open_uploads() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server_->parallel_uploads().open_uploads(), 0u);
  EXPECT_TRUE(server_->storage().list_partials().empty()) << "--no-resume keeps nothing";
}

TEST(ResumableStaging, ASecondDownloadToTheSameTargetLeavesTheFirstOnesFilesAlone) {
  TempDir dir;
  auto first = client::StagedFile::resumable(dir / "t");
  ASSERT_TRUE(first);
  storage::PartialRecord r;
  r.name = "t";
  r.size = 10;
  ASSERT_FALSE(first->start(r));
  first->checkpoint(hash::State{{}, 64});  // holds something worth keeping
  // Another download while the first holds the lock: it gets nothing (it then stages the
  // usual way) and must not remove what the first one is writing.
  EXPECT_FALSE(client::StagedFile::resumable(dir / "t"));
  EXPECT_TRUE(std::filesystem::exists(dir / ".t.ftx-partial"));
  EXPECT_TRUE(std::filesystem::exists(dir / ".t.ftx-partial.rec"));
}

TEST(ResumableStaging, ASymlinkInPlaceOfThePartialIsNotFollowed) {
  TempDir dir;
  write_file(dir / "victim", std::string("keep me"));
  std::filesystem::create_symlink(dir / "victim", dir / ".t.ftx-partial");
  EXPECT_THROW(client::StagedFile::resumable(dir / "t"), std::system_error);
  const auto kept = read_file(dir / "victim");
  EXPECT_EQ(std::string(kept.begin(), kept.end()), "keep me");
}

TEST_F(Resume, APutWhoseFileChangedStartsOverInsteadOfStitching) {
  write_file(dir_ / "big", data_);
  struct stat st {};
  ASSERT_EQ(::stat((dir_ / "big").c_str(), &st), 0);
  const auto kept = interrupted_put(dir_ / "big", "big", 20 * kChunk);
  ASSERT_GT(kept, kChunk);
  // Edited in the chunk before the resume point, size and mtime kept (as a careless tool
  // or a clock jump could): the offer's check catches it.
  data_[kept - 10] ^= 0xFF;
  write_file(dir_ / "big", data_);
  const struct timespec times[2] = {st.st_atim, st.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, (dir_ / "big").c_str(), times, 0), 0);

  const auto r = client::Client(address()).put(dir_ / "big", "big");
  EXPECT_EQ(r.digest, hash::sha256(data_));
  EXPECT_EQ(read_file(root() / "big"), data_) << "the new version whole, not old prefix + new rest";
}

TEST_F(Resume, AnotherFileWithTheSameNameSizeAndMtimeDoesNotContinueTheUpload) {
  // Two machines building the same image reproducibly: same name, size and mtime, other
  // bytes. The second must not continue the first one's partial (the source id differs).
  write_file(dir_ / "a", data_);
  auto other = data_;
  other[other.size() - 1] ^= 1;  // past anything the first upload sent
  write_file(dir_ / "b", other);
  struct stat st {};
  ASSERT_EQ(::stat((dir_ / "a").c_str(), &st), 0);
  const struct timespec times[2] = {st.st_atim, st.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, (dir_ / "b").c_str(), times, 0), 0);
  ASSERT_GT(interrupted_put(dir_ / "a", "image", 20 * kChunk), 0u);

  std::vector<std::uint64_t> seen;
  const auto r = client::Client(address()).put(dir_ / "b", "image",
                                               [&](std::uint64_t done, std::uint64_t) { seen.push_back(done); });
  EXPECT_EQ(seen.front(), 0u) << "started from the first byte";
  EXPECT_EQ(r.digest, hash::sha256(other));
  EXPECT_EQ(read_file(root() / "image"), other);
}

TEST_F(Resume, AGetOfAFileReplacedOnTheServerStartsOver) {
  write_file(dir_ / "src", data_);
  client::Client(address()).put(dir_ / "src", "big");
  const auto target = dir_ / "got";
  ASSERT_GT(interrupted_get("big", target, 20 * kChunk), 0u);
  auto changed = data_;
  changed[5] ^= 1;  // in the part the client holds
  write_file(dir_ / "src", changed);
  client::Client(address()).put(dir_ / "src", "big");

  const auto r = client::Client(address()).get("big", target);
  EXPECT_EQ(r.digest, hash::sha256(changed));
  EXPECT_EQ(read_file(target), changed);
}

TEST_F(Resume, NoResumeStartsOverAndLeavesNothingToResume) {
  write_file(dir_ / "big", data_);
  ASSERT_GT(interrupted_put(dir_ / "big", "big", 10 * kChunk), 0u);
  client::Client c(address());
  std::vector<std::uint64_t> seen;
  c.put(dir_ / "big", "big", [&](std::uint64_t done, std::uint64_t) { seen.push_back(done); },
        client::TransferOptions{false});
  EXPECT_EQ(seen.front(), 0u) << "started over";
  EXPECT_TRUE(server_->storage().list_partials().empty());
  EXPECT_EQ(read_file(root() / "big"), data_);

  const auto target = dir_ / "got";
  ASSERT_GT(interrupted_get("big", target, 10 * kChunk), 0u);
  c.get("big", target, {}, client::TransferOptions{false});
  EXPECT_EQ(read_file(target), data_);
  for (const auto& n : list_dir(dir_.path())) EXPECT_EQ(n.find(".ftx-"), std::string::npos) << n;
}

TEST_F(Resume, LsPartialShowsWhatTheServerKeeps) {
  write_file(dir_ / "big", data_);
  const auto kept = interrupted_put(dir_ / "big", "dir/big", 12 * kChunk);
  const auto partials = client::Client(address()).list_partial();
  ASSERT_EQ(partials.size(), 1u);
  EXPECT_EQ(partials[0].name, "dir/big");
  EXPECT_EQ(partials[0].size, data_.size());
  EXPECT_EQ(partials[0].received, kept);
  EXPECT_GT(partials[0].updated_ns, 0);
}

}  // namespace
}  // namespace ftx::test
