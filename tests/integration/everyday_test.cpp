// Pipelined batches, streamed uploads, the digest cache, and the file commands (stat, rm,
// mv, mkdir) against a real server on 127.0.0.1.

#include <gtest/gtest.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "client/client.hpp"
#include "client/compare.hpp"
#include "hash/sha256.hpp"
#include "integration/server_fixture.hpp"
#include "protocol/codec.hpp"
#include "storage/storage.hpp"

namespace ftx::test {
namespace {

using protocol::Frame;
using protocol::MsgType;
using protocol::Status;

Frame streamed_put(const std::string& name, const std::vector<std::uint8_t>& body) {
  Frame f = frame(MsgType::kPut, name);
  f.flags = protocol::kFlagStreamed;
  f.size = body.size();
  f.digest = hash::sha256(body);
  return f;
}

// Header and body as one run of bytes, for gluing several requests into one write.
void append(std::vector<std::uint8_t>& out, const Frame& f, const std::vector<std::uint8_t>& body = {}) {
  protocol::encode(f, out);
  out.insert(out.end(), body.begin(), body.end());
}

bool is_executable(const std::filesystem::path& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && (st.st_mode & S_IXUSR) != 0;
}

std::int64_t mtime_of(const std::filesystem::path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

TEST_F(ServerTest, GluedStreamedUploadsAreAnsweredInOrder) {
  // Three requests in one write, the way a pipelining client sends them: two uploads whose
  // bodies follow their headers at once, then a download of the first.
  const auto a = random_bytes(5000, 1);
  const auto b = random_bytes(70000, 2);
  std::vector<std::uint8_t> wire;
  append(wire, streamed_put("p/a", a), a);
  append(wire, streamed_put("p/b", b), b);
  append(wire, frame(MsgType::kGet, "p/a"));
  RawPeer peer(server_->port());
  peer.send_bytes(wire);
  const Frame done_a = peer.read_frame();
  EXPECT_EQ(done_a.type, MsgType::kDone);
  EXPECT_EQ(done_a.digest, hash::sha256(a));
  const Frame done_b = peer.read_frame();
  EXPECT_EQ(done_b.type, MsgType::kDone);
  EXPECT_EQ(done_b.digest, hash::sha256(b));
  const Frame file = peer.read_frame();
  ASSERT_EQ(file.type, MsgType::kFile);
  EXPECT_EQ(peer.read_body(file.size), a);
  EXPECT_EQ(read_file(root() / "p/b"), b);
}

TEST_F(ServerTest, GroupCommittedUploadsAnswerInOrderAroundAFailureAndOtherRequests) {
  // A burst across two folders whose answers wait for their folders' fsync: a failure in
  // the middle (a folder where the file should go, found at commit), a ping and a stat in
  // between must still come back exactly in request order, each upload already in place.
  std::filesystem::create_directories(root() / "q/1/taken");
  std::vector<std::vector<std::uint8_t>> bodies;
  std::vector<std::uint8_t> wire;
  const std::vector<std::string> names = {"q/1/a", "q/2/b", "q/1/taken", "q/2/c", "q/1/d"};
  for (std::size_t i = 0; i < names.size(); ++i) {
    bodies.push_back(random_bytes(3000 + i, 40 + static_cast<int>(i)));
    append(wire, streamed_put(names[i], bodies.back()), bodies.back());
    if (i == 1) append(wire, frame(MsgType::kPing));
  }
  append(wire, frame(MsgType::kStat, "q/1/d"));
  RawPeer peer(server_->port());
  peer.send_bytes(wire);
  EXPECT_EQ(peer.read_frame().type, MsgType::kDone);
  EXPECT_EQ(peer.read_frame().type, MsgType::kDone);
  EXPECT_EQ(peer.read_frame().type, MsgType::kPong);
  const Frame refused = peer.read_frame();
  EXPECT_EQ(refused.type, MsgType::kError);
  EXPECT_EQ(refused.status, Status::kConflict);
  EXPECT_EQ(peer.read_frame().type, MsgType::kDone);
  const Frame done_d = peer.read_frame();
  EXPECT_EQ(done_d.type, MsgType::kDone);
  EXPECT_EQ(done_d.digest, hash::sha256(bodies[4]));
  const Frame st = peer.read_frame();
  ASSERT_EQ(st.type, MsgType::kEntry);
  EXPECT_EQ(st.size, bodies[4].size());
  for (std::size_t i : {0u, 1u, 3u, 4u}) EXPECT_EQ(read_file(root() / names[i]), bodies[i]) << names[i];
  EXPECT_TRUE(std::filesystem::is_directory(root() / "q/1/taken"));
  EXPECT_TRUE(staging_files(staging()).empty());
}

// What this process holds open under `root` (the server's own folders; while a burst is
// handled, its staging files and the folders it writes into; files a GET sent, until the
// connection is idle).
std::vector<std::string> open_under(const std::filesystem::path& root) {
  const std::string prefix = std::filesystem::canonical(root).string();
  std::vector<std::string> held;
  for (const auto& fd : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(fd.path(), ec).string();
    if (!ec && target.rfind(prefix, 0) == 0) held.push_back(target);
  }
  std::sort(held.begin(), held.end());
  return held;
}

TEST_F(ServerTest, FilesSentAreClosedOnceTheConnectionIsIdle) {
  // The server closes the files GETs sent a batch at a time (storage::CloseBatch), but
  // never holds one while it waits for the client: a file removed after its download must
  // not keep its space for as long as the connection lasts. (The folder they are in stays
  // open: the connection's folder cache.)
  const auto files_held = [&] {
    const auto held = open_under(root());
    return std::count_if(held.begin(), held.end(), [](const std::string& p) { return p.find("/held/f") != p.npos; });
  };
  std::vector<client::BatchItem> items;
  for (int i = 0; i < 5; ++i) {
    write_file(root() / ("held/f" + std::to_string(i)), random_bytes(1000, 40 + i));
    items.push_back({(dir_ / ("h" + std::to_string(i))).string(), "held/f" + std::to_string(i)});
  }
  client::Client c(address());
  c.get("held/f0", dir_ / "single");
  c.ping();  // answered after the server went idle once more
  EXPECT_EQ(files_held(), 0);
  std::size_t ok = 0;
  c.get_many(items, {}, [&](const client::BatchResult& r) { ok += r.error ? 0 : 1; });
  EXPECT_EQ(ok, items.size());
  c.ping();
  EXPECT_EQ(files_held(), 0);
}

TEST_F(ServerTest, ABatchStreamingInWhileItsBurstsArePublishedIsAnsweredInOrder) {
  // Enough uploads in one stream that the server publishes one burst on its disk pool while
  // it reads and stages the next (and waits for it once 64 are staged): failures spread
  // through the batch (a folder where a file should go), a ping in the middle and a stat at
  // the end must still come back exactly in request order, every upload in place -- also
  // those that replace a file -- and once the connection is gone no descriptor of it (such as
  // a staging file without a name, which nothing on disk would show) is left open.
  const auto open_under_root = [&] { return open_under(root()); };
  const auto held_before = open_under_root();
  constexpr std::size_t kFiles = 1200;
  std::vector<std::string> names;
  std::vector<std::vector<std::uint8_t>> bodies;
  std::vector<std::uint8_t> wire;
  for (std::size_t i = 0; i < kFiles; ++i) {
    names.push_back("s/" + std::to_string(i / 100) + "/f" + std::to_string(i));
    if (i % 97 == 13) std::filesystem::create_directories(root() / names.back());  // taken
    if (i % 89 == 7) write_file(root() / names.back(), std::string("replaced"));
    bodies.push_back(random_bytes(3000 + i % 7, static_cast<int>(i)));
    append(wire, streamed_put(names[i], bodies.back()), bodies.back());
    if (i == kFiles / 2) append(wire, frame(MsgType::kPing));
  }
  append(wire, frame(MsgType::kStat, names.back()));
  {
    RawPeer peer(server_->port());
    peer.send_bytes(wire);
    for (std::size_t i = 0; i < kFiles; ++i) {
      const Frame f = peer.read_frame();
      if (i % 97 == 13) {
        ASSERT_EQ(f.type, MsgType::kError) << "answer " << i;
        EXPECT_EQ(f.status, Status::kConflict) << "answer " << i;
      } else {
        ASSERT_EQ(f.type, MsgType::kDone) << "answer " << i;
        EXPECT_EQ(f.digest, hash::sha256(bodies[i])) << "answer " << i;
      }
      if (i == kFiles / 2) {
        ASSERT_EQ(peer.read_frame().type, MsgType::kPong) << "after answer " << i;
      }
    }
    const Frame st = peer.read_frame();
    ASSERT_EQ(st.type, MsgType::kEntry);
    EXPECT_EQ(st.size, bodies.back().size());
  }
  ASSERT_TRUE(server_->wait_for_sessions(0, std::chrono::seconds(10)));
  EXPECT_EQ(open_under_root(), held_before) << "descriptors under the root left open by the batch";
  for (std::size_t i = 0; i < kFiles; ++i) {
    if (i % 97 == 13) {
      EXPECT_TRUE(std::filesystem::is_directory(root() / names[i])) << names[i];
    } else {
      EXPECT_EQ(read_file(root() / names[i]), bodies[i]) << names[i];
    }
  }
  EXPECT_TRUE(staging_files(staging()).empty());
}

TEST_F(ServerTest, GetManyKeepsTheModeOfAFileItReplacesAndGivesNewOnesTheUmasks) {
  const auto data = random_bytes(4000, 77);
  write_file(root() / "m/old", data);
  write_file(root() / "m/new", data);
  std::filesystem::create_directories(dir_ / "out");
  write_file(dir_ / "out/old", std::string("stale"));
  ASSERT_EQ(::chmod((dir_ / "out/old").c_str(), 0600), 0);
  const mode_t umask_now = ::umask(0);
  ::umask(umask_now);
  client::Client c(address());
  std::vector<client::BatchResult> results;
  c.get_many({{dir_ / "out/old", "m/old"}, {dir_ / "out/new", "m/new"}}, client::BatchOptions{},
             [&](const client::BatchResult& r) { results.push_back(r); });
  ASSERT_EQ(results.size(), 2u);
  for (const auto& r : results) ASSERT_FALSE(r.error) << r.error->what();
  EXPECT_EQ(read_file(dir_ / "out/old"), data);
  struct stat st {};
  ASSERT_EQ(::stat((dir_ / "out/old").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u) << "the replaced file's permission bits are kept";
  ASSERT_EQ(::stat((dir_ / "out/new").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0666u & ~umask_now);
}

// The execute bits of a replaced file follow the server's copy (the other permission bits
// stay), for files held in memory and written by the publishing thread as for larger ones
// written as they arrive: the mode travelled with neither before 2026-12-06 when the staged
// file was handed to that thread, and a replaced file kept its own execute bits.
TEST_F(ServerTest, GetManySetsTheExecuteBitsOfAFileItReplacesAfterTheServersCopy) {
  for (const std::size_t size : {std::size_t{100}, std::size_t{3} << 20}) {
    SCOPED_TRACE(size);
    const auto data = random_bytes(size, 78);
    write_file(dir_ / "src/plain", data);
    write_file(dir_ / "src/tool", data);
    ASSERT_EQ(::chmod((dir_ / "src/plain").c_str(), 0644), 0);
    ASSERT_EQ(::chmod((dir_ / "src/tool").c_str(), 0755), 0);
    client::Client c(address());
    c.put(dir_ / "src/plain", "x/plain");
    c.put(dir_ / "src/tool", "x/tool");
    std::filesystem::create_directories(dir_ / "out");
    write_file(dir_ / "out/plain", std::string("old"));
    write_file(dir_ / "out/tool", std::string("old"));
    ASSERT_EQ(::chmod((dir_ / "out/plain").c_str(), 0750), 0);  // executable here, not there
    ASSERT_EQ(::chmod((dir_ / "out/tool").c_str(), 0640), 0);   // the other way round
    std::vector<client::BatchResult> results;
    c.get_many({{dir_ / "out/plain", "x/plain"}, {dir_ / "out/tool", "x/tool"}}, client::BatchOptions{},
               [&](const client::BatchResult& r) { results.push_back(r); });
    ASSERT_EQ(results.size(), 2u);
    for (const auto& r : results) ASSERT_FALSE(r.error) << r.error->what();
    struct stat st {};
    ASSERT_EQ(::stat((dir_ / "out/plain").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0640u) << "execute bits cleared, the rest kept";
    ASSERT_EQ(::stat((dir_ / "out/tool").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0750u) << "execute bits set where read is allowed, the rest kept";
  }
}

TEST_F(ServerTest, RefusedStreamedUploadIsDrainedAndTheConnectionGoesOn) {
  const auto body = random_bytes(100000, 3);
  const auto ok = random_bytes(10, 4);
  std::vector<std::uint8_t> wire;
  append(wire, streamed_put("bad//name", body), body);  // refused: bad name
  Frame wrong = streamed_put("wrong", body);
  wrong.digest[0] ^= 1;  // refused after the body: digest mismatch
  append(wire, wrong, body);
  append(wire, streamed_put("good", ok), ok);
  RawPeer peer(server_->port());
  peer.send_bytes(wire);
  const Frame first = peer.read_frame();
  EXPECT_EQ(first.type, MsgType::kError);
  EXPECT_EQ(first.status, Status::kBadName);
  const Frame second = peer.read_frame();
  EXPECT_EQ(second.status, Status::kIntegrity);
  EXPECT_EQ(peer.read_frame().type, MsgType::kDone);
  EXPECT_EQ(read_file(root() / "good"), ok);
  EXPECT_FALSE(std::filesystem::exists(root() / "wrong"));
  EXPECT_TRUE(staging_files(staging()).empty());
}

class SmallLimitTest : public ServerTest {
  void configure(server::ServerOptions& o) override {
    o.max_file_size = 1000;
    o.max_depth = 2;
  }
};

TEST_F(SmallLimitTest, StreamedUploadOverTheSizeLimitClosesTheConnection) {
  // Reading (and dropping) an oversized body would let a client make the server read
  // without bound; the server answers and closes instead.
  Frame f = frame(MsgType::kPut, "huge");
  f.flags = protocol::kFlagStreamed;
  f.size = 2 * protocol::kChunkSize;
  RawPeer peer(server_->port());
  peer.send_frame(f);
  const Frame reply = peer.read_frame();
  EXPECT_EQ(reply.status, Status::kTooLarge);
  EXPECT_TRUE(peer.closed_by_peer());
}

TEST_F(SmallLimitTest, OversizedFileInABatchIsRefusedAloneAndTheOthersArrive) {
  // Large files in a batch ask before sending (kReady), so the server's size limit refuses
  // just that file instead of ending the connection for the ones behind it.
  // (A file over the limit but small enough to be streamed is drained instead.)
  write_file(dir_ / "small1", random_bytes(100, 1));
  write_file(dir_ / "big", random_bytes(protocol::kChunkSize + 10, 2));
  write_file(dir_ / "medium", random_bytes(5000, 4));
  write_file(dir_ / "small2", random_bytes(200, 3));
  std::vector<client::BatchItem> items{
      {dir_ / "small1", "s1"}, {dir_ / "big", "big"}, {dir_ / "medium", "medium"}, {dir_ / "small2", "s2"}};
  client::Client c(address());
  std::vector<client::BatchResult> results;
  c.put_many(items, {}, [&](const client::BatchResult& r) { results.push_back(r); });
  ASSERT_EQ(results.size(), 4u);
  EXPECT_FALSE(results[0].error);
  for (const std::size_t refused : {1, 2}) {
    ASSERT_TRUE(results[refused].error) << refused;
    EXPECT_EQ(results[refused].error->kind(), client::Failure::kRejected);
  }
  EXPECT_FALSE(results[3].error);
  EXPECT_EQ(read_file(root() / "s2"), read_file(dir_ / "small2"));
  EXPECT_FALSE(std::filesystem::exists(root() / "big"));
  EXPECT_FALSE(std::filesystem::exists(root() / "medium"));
  c.ping();
}

TEST_F(SmallLimitTest, NewNamesFromMkdirAndMvObeyTheDepthLimit) {
  client::Client c(address());
  EXPECT_EQ(failure_of([&] { c.make_folder("a/b/c/d"); }), client::Failure::kRejected);
  EXPECT_FALSE(std::filesystem::exists(root() / "a"));
  c.make_folder("a/b");
  EXPECT_EQ(failure_of([&] { c.move("a", "x/y/z/a"); }), client::Failure::kRejected);
  EXPECT_TRUE(std::filesystem::is_directory(root() / "a/b"));
}

TEST_F(ServerTest, PutFedTakesItemsAsTheyComeAndEndsWithTheFeedsError) {
  // A feed that gives its files a few at a time, sometimes none (a folder without files),
  // with a larger file (two-phase) among them: every file is stored and reported in order,
  // and more() is asked only when the batch has taken every item it has.
  std::vector<std::vector<std::uint8_t>> data;
  for (int i = 0; i < 40; ++i) {
    data.push_back(random_bytes(i == 17 ? protocol::kChunkSize + 3 : 200 + 11 * i, 300 + i));
    write_file(dir_ / ("fed" + std::to_string(i)), data.back());
  }
  client::BatchFeed feed;
  int calls = 0;
  int given = 0;
  feed.more = [&](std::deque<client::BatchItem>& items) {
    EXPECT_EQ(items.size(), static_cast<std::size_t>(given)) << "asked before the last items were taken";
    ++calls;
    if (given == 40) return false;
    if (calls % 3 == 0) return true;  // nothing this time
    for (int k = 0; k < 7 && given < 40; ++k, ++given) {
      items.push_back({(dir_ / ("fed" + std::to_string(given))).string(), "fed/f" + std::to_string(given)});
    }
    return true;
  };
  client::Client c(address());
  std::vector<client::BatchResult> results;
  client::BatchOptions opts;
  opts.window_files = 4;
  c.put_fed(feed, opts, [&](const client::BatchResult& r) { results.push_back(r); });
  ASSERT_EQ(results.size(), 40u);
  for (std::size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].index, i);
    EXPECT_FALSE(results[i].error) << i;
    EXPECT_EQ(read_file(root() / ("fed/f" + std::to_string(i))), data[i]) << i;
  }

  // A feed that throws: the batch ends with its exception.
  client::BatchFeed failing;
  failing.more = [&](std::deque<client::BatchItem>& items) {
    if (!items.empty()) throw client::Error(client::Failure::kLocalIo, "cannot read folder x");
    items.push_back({(dir_ / "fed0").string(), "failing/f0"});
    return true;
  };
  results.clear();
  EXPECT_EQ(failure_of([&] { c.put_fed(failing, {}, [&](const client::BatchResult& r) { results.push_back(r); }); }),
            client::Failure::kLocalIo);
}

TEST_F(ServerTest, PutManyStoresEveryFileAndReportsEachInOrder) {
  std::vector<client::BatchItem> items;
  std::map<std::string, std::vector<std::uint8_t>> expected;
  for (int i = 0; i < 300; ++i) {
    // Mostly small files (many to a write), one larger than a chunk, one empty.
    const std::size_t size = i == 7 ? protocol::kChunkSize * 2 + 5 : i == 8 ? 0 : 100 + 37 * i;
    const auto data = random_bytes(size, 100 + i);
    const auto local = dir_ / ("src" + std::to_string(i));
    write_file(local, data);
    const std::string remote = "batch/" + std::to_string(i % 5) + "/f" + std::to_string(i);
    items.push_back({local, remote});
    expected[remote] = data;
  }
  items.insert(items.begin() + 50, client::BatchItem{dir_ / "does-not-exist", "batch/missing"});
  ::chmod((dir_ / "src3").c_str(), 0755);

  client::Client c(address());
  std::vector<client::BatchResult> results;
  std::uint64_t moved = 0;
  client::BatchOptions opts;
  opts.window_files = 8;  // small, so the window really closes and reopens
  c.put_many(
      items, opts, [&](const client::BatchResult& r) { results.push_back(r); },
      [&](std::uint64_t n) { moved += n; });

  ASSERT_EQ(results.size(), items.size());
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].index, i) << "results come in the order of the items";
    if (items[i].remote == "batch/missing") {
      ASSERT_TRUE(results[i].error);
      EXPECT_EQ(results[i].error->kind(), client::Failure::kLocalIo);
      continue;
    }
    ASSERT_FALSE(results[i].error) << items[i].remote << ": " << results[i].error->what();
    EXPECT_EQ(results[i].result.digest, hash::sha256(expected[items[i].remote]));
    EXPECT_EQ(read_file(root() / items[i].remote), expected[items[i].remote]) << items[i].remote;
    EXPECT_EQ(mtime_of(root() / items[i].remote), mtime_of(items[i].local)) << "mtime kept";
    total += expected[items[i].remote].size();
  }
  EXPECT_EQ(moved, total);
  EXPECT_TRUE(is_executable(root() / "batch/3/f3"));
  EXPECT_FALSE(is_executable(root() / "batch/4/f4"));
  EXPECT_FALSE(std::filesystem::exists(root() / "batch/missing"));
  EXPECT_TRUE(staging_files(staging()).empty());

  // The connection is still in step for ordinary requests.
  c.ping();
}

TEST_F(ServerTest, PutManyReportsServerRefusalsPerFile) {
  write_file(dir_ / "ok1", std::string("one"));
  write_file(dir_ / "ok2", std::string("two"));
  std::filesystem::create_directories(root() / "taken");  // a folder where a file should go
  std::vector<client::BatchItem> items{{dir_ / "ok1", "ok1"}, {dir_ / "ok1", "taken"}, {dir_ / "ok2", "ok2"}};
  client::Client c(address());
  std::vector<client::BatchResult> results;
  c.put_many(items, {}, [&](const client::BatchResult& r) { results.push_back(r); });
  ASSERT_EQ(results.size(), 3u);
  EXPECT_FALSE(results[0].error);
  ASSERT_TRUE(results[1].error);
  EXPECT_EQ(results[1].error->kind(), client::Failure::kRejected);
  EXPECT_FALSE(results[2].error);
  EXPECT_EQ(read_file(root() / "ok2"), read_file(dir_ / "ok2"));
}

// n local files dir/<prefix><i> of size(i) random bytes (seed + i), to upload as <prefix>/f<i>.
std::vector<client::BatchItem> local_files(const std::filesystem::path& dir, const std::string& prefix, int n,
                                           const std::function<std::size_t(int)>& size, std::uint64_t seed) {
  std::vector<client::BatchItem> items;
  for (int i = 0; i < n; ++i) {
    const auto local = dir / (prefix + std::to_string(i));
    write_file(local, random_bytes(size(i), seed + static_cast<std::uint64_t>(i)));
    items.push_back({local, prefix + "/f" + std::to_string(i)});
  }
  return items;
}

// put_many and get_many over several connections (BatchOptions::connections, put -r -P N).
// The first result's callback holds up its connection until a file beyond that connection's
// first run of items has arrived (only another connection can have moved it), so the test
// fails if the other connections do nothing; then every item must be reported exactly once.
class ParallelBatch : public ServerTest {
 protected:
  static constexpr int kFiles = 400;
  // Runs of the queue: the first is a sixth of the items with 3 connections.
  static constexpr int kFirstRun = kFiles / 6;

