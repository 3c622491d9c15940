#pragma once
// The ftx wire format: what one message looks like, independent of any I/O.
//
// Every message is a fixed 64-byte header in network byte order, then `name_len` bytes of
// name (a path for requests, a human-readable message for errors), then, for the two
// message types that carry a file (kPut after kReady, or at once when kFlagStreamed; kFile),
// exactly `size` bytes of body.
// docs/protocol.md gives the byte layout; the offsets and static_asserts in codec.cpp pin it.

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ftx::protocol {

inline constexpr std::array<std::uint8_t, 4> kMagic{'F', 'T', 'X', 'P'};
inline constexpr std::uint8_t kVersion = 1;
inline constexpr std::size_t kHeaderSize = 64;

// Upper bounds checked before anything is allocated. A name is a relative path (the same
// limit as Linux's PATH_MAX); the size bound keeps sizes representable as off_t.
inline constexpr std::size_t kMaxNameBytes = 4096;
inline constexpr std::uint64_t kMaxFileSize = std::uint64_t{1} << 50;  // 1 PiB

// File bodies are written and read in chunks of this size (the wire itself is a plain
// byte stream of `size` bytes; the chunk is the unit of I/O and hashing).
inline constexpr std::size_t kChunkSize = 1024 * 1024;

enum class MsgType : std::uint8_t {
  // requests (client -> server)
  kPut = 1,   // name = remote path, size, sha256, mtime; body follows once kReady arrives
  kGet = 2,   // name = remote path
  kList = 3,  // name = folder to list ("" = the whole root)
  kPing = 4,  // no fields; answered by kPong (allowed before authentication)
  kHello = 5,  // asks for an authentication challenge; answered by kChallenge
  kAuth = 6,   // digest = HMAC-SHA256(token, "ftx-auth-v1" || nonce); answered by kAuthOk or kError
  kStat = 7,    // name = remote path; answered by one kEntry with the stored SHA-256
  kRemove = 8,  // name = file or empty folder; answered by kOk
  kMove = 9,    // name = FROM '\0' TO; answered by kOk (size = 1 when TO was replaced)
  kMkdir = 10,  // name = folder, created with its parents; answered by kOk
  // Parallel streams (docs/protocol.md, "Parallel streams"): one file over several connections.
  kGetRange = 11,   // name = path, mtime_ns = offset, size = length, digest = the whole file's
                    // SHA-256 the client expects; answered by kRange + body
  kPutOpen = 12,    // like kPut's header (name, size, mtime, flags, digest = whole file), no body;
                    // answered by kOpened
  kPutRange = 13,   // name = upload id, mtime_ns = offset, size = length, digest = the range's
                    // SHA-256; the body follows at once; answered by kDone
  kPutCommit = 14,  // name = upload id; answered by kDone once the file is verified and published
  // replies (server -> client)
  kReady = 64,      // a kPut was accepted: send the body now
  kDone = 65,       // a kPut body was verified and published; size and sha256 echo it
  kFile = 66,       // answer to kGet: size, sha256, mtime, then the body
  kEntry = 67,      // one stored file in a kList answer: name, size, mtime
  kListEnd = 68,    // end of a kList answer; size = number of entries sent
  kPong = 69,       // answer to kPing
  kChallenge = 70,  // answer to kHello: digest = a fresh 32-byte random nonce
  kAuthOk = 71,     // answer to a correct kAuth
  kOk = 72,         // a kRemove, kMove or kMkdir succeeded
  kRange = 73,      // answer to kGetRange: size = length, mtime_ns = offset, digest = whole file,
                    // name = the server's stream cap (decimal); then the body
  kOpened = 74,     // answer to kPutOpen: name = upload id, size = connections allowed for it
  kError = 127,     // status != kOk, name = message; the request failed
};

// Wire status codes (u16). Stable: clients map them to exit codes.
enum class Status : std::uint16_t {
  kOk = 0,
  kBadRequest = 1,          // malformed or out-of-order message; connection is closed
  kUnsupportedVersion = 2,  // header version is not kVersion; connection is closed
  kBadName = 3,             // name is not an acceptable relative path
  kNotFound = 4,
  kIntegrity = 5,           // body did not match the announced SHA-256
  kStorage = 6,             // server-side I/O failure (disk full, permissions, ...)
  kTooLarge = 7,            // size over the server's limit
  kConflict = 8,            // e.g. the name is a folder, or a path component is a file
  kUnavailable = 9,         // server is shutting down or has too many connections
  kNoSpace = 10,            // not enough free space for the upload
  kForbidden = 11,          // the server is read-only
  kUnauthorized = 12,       // missing or wrong token; connection is closed
  kTimeout = 13,            // the request did not arrive in time; connection is closed
  // The server is stopping: sent after the answers to the requests it handled; those behind
  // them get none, and the connection is closed (clients before 2026-12-06 read it as a
  // refusal of the next request).
  kShuttingDown = 14,
};

// Flag bits (u16). Unknown bits are rejected so that they can be given meaning later.
inline constexpr std::uint16_t kFlagHasMtime = 0x0001;    // kPut/kFile/kEntry: mtime_ns is set
inline constexpr std::uint16_t kFlagExecutable = 0x0002;  // kPut/kFile/kEntry: the file is executable
// kPut: the body follows the header at once, without waiting for kReady (pipelined uploads).
// A refused streamed upload is still read to its end (and dropped) before the kError, so
// the connection stays usable; only a size over the server's limit closes it.
inline constexpr std::uint16_t kFlagStreamed = 0x0004;
// kList, the same bit: only names and kinds are needed. The server may then send a file or
// folder without size, mtime and mode (kEntry without kFlagHasMtime, size 0), which spares
// it a stat per entry. A server that predates it (from 2026-11-25, when the bit became
// known) ignores it on kList and sends whole entries, so a client must accept both.
inline constexpr std::uint16_t kFlagNamesOnly = 0x0004;
// kList: also send the stored SHA-256 of every file (kEntry.digest, flagged the same way).
// kEntry/kFile: digest holds the file's SHA-256.
inline constexpr std::uint16_t kFlagDigest = 0x0008;
// kList: also send folders (as kEntry with kFlagFolder). kEntry: this entry is a folder.
inline constexpr std::uint16_t kFlagFolder = 0x0010;
// kPut: the SHA-256 is not in the header (its digest field is zero) but follows the body as
// kTrailerSize more bytes. A client then reads its file once, hashing while it sends,
// instead of once to hash and again to send. The server still verifies before publishing.
inline constexpr std::uint16_t kFlagDigestAfter = 0x0020;
// kList, the same bit, with kFlagDigest: only the SHA-256s the server has on record (its
// digest cache); files without one come without (no kFlagDigest on their kEntry), and the
// server hashes none of them for the listing. Since 2026-12-07 an upload of up to 16 KiB is
// not recorded until something hashes it (storage::kUnrecordedUploadMax). A server from
// 2026-11-25 to 2026-12-06 ignores it on kList and hashes them, as for a plain kFlagDigest:
// the same answer, later -- much later for a large tree of files put there by other means
// (the client gives up after 300 s with no answer). Older servers refuse the bit (bad_flags).
inline constexpr std::uint16_t kFlagKnownDigestsOnly = 0x0020;
// Resumable transfers (docs/protocol.md, "resume").
//   kPut (with kFlagDigestAfter, not streamed): keep the upload if it is interrupted, and
//     continue one kept from an earlier attempt at the same file (name, size, mtime, mode).
//   kReady: the server keeps this upload; size = bytes it already holds (the body is the
//     rest), digest = the SHA-256 state after them (hash::State words), name = the 32-byte
//     state at offset mtime_ns (at most one chunk earlier), so the client can check that
//     its file still hashes the same between the two.
//   kGet: size = bytes the client holds already, digest = the whole file's SHA-256 it expects.
//   kFile: the server honoured it: the body is the file from that offset on (size is still
//     the whole file's).
inline constexpr std::uint16_t kFlagResume = 0x0040;
// kList: list the partial uploads the server keeps instead of files. kEntry: such an upload:
// size = the whole file, mtime_ns = its last progress, the first 8 digest bytes = bytes
// received so far (big-endian).
inline constexpr std::uint16_t kFlagPartial = 0x0080;
inline constexpr std::uint16_t kKnownFlags = kFlagHasMtime | kFlagExecutable | kFlagStreamed | kFlagDigest |
                                             kFlagFolder | kFlagDigestAfter | kFlagResume | kFlagPartial;

using Digest = std::array<std::uint8_t, 32>;

// One decoded (or to-be-encoded) message without its body.
struct Frame {
  MsgType type = MsgType::kPing;
  std::uint16_t flags = 0;
  Status status = Status::kOk;
  std::uint64_t size = 0;     // file size (kPut, kFile, kEntry, kDone) or entry count (kListEnd)
  std::int64_t mtime_ns = 0;  // modification time, ns since the Unix epoch, when kFlagHasMtime
  Digest digest{};            // SHA-256 (kPut, kFile, kDone, kEntry with kFlagDigest); zero elsewhere
  std::string name;           // path, or error message for kError

  bool operator==(const Frame&) const = default;
};

// True for the types followed by `size` bytes of body on the wire. For kPut the body is
// sent only after the server answered kReady (unless kFlagStreamed), as its own step;
// kPutRange and kRange bodies follow their header at once.
constexpr bool carries_body(MsgType t) {
  return t == MsgType::kPut || t == MsgType::kFile || t == MsgType::kPutRange || t == MsgType::kRange;
}

// The digest trailer of a kPut with kFlagDigestAfter: the body's SHA-256, raw.
inline constexpr std::size_t kTrailerSize = 32;

bool is_known_type(std::uint8_t raw);
std::string_view to_string(MsgType t);
std::string_view to_string(Status s);

// Convenience constructors for the common messages.
Frame make_error(Status status, std::string message);

// kMove carries two names in one: FROM, a NUL byte, TO (names never contain NUL).
std::string join_move(std::string_view from, std::string_view to);
// Splits a kMove name; false when there is not exactly one NUL.
bool split_move(std::string_view name, std::string& from, std::string& to);

}  // namespace ftx::protocol
