#include "storage/names.hpp"

#include "protocol/frame.hpp"

namespace ftx::storage {
namespace {

class StorageCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "ftx.storage"; }
  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::bad_name: return "invalid name";
      case errc::reserved_name: return "name is reserved for ftx's staging area";
      case errc::digest_mismatch: return "content does not match its SHA-256";
      case errc::size_mismatch: return "content size does not match the announced size";
      case errc::not_regular: return "not a regular file";
      case errc::symlink: return "symbolic links are not followed";
      case errc::bad_root: return "root is not a usable folder";
      case errc::not_durable: return "stored, but its folder could not be synced";
      case errc::bad_record: return "resume record is missing or damaged";
      case errc::partial_busy: return "an upload of the same file is in progress";
      case errc::no_partial: return "no unfinished upload of this file is kept";
    }
    return "unknown storage error";
  }
};

// Returns why `name` is unacceptable, or "" when it is fine. One function so that the
// check and its explanation cannot drift apart.
std::string reason(std::string_view name) {
  if (name.empty()) return "empty name";
  if (name.size() > protocol::kMaxNameBytes) {
    return "name longer than " + std::to_string(protocol::kMaxNameBytes) + " bytes";
  }
  if (name.front() == '/') return "absolute paths are not allowed";
  for (const char c : name) {
    const auto u = static_cast<unsigned char>(c);
    if (u == 0) return "name contains a NUL byte";
    if (u < 0x20 || u == 0x7f) return "name contains a control character";
  }
  std::size_t start = 0;
  while (true) {
    const std::size_t slash = name.find('/', start);
    const std::string_view comp = name.substr(start, slash == std::string_view::npos ? name.npos : slash - start);
    if (comp.empty()) return "empty path component (\"//\" or a trailing \"/\")";
    if (comp == "." || comp == "..") return "\".\" and \"..\" components are not allowed";
    if (comp.size() > kMaxComponentBytes) {
      return "path component longer than " + std::to_string(kMaxComponentBytes) + " bytes";
    }
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return {};
}

bool is_under(std::string_view name, std::string_view dir) {
  return name == dir || (name.size() > dir.size() && name.starts_with(dir) && name[dir.size()] == '/');
}

bool is_reserved(std::string_view name) { return is_under(name, kStagingDir) || is_under(name, kTlsDir); }

}  // namespace

const std::error_category& storage_category() noexcept {
  static const StorageCategory category;
  return category;
}

std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), storage_category()}; }

std::error_code check_name(std::string_view name) {
  if (!reason(name).empty()) return errc::bad_name;
  if (is_reserved(name)) return errc::reserved_name;
  return {};
}

std::string explain_bad_name(std::string_view name) {
  std::string why = reason(name);
  if (why.empty() && is_reserved(name)) {
    why = "names under " + std::string(kStagingDir) + " and " + std::string(kTlsDir) + " are reserved for ftx itself";
  }
  return why;
}

std::string quote_name(std::string_view name) {
  constexpr std::size_t kMaxShown = 200;
  std::string out = "\"";
  for (std::size_t i = 0; i < name.size() && i < kMaxShown; ++i) {
    const auto u = static_cast<unsigned char>(name[i]);
    if (u < 0x20 || u == 0x7f || u == '"' || u == '\\') {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 0xF];
    } else {
      out += static_cast<char>(u);
    }
  }
  if (name.size() > kMaxShown) out += "...";
  out += '"';
  return out;
}

std::vector<std::string_view> split_name(std::string_view name) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (true) {
    const std::size_t slash = name.find('/', start);
    if (slash == std::string_view::npos) {
      parts.push_back(name.substr(start));
      return parts;
    }
    parts.push_back(name.substr(start, slash - start));
    start = slash + 1;
  }
}

}  // namespace ftx::storage