  // Counts r in `reported`: item `failing` must have failed with `kind`, any other succeeded.
  static void count(const client::BatchResult& r, std::vector<int>& reported,
                    const std::vector<client::BatchItem>& items, std::size_t failing, client::Failure kind) {
    ASSERT_LT(r.index, items.size());
    ++reported[r.index];
    if (r.index == failing) {
      ASSERT_TRUE(r.error);
      EXPECT_EQ(r.error->kind(), kind);
    } else {
      ASSERT_FALSE(r.error) << items[r.index].remote << ": " << r.error->what();
    }
  }

  // Waits (at most 10 s) until `exists(i)` for some item i past the first run.
  static bool another_connection_moved(const std::function<bool(int)>& exists) {
    for (const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
         std::chrono::steady_clock::now() < deadline;) {
      for (int i = kFirstRun; i < kFiles; ++i) {
        if (exists(i)) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return false;
  }
};

TEST_F(ParallelBatch, PutManyOverThreeConnectionsStoresAndReportsEveryFileOnce) {
  std::vector<client::BatchItem> items;
  for (int i = 0; i < kFiles; ++i) {
    // Small files, one larger than a chunk (it asks first: two-phase), one empty.
    const std::size_t size = i == 200 ? protocol::kChunkSize * 2 + 5 : i == 8 ? 0 : 100 + 13 * i;
    const auto local = dir_ / ("src" + std::to_string(i));
    write_file(local, random_bytes(size, 3000 + i));
    items.push_back({local, "par/" + std::to_string(i % 7) + "/f" + std::to_string(i)});
  }
  items[300].local = dir_ / "does-not-exist";
  client::Client c(address());
  client::BatchOptions opts;
  opts.connections = 3;
  opts.window_files = 8;
  std::vector<int> reported(items.size(), 0);
  std::set<std::thread::id> threads;
  bool others_seen = false;
  // No on_bytes here: the other connections would wait for the callback lock this one
  // holds while it waits for them (ParallelBatch.CallbacksComeOneAtATime... counts bytes).
  c.put_many(
      items, opts,
      [&](const client::BatchResult& r) {
        if (threads.empty()) {
          others_seen =
              another_connection_moved([&](int i) { return std::filesystem::exists(root() / items[i].remote); });
        }
        threads.insert(std::this_thread::get_id());
        count(r, reported, items, 300, client::Failure::kLocalIo);
        if (!r.error) {
          EXPECT_EQ(r.result.digest, hash::sha256(read_file(items[r.index].local)));
        }
      });
  EXPECT_TRUE(others_seen) << "no file past the first connection's run arrived while it waited";
  EXPECT_GE(threads.size(), 2u);
  for (std::size_t i = 0; i < items.size(); ++i) {
    EXPECT_EQ(reported[i], 1) << "item " << i << " reported " << reported[i] << " times";
    if (i == 300) continue;
    EXPECT_EQ(read_file(root() / items[i].remote), read_file(items[i].local)) << items[i].remote;
  }
  EXPECT_FALSE(std::filesystem::exists(root() / items[300].remote));
  EXPECT_TRUE(staging_files(staging()).empty());
  c.ping();  // this connection is still in step
}

TEST_F(ParallelBatch, GetManyOverThreeConnectionsSavesAndReportsEveryFileOnce) {
  std::vector<client::BatchItem> items;
  std::filesystem::create_directories(dir_ / "out");
  for (int i = 0; i < kFiles; ++i) {
    const std::size_t size = i == 200 ? protocol::kChunkSize * 3 + 1 : 60 + 11 * i;
    const std::string remote = "g/" + std::to_string(i % 5) + "/f" + std::to_string(i);
    write_file(root() / remote, random_bytes(size, 4000 + i));
    items.push_back({dir_ / "out" / ("f" + std::to_string(i)), remote});
  }
  items[250].remote = "g/missing";
  client::Client c(address());
  client::BatchOptions opts;
  opts.connections = 3;
  opts.window_files = 8;
  std::vector<int> reported(items.size(), 0);
  bool others_seen = false;
  bool first = true;
  c.get_many(items, opts, [&](const client::BatchResult& r) {
    if (std::exchange(first, false)) {
      others_seen = another_connection_moved([&](int i) { return std::filesystem::exists(items[i].local); });
    }
    count(r, reported, items, 250, client::Failure::kNotFound);
  });
  EXPECT_TRUE(others_seen) << "no file past the first connection's run arrived while it waited";
  for (std::size_t i = 0; i < items.size(); ++i) {
    EXPECT_EQ(reported[i], 1) << "item " << i << " reported " << reported[i] << " times";
    if (i == 250) continue;
    EXPECT_EQ(read_file(items[i].local), read_file(root() / items[i].remote)) << items[i].remote;
    EXPECT_EQ(mtime_of(items[i].local), mtime_of(root() / items[i].remote));
  }
  EXPECT_FALSE(std::filesystem::exists(items[250].local));
  for (const auto& name : list_dir(dir_ / "out")) EXPECT_EQ(name.find(".part"), std::string::npos) << name;
}

TEST_F(ParallelBatch, AThrowingCallbackEndsTheWholeBatchAndNothingMoreIsReported) {
  const auto items = local_files(dir_.path(), "t", kFiles, [](int) { return 500; }, 5000);
  client::Client c(address());
  client::BatchOptions opts;
  opts.connections = 3;
  struct Stop {};
  std::size_t calls = 0;
  EXPECT_THROW(c.put_many(items, opts,
                          [&](const client::BatchResult&) {
                            if (++calls == 50) throw Stop{};
                          }),
               Stop);
  EXPECT_EQ(calls, 50u) << "no result is reported after the callback threw";
}

TEST_F(ParallelBatch, CallbacksComeOneAtATimeAndTheBytesAddUp) {
  const auto size = [](int i) -> std::size_t { return i == 100 ? protocol::kChunkSize * 2 + 3 : 700 + i; };
  const auto items = local_files(dir_.path(), "b", kFiles, size, 7000);
  std::uint64_t total = 0;
  for (int i = 0; i < kFiles; ++i) total += size(i);
  client::Client c(address());
  client::BatchOptions opts;
  opts.connections = 3;
  std::atomic<bool> inside{false};
  std::atomic<int> overlaps{0};
  std::uint64_t moved = 0;
  std::size_t results = 0;
  const auto enter = [&] { overlaps += inside.exchange(true) ? 1 : 0; };
  c.put_many(
      items, opts,
      [&](const client::BatchResult& r) {
        enter();
        EXPECT_FALSE(r.error);
        ++results;
        inside = false;
      },
      [&](std::uint64_t n) {
        enter();
        moved += n;
        inside = false;
      });
  EXPECT_EQ(overlaps.load(), 0) << "two callbacks ran at once";
  EXPECT_EQ(results, items.size());
  EXPECT_EQ(moved, total);
}

// Relays connections to a server; the `cut`-th connection it accepts (1-based) is closed
// both ways once `after` bytes of requests went through it and allow_cut() was called: a
// connection lost mid-batch, at a moment the test chooses.
class CuttingProxy {
 public:
  CuttingProxy(std::uint16_t target, int cut, std::size_t after)
      : target_(target), cut_(cut), after_(after), acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0}) {
    accepting_ = std::thread([this] {
      for (int n = 1;; ++n) {
        auto client = std::make_unique<asio::ip::tcp::socket>(io_);
        std::error_code ec;
        acceptor_.accept(*client, ec);
        if (ec || stopping_) return;
        auto server = std::make_unique<asio::ip::tcp::socket>(io_);
        server->connect({asio::ip::make_address("127.0.0.1"), target_}, ec);
        if (ec) return;
        relay(std::move(client), std::move(server), n == cut_);
      }
    });
  }
  ~CuttingProxy() {
    {
      const std::lock_guard lock(mu_);
      stopping_ = true;
      cv_.notify_all();
    }
    ::shutdown(acceptor_.native_handle(), SHUT_RDWR);  // ends the blocking accept (EINVAL)
    accepting_.join();
    for (const auto& s : sockets_) ::shutdown(s->native_handle(), SHUT_RDWR);
    for (auto& t : relays_) t.join();
  }
  protocol::Address address() const { return {"127.0.0.1", acceptor_.local_endpoint().port()}; }
  // Lets the cut happen, and waits (at most 10 s) until it has.
  bool cut_now() {
    std::unique_lock lock(mu_);
    cut_allowed_ = true;
    cv_.notify_all();
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return cut_done_; });
  }

