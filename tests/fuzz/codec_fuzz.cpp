// libFuzzer target for the frame decoder: arbitrary bytes, cut into arbitrary pieces, read
// as a stream of frames and bodies the way the server reads a connection. Checks that the
// decoder never reads past a frame, never accepts what it must refuse, and that every frame
// it accepts re-encodes to the same bytes.
//
// Build and run: see tests/fuzz/run.sh (clang-14, -fsanitize=fuzzer,address,undefined).

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include "protocol/codec.hpp"

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace ftx::protocol;
  if (size == 0) return 0;
  // The first byte chooses how the rest is cut, so one input exercises many segmentations.
  const std::size_t step = 1 + data[0] % 97;
  std::span<const std::uint8_t> stream(data + 1, size - 1);

  Decoder d;
  std::vector<std::uint8_t> frame_bytes;  // what the current frame consumed
  std::uint64_t body_left = 0;
  while (!stream.empty()) {
    auto piece = stream.first(std::min(step, stream.size()));
    stream = stream.subspan(piece.size());
    while (!piece.empty()) {
      if (body_left > 0) {
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(body_left, piece.size()));
        body_left -= n;
        piece = piece.subspan(n);
        continue;
      }
      const auto r = d.put(piece);
      require(r.consumed <= piece.size());
      frame_bytes.insert(frame_bytes.end(), piece.begin(), piece.begin() + static_cast<std::ptrdiff_t>(r.consumed));
      piece = piece.subspan(r.consumed);
      if (r.result == Decoder::Result::kError) {
        require(static_cast<bool>(d.error()));
        require(d.put(piece).result == Decoder::Result::kError);  // errors are sticky
        return 0;
      }
      if (r.result == Decoder::Result::kFrame) {
        const Frame& f = d.frame();
        require(f.name.size() <= kMaxNameBytes);
        require(f.size <= kMaxFileSize);
        require((f.flags & ~kKnownFlags) == 0);
        require((f.type == MsgType::kError) == (f.status != Status::kOk));
        // Accepted bytes are exactly the canonical encoding of what was decoded.
        require(encode(f) == frame_bytes);
        if (carries_body(f.type)) body_left = f.size;
        frame_bytes.clear();
        d.reset();
      } else {
        require(piece.empty());  // need-more means every offered byte was taken
      }
    }
  }
  return 0;
}
