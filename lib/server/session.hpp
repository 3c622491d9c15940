#pragma once
// One client connection: reads requests, answers them, until the client closes, sends
// something malformed, or the server stops. Internal to the server library.
//
// Each Session lives on its own strand; every member runs there. Memory while idle is one
// small header buffer; the chunk buffer for bodies exists only during a transfer, so idle
// connections cost little.

#include <asio.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "protocol/codec.hpp"
#include "storage/storage.hpp"

namespace ftx::server {

class Server;

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Server& server, asio::ip::tcp::socket socket);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // The connection's coroutine; spawn it on executor() with shared_from_this() kept alive.
  asio::awaitable<void> run();
  asio::any_io_executor executor() { return socket_.get_executor(); }
  const std::string& peer() const { return peer_; }

  // Asks the session to end: at once if it is waiting for a request, else after the
  // request in flight. Thread-safe.
  void shutdown();

 private:
  // Reads one request frame into decoder_. Returns {} with a frame, asio::error::eof for a
  // clean close at a message boundary, or the error (protocol or socket).
  asio::awaitable<std::error_code> read_frame();
  // Reads exactly n body bytes, handing them to sink(span) chunk by chunk; bytes already
  // buffered after the header are used first.
  template <typename Sink>
  asio::awaitable<std::error_code> read_body(std::uint64_t n, Sink&& sink);
  asio::awaitable<std::error_code> send(const protocol::Frame& f);
  asio::awaitable<std::error_code> send_error(protocol::Status st, std::string message);

  asio::awaitable<std::error_code> handle_put(const protocol::Frame& req);
  asio::awaitable<std::error_code> handle_get(const protocol::Frame& req);
  asio::awaitable<std::error_code> handle_list(const protocol::Frame& req);

  // Maps a storage error to its wire status and a message for the client.
  static std::pair<protocol::Status, std::string> describe(const std::error_code& ec, const std::string& name);
  void log_transfer(std::string_view op, const std::string& name, std::uint64_t bytes,
                    std::chrono::steady_clock::time_point start, std::string_view result) const;
  std::vector<std::uint8_t>& chunk();

  Server& server_;
  asio::ip::tcp::socket socket_;
  std::string peer_;
  protocol::Decoder decoder_;
  std::vector<std::uint8_t> in_;  // bytes read but not yet consumed: in_[in_begin_, in_end_)
  std::size_t in_begin_ = 0;
  std::size_t in_end_ = 0;
  std::vector<std::uint8_t> out_;
  std::vector<std::uint8_t> chunk_;  // allocated on first transfer, freed when idle
  bool idle_ = false;                // waiting for the first byte of a request
};

}  // namespace ftx::server
