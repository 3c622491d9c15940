#pragma once
// A real server on 127.0.0.1, port 0, in-process, with its own temporary root.

#include <gtest/gtest.h>

#include <spdlog/spdlog.h>

#include <cstdlib>
#include <functional>
#include <memory>

#include "client/client.hpp"
#include "hash/sha256.hpp"
#include "server/server.hpp"
#include "support/test_support.hpp"

namespace ftx::test {

// A frame of type `t` with `name` and every other field zero.
inline protocol::Frame frame(protocol::MsgType t, std::string name = {}) {
  protocol::Frame f;
  f.type = t;
  f.name = std::move(name);
  return f;
}

// The bytes of a streamed PUT of `name` (what `put -r` sends per small file): the header and
// 4 KiB of random body from `seed`.
inline std::vector<std::uint8_t> streamed_put_wire(const std::string& name, std::uint64_t seed) {
  const auto body = random_bytes(4096, seed);
  protocol::Frame put = frame(protocol::MsgType::kPut, name);
  put.flags = protocol::kFlagStreamed;
  put.size = body.size();
  put.digest = hash::sha256(body);
  auto wire = protocol::encode(put);
  wire.insert(wire.end(), body.begin(), body.end());
  return wire;
}

// The kind of client::Error that `f` throws (a test failure if it throws none).
inline client::Failure failure_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const client::Error& e) {
    return e.kind();
  }
  ADD_FAILURE() << "no client::Error thrown";
  return client::Failure::kProtocol;
}

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The server's per-request log lines are for operators; tests show warnings and up
    // unless FTX_TEST_LOG is set.
    if (std::getenv("FTX_TEST_LOG") == nullptr) spdlog::set_level(spdlog::level::warn);
    server::ServerOptions o;
    o.root = root();
    o.port = 0;
    o.threads = 2;
    o.grace = std::chrono::milliseconds(2000);
    // Every test client comes from 127.0.0.1: the per-client limit is tested on its own.
    o.max_connections_per_client = o.max_connections;
    o.min_free_bytes = 0;
    configure(o);
    server_ = std::make_unique<server::Server>(o);
    server_->start();
  }
  // Tests that need other limits override this.
  virtual void configure(server::ServerOptions&) {}
  void TearDown() override {
    server_->stop();
    server_->wait();
    server_.reset();
  }

  std::filesystem::path root() const { return dir_ / "root"; }
  std::filesystem::path staging() const { return root() / ".ftx-staging"; }
  protocol::Address address() const { return {"127.0.0.1", server_->port()}; }

  test::TempDir dir_;
  std::unique_ptr<server::Server> server_;
};

}  // namespace ftx::test
