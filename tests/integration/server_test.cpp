// The server and client libraries against each other over real TCP on 127.0.0.1, and the
// server against a raw peer that sends what a buggy or hostile client might.

#include <gtest/gtest.h>

#include <fstream>
#include <future>
#include <thread>

#include "client/client.hpp"
#include "hash/sha256.hpp"
#include "integration/server_fixture.hpp"
#include "server/server.hpp"

namespace ftx::test {
namespace {

using protocol::Frame;
using protocol::MsgType;
using protocol::Status;

TEST_F(ServerTest, RoundTripsEverySizeAroundTheChunkBoundary) {
  constexpr std::size_t kChunk = protocol::kChunkSize;
  client::Client c(address());
  std::uint64_t seed = 1;
  for (const std::size_t size : {std::size_t{0}, std::size_t{1}, kChunk - 1, kChunk, kChunk + 1, 24 * kChunk + 3}) {
    SCOPED_TRACE(size);
    const auto data = random_bytes(size, seed++);
    const auto local = dir_ / ("src-" + std::to_string(size));
    write_file(local, data);
    const std::string remote = "sizes/" + std::to_string(size) + ".bin";
    const auto put = c.put(local, remote);
    EXPECT_EQ(put.bytes, size);
    EXPECT_EQ(put.digest, hash::sha256(data));
    EXPECT_EQ(read_file(root() / remote), data) << "stored bytes";
    const auto back = dir_ / ("back-" + std::to_string(size));
    const auto got = c.get(remote, back);
    EXPECT_EQ(got.digest, hash::sha256(data));
    EXPECT_EQ(read_file(back), data) << "downloaded bytes";
  }
  EXPECT_TRUE(staging_files(staging()).empty());
}

TEST_F(ServerTest, ManyRequestsOnOneConnection) {
  client::Client c(address());
  write_file(dir_ / "a", std::string("alpha"));
  write_file(dir_ / "b", std::string("bravo!"));
  c.put(dir_ / "a", "a");
  c.put(dir_ / "b", "sub/b");
  c.ping();
  std::vector<client::Entry> entries;
  EXPECT_EQ(c.list("", [&](const client::Entry& e) { entries.push_back(e); }), 2u);
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].name, "a");
  EXPECT_EQ(entries[0].size, 5u);
  EXPECT_EQ(entries[1].name, "sub/b");
  c.get("sub/b", dir_ / "b2");
  c.get("a", dir_ / "a2");
  EXPECT_EQ(read_file(dir_ / "a2"), read_file(dir_ / "a"));
  EXPECT_EQ(read_file(dir_ / "b2"), read_file(dir_ / "b"));
}

