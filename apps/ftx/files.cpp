// rm, mv and mkdir: changes to the server's tree. All go through the server's root jail
// and are refused by a read-only server.

#include <cstdio>

#include "apps/ftx/commands.hpp"
#include "apps/ftx/exit_codes.hpp"
#include "apps/ftx/output.hpp"

namespace ftx::app {
namespace {

// Runs `fn(client, name)` for every name on one connection; a failed name is reported and
// the others still run. The exit code is the first failure's.
int for_each_name(const ClientOptions& opts, const char* op, const std::vector<std::string>& names,
                  const std::function<void(client::Client&, const std::string&)>& fn, const char* done_verb) {
  int first_failure = kOk;
  const int rc = run_with_client(opts, op, [&](client::Client& c) {
    for (const auto& name : names) {
      try {
        fn(c, name);
        if (opts.json) {
          print_json({{"op", op}, {"name", name}, {"ok", true}});
        } else {
          std::printf("%s %s\n", done_verb, printable(name).c_str());
        }
      } catch (const client::Error& e) {
        // A lost connection ends the whole command; anything else is this name's problem.
        if (e.kind() == client::Failure::kConnection || e.kind() == client::Failure::kProtocol) throw;
        print_error(e.what());
        if (opts.json) {
          auto j = json_error(e);
          j["op"] = op;
          j["name"] = name;
          print_json(j);
        }
        if (first_failure == kOk) first_failure = exit_code_for(e.kind());
      }
    }
  });
  return rc != kOk ? rc : first_failure;
}

}  // namespace

CLI::App* setup_rm(CLI::App& app, RmOptions& opts) {
  auto* cmd = app.add_subcommand("rm", "remove stored files (or empty folders)");
  cmd->add_option("NAME", opts.names, "files or empty folders on the server")->required();
  add_server_option(*cmd, opts.client);
  cmd->footer("Examples:\n  ftx rm old.log\n  ftx rm logs/a.log logs/b.log logs");
  return cmd;
}

int run_rm(const RmOptions& opts) {
  return for_each_name(
      opts.client, "rm", opts.names, [](client::Client& c, const std::string& name) { c.remove(name); }, "removed");
}

CLI::App* setup_mkdir(CLI::App& app, MkdirOptions& opts) {
  auto* cmd = app.add_subcommand("mkdir", "create folders on the server, with their parents (an existing one is fine)");
  cmd->add_option("NAME", opts.names, "folders to create")->required();
  add_server_option(*cmd, opts.client);
  cmd->footer("Examples:\n  ftx mkdir releases/2.0\n  ftx mkdir inbox outbox");
  return cmd;
}

int run_mkdir(const MkdirOptions& opts) {
  return for_each_name(
      opts.client, "mkdir", opts.names, [](client::Client& c, const std::string& name) { c.make_folder(name); },
      "created");
}

CLI::App* setup_mv(CLI::App& app, MvOptions& opts) {
  auto* cmd = app.add_subcommand("mv", "rename a stored file or folder (atomically; into TO if TO is a folder)");
  cmd->add_option("FROM", opts.from, "current name")->required();
  cmd->add_option("TO", opts.to, "new name, or an existing folder to move it into")->required();
  add_server_option(*cmd, opts.client);
  cmd->footer("Examples:\n  ftx mv report.pdf archive/2026/report.pdf\n  ftx mv draft.txt archive");
  return cmd;
}

int run_mv(const MvOptions& opts) {
  return run_with_client(opts.client, "mv", [&](client::Client& c) {
    const auto [to, replaced] = c.move(opts.from, opts.to);
    if (opts.client.json) {
      print_json({{"op", "mv"}, {"ok", true}, {"from", opts.from}, {"to", to}, {"replaced", replaced}});
    } else {
      std::printf("moved %s -> %s%s\n", printable(opts.from).c_str(), printable(to).c_str(),
                  replaced ? " (replaced the file there)" : "");
    }
  });
}

}  // namespace ftx::app
