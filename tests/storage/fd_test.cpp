#include "storage/fd.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <vector>

namespace ftx::storage {
namespace {

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

TEST(CloseBatch, ClosesWhatItWasGivenAndNothingBetween) {
  // Runs of consecutive numbers go to close_range: a descriptor it was not given, sitting
  // between two of its own, must stay open.
  std::vector<int> mine;
  int other = -1;
  for (int i = 0; i < 9; ++i) {
    const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    if (i == 4) {
      other = fd;
    } else {
      mine.push_back(fd);
    }
  }
  {
    CloseBatch batch;
    for (const int fd : mine) batch.add(UniqueFd(fd));
    batch.add(UniqueFd());  // none: ignored
    for (const int fd : mine) EXPECT_TRUE(is_open(fd)) << "closed before its batch was: " << fd;
  }  // the destructor closes the rest
  for (const int fd : mine) EXPECT_FALSE(is_open(fd)) << fd;
  EXPECT_TRUE(is_open(other));
  ::close(other);
}

TEST(CloseBatch, HoldsFewUnderALowDescriptorLimit) {
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
  struct rlimit low = old;
  low.rlim_cur = 64;  // 64 / 16: batches of 4
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  std::vector<int> fds;
  {
    CloseBatch batch;
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &old), 0);
    for (int i = 0; i < 4; ++i) {
      fds.push_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
      ASSERT_GE(fds.back(), 0);
      batch.add(UniqueFd(fds.back()));
    }
    for (const int fd : fds) EXPECT_FALSE(is_open(fd)) << "a full batch of 4 is closed at once: " << fd;
  }
}

}  // namespace
}  // namespace ftx::storage
