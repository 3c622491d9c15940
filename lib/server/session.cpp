#include "server/session.hpp"

#include <spdlog/spdlog.h>


#include <algorithm>
#include <cerrno>
#include <asio/experimental/as_tuple.hpp>

#include "hash/sha256.hpp"
#include "server/server.hpp"
#include "storage/names.hpp"

namespace ftx::server {
namespace {

using protocol::Frame;
using protocol::MsgType;
using protocol::Status;

// Socket operations report normal endings (EOF, cancellation, reset) as error codes rather
// than exceptions: they are how every connection ends, not faults.
constexpr auto kTuple = asio::experimental::as_tuple(asio::use_awaitable);

// Room for the largest frame header plus name, so a whole request fits without growth.
constexpr std::size_t kInBufferSize = 8192;
static_assert(kInBufferSize >= protocol::kHeaderSize + protocol::kMaxNameBytes);

// Entries are batched into writes of about this size.
constexpr std::size_t kListBatchBytes = 64 * 1024;

bool is_normal_close(const std::error_code& ec) {
  return ec == asio::error::eof || ec == asio::error::operation_aborted || ec == asio::error::connection_reset ||
         ec == asio::error::broken_pipe || ec == asio::error::bad_descriptor ||
         ec == asio::ssl::error::stream_truncated;  // a TLS client that closed without close_notify
}

}  // namespace

Session::Session(Server& server, std::unique_ptr<Stream> stream)
    : server_(server),
      stream_(std::move(stream)),
      socket_(stream_->socket()),
      watchdog_(socket_.get_executor()),
      in_(kInBufferSize) {
  std::error_code ec;
  const auto ep = socket_.remote_endpoint(ec);
  client_address_ = ec ? std::string("unknown") : ep.address().to_string();
  peer_ = ec ? client_address_ : client_address_ + ":" + std::to_string(ep.port());
  authenticated_ = server_.options().token.empty();
  // Request/reply exchanges (kReady, small files) must not wait for Nagle's timer.
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
}

Session::~Session() { server_.remove_session(this); }

void Session::start() {
  auto self = shared_from_this();
  auto on_exit = [self](const std::exception_ptr& e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      spdlog::error("{} connection failed: {}", self->peer_, ex.what());
    }
  };
  asio::co_spawn(socket_.get_executor(), run(), on_exit);
  asio::co_spawn(socket_.get_executor(), watchdog(), on_exit);
}

void Session::arm(std::chrono::milliseconds timeout, const char* what) {
  arm_at(std::chrono::steady_clock::now() + timeout, what);
}

void Session::arm_at(std::chrono::steady_clock::time_point deadline, const char* what) {
  deadline_ = deadline;
  deadline_what_ = what;
  // The watchdog sleeps until the previous deadline; wake it when this one is earlier.
  if (deadline < watchdog_.expiry()) watchdog_.cancel();
}

asio::awaitable<void> Session::watchdog() {
  while (!done_) {
    watchdog_.expires_at(deadline_);
    co_await watchdog_.async_wait(kTuple);
    if (done_) break;
    if (deadline_ <= std::chrono::steady_clock::now()) {
      // Cancel rather than close, so that run() can still say why before it closes. If
      // that answer cannot be delivered either, the next deadline cancels it too.
      if (expired_ == nullptr) expired_ = deadline_what_;
      std::error_code ignored;
      socket_.cancel(ignored);
      arm(std::chrono::seconds(2), "closing");
    }
  }
}

void Session::shutdown() {
  asio::post(socket_.get_executor(), [self = shared_from_this()] {
    if (self->idle_) {
      std::error_code ignored;
      self->socket_.cancel(ignored);
    }
  });
}

std::vector<std::uint8_t>& Session::chunk() {
  if (chunk_.empty()) chunk_.resize(protocol::kChunkSize);
  return chunk_;
}

