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

}  // namespace ftx::protocol
