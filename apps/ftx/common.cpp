#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>

#include "apps/ftx/commands.hpp"
#include "apps/ftx/exit_codes.hpp"
#include "apps/ftx/output.hpp"
#include "tls/certs.hpp"

namespace ftx::app {

void print_error(const std::string& message) { std::fprintf(stderr, "ftx: %s\n", message.c_str()); }

void add_server_option(CLI::App& cmd, ClientOptions& opts) {
  cmd.add_option("-s,--server", opts.server, "server address HOST:PORT")
      ->envname("FTX_SERVER")
      ->capture_default_str();
  cmd.add_option("--token-file", opts.token_file,
                 "file holding the server's shared secret (default: $FTX_TOKEN; never pass a secret as an argument)")
      ->envname("FTX_TOKEN_FILE");
  const char* tls = "TLS";
  cmd.add_flag("--tls", opts.tls, "speak TLS 1.3 (the server runs with --tls)")->envname("FTX_TLS")->group(tls);
  cmd.add_option("--ca", opts.ca_file, "trust servers whose certificate this CA signed (default: pin fingerprints)")
      ->envname("FTX_CA")
      ->check(CLI::ExistingFile)
      ->group(tls);
  cmd.add_flag("--accept-new", opts.accept_new, "pin an unknown server's certificate without asking")->group(tls);
  cmd.add_option("--cert", opts.cert_file, "client certificate, for servers that require one")
      ->envname("FTX_CERT")
      ->check(CLI::ExistingFile)
      ->group(tls);
  cmd.add_option("--key", opts.key_file, "key of --cert (default: in the --cert file)")
      ->envname("FTX_KEY")
      ->check(CLI::ExistingFile)
      ->group(tls);
  cmd.add_flag("--json", opts.json, "print results as JSON, one object a line (schema: docs/cli.md)");
}

void add_env_names(CLI::App& cmd) {
  for (CLI::Option* opt : cmd.get_options()) {
    if (!opt->get_envname().empty() || opt->get_lnames().empty()) continue;
    const std::string& name = opt->get_lnames().front();
    if (name == "help") continue;
    std::string env = "FTX_";
    for (const char c : name) env += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    opt->envname(env);
  }
}

std::string read_token(const std::string& token_file) {
  auto trim = [](std::string t) {
    while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
    return t;
  };
  if (token_file.empty()) {
    const char* env = std::getenv("FTX_TOKEN");
    if (env == nullptr || *env == '\0') return "";
    std::string token = trim(env);
    // Set but blank is a mistake, not "no authentication".
    if (token.empty()) throw client::Error(client::Failure::kLocalIo, "FTX_TOKEN is set but blank");
    return token;
  }
  std::ifstream in(token_file, std::ios::binary);
  if (!in) {
    throw client::Error(client::Failure::kLocalIo, "cannot read token file " + token_file + ": " +
                                                       std::generic_category().message(errno));
  }
  const std::string token = trim({std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()});
  if (token.empty()) throw client::Error(client::Failure::kLocalIo, "token file " + token_file + " is empty");
  struct stat st {};
  if (::stat(token_file.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    print_error("warning: token file " + token_file + " is readable by other users; chmod 600 it");
  }
  return token;
}

std::unique_ptr<client::Client> connect(const ClientOptions& opts, const protocol::Address& address) {
  client::TlsOptions tls;
  tls.enabled = opts.tls || !opts.ca_file.empty() || !opts.cert_file.empty();
  tls.ca_file = opts.ca_file;
  tls.cert_file = opts.cert_file;
  tls.key_file = opts.key_file;
  tls.accept_new = opts.accept_new;
  tls.known_servers = tls::default_known_servers_path();
  if (::isatty(STDIN_FILENO) && ::isatty(STDERR_FILENO)) {
    const auto path = tls.known_servers;
    tls.confirm = [path](const std::string& addr, const std::string& fp) {
      std::fprintf(stderr, "The server %s is not known yet. Its certificate fingerprint is\n  %s\n"
                           "Compare it with the one 'ftx serve' printed. Trust it and remember it in %s? [y/N] ",
                   addr.c_str(), fp.c_str(), path.c_str());
      char answer[16] = {};
      if (std::fgets(answer, sizeof answer, stdin) == nullptr) return false;
      return answer[0] == 'y' || answer[0] == 'Y';
    };
  }
  return std::make_unique<client::Client>(address, read_token(opts.token_file), client::Client::kDefaultTimeout, tls);
}

std::optional<protocol::Address> server_address(const ClientOptions& opts) {
  std::string error;
  auto address = protocol::parse_address(opts.server, error);
  if (!address) print_error("invalid --server: " + error);
  return address;
}

int exit_code_for(client::Failure f) {
  switch (f) {
    case client::Failure::kConnection: return kConnection;
    case client::Failure::kNotFound: return kNotFound;
    case client::Failure::kRejected: return kRejected;
    case client::Failure::kIntegrity: return kIntegrity;
    case client::Failure::kLocalIo: return kLocalIo;
    case client::Failure::kProtocol: return kProtocol;
    case client::Failure::kAuth: return kAuth;
    case client::Failure::kTls: return kTls;
  }
  return kInternal;
}

int run_with_client(const ClientOptions& opts, const char* op, const std::function<void(client::Client&)>& action) {
  const auto address = server_address(opts);
  if (!address) return kUsage;
  return run_client_action(opts, op, [&] {
    auto c = connect(opts, *address);
    action(*c);
  });
}

int run_client_action(const ClientOptions& opts, const char* op, const std::function<void()>& action) {
  try {
    action();
    return kOk;
  } catch (const client::Error& e) {
    print_error(e.what());
    if (opts.json) {
      auto j = json_error(e);
      j["op"] = op;
      print_json(j);
    }
    return exit_code_for(e.kind());
  }
}

std::uint64_t raise_descriptor_limit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return 0;
  if (lim.rlim_cur < lim.rlim_max) {
    rlimit raised = lim;
    raised.rlim_cur = lim.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) lim = raised;
  }
  return lim.rlim_cur;
}

}  // namespace ftx::app
