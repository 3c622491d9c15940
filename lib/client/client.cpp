#include "client/client.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <optional>

#include "client/local_file.hpp"
#include "hash/sha256.hpp"
#include "storage/fd.hpp"
#include "storage/names.hpp"
#include "tls/certs.hpp"

#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

namespace ftx::client {
namespace {

using protocol::Frame;
using protocol::MsgType;
using protocol::Status;

constexpr std::chrono::seconds kConnectTimeout{15};

// Messages from the server are printed on the user's terminal: keep them to one line of
// printable text whatever the peer sent.
std::string printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    out += (u < 0x20 || u == 0x7f) ? '?' : c;
  }
  return out;
}

std::string errno_text(const std::error_code& ec) { return ec.message(); }

bool is_stdout(const std::filesystem::path& p) { return p == "-" || p == "/dev/stdout"; }

std::string base_name(const std::string& remote) {
  const auto slash = remote.rfind('/');
  return slash == std::string::npos ? remote : remote.substr(slash + 1);
}

}  // namespace

Client::~Client() = default;

Client::Client(const protocol::Address& address, std::string token, std::chrono::milliseconds io_timeout,
               const TlsOptions& tls)
    : address_(address.to_string()), io_timeout_(io_timeout), socket_(io_), in_(64 * 1024) {
  asio::ip::tcp::resolver resolver(io_);
  std::error_code ec;
  const auto endpoints = resolver.resolve(address.host, std::to_string(address.port), ec);
  if (ec) throw Error(Failure::kConnection, "cannot resolve " + address.host + ": " + ec.message());

  std::error_code connect_ec = asio::error::timed_out;
  asio::async_connect(socket_, endpoints,
                      [&](const std::error_code& e, const asio::ip::tcp::endpoint&) { connect_ec = e; });
  io_.restart();
  io_.run_for(std::min<std::chrono::milliseconds>(io_timeout_, kConnectTimeout));
  if (!io_.stopped()) {
    socket_.close();
    io_.run();
    connect_ec = asio::error::timed_out;
  }
  if (connect_ec == asio::error::connection_refused) {
    throw Error(Failure::kConnection,
                "cannot connect to " + address_ + ": connection refused \u2014 is 'ftx serve' running?");
  }
  if (connect_ec) {
    throw Error(Failure::kConnection, "cannot connect to " + address_ + ": " + connect_ec.message() +
                                          " \u2014 check the address and that the server is reachable");
  }
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
  if (tls.enabled) start_tls(address.host, tls);
  if (!token.empty()) authenticate(token);
}

void Client::start_tls(const std::string& host, const TlsOptions& tls) {
  tls_ctx_ = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(tls_ctx_->native_handle(), TLS1_3_VERSION);
  try {
    if (!tls.ca_file.empty()) {
      tls_ctx_->load_verify_file(tls.ca_file);
      tls_ctx_->set_verify_mode(asio::ssl::verify_peer);
    } else {
      // Pinning: any certificate completes the handshake; its fingerprint is checked
      // against known_servers before a single request is sent.
      tls_ctx_->set_verify_mode(asio::ssl::verify_none);
    }
    if (!tls.cert_file.empty()) {
      tls_ctx_->use_certificate_chain_file(tls.cert_file);
      tls_ctx_->use_private_key_file(tls.key_file.empty() ? tls.cert_file : tls.key_file, asio::ssl::context::pem);
    }
  } catch (const std::system_error& e) {
    throw Error(Failure::kLocalIo, std::string("cannot load TLS files: ") + e.what());
  }
  tls_ = std::make_unique<asio::ssl::stream<asio::ip::tcp::socket&>>(socket_, *tls_ctx_);
  std::error_code ec;
  asio::ip::make_address(host, ec);
  if (ec) {  // a host name, not an address literal: send it for SNI
    SSL_set_tlsext_host_name(tls_->native_handle(), host.c_str());
  }
  // With a CA, the certificate must also name the host (or IP) the user typed.
  if (!tls.ca_file.empty()) tls_->set_verify_callback(asio::ssl::host_name_verification(host));

  std::error_code hs_ec;
  tls_->async_handshake(asio::ssl::stream_base::client, [&](const std::error_code& e) { hs_ec = e; });
  run_with_timeout("negotiating TLS");
  if (hs_ec) {
    std::string why = hs_ec.message();
    const long verify = SSL_get_verify_result(tls_->native_handle());
    if (verify != X509_V_OK) why = X509_verify_cert_error_string(verify);
    std::string hint;
    if (hs_ec.message().find("wrong version number") != std::string::npos ||
        hs_ec.message().find("packet length too long") != std::string::npos || hs_ec == asio::error::eof) {
      hint = " \u2014 is the server started with --tls?";
    } else if (verify != X509_V_OK) {
      hint = " \u2014 check --ca, or the server's certificate";
    }
    std::error_code ignored;
    socket_.close(ignored);
    throw Error(Failure::kTls, "TLS handshake with " + address_ + " failed: " + why + hint);
  }
  if (tls.ca_file.empty()) check_pin(tls);
}

