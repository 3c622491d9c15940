#pragma once
// Errors of the I/O-free codec, as a std::error_code category (the Beast model): callers
// compare against ftx::protocol::errc values and print .message().

#include <system_error>

namespace ftx::protocol {

enum class errc {
  bad_magic = 1,       // the first bytes are not "FTXP": not an ftx peer
  bad_version,         // a protocol version this build does not speak
  bad_type,            // unknown message type
  bad_flags,           // a flag bit this version does not define
  bad_reserved,        // reserved header bytes are not zero
  bad_status,          // status and type disagree (kError with kOk, or a non-error with a status)
  name_too_long,       // name_len over kMaxNameBytes
  size_too_large,      // size over kMaxFileSize
  truncated,           // the stream ended inside a message
  unexpected_message,  // a well-formed message that is not valid at this point of the exchange
};

const std::error_category& protocol_category() noexcept;
std::error_code make_error_code(errc e) noexcept;

}  // namespace ftx::protocol

template <>
struct std::is_error_code_enum<ftx::protocol::errc> : std::true_type {};
