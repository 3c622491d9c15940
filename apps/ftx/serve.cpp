#include <malloc.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <cstdio>
#include <filesystem>

#include "apps/ftx/commands.hpp"
#include "apps/ftx/exit_codes.hpp"
#include "log/log.hpp"
#include "server/server.hpp"
#include "storage/names.hpp"
#include "tls/certs.hpp"

namespace ftx::app {
namespace {

// Descriptors a connection usually holds: its socket, the file being sent or received, its
// folder and the folder cached for the next request. (A pipelined upload batch holds more
// for a moment: up to 64 staged files, and 64 more in the burst being published, with the
// folders that burst opens; a streamed upload that runs out waits for them and retries.)
constexpr rlim_t kDescriptorsPerConnection = 4;

// The soft limit on open descriptors is 1024 on most systems: fewer than the default
// --max-connections needs, so accept() would fail with EMFILE long before the server is
// full. Raised to the hard limit (as nginx's worker_rlimit_nofile or Go's runtime do); a
// hard limit too low for the connections allowed gets a warning once, at start.
void check_descriptor_limit(std::size_t max_connections) {
  const auto limit = raise_descriptor_limit();
  const rlim_t want = static_cast<rlim_t>(max_connections) * kDescriptorsPerConnection + 64;
  if (limit != 0 && limit != RLIM_INFINITY && limit < want) {
    spdlog::warn("only {} open files allowed (ulimit -n); {} connections may need {}: raise the limit "
                 "or lower --max-connections",
                 limit, max_connections, want);
  }
}

}  // namespace

CLI::App* setup_serve(CLI::App& app, ServeOptions& opts) {
  auto* cmd = app.add_subcommand("serve", "run the server");
  cmd->add_option("--root", opts.root, "folder that holds the stored files (created if missing)")
      ->capture_default_str();
  cmd->add_option("--listen", opts.listen, "address to listen on, HOST:PORT (port 0 picks a free one)")
      ->capture_default_str();
  cmd->add_option("--threads", opts.threads, "I/O threads (default: number of cores)")
      ->check(CLI::Range(1u, 1024u));
  cmd->add_option("--grace", opts.grace_s, "seconds transfers in flight may take to finish after SIGTERM")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  auto* limits = "Limits";
  cmd->add_option("--max-connections", opts.max_connections, "open connections at most")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1000000}))
      ->capture_default_str()
      ->group(limits);
  cmd->add_option("--max-per-client", opts.max_per_client, "open connections at most from one IP address")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1000000}))
      ->capture_default_str()
      ->group(limits);
  cmd->add_option("--idle-timeout", opts.idle_timeout_s, "seconds a connection may wait between requests")
      ->check(CLI::Range(0.01, 86400.0))
      ->capture_default_str()
      ->group(limits);
  cmd->add_option("--header-timeout", opts.header_timeout_s, "seconds a request may take to arrive once begun")
      ->check(CLI::Range(0.01, 3600.0))
      ->capture_default_str()
      ->group(limits);
  cmd->add_option("--body-timeout", opts.body_timeout_s, "seconds a file body may go without progress")
      ->check(CLI::Range(0.01, 3600.0))
      ->capture_default_str()
      ->group(limits);
  cmd->add_option("--max-file-size", opts.max_file_size, "largest upload, bytes (suffixes K, M, G, T: powers of 1024)")
      ->transform(CLI::AsSizeValue(false))
      ->default_str("1T")
      ->group(limits);
  cmd->add_option("--min-free", opts.min_free, "free space an upload must leave on the root's filesystem")
      ->transform(CLI::AsSizeValue(false))
      ->default_str("64M")
      ->group(limits);
  cmd->add_option("--max-name", opts.max_name, "longest name of an upload (or mkdir, mv target), bytes")
      ->check(CLI::Range(std::size_t{1}, protocol::kMaxNameBytes))
      ->capture_default_str()
      ->group(limits);
  cmd->add_option("--max-depth", opts.max_depth, "most folders in the name of an upload (or mkdir, mv target)")
      ->check(CLI::Range(std::size_t{0}, std::size_t{2048}))
      ->capture_default_str()
      ->group(limits);
  cmd->add_option("--partial-ttl", opts.partial_ttl_s,
                  "seconds an unfinished upload is kept for resume without progress ('ftx ls --partial' lists them)")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{10} * 365 * 24 * 3600))
      ->capture_default_str()
      ->group(limits);
  cmd->add_option("--max-streams", opts.max_streams,
                  "connections one 'put -P'/'get -P' may use for one file (clients asking for more get this many)")
      ->check(CLI::Range(1u, 64u))
      ->capture_default_str()
      ->group(limits);
  auto* access = "Access";
  cmd->add_flag("--read-only", opts.read_only, "refuse every change: put, rm, mv, mkdir")->group(access);
  cmd->add_option("--token-file", opts.token_file,
                  "file holding a shared secret clients must prove they know (default: $FTX_TOKEN)")
      ->check(CLI::ExistingFile)
      ->envname("FTX_TOKEN_FILE")
      ->group(access);
  auto* tls = "TLS";
  cmd->add_flag("--tls", opts.tls,
                "serve TLS 1.3 with a self-signed certificate made once and kept in ROOT/.ftx-tls (owner-only)")
      ->group(tls);
  cmd->add_option("--tls-cert", opts.tls_cert, "serve TLS 1.3 with this certificate chain (PEM)")
      ->check(CLI::ExistingFile)
      ->group(tls);
  cmd->add_option("--tls-key", opts.tls_key, "the key of --tls-cert (PEM)")->check(CLI::ExistingFile)->group(tls);
  cmd->add_option("--client-ca", opts.client_ca, "mutual TLS: require client certificates signed by this CA")
      ->check(CLI::ExistingFile)
      ->group(tls);
  cmd->add_option("--log-format", opts.log_format,
                  "text: one line per event for people; json: one JSON object per line for log collectors")
      ->check(CLI::IsMember({"text", "json"}))
      ->envname("FTX_LOG_FORMAT")
      ->capture_default_str();
  cmd->footer(
      "Examples:\n  ftx serve --root /srv/ftx --listen 0.0.0.0:7021 --token-file /etc/ftx/token --tls\n"
      "  ftx serve --read-only --max-connections 200\n\n"
      "SIGINT/SIGTERM stop accepting, let transfers in flight finish (--grace) and exit 0.");
  return cmd;
}

