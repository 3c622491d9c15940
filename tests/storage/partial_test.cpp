// Resume records (storage/partial.hpp) and resumable uploads (Storage, Resume::kYes).
#include "storage/partial.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "protocol/frame.hpp"
#include "storage/storage.hpp"
#include "support/test_support.hpp"

namespace ftx::storage {
namespace {

using test::random_bytes;

PartialRecord sample_record() {
  PartialRecord r;
  r.name = "isos/debian.iso";
  r.size = 5 * protocol::kChunkSize + 3;
  r.mtime_ns = 1'700'000'000'123'456'789;
  r.has_mtime = true;
  r.executable = true;
  r.digest = hash::sha256("the file");
  hash::Sha256 h;
  const auto data = random_bytes(2 * protocol::kChunkSize, 1);
  h.update(std::span(data).first(protocol::kChunkSize));
  r.before = *h.state();
  h.update(std::span(data).subspan(protocol::kChunkSize));
  r.good = *h.state();
  r.created_ns = 1;
  r.updated_ns = 2;
  return r;
}

TEST(PartialRecord, RoundTripsThroughItsBytes) {
  const auto r = sample_record();
  PartialRecord back;
  ASSERT_TRUE(decode(encode(r), back));
  EXPECT_TRUE(current_boot(back)) << "stamped with this boot's id";
  EXPECT_FALSE(current_boot(r)) << "a record without it is from no boot of ours";
  back.boot_id = r.boot_id;
  EXPECT_EQ(back, r);
}

TEST(PartialRecord, ATornOrAlteredRecordIsRefused) {
  const auto bytes = encode(sample_record());
  PartialRecord out;
  for (std::size_t cut = 0; cut < bytes.size(); cut += 7) {
    EXPECT_FALSE(decode(std::span(bytes).first(cut), out)) << "cut at " << cut;
  }
  for (std::size_t i = 0; i < bytes.size(); i += 5) {
    auto bad = bytes;
    bad[i] ^= 0x10;
    EXPECT_FALSE(decode(bad, out)) << "byte " << i;
  }
}

TEST(PartialRecord, OffsetsMustDescribeAPrefixAtBlockBoundaries) {
  auto r = sample_record();
  PartialRecord out;
  r.good.bytes = r.size + 64;  // past the end
  EXPECT_FALSE(decode(encode(r), out));
  r = sample_record();
  r.good.bytes += 1;  // not at a block boundary
  EXPECT_FALSE(decode(encode(r), out));
}

TEST(PartialRecord, SavedAndLoadedThroughAFile) {
  test::TempDir dir;
  const auto path = dir / "rec";
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT, 0600));
  PartialRecord out;
  EXPECT_EQ(load_record(fd.get(), out), errc::bad_record) << "an empty file holds no record";
  auto r = sample_record();
  ASSERT_FALSE(save_record(fd.get(), r));
  ASSERT_FALSE(load_record(fd.get(), out));
  r.boot_id = out.boot_id;
  EXPECT_EQ(out, r);
  advance(r, hash::State{r.good.words, r.good.bytes + protocol::kChunkSize});
  EXPECT_EQ(r.before.bytes, 2 * protocol::kChunkSize) << "the old good state becomes the one before";
  ASSERT_FALSE(save_record(fd.get(), r));  // rewritten in place, same length
  ASSERT_FALSE(load_record(fd.get(), out));
  EXPECT_EQ(out, r);
}

TEST(PartialRecord, HeldIntervalsMergeWhenTheyOverlapOrTouch) {
  PartialRecord r;
  r.size = 100;
  add_held(r, 10, 20);
  add_held(r, 40, 50);
  add_held(r, 30, 35);
  using V = std::vector<std::pair<std::uint64_t, std::uint64_t>>;
  EXPECT_EQ(r.held, (V{{10, 20}, {30, 35}, {40, 50}}));
  add_held(r, 20, 30);  // touches both neighbours
  EXPECT_EQ(r.held, (V{{10, 35}, {40, 50}}));
  add_held(r, 0, 12);
  add_held(r, 45, 60);
  add_held(r, 12, 14);  // inside
  EXPECT_EQ(r.held, (V{{0, 35}, {40, 60}}));
  EXPECT_EQ(good_bytes(r), 55u);
  PartialRecord back;
  ASSERT_TRUE(decode(encode(r), back));
  EXPECT_EQ(back.held, r.held);
}

