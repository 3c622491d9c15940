#include "protocol/codec.hpp"

#include <gtest/gtest.h>

#include <cstring>

#include "support/test_support.hpp"

namespace ftx::protocol {
namespace {

using Result = Decoder::Result;

Digest digest_of(std::uint8_t seed) {
  Digest d{};
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = static_cast<std::uint8_t>(seed + i * 7);
  return d;
}

Frame make(MsgType type, std::string name = {}, std::uint64_t size = 0) {
  Frame f;
  f.type = type;
  f.name = std::move(name);
  f.size = size;
  return f;
}

// One of every message type, with every field exercised somewhere.
std::vector<Frame> samples() {
  std::vector<Frame> v;
  Frame put = make(MsgType::kPut, "reports/q3 final.pdf", 1234567);
  put.flags = kFlagHasMtime;
  put.mtime_ns = 1'764'000'000'123'456'789;
  put.digest = digest_of(1);
  v.push_back(put);
  v.push_back(make(MsgType::kGet, "a"));
  v.push_back(make(MsgType::kList, ""));
  v.push_back(make(MsgType::kList, "some/folder"));
  v.push_back(make(MsgType::kPing));
  v.push_back(make(MsgType::kReady));
  Frame done = make(MsgType::kDone, "", 42);
  done.digest = digest_of(2);
  v.push_back(done);
  Frame file = make(MsgType::kFile, "", 3);
  file.flags = kFlagHasMtime;
  file.mtime_ns = -5;  // before 1970: must survive the unsigned wire field
  file.digest = digest_of(3);
  v.push_back(file);
  Frame entry = make(MsgType::kEntry, "x/y/z.bin", kMaxFileSize);
  entry.flags = kFlagHasMtime;
  entry.mtime_ns = 1;
  v.push_back(entry);
  v.push_back(make(MsgType::kListEnd, "", 2));
  v.push_back(make(MsgType::kPong));
  v.push_back(make(MsgType::kHello));
  Frame challenge = make(MsgType::kChallenge);
  challenge.digest = digest_of(4);
  v.push_back(challenge);
  Frame auth = make(MsgType::kAuth);
  auth.digest = digest_of(5);
  v.push_back(auth);
  v.push_back(make(MsgType::kAuthOk));
  Frame streamed = make(MsgType::kPut, "bin/tool", 7);
  streamed.flags = kFlagHasMtime | kFlagExecutable | kFlagStreamed;
  streamed.digest = digest_of(6);
  v.push_back(streamed);
  Frame list_all = make(MsgType::kList, "src");
  list_all.flags = kFlagDigest | kFlagFolder;
  v.push_back(list_all);
  Frame folder = make(MsgType::kEntry, "src/empty");
  folder.flags = kFlagFolder | kFlagHasMtime;
  v.push_back(folder);
  v.push_back(make(MsgType::kStat, "a/b"));
  Frame stat_reply = make(MsgType::kEntry, "a/b", 9);
  stat_reply.flags = kFlagDigest | kFlagHasMtime;
  stat_reply.digest = digest_of(7);
  v.push_back(stat_reply);
  v.push_back(make(MsgType::kRemove, "old.log"));
  v.push_back(make(MsgType::kMove, join_move("a", "b/c")));
  v.push_back(make(MsgType::kMkdir, "x/y"));
  v.push_back(make(MsgType::kOk, "", 1));
  v.push_back(make_error(Status::kNotFound, "no such file \"a\""));
  v.push_back(make(MsgType::kGet, std::string(kMaxNameBytes, 'n')));
  // Parallel streams: offsets travel in mtime_ns, lengths in size.
  Frame get_range = make(MsgType::kGetRange, "big.iso", 4u << 20);
  get_range.mtime_ns = std::int64_t{12} << 20;
  get_range.digest.fill(0x5a);
  v.push_back(get_range);
  Frame range = make(MsgType::kRange, "8", 4u << 20);
  range.mtime_ns = get_range.mtime_ns;
  v.push_back(range);
  Frame open = make(MsgType::kPutOpen, "big.iso", 37u << 20);
  open.flags = kFlagHasMtime | kFlagExecutable;
  open.mtime_ns = 1'700'000'000'000'000'000;
  v.push_back(open);
  v.push_back(make(MsgType::kOpened, std::string(32, 'f'), 8));
  Frame put_range = make(MsgType::kPutRange, std::string(32, 'f'), 1u << 20);
  put_range.mtime_ns = std::int64_t{36} << 20;
  v.push_back(put_range);
  v.push_back(make(MsgType::kPutCommit, std::string(32, 'f')));
  return v;
}

// Feeds `bytes` to a fresh decoder in the given pieces and returns the frame.
Frame decode_pieces(const std::vector<std::span<const std::uint8_t>>& pieces) {
  Decoder d;
  std::size_t used_total = 0;
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    const auto step = d.put(pieces[i]);
    used_total += step.consumed;
    EXPECT_NE(step.result, Result::kError) << d.error().message();
    EXPECT_EQ(step.consumed, pieces[i].size()) << "a piece of one frame must be consumed whole";
    if (i + 1 < pieces.size()) {
      EXPECT_EQ(step.result, Result::kNeedMore);
    } else {
      EXPECT_EQ(step.result, Result::kFrame);
    }
  }
  return d.frame();
}

TEST(FrameCodec, HeaderIsSixtyFourBytesPlusName) {
  EXPECT_EQ(encode(make(MsgType::kPing)).size(), 64u);
  EXPECT_EQ(encode(make(MsgType::kGet, "abc")).size(), 67u);
}

TEST(FrameCodec, FieldsAreBigEndianAtDocumentedOffsets) {
  Frame f = make(MsgType::kPut, "ab", 0x0102030405060708ull & (kMaxFileSize - 1));
  f.flags = kFlagHasMtime;
  f.mtime_ns = 0x1112131415161718;
  f.digest = digest_of(9);
  const auto b = encode(f);
  ASSERT_EQ(b.size(), 66u);
  EXPECT_EQ(std::string(b.begin(), b.begin() + 4), "FTXP");
  EXPECT_EQ(b[4], kVersion);
  EXPECT_EQ(b[5], 1);                          // kPut
  EXPECT_EQ(b[6], 0x00);                       // flags high byte
  EXPECT_EQ(b[7], 0x01);                       // flags low byte
  EXPECT_EQ(b[8] | b[9], 0);                   // status
  EXPECT_EQ(b[10], 0x00);                      // name_len high
  EXPECT_EQ(b[11], 0x02);                      // name_len low
  EXPECT_EQ(b[12] | b[13] | b[14] | b[15], 0);  // reserved
  const std::uint64_t size = f.size;
  for (int i = 0; i < 8; ++i) EXPECT_EQ(b[16 + i], static_cast<std::uint8_t>(size >> (56 - 8 * i)));
  for (int i = 0; i < 8; ++i) EXPECT_EQ(b[24 + i], 0x11 + i);
  EXPECT_EQ(0, std::memcmp(b.data() + 32, f.digest.data(), 32));
  EXPECT_EQ(b[64], 'a');
  EXPECT_EQ(b[65], 'b');
}

TEST(FrameCodec, EveryMessageTypeRoundTrips) {
  for (const Frame& f : samples()) {
    const auto bytes = encode(f);
    EXPECT_EQ(decode_pieces({bytes}), f) << to_string(f.type);
  }
}

TEST(FrameCodec, EveryMessageSplitAtEveryByteParsesIdentically) {
  for (const Frame& f : samples()) {
    if (f.name.size() > 100) continue;  // the long name gets its own byte-wise test below
    const auto bytes = encode(f);
    const std::span<const std::uint8_t> all(bytes);
    for (std::size_t cut = 1; cut < bytes.size(); ++cut) {
      EXPECT_EQ(decode_pieces({all.first(cut), all.subspan(cut)}), f) << to_string(f.type) << " cut at " << cut;
    }
  }
}

TEST(FrameCodec, OneByteAtATimeParsesIdentically) {
  for (const Frame& f : samples()) {
    const auto bytes = encode(f);
    std::vector<std::span<const std::uint8_t>> pieces;
    for (std::size_t i = 0; i < bytes.size(); ++i) pieces.emplace_back(bytes.data() + i, 1);
    EXPECT_EQ(decode_pieces(pieces), f) << to_string(f.type);
  }
}

TEST(FrameCodec, NeverConsumesPastTheFrame) {
  const Frame f = make(MsgType::kGet, "name");
  auto bytes = encode(f);
  const std::size_t frame_len = bytes.size();
  const auto next = encode(make(MsgType::kPing));
  bytes.insert(bytes.end(), next.begin(), next.end());
  Decoder d;
  const auto step = d.put(bytes);
  EXPECT_EQ(step.result, Result::kFrame);
  EXPECT_EQ(step.consumed, frame_len);
  // Feeding more after a complete frame consumes nothing until reset().
  EXPECT_EQ(d.put(std::span(bytes).subspan(frame_len)).consumed, 0u);
}

// A stream reader as the server and client use the codec: frames, and after kPut/kFile
// exactly `size` body bytes taken from the same buffer.
struct Parsed {
  std::vector<Frame> frames;
  std::vector<std::vector<std::uint8_t>> bodies;
  bool operator==(const Parsed&) const = default;
};

Parsed parse_stream(const std::vector<std::span<const std::uint8_t>>& pieces) {
  Parsed out;
  Decoder d;
  std::uint64_t body_left = 0;
  for (auto piece : pieces) {
    while (!piece.empty()) {
      if (body_left > 0) {
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(body_left, piece.size()));
        out.bodies.back().insert(out.bodies.back().end(), piece.begin(), piece.begin() + static_cast<std::ptrdiff_t>(n));
        body_left -= n;
        piece = piece.subspan(n);
        continue;
      }
      const auto step = d.put(piece);
      piece = piece.subspan(step.consumed);
      if (step.result == Result::kError) {
        ADD_FAILURE() << d.error().message();
        return out;
      }
      if (step.result == Result::kFrame) {
        out.frames.push_back(d.frame());
        if (carries_body(d.frame().type)) {
          body_left = d.frame().size;
          out.bodies.emplace_back();
        }
        d.reset();
      }
    }
  }
  EXPECT_EQ(body_left, 0u);
  EXPECT_TRUE(d.at_boundary());
  return out;
}

