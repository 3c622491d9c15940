// TLS 1.3 end to end: trust through a CA and through pinning, mutual TLS, and the ways it
// must fail (changed fingerprint, expired certificate, untrusted CA, plaintext on either
// side) while the server keeps serving.

#include <gtest/gtest.h>

#include "client/client.hpp"
#include "hash/sha256.hpp"
#include "integration/server_fixture.hpp"
#include "server/stream.hpp"
#include "tls/certs.hpp"

namespace ftx::test {
namespace {

using namespace std::chrono_literals;

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const client::Error& e) {
    return e.what();
  }
  return {};
}

// A test CA, a server certificate it signed, a client certificate it signed.
struct Pki {
  tls::Pem ca;
  tls::Pem server;
  tls::Pem client;
  Pki() {
    tls::CertSpec ca_spec;
    ca_spec.common_name = "ftx test CA";
    ca_spec.is_ca = true;
    ca = tls::make_certificate(ca_spec);
    tls::CertSpec server_spec;
    server_spec.common_name = "localhost";
    server = tls::make_certificate(server_spec, ca);
    tls::CertSpec client_spec;
    client_spec.common_name = "alice";
    client = tls::make_certificate(client_spec, ca);
  }
};

const Pki& pki() {
  static const Pki p;
  return p;
}

class TlsServer : public ServerTest {
 protected:
  void configure(server::ServerOptions& o) override {
    const auto pem = server_pem();
    o.tls = server::make_server_tls_context(pem.cert, pem.key, client_ca_file());
  }
  virtual tls::Pem server_pem() const { return pki().server; }
  virtual std::string client_ca_file() const { return {}; }

  std::string write_pem(const std::string& name, const std::string& pem) const {
    const auto p = dir_ / name;
    write_file(p, pem);
    return p.string();
  }
  client::TlsOptions with_ca() const {
    client::TlsOptions t;
    t.enabled = true;
    t.ca_file = write_pem("ca.pem", pki().ca.cert);
    return t;
  }
  client::TlsOptions pinning(bool accept_new) const {
    client::TlsOptions t;
    t.enabled = true;
    t.known_servers = dir_ / "known_servers";
    t.accept_new = accept_new;
    return t;
  }
  std::unique_ptr<client::Client> connect(const client::TlsOptions& t, std::string token = {}) const {
    return std::make_unique<client::Client>(address(), std::move(token), client::Client::kDefaultTimeout, t);
  }
  void expect_still_serving() const {
    auto c = connect(with_ca());
    c->ping();
  }
};

TEST_F(TlsServer, RoundTripsAllSizesWithACa) {
  auto c = connect(with_ca());
  std::uint64_t seed = 50;
  for (const std::size_t size : {std::size_t{0}, std::size_t{1}, protocol::kChunkSize - 1, protocol::kChunkSize,
                                 protocol::kChunkSize + 1, 9 * protocol::kChunkSize + 7}) {
    SCOPED_TRACE(size);
    const auto data = random_bytes(size, seed++);
    write_file(dir_ / "src", data);
    EXPECT_EQ(c->put(dir_ / "src", "tls/" + std::to_string(size)).digest, hash::sha256(data));
    c->get("tls/" + std::to_string(size), dir_ / "back");
    EXPECT_EQ(read_file(dir_ / "back"), data);
  }
  std::size_t n = 0;
  c->list("", [&](const client::Entry&) { ++n; });
  EXPECT_EQ(n, 6u);
}