 private:
  using Socket = std::shared_ptr<asio::ip::tcp::socket>;
  void relay(std::unique_ptr<asio::ip::tcp::socket> a, std::unique_ptr<asio::ip::tcp::socket> b, bool cut) {
    const Socket from_client(std::move(a)), to_server(std::move(b));
    sockets_.push_back(from_client);  // open until the destructor: its shutdowns reach them
    sockets_.push_back(to_server);
    const auto pump = [this](Socket in, Socket out, std::size_t limit) {
      std::vector<std::uint8_t> buf(65536);
      std::size_t moved = 0;
      std::error_code ec;
      while (!ec) {
        const std::size_t want = std::min(buf.size(), limit - moved);
        const std::size_t n = want == 0 ? 0 : in->read_some(asio::buffer(buf.data(), want), ec);
        if (n > 0) asio::write(*out, asio::buffer(buf.data(), n), ec);
        moved += n;
        if (moved == limit) {  // only the cut connection has a limit
          std::unique_lock lock(mu_);
          cv_.wait_for(lock, std::chrono::seconds(10), [&] { return cut_allowed_ || stopping_; });
          ::shutdown(in->native_handle(), SHUT_RDWR);
          ::shutdown(out->native_handle(), SHUT_RDWR);
          cut_done_ = true;
          cv_.notify_all();
          return;
        }
      }
      ::shutdown(out->native_handle(), SHUT_WR);
    };
    relays_.emplace_back(pump, from_client, to_server, cut ? after_ : SIZE_MAX);
    relays_.emplace_back(pump, to_server, from_client, SIZE_MAX);
  }

