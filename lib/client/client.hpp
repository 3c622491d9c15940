#pragma once
// A blocking ftx client: one TCP connection, any number of requests on it, one at a time.
//
// Every operation either succeeds or throws client::Error, whose kind() says which of the
// documented failure classes happened (apps/ftx maps them to exit codes) and whose what()
// is a one-line message for the user. Each socket operation gives up after `io_timeout`
// without progress. Not thread-safe: one Client per thread.

#include <asio.hpp>
#include <asio/ssl.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <tuple>
#include <utility>
#include <stdexcept>
#include <string>
#include <vector>

#include "client/local_file.hpp"
#include "hash/hash_thread.hpp"
#include "protocol/address.hpp"
#include "protocol/codec.hpp"
#include "tls/buffered_socket.hpp"

namespace ftx::client {

enum class Failure {
  kConnection,  // cannot connect, connection lost, no answer
  kNotFound,    // the server has no such file
  kRejected,    // the server refused the request (bad name, conflict, storage, ...)
  kIntegrity,   // SHA-256 mismatch, detected by either side
  kLocalIo,     // reading or writing a local file failed
  kProtocol,    // the peer does not speak this protocol (version)
  kAuth,        // the server wants a token, or a different one
  kTls,         // TLS handshake failed, or the server's certificate is not trusted
};

// How the client speaks TLS and decides to trust the server (docs/tls.md).
struct TlsOptions {
  bool enabled = false;
  std::string ca_file;    // trust certificates signed by this CA (host name checked)...
  std::filesystem::path known_servers;  // ...else pin fingerprints here (ssh's model)
  bool accept_new = false;  // pin an unknown server without asking (scripts)
  // Asked about an unknown server when !accept_new; returns whether to trust and pin it.
  std::function<bool(const std::string& address, const std::string& fingerprint)> confirm;
  std::string cert_file;  // client certificate and key, for servers that require them
  std::string key_file;
};

class Error : public std::runtime_error {
 public:
  Error(Failure kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  Failure kind() const { return kind_; }
  // The server turned the request down for what it asked (no such name; a name, conflict or
  // storage problem: kNotFound, kRejected), and the connection goes on.
  bool refused() const { return kind_ == Failure::kNotFound || kind_ == Failure::kRejected; }

 private:
  Failure kind_;
};

struct Result {
  std::uint64_t bytes = 0;
  protocol::Digest digest{};
  // Where a download was written ("-" for stdout); a batch upload's file. Text rather than a
  // std::filesystem::path, as in BatchItem.
  std::string local;
  bool executable = false;
};

struct Entry {
  std::string name;
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;
  bool folder = false;
  bool executable = false;
  std::optional<protocol::Digest> digest;  // when asked for (ls -l, stat)
  bool described = true;  // size, mtime_ns and executable were sent (false: ListOptions::names_only)
};

struct ListOptions {
  bool digests = false;  // ask for every file's stored SHA-256
  // With digests: only those the server has on record; it hashes no file for the listing,
  // and the others come without (Entry::digest empty). Older servers hash them all the same.
  bool known_digests_only = false;
  bool folders = false;  // also list folders (Entry::folder)
  // Only names and kinds are needed: the server may leave out sizes, mtimes and modes
  // (Entry::described false), which spares it a stat per entry. Older servers send them.
  bool names_only = false;
};

// How put and get treat an interrupted transfer (docs/protocol.md, "resume").
struct TransferOptions {
  // Continue what an earlier, interrupted transfer of the same file left (the server's
  // partial upload; the hidden .<name>.ftx-partial beside a download's target), and leave
  // such a partial when this one is interrupted. false: start over, and leave nothing.
  bool resume = true;
};

// Called as body bytes move: bytes of the file so far, and its size. put and get of large
// files call it first before any body byte moves, with the bytes a resume skips (else 0).
using ProgressFn = std::function<void(std::uint64_t done, std::uint64_t total)>;

// One file of a batch (put_many / get_many).
// `local` is the path as text: a std::filesystem::path splits itself into components (an
// allocation, and a parse) each time one is made or copied, and making and copying one per
// file was about a tenth of the client's time in a folder transfer of small files.
struct BatchItem {
  std::string local;  // put: the file to send; get: the target path
  std::string remote;
};

// Uploads that become known while their batch runs (put_fed): put -r walks its folder as it
// sends, so that the server has work from the first folder on instead of waiting for the
// whole walk (10,000 files: about 15 ms, most of the client's time before its first byte).
// `more` appends the next items to `items` and returns false once there are none left; the
// batch calls it on the caller's thread whenever it has taken every item there is, and ends
// with the exception it throws, if it throws (as when on_result throws: items not yet
// reported may or may not have been stored, and the connection is not to be used again). `items` grows at its end only (a deque: a
// reference to an item stays good); BatchResult::index indexes it.
struct BatchFeed {
  std::deque<BatchItem> items;
  std::function<bool(std::deque<BatchItem>&)> more;
};

// The outcome of one BatchItem: either result or error is set. The error's message does not
// name the item (the caller knows which it is): "refused: <the server's reason>".
struct BatchResult {
  std::size_t index = 0;  // into the items given
  Result result;
  std::optional<Error> error;
};

struct BatchOptions {
  std::size_t window_files = 256;            // requests in flight at most (0 counts as 1)
  std::uint64_t window_bytes = 16ull << 20;  // unanswered upload bytes at most (one file always fits)
  // Connections the batch's files are spread over (put -r -P N): this one and up to
  // connections - 1 more, opened like put_parallel's (see put_many). 0 counts as 1.
  unsigned connections = 1;
};

struct ReceivedBody;  // a small download held in memory (client.cpp)

class Client {
 public:
  static constexpr std::chrono::seconds kDefaultTimeout{300};

