#pragma once
// One client connection: reads requests, answers them, until the client closes, sends
// something malformed, or the server stops. Internal to the server library.
//
// Each Session lives on its own strand; every member runs there. Memory while idle is one
// small header buffer; the larger input and chunk buffers exist only while requests flow,
// so idle connections cost little.
//
// Replies to pipelined requests are batched: a reply is queued in out_ and written when the
// session is about to wait for more input (or the queue is large), so a client streaming
// many small files gets one write per batch of answers, not one per file.

#include <asio.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "protocol/codec.hpp"
#include "server/stream.hpp"
#include "server/uploads.hpp"
#include "storage/storage.hpp"

namespace ftx::server {

class Server;

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Server& server, std::unique_ptr<Stream> stream);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Spawns the connection's coroutine and its watchdog on the session's strand.
  void start();
  const std::string& peer() const { return peer_; }
  const std::string& client_address() const { return client_address_; }
  // For a connection refused before start(): hands the stream over.
  std::unique_ptr<Stream> release_stream() { return std::move(stream_); }

  // Asks the session to end: at once if it is waiting for a request, else after the
  // request in flight. A connection that has had a request answered is sent ERROR 14
  // (shutting-down) first, and one whose client may still be sending is read until it
  // closes, a second at most (serve, linger). Thread-safe.
  void shutdown();

 private:
  asio::awaitable<void> run();    // serve(), and the watchdog's end if it throws
  asio::awaitable<void> serve();  // the connection's requests, one after another
  // Cancels the pending socket operation when deadline_ passes (the asio timeouts example's
  // deadline + watchdog pattern: one timer per connection, not one per operation).
  asio::awaitable<void> watchdog();
  void arm(std::chrono::milliseconds timeout, const char* what);
  void arm_at(std::chrono::steady_clock::time_point deadline, const char* what);
  // While this coroutine waits for a job on a pool: the job's time is not the client's, so
  // no header or send deadline runs out meanwhile (what follows arms its own). Not while a
  // last error is sent (closing_ keeps its short deadline).
  void arm_for_blocking_work();

  // Reads one request frame into decoder_. Returns {} with a frame, asio::error::eof for a
  // clean close at a message boundary, or the error (protocol or socket).
  asio::awaitable<std::error_code> read_frame();
  // Reads exactly n body bytes, handing them to sink(span) chunk by chunk; bytes already
  // buffered after the header are used first.
  template <typename Sink>
  asio::awaitable<std::error_code> read_body(std::uint64_t n, Sink&& sink);
  // Queues f and writes everything queued.
  asio::awaitable<std::error_code> send(const protocol::Frame& f);
  // Queues f (and `body` after it) to be written at the next flush, after the answers of
  // the uploads still waiting for their folder's fsync (settle() first).
  void queue(const protocol::Frame& f, std::span<const std::uint8_t> body = {});
  // Group commit for pipelined uploads: publishes the verified uploads of staged_ together
  // (Storage::publish_staged: the seals, one syncfs, the renames, one fsync per folder) and
  // queues every one's answer in order -- kDone, or the error publishing it met -- and logs
  // it (its result followed by `note`). No answer of an upload leaves before it is durable.
  // Here, on this thread: for the destructor and as queue()'s and log_transfer()'s guard,
  // which in the request path find nothing staged (settle_off_thread ran first). Never
  // while a burst is on the disk pool: its answers come first.
  void settle(std::string_view note = {});
  // Publishes everything staged and answers it, in order: first the burst already on the
  // disk pool (finish_publish), then staged_ there too (a syncfs can wait for other
  // writers' dirty data, and must not hold this I/O thread's other connections meanwhile);
  // a single small upload is published here, as a plain PUT is. The request loop calls it
  // before any request but the next streamed PUT (so a GET behind a batch finds its files),
  // and every place in the request path that answers or logs calls it first (answers and
  // log records keep request order).
  asio::awaitable<void> settle_off_thread();
  // Pipelining of a batch's bursts: start_publish() hands staged_ to the disk pool and
  // returns at once, so this connection reads and stages the next burst while the last is
  // sealed, synced and renamed. One burst at a time is away: it is publishing_ (its
  // results published_, set by the job), so that a forced stop that destroys this
  // coroutine meanwhile still has the destructor publish (if the job never ran) and log it.
  // finish_publish() waits for that burst, if any, and queues its answers and log records.
  void start_publish();
  asio::awaitable<void> finish_publish();
  // Before waiting for more input: a client still streaming a batch (its next requests are
  // already here) gets the answers of the burst published so far, and the burst staged
  // meanwhile goes to the disk pool; otherwise everything is settled and answered (flush).
  asio::awaitable<std::error_code> answer_before_reading();
  // The end of a connection the server closes while the client may still be sending:
  // half-closes, then reads and drops input until the client closes (1 s at most), so that
  // what was sent last is read, not destroyed by a reset.
  asio::awaitable<void> linger();
  // Writes out_ (settled first) and empties it; a no-op when nothing is queued.
  asio::awaitable<std::error_code> flush();
  // Writes out_ as it is (log records first) and empties it: only where everything in it
  // comes before whatever is still staged.
  asio::awaitable<std::error_code> write_out();
  asio::awaitable<std::error_code> write_all(std::span<const std::uint8_t> data);
  asio::awaitable<std::error_code> send_error(protocol::Status st, std::string message);

  asio::awaitable<std::error_code> handle_put(const protocol::Frame& req);
  asio::awaitable<std::error_code> handle_get(const protocol::Frame& req);
  asio::awaitable<std::error_code> handle_list(const protocol::Frame& req);
  // kList with kFlagPartial: the partial uploads kept for resume (one kEntry each).
  asio::awaitable<std::error_code> handle_list_partial();
  asio::awaitable<std::error_code> handle_stat(const protocol::Frame& req);
  // kRemove, kMove, kMkdir: refused on a read-only server; new names obey the upload limits.
  asio::awaitable<std::error_code> handle_change(const protocol::Frame& req);
  // Answers a refused kPut; a streamed one's body is read and dropped first.
  asio::awaitable<std::error_code> refuse_put(const protocol::Frame& req, protocol::Status st, std::string message,
                                              std::chrono::steady_clock::time_point start);
  static protocol::Frame entry_of(const storage::FileInfo& f);

  // Parallel streams (docs/protocol.md, "Parallel streams"; server/uploads.hpp).
  // kGetRange: one range of a file, only while the file is still the one the client expects.
  asio::awaitable<std::error_code> handle_get_range(const protocol::Frame& req);
  // kPutOpen: checks the upload like a kPut, preallocates its staging file, answers its id.
  asio::awaitable<std::error_code> handle_put_open(const protocol::Frame& req);
  // kPutRange: writes one range in place and checks its SHA-256. A refused range's body is
  // read and dropped, so the connection stays in step.
  asio::awaitable<std::error_code> handle_put_range(const protocol::Frame& req);
  // kPutCommit: verifies the whole staging file and publishes it.
  asio::awaitable<std::error_code> handle_put_commit(const protocol::Frame& req);
  // Reads and drops a kPutRange body, then answers `st`.
  asio::awaitable<std::error_code> refuse_range(const protocol::Frame& req, const std::string& name,
                                                protocol::Status st, std::string message,
                                                std::chrono::steady_clock::time_point start);
  // This connection's hold on upload `id`: the one it has, else a new one (nullptr when
  // the upload is not open).
  Lease* lease_for(const std::string& id);
  // Writes [off, end) of `fd` to the client: sendfile(2) on plain TCP (where the file
  // system cannot, the rest is copied), else read and write. Everything queued goes out
  // first. `sent` counts the file's bytes written.
  asio::awaitable<std::error_code> write_file_range(int fd, std::uint64_t off, std::uint64_t end, std::uint64_t& sent);
  // Opens req.name for a download (kGet, kGetRange) and takes its SHA-256. On failure the
  // request is answered with an ERROR, logged as `op`, and the error to end it with is
  // returned; nullopt when `file` and `digest` are ready.
  asio::awaitable<std::optional<std::error_code>> open_for_download(const char* op, const protocol::Frame& req,
                                                                    std::chrono::steady_clock::time_point start,
                                                                    storage::ReadFile& file, protocol::Digest& digest);
  asio::awaitable<std::error_code> handle_hello();
  asio::awaitable<std::error_code> handle_auth(const protocol::Frame& req);
  // Logs, waits auth_delay, answers kUnauthorized; the caller then closes the connection.
  asio::awaitable<void> refuse_auth(std::string why);
  // Checks a name about to be created (upload, mkdir, mv target) against --max-name/--max-depth.
  std::optional<std::pair<protocol::Status, std::string>> check_new_name(const std::string& name) const;
  // Checks a kPut against the server's limits before anything is allocated or read.
  // `space`: also check free space (not for a look-up that can only continue an upload whose
  // staging file already holds its whole size).
  std::optional<std::pair<protocol::Status, std::string>> check_put_limits(const protocol::Frame& req,
                                                                            bool space = true) const;

  // Maps a storage error to its wire status and a message for the client.
  static std::pair<protocol::Status, std::string> describe(const std::error_code& ec, const std::string& name);
  // One record per request (log/log.hpp): peer, op, name, amount (bytes, or entries for
  // ls), duration, result; `to` for mv. The pipelined uploads still unanswered are settled
  // (and logged) first.
  void log_transfer(std::string_view op, const std::string& name, std::uint64_t amount,
                    std::chrono::steady_clock::time_point start, std::string_view result,
                    const std::string* to = nullptr);
  // log_transfer() without settling first (answer_staged: the next burst may be staged).
  void log_record(std::string_view op, const std::string& name, std::uint64_t amount,
                  std::chrono::steady_clock::time_point start, std::string_view result,
                  const std::string* to = nullptr);
  // Sends a last error with a short deadline of its own; the connection closes after it.
  asio::awaitable<void> send_final_error(protocol::Status st, std::string message);
  // A body buffer of at least min(n, kChunkSize) bytes, kept between requests.
  std::span<std::uint8_t> chunk(std::uint64_t n);
  // Runs `fn` on the server's pool for blocking work and resumes on this connection's
  // executor with its result (fn's exceptions are rethrown here). `fn` must own or share
  // everything it touches: should the server stop meanwhile, this coroutine is destroyed
  // without waiting for it.
  template <typename Fn>
  asio::awaitable<std::invoke_result_t<Fn&>> offload(Fn fn);
  // offload() onto the pool for waits on the disk (Server::disk_): syncfs, fsync.
  template <typename Fn>
  asio::awaitable<std::invoke_result_t<Fn&>> offload_disk(Fn fn);
  template <typename Fn>
  asio::awaitable<std::invoke_result_t<Fn&>> offload_on(asio::thread_pool& pool, Fn fn);
  // Sets in_'s capacity; only while it holds no unread bytes.
  void resize_in(std::size_t capacity);

  Server& server_;
  std::unique_ptr<Stream> stream_;
  asio::ip::tcp::socket& socket_;  // the TCP layer under stream_: cancel, close, endpoints
  asio::steady_timer watchdog_;
  std::chrono::steady_clock::time_point deadline_ = std::chrono::steady_clock::time_point::max();
  const char* deadline_what_ = "";  // what the current deadline guards: idle, header, body, send
  const char* expired_ = nullptr;   // what the deadline that fired guarded
  bool closing_ = false;            // sending a last error: keep the short closing deadline
  bool done_ = false;
  bool authenticated_ = false;
  std::optional<protocol::Digest> nonce_;  // the challenge sent, valid for one kAuth
  std::string peer_;
  std::string client_address_;
  protocol::Decoder decoder_;
  // Bytes read but not yet consumed: in_[in_begin_, in_end_). Uninitialised storage (no
  // memset per allocation): small while idle, larger while a pipelined batch streams in.
  std::unique_ptr<std::uint8_t[]> in_;
  std::size_t in_capacity_ = 0;
  std::size_t in_begin_ = 0;
  std::size_t in_end_ = 0;
  std::vector<std::uint8_t> out_;  // replies queued for the next flush
  std::unique_ptr<std::uint8_t[]> chunk_;  // body buffer: sized to the bodies seen, freed when idle if large
  std::size_t chunk_capacity_ = 0;
  bool idle_ = false;                // waiting for a request (or a TLS handshake) to begin
  // When read_frame last began to wait for the client (after answering what it had read):
  // a pause longer than kBatchGap is not a batch's gap (the folder cache, a stop's linger).
  std::chrono::steady_clock::time_point waiting_since_{};
  bool pipelining_ = false;          // the last request was a streamed upload: read in large bites
  storage::FolderCache folders_;     // the last folder a request resolved; cleared when idle
  // Files GETs have sent, closed a few at a time (8: a connection's descriptors stay few),
  // all of them whenever the connection goes idle, and before a GET's open is retried when
  // the descriptors ran out.
  storage::CloseBatch sent_files_{8};
  // Pipelined uploads received and verified but not yet published (Upload::stage), in
  // request order; handed to the disk pool as a burst by start_publish() and answered by
  // finish_publish(), or published and answered by settle_off_thread() (settle() for a lone
  // small one and in the destructor).
  struct Staged {
    storage::Upload upload;
    protocol::Frame done;
    std::string name;
    std::chrono::steady_clock::time_point start;
  };
  std::vector<Staged> staged_;
  std::vector<Staged> publishing_;             // start_publish's burst, while on the pool
  std::vector<std::error_code> published_;     // its results, once the job ran (set there)
  // A burst is on the disk pool (start_publish never sends an empty one): finish_publish()
  // pending.
  bool burst_away() const { return !publishing_.empty(); }
  bool publish_ready_ = false;                 // its job has finished (set on this strand)
  asio::steady_timer publish_wake_;            // cancelled when the job finishes
  static std::vector<storage::Upload*> staged_uploads(std::vector<Staged>& batch);
  // Queues and logs each staged upload's answer: kDone, or the error publishing it met.
  void answer_staged(std::vector<Staged>& batch, const std::vector<std::error_code>& results, std::string_view note);
  // check_put_limits: the last statfs answer, less what this connection accepted since.
  mutable std::uint64_t free_estimate_ = 0;
  mutable std::chrono::steady_clock::time_point free_checked_{};
  // Parallel uploads this connection opened or carried ranges of: an upload whose every
  // connection closed without committing it is abandoned (server/uploads.hpp).
  std::vector<Lease> leases_;
};

}  // namespace ftx::server