void Client::check_pin(const TlsOptions& tls) {
  X509* cert = SSL_get1_peer_certificate(tls_->native_handle());
  if (cert == nullptr) throw Error(Failure::kTls, address_ + " presented no certificate");
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, cert);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  const std::string fp = ftx::tls::fingerprint(std::string(data, static_cast<std::size_t>(n)));
  BIO_free(bio);
  X509_free(cert);

  const auto path = tls.known_servers.empty() ? ftx::tls::default_known_servers_path() : tls.known_servers;
  const ftx::tls::KnownServers known(path);
  if (const auto pinned = known.find(address_)) {
    if (pinned->first == fp) return;
    std::error_code ignored;
    socket_.close(ignored);
    throw Error(Failure::kTls, "the certificate of " + address_ + " CHANGED (pinned " + pinned->first + ", now " + fp +
                                   "): possibly an attack. If the server's certificate was replaced on purpose, "
                                   "delete line " + std::to_string(pinned->second) + " of " + path.string());
  }
  const bool trust = tls.accept_new || (tls.confirm && tls.confirm(address_, fp));
  if (!trust) {
    std::error_code ignored;
    socket_.close(ignored);
    throw Error(Failure::kTls, "unknown server " + address_ + " (certificate " + fp +
                                   "): compare with the fingerprint 'ftx serve' printed, then run again with "
                                   "--accept-new (or use --ca)");
  }
  try {
    known.add(address_, fp);
  } catch (const std::system_error& e) {
    throw Error(Failure::kLocalIo, e.what());
  }
}

void Client::authenticate(const std::string& token) {
  Frame hello;
  hello.type = MsgType::kHello;
  send(hello);
  const Frame challenge = read_frame();
  if (challenge.type != MsgType::kChallenge) fail_from_reply(challenge, "authentication");
  Frame auth;
  auth.type = MsgType::kAuth;
  auth.digest = hash::auth_response(token, challenge.digest);
  send(auth);
  const Frame reply = read_frame();
  if (reply.type != MsgType::kAuthOk) fail_from_reply(reply, "authentication");
}

void Client::run_with_timeout(const char* what) {
  io_.restart();
  io_.run_for(io_timeout_);
  if (!io_.stopped()) {
    socket_.close();
    io_.run();
    throw Error(Failure::kConnection,
                "no answer from " + address_ + " for " +
                    std::to_string(std::chrono::duration_cast<std::chrono::seconds>(io_timeout_).count()) +
                    " s while " + what + "; giving up");
  }
}

void Client::connection_lost(const std::error_code& ec) {
  std::error_code ignored;
  socket_.close(ignored);
  if (tls_ && ec.category() == asio::error::get_ssl_category()) {
    // A TLS alert after the handshake: e.g. the server wants a client certificate.
    throw Error(Failure::kTls, "TLS connection to " + address_ + " failed: " + ec.message() +
                                   (ec.message().find("certificate") != std::string::npos
                                        ? " \u2014 the server may require --cert/--key"
                                        : ""));
  }
  if (ec == asio::error::eof) {
    throw Error(Failure::kConnection, "connection to " + address_ + " lost: the server closed it" +
                                          (tls_ ? "" : " (if it serves TLS, add --tls)"));
  }
  throw Error(Failure::kConnection, "connection to " + address_ + " lost: " + ec.message());
}

void Client::write_bytes(const void* data, std::size_t n) {
  std::error_code ec;
  with_stream([&](auto& s) {
    asio::async_write(s, asio::buffer(data, n), [&](const std::error_code& e, std::size_t) { ec = e; });
  });
  run_with_timeout("sending");
  if (ec) connection_lost(ec);
}

void Client::send(const Frame& f) {
  out_.clear();
  protocol::encode(f, out_);
  write_bytes(out_.data(), out_.size());
}

std::size_t Client::read_some(void* data, std::size_t n) {
  std::error_code ec;
  std::size_t got = 0;
  with_stream([&](auto& s) {
    s.async_read_some(asio::buffer(data, n), [&](const std::error_code& e, std::size_t k) {
      ec = e;
      got = k;
    });
  });
  run_with_timeout("waiting for the server");
  if (ec) connection_lost(ec);
  return got;
}

