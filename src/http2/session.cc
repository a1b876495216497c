// nghttp2 server session glue: callbacks -> SessionOwner, validation,
// abuse accounting, DATA production from the streams' buffers.
#include <algorithm>

#include "ktlb/http2.h"

namespace ktlb::http2 {
namespace {

Session* Self(void* user_data) { return static_cast<Session*>(user_data); }

std::string_view Str(const uint8_t* p, size_t n) {
  return std::string_view(reinterpret_cast<const char*>(p), n);
}

// CONTINUATION frames one header block may use before each further one
// counts as a glitch (nghttp2 itself stops a block after a few more).
constexpr uint32_t kFreeContinuations = 4;
constexpr uint32_t kFreeSettings = 2;
// WINDOW_UPDATEs a client may send per DATA frame ktlb sent, beyond a
// start-up allowance, before they count as a flood.
constexpr uint64_t kFreeWindowUpdates = 32;
constexpr uint64_t kWindowUpdatesPerData = 4;
// One DATA frame, with its 9-byte header, fits one TLS record.
constexpr size_t kMaxDataPayload = 16384 - 9;

int OnBeginFrameCb(nghttp2_session*, const nghttp2_frame_hd* hd, void* u) {
  return Self(u)->OnBeginFrame(hd);
}
int OnBeginHeadersCb(nghttp2_session*, const nghttp2_frame* f, void* u) {
  return Self(u)->OnBeginHeaders(f);
}
int OnHeaderCb(nghttp2_session*, const nghttp2_frame* f, const uint8_t* name, size_t namelen,
               const uint8_t* value, size_t valuelen, uint8_t, void* u) {
  return Self(u)->OnHeader(f, Str(name, namelen), Str(value, valuelen));
}
int OnFrameRecvCb(nghttp2_session*, const nghttp2_frame* f, void* u) {
  return Self(u)->OnFrameRecv(f);
}
int OnDataChunkCb(nghttp2_session*, uint8_t, int32_t id, const uint8_t* data, size_t len,
                  void* u) {
  return Self(u)->OnDataChunk(id, Str(data, len));
}
int OnStreamCloseCb(nghttp2_session*, int32_t id, uint32_t code, void* u) {
  return Self(u)->OnStreamClose(id, code);
}
int OnInvalidFrameCb(nghttp2_session*, const nghttp2_frame* f, int lib_error, void* u) {
  return Self(u)->OnInvalidFrame(f, lib_error);
}
int OnFrameSendCb(nghttp2_session*, const nghttp2_frame* f, void* u) {
  return Self(u)->OnFrameSend(f);
}
ssize_t SendCb(nghttp2_session*, const uint8_t* data, size_t len, int, void* u) {
  return Self(u)->Output(data, len);
}
int SendDataCb(nghttp2_session*, nghttp2_frame* f, const uint8_t* framehd, size_t length,
               nghttp2_data_source* source, void* u) {
  (void)f;
  return Self(u)->SendData(static_cast<Stream*>(source->ptr), framehd, length);
}
ssize_t ReadDataCb(nghttp2_session*, int32_t, uint8_t*, size_t length, uint32_t* flags,
                   nghttp2_data_source* source, void* u) {
  return Self(u)->ReadData(static_cast<Stream*>(source->ptr), length, flags);
}

nghttp2_session_callbacks* Callbacks() {
  static nghttp2_session_callbacks* cbs = [] {
    nghttp2_session_callbacks* c = nullptr;
    nghttp2_session_callbacks_new(&c);
    nghttp2_session_callbacks_set_on_begin_frame_callback(c, OnBeginFrameCb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(c, OnBeginHeadersCb);
    nghttp2_session_callbacks_set_on_header_callback(c, OnHeaderCb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(c, OnFrameRecvCb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(c, OnDataChunkCb);
    nghttp2_session_callbacks_set_on_stream_close_callback(c, OnStreamCloseCb);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(c, OnInvalidFrameCb);
    nghttp2_session_callbacks_set_on_frame_send_callback(c, OnFrameSendCb);
    nghttp2_session_callbacks_set_send_callback(c, SendCb);
    nghttp2_session_callbacks_set_send_data_callback(c, SendDataCb);
    return c;
  }();
  return cbs;
}

nghttp2_option* Options() {
  static nghttp2_option* opt = [] {
    nghttp2_option* o = nullptr;
    nghttp2_option_new(&o);
    // Windows reopen as backends take request bytes (ConsumeRequestData).
    nghttp2_option_set_no_auto_window_update(o, 1);
    // RequestHeaders validates, so each refusal has a reason.
    nghttp2_option_set_no_http_messaging(o, 1);
    // Queued PING/SETTINGS ACKs a client does not read stay bounded.
    nghttp2_option_set_max_outbound_ack(o, 1000);
    nghttp2_option_set_max_settings(o, 32);
    return o;
  }();
  return opt;
}

}  // namespace

void Stream::ResetStream() {
  id = 0;
  refused = head_done = request_ended = response_started = response_ended = tunnel = false;
  out.clear();
  out_off = 0;
  out_eof = out_deferred = false;
  trailer_nva.clear();
}

Session::~Session() { Stop(); }

bool Session::Start(SessionOwner* owner, const Limits& limits, uint64_t now_ms) {
  Stop();
  owner_ = owner;
  limits_ = limits;
  now_ms_ = now_ms;
  budget_.Reset(limits.glitch_budget, now_ms);
  open_streams_ = 0;
  data_frames_sent_ = window_updates_ = 0;
  continuations_ = settings_ = 0;
  terminated_ = output_full_ = false;
  if (nghttp2_session_server_new2(&ng_, Callbacks(), this, Options()) != 0) {
    ng_ = nullptr;
    return false;
  }
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, limits.stream_window},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, limits.max_header_list_size},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      // WebSocket over HTTP/2 (RFC 8441): extended CONNECT with :protocol.
      {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
  };
  nghttp2_submit_settings(ng_, NGHTTP2_FLAG_NONE, settings, sizeof(settings) / sizeof(settings[0]));
  if (limits.connection_window > 65535) {
    nghttp2_session_set_local_window_size(ng_, NGHTTP2_FLAG_NONE, 0,
                                          static_cast<int32_t>(limits.connection_window));
  }
  return true;
}

void Session::Stop() {
  if (ng_ != nullptr) nghttp2_session_del(ng_);
  ng_ = nullptr;
}

long Session::Receive(std::string_view in, uint64_t now_ms) {
  now_ms_ = now_ms;
  if (terminated_) return static_cast<long>(in.size());  // nothing more is read
  ssize_t n = nghttp2_session_mem_recv(ng_, reinterpret_cast<const uint8_t*>(in.data()), in.size());
  if (n < 0) {
    // Bad preface, a flood nghttp2 caught, or a callback failure: say so
    // if the protocol allows, then stop.
    if (n != NGHTTP2_ERR_BAD_CLIENT_MAGIC) Terminate(NGHTTP2_PROTOCOL_ERROR);
    terminated_ = true;
    return -1;
  }
  return static_cast<long>(n);
}

bool Session::Send() {
  output_full_ = false;
  return ng_ == nullptr || nghttp2_session_send(ng_) == 0;
}

bool Session::WantsWrite() const { return ng_ != nullptr && nghttp2_session_want_write(ng_) != 0; }

bool Session::Done() const {
  return ng_ == nullptr ||
         (nghttp2_session_want_read(ng_) == 0 && nghttp2_session_want_write(ng_) == 0);
}

Stream* Session::Find(int32_t id) const {
  return static_cast<Stream*>(nghttp2_session_get_stream_user_data(ng_, id));
}

void Session::Glitch(http2::Glitch g) {
  bool ok = budget_.Charge(now_ms_);
  owner_->OnGlitch(g, !ok);
  if (!ok && !terminated_) Terminate(NGHTTP2_ENHANCE_YOUR_CALM);
}

void Session::Refuse(Stream* s, Refusal r) {
  if (s->refused) return;
  s->refused = true;
  owner_->OnRefused(r);
  nghttp2_submit_rst_stream(ng_, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_PROTOCOL_ERROR);
  Glitch(Glitch::kServerReset);
}

void Session::EndRequest(Stream* s) {
  // The body is complete: its length must agree with content-length.
  if (Refusal r = s->request.OnEnd(); r != Refusal::kNone) return Refuse(s, r);
  s->request_ended = true;
  owner_->OnRequestEnd(s);
}

int Session::OnBeginFrame(const nghttp2_frame_hd* hd) {
  if (terminated_) return 0;
  if (hd->type != NGHTTP2_CONTINUATION) continuations_ = 0;
  switch (hd->type) {
    case NGHTTP2_DATA:
      if (hd->length == 0 && (hd->flags & NGHTTP2_FLAG_END_STREAM) == 0) Glitch(Glitch::kEmptyData);
      break;
    case NGHTTP2_SETTINGS:
      // The preface's SETTINGS and one change of mind are free.
      if ((hd->flags & NGHTTP2_FLAG_ACK) == 0 && ++settings_ > kFreeSettings) {
        Glitch(Glitch::kSettings);
      }
      break;
    case NGHTTP2_PING:
      if ((hd->flags & NGHTTP2_FLAG_ACK) == 0) Glitch(Glitch::kPing);
      break;
    case NGHTTP2_PRIORITY:
      Glitch(Glitch::kPriority);
      break;
    case NGHTTP2_WINDOW_UPDATE:
      if (++window_updates_ > kFreeWindowUpdates + kWindowUpdatesPerData * data_frames_sent_) {
        Glitch(Glitch::kWindowUpdate);
      }
      break;
    case NGHTTP2_CONTINUATION:
      if (++continuations_ > kFreeContinuations) Glitch(Glitch::kContinuation);
      break;
    default:
      break;
  }
  return 0;
}

int Session::OnBeginHeaders(const nghttp2_frame* frame) {
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
    // Trailers of an existing stream.
    if (Stream* s = Find(frame->hd.stream_id); s != nullptr && !s->refused) s->request.BeginTrailers();
    return 0;
  }
  Stream* s = terminated_ ? nullptr : owner_->OpenStream(frame->hd.stream_id);
  if (s == nullptr) {
    nghttp2_submit_rst_stream(ng_, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_REFUSED_STREAM);
    return 0;
  }
  s->ResetStream();
  s->id = frame->hd.stream_id;
  s->request.Reset(limits_.max_header_list_size);
  nghttp2_session_set_stream_user_data(ng_, s->id, s);
  ++open_streams_;
  return 0;
}

int Session::OnHeader(const nghttp2_frame* frame, std::string_view name, std::string_view value) {
  Stream* s = Find(frame->hd.stream_id);
  if (s == nullptr || s->refused) return 0;
  Refusal r = s->request.Add(name, value);
  if (r != Refusal::kNone) Refuse(s, r);
  return 0;
}

int Session::OnFrameRecv(const nghttp2_frame* frame) {
  const bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS: {
      Stream* s = Find(frame->hd.stream_id);
      if (s == nullptr || s->refused) return 0;
      if (!s->head_done) {
        Refusal r = s->request.FinishHead(end_stream);
        if (r != Refusal::kNone) {
          Refuse(s, r);
          return 0;
        }
        s->head_done = true;
        s->request_ended = end_stream;
        if (end_stream) s->request.OnEnd();
        owner_->OnRequestHead(s);
        return 0;
      }
      // Trailers: they end the request.
      if (!end_stream) {
        Refuse(s, Refusal::kTrailersWithoutEnd);
        return 0;
      }
      EndRequest(s);
      return 0;
    }
    case NGHTTP2_DATA: {
      Stream* s = Find(frame->hd.stream_id);
      if (s != nullptr && !s->refused && end_stream) EndRequest(s);
      return 0;
    }
    case NGHTTP2_RST_STREAM: {
      owner_->OnResetReceived(frame->rst_stream.error_code);
      Stream* s = Find(frame->hd.stream_id);
      // Cancelling a request still in progress is what Rapid Reset does
      // thousands of times a second; a finished one costs nothing.
      if (s != nullptr && !s->response_ended) Glitch(Glitch::kClientReset);
      return 0;
    }
    default:
      return 0;
  }
}

