#pragma once
// A TCP socket read through a buffer of its own: the next layer under an asio::ssl::stream,
// for the client and the server alike (tls::Stream = asio::ssl::stream<BufferedSocket>), and
// read_arrived(), which reads such a stream as a plain socket reads.
//
// Why: asio's TLS engine reads its next layer into a buffer of one record (17 KiB) at a
// time. Straight over a socket that is one recv(2) per record -- some 60,000 for 1 GiB,
// each also sending a TCP window update -- where plain TCP reads a MiB a call. Through this
// layer one recv takes up to `capacity` bytes, and the engine's next records come from
// memory: one more copy of each byte, far cheaper than a system call per record.
//
// Memory: the buffer is as large as `capacity` only while data keeps coming. A read of the
// socket that filled the buffer makes the next one use the large size; one that brought
// less than a record (the peer sent a request and now waits for the answer) makes the next
// one use a record's size; release() drops it, so the next read makes a record-sized one
// (a server's connection about to wait idle).
//
// Writes go straight to the socket (the engine writes one record and waits for it before
// it encrypts the next, so there is nothing to gather without holding back data the peer
// waits for). Cancelling or closing the socket ends a read waiting on it, as it would
// without this layer; a read served from the buffer completes anyway.
//
// Like the socket: one read and one write at a time at most, and not thread-safe.

#include <openssl/ssl.h>

#include <algorithm>
#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/ssl.hpp>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <system_error>
#include <tuple>
#include <utility>

namespace ftx::tls {

class BufferedSocket {
 public:
  using executor_type = asio::ip::tcp::socket::executor_type;
  using lowest_layer_type = asio::ip::tcp::socket::lowest_layer_type;

  static constexpr std::size_t kDefaultCapacity = 256 * 1024;
  // The smallest buffer: what asio's engine reads at a time (stream_core's record buffer).
  static constexpr std::size_t kRecordBytes = 17 * 1024;

  // Reads and writes `socket`, which must outlive this object. `capacity`: the most one
  // read of the socket takes (at least kRecordBytes).
  explicit BufferedSocket(asio::ip::tcp::socket& socket, std::size_t capacity = kDefaultCapacity)
      : socket_(socket), capacity_(std::max(capacity, kRecordBytes)) {}

  executor_type get_executor() { return socket_.get_executor(); }
  lowest_layer_type& lowest_layer() { return socket_.lowest_layer(); }
  const lowest_layer_type& lowest_layer() const { return socket_.lowest_layer(); }

  // Bytes received from the socket that no read has taken yet.
  std::size_t buffered() const { return end_ - begin_; }
  // The buffer's size now: 0 before the first read and after release(), else
  // kRecordBytes or the capacity.
  std::size_t allocated() const { return size_; }
  // While set, a read that finds nothing buffered and nothing in the socket's queue does not
  // wait for the peer: it completes with asio::error::would_block (read_arrived's reads
  // after its first).
  void set_no_wait(bool on) { no_wait_ = on; }
  // An error read_arrived met after it had read something: returned by its next call.
  std::error_code& deferred_error() { return deferred_; }

  // Frees the buffer if it holds nothing (else does nothing); the next read of the socket
  // makes a record-sized one. Not while a read is in progress.
  void release() {
    if (buffered() > 0) return;
    buf_.reset();
    size_ = 0;
    begin_ = end_ = 0;
  }

  // Completes with what is buffered when there is any (never inline: deferred, i.e. run
  // next on this thread, as a continuation of the caller), else with
  // what one read of the socket (up to the capacity) brought, as much as fits in `buffers`.
  template <typename MutableBufferSequence, typename ReadToken>
  auto async_read_some(const MutableBufferSequence& buffers, ReadToken&& token) {
    return asio::async_compose<ReadToken, void(std::error_code, std::size_t)>(
        ReadOp<MutableBufferSequence>{this, buffers}, token, socket_);
  }

  template <typename ConstBufferSequence, typename WriteToken>
  auto async_write_some(const ConstBufferSequence& buffers, WriteToken&& token) {
    return socket_.async_write_some(buffers, std::forward<WriteToken>(token));
  }

 private:
  template <typename MutableBufferSequence>
  struct ReadOp {
    BufferedSocket* self;
    MutableBufferSequence buffers;
    enum class Step { kStart, kFromBuffer, kFromSocket, kWouldBlock } step = Step::kStart;

