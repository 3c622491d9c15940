#pragma once
// --skip-identical: whether a file need not move because the other side already holds it,
// byte for byte and with the same metadata a transfer would give it.

#include <string>
#include <functional>

#include "client/client.hpp"

namespace ftx::client {

// Which way the file would move, since that decides what "the same mode" means. An upload
// stores the server's copy as 0755 or 0644 after the owner's execute bit alone (so only that
// bit is compared); a download sets all three execute bits of the local file after its read
// bits, or clears them (so all three must already be what it would set).
enum class Direction { kUpload, kDownload };

// Whether the local file `local` is the same file as the server's `remote`: a regular file
// (a symbolic link is not followed) of the same size, mtime to the nanosecond and execute
// bits (see Direction), whose SHA-256 is remote.digest. The file is opened, read and hashed
// only when all the rest matches, so a changed file usually costs one stat. Any doubt is
// "not identical" -- no such file, a read error, a file that changes while it is read, a
// remote entry that is a folder or lacks its digest -- and the transfer then goes ahead and
// reports what is wrong itself. `on_bytes`, when set, is called with each run of bytes
// hashed (for a progress bar). Hashing a large file takes a while: a connection left waiting
// meanwhile may be closed by its server (--idle-timeout).
bool is_identical(const std::string& local, const Entry& remote, Direction direction,
                  const std::function<void(std::uint64_t)>& on_bytes = {});

// The first half of is_identical, one lstat: whether `local` is a regular file with
// `remote`'s size, mtime and execute bits (its digest is not looked at: a listing without
// digests will do). Only such a file can be identical, and only such a file is read by
// is_identical.
bool may_be_identical(const std::string& local, const Entry& remote, Direction direction);

}  // namespace ftx::client
