#include "tls/certs.hpp"

#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>

namespace ftx::tls {
namespace {

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using CertPtr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using BioPtr = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;

[[noreturn]] void fail(const std::string& what) {
  const unsigned long e = ERR_get_error();
  char buf[256] = "unknown error";
  if (e != 0) ERR_error_string_n(e, buf, sizeof buf);
  throw std::runtime_error(what + ": " + buf);
}

BioPtr mem_bio(const std::string& s) {
  BioPtr b(BIO_new_mem_buf(s.data(), static_cast<int>(s.size())));
  if (!b) fail("BIO_new_mem_buf");
  return b;
}

std::string bio_string(BIO* b) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(b, &data);
  return std::string(data, static_cast<std::size_t>(n));
}

CertPtr parse_cert(const std::string& pem) {
  auto b = mem_bio(pem);
  CertPtr c(PEM_read_bio_X509(b.get(), nullptr, nullptr, nullptr));
  if (!c) fail("cannot parse certificate");
  return c;
}

KeyPtr parse_key(const std::string& pem) {
  auto b = mem_bio(pem);
  KeyPtr k(PEM_read_bio_PrivateKey(b.get(), nullptr, nullptr, nullptr));
  if (!k) fail("cannot parse private key");
  return k;
}

void add_ext(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (ext == nullptr) fail("certificate extension " + value);
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

}  // namespace

Pem make_certificate(const CertSpec& spec, const std::optional<Pem>& issuer) {
  KeyPtr key(EVP_EC_gen("P-256"));
  if (!key) fail("EC key generation");
  CertPtr cert(X509_new());
  if (!cert) fail("X509_new");
  X509_set_version(cert.get(), 2);
  {
    std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>> serial(BN_new());
    if (!serial || BN_rand(serial.get(), 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1) fail("serial number");
    if (BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) == nullptr) fail("serial number");
  }
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), static_cast<long>(spec.not_before.count()));
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(spec.not_after.count()));
  X509_set_pubkey(cert.get(), key.get());
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1, -1, 0);

  CertPtr issuer_cert;
  KeyPtr issuer_key;
  if (issuer) {
    issuer_cert = parse_cert(issuer->cert);
    issuer_key = parse_key(issuer->key);
  }
  X509* signer_cert = issuer ? issuer_cert.get() : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer_cert));

  if (spec.is_ca) {
    add_ext(cert.get(), signer_cert, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(cert.get(), signer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_ext(cert.get(), signer_cert, NID_basic_constraints, "critical,CA:FALSE");
    std::string san;
    for (const auto& d : spec.dns_names) san += (san.empty() ? "" : ",") + ("DNS:" + d);
    for (const auto& ip : spec.ip_addresses) san += (san.empty() ? "" : ",") + ("IP:" + ip);
    if (!san.empty()) add_ext(cert.get(), signer_cert, NID_subject_alt_name, san);
    add_ext(cert.get(), signer_cert, NID_ext_key_usage, "serverAuth,clientAuth");
  }
  add_ext(cert.get(), signer_cert, NID_subject_key_identifier, "hash");
  if (X509_sign(cert.get(), issuer ? issuer_key.get() : key.get(), EVP_sha256()) == 0) fail("signing certificate");

  Pem out;
  BioPtr cb(BIO_new(BIO_s_mem()));
  BioPtr kb(BIO_new(BIO_s_mem()));
  if (!cb || !kb || PEM_write_bio_X509(cb.get(), cert.get()) != 1 ||
      PEM_write_bio_PrivateKey(kb.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    fail("writing PEM");
  }
  out.cert = bio_string(cb.get());
  out.key = bio_string(kb.get());
  return out;
}

std::string fingerprint(const std::string& cert_pem) {
  const auto cert = parse_cert(cert_pem);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (X509_digest(cert.get(), EVP_sha256(), md, &n) != 1) fail("certificate digest");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s = "sha256:";
  for (unsigned int i = 0; i < n; ++i) {
    s += kHex[md[i] >> 4];
    s += kHex[md[i] & 0xF];
  }
  return s;
}

void write_private_file(const std::filesystem::path& path, const std::string& data, unsigned mode) {
  const auto tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) throw std::system_error(errno, std::system_category(), "cannot write " + tmp);
  ::fchmod(fd, mode);  // the umask must not widen or narrow what we asked for
  const char* p = data.data();
  std::size_t left = data.size();
  while (left > 0) {
    const ssize_t w = ::write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      const int e = errno;
      ::close(fd);
      throw std::system_error(e, std::system_category(), "cannot write " + tmp);
    }
    p += w;
    left -= static_cast<std::size_t>(w);
  }
  ::fsync(fd);
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    throw std::system_error(errno, std::system_category(), "cannot write " + path.string());
  }
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::system_error(errno, std::system_category(), "cannot read " + path.string());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

Pem load_or_create_server_identity(const std::filesystem::path& dir, bool& created) {
  const auto cert_path = dir / "cert.pem";
  const auto key_path = dir / "key.pem";
  created = false;
  if (std::filesystem::exists(cert_path) && std::filesystem::exists(key_path)) {
    return {read_file(cert_path), read_file(key_path)};
  }
  std::filesystem::create_directories(dir);
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all, std::filesystem::perm_options::replace);
  char host[256] = "ftx";
  ::gethostname(host, sizeof host - 1);
  CertSpec spec;
  spec.common_name = host;
  spec.dns_names = {host, "localhost"};
  Pem pem = make_certificate(spec);
  write_private_file(key_path, pem.key, 0600);
  write_private_file(cert_path, pem.cert, 0644);
  created = true;
  return pem;
}

std::filesystem::path default_known_servers_path() {
  if (const char* xdg = std::getenv("XDG_CONFIG_HOME"); xdg != nullptr && *xdg != '\0') {
    return std::filesystem::path(xdg) / "ftx" / "known_servers";
  }
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home != nullptr ? home : ".") / ".config" / "ftx" / "known_servers";
}

std::optional<std::pair<std::string, std::size_t>> KnownServers::find(const std::string& address) const {
  std::ifstream in(path_);
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    std::istringstream fields(line);
    std::string addr, fp;
    if (!(fields >> addr >> fp) || addr.starts_with('#')) continue;
    if (addr == address) return std::make_pair(fp, number);
  }
  return std::nullopt;
}

void KnownServers::add(const std::string& address, const std::string& fp) const {
  std::filesystem::create_directories(path_.parent_path());
  const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) throw std::system_error(errno, std::system_category(), "cannot write " + path_.string());
  const std::string line = address + " " + fp + "\n";
  const bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  ::close(fd);
  if (!ok) throw std::system_error(errno, std::system_category(), "cannot write " + path_.string());
}

}  // namespace ftx::tls
