// When a body is worth splicing, and reading the chunk framing between
// spliced chunks; the same for request bodies (client -> backend) and
// response bodies (backend -> client).
#pragma once

#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ktlb/http1.h"
#include "ktlb/splice_pipe.h"

namespace ktlb {

// How many body bytes to splice next, or nullopt when the ordinary path
// (recv into a buffer, send) is cheaper. `parser` is an http1 RequestParser or
// ResponseParser that has seen every byte read so far.
//
// A chunked body qualifies by the size of its chunks, not by what is left of
// the current one: reads of 64 KiB drift slowly against chunks of about that
// size (curl sends 65524-byte chunks), so what a read leaves of a chunk is
// often small even when every chunk is large. The length may then be small
// or 0 (the framing comes next); the chunks after it are spliced whole.
template <class Parser>
std::optional<uint64_t> SpliceLength(const Parser& parser, bool content_length) {
  uint64_t left = parser.OpaqueBodyBytes();
  if (content_length) {
    if (left >= SplicePipe::kMinContentLength) return left;
    return std::nullopt;
  }
  if (parser.ChunkSize() >= SplicePipe::kMinChunk) return left;
  return std::nullopt;
}

// What ReadChunkFraming found.
struct FramingStep {
  enum Kind {
    kWaitReadable,   // poll the socket for POLLIN, then call again
    kSourceEnded,    // EOF or an error before the body ended (`error`: errno, 0 at EOF)
    kBadBody,        // the parser refused the framing
    kBodyDone,       // the body ended; `rest` holds what followed it
    kOrdinaryPath,   // a small chunk or the trailers: recv + send takes over
    kSpliceNext,     // splice `length` bytes of chunk data next
    kStopped,        // `forward` said stop (its connection is closing)
  };
  Kind kind = kWaitReadable;
  int error = 0;
  uint64_t length = 0;
  std::string rest;
};

// Reads the framing after a spliced chunk ("\r\n" + size line, at most a few
// KiB: ChunkedScanner::kMaxSizeLine) in SplicePipe::kFramingRead pieces, so
// no byte past the framing is taken from the socket. Every byte the parser
// accepts goes to `forward(std::string_view) -> bool` (the framing is
// forwarded as-is); false from it stops at once (the socket may be gone).
template <class Parser, class Forward>
FramingStep ReadChunkFraming(int fd, Parser& parser, Forward&& forward) {
  FramingStep step;
  for (;;) {
    char buf[SplicePipe::kFramingRead];
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return step;  // kWaitReadable
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      step.kind = FramingStep::kSourceEnded;
      step.error = n < 0 ? errno : 0;
      return step;
    }
    std::string_view got(buf, static_cast<size_t>(n));
    size_t consumed = 0;
    http1::ParseStatus st = parser.ParseBody(got, &consumed);
    if (st == http1::ParseStatus::kError) {
      step.kind = FramingStep::kBadBody;
      return step;
    }
    if (consumed > 0 && !forward(got.substr(0, consumed))) {
      step.kind = FramingStep::kStopped;
      return step;
    }
    if (st == http1::ParseStatus::kDone) {
      step.kind = FramingStep::kBodyDone;
      step.rest.assign(got.substr(consumed));
      return step;
    }
    std::optional<uint64_t> next = SpliceLength(parser, false);
    if (!next) {
      step.kind = FramingStep::kOrdinaryPath;
      return step;
    }
    if (*next > 0) {
      step.kind = FramingStep::kSpliceNext;
      step.length = *next;
      return step;
    }
    // Still in the CRLF and size line after a large chunk: read on.
  }
}

}  // namespace ktlb
