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
  cmd->footer("Example:\n  ftx ls\n      1048576  2026-11-25T04:18:54Z  docs/q3.pdf");
  return cmd;
}

int run_ls(const LsOptions& opts) {
  const auto address = server_address(opts.client);
  if (!address) return kUsage;
  return run_client_action([&] {
    client::Client c(*address);
    c.list("", [](const client::Entry& e) {
      std::string name = e.name;
      for (auto& ch : name) {
        if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) ch = '?';
      }
      std::printf("%12" PRIu64 "  %s  %s\n", e.size, format_mtime(e.mtime_ns).c_str(), name.c_str());
    });
  });
}

}  // namespace ftx::app
