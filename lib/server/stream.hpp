#pragma once
// The byte stream a Session talks over: plain TCP or TLS 1.3 on top of it. A small virtual
// interface rather than a Session template, so the protocol logic is compiled once; the
// cost is one indirect call per read or write of up to 1 MiB.

#include <asio.hpp>
#include <asio/ssl.hpp>
#include <memory>
#include <string>
#include <system_error>
#include <tuple>

namespace ftx::server {

class Stream {
 public:
  using Result = std::tuple<std::error_code, std::size_t>;
  virtual ~Stream() = default;

  // TLS: the server side of the handshake. Plain: nothing.
  virtual asio::awaitable<std::error_code> handshake() = 0;
  virtual asio::awaitable<Result> read_some(asio::mutable_buffer buf) = 0;
  virtual asio::awaitable<Result> write_some(asio::const_buffer buf) = 0;
  // Whether more input has already arrived: a read_some now would not wait for the peer
  // (for TLS, not long: the rest of a record). A hint, not a promise: false may still be
  // followed by data at once.
  virtual bool input_pending();
  // Whether send_file works: plain TCP only (TLS must encrypt in user space).
  virtual bool can_send_file() const { return false; }
  // Writes up to n bytes of file `fd` from `offset` straight from the page cache
  // (sendfile(2): no copy through user space); waits until the socket takes some. Returns
  // the bytes sent (0 = the file ended before offset + n), or operation_not_supported when
  // this file cannot be sent so (copy it instead). Never raises SIGPIPE.
  virtual asio::awaitable<Result> send_file(int fd, std::uint64_t offset, std::size_t n);
  // The connection is about to wait idle: buffers it can do without shrink (TLS: the read
  // buffer under the engine, 256 KiB after bulk input, goes back to a record's 17 KiB when
  // it holds nothing). Not while a read is in progress.
  virtual void shrink() {}
  // The TCP socket underneath: endpoints, cancel(), close().
  virtual asio::ip::tcp::socket& socket() = 0;
  // Certificate subject of an authenticated TLS client (mutual TLS), else "".
  virtual std::string peer_subject() const { return {}; }
};

std::unique_ptr<Stream> make_plain_stream(asio::ip::tcp::socket socket);
std::unique_ptr<Stream> make_tls_stream(asio::ip::tcp::socket socket, asio::ssl::context& ctx);

// A TLS 1.3-only server context with the given certificate chain and key (PEM text). With
// `client_ca_file`, clients must present a certificate signed by it (mutual TLS).
// Throws std::system_error / std::runtime_error with OpenSSL's reason.
std::shared_ptr<asio::ssl::context> make_server_tls_context(const std::string& cert_pem, const std::string& key_pem,
                                                            const std::string& client_ca_file);

}  // namespace ftx::server