asio::awaitable<void> Session::run() {
  spdlog::debug("{} connected", peer_);
  arm(server_.options().header_timeout, "handshake");
  idle_ = true;  // nothing to finish yet: a stopping server may cancel the handshake
  auto hs_ec = co_await stream_->handshake();
  idle_ = false;
  if (!hs_ec && server_.stopping()) hs_ec = asio::error::operation_aborted;
  if (hs_ec) {
    // A plaintext client, an untrusted client certificate, a scanner: say so in the log;
    // the peer gets TLS's own alert.
    if (expired_ != nullptr) {
      spdlog::info("{} closed: {} timeout", peer_, expired_);
    } else if (hs_ec != asio::error::operation_aborted) {
      spdlog::warn("{} TLS handshake failed: {}", peer_, hs_ec.message());
    }
    done_ = true;
    watchdog_.cancel();
    std::error_code ignored;
    socket_.close(ignored);
    co_return;
  }
  if (const auto subject = stream_->peer_subject(); !subject.empty()) {
    spdlog::info("{} client certificate {}", peer_, subject);
  }
  for (;;) {
    if (server_.stopping()) break;
    std::error_code ec = co_await read_frame();
    if (ec) {
      if (expired_ != nullptr) {
        spdlog::info("{} closed: {} timeout", peer_, expired_);
        // Between requests there is nothing to answer; a request that stopped half-way
        // is told why.
        if (std::string_view(expired_) == "header") {
          co_await send_final_error(Status::kTimeout, "request not received within " +
                                                          std::to_string(server_.options().header_timeout.count()) +
                                                          " ms; closing the connection");
        }
      } else if (ec.category() == protocol::protocol_category()) {
        spdlog::warn("{} bad request: {}", peer_, ec.message());
        if (ec != protocol::errc::truncated) {
          const Status st = ec == protocol::errc::bad_version ? Status::kUnsupportedVersion : Status::kBadRequest;
          co_await send_final_error(st, ec.message() + "; closing the connection");
        }
      } else if (!is_normal_close(ec)) {
        spdlog::warn("{} connection error: {}", peer_, ec.message());
      }
      break;
    }
    const Frame req = std::move(decoder_.frame());
    const bool always_allowed =
        req.type == MsgType::kPing || req.type == MsgType::kHello || req.type == MsgType::kAuth;
    if (!authenticated_ && !always_allowed) {
      co_await refuse_auth("sent " + std::string(protocol::to_string(req.type)) + " without authenticating");
      break;
    }
    switch (req.type) {
      case MsgType::kPut: ec = co_await handle_put(req); break;
      case MsgType::kGet: ec = co_await handle_get(req); break;
      case MsgType::kList: ec = co_await handle_list(req); break;
      case MsgType::kHello: ec = co_await handle_hello(); break;
      case MsgType::kAuth: ec = co_await handle_auth(req); break;
      case MsgType::kPing: {
        Frame pong;
        pong.type = MsgType::kPong;
        ec = co_await send(pong);
        break;
      }
      default:
        spdlog::warn("{} sent a message of type {}, which only servers send", peer_, protocol::to_string(req.type));
        co_await send_final_error(Status::kBadRequest, "unexpected " + std::string(protocol::to_string(req.type)) +
                                                           " message from a client; closing the connection");
        ec = protocol::errc::unexpected_message;
    }
    if (ec) {
      if (expired_ != nullptr) spdlog::info("{} closed: {} timeout", peer_, expired_);
      break;
    }
  }
  done_ = true;
  watchdog_.cancel();
  std::error_code ignored;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
  spdlog::debug("{} disconnected", peer_);
}

asio::awaitable<std::error_code> Session::read_frame() {
  decoder_.reset();
  const auto& opts = server_.options();
  bool started = false;  // the header deadline runs from a request's first byte
  for (;;) {
    if (in_begin_ < in_end_) {
      const auto step = decoder_.put(std::span(in_.data() + in_begin_, in_end_ - in_begin_));
      in_begin_ += step.consumed;
      if (step.result == protocol::Decoder::Result::kFrame) co_return std::error_code{};
      if (step.result == protocol::Decoder::Result::kError) co_return decoder_.error();
    }
    // The decoder took every buffered byte and wants more.
    in_begin_ = in_end_ = 0;
    idle_ = decoder_.at_boundary();
    if (idle_) {
      // An idle connection keeps only its header buffer.
      chunk_ = {};
      if (out_.capacity() > kInBufferSize) out_ = {};
      arm(opts.idle_timeout, "idle");
    } else if (!started) {
      started = true;
      arm(opts.header_timeout, "header");
    }
    auto [ec, n] = co_await stream_->read_some(asio::buffer(in_));
    idle_ = false;
    if (ec) {
      if (ec == asio::error::eof && !decoder_.at_boundary()) co_return protocol::errc::truncated;
      co_return ec;
    }
    in_end_ = n;
  }
}

