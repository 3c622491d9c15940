// tls::BufferedSocket over a real TCP connection on 127.0.0.1: what one recv brought is
// served by the next reads without touching the socket, in order and whole; the buffer
// grows after a full receive and shrinks after a short one or a release; an empty read
// takes nothing; the end of the stream and a cancel come through. And read_arrived over a
// real TLS connection.

#include "tls/buffered_socket.hpp"

#include "tls/certs.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <tuple>
#include <thread>
#include <vector>

namespace ftx::tls {
namespace {

using asio::ip::tcp;

struct Pair {
  asio::io_context io;
  tcp::socket reader{io};
  tcp::socket writer{io};

  Pair() {
    tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    // A receive window that holds what the tests send before they read (the accepted
    // socket inherits it; older kernels' default window is about 64 KiB).
    acceptor.set_option(asio::socket_base::receive_buffer_size(1 << 20));
    writer.connect(acceptor.local_endpoint());
    acceptor.accept(reader);
  }

  // Writes `data` (and ends the stream when `end`), then waits until all of it has arrived
  // on the reading side (so that one recv can take all of it): at most the receive window.
  void send_all(const std::vector<std::uint8_t>& data, bool end = true) {
    const std::size_t before = reader.available();
    asio::write(writer, asio::buffer(data));
    if (end) writer.shutdown(tcp::socket::shutdown_send);
    wait_for(before + data.size());
  }

  // Waits (10 s at most) until at least `bytes` are queued on the reading side; returns how
  // many are.
  std::size_t wait_for(std::size_t bytes) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (reader.available() < bytes) {
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "never arrived: " << bytes << " bytes";
        break;
      }
      std::this_thread::yield();
    }
    return reader.available();
  }

  // One async_read_some of `s` into `buf`, run to completion -- 5 s at most: a read still
  // waiting then is cancelled and counts as a failure.
  std::pair<std::error_code, std::size_t> read(BufferedSocket& s, asio::mutable_buffer buf) {
    std::pair<std::error_code, std::size_t> out;
    bool done = false;
    s.async_read_some(buf, [&](std::error_code ec, std::size_t n) {
      out = {ec, n};
      done = true;
    });
    io.restart();
    io.run_for(std::chrono::seconds(5));
    if (!done) {
      ADD_FAILURE() << "the read waited";
      reader.cancel();
      io.restart();
      io.run();
    }
    return out;
  }
};

std::vector<std::uint8_t> pattern(std::size_t n) {
  std::vector<std::uint8_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>(i * 7 + i / 251);
  return v;
}

TEST(BufferedSocket, AFullReceiveMakesTheNextOneTakeAllThatArrived) {
  Pair p;
  // Less than the capacity, and than a fresh connection's receive window: all of it
  // arrives before the first read.
  const auto data = pattern(60 * 1024);
  p.send_all(data);
  BufferedSocket s(p.reader);
  std::vector<std::uint8_t> got;
  std::vector<std::uint8_t> buf(BufferedSocket::kRecordBytes);  // what asio's TLS engine asks for
  const auto take = [&](std::size_t n) {
    got.insert(got.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n));
  };
  // The first read of the socket takes a record's worth, and fills the buffer...
  auto [ec, n] = p.read(s, asio::buffer(buf));
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_EQ(n, buf.size());
  take(n);
  EXPECT_EQ(s.allocated(), BufferedSocket::kRecordBytes);
  EXPECT_EQ(s.buffered(), 0u);
  // ...so the second takes everything else at once, and it waits in the layer.
  std::tie(ec, n) = p.read(s, asio::buffer(buf));
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_EQ(n, buf.size());
  take(n);
  EXPECT_EQ(s.allocated(), BufferedSocket::kDefaultCapacity);
  EXPECT_EQ(s.buffered(), data.size() - got.size());
  EXPECT_EQ(p.reader.available(), 0u);
  // Reads of uneven sizes take the rest in order, none larger than what was asked.
  for (std::size_t want = 1; s.buffered() > 0; want = want * 3 + 1) {
    std::vector<std::uint8_t> b(std::min<std::size_t>(want, 64 * 1024));
    std::tie(ec, n) = p.read(s, asio::buffer(b));
    ASSERT_FALSE(ec) << ec.message();
    ASSERT_GT(n, 0u);
    ASSERT_LE(n, b.size());
    got.insert(got.end(), b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n));
    ASSERT_LE(got.size(), data.size()) << "read more than was sent";
  }
  EXPECT_EQ(got, data);
  // Then the socket again: the writer ended the stream.
  std::tie(ec, n) = p.read(s, asio::buffer(buf));
  EXPECT_EQ(ec, asio::error::eof);
  EXPECT_EQ(n, 0u);
}

