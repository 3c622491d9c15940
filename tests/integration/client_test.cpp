// The client's promises: a download replaces nothing and leaves nothing unless it was
// verified, and every failure comes back as its documented kind.

#include <gtest/gtest.h>
#include <unistd.h>

#include <future>
#include <thread>

#include "client/client.hpp"
#include "client/local_file.hpp"
#include "hash/sha256.hpp"
#include "integration/server_fixture.hpp"

namespace ftx::test {
namespace {

using protocol::Frame;
using protocol::MsgType;

// A one-connection fake server that answers the first request with `answer` and closes:
// what a corrupted, dying or foreign server would send. With `drain`, it then reads (and
// drops) whatever else comes until the client closes: a server that has every answer ready
// before the requests it answers have all arrived.
class FakeServer {
 public:
  // drain: after the answer, read (and drop) until the client closes. end_after: also
  // close the sending side first, so the client reads all of the answer and then its end
  // (without it, unread requests would make the close a reset, which may cut the answer).
  explicit FakeServer(std::vector<std::uint8_t> answer, bool drain = false, bool end_after = false)
      : acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0}) {
    thread_ = std::thread([this, answer = std::move(answer), drain, end_after] {
      asio::ip::tcp::socket s(io_);
      acceptor_.accept(s);
      protocol::Decoder d;
      std::uint8_t buf[65536];
      std::error_code ec;
      for (bool first = false; !first && !ec;) {
        const std::size_t n = s.read_some(asio::buffer(buf), ec);
        first = d.put(std::span(buf, n)).result != protocol::Decoder::Result::kNeedMore;
      }
      if (!ec) asio::write(s, asio::buffer(answer), ec);
      if (!ec && end_after) s.shutdown(asio::ip::tcp::socket::shutdown_send, ec);
      while ((drain || end_after) && !ec) s.read_some(asio::buffer(buf), ec);
    });
  }
  ~FakeServer() { thread_.join(); }
  protocol::Address address() const { return {"127.0.0.1", acceptor_.local_endpoint().port()}; }

 private:
  asio::io_context io_;
  asio::ip::tcp::acceptor acceptor_;
  std::thread thread_;
};

