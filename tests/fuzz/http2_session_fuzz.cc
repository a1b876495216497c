// Fuzzes http2::Session: nghttp2's server session with ktlb's validation,
// glitch budget and DATA production, driven the way a connection drives it
// but without sockets or upstreams.
//
// Input: byte 0 is options (how the rest is split into reads, whether the
// owner answers inside the receive callback or after Receive returns, whether
// its output "fills up", a small glitch budget / header list limit); the rest
// follows the client preface, which the target prepends. The owner answers
// every request head with a small response: status 200, a few bytes of body,
// sometimes trailers, sometimes a 103 first. After each read, Send() runs.
//
// Checked: Receive takes all or fails for good; the owner's view of open
// streams matches the session's; every head handed out validates again and
// its views stay valid through the trailers; what the session writes is whole frames
// (no frame cut short, no DATA larger than ktlb's cap, DATA only on streams
// that got a response); everything else is whatever nghttp2 and ASan/UBSan
// say.
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ktlb/http2.h"

namespace {

using ktlb::http2::Limits;
using ktlb::http2::Refusal;
using ktlb::http2::Session;
using ktlb::http2::SessionOwner;
using ktlb::http2::Stream;
namespace http1 = ktlb::http1;
namespace http2 = ktlb::http2;

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr size_t kMaxDataPayload = 16384 - 9;  // session.cc: one DATA frame per TLS record

// Reads the session's output as frames, across Send() calls.
class FrameReader {
 public:
  void Feed(std::string_view bytes, const std::map<int32_t, bool>& responded) {
    buf_.append(bytes);
    size_t at = 0;
    while (buf_.size() - at >= 9) {
      const auto u = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(buf_[at + i])); };
      const size_t len = u(0) << 16 | u(1) << 8 | u(2);
      const uint8_t type = static_cast<uint8_t>(u(3));
      const int32_t stream = static_cast<int32_t>((u(5) << 24 | u(6) << 16 | u(7) << 8 | u(8)) & 0x7fffffff);
      if (buf_.size() - at < 9 + len) break;
      if (type == NGHTTP2_DATA) {
        Check(len <= kMaxDataPayload);
        Check(stream != 0);
        auto it = responded.find(stream);
        Check(it != responded.end() && it->second);
      }
      Check(len <= 16384);  // ktlb never raises the client's SETTINGS_MAX_FRAME_SIZE use above this
      at += 9 + len;
    }
    buf_.erase(0, at);
  }
  // Between Send() calls the session never leaves half a frame.
  bool aligned() const { return buf_.empty(); }

 private:
  std::string buf_;
};

struct FuzzStream : Stream {
  http1::RequestHead head;  // kept like a connection keeps it, until the stream closes
  std::string nv_storage;
  std::vector<nghttp2_nv> nva;
  std::vector<http1::Header> trailers;
};

class Owner final : public SessionOwner {
 public:
  Owner(Session* session, uint8_t opts) : session_(session), opts_(opts) {}

  Stream* OpenStream(int32_t id) override {
    if ((opts_ & 0x40) && live_.size() >= 3) return nullptr;  // exercise REFUSED_STREAM
    auto s = std::make_unique<FuzzStream>();
    Stream* p = s.get();
    live_[id] = std::move(s);
    responded_[id] = false;
    return p;
  }

  void OnRequestHead(Stream* s) override {
    Check(s->head_done);
    Check(!s->refused);
    Check(live_.count(s->id) == 1);
    http1::RequestHead& head = static_cast<FuzzStream*>(s)->head;
    s->request.ToRequestHead(&head);
    // What ktlb forwards must stand on its own: a method, a target in
    // origin-form (or "*" / CONNECT authority), and consistent framing.
    Check(!head.method.empty());
    Check(head.method == s->request.method());
    if (!s->request.is_connect()) {
      Check(!head.target.empty());
      Check(head.target[0] == '/' || (head.target == "*" && head.method == "OPTIONS"));
    }
    Check(head.host.find('@') == std::string_view::npos);
    Check(head.body != http1::BodyKind::kContentLength || head.content_length > 0);
    Check(!(head.body != http1::BodyKind::kNone && s->request_ended));
    for (const http1::Header& h : head.headers) {
      Check(!h.name.empty() && h.name[0] != ':');
      Check(h.name != "connection" && h.name != "transfer-encoding" && h.name != "upgrade" &&
            h.name != "keep-alive" && h.name != "proxy-connection");
    }
    if (opts_ & 0x08) {
      pending_.push_back(s->id);  // answered after Receive returns
    } else {
      Answer(static_cast<FuzzStream*>(s));
    }
  }

  void OnRequestData(Stream* s, std::string_view data) override {
    Check(s->head_done && !s->refused && !s->request_ended);
    body_bytes_ += data.size();
    session_->ConsumeRequestData(s, data.size());
  }

  void OnRequestEnd(Stream* s) override {
    Check(s->request_ended);
    // The head handed out earlier still points where the request's own
    // views do: trailers did not move it (ASan reads through it too).
    const http1::RequestHead& head = static_cast<FuzzStream*>(s)->head;
    if (s->head_done) {
      Check(head.method.data() == s->request.method().data());
      Check(head.method == s->request.method() && head.target == s->request.path());
    }
    for (const http1::Header& h : s->request.trailers()) Check(!h.name.empty() && h.name[0] != ':');
  }