  const std::uint16_t target_;
  const int cut_;
  const std::size_t after_;
  asio::io_context io_;
  asio::ip::tcp::acceptor acceptor_;
  std::atomic<bool> stopping_{false};
  std::vector<Socket> sockets_;      // the accepting thread's until it is joined
  std::vector<std::thread> relays_;  // likewise
  std::thread accepting_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool cut_allowed_ = false;
  bool cut_done_ = false;
};

TEST_F(ParallelBatch, AConnectionLostMidBatchFailsItAndWhatWasReportedIsTrue) {
  const auto items = local_files(dir_.path(), "c", kFiles, [](int) { return 2000; }, 8000);
  // The second connection (the batch's first extra one) is held after two files or so, and
  // cut once the first connection has had an answer (so that it has files in flight). With a
  // window of 8 files, each connection sends that much before it waits for an answer.
  CuttingProxy proxy(server_->port(), 2, 5'000);
  client::Client c(proxy.address(), {}, std::chrono::seconds(20));
  client::BatchOptions opts;
  opts.connections = 3;
  opts.window_files = 8;
  std::vector<int> reported(items.size(), 0);
  std::vector<std::size_t> stored;
  bool cut_seen = false;
  bool first = true;
  const auto failure = failure_of([&] {
    c.put_many(items, opts, [&](const client::BatchResult& r) {
      // The first answer has the other connection cut, and waits until it is: then the
      // failure comes while this batch still has files to move.
      if (std::exchange(first, false)) cut_seen = proxy.cut_now();
      ++reported[r.index];
      if (!r.error) stored.push_back(r.index);
    });
  });
  EXPECT_TRUE(cut_seen);
  EXPECT_EQ(failure, client::Failure::kConnection);
  for (std::size_t i = 0; i < items.size(); ++i) EXPECT_LE(reported[i], 1) << "item " << i;
  EXPECT_FALSE(stored.empty());
  EXPECT_LT(stored.size(), items.size()) << "the cut connection's files cannot all have been stored";
  for (const auto i : stored) EXPECT_EQ(read_file(root() / items[i].remote), read_file(items[i].local)) << i;
}

// A server that allows one connection per client turns the others away: the batch goes on
// over the one it has.
class OneConnectionPerClient : public ServerTest {
  void configure(server::ServerOptions& o) override { o.max_connections_per_client = 1; }
};

TEST_F(OneConnectionPerClient, AParallelBatchMakesDoWithTheConnectionsItIsAllowed) {
  const auto items = local_files(dir_.path(), "o", 100, [](int) { return 300; }, 6000);
  client::Client c(address());
  client::BatchOptions opts;
  opts.connections = 4;
  std::vector<std::size_t> order;
  c.put_many(items, opts, [&](const client::BatchResult& r) {
    EXPECT_FALSE(r.error) << r.error->what();
    order.push_back(r.index);
  });
  ASSERT_EQ(order.size(), items.size());
  for (std::size_t i = 0; i < order.size(); ++i) EXPECT_EQ(order[i], i) << "one connection: in order";
  for (const auto& item : items) EXPECT_EQ(read_file(root() / item.remote), read_file(item.local));
}

TEST_F(ServerTest, GetManyDownloadsEveryFileWithMtimeAndExecutableBit) {
  std::vector<client::BatchItem> items;
  std::map<std::string, std::vector<std::uint8_t>> expected;
  std::filesystem::create_directories(dir_ / "out");
  for (int i = 0; i < 200; ++i) {
    const std::size_t size = i == 3 ? protocol::kChunkSize + 1 : 50 * i;
    const auto data = random_bytes(size, 500 + i);
    const std::string remote = "g/f" + std::to_string(i);
    write_file(root() / remote, data);  // placed by hand: no digest cached yet
    expected[remote] = data;
    items.push_back({dir_ / "out" / ("f" + std::to_string(i)), remote});
  }
  ::chmod((root() / "g/f5").c_str(), 0755);
  items.insert(items.begin() + 10, client::BatchItem{dir_ / "out" / "missing", "g/missing"});

  client::Client c(address());
  std::vector<client::BatchResult> results;
  client::BatchOptions opts;
  opts.window_files = 16;
  c.get_many(items, opts, [&](const client::BatchResult& r) { results.push_back(r); });
  ASSERT_EQ(results.size(), items.size());
  for (std::size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].index, i);
    if (items[i].remote == "g/missing") {
      ASSERT_TRUE(results[i].error);
      EXPECT_EQ(results[i].error->kind(), client::Failure::kNotFound);
      EXPECT_FALSE(std::filesystem::exists(items[i].local));
      continue;
    }
    ASSERT_FALSE(results[i].error) << results[i].error->what();
    EXPECT_EQ(read_file(items[i].local), expected[items[i].remote]);
    EXPECT_EQ(mtime_of(items[i].local), mtime_of(root() / items[i].remote));
  }
  EXPECT_TRUE(is_executable(dir_ / "out/f5"));
  EXPECT_FALSE(is_executable(dir_ / "out/f6"));
  // No staging files left beside the targets.
  for (const auto& name : list_dir(dir_ / "out")) EXPECT_EQ(name.find(".part"), std::string::npos) << name;
}

