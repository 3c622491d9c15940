#include "server/session.hpp"

#include <spdlog/spdlog.h>


#include <algorithm>
#include <cerrno>
#include <asio/experimental/as_tuple.hpp>

#include "hash/sha256.hpp"
#include "log/log.hpp"
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
// While pipelined uploads stream in, one read takes in many small files at once.
constexpr std::size_t kBusyInBufferSize = 128 * 1024;
// Bodies up to this size are answered from out_ in one write with the replies around them;
// it is also how much queued output triggers a write, and the largest buffer kept idle.
constexpr std::size_t kSmallBody = 64 * 1024;

// One sendfile(2) call moves at most this much; the call returns as soon as the socket
// buffer is full anyway, so this only bounds a single call on a very fast peer.
constexpr std::size_t kSendFileStep = 64u << 20;
// How long a resumable upload waits for another connection to let go of the same partial
// (a retry racing its own dropped connection), in steps, before uploading without it.
constexpr auto kPartialBusyWait = std::chrono::milliseconds(50);
constexpr int kPartialBusyTries = 60;

// At most this many pipelined uploads wait, staged, to be published together
// (start_publish); as many more may be in the burst on the disk pool meanwhile.
constexpr std::size_t kMaxStaged = 64;

// A client's pause between requests longer than this is a real pause, not the gap between
// the windows of a pipelined batch.
constexpr auto kBatchGap = std::chrono::milliseconds(100);

// How long check_put_limits trusts a free-space answer (less what it accepted since).
constexpr auto kFreeSpaceFresh = std::chrono::milliseconds(20);

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
      publish_wake_(socket_.get_executor()) {
  resize_in(kInBufferSize);
  std::error_code ec;
  const auto ep = socket_.remote_endpoint(ec);
  client_address_ = ec ? std::string("unknown") : ep.address().to_string();
  peer_ = ec ? client_address_ : client_address_ + ":" + std::to_string(ep.port());
  authenticated_ = server_.options().token.empty();
  // Request/reply exchanges (kReady, small files) must not wait for Nagle's timer.
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
}

Session::~Session() {
  // Uploads received and verified whose answer never went out (the coroutine died with an
  // exception, or was destroyed at a forced stop): still published, durably, and logged.
  // A batch that was on the disk pool then: published there if its job ran (the pools are
  // joined before sessions go), else here.
  if (burst_away()) {
    auto batch = std::exchange(publishing_, {});  // settle() below must not wait for it
    const auto results =
        published_.size() == batch.size() ? published_ : server_.storage().publish_staged(staged_uploads(batch));
    answer_staged(batch, results, " (not answered)");
  }
  if (!staged_.empty()) settle(" (not answered)");
  log::flush();
  // Its folders and files are closed before the server counts it gone
  // (Server::wait_for_sessions), not with the members after this body. (Not the socket:
  // socket_ refers into stream_, which a refused connection has handed to Server::refuse
  // and no longer owns.)
  folders_.clear();
  sent_files_.close_all();
  server_.remove_session(this);
}

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

