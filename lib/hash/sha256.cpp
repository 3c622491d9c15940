#include "hash/sha256.hpp"

// SHA256_Init/Update/Final are marked deprecated in OpenSSL 3 in favour of EVP, but they
// are the same implementation and the only interface whose state can be saved and
// restored (EVP contexts are opaque).
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <stdexcept>

namespace ftx::hash {

struct Sha256::Ctx {
  SHA256_CTX sha;
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) { SHA256_Init(&ctx_->sha); }

Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(std::span<const std::uint8_t> data) {
  if (data.empty()) return;
  SHA256_Update(&ctx_->sha, data.data(), data.size());
}

void Sha256::update(std::string_view data) {
  update(std::span(reinterpret_cast<const std::uint8_t*>(data.data()), data.size()));
}

Digest Sha256::finish() {
  Digest d{};
  SHA256_Final(d.data(), &ctx_->sha);
  SHA256_Init(&ctx_->sha);
  return d;
}

std::uint64_t Sha256::bytes() const {
  // Nl/Nh count bits.
  return ((static_cast<std::uint64_t>(ctx_->sha.Nh) << 32) | ctx_->sha.Nl) / 8;
}

std::optional<State> Sha256::state() const {
  if (ctx_->sha.num != 0) return std::nullopt;  // mid-block: the state is not just the words
  State s;
  for (std::size_t i = 0; i < 8; ++i) {
    const std::uint32_t w = ctx_->sha.h[i];
    for (std::size_t b = 0; b < 4; ++b) s.words[i * 4 + b] = static_cast<std::uint8_t>(w >> (24 - 8 * b));
  }
  s.bytes = bytes();
  return s;
}

bool Sha256::restore(const State& s) {
  if (s.bytes % 64 != 0) return false;
  SHA256_CTX c;
  SHA256_Init(&c);
  for (std::size_t i = 0; i < 8; ++i) {
    std::uint32_t w = 0;
    for (std::size_t b = 0; b < 4; ++b) w = (w << 8) | s.words[i * 4 + b];
    c.h[i] = w;
  }
  const std::uint64_t bits = s.bytes * 8;
  c.Nl = static_cast<SHA_LONG>(bits & 0xffffffffu);
  c.Nh = static_cast<SHA_LONG>(bits >> 32);
  ctx_->sha = c;
  return true;
}

Digest sha256(std::span<const std::uint8_t> data) {
  Sha256 h;
  h.update(data);
  return h.finish();
}

Digest sha256(std::string_view data) {
  Sha256 h;
  h.update(data);
  return h.finish();
}

Digest hmac_sha256(std::string_view key, std::span<const std::uint8_t> data) {
  Digest d{};
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), data.data(), data.size(), d.data(), &len) == nullptr ||
      len != d.size()) {
    throw std::runtime_error("HMAC-SHA256 failed");
  }
  return d;
}

Digest auth_response(std::string_view token, const Digest& nonce) {
  static constexpr std::string_view kContext = "ftx-auth-v1";
  std::uint8_t msg[kContext.size() + sizeof(Digest)];
  std::copy(kContext.begin(), kContext.end(), msg);
  std::copy(nonce.begin(), nonce.end(), msg + kContext.size());
  return hmac_sha256(token, msg);
}

bool equal_constant_time(const Digest& a, const Digest& b) { return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0; }

std::string to_hex(const Digest& d) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s;
  s.reserve(d.size() * 2);
  for (auto b : d) {
    s.push_back(kDigits[b >> 4]);
    s.push_back(kDigits[b & 0xF]);
  }
  return s;
}

bool from_hex(std::string_view hex, Digest& out) {
  if (hex.size() != out.size() * 2) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(hex[2 * i]);
    const int lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return true;
}

}  // namespace ftx::hash
