#include "log/log.hpp"

#include <fmt/compile.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <chrono>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>

#include "storage/names.hpp"

namespace ftx::log {
namespace {

Format g_format = Format::kText;

// Set by log_request around its spdlog call: the payload is then already a JSON object's
// members. spdlog's sinks format in the calling thread, so a thread_local is enough.
thread_local bool t_structured = false;

std::string utc_timestamp(std::chrono::system_clock::time_point t) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%03dZ", static_cast<int>(ms % 1000));
  return buf;
}

// One JSON object a line. Names in messages may hold any bytes: nlohmann's dump with
// `replace` keeps the line valid UTF-8 whatever a client sent.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const std::string_view payload(msg.payload.data(), msg.payload.size());
    std::string line = "{\"time\":\"" + utc_timestamp(msg.time) + "\",\"level\":\"" +
                       std::string(spdlog::level::to_string_view(msg.level).data(),
                                   spdlog::level::to_string_view(msg.level).size()) +
                       "\",";
    if (t_structured) {
      line.append(payload);  // already `"key":value,...`
    } else {
      line += "\"msg\":" + nlohmann::json(std::string(payload)).dump(-1, ' ', false,
                                                                     nlohmann::json::error_handler_t::replace);
    }
    line += "}\n";
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonFormatter>(); }
};

// stderr, written a batch of lines at a time. A server streaming thousands of small files
// logs a line per file; one write(2) per line was a tenth of its system calls. Lines wait
// only until the next flush: log::flush() before every reply, at once for warnings and
// errors, and at least every second.
class BufferedStderrSink final : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t line;
    formatter_->format(msg, line);
    buf_.append(line.data(), line.size());
    if (buf_.size() >= kMaxBuffered) flush_();
  }
  void flush_() override {
    std::string_view rest = buf_;
    while (!rest.empty()) {
      const ssize_t n = ::write(STDERR_FILENO, rest.data(), rest.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        // A full pipe that some process holding it made non-blocking (O_NONBLOCK belongs to
        // the pipe, not to us): wait for its reader a while rather than drop the lines.
        pollfd p{STDERR_FILENO, POLLOUT, 0};
        if (::poll(&p, 1, kFullPipeWaitMs) > 0) continue;
      }
      if (n <= 0) break;  // nowhere to report a broken stderr; drop the lines
      rest.remove_prefix(static_cast<std::size_t>(n));
    }
    buf_.clear();
  }

 private:
  static constexpr std::size_t kMaxBuffered = 64 * 1024;
  static constexpr int kFullPipeWaitMs = 1000;
  std::string buf_;
};

}  // namespace

void setup(Format format) {
  g_format = format;
  auto logger = spdlog::get("ftx");
  if (!logger) {
    // A person watching a terminal gets colours and every line at once; a file or a pipe
    // (a service, a container, a test) gets the batched sink.
    if (::isatty(STDERR_FILENO) != 0) {
      logger = spdlog::stderr_color_mt("ftx");
    } else {
      logger = std::make_shared<spdlog::logger>("ftx", std::make_shared<BufferedStderrSink>());
      logger->flush_on(spdlog::level::warn);
      spdlog::register_logger(logger);
      spdlog::flush_every(std::chrono::seconds(1));
      std::atexit([] { flush(); });  // an exit through an error path keeps its lines too
    }
  }
  if (format == Format::kJson) {
    logger->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
  }
  spdlog::set_default_logger(logger);
}

void flush() {
  if (auto logger = spdlog::default_logger_raw()) logger->flush();
}

void log_request(const RequestRecord& r) {
  // The line is built here, before spdlog would look at the level: look first.
  if (!spdlog::default_logger_raw()->should_log(spdlog::level::info)) return;
  if (g_format == Format::kJson) {
    nlohmann::json j;
    j["peer"] = r.peer;
    j["op"] = r.op;
    j["name"] = r.name;
    if (r.to) j["to"] = *r.to;
    j[r.amount_is_entries ? "entries" : "bytes"] = r.amount;
    j["ms"] = static_cast<double>(static_cast<std::int64_t>(r.ms * 10)) / 10;
    j["result"] = r.result;
    const std::string members = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    t_structured = true;
    // Without the braces: the formatter adds its own.
    spdlog::default_logger_raw()->log(spdlog::level::info,
                                      spdlog::string_view_t(members.data() + 1, members.size() - 2));
    t_structured = false;
    return;
  }
  // Formatted here with a compiled format and handed to spdlog as a finished message: the
  // runtime format string was parsed anew for every record (callgrind: about half of the
  // record's cost, which was 5,300 instructions).
  fmt::memory_buffer line;
  auto out = std::back_inserter(line);
  out = fmt::format_to(out, FMT_COMPILE("{} {} {}"), r.peer, r.op, storage::quote_name(r.name));
  if (r.to) out = fmt::format_to(out, FMT_COMPILE(" -> {}"), storage::quote_name(*r.to));
  fmt::format_to(out, FMT_COMPILE(" {}={} ms={:.1f} result={}"), r.amount_is_entries ? "entries" : "bytes", r.amount,
                 r.ms, r.result);
  spdlog::default_logger_raw()->log(spdlog::level::info, spdlog::string_view_t(line.data(), line.size()));
}

}  // namespace ftx::log
