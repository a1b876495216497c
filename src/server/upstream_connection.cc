#include "upstream_connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "ktlb/sockets.h"
#include "client_connection.h"
#include "splice_policy.h"
#include "worker.h"

namespace ktlb {

namespace {
constexpr size_t kMaxClientBacklog = 512 * 1024;
// A response head and a body piece up to this size go out as one TLS record.
constexpr size_t kCoalesceMax = 16 * 1024;
}

uint64_t UpstreamConnection::Tag(uint8_t op) const {
  return UserData{static_cast<uint8_t>(OpKind::kUpstream), op, generation, slot_index}.Pack();
}

bool UpstreamConnection::Connect(Worker* w, size_t upstream, size_t server) {
  w_ = w;
  upstream_ = upstream;
  server_ = server;
  timer_.target = this;
  out_.clear();
  sending_.clear();
  sending_off_ = 0;
  recv_inflight_ = send_inflight_ = connect_inflight_ = false;
  inflight_ = 0;
  reused_ = false;
  client_ = nullptr;
  const SocketAddress& addr = w_->config().upstreams[upstream].servers[server];
  auto fd = OpenClientSocket(addr.storage.ss_family);
  if (!fd.ok()) {
    fprintf(stderr, "ktlb: upstream: %s: %s\n", addr.text.c_str(),
            std::string(fd.status().message()).c_str());
    w_->metrics().upstreams[upstream].connect_failures.Inc();
    state_ = State::kClosed;
    w_->ReleaseUpstream(this);
    return false;
  }
  fd_ = *fd;
  state_ = State::kConnecting;
  io_uring_sqe* sqe = w_->ring().Sqe();
  io_uring_prep_connect(sqe, fd_, reinterpret_cast<const sockaddr*>(&addr.storage), addr.len);
  io_uring_sqe_set_data64(sqe, Tag(static_cast<uint8_t>(ConnOp::kConnect)));
  connect_inflight_ = true;
  ++inflight_;
  w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamConnect),
               w_->config().server.timeouts.upstream_connect_ms);
  return true;
}

void UpstreamConnection::Begin(ClientConnection* client, std::string_view request_head,
                               bool request_is_head) {
  client_ = client;
  request_is_head_ = request_is_head;
  got_bytes_ = head_done_ = resp_done_ = reusable_ = false;
  head_buf_.clear();
  scratch_.clear();
  body_seen_ = 0;
  if (!parser_) parser_.emplace();
  out_.append(request_head);
  if (state_ == State::kIdle) {
    // A parked connection already has its recv armed (it watches for the
    // backend closing); that recv now carries the response.
    reused_ = true;
    state_ = State::kActive;
    w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
                 w_->config().server.timeouts.upstream_response_ms);
    FlushSend();
    ArmRecv();
  }
  // While connecting, the head waits in out_ until OnConnect.
}

void UpstreamConnection::Send(std::string_view bytes) {
  out_.append(bytes);
  if (state_ == State::kActive) FlushSend();
}

void UpstreamConnection::ArmRecv() {
  if (recv_inflight_ || fd_ < 0) return;
  if (state_ == State::kActive && client_ != nullptr && client_->ClientBacklog() >= kMaxClientBacklog) {
    return;  // the client is slow: let the backend's window fill instead of our memory
  }
  io_uring_sqe* sqe = w_->ring().Sqe();
  io_uring_prep_recv(sqe, fd_, nullptr, w_->buffers().buf_size(), 0);
  if (!got_bytes_ || state_ == State::kIdle) {
    // The response (or, parked, anything at all) cannot be there yet: wait
    // for readiness instead of trying a receive that would fail first.
    sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
  }
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = w_->buffers().group_id();
  io_uring_sqe_set_data64(sqe, Tag(static_cast<uint8_t>(ConnOp::kRecv)));
  recv_inflight_ = true;
  ++inflight_;
}

void UpstreamConnection::FlushSend() {
  if (send_inflight_ || fd_ < 0 || state_ != State::kActive) return;
  if (sending_off_ >= sending_.size()) {
    sending_.clear();
    sending_off_ = 0;
    if (out_.empty()) return;
    sending_.swap(out_);
  }
  io_uring_sqe* sqe = w_->ring().Sqe();
  io_uring_prep_send(sqe, fd_, sending_.data() + sending_off_, sending_.size() - sending_off_,
                     MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, Tag(static_cast<uint8_t>(ConnOp::kSend)));
  send_inflight_ = true;
  ++inflight_;
}

void UpstreamConnection::OnConnect(int res) {
  connect_inflight_ = false;
  --inflight_;
  if (state_ == State::kClosed) return MaybeRelease();
  if (res < 0) {
    const SocketAddress& addr = w_->config().upstreams[upstream_].servers[server_];
    fprintf(stderr, "ktlb: upstream: connect to %s failed: %s\n", addr.text.c_str(), strerror(-res));
    w_->metrics().upstreams[upstream_].connect_failures.Inc();
    return Fail(false);
  }
  state_ = State::kActive;
  w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
               w_->config().server.timeouts.upstream_response_ms);
  FlushSend();
  ArmRecv();
}

