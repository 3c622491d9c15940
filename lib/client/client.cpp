#include "client/client.hpp"

#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <atomic>
#include <charconv>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>

#include "client/local_file.hpp"
#include "client/serial_worker.hpp"
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

// Normal endings travel as error codes; Client turns them into Errors with its own words.
constexpr auto kTuple = asio::experimental::as_tuple(asio::use_awaitable);

// Files up to this size are read once into memory, hashed, and sent from there with the
// digest in the header; larger ones are hashed while they are sent, the digest after them.
constexpr std::uint64_t kWholeFileBytes = protocol::kChunkSize;

// A local file opened for upload.
struct Source {
  storage::UniqueFd fd;
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;
  bool executable = false;
};

// The folder a batch's files were last opened in, kept open: a tree's files come folder by
// folder, and opening each by its name in that folder spares the kernel walking the whole
// path again per file (a C loop over 10,000 files of 4 KiB: open, fstat, pread and close
// took 8 % less; `put -r` of them 3 ms less CPU). O_PATH: a folder one may search but not
// read serves as well as it did for full paths.
struct OpenFolder {
  std::string text;      // as folder_text() gives it; empty before the first file
  storage::UniqueFd fd;  // not open when the folder could not be opened (full paths then)
};

// Opens `local` for upload. With `folder`, relative to the folder it names when that is
// the file's own folder, else that folder is opened first; errors read as without it.
Source open_source(const std::string& local, OpenFolder* folder = nullptr) {
  Source src;
  const std::string_view dir = folder != nullptr ? folder_text(local) : std::string_view();
  if (folder != nullptr && dir != folder->text) {
    folder->text = dir;
    folder->fd.reset(::open(folder->text.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  }
  // The name in its folder: after the last slash (npos + 1 is 0: the whole of a bare name).
  const char* leaf = local.c_str() + (local.rfind('/') + 1);
  if (folder != nullptr && folder->fd && *leaf != '\0') {
    src.fd.reset(::openat(folder->fd.get(), leaf, O_RDONLY | O_CLOEXEC));
  } else {
    src.fd.reset(::open(local.c_str(), O_RDONLY | O_CLOEXEC));
  }
  if (!src.fd) {
    throw Error(Failure::kLocalIo, "cannot open " + local + ": " + storage::last_error().message());
  }
  struct stat st {};
  if (::fstat(src.fd.get(), &st) != 0) {
    throw Error(Failure::kLocalIo, "cannot stat " + local + ": " + storage::last_error().message());
  }
  if (!S_ISREG(st.st_mode)) throw Error(Failure::kLocalIo, local + " is not a regular file");
  src.size = static_cast<std::uint64_t>(st.st_size);
  if (src.size > protocol::kMaxFileSize) {
    throw Error(Failure::kRejected, local + " is larger than the protocol's limit of 1 PiB");
  }
  src.mtime_ns = storage::mtime_ns(st);
  src.executable = (st.st_mode & S_IXUSR) != 0;
  return src;
}

// Reads [off, off + buf.size()) of `local` (open as fd). Returns the error to report when
// the read fails or the file shrank meanwhile.
std::optional<Error> read_chunk(int fd, const std::string& local, std::span<std::uint8_t> buf,
                                std::uint64_t off) {
  std::size_t got = 0;
  if (auto ec = storage::pread_full(fd, buf, off, got)) {
    return Error(Failure::kLocalIo, "cannot read " + local + ": " + ec.message());
  }
  if (got != buf.size()) return Error(Failure::kLocalIo, local + " shrank while it was being read; try again");
  return std::nullopt;
}

// The whole file's SHA-256, read in chunks through `buf` (which holds the last chunk
// afterwards: all of a file that fits). `between` (optional) is called after each chunk.
protocol::Digest hash_file(int fd, std::uint64_t size, const std::string& path, std::span<std::uint8_t> buf,
                           const std::function<void()>& between = {}) {
  hash::Sha256 sha;
  for (std::uint64_t off = 0; off < size;) {
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), size - off));
    if (auto e = read_chunk(fd, path, std::span(buf.data(), want), off)) throw std::move(*e);
    sha.update(std::span<const std::uint8_t>(buf.data(), want));
    off += want;
    if (between) between();
  }
  return sha.finish();
}

// The kPut header for `src`, its digest computed by reading it through `buf`. When the
// whole file fits in buf, buf holds it afterwards (the caller need not read it again).
Frame put_header(const Source& src, const std::string& local, const std::string& remote, std::span<std::uint8_t> buf) {
  Frame req;
  req.type = MsgType::kPut;
  req.flags = protocol::kFlagHasMtime | (src.executable ? protocol::kFlagExecutable : 0);
  req.size = src.size;
  req.mtime_ns = src.mtime_ns;
  req.digest = hash_file(src.fd.get(), src.size, local, buf);
  req.name = remote;
  return req;
}

// A resumable upload's name for its source, sent in the PUT's otherwise unused digest field
// (docs/protocol.md, "resume"): this machine, the file's path, device and inode, size and
// mtime. A server resumes only a partial with the same name, so two machines (or two files)
// that happen to share name, size and mtime -- reproducible builds set mtimes -- never
// continue each other's bytes.
protocol::Digest source_id(const Source& src, const std::filesystem::path& local) {
  hash::Sha256 h;
  h.update(std::string_view("ftx-source-v1"));
  std::ifstream machine("/etc/machine-id");
  std::string id;
  if (!(machine >> id)) {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    id = host;
  }
  h.update(id);
  std::error_code ec;
  const auto path = std::filesystem::weakly_canonical(local, ec);
  h.update(std::string(1, '\0') + (ec ? local.string() : path.string()));
  struct stat st {};
  ::fstat(src.fd.get(), &st);
  const std::string tail = "/" + std::to_string(st.st_dev) + "/" + std::to_string(st.st_ino) + "/" +
                           std::to_string(src.size) + "/" + std::to_string(src.mtime_ns);
  h.update(tail);
  return h.finish();
}

// The kPut header for `src` when its digest follows the body (kFlagDigestAfter).
Frame put_header_digest_after(const Source& src, const std::string& remote) {
  Frame req;
  req.type = MsgType::kPut;
  req.flags = protocol::kFlagHasMtime | protocol::kFlagDigestAfter | (src.executable ? protocol::kFlagExecutable : 0);
  req.size = src.size;
  req.mtime_ns = src.mtime_ns;
  req.name = remote;
  return req;
}

void check_remote_name(const std::string& remote) {
  if (remote.size() > protocol::kMaxNameBytes) {
    throw Error(Failure::kRejected, "remote name is longer than " + std::to_string(protocol::kMaxNameBytes) + " bytes");
  }
}

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

// Why a verified download could not be saved. errc::not_durable: it was, but its folder's
// fsync failed, so a crash may still lose its name -- not "saved", and not "untouched" either.
Error commit_failure(const std::filesystem::path& target, const std::error_code& ec) {
  if (ec == storage::errc::not_durable) {
    return Error(Failure::kLocalIo, target.string() + " was saved, but its folder could not be synced: it may not "
                                                      "survive a crash; check the disk, then download it again");
  }
  return Error(Failure::kLocalIo, "cannot write " + target.string() + ": " + errno_text(ec));
}

// A download whose bytes did not hash to what the server announced; `target` was not touched.
Error integrity_failure(const std::string& remote, const std::filesystem::path& target) {
  return Error(Failure::kIntegrity, "data received for " + storage::quote_name(remote) +
                                        " does not match the SHA-256 the server announced; " + target.string() +
                                        " was left untouched");
}

// The mtime a FILE reply carries, if it carries one.
std::optional<std::int64_t> mtime_of(const Frame& reply) {
  return (reply.flags & protocol::kFlagHasMtime) != 0 ? std::optional(reply.mtime_ns) : std::nullopt;
}

bool is_stdout(const std::filesystem::path& p) { return p == "-" || p == "/dev/stdout"; }

// The staging file of a download to `target`: the resumable one unless resume is off (its
// leftovers are dropped then) or another ftx is using it. Made before anything is asked, so
// a local problem costs no transfer.
std::optional<StagedFile> stage_download(const std::filesystem::path& target, const TransferOptions& opts) {
  try {
    if (opts.resume) {
      if (auto r = StagedFile::resumable(target)) return r;
    } else {
      StagedFile::discard_resumable(target);
    }
    return std::optional<StagedFile>(std::in_place, target);
  } catch (const std::system_error& e) {
    throw Error(Failure::kLocalIo, std::string(e.what()) + " \u2014 check that the folder exists and is writable");
  }
}

std::string base_name(const std::string& remote) {
  const auto slash = remote.rfind('/');
  return slash == std::string::npos ? remote : remote.substr(slash + 1);
}

}  // namespace

Client::~Client() = default;

Client::Client(const protocol::Address& address, std::string token, std::chrono::milliseconds io_timeout,
               const TlsOptions& tls)
    : connect_{address, std::move(token), tls}, address_(address.to_string()), io_timeout_(io_timeout), socket_(io_),
      in_(64 * 1024) {
  connect();
}

void Client::connect() {
  // A fresh start: whatever the last connection left unread is void.
  std::error_code ec;
  tls_.reset();
  if (socket_.is_open()) socket_.close(ec);
  decoder_.reset();
  in_begin_ = in_end_ = 0;
  answered_ = false;
  const auto& address = connect_.address;
  asio::ip::tcp::resolver resolver(io_);
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
  if (connect_.tls.enabled) start_tls(address.host, connect_.tls);
  if (!connect_.token.empty()) authenticate(connect_.token);
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
  tls_ = std::make_unique<tls::Stream>(socket_, *tls_ctx_);
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

void Client::throw_timeout(const char* what) {
  throw Error(Failure::kConnection,
              "no answer from " + address_ + " for " +
                  std::to_string(std::chrono::duration_cast<std::chrono::seconds>(io_timeout_).count()) + " s while " +
                  what + "; giving up");
}

void Client::run_with_timeout(const char* what) {
  io_.restart();
  io_.run_for(io_timeout_);
  if (!io_.stopped()) {
    socket_.close();
    io_.run();
    throw_timeout(what);
  }
}

template <typename T>
T Client::run(asio::awaitable<T> op, const char* what) {
  std::exception_ptr failure;
  std::optional<T> value;
  bool finished = false;
  asio::co_spawn(io_, std::move(op), [&](std::exception_ptr e, T v) {
    failure = e;
    if (!e) value.emplace(std::move(v));
    finished = true;
  });
  // The timeout is about progress, not duration: a large file may take hours, a server that
  // stops answering is given io_timeout_.
  last_progress_ = std::chrono::steady_clock::now();
  const auto slice = std::min<std::chrono::milliseconds>(io_timeout_, std::chrono::milliseconds(250));
  io_.restart();
  while (!finished) {
    io_.run_for(slice);
    if (!finished && std::chrono::steady_clock::now() - last_progress_ >= io_timeout_) {
      std::error_code ignored;
      socket_.close(ignored);
      abort_batch();
      io_.restart();
      io_.run();
      throw_timeout(what);
    }
  }
  if (failure) std::rethrow_exception(failure);
  return std::move(*value);
}

template <>
void Client::run<void>(asio::awaitable<void> op, const char* what) {
  auto wrapped = [](asio::awaitable<void> inner) -> asio::awaitable<bool> {
    co_await std::move(inner);
    co_return true;
  };
  run<bool>(wrapped(std::move(op)), what);
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
    // A TLS server closes on a plaintext client's first request; once it has answered
    // anything, the hint would only mislead.
    throw Error(Failure::kConnection, "connection to " + address_ + " lost: the server closed it" +
                                          (tls_ || answered_ ? "" : " (if it serves TLS, add --tls)"));
  }
  throw Error(Failure::kConnection, "connection to " + address_ + " lost: " + ec.message());
}

