#include "server/uploads.hpp"

#include <algorithm>
#include <iterator>
#include <utility>

#include "storage/fd.hpp"

namespace ftx::server {

// ---------------------------------------------------------------- RangeSet

void RangeSet::add(std::uint64_t begin, std::uint64_t end) {
  if (begin >= end) return;
  // Swallow every range that overlaps or touches [begin, end), then insert the union.
  auto it = ranges_.upper_bound(begin);
  if (it != ranges_.begin()) {
    auto prev = std::prev(it);
    if (prev->second >= begin) it = prev;
  }
  while (it != ranges_.end() && it->first <= end) {
    begin = std::min(begin, it->first);
    end = std::max(end, it->second);
    covered_ -= it->second - it->first;
    it = ranges_.erase(it);
  }
  ranges_.emplace(begin, end);
  covered_ += end - begin;
}

// ---------------------------------------------------------------- ParallelUpload

ParallelUpload::ParallelUpload(std::string id, storage::Upload upload, ParallelSpec spec)
    : id_(std::move(id)), spec_(std::move(spec)), upload_(std::move(upload)) {
  // A resumed upload starts with what its earlier attempts delivered.
  if (const auto* rec = upload_.record()) {
    for (const auto& [b, e] : rec->held) received_.add(b, e);
  }
}

bool ParallelUpload::over() const {
  std::lock_guard lock(mu_);
  return finished_;
}

bool ParallelUpload::begin_range() {
  std::lock_guard lock(mu_);
  if (finished_) return false;
  ++writing_;
  return true;
}

void ParallelUpload::end_range(std::uint64_t offset, std::uint64_t length, bool verified) {
  std::lock_guard lock(mu_);
  --writing_;
  if (!verified) return;
  received_.add(offset, offset + length);
  upload_.record_range(offset, offset + length);  // a resumable one remembers it
}

ParallelUpload::CommitResult ParallelUpload::commit(std::error_code& ec, std::uint64_t& missing) {
  {
    std::lock_guard lock(mu_);
    if (finished_) return CommitResult::kGone;
    missing = spec_.size - received_.covered();
    if (missing > 0 || writing_ > 0) return CommitResult::kIncomplete;
    // From here no range can start (begin_range sees finished_) and none is running, so
    // the Upload is this thread's alone.
    finished_ = true;
  }
  ec = upload_.commit_written(spec_.digest, spec_.mtime_ns, spec_.executable);
  return ec && ec != storage::errc::not_durable ? CommitResult::kFailed : CommitResult::kDone;
}

// ---------------------------------------------------------------- Lease

Lease::Lease(ParallelUploads& registry, std::shared_ptr<ParallelUpload> upload)
    : registry_(&registry), upload_(std::move(upload)) {}

Lease::~Lease() { release(); }

Lease::Lease(Lease&& o) noexcept
    : registry_(o.registry_), upload_(std::move(o.upload_)), carrying_(std::exchange(o.carrying_, false)) {}

Lease& Lease::operator=(Lease&& o) noexcept {
  if (this != &o) {
    release();
    registry_ = o.registry_;
    upload_ = std::move(o.upload_);
    carrying_ = std::exchange(o.carrying_, false);
  }
  return *this;
}

bool Lease::carry() {
  if (carrying_) return true;
  unsigned now = 0;
  {
    std::lock_guard lock(upload_->mu_);
    if (upload_->carriers_ >= registry_->cap_) return false;
    now = ++upload_->carriers_;
  }
  carrying_ = true;
  unsigned peak = registry_->peak_streams_.load();
  while (now > peak && !registry_->peak_streams_.compare_exchange_weak(peak, now)) {
  }
  return true;
}

void Lease::release() {
  if (!upload_) return;
  bool abandoned = false;
  {
    std::lock_guard lock(upload_->mu_);
    --upload_->users_;
    if (carrying_) --upload_->carriers_;
    // The last connection that knew this upload is gone, and nobody committed it: nobody
    // ever will. No new range can begin (finished_), and the staging file goes with the
    // last reference (storage::Upload's destructor), after any range still being written.
    if (upload_->users_ == 0 && !upload_->finished_) abandoned = upload_->finished_ = true;
  }
  if (abandoned) registry_->forget(upload_->id());
  upload_.reset();
  carrying_ = false;
}

// ---------------------------------------------------------------- ParallelUploads

Lease ParallelUploads::open(storage::Upload upload, ParallelSpec spec) {
  // 128 random bits: an id cannot be guessed by another client to write into this upload.
  auto up = std::make_shared<ParallelUpload>(storage::random_hex(16), std::move(upload), std::move(spec));
  up->users_ = 1;
  {
    std::lock_guard lock(mu_);
    uploads_.emplace(up->id(), up);
  }
  return Lease(*this, std::move(up));
}

std::optional<Lease> ParallelUploads::join(const std::string& id, const std::string& owner) {
  std::shared_ptr<ParallelUpload> up;
  {
    std::lock_guard lock(mu_);
    const auto it = uploads_.find(id);
    if (it == uploads_.end() || it->second->spec().owner != owner) return std::nullopt;
    up = it->second;
  }
  {
    std::lock_guard lock(up->mu_);
    if (up->finished_) return std::nullopt;  // ended between the lookup and now
    ++up->users_;
  }
  return Lease(*this, std::move(up));
}

void ParallelUploads::forget(const std::string& id) {
  std::shared_ptr<ParallelUpload> gone;  // destroyed after the lock is released
  std::lock_guard lock(mu_);
  if (const auto it = uploads_.find(id); it != uploads_.end()) {
    gone = std::move(it->second);
    uploads_.erase(it);
  }
}

std::size_t ParallelUploads::open_uploads() const {
  std::lock_guard lock(mu_);
  return uploads_.size();
}

}  // namespace ftx::server