TEST(BufferedSocket, MoreThanTheCapacityTakesSeveralReceives) {
  Pair p;
  const auto data = pattern(60 * 1024);
  p.send_all(data);
  BufferedSocket s(p.reader, BufferedSocket::kRecordBytes);
  std::vector<std::uint8_t> got;
  std::vector<std::uint8_t> buf(10 * 1024);
  for (;;) {
    auto [ec, n] = p.read(s, asio::buffer(buf));
    if (ec == asio::error::eof) break;
    ASSERT_FALSE(ec) << ec.message();
    EXPECT_LE(s.buffered(), BufferedSocket::kRecordBytes - n);  // never more than one capacity held
    got.insert(got.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n));
    ASSERT_LE(got.size(), data.size()) << "read more than was sent";
  }
  EXPECT_EQ(got, data);
}

TEST(BufferedSocket, AShortReceiveShrinksTheBufferAndReleaseFreesIt) {
  Pair p;
  const auto data = pattern(40 * 1024);
  p.send_all(data, /*end=*/false);
  BufferedSocket s(p.reader);
  std::vector<std::uint8_t> got(data.size());
  std::size_t have = 0;
  while (have < data.size()) {  // a full record, then the rest through the large buffer
    auto [ec, n] = p.read(s, asio::buffer(got.data() + have, got.size() - have));
    ASSERT_FALSE(ec) << ec.message();
    have += n;
  }
  EXPECT_EQ(got, data);
  EXPECT_EQ(s.allocated(), BufferedSocket::kDefaultCapacity);
  // The peer sends a little and waits: that read still used the large buffer...
  const std::vector<std::uint8_t> small{1, 2, 3};
  std::vector<std::uint8_t> buf(100);
  p.send_all(small, /*end=*/false);
  auto [ec, n] = p.read(s, asio::buffer(buf));
  ASSERT_FALSE(ec);
  ASSERT_EQ(n, small.size());
  EXPECT_EQ(s.allocated(), BufferedSocket::kDefaultCapacity);
  // ...and the one after it, after so short a receive, a record-sized one.
  p.send_all(small, /*end=*/false);
  std::tie(ec, n) = p.read(s, asio::buffer(buf));
  ASSERT_FALSE(ec);
  ASSERT_EQ(n, small.size());
  EXPECT_EQ(s.allocated(), BufferedSocket::kRecordBytes);
  // Nothing buffered: release frees it, and the next read makes a small one again.
  s.release();
  EXPECT_EQ(s.allocated(), 0u);
  p.send_all(small);
  std::tie(ec, n) = p.read(s, asio::buffer(buf));
  ASSERT_FALSE(ec);
  ASSERT_EQ(n, small.size());
  EXPECT_EQ(std::vector<std::uint8_t>(buf.begin(), buf.begin() + 3), small);
  EXPECT_EQ(s.allocated(), BufferedSocket::kRecordBytes);
}