asio::awaitable<void> Client::co_write(std::span<const std::uint8_t> data) {
  while (!data.empty()) {
    auto [ec, n] = co_await on_stream(
        [&](auto& s) { return s.async_write_some(asio::buffer(data.data(), data.size()), kTuple); });
    if (ec) connection_lost(ec);
    last_progress_ = std::chrono::steady_clock::now();
    data = data.subspan(n);
  }
}

asio::awaitable<void> Client::co_send(const Frame& f, std::vector<std::uint8_t>& scratch) {
  scratch.clear();
  protocol::encode(f, scratch);
  co_await co_write(scratch);
}

asio::awaitable<Frame> Client::co_read_frame() {
  decoder_.reset();
  for (;;) {
    if (in_begin_ < in_end_) {
      const auto step = decoder_.put(std::span(in_.data() + in_begin_, in_end_ - in_begin_));
      in_begin_ += step.consumed;
      if (step.result == protocol::Decoder::Result::kFrame) {
        answered_ = true;
        co_return std::move(decoder_.frame());
      }
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
    in_begin_ = in_end_ = 0;
    auto [ec, n] = co_await co_read_some(asio::buffer(in_));
    if (ec) connection_lost(ec);
    last_progress_ = std::chrono::steady_clock::now();
    in_end_ = n;
  }
}

asio::awaitable<std::tuple<std::error_code, std::size_t>> Client::co_read_some(asio::mutable_buffer buf) {
  if (tls_) co_return co_await tls::read_arrived(*tls_, buf);
  co_return co_await socket_.async_read_some(buf, kTuple);
}

asio::awaitable<void> Client::co_read_body(std::uint64_t n,
                                           const std::function<void(std::span<const std::uint8_t>)>& sink) {
  // Bytes that arrived with the header belong to the body first.
  const std::size_t buffered = static_cast<std::size_t>(std::min<std::uint64_t>(n, in_end_ - in_begin_));
  if (buffered > 0) {
    sink(std::span<const std::uint8_t>(in_.data() + in_begin_, buffered));
    in_begin_ += buffered;
    n -= buffered;
  }
  if (n == 0) co_return;
  // Not zeroed, as put_sender's buffer: the pages a body never reaches are never touched.
  if (!body_) body_ = std::make_unique_for_overwrite<std::uint8_t[]>(protocol::kChunkSize);
  while (n > 0) {
    // Never more than the body's remaining bytes: what follows is the next message.
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(n, protocol::kChunkSize));
    auto [ec, got] = co_await co_read_some(asio::buffer(body_.get(), want));
    if (ec) connection_lost(ec);
    last_progress_ = std::chrono::steady_clock::now();
    sink(std::span<const std::uint8_t>(body_.get(), got));
    n -= got;
  }
}

namespace {

// Drops a HashThread stream that did not reach finish(): on every exception path, so no
// writer thread is left writing to a descriptor the caller is about to close.
class StreamGuard {
 public:
  explicit StreamGuard(hash::HashThread& h) : h_(h) { h_.reset(); }  // and a stream left half-way before
  ~StreamGuard() { h_.reset(); }  // after finish(): nothing left to drop
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  hash::HashThread& h_;
};

}  // namespace

hash::HashThread& Client::hasher() {
  // Four chunks: one being received or read, one being written, two queued for hashing.
  if (!hasher_) hasher_ = std::make_unique<hash::HashThread>(4, protocol::kChunkSize);
  return *hasher_;
}

asio::awaitable<protocol::Digest> Client::co_receive_file(std::uint64_t n, int fd, bool keep_going,
                                                          std::error_code& write_ec,
                                                          const std::function<void(std::uint64_t)>& on_bytes,
                                                          const hash::State* from,
                                                          std::function<void(const hash::State&)> checkpoint) {
  const auto store = [&](std::span<const std::uint8_t> data) {
    if (!write_ec) write_ec = storage::write_all(fd, data);
    if (on_bytes) on_bytes(data.size());
  };
  if (n <= protocol::kChunkSize) {
    // Small bodies: handing them to another thread would cost more than hashing them here.
    struct WriteFailed {};
    hash::Sha256 sha;
    if (from != nullptr) sha.restore(*from);
    try {
      co_await co_read_body(n, [&](std::span<const std::uint8_t> data) {
        if (!write_ec) sha.update(data);
        store(data);
        if (write_ec && !keep_going) throw WriteFailed{};
      });
    } catch (const WriteFailed&) {
      std::error_code ignored;
      socket_.close(ignored);  // the rest of the body cannot be consumed
      co_return protocol::Digest{};
    }
    co_return sha.finish();
  }
  if (write_ec) {
    // A body nobody will keep (its target failed already): read and drop, no hashing.
    co_await co_read_body(n, [&](std::span<const std::uint8_t> data) {
      if (on_bytes) on_bytes(data.size());
    });
    co_return protocol::Digest{};
  }
  auto& h = hasher();
  // The disk writes go to the hasher's writer thread: this one only reads the socket. On
  // every way out but finish() (a lost connection, a throwing callback) the guard drops
  // the stream and waits for the writer, before the caller may close fd.
  const StreamGuard guard(h);
  h.write_to(fd);
  if (from != nullptr) h.start_from(*from);
  if (checkpoint) h.checkpoint(std::move(checkpoint));
  while (n > 0) {
    // Fill a whole chunk before handing it over: fewer thread hand-offs and disk writes.
    const auto buf = h.buffer().first(static_cast<std::size_t>(std::min<std::uint64_t>(n, h.slot_size())));
    std::size_t got = std::min(buf.size(), in_end_ - in_begin_);  // bytes that came with the header
    std::memcpy(buf.data(), in_.data() + in_begin_, got);
    in_begin_ += got;
    while (got < buf.size()) {
      auto [ec, k] = co_await on_stream(
          [&](auto& s) { return s.async_read_some(asio::buffer(buf.data() + got, buf.size() - got), kTuple); });
      if (ec) connection_lost(ec);
      last_progress_ = std::chrono::steady_clock::now();
      got += k;
    }
    h.submit(got);  // hashed and written while the next chunk arrives
    if (on_bytes) on_bytes(got);
    write_ec = h.write_error();
    if (write_ec && !keep_going) {
      std::error_code ignored;
      socket_.close(ignored);  // the rest of the body cannot be consumed
      co_return protocol::Digest{};
    }
    n -= got;
  }
  const auto digest = h.finish();
  write_ec = h.write_error();
  co_return digest;
}

asio::awaitable<void> Client::co_send_file(int fd, std::uint64_t size, const std::filesystem::path& local,
                                           bool keep_going, protocol::Digest& digest, std::optional<Error>& read_error,
                                           const std::function<void(std::uint64_t)>& on_bytes,
                                           const hash::State* from) {
  auto& h = hasher();
  const StreamGuard guard(h);
  if (from != nullptr) h.start_from(*from);
  for (std::uint64_t off = from != nullptr ? from->bytes : 0; off < size;) {
    const auto buf = h.buffer().first(static_cast<std::size_t>(std::min<std::uint64_t>(size - off, h.slot_size())));
    if (!read_error) {
      read_error = read_chunk(fd, local, buf, off);
      if (read_error && !keep_going) throw *read_error;
    }
    // The body's size was promised in the header: after a failed read, zeros stand in (for
    // every chunk from then on: the slots hold older chunks' bytes).
    if (read_error) std::memset(buf.data(), 0, buf.size());
    h.submit(buf.size());  // hashed on the other thread while these bytes are sent; read-only from here
    // Over plain TCP the socket takes the bytes from the page cache (sendfile): no copy
    // from buf into the socket. Should the file change between the read and the send, the
    // server's digest check refuses it, as for any file changed while being sent.
    std::uint64_t sent = 0;
    if (!tls_ && sendfile_works_ && !read_error) {
      sent = co_await co_sendfile(fd, off, buf.size());
      if (sent < buf.size() && sendfile_works_) {
        read_error = Error(Failure::kLocalIo, local.string() + " shrank while it was being sent; try again");
        if (!keep_going) throw *read_error;
      }
    }
    // The rest (TLS, no sendfile here, or a file that shrank: then the trailer below cannot
    // match whatever these bytes are).
    if (sent < buf.size()) co_await co_write(buf.subspan(static_cast<std::size_t>(sent)));
    if (on_bytes) on_bytes(buf.size());
    off += buf.size();
  }
  digest = h.finish();  // set before the trailer goes out
  protocol::Digest trailer = digest;
  if (read_error) {
    // What was sent is not the file: a trailer that cannot match makes the server refuse it.
    for (auto& b : trailer) b = static_cast<std::uint8_t>(~b);
  }
  co_await co_write(trailer);
}

asio::awaitable<std::uint64_t> Client::co_sendfile(int fd, std::uint64_t offset, std::uint64_t n) {
  // asio's native_non_blocking() pattern: try the call, wait for writability on EAGAIN.
  std::error_code ec;
  if (!socket_.native_non_blocking()) socket_.native_non_blocking(true, ec);
  if (ec) connection_lost(ec);
  std::uint64_t sent = 0;
  while (sent < n) {
    const long k = storage::sendfile_nosignal(socket_.native_handle(), fd, offset + sent,
                                              static_cast<std::size_t>(n - sent));
    if (k > 0) {
      sent += static_cast<std::uint64_t>(k);
      last_progress_ = std::chrono::steady_clock::now();
    } else if (k == 0) {
      break;  // the file ended early
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      auto [wait_ec] = co_await socket_.async_wait(asio::ip::tcp::socket::wait_write, kTuple);
      if (wait_ec) connection_lost(wait_ec);
    } else if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN || errno == ETIMEDOUT) {
      connection_lost(std::error_code(errno, std::generic_category()));
    } else {
      // Not supported for this file, or the file's side failed (EIO): copy through user
      // space from now on; a real read error then shows up there, with its own message.
      sendfile_works_ = false;
      break;
    }
  }
  co_return sent;
}

void Client::send(const Frame& f) { run(co_send(f, out_), "sending"); }

Frame Client::read_frame() {
  // A frame already in the buffer needs no trip through the event loop: a listing arrives
  // thousands of entries at a time, and each trip was two epoll_wait(2) calls.
  if (in_begin_ < in_end_) {
    decoder_.reset();
    const auto step = decoder_.put(std::span(in_.data() + in_begin_, in_end_ - in_begin_));
    if (step.result == protocol::Decoder::Result::kFrame) {
      in_begin_ += step.consumed;
      answered_ = true;
      return std::move(decoder_.frame());
    }
    // Incomplete (or bad): co_read_frame decodes the same bytes again and reads or reports.
  }
  return run(co_read_frame(), "waiting for the server");
}

Error Client::error_from_reply(const Frame& f, std::string_view context) const {
  const std::string msg = printable(f.name);
  switch (f.status) {
    case Status::kNotFound:
      return Error(Failure::kNotFound, msg + " on " + address_ + " \u2014 'ftx ls' lists what is stored");
    case Status::kIntegrity:
      return Error(Failure::kIntegrity, msg);
    case Status::kUnauthorized:
      return Error(Failure::kAuth, address_ + ": " + msg);
    case Status::kShuttingDown:
      // Not a refusal of this request: the server is going away, as if the connection broke.
      return Error(Failure::kConnection, address_ + ": " + msg);
    case Status::kBadRequest:
    case Status::kUnsupportedVersion:
      return Error(Failure::kProtocol, address_ + " refused the request: " + msg);
    case Status::kOk:
      return Error(Failure::kProtocol, address_ + " sent an unexpected " + std::string(protocol::to_string(f.type)) +
                                           " message during " + std::string(context));
    default:
      return Error(Failure::kRejected, context.empty() ? "refused: " + msg
                                                       : "server refused " + std::string(context) + ": " + msg);
  }
}

void Client::fail_from_reply(const Frame& f, std::string_view context) {
  if (f.type == MsgType::kError && f.status == Status::kShuttingDown) {
    // The server waits for this side to close (a second at most) before it lets go.
    std::error_code ignored;
    socket_.close(ignored);
  }
  throw error_from_reply(f, context);
}

