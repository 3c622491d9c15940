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

}  // namespace
}  // namespace ftx::hash
