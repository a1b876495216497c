// Zero-copy DATA under kTLS: a Content-Length response body the upstream
// exchange splices into a pipe goes out frame by frame. nghttp2 decides each
// DATA frame (flow control, sizes) and hands it to SendPipedData, which
// writes the 9-byte header into the kTLS socket and splices the payload from
// the pipe: the body never enters userspace, and the kernel encrypts it.
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "http2_connection.h"
#include "worker.h"

namespace ktlb {

void Http2Connection::PadPipedFrame() {
  // Queued behind nothing: a piped frame starts only when the transport is
  // idle, and nothing is serialized while it is unfinished.
  std::string pad(reinterpret_cast<const char*>(piped_.header) + piped_.header_sent,
                  9 - piped_.header_sent);
  pad.append(piped_.left, '\0');
  piped_.header_sent = 9;
  piped_.left = 0;
  if (!transport_->Write(pad)) broken_ = true;
  transport_->ScheduleFlush();
}

size_t Http2Connection::PipedBytes(http2::Stream* stream) {
  return static_cast<Http2Stream*>(stream)->exchange.PipedBytes();
}

// One DATA frame of a piped body: the 9-byte header straight into the kTLS
// socket (MSG_MORE: it shares a record with the payload), then the payload
// spliced from the backend's pipe, so body bytes never enter userspace.
// Anything queued before it must be on the wire first.
int Http2Connection::SendPipedData(http2::Stream* stream, const uint8_t* framehd, size_t length) {
  auto* s = static_cast<Http2Stream*>(stream);
  const int fd = transport_->fd();
  if (piped_.stream != nullptr && piped_.stream != s) return NGHTTP2_ERR_CALLBACK_FAILURE;
  if (piped_.stream == nullptr) {
    if (!wbuf_.empty() || !transport_->send_idle()) return NGHTTP2_ERR_WOULDBLOCK;
    piped_.stream = s;
    std::memcpy(piped_.header, framehd, 9);
    piped_.header_sent = 0;
    piped_.left = length;
  }
  auto wait_writable = [&] {
    if (!poll_out_inflight_) {
      w_->loop().ArmPoll(fd, true, slot_.Tag(kPollOut), &poll_out_inflight_, &inflight_);
    }
    return NGHTTP2_ERR_WOULDBLOCK;
  };
  while (piped_.header_sent < 9) {
    ssize_t n = send(fd, piped_.header + piped_.header_sent, 9 - piped_.header_sent,
                     MSG_DONTWAIT | MSG_NOSIGNAL | MSG_MORE);
    if (n > 0) {
      piped_.header_sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EAGAIN) {
      return wait_writable();
    } else {
      return NGHTTP2_ERR_CALLBACK_FAILURE;  // the connection is gone
    }
  }
  while (piped_.left > 0) {
    long n = s->exchange.SplicePipedTo(fd, piped_.left);
    if (n > 0) {
      piped_.left -= static_cast<size_t>(n);
      s->resp_bytes += static_cast<uint64_t>(n);
      gen_->listener_metrics(listener_).bytes_spliced.Inc(static_cast<uint64_t>(n));
    } else if (n == -EAGAIN) {
      return wait_writable();
    } else {
      // The backend's body broke off (its pipe is gone): the frame is
      // finished with zeros and the stream reset after it.
      PadPipedFrame();
      piped_ = PipedFrame{};
      return 0;
    }
  }
  piped_ = PipedFrame{};
  s->progress_ms = w_->now_ms();  // progress: the send timeout counts from here
  if (backlog_since_ms_ != 0) backlog_since_ms_ = s->progress_ms;
  s->exchange.OnSinkWritable();          // room in the pipe: the backend may fill it again
  return 0;
}

}  // namespace ktlb