void Client::throw_if_closing(const Frame& f) {
  if (f.type != MsgType::kError) return;
  // The server closes the connection after these (docs/protocol.md, status codes): no
  // answer will come for the requests behind, so this is the batch's end, not one file's
  // failure. This side closes too (the server waits for that, a second at most, before it
  // lets go). A stop or a timeout is a connection error, as the close that follows would be.
  if (f.status == Status::kShuttingDown || f.status == Status::kTimeout) {
    std::error_code ignored;
    socket_.close(ignored);
    throw Error(Failure::kConnection, address_ + ": " + printable(f.name));
  }
  // A batch sent to a server that wants a token: the first request is refused and the
  // connection closed. Said as a single upload says it (exit 9), not as "lost" (exit 3)
  // after every other file failed too.
  if (f.status == Status::kUnauthorized || f.status == Status::kUnsupportedVersion) {
    std::error_code ignored;
    socket_.close(ignored);
    throw error_from_reply(f, {});
  }
}

std::optional<hash::State> Client::check_offer(const Frame& ready, int fd, std::uint64_t size) {
  hash::State good{ready.digest, ready.size};
  hash::State before;
  if (ready.name.size() != before.words.size() || ready.mtime_ns < 0) return std::nullopt;
  std::copy(ready.name.begin(), ready.name.end(), before.words.begin());
  before.bytes = static_cast<std::uint64_t>(ready.mtime_ns);
  if (good.bytes > size || before.bytes > good.bytes || good.bytes - before.bytes > protocol::kChunkSize) {
    return std::nullopt;
  }
  if (good.bytes == 0) return good;
  // The server holds what an earlier attempt sent; size and mtime matched, so the file is
  // most likely unchanged. Its last chunk before the offset must still hash to the same
  // state: one chunk read, not the whole prefix.
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(good.bytes - before.bytes));
  std::size_t got = 0;
  if (storage::pread_full(fd, buf, before.bytes, got) || got != buf.size()) return std::nullopt;
  hash::Sha256 sha;
  if (!sha.restore(before)) return std::nullopt;
  sha.update(buf);
  if (sha.state() != good) return std::nullopt;
  return good;
}

Result Client::put(const std::filesystem::path& local, const std::string& remote, const ProgressFn& progress,
                   const TransferOptions& opts) {
  const std::string context = "put " + storage::quote_name(remote);
  check_remote_name(remote);
  const Source src = open_source(local);
  Frame req;
  std::vector<std::uint8_t> buf;
  if (src.size <= kWholeFileBytes) {
    // Read once into memory, hashed, and sent from there.
    buf.resize(static_cast<std::size_t>(src.size));
    req = put_header(src, local, remote, buf);
  } else {
    // Read once, hashed while sent; the digest follows the body.
    req = put_header_digest_after(src, remote);
    if (opts.resume) {
      req.flags |= protocol::kFlagResume;
      req.digest = source_id(src, local);
    }
  }
  send(req);
  Frame ready = read_frame();
  if (ready.type != MsgType::kReady) fail_from_reply(ready, context);

  std::optional<hash::State> from;
  if ((req.flags & protocol::kFlagResume) != 0 && (ready.flags & protocol::kFlagResume) != 0 && ready.size > 0) {
    from = check_offer(ready, src.fd.get(), src.size);
    if (!from) {
      // The file is not what the server holds a part of. The server waits for the rest of
      // that body; the only way out is a new connection, with an upload that drops the
      // server's partial (and is not resumable itself).
      connect();
      req.flags &= static_cast<std::uint16_t>(~protocol::kFlagResume);
      req.digest = {};
      send(req);
      ready = read_frame();
      if (ready.type != MsgType::kReady) fail_from_reply(ready, context);
    }
  }

  if (src.size <= kWholeFileBytes) {
    run(co_write(buf), "sending");
    if (progress) progress(src.size, src.size);
  } else {
    std::uint64_t sent = from ? from->bytes : 0;
    if (progress) progress(sent, src.size);  // where this run starts
    std::optional<Error> read_error;
    run(co_send_file(src.fd.get(), src.size, local, /*keep_going=*/false, req.digest, read_error,
                     [&](std::uint64_t n) {
                       sent += n;
                       if (progress) progress(sent, src.size);
                     },
                     from ? &*from : nullptr),
        "sending");
  }
  const Frame done = read_frame();
  if (done.type != MsgType::kDone) {
    if (done.status == Status::kIntegrity) {
      throw Error(Failure::kIntegrity, printable(done.name) + " (did " + local.string() +
                                           " change while it was being sent? try again)");
    }
    fail_from_reply(done, context);
  }
  if (done.digest != req.digest || done.size != src.size) {
    throw Error(Failure::kProtocol, address_ + " acknowledged a different file than the one sent");
  }
  return {src.size, req.digest, local, src.executable};
}

std::filesystem::path Client::download_target(const std::string& remote, const std::filesystem::path& local) {
  std::filesystem::path target = local;
  if (target.empty()) target = base_name(remote);
  std::error_code ec;
  if (std::filesystem::is_directory(target, ec)) target /= base_name(remote);
  if (target.filename().empty()) {
    throw Error(Failure::kLocalIo, "cannot tell a file name from " + storage::quote_name(remote) + "; give LOCAL_PATH");
  }
  return target;
}

Result Client::get(const std::string& remote, const std::filesystem::path& local, const ProgressFn& progress,
                   const TransferOptions& opts) {
  const std::string context = "get " + storage::quote_name(remote);
  check_remote_name(remote);
  const bool to_stdout = is_stdout(local);
  const std::filesystem::path target = to_stdout ? local : download_target(remote, local);
  // The staging file is made before asking, so a local problem costs no transfer.
  std::optional<StagedFile> staged = to_stdout ? std::nullopt : stage_download(target, opts);
  const bool resumable = staged && staged->is_resumable();

  Frame req;
  req.type = MsgType::kGet;
  req.name = remote;
  const storage::PartialRecord* held = resumable ? staged->found() : nullptr;
  if (held != nullptr && held->name == remote && held->good.bytes > 0) {
    // Ask for the rest of the version we hold a prefix of; the server sends all of it if
    // its file is not that version any more.
    req.flags = protocol::kFlagResume;
    req.size = held->good.bytes;
    req.digest = held->digest;
  }
  send(req);
  const Frame reply = read_frame();
  if (reply.type != MsgType::kFile) {
    if (resumable) staged->discard();  // the file is gone or refused: nothing left to resume
    fail_from_reply(reply, context);
  }

  const bool has_mtime = (reply.flags & protocol::kFlagHasMtime) != 0;
  const bool executable = (reply.flags & protocol::kFlagExecutable) != 0;
  std::optional<hash::State> from;
  if ((reply.flags & protocol::kFlagResume) != 0) {
    if ((req.flags & protocol::kFlagResume) == 0 || reply.size < req.size || reply.digest != req.digest) {
      throw Error(Failure::kProtocol, address_ + " resumed a download that was not asked to resume");
    }
    from = held->good;
  }
  if (resumable) {
    std::error_code ec;
    if (from) {
      ec = staged->continue_found();
    } else {
      ec = staged->start(storage::new_record(remote, reply.size, has_mtime ? std::optional(reply.mtime_ns) : std::nullopt,
                                             executable, reply.digest));
    }
    if (ec) {
      std::error_code ignored;
      socket_.close(ignored);  // the body cannot be consumed
      throw Error(Failure::kLocalIo, "cannot write " + staged->staging_path() + ": " + errno_text(ec));
    }
  }

  const int out_fd = to_stdout ? STDOUT_FILENO : staged->fd();
  const std::uint64_t skip = from ? from->bytes : 0;
  std::uint64_t received = skip;
  if (progress) progress(received, reply.size);  // where this run starts
  std::error_code write_ec;
  std::function<void(const hash::State&)> checkpoint;
  if (resumable) checkpoint = [&staged](const hash::State& s) { staged->checkpoint(s); };
  const auto digest = run(co_receive_file(reply.size - skip, out_fd, /*keep_going=*/false, write_ec,
                                          [&](std::uint64_t n) {
                                            received += n;
                                            if (progress) progress(received, reply.size);
                                          },
                                          from ? &*from : nullptr, std::move(checkpoint)),
                          "receiving a file");
  if (write_ec) {
    throw Error(Failure::kLocalIo, "cannot write " + (to_stdout ? std::string("to standard output") : target.string()) +
                                       ": " + errno_text(write_ec));
  }
  if (digest != reply.digest) {
    if (staged) staged->discard();  // what it holds is not the file: the next attempt starts over
    throw Error(Failure::kIntegrity,
                "data received for " + storage::quote_name(remote) + " does not match the SHA-256 the server announced; " +
                    (to_stdout ? std::string("the bytes written to standard output are corrupt")
                               : target.string() + " was left untouched"));
  }
  if (!to_stdout) {
    if (auto ec = staged->commit(has_mtime ? std::optional(reply.mtime_ns) : std::nullopt, executable)) {
      throw commit_failure(target, ec);
    }
  }
  return {reply.size, digest, to_stdout ? std::filesystem::path("-") : target, executable};
}

// ---------------------------------------------------------------- batches

// Hands a parallel batch's items out to its connections (BatchOptions::connections) in runs
// of consecutive items, by guided scheduling: each run is a 2n-th of what is left (n
// connections), at least kShortestRun. Long runs at first keep a folder's files on one
// connection -- two connections writing into the same folders take its lock in turn --
// and short ones at the end let the connections finish together. Thread-safe.
class Client::BatchQueue {
 public:
  BatchQueue(std::size_t items, unsigned connections) : items_(items), connections_(std::max(connections, 1u)) {}

  // The next run [first, last); empty when every item is taken or the batch stopped.
  std::pair<std::size_t, std::size_t> take() {
    const std::lock_guard lock(mu_);
    if (stopped_.load(std::memory_order_relaxed) || next_ == items_) return {next_, next_};
    const std::size_t left = items_ - next_;
    const std::size_t run = std::min(left, std::max(kShortestRun, left / (2 * connections_)));
    const std::size_t first = std::exchange(next_, next_ + run);
    return {first, next_};
  }
  // A connection failed (or a callback threw): no more items are handed out, not even the
  // rest of the runs already taken.
  void stop() { stopped_.store(true, std::memory_order_relaxed); }
  bool stopped() const { return stopped_.load(std::memory_order_relaxed); }

  static constexpr std::size_t kShortestRun = 16;

 private:
  std::mutex mu_;
  const std::size_t items_;
  const std::size_t connections_;
  std::size_t next_ = 0;
  std::atomic<bool> stopped_{false};
};

// What a batch's sender and receiver share. Both run on io_ (one thread), so plain members
// suffice; `wake_*` timers serve as condition variables (cancel() wakes the waiter).
struct Client::Batch {
  // Either `list_in` (every item known) or `feed_in` (items that come as the batch goes).
  Batch(asio::io_context& io, const std::vector<BatchItem>* list_in, BatchFeed* feed_in, const BatchOptions& opts_in,
        BatchQueue* queue_in, const std::function<void(const BatchResult&)>& result_fn,
        const std::function<void(std::uint64_t)>& bytes_fn)
      : list(list_in),
        feed(feed_in),
        opts(opts_in),
        queue(queue_in),
        end(queue_in != nullptr ? 0 : list_in != nullptr ? list_in->size() : feed_in->items.size()),
        on_result(result_fn),
        on_bytes(bytes_fn),
        wake_sender(io),
        wake_receiver(io) {
    // A window of 0 would let get_sender spin without ever sending: it means 1.
    opts.window_files = std::max<std::size_t>(opts.window_files, 1);
    wake_sender.expires_at(asio::steady_timer::time_point::max());
    wake_receiver.expires_at(asio::steady_timer::time_point::max());
  }

