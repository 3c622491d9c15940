#pragma once
// The exit codes of `ftx`, part of the command-line contract (the README and docs/cli.md
// list them). Scripts depend on them: never renumber, only add. Command-line parse errors
// are mapped to kUsage rather than CLI11's own codes.

namespace ftx::app {

enum ExitCode : int {
  kOk = 0,
  kInternal = 1,      // a bug or an unexpected condition
  kUsage = 2,         // bad command line
  kConnection = 3,    // cannot connect / listen, connection lost, no answer
  kNotFound = 4,      // the remote file does not exist
  kRejected = 5,      // the server refused the request (name, conflict, storage, ...)
  kIntegrity = 6,     // SHA-256 mismatch
  kLocalIo = 7,       // a local file or folder cannot be read or written
  kProtocol = 8,      // the peer is not an ftx server of this protocol version
  kAuth = 9,          // the server needs a token, or a different one
  kTls = 10,          // TLS handshake failed, or the server's certificate is not trusted
};

}  // namespace ftx::app
