#include <cstdio>
#include <filesystem>

#include "apps/ftx/commands.hpp"
#include "apps/ftx/exit_codes.hpp"
#include "hash/sha256.hpp"

namespace ftx::app {

CLI::App* setup_put(CLI::App& app, PutOptions& opts) {
  auto* cmd = app.add_subcommand("put", "upload a file; published on the server only after its SHA-256 matched");
  cmd->add_option("LOCAL_FILE", opts.local, "file to upload")->required();
  cmd->add_option("REMOTE_NAME", opts.remote, "name on the server (default: LOCAL_FILE's base name)");
  add_server_option(*cmd, opts.client);
  cmd->footer("Examples:\n  ftx put report.pdf\n  ftx put build/app.tar.gz releases/1.0/app.tar.gz -s 10.0.0.5:7021");
  return cmd;
}

CLI::App* setup_get(CLI::App& app, GetOptions& opts) {
  auto* cmd = app.add_subcommand("get", "download a file; it replaces LOCAL_PATH only after its SHA-256 matched");
  cmd->add_option("REMOTE_NAME", opts.remote, "name on the server")->required();
  cmd->add_option("LOCAL_PATH", opts.local,
                  "where to write it (default: ./<base name>; a folder: <folder>/<base name>; "
                  "\"-\" or /dev/stdout: standard output)");
  add_server_option(*cmd, opts.client);
  cmd->footer("Examples:\n  ftx get report.pdf\n  ftx get releases/1.0/app.tar.gz /tmp/\n  ftx get notes.txt - | less");
  return cmd;
}

int run_put(const PutOptions& opts) {
  const auto address = server_address(opts.client);
  if (!address) return kUsage;
  std::string remote = opts.remote;
  if (remote.empty()) remote = std::filesystem::path(opts.local).filename().string();
  if (remote.empty()) {
    print_error("cannot tell a remote name from \"" + opts.local + "\"; give REMOTE_NAME");
    return kUsage;
  }
  return run_client_action([&] {
    auto c = connect(opts.client, *address);
    const auto r = c->put(opts.local, remote);
    std::printf("stored %s (%s, sha256 %s)\n", remote.c_str(), human_size(r.bytes).c_str(),
                hash::to_hex(r.digest).c_str());
  });
}

int run_get(const GetOptions& opts) {
  const auto address = server_address(opts.client);
  if (!address) return kUsage;
  return run_client_action([&] {
    auto c = connect(opts.client, *address);
    const auto r = c->get(opts.remote, opts.local);
    // With the file on standard output, the summary must not mix into it.
    std::FILE* out = r.local == "-" ? stderr : stdout;
    std::fprintf(out, "saved %s (%s, sha256 %s)\n", r.local == "-" ? "to standard output" : r.local.c_str(),
                 human_size(r.bytes).c_str(), hash::to_hex(r.digest).c_str());
  });
}

}  // namespace ftx::app
