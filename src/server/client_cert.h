// What the HTTP/1.1 and HTTP/2 connections do with the client certificate
// (mTLS): tell the backend about it, and refuse routes that require one.
#pragma once

#include "ktlb/config.h"
#include "ktlb/http1.h"
#include "ktlb/router.h"
#include "ktlb/tls_transport.h"

namespace ktlb {

// X-Client-Cert-* go out on every request of a listener with client_auth
// (on itself or on one of its certificates), Verified: NONE included, as
// nginx's $ssl_client_verify; elsewhere ktlb only strips the client's copies.
inline void AddClientCert(const ListenerConfig& listener, const tls::HandshakeInfo& info,
                          http1::ForwardingInfo* fwd) {
  fwd->client_cert_headers = listener.mtls;
  fwd->client_cert_verified = info.peer_verified;
  fwd->client_cert_subject = info.peer_subject;
  fwd->client_cert_san = info.peer_san;
  fwd->client_cert_fingerprint = info.peer_fingerprint;
}

// The route wants a verified client certificate and the connection has none:
// 403, and no backend is contacted.
inline bool ClientCertRequiredButMissing(const RouteMatch& route, const tls::HandshakeInfo& info) {
  return route.require_client_cert && !info.peer_verified;
}

}  // namespace ktlb
