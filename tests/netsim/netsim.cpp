// netsim: a long, lossy network link between two network namespaces, emulated in user space.
//
// Why not netem: the usual way to give a test a real round-trip time and some loss is
// `tc qdisc add dev X root netem delay 25ms loss 0.1%`, but that needs the sch_netem kernel
// module, and the kernels ftx is developed and tested on do not all have it. /dev/net/tun is
// there, so the link is emulated here, in a small user-space forwarder, with nothing else
// needed (no tc, no modules, no third-party code).
//
// How the namespaces see it:
//
//   namespace a                      root namespace                      namespace b
//   10.77.0.1 on DEV_A  <-- TUN fd -->    netsim    <-- TUN fd -->  10.77.0.2 on DEV_B
//
// netsim creates both TUN devices (IFF_TUN | IFF_NO_PI: bare IP packets, no link layer) by
// opening /dev/net/tun in the root namespace; the script then moves each device into its
// namespace (`ip link set DEV netns NS`) and gives it an address there. A TUN device stays
// attached to the file descriptor that created it across such a move, so netsim, still in the
// root namespace, reads every packet a namespace routes out of its device and writes the
// packets that namespace receives on it. To each namespace the device is a point-to-point
// link to the other one. The devices are not persistent: when netsim exits, or is killed, the
// kernel deletes them, in whichever namespace they are, so nothing is left behind.
//
// What the link does to each packet, in each direction independently (tests/netsim/link.sh
// sets it up, bench/netsim.sh uses it):
//   1. with --rate-mbit R > 0, it is serialized at R behind the packets before it; a packet
//      that would wait more than --queue-ms for that is dropped (a drop-tail bottleneck queue);
//   2. it is lost with probability --loss (pseudo-random, seeded with --seed);
//   3. it is delivered --delay-ms after it was serialized (after it arrived, without a rate).
// A fixed delay never reorders packets, so each direction is a FIFO: a ring of 2 KiB slots
// that packets are read straight into, each with its release time. No allocation per packet.
//
// Wake-ups: packets whose release times are less than --slack-us (100) apart are written in
// one wake-up (the later ones up to that much early). With a rate limit every packet has its
// own release time, and in a VM a timer wake-up costs about as much as forwarding a packet.
//
// Cost: TUN has no batched read or write, so each packet is one read() and one write(); the
// write also runs the receiving namespace's IP and TCP input in netsim's thread, so netsim's
// CPU time includes that. No GSO (IFF_VNET_HDR): packets are MTU-sized, as on a real path,
// and a loss hits one packet, not a 64 KiB super-packet.
//
// Usage: netsim [OPTIONS] DEV_A DEV_B   (root, or CAP_NET_ADMIN)
// Prints "ready" on stdout once both devices exist; runs until SIGTERM, SIGINT or SIGHUP or
// for --duration-s at most, then prints its counters to stderr and exits 0.

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>

namespace {

constexpr std::size_t kSlotSize = 2048;   // one packet and its header
constexpr int kMaxMtu = 2000;             // every packet fits a slot's data
constexpr int kReadBatch = 64;            // packets read from one device per wake-up
constexpr int64_t kNsPerMs = 1'000'000;
constexpr int64_t kNsPerSecond = 1'000'000'000;

struct Options {
  std::string dev_a;
  std::string dev_b;
  double delay_ms = 25;
  double loss = 0;
  uint64_t seed = 1;
  double rate_mbit = 0;      // 0: no rate limit
  double queue_ms = 50;      // bottleneck queue, in time at --rate-mbit
  double duration_s = 600;   // hard bound on the run time
  double slack_us = 100;     // a packet may leave this much before its time
  int mtu = 1500;
  std::size_t slots = 32768; // per direction: packets in flight at most (64 MiB, touched lazily)
  bool exit_with_parent = false;
};

void Usage() {
  std::fprintf(stderr,
      "usage: netsim [OPTIONS] DEV_A DEV_B\n"
      "  creates TUN devices DEV_A and DEV_B and forwards packets between them\n"
      "  --delay-ms MS      one-way delay (default 25)\n"
      "  --loss P           probability a packet is lost, 0..1 (default 0)\n"
      "  --seed N           seed of the loss draws (default 1)\n"
      "  --rate-mbit R      bottleneck rate in Mbit/s, 0 = unlimited (default 0)\n"
      "  --queue-ms MS      bottleneck queue: drop a packet that would wait longer (default 50)\n"
      "  --duration-s S     exit after S seconds at most (default 600)\n"
      "  --slack-us US      release a packet up to US early, to batch wake-ups (default 100)\n"
      "  --mtu N            MTU set on both devices, 68..%d (default 1500)\n"
      "  --slots N          packets in flight per direction at most (default 32768)\n"
      "  --exit-with-parent exit when the process that started netsim dies\n",
      kMaxMtu);
}

int64_t NowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * kNsPerSecond + ts.tv_nsec;
}

