#include "hash/sha256.hpp"

#include <gtest/gtest.h>

#include "support/test_support.hpp"

namespace ftx::hash {
namespace {

TEST(Sha256, KnownVectors) {
  // FIPS 180-2 test vectors.
  EXPECT_EQ(to_hex(sha256("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(to_hex(sha256("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(to_hex(sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  Sha256 h;
  const std::string a(1000, 'a');
  for (int i = 0; i < 1000; ++i) h.update(a);
  EXPECT_EQ(to_hex(h.finish()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, IncrementalEqualsOneShotAtAnySplit) {
  const auto data = test::random_bytes(1000, 7);
  const auto whole = sha256(data);
  for (std::size_t cut = 0; cut <= data.size(); cut += 37) {
    Sha256 h;
    h.update(std::span(data).first(cut));
    h.update(std::span(data).subspan(cut));
    EXPECT_EQ(h.finish(), whole) << cut;
  }
}

TEST(Sha256, FinishStartsOver) {
  Sha256 h;
  h.update("abc");
  h.finish();
  EXPECT_EQ(h.finish(), sha256(""));
}

TEST(Sha256, HexRoundTripAndRejects) {
  const auto d = sha256("abc");
  Digest back{};
  ASSERT_TRUE(from_hex(to_hex(d), back));
  EXPECT_EQ(back, d);
  std::string upper = to_hex(d);
  for (auto& c : upper) c = static_cast<char>(std::toupper(c));
  ASSERT_TRUE(from_hex(upper, back));
  EXPECT_EQ(back, d);
  EXPECT_FALSE(from_hex("abc", back));
  EXPECT_FALSE(from_hex(std::string(64, 'g'), back));
}

TEST(Sha256, AStateSavedAtABlockBoundaryContinuesToTheSameDigest) {
  const auto data = test::random_bytes(3 * 1024 * 1024 + 17, 11);
  const auto whole = sha256(data);
  for (const std::size_t cut : {std::size_t{0}, std::size_t{64}, std::size_t{1024 * 1024}, std::size_t{3 * 1024 * 1024}}) {
    Sha256 first;
    first.update(std::span(data).first(cut));
    const auto state = first.state();
    ASSERT_TRUE(state) << cut;
    EXPECT_EQ(state->bytes, cut);
    Sha256 second;  // another object, as after a restart
    ASSERT_TRUE(second.restore(*state));
    EXPECT_EQ(second.bytes(), cut);
    second.update(std::span(data).subspan(cut));
    EXPECT_EQ(second.finish(), whole) << cut;
  }
}

TEST(Sha256, StatesDifferForDifferentPrefixesAndExistOnlyAtBlockBoundaries) {
  auto data = test::random_bytes(4096, 12);
  Sha256 a;
  a.update(data);
  data[100] ^= 1;
  Sha256 b;
  b.update(data);
  EXPECT_NE(*a.state(), *b.state());
  Sha256 odd;
  odd.update(std::span(data).first(65));
  EXPECT_FALSE(odd.state());
  State s = *a.state();
  s.bytes = 100;
  EXPECT_FALSE(odd.restore(s));  // not at a block boundary: refused, nothing changed
  EXPECT_EQ(odd.bytes(), 65u);
}

}  // namespace
}  // namespace ftx::hash
