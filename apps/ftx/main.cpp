// ftx: one binary, nine subcommands. Parsing lives here; each subcommand's work lives in
// its own file, and every failure path ends in a one-line message and a documented exit
// code (exit_codes.hpp).

#include <CLI/CLI.hpp>

#include "apps/ftx/commands.hpp"
#include "apps/ftx/exit_codes.hpp"
#include "client/local_file.hpp"

namespace {

constexpr const char* kFooter = R"(Examples:
  ftx serve --root ./ftx-data --listen 127.0.0.1:7021
  ftx put report.pdf                  upload as "report.pdf"
  ftx put report.pdf docs/q3.pdf      upload under another name (folders are created)
  ftx put -r photos                   upload a folder (pipelined over one connection)
  ftx put -r --skip-identical photos  again later: only new and changed files are sent
  ftx get docs/q3.pdf                 download to ./q3.pdf
  ftx get docs/q3.pdf - | less        stream to standard output
  ftx get -r photos /tmp/photos       download a folder
  ftx ls -l docs                      sizes, mtimes and stored SHA-256s under docs/
  ftx stat docs/q3.pdf                one file's size, mtime and SHA-256
  ftx mv docs/q3.pdf archive/         ftx rm old.log        ftx mkdir inbox
  ftx ls --json -s 10.0.0.5:7021      JSON lines for scripts
  ftx ping                            is the server up? (exit 0 if it answers)
  ftx ls --tls --accept-new           TLS, pinning the server's certificate on first use

Every option can also come from the environment: --server from FTX_SERVER, --max-depth
from FTX_MAX_DEPTH, and so on (FTX_ + the long name in capitals, '-' as '_'); each
subcommand's --help shows the variable. The server address defaults to 127.0.0.1:7021.
A server started with a token wants the same secret from clients: $FTX_TOKEN, or
--token-file FILE.
Exit codes: 0 ok, 1 internal error, 2 usage, 3 connection, 4 not found,
5 rejected by server, 6 integrity (SHA-256 mismatch), 7 local I/O, 8 protocol,
9 authentication, 10 TLS (handshake or certificate trust).)";

}  // namespace

int main(int argc, char** argv) {
  using namespace ftx::app;
  CLI::App app{"ftx: file transfer over TCP, every byte verified with SHA-256", "ftx"};
  app.set_version_flag("--version", std::string("ftx ") + FTX_VERSION);
  app.require_subcommand(1);
  app.footer(kFooter);

  ServeOptions serve_opts;
  PutOptions put_opts;
  GetOptions get_opts;
  LsOptions ls_opts;
  PingOptions ping_opts;
  StatOptions stat_opts;
  RmOptions rm_opts;
  MvOptions mv_opts;
  MkdirOptions mkdir_opts;
  CLI::App* serve = setup_serve(app, serve_opts);
  CLI::App* put = setup_put(app, put_opts);
  CLI::App* get = setup_get(app, get_opts);
  CLI::App* ls = setup_ls(app, ls_opts);
  CLI::App* stat = setup_stat(app, stat_opts);
  CLI::App* rm = setup_rm(app, rm_opts);
  CLI::App* mv = setup_mv(app, mv_opts);
  CLI::App* mkdir = setup_mkdir(app, mkdir_opts);
  CLI::App* ping = setup_ping(app, ping_opts);
  for (CLI::App* cmd : app.get_subcommands({})) add_env_names(*cmd);

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version (CallForHelp derives from Success)
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    print_error(std::string(e.what()) + " (run 'ftx --help' for usage)");
    return kUsage;
  }

  try {
    if (serve->parsed()) return run_serve(serve_opts);
    if (put->parsed()) return run_put(put_opts);
    if (get->parsed()) {
      // Ctrl-C during a download must not leave its staging file behind (nor a folder
      // download's current one).
      ftx::client::install_interrupt_cleanup();
      return run_get(get_opts);
    }
    if (ls->parsed()) return run_ls(ls_opts);
    if (ping->parsed()) return run_ping(ping_opts);
    if (stat->parsed()) return run_stat(stat_opts);
    if (rm->parsed()) return run_rm(rm_opts);
    if (mv->parsed()) return run_mv(mv_opts);
    if (mkdir->parsed()) return run_mkdir(mkdir_opts);
  } catch (const std::exception& e) {
    print_error(std::string("internal error: ") + e.what());
    return kInternal;
  }
  return kUsage;
}
