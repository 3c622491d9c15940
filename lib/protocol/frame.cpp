#include "protocol/frame.hpp"

#include <utility>

namespace ftx::protocol {

bool is_known_type(std::uint8_t raw) {
  switch (static_cast<MsgType>(raw)) {
    case MsgType::kPut:
    case MsgType::kGet:
    case MsgType::kList:
    case MsgType::kPing:
    case MsgType::kHello:
    case MsgType::kAuth:
    case MsgType::kStat:
    case MsgType::kRemove:
    case MsgType::kMove:
    case MsgType::kMkdir:
    case MsgType::kGetRange:
    case MsgType::kPutOpen:
    case MsgType::kPutRange:
    case MsgType::kPutCommit:
    case MsgType::kRange:
    case MsgType::kOpened:
    case MsgType::kOk:
    case MsgType::kChallenge:
    case MsgType::kAuthOk:
    case MsgType::kReady:
    case MsgType::kDone:
    case MsgType::kFile:
    case MsgType::kEntry:
    case MsgType::kListEnd:
    case MsgType::kPong:
    case MsgType::kError:
      return true;
  }
  return false;
}

std::string_view to_string(MsgType t) {
  switch (t) {
    case MsgType::kPut: return "put";
    case MsgType::kGet: return "get";
    case MsgType::kList: return "ls";
    case MsgType::kPing: return "ping";
    case MsgType::kHello: return "hello";
    case MsgType::kAuth: return "auth";
    case MsgType::kStat: return "stat";
    case MsgType::kRemove: return "rm";
    case MsgType::kMove: return "mv";
    case MsgType::kMkdir: return "mkdir";
    case MsgType::kGetRange: return "get-range";
    case MsgType::kPutOpen: return "put-open";
    case MsgType::kPutRange: return "put-range";
    case MsgType::kPutCommit: return "put-commit";
    case MsgType::kRange: return "range";
    case MsgType::kOpened: return "opened";
    case MsgType::kOk: return "ok";
    case MsgType::kChallenge: return "challenge";
    case MsgType::kAuthOk: return "auth-ok";
    case MsgType::kReady: return "ready";
    case MsgType::kDone: return "done";
    case MsgType::kFile: return "file";
    case MsgType::kEntry: return "entry";
    case MsgType::kListEnd: return "list-end";
    case MsgType::kPong: return "pong";
    case MsgType::kError: return "error";
  }
  return "unknown";
}

std::string_view to_string(Status s) {
  switch (s) {
    case Status::kOk: return "ok";
    case Status::kBadRequest: return "bad-request";
    case Status::kUnsupportedVersion: return "unsupported-version";
    case Status::kBadName: return "bad-name";
    case Status::kNotFound: return "not-found";
    case Status::kIntegrity: return "integrity";
    case Status::kStorage: return "storage";
    case Status::kTooLarge: return "too-large";
    case Status::kConflict: return "conflict";
    case Status::kUnavailable: return "unavailable";
    case Status::kNoSpace: return "no-space";
    case Status::kForbidden: return "forbidden";
    case Status::kUnauthorized: return "unauthorized";
    case Status::kTimeout: return "timeout";
    case Status::kShuttingDown: return "shutting-down";
  }
  return "unknown-status";
}

Frame make_error(Status status, std::string message) {
  Frame f;
  f.type = MsgType::kError;
  f.status = status;
  if (message.size() > kMaxNameBytes) message.resize(kMaxNameBytes);
  f.name = std::move(message);
  return f;
}

std::string join_move(std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(from.size() + 1 + to.size());
  out.append(from);
  out.push_back('\0');
  out.append(to);
  return out;
}

bool split_move(std::string_view name, std::string& from, std::string& to) {
  const auto nul = name.find('\0');
  if (nul == std::string_view::npos || name.find('\0', nul + 1) != std::string_view::npos) return false;
  from.assign(name.substr(0, nul));
  to.assign(name.substr(nul + 1));
  return true;
}

}  // namespace ftx::protocol