void Session::arm_for_blocking_work() {
  if (!closing_) arm(std::chrono::hours(24 * 365), "blocking work");
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

// Not a coroutine itself, so the job goes straight into co_spawn's own state. Callers pass
// a named job, not a lambda written inside the co_await: g++ 12 destroyed such a temporary
// twice (a double free seen here).
template <typename Fn>
asio::awaitable<std::invoke_result_t<Fn&>> Session::offload(Fn fn) {
  return offload_on(*server_.blocking_, std::move(fn));
}

template <typename Fn>
asio::awaitable<std::invoke_result_t<Fn&>> Session::offload_disk(Fn fn) {
  return offload_on(*server_.disk_, std::move(fn));
}

template <typename Fn>
asio::awaitable<std::invoke_result_t<Fn&>> Session::offload_on(asio::thread_pool& pool, Fn fn) {
  using R = std::invoke_result_t<Fn&>;
  arm_for_blocking_work();
  return asio::co_spawn(
      pool.get_executor(), [fn = std::move(fn)]() mutable -> asio::awaitable<R> { co_return fn(); },
      asio::use_awaitable);
}

std::span<std::uint8_t> Session::chunk(std::uint64_t n) {
  const auto want = static_cast<std::size_t>(std::clamp<std::uint64_t>(n, 1, protocol::kChunkSize));
  if (chunk_capacity_ < want) {
    chunk_ = std::make_unique_for_overwrite<std::uint8_t[]>(want);
    chunk_capacity_ = want;
  }
  return {chunk_.get(), chunk_capacity_};
}

void Session::resize_in(std::size_t capacity) {
  if (capacity == in_capacity_) return;
  in_ = std::make_unique_for_overwrite<std::uint8_t[]>(capacity);
  in_capacity_ = capacity;
}

asio::awaitable<void> Session::run() {
  try {
    co_await serve();
  } catch (...) {
    // serve() sets done_ on its normal ways out; an exception (bad_alloc, a job that threw)
    // must end the watchdog too, or it holds the session -- its descriptor and connection
    // slot -- until its deadline and then re-arms forever.
    done_ = true;
    watchdog_.cancel();
    throw;
  }
}

asio::awaitable<void> Session::serve() {
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
    log::flush();
    co_return;
  }
  if (const auto subject = stream_->peer_subject(); !subject.empty()) {
    spdlog::info("{} client certificate {}", peer_, subject);
  }
  // Set when a stop ends a connection that has served a request: its client may be in the
  // middle of a batch (requests on the way, or about to be), and is told why before the
  // close. One that never sent a request is closed without a word, as before.
  bool stopped_mid_exchange = false;
  bool still_sending = true;  // the client may still be sending: linger after telling it
  bool refused_request = false;  // a request came without a token: perhaps a whole batch
  for (bool first = true;; first = false) {
    if (server_.stopping()) {
      stopped_mid_exchange = !first;
      break;
    }
    std::error_code ec = co_await read_frame();
    if (ec) {
      co_await settle_off_thread();  // a burst read before the failure is answered first
      // Cancelled while waiting between requests (Session::shutdown), or not waiting at all
      // because the stop came while the last answers were written (read_frame).
      if (ec == asio::error::operation_aborted && server_.stopping() && expired_ == nullptr) {
        stopped_mid_exchange = !first;
        // A client in the middle of a batch sends its next requests within milliseconds
        // (the same gap read_frame tells pauses from); one idle for longer is told, but
        // need not be waited for.
        still_sending = pipelining_ || std::chrono::steady_clock::now() - waiting_since_ < kBatchGap;
      }
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
      refused_request = true;
      break;
    }
    pipelining_ = req.type == MsgType::kPut && (req.flags & protocol::kFlagStreamed) != 0;
    // Anything but the next upload of a batch sees the batch's files in place: a GET, LIST
    // or MV right behind them in the same pipeline finds them.
    if (!pipelining_) co_await settle_off_thread();
    switch (req.type) {
      case MsgType::kPut: ec = co_await handle_put(req); break;
      case MsgType::kGet: ec = co_await handle_get(req); break;
      case MsgType::kList: ec = co_await handle_list(req); break;
      case MsgType::kStat: ec = co_await handle_stat(req); break;
      case MsgType::kRemove:
      case MsgType::kMove:
      case MsgType::kMkdir: ec = co_await handle_change(req); break;
      case MsgType::kGetRange: ec = co_await handle_get_range(req); break;
      case MsgType::kPutOpen: ec = co_await handle_put_open(req); break;
      case MsgType::kPutRange: ec = co_await handle_put_range(req); break;
      case MsgType::kPutCommit: ec = co_await handle_put_commit(req); break;
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
  co_await settle_off_thread();
  // Not waiting for a request any more: a shutdown() posted before must not cancel the
  // writes and the linger below (read_frame may have returned with idle_ still set).
  idle_ = false;
  if (stopped_mid_exchange) {
    // After the answers already earned (uploads published before the stop), the reason:
    // requests pipelined behind them get no answer, and without it the client could only
    // report a lost connection (or, its write failing first, a broken pipe).
    spdlog::info("{} closed: server stopping", peer_);
    queue(protocol::make_error(Status::kShuttingDown, "server is shutting down; closing the connection"));
  }
  if (!out_.empty()) {
    // Answers already earned (e.g. uploads published before a stop) still go out.
    closing_ = true;
    arm(std::chrono::seconds(2), "closing");
    const bool sent = !co_await flush();
    // A client still sending (a batch) would find its requests unread: closing now would
    // answer them with a reset, which can destroy the answers above before the client
    // reads them, and fail its writes before it reads why.
    if (sent && stopped_mid_exchange && still_sending) co_await linger();
  } else if (refused_request) {
    // A client without the token that pipelined a batch has more requests on the way:
    // closing on them would reset the connection, which can destroy the refusal before the
    // client reads it. Its requests are read and dropped until it closes (a second at most).
    co_await linger();
  }
  // Parallel uploads this connection held and nobody committed are abandoned once every
  // connection that held them is gone: let go now, not when the last reference to the
  // session happens to drop.
  leases_.clear();
  done_ = true;
  watchdog_.cancel();
  std::error_code ignored;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
  spdlog::debug("{} disconnected", peer_);
  log::flush();  // how the last request ended (e.g. a client that vanished mid-body)
}

asio::awaitable<void> Session::linger() {
  std::error_code ignored;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
  arm(std::chrono::seconds(1), "closing");
  for (;;) {
    auto [ec, n] = co_await stream_->read_some(asio::buffer(in_.get(), in_capacity_));
    if (ec) break;  // the client closed, or the deadline cancelled the read
  }
}

asio::awaitable<std::error_code> Session::read_frame() {
  decoder_.reset();
  const auto& opts = server_.options();
  // The header deadline runs from a request's first byte, not counting the server's own
  // time answering (a send, the wait for a burst on the disk pool), which arms deadlines of
  // its own: it is set again before each read, moved back by that time.
  std::optional<std::chrono::steady_clock::time_point> header_deadline;
  for (;;) {
    if (in_begin_ < in_end_) {
      const auto step = decoder_.put(std::span(in_.get() + in_begin_, in_end_ - in_begin_));
      in_begin_ += step.consumed;
      if (step.result == protocol::Decoder::Result::kFrame) co_return std::error_code{};
      if (step.result == protocol::Decoder::Result::kError) co_return decoder_.error();
    }
    // The decoder took every buffered byte and wants more: first answer what was done.
    in_begin_ = in_end_ = 0;
    const auto answer_start = std::chrono::steady_clock::now();
    if (auto ec = co_await answer_before_reading()) co_return ec;
    waiting_since_ = std::chrono::steady_clock::now();
    if (header_deadline) *header_deadline += waiting_since_ - answer_start;
    resize_in(pipelining_ ? kBusyInBufferSize : kInBufferSize);
    idle_ = decoder_.at_boundary();
    // A stop that came while the flush above was suspended found this session busy and
    // left it alone (shutdown() cancels only idle ones): look now, or it would wait here
    // for the client or the idle timeout while the server drains.
    if (idle_ && server_.stopping()) co_return asio::error::operation_aborted;
    if (idle_) {
      // Nor files: one sent and then removed keeps its space until its descriptor goes.
      sent_files_.close_all();
      // An idle connection keeps only small buffers.
      if (chunk_capacity_ > kSmallBody) {
        chunk_.reset();
        chunk_capacity_ = 0;
      }
      if (out_.capacity() > kSmallBody) out_ = {};
      // Not between the files of a streamed batch: the next recv would be a small one again.
      if (!pipelining_) stream_->shrink();
      arm(opts.idle_timeout, "idle");
    } else {
      if (!header_deadline) header_deadline = std::chrono::steady_clock::now() + opts.header_timeout;
      arm_at(*header_deadline, "header");
    }
    auto [ec, n] = co_await stream_->read_some(asio::buffer(in_.get(), in_capacity_));
    // After a real pause (not the gaps of a pipelined batch) the cached folder may have been
    // renamed by anyone: resolve names afresh.
    if (idle_ && std::chrono::steady_clock::now() - waiting_since_ > kBatchGap) folders_.clear();
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
    sink(std::span<const std::uint8_t>(in_.get() + in_begin_, buffered));
    in_begin_ += buffered;
    n -= buffered;
  }
  if (n == 0) co_return std::error_code{};
  const auto buf = chunk(n);
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
  queue(f);
  co_return co_await flush();
}

void Session::queue(const Frame& f, std::span<const std::uint8_t> body) {
  settle();
  protocol::encode(f, out_);
  out_.insert(out_.end(), body.begin(), body.end());
}

void Session::settle(std::string_view note) {
  if (staged_.empty() || burst_away()) return;  // see the header: not reached so
  auto batch = std::exchange(staged_, {});
  // A streamed batch stages dozens of files between two reads; they are published
  // together: one syncfs for all their data, then the renames, then one fsync per folder
  // (Storage::publish_staged). It was an fsync per file, a journal commit each on a disk.
  answer_staged(batch, server_.storage().publish_staged(staged_uploads(batch)), note);
  folders_.forget_missing();
}

asio::awaitable<void> Session::settle_off_thread() {
  co_await finish_publish();
  if (staged_.empty()) co_return;
  if (staged_.size() == 1 && staged_.front().done.size <= kSmallBody) {
    settle();  // one small file's fsync costs what a plain PUT's does on this thread
    co_return;
  }
  start_publish();
  co_await finish_publish();
}

void Session::start_publish() {
  publishing_ = std::exchange(staged_, {});
  published_.clear();
  publish_ready_ = false;
  auto job = [self = shared_from_this(), uploads = staged_uploads(publishing_)]() mutable {
    // On the pool an exception would end the server: publish_staged's is caught here.
    std::vector<std::error_code> results;
    try {
      results = self->server_.storage().publish_staged(uploads);
    } catch (const std::exception&) {
      // Out of memory half-way: what was renamed is in place, its folder perhaps not
      // synced; the rest is still staged (and removed with its Upload) or was refused.
      // Answered so, rather than published a second time by ~Session.
      results.assign(uploads.size(), make_error_code(std::errc::not_enough_memory));
      for (std::size_t i = 0; i < uploads.size(); ++i) {
        if (uploads[i]->placed()) results[i] = storage::errc::not_durable;
      }
    }
    // Set here, read on the strand only after the post below (or by ~Session, after the
    // pools are joined).
    self->published_ = std::move(results);
    // The session ends on its own executor, never on a pool thread: the reference goes
    // back there with the news.
    auto ex = self->socket_.get_executor();
    asio::post(ex, [self = std::move(self)] {
      self->publish_ready_ = true;
      self->publish_wake_.cancel();
    });
  };
  asio::post(*server_.disk_, std::move(job));
}

asio::awaitable<void> Session::finish_publish() {
  if (!burst_away()) co_return;
  if (!publish_ready_) {
    arm_for_blocking_work();
    while (!publish_ready_) {
      publish_wake_.expires_at(asio::steady_timer::time_point::max());
      co_await publish_wake_.async_wait(kTuple);
    }
  }
  folders_.forget_missing();
  auto batch = std::exchange(publishing_, {});
  answer_staged(batch, std::exchange(published_, {}), {});
}

asio::awaitable<std::error_code> Session::answer_before_reading() {
  // Only while the client keeps streaming: otherwise it may be waiting for these answers,
  // and nothing else would send them.
  if (pipelining_ && stream_->input_pending()) {
    if (burst_away() && publish_ready_) co_await finish_publish();  // no wait: it is done
    if (!burst_away() && !staged_.empty()) start_publish();
    co_return co_await write_out();
  }
  co_return co_await flush();
}

std::vector<storage::Upload*> Session::staged_uploads(std::vector<Staged>& batch) {
  std::vector<storage::Upload*> uploads;
  uploads.reserve(batch.size());
  for (auto& s : batch) uploads.push_back(&s.upload);
  return uploads;
}

void Session::answer_staged(std::vector<Staged>& batch, const std::vector<std::error_code>& results,
                            std::string_view note) {
  for (std::size_t i = 0; i < batch.size(); ++i) {
    auto& s = batch[i];
    if (!results[i]) {
      log_record("put", s.name, s.done.size, s.start, "ok" + std::string(note));
      protocol::encode(s.done, out_);
    } else {
      auto [st, msg] = describe(results[i], s.name);
      log_record("put", s.name, s.done.size, s.start, std::string(protocol::to_string(st)) + std::string(note));
      protocol::encode(protocol::make_error(st, std::move(msg)), out_);
    }
  }
}

asio::awaitable<std::error_code> Session::flush() {
  co_await settle_off_thread();
  co_return co_await write_out();
}

asio::awaitable<std::error_code> Session::write_out() {
  // The log lines of the requests answered here go first: whoever reads the answer may look
  // for them at once.
  log::flush();
  if (out_.empty()) co_return std::error_code{};
  const auto ec = co_await write_all(out_);
  out_.clear();
  co_return ec;
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
  if (ec == std::errc::directory_not_empty) return {Status::kConflict, "folder " + q + " is not empty"};
  if (ec == std::errc::file_exists) return {Status::kConflict, q + " already exists"};
  if (ec == std::errc::invalid_argument) return {Status::kConflict, "cannot move a folder into itself (" + q + ")"};
  if (ec == std::errc::no_space_on_device || ec == std::errc::file_too_large || ec.value() == EDQUOT) {
    return {Status::kNoSpace, "server ran out of space while storing " + q + "; nothing was stored"};
  }
  return {Status::kStorage, "server storage error on " + q + ": " + ec.message()};
}

void Session::log_transfer(std::string_view op, const std::string& name, std::uint64_t amount,
                           std::chrono::steady_clock::time_point start, std::string_view result,
                           const std::string* to) {
  settle();  // the records of earlier uploads still waiting for their folder's fsync go first
  log_record(op, name, amount, start, result, to);
}

void Session::log_record(std::string_view op, const std::string& name, std::uint64_t amount,
                         std::chrono::steady_clock::time_point start, std::string_view result,
                         const std::string* to) {
  log::RequestRecord r;
  r.peer = peer_;
  r.op = op;
  r.name = name;
  if (to != nullptr) r.to = *to;
  r.amount = amount;
  r.amount_is_entries = op == "ls";
  r.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  r.result = result;
  log::log_request(r);
}

std::optional<std::pair<Status, std::string>> Session::check_new_name(const std::string& name) const {
  const auto& o = server_.options();
  if (name.size() > o.max_name_bytes) {
    return {{Status::kBadName, "name is " + std::to_string(name.size()) + " bytes; this server takes at most " +
                                   std::to_string(o.max_name_bytes)}};
  }
  const auto depth = static_cast<std::size_t>(std::count(name.begin(), name.end(), '/'));
  if (depth > o.max_depth) {
    return {{Status::kBadName, storage::quote_name(name) + " is " + std::to_string(depth) +
                                   " folders deep; this server allows " + std::to_string(o.max_depth)}};
  }
  return std::nullopt;
}

std::optional<std::pair<Status, std::string>> Session::check_put_limits(const Frame& req, bool space) const {
  const auto& o = server_.options();
  const std::string q = storage::quote_name(req.name);
  if (o.read_only) return {{Status::kForbidden, "server is read-only; uploads are refused"}};
  if (req.size > o.max_file_size) {
    return {{Status::kTooLarge, q + " is " + std::to_string(req.size) + " bytes; this server takes at most " +
                                    std::to_string(o.max_file_size)}};
  }
  if (auto bad = check_new_name(req.name)) return bad;
  if (!space) return std::nullopt;
  const auto fits = [&](std::uint64_t free) { return free >= o.min_free_bytes && free - o.min_free_bytes >= req.size; };
  // statfs(2) for every file of a pipelined batch was a tenth of its system calls. For a
  // few milliseconds the last answer, less what this connection accepted since, stands in;
  // a refusal is always decided on a fresh answer.
  const auto now = std::chrono::steady_clock::now();
  std::uint64_t free = free_estimate_;
  if (now - free_checked_ > kFreeSpaceFresh || !fits(free)) {
    if (server_.storage().free_bytes(free)) return std::nullopt;  // unknown: the writes will tell
    free_checked_ = now;
  }
  if (!fits(free)) {
    return {{Status::kNoSpace, "not enough free space on the server for " + q + " (" + std::to_string(req.size) +
                                   " bytes, " + std::to_string(free > o.min_free_bytes ? free - o.min_free_bytes : 0) +
                                   " available)"}};
  }
  free_estimate_ = free - req.size;
  return std::nullopt;
}

asio::awaitable<std::error_code> Session::refuse_put(const Frame& req, Status st, std::string message,
                                                    std::chrono::steady_clock::time_point start) {
  co_await settle_off_thread();  // the burst before it is answered first
  log_transfer("put", req.name, 0, start, protocol::to_string(st));
  if ((req.flags & protocol::kFlagStreamed) == 0) co_return co_await send_error(st, std::move(message));
  // A streamed body is already on its way. Up to the size limit (and at least up to one
  // chunk, the largest body clients stream) it is read and dropped so the connection stays
  // in step for the files queued behind it; beyond, that would be reading a possibly
  // endless stream for nothing, so the connection ends.
  if (req.size > std::max<std::uint64_t>(server_.options().max_file_size, protocol::kChunkSize)) {
    co_await send_final_error(st, std::move(message) + "; closing the connection");
    co_return make_error_code(protocol::errc::unexpected_message);
  }
  const std::uint64_t wire = req.size + ((req.flags & protocol::kFlagDigestAfter) != 0 ? protocol::kTrailerSize : 0);
  if (auto ec = co_await read_body(wire, [](std::span<const std::uint8_t>) {})) co_return ec;
  co_return co_await send_error(st, std::move(message));
}

asio::awaitable<std::error_code> Session::handle_put(const Frame& req) {
  const auto start = std::chrono::steady_clock::now();
  const bool streamed = (req.flags & protocol::kFlagStreamed) != 0;
  if (auto refusal = check_put_limits(req)) {
    co_return co_await refuse_put(req, refusal->first, std::move(refusal->second), start);
  }
  const bool has_mtime = (req.flags & protocol::kFlagHasMtime) != 0;
  const bool executable = (req.flags & protocol::kFlagExecutable) != 0;
  storage::Upload up;
  std::error_code begin_ec;
  if (streamed) {
    // Small files of a batch: nothing worth resuming, and no partial to look for.
    begin_ec = server_.storage().begin_upload(req.name, req.size, up, &folders_, streamed);
    // Each staged upload keeps its file open until its burst is published, up to kMaxStaged
    // a connection, and as many again in the burst on the disk pool: where that ran out of
    // descriptors (ulimit -n), publishing both now gives them back, and this file need not
    // fail.
    if ((begin_ec == std::errc::too_many_files_open || begin_ec == std::errc::too_many_files_open_in_system) &&
        (!staged_.empty() || burst_away())) {
      co_await settle_off_thread();
      begin_ec = server_.storage().begin_upload(req.name, req.size, up, &folders_, streamed);
    }
  } else {
    // A resumable upload must carry its digest after the body: the client cannot know it
    // before it has read its file, and a resumed one reads only the rest.
    const bool resumable = (req.flags & protocol::kFlagResume) != 0 && (req.flags & protocol::kFlagDigestAfter) != 0;
    const auto mtime = has_mtime ? std::optional(req.mtime_ns) : std::nullopt;
    const auto resume = resumable ? storage::Resume::kYes : storage::Resume::kNo;
    // A client that lost its connection and retries at once usually finds its old
    // connection still here, draining what the kernel had buffered before it sees the end:
    // give it a moment to let go of the partial, then upload without touching it.
    for (int tries = 0;; ++tries) {
      // With kFlagDigestAfter the digest field is free: a resumable PUT carries the client's
      // name for its source there, so two clients' uploads of equal name, size and mtime
      // never continue each other's bytes.
      begin_ec = server_.storage().begin_upload(req.name, req.size, mtime, executable, resume, up, &folders_,
                                                req.digest);
      if (begin_ec != storage::errc::partial_busy) break;
      if (tries == kPartialBusyTries) {
        begin_ec = server_.storage().begin_upload(req.name, req.size, up, &folders_);
        break;
      }
      asio::steady_timer wait(co_await asio::this_coro::executor, kPartialBusyWait);
      co_await wait.async_wait(kTuple);
    }
  }
  if (begin_ec) {
    auto [st, msg] = describe(begin_ec, req.name);
    co_return co_await refuse_put(req, st, std::move(msg), start);
  }
  const std::uint64_t resumed_at = up.written();
  if (!streamed) {
    Frame ready;
    ready.type = MsgType::kReady;
    if (const auto* rec = up.record()) {
      ready.flags = protocol::kFlagResume;
      ready.size = rec->good.bytes;
      ready.digest = rec->good.words;
      ready.mtime_ns = static_cast<std::int64_t>(rec->before.bytes);
      ready.name.assign(rec->before.words.begin(), rec->before.words.end());
    }
    if (auto ec = co_await send(ready)) {
      log_transfer("put", req.name, 0, start, "aborted: " + ec.message());
      co_return ec;
    }
  }

  // A failed disk write does not end the exchange: the rest of the body is still read (and
  // dropped) so the connection stays in step and the client gets a proper error reply.
  std::error_code store_ec;
  const auto read_ec = co_await read_body(req.size - resumed_at, [&](std::span<const std::uint8_t> data) {
    if (!store_ec) store_ec = up.write(data);
  });
  // The client's SHA-256: in the header, or (kFlagDigestAfter) right after the body.
  protocol::Digest expected = req.digest;
  std::error_code trailer_ec;
  if (!read_ec && (req.flags & protocol::kFlagDigestAfter) != 0) {
    std::size_t got = 0;
    trailer_ec = co_await read_body(protocol::kTrailerSize, [&](std::span<const std::uint8_t> data) {
      std::copy(data.begin(), data.end(), expected.begin() + static_cast<std::ptrdiff_t>(got));
      got += data.size();
    });
  }
  const std::string resumed = resumed_at > 0 ? " (resumed at byte " + std::to_string(resumed_at) + ")" : "";
  if (read_ec || trailer_ec) {
    const auto ec = read_ec ? read_ec : trailer_ec;
    co_await settle_off_thread();  // the burst before it is answered first
    log_transfer("put", req.name, up.written() - resumed_at, start,
                 "aborted: " + ec.message() + (up.record() != nullptr ? "; kept for resume" : ""));
    co_return ec;  // `up` removes the staging file, or keeps a resumable one
  }
  // A streamed upload is only staged here: it is published with the rest of its burst
  // (start_publish or settle_off_thread), and its answer waits for that.
  if (!store_ec) {
    const auto mtime = has_mtime ? std::optional(req.mtime_ns) : std::nullopt;
    if (streamed) {
      store_ec = up.stage(expected, mtime, executable);
    } else if (req.size <= kSmallBody) {
      store_ec = up.commit(expected, mtime, executable);
    } else {
      // The fsync writes out whatever the kernel has not yet (a third of a second for 1 GiB
      // here, seconds on a slow disk): on the disk pool, not holding this I/O thread's
      // other connections. The job holds the upload: should the server stop before it ran,
      // destroying it removes the staging file (or keeps a resumable one).
      auto shared = std::make_shared<storage::Upload>(std::move(up));
      auto job = [shared, expected, mtime, executable] { return shared->commit(expected, mtime, executable); };
      store_ec = co_await offload_disk(std::move(job));
      up = std::move(*shared);
    }
  }
  if (store_ec) {
    // Gone before the client hears "nothing was stored" (a failed write left it in place;
    // a failed commit already removed it).
    up.abort();
    co_await settle_off_thread();  // the burst before it is answered first
    auto [st, msg] = describe(store_ec, req.name);
    log_transfer("put", req.name, req.size - resumed_at, start, std::string(protocol::to_string(st)) + resumed);
    co_return co_await send_error(st, std::move(msg));
  }
  Frame done;
  done.type = MsgType::kDone;
  done.size = req.size;
  done.digest = expected;
  if (streamed) {
    staged_.push_back({std::move(up), std::move(done), req.name, start});
    // Each holds its staging file open: a long burst must not hold hundreds. The burst
    // before, if still on the pool, is waited for; its answers go out now, so that the
    // client's window moves on while this one is published.
    if (staged_.size() >= kMaxStaged) {
      co_await finish_publish();
      start_publish();
      co_return co_await write_out();
    }
    co_return std::error_code{};
  }
  log_transfer("put", req.name, req.size - resumed_at, start, "ok" + resumed);
  queue(done);  // written before the session next waits for input
  co_return std::error_code{};
}

asio::awaitable<std::optional<std::error_code>> Session::open_for_download(const char* op, const Frame& req,
                                                                           std::chrono::steady_clock::time_point start,
                                                                           storage::ReadFile& file,
                                                                           protocol::Digest& digest) {
  auto open_ec = server_.storage().open_file(req.name, file, &folders_);
  if (open_ec == std::errc::too_many_files_open || open_ec == std::errc::too_many_files_open_in_system) {
    sent_files_.close_all();  // what this connection still holds of its earlier GETs
    open_ec = server_.storage().open_file(req.name, file, &folders_);
  }
  if (open_ec) {
    auto [st, msg] = describe(open_ec, req.name);
    log_transfer(op, req.name, 0, start, protocol::to_string(st));
    co_return co_await send_error(st, std::move(msg));
  }
  // The digest goes out before the body: from the digest cache when the file is as it was
  // stored, else by reading it once first -- a small file here, a larger one on the
  // blocking pool, through a duplicate of the same open descriptor (either way the one
  // opened: a rename over the name meanwhile does not mix versions).
  std::error_code digest_ec;
  if (server_.storage().cached_digest(file, digest)) {
    // Known already: nothing to read.
  } else if (file.size <= kSmallBody) {
    // A small file is hashed here, on the I/O thread: it takes about as long as sending it
    // (~40 us for 64 KiB), while a trip through the pool cost ~30 us a file and made the
    // first `get -r` of 10,000 files put there by other means twice as slow as the next.
    digest_ec = server_.storage().compute_digest(file, chunk(file.size), digest);
  } else {
    auto copy = std::make_shared<storage::ReadFile>(file.duplicate());
    if (!copy->fd) {
      digest_ec = storage::last_error();
    } else {
      auto job = [&store = server_.storage(), copy] {
        std::vector<std::uint8_t> buf(static_cast<std::size_t>(std::clamp<std::uint64_t>(copy->size, 1, protocol::kChunkSize)));
        std::pair<std::error_code, protocol::Digest> out;
        out.first = store.compute_digest(*copy, buf, out.second);
        return out;
      };
      std::tie(digest_ec, digest) = co_await offload(std::move(job));
    }
  }
  if (auto ec = digest_ec) {
    log_transfer(op, req.name, 0, start, "storage: " + ec.message());
    co_return co_await send_error(Status::kStorage, "server could not read " + storage::quote_name(req.name) + ": " +
                                                        ec.message());
  }
  co_return std::nullopt;
}

asio::awaitable<std::error_code> Session::handle_get(const Frame& req) {
  const auto start = std::chrono::steady_clock::now();
  storage::ReadFile file;
  Frame reply;
  if (auto refused = co_await open_for_download("get", req, start, file, reply.digest)) co_return *refused;
  const auto buf = chunk(file.size);
  reply.type = MsgType::kFile;
  reply.flags = protocol::kFlagHasMtime | (file.executable ? protocol::kFlagExecutable : 0);
  reply.size = file.size;
  reply.mtime_ns = file.mtime_ns;

  std::uint64_t off = 0;
  // A resumed download: only when the client holds a prefix of this very version of the
  // file (same SHA-256), else it gets the whole file and starts over.
  if ((req.flags & protocol::kFlagResume) != 0 && req.size > 0 && req.size <= file.size && req.size % 64 == 0 &&
      hash::equal_constant_time(req.digest, reply.digest)) {
    off = req.size;
    reply.flags |= protocol::kFlagResume;
  }
  const std::uint64_t resumed_at = off;
  const std::string resumed = resumed_at > 0 ? " (resumed at byte " + std::to_string(resumed_at) + ")" : "";
  if (file.size > kSmallBody && stream_->can_send_file()) {
    // Plain TCP: the body goes from the page cache to the socket without a copy through
    // this process (the digest is known already, so nothing here needs to see the bytes).
    // Once the header is out, dropping the connection is the only honest way left to fail
    // (the client sees a truncated transfer).
    queue(reply);
    std::uint64_t sent = 0;
    const auto ec = co_await write_file_range(file.fd.get(), off, file.size, sent);
    const bool file_side = ec == std::errc::io_error;  // shrank, or could not be read
    log_transfer("get", req.name, sent, start,
                 !ec ? "ok" + resumed : (file_side ? "storage: " : "aborted: ") + ec.message());
    co_return ec;
  }
  bool header_out = false;
  if (off == file.size && off > 0) {
    // Resumed with every byte already on the client's side: just the header.
    if (auto ec = co_await send(reply)) co_return ec;
    header_out = true;
  }

  for (; off < file.size || off == 0;) {
    std::size_t got = 0;
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), file.size - off));
    auto ec = storage::pread_full(file.fd.get(), buf.first(want), off, got);
    if (!ec && got < want) ec = std::make_error_code(std::errc::io_error);  // shrank under us
    if (ec && !header_out) {
      log_transfer("get", req.name, 0, start, "storage: " + ec.message());
      co_return co_await send_error(Status::kStorage, "server could not read " + storage::quote_name(req.name) +
                                                          ": " + ec.message());
    }
    if (ec) {
      // The header is out; the only honest way left to fail is to drop the connection,
      // which the client reports as a truncated transfer.
      log_transfer("get", req.name, off, start, "storage: " + ec.message());
      co_return ec;
    }
    const std::span<const std::uint8_t> data(buf.data(), got);
    if (!header_out) {
      queue(reply);
      header_out = true;
    }
    if (file.size <= kSmallBody) {
      // With the replies around it: pipelined downloads of small files share writes.
      out_.insert(out_.end(), data.begin(), data.end());
      if (out_.size() >= kSmallBody) ec = co_await flush();
    } else {
      ec = co_await flush();
      if (!ec) ec = co_await write_all(data);
    }
    if (ec) {
      log_transfer("get", req.name, off, start, "aborted: " + ec.message());
      co_return ec;
    }
    off += got;
    if (file.size == 0) break;
  }
  log_transfer("get", req.name, file.size - resumed_at, start, "ok" + resumed);
  sent_files_.add(std::move(file.fd));  // a close system call per file less
  co_return std::error_code{};
}