void UpstreamConnection::OnSend(int res) {
  send_inflight_ = false;
  --inflight_;
  if (state_ == State::kClosed) return MaybeRelease();
  if (res < 0) {
    if (res == -EAGAIN || res == -EINTR) return FlushSend();
    // The backend went away; the recv side reports the details.
    w_->metrics().upstreams[upstream_].resets.Inc();
    return Fail(false);
  }
  sending_off_ += static_cast<size_t>(res);
  FlushSend();
  if (client_ != nullptr && SendBacklog() == 0) client_->OnUpstreamWritable();
}

void UpstreamConnection::OnRecv(int res, uint32_t flags) {
  recv_inflight_ = false;
  --inflight_;
  if (state_ == State::kClosed) {
    w_->buffers().RecycleFrom(flags);
    return MaybeRelease();
  }
  if (res == -ENOBUFS) {
    w_->DeferRecv(Tag(static_cast<uint8_t>(ConnOp::kRecv)));
    return;
  }
  if (state_ == State::kIdle) {
    // A parked connection heard from its backend: a close, or bytes nobody
    // asked for. Either way it is not reusable.
    w_->buffers().RecycleFrom(flags);
    w_->ForgetIdleUpstream(this);
    return CloseNow();
  }
  if (res <= 0) {
    if (head_done_ && parser_ && head_.body == http1::BodyKind::kUntilClose) {
      // EOF is how this body ends.
      resp_done_ = true;
      reusable_ = false;
      return Finish();
    }
    if (res < 0 || !got_bytes_ || head_done_) w_->metrics().upstreams[upstream_].resets.Inc();
    return Fail(false);
  }
  uint16_t bid = BufferRing::BufferId(flags);
  std::string_view data = w_->buffers().Data(bid, static_cast<uint32_t>(res));
  got_bytes_ = true;
  w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
               w_->config().server.timeouts.upstream_response_ms);
  HandleBytes(data);
  w_->buffers().Recycle(bid);
  if (state_ == State::kActive && !resp_done_ && !pipe_.active()) ArmRecv();
}

void UpstreamConnection::HandleBytes(std::string_view data) {
  while (!data.empty() && state_ == State::kActive && client_ != nullptr) {
    if (!head_done_) {
      std::string_view buf = data;
      if (!head_buf_.empty()) {
        head_buf_.append(data);
        buf = head_buf_;
      }
      head_.headers.clear();
      http1::ParseStatus st = parser_->ParseHead(buf, request_is_head_, &head_);
      if (st == http1::ParseStatus::kIncomplete) {
        if (head_buf_.empty()) head_buf_.assign(data);
        if (head_buf_.size() > 64 * 1024) {
          fprintf(stderr, "ktlb: upstream: response head over 64 KiB\n");
          return Fail(false);
        }
        return;
      }
      if (st == http1::ParseStatus::kError) {
        fprintf(stderr, "ktlb: upstream: bad response: %s\n", parser_->error_reason());
        w_->metrics().upstreams[upstream_].resets.Inc();
        return Fail(false);
      }
      // The rest of this read, past the head, is body (or the next head).
      size_t consumed_from_data =
          head_buf_.empty() ? head_.head_len : head_.head_len - (head_buf_.size() - data.size());
      // A close-delimited body forces the client connection to end with it;
      // otherwise the client side decides (its Connection header, draining).
      bool close_client = head_.body == http1::BodyKind::kUntilClose;
      client_->OnResponseHead(head_.status, close_client);
      // The head waits in scratch_ so a small body joins it in one TLS record.
      http1::BuildClientResponseHead(head_, client_->request_version_minor(),
                                     client_->closing_after_response(), &scratch_);
      data.remove_prefix(consumed_from_data);
      head_buf_.clear();
      if (head_.status < 200) {  // 1xx: the final head follows
        EmitToClient();
        if (client_ == nullptr || state_ != State::kActive) return;
        continue;
      }
      head_done_ = true;
      // An HTTP/1.0 request (see StartExchange) may leave the backend
      // expecting to close: never pool after one.
      reusable_ = head_.keep_alive && client_->request_version_minor() == 1;
      if (head_.body == http1::BodyKind::kNone) {
        resp_done_ = true;
        if (!data.empty()) reusable_ = false;  // bytes after a complete response
        EmitToClient();
        return Finish();
      }
      continue;
    }
    size_t consumed = 0;
    http1::ParseStatus st = parser_->ParseBody(data, &consumed);
    if (st == http1::ParseStatus::kError) {
      fprintf(stderr, "ktlb: upstream: bad response body: %s\n", parser_->error_reason());
      w_->metrics().upstreams[upstream_].resets.Inc();
      ClientConnection* c = client_;
      client_ = nullptr;
      CloseNow();
      c->OnUpstreamAborted();
      return;
    }
    body_seen_ += consumed;
    if (consumed > 0) {
      std::string_view piece = data.substr(0, consumed);
      if (!scratch_.empty() && scratch_.size() + piece.size() <= kCoalesceMax) {
        scratch_.append(piece);
      } else {
        EmitToClient();
        if (client_ == nullptr || state_ != State::kActive) return;
        client_->SendToClient(piece);
      }
    }
    if (client_ == nullptr || state_ != State::kActive) return;
    data.remove_prefix(consumed);
    if (st == http1::ParseStatus::kDone) {
      resp_done_ = true;
      if (!data.empty()) reusable_ = false;
      EmitToClient();
      return Finish();
    }
    if (data.empty() && client_->CanSplice()) {
      std::optional<uint64_t> n =
          SpliceLength(*parser_, head_.body == http1::BodyKind::kContentLength);
      if (n) {
        // The rest of a large body (or of a body of large chunks) goes
        // through the kernel only.
        EmitToClient();
        if (client_ == nullptr || state_ != State::kActive) return;
        return StartSplice(*n);
      }
    }
  }
  EmitToClient();
}

