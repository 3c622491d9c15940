#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <filesystem>

#include "apps/ftx/commands.hpp"
#include "apps/ftx/exit_codes.hpp"
#include "server/server.hpp"

namespace ftx::app {

CLI::App* setup_serve(CLI::App& app, ServeOptions& opts) {
  auto* cmd = app.add_subcommand("serve", "run the server");
  cmd->add_option("--root", opts.root, "folder that holds the stored files (created if missing)")
      ->capture_default_str();
  cmd->add_option("--listen", opts.listen, "address to listen on, HOST:PORT (port 0 picks a free one)")
      ->capture_default_str();
  cmd->add_option("--threads", opts.threads, "I/O threads (default: number of cores)")
      ->check(CLI::Range(1u, 1024u));
  cmd->footer(
      "Example:\n  ftx serve --root /srv/ftx --listen 0.0.0.0:7021\n\n"
      "SIGINT/SIGTERM stop accepting, let transfers in flight finish (5 s at most) and exit 0.");
  return cmd;
}

int run_serve(const ServeOptions& opts) {
  auto logger = spdlog::stderr_color_mt("ftx");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
  spdlog::set_default_logger(logger);

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

  std::unique_ptr<server::Server> srv;
  try {
    srv = std::make_unique<server::Server>(so);
  } catch (const server::ListenError& e) {
    print_error(std::string(e.what()) + " \u2014 is another server using it? choose another --listen");
    return kConnection;
  } catch (const std::system_error& e) {
    print_error(std::string(e.what()) + " \u2014 check --root");
    return kLocalIo;
  }
  std::error_code ec;
  const auto root = std::filesystem::absolute(opts.root, ec);
  spdlog::info("ftx {} serving {} on {} with {} thread(s)", FTX_VERSION, (ec ? opts.root : root.lexically_normal().string()),
               srv->listen_address(), srv->threads());
  if (const auto n = srv->storage().leftovers_removed(); n > 0) {
    spdlog::info("removed {} unfinished upload(s) left by an earlier run", n);
  }
  srv->run();
  spdlog::info("stopped");
  return kOk;
}

}  // namespace ftx::app
