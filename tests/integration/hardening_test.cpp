// Limits, timeouts and access control of a real server: each test fails when the
// protection it names is removed.

#include <gtest/gtest.h>

#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <thread>

#include "client/client.hpp"
#include "hash/sha256.hpp"
#include "integration/server_fixture.hpp"

namespace ftx::test {
namespace {

using namespace std::chrono_literals;
using protocol::Frame;
using protocol::MsgType;
using protocol::Status;

// Many idle TCP connections on one io_context (a RawPeer each would cost an epoll set each).
class IdleSockets {
 public:
  IdleSockets(std::uint16_t port, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      sockets_.emplace_back(io_);
      sockets_.back().connect({asio::ip::make_address("127.0.0.1"), port});
    }
  }

 private:
  asio::io_context io_;
  std::vector<asio::ip::tcp::socket> sockets_;
};

// Puts `data` as `name` and gets it back on a fresh connection; true when identical.
bool round_trip(const protocol::Address& address, const TempDir& dir, const std::string& name,
                const std::vector<std::uint8_t>& data) {
  write_file(dir / (name + ".src"), data);
  client::Client c(address);
  c.put(dir / (name + ".src"), name);
  c.get(name, dir / (name + ".back"));
  return read_file(dir / (name + ".back")) == data;
}

// ---------------------------------------------------------------- connection limits

class ConnectionLimits : public ServerTest {
  void configure(server::ServerOptions& o) override {
    o.max_connections = 4;
    o.max_connections_per_client = 3;
  }
};

TEST_F(ConnectionLimits, ExcessConnectionsGetAnErrorNotAHang) {
  std::vector<std::unique_ptr<RawPeer>> peers;
  for (int i = 0; i < 3; ++i) {
    peers.push_back(std::make_unique<RawPeer>(server_->port()));
    peers.back()->send_frame(frame(MsgType::kPing));
    ASSERT_EQ(peers.back()->read_frame().type, MsgType::kPong);
  }
  RawPeer fourth(server_->port());  // over the per-client limit of 3
  const Frame refusal = fourth.read_frame();
  EXPECT_EQ(refusal.status, Status::kUnavailable);
  EXPECT_NE(refusal.name.find("too many connections from 127.0.0.1"), std::string::npos) << refusal.name;
  EXPECT_TRUE(fourth.closed_by_peer());

  // A client library user sees it as a refusal with the server's reason.
  EXPECT_EQ(failure_of([&] { client::Client(address()).ping(); }), client::Failure::kRejected);

  // Closing one makes room again.
  peers.pop_back();
  ASSERT_TRUE(server_->wait_for_sessions(2, 10s));
  client::Client again(address());
  again.ping();
}

TEST_F(ConnectionLimits, TotalLimitAppliesAcrossClients) {
  // 127.0.0.2 is loopback too: a second "client address" on this machine.
  asio::io_context io;  // declared first: the sockets must go before it
  std::vector<std::unique_ptr<asio::ip::tcp::socket>> socks;
  for (int i = 0; i < 4; ++i) {
    socks.push_back(std::make_unique<asio::ip::tcp::socket>(io));
    auto& s = *socks.back();
    s.open(asio::ip::tcp::v4());
    s.bind({asio::ip::make_address(i < 2 ? "127.0.0.1" : "127.0.0.2"), 0});
    s.connect({asio::ip::make_address("127.0.0.1"), server_->port()});
    const auto ping = protocol::encode(frame(MsgType::kPing));
    asio::write(s, asio::buffer(ping));
    std::vector<std::uint8_t> pong(protocol::kHeaderSize);
    asio::read(s, asio::buffer(pong));  // answered: registered
  }
  RawPeer fifth(server_->port());
  const Frame refusal = fifth.read_frame();
  EXPECT_EQ(refusal.status, Status::kUnavailable);
  EXPECT_NE(refusal.name.find("server busy"), std::string::npos) << refusal.name;
}

// ---------------------------------------------------------------- timeouts

class Timeouts : public ServerTest {
  void configure(server::ServerOptions& o) override {
    o.idle_timeout = 400ms;
    o.header_timeout = 400ms;
    o.body_timeout = 400ms;
  }
};

TEST_F(Timeouts, IdleConnectionIsClosedSilently) {
  RawPeer idle(server_->port());
  EXPECT_TRUE(idle.read_until_closed().empty()) << "between requests there is nothing to answer";
  EXPECT_TRUE(server_->wait_for_sessions(0, 10s));
}

TEST_F(Timeouts, SlowButSteadyUploadIsNotCutOff) {
  // 4 KiB every 100 ms: slow, but never 400 ms without progress; the whole upload takes
  // longer than the body timeout and must still succeed.
  const auto body = random_bytes(40 * 1024, 9);
  RawPeer peer(server_->port());
  Frame put = frame(MsgType::kPut, "slow.bin");
  put.size = body.size();
  put.digest = hash::sha256(body);
  peer.send_frame(put);
  ASSERT_EQ(peer.read_frame().type, MsgType::kReady);
  for (std::size_t off = 0; off < body.size(); off += 4096) {
    peer.send_bytes({body.begin() + static_cast<std::ptrdiff_t>(off),
                     body.begin() + static_cast<std::ptrdiff_t>(std::min(off + 4096, body.size()))});
    std::this_thread::sleep_for(100ms);  // pacing the slow client, not synchronisation
  }
  EXPECT_EQ(peer.read_frame().type, MsgType::kDone);
  EXPECT_EQ(read_file(root() / "slow.bin"), body);
}

TEST_F(Timeouts, SlowlorisHeaderIsCutOffAlthoughBytesKeepComing) {
  RawPeer slow(server_->port());
  const auto header = protocol::encode(frame(MsgType::kGet, "some/file"));
  std::atomic<bool> stop{false};
  // One byte every 100 ms: progress, but the whole request never arrives within 400 ms.
  std::thread drip([&] {
    for (std::size_t i = 0; i < header.size() && !stop; ++i) {
      try {
        slow.send_bytes({header[i]});
      } catch (const std::exception&) {
        return;  // the server closed the connection
      }
      std::this_thread::sleep_for(100ms);
    }
  });
  const Frame reply = slow.read_frame();
  stop = true;
  drip.join();
  EXPECT_EQ(reply.status, Status::kTimeout);
  EXPECT_TRUE(slow.closed_by_peer());
}

TEST_F(Timeouts, StalledUploadIsDroppedAndItsStagingFileRemoved) {
  write_file(root() / "stalled.bin", std::string("old"));
  RawPeer peer(server_->port());
  Frame put = frame(MsgType::kPut, "stalled.bin");
  put.size = 1'000'000;
  put.digest = hash::sha256("x");
  peer.send_frame(put);
  ASSERT_EQ(peer.read_frame().type, MsgType::kReady);
  peer.send_bytes(random_bytes(1000, 1));
  EXPECT_TRUE(peer.closed_by_peer());
  ASSERT_TRUE(server_->wait_for_sessions(0, 10s));
  EXPECT_TRUE(staging_files(staging()).empty());
  const auto kept = read_file(root() / "stalled.bin");
  EXPECT_EQ(std::string(kept.begin(), kept.end()), "old");
}

TEST_F(Timeouts, ReaderThatNeverReadsIsDropped) {
  write_file(root() / "big.bin", random_bytes(64 << 20, 2));
  RawPeer stuck(server_->port());
  stuck.send_frame(frame(MsgType::kGet, "big.bin"));
  // It never reads: the socket buffers fill, the server's writes stall, the body timeout
  // ends the connection. Meanwhile others are served.
  EXPECT_TRUE(round_trip(address(), dir_, "other", random_bytes(3 << 20, 3)));
  ASSERT_TRUE(server_->wait_for_sessions(0, 20s)) << "stuck reader still connected";
}

// The load: 1,000 idle connections, a slowloris and a reader that never reads, all
// at once on a 2-thread server, while ordinary transfers still complete.
class HostileLoad : public ServerTest {
  void configure(server::ServerOptions& o) override {
    o.threads = 2;
    o.max_connections = 2000;
    o.max_connections_per_client = 2000;
    o.header_timeout = 30s;
    o.body_timeout = 30s;
  }
};

TEST_F(HostileLoad, TransfersCompleteBesideIdleSlowAndStuckClients) {
  IdleSockets idle(server_->port(), 1000);
  RawPeer slowloris(server_->port());
  const auto header = protocol::encode(frame(MsgType::kList));
  slowloris.send_bytes({header.begin(), header.begin() + 10});
  write_file(root() / "big.bin", random_bytes(32 << 20, 4));
  RawPeer stuck(server_->port());
  stuck.send_frame(frame(MsgType::kGet, "big.bin"));

  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(round_trip(address(), dir_, "f" + std::to_string(i), random_bytes(4 << 20, 10 + i))) << i;
  }
  EXPECT_GE(server_->sessions(), 1002u);
}