TEST(PartialRecord, BeyondItsLimitARecordForgetsTheShortestIntervals) {
  PartialRecord r;
  r.size = 10 * kMaxHeld;
  for (std::uint64_t i = 0; i < kMaxHeld; ++i) add_held(r, 10 * i, 10 * i + 2);
  add_held(r, 10 * kMaxHeld - 5, 10 * kMaxHeld);  // one more, longer: a short one goes
  ASSERT_EQ(r.held.size(), kMaxHeld);
  EXPECT_EQ(r.held.back(), std::make_pair(10 * kMaxHeld - 5, 10 * kMaxHeld));
  EXPECT_TRUE(std::is_sorted(r.held.begin(), r.held.end()));
  PartialRecord back;
  EXPECT_TRUE(decode(encode(r), back));
}

TEST(PartialRecord, IntervalsOutsideTheFileOrOutOfOrderAreRefused) {
  PartialRecord out;
  PartialRecord r;
  r.size = 100;
  r.held = {{0, 101}};
  EXPECT_FALSE(decode(encode(r), out)) << "past the end";
  r.held = {{50, 60}, {10, 20}};
  EXPECT_FALSE(decode(encode(r), out)) << "not sorted";
  r.held = {{10, 20}, {20, 30}};
  EXPECT_FALSE(decode(encode(r), out)) << "touching: add_held would have merged them";
  r.held = {{10, 10}};
  EXPECT_FALSE(decode(encode(r), out)) << "empty";
}

class ResumableUpload : public ::testing::Test {
 protected:
  std::filesystem::path root() const { return dir_ / "root"; }
  std::filesystem::path staging() const { return root() / std::string(kStagingDir); }

  // Begins a resumable upload of data_ as "f.bin" and writes [from, to) of it.
  Upload begin_and_write(Storage& s, std::uint64_t to, std::error_code* begin_ec = nullptr) {
    Upload up;
    const auto ec = s.begin_upload("f.bin", data_.size(), mtime_, false, Resume::kYes, up);
    if (begin_ec != nullptr) *begin_ec = ec;
    if (ec) return up;
    const auto from = up.written();
    EXPECT_FALSE(up.write(std::span(data_).subspan(from, to - from)));
    return up;
  }

  test::TempDir dir_;
  std::vector<std::uint8_t> data_ = random_bytes(5 * protocol::kChunkSize + 1000, 3);
  std::optional<std::int64_t> mtime_ = 1'600'000'000'000'000'000;
};

TEST_F(ResumableUpload, AnInterruptedUploadContinuesFromItsLastWholeChunkAcrossARestart) {
  const std::uint64_t cut = 2 * protocol::kChunkSize + 4321;  // mid-chunk
  {
    Storage s(root());
    auto up = begin_and_write(s, cut);
    ASSERT_NE(up.record(), nullptr);
    EXPECT_EQ(up.record()->good.bytes, 2 * protocol::kChunkSize);
  }  // dropped connection: kept
  EXPECT_EQ(test::staging_files(staging()).size(), 2u) << "data and record";
  Storage again(root());  // a restart keeps it
  const auto partials = again.list_partials();
  ASSERT_EQ(partials.size(), 1u);
  EXPECT_EQ(partials[0].name, "f.bin");
  EXPECT_EQ(partials[0].received, 2 * protocol::kChunkSize);
  EXPECT_EQ(partials[0].size, data_.size());

  Upload up;
  ASSERT_FALSE(again.begin_upload("f.bin", data_.size(), mtime_, false, Resume::kYes, up));
  ASSERT_NE(up.record(), nullptr);
  EXPECT_EQ(up.written(), 2 * protocol::kChunkSize) << "the bytes past the last checkpoint are cut off";
  // The state handed to the client is the SHA-256 state of exactly that prefix.
  hash::Sha256 h;
  h.update(std::span(data_).first(2 * protocol::kChunkSize));
  EXPECT_EQ(up.record()->good, *h.state());
  EXPECT_EQ(up.record()->before.bytes, protocol::kChunkSize);
  ASSERT_FALSE(up.write(std::span(data_).subspan(up.written())));
  ASSERT_FALSE(up.commit(hash::sha256(data_), mtime_));
  EXPECT_EQ(test::read_file(root() / "f.bin"), data_);
  EXPECT_TRUE(test::staging_files(staging()).empty());
  EXPECT_TRUE(again.list_partials().empty());
}

TEST_F(ResumableUpload, ADifferentFileUnderTheSameNameDoesNotPickItUpButReplacesIt) {
  Storage s(root());
  { auto up = begin_and_write(s, 3 * protocol::kChunkSize); }
  Upload other;  // another mtime: another file
  ASSERT_FALSE(s.begin_upload("f.bin", data_.size(), *mtime_ + 1, false, Resume::kYes, other));
  EXPECT_EQ(other.written(), 0u);
  EXPECT_EQ(test::staging_files(staging()).size(), 2u) << "the old version's partial is gone, only the new one's";
}

