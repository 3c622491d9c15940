#include "log/log.hpp"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <ctime>
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

}  // namespace

void setup(Format format) {
  g_format = format;
  auto logger = spdlog::get("ftx");
  if (!logger) logger = spdlog::stderr_color_mt("ftx");
  if (format == Format::kJson) {
    logger->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
  }
  spdlog::set_default_logger(logger);
}

void log_request(const RequestRecord& r) {
  if (g_format == Format::kJson) {
    nlohmann::json j;
    j["peer"] = r.peer;
    j["op"] = r.op;
    j["name"] = r.name;
    if (r.to) j["to"] = *r.to;
    j[r.amount_is_entries ? "entries" : "bytes"] = r.amount;
    j["ms"] = static_cast<double>(static_cast<std::int64_t>(r.ms * 10)) / 10;
    j["result"] = r.result;
    std::string members = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    members = members.substr(1, members.size() - 2);  // drop the braces: the formatter adds its own
    t_structured = true;
    spdlog::info("{}", members);
    t_structured = false;
    return;
  }
  spdlog::info("{} {} {}{} {}={} ms={:.1f} result={}", r.peer, r.op, storage::quote_name(r.name),
               r.to ? " -> " + storage::quote_name(*r.to) : std::string(), r.amount_is_entries ? "entries" : "bytes",
               r.amount, r.ms, r.result);
}

}  // namespace ftx::log