template <typename Sink>
asio::awaitable<std::error_code> Session::read_body(std::uint64_t n, Sink&& sink) {
  // Bytes that arrived together with the header belong to the body first.
  const std::size_t buffered = static_cast<std::size_t>(std::min<std::uint64_t>(n, in_end_ - in_begin_));
  if (buffered > 0) {
    sink(std::span<const std::uint8_t>(in_.data() + in_begin_, buffered));
    in_begin_ += buffered;
    n -= buffered;
  }
  if (n == 0) co_return std::error_code{};
  auto& buf = chunk();
  while (n > 0) {
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(n, buf.size()));
    // Fill a chunk before handing it on (fewer, larger disk writes), but re-arm the body
    // deadline on every arrival: the timeout is about progress, not about speed. Never
    // ask for more than the body's remaining bytes: what follows is the next message.
    std::size_t got = 0;
    while (got < want) {
      arm(server_.options().body_timeout, "body");
      auto [ec, k] = co_await stream_->read_some(asio::buffer(buf.data() + got, want - got));
      if (ec) co_return ec == asio::error::eof ? make_error_code(protocol::errc::truncated) : ec;
      got += k;
    }
    sink(std::span<const std::uint8_t>(buf.data(), got));
    n -= got;
  }
  co_return std::error_code{};
}

asio::awaitable<std::error_code> Session::send(const Frame& f) {
  out_.clear();
  protocol::encode(f, out_);
  co_return co_await write_all(out_);
}

asio::awaitable<std::error_code> Session::write_all(std::span<const std::uint8_t> data) {
  // write_some in a loop so that the send deadline measures progress: a slow reader is
  // fine, a reader that stopped reading is not.
  while (!data.empty()) {
    if (!closing_) arm(server_.options().body_timeout, "send");
    auto [ec, n] = co_await stream_->write_some(asio::buffer(data.data(), data.size()));
    if (ec) co_return ec;
    data = data.subspan(n);
  }
  co_return std::error_code{};
}

asio::awaitable<void> Session::send_final_error(Status st, std::string message) {
  closing_ = true;
  arm(std::chrono::seconds(2), "closing");
  co_await send_error(st, std::move(message));
}

asio::awaitable<std::error_code> Session::send_error(Status st, std::string message) {
  co_return co_await send(protocol::make_error(st, std::move(message)));
}

std::pair<Status, std::string> Session::describe(const std::error_code& ec, const std::string& name) {
  const std::string q = storage::quote_name(name);
  using storage::errc;
  if (ec == errc::bad_name || ec == errc::reserved_name) {
    return {Status::kBadName, "invalid name " + q + ": " + storage::explain_bad_name(name)};
  }
  if (ec == errc::digest_mismatch) {
    return {Status::kIntegrity, "data received for " + q + " does not match its SHA-256; nothing was stored"};
  }
  if (ec == errc::size_mismatch) return {Status::kBadRequest, "body size does not match the header"};
  if (ec == errc::not_durable) {
    return {Status::kStorage, q + " was stored, but the server could not sync its folder: it may not survive a crash"};
  }
  if (ec == errc::not_regular) return {Status::kConflict, q + " is not a regular file"};
  if (ec == errc::symlink) return {Status::kConflict, q + " runs through a symbolic link, which ftx never follows"};
  if (ec == std::errc::no_such_file_or_directory) return {Status::kNotFound, "no such file " + q};
  if (ec == std::errc::is_a_directory) return {Status::kConflict, q + " is a folder"};
  if (ec == std::errc::not_a_directory) return {Status::kConflict, "a parent of " + q + " is a file, not a folder"};
  if (ec == std::errc::no_space_on_device || ec == std::errc::file_too_large || ec.value() == EDQUOT) {
    return {Status::kNoSpace, "server ran out of space while storing " + q + "; nothing was stored"};
  }
  return {Status::kStorage, "server storage error on " + q + ": " + ec.message()};
}

void Session::log_transfer(std::string_view op, const std::string& name, std::uint64_t amount,
                           std::chrono::steady_clock::time_point start, std::string_view result) const {
  const auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("{} {} {} {}={} ms={:.1f} result={}", peer_, op, storage::quote_name(name),
               op == "ls" ? "entries" : "bytes", amount, ms, result);
}