asio::awaitable<std::error_code> Session::handle_list_partial() {
  const auto start = std::chrono::steady_clock::now();
  const auto partials = server_.storage().list_partials();
  for (const auto& p : partials) {
    Frame e;
    e.type = MsgType::kEntry;
    e.flags = protocol::kFlagHasMtime | protocol::kFlagPartial;
    e.size = p.size;
    e.mtime_ns = p.updated_ns;
    for (std::size_t i = 0; i < 8; ++i) e.digest[i] = static_cast<std::uint8_t>(p.received >> (56 - 8 * i));
    e.name = p.name;
    queue(e);
  }
  Frame end;
  end.type = MsgType::kListEnd;
  end.size = partials.size();
  const auto ec = co_await send(end);
  log_transfer("ls", "(partial uploads)", partials.size(), start, ec ? "aborted: " + ec.message() : "ok");
  co_return ec;
}

asio::awaitable<std::error_code> Session::handle_list(const Frame& req) {
  if ((req.flags & protocol::kFlagPartial) != 0) co_return co_await handle_list_partial();
  const auto start = std::chrono::steady_clock::now();
  storage::ListOptions lo;
  lo.digests = (req.flags & protocol::kFlagDigest) != 0;
  lo.folders = (req.flags & protocol::kFlagFolder) != 0;
  lo.names_only = (req.flags & protocol::kFlagNamesOnly) != 0;
  // Digests come from the cache; the files it lacks are read and hashed below -- unless the
  // client wants only the known ones (kFlagKnownDigestsOnly: --skip-identical, which asks for
  // the few others it needs one by one).
  lo.hash_missing = false;
  // The walk too runs on the blocking pool, not on this I/O thread: it is a stat per entry
  // (10,000 took about 20 ms here, a million seconds), and this thread's other connections
  // would wait meanwhile.
  const bool known_only = (req.flags & protocol::kFlagKnownDigestsOnly) != 0;
  auto job = [&store = server_.storage(), name = req.name, lo, known_only] {
    std::pair<std::error_code, std::vector<storage::FileInfo>> out;
    auto& [ec, found] = out;
    ec = store.list(name, found, lo);
    if (ec || !lo.digests || known_only) return out;
    for (auto& f : found) {
      storage::FileInfo hashed;  // the version that was hashed (as list() describes it)
      if (!f.folder && !f.digest && !store.stat(f.name, hashed) && !hashed.folder) f = std::move(hashed);
    }
    return out;
  };
  auto [list_ec, files] = co_await offload(std::move(job));
  if (auto ec = list_ec) {
    auto [st, msg] = describe(ec, req.name);
    if (ec == std::errc::no_such_file_or_directory) msg = "no such folder " + storage::quote_name(req.name);
    if (ec == std::errc::not_a_directory) msg = storage::quote_name(req.name) + " is not a folder";
    log_transfer("ls", req.name, 0, start, protocol::to_string(st));
    co_return co_await send_error(st, std::move(msg));
  }
  for (const auto& f : files) {
    queue(entry_of(f));
    if (out_.size() >= kListBatchBytes) {
      if (auto ec = co_await flush()) {
        log_transfer("ls", req.name, files.size(), start, "aborted: " + ec.message());
        co_return ec;
      }
    }
  }
  Frame end;
  end.type = MsgType::kListEnd;
  end.size = files.size();
  const auto ec = co_await send(end);
  log_transfer("ls", req.name, files.size(), start, ec ? "aborted: " + ec.message() : "ok");
  co_return ec;
}

