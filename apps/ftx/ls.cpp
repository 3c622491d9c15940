// ls, stat and ping: commands that only read from the server.

#include <chrono>
#include <cinttypes>
#include <cstdio>

#include "apps/ftx/commands.hpp"
#include "apps/ftx/exit_codes.hpp"
#include "apps/ftx/output.hpp"
#include "hash/sha256.hpp"

namespace ftx::app {
namespace {

nlohmann::json json_entry(const client::Entry& e) {
  nlohmann::json j{{"name", e.name},
                   {"type", e.folder ? "folder" : "file"},
                   {"size", e.size},
                   {"mtime", format_mtime(e.mtime_ns, true)},
                   {"mtime_ns", e.mtime_ns},
                   {"executable", e.executable}};
  if (e.digest) j["sha256"] = hash::to_hex(*e.digest);
  return j;
}

}  // namespace

CLI::App* setup_ls(CLI::App& app, LsOptions& opts) {
  auto* cmd = app.add_subcommand("ls", "list stored files, one a line: size in bytes, mtime (UTC), name");
  cmd->add_option("PATH", opts.path, "folder to list (default: everything), or one file");
  cmd->add_flag("-l,--long", opts.long_format, "also show each file's stored SHA-256 (between mtime and name)");
  cmd->add_flag("--partial", opts.partial,
                "list the unfinished uploads the server keeps for resume instead: bytes received, size, last "
                "progress (UTC), name");
  add_server_option(*cmd, opts.client);
  cmd->footer(
      "Examples:\n"
      "  ftx ls\n"
      "       1048576  2026-11-25T04:18:54Z  docs/q3.pdf\n"
      "  ftx ls -l docs\n"
      "       1048576  2026-11-25T04:18:54Z  5f0c...e1a9  docs/q3.pdf\n"
      "  ftx ls --json | jq -r 'select(.size > 1000000) | .name'\n"
      "  ftx ls --partial\n"
      "     734003200    1073741824  2026-11-25T04:20:07Z  isos/debian.iso");
  return cmd;
}

int run_ls(const LsOptions& opts) {
  if (opts.partial) {
    return run_with_client(opts.client, "ls", [&](client::Client& c) {
      for (const auto& p : c.list_partial()) {
        if (opts.client.json) {
          print_json(nlohmann::json{{"name", p.name},
                                    {"size", p.size},
                                    {"received", p.received},
                                    {"updated", format_mtime(p.updated_ns)},
                                    {"updated_ns", p.updated_ns}});
        } else {
          std::printf("%12" PRIu64 "  %12" PRIu64 "  %s  %s\n", p.received, p.size, format_mtime(p.updated_ns).c_str(),
                      printable(p.name).c_str());
        }
      }
    });
  }
  return run_with_client(opts.client, "ls", [&](client::Client& c) {
    client::ListOptions lo;
    lo.digests = opts.long_format;
    // "docs/" and "." mean what they mean in a shell.
    std::string path = opts.path;
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    if (path == "." || path == "/") path.clear();
    c.list(
        path,
        [&](const client::Entry& e) {
          if (opts.client.json) {
            print_json(json_entry(e));
          } else if (opts.long_format) {
            std::printf("%12" PRIu64 "  %s  %s  %s\n", e.size, format_mtime(e.mtime_ns).c_str(),
                        e.digest ? hash::to_hex(*e.digest).c_str() : std::string(64, '?').c_str(),
                        printable(e.name).c_str());
          } else {
            std::printf("%12" PRIu64 "  %s  %s\n", e.size, format_mtime(e.mtime_ns).c_str(), printable(e.name).c_str());
          }
        },
        lo);
  });
}

CLI::App* setup_stat(CLI::App& app, StatOptions& opts) {
  auto* cmd = app.add_subcommand("stat", "show one stored file's size, mtime and SHA-256 (computed by the server)");
  cmd->add_option("NAME", opts.name, "file or folder on the server")->required();
  add_server_option(*cmd, opts.client);
  cmd->footer(
      "Examples:\n"
      "  ftx stat docs/q3.pdf\n"
      "  ftx stat docs/q3.pdf --json | jq -r .sha256");
  return cmd;
}

int run_stat(const StatOptions& opts) {
  return run_with_client(opts.client, "stat", [&](client::Client& c) {
    const auto e = c.stat(opts.name);
    if (opts.client.json) {
      print_json(json_entry(e));
      return;
    }
    std::printf("name    %s\n", printable(e.name).c_str());
    std::printf("type    %s\n", e.folder ? "folder" : e.executable ? "file, executable" : "file");
    if (!e.folder) std::printf("size    %" PRIu64 " (%s)\n", e.size, human_size(e.size).c_str());
    std::printf("mtime   %s\n", format_mtime(e.mtime_ns, true).c_str());
    if (e.digest) std::printf("sha256  %s\n", hash::to_hex(*e.digest).c_str());
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
  return run_client_action(opts.client, "ping", [&] {
    const auto start = std::chrono::steady_clock::now();
    auto c = connect(opts.client, *address);
    c->ping();
    const auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (opts.client.json) {
      print_json({{"op", "ping"}, {"ok", true}, {"server", address->to_string()}, {"ms", ms}});
    } else {
      std::printf("pong from %s in %.1f ms\n", address->to_string().c_str(), ms);
    }
  });
}

}  // namespace ftx::app