std::optional<std::pair<Status, std::string>> Session::check_put_limits(const Frame& req) const {
  const auto& o = server_.options();
  const std::string q = storage::quote_name(req.name);
  if (o.read_only) return {{Status::kForbidden, "server is read-only; uploads are refused"}};
  if (req.size > o.max_file_size) {
    return {{Status::kTooLarge, q + " is " + std::to_string(req.size) + " bytes; this server takes at most " +
                                    std::to_string(o.max_file_size)}};
  }
  if (req.name.size() > o.max_name_bytes) {
    return {{Status::kBadName, "name is " + std::to_string(req.name.size()) + " bytes; this server takes at most " +
                                   std::to_string(o.max_name_bytes)}};
  }
  const auto depth = static_cast<std::size_t>(std::count(req.name.begin(), req.name.end(), '/'));
  if (depth > o.max_depth) {
    return {{Status::kBadName, q + " is " + std::to_string(depth) + " folders deep; this server allows " +
                                   std::to_string(o.max_depth)}};
  }
  std::uint64_t free = 0;
  if (!server_.storage().free_bytes(free) && (free < o.min_free_bytes || free - o.min_free_bytes < req.size)) {
    return {{Status::kNoSpace, "not enough free space on the server for " + q + " (" + std::to_string(req.size) +
                                   " bytes, " + std::to_string(free > o.min_free_bytes ? free - o.min_free_bytes : 0) +
                                   " available)"}};
  }
  return std::nullopt;
}

asio::awaitable<std::error_code> Session::handle_put(const Frame& req) {
  const auto start = std::chrono::steady_clock::now();
  if (auto refusal = check_put_limits(req)) {
    log_transfer("put", req.name, 0, start, protocol::to_string(refusal->first));
    co_return co_await send_error(refusal->first, std::move(refusal->second));
  }
  storage::Upload up;
  if (auto ec = server_.storage().begin_upload(req.name, req.size, up)) {
    auto [st, msg] = describe(ec, req.name);
    log_transfer("put", req.name, 0, start, protocol::to_string(st));
    co_return co_await send_error(st, std::move(msg));
  }
  Frame ready;
  ready.type = MsgType::kReady;
  if (auto ec = co_await send(ready)) {
    log_transfer("put", req.name, 0, start, "aborted: " + ec.message());
    co_return ec;
  }

  // A failed disk write does not end the exchange: the rest of the body is still read (and
  // dropped) so the connection stays in step and the client gets a proper error reply.
  std::error_code store_ec;
  const auto read_ec = co_await read_body(req.size, [&](std::span<const std::uint8_t> data) {
    if (!store_ec) store_ec = up.write(data);
  });
  if (read_ec) {
    log_transfer("put", req.name, up.written(), start, "aborted: " + read_ec.message());
    co_return read_ec;  // `up` removes the staging file
  }
  if (!store_ec) {
    const bool has_mtime = (req.flags & protocol::kFlagHasMtime) != 0;
    store_ec = up.commit(req.digest, has_mtime ? std::optional(req.mtime_ns) : std::nullopt);
  }
  if (store_ec) {
    auto [st, msg] = describe(store_ec, req.name);
    log_transfer("put", req.name, req.size, start, protocol::to_string(st));
    co_return co_await send_error(st, std::move(msg));
  }
  log_transfer("put", req.name, req.size, start, "ok");
  Frame done;
  done.type = MsgType::kDone;
  done.size = req.size;
  done.digest = req.digest;
  co_return co_await send(done);
}