TEST(FrameCodec, GluedMessagesWithBodiesParseIdenticallyWhereverTheStreamIsCut) {
  // A put with its body, a get, a file reply with its body, an empty-bodied put, a ping:
  // back to back as TCP may deliver them.
  std::vector<std::uint8_t> stream;
  Parsed expected;
  auto add = [&](Frame f, std::vector<std::uint8_t> body) {
    f.size = body.size();
    encode(f, stream);
    stream.insert(stream.end(), body.begin(), body.end());
    expected.frames.push_back(f);
    if (carries_body(f.type)) expected.bodies.push_back(std::move(body));
  };
  add(make(MsgType::kPut, "a.bin"), test::random_bytes(300, 1));
  add(make(MsgType::kGet, "a.bin"), {});
  add(make(MsgType::kFile), test::random_bytes(77, 2));
  add(make(MsgType::kPut, "empty"), {});
  add(make(MsgType::kPing), {});
  add(make(MsgType::kPutRange, "id"), test::random_bytes(40, 3));  // parallel streams' bodies
  add(make(MsgType::kRange, "8"), test::random_bytes(33, 4));

  const std::span<const std::uint8_t> all(stream);
  EXPECT_EQ(parse_stream({all}), expected);
  for (std::size_t cut = 1; cut < stream.size(); ++cut) {
    ASSERT_EQ(parse_stream({all.first(cut), all.subspan(cut)}), expected) << "cut at " << cut;
  }
  // Three pieces at many cut pairs.
  for (std::size_t a = 1; a < stream.size(); a += 13) {
    for (std::size_t b = a; b < stream.size(); b += 17) {
      ASSERT_EQ(parse_stream({all.first(a), all.subspan(a, b - a), all.subspan(b)}), expected);
    }
  }
}

