// Response and trailer fields for nghttp2, from what an HTTP/1.1 backend sent.
#include <charconv>

#include "ktlb/http2.h"

namespace ktlb::http2 {
namespace {

nghttp2_nv Nv(std::string_view name, std::string_view value) {
  // The session copies names and values when a frame is submitted, so
  // *storage may be reused right after.
  return nghttp2_nv{const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(name.data())),
                    const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(value.data())),
                    name.size(), value.size(), NGHTTP2_NV_FLAG_NONE};
}

// Appends `name` lowercased (HTTP/2 field names are lowercase, RFC 9113 8.2.1).
void AppendLower(std::string* out, std::string_view name) {
  for (char c : name) out->push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
}

// Fields that never cross into HTTP/2 (RFC 9113 8.2.2), or that framed the
// HTTP/1.1 message and mean nothing in a trailer.
bool IsDroppedTrailer(std::string_view lower) {
  return lower == "connection" || lower == "keep-alive" || lower == "proxy-connection" ||
         lower == "transfer-encoding" || lower == "upgrade" || lower == "te" ||
         lower == "trailer" || lower == "content-length" || lower == "host";
}

void AppendStatus(std::string* storage, std::vector<nghttp2_nv>* nva, int status,
                  size_t reserve) {
  storage->clear();
  storage->reserve(reserve);
  nva->clear();
  char digits[4] = {'5', '0', '2', 0};
  if (status >= 100 && status <= 999) std::to_chars(digits, digits + 3, status);
  storage->append(digits, 3);
  nva->push_back(Nv(":status", std::string_view(*storage).substr(0, 3)));
}

}  // namespace

void BuildResponseFields(const http1::ResponseHead& head, std::string* storage,
                         std::vector<nghttp2_nv>* nva) {
  thread_local std::vector<const http1::Header*> fields;
  fields.clear();
  http1::EndToEndResponseFields(head, &fields);
  size_t total = 3;
  for (const http1::Header* h : fields) total += h->name.size() + h->value.size();
  // Reserved up front: the nv entries point into *storage.
  AppendStatus(storage, nva, head.status, total);
  for (const http1::Header* h : fields) {
    size_t off = storage->size();
    AppendLower(storage, h->name);
    nva->push_back(Nv(std::string_view(*storage).substr(off, h->name.size()), h->value));
  }
}

void BuildTrailerFields(const std::vector<http1::Header>& fields, std::string* storage,
                        std::vector<nghttp2_nv>* nva) {
  // Names and values both copied: trailers are submitted only when the
  // last DATA goes out, long after the backend's buffer was reused.
  size_t total = 0;
  for (const http1::Header& h : fields) total += h.name.size() + h.value.size();
  storage->clear();
  storage->reserve(total);
  nva->clear();
  for (const http1::Header& h : fields) {
    size_t off = storage->size();
    AppendLower(storage, h.name);
    std::string_view name = std::string_view(*storage).substr(off, h.name.size());
    if (IsDroppedTrailer(name)) {
      storage->resize(off);
      continue;
    }
    size_t voff = storage->size();
    storage->append(h.value);
    nva->push_back(Nv(std::string_view(*storage).substr(off, h.name.size()),
                      std::string_view(*storage).substr(voff, h.value.size())));
  }
}

void BuildErrorFields(int status, size_t body_len, uint32_t retry_after_s, std::string* storage,
                      std::vector<nghttp2_nv>* nva) {
  AppendStatus(storage, nva, status, 64);
  auto append_number = [storage](uint64_t v) {
    char buf[20];
    auto r = std::to_chars(buf, buf + sizeof(buf), v);
    size_t off = storage->size();
    storage->append(buf, static_cast<size_t>(r.ptr - buf));
    return std::string_view(*storage).substr(off);
  };
  nva->push_back(Nv("content-type", "text/plain"));
  nva->push_back(Nv("content-length", append_number(body_len)));
  if (retry_after_s != 0) nva->push_back(Nv("retry-after", append_number(retry_after_s)));
}

}  // namespace ktlb::http2