asio::awaitable<std::error_code> Session::handle_get(const Frame& req) {
  const auto start = std::chrono::steady_clock::now();
  storage::ReadFile file;
  if (auto ec = server_.storage().open_file(req.name, file)) {
    auto [st, msg] = describe(ec, req.name);
    log_transfer("get", req.name, 0, start, protocol::to_string(st));
    co_return co_await send_error(st, std::move(msg));
  }
  // The header must carry the digest, so the file is hashed before it is sent. Both passes
  // read the same open descriptor: a rename over the name meanwhile does not mix versions.
  auto& buf = chunk();
  hash::Sha256 hasher;
  for (std::uint64_t off = 0; off < file.size;) {
    std::size_t got = 0;
    auto ec = storage::pread_full(file.fd.get(), buf, off, got);
    if (!ec && got == 0) ec = std::make_error_code(std::errc::io_error);  // shrank under us
    if (ec) {
      log_transfer("get", req.name, 0, start, "storage: " + ec.message());
      co_return co_await send_error(Status::kStorage, "server could not read " + storage::quote_name(req.name) + ": " +
                                                          ec.message());
    }
    hasher.update(std::span<const std::uint8_t>(buf.data(), std::min<std::uint64_t>(got, file.size - off)));
    off += got;
  }
  Frame reply;
  reply.type = MsgType::kFile;
  reply.flags = protocol::kFlagHasMtime;
  reply.size = file.size;
  reply.mtime_ns = file.mtime_ns;
  reply.digest = hasher.finish();
  if (auto ec = co_await send(reply)) {
    log_transfer("get", req.name, 0, start, "aborted: " + ec.message());
    co_return ec;
  }

  for (std::uint64_t off = 0; off < file.size;) {
    std::size_t got = 0;
    auto ec = storage::pread_full(file.fd.get(), std::span(buf.data(), std::min<std::uint64_t>(buf.size(), file.size - off)),
                                  off, got);
    if (!ec && got == 0) ec = std::make_error_code(std::errc::io_error);
    if (ec) {
      // The header is out; the only honest way left to fail is to drop the connection,
      // which the client reports as a truncated transfer.
      log_transfer("get", req.name, off, start, "storage: " + ec.message());
      co_return ec;
    }
    const auto wec = co_await write_all(std::span<const std::uint8_t>(buf.data(), got));
    if (wec) {
      log_transfer("get", req.name, off, start, "aborted: " + wec.message());
      co_return wec;
    }
    off += got;
  }
  log_transfer("get", req.name, file.size, start, "ok");
  co_return std::error_code{};
}

asio::awaitable<std::error_code> Session::handle_list(const Frame& req) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<storage::FileInfo> files;
  if (auto ec = server_.storage().list(req.name, files)) {
    auto [st, msg] = describe(ec, req.name);
    if (ec == std::errc::no_such_file_or_directory) msg = "no such folder " + storage::quote_name(req.name);
    if (ec == std::errc::not_a_directory) msg = storage::quote_name(req.name) + " is not a folder";
    log_transfer("ls", req.name, 0, start, protocol::to_string(st));
    co_return co_await send_error(st, std::move(msg));
  }
  out_.clear();
  for (const auto& f : files) {
    Frame e;
    e.type = MsgType::kEntry;
    e.flags = protocol::kFlagHasMtime;
    e.size = f.size;
    e.mtime_ns = f.mtime_ns;
    e.name = f.name;
    protocol::encode(e, out_);
    if (out_.size() >= kListBatchBytes) {
      if (auto ec = co_await write_all(out_)) {
        log_transfer("ls", req.name, files.size(), start, "aborted: " + ec.message());
        co_return ec;
      }
      out_.clear();
    }
  }
  Frame end;
  end.type = MsgType::kListEnd;
  end.size = files.size();
  protocol::encode(end, out_);
  const auto ec = co_await write_all(out_);
  log_transfer("ls", req.name, files.size(), start, ec ? "aborted: " + ec.message() : "ok");
  co_return ec;
}

asio::awaitable<std::error_code> Session::handle_hello() {
  protocol::Digest nonce{};
  storage::fill_random(nonce);
  nonce_ = nonce;
  Frame challenge;
  challenge.type = MsgType::kChallenge;
  challenge.digest = nonce;
  co_return co_await send(challenge);
}

asio::awaitable<std::error_code> Session::handle_auth(const Frame& req) {
  const auto& token = server_.options().token;
  if (!token.empty()) {
    // A nonce answers once: a recorded answer cannot be replayed on another connection.
    const auto nonce = std::exchange(nonce_, std::nullopt);
    if (!nonce) {
      co_await refuse_auth("sent auth without asking for a challenge");
      co_return make_error_code(protocol::errc::unexpected_message);
    }
    if (!hash::equal_constant_time(req.digest, hash::auth_response(token, *nonce))) {
      co_await refuse_auth("wrong token");
      co_return make_error_code(protocol::errc::unexpected_message);
    }
  }
  authenticated_ = true;
  Frame ok;
  ok.type = MsgType::kAuthOk;
  co_return co_await send(ok);
}

asio::awaitable<void> Session::refuse_auth(std::string why) {
  spdlog::warn("{} authentication failed: {}", peer_, why);
  // The delay makes guessing slow; the connection holds no thread meanwhile.
  asio::steady_timer delay(socket_.get_executor(), server_.options().auth_delay);
  co_await delay.async_wait(kTuple);
  co_await send_final_error(Status::kUnauthorized,
                      "authentication failed: this server needs the right token (set FTX_TOKEN or use --token-file)");
}

}  // namespace ftx::server
