#include "storage/names.hpp"

#include <gtest/gtest.h>

#include "protocol/frame.hpp"

namespace ftx::storage {
namespace {

TEST(Names, AcceptsOrdinaryRelativePaths) {
  for (const char* ok : {"a", "a/b/c.txt", ".hidden", "..foo", "foo..", "r\xc3\xa9sum\xc3\xa9.pdf", "with space",
                         ".ftx-stagingx", "x/.ftx-staging"}) {
    EXPECT_FALSE(check_name(ok)) << ok;
  }
  EXPECT_FALSE(check_name(std::string(kMaxComponentBytes, 'c')));
  std::string longest;
  while (longest.size() + 4 <= protocol::kMaxNameBytes) longest += "d/";
  longest += std::string(protocol::kMaxNameBytes - longest.size(), 'e');
  ASSERT_EQ(longest.size(), protocol::kMaxNameBytes);
  EXPECT_FALSE(check_name(longest));
}

TEST(Names, RefusesHostileNamesWithAReason) {
  const std::vector<std::string> bad = {
      "",          "/etc/passwd", "../x",     "a/../../x", "a/..", "..",       ".",       "a/./b",
      "a//b",      "a/",          "/",        "x\n",       "a\tb", "\x7f",     "esc\x1b[31m",
      std::string("nul\0byte", 8), std::string(kMaxComponentBytes + 1, 'c'),
      std::string(protocol::kMaxNameBytes + 1, 'n'),
  };
  for (const auto& name : bad) {
    EXPECT_EQ(check_name(name), errc::bad_name) << quote_name(name);
    EXPECT_FALSE(explain_bad_name(name).empty()) << quote_name(name);
  }
}

TEST(Names, StagingFolderIsReserved) {
  EXPECT_EQ(check_name(".ftx-staging"), errc::reserved_name);
  EXPECT_EQ(check_name(".ftx-staging/abc.part"), errc::reserved_name);
  EXPECT_EQ(check_name(".ftx-tls/key.pem"), errc::reserved_name);
  EXPECT_NE(explain_bad_name(".ftx-staging").find("reserved"), std::string::npos);
}

TEST(Names, QuotedEscapesWhatATerminalWouldInterpret) {
  EXPECT_EQ(quote_name("plain"), "\"plain\"");
  EXPECT_EQ(quote_name("a\x1b[2Jb"), "\"a\\x1b[2Jb\"");
  EXPECT_EQ(quote_name("q\"b\\"), "\"q\\x22b\\x5c\"");
  EXPECT_EQ(quote_name(std::string(300, 'x')).size(), 200u + 2 + 3);
}

TEST(Names, SplitsComponents) {
  const auto parts = split_name("a/bc/d");
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0], "a");
  EXPECT_EQ(parts[1], "bc");
  EXPECT_EQ(parts[2], "d");
}

}  // namespace
}  // namespace ftx::storage
