#include "protocol/errors.hpp"

#include <string>

namespace ftx::protocol {
namespace {

class ProtocolCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "ftx.protocol"; }
  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::bad_magic: return "not an ftx peer (bad magic)";
      case errc::bad_version: return "unsupported protocol version";
      case errc::bad_type: return "unknown message type";
      case errc::bad_flags: return "unknown flag bits";
      case errc::bad_reserved: return "reserved header bytes are not zero";
      case errc::bad_status: return "status does not fit the message type";
      case errc::name_too_long: return "name longer than the protocol allows";
      case errc::size_too_large: return "size larger than the protocol allows";
      case errc::truncated: return "connection closed in the middle of a message";
      case errc::unexpected_message: return "unexpected message";
    }
    return "unknown protocol error";
  }
};

}  // namespace

const std::error_category& protocol_category() noexcept {
  static const ProtocolCategory category;
  return category;
}

std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), protocol_category()}; }

}  // namespace ftx::protocol
