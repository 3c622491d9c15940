#include "server/stream.hpp"

#include <cerrno>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <asio/experimental/as_tuple.hpp>

#include "storage/fd.hpp"
#include "tls/buffered_socket.hpp"

namespace ftx::server {
namespace {

constexpr auto kTuple = asio::experimental::as_tuple(asio::use_awaitable);

class PlainStream final : public Stream {
 public:
  explicit PlainStream(asio::ip::tcp::socket s) : socket_(std::move(s)) {}
  asio::awaitable<std::error_code> handshake() override { co_return std::error_code{}; }
  asio::awaitable<Result> read_some(asio::mutable_buffer buf) override {
    co_return co_await socket_.async_read_some(buf, kTuple);
  }
  asio::awaitable<Result> write_some(asio::const_buffer buf) override {
    co_return co_await socket_.async_write_some(buf, kTuple);
  }
  asio::ip::tcp::socket& socket() override { return socket_; }
  bool can_send_file() const override { return true; }
  asio::awaitable<Result> send_file(int fd, std::uint64_t offset, std::size_t n) override {
    // The reactor pattern of asio's native_non_blocking() documentation: try the call, and
    // on EAGAIN wait until the socket is writable again.
    std::error_code ec;
    if (!socket_.native_non_blocking()) socket_.native_non_blocking(true, ec);
    if (ec) co_return Result{ec, 0};
    for (;;) {
      const long k = storage::sendfile_nosignal(socket_.native_handle(), fd, offset, n);
      if (k >= 0) co_return Result{std::error_code{}, static_cast<std::size_t>(k)};
      if (storage::sendfile_unsupported(errno)) co_return Result{asio::error::operation_not_supported, 0};
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        co_return Result{std::error_code(errno, asio::error::get_system_category()), 0};
      }
      auto [wait_ec] = co_await socket_.async_wait(asio::ip::tcp::socket::wait_write, kTuple);
      if (wait_ec) co_return Result{wait_ec, 0};
    }
  }

 private:
  asio::ip::tcp::socket socket_;
};

class TlsStream final : public Stream {
 public:
  TlsStream(asio::ip::tcp::socket s, asio::ssl::context& ctx) : socket_(std::move(s)), stream_(socket_, ctx) {}
  asio::awaitable<std::error_code> handshake() override {
    auto [ec] = co_await stream_.async_handshake(asio::ssl::stream_base::server, kTuple);
    co_return ec;
  }
  asio::awaitable<Result> read_some(asio::mutable_buffer buf) override {
    // All that arrived, as over plain TCP: a session answers and hands its staged files on
    // after each read, and one record a read made ten times as many writes and bursts.
    co_return co_await tls::read_arrived(stream_, buf);
  }
  asio::awaitable<Result> write_some(asio::const_buffer buf) override {
    co_return co_await stream_.async_write_some(buf, kTuple);
  }
  asio::ip::tcp::socket& socket() override { return socket_; }
  void shrink() override { stream_.next_layer().release(); }
  bool input_pending() override { return tls::has_local_input(stream_) || Stream::input_pending(); }
  std::string peer_subject() const override {
    X509* cert = SSL_get0_peer_certificate(const_cast<SSL*>(stream_.native_handle()));
    if (cert == nullptr) return {};
    char buf[256];
    X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof buf);
    return buf;
  }

 private:
  asio::ip::tcp::socket socket_;
  // mutable: native_handle() is not const in asio, but reading the peer certificate is.
  mutable tls::Stream stream_;  // over socket_
};

}  // namespace

bool Stream::input_pending() {
  std::error_code ec;
  return socket().available(ec) > 0 && !ec;
}

asio::awaitable<Stream::Result> Stream::send_file(int, std::uint64_t, std::size_t) {
  co_return Result{asio::error::operation_not_supported, 0};
}

std::unique_ptr<Stream> make_plain_stream(asio::ip::tcp::socket socket) {
  return std::make_unique<PlainStream>(std::move(socket));
}

std::unique_ptr<Stream> make_tls_stream(asio::ip::tcp::socket socket, asio::ssl::context& ctx) {
  return std::make_unique<TlsStream>(std::move(socket), ctx);
}

std::shared_ptr<asio::ssl::context> make_server_tls_context(const std::string& cert_pem, const std::string& key_pem,
                                                            const std::string& client_ca_file) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  // TLS 1.3 only: no downgrade to ciphers or versions with known weaknesses.
  SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_3_VERSION);
  ctx->set_options(asio::ssl::context::no_compression);
  ctx->use_certificate_chain(asio::buffer(cert_pem));
  ctx->use_private_key(asio::buffer(key_pem), asio::ssl::context::pem);
  if (!client_ca_file.empty()) {
    ctx->load_verify_file(client_ca_file);
    ctx->set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
  }
  return ctx;
}

}  // namespace ftx::server