int run_serve(const ServeOptions& opts) {
  // Memory the server frees stays with it for its next requests instead of going back to
  // the kernel: glibc handed each listing's growing array (10,000 entries: megabytes) back
  // as it was freed -- or took it with mmap to begin with -- so every listing faulted its
  // pages in afresh, about 500 page faults each at some 11 us apiece on the virtual machines
  // here. With a fixed mmap threshold and a trim threshold of 64 MiB a warm server's listing
  // of 10,000 names takes 7 ms, against 7-18 ms. The price: up to that much freed memory
  // stays mapped after a burst of work.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  log::setup(opts.log_format == "json" ? log::Format::kJson : log::Format::kText);

  std::string error;
  const auto address = protocol::parse_address(opts.listen, error);
  if (!address) {
    print_error("invalid --listen: " + error);
    return kUsage;
  }
  server::ServerOptions so;
  so.root = opts.root;
  so.host = address->host;
  so.port = address->port;
  so.threads = opts.threads;
  auto ms = [](double s) { return std::chrono::milliseconds(static_cast<std::int64_t>(s * 1000)); };
  so.grace = ms(opts.grace_s);
  so.max_connections = opts.max_connections;
  so.max_connections_per_client = opts.max_per_client;
  so.idle_timeout = ms(opts.idle_timeout_s);
  so.header_timeout = ms(opts.header_timeout_s);
  so.body_timeout = ms(opts.body_timeout_s);
  so.max_file_size = std::min(opts.max_file_size, protocol::kMaxFileSize);
  so.min_free_bytes = opts.min_free;
  so.max_name_bytes = opts.max_name;
  so.max_depth = opts.max_depth;
  so.partial_ttl = std::chrono::seconds(opts.partial_ttl_s);
  so.max_streams = opts.max_streams;
  so.read_only = opts.read_only;
  try {
    so.token = read_token(opts.token_file);
  } catch (const client::Error& e) {
    print_error(e.what());
    return kLocalIo;
  }

  std::string fingerprint;
  if (opts.tls_cert.empty() != opts.tls_key.empty()) {
    print_error("--tls-cert and --tls-key go together");
    return kUsage;
  }
  if (opts.tls || !opts.tls_cert.empty() || !opts.client_ca.empty()) {
    try {
      tls::Pem pem;
      if (!opts.tls_cert.empty()) {
        pem = {tls::read_file(opts.tls_cert), tls::read_file(opts.tls_key)};
      } else {
        bool created = false;
        pem = tls::load_or_create_server_identity(std::filesystem::path(opts.root) / storage::kTlsDir, created);
        if (created) std::fprintf(stderr, "ftx: made a self-signed certificate in %s\n",
                                  (std::filesystem::path(opts.root) / storage::kTlsDir).c_str());
      }
      so.tls = server::make_server_tls_context(pem.cert, pem.key, opts.client_ca);
      fingerprint = tls::fingerprint(pem.cert);
    } catch (const std::filesystem::filesystem_error& e) {
      print_error(std::string(e.what()) + " \u2014 check --root");
      return kLocalIo;
    } catch (const std::exception& e) {
      print_error(std::string("cannot set up TLS: ") + e.what() + " \u2014 check --tls-cert/--tls-key/--client-ca");
      return kTls;
    }
  }

  check_descriptor_limit(so.max_connections);
  std::unique_ptr<server::Server> srv;
  try {
    srv = std::make_unique<server::Server>(so);
  } catch (const server::ListenError& e) {
    const bool in_use = e.code() == std::errc::address_in_use;
    print_error(std::string(e.what()) + (in_use ? " \u2014 is another server using it? choose another --listen"
                                                : " \u2014 check --listen"));
    return kConnection;
  } catch (const std::system_error& e) {
    print_error(std::string(e.what()) + " \u2014 check --root");
    return kLocalIo;
  }
  std::error_code ec;
  const auto root = std::filesystem::absolute(opts.root, ec);
  spdlog::info("ftx {} serving {} on {} with {} thread(s)", FTX_VERSION, (ec ? opts.root : root.lexically_normal().string()),
               srv->listen_address(), srv->threads());
  spdlog::info("limits: {} connections ({} per client), timeouts idle {} s / header {} s / body {} s, "
               "files up to {} bytes leaving {} bytes free, names up to {} bytes and {} folders deep, "
               "unfinished uploads kept {} s, {} streams per file{}{}",
               so.max_connections, so.max_connections_per_client, opts.idle_timeout_s, opts.header_timeout_s,
               opts.body_timeout_s, so.max_file_size, so.min_free_bytes, so.max_name_bytes, so.max_depth,
               opts.partial_ttl_s, so.max_streams,
               so.read_only ? ", read-only" : "", so.token.empty() ? "" : ", token required");
  if (so.token.empty() && opts.client_ca.empty()) {
    if (!srv->listens_on_loopback()) {
      spdlog::warn("listening on {} without a token: anyone who can reach it can read and write the root; "
                   "set FTX_TOKEN or --token-file",
                   srv->listen_address());
    }
  }
  if (so.tls) {
    spdlog::info("TLS 1.3, certificate fingerprint {}{}", fingerprint,
                 opts.client_ca.empty() ? "" : ", client certificates required");
  }
  if (const auto n = srv->storage().leftovers_removed(); n > 0) {
    spdlog::info("removed {} unfinished upload(s) left by an earlier run", n);
  }
  log::flush();  // scripts wait for the "serving" line
  srv->run();
  spdlog::info("stopped");
  log::flush();
  return kOk;
}

}  // namespace ftx::app
