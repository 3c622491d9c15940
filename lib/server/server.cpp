#include "server/server.hpp"

#include <spdlog/spdlog.h>

#include <asio/experimental/as_tuple.hpp>

#include "log/log.hpp"
#include "protocol/codec.hpp"
#include "server/session.hpp"

namespace ftx::server {
namespace {

constexpr auto kTuple = asio::experimental::as_tuple(asio::use_awaitable);

// Logs what escaped a coroutine; used instead of asio::detached so no fault goes unseen.
auto log_failure(std::string what) {
  return [what = std::move(what)](const std::exception_ptr& e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      spdlog::error("{} failed: {}", what, ex.what());
    }
  };
}

}  // namespace

Server::Server(ServerOptions opts)
    : opts_(std::move(opts)), storage_(opts_.root), parallel_(std::clamp(opts_.max_streams, 1u, 64u)) {
  threads_ = opts_.threads != 0 ? opts_.threads : std::max(1u, std::thread::hardware_concurrency());
  io_ = std::make_unique<asio::io_context>(static_cast<int>(threads_));
  blocking_.emplace(std::max(2u, threads_));
  disk_.emplace(std::max(2u, threads_));
  strand_.emplace(asio::make_strand(*io_));
  acceptor_.emplace(*strand_);

  const std::string where = opts_.host + ":" + std::to_string(opts_.port);
  std::error_code ec;
  asio::ip::tcp::resolver resolver(*io_);
  const auto results = resolver.resolve(opts_.host, std::to_string(opts_.port),
                                        asio::ip::resolver_base::passive | asio::ip::resolver_base::numeric_service, ec);
  if (ec || results.empty()) throw ListenError(ec, "cannot resolve listen address " + where);
  const asio::ip::tcp::endpoint endpoint = results.begin()->endpoint();
  acceptor_->open(endpoint.protocol(), ec);
  if (!ec) acceptor_->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_->bind(endpoint, ec);
  if (!ec) acceptor_->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw ListenError(ec, "cannot listen on " + where);
  port_ = acceptor_->local_endpoint().port();
}

Server::~Server() {
  stopping_ = true;
  if (io_) io_->stop();
  wait();
  // Tear down in dependency order: I/O objects before their io_context, and the io_context
  // (whose destruction destroys pending session coroutines, removing their staging files)
  // before the storage and session registry those coroutines use.
  {
    std::lock_guard lock(mutex_);
    destroying_ = true;
  }
  // The blocking pools go first, while the io_context lives: a job that began finishes (it
  // posts its result to the stopped io_context, where it is dropped); one still queued is
  // abandoned. Destroying an offload() or offload_disk() job destroys the session coroutine
  // waiting for it, whose socket and timers belong to that io_context; a burst's publishing
  // job (Session::start_publish) holds the session itself, not a coroutine, and destroying
  // it only drops that reference: ~Session then publishes the burst itself. No I/O thread
  // runs now to queue another.
  blocking_->stop();
  disk_->stop();
  blocking_->join();
  disk_->join();
  blocking_.reset();
  disk_.reset();
  drain_timer_.reset();
  expire_timer_.reset();
  signals_.reset();
  acceptor_.reset();
  strand_.reset();
  io_.reset();
}

std::string Server::listen_address() const {
  const auto ep = acceptor_->local_endpoint();
  const auto addr = ep.address();
  return (addr.is_v6() ? "[" + addr.to_string() + "]" : addr.to_string()) + ":" + std::to_string(port_);
}

bool Server::listens_on_loopback() const { return acceptor_->local_endpoint().address().is_loopback(); }

void Server::start() {
  asio::co_spawn(*strand_, accept_loop(), log_failure("listener"));
  expire_timer_.emplace(*strand_);
  asio::co_spawn(*strand_, expire_partials(), log_failure("partial upload expiry"));
  pool_.reserve(threads_);
  for (unsigned i = 0; i < threads_; ++i) {
    pool_.emplace_back([this] {
      // A handler that throws must not take the whole server down with it.
      for (;;) {
        try {
          io_->run();
          return;
        } catch (const std::exception& e) {
          spdlog::error("unexpected exception in the I/O pool: {}", e.what());
        }
      }
    });
  }
}

void Server::run() {
  signals_.emplace(*strand_, SIGINT, SIGTERM);
  signals_->async_wait([this](const std::error_code& ec, int sig) {
    if (ec) return;
    spdlog::info("signal {}: finishing transfers in flight (up to {} ms); signal again to stop at once", sig,
                 opts_.grace.count());
    log::flush();
    stop();
    signals_->async_wait([this](const std::error_code& ec2, int) {
      if (ec2) return;
      spdlog::warn("second signal: stopping now");
      io_->stop();
    });
  });
  start();
  wait();
}

void Server::stop() {
  if (stopping_.exchange(true)) return;
  asio::co_spawn(*strand_, drain(), log_failure("shutdown"));
}