// Files of up to 64 KiB are verified on the receiving thread and written, sealed and
// published by the client's publishing thread, a group at a time; larger ones are written as
// they arrive. Local failures on either path are reported for their own file, in request
// order, and do not stop the others.
TEST_F(ServerTest, GetManyReportsEachLocalFailureInOrderWhetherHeldInMemoryOrNot) {
  constexpr std::size_t kFiles = 300;
  std::vector<client::BatchItem> items;
  std::map<std::string, std::vector<std::uint8_t>> expected;
  std::filesystem::create_directories(dir_ / "out");
  const auto size_of = [](std::size_t i) -> std::size_t {
    switch (i) {
      case 40: return 64 * 1024;          // the largest held in memory
      case 41: return 64 * 1024 + 1;      // the smallest written as it arrives
      case 150: return 3 * 1024 * 1024;  // several chunks, between two groups of small ones
      default: return 4096 + i;
    }
  };
  for (std::size_t i = 0; i < kFiles; ++i) {
    const auto data = random_bytes(size_of(i), 7000 + i);
    const std::string remote = "mix/f" + std::to_string(i);
    write_file(root() / remote, data);
    expected[remote] = data;
    items.push_back({dir_ / "out" / ("f" + std::to_string(i)), remote});
  }
  ::chmod((root() / "mix/f7").c_str(), 0755);
  // Failures the client meets only when it saves: a folder where the file should go (the
  // rename fails), a folder that does not exist (the staging file cannot be made) -- each
  // once among the small files and once for a file written as it arrives.
  std::filesystem::create_directories(dir_ / "out/f60");
  std::filesystem::create_directories(dir_ / "out/f41");
  items[100].local = dir_ / "no-such-folder" / "f100";
  items[150].local = dir_ / "no-such-folder" / "f150";
  const std::set<std::size_t> failing{41, 60, 100, 150};

  client::Client c(address());
  std::vector<client::BatchResult> results;
  c.get_many(items, {}, [&](const client::BatchResult& r) { results.push_back(r); });
  ASSERT_EQ(results.size(), items.size());
  for (std::size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].index, i);
    if (failing.count(i) != 0) {
      ASSERT_TRUE(results[i].error) << i;
      EXPECT_EQ(results[i].error->kind(), client::Failure::kLocalIo) << results[i].error->what();
      EXPECT_NE(std::string(results[i].error->what()).find(std::filesystem::path(items[i].local).filename().string()), std::string::npos)
          << "the error names its file: " << results[i].error->what();
      continue;
    }
    ASSERT_FALSE(results[i].error) << i << ": " << results[i].error->what();
    EXPECT_EQ(results[i].result.bytes, expected[items[i].remote].size());
    EXPECT_EQ(results[i].result.digest, hash::sha256(expected[items[i].remote])) << i;
    EXPECT_EQ(read_file(items[i].local), expected[items[i].remote]) << i;
    EXPECT_EQ(mtime_of(items[i].local), mtime_of(root() / items[i].remote)) << i;
  }
  EXPECT_TRUE(is_executable(dir_ / "out/f7"));
  EXPECT_FALSE(is_executable(dir_ / "out/f8"));
  EXPECT_TRUE(std::filesystem::is_directory(dir_ / "out/f60"));  // untouched
  EXPECT_FALSE(std::filesystem::exists(dir_ / "no-such-folder"));
  for (const auto& name : list_dir(dir_ / "out")) EXPECT_EQ(name.find(".part"), std::string::npos) << name;
}