// ---------------------------------------------------------------------------------------------
// Command line

std::optional<double> ParseNumber(std::string_view text) {
  std::string copy(text);
  char* end = nullptr;
  errno = 0;
  double value = std::strtod(copy.c_str(), &end);
  if (copy.empty() || *end != '\0' || errno != 0) return std::nullopt;
  return value;
}

bool SetOption(Options& options, std::string_view name, std::string_view text) {
  std::optional<double> value = ParseNumber(text);
  if (!value || *value < 0) return false;
  if (name == "--delay-ms") options.delay_ms = *value;
  else if (name == "--loss") options.loss = *value;
  else if (name == "--seed") options.seed = static_cast<uint64_t>(*value);
  else if (name == "--rate-mbit") options.rate_mbit = *value;
  else if (name == "--queue-ms") options.queue_ms = *value;
  else if (name == "--duration-s") options.duration_s = *value;
  else if (name == "--slack-us") options.slack_us = *value;
  else if (name == "--mtu") options.mtu = static_cast<int>(*value);
  else if (name == "--slots") options.slots = static_cast<std::size_t>(*value);
  else return false;
  return true;
}

bool Valid(const Options& options) {
  return !options.dev_b.empty() && options.loss <= 1 && options.mtu >= 68 &&
         options.mtu <= kMaxMtu && options.slots >= 1 && options.duration_s > 0;
}

// Accepts "--name value" and "--name=value".
std::optional<Options> ParseArgs(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--exit-with-parent") {
      options.exit_with_parent = true;
    } else if (arg.starts_with("--")) {
      std::size_t equals = arg.find('=');
      std::string_view name = arg.substr(0, equals);
      std::string_view value;
      if (equals != std::string_view::npos) value = arg.substr(equals + 1);
      else if (i + 1 < argc) value = argv[++i];
      if (!SetOption(options, name, value)) return std::nullopt;
    } else if (options.dev_a.empty()) {
      options.dev_a = arg;
    } else if (options.dev_b.empty()) {
      options.dev_b = arg;
    } else {
      return std::nullopt;
    }
  }
  if (!Valid(options)) return std::nullopt;
  return options;
}

// ---------------------------------------------------------------------------------------------
// Devices