TEST(BufferedSocket, AnEmptyReadAndReleaseKeepWhatIsBuffered) {
  Pair p;
  const auto data = pattern(1000);
  p.send_all(data);
  BufferedSocket s(p.reader);
  std::vector<std::uint8_t> one(1);
  auto [ec, n] = p.read(s, asio::buffer(one));
  ASSERT_FALSE(ec);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(one[0], data[0]);
  // An empty read, like the socket's, completes at once and takes nothing.
  std::tie(ec, n) = p.read(s, asio::mutable_buffer());
  EXPECT_FALSE(ec);
  EXPECT_EQ(n, 0u);
  EXPECT_EQ(s.buffered(), data.size() - 1);
  s.release();  // 999 bytes still held: nothing is freed
  EXPECT_EQ(s.buffered(), data.size() - 1);
  std::vector<std::uint8_t> rest(data.size());
  std::tie(ec, n) = p.read(s, asio::buffer(rest));
  ASSERT_FALSE(ec);
  ASSERT_EQ(n, data.size() - 1);
  EXPECT_TRUE(std::equal(rest.begin(), rest.begin() + static_cast<std::ptrdiff_t>(n), data.begin() + 1));
}

TEST(BufferedSocket, CancellingTheSocketEndsAWaitingRead) {
  Pair p;  // nothing is ever written
  BufferedSocket s(p.reader);
  std::vector<std::uint8_t> buf(100);
  std::error_code got_ec;
  bool done = false;
  s.async_read_some(asio::buffer(buf), [&](std::error_code ec, std::size_t) {
    got_ec = ec;
    done = true;
  });
  // Runs the read until it waits on the socket, then cancels it from inside the loop.
  asio::post(p.io, [&] { p.reader.cancel(); });
  p.io.run();
  ASSERT_TRUE(done);
  EXPECT_EQ(got_ec, asio::error::operation_aborted);
  EXPECT_EQ(s.buffered(), 0u);
}

TEST(BufferedSocket, ABufferedReadCompletesLaterNotInline) {
  Pair p;
  p.send_all(pattern(100));
  BufferedSocket s(p.reader);
  std::vector<std::uint8_t> buf(10);
  ASSERT_EQ(p.read(s, asio::buffer(buf)).second, 10u);  // the rest is buffered now
  bool done = false;
  s.async_read_some(asio::buffer(buf), [&](std::error_code, std::size_t) { done = true; });
  EXPECT_FALSE(done) << "completed inside async_read_some";
  p.io.restart();
  p.io.run();
  EXPECT_TRUE(done);
}

TEST(BufferedSocket, NoWaitReadsTakeWhatIsThereAndNeverWait) {
  Pair p;
  BufferedSocket s(p.reader);
  s.set_no_wait(true);
  std::vector<std::uint8_t> buf(100);
  // Nothing sent: completes at once, with would_block (a waiting read would hang here).
  auto [ec, n] = p.read(s, asio::buffer(buf));
  EXPECT_EQ(ec, asio::error::would_block);
  EXPECT_EQ(n, 0u);
  // Something in the socket's queue: read as usual.
  const auto data = pattern(50);
  p.send_all(data, /*end=*/false);
  std::tie(ec, n) = p.read(s, asio::buffer(buf));
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_EQ(n, data.size());
  EXPECT_TRUE(std::equal(data.begin(), data.end(), buf.begin()));
  std::tie(ec, n) = p.read(s, asio::buffer(buf));
  EXPECT_EQ(ec, asio::error::would_block);
}

// A TLS connection over a Pair: both sides tls::Stream, the handshake done.
struct TlsPair {
  Pair p;
  Pem pem = make_certificate(CertSpec{});
  asio::ssl::context server_ctx{asio::ssl::context::tls_server};
  asio::ssl::context client_ctx{asio::ssl::context::tls_client};
  std::unique_ptr<Stream> server;
  std::unique_ptr<Stream> client;

  TlsPair() {
    server_ctx.use_certificate_chain(asio::buffer(pem.cert));
    server_ctx.use_private_key(asio::buffer(pem.key), asio::ssl::context::pem);
    client_ctx.set_verify_mode(asio::ssl::verify_none);
    server = std::make_unique<Stream>(p.reader, server_ctx);
    client = std::make_unique<Stream>(p.writer, client_ctx);
    std::error_code server_hs, client_hs;
    server->async_handshake(asio::ssl::stream_base::server, [&](std::error_code ec) { server_hs = ec; });
    client->async_handshake(asio::ssl::stream_base::client, [&](std::error_code ec) { client_hs = ec; });
    p.io.run();
    EXPECT_FALSE(server_hs) << server_hs.message();
    EXPECT_FALSE(client_hs) << client_hs.message();
  }