// A folder download onto a disk that cannot write the data out: the client publishes
// its files in groups (one syncfs, the renames, one folder fsync), and whatever it reports
// saved must read back from the device after a remount; the rest is reported failed.
void expect_nothing_lost_reported_saved(const protocol::Address& server, const std::filesystem::path& root,
                                        const std::vector<std::size_t>& sizes) {
  FailingDisk disk;
  if (!disk.available()) GTEST_SKIP() << disk.why();
  std::filesystem::create_directories(disk.path() / "out");
  disk.fill_device();  // the folder is on the device: only the files' data is at stake
  std::vector<client::BatchItem> items;
  std::map<std::string, std::vector<std::uint8_t>> expected;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const auto data = random_bytes(sizes[i], 900 + i);
    const std::string remote = "lost/f" + std::to_string(i);
    write_file(root / remote, data);
    expected[remote] = data;
    items.push_back({disk.path() / "out" / ("f" + std::to_string(i)), remote});
  }
  std::vector<client::BatchResult> results;
  {
    client::Client c(server);
    c.get_many(items, client::BatchOptions{}, [&](const client::BatchResult& r) { results.push_back(r); });
  }
  ASSERT_EQ(results.size(), items.size());
  disk.remount();
  std::size_t failed = 0;
  for (const auto& r : results) {
    const auto& item = items[r.index];
    if (r.error) {
      EXPECT_EQ(r.error->kind(), client::Failure::kLocalIo) << r.error->what();
      ++failed;
      continue;
    }
    std::error_code ec;  // a damaged inode reads as EBADMSG
    if (!std::filesystem::exists(item.local, ec)) {
      ADD_FAILURE() << item.local << " was reported saved but is gone (" << ec.message() << ")";
      continue;
    }
    EXPECT_TRUE(read_file(item.local) == expected[item.remote]) << item.local << " was reported saved but its data is lost";
  }
  // Otherwise the disk lost nothing, and the test proved nothing.
  EXPECT_GT(failed, 0u);
}

TEST_F(ServerTest, GetManyReportsNothingSavedThatTheDiskLost) {
  expect_nothing_lost_reported_saved(address(), root(), std::vector<std::size_t>(8, 512 * 1024));  // written as they arrive
}

// The same for files the client holds in memory and writes on its publishing thread, and
// for groups of both kinds (the files staged as they arrived were opened first, and the
// group's syncfs must go through one of them).
TEST_F(ServerTest, GetManyReportsNothingSavedThatTheDiskLostOfSmallFiles) {
  expect_nothing_lost_reported_saved(address(), root(), std::vector<std::size_t>(32, 16 * 1024));
}

TEST_F(ServerTest, GetManyReportsNothingSavedThatTheDiskLostOfSmallAndLargeFiles) {
  std::vector<std::size_t> sizes;
  for (std::size_t i = 0; i < 24; ++i) sizes.push_back(i % 3 == 2 ? 300 * 1024 : 16 * 1024);
  expect_nothing_lost_reported_saved(address(), root(), sizes);
}

TEST_F(ServerTest, DigestCacheIsWrittenAtUploadAndIgnoredOnceTheFileChanges) {
  const std::size_t size = storage::kUnrecordedUploadMax + 3000;
  const auto data = random_bytes(size, 9);
  write_file(dir_ / "src", data);
  client::Client c(address());
  c.put(dir_ / "src", "cached");
  char rec[64];
  ASSERT_EQ(::getxattr((root() / "cached").c_str(), "user.ftx.sha256", rec, sizeof rec), 64)
      << "the upload's verified digest is kept with the file";
  ASSERT_TRUE(c.stat("cached").digest);
  EXPECT_EQ(*c.stat("cached").digest, hash::sha256(data));

  // Changed behind the server's back (same size, new content): the cached digest no longer
  // describes the file and must not be served.
  const auto other = random_bytes(size, 10);
  write_file(root() / "cached", other);
  const auto e = c.stat("cached");
  ASSERT_TRUE(e.digest);
  EXPECT_EQ(*e.digest, hash::sha256(other));
  const auto got = c.get("cached", dir_ / "back");
  EXPECT_EQ(got.digest, hash::sha256(other));
  EXPECT_EQ(read_file(dir_ / "back"), other);

  // Changed again and fetched with no stat first: the GET itself hashes it (a small file:
  // on the I/O thread, not the pool) and records what it found for the next one.
  const auto third = random_bytes(size, 11);
  write_file(root() / "cached", third);
  EXPECT_EQ(c.get("cached", dir_ / "back2").digest, hash::sha256(third));
  EXPECT_EQ(read_file(dir_ / "back2"), third);
  ASSERT_EQ(::getxattr((root() / "cached").c_str(), "user.ftx.sha256", rec, sizeof rec), 64);
  const auto want = hash::sha256(third);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), reinterpret_cast<const std::uint8_t*>(rec) + 32))
      << "the digest record (its last 32 bytes) holds the new SHA-256";
}

// A small upload gets no digest record (storage::kUnrecordedUploadMax): the first request
// that needs its SHA-256 hashes the file and records it then.
TEST_F(ServerTest, ASmallUploadIsRecordedOnceItsDigestIsAskedFor) {
  const auto data = random_bytes(storage::kUnrecordedUploadMax, 12);
  write_file(dir_ / "src", data);
  client::Client c(address());
  c.put(dir_ / "src", "small");
  const auto path = root() / "small";
  char rec[64];
  EXPECT_LT(::getxattr(path.c_str(), "user.ftx.sha256", rec, sizeof rec), 0) << "no record written at upload";
  const auto e = c.stat("small");
  ASSERT_TRUE(e.digest);
  EXPECT_EQ(*e.digest, hash::sha256(data));
  ASSERT_EQ(::getxattr(path.c_str(), "user.ftx.sha256", rec, sizeof rec), 64) << "recorded by the STAT that hashed it";
  const auto want = hash::sha256(data);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), reinterpret_cast<const std::uint8_t*>(rec) + 32));
  EXPECT_EQ(c.get("small", dir_ / "back").digest, want);
  EXPECT_EQ(read_file(dir_ / "back"), data);
}

// --skip-identical leaves a file alone only when client::is_identical says so: its size,
// mtime, execute bits and SHA-256 all match the server's file.
TEST_F(ServerTest, AFileIsIdenticalOnlyWhenItsBytesAndMetadataAllMatch) {
  using client::Direction;
  const auto data = random_bytes(5000, 21);
  const auto local = dir_ / "f";
  write_file(local, data);
  ASSERT_EQ(::chmod(local.c_str(), 0644), 0);
  client::Client c(address());
  c.put(local, "f");
  const auto stored = c.stat("f");
  struct stat st {};
  ASSERT_EQ(::stat(local.c_str(), &st), 0);
  const auto set_mtime = [&](timespec mtime) {
    const timespec times[2] = {{0, UTIME_OMIT}, mtime};
    ASSERT_EQ(::utimensat(AT_FDCWD, local.c_str(), times, 0), 0);
  };
  const auto same = [&](Direction d) { return client::is_identical(local, stored, d); };
  std::uint64_t hashed = 0;
  EXPECT_TRUE(client::is_identical(local, stored, Direction::kUpload, [&](std::uint64_t n) { hashed += n; }));
  EXPECT_EQ(hashed, data.size());
  EXPECT_TRUE(same(Direction::kDownload));

  // Other bytes under the same size and mtime: only the SHA-256 tells them apart.
  auto other = data;
  other[2500] ^= 1;
  write_file(local, other);
  set_mtime(st.st_mtim);
  EXPECT_TRUE(client::may_be_identical(local, stored, Direction::kUpload));
  EXPECT_FALSE(same(Direction::kUpload));
  EXPECT_FALSE(same(Direction::kDownload));
  write_file(local, data);
  set_mtime(st.st_mtim);
  EXPECT_TRUE(same(Direction::kUpload));

  // The same bytes with another mtime: a transfer would change the copy's.
  set_mtime({st.st_mtim.tv_sec, (st.st_mtim.tv_nsec + 1) % 1000000000});
  EXPECT_FALSE(client::may_be_identical(local, stored, Direction::kUpload));
  EXPECT_FALSE(same(Direction::kUpload));
  EXPECT_FALSE(same(Direction::kDownload));
  set_mtime(st.st_mtim);

  // Execute bits, as each direction leaves them: an upload stores 0755 or 0644 after the
  // owner's bit alone; a download sets all three after the read bits, or clears them.
  ASSERT_EQ(::chmod(local.c_str(), 0755), 0);
  EXPECT_FALSE(same(Direction::kUpload));
  EXPECT_FALSE(same(Direction::kDownload));
  ASSERT_EQ(::chmod(local.c_str(), 0654), 0);
  EXPECT_TRUE(same(Direction::kUpload));
  EXPECT_FALSE(same(Direction::kDownload));
  ASSERT_EQ(::chmod(local.c_str(), 0755), 0);
  c.put(local, "x");
  const auto executable = c.stat("x");
  EXPECT_TRUE(client::is_identical(local, executable, Direction::kUpload));
  EXPECT_TRUE(client::is_identical(local, executable, Direction::kDownload));
  ASSERT_EQ(::chmod(local.c_str(), 0744), 0);
  EXPECT_TRUE(client::is_identical(local, executable, Direction::kUpload));
  EXPECT_FALSE(client::is_identical(local, executable, Direction::kDownload));
  ASSERT_EQ(::chmod(local.c_str(), 0644), 0);
  EXPECT_TRUE(same(Direction::kUpload));

  // Never followed, never guessed: a link to the file, no file, a folder, no digest. A FIFO
  // is not even opened (that would wait for a writer).
  ASSERT_EQ(::symlink(local.c_str(), (dir_ / "link").c_str()), 0);
  EXPECT_FALSE(client::is_identical(dir_ / "link", stored, Direction::kUpload));
  ASSERT_EQ(::mkfifo((dir_ / "fifo").c_str(), 0644), 0);
  auto empty = stored;
  empty.size = 0;
  EXPECT_FALSE(client::is_identical(dir_ / "fifo", empty, Direction::kUpload));
  EXPECT_FALSE(client::is_identical(dir_ / "missing", stored, Direction::kUpload));
  c.make_folder("folder");
  EXPECT_FALSE(client::is_identical(local, c.stat("folder"), Direction::kUpload));
  auto without_digest = stored;
  without_digest.digest.reset();
  EXPECT_TRUE(client::may_be_identical(local, without_digest, Direction::kUpload));
  EXPECT_FALSE(client::is_identical(local, without_digest, Direction::kUpload));
}