// ---------------------------------------------------------------- upload limits

class UploadLimits : public ServerTest {
  void configure(server::ServerOptions& o) override {
    o.max_file_size = 1000;
    o.max_name_bytes = 20;
    o.max_depth = 2;
  }
};

TEST_F(UploadLimits, OversizeUploadIsRefusedBeforeItsBody) {
  RawPeer peer(server_->port());
  Frame put = frame(MsgType::kPut, "big");
  put.size = 1001;
  peer.send_frame(put);
  const Frame reply = peer.read_frame();  // answered without a byte of body sent
  EXPECT_EQ(reply.status, Status::kTooLarge);
  peer.send_frame(frame(MsgType::kPing));
  EXPECT_EQ(peer.read_frame().type, MsgType::kPong) << "the connection stays usable";

  write_file(dir_ / "ok", random_bytes(1000, 5));
  client::Client c(address());
  c.put(dir_ / "ok", "ok");  // exactly at the limit
}

TEST_F(UploadLimits, LongAndDeepNamesAreRefused) {
  write_file(dir_ / "f", std::string("x"));
  client::Client c(address());
  EXPECT_EQ(failure_of([&] { c.put(dir_ / "f", std::string(21, 'n')); }), client::Failure::kRejected);
  EXPECT_EQ(failure_of([&] { c.put(dir_ / "f", "a/b/c/d"); }), client::Failure::kRejected);
  c.put(dir_ / "f", "a/b/c");  // two folders deep
  c.put(dir_ / "f", std::string(20, 'n'));
}