// Creates (or attaches to) TUN device NAME; returns a non-blocking descriptor, or -1.
int OpenTun(const std::string& name) {
  if (name.size() >= IFNAMSIZ) {
    std::fprintf(stderr, "netsim: device name %s is longer than %d\n", name.c_str(), IFNAMSIZ - 1);
    return -1;
  }
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    std::fprintf(stderr, "netsim: /dev/net/tun: %s\n", std::strerror(errno));
    return -1;
  }
  ifreq request{};
  request.ifr_flags = IFF_TUN | IFF_NO_PI;
  std::memcpy(request.ifr_name, name.c_str(), name.size());
  if (ioctl(fd, TUNSETIFF, &request) < 0) {
    std::fprintf(stderr, "netsim: TUNSETIFF %s: %s\n", name.c_str(), std::strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

// The MTU bounds the packets netsim reads, so it is netsim that sets it, while the device is
// still in netsim's namespace.
bool SetMtu(const std::string& name, int mtu) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  ifreq request{};
  std::memcpy(request.ifr_name, name.c_str(), name.size());
  request.ifr_mtu = mtu;
  bool ok = ioctl(fd, SIOCSIFMTU, &request) == 0;
  if (!ok) std::fprintf(stderr, "netsim: MTU of %s: %s\n", name.c_str(), std::strerror(errno));
  close(fd);
  return ok;
}

// ---------------------------------------------------------------------------------------------
// Packets in flight

struct Slot {
  int64_t release_ns;  // CLOCK_MONOTONIC time to write the packet out
  uint32_t length;
  uint32_t unused;
  std::byte data[kSlotSize - 16];
};
static_assert(sizeof(Slot) == kSlotSize);

// A FIFO of packet slots with a fixed capacity. A packet is read straight into Tail() and
// kept with Push(), or not kept by not pushing it. The slots are allocated once and not
// initialized, so the kernel only maps the pages the traffic actually reaches.
class PacketRing {
 public:
  explicit PacketRing(std::size_t capacity)
      : slots_(new Slot[capacity]), capacity_(capacity) {}

  bool empty() const { return size_ == 0; }
  bool full() const { return size_ == capacity_; }
  Slot& Front() { return slots_[head_]; }
  const Slot& Front() const { return slots_[head_]; }
  Slot& Tail() { return slots_[Wrap(head_ + size_)]; }
  void Push() { ++size_; }
  void Pop() {
    head_ = Wrap(head_ + 1);
    --size_;
  }

 private:
  std::size_t Wrap(std::size_t index) const { return index >= capacity_ ? index - capacity_ : index; }

  std::unique_ptr<Slot[]> slots_;
  std::size_t capacity_;
  std::size_t head_ = 0;
  std::size_t size_ = 0;
};

struct Counters {
  uint64_t forwarded = 0;
  uint64_t bytes = 0;
  uint64_t lost = 0;         // --loss
  uint64_t queue_drops = 0;  // --queue-ms exceeded at --rate-mbit
  uint64_t ring_drops = 0;   // --slots exceeded
  uint64_t errors = 0;       // failed reads or writes, oversized packets
};

// ---------------------------------------------------------------------------------------------
// One direction of the link: packets read from in_fd are written to out_fd, later.

class Direction {
 public:
  Direction(std::string name, int in_fd, int out_fd, const Options& options, uint64_t seed)
      : name_(std::move(name)),
        in_fd_(in_fd),
        out_fd_(out_fd),
        ring_(options.slots),
        scratch_(new Slot),
        delay_ns_(static_cast<int64_t>(options.delay_ms * kNsPerMs)),
        queue_ns_(static_cast<int64_t>(options.queue_ms * kNsPerMs)),
        ns_per_byte_(options.rate_mbit > 0 ? 8000.0 / options.rate_mbit : 0),
        rng_(seed),
        lose_(options.loss) {}

  // Reads up to kReadBatch packets; true if there may be more waiting.
  bool ReadBatch() {
    for (int i = 0; i < kReadBatch; ++i) {
      if (!ReadOne()) return false;
    }
    return true;
  }

  // Writes out every packet whose release time has come, in order.
  void Flush(int64_t now_ns) {
    blocked_ = false;
    while (!ring_.empty() && ring_.Front().release_ns <= now_ns) {
      const Slot& slot = ring_.Front();
      ssize_t written = write(out_fd_, slot.data, slot.length);
      if (written < 0 && errno == EINTR) continue;
      if (written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
        blocked_ = true;  // retried when the device is writable again
        return;
      }
      if (written < 0) {
        ++counters_.errors;  // e.g. EIO while the receiving device is down
      } else {
        ++counters_.forwarded;
        counters_.bytes += slot.length;
      }
      ring_.Pop();
    }
  }

  // When Flush has work next, if ever.
  std::optional<int64_t> NextRelease() const {
    if (ring_.empty() || blocked_) return std::nullopt;
    return ring_.Front().release_ns;
  }

  bool blocked() const { return blocked_; }

  void Report() const {
    std::fprintf(stderr,
        "netsim: %s: forwarded %llu packets (%llu bytes); dropped %llu lost, %llu queue, "
        "%llu ring full; %llu errors\n",
        name_.c_str(), static_cast<unsigned long long>(counters_.forwarded),
        static_cast<unsigned long long>(counters_.bytes),
        static_cast<unsigned long long>(counters_.lost),
        static_cast<unsigned long long>(counters_.queue_drops),
        static_cast<unsigned long long>(counters_.ring_drops),
        static_cast<unsigned long long>(counters_.errors));
  }

 private:
  // Reads one packet into the ring; false when there was none to read.
  bool ReadOne() {
    Slot& slot = ring_.full() ? *scratch_ : ring_.Tail();
    ssize_t length = read(in_fd_, slot.data, sizeof slot.data);
    if (length < 0 && errno == EINTR) return true;
    if (length <= 0) {
      if (length < 0 && errno != EAGAIN && errno != EWOULDBLOCK) ++counters_.errors;
      return false;
    }
    if (static_cast<std::size_t>(length) == sizeof slot.data) {
      ++counters_.errors;  // may have been cut short: the MTU was raised behind netsim's back
      return true;
    }
    if (ring_.full()) {
      ++counters_.ring_drops;
      return true;
    }
    Admit(slot, static_cast<uint32_t>(length), NowNs());
    return true;
  }

  // Decides the fate of a packet that arrived at arrival_ns (see the top of the file).
  void Admit(Slot& slot, uint32_t length, int64_t arrival_ns) {
    std::optional<int64_t> sent_ns = Serialize(length, arrival_ns);
    if (!sent_ns) {
      ++counters_.queue_drops;
      return;
    }
    if (lose_(rng_)) {
      ++counters_.lost;
      return;
    }
    slot.release_ns = *sent_ns + delay_ns_;
    slot.length = length;
    ring_.Push();
  }

  // When the bottleneck has sent the packet out, or nothing if its queue is too long.
  std::optional<int64_t> Serialize(uint32_t length, int64_t arrival_ns) {
    if (ns_per_byte_ == 0) return arrival_ns;
    int64_t start_ns = std::max(arrival_ns, link_free_ns_);
    if (start_ns - arrival_ns > queue_ns_) return std::nullopt;
    link_free_ns_ = start_ns + static_cast<int64_t>(length * ns_per_byte_);
    return link_free_ns_;
  }

  std::string name_;
  int in_fd_;
  int out_fd_;
  PacketRing ring_;
  std::unique_ptr<Slot> scratch_;  // where packets go that the full ring cannot take
  int64_t delay_ns_;
  int64_t queue_ns_;
  double ns_per_byte_;
  int64_t link_free_ns_ = 0;  // when the bottleneck has sent everything queued so far
  std::mt19937_64 rng_;
  std::bernoulli_distribution lose_;
  bool blocked_ = false;
  Counters counters_;
};

// ---------------------------------------------------------------------------------------------
// Event loop

// Blocks the stop signals and returns a descriptor that becomes readable when one arrives.
int StopSignalFd() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  if (sigprocmask(SIG_BLOCK, &signals, nullptr) < 0) return -1;
  return signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC);
}

