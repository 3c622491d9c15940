#pragma once
// SHA-256 over OpenSSL's SHA-256 (the same SHA-NI/AVX2 code its EVP interface runs). Not
// thread-safe: one Sha256 per stream of bytes.
//
// Unlike EVP, the context can be saved at a 64-byte block boundary and restored later
// (State): that is what lets an interrupted transfer continue its whole-file SHA-256 from
// the resume point instead of reading everything before it again.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "protocol/frame.hpp"

namespace ftx::hash {

using protocol::Digest;

// The SHA-256 of a prefix whose length is a multiple of 64 bytes: the eight chaining words
// (big-endian, as `words`) and the prefix's length. It commits to every byte of the prefix
// like a digest does, but hashing can go on from it. Equal states = equal prefixes.
struct State {
  Digest words{};
  std::uint64_t bytes = 0;
  bool operator==(const State&) const = default;
};

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(std::span<const std::uint8_t> data);
  void update(std::string_view data);
  // Returns the digest of everything updated so far and starts over.
  Digest finish();
  // Bytes updated since the start (or the state restored).
  std::uint64_t bytes() const;
  // The state after the bytes so far; only when bytes() is a multiple of 64 (else nullopt).
  std::optional<State> state() const;
  // Continues from `s` as if its prefix had just been updated; false (and nothing changed)
  // when s.bytes is not a multiple of 64.
  bool restore(const State& s);

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

Digest sha256(std::span<const std::uint8_t> data);
Digest sha256(std::string_view data);

// HMAC-SHA256 of `data` under `key` (RFC 2104), for the token challenge-response.
Digest hmac_sha256(std::string_view key, std::span<const std::uint8_t> data);

// The answer to an authentication challenge: HMAC-SHA256 under the shared token of
// "ftx-auth-v1" followed by the server's 32-byte nonce. Both sides compute it; only the
// answer crosses the wire, never the token.
Digest auth_response(std::string_view token, const Digest& nonce);

// Compares in time independent of where the digests differ (CRYPTO_memcmp), so a wrong
// answer's timing tells an attacker nothing about the right one.
bool equal_constant_time(const Digest& a, const Digest& b);

// Lower-case hex, 64 characters.
std::string to_hex(const Digest& d);
// Parses 64 hex digits (either case); returns false on anything else.
bool from_hex(std::string_view hex, Digest& out);

}  // namespace ftx::hash
