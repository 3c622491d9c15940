#include "support/test_support.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string_view>

#include "storage/fd.hpp"

namespace ftx::test {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/ftx-test-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::system_error(errno, std::system_category(), "mkdtemp");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

namespace {

// Runs a shell command quietly; true when it exited 0.
bool run(const std::string& command) { return std::system((command + " >/dev/null 2>&1").c_str()) == 0; }

std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

// The backing tmpfs is mounted with this source, naming the test process that made it.
constexpr std::string_view kBackingSource = "ftx-test-";

// A test killed while it held a FailingDisk left both mounts behind (and a loop device with
// them). Each FailingDisk first unmounts those whose process is gone -- never another live
// test's, which ctest -j may be running beside this one -- and removes their folders.
void sweep_abandoned_disks() {
  std::ifstream mounts("/proc/self/mountinfo");
  std::vector<std::filesystem::path> dirs;
  for (std::string line; std::getline(mounts, line);) {
    // "... <mount point> <options> [optional fields] - <fs type> <source> <super options>"
    std::istringstream in(line);
    std::string id, parent, devno, root, point, field;
    in >> id >> parent >> devno >> root >> point;
    while (in >> field && field != "-") {
    }
    std::string type, source;
    in >> type >> source;
    if (type != "tmpfs" || !source.starts_with(kBackingSource)) continue;
    const int pid = std::atoi(source.c_str() + kBackingSource.size());
    if (pid <= 0 || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
    const std::filesystem::path backing(point);  // <dir>/backing; the ext4 is at <dir>/fs
    if (backing.filename() == "backing") dirs.push_back(backing.parent_path());
  }
  for (const auto& dir : dirs) {
    run("umount -l " + quoted(dir / "fs"));
    run("umount -l " + quoted(dir / "backing"));
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
}

}  // namespace

FailingDisk::FailingDisk() : backing_(dir_ / "backing"), image_(backing_ / "disk.img"), mount_(dir_ / "fs") {
  if (::geteuid() != 0) {
    why_ = "needs root (mount, loop devices)";
    return;
  }
  sweep_abandoned_disks();
  std::filesystem::create_directories(backing_);
  std::filesystem::create_directories(mount_);
  if (!run("mount -t tmpfs -o size=4m " + std::string(kBackingSource) + std::to_string(::getpid()) + " " +
           quoted(backing_))) {
    why_ = "cannot mount a tmpfs";
    return;
  }
  backing_mounted_ = true;
  // No journal and few inodes keep the metadata small, and all of it is written now
  // (lazy_itable_init=0, one block group): later metadata writes land on blocks the backing
  // already holds, so only new file data can fail once it is full.
  if (!run("truncate -s 64M " + quoted(image_)) ||
      !run("mkfs.ext4 -q -F -b 4096 -O ^has_journal -N 128 -E nodiscard,lazy_itable_init=0 " + quoted(image_))) {
    why_ = "cannot make an ext4 image (mkfs.ext4)";
    return;
  }
  if (!mount_image()) {
    why_ = "cannot mount a loop device";
    return;
  }
  mounted_ = true;
}

bool FailingDisk::mount_image() const {
  // errors=continue: a failed write-back is reported to the writer, not turned into a
  // read-only filesystem; noinit_itable: no background zeroing of inode tables.
  return run("mount -o loop,noinit_itable,errors=continue " + quoted(image_) + " " + quoted(mount_));
}

FailingDisk::~FailingDisk() {
  // Lazily if something still holds it open: the folders go with dir_ either way.
  if (mounted_ && !run("umount " + quoted(mount_))) run("umount -l " + quoted(mount_));
  if (backing_mounted_ && !run("umount " + quoted(backing_))) run("umount -l " + quoted(backing_));
}

void FailingDisk::fill_device() {
  if (!mounted_) throw std::runtime_error("FailingDisk::fill_device: not mounted (" + why_ + ")");
  if (!run("sync -f " + quoted(mount_))) throw std::runtime_error("cannot sync " + mount_.string());
  const storage::UniqueFd fd(::open((backing_ / "filler").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) throw std::system_error(storage::last_error(), "cannot create the filler");
  static const std::vector<char> zeros(4096);
  while (::write(fd.get(), zeros.data(), zeros.size()) > 0) {
  }
  if (errno != ENOSPC) throw std::system_error(storage::last_error(), "filling the device's backing");
}

void FailingDisk::remount() {
  if (!mounted_) throw std::runtime_error("FailingDisk::remount: not mounted (" + why_ + ")");
  // Still mounted if this fails: the destructor then unmounts it lazily.
  if (!run("umount " + quoted(mount_))) throw std::runtime_error("cannot unmount " + mount_.string());
  mounted_ = false;
  if (!mount_image()) throw std::runtime_error("cannot mount " + image_.string() + " again");
  mounted_ = true;
}

std::vector<std::uint8_t> random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::uint8_t> out(n);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const std::uint64_t v = rng();
    for (int k = 0; k < 8; ++k) out[i + k] = static_cast<std::uint8_t>(v >> (8 * k));
  }
  for (; i < n; ++i) out[i] = static_cast<std::uint8_t>(rng());
  return out;
}

void write_file(const std::filesystem::path& p, const std::vector<std::uint8_t>& data) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!f) throw std::runtime_error("cannot write " + p.string());
}

