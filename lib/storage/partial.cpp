#include "storage/partial.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <iterator>
#include <cstring>
#include <fstream>

#include "storage/fd.hpp"
#include "storage/names.hpp"

namespace ftx::storage {
namespace {

constexpr std::uint32_t kMagic = 0x52585446;  // "FTXR" read as little-endian
constexpr std::uint32_t kLayout = 4;  // 4: held intervals
// 32 KiB of bitmap: 262 144 ranges (the client sizes ranges to fit, up to 16 TiB).
constexpr std::size_t kMaxRanges = 32 * 1024;
constexpr std::size_t kMaxRecord = 64 + 4 * 8 + 4 * 32 + kMaxRanges + 4 + kMaxHeld * 16 + 4 + 64 + 4096 + 32;

class Writer {
 public:
  template <typename T>
  void put(const T& v) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(&v);
    out.insert(out.end(), p, p + sizeof v);
  }
  void put_bytes(std::span<const std::uint8_t> b) { out.insert(out.end(), b.begin(), b.end()); }
  std::vector<std::uint8_t> out;
};

class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> in) : in_(in) {}
  template <typename T>
  bool get(T& v) {
    if (in_.size() - pos_ < sizeof v) return false;
    std::memcpy(&v, in_.data() + pos_, sizeof v);
    pos_ += sizeof v;
    return true;
  }
  bool get_bytes(std::span<std::uint8_t> b) {
    if (in_.size() - pos_ < b.size()) return false;
    if (b.empty()) return true;  // an empty vector's data() may be null: not for memcpy
    std::memcpy(b.data(), in_.data() + pos_, b.size());
    pos_ += b.size();
    return true;
  }
  std::size_t pos() const { return pos_; }

 private:
  std::span<const std::uint8_t> in_;
  std::size_t pos_ = 0;
};

const std::string& boot_id() {
  static const std::string id = [] {
    std::ifstream f("/proc/sys/kernel/random/boot_id");
    std::string s;
    f >> s;
    return s;
  }();
  return id;
}

}  // namespace

PartialRecord new_record(std::string name, std::uint64_t size, std::optional<std::int64_t> mtime_ns, bool executable,
                         const hash::Digest& digest) {
  PartialRecord r;
  r.name = std::move(name);
  r.size = size;
  r.has_mtime = mtime_ns.has_value();
  r.mtime_ns = mtime_ns.value_or(0);
  r.executable = executable;
  r.digest = digest;
  r.good = r.before = *hash::Sha256().state();
  r.created_ns = r.updated_ns = wall_clock_ns();
  return r;
}

bool current_boot(const PartialRecord& r) { return !boot_id().empty() && r.boot_id == boot_id(); }

std::vector<std::uint8_t> encode(const PartialRecord& r) {
  Writer w;
  w.put(kMagic);
  w.put(kLayout);
  w.put(r.size);
  w.put(r.mtime_ns);
  const std::uint32_t flags = (r.has_mtime ? 1u : 0u) | (r.executable ? 2u : 0u);
  w.put(flags);
  w.put(static_cast<std::uint32_t>(r.name.size()));
  w.put_bytes(r.digest);
  w.put_bytes(r.good.words);
  w.put(r.good.bytes);
  w.put_bytes(r.before.words);
  w.put(r.before.bytes);
  w.put(r.created_ns);
  w.put(r.updated_ns);
  w.put(r.range_size);
  w.put(static_cast<std::uint32_t>(r.ranges.size()));
  w.put_bytes(r.ranges);
  w.put(static_cast<std::uint32_t>(r.held.size()));
  for (const auto& [b, e] : r.held) w.put(b), w.put(e);
  const std::string& boot = boot_id();
  w.put(static_cast<std::uint32_t>(boot.size()));
  w.put_bytes(std::span(reinterpret_cast<const std::uint8_t*>(boot.data()), boot.size()));
  w.put_bytes(std::span(reinterpret_cast<const std::uint8_t*>(r.name.data()), r.name.size()));
  const auto sum = hash::sha256(w.out);
  w.put_bytes(sum);
  return std::move(w.out);
}

