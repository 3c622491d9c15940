#include "hash/hash_thread.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "support/test_support.hpp"

namespace ftx::test {
namespace {

// Feeds `data` through h in pieces of `piece` bytes (at most a slot each).
void feed(hash::HashThread& h, std::span<const std::uint8_t> data, std::size_t piece) {
  while (!data.empty()) {
    const auto buf = h.buffer();
    const std::size_t n = std::min({piece, buf.size(), data.size()});
    std::memcpy(buf.data(), data.data(), n);
    h.submit(n);
    data = data.subspan(n);
  }
}

TEST(HashThread, MatchesTheOneShotDigestForEveryChunking) {
  const auto large = random_bytes(3 * 1024 * 1024 + 11, 7);
  const auto small = random_bytes(20'000, 8);
  for (const std::size_t slot : {std::size_t{1}, std::size_t{64}, std::size_t{65536}, std::size_t{1} << 20}) {
    for (const std::size_t piece : {std::size_t{1}, std::size_t{63}, std::size_t{4096}, std::size_t{1} << 20}) {
      // Tiny pieces of the large input would be millions of hand-offs: the small one will do.
      const auto& data = std::min(slot, piece) < 4096 ? small : large;
      SCOPED_TRACE(std::to_string(slot) + "/" + std::to_string(piece));
      hash::HashThread h(3, slot);
      feed(h, data, piece);
      EXPECT_EQ(h.finish(), hash::sha256(data));
    }
  }
}

TEST(HashThread, EachFinishStartsTheNextStream) {
  const auto a = random_bytes(2'000'000, 8);
  const auto b = random_bytes(10, 9);
  hash::HashThread h(2, 1 << 16);
  feed(h, a, 1 << 16);
  EXPECT_EQ(h.finish(), hash::sha256(a));
  EXPECT_EQ(h.finish(), hash::sha256(std::string_view{})) << "nothing submitted";
  feed(h, b, 3);
  EXPECT_EQ(h.finish(), hash::sha256(b));
}

TEST(HashThread, ResetDropsAStreamLeftHalfWay) {
  const auto a = random_bytes(500'000, 10);
  const auto b = random_bytes(300'000, 11);
  hash::HashThread h(4, 1 << 16);
  feed(h, a, 1 << 16);
  h.buffer();  // handed out, never submitted: a producer that failed while filling it
  h.reset();
  feed(h, b, 1 << 16);
  EXPECT_EQ(h.finish(), hash::sha256(b));
  h.reset();  // nothing in progress: harmless
  feed(h, a, 1000);
  EXPECT_EQ(h.finish(), hash::sha256(a));
}

TEST(HashThread, ASubmittedBufferIsNotHandedOutAgainBeforeTheNextCall) {
  // The caller writes a submitted buffer to disk after submit(): the next buffer() must be
  // a different one, and with N slots the same buffer comes back only N calls later.
  hash::HashThread h(3, 16);
  std::vector<std::uint8_t*> seen;
  for (int i = 0; i < 7; ++i) {
    const auto buf = h.buffer();
    seen.push_back(buf.data());
    h.submit(buf.size());
  }
  h.finish();
  for (std::size_t i = 1; i < seen.size(); ++i) {
    EXPECT_NE(seen[i], seen[i - 1]);
    if (i >= 3) {
      EXPECT_EQ(seen[i], seen[i - 3]);
    }
  }
}

TEST(HashThread, WritesEveryChunkInOrderWhenAsked) {
  const auto data = random_bytes(2'500'000, 12);
  TempDir dir;
  const auto path = dir.path() / "out";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  hash::HashThread h(3, 1 << 16);
  h.write_to(fd);
  feed(h, data, 50'000);
  EXPECT_EQ(h.finish(), hash::sha256(data));
  EXPECT_FALSE(h.write_error());
  ::close(fd);
  EXPECT_EQ(read_file(path), data);
  // The next stream is not written unless asked again.
  feed(h, random_bytes(1000, 13), 1000);
  h.finish();
  EXPECT_EQ(read_file(path), data);
}

TEST(HashThread, AFailedWriteIsReportedAndTheDigestStillComes) {
  const int fd = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  const auto data = random_bytes(300'000, 14);
  hash::HashThread h(2, 1 << 16);
  h.write_to(fd);
  feed(h, data, 1 << 16);
  EXPECT_EQ(h.finish(), hash::sha256(data));
  EXPECT_EQ(h.write_error(), std::errc::no_space_on_device);
  h.write_to(fd);  // a new stream starts with no error
  EXPECT_FALSE(h.write_error());
  h.reset();
  ::close(fd);
}

TEST(HashThread, MisuseIsALogicError) {
  hash::HashThread h(2, 16);
  EXPECT_THROW(h.submit(1), std::logic_error) << "submit without a buffer";
  h.buffer();
  EXPECT_THROW(h.finish(), std::logic_error) << "finish with a buffer still being filled";
  h.reset();
  EXPECT_THROW(hash::HashThread(1, 16), std::invalid_argument);
}

}  // namespace
}  // namespace ftx::test