class FreeSpaceGuard : public ServerTest {
  void configure(server::ServerOptions& o) override { o.min_free_bytes = std::uint64_t{1} << 62; }
};

TEST_F(FreeSpaceGuard, UploadThatCannotFitIsRefusedBeforeItsBody) {
  RawPeer peer(server_->port());
  Frame put = frame(MsgType::kPut, "wont-fit");
  put.size = 10;
  peer.send_frame(put);
  const Frame reply = peer.read_frame();
  EXPECT_EQ(reply.status, Status::kNoSpace);
  EXPECT_NE(reply.name.find("not enough free space"), std::string::npos) << reply.name;
  EXPECT_TRUE(staging_files(staging()).empty());
}

class ReadOnly : public ServerTest {
  void configure(server::ServerOptions& o) override { o.read_only = true; }
};

TEST_F(ReadOnly, RefusesWritesServesReads) {
  write_file(root() / "published", std::string("content"));
  write_file(dir_ / "f", std::string("x"));
  client::Client c(address());
  EXPECT_EQ(failure_of([&] { c.put(dir_ / "f", "new"); }), client::Failure::kRejected);
  EXPECT_FALSE(std::filesystem::exists(root() / "new"));
  c.get("published", dir_ / "got");
  std::size_t n = 0;
  c.list("", [&](const client::Entry&) { ++n; });
  EXPECT_EQ(n, 1u);
}