TEST_F(ResumableUpload, AWrongDigestAtCommitRemovesThePartial) {
  Storage s(root());
  auto up = begin_and_write(s, data_.size());
  EXPECT_EQ(up.commit(hash::sha256("not it"), mtime_), errc::digest_mismatch);
  EXPECT_FALSE(std::filesystem::exists(root() / "f.bin"));
  EXPECT_TRUE(test::staging_files(staging()).empty()) << "a partial that fails its check is not resumed";
}

TEST_F(ResumableUpload, APlainUploadOfTheSameFileDropsThePartial) {
  Storage s(root());
  { auto up = begin_and_write(s, 3 * protocol::kChunkSize); }
  ASSERT_EQ(s.list_partials().size(), 1u);
  Upload plain;  // --no-resume
  ASSERT_FALSE(s.begin_upload("f.bin", data_.size(), mtime_, false, Resume::kNo, plain));
  EXPECT_EQ(plain.record(), nullptr);
  EXPECT_TRUE(s.list_partials().empty());
}

TEST_F(ResumableUpload, LessThanOneChunkIsNotKept) {
  Storage s(root());
  { auto up = begin_and_write(s, protocol::kChunkSize - 1); }
  EXPECT_TRUE(test::staging_files(staging()).empty());
}

TEST_F(ResumableUpload, OneInProgressIsBusyForASecondConnection) {
  Storage s(root());
  auto first = begin_and_write(s, protocol::kChunkSize);
  Upload second;
  EXPECT_EQ(s.begin_upload("f.bin", data_.size(), mtime_, false, Resume::kYes, second), errc::partial_busy);
  EXPECT_EQ(s.expire_partials(std::chrono::seconds(0)), 0u) << "one in progress never expires";
}

TEST_F(ResumableUpload, IdlePartialsExpireAndStrayFilesGoWithThem) {
  Storage s(root());
  { auto up = begin_and_write(s, 2 * protocol::kChunkSize); }
  test::write_file(staging() / "partial" / "0123.part", std::string("stray"));  // no record
  EXPECT_EQ(s.expire_partials(std::chrono::hours(1)), 1u) << "only the stray file goes";
  EXPECT_EQ(s.list_partials().size(), 1u);
  EXPECT_EQ(s.expire_partials(std::chrono::seconds(0)), 1u);
  EXPECT_TRUE(s.list_partials().empty());
  EXPECT_TRUE(test::staging_files(staging()).empty());
}

// Parallel uploads (put -P): kept with their verified intervals, continued by the same
// source only, and never mixed up with a sequential upload of the same file.
TEST_F(ResumableUpload, AParallelUploadIsKeptWithItsIntervalsAndContinuedByTheSameSource) {
  const auto source = hash::sha256("machine/path/inode");
  const auto whole = hash::sha256(data_);
  const std::uint64_t c = protocol::kChunkSize;
  {
    Storage s(root());
    Upload up;
    EXPECT_EQ(s.begin_parallel_upload("f.bin", data_.size(), mtime_, false, source, std::nullopt, up),
              errc::no_partial)
        << "a look-up makes nothing";
    EXPECT_TRUE(test::staging_files(staging()).empty());
    ASSERT_FALSE(s.begin_parallel_upload("f.bin", data_.size(), mtime_, false, source, whole, up));
    ASSERT_NE(up.record(), nullptr);
    EXPECT_TRUE(up.record()->held.empty());
    for (const std::uint64_t off : {std::uint64_t{0}, 3 * c}) {
      ASSERT_FALSE(up.write_at(off, std::span(data_).subspan(off, c)));
      up.record_range(off, off + c);
    }
    ASSERT_FALSE(up.write_at(c, std::span(data_).subspan(c, c)));  // written, never verified: not recorded
  }  // the last connection went: kept
  Storage again(root());
  ASSERT_EQ(again.list_partials().size(), 1u);
  EXPECT_EQ(again.list_partials()[0].received, 2 * c);
  // Kept, it occupies the verified bytes only (the unverified chunk and the preallocated
  // rest were given back), where the filesystem can punch holes.
  const auto allocated = [&] {
    std::uint64_t bytes = 0;
    for (const auto& e : std::filesystem::directory_iterator(staging() / "partial")) {
      struct stat st {};
      if (e.path().extension() == ".part" && ::stat(e.path().c_str(), &st) == 0) bytes = st.st_blocks * 512ull;
    }
    return bytes;
  };
  EXPECT_LE(allocated(), 2 * c + 64 * 1024);

  Upload other;
  EXPECT_EQ(again.begin_parallel_upload("f.bin", data_.size(), mtime_, false, hash::sha256("another machine"),
                                        std::nullopt, other),
            errc::no_partial)
      << "another source";

  Upload up;
  ASSERT_FALSE(again.begin_parallel_upload("f.bin", data_.size(), mtime_, false, source, std::nullopt, up));
  ASSERT_NE(up.record(), nullptr);
  using V = std::vector<std::pair<std::uint64_t, std::uint64_t>>;
  EXPECT_EQ(up.record()->held, (V{{0, c}, {3 * c, 4 * c}}));
  EXPECT_GE(allocated(), data_.size()) << "continued, it takes its whole size again";
  EXPECT_EQ(up.record()->digest, whole) << "the SHA-256 the first attempt announced";
  std::vector<std::uint8_t> back(c);
  ASSERT_FALSE(up.read_at(3 * c, back));
  EXPECT_TRUE(std::equal(back.begin(), back.end(), data_.begin() + 3 * c));
  for (std::uint64_t off = c; off < data_.size(); off += c) {
    if (off == 3 * c) continue;
    const auto n = std::min<std::uint64_t>(c, data_.size() - off);
    ASSERT_FALSE(up.write_at(off, std::span(data_).subspan(off, n)));
    up.record_range(off, off + n);
  }
  ASSERT_FALSE(up.commit_written(whole, mtime_));
  EXPECT_EQ(test::read_file(root() / "f.bin"), data_);
  EXPECT_TRUE(test::staging_files(staging()).empty()) << "data and record gone";
}