  // Connects to `address` and, when `token` is not empty, authenticates with it (the token
  // itself never crosses the wire). Throws Error(kConnection) or Error(kAuth) with a
  // message that says what to do.
  explicit Client(const protocol::Address& address, std::string token = {},
                  std::chrono::milliseconds io_timeout = kDefaultTimeout, const TlsOptions& tls = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Uploads `local` (a regular file) as `remote`, with its mtime and executable bit. The
  // server publishes it only after its SHA-256 matched; returns once it is durable there.
  // Files over 1 MiB resume (TransferOptions): only the bytes the server does not hold yet
  // are read and sent, after the last chunk before them was checked against the file; a
  // file that changed since (size, mtime or that chunk) starts over on a new connection.
  Result put(const std::filesystem::path& local, const std::string& remote, const ProgressFn& progress = {},
             const TransferOptions& opts = {});

  // Downloads `remote`. `local` empty = ./<base name>; an existing folder = <folder>/<base
  // name>; "-" or "/dev/stdout" = standard output (verified at the end: a mismatch throws
  // kIntegrity after the bytes were written). Otherwise the file appears only once verified,
  // with the server's mtime and executable bit.
  // Resumes (TransferOptions) from the hidden partial beside the target when the server's
  // file is still the one it was taken from (same SHA-256); not for standard output.
  Result get(const std::string& remote, const std::filesystem::path& local, const ProgressFn& progress = {},
             const TransferOptions& opts = {});

  // Parallel streams (docs/protocol.md, "Parallel streams"): one file over `streams` TCP
  // connections at once, for long, lossy links where one stream crawls. This connection
  // does the exchanges that begin and end the transfer; streams - 1 more are opened with the
  // same address, token, TLS options and timeout, and each carries ranges of the file, 4 MiB of
  // requests in flight at a time. The server may allow fewer connections (it says how many);
  // then fewer are used. Everything is verified as with put/get: the server publishes an
  // upload only after the whole file's SHA-256 matched, and a download replaces `local` only
  // after the staging file hashed to the SHA-256 the server's STAT announced (a file changed
  // on the server meanwhile fails with kRejected). With streams <= 1, a file of 1 MiB or
  // less, or standard output as the target, these are just put() and get().
  // `progress` is called from one thread at a time, never with a smaller `done` than before.
  // put_parallel resumes (TransferOptions): the server keeps an interrupted upload with the
  // ranges that arrived verified and the SHA-256 the first attempt announced, and a later
  // put -P of the same file (machine, path, inode, size, mtime; a sample of the kept bytes
  // hashing the same) sends only the other ranges, without reading the file whole again.
  // A file changed in place outside the sample: a change in bytes the server holds is not
  // seen (the server publishes the file as the first attempt read it, which its SHA-256
  // proves); one in bytes sent now fails the final check: kIntegrity, and the server drops
  // the upload (the next attempt starts over).
  Result put_parallel(const std::filesystem::path& local, const std::string& remote, unsigned streams,
                      const ProgressFn& progress = {}, const TransferOptions& opts = {});
  // get_parallel resumes (TransferOptions): the ranges an interrupted get -P (or the prefix
  // an interrupted get) left in .<name>.ftx-partial are not fetched again, if the server's
  // file is still that version. The whole file is hashed from disk before commit either way.
  Result get_parallel(const std::string& remote, const std::filesystem::path& local, unsigned streams,
                      const ProgressFn& progress = {}, const TransferOptions& opts = {});

  // Unfinished uploads the server keeps for resume (ls --partial): Entry::size is the whole
  // file, `received` the bytes it holds, mtime_ns the last progress.
  struct Partial {
    std::string name;
    std::uint64_t size = 0;
    std::uint64_t received = 0;
    std::int64_t updated_ns = 0;
  };
  std::vector<Partial> list_partial();

  // Pipelined transfers of many files over this one connection: requests go out without
  // waiting for the answers to earlier ones (at most `opts` ahead), so small files are not
  // one round trip each. Every file is verified and published atomically as with put/get.
  // on_result is called once per item, in order; a failed file does not stop the others.
  // on_bytes is called with the number of body bytes each time some moved. Both are called
  // on the caller's thread. Throws Error only when the connection itself fails -- including
  // an ERROR after which the server closes it (status 14, stopping; 13, timeout), which ends
  // the batch with a kConnection Error rather than failing one item; items not yet reported
  // then did not complete. A read-only server's refusal (status 11), which every upload
  // would get alike, also ends put_many: Error(kRejected), this connection closed. If on_result throws, the batch ends with that
  // exception, and no more items are reported (some of them may have been saved).
  // For get_many, items' local paths are final target paths whose folders exist.
  // With opts.connections > 1, more connections are opened (same address, token, TLS options
  // and timeout; one that cannot be opened, or that the server turns away, is done without)
  // and each runs on a thread of its own, taking a run of consecutive items from a shared
  // queue whenever it has sent its last one: long runs first (a 2n-th of what is left), so
  // that a folder's files mostly travel together, shorter ones towards the end (at least 16
  // items), so that the connections finish together; at most one connection per 16 items
  // (rounded up) is used. A connection that the server refuses, or that cannot
  // be opened, is done without; any other failure to open one fails the batch. Then
  // on_result and on_bytes are called from those threads, one call at a time; each
  // connection's items are reported in order, but not the batch's as a whole. When a
  // connection fails, the others stop taking items, report what they have in flight, and
  // the first failure is thrown.
  void put_many(const std::vector<BatchItem>& items, const BatchOptions& opts,
                const std::function<void(const BatchResult&)>& on_result,
                const std::function<void(std::uint64_t)>& on_bytes = {});
  // put_many of items fed while the batch runs (BatchFeed), over this one connection
  // (opts.connections is not looked at).
  void put_fed(BatchFeed& feed, const BatchOptions& opts, const std::function<void(const BatchResult&)>& on_result,
               const std::function<void(std::uint64_t)>& on_bytes = {});
  void get_many(const std::vector<BatchItem>& items, const BatchOptions& opts,
                const std::function<void(const BatchResult&)>& on_result,
                const std::function<void(std::uint64_t)>& on_bytes = {});

  // Calls on_entry for every stored file below `folder` ("" = all; a file's name = that
  // file), sorted by name. Returns the number of entries.
  std::uint64_t list(const std::string& folder, const std::function<void(const Entry&)>& on_entry,
                     const ListOptions& opts = {});

  // One file or folder, with the file's SHA-256 as the server computed it.
  Entry stat(const std::string& name);
  // stat() of every name, pipelined (a window of requests in flight, not one round trip
  // each); on_result(i, entry) in order, with nullopt for a name the server refuses to
  // describe (no such file, a name it will not take, a storage error: what stat() throws
  // as kNotFound or kRejected). Throws Error for anything else, as stat() would (a lost
  // connection, ...), or before sending anything for a name no server could take (over
  // 4096 bytes). Should it end early (an error, on_result throwing), the connection is
  // closed: the answers still on their way would otherwise be read as later ones'.
  void stat_many(const std::vector<std::string>& names,
                 const std::function<void(std::size_t, std::optional<Entry>)>& on_result);
  // Removes a file or an empty folder.
  void remove(const std::string& name);
  // Renames FROM to TO (into TO when it is a folder); returns the final name, and whether a
  // file there was replaced.
  std::pair<std::string, bool> move(const std::string& from, const std::string& to);
  // Creates a folder and its parents; an existing folder is fine.
  void make_folder(const std::string& name);

  // One round trip; throws if the server does not answer as an ftx server.
  void ping();

  // Where get(remote, local) saves the file (not for standard output): ./<base name> when
  // `local` is empty, <local>/<base name> when it is a folder, else `local`. Throws
  // Error(kLocalIo) when no file name can be told.
  static std::filesystem::path download_target(const std::string& remote, const std::filesystem::path& local);

 private:
  struct Batch;  // state shared by a batch's sender and receiver (client.cpp)
  class BatchQueue;  // hands a batch's items out to its connections (client.cpp)
  struct Parallel;  // state shared by the threads of a parallel transfer (client.cpp)

  // Parallel streams (client.cpp). run_parallel runs `first` on this connection and
  // `extra` on each of n - 1 new ones, each on a thread of its own, and waits for all; the
  // first failure is kept in `p` and the others stop taking ranges.
  void run_parallel(Parallel& p, unsigned n, const std::function<void(Client&)>& first,
                    const std::function<void(Client&)>& extra);
  // Moves ranges over this connection until none is left (or the transfer failed),
  // kInFlight requests outstanding. get_ranges: `sent` are requests already sent, `header`
  // the answer to the first of them if it has been read.
  void get_ranges(Parallel& p, std::deque<std::uint64_t> sent, std::optional<protocol::Frame> header);
  void put_ranges(Parallel& p);
  // Sends a header and its body in one go (a kPutRange).
  asio::awaitable<void> co_send_with_body(const protocol::Frame& f, std::span<const std::uint8_t> body);

  // The I/O core: coroutines on io_, each completed operation counting as progress.
  asio::awaitable<void> co_write(std::span<const std::uint8_t> data);
  asio::awaitable<void> co_send(const protocol::Frame& f, std::vector<std::uint8_t>& scratch);
  asio::awaitable<protocol::Frame> co_read_frame();
  // One read of the connection into `buf`: what has arrived, as much as fits (over TLS too:
  // tls::read_arrived).
  asio::awaitable<std::tuple<std::error_code, std::size_t>> co_read_some(asio::mutable_buffer buf);
  // Reads exactly n body bytes, handing them to sink chunk by chunk.
  asio::awaitable<void> co_read_body(std::uint64_t n, const std::function<void(std::span<const std::uint8_t>)>& sink);
  // Reads a body of n bytes into `fd` and returns its SHA-256; bodies over one chunk are
  // hashed on hasher()'s thread while the next chunk arrives. The first failed write is
  // kept in write_ec; then the rest of the body is read and dropped when keep_going, else
  // the connection is closed and the coroutine returns at once (the digest is then void).
  // `from` (resumed downloads): the SHA-256 state of the bytes before these; `checkpoint`:
  // called (on another thread) with the state after each chunk that is written and hashed.
  asio::awaitable<protocol::Digest> co_receive_file(std::uint64_t n, int fd, bool keep_going,
                                                    std::error_code& write_ec,
                                                    const std::function<void(std::uint64_t)>& on_bytes,
                                                    const hash::State* from = nullptr,
                                                    std::function<void(const hash::State&)> checkpoint = {});
  // Sends `size` bytes of `fd` (the body of a kPut with kFlagDigestAfter) and then their
  // SHA-256, reading the file once: each chunk is hashed on hasher()'s thread while it is
  // sent. `digest` is set to the file's SHA-256 before the trailer goes out. A failed read
  // throws Error(kLocalIo) unless keep_going: then zeros stand in for the rest and the
  // trailer is made not to match, so the server refuses the file; read_error says why.
  // `from` (resumed uploads): send [from->bytes, size) only, continuing the SHA-256 from it.
  asio::awaitable<void> co_send_file(int fd, std::uint64_t size, const std::filesystem::path& local, bool keep_going,
                                     protocol::Digest& digest, std::optional<Error>& read_error,
                                     const std::function<void(std::uint64_t)>& on_bytes,
                                     const hash::State* from = nullptr);
  // Plain TCP only: sends [offset, offset + n) of fd with sendfile(2); returns the bytes
  // sent, fewer when the file ended first or sendfile does not work for it (then
  // sendfile_works_ is cleared). Connection errors throw, as everywhere.
  asio::awaitable<std::uint64_t> co_sendfile(int fd, std::uint64_t offset, std::uint64_t n);
  hash::HashThread& hasher();
  // put_many and get_many: `queue` null = this connection moves every item.
  void many(bool upload, const std::vector<BatchItem>& items, const BatchOptions& opts, BatchQueue* queue,
            const std::function<void(const BatchResult&)>& on_result,
            const std::function<void(std::uint64_t)>& on_bytes);
  // many() over opts.connections connections, sharing one queue (put_many).
  void many_parallel(bool upload, const std::vector<BatchItem>& items, const BatchOptions& opts,
                     const std::function<void(const BatchResult&)>& on_result,
                     const std::function<void(std::uint64_t)>& on_bytes);
  asio::awaitable<void> put_sender(Batch& b);
  asio::awaitable<void> put_receiver(Batch& b);
  asio::awaitable<void> get_sender(Batch& b);
  asio::awaitable<void> get_receiver(Batch& b);
  // get_receiver's loop: each file's result goes to `report`, with the file -- when it
  // arrived intact -- either written and sealed but not yet under its name, or (up to
  // 64 KiB) verified and still in memory; report publishes such files in groups (one syncfs
  // for the group, then renames, then one fsync per folder) on a thread of its own.
  // `about_to_wait` reports what is published and may hand on what is pending, called
  // before the loop waits for the server; `catch_up` waits until what was handed on is
  // published and reports it, called before a larger file is staged on this thread.
  asio::awaitable<void> get_receiver_loop(
      Batch& b, const std::function<void(BatchResult, std::optional<StagedFile>, std::optional<ReceivedBody>)>& report,
      const std::function<void()>& about_to_wait, const std::function<void()>& catch_up);
  // Runs `op` to completion on io_, giving up (and closing the connection) when no
  // operation completes for io_timeout_. Rethrows what op threw.
  template <typename T>
  T run(asio::awaitable<T> op, const char* what);
  // run() for batch b's sender && receiver pair: when both fail, the first failure (in
  // time) is rethrown. While it runs, a timeout aborts b (abort_batch), so neither side sleeps on.
  void run_batch(Batch& b, asio::awaitable<void> op, const char* what);
  // One side of batch b (its sender or its receiver): notes in b the first failure in time.
  asio::awaitable<void> batch_side(Batch& b, asio::awaitable<void> side);
  void abort_batch();

  void send(const protocol::Frame& f);
  protocol::Frame read_frame();
  // One request of `type` about `name`, and its reply, which must be `expected` (else the
  // server's error is thrown, described with `context`).
  protocol::Frame request(protocol::MsgType type, std::string name, protocol::MsgType expected,
                          const std::string& context);
  // Runs the io_context until the pending operation completes or io_timeout_ passes.
  void run_with_timeout(const char* what);
  [[noreturn]] void throw_timeout(const char* what);
  // The Error for an ERROR reply `f` to the request described by `context` ("put NAME");
  // an empty context for a batch's per-file results, whose caller names the file itself.
  Error error_from_reply(const protocol::Frame& f, std::string_view context) const;
  [[noreturn]] void fail_from_reply(const protocol::Frame& f, std::string_view context);
  // In a batch: throws when `f` is an ERROR after which the server closes the connection,
  // rather than one file's failure -- kConnection for a stop or a timed-out request, kAuth
  // without the right token, kProtocol for another protocol version -- and closes this side
  // (the server waits for that, a second at most, before it lets go).
  void throw_if_closing(const protocol::Frame& f);
  [[noreturn]] void connection_lost(const std::error_code& ec);
  void authenticate(const std::string& token);
  // Opens the connection (and TLS, and authentication) to connect_; also to start over on a
  // fresh connection after a resume offer was declined mid-exchange.
  void connect();
  // A resumable kPut's kReady offer: checks that the chunk before the offered offset still
  // hashes to the offered state. Returns the state to continue from, or nullopt when the
  // file changed (or the offer makes no sense for it).
  std::optional<hash::State> check_offer(const protocol::Frame& ready, int fd, std::uint64_t size);
  void start_tls(const std::string& host, const TlsOptions& tls);
  void check_pin(const TlsOptions& tls);
  // f(stream) on the TLS stream when there is one, else on the TCP socket; returns what f
  // returns (an awaitable of the same type for both).
  template <typename F>
  auto on_stream(F&& f) {
    return tls_ ? f(*tls_) : f(socket_);
  }

  struct ConnectParams {
    protocol::Address address;
    std::string token;
    TlsOptions tls;
  };
  ConnectParams connect_;
  std::string address_;
  std::chrono::milliseconds io_timeout_;
  std::chrono::steady_clock::time_point last_progress_;
  asio::io_context io_;
  asio::ip::tcp::socket socket_;
  std::unique_ptr<asio::ssl::context> tls_ctx_;
  std::unique_ptr<tls::Stream> tls_;  // over socket_
  protocol::Decoder decoder_;
  std::vector<std::uint8_t> in_;
  std::size_t in_begin_ = 0;
  std::size_t in_end_ = 0;
  bool answered_ = false;  // a frame arrived on this connection (a lost one then is not a TLS mix-up)
  std::vector<std::uint8_t> out_;
  std::unique_ptr<std::uint8_t[]> body_;  // receive buffer for bodies: protocol::kChunkSize bytes once made
  std::unique_ptr<hash::HashThread> hasher_;  // made on first use by a large body
  Batch* batch_ = nullptr;      // the batch run_batch is running, if any
  bool sendfile_works_ = true;  // cleared when sendfile(2) fails for a file: copy instead
};

}  // namespace ftx::client