Frame Client::read_frame() {
  decoder_.reset();
  for (;;) {
    if (in_begin_ < in_end_) {
      const auto step = decoder_.put(std::span(in_.data() + in_begin_, in_end_ - in_begin_));
      in_begin_ += step.consumed;
      if (step.result == protocol::Decoder::Result::kFrame) return std::move(decoder_.frame());
      if (step.result == protocol::Decoder::Result::kError) {
        std::error_code ignored;
        socket_.close(ignored);
        if (decoder_.error() == protocol::errc::bad_version) {
          throw Error(Failure::kProtocol,
                      address_ + " speaks another ftx protocol version; use the same ftx release on both sides");
        }
        throw Error(Failure::kProtocol, address_ + " does not answer as an ftx server (" +
                                            decoder_.error().message() + ")" +
                                            (tls_ ? "" : " \u2014 if it is a TLS server, use --tls"));
      }
    }
    in_begin_ = 0;
    in_end_ = read_some(in_.data(), in_.size());
  }
}

void Client::read_body(std::uint64_t n, const std::function<void(std::span<const std::uint8_t>)>& sink) {
  const std::size_t buffered = static_cast<std::size_t>(std::min<std::uint64_t>(n, in_end_ - in_begin_));
  if (buffered > 0) {
    sink(std::span<const std::uint8_t>(in_.data() + in_begin_, buffered));
    in_begin_ += buffered;
    n -= buffered;
  }
  if (n == 0) return;
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(std::min<std::uint64_t>(n, protocol::kChunkSize)));
  while (n > 0) {
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(n, buf.size()));
    std::error_code ec;
    std::size_t got = 0;
    // Exactly the body's remaining bytes: what follows belongs to the next message.
    with_stream([&](auto& s) {
      asio::async_read(s, asio::buffer(buf.data(), want), [&](const std::error_code& e, std::size_t k) {
        ec = e;
        got = k;
      });
    });
    run_with_timeout("receiving a file");
    if (ec) connection_lost(ec);
    sink(std::span<const std::uint8_t>(buf.data(), got));
    n -= got;
  }
}

void Client::fail_from_reply(const Frame& f, std::string_view context) {
  const std::string msg = printable(f.name);
  switch (f.status) {
    case Status::kNotFound:
      throw Error(Failure::kNotFound, msg + " on " + address_ + " \u2014 'ftx ls' lists what is stored");
    case Status::kIntegrity:
      throw Error(Failure::kIntegrity, msg);
    case Status::kUnauthorized:
      throw Error(Failure::kAuth, address_ + ": " + msg);
    case Status::kBadRequest:
    case Status::kUnsupportedVersion:
      throw Error(Failure::kProtocol, address_ + " refused the request: " + msg);
    case Status::kOk:
      throw Error(Failure::kProtocol, address_ + " sent an unexpected " +
                                          std::string(protocol::to_string(f.type)) + " message during " +
                                          std::string(context));
    default:
      throw Error(Failure::kRejected, "server refused " + std::string(context) + ": " + msg);
  }
}

Result Client::put(const std::filesystem::path& local, const std::string& remote) {
  const std::string context = "put " + storage::quote_name(remote);
  if (remote.size() > protocol::kMaxNameBytes) {
    throw Error(Failure::kRejected, "remote name is longer than " + std::to_string(protocol::kMaxNameBytes) + " bytes");
  }
  storage::UniqueFd fd(::open(local.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw Error(Failure::kLocalIo, "cannot open " + local.string() + ": " + errno_text(storage::last_error()));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    throw Error(Failure::kLocalIo, "cannot stat " + local.string() + ": " + errno_text(storage::last_error()));
  }
  if (!S_ISREG(st.st_mode)) throw Error(Failure::kLocalIo, local.string() + " is not a regular file");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size > protocol::kMaxFileSize) {
    throw Error(Failure::kRejected, local.string() + " is larger than the protocol's limit of 1 PiB");
  }

  // The header carries the SHA-256, so the file is hashed before it is sent.
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(std::min<std::uint64_t>(protocol::kChunkSize, size)));
  hash::Sha256 hasher;
  auto read_chunk = [&](std::uint64_t off) {
    std::size_t got = 0;
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), size - off));
    if (auto ec = storage::pread_full(fd.get(), std::span(buf.data(), want), off, got)) {
      throw Error(Failure::kLocalIo, "cannot read " + local.string() + ": " + errno_text(ec));
    }
    if (got != want) throw Error(Failure::kLocalIo, local.string() + " shrank while it was being read; try again");
    return std::span<const std::uint8_t>(buf.data(), got);
  };
  for (std::uint64_t off = 0; off < size;) {
    const auto data = read_chunk(off);
    hasher.update(data);
    off += data.size();
  }

  Frame req;
  req.type = MsgType::kPut;
  req.flags = protocol::kFlagHasMtime;
  req.size = size;
  req.mtime_ns = storage::mtime_ns(st);
  req.digest = hasher.finish();
  req.name = remote;
  send(req);
  const Frame ready = read_frame();
  if (ready.type != MsgType::kReady) fail_from_reply(ready, context);

  for (std::uint64_t off = 0; off < size;) {
    const auto data = read_chunk(off);
    write_bytes(data.data(), data.size());
    off += data.size();
  }
  const Frame done = read_frame();
  if (done.type != MsgType::kDone) {
    if (done.status == Status::kIntegrity) {
      throw Error(Failure::kIntegrity, printable(done.name) + " (did " + local.string() +
                                           " change while it was being sent? try again)");
    }
    fail_from_reply(done, context);
  }
  if (done.digest != req.digest || done.size != size) {
    throw Error(Failure::kProtocol, address_ + " acknowledged a different file than the one sent");
  }
  return {size, req.digest, local};
}