// --- malformed input: each yields its own error, as soon as the bytes show it

std::error_code decode_error(const std::vector<std::uint8_t>& bytes) {
  Decoder d;
  const auto step = d.put(bytes);
  if (step.result != Result::kError) return {};
  return d.error();
}

std::vector<std::uint8_t> with_byte(std::vector<std::uint8_t> b, std::size_t at, std::uint8_t v) {
  b.at(at) = v;
  return b;
}

TEST(FrameCodec, RejectsBadMagicAtTheFirstWrongByte) {
  Decoder d;
  const std::uint8_t http[] = {'G', 'E', 'T', ' '};
  const auto step = d.put(std::span(http, 1));
  EXPECT_EQ(step.result, Result::kError);
  EXPECT_EQ(d.error(), errc::bad_magic);
  const auto ping = encode(make(MsgType::kPing));
  EXPECT_EQ(decode_error(with_byte(ping, 3, 'Q')), errc::bad_magic);
}

TEST(FrameCodec, RejectsUnsupportedVersion) {
  const auto ping = encode(make(MsgType::kPing));
  EXPECT_EQ(decode_error(with_byte(ping, 4, 2)), errc::bad_version);
  EXPECT_EQ(decode_error(with_byte(ping, 4, 0)), errc::bad_version);
  // Known after five bytes, without waiting for the rest of the header.
  EXPECT_EQ(decode_error({'F', 'T', 'X', 'P', 9}), errc::bad_version);
}