  struct InFlight {
    std::size_t index = 0;
    Frame request;                  // what was asked (put: the header sent)
    std::optional<Error> local;     // failed before anything was sent: report, read nothing
    bool two_phase = false;         // a put that waits for kReady before its body
    std::optional<Error> late;      // failed while its body was being sent: report this
    bool body_sent = false;         // a two-phase put's body and trailer are out (sender)
  };
  // A two-phase put's answer, passed from the receiver to the sender.
  enum class Ready { kWaiting, kGo, kRefused } ready = Ready::kWaiting;
  bool sender_waiting_for_room = false;  // put_sender sleeps until the window has room
  bool aborted = false;                  // set by abort(): every wait_for throws

  // Ends the batch when its connection gave up: without it, a sender and receiver that
  // both sleep on their timers would keep io_.run() from ever returning.
  void abort() {
    aborted = true;
    wake_sender.cancel();
    wake_receiver.cancel();
  }
  // Sleeps until `t` (wake_sender or wake_receiver) is cancelled. A waiter re-checks its
  // condition after waking; one woken by abort() throws instead, so that the batch ends.
  asio::awaitable<void> wait(asio::steady_timer& t) {
    // Before sleeping too: abort()'s cancel() reaches only waits already begun.
    if (aborted) throw Error(Failure::kConnection, "the batch was abandoned");
    co_await t.async_wait(kTuple);  // cancel() is the signal; an error code is expected
    t.expires_at(asio::steady_timer::time_point::max());
    if (aborted) throw Error(Failure::kConnection, "the batch was abandoned");
  }

  // The sender's next item: the next of every item in order, or of the runs this connection
  // takes from the queue. nullopt: none left (or the parallel batch stopped).
  std::optional<std::size_t> next_item() {
    if (queue != nullptr) {
      if (queue->stopped()) return std::nullopt;
      if (next == end) std::tie(next, end) = queue->take();
    }
    // A feed is asked until it gives something or says it has nothing more (a folder
    // without files gives nothing).
    while (next == end && feed != nullptr && !feed_over) {
      if (!feed->more(feed->items)) feed_over = true;
      end = feed->items.size();
    }
    if (next == end) return std::nullopt;
    return next++;
  }
  const BatchItem& item(std::size_t i) const { return feed != nullptr ? feed->items[i] : (*list)[i]; }
  // The sender has taken its last item: once in_flight is empty, the receiver is done.
  void sender_finished() {
    sender_done = true;
    wake_receiver.cancel();
  }

  const std::vector<BatchItem>* const list;  // the items, all known; or
  BatchFeed* const feed;                     // the items, as they come
  bool feed_over = false;                    // feed->more() said there are no more
  BatchOptions opts;
  BatchQueue* const queue;  // null: this connection moves every item
  std::size_t next = 0;     // the items [next, end) are this connection's, not yet sent
  std::size_t end;
  bool sender_done = false;
  std::exception_ptr failure;  // the first side (sender or receiver) to fail, for run_batch
  const std::function<void(const BatchResult&)>& on_result;
  const std::function<void(std::uint64_t)>& on_bytes;
  std::deque<InFlight> in_flight;
  std::uint64_t bytes_in_flight = 0;
  asio::steady_timer wake_sender;
  asio::steady_timer wake_receiver;
  std::vector<std::uint8_t> header;  // the sender's encode (and gather) buffer
};

void Client::abort_batch() {
  if (batch_ != nullptr) batch_->abort();
}

void Client::run_batch(Batch& b, asio::awaitable<void> op, const char* what) {
  batch_ = &b;
  const struct Forget {
    Batch*& batch;
    ~Forget() { batch = nullptr; }
  } forget{batch_};
  try {
    run(std::move(op), what);
  } catch (const asio::multiple_exceptions& e) {
    // Both sides failed. operator&& keeps the sender's exception, whichever came first, and
    // when the receiver found the connection lost while the sender waited for room, the
    // sender's is only the cancellation that followed ("co_await: Operation aborted"), not
    // a client::Error at all. The side that failed first says why (batch_side).
    std::rethrow_exception(b.failure ? b.failure : e.first_exception());
  }
}

asio::awaitable<void> Client::batch_side(Batch& b, asio::awaitable<void> side) {
  try {
    co_await std::move(side);
  } catch (...) {
    if (!b.failure) b.failure = std::current_exception();
    throw;
  }
}

asio::awaitable<void> Client::put_sender(Batch& b) {
  // Not zeroed: a page is touched only when a file is read into it. Zeroing 1 MiB touched
  // 256 pages in every put -r, whose files are mostly small, and a first touch of a page
  // (a fault) costs about 15 us on a virtual machine here -- 4 ms before the first file.
  const auto buf_memory = std::make_unique_for_overwrite<std::uint8_t[]>(protocol::kChunkSize);
  const std::span<std::uint8_t> buf(buf_memory.get(), protocol::kChunkSize);
  // Small files are gathered (headers and bodies) into one write of up to kGather bytes:
  // fewer system calls and fuller segments than one write per file.
  constexpr std::size_t kGather = 256 * 1024;
  auto& pending = b.header;
  pending.clear();
  OpenFolder folder;
  storage::CloseBatch closing;  // the files read: closed a batch at a time
  for (;;) {
    while (!b.in_flight.empty() &&
           (b.in_flight.size() >= b.opts.window_files || b.bytes_in_flight >= b.opts.window_bytes)) {
      if (!pending.empty()) {
        co_await co_write(pending);  // the server needs these before it can answer
        pending.clear();
        // Look again before sleeping: while this write was suspended the receiver may have
        // taken every answer -- the server can answer all of these before this coroutine
        // resumes -- and it wakes only a sender flagged as waiting. Sleeping now would wait
        // for a wake-up that never comes (a put -r that hung under strace, stop 16).
        continue;
      }
      b.sender_waiting_for_room = true;
      co_await b.wait(b.wake_sender);
      b.sender_waiting_for_room = false;
    }
    // Only once there is room: when this connection's run is used up, the next run is taken
    // from a parallel batch's queue, and what is still there may go to another connection.
    const auto next = b.next_item();
    if (!next) break;
    const std::size_t i = *next;
    const auto& item = b.item(i);
    Batch::InFlight f;
    f.index = i;
    std::optional<Source> src;
    try {
      check_remote_name(item.remote);
      src.emplace(open_source(item.local, &folder));
      f.request = src->size <= buf.size() ? put_header(*src, item.local, item.remote, buf)
                                          : put_header_digest_after(*src, item.remote);
      f.request.flags |= protocol::kFlagStreamed;
    } catch (const Error& e) {
      f.local = e;
    }
    const bool send_it = !f.local;
    b.bytes_in_flight += send_it ? src->size : 0;
    const Frame req = send_it ? f.request : Frame{};
    b.in_flight.push_back(std::move(f));
    // Only a receiver that found nothing to wait for is asleep: a wake-up per file would be
    // a trip through the event loop (an epoll_wait) per file.
    if (b.in_flight.size() == 1) b.wake_receiver.cancel();
    if (!send_it) continue;
    if (req.size <= buf.size()) {
      // buf still holds the whole file from hashing it.
      protocol::encode(req, pending);
      pending.insert(pending.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(req.size));
      closing.add(std::move(src->fd));
      if (b.on_bytes) b.on_bytes(req.size);
      if (pending.size() >= kGather) {
        co_await co_write(pending);
        pending.clear();
      }
      continue;
    }
    // A large file asks first (kReady) instead of streaming: a refusal (too large for the
    // server, no space) then costs one round trip, not the body, and does not end the
    // connection for the files behind it. Its digest follows its body (one read of it).
    // The receiver keeps this entry at the front of in_flight until the reply after the
    // body, so `cur` stays valid (a deque's push_back/pop_front keep other references).
    Batch::InFlight* cur = &b.in_flight.back();
    cur->two_phase = true;
    cur->request.flags &= static_cast<std::uint16_t>(~protocol::kFlagStreamed);
    b.ready = Batch::Ready::kWaiting;
    protocol::encode(cur->request, pending);
    co_await co_write(pending);
    pending.clear();
    while (b.ready == Batch::Ready::kWaiting) co_await b.wait(b.wake_sender);
    if (b.ready == Batch::Ready::kRefused) continue;
    // A failed read sends zeros and a trailer that cannot match: the server refuses the
    // file, and the receiver reports the local error (cur->late) instead of its answer.
    co_await co_send_file(src->fd.get(), req.size, item.local, /*keep_going=*/true, cur->request.digest, cur->late,
                          b.on_bytes);
    cur->body_sent = true;
    b.wake_receiver.cancel();
  }
  b.sender_finished();
  if (!pending.empty()) co_await co_write(pending);
}

asio::awaitable<void> Client::put_receiver(Batch& b) {
  for (;;) {
    while (b.in_flight.empty() && !b.sender_done) co_await b.wait(b.wake_receiver);
    if (b.in_flight.empty()) break;
    // A reference, not a copy: the sender fills in a two-phase put's digest (and `late`)
    // while its body goes out; the entry leaves in_flight once answered.
    Batch::InFlight& f = b.in_flight.front();
    BatchResult r;
    r.index = f.index;
    const auto& item = b.item(f.index);
    if (f.local) {
      r.error = std::move(f.local);
    } else {
      Frame reply = co_await co_read_frame();
      // Built only for an error: quoting every name cost a file's worth of work in a batch.
      const auto context = [&] { return "put " + storage::quote_name(item.remote); };
      if (f.two_phase) {
        b.ready = reply.type == MsgType::kReady ? Batch::Ready::kGo : Batch::Ready::kRefused;
        b.wake_sender.cancel();
        if (reply.type == MsgType::kReady) {
          // The answer is read only once the sender is done with this entry (body, trailer,
          // digest): a server answering early must not make the entry go away under it.
          while (!f.body_sent) co_await b.wait(b.wake_receiver);
          reply = co_await co_read_frame();
        }
      }
      if (reply.type == MsgType::kDone) {
        if (reply.digest != f.request.digest || reply.size != f.request.size) {
          throw Error(Failure::kProtocol, address_ + " acknowledged a different file than the one sent");
        }
        r.result = {f.request.size, f.request.digest, item.local,
                    (f.request.flags & protocol::kFlagExecutable) != 0};
      } else if (reply.type == MsgType::kError) {
        throw_if_closing(reply);
        if (reply.status == Status::kForbidden) {
          // A read-only server refuses every upload alike, for the same server-wide reason:
          // said once, as a single put says it, not once for each of 10,000 files. The
          // server keeps the connection; this side drops it with the requests behind.
          std::error_code ignored;
          socket_.close(ignored);
          throw Error(Failure::kRejected, address_ + ": " + printable(reply.name));
        }
        r.error = f.late ? std::move(f.late) : error_from_reply(reply, {});
      } else {
        fail_from_reply(reply, context());
      }
      b.bytes_in_flight -= f.request.size;
    }
    b.in_flight.pop_front();
    // A sender waiting for room is woken once half the window is free, not once per answer
    // (each wake-up is a trip through the event loop); a two-phase answer wakes it above.
    if (b.sender_waiting_for_room && b.in_flight.size() <= b.opts.window_files / 2 &&
        b.bytes_in_flight <= b.opts.window_bytes / 2) {
      b.wake_sender.cancel();
    }
    b.on_result(r);
  }
}

asio::awaitable<void> Client::get_sender(Batch& b) {
  auto& pending = b.header;
  for (bool more = true; more;) {
    // Refill when half the window has been answered: requests then go out in batches, not
    // one write per answer.
    while (b.in_flight.size() > b.opts.window_files / 2) co_await b.wait(b.wake_sender);
    // Every request the window allows goes out in one write.
    pending.clear();
    while (b.in_flight.size() < b.opts.window_files) {
      const auto next = b.next_item();
      if (!next) {
        more = false;
        break;
      }
      Batch::InFlight f;
      f.index = *next;
      f.request.type = MsgType::kGet;
      f.request.name = b.item(*next).remote;
      try {
        check_remote_name(f.request.name);
        protocol::encode(f.request, pending);
      } catch (const Error& e) {
        f.local = e;
      }
      b.in_flight.push_back(std::move(f));
    }
    if (more) {
      b.wake_receiver.cancel();
    } else {
      b.sender_finished();
    }
    if (!pending.empty()) co_await co_write(pending);
  }
}

