// One listener's TLS server side on one worker: an SSL_CTX per certificate,
// SNI picking among them, ALPN, and stateless session tickets that resume on
// any worker (and any host sharing a ticket_keys file) because they all
// seal with the same TicketKeys.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/tls1.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "ktlb/tls.h"

// Headers of OpenSSL builds without kTLS support may lack the flag; the bit is
// stable across 3.x, and such a library simply ignores it.
#ifndef SSL_OP_ENABLE_KTLS
#define SSL_OP_ENABLE_KTLS (static_cast<uint64_t>(1) << 3)
#endif

namespace ktlb::tls {
namespace {

// Sessions only resume where the session id context matches. It is the same
// on every certificate's context (SSL_set_SSL_CTX swaps contexts mid
// handshake) and on every worker (tickets cross workers).
constexpr unsigned char kSessionIdContext[] = "ktlb";

// Protocols this server can actually speak after the handshake.
constexpr std::string_view kSpokenProtocols[] = {"h2", "http/1.1"};

bool Speaks(std::string_view protocol) {
  for (std::string_view p : kSpokenProtocols) {
    if (p == protocol) return true;
  }
  return false;
}

absl::Status OpenSslFailure(absl::StatusCode code, const std::string& context,
                            const char* call) {
  unsigned long err = ERR_peek_last_error();
  const char* reason = err != 0 ? ERR_reason_error_string(err) : nullptr;
  absl::Status status(code, absl::StrCat(context, ": ", call, " failed: ",
                                         reason != nullptr ? reason : "unknown OpenSSL error"));
  ERR_clear_error();
  return status;
}

// What a certificate's context asks of the client (mTLS).
struct ClientAuthPolicy {
  int verify_mode = SSL_VERIFY_NONE;
  X509_STORE* store = nullptr;  // owned by Impl::stores; nullptr without client_auth
};

int VerifyMode(const LoadedClientAuth* auth) {
  if (auth == nullptr) return SSL_VERIFY_NONE;
  // "optional" still verifies a certificate that is sent (nginx's
  // ssl_verify_client optional): only its absence is allowed.
  return auth->mode == ClientAuthMode::kRequire ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                                : SSL_VERIFY_PEER;
}

// This worker's own store of a policy's CAs and CRLs: verification takes
// the store's lock, which a store shared by all workers would contend on.
absl::StatusOr<UniqueX509Store> BuildStore(const LoadedClientAuth& auth) {
  UniqueX509Store store(X509_STORE_new());
  if (store == nullptr) return absl::ResourceExhaustedError("X509_STORE_new failed");
  for (const UniqueX509& ca : auth.cas) {
    if (X509_STORE_add_cert(store.get(), ca.get()) != 1) {
      return OpenSslFailure(absl::StatusCode::kInvalidArgument, "client CA", "X509_STORE_add_cert");
    }
  }
  for (const UniqueX509Crl& crl : auth.crls) {
    if (X509_STORE_add_crl(store.get(), crl.get()) != 1) {
      return OpenSslFailure(absl::StatusCode::kInvalidArgument, "client CRL", "X509_STORE_add_crl");
    }
  }
  // The leaf's revocation only (CRL_CHECK_ALL would want a CRL from every
  // CA of the chain, the root's included). Without a CRL for the leaf's
  // issuer, verification fails: a stale or wrong crl file refuses clients
  // rather than letting revoked ones in.
  if (!auth.crls.empty()) X509_STORE_set_flags(store.get(), X509_V_FLAG_CRL_CHECK);
  return store;
}

}  // namespace

struct ServerTlsContext::Impl {
  explicit Impl(const TicketKeys& keys) : tickets(keys) {}

  UnknownSniPolicy unknown_sni = UnknownSniPolicy::kDefault;
  // This worker's view of the ticket keys (its own cache: no lock per ticket).
  TicketKeyReader tickets;
  // Parallel to ctxs: what each certificate's context asks of the client.
  std::vector<ClientAuthPolicy> auth;
  bool any_client_auth = false;
  // One per distinct LoadedClientAuth, shared by the contexts that use it.
  std::vector<std::pair<const LoadedClientAuth*, UniqueX509Store>> stores;
  // The listener's alpn list minus what the server cannot speak yet.
  std::vector<std::string> alpn;
  // One per certificate, in listener order; [0] is the initial context of
  // every SSL and the fallback for unknown SNI.
  std::vector<UniqueSslCtx> ctxs;
  SniTable sni;