void write_file(const std::filesystem::path& p, const std::string& data) {
  write_file(p, std::vector<std::uint8_t>(data.begin(), data.end()));
}

std::vector<std::uint8_t> read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + p.string());
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::vector<std::string> list_dir(const std::filesystem::path& p) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(p, ec)) names.push_back(e.path().filename().string());
  return names;
}

std::vector<std::string> staging_files(const std::filesystem::path& staging) {
  std::vector<std::string> names;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(staging, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_directory()) names.push_back(std::filesystem::relative(it->path(), staging).string());
  }
  return names;
}

RawPeer::RawPeer(std::uint16_t port) : socket_(io_) {
  socket_.connect({asio::ip::make_address("127.0.0.1"), port});
  socket_.set_option(asio::ip::tcp::no_delay(true));
}

void RawPeer::send_bytes(const std::vector<std::uint8_t>& bytes) { asio::write(socket_, asio::buffer(bytes)); }

void RawPeer::send_frame(const protocol::Frame& f) { send_bytes(protocol::encode(f)); }

protocol::Frame RawPeer::read_frame() {
  decoder_.reset();
  for (;;) {
    if (!buffered_.empty()) {
      const auto step = decoder_.put(buffered_);
      buffered_.erase(buffered_.begin(), buffered_.begin() + static_cast<std::ptrdiff_t>(step.consumed));
      if (step.result == protocol::Decoder::Result::kFrame) return decoder_.frame();
      if (step.result == protocol::Decoder::Result::kError) throw std::system_error(decoder_.error());
    }
    std::uint8_t buf[4096];
    const std::size_t n = socket_.read_some(asio::buffer(buf));  // throws on EOF
    buffered_.assign(buf, buf + n);
  }
}

std::vector<std::uint8_t> RawPeer::read_body(std::size_t n) {
  std::vector<std::uint8_t> out;
  const std::size_t from_buffer = std::min(n, buffered_.size());
  out.assign(buffered_.begin(), buffered_.begin() + static_cast<std::ptrdiff_t>(from_buffer));
  buffered_.erase(buffered_.begin(), buffered_.begin() + static_cast<std::ptrdiff_t>(from_buffer));
  out.resize(n);
  if (from_buffer < n) asio::read(socket_, asio::buffer(out.data() + from_buffer, n - from_buffer));
  return out;
}

bool RawPeer::closed_by_peer() {
  std::uint8_t buf[4096];
  std::error_code ec;
  for (;;) {
    socket_.read_some(asio::buffer(buf), ec);
    if (ec) return ec == asio::error::eof || ec == asio::error::connection_reset;
  }
}

std::vector<std::uint8_t> RawPeer::read_until_closed() {
  std::vector<std::uint8_t> out = std::move(buffered_);
  buffered_.clear();
  std::uint8_t buf[4096];
  std::error_code ec;
  while (!ec) {
    const std::size_t n = socket_.read_some(asio::buffer(buf), ec);
    out.insert(out.end(), buf, buf + n);
  }
  return out;
}

void RawPeer::close() {
  std::error_code ec;
  socket_.close(ec);
}

void RawPeer::shutdown_send() {
  std::error_code ec;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_send, ec);
}

}  // namespace ftx::test