int Session::OnDataChunk(int32_t stream_id, std::string_view data) {
  Stream* s = Find(stream_id);
  if (s == nullptr || s->refused || !s->head_done) {
    // Nobody takes these bytes: give the window back at once.
    nghttp2_session_consume(ng_, stream_id, data.size());
    return 0;
  }
  if (Refusal r = s->request.OnData(data.size()); r != Refusal::kNone) {
    nghttp2_session_consume(ng_, stream_id, data.size());
    Refuse(s, r);
    return 0;
  }
  owner_->OnRequestData(s, data);
  return 0;
}

int Session::OnStreamClose(int32_t stream_id, uint32_t error_code) {
  Stream* s = Find(stream_id);
  if (s == nullptr) return 0;
  nghttp2_session_set_stream_user_data(ng_, stream_id, nullptr);
  --open_streams_;
  owner_->OnStreamClosed(s, error_code);
  return 0;
}

int Session::OnInvalidFrame(const nghttp2_frame* frame, int lib_error) {
  (void)frame;
  (void)lib_error;
  // nghttp2 answered a frame the client should not have sent (a stream
  // error it generated): the client made the server reset (MadeYouReset).
  Glitch(Glitch::kServerReset);
  return 0;
}

int Session::OnFrameSend(const nghttp2_frame* frame) {
  if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) {
    // The response is complete but the request is not: RFC 9113 8.1 lets
    // the server stop the upload with RST_STREAM(NO_ERROR), so the stream
    // does not stay open on a client that never finishes.
    Stream* s = Find(frame->hd.stream_id);
    if (s != nullptr && !s->request_ended && !s->refused && !s->tunnel) {
      s->refused = true;
      nghttp2_submit_rst_stream(ng_, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
    }
  }
  switch (frame->hd.type) {
    case NGHTTP2_DATA:
      ++data_frames_sent_;
      break;
    case NGHTTP2_RST_STREAM:
      owner_->OnResetSent(frame->rst_stream.error_code);
      break;
    case NGHTTP2_GOAWAY:
      owner_->OnGoawaySent(frame->goaway.error_code);
      break;
    default:
      break;
  }
  return 0;
}

