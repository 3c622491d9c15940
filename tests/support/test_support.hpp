#pragma once
// Test helpers: a temporary folder, random files, and a raw protocol peer that sends
// whatever bytes a test wants (malformed, split, glued) and reads frames back.

#include <asio.hpp>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "protocol/codec.hpp"

namespace ftx::test {

// A fresh folder under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& rel) const { return path_ / rel; }

 private:
  std::filesystem::path path_;
};

// A real ext4 filesystem whose device runs out of room underneath it, as a thin-provisioned
// disk does: a loop device on a sparse 64 MiB image that lives in a small tmpfs. After
// fill_device(), writes into the page cache still succeed (the filesystem shows plenty of
// free space), but writing new data out to the device fails (EIO/ENOSPC), and what was lost
// reads back as something else after remount(). Needs root and loop devices: where they
// are missing, available() is false and why() says so. The mounts of one that a killed test
// left behind are undone by the next one made (the backing's source names its process).
class FailingDisk {
 public:
  FailingDisk();
  ~FailingDisk();
  FailingDisk(const FailingDisk&) = delete;
  FailingDisk& operator=(const FailingDisk&) = delete;

  bool available() const { return mounted_; }
  const std::string& why() const { return why_; }
  // The ext4 filesystem's mount point.
  const std::filesystem::path& path() const { return mount_; }
  // Writes out everything dirty on the filesystem (the folders made so far), then fills
  // what backs the device. Filled to the last page, not left with a little room: the loop
  // driver takes a write that fits only in part for a whole one, so a file written across
  // the point where room ran out would be lost without an error. Throws std::runtime_error
  // when it cannot.
  void fill_device();
  // Unmounts and mounts it again: what is read afterwards comes from the device, not from
  // the page cache. Throws std::runtime_error when it cannot.
  void remount();

 private:
  bool mount_image() const;  // the image on mount_, as a loop device

  TempDir dir_;
  std::filesystem::path backing_, image_, mount_;
  bool backing_mounted_ = false;
  bool mounted_ = false;
  std::string why_;
};

// Deterministic pseudo-random bytes (so failures reproduce).
std::vector<std::uint8_t> random_bytes(std::size_t n, std::uint64_t seed);
void write_file(const std::filesystem::path& p, const std::vector<std::uint8_t>& data);
void write_file(const std::filesystem::path& p, const std::string& data);
std::vector<std::uint8_t> read_file(const std::filesystem::path& p);
// Names of the entries of a folder (empty if it does not exist).
std::vector<std::string> list_dir(const std::filesystem::path& p);
// The files below a staging folder, as paths relative to it ("partial/<key>.part" for kept
// resumable uploads); the empty folders ftx keeps there are not listed.
std::vector<std::string> staging_files(const std::filesystem::path& staging);

// A blocking TCP connection that speaks raw frames.
class RawPeer {
 public:
  explicit RawPeer(std::uint16_t port);
  void send_bytes(const std::vector<std::uint8_t>& bytes);
  void send_frame(const protocol::Frame& f);
  // Reads one frame; throws std::system_error on EOF or a decode error.
  protocol::Frame read_frame();
  // Reads exactly n bytes of body.
  std::vector<std::uint8_t> read_body(std::size_t n);
  // True when the peer closed the connection (reads until EOF or an error).
  bool closed_by_peer();
  // Everything received until the peer closed the connection.
  std::vector<std::uint8_t> read_until_closed();
  void close();
  // Half-closes: the peer reads EOF, this side can still read.
  void shutdown_send();

 private:
  asio::io_context io_;
  asio::ip::tcp::socket socket_;
  protocol::Decoder decoder_;
  std::vector<std::uint8_t> buffered_;  // read but not yet consumed
};

}  // namespace ftx::test
