// When a body is worth splicing, for either direction.
#pragma once

#include <cstdint>
#include <optional>

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

}  // namespace ktlb
