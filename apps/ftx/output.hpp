#pragma once
// What the client commands print: the progress bar on a terminal, JSON results for
// scripts (--json, one object per line, schema in docs/cli.md), and small formatting
// helpers shared by the commands.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "client/client.hpp"

namespace ftx::app {

// "0 B", "512 B", "1.5 KiB", "3.2 GiB".
std::string human_size(std::uint64_t bytes);
// ISO 8601 in UTC, seconds ("2026-11-25T04:18:54Z") or with nanoseconds.
std::string format_mtime(std::int64_t mtime_ns, bool nanoseconds = false);
// A name from the server made safe for one line of a terminal (control bytes become '?').
std::string printable(std::string_view name);

// Prints `j` on stdout as one line of JSON (invalid UTF-8 in names is replaced, so the
// line always parses).
void print_json(const nlohmann::json& j);
// The JSON object describing a failure: {"ok":false,"error":...,"exit_code":...}.
nlohmann::json json_error(const client::Error& e);

// A one-line progress bar on stderr: bytes, rate, ETA, and files done / total for folders.
// Draws at most ten times a second; the numbers it shows never go backwards. Disabled
// (every call a no-op) unless `enabled`; see progress_wanted().
class ProgressBar {
 public:
  // `label`, when given, leads the line (a phase other than the transfer: "checking").
  ProgressBar(bool enabled, std::uint64_t total_bytes, std::uint64_t total_files = 0, std::string label = {});
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Bytes moved so far in all (absolute; smaller values than before are ignored).
  void bytes(std::uint64_t done);
  // A resumed transfer starts with `done` bytes already there: the bar starts full that
  // far, and the rate and ETA count only what moves from now on.
  void start_at(std::uint64_t done);
  // For a download, whose size is known only once the server answered.
  void set_total(std::uint64_t total) { total_ = total; }
  // Adds to the bytes moved so far.
  void add_bytes(std::uint64_t n) { bytes(done_ + n); }
  void file_done() { ++files_done_; draw(false); }
  // Draws the final state and ends the line.
  void finish();

 private:
  void draw(bool force);

  bool enabled_;
  std::string label_;
  bool finished_ = false;
  std::uint64_t total_;
  std::uint64_t done_ = 0;
  std::uint64_t base_ = 0;  // bytes there before this run (start_at)
  std::uint64_t total_files_;
  std::uint64_t files_done_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_{};
};

// Progress bars are for people: only when stdout and stderr are terminals, and not with
// -q or --json.
bool progress_wanted(bool quiet, bool json);

}  // namespace ftx::app