TEST_F(ResumableUpload, ASequentialUploadOfTheSameFileStartsOverAndDropsAParallelOne) {
  const auto source = hash::sha256("machine/path/inode");
  Storage s(root());
  {
    Upload up;
    ASSERT_FALSE(s.begin_parallel_upload("f.bin", data_.size(), mtime_, false, source, hash::sha256(data_), up));
    ASSERT_FALSE(up.write_at(0, std::span(data_).first(protocol::kChunkSize)));
    up.record_range(0, protocol::kChunkSize);
  }
  ASSERT_EQ(s.list_partials().size(), 1u);
  Upload plain;
  ASSERT_FALSE(s.begin_upload("f.bin", data_.size(), mtime_, false, Resume::kYes, plain, nullptr, source));
  EXPECT_EQ(plain.written(), 0u) << "intervals are no prefix with a hash state: not continued";
  plain.abort();
  EXPECT_TRUE(s.list_partials().empty()) << "a new upload of the name drops what older ones kept";
}

TEST_F(ResumableUpload, AParallelUploadHoldingLessThanAChunkIsNotKept) {
  Storage s(root());
  {
    Upload up;
    ASSERT_FALSE(s.begin_parallel_upload("f.bin", data_.size(), mtime_, false, hash::sha256("src"),
                                         hash::sha256(data_), up));
    const std::uint64_t last = 5 * protocol::kChunkSize;  // the 1000-byte tail range
    ASSERT_FALSE(up.write_at(last, std::span(data_).subspan(last)));
    up.record_range(last, data_.size());
  }
  EXPECT_TRUE(s.list_partials().empty());
  EXPECT_TRUE(test::staging_files(staging()).empty());
}

TEST_F(ResumableUpload, AParallelUploadWithAnotherDigestStartsOver) {
  const auto source = hash::sha256("machine/path/inode");
  Storage s(root());
  {
    Upload up;
    ASSERT_FALSE(s.begin_parallel_upload("f.bin", data_.size(), mtime_, false, source, hash::sha256("v1"), up));
    ASSERT_FALSE(up.write_at(0, std::span(data_).first(protocol::kChunkSize)));
    up.record_range(0, protocol::kChunkSize);
  }
  Upload up;
  ASSERT_FALSE(s.begin_parallel_upload("f.bin", data_.size(), mtime_, false, source, hash::sha256("v2"), up));
  EXPECT_TRUE(up.record()->held.empty()) << "the bytes of another version are not offered";
  EXPECT_EQ(up.record()->digest, hash::sha256("v2"));
  Upload second;
  EXPECT_EQ(s.begin_parallel_upload("f.bin", data_.size(), mtime_, false, source, std::nullopt, second),
            errc::partial_busy);
}

}  // namespace
}  // namespace ftx::storage