// stat_many answers every name in order, pipelined past its window, and a name the server
// has no file for (or will not describe) is nullopt rather than the end of it all.
TEST_F(ServerTest, StatManyDescribesEveryNameInOrder) {
  // More names than the window (256 requests), a run of long names (about 1 KiB: the window's
  // 32 KiB limit them), missing names, two files too large to be hashed on the I/O thread
  // (hashed on the blocking pool between answers queued around them) and a folder.
  constexpr std::size_t kNames = 700;
  const std::string deep = [] {  // five folders of 200 bytes each
    std::string d;
    for (int i = 0; i < 5; ++i) d += std::string(200, 'l') + "/";
    return d;
  }();
  const auto name_of = [&](std::size_t i) { return (i >= 300 && i < 400 ? "s/" + deep : "s/") + "f" + std::to_string(i); };
  const auto size_of = [](std::size_t i) { return i == 250 || i == 251 ? std::size_t{70'000} + i : i % 50; };
  std::vector<std::string> names;
  for (std::size_t i = 0; i < kNames; ++i) {
    names.push_back(name_of(i));
    if (i % 3 != 1) write_file(root() / names.back(), random_bytes(size_of(i), i));
  }
  names.push_back("s");  // a folder
  client::Client c(address());
  std::size_t next = 0;
  c.stat_many(names, [&](std::size_t i, std::optional<client::Entry> e) {
    ASSERT_EQ(i, next++);
    if (i == kNames) {
      ASSERT_TRUE(e);
      EXPECT_TRUE(e->folder);
    } else if (i % 3 == 1) {
      EXPECT_FALSE(e) << names[i];
    } else {
      ASSERT_TRUE(e) << names[i];
      EXPECT_EQ(e->name, names[i]);
      EXPECT_EQ(e->size, size_of(i));
      ASSERT_TRUE(e->digest);
      EXPECT_EQ(*e->digest, hash::sha256(random_bytes(size_of(i), i)));
    }
  });
  EXPECT_EQ(next, names.size());
  EXPECT_EQ(c.stat("s/f0").size, 0u) << "the connection goes on";

  // Left early, with answers still on their way: the connection is closed rather than left
  // to hand those answers to the next request.
  client::Client early(address());
  EXPECT_THROW(early.stat_many(names,
                               [](std::size_t i, const std::optional<client::Entry>&) {
                                 if (i == 5) throw std::runtime_error("enough");
                               }),
               std::runtime_error);
  EXPECT_EQ(failure_of([&] { early.stat("s/f2"); }), client::Failure::kConnection);
}

TEST_F(ServerTest, ListCanIncludeFoldersAndDigests) {
  write_file(root() / "d/x", std::string("xx"));
  std::filesystem::create_directories(root() / "d/empty");
  write_file(root() / "top", std::string("t"));
  client::Client c(address());
  std::vector<client::Entry> plain;
  c.list("", [&](const client::Entry& e) { plain.push_back(e); });
  ASSERT_EQ(plain.size(), 2u) << "files only, as before";
  EXPECT_FALSE(plain[0].digest);

  std::vector<client::Entry> all;
  c.list("d", [&](const client::Entry& e) { all.push_back(e); }, {.digests = true, .folders = true});
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].name, "d/empty");
  EXPECT_TRUE(all[0].folder);
  EXPECT_EQ(all[1].name, "d/x");
  ASSERT_TRUE(all[1].digest);
  EXPECT_EQ(*all[1].digest, hash::sha256(std::vector<std::uint8_t>{'x', 'x'}));

  std::vector<client::Entry> one;
  c.list("d/x", [&](const client::Entry& e) { one.push_back(e); });
  ASSERT_EQ(one.size(), 1u) << "a file's name lists that file";
  EXPECT_EQ(one[0].name, "d/x");
  EXPECT_EQ(failure_of([&] { c.list("nope", [](const client::Entry&) {}); }), client::Failure::kNotFound);
}

// --skip-identical lists with the SHA-256s the server has on record only: a file it never
// hashed (put there by other means, or a small upload, which is not recorded) comes without
// one, and is not hashed for the listing.
TEST_F(ServerTest, AListingOfKnownDigestsOnlyHashesNothing) {
  const std::string sent(storage::kUnrecordedUploadMax + 1, 's');
  write_file(dir_ / "src", sent);
  write_file(dir_ / "small", std::string("small"));
  client::Client c(address());
  c.put(dir_ / "src", "k/sent");
  c.put(dir_ / "small", "k/small");
  write_file(root() / "k/placed", std::string("placed"));
  std::vector<client::Entry> known;
  c.list("k", [&](const client::Entry& e) { known.push_back(e); }, {.digests = true, .known_digests_only = true});
  ASSERT_EQ(known.size(), 3u);
  EXPECT_EQ(known[0].name, "k/placed");
  EXPECT_FALSE(known[0].digest) << "no record: left out, not computed";
  EXPECT_EQ(known[0].size, 6u);
  EXPECT_EQ(known[1].name, "k/sent");
  ASSERT_TRUE(known[1].digest) << "recorded at upload";
  EXPECT_EQ(*known[1].digest, hash::sha256(std::string_view(sent)));
  EXPECT_EQ(known[2].name, "k/small");
  EXPECT_FALSE(known[2].digest) << "a small upload has no record until something hashes it";
  char rec[64];
  for (const char* name : {"k/placed", "k/small"}) {
    EXPECT_LT(::getxattr((root() / name).c_str(), "user.ftx.sha256", rec, sizeof rec), 0)
        << name << ": nothing was hashed, so nothing recorded";
  }
  // Without the flag, as ls -l asks: every file with its SHA-256, hashed where needed.
  std::vector<client::Entry> all;
  c.list("k", [&](const client::Entry& e) { all.push_back(e); }, {.digests = true});
  ASSERT_EQ(all.size(), 3u);
  ASSERT_TRUE(all[0].digest);
  EXPECT_EQ(*all[0].digest, hash::sha256(std::string_view("placed")));
  ASSERT_TRUE(all[2].digest);
  EXPECT_EQ(*all[2].digest, hash::sha256(std::string_view("small")));
}

