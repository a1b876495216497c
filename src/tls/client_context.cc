// The upstream TLS client context (client_tls.h).
#include <arpa/inet.h>

#include <string>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "ktlb/client_tls.h"
#include "ktlb/ktls.h"
#include "ktlb/tls.h"

namespace ktlb::tls {
namespace {

absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

int SessionSlotIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// The server handed us a session (TLS 1.2: at the handshake's end; TLS 1.3:
// a NewSessionTicket after it): it replaces the slot's, so the next
// connection to this server resumes the freshest one.
int OnNewSession(SSL* ssl, SSL_SESSION* session) {
  auto* slot = static_cast<SessionSlot*>(SSL_get_ex_data(ssl, SessionSlotIndex()));
  if (slot == nullptr || SSL_SESSION_is_resumable(session) != 1) return 0;
  slot->session.reset(session);  // returning 1: the reference is ours
  ++slot->stored;
  return 1;
}

bool IsIpLiteral(std::string_view host) {
  std::string h(host);
  unsigned char buf[16];
  return inet_pton(AF_INET, h.c_str(), buf) == 1 || inet_pton(AF_INET6, h.c_str(), buf) == 1;
}

}  // namespace

std::string_view HostOfAddress(std::string_view text) {
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    return close == std::string_view::npos ? text.substr(1) : text.substr(1, close - 1);
  }
  size_t colon = text.rfind(':');
  return colon == std::string_view::npos ? text : text.substr(0, colon);
}

absl::StatusOr<std::shared_ptr<const ClientTlsContext>> ClientTlsContext::Create(
    const UpstreamTlsConfig& config, std::string_view config_path) {
  auto at = [&](std::string_view key, uint32_t line, std::string_view what) {
    std::string prefix = config_path.empty() || line == 0
                             ? std::string()
                             : absl::StrCat(Av(config_path), ":", line, ": ");
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, config.key, ".", Av(key), ": ", Av(what)));
  };
  UniqueSslCtx ctx(SSL_CTX_new(TLS_client_method()));
  if (ctx == nullptr) {
    return absl::InternalError(absl::StrCat(config.key, ": SSL_CTX_new: ", internal::TakeOpenSslReason()));
  }
  SSL_CTX* c = ctx.get();
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  // The transport's output queue drains by partial writes with a moving
  // buffer; idle pooled connections should not pin OpenSSL's buffers.
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                          SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

  if (!config.ca_path.empty()) {
    if (SSL_CTX_load_verify_file(c, config.ca_path.c_str()) != 1) {
      return at("ca", config.ca_line,
                absl::StrCat("cannot load CA certificates from \"", config.ca_path,
                             "\": ", internal::TakeOpenSslReason()));
    }
  } else if (SSL_CTX_set_default_verify_paths(c) != 1) {
    ERR_clear_error();  // no system store: every verification fails, which is the point
  }
  SSL_CTX_set_verify(c, config.verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);

  if (!config.cert_path.empty()) {
    if (SSL_CTX_use_certificate_chain_file(c, config.cert_path.c_str()) != 1) {
      return at("cert", config.cert_line,
                absl::StrCat("cannot load a certificate from \"", config.cert_path,
                             "\": ", internal::TakeOpenSslReason()));
    }
    if (SSL_CTX_use_PrivateKey_file(c, config.key_path.c_str(), SSL_FILETYPE_PEM) != 1) {
      return at("key", config.key_line,
                absl::StrCat("cannot load a private key from \"", config.key_path,
                             "\": ", internal::TakeOpenSslReason()));
    }
    if (SSL_CTX_check_private_key(c) != 1) {
      return at("key", config.key_line,
                absl::StrCat("does not match the certificate of cert: ",
                             internal::TakeOpenSslReason()));
    }
  }

  // Backends speak HTTP/1.1 to us (the HTTP/2 client path ends here too:
  // its streams become HTTP/1.1 exchanges).
  static const unsigned char kAlpn[] = "\x08http/1.1";
  if (SSL_CTX_set_alpn_protos(c, kAlpn, sizeof kAlpn - 1) != 0) {
    return absl::InternalError(absl::StrCat(config.key, ": SSL_CTX_set_alpn_protos"));
  }
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(c, OnNewSession);
  // kTLS RX for TLS 1.3 needs the server's traffic secret, which OpenSSL 3.0
  // only reveals through the key-log callback (a no-op on SSLs that do not
  // offer kTLS: they carry no hooks).
  if (config.ktls != KtlsMode::kOff) EnableTrafficSecretCapture(c);

  auto context = absl::WrapUnique(new ClientTlsContext());
  context->config_ = config;
  context->ctx_ = std::move(ctx);
  return std::shared_ptr<const ClientTlsContext>(std::move(context));
}

ClientTlsContext::~ClientTlsContext() = default;

UniqueSsl ClientTlsContext::NewSsl(BIO* bio, std::string_view server_host, SessionSlot* slot,
                                   bool offer_ktls) const {
  UniqueSsl ssl(SSL_new(ctx_.get()));
  if (ssl == nullptr) {
    BIO_free_all(bio);
    ERR_clear_error();
    return nullptr;
  }
  SSL_set_bio(ssl.get(), bio, bio);
  SSL_set_connect_state(ssl.get());
  if (offer_ktls) SSL_set_options(ssl.get(), SSL_OP_ENABLE_KTLS);
  const std::string name(config_.sni.empty() ? server_host : std::string_view(config_.sni));
  const bool ip = IsIpLiteral(name);
  // RFC 6066: SNI carries host names only, never an address.
  if (!config_.sni.empty() && !ip &&
      SSL_set_tlsext_host_name(ssl.get(), config_.sni.c_str()) != 1) {
    ERR_clear_error();
    return nullptr;
  }
  if (config_.verify) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl.get());
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    const int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str())
                      : X509_VERIFY_PARAM_set1_host(param, name.c_str(), name.size());
    if (ok != 1) {
      ERR_clear_error();
      return nullptr;
    }
  }
  if (slot != nullptr) {
    SSL_set_ex_data(ssl.get(), SessionSlotIndex(), slot);
    if (slot->session && SSL_SESSION_is_resumable(slot->session.get()) == 1) {
      SSL_set_session(ssl.get(), slot->session.get());
    }
  }
  return ssl;
}

}  // namespace ktlb::tls