Frame Session::entry_of(const storage::FileInfo& f) {
  Frame e;
  e.type = MsgType::kEntry;
  e.flags = f.described ? protocol::kFlagHasMtime : 0;  // not described: a names-only listing
  if (f.folder) e.flags |= protocol::kFlagFolder;
  if (f.executable) e.flags |= protocol::kFlagExecutable;
  if (f.digest) {
    e.flags |= protocol::kFlagDigest;
    e.digest = *f.digest;
  }
  e.size = f.size;
  e.mtime_ns = f.mtime_ns;
  e.name = f.name;
  return e;
}

asio::awaitable<std::error_code> Session::handle_stat(const Frame& req) {
  const auto start = std::chrono::steady_clock::now();
  // The SHA-256 from the cache, else computed by reading the file: a small file here, as a
  // GET does (open_for_download), a larger one on the blocking pool. --skip-identical STATs
  // every small file uploaded since (none has a record: storage::kUnrecordedUploadMax); with
  // a trip through the pool and a write each, 10,000 took 1.4 s.
  storage::FileInfo info;
  auto stat_ec = server_.storage().stat(req.name, info, /*hash_at_most=*/kSmallBody, &folders_);
  if (!stat_ec && !info.folder && !info.digest) {
    // The answers queued before it need not wait for the hashing.
    if (auto ec = co_await flush()) co_return ec;
    auto job = [&store = server_.storage(), name = req.name] {
      std::pair<std::error_code, storage::FileInfo> out;
      out.first = store.stat(name, out.second);
      return out;
    };
    std::tie(stat_ec, info) = co_await offload(std::move(job));
  }
  if (auto ec = stat_ec) {
    auto [st, msg] = describe(ec, req.name);
    log_transfer("stat", req.name, 0, start, protocol::to_string(st));
    co_return co_await send_error(st, std::move(msg));
  }
  log_transfer("stat", req.name, info.size, start, "ok");
  // With the replies around it, as a small GET's: pipelined STATs (Client::stat_many) share
  // writes. read_frame writes out what is queued before it waits for the client.
  queue(entry_of(info));
  if (out_.size() >= kSmallBody) co_return co_await flush();
  co_return std::error_code{};
}

