// HTTP/2 for clients: nghttp2 server session glue.
//
// nghttp2 does the framing, HPACK and flow control. ktlb adds what a proxy
// needs on top: RFC 9113 request validation with a reason for every refusal
// (RequestHeaders, pure), a per-connection abuse budget (GlitchBudget, pure),
// and Session, which wires nghttp2's callbacks to a SessionOwner. Session does
// no I/O: received bytes go in through Receive(), frames come out through
// SessionOwner::OnOutput(). So the fuzz target drives it without sockets.
#pragma once

#include <nghttp2/nghttp2.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ktlb/config.h"
#include "ktlb/http1.h"

namespace ktlb::http2 {

// The limits are the config's own (config.h, Http2Settings: windows are
// refilled only as a stream's backend takes the bytes, the header list size
// bounds HPACK bombs, the glitch budget refills over a minute).
using Limits = Http2Settings;

// Why a request stream was refused with RST_STREAM(PROTOCOL_ERROR).
enum class Refusal : uint8_t {
  kNone = 0,
  kUppercaseName,
  kBadName,
  kBadValue,
  kConnectionHeader,   // connection, keep-alive, proxy-connection, transfer-encoding, upgrade
  kBadTe,              // te other than "trailers"
  kUnknownPseudo,
  kDuplicatePseudo,
  kPseudoAfterRegular,
  kMissingPseudo,      // :method, :scheme or :path (non-CONNECT)
  kBadPseudoValue,     // malformed :method, :path or :authority
  kHostMismatch,       // host and :authority name different hosts
  kPseudoInTrailers,
  kTrailersWithoutEnd, // a trailer HEADERS without END_STREAM
  kBadContentLength,
  kContentLengthMismatch,  // DATA disagrees with content-length
  kHeaderListTooLarge,
  kCount,
};
const char* RefusalLabel(Refusal r);

// What costs a connection some of its abuse budget.
enum class Glitch : uint8_t {
  kClientReset = 0,  // RST_STREAM of a stream still in progress (Rapid Reset)
  kServerReset,      // a stream error ktlb sent for the client's fault (MadeYouReset)
  kEmptyData,        // DATA without payload and without END_STREAM
  kSettings,
  kPing,
  kPriority,
  kWindowUpdate,     // WINDOW_UPDATEs out of proportion to the DATA sent
  kContinuation,     // CONTINUATION frames beyond a few per header block
  kCount,
};
const char* GlitchLabel(Glitch g);

// HTTP/2 error codes (RFC 9113 7) as metric labels; "unknown" past them.
inline constexpr size_t kErrorCodes = 14;
const char* ErrorCodeLabel(uint32_t code);

// A token bucket of glitches: `budget` at most, refilled at budget/60 a
// second, so a long-lived client's occasional PING or reset never adds up
// while a flood runs out within the second.
class GlitchBudget {
 public:
  void Reset(uint32_t budget, uint64_t now_ms);
  // Spends one; false once the budget is gone.
  bool Charge(uint64_t now_ms);
  uint32_t left() const { return static_cast<uint32_t>(tokens_ / kScale); }

 private:
  // Fixed point: one glitch is kScale units and the refill is exactly
  // `budget` units a millisecond (budget/60 a second), so no rounding loses
  // it however small the budget or however often Charge runs. (kScale was
  // 1000 with a refill of (budget*1000)/60000 units per ms, which truncated
  // to nothing below a budget of 60 and to 16 a second for the default 1000.)
  static constexpr uint64_t kScale = 60000;
  uint64_t tokens_ = 0;
  uint64_t max_ = 0;
  uint64_t at_ms_ = 0;
};

// One request's header block, validated field by field as nghttp2 decodes it
// (RFC 9113 8.2, 8.3). Fields are copied into one arena; the views handed
// out by ToRequestHead() point into it and live until Reset().
class RequestHeaders {
 public:
  void Reset(uint32_t max_list_size);
  // Validates and keeps one field of the request head (or of its trailers,
  // after BeginTrailers). Refusal::kNone when acceptable.
  Refusal Add(std::string_view name, std::string_view value);
  // The head is complete; `end_stream`: no body follows.
  Refusal FinishHead(bool end_stream);
  void BeginTrailers();
  // DATA payload arrived / the body ended: checked against content-length.
  Refusal OnData(size_t n);
  Refusal OnEnd();

