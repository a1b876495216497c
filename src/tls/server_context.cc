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

}  // namespace

struct ServerTlsContext::Impl {
  explicit Impl(const TicketKeys& keys) : tickets(keys) {}

  UnknownSniPolicy unknown_sni = UnknownSniPolicy::kDefault;
  // This worker's view of the ticket keys (its own cache: no lock per ticket).
  TicketKeyReader tickets;
  // The listener's alpn list minus what the server cannot speak yet.
  std::vector<std::string> alpn;
  // One per certificate, in listener order; [0] is the initial context of
  // every SSL and the fallback for unknown SNI.
  std::vector<UniqueSslCtx> ctxs;
  SniTable sni;

  absl::StatusOr<UniqueSslCtx> BuildCtx(const ListenerConfig& listener,
                                        const LoadedCertificate& cert);

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
      internal::MarkUnknownSniRejected(ssl);
      *alert = SSL_AD_UNRECOGNIZED_NAME;
      return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    index = 0;  // kDefault: serve the first certificate
  }
  SSL_CTX* target = impl->ctxs[static_cast<size_t>(index)].get();
  if (SSL_get_SSL_CTX(ssl) != target && SSL_set_SSL_CTX(ssl, target) == nullptr) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  return SSL_TLSEXT_ERR_OK;
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
    const TicketKeys& keys) {
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
