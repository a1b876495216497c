// The bytes a connection has yet to send, in order, with the rare events that
// must happen between them.
//
// Most of the time this is one growing byte segment. kTLS adds two events that
// must keep their place in the stream: "install TLS_TX here" (everything before
// is ciphertext OpenSSL made, everything after is plaintext the kernel will
// encrypt) and "send this payload as a record of type T" (alerts and
// post-handshake messages, which need a sendmsg control message). The front
// segment is frozen while a send from it is in flight, so appends never move
// memory the kernel is reading.
#pragma once

#include <string.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ktlb {

class OutputQueue {
 public:
  enum class Kind : uint8_t { kBytes, kRecord, kInstallTx };
  struct Segment {
    Kind kind = Kind::kBytes;
    uint8_t record_type = 0;  // kRecord only
    std::string data;
    size_t off = 0;  // bytes of `data` already sent
    std::string_view unsent() const { return std::string_view(data).substr(off); }
  };

  void Append(std::string_view bytes) {
    if (bytes.empty()) return;
    // A full segment starts a new one rather than growing (a realloc would
    // copy everything queued so far, again and again for a large body).
    if (empty() || segs_->back().kind != Kind::kBytes || (segs_->size() == 1 && front_busy_) ||
        segs_->back().data.size() + bytes.size() > kSegmentMax) {
      PushSegment(Kind::kBytes, 0);
      if (bytes.size() >= kSmallSegment && segs_->back().data.capacity() < kSegmentMax) {
        // A body is streaming: size the segment once, then recycle it
        // through spares_. Small exchanges (handshakes, small responses)
        // take only what they need.
        segs_->back().data.reserve(kSegmentMax);
      }
    }
    segs_->back().data.append(bytes);
    bytes_ += bytes.size();
  }
  void AppendRecord(uint8_t type, std::string_view payload) {
    PushSegment(Kind::kRecord, type);
    segs_->back().data.assign(payload);
    bytes_ += payload.size();
  }
  // `key` (the kernel crypto info to install) travels with the marker: a
  // second rekey may be queued before the first marker is reached.
  void AppendInstallTx(std::string_view key) {
    PushSegment(Kind::kInstallTx, 0);
    segs_->back().data.assign(key);
  }

  bool empty() const { return segs_ == nullptr || segs_->empty(); }
  // Unsent payload bytes, for backpressure.
  size_t bytes() const { return bytes_; }
  Segment& front() { return segs_->front(); }
  // The front segment is being sent: appends go to a new segment.
  void set_front_busy(bool busy) { front_busy_ = busy; }
  bool front_busy() const { return front_busy_; }
  // Marks `n` bytes of the front segment sent; drops it when done.
  void Consume(size_t n) {
    Segment& f = segs_->front();
    f.off += n;
    bytes_ -= n;
    if (f.off >= f.data.size()) PopFront();
  }
  void PopFront() {
    Segment& f = segs_->front();
    if (f.kind == Kind::kInstallTx) {
      // Key material never lingers in a recycled buffer, and it was never
      // counted as bytes to send.
      explicit_bzero(f.data.data(), f.data.size());
      f.off = f.data.size();
    }
    bytes_ -= f.data.size() - f.off;
    if (spares_.size() < 2 && f.data.capacity() <= kMaxSpare) {
      f.data.clear();
      spares_.push_back(std::move(f.data));
    }
    segs_->pop_front();
  }
  void Clear() {
    while (!empty()) PopFront();
    front_busy_ = false;
  }
  // Gives memory back (idle connections should cost a few KiB).
  void Shrink() {
    if (empty()) {
      std::vector<std::string>().swap(spares_);
      segs_.reset();
    }
  }

 private:
  static constexpr size_t kSmallSegment = 16 * 1024;
  static constexpr size_t kSegmentMax = 256 * 1024;
  static constexpr size_t kMaxSpare = kSegmentMax;
  void PushSegment(Kind kind, uint8_t type) {
    Segment s;
    s.kind = kind;
    s.record_type = type;
    if (!spares_.empty()) {
      s.data = std::move(spares_.back());
      spares_.pop_back();
    }
    if (segs_ == nullptr) segs_ = std::make_unique<std::deque<Segment>>();
    segs_->push_back(std::move(s));
  }

  // A deque never moves its elements, so the segment being sent stays put
  // whatever is appended behind it. Allocated on first use, dropped when idle.
  std::unique_ptr<std::deque<Segment>> segs_;
  std::vector<std::string> spares_;
  size_t bytes_ = 0;
  bool front_busy_ = false;
};

}  // namespace ktlb