asio::awaitable<void> Server::expire_partials() {
  const auto ttl = opts_.partial_ttl;
  const auto period = std::clamp<std::chrono::milliseconds>(ttl / 2, std::chrono::seconds(1), std::chrono::minutes(1));
  while (!stopping()) {
    // A few directory entries and small reads: cheap enough for the strand.
    if (const auto n = storage_.expire_partials(ttl); n > 0) {
      spdlog::info("removed {} partial upload(s) idle for {} s or more", n, ttl.count());
      log::flush();
    }
    expire_timer_->expires_after(period);
    auto [ec] = co_await expire_timer_->async_wait(kTuple);
    if (ec) co_return;
  }
}

asio::awaitable<void> Server::drain() {
  std::error_code ignored;
  acceptor_->close(ignored);
  if (expire_timer_) expire_timer_->cancel();
  std::vector<std::shared_ptr<Session>> open;
  {
    std::lock_guard lock(mutex_);
    for (auto& [ptr, weak] : sessions_) {
      if (auto s = weak.lock()) open.push_back(std::move(s));
    }
  }
  for (auto& s : open) s->shutdown();
  open.clear();
  drain_timer_.emplace(*strand_, opts_.grace);
  // remove_session cancels the timer when the last connection ends, so a quiet server
  // stops at once instead of sitting out the grace period.
  if (sessions() > 0) co_await drain_timer_->async_wait(kTuple);
  if (sessions() > 0) spdlog::warn("grace period over: dropping {} connection(s) in flight", sessions());
  io_->stop();
}

void Server::wait() {
  for (auto& t : pool_) {
    if (t.joinable()) t.join();
  }
}

asio::awaitable<void> Server::accept_loop() {
  for (;;) {
    auto [ec, socket] = co_await acceptor_->async_accept(asio::make_strand(*io_), kTuple);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor_->is_open()) co_return;
      // Out of descriptors and similar: keep serving the connections we have, retry soon.
      spdlog::warn("accept failed: {}", ec.message());
      asio::steady_timer pause(*strand_, std::chrono::milliseconds(100));
      co_await pause.async_wait(kTuple);
      continue;
    }
    auto stream = opts_.tls ? make_tls_stream(std::move(socket), *opts_.tls) : make_plain_stream(std::move(socket));
    auto session = std::make_shared<Session>(*this, std::move(stream));
    if (std::string refusal = add_session(session); !refusal.empty()) {
      spdlog::warn("{} refused: {}", session->peer(), refusal);
      auto refused = session->release_stream();
      const auto executor = refused->socket().get_executor();
      asio::co_spawn(executor, refuse(std::move(refused), std::move(refusal)), log_failure("refusal"));
      continue;
    }
    session->start();
  }
}

std::string Server::add_session(const std::shared_ptr<Session>& s) {
  std::lock_guard lock(mutex_);
  if (sessions_.size() >= opts_.max_connections) {
    return "server busy: " + std::to_string(sessions_.size()) + " connections open; try again later";
  }
  auto& mine = per_client_[s->client_address()];
  if (mine >= opts_.max_connections_per_client) {
    if (mine == 0) per_client_.erase(s->client_address());
    return "too many connections from " + s->client_address() + " (limit " +
           std::to_string(opts_.max_connections_per_client) + "); close some and try again";
  }
  ++mine;
  sessions_.emplace(s.get(), s);
  return {};
}

asio::awaitable<void> Server::refuse(std::unique_ptr<Stream> stream, std::string message) {
  // Say why (after the TLS handshake, on a TLS server), then close gracefully: a reset
  // could destroy the message before the client reads it. The whole exchange is bounded
  // to a second so refusals cannot pile up. The stream is shared with the timer's
  // handler, which may run after this coroutine ended.
  std::shared_ptr<Stream> s(std::move(stream));
  const auto bytes = protocol::encode(protocol::make_error(protocol::Status::kUnavailable, std::move(message)));
  asio::steady_timer bound(s->socket().get_executor(), std::chrono::seconds(1));
  bound.async_wait([s](const std::error_code& ec) {
    std::error_code ignored;
    if (!ec) s->socket().close(ignored);
  });
  std::error_code ec = co_await s->handshake();
  for (std::span<const std::uint8_t> left(bytes); !ec && !left.empty();) {
    auto [wec, n] = co_await s->write_some(asio::buffer(left.data(), left.size()));
    ec = wec;
    left = left.subspan(n);
  }
  std::error_code ignored;
  s->socket().shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
  std::uint8_t sink[512];
  while (!ec && s->socket().is_open()) {
    auto [rec, m] = co_await s->read_some(asio::buffer(sink));
    ec = rec;
  }
  bound.cancel();
  s->socket().close(ignored);
}

void Server::remove_session(Session* s) {
  std::lock_guard lock(mutex_);
  if (sessions_.erase(s) == 1) {
    auto it = per_client_.find(s->client_address());
    if (it != per_client_.end() && --it->second == 0) per_client_.erase(it);
  }
  sessions_cv_.notify_all();
  if (stopping_ && sessions_.empty() && !destroying_) {
    asio::post(*strand_, [this] {
      if (drain_timer_) drain_timer_->cancel();
    });
  }
}

std::size_t Server::sessions() const {
  std::lock_guard lock(mutex_);
  return sessions_.size();
}

bool Server::wait_for_sessions(std::size_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  return sessions_cv_.wait_for(lock, timeout, [&] { return sessions_.size() <= n; });
}

}  // namespace ftx::server