  // The request as HTTP/1.1 sees it: method, target (:path), host
  // (:authority, or Host), the regular fields, cookies joined into one field
  // (RFC 9113 8.2.3), and framing: content-length if given, else chunked
  // when a body follows. Call once, after FinishHead.
  void ToRequestHead(http1::RequestHead* head);
  const std::vector<http1::Header>& trailers() const { return trailers_; }
  std::string_view method() const { return View(method_); }
  std::string_view path() const { return View(path_); }
  std::string_view authority() const { return View(authority_); }
  bool is_connect() const { return View(method_) == "CONNECT"; }
  // RFC 8441 extended CONNECT (:protocol set): a tunnel to be opened as an
  // HTTP/1.1 Upgrade to :protocol on the backend; ToRequestHead maps it to a
  // GET with head->upgrade and an Upgrade field.
  bool is_extended_connect() const { return is_connect() && protocol_.set; }
  std::string_view protocol() const { return View(protocol_); }
  bool has_content_length() const { return content_length_ >= 0; }

 private:
  struct Span {
    uint32_t off = 0;
    uint32_t len = 0;
    bool set = false;
  };
  struct Field {
    Span name, value;
  };
  Span Keep(std::string_view s);
  std::string_view View(Span s) const { return std::string_view(arena_).substr(s.off, s.len); }
  Refusal CheckRegular(std::string_view name, std::string_view value);

  std::string arena_;
  std::vector<Field> fields_;
  std::vector<Span> cookies_;
  std::vector<http1::Header> trailers_;
  // Trailer fields are kept apart from arena_: they arrive after
  // ToRequestHead handed out views into arena_, which must not move then.
  std::string trailer_arena_;
  std::vector<Field> trailer_fields_;
  Span method_, scheme_, authority_, path_, protocol_, host_;
  uint32_t list_size_ = 0;
  uint32_t max_list_size_ = 0;
  int64_t content_length_ = -1;
  uint64_t data_bytes_ = 0;
  bool regular_seen_ = false;
  bool in_trailers_ = false;
  bool end_stream_ = false;
  bool body_follows_ = false;  // the head came without END_STREAM
};

// Response fields for nghttp2 from an HTTP/1 response head: ":status", then
// the end-to-end fields (hop-by-hop, Transfer-Encoding and what Connection
// nominates dropped) with names lowercased into *storage.
void BuildResponseFields(const http1::ResponseHead& head, std::string* storage,
                         std::vector<nghttp2_nv>* nva);
// Trailer fields the same way (no pseudo-header).
void BuildTrailerFields(const std::vector<http1::Header>& fields, std::string* storage,
                        std::vector<nghttp2_nv>* nva);
// A small response ktlb answers itself (404, 502, 504, 501...), with a
// retry-after field when `retry_after_s` is not 0.
void BuildErrorFields(int status, size_t body_len, uint32_t retry_after_s, std::string* storage,
                      std::vector<nghttp2_nv>* nva);

// A stream as the session sees it. The owner embeds it in its own stream
// object (which carries the upstream exchange).
struct Stream {
  int32_t id = 0;
  RequestHeaders request;
  bool refused = false;       // ktlb reset it: the rest of its frames are ignored
  bool head_done = false;     // the request head went to the owner
  bool request_ended = false; // END_STREAM from the client
  bool response_started = false;
  bool response_ended = false;  // the last DATA (or trailers) is queued in nghttp2
  // An extended CONNECT tunnel (RFC 8441): END_STREAM each way is a
  // half-close, so ktlb's END_STREAM does not reset the client's side.
  bool tunnel = false;
  // The response body: bytes waiting for nghttp2's data provider.
  std::string out;
  size_t out_off = 0;
  bool out_eof = false;
  bool out_deferred = false;  // the provider said "no data yet"
  std::string trailer_storage;
  std::vector<nghttp2_nv> trailer_nva;  // sent after the last DATA, if any
  size_t unsent() const { return out.size() - out_off; }
  void ResetStream();
};

class SessionOwner {
 public:
  // A client opened stream `id`; nullptr refuses it (REFUSED_STREAM).
  virtual Stream* OpenStream(int32_t id) = 0;
  // The stream's request head is complete and valid.
  virtual void OnRequestHead(Stream* s) = 0;
  // Request body bytes; the window is reopened only by ConsumeRequestData.
  virtual void OnRequestData(Stream* s, std::string_view data) = 0;
  // The request ended (trailers, if any, are in s->request.trailers()).
  virtual void OnRequestEnd(Stream* s) = 0;
  // The stream is closed for good; the owner frees it after this call.
  virtual void OnStreamClosed(Stream* s, uint32_t error_code) = 0;
  // Serialized frames. The owner returns false to stop the session writing
  // more for now (its output is full); the bytes given are taken.
  virtual bool OnOutput(std::string_view bytes) = 0;
  // `n` response body bytes left the stream's buffer.
  virtual void OnResponseDataSent(Stream* s, size_t n) { (void)s, (void)n; }
  // Zero-copy DATA: body bytes the owner holds outside s->out (a pipe from
  // the backend), sent after s->out is empty. SendPipedData writes the
  // frame header and moves `length` payload bytes itself (a splice into a
  // kTLS socket); it returns 0, or NGHTTP2_ERR_WOULDBLOCK to be called again
  // with the same frame later.
  virtual size_t PipedBytes(Stream* s) { (void)s; return 0; }
  virtual int SendPipedData(Stream* s, const uint8_t* framehd, size_t length) {
    (void)s, (void)framehd, (void)length;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  // Accounting hooks (metrics).
  virtual void OnRefused(Refusal r) { (void)r; }
  virtual void OnGlitch(Glitch g, bool exhausted) { (void)g, (void)exhausted; }
  virtual void OnResetSent(uint32_t code) { (void)code; }
  virtual void OnResetReceived(uint32_t code) { (void)code; }
  virtual void OnGoawaySent(uint32_t code) { (void)code; }

 protected:
  ~SessionOwner() = default;
};

class Session {
 public:
  Session() = default;
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Creates the nghttp2 server session and queues ktlb's SETTINGS.
  bool Start(SessionOwner* owner, const Limits& limits, uint64_t now_ms);
  // Frees the session (streams it still has are not reported).
  void Stop();
  bool started() const { return ng_ != nullptr; }

