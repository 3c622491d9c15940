#pragma once
// A blocking ftx client: one TCP connection, any number of requests on it, one at a time.
//
// Every operation either succeeds or throws client::Error, whose kind() says which of the
// documented failure classes happened (apps/ftx maps them to exit codes) and whose what()
// is a one-line message for the user. Each socket operation gives up after `io_timeout`
// without progress. Not thread-safe: one Client per thread.

#include <asio.hpp>
#include <asio/ssl.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "protocol/address.hpp"
#include "protocol/codec.hpp"

namespace ftx::client {

enum class Failure {
  kConnection,  // cannot connect, connection lost, no answer
  kNotFound,    // the server has no such file
  kRejected,    // the server refused the request (bad name, conflict, storage, ...)
  kIntegrity,   // SHA-256 mismatch, detected by either side
  kLocalIo,     // reading or writing a local file failed
  kProtocol,    // the peer does not speak this protocol (version)
  kAuth,        // the server wants a token, or a different one
  kTls,         // TLS handshake failed, or the server's certificate is not trusted
};

// How the client speaks TLS and decides to trust the server (docs/tls.md).
struct TlsOptions {
  bool enabled = false;
  std::string ca_file;    // trust certificates signed by this CA (host name checked)...
  std::filesystem::path known_servers;  // ...else pin fingerprints here (ssh's model)
  bool accept_new = false;  // pin an unknown server without asking (scripts)
  // Asked about an unknown server when !accept_new; returns whether to trust and pin it.
  std::function<bool(const std::string& address, const std::string& fingerprint)> confirm;
  std::string cert_file;  // client certificate and key, for servers that require them
  std::string key_file;
};

class Error : public std::runtime_error {
 public:
  Error(Failure kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  Failure kind() const { return kind_; }

 private:
  Failure kind_;
};

struct Result {
  std::uint64_t bytes = 0;
  protocol::Digest digest{};
  std::filesystem::path local;  // where a download was written ("-" for stdout)
};

struct Entry {
  std::string name;
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;
};

class Client {
 public:
  static constexpr std::chrono::seconds kDefaultTimeout{300};

  // Connects to `address` and, when `token` is not empty, authenticates with it (the token
  // itself never crosses the wire). Throws Error(kConnection) or Error(kAuth) with a
  // message that says what to do.
  explicit Client(const protocol::Address& address, std::string token = {},
                  std::chrono::milliseconds io_timeout = kDefaultTimeout, const TlsOptions& tls = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Uploads `local` (a regular file) as `remote`. The server publishes it only after its
  // SHA-256 matched; returns once it is durable there.
  Result put(const std::filesystem::path& local, const std::string& remote);

  // Downloads `remote`. `local` empty = ./<base name>; an existing folder = <folder>/<base
  // name>; "-" or "/dev/stdout" = standard output (verified at the end: a mismatch throws
  // kIntegrity after the bytes were written). Otherwise the file appears only once verified.
  Result get(const std::string& remote, const std::filesystem::path& local);

  // Calls on_entry for every stored file below `folder` ("" = all), sorted by name.
  // Returns the number of entries.
  std::uint64_t list(const std::string& folder, const std::function<void(const Entry&)>& on_entry);

  // One round trip; throws if the server does not answer as an ftx server.
  void ping();

 private:
  void send(const protocol::Frame& f);
  void write_bytes(const void* data, std::size_t n);
  protocol::Frame read_frame();
  // Reads exactly n body bytes, handing them to sink chunk by chunk.
  void read_body(std::uint64_t n, const std::function<void(std::span<const std::uint8_t>)>& sink);
  std::size_t read_some(void* data, std::size_t n);
  // Runs the io_context until the pending operation completes or io_timeout_ passes.
  void run_with_timeout(const char* what);
  [[noreturn]] void fail_from_reply(const protocol::Frame& f, std::string_view context);
  [[noreturn]] void connection_lost(const std::error_code& ec);
  void authenticate(const std::string& token);
  void start_tls(const std::string& host, const TlsOptions& tls);
  void check_pin(const TlsOptions& tls);
  // Runs f on the TLS stream when there is one, else on the TCP socket.
  template <typename F>
  void with_stream(F&& f) {
    if (tls_) {
      f(*tls_);
    } else {
      f(socket_);
    }
  }

  std::string address_;
  std::chrono::milliseconds io_timeout_;
  asio::io_context io_;
  asio::ip::tcp::socket socket_;
  std::unique_ptr<asio::ssl::context> tls_ctx_;
  std::unique_ptr<asio::ssl::stream<asio::ip::tcp::socket&>> tls_;
  protocol::Decoder decoder_;
  std::vector<std::uint8_t> in_;
  std::size_t in_begin_ = 0;
  std::size_t in_end_ = 0;
  std::vector<std::uint8_t> out_;
};

}  // namespace ftx::client
