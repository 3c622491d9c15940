#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <ctime>

#include "apps/ftx/commands.hpp"
#include "apps/ftx/exit_codes.hpp"

namespace ftx::app {
namespace {

// ISO 8601 in UTC: sortable, unambiguous across time zones.
std::string format_mtime(std::int64_t mtime_ns) {
  const std::time_t secs = static_cast<std::time_t>(mtime_ns / 1'000'000'000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

CLI::App* setup_ls(CLI::App& app, LsOptions& opts) {
  auto* cmd = app.add_subcommand("ls", "list stored files, one a line: size in bytes, mtime (UTC), name");
  add_server_option(*cmd, opts.client);
  cmd->footer("Example:\n  ftx ls\n     1048576  2026-11-25T04:18:54Z  docs/q3.pdf");
  return cmd;
}

int run_ls(const LsOptions& opts) {
  const auto address = server_address(opts.client);
  if (!address) return kUsage;
  return run_client_action([&] {
    auto c = connect(opts.client, *address);
    c->list("", [](const client::Entry& e) {
      std::string name = e.name;
      for (auto& ch : name) {
        if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) ch = '?';
      }
      std::printf("%12" PRIu64 "  %s  %s\n", e.size, format_mtime(e.mtime_ns).c_str(), name.c_str());
    });
  });
}

CLI::App* setup_ping(CLI::App& app, PingOptions& opts) {
  auto* cmd = app.add_subcommand("ping", "check that a server answers (exit 0), e.g. as a container health check");
  add_server_option(*cmd, opts.client);
  cmd->footer("Example:\n  ftx ping -s 127.0.0.1:7021\n  pong from 127.0.0.1:7021 in 0.2 ms");
  return cmd;
}

int run_ping(const PingOptions& opts) {
  const auto address = server_address(opts.client);
  if (!address) return kUsage;
  return run_client_action([&] {
    const auto start = std::chrono::steady_clock::now();
    auto c = connect(opts.client, *address);
    c->ping();
    const auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::printf("pong from %s in %.1f ms\n", address->to_string().c_str(), ms);
  });
}

}  // namespace ftx::app
