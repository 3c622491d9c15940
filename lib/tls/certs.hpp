#pragma once
// Certificates and keys for ftx's TLS: making a self-signed server certificate (ftx serve
// --tls), fingerprints for pinning, and the known_servers file in which clients pin them.
// OpenSSL 3 only; no asio here.

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace ftx::tls {

// A key pair and certificate in PEM.
struct Pem {
  std::string cert;
  std::string key;
};

struct CertSpec {
  std::string common_name = "ftx";
  std::vector<std::string> dns_names = {"localhost"};
  std::vector<std::string> ip_addresses = {"127.0.0.1", "::1"};
  bool is_ca = false;
  // Validity relative to now (a negative not_after makes an expired certificate: tests).
  std::chrono::seconds not_before = std::chrono::hours(-1);
  std::chrono::seconds not_after = std::chrono::hours(24 * 3650);
};

// Makes an EC P-256 key and a certificate for it, signed by `issuer` (or self-signed when
// issuer is nullopt). Throws std::runtime_error with OpenSSL's reason on failure.
Pem make_certificate(const CertSpec& spec, const std::optional<Pem>& issuer = std::nullopt);

// "sha256:" and 64 lower-case hex digits of the SHA-256 of the certificate's DER encoding
// (the first certificate in `cert_pem`).
std::string fingerprint(const std::string& cert_pem);

// Writes `data` to `path` atomically with the given permission bits.
void write_private_file(const std::filesystem::path& path, const std::string& data, unsigned mode);
std::string read_file(const std::filesystem::path& path);

// The server's own certificate for `ftx serve --tls`: loaded from `dir` (cert.pem, key.pem),
// or made once and stored there (folder 0700, key 0600). `created` tells which.
Pem load_or_create_server_identity(const std::filesystem::path& dir, bool& created);

// ~/.config/ftx/known_servers (or $XDG_CONFIG_HOME/ftx/known_servers): one
// "HOST:PORT sha256:HEX" a line, like ssh's known_hosts.
std::filesystem::path default_known_servers_path();

class KnownServers {
 public:
  explicit KnownServers(std::filesystem::path path) : path_(std::move(path)) {}
  const std::filesystem::path& path() const { return path_; }
  // The pinned fingerprint of `address` and its line number (1-based), if any.
  std::optional<std::pair<std::string, std::size_t>> find(const std::string& address) const;
  // Appends a pin (creating the file, owner-only, and its folder).
  void add(const std::string& address, const std::string& fingerprint) const;

 private:
  std::filesystem::path path_;
};

}  // namespace ftx::tls