TEST(FrameCodec, RejectsUnknownType) {
  const auto ping = encode(make(MsgType::kPing));
  for (const int t : {0, 15, 63, 75, 126, 128, 255}) {
    EXPECT_EQ(decode_error(with_byte(ping, 5, static_cast<std::uint8_t>(t))), errc::bad_type) << t;
  }
}

TEST(FrameCodec, RejectsUnknownFlagsAndReservedBytes) {
  const auto ping = encode(make(MsgType::kPing));
  EXPECT_EQ(decode_error(with_byte(ping, 6, 0x80)), errc::bad_flags);
  EXPECT_EQ(decode_error(with_byte(ping, 6, 0x01)), errc::bad_flags);
  for (std::size_t i = 12; i < 16; ++i) EXPECT_EQ(decode_error(with_byte(ping, i, 1)), errc::bad_reserved) << i;
}

TEST(FrameCodec, RejectsStatusThatDoesNotFitTheType) {
  const auto ping = encode(make(MsgType::kPing));
  EXPECT_EQ(decode_error(with_byte(ping, 9, 4)), errc::bad_status);
  const auto err = encode(make_error(Status::kNotFound, "x"));
  EXPECT_EQ(decode_error(with_byte(err, 9, 0)), errc::bad_status);
}

TEST(FrameCodec, RejectsOversizeNameBeforeReadingIt) {
  auto b = encode(make(MsgType::kGet));
  const std::uint16_t len = kMaxNameBytes + 1;
  b[10] = static_cast<std::uint8_t>(len >> 8);
  b[11] = static_cast<std::uint8_t>(len);
  EXPECT_EQ(decode_error(b), errc::name_too_long);  // header alone: no name bytes were sent
  b[10] = 0xFF;
  b[11] = 0xFF;
  EXPECT_EQ(decode_error(b), errc::name_too_long);
}

TEST(FrameCodec, RejectsOversizeSize) {
  auto b = encode(make(MsgType::kPut, "x"));
  for (int i = 16; i < 24; ++i) b[i] = 0xFF;
  EXPECT_EQ(decode_error(b), errc::size_too_large);
  Frame at_limit = make(MsgType::kPut, "x", kMaxFileSize);
  EXPECT_FALSE(decode_error(encode(at_limit)));
}

TEST(FrameCodec, TruncatedHeaderOrNameIsNotAFrame) {
  const auto b = encode(make(MsgType::kGet, "abcdef"));
  for (std::size_t n = 1; n < b.size(); ++n) {
    Decoder d;
    const auto step = d.put(std::span(b).first(n));
    EXPECT_EQ(step.result, Result::kNeedMore) << n;
    EXPECT_FALSE(d.at_boundary()) << "an EOF now would be inside a message";
  }
  Decoder fresh;
  EXPECT_TRUE(fresh.at_boundary());
}

TEST(FrameCodec, MoveNamesSplitAtTheOnlyNul) {
  std::string from;
  std::string to;
  ASSERT_TRUE(split_move(join_move("dir/a b", "c"), from, to));
  EXPECT_EQ(from, "dir/a b");
  EXPECT_EQ(to, "c");
  EXPECT_FALSE(split_move("no separator", from, to));
  EXPECT_FALSE(split_move(std::string("a\0b\0c", 5), from, to));
}

TEST(FrameCodec, ErrorIsStickyUntilReset) {
  Decoder d;
  const std::uint8_t junk[] = {'x'};
  EXPECT_EQ(d.put(junk).result, Result::kError);
  const auto ping = encode(make(MsgType::kPing));
  EXPECT_EQ(d.put(ping).result, Result::kError);
  d.reset();
  EXPECT_EQ(d.put(ping).result, Result::kFrame);
}

TEST(FrameCodec, ErrorCodesHaveTheirOwnCategoryAndMessages) {
  const std::error_code ec = errc::bad_magic;
  EXPECT_STREQ(ec.category().name(), "ftx.protocol");
  EXPECT_NE(ec.message().find("magic"), std::string::npos);
}

}  // namespace
}  // namespace ftx::protocol