// ---------------------------------------------------------------- token

class Token : public ServerTest {
  void configure(server::ServerOptions& o) override {
    o.token = "correct horse battery staple";
    o.auth_delay = 200ms;
  }
};

constexpr const char* kToken = "correct horse battery staple";

TEST_F(Token, RightTokenWorksMissingOrWrongTokenIsRefused) {
  write_file(dir_ / "f", std::string("secret data"));
  client::Client good(address(), kToken);
  good.put(dir_ / "f", "f");
  good.get("f", dir_ / "back");

  client::Client none(address());
  EXPECT_EQ(failure_of([&] { none.get("f", dir_ / "stolen"); }), client::Failure::kAuth);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "stolen"));

  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(failure_of([&] { client::Client wrong(address(), "guess"); }), client::Failure::kAuth);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 200ms) << "a wrong answer is answered after the delay";
}

TEST_F(Token, ABatchWithoutTheTokenEndsWithTheRefusal) {
  // put -r without the token: the first file is refused and the server closes. That is the
  // batch's end with the server's reason (exit 9 on the command line), not a refusal of one
  // file followed by "connection lost" for the rest (exit 3).
  std::vector<client::BatchItem> items;
  for (int i = 0; i < 200; ++i) {
    const auto local = dir_ / ("f" + std::to_string(i));
    write_file(local, random_bytes(4096, 700 + static_cast<std::uint64_t>(i)));
    items.push_back({local, "batch/f" + std::to_string(i)});
  }
  client::Client none(address());
  std::size_t results = 0;
  std::string message;
  try {
    none.put_many(items, {}, [&](const client::BatchResult&) { ++results; });
    ADD_FAILURE() << "the batch succeeded without the token";
  } catch (const client::Error& e) {
    EXPECT_EQ(e.kind(), client::Failure::kAuth) << e.what();
    message = e.what();
  }
  EXPECT_NE(message.find("token"), std::string::npos) << message;
  EXPECT_EQ(results, 0u) << "no file is reported as if the server had judged it";
  EXPECT_FALSE(std::filesystem::exists(root() / "batch"));
}

TEST_F(Token, TheRefusalOfABatchIsReadBeforeTheConnectionCloses) {
  // After refusing a request sent without the token, the server reads (and drops) what the
  // client still sends until the client closes: a batch's next requests, already on their
  // way, must not be answered with a reset, which can destroy the refusal before the client
  // reads it. Without that, the writes after the refusal fail (EPIPE or reset).
  RawPeer peer(server_->port());
  const auto streamed_put = [](int i) {
    return streamed_put_wire("nope/" + std::to_string(i), 800 + static_cast<std::uint64_t>(i));
  };
  peer.send_bytes(streamed_put(0));
  const Frame why = peer.read_frame();
  EXPECT_EQ(why.type, MsgType::kError);
  EXPECT_EQ(why.status, Status::kUnauthorized);
  EXPECT_TRUE(peer.closed_by_peer()) << "the server's side is closed after the refusal";
  for (int i = 1; i <= 8; ++i) EXPECT_NO_THROW(peer.send_bytes(streamed_put(i))) << "write " << i;
  peer.close();
  EXPECT_FALSE(std::filesystem::exists(root() / "nope"));
}

TEST_F(Token, PingNeedsNoToken) {
  client::Client c(address());
  c.ping();  // health checks work without the secret; nothing is revealed
}