  absl::StatusOr<UniqueSslCtx> BuildCtx(const ListenerConfig& listener,
                                        const LoadedCertificate& cert);
  // Sets `auth`'s verification and CA names on `c`; returns the policy.
  absl::StatusOr<ClientAuthPolicy> ApplyClientAuth(SSL_CTX* c, const LoadedClientAuth* auth);
  // Refuses a resumed session the selected context's client_auth would
  // not have let in (false: refused).
  static bool ResumptionAllowed(SSL* ssl, const ClientAuthPolicy& policy);

  // OpenSSL callbacks; `arg` is the Impl.
  static int OnServerName(SSL* ssl, int* alert, void* arg);
  static int OnAlpn(SSL* ssl, const unsigned char** out, unsigned char* outlen,
                    const unsigned char* in, unsigned int inlen, void* arg);
};

// Runs once the ClientHello is parsed (on the initial context only; OpenSSL
// calls the callback of the context the SSL started with). Switches the SSL
// to the certificate its SNI names.
int ServerTlsContext::Impl::OnServerName(SSL* ssl, int* alert, void* arg) {
  const auto* impl = static_cast<const Impl*>(arg);
  int index = impl->sni.Match(ServerName(ssl));
  if (index < 0) {
    if (impl->unknown_sni == UnknownSniPolicy::kReject) {
      // The error queue would only say "callback failed"; the mark lets
      // ClassifyHandshakeFailure name it.
      internal::MarkRejected(ssl, HandshakeFailure::kUnknownSni);
      *alert = SSL_AD_UNRECOGNIZED_NAME;
      return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    index = 0;  // kDefault: serve the first certificate
  }
  SSL_CTX* target = impl->ctxs[static_cast<size_t>(index)].get();
  const bool switching = SSL_get_SSL_CTX(ssl) != target;
  if (switching && SSL_set_SSL_CTX(ssl, target) == nullptr) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  if (!impl->any_client_auth) return SSL_TLSEXT_ERR_OK;
  // SSL_set_SSL_CTX swaps the certificate only: the verify mode, the store
  // and the CA names of the SSL are still the initial context's.
  const ClientAuthPolicy& policy = impl->auth[static_cast<size_t>(index)];
  if (switching) {
    SSL_set_verify(ssl, policy.verify_mode, nullptr);
    SSL_set1_verify_cert_store(ssl, policy.store);
    // SSL_new copied the initial context's CA names into the SSL; without
    // them, the CertificateRequest names the current context's.
    SSL_set_client_CA_list(ssl, nullptr);
  }
  if (!ResumptionAllowed(ssl, policy)) {
    internal::MarkRejected(ssl, HandshakeFailure::kClientCertRejected);
    *alert = SSL_AD_ACCESS_DENIED;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  return SSL_TLSEXT_ERR_OK;
}

// A resumed session skips certificate verification, and OpenSSL 3.0 checks
// no session id context on TLS 1.3 tickets: a ticket from a certificate
// without client_auth would open one that requires it (nginx's
// CVE-2025-23419). The session (ticket or cache) is already in place when
// this callback runs. A session resumes only under the name it was made
// for (so under the same certificate and policy), and never without a
// client certificate where one is required.
bool ServerTlsContext::Impl::ResumptionAllowed(SSL* ssl, const ClientAuthPolicy& policy) {
  const SSL_SESSION* session = SSL_get_session(ssl);
  if (session == nullptr) return true;
  // Set only on a session made by an earlier handshake: a new one gets its
  // name after this callback.
  const char* made_for = SSL_SESSION_get0_hostname(session);
  if (made_for != nullptr && ServerName(ssl) != made_for) return false;
  if (SSL_session_reused(ssl) == 0) return true;
  if (made_for == nullptr && !ServerName(ssl).empty()) return false;
  const bool required = (policy.verify_mode & SSL_VERIFY_FAIL_IF_NO_PEER_CERT) != 0;
  return !required || SSL_SESSION_get0_peer(const_cast<SSL_SESSION*>(session)) != nullptr;
}

absl::StatusOr<ClientAuthPolicy> ServerTlsContext::Impl::ApplyClientAuth(
    SSL_CTX* c, const LoadedClientAuth* auth) {
  ClientAuthPolicy policy;
  policy.verify_mode = VerifyMode(auth);
  if (auth == nullptr) return policy;
  for (const auto& [loaded, store] : stores) {
    if (loaded == auth) policy.store = store.get();
  }
  if (policy.store == nullptr) {
    absl::StatusOr<UniqueX509Store> store = BuildStore(*auth);
    if (!store.ok()) return store.status();
    policy.store = store->get();
    stores.emplace_back(auth, *std::move(store));
  }
  SSL_CTX_set_verify(c, policy.verify_mode, nullptr);
  if (SSL_CTX_set1_verify_cert_store(c, policy.store) != 1) {
    return OpenSslFailure(absl::StatusCode::kInternal, "client_auth",
                          "SSL_CTX_set1_verify_cert_store");
  }
  // The CertificateRequest names the acceptable CAs, so a client with
  // several certificates picks the right one.
  for (const UniqueX509& ca : auth->cas) {
    if (SSL_CTX_add_client_CA(c, ca.get()) != 1) {
      return OpenSslFailure(absl::StatusCode::kInternal, "client_auth", "SSL_CTX_add_client_CA");
    }
  }
  return policy;
}

// Picks the first protocol of the listener's list (its order of preference,
// as nginx and haproxy do) that the client offers. OpenSSL has already
// checked that `in` is a well-formed list of non-empty length-prefixed names;
// the bounds checks are belt and braces.
int ServerTlsContext::Impl::OnAlpn(SSL* /*ssl*/, const unsigned char** out,
                                   unsigned char* outlen, const unsigned char* in,
                                   unsigned int inlen, void* arg) {
  const auto* impl = static_cast<const Impl*>(arg);
  for (const std::string& allowed : impl->alpn) {
    for (unsigned int i = 0; i < inlen;) {
      unsigned int len = in[i];
      if (len == 0 || len > inlen - i - 1) break;
      std::string_view offered(reinterpret_cast<const char*>(in + i + 1), len);
      if (allowed == offered) {
        *out = in + i + 1;  // must point into `in`, which outlives the call
        *outlen = static_cast<unsigned char>(len);
        return SSL_TLSEXT_ERR_OK;
      }
      i += 1 + len;
    }
  }
  // Nothing in common: go on without ALPN rather than fail the handshake
  // (nginx does the same); HTTP/1.1 is the default on a TLS port anyway.
  return SSL_TLSEXT_ERR_NOACK;
}

absl::StatusOr<UniqueSslCtx> ServerTlsContext::Impl::BuildCtx(const ListenerConfig& listener,
                                                              const LoadedCertificate& cert) {
  const std::string where =
      absl::StrCat("listener \"", listener.name, "\": certificate \"", cert.name, "\"");
  auto fail = [&](const char* call) {
    return OpenSslFailure(absl::StatusCode::kInternal, where, call);
  };
  // Certificate/key rejections (e.g. a key too small for the security level)
  // are the operator's to fix.
  auto reject = [&](const char* call) {
    return OpenSslFailure(absl::StatusCode::kInvalidArgument, where, call);
  };

  UniqueSslCtx ctx(SSL_CTX_new(TLS_server_method()));
  if (ctx == nullptr) return fail("SSL_CTX_new");
  SSL_CTX* c = ctx.get();

  // Versions, groups and ciphers: the listener's tls_* keys (ktlb's choices
  // by default, see config.h).
  if (absl::Status st = ApplyTlsPolicy(c, listener.tls); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", st.message()));
  }

  uint64_t options = SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                     SSL_OP_CIPHER_SERVER_PREFERENCE;
  // OpenSSL only offers keys to the BIO (control 72) with this option; "off"
  // keeps every connection on userspace crypto.
  if (listener.ktls != KtlsMode::kOff) options |= SSL_OP_ENABLE_KTLS;
  SSL_CTX_set_options(c, options);
  // RELEASE_BUFFERS: idle keep-alive connections should not pin OpenSSL's
  // 16 KiB read/write buffers. The other two let SSL_write send part of a
  // buffer and be retried with a moved pointer, which is how the connection's
  // output queue drains.
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                          SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

  // Resumption is stateless: tickets sealed with keys every worker shares.
  // A server-side cache would be per-worker (so mostly missing) and would
  // need a lock; it stays off.
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  // Tickets are sealed and opened through the SSL's *initial* context, but
  // the keys go on every context so nothing depends on that detail.
  if (!internal::InstallTicketKeys(c, &tickets)) {
    return fail("SSL_CTX_set_tlsext_ticket_key_evp_cb");
  }
  // kTLS RX for TLS 1.3 needs the client traffic secret, which OpenSSL 3.0
  // only reveals through the key-log callback.
  if (listener.ktls != KtlsMode::kOff) EnableTrafficSecretCapture(c);
  // One ticket per handshake: a client resumes one connection per ticket and
  // gets a fresh one each time; the second (OpenSSL's default) mostly costs
  // an encryption and a record on every handshake.
  if (SSL_CTX_set_num_tickets(c, 1) != 1) return fail("SSL_CTX_set_num_tickets");
  if (SSL_CTX_set_session_id_context(c, kSessionIdContext, sizeof(kSessionIdContext) - 1) != 1) {
    return fail("SSL_CTX_set_session_id_context");
  }

  if (SSL_CTX_use_certificate(c, cert.leaf.get()) != 1) return reject("SSL_CTX_use_certificate");
  for (const UniqueX509& x : cert.chain) {
    // add1: the context takes its own reference; the LoadedCertificate keeps
    // its own for the other workers' contexts.
    if (SSL_CTX_add1_chain_cert(c, x.get()) != 1) return reject("SSL_CTX_add1_chain_cert");
  }
  if (SSL_CTX_use_PrivateKey(c, cert.key.get()) != 1) return reject("SSL_CTX_use_PrivateKey");
  if (SSL_CTX_check_private_key(c) != 1) return reject("SSL_CTX_check_private_key");

  // After SSL_set_SSL_CTX the ALPN callback of the *new* context runs, so
  // every context needs it.
  SSL_CTX_set_alpn_select_cb(c, &Impl::OnAlpn, this);
  return ctx;
}

absl::StatusOr<std::unique_ptr<ServerTlsContext>> ServerTlsContext::Create(
    const ListenerConfig& listener, const std::vector<CertificatePtr>& certs,
    const TicketKeys& keys, ClientAuthPtr listener_auth) {
  if (certs.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("listener \"", listener.name, "\": no certificates"));
  }
  auto impl = std::make_unique<Impl>(keys);
  impl->unknown_sni = listener.unknown_sni;
  for (const std::string& p : listener.alpn) {
    if (Speaks(p)) impl->alpn.push_back(p);
  }
  for (size_t i = 0; i < certs.size(); ++i) {
    if (certs[i] == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("listener \"", listener.name, "\": certificate ", i, " is missing"));
    }
    absl::StatusOr<UniqueSslCtx> ctx = impl->BuildCtx(listener, *certs[i]);
    if (!ctx.ok()) return ctx.status();
    const LoadedClientAuth* auth =
        certs[i]->client_auth != nullptr ? certs[i]->client_auth.get() : listener_auth.get();
    absl::StatusOr<ClientAuthPolicy> policy = impl->ApplyClientAuth(ctx->get(), auth);
    if (!policy.ok()) return policy.status();
    impl->auth.push_back(*policy);
    impl->any_client_auth |= auth != nullptr;
    impl->ctxs.push_back(*std::move(ctx));
    // Listener order gives precedence: with two certificates naming the same
    // host, the first listed one serves it.
    for (const std::string& name : certs[i]->dns_names) impl->sni.Add(name, static_cast<int>(i));
  }
  SSL_CTX* initial = impl->ctxs.front().get();
  SSL_CTX_set_tlsext_servername_callback(initial, &Impl::OnServerName);
  SSL_CTX_set_tlsext_servername_arg(initial, impl.get());

  // WrapUnique: the constructor is private so that Create is the only way
  // to get a context, which rules out std::make_unique.
  auto context = absl::WrapUnique(new ServerTlsContext());
  context->impl_ = std::move(impl);
  return context;
}

ServerTlsContext::~ServerTlsContext() = default;

UniqueSsl ServerTlsContext::NewSsl(BIO* bio) const {
  UniqueSsl ssl(SSL_new(impl_->ctxs.front().get()));
  if (ssl == nullptr) {
    BIO_free_all(bio);  // documented: the bio is ours either way
    ERR_clear_error();
    return nullptr;
  }
  // One BIO for both directions: SSL_set_bio takes a single reference.
  SSL_set_bio(ssl.get(), bio, bio);
  SSL_set_accept_state(ssl.get());
  return ssl;
}

std::string_view ServerName(const SSL* ssl) {
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  return name != nullptr ? std::string_view(name) : std::string_view();
}

}  // namespace ktlb::tls
