#pragma once
// I/O-free encoder and incremental decoder for ftx frames (header + name).
//
// The decoder is the asio request_parser / Beast basic_parser model: feed it whatever bytes
// arrived, it consumes at most the bytes of one frame and says "need more", "frame ready"
// or "error". It never consumes a byte past the end of the frame, so whatever follows (a
// file body, or the next message glued to this one by TCP) stays in the caller's buffer.
// Bodies are not the decoder's business: the caller reads exactly frame().size bytes.

#include <cstddef>
#include <cstdint>
#include <span>
#include <system_error>
#include <vector>

#include "protocol/errors.hpp"
#include "protocol/frame.hpp"

namespace ftx::protocol {

// Appends the 64-byte header and the name of `f` to `out`.
// Precondition: f.name.size() <= kMaxNameBytes and f.size <= kMaxFileSize (asserted).
void encode(const Frame& f, std::vector<std::uint8_t>& out);
std::vector<std::uint8_t> encode(const Frame& f);

class Decoder {
 public:
  enum class Result { kNeedMore, kFrame, kError };
  struct Step {
    Result result;
    std::size_t consumed;  // bytes of `data` that belong to this frame
  };

  // Consumes bytes of the current frame. After kFrame, frame() holds it until reset();
  // after kError, error() says why and the decoder stays in error until reset().
  // Errors are reported as soon as the bytes that show them arrive (a bad magic after
  // the first wrong byte), so a peer that speaks another protocol is not left waiting.
  Step put(std::span<const std::uint8_t> data);

  const Frame& frame() const { return frame_; }
  Frame& frame() { return frame_; }
  std::error_code error() const { return error_; }
  // True when no byte of a next frame has been consumed: an EOF here is a clean close.
  bool at_boundary() const { return state_ == State::kHeader && have_ == 0; }

  // Prepares for the next frame.
  void reset();

 private:
  enum class State { kHeader, kName, kDone, kError };
  std::error_code check_prefix() const;
  std::error_code finish_header();

  State state_ = State::kHeader;
  std::uint8_t header_[kHeaderSize]{};
  std::size_t have_ = 0;      // header bytes received so far
  std::size_t name_len_ = 0;  // announced name length
  Frame frame_;
  std::error_code error_;
};

}  // namespace ftx::protocol