timespec ToTimespec(int64_t ns) {
  return timespec{static_cast<time_t>(ns / kNsPerSecond), static_cast<long>(ns % kNsPerSecond)};
}

class Link {
 public:
  Link(int fd_a, int fd_b, const Options& options)
      : fd_a_(fd_a),
        fd_b_(fd_b),
        a_to_b_(options.dev_a + "->" + options.dev_b, fd_a, fd_b, options, options.seed),
        b_to_a_(options.dev_b + "->" + options.dev_a, fd_b, fd_a, options, options.seed + 1),
        slack_ns_(static_cast<int64_t>(options.slack_us * 1000)) {}

  // Forwards until a stop signal, a vanished device, or deadline_ns. Returns why it stopped.
  const char* Run(int signal_fd, int64_t deadline_ns) {
    bool more_a = false;
    bool more_b = false;
    for (;;) {
      int64_t now_ns = NowNs();
      if (now_ns >= deadline_ns) return "--duration-s reached";
      a_to_b_.Flush(now_ns + slack_ns_);
      b_to_a_.Flush(now_ns + slack_ns_);

      pollfd fds[3] = {
          {fd_a_, Events(b_to_a_), 0},
          {fd_b_, Events(a_to_b_), 0},
          {signal_fd, POLLIN, 0},
      };
      int64_t wait_ns = (more_a || more_b) ? 0 : WaitNs(now_ns, deadline_ns);
      timespec timeout = ToTimespec(wait_ns);
      if (ppoll(fds, 3, &timeout, nullptr) < 0 && errno != EINTR) return "poll failed";
      if (fds[2].revents != 0) return "signal";
      if (Gone(fds[0]) || Gone(fds[1])) return "a device went away";
      more_a = (fds[0].revents & POLLIN) != 0 && a_to_b_.ReadBatch();
      more_b = (fds[1].revents & POLLIN) != 0 && b_to_a_.ReadBatch();
    }
  }