TEST_F(ServerTest, ThirtyTwoConcurrentClients) {
  constexpr int kClients = 32;
  std::vector<std::future<bool>> results;
  for (int i = 0; i < kClients; ++i) {
    results.push_back(std::async(std::launch::async, [this, i] {
      const auto data = random_bytes(300'000 + static_cast<std::size_t>(i) * 4099, static_cast<std::uint64_t>(100 + i));
      const auto local = dir_ / ("c" + std::to_string(i));
      write_file(local, data);
      client::Client c(address());
      const std::string remote = "concurrent/" + std::to_string(i);
      c.put(local, remote);
      c.get(remote, dir_ / ("c" + std::to_string(i) + ".back"));
      return read_file(dir_ / ("c" + std::to_string(i) + ".back")) == data;
    }));
  }
  for (int i = 0; i < kClients; ++i) EXPECT_TRUE(results[static_cast<std::size_t>(i)].get()) << "client " << i;
  std::size_t stored = 0;
  client::Client c(address());
  c.list("concurrent", [&](const client::Entry&) { ++stored; });
  EXPECT_EQ(stored, static_cast<std::size_t>(kClients));
}

TEST_F(ServerTest, BodyThatDoesNotMatchItsDigestIsRefusedAndLeavesNothing) {
  RawPeer peer(server_->port());
  const auto body = random_bytes(5000, 3);
  Frame put = frame(MsgType::kPut, "liar.bin");
  put.size = body.size();
  put.digest = hash::sha256("not the body");
  peer.send_frame(put);
  ASSERT_EQ(peer.read_frame().type, MsgType::kReady);
  peer.send_bytes(body);
  const Frame reply = peer.read_frame();
  EXPECT_EQ(reply.type, MsgType::kError);
  EXPECT_EQ(reply.status, Status::kIntegrity);
  EXPECT_NE(reply.name.find("SHA-256"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(root() / "liar.bin"));
  EXPECT_TRUE(staging_files(staging()).empty());
  // The connection stays usable: the refused body was consumed exactly.
  peer.send_frame(frame(MsgType::kPing));
  EXPECT_EQ(peer.read_frame().type, MsgType::kPong);
}

TEST_F(ServerTest, GarbageGetsAnErrorAndTheServerKeepsServing) {
  RawPeer http(server_->port());
  const std::string request = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  http.send_bytes({request.begin(), request.end()});
  const Frame reply = http.read_frame();
  EXPECT_EQ(reply.type, MsgType::kError);
  EXPECT_EQ(reply.status, Status::kBadRequest);
  EXPECT_TRUE(http.closed_by_peer());

  RawPeer future_client(server_->port());
  auto bytes = protocol::encode(frame(MsgType::kPing));
  bytes[4] = 2;  // a protocol version from the future
  future_client.send_bytes(bytes);
  EXPECT_EQ(future_client.read_frame().status, Status::kUnsupportedVersion);
  EXPECT_TRUE(future_client.closed_by_peer());

  RawPeer confused(server_->port());
  confused.send_frame(frame(MsgType::kReady));  // a reply type, sent by a "client"
  EXPECT_EQ(confused.read_frame().status, Status::kBadRequest);

  RawPeer oversized(server_->port());
  auto header = protocol::encode(frame(MsgType::kGet));
  header[10] = 0xFF;  // name_len 65535
  oversized.send_bytes(header);
  EXPECT_EQ(oversized.read_frame().status, Status::kBadRequest);

  client::Client c(address());
  c.ping();
}

TEST_F(ServerTest, ClientVanishingMidUploadLeavesNothingAndServerKeepsServing) {
  write_file(root() / "victim.bin", std::string("the old content"));
  {
    RawPeer peer(server_->port());
    Frame put = frame(MsgType::kPut, "victim.bin");
    put.size = 10 * protocol::kChunkSize;
    put.digest = hash::sha256("whatever");
    peer.send_frame(put);
    ASSERT_EQ(peer.read_frame().type, MsgType::kReady);
    peer.send_bytes(random_bytes(protocol::kChunkSize + 17, 4));
    peer.close();
  }
  ASSERT_TRUE(server_->wait_for_sessions(0, std::chrono::seconds(10)));
  EXPECT_TRUE(staging_files(staging()).empty()) << "staging file removed";
  const auto kept = read_file(root() / "victim.bin");
  EXPECT_EQ(std::string(kept.begin(), kept.end()), "the old content");
  client::Client c(address());
  c.get("victim.bin", dir_ / "v");
  EXPECT_EQ(read_file(dir_ / "v"), kept);
}

TEST_F(ServerTest, GluedAndSplitRequestsAreAnsweredInOrder) {
  write_file(root() / "f.txt", std::string("12345"));
  RawPeer peer(server_->port());
  // Four requests in one write: TCP delivers them glued.
  std::vector<std::uint8_t> glued;
  protocol::encode(frame(MsgType::kPing), glued);
  protocol::encode(frame(MsgType::kGet, "f.txt"), glued);
  protocol::encode(frame(MsgType::kList), glued);
  protocol::encode(frame(MsgType::kGet, "missing"), glued);
  peer.send_bytes(glued);
  EXPECT_EQ(peer.read_frame().type, MsgType::kPong);
  const Frame file = peer.read_frame();
  ASSERT_EQ(file.type, MsgType::kFile);
  ASSERT_EQ(file.size, 5u);
  EXPECT_EQ(peer.read_body(5), (std::vector<std::uint8_t>{'1', '2', '3', '4', '5'}));
  EXPECT_EQ(file.digest, hash::sha256("12345"));
  const Frame entry = peer.read_frame();
  EXPECT_EQ(entry.type, MsgType::kEntry);
  EXPECT_EQ(entry.name, "f.txt");
  const Frame end = peer.read_frame();
  EXPECT_EQ(end.type, MsgType::kListEnd);
  EXPECT_EQ(end.size, 1u);
  EXPECT_EQ(peer.read_frame().status, Status::kNotFound);

  // One request sent a byte per write.
  for (const auto b : protocol::encode(frame(MsgType::kPing))) peer.send_bytes({b});
  EXPECT_EQ(peer.read_frame().type, MsgType::kPong);
}

TEST_F(ServerTest, PutHeaderAndBodyGluedToTheNextRequest) {
  // A client that sends the body without waiting for kReady, and a ping right behind it:
  // the server must take exactly `size` bytes as the body and the rest as the next request.
  RawPeer peer(server_->port());
  const std::string body = "body bytes";
  Frame put = frame(MsgType::kPut, "eager.txt");
  put.size = body.size();
  put.digest = hash::sha256(body);
  auto bytes = protocol::encode(put);
  bytes.insert(bytes.end(), body.begin(), body.end());
  protocol::encode(frame(MsgType::kPing), bytes);
  peer.send_bytes(bytes);
  EXPECT_EQ(peer.read_frame().type, MsgType::kReady);
  EXPECT_EQ(peer.read_frame().type, MsgType::kDone);
  EXPECT_EQ(peer.read_frame().type, MsgType::kPong);
  const auto stored = read_file(root() / "eager.txt");
  EXPECT_EQ(std::string(stored.begin(), stored.end()), body);
}

TEST_F(ServerTest, IdleConnectionsDoNotStopTransfersOnTwoThreads) {
  std::vector<std::unique_ptr<RawPeer>> idle;
  for (int i = 0; i < 100; ++i) idle.push_back(std::make_unique<RawPeer>(server_->port()));
  // Half of them stop in the middle of a header: a slow writer holds no thread either.
  const auto half_header = protocol::encode(frame(MsgType::kGet, "x"));
  for (std::size_t i = 0; i < idle.size(); i += 2) {
    idle[i]->send_bytes(std::vector<std::uint8_t>(half_header.begin(), half_header.begin() + 20));
  }
  const auto data = random_bytes(8 * protocol::kChunkSize, 5);
  write_file(dir_ / "big", data);
  client::Client c(address());
  c.put(dir_ / "big", "big");
  c.get("big", dir_ / "big.back");
  EXPECT_EQ(read_file(dir_ / "big.back"), data);
  EXPECT_GE(server_->sessions(), 101u);
}

TEST_F(ServerTest, StopClosesIdleConnectionsPromptly) {
  std::vector<std::unique_ptr<RawPeer>> idle;
  for (int i = 0; i < 5; ++i) idle.push_back(std::make_unique<RawPeer>(server_->port()));
  {
    client::Client c(address());
    c.ping();  // all five were accepted before this one was answered
  }
  const auto t0 = std::chrono::steady_clock::now();
  server_->stop();
  server_->wait();
  // Far less than the 2 s grace: idle connections are not waited for.
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1500));
  for (auto& p : idle) EXPECT_TRUE(p->closed_by_peer());
  EXPECT_THROW(client::Client c(address()), client::Error) << "no longer accepting";
}

