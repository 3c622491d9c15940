#include "server/session.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
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
         ec == asio::error::broken_pipe || ec == asio::error::bad_descriptor;
}

}  // namespace

Session::Session(Server& server, asio::ip::tcp::socket socket)
    : server_(server), socket_(std::move(socket)), in_(kInBufferSize) {
  std::error_code ec;
  const auto ep = socket_.remote_endpoint(ec);
  peer_ = ec ? std::string("unknown") : ep.address().to_string() + ":" + std::to_string(ep.port());
  // Request/reply exchanges (kReady, small files) must not wait for Nagle's timer.
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
}

Session::~Session() { server_.remove_session(this); }

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
  for (;;) {
    if (server_.stopping()) break;
    std::error_code ec = co_await read_frame();
    if (ec) {
      if (ec.category() == protocol::protocol_category()) {
        spdlog::warn("{} bad request: {}", peer_, ec.message());
        if (ec != protocol::errc::truncated) {
          const Status st = ec == protocol::errc::bad_version ? Status::kUnsupportedVersion : Status::kBadRequest;
          co_await send_error(st, ec.message() + "; closing the connection");
        }
      } else if (!is_normal_close(ec)) {
        spdlog::warn("{} connection error: {}", peer_, ec.message());
      }
      break;
    }
    const Frame req = std::move(decoder_.frame());
    switch (req.type) {
      case MsgType::kPut: ec = co_await handle_put(req); break;
      case MsgType::kGet: ec = co_await handle_get(req); break;
      case MsgType::kList: ec = co_await handle_list(req); break;
      case MsgType::kPing: {
        Frame pong;
        pong.type = MsgType::kPong;
        ec = co_await send(pong);
        break;
      }
      default:
        spdlog::warn("{} sent a {} message, which only servers send", peer_, protocol::to_string(req.type));
        co_await send_error(Status::kBadRequest, "unexpected " + std::string(protocol::to_string(req.type)) +
                                                     " message from a client; closing the connection");
        ec = protocol::errc::unexpected_message;
    }
    if (ec) break;
  }
  std::error_code ignored;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
  spdlog::debug("{} disconnected", peer_);
}

asio::awaitable<std::error_code> Session::read_frame() {
  decoder_.reset();
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
    if (idle_) chunk_ = {};  // an idle connection keeps only its small header buffer
    auto [ec, n] = co_await socket_.async_read_some(asio::buffer(in_), kTuple);
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
    // Never ask for more than the body's remaining bytes: whatever follows belongs to the
    // next message.
    auto [ec, got] = co_await asio::async_read(socket_, asio::buffer(buf.data(), want), kTuple);
    if (ec) co_return ec == asio::error::eof ? make_error_code(protocol::errc::truncated) : ec;
    sink(std::span<const std::uint8_t>(buf.data(), got));
    n -= got;
  }
  co_return std::error_code{};
}

asio::awaitable<std::error_code> Session::send(const Frame& f) {
  out_.clear();
  protocol::encode(f, out_);
  auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(out_), kTuple);
  co_return ec;
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
  if (ec == errc::not_regular) return {Status::kConflict, q + " is not a regular file"};
  if (ec == errc::symlink) return {Status::kConflict, q + " runs through a symbolic link, which ftx never follows"};
  if (ec == std::errc::no_such_file_or_directory) return {Status::kNotFound, "no such file " + q};
  if (ec == std::errc::is_a_directory) return {Status::kConflict, q + " is a folder"};
  if (ec == std::errc::not_a_directory) return {Status::kConflict, "a parent of " + q + " is a file, not a folder"};
  if (ec == std::errc::no_space_on_device) return {Status::kStorage, "server is out of disk space; nothing was stored"};
  return {Status::kStorage, "server storage error on " + q + ": " + ec.message()};
}

void Session::log_transfer(std::string_view op, const std::string& name, std::uint64_t bytes,
                           std::chrono::steady_clock::time_point start, std::string_view result) const {
  const auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("{} {} {} bytes={} ms={:.1f} result={}", peer_, op, storage::quote_name(name), bytes, ms, result);
}

asio::awaitable<std::error_code> Session::handle_put(const Frame& req) {
  const auto start = std::chrono::steady_clock::now();
  storage::Upload up;
  if (auto ec = server_.storage().begin_upload(req.name, req.size, up)) {
    auto [st, msg] = describe(ec, req.name);
    log_transfer("put", req.name, 0, start, protocol::to_string(st));
    co_return co_await send_error(st, std::move(msg));
  }
  Frame ready;
  ready.type = MsgType::kReady;
  if (auto ec = co_await send(ready)) co_return ec;

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
  if (auto ec = co_await send(reply)) co_return ec;

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
    auto [wec, n] = co_await asio::async_write(socket_, asio::buffer(buf.data(), got), kTuple);
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
      auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(out_), kTuple);
      if (ec) co_return ec;
      out_.clear();
    }
  }
  Frame end;
  end.type = MsgType::kListEnd;
  end.size = files.size();
  protocol::encode(end, out_);
  auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(out_), kTuple);
  const auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("{} ls {} entries={} ms={:.1f} result={}", peer_, storage::quote_name(req.name), files.size(), ms,
               ec ? "aborted: " + ec.message() : "ok");
  co_return ec;
}

}  // namespace ftx::server