  void Report() const {
    a_to_b_.Report();
    b_to_a_.Report();
  }

 private:
  // A device's descriptor is read for its own direction and written for the other one.
  static short Events(const Direction& writes_to_it) {
    return static_cast<short>(POLLIN | (writes_to_it.blocked() ? POLLOUT : 0));
  }

  static bool Gone(const pollfd& fd) { return (fd.revents & (POLLERR | POLLHUP | POLLNVAL)) != 0; }

  int64_t WaitNs(int64_t now_ns, int64_t deadline_ns) const {
    int64_t wake_ns = deadline_ns;
    for (const Direction* direction : {&a_to_b_, &b_to_a_}) {
      if (std::optional<int64_t> release = direction->NextRelease()) wake_ns = std::min(wake_ns, *release);
    }
    return std::max<int64_t>(0, wake_ns - now_ns);
  }

  int fd_a_;
  int fd_b_;
  Direction a_to_b_;
  Direction b_to_a_;
  int64_t slack_ns_;  // see --slack-us
};

// With --exit-with-parent: a SIGTERM when the parent dies, so a script killed with SIGKILL
// does not leave netsim behind until --duration-s.
bool FollowParent() {
  pid_t parent = getppid();
  if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0) return false;
  return getppid() == parent;  // the parent may have died before prctl
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<Options> options = ParseArgs(argc, argv);
  if (!options) {
    Usage();
    return 2;
  }
  int64_t deadline_ns = NowNs() + static_cast<int64_t>(options->duration_s * kNsPerSecond);
  signal(SIGPIPE, SIG_IGN);
  prctl(PR_SET_TIMERSLACK, 1000UL);  // wake within 1 us of a release time, not the default 50
  int signal_fd = StopSignalFd();
  if (signal_fd < 0 || (options->exit_with_parent && !FollowParent())) {
    std::fprintf(stderr, "netsim: cannot set up signals: %s\n", std::strerror(errno));
    return 1;
  }
  int fd_a = OpenTun(options->dev_a);
  int fd_b = fd_a < 0 ? -1 : OpenTun(options->dev_b);
  if (fd_b < 0 || !SetMtu(options->dev_a, options->mtu) || !SetMtu(options->dev_b, options->mtu)) {
    return 1;
  }

  Link link(fd_a, fd_b, *options);
  std::printf("ready\n");
  std::fflush(stdout);
  const char* why = link.Run(signal_fd, deadline_ns);
  std::fprintf(stderr, "netsim: stopping (%s)\n", why);
  link.Report();
  return 0;
}