  void OnStreamClosed(Stream* s, uint32_t error_code) override {
    (void)error_code;
    auto it = live_.find(s->id);
    Check(it != live_.end() && it->second.get() == s);
    live_.erase(it);
  }

  bool OnOutput(std::string_view bytes) override {
    Check(!bytes.empty());
    out_.append(bytes);
    // Sometimes the connection's output "fills up" every few writes.
    return !(opts_ & 0x10) || (++writes_ % 3) != 0;
  }

  void OnRefused(Refusal r) override { Check(r != Refusal::kNone && r < Refusal::kCount); }
  void OnGlitch(http2::Glitch g, bool exhausted) override {
    (void)exhausted;
    Check(g < http2::Glitch::kCount);
  }

  // Answers heads that arrived during the last Receive, if still open.
  void AnswerPending() {
    std::vector<int32_t> ids;
    ids.swap(pending_);
    for (int32_t id : ids) {
      auto it = live_.find(id);
      if (it != live_.end() && !it->second->refused) Answer(it->second.get());
    }
  }

  void CheckStreams() const { Check(session_->open_streams() == live_.size()); }

  void Flush() {
    reader_.Feed(out_, responded_);
    out_.clear();
    Check(reader_.aligned());
  }

 private:
  void Answer(FuzzStream* s) {
    const uint32_t salt = static_cast<uint32_t>(s->id) ^ opts_;
    if (salt & 1) {
      http1::ResponseHead early;
      early.status = 103;
      early.headers.push_back({"Link", "</a.css>; rel=preload"});
      http2::BuildResponseFields(early, &s->nv_storage, &s->nva);
      session_->SubmitInterim(s, s->nva);
    }
    http1::ResponseHead head;
    head.status = 200;
    head.headers.push_back({"Content-Type", "text/plain"});
    head.headers.push_back({"Connection", "keep-alive"});
    const bool body = !(salt & 4) || s->request.method() != "HEAD";
    head.body = body ? http1::BodyKind::kChunked : http1::BodyKind::kNone;
    http2::BuildResponseFields(head, &s->nv_storage, &s->nva);
    session_->SubmitResponse(s, s->nva, body);
    responded_[s->id] = true;
    if (!body) return;
    if (salt & 2) {
      s->trailers = {{"X-Checksum", "c0ffee"}, {"Content-Length", "1"}};
      http2::BuildTrailerFields(s->trailers, &s->trailer_storage, &s->trailer_nva);
    }
    s->out.append("hello");
    session_->ResumeData(s);
    s->out.append(" h2");
    s->out_eof = true;
    session_->ResumeData(s);
  }

  Session* session_;
  uint8_t opts_;
  std::map<int32_t, std::unique_ptr<FuzzStream>> live_;
  std::map<int32_t, bool> responded_;
  std::vector<int32_t> pending_;
  std::string out_;
  FrameReader reader_;
  uint64_t body_bytes_ = 0;
  uint32_t writes_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t opts = data[0];
  std::string in(kPreface);
  in.append(reinterpret_cast<const char*>(data + 1), size - 1);

  Limits limits;
  if (opts & 0x20) {
    // Small limits so budgets and list sizes run out on small inputs.
    limits.glitch_budget = 8;
    limits.max_header_list_size = 256;
    limits.max_concurrent_streams = 4;
    limits.stream_window = 1024;
    limits.connection_window = 65535;
  }

  Session session;
  Owner owner(&session, opts);
  uint64_t now = 1'000'000;
  Check(session.Start(&owner, limits, now));
  session.Send();
  owner.Flush();

  // Up to four reads, cut where the option bits say (at least the preface
  // goes whole into the first half of the input sometimes, sometimes not).
  const size_t pieces = 1 + (opts & 3);
  size_t fed = 0;
  uint32_t x = opts * 2654435761u + 1;
  for (size_t i = 0; i < pieces && fed < in.size(); ++i) {
    size_t n = in.size() - fed;
    if (i + 1 < pieces) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      n = x % (n + 1);
    }
    const std::string_view chunk(in.data() + fed, n);
    fed += n;
    const bool was_terminated = session.terminated();
    const long got = session.Receive(chunk, now);
    Check(got == -1 || got == static_cast<long>(chunk.size()));
    if (was_terminated) Check(got == static_cast<long>(chunk.size()));
    if (got < 0) {
      Check(session.terminated());
      break;
    }
    owner.AnswerPending();
    session.Send();
    // A full output is drained by the connection, then Send runs again.
    for (int k = 0; k < 64 && session.WantsWrite(); ++k) session.Send();
    owner.Flush();
    owner.CheckStreams();
    now += (opts >> 6) * 700;
  }
  session.Shutdown();
  for (int k = 0; k < 64 && session.WantsWrite(); ++k) session.Send();
  owner.Flush();
  owner.CheckStreams();
  (void)session.Done();
  session.Stop();  // before the owner's streams go
  return 0;
}
