#include "protocol/address.hpp"

#include <gtest/gtest.h>

namespace ftx::protocol {
namespace {

TEST(Address, ParsesHostAndPort) {
  std::string err;
  auto a = parse_address("127.0.0.1:7021", err);
  ASSERT_TRUE(a) << err;
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 7021);
  a = parse_address("localhost:0", err);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->port, 0);
}

TEST(Address, BareHostGetsDefaultPort) {
  std::string err;
  const auto a = parse_address("files.example", err);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->port, kDefaultPort);
}

TEST(Address, Ipv6NeedsBrackets) {
  std::string err;
  const auto a = parse_address("[::1]:9000", err);
  ASSERT_TRUE(a) << err;
  EXPECT_EQ(a->host, "::1");
  EXPECT_EQ(a->port, 9000);
  EXPECT_EQ(a->to_string(), "[::1]:9000");
  EXPECT_FALSE(parse_address("::1:9000", err));
  EXPECT_NE(err.find("brackets"), std::string::npos);
}

TEST(Address, RejectsBadPortsAndEmptyHosts) {
  std::string err;
  for (const char* bad : {"h:", "h:x", "h:65536", "h:-1", ":7021", "[::1", "[::1]x", "[]:1", "h:12ab"}) {
    EXPECT_FALSE(parse_address(bad, err)) << bad;
    EXPECT_FALSE(err.empty()) << bad;
  }
}

}  // namespace
}  // namespace ftx::protocol
