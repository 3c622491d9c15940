#include "hash/sha256.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <stdexcept>

namespace ftx::hash {

struct Sha256::Ctx {
  EVP_MD_CTX* md = nullptr;
  ~Ctx() { EVP_MD_CTX_free(md); }
};

namespace {
void init(EVP_MD_CTX* md) {
  // EVP_sha256() is the built-in implementation; fetching it each time would cost a
  // provider lookup per file.
  if (EVP_DigestInit_ex(md, EVP_sha256(), nullptr) != 1) throw std::runtime_error("EVP_DigestInit_ex(sha256) failed");
}
}  // namespace

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  if (ctx_->md == nullptr) throw std::bad_alloc();
  init(ctx_->md);
}

Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(std::span<const std::uint8_t> data) {
  if (data.empty()) return;
  if (EVP_DigestUpdate(ctx_->md, data.data(), data.size()) != 1) throw std::runtime_error("EVP_DigestUpdate failed");
}

void Sha256::update(std::string_view data) {
  update(std::span(reinterpret_cast<const std::uint8_t*>(data.data()), data.size()));
}

Digest Sha256::finish() {
  Digest d{};
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx_->md, d.data(), &len) != 1 || len != d.size()) {
    throw std::runtime_error("EVP_DigestFinal_ex failed");
  }
  init(ctx_->md);
  return d;
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
