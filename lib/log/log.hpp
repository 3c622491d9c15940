#pragma once
// Server logging: spdlog's default logger on stderr, as text for people or one JSON object
// a line for log collectors (`ftx serve --log-format json`).
//
// Every request ends in exactly one structured record (log_request): who, what, on which
// name, how much, how long, and how it ended. In text mode it reads
//   2026-11-25T10:00:00.123+0000 info 127.0.0.1:5012 put "a.txt" bytes=5 ms=0.4 result=ok
// and in JSON mode
//   {"time":"2026-11-25T10:00:00.123Z","level":"info","peer":"127.0.0.1:5012","op":"put",
//    "name":"a.txt","bytes":5,"ms":0.4,"result":"ok"}
// Other lines (start-up, warnings) become {"time":..,"level":..,"msg":".."} in JSON mode.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ftx::log {

enum class Format { kText, kJson };

// Installs the "ftx" logger on stderr as spdlog's default, in `format`. Call once, early,
// before other threads log. When stderr is not a terminal, info lines are buffered: they
// reach stderr at the next flush() (the server flushes before every reply it writes, so a
// request's line is out before its answer -- except for lines logged after the answer, such
// as a download's, written at the next flush), with any warning or error, within a second,
// and at exit().
void setup(Format format);
// Writes the buffered lines now. Thread-safe; cheap when nothing is buffered.
void flush();

// Views: what they show must outlive the log_request call (which copies what it keeps).
// A server streaming small files logs one record each; four string copies a record were
// a visible part of its work.
struct RequestRecord {
  std::string_view peer;               // address:port of the client
  std::string_view op;                 // put, get, ls, stat, rm, mv, mkdir
  std::string_view name;               // the name the request was about (printed quoted and escaped)
  std::optional<std::string_view> to;  // mv: the destination
  std::uint64_t amount = 0;            // bytes moved, or entries for ls
  bool amount_is_entries = false;
  double ms = 0;
  std::string_view result;  // "ok", a status name, or "aborted: <why>"
};

// Logs one request at info level, in the format chosen by setup().
void log_request(const RequestRecord& r);

}  // namespace ftx::log