bool decode(std::span<const std::uint8_t> bytes, PartialRecord& out) {
  Reader rd(bytes);
  std::uint32_t magic = 0, layout = 0, flags = 0, name_len = 0;
  PartialRecord r;
  if (!rd.get(magic) || magic != kMagic || !rd.get(layout) || layout != kLayout) return false;
  if (!rd.get(r.size) || !rd.get(r.mtime_ns) || !rd.get(flags) || !rd.get(name_len)) return false;
  if (name_len > 4096 || (flags & ~3u) != 0) return false;
  if (!rd.get_bytes(r.digest) || !rd.get_bytes(r.good.words) || !rd.get(r.good.bytes) ||
      !rd.get_bytes(r.before.words) || !rd.get(r.before.bytes) || !rd.get(r.created_ns) || !rd.get(r.updated_ns)) {
    return false;
  }
  std::uint32_t ranges_len = 0;
  if (!rd.get(r.range_size) || !rd.get(ranges_len) || ranges_len > kMaxRanges) return false;
  r.ranges.resize(ranges_len);
  if (!rd.get_bytes(r.ranges)) return false;
  std::uint32_t held_len = 0;
  if (!rd.get(held_len) || held_len > kMaxHeld) return false;
  r.held.resize(held_len);
  std::uint64_t prev_end = 0;
  for (auto& [b, e] : r.held) {
    // Sorted, disjoint, inside the file: what add_held makes (anything else is not ours).
    if (!rd.get(b) || !rd.get(e) || b >= e || e > r.size || (&b != &r.held.front().first && b <= prev_end)) {
      return false;
    }
    prev_end = e;
  }
  std::uint32_t boot_len = 0;
  if (!rd.get(boot_len) || boot_len > 64) return false;
  r.boot_id.resize(boot_len);
  if (!rd.get_bytes(std::span(reinterpret_cast<std::uint8_t*>(r.boot_id.data()), boot_len))) return false;
  r.name.resize(name_len);
  if (!rd.get_bytes(std::span(reinterpret_cast<std::uint8_t*>(r.name.data()), name_len))) return false;
  const std::size_t body = rd.pos();
  hash::Digest sum{};
  if (!rd.get_bytes(sum) || hash::sha256(bytes.first(body)) != sum) return false;
  // The offsets must describe a prefix of the file, at block boundaries (Sha256::restore).
  if (r.good.bytes > r.size || r.before.bytes > r.good.bytes || r.good.bytes % 64 != 0 || r.before.bytes % 64 != 0) {
    return false;
  }
  r.has_mtime = (flags & 1u) != 0;
  r.executable = (flags & 2u) != 0;
  out = std::move(r);
  return true;
}

std::error_code save_record(int fd, const PartialRecord& r) {
  const auto bytes = encode(r);
  const ssize_t k = ::pwrite(fd, bytes.data(), bytes.size(), 0);
  if (k < 0) return last_error();
  if (static_cast<std::size_t>(k) != bytes.size()) return std::make_error_code(std::errc::no_space_on_device);
  return {};
}

std::error_code load_record(int fd, PartialRecord& out) {
  std::vector<std::uint8_t> buf(kMaxRecord);
  std::size_t got = 0;
  if (auto ec = pread_full(fd, buf, 0, got)) return ec;
  if (!decode(std::span(buf.data(), got), out)) return errc::bad_record;
  return {};
}

void advance(PartialRecord& r, const hash::State& after) {
  if (after.bytes > r.good.bytes) r.before = r.good;
  r.good = after;
  r.updated_ns = wall_clock_ns();
}

bool has_range(const PartialRecord& r, std::uint64_t i) {
  return i / 8 < r.ranges.size() && (r.ranges[i / 8] & (1u << (i % 8))) != 0;
}

void mark_range(PartialRecord& r, std::uint64_t i) {
  if (i / 8 >= r.ranges.size()) r.ranges.resize(i / 8 + 1, 0);
  r.ranges[i / 8] = static_cast<std::uint8_t>(r.ranges[i / 8] | (1u << (i % 8)));
}

void add_held(PartialRecord& r, std::uint64_t begin, std::uint64_t end) {
  if (begin >= end) return;
  auto& h = r.held;
  // The first interval that ends at or after `begin` and the first that starts after `end`:
  // everything between them overlaps or touches [begin, end) and merges into it.
  auto lo = std::lower_bound(h.begin(), h.end(), begin, [](const auto& iv, std::uint64_t b) { return iv.second < b; });
  auto hi = std::upper_bound(lo, h.end(), end, [](std::uint64_t e, const auto& iv) { return e < iv.first; });
  if (lo != hi) {
    begin = std::min(begin, lo->first);
    end = std::max(end, std::prev(hi)->second);
  }
  lo = h.erase(lo, hi);
  h.insert(lo, {begin, end});
  while (h.size() > kMaxHeld) {
    // Forgetting bytes only costs sending them again; the shortest costs least.
    h.erase(std::min_element(h.begin(), h.end(),
                             [](const auto& a, const auto& b) { return a.second - a.first < b.second - b.first; }));
  }
}

std::uint64_t good_bytes(const PartialRecord& r) {
  std::uint64_t n = r.good.bytes;
  for (const auto& [b, e] : r.held) n += e - b;
  return n;
}

std::int64_t wall_clock_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace ftx::storage