  void client_write(const std::vector<std::uint8_t>& data) {
    std::error_code write_ec;
    asio::async_write(*client, asio::buffer(data), [&](std::error_code ec, std::size_t) { write_ec = ec; });
    p.io.restart();
    p.io.run();
    EXPECT_FALSE(write_ec) << write_ec.message();
  }

  // read_arrived on the server into `buf`, given 5 s at most.
  std::optional<std::tuple<std::error_code, std::size_t>> read_arrived_into(std::vector<std::uint8_t>& buf) {
    std::optional<std::tuple<std::error_code, std::size_t>> got;
    asio::co_spawn(p.io, read_arrived(*server, asio::buffer(buf)), [&](std::exception_ptr e, auto r) {
      if (e) std::rethrow_exception(e);
      got = r;
    });
    p.io.restart();
    p.io.run_for(std::chrono::seconds(5));
    if (!got) {
      p.reader.cancel();  // let the read end, so that nothing outlives the test
      p.io.restart();
      p.io.run();
    }
    return got;
  }

  // read_arrived_into(buf) returned in time, without an error, with exactly `want`.
  ::testing::AssertionResult reads_arrived(std::vector<std::uint8_t>& buf, const std::vector<std::uint8_t>& want) {
    const auto got = read_arrived_into(buf);
    if (!got) return ::testing::AssertionFailure() << "read_arrived waited";
    const auto [ec, n] = *got;
    if (ec) return ::testing::AssertionFailure() << ec.message();
    if (n != want.size()) return ::testing::AssertionFailure() << "read " << n << " bytes, not " << want.size();
    if (!std::equal(want.begin(), want.end(), buf.begin())) return ::testing::AssertionFailure() << "other bytes";
    return ::testing::AssertionSuccess();
  }
};

// Over TLS: a client writes several records at once; once they have all arrived, one
// read_arrived on the server takes them all, where one read of the TLS stream takes one.
TEST(ReadArrived, TakesEveryRecordThatArrived) {
  TlsPair t;
  const auto data = pattern(5 * 16 * 1024 + 100);  // six records
  t.client_write(data);
  // Each TLS 1.3 record adds 22 bytes: a 5-byte header, the content type, a 16-byte tag.
  t.p.wait_for(data.size() + 6 * 22);
  std::vector<std::uint8_t> buf(256 * 1024);
  EXPECT_TRUE(t.reads_arrived(buf, data));
}

// A record that carries no data behind the last one that does (here a key update; also a
// session ticket, or a record only part of which has arrived) must not make read_arrived
// wait for the peer: it returns what it read. A peer that sends a request and then waits
// for the answer would otherwise wait for a timeout.
TEST(ReadArrived, ReturnsWithoutWaitingWhenWhatFollowsCarriesNoData) {
  TlsPair t;
  const auto data = pattern(1000);
  t.client_write(data);
  const std::size_t record = t.p.wait_for(1);
  ASSERT_EQ(SSL_key_update(t.client->native_handle(), SSL_KEY_UPDATE_NOT_REQUESTED), 1);
  std::error_code hs_ec;  // a handshake call sends the key update
  t.client->async_handshake(asio::ssl::stream_base::client, [&](std::error_code ec) { hs_ec = ec; });
  t.p.io.restart();
  t.p.io.run();
  ASSERT_FALSE(hs_ec) << hs_ec.message();
  t.p.wait_for(record + 1);
  std::vector<std::uint8_t> buf(64 * 1024);
  ASSERT_TRUE(t.reads_arrived(buf, data)) << "after a record without data";
  // The stream goes on: the next record reads as usual, under the new keys.
  const auto more = pattern(300);
  t.client_write(more);
  EXPECT_TRUE(t.reads_arrived(buf, more));
}

}  // namespace
}  // namespace ftx::tls
