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

}  // namespace
}  // namespace ftx::storage