asio::awaitable<std::error_code> Session::handle_change(const Frame& req) {
  const auto start = std::chrono::steady_clock::now();
  const std::string op(protocol::to_string(req.type));
  const bool is_move = req.type == MsgType::kMove;
  std::string name = req.name;
  std::string to;
  Frame ok;
  ok.type = MsgType::kOk;
  std::optional<std::pair<Status, std::string>> refusal;
  if (is_move && !protocol::split_move(req.name, name, to)) {
    name.clear();
    refusal = {Status::kBadName, "mv needs two names separated by one NUL byte"};
  } else if (server_.options().read_only) {
    refusal = {Status::kForbidden, "server is read-only; " + op + " is refused"};
  } else if (req.type != MsgType::kRemove) {
    // Names that come into being obey the same limits as uploads.
    refusal = check_new_name(is_move ? to : name);
  }
  if (!refusal) {
    std::error_code ec;
    if (req.type == MsgType::kRemove) {
      ec = server_.storage().remove(name);
    } else if (req.type == MsgType::kMkdir) {
      ec = server_.storage().make_folder(name);
    } else {
      storage::MoveResult moved;
      ec = server_.storage().move(name, to, moved);
      if (!ec || ec == storage::errc::not_durable) {
        to = moved.to;
        ok.size = moved.replaced ? 1 : 0;
        ok.name = moved.to;
      }
    }
    if (ec == storage::errc::not_durable) {
      refusal = {Status::kStorage, op + " of " + storage::quote_name(name) +
                                       " was done, but the server could not sync the folder: it may not survive a "
                                       "crash"};
    } else if (ec) {
      refusal = describe(ec, ec == std::errc::file_exists && is_move ? to : name);
    }
  }
  const std::string* to_ptr = is_move ? &to : nullptr;
  if (refusal) {
    log_transfer(op, name, 0, start, protocol::to_string(refusal->first), to_ptr);
    co_return co_await send_error(refusal->first, std::move(refusal->second));
  }
  log_transfer(op, name, 0, start, "ok", to_ptr);
  co_return co_await send(ok);
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

// ---------------------------------------------------------------- parallel streams

namespace {

std::string range_text(std::uint64_t off, std::uint64_t len) {
  return "[" + std::to_string(off) + ", " + std::to_string(off + len) + ")";
}

// Whether [mtime_ns, mtime_ns + size) of a request lies inside a file of `size` bytes (the
// offset travels in mtime_ns; a negative one never fits).
bool range_fits(const Frame& req, std::uint64_t size) {
  if (req.mtime_ns < 0) return false;
  const auto off = static_cast<std::uint64_t>(req.mtime_ns);
  return off <= size && req.size <= size - off;
}

}  // namespace

asio::awaitable<std::error_code> Session::write_file_range(int fd, std::uint64_t off, std::uint64_t end,
                                                           std::uint64_t& sent_total) {
  sent_total = 0;
  if (auto ec = co_await flush()) co_return ec;
  if (stream_->can_send_file()) {
    // Plain TCP: from the page cache to the socket.
    while (off < end) {
      arm(server_.options().body_timeout, "send");
      const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(end - off, kSendFileStep));
      auto [ec, sent] = co_await stream_->send_file(fd, off, want);
      if (ec == asio::error::operation_not_supported) break;  // copy the rest below
      if (!ec && sent == 0) co_return std::make_error_code(std::errc::io_error);  // shrank under us
      if (ec) co_return ec;
      off += sent;
      sent_total += sent;
    }
  }
  while (off < end) {
    const auto buf = chunk(end - off);
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), end - off));
    std::size_t got = 0;
    auto ec = storage::pread_full(fd, buf.first(want), off, got);
    if (!ec && got < want) ec = std::make_error_code(std::errc::io_error);
    if (!ec) ec = co_await write_all(buf.first(got));
    if (ec) co_return ec;
    off += got;
    sent_total += got;
  }
  co_return std::error_code{};
}