void UpstreamConnection::EmitToClient() {
  if (scratch_.empty()) return;
  if (client_ != nullptr) client_->SendToClient(scratch_);
  scratch_.clear();
}

void UpstreamConnection::Finish() {
  ClientConnection* c = client_;
  client_ = nullptr;
  int status = head_.status;
  DeadlineQueue::Cancel(&timer_);
  bool parked = false;
  if (reusable_ && SendBacklog() == 0 && !(c != nullptr && c->request_body_pending())) {
    state_ = State::kIdle;
    if (w_->ParkIdleUpstream(this)) {
      parked = true;
      ArmRecv();
      // An idle pooled connection holds no buffers worth keeping.
      if (sending_.capacity() > 4096 && !send_inflight_) {
        std::string().swap(sending_);
        sending_off_ = 0;
      }
    }
  }
  if (!parked) CloseNow();
  if (c != nullptr) c->OnResponseComplete(status);
}

void UpstreamConnection::Fail(bool timed_out) {
  ClientConnection* c = client_;
  client_ = nullptr;
  bool got = got_bytes_;
  bool head_done = head_done_;
  CloseNow();
  if (c == nullptr) return;
  if (head_done) {
    c->OnUpstreamAborted();
  } else {
    c->OnUpstreamFailed(timed_out, got);
  }
}

void UpstreamConnection::OnClientWritable() {
  if (state_ != State::kActive || resp_done_) return;
  if (pipe_.active()) return Pump();
  ArmRecv();
}

void UpstreamConnection::RequestBodyProgress() {
  if (state_ == State::kActive && !head_done_) {
    w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
                 w_->config().server.timeouts.upstream_response_ms);
  }
}

void UpstreamConnection::Abandon() {
  client_ = nullptr;
  CloseNow();
}

void UpstreamConnection::CloseIdle() { CloseNow(); }

void UpstreamConnection::OnDeadline(uint8_t kind) {
  auto k = static_cast<TimeoutKind>(kind);
  w_->CountTimeout(k);
  w_->metrics().upstreams[upstream_].timeouts.Inc();
  const SocketAddress& addr = w_->config().upstreams[upstream_].servers[server_];
  fprintf(stderr, "ktlb: upstream: %s timeout on %s\n", TimeoutKindLabel(k), addr.text.c_str());
  if (k == TimeoutKind::kUpstreamConnect) {
    w_->metrics().upstreams[upstream_].connect_failures.Inc();
  }
  Fail(true);
}

void UpstreamConnection::CloseNow() {
  if (state_ == State::kClosed) return;
  state_ = State::kClosed;
  DeadlineQueue::Cancel(&timer_);
  if (connect_inflight_) {
    io_uring_sqe* sqe = w_->ring().Sqe();
    io_uring_prep_cancel64(sqe, Tag(static_cast<uint8_t>(ConnOp::kConnect)), 0);
    io_uring_sqe_set_data64(sqe, UserData{static_cast<uint8_t>(OpKind::kWake), 1, 0, 0}.Pack());
  }
  if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
  MaybeRelease();
}

void UpstreamConnection::MaybeRelease() {
  if (state_ != State::kClosed || inflight_ > 0) return;
  if (pipe_.active()) {
    // A pipe with bytes of an aborted body is not reusable.
    close(pipe_.pipe_r());
    close(pipe_.pipe_w());
    pipe_.Clear();
  }
  if (fd_ >= 0) {
    // A connect still in flight is cancelled by closing only after it
    // completes, which inflight_ already waited for.
    close(fd_);
    fd_ = -1;
  }
  out_.clear();
  head_buf_.clear();
  w_->ReleaseUpstream(this);
}

}  // namespace ktlb