TEST_F(ServerTest, StopLetsTheTransferInFlightFinish) {
  RawPeer peer(server_->port());
  const auto body = random_bytes(3 * protocol::kChunkSize, 6);
  Frame put = frame(MsgType::kPut, "inflight.bin");
  put.size = body.size();
  put.digest = hash::sha256(body);
  peer.send_frame(put);
  ASSERT_EQ(peer.read_frame().type, MsgType::kReady);
  peer.send_bytes(std::vector<std::uint8_t>(body.begin(), body.begin() + 1000));
  server_->stop();  // mid-body
  peer.send_bytes(std::vector<std::uint8_t>(body.begin() + 1000, body.end()));
  EXPECT_EQ(peer.read_frame().type, MsgType::kDone);
  // Then it says why no further request will be answered, and closes.
  const Frame why = peer.read_frame();
  EXPECT_EQ(why.type, MsgType::kError);
  EXPECT_EQ(why.status, Status::kShuttingDown);
  EXPECT_TRUE(peer.closed_by_peer()) << "then the server closes the connection";
  peer.close();  // else the server would wait for it (a second at most) before it lets go
  server_->wait();
  EXPECT_EQ(read_file(root() / "inflight.bin"), body);
}

// A stop in the middle of a batch: the files the server published are answered, then the
// batch ends with the server's reason (not "connection lost" or a broken pipe, which is
// what the client said while the server closed without a word, its unread requests turning
// the close into a reset). 2,000 files of 1 KiB go up (put_many) from `local` into the
// server's folder "batch", or down (get_many) from there into `local`; the server stops at
// the first result. Every file reported is whole on the receiving side.
void expect_stop_mid_batch_ends_with_reason(server::Server& server, const protocol::Address& address, bool upload,
                                            const std::filesystem::path& local, const std::filesystem::path& root) {
  std::filesystem::create_directories(local);
  std::filesystem::create_directories(root / "batch");
  std::vector<client::BatchItem> items;
  for (int i = 0; i < 2000; ++i) {
    const auto name = "f" + std::to_string(i);
    write_file(upload ? local / name : root / "batch" / name, random_bytes(1024, 7000 + i));
    items.push_back({local / name, "batch/" + name});
  }
  std::vector<client::BatchResult> results;
  const auto report = [&](const client::BatchResult& r) {
    if (results.empty()) server.stop();  // the first answer is in: the batch is under way
    results.push_back(r);
  };
  client::Client c(address);
  std::string what;
  try {
    if (upload) {
      c.put_many(items, {}, report);
    } else {
      c.get_many(items, {}, report);
    }
    ADD_FAILURE() << "the batch finished although the server stopped";
  } catch (const client::Error& e) {
    EXPECT_EQ(e.kind(), client::Failure::kConnection) << e.what();
    what = e.what();
  }
  EXPECT_NE(what.find("server is shutting down"), std::string::npos) << what;
  ASSERT_FALSE(results.empty());
  EXPECT_LT(results.size(), items.size()) << "a window of 256 at most, not the whole batch, goes on after the stop";
  server.wait();
  for (const auto& r : results) {
    ASSERT_FALSE(r.error) << r.error->what();
    EXPECT_EQ(read_file(items[r.index].local), read_file(root / items[r.index].remote)) << r.index;
  }
}

