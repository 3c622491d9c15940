// Parallel streams (ftx put/get -P N): one file over several connections.
#include <gtest/gtest.h>