    template <typename Op>
    void operator()(Op& op, std::error_code ec = {}, std::size_t n = 0) {
      switch (step) {
        case Step::kStart:
          // An empty read, like the socket's, completes at once and takes nothing.
          if (self->buffered() > 0 || asio::buffer_size(buffers) == 0) {
            step = Step::kFromBuffer;
            asio::defer(std::move(op));
            return;
          }
          if (self->no_wait_) {
            std::error_code ignored;
            if (self->socket_.available(ignored) == 0) {
              step = Step::kWouldBlock;
              asio::defer(std::move(op));
              return;
            }
          }
          step = Step::kFromSocket;
          self->size_buffer();
          self->socket_.async_read_some(asio::buffer(self->buf_.get(), self->size_), std::move(op));
          return;
        case Step::kFromSocket:
          self->begin_ = 0;
          self->end_ = ec ? 0 : n;
          if (ec) {
            op.complete(ec, 0);
            return;
          }
          break;
        case Step::kFromBuffer:
          break;
        case Step::kWouldBlock:
          op.complete(asio::error::would_block, 0);
          return;
      }
      const std::size_t k =
          asio::buffer_copy(buffers, asio::buffer(self->buf_.get() + self->begin_, self->buffered()));
      self->begin_ += k;
      op.complete(std::error_code{}, k);
    }
  };

  // Before a read of the socket (nothing buffered): the size the last one suggests.
  void size_buffer() {
    const std::size_t want = end_ == size_ && size_ > 0 ? capacity_ : end_ < kRecordBytes ? kRecordBytes : size_;
    if (want == size_) return;
    buf_ = std::make_unique_for_overwrite<std::uint8_t[]>(want);
    size_ = want;
  }

  asio::ip::tcp::socket& socket_;
  std::unique_ptr<std::uint8_t[]> buf_;
  std::size_t size_ = 0;  // of buf_
  std::size_t capacity_;
  std::size_t begin_ = 0;  // buf_[begin_, end_) is received and not yet read; end_ is
  std::size_t end_ = 0;    // also what the last read of the socket brought
  bool no_wait_ = false;
  std::error_code deferred_;
};

using Stream = asio::ssl::stream<BufferedSocket>;

// Whether input has arrived that a read of `s` has not taken yet, anywhere above the
// socket: in OpenSSL (decrypted or not: SSL_has_pending), in the BIO asio's engine feeds it
// through (what the engine read from below and OpenSSL has not; when that BIO is full, the
// engine holds more of it, which this does not see), or in the buffered socket. The
// socket's own queue is not looked at.
inline bool has_local_input(Stream& s) {
  SSL* ssl = s.native_handle();
  return SSL_has_pending(ssl) == 1 || BIO_pending(SSL_get_rbio(ssl)) > 0 || s.next_layer().buffered() > 0;
}

// Reads into `buf` as plain TCP would: what has arrived, as much as fits. One read of a TLS
// stream gives one record (16 KiB) at most; after the first, which waits as any read does,
// this reads on in the buffered socket's no-wait mode, so as long as that needs no waiting
// for the peer: records already decrypted, or whose bytes are here or in the socket's queue.
// Nothing more there, a record only part of which has arrived, or one that carries no data
// (a key update, a session ticket) ends it with what it has. Callers that act once per read (answer, hand files on) then do so in as
// large bites over TLS as over plain TCP, and a deadline armed before the read still
// measures progress. An error after some bytes were read is returned by the next call.
inline asio::awaitable<std::tuple<std::error_code, std::size_t>> read_arrived(Stream& s, asio::mutable_buffer buf) {
  constexpr auto kTuple = asio::experimental::as_tuple(asio::use_awaitable);
  if (auto ec = std::exchange(s.next_layer().deferred_error(), {})) co_return std::tuple{ec, std::size_t{0}};
  auto [ec, n] = co_await s.async_read_some(buf, kTuple);
  // Set for the reads after the first; cleared however this ends (a destroyed frame too).
  const struct NoWait {
    BufferedSocket& socket;
    explicit NoWait(BufferedSocket& b) : socket(b) { socket.set_no_wait(true); }
    ~NoWait() { socket.set_no_wait(false); }
  } no_wait(s.next_layer());
  while (!ec && n < buf.size()) {
    auto [more_ec, more] = co_await s.async_read_some(buf + n, kTuple);
    n += more;
    if (more_ec) {
      if (more_ec != asio::error::would_block) s.next_layer().deferred_error() = more_ec;
      break;
    }
  }
  co_return std::tuple{ec, n};
}

}  // namespace ftx::tls