asio::awaitable<std::error_code> Session::handle_get_range(const Frame& req) {
  const auto start = std::chrono::steady_clock::now();
  storage::ReadFile file;
  // The client asks for ranges of the version it saw in its STAT: a file replaced since
  // must not be mixed into it. The digest cache makes this check cheap.
  Frame reply;
  if (auto refused = co_await open_for_download("get-range", req, start, file, reply.digest)) co_return *refused;
  const std::string q = storage::quote_name(req.name);
  std::optional<std::string> refusal;
  if (!hash::equal_constant_time(reply.digest, req.digest)) {
    refusal = q + " changed on the server since the transfer began; run the command again";
  } else if (!range_fits(req, file.size)) {
    refusal = "range " + range_text(static_cast<std::uint64_t>(req.mtime_ns), req.size) + " lies outside " + q +
              " (" + std::to_string(file.size) + " bytes)";
  }
  if (refusal) {
    log_transfer("get-range", req.name, 0, start, protocol::to_string(Status::kConflict));
    co_return co_await send_error(Status::kConflict, std::move(*refusal));
  }
  reply.type = MsgType::kRange;
  reply.size = req.size;
  reply.mtime_ns = req.mtime_ns;
  // How many connections the client should use: it learns it from its first range.
  reply.name = std::to_string(server_.parallel_.cap());
  queue(reply);
  const auto off = static_cast<std::uint64_t>(req.mtime_ns);
  // Once the header is out, a failure can only drop the connection (as for kGet).
  std::uint64_t sent = 0;
  const auto ec = co_await write_file_range(file.fd.get(), off, off + req.size, sent);
  log_transfer("get-range", req.name, req.size, start, ec ? "aborted: " + ec.message() : "ok");
  co_return ec;
}

