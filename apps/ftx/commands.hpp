#pragma once
// One options struct, one setup_x(CLI::App&) and one run_x(opts) per subcommand (the
// CLI11 subcom_in_files model). run_x returns the process exit code.

#include <CLI/CLI.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "client/client.hpp"
#include "protocol/address.hpp"

namespace ftx::app {

struct ServeOptions {
  std::string root = "./ftx-data";
  std::string listen = "127.0.0.1:7021";
  unsigned threads = 0;  // 0 = number of cores
  double grace_s = 5;
  std::size_t max_connections = 1024;
  std::size_t max_per_client = 64;
  double idle_timeout_s = 300;
  double header_timeout_s = 30;
  double body_timeout_s = 60;
  std::uint64_t max_file_size = std::uint64_t{1} << 40;
  std::uint64_t min_free = 64ull << 20;
  std::size_t max_name = 1024;
  std::size_t max_depth = 32;
  bool read_only = false;
  std::string token_file;  // else $FTX_TOKEN
  bool tls = false;        // TLS with the certificate in <root>/.ftx-tls (made once)
  std::string tls_cert;    // or this certificate chain...
  std::string tls_key;     // ...and key
  std::string client_ca;   // mutual TLS: clients need a certificate signed by this CA
  std::string log_format = "text";  // text | json
  std::uint64_t partial_ttl_s = 24 * 3600;
  unsigned max_streams = 8;  // connections one put/get -P may use for one file
};

struct ClientOptions {
  std::string server = "127.0.0.1:7021";  // --server, else $FTX_SERVER
  std::string token_file;                 // --token-file, else $FTX_TOKEN
  bool tls = false;
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  bool accept_new = false;
  bool json = false;  // --json: results as JSON lines on stdout
};

struct PutOptions {
  ClientOptions client;
  std::string local;
  std::string remote;  // empty = base name of local
  bool recursive = false;
  bool quiet = false;
  bool no_resume = false;
  bool skip_identical = false;  // --skip-identical: leave files the other side holds already
  unsigned parallel = 1;  // -P: connections for one file (1 = the usual single stream)
};

struct GetOptions {
  ClientOptions client;
  std::string remote;
  std::string local;  // empty = ./<base name>
  bool recursive = false;
  bool quiet = false;
  bool no_resume = false;
  bool skip_identical = false;  // --skip-identical: leave files the other side holds already
  unsigned parallel = 1;  // -P: connections for one file (1 = the usual single stream)
};

struct LsOptions {
  ClientOptions client;
  std::string path;  // empty = everything
  bool long_format = false;
  bool partial = false;  // the server's unfinished uploads instead
};

struct PingOptions {
  ClientOptions client;
};

struct StatOptions {
  ClientOptions client;
  std::string name;
};

struct RmOptions {
  ClientOptions client;
  std::vector<std::string> names;
};

struct MvOptions {
  ClientOptions client;
  std::string from;
  std::string to;
};

struct MkdirOptions {
  ClientOptions client;
  std::vector<std::string> names;
};

CLI::App* setup_serve(CLI::App& app, ServeOptions& opts);
CLI::App* setup_put(CLI::App& app, PutOptions& opts);
CLI::App* setup_get(CLI::App& app, GetOptions& opts);
CLI::App* setup_ls(CLI::App& app, LsOptions& opts);
CLI::App* setup_ping(CLI::App& app, PingOptions& opts);
CLI::App* setup_stat(CLI::App& app, StatOptions& opts);
CLI::App* setup_rm(CLI::App& app, RmOptions& opts);
CLI::App* setup_mv(CLI::App& app, MvOptions& opts);
CLI::App* setup_mkdir(CLI::App& app, MkdirOptions& opts);

int run_serve(const ServeOptions& opts);
int run_put(const PutOptions& opts);
int run_get(const GetOptions& opts);
int run_ls(const LsOptions& opts);
int run_ping(const PingOptions& opts);
int run_stat(const StatOptions& opts);
int run_rm(const RmOptions& opts);
int run_mv(const MvOptions& opts);
int run_mkdir(const MkdirOptions& opts);

// Shared by the client commands: --server, token, TLS options and --json.
void add_server_option(CLI::App& cmd, ClientOptions& opts);
// Gives every long option of `cmd` that has none an environment variable FTX_<NAME>
// (--max-depth -> FTX_MAX_DEPTH), so any flag can come from the environment.
void add_env_names(CLI::App& cmd);
// Prints "ftx: <message>" on stderr.
void print_error(const std::string& message);
// Parses --server; on a bad address prints the error and returns nullopt.
std::optional<protocol::Address> server_address(const ClientOptions& opts);
// The shared secret from `token_file` if given, else $FTX_TOKEN, else "". Throws
// client::Error(kLocalIo) when the file cannot be read or is empty.
std::string read_token(const std::string& token_file);
// Connects (and authenticates when a token is configured).
std::unique_ptr<client::Client> connect(const ClientOptions& opts, const protocol::Address& address);
// Runs a client action, mapping every failure to its message (stderr) and exit code. With
// --json, the failure is also printed as {"op":op,"ok":false,...} on stdout.
int run_client_action(const ClientOptions& opts, const char* op, const std::function<void()>& action);
// The usual client command: parses --server (exit 2 when bad), connects, and runs `action`
// on the connection through run_client_action.
int run_with_client(const ClientOptions& opts, const char* op, const std::function<void(client::Client&)>& action);
int exit_code_for(client::Failure f);
// Raises the soft limit on open descriptors to the hard limit; returns the limit then in
// force (RLIM_INFINITY: none; 0: unknown). The soft limit is 1024 on most systems: fewer
// than a server's connections need, or a folder transfer over many connections.
std::uint64_t raise_descriptor_limit();

}  // namespace ftx::app