// A downloaded file of up to kInMemoryFile bytes, received and verified but not yet on disk:
// the publishing thread creates, writes and seals it with its group (get_receiver).
struct ReceivedBody {
  std::vector<std::uint8_t> data;
  std::optional<std::int64_t> mtime_ns;
  bool executable = false;
};

namespace {

// Why a folder download holds small files in memory and publishes on a second thread: its
// receiving thread was the bound, and nine tenths of its time went to each file's five
// calls (create, write, mtime, rename, close). Moved to another thread whole -- not split
// with the receiver, where both took the same folders' locks in turn (tried, no gain) --
// they run beside the receiving of the next group: a get -r of 10,000 files of 4 KiB took
// about 10 % less (docs/benchmarks.md).
constexpr std::uint64_t kInMemoryFile = 64 * 1024;
constexpr std::size_t kSyncEvery = 64;  // files published together: one syncfs, one fsync per folder
// Groups waiting for the publishing thread, besides the one it publishes: with the group
// being received, at most six groups' small files are in memory (24 MiB if all are of
// 64 KiB; 1.5 MiB for files of 4 KiB). Fewer made the receiver stop reading whenever the
// publishing thread fell behind for a moment: with 1 or 2, 10,000 files of 4 KiB took
// 0.30-0.34 s against 0.27-0.29 with 4 (and the same with 8), 15 alternated runs each.
constexpr std::size_t kGroupsQueued = 4;

// One file of a download group, from its arrival until it is reported.
struct PendingDownload {
  BatchResult result;
  std::optional<StagedFile> file;    // written and sealed: to publish
  std::optional<ReceivedBody> body;  // or still in memory: to write, seal and publish
};

// A group handed to the publishing thread. `done` is set last, by that thread; until then
// the receiving thread touches nothing in it.
struct DownloadGroup {
  std::vector<PendingDownload> files;
  std::exception_ptr failed;  // publish_group threw (std::bad_alloc): none is reported saved
  std::atomic<bool> done{false};
};

// Publishes one group: writes and seals the files still in memory, then the group's data
// made durable together, the renames and one fsync per folder (publish_staged,
// sync_folder). Leaves each file's outcome in its result. Runs on the publishing thread.
void publish_group(std::vector<PendingDownload>& group) {
  // publish_staged wants the files in the order they were opened (its syncfs goes through
  // the first, which reports write-back errors only for what happened after it was
  // opened): those staged on the receiving thread first, then those made here. For a
  // folder download the targets differ, so the renames' order does not matter.
  std::vector<std::size_t> order;  // indexes into group, by opening
  order.reserve(group.size());
  for (std::size_t i = 0; i < group.size(); ++i) {
    if (group[i].file) order.push_back(i);
  }
  for (std::size_t i = 0; i < group.size(); ++i) {
    auto& p = group[i];
    if (!p.body) continue;
    auto& r = p.result;
    try {
      StagedFile f(r.result.local);
      auto ec = storage::write_all(f.fd(), p.body->data);
      if (!ec) ec = f.seal(p.body->mtime_ns, p.body->executable);
      if (ec) {
        r.error = commit_failure(r.result.local, ec);
        r.result = {};
      } else {
        p.file.emplace(std::move(f));
        order.push_back(i);
      }
    } catch (const std::system_error& e) {
      r.error = Error(Failure::kLocalIo, e.what());
      r.result = {};
    }
    p.body.reset();
  }
  std::vector<StagedFile*> files;
  files.reserve(order.size());
  for (const auto i : order) files.push_back(&*group[i].file);
  // Everything this needs after the renames is allocated before them, so that a
  // std::bad_alloc never reports a file failed that is in place.
  std::vector<std::pair<std::string_view, std::error_code>> folders;
  folders.reserve(order.size());
  std::vector<std::size_t> in_folder(group.size(), SIZE_MAX);  // group[i]'s index in folders; SIZE_MAX: none
  const auto published = publish_staged(files);
  // Each folder once, after every rename into it; a file is saved only once its name is
  // durable too.
  for (std::size_t k = 0; k < order.size(); ++k) {
    auto& r = group[order[k]].result;
    if (const auto ec = published[k]) {
      r.error = commit_failure(r.result.local, ec);
      r.result = {};
      continue;
    }
    const std::string_view folder = folder_text(r.result.local);  // a view into the group
    const auto it = std::find_if(folders.begin(), folders.end(), [&](const auto& f) { return f.first == folder; });
    in_folder[order[k]] = static_cast<std::size_t>(it - folders.begin());
    if (it == folders.end()) folders.emplace_back(folder, std::error_code{});
  }
  for (auto& [folder, ec] : folders) ec = sync_folder(folder);
  for (std::size_t i = 0; i < group.size(); ++i) {
    auto& r = group[i].result;
    if (in_folder[i] < folders.size() && folders[in_folder[i]].second) {
      r.error = commit_failure(r.result.local, storage::errc::not_durable);
      r.result = {};
    }
  }
}

// The groups a download handed to its publishing thread, in order, and their reporting.
// Used on the receiving (io) thread only: by get_receiver, and by the handler each finished
// group posts there, so that results are reported while the receiver waits for the server.
struct DownloadReports {
  std::deque<std::shared_ptr<DownloadGroup>> handed;
  const std::function<void(const BatchResult&)>* on_result = nullptr;  // null once get_receiver ended
  std::exception_ptr callback_failed;  // the first exception on_result threw: no more calls
  // Set while get_receiver runs (cleared before the state it refers to goes): called after
  // each finished group, to hand what arrived since to the publishing thread if nothing
  // else waits for it. Must not throw (it runs in a handler).
  std::function<void()> group_finished;

  // Reports every finished group at the front, in order. A throwing on_result stops all
  // reporting; its exception is kept in callback_failed.
  void report() {
    while (on_result != nullptr && !callback_failed && !handed.empty() &&
           handed.front()->done.load(std::memory_order_acquire)) {
      const auto group = std::move(handed.front());  // taken out first: nothing is reported twice
      handed.pop_front();
      try {
        for (auto& p : group->files) {
          if (group->failed && !p.result.error) {
            p.result.error = Error(Failure::kLocalIo, "cannot save " + p.result.result.local + ": " +
                                                          what_of(group->failed));
            p.result.result = {};
          }
          (*on_result)(p.result);
        }
      } catch (...) {
        callback_failed = std::current_exception();
      }
    }
  }
  static std::string what_of(const std::exception_ptr& e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      return ex.what();
    } catch (...) {
      return "unknown error";
    }
  }
};

}  // namespace

asio::awaitable<void> Client::get_receiver(Batch& b) {
  // Group commit: each file is verified as it arrives, and every kSyncEvery files (or
  // sooner when the publishing thread would otherwise idle: about_to_wait) they go to the
  // publishing thread as a group (publish_group). Results are reported only after that, in
  // order, on this thread: when the group's handler runs (posted when it is published), at
  // the receiver's next wait, and before this returns.
  std::vector<PendingDownload> pending;
  const auto reports = std::make_shared<DownloadReports>();
  reports->on_result = &b.on_result;
  std::optional<SerialWorker> publisher;
  try {
    publisher.emplace(kGroupsQueued);
  } catch (const std::system_error& e) {
    throw Error(Failure::kLocalIo, std::string("cannot start the thread that saves the files: ") + e.what());
  }
  const auto report_published = [&] {
    reports->report();
    if (reports->callback_failed) std::rethrow_exception(reports->callback_failed);
  };
  // Hands what is pending to the publishing thread as one group.
  const auto hand_over = [&] {
    if (pending.empty()) return;
    auto group = std::make_shared<DownloadGroup>();
    group->files = std::exchange(pending, {});
    reports->handed.push_back(group);
    // The job allocates nothing outside publish_group's try: it must not throw.
    publisher->push([group, reports, &io = io_] {
      try {
        publish_group(group->files);
      } catch (...) {
        group->failed = std::current_exception();
      }
      group->done.store(true, std::memory_order_release);
      asio::post(io, [reports] {
        reports->report();
        if (reports->group_finished) reports->group_finished();
      });
    });
  };
  const auto settle = [&] {
    report_published();
    hand_over();
  };
  // About to wait for the server (or a group finished meanwhile): what arrived goes to be
  // published now if the publishing thread has nothing else waiting -- it must not sit idle,
  // nor the files sit in memory unsaved and unreported for as long as the server takes. If
  // it has, they wait for more: handed over at every wait, the groups held what one read of
  // the socket brought (16 files of 4 KiB), and a get -r of 10,000 took 625 syncfs and 700
  // folder fsyncs instead of about 160 and 250; the group that finishes hands them over.
  // Between catch_up and the report of the larger file it made room for, nothing is handed
  // over: that file's staging file is this thread's (see catch_up), and a handler left over
  // from the last group may run while its body arrives.
  bool staging_here = false;
  const auto hand_over_if_idle = [&] {
    if (!staging_here && publisher->queued() == 0) hand_over();
  };
  const auto about_to_wait = [&] {
    report_published();
    hand_over_if_idle();
  };
  reports->group_finished = [&] {
    try {
      hand_over_if_idle();
    } catch (...) {  // bad_alloc: get_receiver ends with it
      if (!reports->callback_failed) reports->callback_failed = std::current_exception();
    }
  };
  // Cleared however this frame ends (also when it is destroyed without resuming): handlers
  // still queued on io_ must not reach the locals above.
  const struct ClearOnExit {
    DownloadReports& reports;
    ~ClearOnExit() { reports.group_finished = nullptr; }
  } clear_group_finished{*reports};
  const auto report = [&](BatchResult r, std::optional<StagedFile> file, std::optional<ReceivedBody> body) {
    staging_here = false;
    pending.push_back({std::move(r), std::move(file), std::move(body)});
    if (pending.size() >= kSyncEvery) settle();
  };
  // Before a larger file is staged here: what the publishing thread has is finished and
  // reported first. So the staging files open at once are this thread's or the publishing
  // thread's, never both (64 at most); what is pending stays so, to go out in a group.
  const auto catch_up = [&] {
    publisher->drain();
    report_published();
    staging_here = true;
  };
  std::exception_ptr failed;
  try {
    co_await get_receiver_loop(b, report, about_to_wait, catch_up);
  } catch (...) {
    failed = std::current_exception();
  }
  // What arrived verified before a failure is published and reported too -- but after a
  // callback threw, nothing more is reported (the files stay saved).
  try {
    settle();
  } catch (...) {
    if (!failed) failed = std::current_exception();
  }
  publisher->drain();
  reports->report();
  reports->on_result = nullptr;  // handlers still queued on io_ find nothing to do
  if (!failed) failed = reports->callback_failed;
  if (failed) std::rethrow_exception(failed);
}

