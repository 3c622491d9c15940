#pragma once
// The ftx server: one asio::io_context run by a pool of threads, one coroutine per
// connection (asio's cpp20 echo_server / Beast awaitable server model).
//
// Lifecycle: construct (opens the root, binds the listener; throws std::system_error on
// failure) -> start() -> stop() from any thread, or SIGINT/SIGTERM in run() -> wait().
// stop() closes the listener at once, closes connections that sit between requests, and
// lets transfers in flight finish for `grace`; after that the io_context is stopped and
// unfinished uploads are discarded (their staging files removed).

#include <asio.hpp>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "server/stream.hpp"
#include "server/uploads.hpp"
#include "storage/storage.hpp"

namespace ftx::server {

struct ServerOptions {
  std::filesystem::path root = "ftx-data";
  std::string host = "127.0.0.1";
  std::uint16_t port = 7021;  // 0 picks a free port (see Server::port())
  unsigned threads = 0;       // 0 = std::thread::hardware_concurrency()
  std::chrono::milliseconds grace{5000};

  // Limits (docs/operations.md). Connections over a limit get a kUnavailable error and are
  // closed; requests over a limit get an error before any body byte is sent.
  std::size_t max_connections = 1024;
  std::size_t max_connections_per_client = 64;  // per client IP address
  std::chrono::milliseconds idle_timeout{300'000};   // between requests
  std::chrono::milliseconds header_timeout{30'000};  // from a request's first byte to its last
  std::chrono::milliseconds body_timeout{60'000};    // without progress while a body moves
  std::uint64_t max_file_size = std::uint64_t{1} << 40;  // 1 TiB
  std::uint64_t min_free_bytes = 64ull << 20;             // free space an upload must leave
  std::size_t max_name_bytes = 1024;
  std::size_t max_depth = 32;  // folders in a name
  bool read_only = false;
  // Resumable uploads that make no progress for this long are removed (checked at start and
  // then every ttl/2, at least every minute; docs/operations.md).
  std::chrono::seconds partial_ttl{24 * 3600};
  // Parallel streams (put/get -P): connections that may carry one upload's ranges at once;
  // also the number a client is told to use for a download (docs/protocol.md).
  unsigned max_streams = 8;

  // Shared secret; empty = no authentication. Clients prove they know it by answering a
  // random challenge (HMAC-SHA256); a wrong answer is logged and answered after auth_delay.
  std::string token;
  std::chrono::milliseconds auth_delay{1000};

  // TLS 1.3 when set (make_server_tls_context); plain TCP otherwise.
  std::shared_ptr<asio::ssl::context> tls;
};

class Session;

// Thrown by the constructor when the listen address cannot be resolved or bound (the root
// problems throw plain std::system_error from storage::Storage).
class ListenError : public std::system_error {
 public:
  using std::system_error::system_error;
};

class Server {
 public:
  explicit Server(ServerOptions opts);
  ~Server();  // stops at once (no grace) and joins the pool
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound port (useful with port 0) and the address as "host:port".
  std::uint16_t port() const { return port_; }
  std::string listen_address() const;
  // True when only this machine can connect (a loopback address).
  bool listens_on_loopback() const;
  const storage::Storage& storage() const { return storage_; }
  // Uploads arriving over several connections (put -P) that are open now.
  const ParallelUploads& parallel_uploads() const { return parallel_; }
  unsigned threads() const { return threads_; }

  // Starts accepting and runs the pool in the background. Call once.
  void start();
  // Also stops gracefully on SIGINT/SIGTERM (a second signal stops at once). Then blocks
  // until the server has stopped. For the `ftx serve` command.
  void run();
  // Graceful stop; safe from any thread, any number of times.
  void stop();
  // Blocks until the pool has finished.
  void wait();

  // Connections currently open. wait_for_sessions blocks until at most `n` are open or the
  // timeout passes, returning whether the count was reached (for tests and shutdown). A
  // connection counts as open until the folders it held are closed.
  std::size_t sessions() const;
  const ServerOptions& options() const { return opts_; }
  bool wait_for_sessions(std::size_t n, std::chrono::milliseconds timeout) const;

 private:
  friend class Session;
  asio::awaitable<void> accept_loop();
  asio::awaitable<void> drain();
  // Removes expired partial uploads now and then, until the server stops.
  asio::awaitable<void> expire_partials();
  // Registers a session unless a connection limit is reached; returns the refusal message.
  std::string add_session(const std::shared_ptr<Session>& s);
  void remove_session(Session* s);
  asio::awaitable<void> refuse(std::unique_ptr<Stream> stream, std::string message);
  bool stopping() const { return stopping_.load(); }

  ServerOptions opts_;
  storage::Storage storage_;
  ParallelUploads parallel_;

  mutable std::mutex mutex_;
  mutable std::condition_variable sessions_cv_;
  std::map<Session*, std::weak_ptr<Session>> sessions_;
  std::map<std::string, std::size_t> per_client_;  // open connections per client address
  std::atomic<bool> stopping_{false};
  bool destroying_ = false;  // guarded by mutex_

  // Declared after everything a session touches, and destroyed explicitly first in
  // ~Server, so that coroutine frames destroyed with the io_context still find them.
  std::unique_ptr<asio::io_context> io_;
  std::optional<asio::strand<asio::io_context::executor_type>> strand_;  // listener, signals, drain
  std::optional<asio::ip::tcp::acceptor> acceptor_;
  std::optional<asio::signal_set> signals_;
  std::optional<asio::steady_timer> drain_timer_;
  std::optional<asio::steady_timer> expire_timer_;
  std::vector<std::thread> pool_;
  // Work that blocks for long (hashing a whole file: a put -P commit, the digest of a file
  // not in the digest cache) runs here, not on the I/O threads, whose other connections
  // would stall meanwhile (Session::offload). Stopped and joined in ~Server before the
  // io_context and the storage its jobs use go.
  std::optional<asio::thread_pool> blocking_;
  // Waits for the disk (a burst's syncfs, a large upload's fsync: seconds on a busy
  // filesystem) run here, apart from blocking_, so that they neither hold an I/O thread
  // nor keep the hashing jobs of other connections waiting (Session::offload_disk).
  // Stopped and joined with blocking_.
  std::optional<asio::thread_pool> disk_;
  unsigned threads_ = 1;
  std::uint16_t port_ = 0;
};

}  // namespace ftx::server
