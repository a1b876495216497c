// Stable metric labels and response statuses for refused requests.
#include "ktlb/http1.h"

namespace ktlb::http1 {

const char* RequestErrorLabel(RequestError e) {
  switch (e) {
    case RequestError::kNone: return "none";
    case RequestError::kBadRequest: return "bad_request";
    case RequestError::kRequestLineTooLong: return "request_line_too_long";
    case RequestError::kHeadersTooLarge: return "headers_too_large";
    case RequestError::kBothContentLengthAndTransferEncoding: return "both_cl_te";
    case RequestError::kDuplicateContentLength: return "duplicate_content_length";
    case RequestError::kBadContentLength: return "bad_content_length";
    case RequestError::kBadTransferEncoding: return "bad_transfer_encoding";
    case RequestError::kObsFold: return "obs_fold";
    case RequestError::kBareCr: return "bare_cr";
    case RequestError::kBadChunk: return "bad_chunk";
    case RequestError::kBadVersion: return "bad_version";
    case RequestError::kMissingHost: return "missing_host";
    case RequestError::kBadHeader: return "bad_header";
  }
  return "unknown";
}

int RequestErrorStatus(RequestError e) {
  switch (e) {
    case RequestError::kRequestLineTooLong:
      return 414;
    case RequestError::kHeadersTooLarge:
      return 431;
    case RequestError::kBadTransferEncoding:
      // RFC 9112 6.1: a server that receives a transfer coding it does not
      // understand SHOULD respond 501. Misplaced "chunked" lands here too.
      return 501;
    case RequestError::kBadVersion:
      return 505;  // RFC 9110 15.6.6 HTTP Version Not Supported
    case RequestError::kNone:
    case RequestError::kBadRequest:
    case RequestError::kBothContentLengthAndTransferEncoding:
    case RequestError::kDuplicateContentLength:
    case RequestError::kBadContentLength:
    case RequestError::kObsFold:
    case RequestError::kBareCr:
    case RequestError::kBadChunk:
    case RequestError::kMissingHost:
    case RequestError::kBadHeader:
      return 400;
  }
  return 400;
}

}  // namespace ktlb::http1