  // Feeds bytes from the client; returns how many were taken, or -1 when the
  // connection is beyond saving (a GOAWAY is queued when the protocol allows).
  long Receive(std::string_view in, uint64_t now_ms);
  // Serializes queued frames into the owner's OnOutput until it says stop or
  // nothing is left. False: a callback failed and the session is unusable.
  bool Send();
  bool WantsWrite() const;
  // Neither side has anything more to say: the connection may close.
  bool Done() const;
  size_t open_streams() const { return open_streams_; }

  // --- responses ---
  // `has_body`: DATA follows through the stream's out buffer.
  bool SubmitResponse(Stream* s, const std::vector<nghttp2_nv>& nva, bool has_body);
  bool SubmitInterim(Stream* s, const std::vector<nghttp2_nv>& nva);
  // More bytes in s->out, or s->out_eof set.
  void ResumeData(Stream* s);
  void ResetStream(Stream* s, uint32_t code);
  // The backend took n request body bytes: reopen the windows by n.
  void ConsumeRequestData(Stream* s, size_t n);
  // The first step of a graceful close: GOAWAY(NO_ERROR) with the largest
  // stream id, so streams the client is sending right now are still taken.
  void ShutdownNotice();
  // GOAWAY(NO_ERROR) with the last stream id: streams in flight finish, no
  // new ones start.
  void Shutdown();
  // GOAWAY with `code`, then nothing more is read.
  void Terminate(uint32_t code);
  bool terminated() const { return terminated_; }

  // nghttp2 callbacks (static trampolines in session.cc call these).
  int OnBeginFrame(const nghttp2_frame_hd* hd);
  int OnBeginHeaders(const nghttp2_frame* frame);
  int OnHeader(const nghttp2_frame* frame, std::string_view name, std::string_view value);
  int OnFrameRecv(const nghttp2_frame* frame);
  int OnDataChunk(int32_t stream_id, std::string_view data);
  int OnStreamClose(int32_t stream_id, uint32_t error_code);
  int OnInvalidFrame(const nghttp2_frame* frame, int lib_error);
  int OnFrameSend(const nghttp2_frame* frame);
  long ReadData(Stream* s, size_t length, uint32_t* flags);
  int SendData(Stream* s, const uint8_t* framehd, size_t length);
  long Output(const uint8_t* data, size_t len);

 private:
  Stream* Find(int32_t id) const;
  void Refuse(Stream* s, Refusal r);
  // END_STREAM from the client (on DATA or trailers).
  void EndRequest(Stream* s);
  // Charges a glitch; when the budget runs out, GOAWAY ENHANCE_YOUR_CALM.
  void Glitch(Glitch g);

  nghttp2_session* ng_ = nullptr;
  SessionOwner* owner_ = nullptr;
  Limits limits_;
  GlitchBudget budget_;
  uint64_t now_ms_ = 0;
  size_t open_streams_ = 0;
  uint64_t data_frames_sent_ = 0;
  uint64_t window_updates_ = 0;
  uint32_t continuations_ = 0;  // in the current header block
  uint32_t settings_ = 0;       // SETTINGS frames received
  bool terminated_ = false;
  bool output_full_ = false;
};

}  // namespace ktlb::http2