asio::awaitable<void> Client::get_receiver_loop(
    Batch& b, const std::function<void(BatchResult, std::optional<StagedFile>, std::optional<ReceivedBody>)>& report,
    const std::function<void()>& about_to_wait, const std::function<void()>& catch_up) {
  for (;;) {
    while (b.in_flight.empty() && !b.sender_done) co_await b.wait(b.wake_receiver);
    if (b.in_flight.empty()) break;
    Batch::InFlight f = std::move(b.in_flight.front());
    b.in_flight.pop_front();
    // The sender sleeps until half the window is answered: wake it then, not per file.
    if (b.in_flight.size() <= b.opts.window_files / 2) b.wake_sender.cancel();
    BatchResult r;
    r.index = f.index;
    const auto& item = b.item(f.index);
    if (f.local) {
      r.error = std::move(f.local);
      report(std::move(r), std::nullopt, std::nullopt);
      continue;
    }
    const auto context = [&] { return "get " + storage::quote_name(item.remote); };  // for errors only
    // About to wait for the server: what arrived meanwhile may go to be published now
    // (get_receiver's about_to_wait says when), not only with the next 64 files.
    if (in_begin_ == in_end_) about_to_wait();
    const Frame reply = co_await co_read_frame();
    if (reply.type == MsgType::kError) {
      throw_if_closing(reply);
      r.error = error_from_reply(reply, {});
      report(std::move(r), std::nullopt, std::nullopt);
      continue;
    }
    if (reply.type != MsgType::kFile) fail_from_reply(reply, context());
    if (reply.size <= kInMemoryFile) {
      // Small: verified here, kept in memory; the publishing thread writes it (get_receiver).
      ReceivedBody body;
      body.data.reserve(reply.size);
      hash::Sha256 sha;
      co_await co_read_body(reply.size, [&](std::span<const std::uint8_t> data) {
        sha.update(data);
        body.data.insert(body.data.end(), data.begin(), data.end());
        if (b.on_bytes) b.on_bytes(data.size());
      });
      if (sha.finish() != reply.digest) {
        r.error = integrity_failure(item.remote, item.local);
        report(std::move(r), std::nullopt, std::nullopt);
        continue;
      }
      body.executable = (reply.flags & protocol::kFlagExecutable) != 0;
      body.mtime_ns = mtime_of(reply);
      r.result = {reply.size, reply.digest, item.local, body.executable};
      report(std::move(r), std::nullopt, std::move(body));
      continue;
    }
    catch_up();
    // A local failure does not stop the batch: the body is still read (and dropped) so the
    // next reply is found where it should be.
    std::optional<StagedFile> staged;
    try {
      staged.emplace(item.local);
    } catch (const std::system_error& e) {
      r.error = Error(Failure::kLocalIo, e.what());
    }
    // Without a staging file, a preset write error makes co_receive_file read and drop the
    // body (r.error already says why).
    std::error_code write_ec = r.error ? std::make_error_code(std::errc::bad_file_descriptor) : std::error_code{};
    const auto digest =
        co_await co_receive_file(reply.size, staged ? staged->fd() : -1, /*keep_going=*/true, write_ec, b.on_bytes);
    if (!r.error && write_ec) {
      r.error = commit_failure(item.local, write_ec);
      staged.reset();
    }
    if (!r.error) {
      const bool executable = (reply.flags & protocol::kFlagExecutable) != 0;
      if (digest != reply.digest) {
        r.error = integrity_failure(item.remote, item.local);
      } else if (auto ec = staged->seal(mtime_of(reply), executable)) {
        r.error = commit_failure(item.local, ec);
      } else {
        r.result = {reply.size, digest, item.local, executable};
        report(std::move(r), std::move(staged), std::nullopt);
        continue;
      }
    }
    report(std::move(r), std::nullopt, std::nullopt);
  }
}

void Client::put_many(const std::vector<BatchItem>& items, const BatchOptions& opts,
                      const std::function<void(const BatchResult&)>& on_result,
                      const std::function<void(std::uint64_t)>& on_bytes) {
  if (opts.connections > 1) return many_parallel(true, items, opts, on_result, on_bytes);
  many(true, items, opts, nullptr, on_result, on_bytes);
}

void Client::put_fed(BatchFeed& feed, const BatchOptions& opts, const std::function<void(const BatchResult&)>& on_result,
                     const std::function<void(std::uint64_t)>& on_bytes) {
  using namespace asio::experimental::awaitable_operators;
  Batch b(io_, nullptr, &feed, opts, nullptr, on_result, on_bytes);
  run_batch(b, batch_side(b, put_sender(b)) && batch_side(b, put_receiver(b)), "uploading");
}

void Client::get_many(const std::vector<BatchItem>& items, const BatchOptions& opts,
                      const std::function<void(const BatchResult&)>& on_result,
                      const std::function<void(std::uint64_t)>& on_bytes) {
  if (opts.connections > 1) return many_parallel(false, items, opts, on_result, on_bytes);
  many(false, items, opts, nullptr, on_result, on_bytes);
}

void Client::many(bool upload, const std::vector<BatchItem>& items, const BatchOptions& opts, BatchQueue* queue,
                  const std::function<void(const BatchResult&)>& on_result,
                  const std::function<void(std::uint64_t)>& on_bytes) {
  using namespace asio::experimental::awaitable_operators;
  Batch b(io_, &items, nullptr, opts, queue, on_result, on_bytes);
  if (upload) {
    run_batch(b, batch_side(b, put_sender(b)) && batch_side(b, put_receiver(b)), "uploading");
  } else {
    run_batch(b, batch_side(b, get_sender(b)) && batch_side(b, get_receiver(b)), "downloading");
  }
}

void Client::many_parallel(bool upload, const std::vector<BatchItem>& items, const BatchOptions& opts,
                           const std::function<void(const BatchResult&)>& on_result,
                           const std::function<void(std::uint64_t)>& on_bytes) {
  // No more connections than the shortest runs could keep busy: a connection costs a
  // connect (and TLS handshake) that a small folder would wait for. One (or no item): the
  // plain batch.
  const std::size_t runs = (items.size() + BatchQueue::kShortestRun - 1) / BatchQueue::kShortestRun;
  const unsigned n = static_cast<unsigned>(std::min<std::size_t>(opts.connections, runs));
  if (n <= 1) return many(upload, items, opts, nullptr, on_result, on_bytes);
  BatchQueue queue(items.size(), n);
  std::mutex mu;  // one callback at a time
  std::exception_ptr failure;
  const auto fail = [&](std::exception_ptr e) {
    queue.stop();
    const std::lock_guard lock(mu);
    if (!failure) failure = std::move(e);
  };
  // After on_result threw, nothing more is reported (its contract). After a connection
  // failed, the others still report what they had in flight: those files did complete.
  bool callback_threw = false;
  const std::function<void(const BatchResult&)> result = [&](const BatchResult& r) {
    const std::lock_guard lock(mu);
    if (callback_threw) return;
    try {
      on_result(r);
    } catch (...) {
      callback_threw = true;
      queue.stop();  // at once: this connection's batch ends only when it next looks
      throw;
    }
  };
  std::function<void(std::uint64_t)> bytes;
  if (on_bytes) {
    bytes = [&](std::uint64_t k) {
      const std::lock_guard lock(mu);
      on_bytes(k);
    };
  }
  const auto run_one = [&](Client& c) {
    try {
      c.many(upload, items, opts, &queue, result, bytes);
    } catch (...) {
      fail(std::current_exception());
    }
  };
  std::vector<std::thread> threads;
  try {
    threads.reserve(n - 1);
    for (unsigned k = 1; k < n; ++k) {
      threads.emplace_back([this, &run_one, &fail] {
        std::optional<Client> more;
        try {
          // The same server, token, TLS trust (its pin was checked by this connection) and
          // timeout. A server over --max-per-client refuses the connection with its first
          // message, which the client reads only with an answer: the ping finds out before
          // this connection takes any item.
          more.emplace(connect_.address, connect_.token, io_timeout_, connect_.tls);
          more->ping();
        } catch (const Error& e) {
          // Turned away (ERROR unavailable: kRejected) or not reachable: the others carry
          // its share. Anything else -- a certificate that is not the one this connection
          // trusted, a token refused -- is the batch's failure.
          if (e.kind() != Failure::kConnection && e.kind() != Failure::kRejected) fail(std::current_exception());
          return;
        } catch (const std::system_error&) {
          return;  // no descriptor (or memory) for another socket: done without
        } catch (...) {
          fail(std::current_exception());
          return;
        }
        run_one(*more);
      });
    }
  } catch (const std::system_error&) {
    // A thread that could not be started: the ones that were, and this one, do the work.
  }
  run_one(*this);
  for (auto& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
}

// ---------------------------------------------------------------- parallel streams

namespace {

// Files are cut into ranges of one chunk (1 MiB): the unit each side verifies and records,
// so an interrupted transfer loses at most the range each connection was in the middle of
// (a resume sends everything else only once). Files over 256 GiB get larger ranges, powers
// of two up to 64 MiB, so that a download's resume bitmap stays within its 32 KiB.
constexpr std::uint64_t kMaxRangeBytes = 64ull << 20;
constexpr std::uint64_t kMaxRecordedRanges = 32 * 1024 * 8;
std::uint64_t range_bytes_for(std::uint64_t size) {
  std::uint64_t range = protocol::kChunkSize;
  while (range < kMaxRangeBytes && (size + range - 1) / range > kMaxRecordedRanges) range *= 2;
  return range;
}
// Bytes each connection keeps in flight (at least two ranges): the next ranges are asked
// for (or sent) before the current one is answered, so the link never idles for a round
// trip between ranges. 4 MiB covers one stream's 400 Mbit/s at 80 ms round trip. No more:
// what a connection has taken, it must finish, and at the end of a transfer the slowest
// connection's queue is the tail everyone waits for (8 MiB measured no faster on a lossy
// link under reno; docs/benchmarks.md).
constexpr std::uint64_t kInFlightBytes = 4ull << 20;

// A connection kept waiting while the client reads a large file for its SHA-256 (minutes
// for hundreds of GiB) would pass the server's --idle-timeout: it is pinged this often.
constexpr auto kKeepAlive = std::chrono::seconds(30);
// How fast a server is assumed to hash a file it holds at least (a put -P commit reads the
// whole staging file before it answers): the client waits that long beyond its timeout.
constexpr std::uint64_t kSlowestHashBytesPerSecond = 50'000'000;

}  // namespace

// What the threads of one parallel transfer share.
struct Client::Parallel {
  Parallel(std::uint64_t size_in, const ProgressFn& progress_in)
      : size(size_in),
        range(range_bytes_for(size_in)),
        ranges((size_in + range - 1) / range),
        in_flight(static_cast<std::size_t>(std::max<std::uint64_t>(2, kInFlightBytes / range))),
        progress(progress_in) {}

  // The next range to move, or nullopt when all are handed out or the transfer failed.
  // Ranges a resumed download holds already are skipped.
  std::optional<std::uint64_t> take() {
    for (;;) {
      if (failed.load()) return std::nullopt;
      const auto i = next.fetch_add(1);
      if (i >= ranges) return std::nullopt;
      if (i < held.size() && held[i]) continue;
      return i;
    }
  }
  // A range arrived whole (get): recorded for a later resume.
  void range_done(std::uint64_t i) {
    if (!on_range_done) return;
    const std::lock_guard lock(mu);
    on_range_done(i);
  }
  std::uint64_t offset(std::uint64_t i) const { return i * range; }
  std::uint64_t length(std::uint64_t i) const { return std::min(range, size - offset(i)); }

  // Bytes moved; the callback is called under the lock, so it sees one caller at a time
  // and a `done` that only grows.
  void add_bytes(std::uint64_t n) {
    const std::lock_guard lock(mu);
    done += n;
    if (progress) progress(done, size);
  }
  // Keeps the first failure; the other threads stop taking ranges.
  void fail(std::exception_ptr e) {
    const std::lock_guard lock(mu);
    if (!error) error = std::move(e);
    failed = true;
  }
  void rethrow_failure() {
    const std::lock_guard lock(mu);
    if (error) std::rethrow_exception(error);
  }

  const std::uint64_t size;
  const std::uint64_t range;      // bytes per range (the last one may be shorter)
  const std::uint64_t ranges;
  const std::size_t in_flight;    // requests each connection keeps outstanding
  const ProgressFn& progress;
  std::string context;        // "put NAME" / "get NAME", for messages
  std::string name;           // get: the remote name; put: the upload's id
  protocol::Digest digest{};  // the whole file's SHA-256 (get: what STAT said)
  int fd = -1;                // put: the source; get: the staging file
  std::filesystem::path local;

  std::vector<bool> held;  // resumed: ranges the receiver holds already (read-only once threads run)
  std::function<void(std::uint64_t)> on_range_done;  // called under mu

  std::atomic<std::uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;  // guards error, done and calls of progress
  std::exception_ptr error;
  std::uint64_t done = 0;
};

void Client::run_parallel(Parallel& p, unsigned n, const std::function<void(Client&)>& first,
                          const std::function<void(Client&)>& extra) {
  std::vector<std::thread> threads;
  try {
    threads.reserve(n - 1);
    for (unsigned k = 1; k < n; ++k) {
      threads.emplace_back([this, &p, &extra] {
        try {
          // The same server, token, TLS trust (its pin was checked by this connection) and
          // timeout as this connection.
          Client more(connect_.address, connect_.token, io_timeout_, connect_.tls);
          extra(more);
        } catch (...) {
          p.fail(std::current_exception());
        }
      });
    }
    first(*this);
  } catch (...) {
    // Also a thread that could not be started: the ones that were are still joined below.
    p.fail(std::current_exception());
  }
  for (auto& t : threads) t.join();
  p.rethrow_failure();
}

asio::awaitable<void> Client::co_send_with_body(const Frame& f, std::span<const std::uint8_t> body) {
  co_await co_send(f, out_);
  co_await co_write(body);
}

void Client::get_ranges(Parallel& p, std::deque<std::uint64_t> sent, std::optional<Frame> header) {
  const auto top_up = [&](std::size_t want) {
    while (sent.size() < want) {
      const auto i = p.take();
      if (!i) return;
      Frame req;
      req.type = MsgType::kGetRange;
      req.name = p.name;
      req.mtime_ns = static_cast<std::int64_t>(p.offset(*i));
      req.size = p.length(*i);
      req.digest = p.digest;
      send(req);
      sent.push_back(*i);
    }
  };
  top_up(p.in_flight);
  // Once the transfer failed elsewhere, no new range is asked for, but the answers to those
  // asked for are still read: this connection stays in step.
  while (!sent.empty()) {
    const std::uint64_t i = sent.front();
    sent.pop_front();
    const Frame reply = header ? std::move(*std::exchange(header, std::nullopt)) : read_frame();
    if (reply.type != MsgType::kRange) fail_from_reply(reply, p.context);
    if (reply.mtime_ns != static_cast<std::int64_t>(p.offset(i)) || reply.size != p.length(i) ||
        reply.digest != p.digest) {
      throw Error(Failure::kProtocol, address_ + " sent a range that was not asked for");
    }
    top_up(p.in_flight - 1);  // asked for before this body is read: the server has it at once
    std::uint64_t pos = p.offset(i);
    run(co_read_body(reply.size,
                     [&](std::span<const std::uint8_t> data) {
                       if (auto ec = storage::pwrite_all(p.fd, data, pos)) {
                         throw commit_failure(p.local, ec);
                       }
                       pos += data.size();
                       p.add_bytes(data.size());
                     }),
        "receiving a file");
    p.range_done(i);
  }
}

void Client::put_ranges(Parallel& p) {
  struct Sent {
    std::uint64_t index;
    bool again;  // sent a second time, after the server found it damaged
  };
  std::deque<Sent> sent;
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(std::min(p.range, p.size)));
  const auto send_range = [&](std::uint64_t i, bool again) {
    // Read, hashed and sent from memory: the range's SHA-256 goes in its header.
    const auto body = std::span(buf.data(), static_cast<std::size_t>(p.length(i)));
    if (auto e = read_chunk(p.fd, p.local, body, p.offset(i))) throw std::move(*e);
    Frame req;
    req.type = MsgType::kPutRange;
    req.name = p.name;
    req.mtime_ns = static_cast<std::int64_t>(p.offset(i));
    req.size = body.size();
    req.digest = hash::sha256(body);
    run(co_send_with_body(req, body), "sending");
    if (!again) p.add_bytes(body.size());  // a range sent again was counted the first time
    sent.push_back({i, again});
  };
  const auto top_up = [&] {
    while (sent.size() < p.in_flight) {
      const auto i = p.take();
      if (!i) return;
      send_range(*i, false);
    }
  };
  top_up();
  while (!sent.empty()) {
    const Sent s = sent.front();
    sent.pop_front();
    const Frame reply = read_frame();
    if (reply.type == MsgType::kError && reply.status == Status::kIntegrity) {
      // Damaged on the way (or the file changed): once more, then the whole put fails.
      if (s.again) {
        throw Error(Failure::kIntegrity, printable(reply.name) + " (sent twice; did " + p.local.string() +
                                             " change while it was being sent? try again)");
      }
      if (!p.failed.load()) send_range(s.index, true);
      continue;
    }
    if (reply.type != MsgType::kDone) fail_from_reply(reply, p.context);
    if (reply.mtime_ns != static_cast<std::int64_t>(p.offset(s.index)) || reply.size != p.length(s.index)) {
      throw Error(Failure::kProtocol, address_ + " acknowledged a range that was not sent");
    }
    top_up();
  }
}

