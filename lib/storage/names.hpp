#pragma once
// What a stored file may be called. The same rules apply to every request, so that a name
// that passes here can be joined to the root without escaping it.

#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace ftx::storage {

// The hidden folder under the root that holds uploads in progress. Reserved: no request
// may name it, and listings never show it.
inline constexpr std::string_view kStagingDir = ".ftx-staging";
// Where `ftx serve --tls` keeps its certificate and key. Reserved and never listed either.
inline constexpr std::string_view kTlsDir = ".ftx-tls";
inline constexpr std::size_t kMaxComponentBytes = 255;  // NAME_MAX

enum class errc {
  bad_name = 1,     // see check_name
  reserved_name,    // the name is inside kStagingDir or kTlsDir
  digest_mismatch,  // upload body does not match the announced SHA-256
  size_mismatch,    // upload body is shorter or longer than announced
  not_regular,      // the name is a folder, device, FIFO, ... not a regular file
  symlink,          // a component is a symbolic link (never followed)
  bad_root,         // the root is not a usable folder
  not_durable,      // published, but the folder's fsync failed: may not survive a crash
  bad_record,       // a resume record is missing, torn, or of another layout
  partial_busy,     // a resumable upload of the same file is in progress on another connection
  no_partial,       // no kept upload of that file to continue (begin_parallel_upload)
};

const std::error_category& storage_category() noexcept;
std::error_code make_error_code(errc e) noexcept;

// Returns {} for an acceptable name, else errc::bad_name / reserved_name. Acceptable: a
// relative path of 1..kMaxNameBytes bytes, components separated by single '/', none empty,
// "." or "..", none over kMaxComponentBytes, and no NUL or other control character
// (listings print one name a line).
std::error_code check_name(std::string_view name);

// Describes why check_name refused `name`, for the error message sent to the client.
std::string explain_bad_name(std::string_view name);

// `name` in double quotes, safe to print: control characters, quotes and backslashes become
// \xNN and anything past 200 bytes becomes "...". For log lines and error messages, where
// names may be hostile.
std::string quote_name(std::string_view name);

// Splits an acceptable name into its components.
std::vector<std::string_view> split_name(std::string_view name);

}  // namespace ftx::storage

template <>
struct std::is_error_code_enum<ftx::storage::errc> : std::true_type {};
