// The large-file paths of the performance work: uploads whose SHA-256 follows the body
// (kFlagDigestAfter, so the client reads its file once), downloads sent with sendfile(2)
// and hashed on the client's hash thread, and large files inside batches.

#include <gtest/gtest.h>

#include "client/client.hpp"
#include "hash/sha256.hpp"
#include "integration/server_fixture.hpp"

namespace ftx::test {
namespace {

using protocol::Frame;
using protocol::MsgType;
using protocol::Status;

Frame put_digest_after(const std::string& name, std::size_t size, std::uint16_t extra_flags = 0) {
  Frame f = frame(MsgType::kPut, name);
  f.flags = static_cast<std::uint16_t>(protocol::kFlagDigestAfter | extra_flags);
  f.size = size;
  return f;  // digest field left zero: the trailer carries it
}

std::vector<std::uint8_t> bytes_of(const protocol::Digest& d) { return {d.begin(), d.end()}; }

TEST_F(ServerTest, DigestAfterTheBodyIsVerifiedBeforePublishing) {
  const auto body = random_bytes(3 * protocol::kChunkSize + 5, 41);
  RawPeer peer(server_->port());
  peer.send_frame(put_digest_after("after.bin", body.size()));
  ASSERT_EQ(peer.read_frame().type, MsgType::kReady);
  peer.send_bytes(body);
  peer.send_bytes(bytes_of(hash::sha256(body)));
  const Frame done = peer.read_frame();
  ASSERT_EQ(done.type, MsgType::kDone) << done.name;
  EXPECT_EQ(done.size, body.size());
  EXPECT_EQ(done.digest, hash::sha256(body)) << "DONE echoes the trailer's digest";
  EXPECT_EQ(read_file(root() / "after.bin"), body);

  // The same name again with a trailer that does not match: refused, the old file stays,
  // and the connection is still in step (body and trailer were consumed exactly).
  const auto other = random_bytes(body.size(), 42);
  peer.send_frame(put_digest_after("after.bin", other.size()));
  ASSERT_EQ(peer.read_frame().type, MsgType::kReady);
  peer.send_bytes(other);
  peer.send_bytes(bytes_of(hash::sha256(body)));
  const Frame refused = peer.read_frame();
  EXPECT_EQ(refused.type, MsgType::kError);
  EXPECT_EQ(refused.status, Status::kIntegrity);
  EXPECT_EQ(read_file(root() / "after.bin"), body);
  EXPECT_TRUE(staging_files(staging()).empty());
  peer.send_frame(frame(MsgType::kPing));
  EXPECT_EQ(peer.read_frame().type, MsgType::kPong);
}

TEST_F(ServerTest, RefusedStreamedPutDrainsItsTrailerToo) {
  // A streamed upload with a trailer that is refused (bad name) is read to the end of the
  // trailer, so the request glued behind it is found where it should be.
  const auto body = random_bytes(70'000, 43);
  std::vector<std::uint8_t> wire;
  protocol::encode(put_digest_after("../escape", body.size(), protocol::kFlagStreamed), wire);
  wire.insert(wire.end(), body.begin(), body.end());
  const auto trailer = bytes_of(hash::sha256(body));
  wire.insert(wire.end(), trailer.begin(), trailer.end());
  protocol::encode(frame(MsgType::kPing), wire);
  RawPeer peer(server_->port());
  peer.send_bytes(wire);
  EXPECT_EQ(peer.read_frame().status, Status::kBadName);
  EXPECT_EQ(peer.read_frame().type, MsgType::kPong);
}

TEST_F(ServerTest, TrailerCutShortStoresNothing) {
  write_file(root() / "keep.bin", std::string("old"));
  const auto body = random_bytes(2 * protocol::kChunkSize, 44);
  {
    RawPeer peer(server_->port());
    peer.send_frame(put_digest_after("keep.bin", body.size()));
    ASSERT_EQ(peer.read_frame().type, MsgType::kReady);
    peer.send_bytes(body);
    auto trailer = bytes_of(hash::sha256(body));
    trailer.resize(10);  // the connection ends inside the trailer
    peer.send_bytes(trailer);
    peer.shutdown_send();
    // EOF inside the body: no reply at all. (A server that ignored the flag would have
    // answered the body alone with an integrity error.)
    EXPECT_TRUE(peer.read_until_closed().empty());
  }
  ASSERT_TRUE(server_->wait_for_sessions(0, std::chrono::seconds(10)));
  EXPECT_TRUE(staging_files(staging()).empty());
  const auto kept = read_file(root() / "keep.bin");
  EXPECT_EQ(std::string(kept.begin(), kept.end()), "old");
}

TEST_F(ServerTest, LargeDownloadArrivesWholeAfterItsHeader) {
  // Over plain TCP a body this large leaves the server by sendfile(2): the header (with the
  // cached digest) goes first, then exactly `size` bytes, then the next reply.
  const auto data = random_bytes(5 * protocol::kChunkSize + 123, 45);
  write_file(dir_ / "src", data);
  client::Client c(address());
  c.put(dir_ / "src", "big.bin");  // caches the digest on the server
  RawPeer peer(server_->port());
  std::vector<std::uint8_t> wire;
  protocol::encode(frame(MsgType::kGet, "big.bin"), wire);
  protocol::encode(frame(MsgType::kPing), wire);
  peer.send_bytes(wire);
  const Frame file = peer.read_frame();
  ASSERT_EQ(file.type, MsgType::kFile);
  EXPECT_EQ(file.size, data.size());
  EXPECT_EQ(file.digest, hash::sha256(data));
  EXPECT_EQ(peer.read_body(data.size()), data);
  EXPECT_EQ(peer.read_frame().type, MsgType::kPong);
}

TEST_F(ServerTest, APeerThatHangsUpDuringASendfileBodyDoesNotKillTheServer) {
  // sendfile(2) cannot say MSG_NOSIGNAL: a peer that half-closes and then resets the
  // connection mid-body makes the next sendfile fail with EPIPE, which would raise SIGPIPE
  // and end this whole process (the server runs in it) unless it is kept off.
  const auto data = random_bytes(32 * protocol::kChunkSize, 53);
  write_file(dir_ / "src", data);
  client::Client(address()).put(dir_ / "src", "huge.bin");
  for (int i = 0; i < 3; ++i) {
    RawPeer peer(server_->port());
    peer.send_frame(frame(MsgType::kGet, "huge.bin"));
    ASSERT_EQ(peer.read_frame().type, MsgType::kFile);
    peer.shutdown_send();  // FIN: the server's socket goes to CLOSE_WAIT...
    peer.close();          // ...and unread data makes this an RST: EPIPE on the next send
  }
  ASSERT_TRUE(server_->wait_for_sessions(0, std::chrono::seconds(10)));
  client::Client after(address());
  after.ping();
  EXPECT_EQ(after.get("huge.bin", dir_ / "back").digest, hash::sha256(data));
}

TEST_F(ServerTest, LargeFilesInBatchesAreReadOnceAndVerified) {
  // put_many sends files over one chunk with their digest after the body, between small
  // streamed ones; get_many hashes them on the client's hash thread. Every copy is exact
  // and every reported digest is the file's.
  std::vector<std::vector<std::uint8_t>> contents{random_bytes(100, 46), random_bytes(3 * protocol::kChunkSize + 1, 47),
                                                  random_bytes(5000, 48), random_bytes(2 * protocol::kChunkSize, 49),
                                                  random_bytes(0, 50)};
  std::vector<client::BatchItem> up, down;
  for (std::size_t i = 0; i < contents.size(); ++i) {
    write_file(dir_ / ("f" + std::to_string(i)), contents[i]);
    up.push_back({dir_ / ("f" + std::to_string(i)), "batch/f" + std::to_string(i)});
    down.push_back({dir_ / ("g" + std::to_string(i)), "batch/f" + std::to_string(i)});
  }
  client::Client c(address());
  std::vector<client::BatchResult> put_results, get_results;
  c.put_many(up, {}, [&](const client::BatchResult& r) { put_results.push_back(r); });
  c.get_many(down, {}, [&](const client::BatchResult& r) { get_results.push_back(r); });
  ASSERT_EQ(put_results.size(), contents.size());
  ASSERT_EQ(get_results.size(), contents.size());
  for (std::size_t i = 0; i < contents.size(); ++i) {
    SCOPED_TRACE(i);
    ASSERT_FALSE(put_results[i].error) << put_results[i].error->what();
    ASSERT_FALSE(get_results[i].error) << get_results[i].error->what();
    EXPECT_EQ(put_results[i].result.digest, hash::sha256(contents[i]));
    EXPECT_EQ(get_results[i].result.digest, hash::sha256(contents[i]));
    EXPECT_EQ(read_file(root() / ("batch/f" + std::to_string(i))), contents[i]);
    EXPECT_EQ(read_file(dir_ / ("g" + std::to_string(i))), contents[i]);
  }
}

TEST_F(ServerTest, ConsecutiveLargeTransfersOnOneClientEachHashTheirOwnBytes) {
  // One Client keeps one hash thread for all its transfers, uploads and downloads: every
  // transfer's digest must cover its own bytes only.
  const auto a = random_bytes(4 * protocol::kChunkSize, 51);
  const auto b = random_bytes(2 * protocol::kChunkSize + 7, 52);
  write_file(dir_ / "a", a);
  write_file(dir_ / "b", b);
  client::Client c(address());
  EXPECT_EQ(c.put(dir_ / "a", "a.bin").digest, hash::sha256(a));
  EXPECT_EQ(c.get("a.bin", dir_ / "a2").digest, hash::sha256(a));
  EXPECT_EQ(c.put(dir_ / "b", "b.bin").digest, hash::sha256(b));
  EXPECT_EQ(c.get("b.bin", dir_ / "b2").digest, hash::sha256(b));
  EXPECT_EQ(c.get("a.bin", dir_ / "a3").digest, hash::sha256(a));
  EXPECT_EQ(read_file(dir_ / "b2"), b);
  EXPECT_EQ(read_file(dir_ / "a3"), a);
}

}  // namespace
}  // namespace ftx::test