long Session::Output(const uint8_t* data, size_t len) {
  if (output_full_) return NGHTTP2_ERR_WOULDBLOCK;
  if (!owner_->OnOutput(Str(data, len))) output_full_ = true;
  return static_cast<long>(len);
}

long Session::ReadData(Stream* s, size_t length, uint32_t* flags) {
  // Buffered bytes first, then what the owner holds in its pipe.
  const size_t buffered = s->unsent();
  const size_t avail = buffered > 0 ? buffered : owner_->PipedBytes(s);
  size_t n = std::min({length, avail, kMaxDataPayload});
  if (n == 0 && !s->out_eof) {
    s->out_deferred = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  if (n > 0) *flags |= NGHTTP2_DATA_FLAG_NO_COPY;  // SendData copies from s->out
  if (s->out_eof && n == avail && buffered == avail) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    s->response_ended = true;
    if (!s->trailer_nva.empty()) {
      // The documented way: the last DATA does not end the stream, the
      // trailer HEADERS submitted here does.
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      nghttp2_submit_trailer(ng_, s->id, s->trailer_nva.data(), s->trailer_nva.size());
      s->trailer_nva.clear();
    }
  }
  return static_cast<long>(n);
}

int Session::SendData(Stream* s, const uint8_t* framehd, size_t length) {
  if (output_full_) return NGHTTP2_ERR_WOULDBLOCK;
  if (s->unsent() == 0) {
    // ReadData offered piped bytes: the owner sends this frame itself, and
    // nothing may be serialized after it until it has.
    int rv = owner_->SendPipedData(s, framehd, length);
    if (rv == NGHTTP2_ERR_WOULDBLOCK) output_full_ = true;
    return rv;
  }
  owner_->OnOutput(Str(framehd, 9));
  if (!owner_->OnOutput(std::string_view(s->out).substr(s->out_off, length))) output_full_ = true;
  s->out_off += length;
  if (s->out_off == s->out.size()) {
    s->out.clear();
    s->out_off = 0;
  } else if (s->out_off >= 64 * 1024 && s->out_off * 2 >= s->out.size()) {
    // A backend faster than the client keeps some bytes unsent: drop what
    // went out, or the buffer would grow with the whole body.
    s->out.erase(0, s->out_off);
    s->out_off = 0;
  }
  owner_->OnResponseDataSent(s, length);
  return 0;
}