// get -r without a progress bar asks for names and kinds only: the server then skips the stat
// of every entry whose kind readdir told it, and the entries come without size and mtime.
TEST_F(ServerTest, ANamesOnlyListingHasTheSameNamesAndKindsWithoutTheStat) {
  write_file(root() / "d/x", std::string("xx"));
  write_file(root() / "d/sub/y", std::string("yyy"));
  std::filesystem::create_directories(root() / "d/empty");
  std::filesystem::create_symlink("x", root() / "d/link");
  ASSERT_EQ(::mkfifo((root() / "d/fifo").c_str(), 0644), 0);
  {
    // A filesystem that does not fill d_type (XFS with ftype=0, some FUSE) stats every entry.
    DIR* dir = ::opendir((root() / "d").c_str());
    ASSERT_NE(dir, nullptr);
    bool typed = true;
    while (const dirent* e = ::readdir(dir)) typed = typed && e->d_type != DT_UNKNOWN;
    ::closedir(dir);
    if (!typed) GTEST_SKIP() << "readdir gives no d_type here";
  }
  client::Client c(address());
  std::vector<client::Entry> full;
  std::vector<client::Entry> names;
  c.list("d", [&](const client::Entry& e) { full.push_back(e); }, {.folders = true});
  c.list("d", [&](const client::Entry& e) { names.push_back(e); }, {.folders = true, .names_only = true});
  ASSERT_EQ(full.size(), 4u) << "d/empty, d/sub, d/sub/y, d/x: no symlink, no FIFO";
  ASSERT_EQ(names.size(), full.size());
  for (std::size_t i = 0; i < full.size(); ++i) {
    EXPECT_EQ(names[i].name, full[i].name);
    EXPECT_EQ(names[i].folder, full[i].folder) << names[i].name;
    EXPECT_TRUE(full[i].described);
    EXPECT_FALSE(names[i].described) << names[i].name << ": stat'ed although readdir told its kind";
    EXPECT_EQ(names[i].size, 0u);
  }
  EXPECT_EQ(full[3].size, 2u);

  std::vector<client::Entry> digests;  // digests open every file anyway: described
  c.list("d", [&](const client::Entry& e) { digests.push_back(e); }, {.digests = true, .names_only = true});
  ASSERT_EQ(digests.size(), 2u);
  EXPECT_TRUE(digests[1].described);
  EXPECT_EQ(digests[1].size, 2u);
  ASSERT_TRUE(digests[1].digest);
}

TEST_F(ServerTest, RemoveTakesFilesAndEmptyFoldersOnly) {
  write_file(root() / "f", std::string("f"));
  write_file(root() / "full/inner", std::string("i"));
  std::filesystem::create_directories(root() / "empty");
  client::Client c(address());
  c.remove("f");
  c.remove("empty");
  EXPECT_FALSE(std::filesystem::exists(root() / "f"));
  EXPECT_FALSE(std::filesystem::exists(root() / "empty"));
  EXPECT_EQ(failure_of([&] { c.remove("full"); }), client::Failure::kRejected);
  EXPECT_TRUE(std::filesystem::exists(root() / "full/inner"));
  EXPECT_EQ(failure_of([&] { c.remove("f"); }), client::Failure::kNotFound);
  EXPECT_EQ(failure_of([&] { c.remove(".ftx-staging"); }), client::Failure::kRejected);
  EXPECT_EQ(failure_of([&] { c.remove("../outside"); }), client::Failure::kRejected);
}

TEST_F(ServerTest, MoveRenamesReplacesAndMovesIntoFolders) {
  write_file(root() / "a", std::string("A"));
  write_file(root() / "b", std::string("B"));
  std::filesystem::create_directories(root() / "dir");
  client::Client c(address());
  auto [to, replaced] = c.move("a", "new/name");
  EXPECT_EQ(to, "new/name");
  EXPECT_FALSE(replaced);
  EXPECT_EQ(read_file(root() / "new/name"), (std::vector<std::uint8_t>{'A'}));
  std::tie(to, replaced) = c.move("new/name", "b");
  EXPECT_TRUE(replaced);
  EXPECT_EQ(read_file(root() / "b"), (std::vector<std::uint8_t>{'A'}));
  std::tie(to, replaced) = c.move("b", "dir");
  EXPECT_EQ(to, "dir/b") << "into an existing folder, as mv(1)";
  EXPECT_TRUE(std::filesystem::exists(root() / "dir/b"));
  EXPECT_EQ(failure_of([&] { c.move("dir", "dir/sub/deeper"); }), client::Failure::kRejected);
  EXPECT_FALSE(std::filesystem::exists(root() / "dir/sub")) << "a refused move makes no folders";
  std::tie(to, replaced) = c.move("dir/b", "dir/b");
  EXPECT_FALSE(replaced) << "moving a file onto itself replaces nothing";
  EXPECT_TRUE(std::filesystem::exists(root() / "dir/b"));
  EXPECT_EQ(failure_of([&] { c.move("nothing", "x"); }), client::Failure::kNotFound);
  EXPECT_TRUE(staging_files(staging()).empty());
}

TEST_F(ServerTest, MkdirMakesParentsAndAcceptsAnExistingFolder) {
  write_file(root() / "file", std::string("f"));
  client::Client c(address());
  c.make_folder("x/y/z");
  c.make_folder("x/y/z");
  EXPECT_TRUE(std::filesystem::is_directory(root() / "x/y/z"));
  EXPECT_EQ(failure_of([&] { c.make_folder("file"); }), client::Failure::kRejected);
  EXPECT_EQ(failure_of([&] { c.make_folder("file/sub"); }), client::Failure::kRejected);
}

TEST_F(ServerTest, FileCommandsNeverFollowSymlinks) {
  write_file(dir_ / "outside", std::string("secret"));
  std::filesystem::create_directories(root());
  std::filesystem::create_symlink(dir_ / "outside", root() / "link");
  std::filesystem::create_directory_symlink(dir_.path(), root() / "dirlink");
  client::Client c(address());
  EXPECT_EQ(failure_of([&] { c.stat("link"); }), client::Failure::kRejected);
  EXPECT_EQ(failure_of([&] { c.move("link", "moved"); }), client::Failure::kRejected);
  EXPECT_EQ(failure_of([&] { c.remove("link"); }), client::Failure::kRejected);
  EXPECT_EQ(failure_of([&] { c.make_folder("dirlink/sub"); }), client::Failure::kRejected);
  EXPECT_EQ(failure_of([&] { c.move("link", "dirlink/x"); }), client::Failure::kRejected);
  EXPECT_TRUE(std::filesystem::is_symlink(root() / "link"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "sub"));
}

class ReadOnlyCommandsTest : public ServerTest {
  void configure(server::ServerOptions& o) override { o.read_only = true; }
};

TEST_F(ReadOnlyCommandsTest, ChangesAreRefusedAndReadsStillWork) {
  write_file(root() / "keep", std::string("k"));
  client::Client c(address());
  EXPECT_EQ(failure_of([&] { c.remove("keep"); }), client::Failure::kRejected);
  EXPECT_EQ(failure_of([&] { c.move("keep", "other"); }), client::Failure::kRejected);
  EXPECT_EQ(failure_of([&] { c.make_folder("new"); }), client::Failure::kRejected);
  EXPECT_TRUE(std::filesystem::exists(root() / "keep"));
  EXPECT_FALSE(std::filesystem::exists(root() / "other"));
  EXPECT_FALSE(std::filesystem::exists(root() / "new"));
  EXPECT_EQ(c.stat("keep").size, 1u);
}

// Every upload would be refused for the same reason: the batch ends at the first refusal,
// with one error that says why, instead of one failed result per file.
TEST_F(ReadOnlyCommandsTest, ABatchOfUploadsEndsWithOneRefusal) {
  write_file(root() / "keep", std::string("k"));
  std::vector<client::BatchItem> items;
  for (int i = 0; i < 300; ++i) {
    const std::string name = "f" + std::to_string(i);
    write_file(dir_ / "src" / name, random_bytes(4096, static_cast<std::uint64_t>(i)));
    items.push_back({dir_ / "src" / name, "up/" + name});
  }
  for (const unsigned connections : {1u, 2u}) {
    SCOPED_TRACE(connections);
    client::Client c(address());
    std::size_t reported = 0;
    try {
      c.put_many(items, client::BatchOptions{.connections = connections},
                 [&](const client::BatchResult&) { ++reported; });
      ADD_FAILURE() << "no error";
    } catch (const client::Error& e) {
      EXPECT_EQ(e.kind(), client::Failure::kRejected);
      EXPECT_NE(std::string(e.what()).find("read-only"), std::string::npos) << e.what();
    }
    EXPECT_EQ(reported, 0u);
    EXPECT_FALSE(std::filesystem::exists(root() / "up"));
  }
  // The server is none the worse for the dropped connections.
  client::Client after(address());
  EXPECT_EQ(after.stat("keep").size, 1u);
}

}  // namespace
}  // namespace ftx::test
