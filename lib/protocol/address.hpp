#pragma once
// "HOST:PORT" addresses as users type them: 127.0.0.1:7021, localhost:7021, [::1]:7021,
// or a bare host (port 7021). Pure string handling; resolution happens where the socket is.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ftx::protocol {

inline constexpr std::uint16_t kDefaultPort = 7021;

struct Address {
  std::string host;  // without brackets
  std::uint16_t port = kDefaultPort;

  // Back to "host:port" (brackets around IPv6 literals).
  std::string to_string() const;
};

// Parses `text`; on failure returns nullopt and sets `error` to a one-line reason.
std::optional<Address> parse_address(std::string_view text, std::string& error);

}  // namespace ftx::protocol