std::vector<std::uint8_t> frame_with_body(const Frame& f, const std::vector<std::uint8_t>& body) {
  auto out = protocol::encode(f);
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

std::vector<std::string> leftovers(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  for (const auto& n : list_dir(dir)) {
    if (n.find(".ftx-") != std::string::npos) out.push_back(n);
  }
  return out;
}

TEST(ClientDownload, CorruptDataFromTheServerIsRefusedAndTheLocalFileKept) {
  TempDir dir;
  write_file(dir / "target", std::string("precious"));
  const auto body = random_bytes(100'000, 9);
  Frame reply;
  reply.type = MsgType::kFile;
  reply.size = body.size();
  reply.digest = hash::sha256("something else");
  FakeServer fake(frame_with_body(reply, body));
  client::Client c(fake.address());
  EXPECT_EQ(failure_of([&] { c.get("x", dir / "target"); }), client::Failure::kIntegrity);
  const auto kept = read_file(dir / "target");
  EXPECT_EQ(std::string(kept.begin(), kept.end()), "precious");
  EXPECT_TRUE(leftovers(dir.path()).empty());
}

TEST(ClientDownload, ServerDyingMidBodyLeavesNothing) {
  TempDir dir;
  write_file(dir / "target", std::string("precious"));
  const auto body = random_bytes(50'000, 10);
  Frame reply;
  reply.type = MsgType::kFile;
  reply.size = body.size() * 2;  // announces more than it sends
  reply.digest = hash::sha256(body);
  FakeServer fake(frame_with_body(reply, body));
  client::Client c(fake.address());
  EXPECT_EQ(failure_of([&] { c.get("x", dir / "target"); }), client::Failure::kConnection);
  const auto kept = read_file(dir / "target");
  EXPECT_EQ(std::string(kept.begin(), kept.end()), "precious");
  EXPECT_TRUE(leftovers(dir.path()).empty());
}

TEST(ClientUpload, AServerThatHangsUpMidBodyIsAConnectionErrorNotASignal) {
  // The body of a large upload leaves by sendfile(2), which cannot say MSG_NOSIGNAL: a
  // server that answers READY and then hangs up must give Failure::kConnection (exit 3),
  // not a SIGPIPE that ends the process without a word.
  TempDir dir;
  write_file(dir / "big", random_bytes(64 * protocol::kChunkSize, 60));
  Frame ready;
  ready.type = MsgType::kReady;
  FakeServer fake(protocol::encode(ready));
  client::Client c(fake.address());
  EXPECT_EQ(failure_of([&] { c.put(dir / "big", "big"); }), client::Failure::kConnection);
}

TEST(ClientBatch, AnEarlyAnswerToALargeUploadWaitsForItsBody) {
  // A server (or anyone on a plaintext path) that answers READY and at once DONE, before
  // the body: the batch must neither report the file stored (the DONE carries no digest
  // of what was sent) nor drop the entry the sender is still working on (ASan would see
  // the use after free). It ends as a connection or protocol error.
  TempDir dir;
  write_file(dir / "big", random_bytes(3 * protocol::kChunkSize, 61));
  Frame ready;
  ready.type = MsgType::kReady;
  Frame done;
  done.type = MsgType::kDone;
  done.size = 3 * protocol::kChunkSize;  // right size, all-zero digest
  auto answer = protocol::encode(ready);
  const auto done_bytes = protocol::encode(done);
  answer.insert(answer.end(), done_bytes.begin(), done_bytes.end());
  FakeServer fake(answer);
  client::Client c(fake.address());
  std::vector<client::BatchResult> results;
  const auto failure = failure_of([&] {
    c.put_many({{dir / "big", "big"}}, {}, [&](const client::BatchResult& r) { results.push_back(r); });
  });
  EXPECT_TRUE(failure == client::Failure::kConnection || failure == client::Failure::kProtocol)
      << static_cast<int>(failure);
  for (const auto& r : results) EXPECT_TRUE(r.error) << "reported stored without a matching DONE";
}

TEST(ClientBatch, ServerDyingMidBatchIsOneConnectionErrorAndLeavesNothing) {
  // The fake server answers the first upload and then closes with a hundred still on the
  // wire: the sender's write and the receiver's read both fail; the caller sees one
  // connection error, and every file reported before it was really answered.
  TempDir dir;
  std::vector<client::BatchItem> items;
  for (int i = 0; i < 100; ++i) {
    write_file(dir / ("f" + std::to_string(i)), random_bytes(50'000, 20 + i));
    items.push_back({dir / ("f" + std::to_string(i)), "f" + std::to_string(i)});
  }
  Frame done;
  done.type = MsgType::kDone;
  done.size = 50'000;
  done.digest = hash::sha256(read_file(dir / "f0"));
  FakeServer fake(protocol::encode(done));
  client::Client c(fake.address());
  std::vector<client::BatchResult> results;
  EXPECT_EQ(failure_of([&] {
              c.put_many(items, {}, [&](const client::BatchResult& r) { results.push_back(r); });
            }),
            client::Failure::kConnection);
  ASSERT_LE(results.size(), 1u);
  if (!results.empty()) {
    EXPECT_FALSE(results[0].error);
  }

  // Downloads: the server announces a file and dies mid-body; no staging file remains.
  Frame file;
  file.type = MsgType::kFile;
  file.size = 100'000;
  FakeServer dying(frame_with_body(file, random_bytes(1000, 1)));
  client::Client d(dying.address());
  std::filesystem::create_directories(dir / "out");
  std::vector<client::BatchItem> gets{{dir / "out/a", "a"}, {dir / "out/b", "b"}};
  EXPECT_EQ(failure_of([&] { d.get_many(gets, {}, [](const client::BatchResult&) {}); }),
            client::Failure::kConnection);
  EXPECT_TRUE(list_dir(dir / "out").empty());
}

TEST(ClientBatch, AConnectionLostWhileTheSenderWaitsForRoomIsAConnectionError) {
  // The window closes after two uploads, so the sender is waiting for room when the
  // receiver finds the connection closed. The sender is then cancelled, and its
  // cancellation ("co_await: Operation aborted", not a client::Error) used to be what the
  // caller got: operator&& reports the sender's exception, whichever side failed first.
  TempDir dir;
  std::vector<client::BatchItem> items;
  for (int i = 0; i < 20; ++i) {
    write_file(dir / ("w" + std::to_string(i)), random_bytes(1000, 40 + i));
    items.push_back({dir / ("w" + std::to_string(i)), "w" + std::to_string(i)});
  }
  Frame done;
  done.type = MsgType::kDone;
  done.size = 1000;
  done.digest = hash::sha256(read_file(dir / "w0"));
  FakeServer fake(protocol::encode(done), /*drain=*/false, /*end_after=*/true);
  client::Client c(fake.address(), {}, std::chrono::seconds(10));
  client::BatchOptions opts;
  opts.window_files = 2;
  std::size_t reported = 0;
  EXPECT_EQ(failure_of([&] { c.put_many(items, opts, [&](const client::BatchResult&) { ++reported; }); }),
            client::Failure::kConnection);
  EXPECT_LE(reported, 1u);
}

TEST(ClientErrors, TheTlsHintComesOnlyBeforeTheServerAnsweredAnything) {
  // A TLS server closes on a plaintext client's first request: then the hint helps. Once
  // the server has answered, a close means something else, and the hint would mislead.
  std::string first;
  {
    FakeServer silent({}, /*drain=*/false, /*end_after=*/true);
    client::Client c(silent.address(), {}, std::chrono::seconds(10));
    try {
      c.ping();
      ADD_FAILURE() << "no answer, yet ping succeeded";
    } catch (const client::Error& e) {
      first = e.what();
    }
  }
  EXPECT_NE(first.find("add --tls"), std::string::npos) << first;
  std::string later;
  {
    Frame pong;
    pong.type = MsgType::kPong;
    FakeServer once(protocol::encode(pong), /*drain=*/false, /*end_after=*/true);
    client::Client c(once.address(), {}, std::chrono::seconds(10));
    c.ping();
    try {
      c.ping();
      ADD_FAILURE() << "the server closed, yet a second ping succeeded";
    } catch (const client::Error& e) {
      EXPECT_EQ(e.kind(), client::Failure::kConnection);
      later = e.what();
    }
  }
  EXPECT_NE(later.find("lost"), std::string::npos) << later;
  EXPECT_EQ(later.find("--tls"), std::string::npos) << later;
}

// n files of `size` random bytes each (seeds seed, seed + 1, ...) written into folder as
// prefix0, prefix1, ..., the uploads that send them, and the DONE answers of the first
// `answered` of them, in one buffer.
struct DoneAnswers {
  std::vector<client::BatchItem> puts;
  std::vector<std::uint8_t> wire;
};
DoneAnswers done_answers(const std::filesystem::path& folder, const std::string& prefix, int n, std::size_t size,
                         std::uint64_t seed, int answered) {
  DoneAnswers out;
  for (int i = 0; i < n; ++i) {
    const auto name = prefix + std::to_string(i);
    const auto data = random_bytes(size, seed + static_cast<std::uint64_t>(i));
    write_file(folder / name, data);
    out.puts.push_back({folder / name, name});
    if (i >= answered) continue;
    Frame done;
    done.type = MsgType::kDone;
    done.size = data.size();
    done.digest = hash::sha256(data);
    const auto bytes = protocol::encode(done);
    out.wire.insert(out.wire.end(), bytes.begin(), bytes.end());
  }
  return out;
}

TEST(ClientBatch, AServerShuttingDownEndsTheBatchWithItsReason) {
  // Two files answered, then the ERROR a stopping server sends before it closes: the batch
  // ends there with the server's words as a connection error (exit 3), instead of the third
  // file failing as "refused" and the rest as a lost connection.
  TempDir dir;
  auto [items, answers] = done_answers(dir.path(), "z", 10, 2000, 800, 2);
  const auto why = protocol::encode(
      protocol::make_error(protocol::Status::kShuttingDown, "server is shutting down; closing the connection"));
  answers.insert(answers.end(), why.begin(), why.end());
  FakeServer stopping(answers, /*drain=*/false, /*end_after=*/true);
  client::Client c(stopping.address(), {}, std::chrono::seconds(10));
  std::vector<client::BatchResult> results;
  std::string what;
  try {
    c.put_many(items, {}, [&](const client::BatchResult& r) { results.push_back(r); });
  } catch (const client::Error& e) {
    EXPECT_EQ(e.kind(), client::Failure::kConnection);
    what = e.what();
  }
  EXPECT_NE(what.find("server is shutting down"), std::string::npos) << what;
  ASSERT_EQ(results.size(), 2u);
  for (const auto& r : results) EXPECT_FALSE(r.error) << r.error->what();
}

// n FILE answers of `size` random bytes each (seeds seed, seed + 1, ...), in one buffer,
// and the downloads that ask for them: names prefix0, prefix1, ... saved into folder.
struct FileAnswers {
  std::vector<std::uint8_t> wire;
  std::vector<client::BatchItem> gets;
};
FileAnswers file_answers(const std::filesystem::path& folder, const std::string& prefix, int n, std::size_t size,
                         std::uint64_t seed) {
  FileAnswers out;
  for (int i = 0; i < n; ++i) {
    const auto data = random_bytes(size, seed + static_cast<std::uint64_t>(i));
    Frame file;
    file.type = MsgType::kFile;
    file.size = data.size();
    file.digest = hash::sha256(data);
    const auto bytes = frame_with_body(file, data);
    out.wire.insert(out.wire.end(), bytes.begin(), bytes.end());
    const auto name = prefix + std::to_string(i);
    out.gets.push_back({folder / name, name});
  }
  return out;
}

TEST(ClientBatch, AnswersThatOvertakeTheSenderDoNotStallTheBatch) {
  // All the answers are in the client's buffer before most requests are sent. Each time the
  // window fills, the sender flushes its last requests and, while that write is suspended,
  // the receiver takes every answer in flight; a sender that then went to sleep without
  // looking again waited for a wake-up nobody would send (put -r hung). With a window of 4
  // that happens at the second window, every run. The client's own timeout (2 s) turns a
  // stall into a failure instead of a hang.
  TempDir dir;
  const auto [items, answers] = done_answers(dir.path(), "f", 40, 4096, 300, 40);
  FakeServer eager(answers, /*drain=*/true);
  client::Client c(eager.address(), {}, std::chrono::seconds(2));
  client::BatchOptions opts;
  opts.window_files = 4;
  std::vector<client::BatchResult> results;
  c.put_many(items, opts, [&](const client::BatchResult& r) { results.push_back(r); });
  ASSERT_EQ(results.size(), items.size());
  for (std::size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].index, i);
    EXPECT_FALSE(results[i].error) << results[i].error->what();
  }

  // The same for downloads: every file's answer and body is there before the second window
  // of requests goes out.
  std::filesystem::create_directories(dir / "out");
  const auto downloads = file_answers(dir / "out", "g", 40, 4096, 400);
  FakeServer eager_files(downloads.wire, /*drain=*/true);
  client::Client d(eager_files.address(), {}, std::chrono::seconds(2));
  results.clear();
  d.get_many(downloads.gets, opts, [&](const client::BatchResult& r) { results.push_back(r); });
  ASSERT_EQ(results.size(), downloads.gets.size());
  for (std::size_t i = 0; i < results.size(); ++i) {
    EXPECT_FALSE(results[i].error) << results[i].error->what();
    EXPECT_EQ(read_file(downloads.gets[i].local), random_bytes(4096, 400 + i));
  }
}

TEST(ClientBatch, ADownloadCutOffSavesAndReportsInOrderWhatArrivedBeforeIt) {
  // 150 small files arrive whole, then the connection ends in the middle of the next: the
  // 150 are published (some of them still queued for the client's publishing thread when
  // the connection ends) and reported, in order, before get_many throws; nothing else is.
  TempDir dir;
  std::filesystem::create_directories(dir / "out");
  auto downloads = file_answers(dir / "out", "c", 150, 4096, 600);
  Frame cut;
  cut.type = MsgType::kFile;
  cut.size = 4096;
  const auto partial = frame_with_body(cut, random_bytes(1000, 1));
  downloads.wire.insert(downloads.wire.end(), partial.begin(), partial.end());
  for (int i = 150; i < 200; ++i) downloads.gets.push_back({dir / "out" / ("c" + std::to_string(i)), "c"});
  FakeServer ending(downloads.wire, /*drain=*/false, /*end_after=*/true);
  client::Client c(ending.address(), {}, std::chrono::seconds(5));
  std::vector<client::BatchResult> results;
  EXPECT_EQ(failure_of([&] { c.get_many(downloads.gets, {}, [&](const client::BatchResult& r) { results.push_back(r); }); }),
            client::Failure::kConnection);
  ASSERT_EQ(results.size(), 150u);
  for (std::size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].index, i);
    ASSERT_FALSE(results[i].error) << results[i].error->what();
    EXPECT_EQ(read_file(downloads.gets[i].local), random_bytes(4096, 600 + i)) << i;
  }
  EXPECT_EQ(list_dir(dir / "out").size(), 150u) << "no staging file, nothing past the cut";
}

TEST(ClientBatch, WhatArrivedBeforeTheServerStallsIsSavedAndReportedDuringTheStall) {
  // 150 small files arrive, then the server sends nothing until the client has reported all
  // 150 (or 10 s passed). The receiver hands what it holds to the publishing thread only when
  // that thread has nothing queued; when it had (a group still being published as the last of
  // the 150 arrived), the group that finishes must hand the rest over -- else those files
  // sit in memory, unsaved and unreported, for as long as the server stalls.
  for (int round = 0; round < 3; ++round) {
    TempDir dir;
    std::filesystem::create_directories(dir / "out");
    const auto first = file_answers(dir / "out", "s", 150, 4096, 800);
    const auto rest = file_answers(dir / "out", "r", 10, 4096, 950);
    auto gets = first.gets;
    gets.insert(gets.end(), rest.gets.begin(), rest.gets.end());
    std::promise<void> all_reported;
    bool released_by_client = false;
    asio::io_context io;
    asio::ip::tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
    std::thread server([&] {
      asio::ip::tcp::socket s(io);
      acceptor.accept(s);
      std::error_code ec;
      asio::write(s, asio::buffer(first.wire), ec);
      released_by_client = all_reported.get_future().wait_for(std::chrono::seconds(10)) == std::future_status::ready;
      if (!ec) asio::write(s, asio::buffer(rest.wire), ec);
      s.shutdown(asio::ip::tcp::socket::shutdown_send, ec);
      std::uint8_t buf[65536];
      while (!ec) s.read_some(asio::buffer(buf), ec);  // the requests, until the client closes
    });
    std::size_t reported = 0;
    {
      client::Client c({"127.0.0.1", acceptor.local_endpoint().port()}, {}, std::chrono::seconds(60));
      c.get_many(gets, {}, [&](const client::BatchResult& r) {
        EXPECT_EQ(r.index, reported);
        EXPECT_FALSE(r.error) << r.error->what();
        if (++reported == 150) all_reported.set_value();
      });
    }
    server.join();
    EXPECT_EQ(reported, gets.size());
    EXPECT_TRUE(released_by_client) << "round " << round << ": the 150 were not all reported while the server waited";
    for (std::size_t i = 0; i < 150; ++i) EXPECT_EQ(read_file(gets[i].local), random_bytes(4096, 800 + i)) << i;
  }
}

TEST(ClientBatch, AThrowingResultCallbackEndsTheBatchWithItsException) {
  TempDir dir;
  std::filesystem::create_directories(dir / "out");
  const auto downloads = file_answers(dir / "out", "t", 200, 2048, 700);
  FakeServer eager(downloads.wire, /*drain=*/true);
  client::Client c(eager.address(), {}, std::chrono::seconds(5));
  struct Stop {};
  std::size_t calls = 0;
  EXPECT_THROW(c.get_many(downloads.gets, {},
                          [&](const client::BatchResult& r) {
                            EXPECT_EQ(r.index, calls);
                            if (++calls == 70) throw Stop{};
                          }),
               Stop);
  EXPECT_EQ(calls, 70u) << "no result is reported after the callback threw";
  for (std::size_t i = 0; i < 70; ++i) EXPECT_EQ(read_file(downloads.gets[i].local), random_bytes(2048, 700 + i)) << i;
  for (const auto& name : list_dir(dir / "out")) EXPECT_EQ(name.find(".part"), std::string::npos) << name;
}

TEST(ClientBatch, AWindowOfZeroMeansOne) {
  // Library callers may pass window_files = 0; the download sender used to spin on it
  // without ever sending (the client's timeout cannot end a loop that never suspends).
  TempDir dir;
  const auto downloads = file_answers(dir.path(), "z", 3, 1000, 500);
  FakeServer eager(downloads.wire, /*drain=*/true);
  client::Client c(eager.address(), {}, std::chrono::seconds(2));
  client::BatchOptions opts;
  opts.window_files = 0;
  std::size_t ok = 0;
  c.get_many(downloads.gets, opts, [&](const client::BatchResult& r) { ok += r.error ? 0 : 1; });
  EXPECT_EQ(ok, downloads.gets.size());
}

TEST(ClientStaging, AStagingFileSitsBesideItsTargetUnderTheDocumentedName) {
  // folder_text is what a folder download compares per file instead of path objects.
  EXPECT_EQ(client::folder_text("f"), ".");
  EXPECT_EQ(client::folder_text("/x"), "/");
  EXPECT_EQ(client::folder_text("a/b/c"), "a/b");
  EXPECT_EQ(client::folder_text("a//x"), "a/");

  TempDir dir;
  std::filesystem::create_directories(dir / "sub");
  client::StagedFile staged(dir / "sub/t");
  const std::filesystem::path staging(staged.staging_path());
  EXPECT_EQ(staging.parent_path(), dir / "sub");
  const auto name = staging.filename().string();
  EXPECT_TRUE(name.starts_with(".t.ftx-") && name.ends_with(".part")) << name;
  ASSERT_EQ(::write(staged.fd(), "abc", 3), 3);
  ASSERT_FALSE(staged.commit(std::nullopt, std::nullopt));
  EXPECT_EQ(read_file(dir / "sub/t"), (std::vector<std::uint8_t>{'a', 'b', 'c'}));
  EXPECT_EQ(list_dir(dir / "sub"), std::vector<std::string>{"t"}) << "the staging name is gone";
}

TEST(ClientDownload, SomethingThatIsNotAnFtxServerIsAProtocolError) {
  const std::string http = "HTTP/1.1 400 Bad Request\r\n\r\n";
  FakeServer web({http.begin(), http.end()});
  client::Client c1(web.address());
  EXPECT_EQ(failure_of([&] { c1.get("x", "-"); }), client::Failure::kProtocol);

  Frame pong;  // well-formed, but not an answer to a get
  pong.type = MsgType::kPong;
  FakeServer confused(protocol::encode(pong));
  client::Client c2(confused.address());
  EXPECT_EQ(failure_of([&] { c2.get("x", "-"); }), client::Failure::kProtocol);
}

TEST(ClientConnect, RefusedConnectionSaysWhatToDo) {
  // Bind and close a listener to get a port that nothing listens on.
  asio::io_context io;
  asio::ip::tcp::acceptor a(io, {asio::ip::make_address("127.0.0.1"), 0});
  const auto port = a.local_endpoint().port();
  a.close();
  try {
    client::Client c({"127.0.0.1", port});
    FAIL() << "connected to a closed port";
  } catch (const client::Error& e) {
    EXPECT_EQ(e.kind(), client::Failure::kConnection);
    EXPECT_NE(std::string(e.what()).find("is 'ftx serve' running?"), std::string::npos) << e.what();
  }
}

class ClientAgainstServer : public ServerTest {};

TEST_F(ClientAgainstServer, FailuresHaveTheirDocumentedKinds) {
  client::Client c(address());
  write_file(dir_ / "local", std::string("data"));
  write_file(dir_ / "target", std::string("precious"));
  EXPECT_EQ(failure_of([&] { c.get("missing", dir_ / "target"); }), client::Failure::kNotFound);
  EXPECT_EQ(failure_of([&] { c.put(dir_ / "local", "../escape"); }), client::Failure::kRejected);
  EXPECT_EQ(failure_of([&] { c.put(dir_ / "no-such-local-file", "x"); }), client::Failure::kLocalIo);
  EXPECT_EQ(failure_of([&] { c.put(dir_.path(), "x"); }), client::Failure::kLocalIo) << "a folder is not a file";
  EXPECT_EQ(failure_of([&] { c.get("local", dir_ / "no-such-folder" / "x"); }), client::Failure::kLocalIo);
  // The connection survives refusals: the next request works.
  c.put(dir_ / "local", "local");
  EXPECT_EQ(failure_of([&] { c.put(dir_ / "local", "local/below"); }), client::Failure::kRejected);
  const auto kept = read_file(dir_ / "target");
  EXPECT_EQ(std::string(kept.begin(), kept.end()), "precious");
  EXPECT_TRUE(leftovers(dir_.path()).empty());
}

TEST_F(ClientAgainstServer, GetIntoAFolderUsesTheBaseName) {
  client::Client c(address());
  write_file(dir_ / "src", std::string("content"));
  c.put(dir_ / "src", "deep/path/name.txt");
  std::filesystem::create_directories(dir_ / "into");
  const auto r = c.get("deep/path/name.txt", dir_ / "into");
  EXPECT_EQ(r.local, dir_ / "into" / "name.txt");
  EXPECT_EQ(read_file(dir_ / "into" / "name.txt"), read_file(dir_ / "src"));
}

TEST_F(ClientAgainstServer, MtimeTravelsBothWays) {
  client::Client c(address());
  write_file(dir_ / "src", std::string("x"));
  const auto old_time = std::filesystem::file_time_type::clock::now() - std::chrono::hours(24 * 400);
  std::filesystem::last_write_time(dir_ / "src", old_time);
  c.put(dir_ / "src", "dated");
  EXPECT_EQ(std::filesystem::last_write_time(root() / "dated"), old_time);
  c.get("dated", dir_ / "back");
  EXPECT_EQ(std::filesystem::last_write_time(dir_ / "back"), old_time);
}

}  // namespace
}  // namespace ftx::test