TEST_F(TlsServer, PipelinedBatchesWorkOverTls) {
  // The batch sender and receiver use the TLS stream at the same time (one write, one read).
  // Enough files that the server publishes bursts while it reads on (Stream::input_pending
  // over TLS).
  std::vector<client::BatchItem> up;
  std::vector<client::BatchItem> down;
  std::filesystem::create_directories(dir_ / "out");
  for (int i = 0; i < 600; ++i) {
    const auto local = dir_ / ("f" + std::to_string(i));
    write_file(local, random_bytes(i == 9 ? protocol::kChunkSize * 3 : 1000 + i, 700 + i));
    up.push_back({local, "tlsbatch/f" + std::to_string(i)});
    down.push_back({dir_ / "out" / ("f" + std::to_string(i)), "tlsbatch/f" + std::to_string(i)});
  }
  auto c = connect(with_ca());
  std::size_t ok = 0;
  c->put_many(up, {}, [&](const client::BatchResult& r) { ok += r.error ? 0 : 1; });
  c->get_many(down, {}, [&](const client::BatchResult& r) { ok += r.error ? 0 : 1; });
  EXPECT_EQ(ok, 1200u);
  for (std::size_t i = 0; i < up.size(); ++i) EXPECT_EQ(read_file(down[i].local), read_file(up[i].local)) << i;
}

TEST_F(TlsServer, PinningTrustsOnFirstUseThenRequiresTheSameCertificate) {
  EXPECT_EQ(failure_of([&] { connect(pinning(false)); }), client::Failure::kTls) << "unknown and not accepted";
  EXPECT_FALSE(std::filesystem::exists(dir_ / "known_servers"));

  connect(pinning(true))->ping();  // --accept-new pins it
  const auto pinned = tls::KnownServers(dir_ / "known_servers").find(address().to_string());
  ASSERT_TRUE(pinned);
  EXPECT_EQ(pinned->first, tls::fingerprint(pki().server.cert));

  connect(pinning(false))->ping();  // known now: no question asked

  // The same address now presents another certificate: a hard error that says how to clear it.
  tls::KnownServers(dir_ / "known_servers").add("127.0.0.1:1", "sha256:00");  // unrelated line
  std::filesystem::remove(dir_ / "known_servers");
  tls::KnownServers(dir_ / "known_servers").add(address().to_string(), "sha256:" + std::string(64, '0'));
  const auto msg = message_of([&] { connect(pinning(true)); });
  EXPECT_NE(msg.find("CHANGED"), std::string::npos) << msg;
  EXPECT_NE(msg.find("delete line 1 of"), std::string::npos) << msg;
  EXPECT_EQ(failure_of([&] { connect(pinning(true)); }), client::Failure::kTls) << "--accept-new does not override";
  expect_still_serving();
}

TEST_F(TlsServer, InteractiveConfirmationDecides) {
  auto t = pinning(false);
  std::string asked;
  t.confirm = [&](const std::string& addr, const std::string& fp) {
    asked = addr + " " + fp;
    return false;
  };
  EXPECT_EQ(failure_of([&] { connect(t); }), client::Failure::kTls);
  EXPECT_EQ(asked, address().to_string() + " " + tls::fingerprint(pki().server.cert));
  t.confirm = [](const std::string&, const std::string&) { return true; };
  connect(t)->ping();
}

TEST_F(TlsServer, UntrustedCaIsRefused) {
  tls::CertSpec other;
  other.is_ca = true;
  auto t = with_ca();
  t.ca_file = write_pem("other-ca.pem", tls::make_certificate(other).cert);
  const auto msg = message_of([&] { connect(t); });
  EXPECT_NE(msg.find("TLS handshake"), std::string::npos) << msg;
  EXPECT_EQ(failure_of([&] { connect(t); }), client::Failure::kTls);
  expect_still_serving();
}

class WrongName : public TlsServer {
  tls::Pem server_pem() const override {
    tls::CertSpec spec;
    spec.common_name = "other.example";
    spec.dns_names = {"other.example"};
    spec.ip_addresses = {};
    return tls::make_certificate(spec, pki().ca);
  }
};

TEST_F(WrongName, CaSignedCertificateForAnotherHostIsRefused) {
  // Signed by the trusted CA, but it names other.example, not 127.0.0.1.
  EXPECT_EQ(failure_of([&] { connect(with_ca()); }), client::Failure::kTls);
}

