// Heads ktlb writes: upstream requests, client responses, its own errors.
//
// The output is always rebuilt from validated views, never copied from the
// client's bytes, so what the backend parses is canonical (CRLF line ends,
// one Content-Length, no obs-fold) whatever the client's spelling was.
#include <charconv>
#include <string>
#include <string_view>

#include "internal.h"
#include "ktlb/http1.h"

namespace ktlb::http1 {
namespace {

using internal::EqualsNoCase;
using internal::HeaderNameIsLoose;

void AppendHeader(std::string* out, std::string_view name, std::string_view value) {
  out->append(name);
  out->append(": ", 2);
  out->append(value);
  out->append("\r\n", 2);
}

void AppendUint(std::string* out, uint64_t v) {
  char buf[20];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, static_cast<size_t>(r.ptr - buf));
}

// Hop-by-hop fields (RFC 9110 7.6.1) plus the Proxy-* family. "Proxy" itself
// is the httpoxy vector: CGI turns it into HTTP_PROXY. HTTP2-Settings belongs
// to an h2c upgrade on this hop only.
bool IsHopByHop(std::string_view name) {
  if (name.size() >= 6 && HeaderNameIs(name.substr(0, 6), "proxy-")) return true;
  switch (name.size()) {
    case 2:
      return HeaderNameIs(name, "te");
    case 5:
      return HeaderNameIs(name, "proxy");
    case 7:
      return HeaderNameIs(name, "trailer") || HeaderNameIs(name, "upgrade");
    case 10:
      return HeaderNameIs(name, "connection") || HeaderNameIs(name, "keep-alive");
    case 14:
      return HeaderNameIs(name, "http2-settings");
    default:
      return false;
  }
}

// Fields through which the backend learns who the client is: only ktlb may
// set them. '_' spellings count, since CGI-style backends merge them with '-'.
bool IsForwardingHeader(std::string_view name) {
  switch (name.size()) {
    case 9:
      return HeaderNameIsLoose(name, "x-real-ip") || HeaderNameIs(name, "forwarded");
    case 15:
      return HeaderNameIsLoose(name, "x-forwarded-for");
    case 16:
      return HeaderNameIsLoose(name, "x-forwarded-host") ||
             HeaderNameIsLoose(name, "x-forwarded-port");
    case 17:
      return HeaderNameIsLoose(name, "x-forwarded-proto");
    default:
      return false;
  }
}

// The whole X-Client-Cert- family: what ktlb says of the client's
// certificate (and whatever a backend might read next to it).
bool IsClientCertHeader(std::string_view name) {
  return name.size() > 14 && HeaderNameIsLoose(name.substr(0, 14), "x-client-cert-");
}

void AppendClientCertHeaders(const ForwardingInfo& fwd, std::string* out) {
  if (!fwd.client_cert_headers) return;
  if (fwd.client_cert_verified) {
    AppendHeader(out, "X-Client-Cert-Subject", fwd.client_cert_subject);
    if (!fwd.client_cert_san.empty()) AppendHeader(out, "X-Client-Cert-SAN", fwd.client_cert_san);
    AppendHeader(out, "X-Client-Cert-Fingerprint", fwd.client_cert_fingerprint);
  }
  AppendHeader(out, "X-Client-Cert-Verified", fwd.client_cert_verified ? "SUCCESS" : "NONE");
}

// Connection may name further hop-by-hop fields, but never the ones that
// frame the message or route it: "Connection: content-length" must not strip
// Content-Length on the way to the backend.
bool MayBeNominated(std::string_view name) {
  return !HeaderNameIs(name, "content-length") && !HeaderNameIs(name, "transfer-encoding") &&
         !HeaderNameIs(name, "host");
}

// Whether any Connection field lists `name`.
bool IsNominated(const std::vector<Header>& headers, std::string_view name) {
  for (const Header& h : headers) {
    if (!HeaderNameIs(h.name, "connection")) continue;
    bool found = false;
    internal::ForEachListElement(h.value, [&](std::string_view token) {
      found = EqualsNoCase(token, name);
      return !found;
    });
    if (found) return true;
  }
  return false;
}

// Whether Connection fields name anything beyond the usual three tokens; if
// not (almost always), the per-field nomination check can be skipped.
bool HasCustomNominations(const std::vector<Header>& headers) {
  for (const Header& h : headers) {
    if (!HeaderNameIs(h.name, "connection")) continue;
    internal::ConnectionTokens t;
    t.Add(h.value);
    if (t.others) return true;
  }
  return false;
}

std::string_view StatusReason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 102: return "Processing";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
  }
}

}  // namespace