TEST_F(ServerTest, AStopMidUploadBatchAnswersWhatItStoredThenSaysWhy) {
  expect_stop_mid_batch_ends_with_reason(*server_, address(), /*upload=*/true, dir_ / "src", root());
}

TEST_F(ServerTest, AStopMidDownloadBatchAnswersWhatItSentThenSaysWhy) {
  expect_stop_mid_batch_ends_with_reason(*server_, address(), /*upload=*/false, dir_ / "out", root());
}

TEST_F(ServerTest, AStoppingServerKeepsReadingWhatABatchStillSends) {
  // After ERROR 14 the server half-closes and reads (and drops) until the client closes: a
  // client still sending its batch must not have its writes answered with a reset, which
  // can destroy the answers before it reads them and fails its writes before it reads why.
  // Without that, the second write here, after the server's end, fails (EPIPE or reset).
  RawPeer peer(server_->port());
  const auto streamed_put = [](int i) {
    return streamed_put_wire("linger/" + std::to_string(i), 500 + static_cast<std::uint64_t>(i));
  };
  peer.send_bytes(streamed_put(0));
  ASSERT_EQ(peer.read_frame().type, MsgType::kDone);
  server_->stop();  // the session is mid-batch: its last request was a streamed PUT
  const Frame why = peer.read_frame();
  EXPECT_EQ(why.type, MsgType::kError);
  EXPECT_EQ(why.status, Status::kShuttingDown);
  EXPECT_TRUE(peer.closed_by_peer()) << "the server's side is closed after ERROR 14";
  for (int i = 1; i <= 8; ++i) EXPECT_NO_THROW(peer.send_bytes(streamed_put(i))) << "write " << i;
  peer.close();  // the server lets go now, not after its second
  server_->wait();
  EXPECT_TRUE(std::filesystem::exists(root() / "linger/0"));
  EXPECT_FALSE(std::filesystem::exists(root() / "linger/1")) << "nothing sent after the stop is stored";
}

TEST_F(ServerTest, TestdataManifestRoundTrips) {
  const std::filesystem::path testdata = FTX_TESTDATA_DIR;
  std::ifstream manifest(testdata / "SHA256SUMS");
  ASSERT_TRUE(manifest) << "testdata/SHA256SUMS";
  client::Client c(address());
  std::string line;
  int files = 0;
  while (std::getline(manifest, line)) {
    if (line.empty()) continue;
    // sha256sum format: 64 hex digits, two spaces, the name (which may contain spaces).
    ASSERT_GT(line.size(), 66u) << line;
    const std::string hex = line.substr(0, 64);
    const std::string name = line.substr(66);
    SCOPED_TRACE(name);
    protocol::Digest want{};
    ASSERT_TRUE(hash::from_hex(hex, want));
    const auto put = c.put(testdata / name, "testdata/" + name);
    EXPECT_EQ(put.digest, want);
    const auto got = c.get("testdata/" + name, dir_ / name);
    EXPECT_EQ(got.digest, want);
    EXPECT_EQ(hash::sha256(read_file(dir_ / name)), want);
    ++files;
  }
  EXPECT_GE(files, 3);
}

}  // namespace
}  // namespace ftx::test
