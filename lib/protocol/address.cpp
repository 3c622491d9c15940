#include "protocol/address.hpp"

#include <charconv>

namespace ftx::protocol {

std::string Address::to_string() const {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::optional<Address> parse_address(std::string_view text, std::string& error) {
  Address a;
  std::string_view port_text;
  if (text.starts_with('[')) {
    const auto close = text.find(']');
    if (close == std::string_view::npos) {
      error = "missing ']' in \"" + std::string(text) + "\"";
      return std::nullopt;
    }
    a.host = std::string(text.substr(1, close - 1));
    const auto rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        error = "expected ':PORT' after ']' in \"" + std::string(text) + "\"";
        return std::nullopt;
      }
      port_text = rest.substr(1);
      if (port_text.empty()) port_text = "x";  // "[::1]:" is an empty port: refuse below
    }
  } else {
    const auto colon = text.rfind(':');
    if (colon != std::string_view::npos && text.find(':') != colon) {
      error = "IPv6 addresses need brackets, as in [::1]:7021";
      return std::nullopt;
    }
    a.host = std::string(text.substr(0, colon));
    if (colon != std::string_view::npos) port_text = text.substr(colon + 1);
    if (colon != std::string_view::npos && port_text.empty()) port_text = "x";
  }
  if (a.host.empty()) {
    error = "missing host in \"" + std::string(text) + "\" (expected HOST:PORT)";
    return std::nullopt;
  }
  if (!port_text.empty()) {
    unsigned value = 0;
    const auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), value);
    if (ec != std::errc{} || ptr != port_text.data() + port_text.size() || value > 65535) {
      error = "invalid port in \"" + std::string(text) + "\" (expected a number from 0 to 65535)";
      return std::nullopt;
    }
    a.port = static_cast<std::uint16_t>(value);
  }
  return a;
}

}  // namespace ftx::protocol