Result Client::get(const std::string& remote, const std::filesystem::path& local) {
  const std::string context = "get " + storage::quote_name(remote);
  if (remote.size() > protocol::kMaxNameBytes) {
    throw Error(Failure::kRejected, "remote name is longer than " + std::to_string(protocol::kMaxNameBytes) + " bytes");
  }
  const bool to_stdout = is_stdout(local);
  std::filesystem::path target = local;
  if (!to_stdout) {
    if (target.empty()) target = base_name(remote);
    std::error_code ec;
    if (std::filesystem::is_directory(target, ec)) target /= base_name(remote);
    if (target.filename().empty()) {
      throw Error(Failure::kLocalIo, "cannot tell a file name from " + storage::quote_name(remote) + "; give LOCAL_PATH");
    }
  }
  // The staging file is made before asking, so a local problem costs no transfer.
  std::optional<StagedFile> staged;
  if (!to_stdout) {
    try {
      staged.emplace(target);
    } catch (const std::system_error& e) {
      throw Error(Failure::kLocalIo, std::string(e.what()) + " \u2014 check that the folder exists and is writable");
    }
  }

  Frame req;
  req.type = MsgType::kGet;
  req.name = remote;
  send(req);
  const Frame reply = read_frame();
  if (reply.type != MsgType::kFile) fail_from_reply(reply, context);

  const int out_fd = to_stdout ? STDOUT_FILENO : staged->fd();
  hash::Sha256 hasher;
  read_body(reply.size, [&](std::span<const std::uint8_t> data) {
    hasher.update(data);
    if (auto ec = storage::write_all(out_fd, data)) {
      std::error_code ignored;
      socket_.close(ignored);  // the rest of the body cannot be consumed
      throw Error(Failure::kLocalIo,
                  "cannot write " + (to_stdout ? std::string("to standard output") : target.string()) + ": " +
                      errno_text(ec));
    }
  });
  const auto digest = hasher.finish();
  if (digest != reply.digest) {
    throw Error(Failure::kIntegrity,
                "data received for " + storage::quote_name(remote) + " does not match the SHA-256 the server announced; " +
                    (to_stdout ? std::string("the bytes written to standard output are corrupt")
                               : target.string() + " was left untouched"));
  }
  if (!to_stdout) {
    const bool has_mtime = (reply.flags & protocol::kFlagHasMtime) != 0;
    if (auto ec = staged->commit(has_mtime ? std::optional(reply.mtime_ns) : std::nullopt)) {
      throw Error(Failure::kLocalIo, "cannot write " + target.string() + ": " + errno_text(ec));
    }
  }
  return {reply.size, digest, to_stdout ? std::filesystem::path("-") : target};
}

std::uint64_t Client::list(const std::string& folder, const std::function<void(const Entry&)>& on_entry) {
  Frame req;
  req.type = MsgType::kList;
  req.name = folder;
  send(req);
  std::uint64_t count = 0;
  for (;;) {
    Frame f = read_frame();
    if (f.type == MsgType::kListEnd) return count;
    if (f.type != MsgType::kEntry) fail_from_reply(f, "ls");
    ++count;
    on_entry(Entry{std::move(f.name), f.size, f.mtime_ns});
  }
}

void Client::ping() {
  Frame req;
  req.type = MsgType::kPing;
  send(req);
  const Frame reply = read_frame();
  if (reply.type != MsgType::kPong) fail_from_reply(reply, "ping");
}

}  // namespace ftx::client