TEST_F(TlsServer, PlaintextClientGetsAClearErrorAndTheServerKeepsServing) {
  client::Client plain(address());
  const auto msg = message_of([&] { plain.ping(); });
  EXPECT_NE(msg.find("--tls"), std::string::npos) << msg;
  EXPECT_EQ(failure_of([&] {
              client::Client p2(address());
              p2.ping();
            }),
            client::Failure::kConnection);
  expect_still_serving();
}

TEST_F(TlsServer, StopDoesNotWaitForAHandshakeThatNeverStarts) {
  RawPeer silent(server_->port());  // connects, never sends a ClientHello
  connect(with_ca())->ping();       // the silent connection was accepted before this one
  const auto t0 = std::chrono::steady_clock::now();
  server_->stop();
  server_->wait();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1500ms) << "the 2 s grace is for transfers, not for handshakes";
}

class ExpiredCertificate : public TlsServer {
  tls::Pem server_pem() const override {
    tls::CertSpec spec;
    spec.common_name = "localhost";
    spec.not_before = -std::chrono::hours(48);
    spec.not_after = -std::chrono::hours(24);
    return tls::make_certificate(spec, pki().ca);
  }
};

TEST_F(ExpiredCertificate, IsRefusedWithItsReason) {
  const auto msg = message_of([&] { connect(with_ca()); });
  EXPECT_NE(msg.find("expired"), std::string::npos) << msg;
  EXPECT_EQ(failure_of([&] { connect(with_ca()); }), client::Failure::kTls);
}

class MutualTls : public TlsServer {
  std::string client_ca_file() const override { return write_pem("client-ca.pem", pki().ca.cert); }
};

TEST_F(MutualTls, ClientCertificateRequired) {
  // Without a certificate the server ends the handshake (TLS 1.3 reports it on first use).
  EXPECT_EQ(failure_of([&] { connect(with_ca())->ping(); }), client::Failure::kTls);
  auto t = with_ca();
  t.cert_file = write_pem("alice.pem", pki().client.cert);
  t.key_file = write_pem("alice.key", pki().client.key);
  auto c = connect(t);
  c->ping();
  write_file(dir_ / "f", std::string("mutual"));
  c->put(dir_ / "f", "f");
}

TEST(PlaintextServer, TlsClientSaysTheServerDoesNotSpeakTls) {
  TempDir dir;
  server::ServerOptions o;
  o.root = dir / "root";
  o.port = 0;
  o.threads = 1;
  server::Server srv(o);
  srv.start();
  client::TlsOptions t;
  t.enabled = true;
  t.accept_new = true;
  t.known_servers = dir / "known";
  try {
    client::Client c({"127.0.0.1", srv.port()}, {}, client::Client::kDefaultTimeout, t);
    ADD_FAILURE() << "TLS handshake with a plaintext server succeeded";
  } catch (const client::Error& e) {
    EXPECT_EQ(e.kind(), client::Failure::kTls);
    EXPECT_NE(std::string(e.what()).find("--tls"), std::string::npos) << e.what();
  }
  client::Client plain({"127.0.0.1", srv.port()});
  plain.ping();
  srv.stop();
  srv.wait();
}

TEST(SelfSignedIdentity, MadeOnceOwnerOnlyThenReused) {
  TempDir dir;
  bool created = false;
  const auto first = tls::load_or_create_server_identity(dir / ".ftx-tls", created);
  EXPECT_TRUE(created);
  EXPECT_EQ(std::filesystem::status(dir / ".ftx-tls" / "key.pem").permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  EXPECT_EQ(std::filesystem::status(dir / ".ftx-tls").permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_all);
  const auto again = tls::load_or_create_server_identity(dir / ".ftx-tls", created);
  EXPECT_FALSE(created);
  EXPECT_EQ(tls::fingerprint(again.cert), tls::fingerprint(first.cert));
}

}  // namespace
}  // namespace ftx::test