bool Session::SubmitResponse(Stream* s, const std::vector<nghttp2_nv>& nva, bool has_body) {
  s->response_started = true;
  if (!has_body) {
    s->response_ended = true;
    return nghttp2_submit_response(ng_, s->id, nva.data(), nva.size(), nullptr) == 0;
  }
  nghttp2_data_provider provider;
  provider.source.ptr = s;
  provider.read_callback = ReadDataCb;
  return nghttp2_submit_response(ng_, s->id, nva.data(), nva.size(), &provider) == 0;
}

bool Session::SubmitInterim(Stream* s, const std::vector<nghttp2_nv>& nva) {
  return nghttp2_submit_headers(ng_, NGHTTP2_FLAG_NONE, s->id, nullptr, nva.data(), nva.size(),
                                nullptr) == 0;
}

void Session::ResumeData(Stream* s) {
  if (!s->out_deferred) return;
  s->out_deferred = false;
  nghttp2_session_resume_data(ng_, s->id);
}

void Session::ResetStream(Stream* s, uint32_t code) {
  s->refused = true;
  nghttp2_submit_rst_stream(ng_, NGHTTP2_FLAG_NONE, s->id, code);
}

void Session::ConsumeRequestData(Stream* s, size_t n) {
  if (n > 0) nghttp2_session_consume(ng_, s->id, n);
}

void Session::ShutdownNotice() {
  if (terminated_) return;
  nghttp2_submit_shutdown_notice(ng_);
}

void Session::Shutdown() {
  if (terminated_) return;
  nghttp2_submit_goaway(ng_, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(ng_),
                        NGHTTP2_NO_ERROR, nullptr, 0);
}

void Session::Terminate(uint32_t code) {
  terminated_ = true;
  nghttp2_session_terminate_session(ng_, code);
}

}  // namespace ktlb::http2
