#include "apps/ftx/output.hpp"

#include "apps/ftx/commands.hpp"

#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <utility>

namespace ftx::app {

std::string human_size(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes);
  std::size_t unit = 0;
  while (v >= 1024 && unit + 1 < std::size(kUnits)) {
    v /= 1024;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[unit]);
  return buf;
}

std::string format_mtime(std::int64_t mtime_ns, bool nanoseconds) {
  // Floor division, so that times before 1970 still print the right second.
  std::int64_t secs = mtime_ns / 1'000'000'000;
  std::int64_t frac = mtime_ns % 1'000'000'000;
  if (frac < 0) {
    frac += 1'000'000'000;
    --secs;
  }
  const auto t = static_cast<std::time_t>(secs);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[48];
  const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  if (nanoseconds) {
    std::snprintf(buf + n, sizeof buf - n, ".%09lldZ", static_cast<long long>(frac));
  } else {
    std::snprintf(buf + n, sizeof buf - n, "Z");
  }
  return buf;
}

std::string printable(std::string_view name) {
  std::string out(name);
  for (auto& ch : out) {
    if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) ch = '?';
  }
  return out;
}

void print_json(const nlohmann::json& j) {
  const std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::fprintf(stdout, "%s\n", line.c_str());
}

nlohmann::json json_error(const client::Error& e) {
  return {{"ok", false}, {"error", e.what()}, {"exit_code", exit_code_for(e.kind())}};
}

bool progress_wanted(bool quiet, bool json) {
  return !quiet && !json && ::isatty(STDOUT_FILENO) == 1 && ::isatty(STDERR_FILENO) == 1;
}

ProgressBar::ProgressBar(bool enabled, std::uint64_t total_bytes, std::uint64_t total_files, std::string label)
    : enabled_(enabled),
      label_(label.empty() ? std::string() : std::move(label) + " "),
      total_(total_bytes),
      total_files_(total_files),
      start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() {
  // An error ends the command mid-line: leave the bar as it was and move on.
  if (enabled_ && !finished_ && last_draw_ != std::chrono::steady_clock::time_point{}) std::fputc('\n', stderr);
}

void ProgressBar::start_at(std::uint64_t done) {
  base_ = done_ = done;
  start_ = std::chrono::steady_clock::now();
}

void ProgressBar::bytes(std::uint64_t done) {
  done_ = std::max(done_, std::min(done, total_));
  draw(false);
}

void ProgressBar::finish() {
  if (!enabled_ || finished_) return;
  draw(true);
  std::fputc('\n', stderr);
  finished_ = true;
}

void ProgressBar::draw(bool force) {
  if (!enabled_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (!force && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  const double secs = std::chrono::duration<double>(now - start_).count();
  const double rate = secs > 0 ? static_cast<double>(done_ - base_) / secs : 0;
  const int pct = total_ == 0 ? 100 : static_cast<int>(static_cast<double>(done_) * 100 / static_cast<double>(total_));
  std::string eta = "--:--";
  if (rate > 0 && done_ <= total_) {
    const auto left = static_cast<long long>(static_cast<double>(total_ - done_) / rate + 0.5);
    char buf[32];
    if (left >= 3600) {
      std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", left / 3600, left / 60 % 60, left % 60);
    } else {
      std::snprintf(buf, sizeof buf, "%02lld:%02lld", left / 60, left % 60);
    }
    eta = buf;
  }
  constexpr int kWidth = 24;
  const int filled = pct * kWidth / 100;
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.resize(kWidth, '.');
  std::string files;
  if (total_files_ > 0) files = "  " + std::to_string(files_done_) + "/" + std::to_string(total_files_) + " files";
  // \r and erase-to-end-of-line: the bar redraws in place.
  std::fprintf(stderr, "\r%s[%s] %3d%%  %s / %s  %s/s  ETA %s%s\x1b[K", label_.c_str(), bar.c_str(), pct,
               human_size(done_).c_str(),
               human_size(total_).c_str(), human_size(static_cast<std::uint64_t>(rate)).c_str(), eta.c_str(),
               files.c_str());
  std::fflush(stderr);
}

}  // namespace ftx::app