TEST_F(Token, AnAnswerWorksOnceForItsOwnChallenge) {
  RawPeer a(server_->port());
  a.send_frame(frame(MsgType::kHello));
  const Frame challenge = a.read_frame();
  ASSERT_EQ(challenge.type, MsgType::kChallenge);
  Frame answer = frame(MsgType::kAuth);
  answer.digest = hash::auth_response(kToken, challenge.digest);
  a.send_frame(answer);
  EXPECT_EQ(a.read_frame().type, MsgType::kAuthOk);

  RawPeer b(server_->port());  // replays a's answer against a fresh challenge
  b.send_frame(frame(MsgType::kHello));
  const Frame other = b.read_frame();
  EXPECT_NE(other.digest, challenge.digest) << "every challenge is fresh";
  b.send_frame(answer);
  EXPECT_EQ(b.read_frame().status, Status::kUnauthorized);
  EXPECT_TRUE(b.closed_by_peer());

  RawPeer c(server_->port());  // answers without asking
  c.send_frame(answer);
  EXPECT_EQ(c.read_frame().status, Status::kUnauthorized);
}

}  // namespace
}  // namespace ftx::test

namespace ftx::test {
namespace {

// A real ENOSPC in the middle of an upload: the root on a 16 MiB tmpfs this test mounts
// (root only; elsewhere faults_test.sh covers the same path with RLIMIT_FSIZE). The upload
// passes the free-space guard, then the test fills the filesystem behind the server's back
// before the second half of the body arrives.
class DiskFull : public ::testing::Test {
 protected:
  void SetUp() override {
    mount_ = dir_ / "small";
    std::filesystem::create_directories(mount_);
    if (::mount("tmpfs", mount_.c_str(), "tmpfs", 0, "size=16m") != 0) {
      GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno) << "); see faults_test.sh";
    }
    mounted_ = true;
    server::ServerOptions o;
    o.root = mount_ / "root";
    o.port = 0;
    o.threads = 2;
    o.min_free_bytes = 0;
    server_ = std::make_unique<server::Server>(o);
    server_->start();
  }
  void TearDown() override {
    if (server_) {
      server_->stop();
      server_->wait();
      server_.reset();
    }
    if (mounted_) ::umount2(mount_.c_str(), MNT_DETACH);
  }
  TempDir dir_;
  std::filesystem::path mount_;
  bool mounted_ = false;
  std::unique_ptr<server::Server> server_;
};

TEST_F(DiskFull, EnospcMidUploadAnswersAnErrorKeepsTheOldFileAndLeavesNothing) {
  const auto old = random_bytes(1 << 20, 20);
  write_file(mount_ / "root" / "victim", old);
  const auto body = random_bytes(8 << 20, 21);
  RawPeer peer(server_->port());
  Frame put = frame(MsgType::kPut, "victim");
  put.size = body.size();
  put.digest = hash::sha256(body);
  peer.send_frame(put);
  ASSERT_EQ(peer.read_frame().type, MsgType::kReady) << "the guard let it through: it fits now";
  const auto half = static_cast<std::ptrdiff_t>(body.size() / 2);
  peer.send_bytes({body.begin(), body.begin() + half});
  // Fill what is left (the write stops at ENOSPC; that is the point).
  {
    std::ofstream filler(mount_ / "filler", std::ios::binary);
    const std::vector<char> block(1 << 20, 'x');
    while (filler.write(block.data(), static_cast<std::streamsize>(block.size()))) {
    }
  }
  peer.send_bytes({body.begin() + half, body.end()});
  const Frame reply = peer.read_frame();
  EXPECT_EQ(reply.status, protocol::Status::kNoSpace) << reply.name;
  EXPECT_NE(reply.name.find("ran out of space"), std::string::npos) << reply.name;
  EXPECT_EQ(read_file(mount_ / "root" / "victim"), old);
  EXPECT_TRUE(staging_files(mount_ / "root" / ".ftx-staging").empty());
  std::filesystem::remove(mount_ / "filler");
  peer.send_frame(frame(MsgType::kPing));
  EXPECT_EQ(peer.read_frame().type, MsgType::kPong) << "the connection and the server carry on";
}

}  // namespace
}  // namespace ftx::test