asio::awaitable<std::error_code> Session::handle_put_open(const Frame& wire) {
  const auto start = std::chrono::steady_clock::now();
  // A resumable open (docs/protocol.md, "put with parallel streams"): the digest field holds
  // the client's source id, and the name is NAME, or NAME '\0' <the whole file's SHA-256 in
  // hex>; without the SHA-256 it only asks to continue a kept upload.
  const bool resumable = (wire.flags & protocol::kFlagResume) != 0;
  Frame req = wire;
  std::optional<protocol::Digest> whole;
  if (resumable) {
    if (const auto nul = wire.name.find('\0'); nul != std::string::npos) {
      req.name = wire.name.substr(0, nul);
      protocol::Digest d{};
      if (!hash::from_hex(std::string_view(wire.name).substr(nul + 1), d)) {
        log_transfer("put-open", req.name, 0, start, protocol::to_string(Status::kBadRequest));
        co_return co_await send_error(Status::kBadRequest, "PUT_OPEN: the SHA-256 after the name is not 64 hex digits");
      }
      whole = d;
    }
  } else {
    whole = wire.digest;
  }
  // An open replaces whatever this connection had begun of the same name: above all the
  // kept upload a look-up just offered and the client declined (its file changed), which
  // must be let go before the open with the new SHA-256 can take its place.
  std::erase_if(leases_, [&](const Lease& l) { return l.upload().over() || l.upload().spec().name == req.name; });
  auto refusal = check_put_limits(req, /*space=*/whole.has_value());
  storage::Upload up;
  bool nothing_kept = false;
  if (!refusal) {
    const auto mtime = (req.flags & protocol::kFlagHasMtime) != 0 ? std::optional(req.mtime_ns) : std::nullopt;
    const bool executable = (req.flags & protocol::kFlagExecutable) != 0;
    std::error_code ec;
    if (resumable) {
      // With mutual TLS the client's certificate is part of the file's identity: another
      // client that learnt the source id cannot take over the upload.
      const std::string owner = stream_->peer_subject();
      const protocol::Digest source =
          owner.empty() ? wire.digest
                        : hash::sha256(std::string(wire.digest.begin(), wire.digest.end()) + owner);
      // As for a resumable PUT: a retry may find its old connections still letting go.
      for (int tries = 0;; ++tries) {
        ec = server_.storage().begin_parallel_upload(req.name, req.size, mtime, executable, source, whole, up,
                                                     &folders_);
        if (ec != storage::errc::partial_busy) break;
        if (tries == kPartialBusyTries) {
          ec = whole ? server_.storage().begin_upload(req.name, req.size, up, &folders_) : storage::errc::no_partial;
          if (!ec) ec = up.preallocate();
          break;
        }
        asio::steady_timer wait(co_await asio::this_coro::executor, kPartialBusyWait);
        co_await wait.async_wait(kTuple);
      }
      nothing_kept = ec == storage::errc::no_partial;
      if (nothing_kept) ec.clear();
    } else {
      // Not resumable: nothing is kept if it is interrupted, and what earlier attempts at
      // this name kept is dropped (--no-resume means start over).
      ec = server_.storage().begin_upload(req.name, req.size, mtime, executable, storage::Resume::kNo, up,
                                          &folders_);
      // The whole size at once: ranges then land anywhere, and a full disk shows now.
      if (!ec) ec = up.preallocate();
    }
    if (ec) refusal = describe(ec, req.name);
  }
  if (refusal) {
    up.abort();
    log_transfer("put-open", req.name, 0, start, protocol::to_string(refusal->first));
    co_return co_await send_error(refusal->first, std::move(refusal->second));
  }
  Frame opened;
  opened.type = MsgType::kOpened;
  opened.size = server_.parallel_.cap();
  if (nothing_kept) {
    // No upload made: the client hashes its file and opens again with the SHA-256.
    log_transfer("put-open", req.name, 0, start, "ok (nothing kept to resume)");
    co_return co_await send(opened);
  }
  ParallelSpec spec;
  spec.name = req.name;
  spec.size = req.size;
  if ((req.flags & protocol::kFlagHasMtime) != 0) spec.mtime_ns = req.mtime_ns;
  spec.executable = (req.flags & protocol::kFlagExecutable) != 0;
  spec.owner = stream_->peer_subject();
  const storage::PartialRecord* rec = up.record();
  spec.digest = rec != nullptr ? rec->digest : *whole;
  // What a kept upload holds: " sample=OFF+LEN:SHA256" (the last MiB or less of its longest
  // interval, hashed from the staging file now, so the client can check that its file still
  // has those bytes), then " BEGIN-END" per interval, the longest first, as many as fit in a
  // name (those left out are only sent again).
  std::string held;
  if (rec != nullptr && !rec->held.empty()) {
    auto intervals = rec->held;
    std::stable_sort(intervals.begin(), intervals.end(),
                     [](const auto& a, const auto& b) { return a.second - a.first > b.second - b.first; });
    const auto [b0, e0] = intervals.front();
    const std::uint64_t len = std::min<std::uint64_t>(e0 - b0, protocol::kChunkSize);
    const auto buf = chunk(len).first(static_cast<std::size_t>(len));
    if (auto ec = up.read_at(e0 - len, buf)) {
      auto [st, msg] = describe(ec, req.name);
      log_transfer("put-open", req.name, 0, start, protocol::to_string(st));
      co_return co_await send_error(st, std::move(msg));
    }
    held = " sample=" + std::to_string(e0 - len) + "+" + std::to_string(len) + ":" + hash::to_hex(hash::sha256(buf));
    for (const auto& [b, e] : intervals) {
      const std::string one = " " + std::to_string(b) + "-" + std::to_string(e);
      if (32 + held.size() + one.size() > protocol::kMaxNameBytes) break;
      held += one;
    }
  }
  const std::uint64_t kept = rec != nullptr ? storage::good_bytes(*rec) : 0;
  leases_.push_back(server_.parallel_.open(std::move(up), std::move(spec)));
  opened.name = leases_.back().upload().id() + held;
  if (rec != nullptr) {
    opened.flags = protocol::kFlagResume;
    opened.digest = leases_.back().upload().spec().digest;
  }
  log_transfer("put-open", req.name, 0, start,
               kept > 0 ? "ok (resumed: " + std::to_string(kept) + " bytes kept)" : std::string("ok"));
  co_return co_await send(opened);
}