namespace {

// What a resumed upload's OPENED name says after the id (docs/protocol.md): a sample of the
// bytes the server holds, " sample=OFF+LEN:SHA256", then " BEGIN-END" per interval it holds.
struct Kept {
  std::uint64_t sample_offset = 0;
  std::uint64_t sample_length = 0;  // 0: no sample (nothing held)
  protocol::Digest sample{};
  std::vector<bool> held;  // the ranges lying wholly inside an interval
};

bool parse_number(std::string_view text, std::uint64_t& out) {
  return !text.empty() && std::from_chars(text.data(), text.data() + text.size(), out).ptr == text.data() + text.size();
}

// False when a part is not what the protocol says (or lies outside the file).
bool parse_kept(std::string_view text, std::uint64_t size, std::uint64_t range, Kept& out) {
  const std::uint64_t ranges = (size + range - 1) / range;
  out.held.assign(ranges, false);
  while (!text.empty()) {
    if (text.front() != ' ') return false;
    text.remove_prefix(1);
    const auto token = text.substr(0, text.find(' '));
    text.remove_prefix(token.size());
    if (token.starts_with("sample=")) {
      const auto plus = token.find('+');
      const auto colon = token.find(':');
      if (plus == std::string_view::npos || colon == std::string_view::npos || colon < plus ||
          !parse_number(token.substr(7, plus - 7), out.sample_offset) ||
          !parse_number(token.substr(plus + 1, colon - plus - 1), out.sample_length) ||
          !hash::from_hex(token.substr(colon + 1), out.sample) || out.sample_length == 0 ||
          out.sample_length > protocol::kChunkSize || out.sample_offset > size ||
          out.sample_length > size - out.sample_offset) {
        return false;
      }
      continue;
    }
    const auto dash = token.find('-');
    std::uint64_t b = 0, e = 0;
    if (dash == std::string_view::npos || !parse_number(token.substr(0, dash), b) ||
        !parse_number(token.substr(dash + 1), e) || b >= e || e > size) {
      return false;
    }
    for (std::uint64_t i = (b + range - 1) / range; i < ranges && std::min((i + 1) * range, size) <= e; ++i) {
      out.held[i] = true;
    }
  }
  return true;
}

}  // namespace

Result Client::put_parallel(const std::filesystem::path& local, const std::string& remote, unsigned streams,
                            const ProgressFn& progress, const TransferOptions& opts) {
  check_remote_name(remote);
  const Source src = open_source(local);
  if (streams <= 1 || src.size <= kWholeFileBytes) return put(local, remote, progress, opts);
  Parallel p(src.size, progress);
  p.context = "put " + storage::quote_name(remote);
  p.fd = src.fd.get();
  p.local = local;
  std::vector<std::uint8_t> buf(protocol::kChunkSize);
  Frame open;
  open.type = MsgType::kPutOpen;
  open.flags = protocol::kFlagHasMtime | (src.executable ? protocol::kFlagExecutable : 0);
  open.size = src.size;
  open.mtime_ns = src.mtime_ns;
  open.name = remote;
  Frame opened;
  const auto exchange = [&] {
    send(open);
    opened = read_frame();
    if (opened.type != MsgType::kOpened) fail_from_reply(opened, p.context);
  };
  std::optional<protocol::Digest> whole;  // the file's SHA-256, once this client has read it all
  const auto hash_source = [&] {
    auto last = std::chrono::steady_clock::now();
    return hash_file(src.fd.get(), src.size, local, buf, [&] {
      if (std::chrono::steady_clock::now() - last < kKeepAlive) return;
      ping();
      last = std::chrono::steady_clock::now();
    });
  };
  if (opts.resume) {
    // First ask whether the server keeps an upload of this very file (its source id, as a
    // resumable PUT's): then it knows the whole file's SHA-256 from the attempt that began
    // it, and neither the file nor the ranges the server holds are read again.
    open.flags |= protocol::kFlagResume;
    open.digest = source_id(src, local);
    exchange();
    if (opened.name.empty()) {  // nothing kept: hash, and open one the next attempt can continue
      whole = hash_source();
      open.name = remote + std::string(1, '\0') + hash::to_hex(*whole);
      exchange();
    }
  } else {
    // The whole file's SHA-256 first (the server checks the file against it before
    // publishing it); each range is then read once more, by the thread that sends it.
    whole = hash_source();
    open.digest = *whole;
    exchange();
  }
  // A resumed upload's OPENED lists what the server holds after the id. Those ranges are
  // skipped when they still come from this file: certain when the SHA-256 the upload began
  // with is the file's now, else when the sample the server sends hashes the same here (a
  // file edited in place with its size and mtime restored fails this).
  const auto take_kept = [&](bool check_sample) {
    const auto space = opened.name.find(' ');
    if ((opened.flags & protocol::kFlagResume) == 0 || space == std::string::npos) return true;
    Kept kept;
    if (!parse_kept(std::string_view(opened.name).substr(space), src.size, p.range, kept)) {
      throw Error(Failure::kProtocol, address_ + " described the bytes it holds in a way this client cannot read");
    }
    if (check_sample) {
      std::vector<std::uint8_t> sample(static_cast<std::size_t>(kept.sample_length));
      if (auto e = read_chunk(src.fd.get(), local, sample, kept.sample_offset)) throw std::move(*e);
      if (kept.sample_length == 0 || hash::sha256(sample) != kept.sample) return false;
    }
    p.held = std::move(kept.held);
    return true;
  };
  if (!take_kept(/*check_sample=*/!whole)) {
    // Changed: start over from the file as it is now. The open with its new SHA-256 makes
    // the server drop what it kept (and this connection's hold on it).
    whole = hash_source();
    open.name = remote + std::string(1, '\0') + hash::to_hex(*whole);
    exchange();
    take_kept(/*check_sample=*/false);
  }
  const bool resumed = (opened.flags & protocol::kFlagResume) != 0;
  p.name = opened.name.substr(0, opened.name.find(' '));
  if (resumed) {
    if (whole && opened.digest != *whole) {
      throw Error(Failure::kProtocol, address_ + " offered to continue an upload of another file");
    }
    p.digest = opened.digest;  // what this client announced when the upload began
  } else if (whole && p.name.size() == opened.name.size()) {
    p.digest = *whole;
  } else {
    throw Error(Failure::kProtocol, address_ + " answered PUT_OPEN with something this client did not ask for");
  }
  for (std::uint64_t i = 0; i < p.held.size(); ++i) {
    if (p.held[i]) p.done += p.length(i);  // progress starts where the resume does
  }
  const std::uint64_t skipped = p.done;
  // As many connections as asked for, as the server allows, and as there are ranges to send.
  const std::uint64_t to_send = p.ranges - static_cast<std::uint64_t>(std::count(p.held.begin(), p.held.end(), true));
  const auto n = static_cast<unsigned>(std::max<std::uint64_t>(
      1, std::min<std::uint64_t>({streams, std::max<std::uint64_t>(opened.size, 1), to_send})));
  if (progress) progress(p.done, src.size);
  const auto work = [&p](Client& c) { c.put_ranges(p); };
  if (to_send > 0) run_parallel(p, n, work, work);

  Frame commit;
  commit.type = MsgType::kPutCommit;
  commit.name = p.name;
  send(commit);
  // The server reads the whole file to hash it before it answers.
  const auto saved_timeout = io_timeout_;
  io_timeout_ += std::chrono::milliseconds(src.size / (kSlowestHashBytesPerSecond / 1000));
  Frame done;
  try {
    done = read_frame();
  } catch (...) {
    io_timeout_ = saved_timeout;
    throw;
  }
  io_timeout_ = saved_timeout;
  if (done.type != MsgType::kDone) {
    if (done.status == Status::kIntegrity && skipped > 0) {
      // The bytes the server kept and the ones read now do not make the file the upload
      // began with: it changed in place (size and mtime kept) outside the sample. The
      // server dropped the upload; a new attempt starts from the file as it is now.
      throw Error(Failure::kIntegrity, local.string() + " changed since the interrupted upload of " +
                                           storage::quote_name(remote) +
                                           " began (its size and mtime did not); the server dropped that upload, "
                                           "run the command again to send the file anew");
    }
    if (done.status == Status::kIntegrity) {
      throw Error(Failure::kIntegrity, printable(done.name) + " (did " + local.string() +
                                           " change while it was being sent? try again)");
    }
    fail_from_reply(done, p.context);
  }
  if (done.digest != p.digest || done.size != src.size) {
    throw Error(Failure::kProtocol, address_ + " acknowledged a different file than the one sent");
  }
  return {src.size, p.digest, local, src.executable};
}