void BuildUpstreamRequestHead(const RequestHead& head, const ForwardingInfo& fwd,
                              std::string* out) {
  out->reserve(out->size() + head.head_len + 192);
  out->append(head.method);
  out->push_back(' ');
  out->append(head.target);
  // Always 1.1: the upstream connection stays pooled whatever the client spoke.
  out->append(" HTTP/1.1\r\n", 11);

  const bool custom_nominations = HasCustomNominations(head.headers);
  bool has_host = false;
  for (const Header& h : head.headers) {
    if (IsHopByHop(h.name) || IsForwardingHeader(h.name) || IsClientCertHeader(h.name)) continue;
    if (custom_nominations && MayBeNominated(h.name) && IsNominated(head.headers, h.name)) continue;
    // A server MUST ignore 100-continue from an HTTP/1.0 client (RFC 9110
    // 10.1.1); carried inside our HTTP/1.1 request it would take effect.
    if (head.version_minor == 0 && HeaderNameIs(h.name, "expect")) continue;
    if (!has_host && HeaderNameIs(h.name, "host")) has_host = true;
    AppendHeader(out, h.name, h.value);
  }
  // An HTTP/1.0 client may omit Host; an HTTP/1.1 request may not
  // (RFC 9112 3.2). The absolute-form authority (already in head.host) or the
  // SNI name is the best statement of what the client asked for.
  if (!has_host) {
    std::string_view host = head.host;
    if (host.empty() && internal::IsValidHost(fwd.sni)) host = fwd.sni;
    AppendHeader(out, "Host", host);
  }

  const bool ipv6 = fwd.client_ip.find(':') != std::string_view::npos;
  AppendHeader(out, "X-Forwarded-For", fwd.client_ip);
  AppendHeader(out, "X-Forwarded-Proto", fwd.proto);
  if (!head.host.empty()) AppendHeader(out, "X-Forwarded-Host", head.host);

  // RFC 7239: an IPv6 node is bracketed, which forces a quoted-string; a host
  // with ':' or other non-token characters is quoted too. IsValidHost already
  // excluded '"' and '\\', so no escaping is ever needed.
  out->append("Forwarded: for=", 15);
  if (fwd.client_ip.empty()) {
    out->append("unknown", 7);
  } else if (ipv6) {
    out->append("\"[", 2);
    out->append(fwd.client_ip);
    out->append("]\"", 2);
  } else {
    out->append(fwd.client_ip);
  }
  out->append(";proto=", 7);
  out->append(fwd.proto);
  if (!head.host.empty()) {
    out->append(";host=", 6);
    if (internal::AllOf(head.host, internal::kTchar)) {
      out->append(head.host);
    } else {
      out->push_back('"');
      out->append(head.host);
      out->push_back('"');
    }
  }
  out->append("\r\n", 2);
  AppendClientCertHeaders(fwd, out);

  if (head.upgrade) {
    out->append("Connection: upgrade\r\n", 21);
    for (const Header& h : head.headers) {
      if (HeaderNameIs(h.name, "upgrade")) AppendHeader(out, "Upgrade", h.value);
    }
  }
  out->append("\r\n", 2);
}

void BuildClientResponseHead(const ResponseHead& head, int client_version_minor,
                             bool close_client, std::string* out) {
  out->reserve(out->size() + head.head_len + 64);
  out->append(client_version_minor == 0 ? "HTTP/1.0 " : "HTTP/1.1 ", 9);
  AppendUint(out, static_cast<uint64_t>(head.status));
  out->push_back(' ');
  // A backend may omit the reason phrase (RFC 9112 4); clients and tools
  // that print it get the standard one, as from nginx.
  out->append(head.reason.empty() ? StatusReason(head.status) : head.reason);
  out->append("\r\n", 2);

  const bool switching = head.status == 101;
  const bool custom_nominations = HasCustomNominations(head.headers);
  for (const Header& h : head.headers) {
    if (IsHopByHop(h.name)) {
      // The client needs the protocol it is being switched to.
      if (!(switching && HeaderNameIs(h.name, "upgrade"))) continue;
    }
    if (custom_nominations && MayBeNominated(h.name) && IsNominated(head.headers, h.name)) continue;
    AppendHeader(out, h.name, h.value);
  }
  if (close_client) {
    out->append("Connection: close\r\n", 19);
  } else if (switching) {
    out->append("Connection: upgrade\r\n", 21);
  } else if (client_version_minor == 0) {
    out->append("Connection: keep-alive\r\n", 24);
  }
  out->append("\r\n", 2);
}

std::string_view ReasonPhrase(int status) { return StatusReason(status); }

void EndToEndResponseFields(const ResponseHead& head, std::vector<const Header*>* out) {
  const bool custom_nominations = HasCustomNominations(head.headers);
  for (const Header& h : head.headers) {
    if (IsHopByHop(h.name) || HeaderNameIs(h.name, "transfer-encoding")) continue;
    if (custom_nominations && MayBeNominated(h.name) && IsNominated(head.headers, h.name)) continue;
    out->push_back(&h);
  }
}

void BuildErrorResponse(int status, bool close, std::string* out, uint32_t retry_after_s) {
  if (status < 100 || status > 999) status = 500;
  const std::string_view reason = StatusReason(status);
  // Body: "431 Request Header Fields Too Large\n".
  const size_t body_len = 3 + 1 + reason.size() + 1;
  out->append("HTTP/1.1 ", 9);
  AppendUint(out, static_cast<uint64_t>(status));
  out->push_back(' ');
  out->append(reason);
  out->append("\r\nContent-Type: text/plain\r\nContent-Length: ");
  AppendUint(out, body_len);
  out->append("\r\n", 2);
  if (close) out->append("Connection: close\r\n", 19);
  if (retry_after_s > 0) {
    out->append("Retry-After: ");
    AppendUint(out, retry_after_s);
    out->append("\r\n", 2);
  }
  out->append("\r\n", 2);
  AppendUint(out, static_cast<uint64_t>(status));
  out->push_back(' ');
  out->append(reason);
  out->push_back('\n');
}

}  // namespace ktlb::http1