Lease* Session::lease_for(const std::string& id) {
  for (auto& l : leases_) {
    if (l.upload().id() == id) return &l;
  }
  auto joined = server_.parallel_.join(id, stream_->peer_subject());
  if (!joined) return nullptr;
  // Uploads this connection helped with that are over need no hold any more.
  std::erase_if(leases_, [](const Lease& l) { return l.upload().over(); });
  leases_.push_back(std::move(*joined));
  return &leases_.back();
}

asio::awaitable<std::error_code> Session::refuse_range(const Frame& req, const std::string& name, Status st,
                                                       std::string message,
                                                       std::chrono::steady_clock::time_point start) {
  log_transfer("put-range", name, 0, start, protocol::to_string(st));
  // The body is on its way already: read it to its end so the next request is found.
  if (auto ec = co_await read_body(req.size, [](std::span<const std::uint8_t>) {})) co_return ec;
  co_return co_await send_error(st, std::move(message));
}

asio::awaitable<std::error_code> Session::handle_put_range(const Frame& req) {
  const auto start = std::chrono::steady_clock::now();
  Lease* lease = lease_for(req.name);
  if (lease == nullptr) {
    co_return co_await refuse_range(req, req.name, Status::kNotFound,
                                    "no upload " + storage::quote_name(req.name) +
                                        " is open on this server (committed, abandoned when its connections "
                                        "closed, or never opened)",
                                    start);
  }
  ParallelUpload& up = lease->upload();
  const std::string& name = up.spec().name;
  if (!range_fits(req, up.spec().size) || req.size == 0) {
    const auto off = static_cast<std::uint64_t>(std::max<std::int64_t>(req.mtime_ns, 0));
    co_return co_await refuse_range(req, name, Status::kConflict,
                                    "range " + range_text(off, req.size) + " lies outside " +
                                        storage::quote_name(name) + " (" + std::to_string(up.spec().size) + " bytes)",
                                    start);
  }
  // Only a connection with a range worth taking counts against the cap.
  if (!lease->carry()) {
    co_return co_await refuse_range(req, name, Status::kUnavailable,
                                    "the upload of " + storage::quote_name(name) + " already has " +
                                        std::to_string(server_.parallel_.cap()) +
                                        " connections, the most this server allows (--max-streams)",
                                    start);
  }
  if (!up.begin_range()) {
    co_return co_await refuse_range(req, name, Status::kNotFound,
                                    "the upload of " + storage::quote_name(name) + " is over (committed or abandoned)",
                                    start);
  }
  // Written in place as it arrives; hashed on the way, so a range damaged in transit is
  // refused at once (the client sends it again) instead of failing the whole file at commit.
  const auto off = static_cast<std::uint64_t>(req.mtime_ns);
  std::uint64_t pos = off;
  hash::Sha256 sha;
  std::error_code store_ec;
  const auto read_ec = co_await read_body(req.size, [&](std::span<const std::uint8_t> data) {
    if (!store_ec) store_ec = up.write(pos, data);
    sha.update(data);
    pos += data.size();
  });
  const bool verified = !read_ec && !store_ec && sha.finish() == req.digest;
  up.end_range(off, req.size, verified);
  if (read_ec) {
    log_transfer("put-range", name, pos - off, start, "aborted: " + read_ec.message());
    co_return read_ec;
  }
  if (store_ec || !verified) {
    auto [st, msg] = store_ec ? describe(store_ec, name)
                              : std::pair{Status::kIntegrity, "range " + range_text(off, req.size) + " of " +
                                                                  storage::quote_name(name) +
                                                                  " does not match its SHA-256; send it again"};
    log_transfer("put-range", name, req.size, start, protocol::to_string(st));
    co_return co_await send_error(st, std::move(msg));
  }
  log_transfer("put-range", name, req.size, start, "ok");
  Frame done;
  done.type = MsgType::kDone;
  done.size = req.size;
  done.mtime_ns = req.mtime_ns;
  done.digest = req.digest;
  queue(done);  // with the next flush: pipelined ranges share writes
  co_return std::error_code{};
}

asio::awaitable<std::error_code> Session::handle_put_commit(const Frame& req) {
  const auto start = std::chrono::steady_clock::now();
  Lease* lease = lease_for(req.name);
  if (lease == nullptr) {
    log_transfer("put-commit", req.name, 0, start, protocol::to_string(Status::kNotFound));
    co_return co_await send_error(Status::kNotFound, "no upload " + storage::quote_name(req.name) +
                                                         " is open on this server (committed, abandoned when its "
                                                         "connections closed, or never opened)");
  }
  ParallelUpload& up = lease->upload();
  const ParallelSpec spec = up.spec();
  // The commit hashes the whole staging file: on the blocking pool, holding the upload.
  struct Outcome {
    ParallelUpload::CommitResult result = ParallelUpload::CommitResult::kGone;
    std::error_code ec;
    std::uint64_t missing = 0;
  };
  auto job = [shared = lease->shared()] {
    Outcome o;
    o.result = shared->commit(o.ec, o.missing);
    return o;
  };
  const Outcome outcome = co_await offload(std::move(job));
  const auto result = outcome.result;
  const auto ec = outcome.ec;
  const auto missing = outcome.missing;
  if (result == ParallelUpload::CommitResult::kDone || result == ParallelUpload::CommitResult::kFailed) {
    server_.parallel_.forget(up.id());
  }
  std::erase_if(leases_, [](const Lease& l) { return l.upload().over(); });  // `up` may be gone from here
  std::optional<std::pair<Status, std::string>> refusal;
  switch (result) {
    case ParallelUpload::CommitResult::kGone:
      refusal = {Status::kNotFound, "the upload of " + storage::quote_name(spec.name) + " is over already"};
      break;
    case ParallelUpload::CommitResult::kIncomplete:
      refusal = {Status::kConflict, storage::quote_name(spec.name) + " is not complete: " + std::to_string(missing) +
                                        " bytes missing, or ranges still arriving; commit once every range is "
                                        "acknowledged"};
      break;
    case ParallelUpload::CommitResult::kFailed:
    case ParallelUpload::CommitResult::kDone:
      if (ec) refusal = describe(ec, spec.name);
      break;
  }
  if (refusal) {
    log_transfer("put-commit", spec.name, 0, start, protocol::to_string(refusal->first));
    co_return co_await send_error(refusal->first, std::move(refusal->second));
  }
  log_transfer("put-commit", spec.name, spec.size, start, "ok");
  Frame done;
  done.type = MsgType::kDone;
  done.size = spec.size;
  done.digest = spec.digest;
  co_return co_await send(done);
}

}  // namespace ftx::server
