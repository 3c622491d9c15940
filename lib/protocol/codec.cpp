#include "protocol/codec.hpp"

#include <algorithm>
#include <cassert>
#include <cstring>

namespace ftx::protocol {
namespace {

// Header layout (offsets in bytes, all integers big-endian). docs/protocol.md mirrors this.
constexpr std::size_t kOffMagic = 0;     // 4 bytes "FTXP"
constexpr std::size_t kOffVersion = 4;   // u8
constexpr std::size_t kOffType = 5;      // u8
constexpr std::size_t kOffFlags = 6;     // u16
constexpr std::size_t kOffStatus = 8;    // u16
constexpr std::size_t kOffNameLen = 10;  // u16
constexpr std::size_t kOffReserved = 12; // u32, zero
constexpr std::size_t kOffSize = 16;     // u64
constexpr std::size_t kOffMtime = 24;    // i64 (two's complement)
constexpr std::size_t kOffDigest = 32;   // 32 bytes
static_assert(kOffDigest + sizeof(Digest) == kHeaderSize, "header layout must stay 64 bytes");
static_assert(kMaxNameBytes <= 0xFFFF, "name_len is a u16 on the wire");

template <typename T>
void put_be(std::uint8_t* p, T v) {
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    p[sizeof(T) - 1 - i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(v) >> (8 * i));
  }
}

template <typename T>
T get_be(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) v = (v << 8) | p[i];
  return static_cast<T>(v);
}

}  // namespace

void encode(const Frame& f, std::vector<std::uint8_t>& out) {
  assert(f.name.size() <= kMaxNameBytes);
  assert(f.size <= kMaxFileSize);
  const std::size_t start = out.size();
  out.resize(start + kHeaderSize + f.name.size());
  std::uint8_t* h = out.data() + start;
  std::memcpy(h + kOffMagic, kMagic.data(), kMagic.size());
  h[kOffVersion] = kVersion;
  h[kOffType] = static_cast<std::uint8_t>(f.type);
  put_be<std::uint16_t>(h + kOffFlags, f.flags);
  put_be<std::uint16_t>(h + kOffStatus, static_cast<std::uint16_t>(f.status));
  put_be<std::uint16_t>(h + kOffNameLen, static_cast<std::uint16_t>(f.name.size()));
  put_be<std::uint32_t>(h + kOffReserved, 0);
  put_be<std::uint64_t>(h + kOffSize, f.size);
  put_be<std::uint64_t>(h + kOffMtime, static_cast<std::uint64_t>(f.mtime_ns));
  std::memcpy(h + kOffDigest, f.digest.data(), f.digest.size());
  std::memcpy(h + kHeaderSize, f.name.data(), f.name.size());
}

std::vector<std::uint8_t> encode(const Frame& f) {
  std::vector<std::uint8_t> out;
  out.reserve(kHeaderSize + f.name.size());
  encode(f, out);
  return out;
}

void Decoder::reset() {
  state_ = State::kHeader;
  have_ = 0;
  name_len_ = 0;
  frame_ = Frame{};
  error_ = {};
}

// Checks whatever leading fields have fully arrived, so garbage is refused early.
std::error_code Decoder::check_prefix() const {
  const std::size_t magic_have = std::min(have_, kMagic.size());
  if (std::memcmp(header_ + kOffMagic, kMagic.data(), magic_have) != 0) return errc::bad_magic;
  if (have_ > kOffVersion && header_[kOffVersion] != kVersion) return errc::bad_version;
  if (have_ > kOffType && !is_known_type(header_[kOffType])) return errc::bad_type;
  return {};
}

std::error_code Decoder::finish_header() {
  const auto flags = get_be<std::uint16_t>(header_ + kOffFlags);
  const auto status = get_be<std::uint16_t>(header_ + kOffStatus);
  const auto name_len = get_be<std::uint16_t>(header_ + kOffNameLen);
  const auto reserved = get_be<std::uint32_t>(header_ + kOffReserved);
  const auto size = get_be<std::uint64_t>(header_ + kOffSize);
  const auto type = static_cast<MsgType>(header_[kOffType]);

  if ((flags & ~kKnownFlags) != 0) return errc::bad_flags;
  if (reserved != 0) return errc::bad_reserved;
  if ((type == MsgType::kError) != (status != 0)) return errc::bad_status;
  if (name_len > kMaxNameBytes) return errc::name_too_long;
  if (size > kMaxFileSize) return errc::size_too_large;

  frame_.type = type;
  frame_.flags = flags;
  frame_.status = static_cast<Status>(status);
  frame_.size = size;
  frame_.mtime_ns = static_cast<std::int64_t>(get_be<std::uint64_t>(header_ + kOffMtime));
  std::memcpy(frame_.digest.data(), header_ + kOffDigest, frame_.digest.size());
  name_len_ = name_len;
  frame_.name.clear();
  frame_.name.reserve(name_len_);  // bounded by kMaxNameBytes above
  return {};
}

Decoder::Step Decoder::put(std::span<const std::uint8_t> data) {
  std::size_t used = 0;
  if (state_ == State::kError) return {Result::kError, 0};
  if (state_ == State::kDone) return {Result::kFrame, 0};

  if (state_ == State::kHeader) {
    const std::size_t n = std::min(kHeaderSize - have_, data.size());
    std::memcpy(header_ + have_, data.data(), n);
    have_ += n;
    used += n;
    error_ = check_prefix();
    if (!error_ && have_ == kHeaderSize) error_ = finish_header();
    if (error_) {
      state_ = State::kError;
      return {Result::kError, used};
    }
    if (have_ < kHeaderSize) return {Result::kNeedMore, used};
    state_ = State::kName;
  }

  // State::kName
  const std::size_t want = name_len_ - frame_.name.size();
  const std::size_t n = std::min(want, data.size() - used);
  frame_.name.append(reinterpret_cast<const char*>(data.data() + used), n);
  used += n;
  if (frame_.name.size() < name_len_) return {Result::kNeedMore, used};
  state_ = State::kDone;
  return {Result::kFrame, used};
}

}  // namespace ftx::protocol