Result Client::get_parallel(const std::string& remote, const std::filesystem::path& local, unsigned streams,
                            const ProgressFn& progress, const TransferOptions& opts) {
  check_remote_name(remote);
  if (streams <= 1 || is_stdout(local)) return get(remote, local, progress, opts);
  // The version to fetch: every range is asked for with its SHA-256, so a file replaced on
  // the server meanwhile is refused rather than mixed into this one.
  const Entry info = stat(remote);
  if (info.folder || !info.digest || info.size <= kWholeFileBytes) return get(remote, local, progress, opts);
  const std::filesystem::path target = download_target(remote, local);
  std::optional<StagedFile> staged = stage_download(target, opts);
  // What an interrupted download of this very version left: its ranges (get -P), or its
  // verified prefix (get), which covers the ranges that lie wholly inside it.
  std::vector<bool> held;
  const storage::PartialRecord* found = staged->is_resumable() ? staged->found() : nullptr;
  const std::uint64_t range = range_bytes_for(info.size);
  const bool same_version = found != nullptr && found->name == remote && found->size == info.size &&
                            found->digest == *info.digest && (found->range_size == range || found->range_size == 0);
  const std::uint64_t ranges = (info.size + range - 1) / range;
  storage::PartialRecord record;
  if (same_version) {
    record = *found;
    held.assign(ranges, false);
    for (std::uint64_t i = 0; i < ranges; ++i) {
      held[i] = found->range_size == range ? storage::has_range(*found, i)
                                           : std::min((i + 1) * range, info.size) <= found->good.bytes;
      if (held[i]) storage::mark_range(record, i);
    }
  } else {
    record = storage::new_record(remote, info.size, info.mtime_ns, info.executable, *info.digest);
  }
  record.range_size = static_cast<std::uint32_t>(range);
  record.good = record.before = *hash::Sha256().state();  // this kind is described by its ranges
  record.updated_ns = storage::wall_clock_ns();
  if (staged->is_resumable()) {
    // Rewrites the record as one of ranges; the data is kept when it is the same version.
    const auto ec = same_version ? staged->keep_found(std::move(record)) : staged->start(std::move(record));
    if (ec) throw Error(Failure::kLocalIo, "cannot write " + staged->staging_path() + ": " + ec.message());
  }
  // The whole size first: the ranges land anywhere in it, and a full disk shows now.
  if (auto ec = storage::preallocate(staged->fd(), info.size)) {
    throw commit_failure(target, ec);
  }
  Parallel p(info.size, progress);
  p.context = "get " + storage::quote_name(remote);
  p.name = remote;
  p.digest = *info.digest;
  p.fd = staged->fd();
  p.local = target;
  p.held = std::move(held);
  std::uint64_t skipped = 0;
  for (std::uint64_t i = 0; i < p.held.size(); ++i) {
    if (p.held[i]) skipped += p.length(i);
  }
  p.done = skipped;  // progress starts where the resume does
  if (staged->is_resumable()) p.on_range_done = [&staged](std::uint64_t i) { staged->range_done(i); };

  if (progress) progress(p.done, info.size);
  if (const auto first_index = p.take()) {  // else a resume found every range on disk
    // The first range on this connection alone: its answer says how many connections the
    // server wants (and a refusal ends here, with this connection in step).
    std::deque<std::uint64_t> sent{*first_index};
    Frame first;
    first.type = MsgType::kGetRange;
    first.name = remote;
    first.mtime_ns = static_cast<std::int64_t>(p.offset(*first_index));
    first.size = p.length(*first_index);
    first.digest = p.digest;
    send(first);
    Frame header = read_frame();
    if (header.type != MsgType::kRange) fail_from_reply(header, p.context);
    unsigned cap = streams;
    if (!header.name.empty() && header.name.size() <= 3 &&
        header.name.find_first_not_of("0123456789") == std::string::npos) {
      cap = static_cast<unsigned>(std::max(1ul, std::stoul(header.name)));
    }
    const auto n = static_cast<unsigned>(std::min<std::uint64_t>({streams, cap, p.ranges}));
    run_parallel(
        p, n, [&](Client& c) { c.get_ranges(p, std::move(sent), std::move(header)); },
        [&p](Client& c) { c.get_ranges(p, {}, std::nullopt); });
  }

  // Every range arrived; the file as it lies on disk must be the one STAT described.
  storage::UniqueFd check(::open(staged->staging_path().c_str(), O_RDONLY | O_CLOEXEC));
  if (!check) {
    throw Error(Failure::kLocalIo, "cannot read " + staged->staging_path() + ": " +
                                       storage::last_error().message());
  }
  std::vector<std::uint8_t> buf(protocol::kChunkSize);
  const auto digest = hash_file(check.get(), info.size, staged->staging_path(), buf);
  if (digest != p.digest) {
    staged->discard();  // what it holds is not the file: the next attempt starts over
    throw integrity_failure(remote, target);
  }
  if (auto ec = staged->commit(info.mtime_ns, info.executable)) throw commit_failure(target, ec);
  return {info.size, digest, target, info.executable};
}

// ---------------------------------------------------------------- listing and file commands

namespace {

Entry entry_from(Frame&& f) {
  Entry e;
  e.name = std::move(f.name);
  e.size = f.size;
  e.mtime_ns = f.mtime_ns;
  e.folder = (f.flags & protocol::kFlagFolder) != 0;
  e.executable = (f.flags & protocol::kFlagExecutable) != 0;
  if ((f.flags & protocol::kFlagDigest) != 0) e.digest = f.digest;
  e.described = (f.flags & protocol::kFlagHasMtime) != 0;
  return e;
}

}  // namespace

std::uint64_t Client::list(const std::string& folder, const std::function<void(const Entry&)>& on_entry,
                           const ListOptions& opts) {
  check_remote_name(folder);
  Frame req;
  req.type = MsgType::kList;
  req.name = folder;
  if (opts.digests) req.flags |= protocol::kFlagDigest;
  if (opts.digests && opts.known_digests_only) req.flags |= protocol::kFlagKnownDigestsOnly;
  if (opts.folders) req.flags |= protocol::kFlagFolder;
  if (opts.names_only) req.flags |= protocol::kFlagNamesOnly;
  send(req);
  std::uint64_t count = 0;
  for (;;) {
    Frame f = read_frame();
    if (f.type == MsgType::kListEnd) return count;
    if (f.type != MsgType::kEntry) fail_from_reply(f, "ls");
    ++count;
    on_entry(entry_from(std::move(f)));
  }
}

std::vector<Client::Partial> Client::list_partial() {
  Frame req;
  req.type = MsgType::kList;
  req.flags = protocol::kFlagPartial;
  send(req);
  std::vector<Partial> out;
  for (;;) {
    const Frame f = read_frame();
    if (f.type == MsgType::kListEnd) return out;
    if (f.type != MsgType::kEntry) fail_from_reply(f, "ls --partial");
    if ((f.flags & protocol::kFlagPartial) == 0) {
      throw Error(Failure::kProtocol, address_ + " does not list partial uploads (an older server?)");
    }
    Partial p;
    p.name = f.name;
    p.size = f.size;
    for (std::size_t i = 0; i < 8; ++i) p.received = (p.received << 8) | f.digest[i];
    p.updated_ns = f.mtime_ns;
    out.push_back(std::move(p));
  }
}

Frame Client::request(MsgType type, std::string name, MsgType expected, const std::string& context) {
  check_remote_name(name);
  Frame req;
  req.type = type;
  req.name = std::move(name);
  send(req);
  Frame reply = read_frame();
  if (reply.type != expected) fail_from_reply(reply, context);
  return reply;
}

Entry Client::stat(const std::string& name) {
  Frame reply = request(MsgType::kStat, name, MsgType::kEntry, "stat " + storage::quote_name(name));
  reply.name = name;
  return entry_from(std::move(reply));
}

void Client::stat_many(const std::vector<std::string>& names,
                       const std::function<void(std::size_t, std::optional<Entry>)>& on_result) {
  for (const auto& name : names) check_remote_name(name);  // before anything is in flight
  // A window small enough in bytes that the requests and answers in flight always fit in the
  // socket buffers (32 KiB of requests, their answers a little more) while this side writes
  // and does not read; deep enough in number that the server always has requests to answer
  // (with 32, the first --skip-identical after uploading 10,000 small files, which STATs
  // them all, took twice as long).
  constexpr std::size_t kWindow = 256;
  constexpr std::size_t kWindowBytes = 32 << 10;
  std::vector<std::uint8_t> pending;
  std::vector<std::size_t> sizes(names.size());  // each request's bytes on the wire
  std::size_t in_flight = 0;                     // bytes of the requests unanswered
  std::size_t sent = 0;
  std::size_t got = 0;
  // Leaving with requests unanswered (an error, a throwing on_result) would leave their
  // answers to be taken for those of the next request: the connection is closed instead.
  struct CloseUnlessDone {
    Client& c;
    const std::size_t& sent;
    const std::size_t& got;
    ~CloseUnlessDone() {
      std::error_code ignored;
      if (sent > got) c.socket_.close(ignored);
    }
  } guard{*this, sent, got};
  while (got < names.size()) {
    if (sent < names.size() && sent - got <= kWindow / 2 && in_flight <= kWindowBytes / 2) {
      pending.clear();
      while (sent < names.size() && sent - got < kWindow && in_flight < kWindowBytes) {
        Frame req;
        req.type = MsgType::kStat;
        req.name = names[sent];
        const std::size_t before = pending.size();
        protocol::encode(req, pending);
        sizes[sent] = pending.size() - before;
        in_flight += sizes[sent++];
      }
      run(co_write(pending), "sending");
    }
    Frame reply = read_frame();
    in_flight -= sizes[got];
    const std::size_t i = got++;
    if (reply.type == MsgType::kEntry) {
      reply.name = names[i];
      on_result(i, entry_from(std::move(reply)));
      continue;
    }
    if (reply.type == MsgType::kError) throw_if_closing(reply);
    const Error e = error_from_reply(reply, "stat " + storage::quote_name(names[i]));
    if (!e.refused()) throw e;  // also any reply but ENTRY and ERROR: kProtocol
    on_result(i, std::nullopt);
  }
}

void Client::remove(const std::string& name) {
  request(MsgType::kRemove, name, MsgType::kOk, "rm " + storage::quote_name(name));
}

std::pair<std::string, bool> Client::move(const std::string& from, const std::string& to) {
  const Frame reply =
      request(MsgType::kMove, protocol::join_move(from, to), MsgType::kOk, "mv " + storage::quote_name(from));
  return {reply.name.empty() ? to : printable(reply.name), reply.size != 0};
}

void Client::make_folder(const std::string& name) {
  request(MsgType::kMkdir, name, MsgType::kOk, "mkdir " + storage::quote_name(name));
}

void Client::ping() { request(MsgType::kPing, {}, MsgType::kPong, "ping"); }

}  // namespace ftx::client
