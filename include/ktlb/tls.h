// TLS termination building blocks: certificates, SNI selection, per-worker
// SSL_CTX, the buffer BIO that io_uring feeds, handshake failure naming.
//
// Ownership: certificates are loaded once (LoadCertificates) and shared
// read-only by all workers. Each worker builds its own ServerTlsContext per
// listener (OpenSSL 3.0 contends on shared SSL_CTX state across threads); all
// of them use the same TicketKeys so a session resumes on any worker.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "ktlb/config.h"
#include "ktlb/ktls.h"
#include "ktlb/output_queue.h"
#include "ktlb/openssl_ptr.h"
#include "ktlb/ticket_keys.h"

namespace ktlb::tls {

// The trust material of one client_auth (mTLS) policy: read once per
// snapshot, shared read-only by every worker, each of which builds its own
// X509_STORE from it (a shared store would be a lock every handshake takes).
struct LoadedClientAuth {
  ClientAuthMode mode = ClientAuthMode::kRequire;
  std::vector<UniqueX509> cas;       // every certificate of the ca file
  std::vector<UniqueX509Crl> crls;   // every CRL of the crl file (empty: none)
};
using ClientAuthPtr = std::shared_ptr<const LoadedClientAuth>;

// Reads a client_auth's CA (and CRL) file; nullptr when !config.enabled.
// Errors read "FILE:LINE: listeners[0].client_auth.ca: ..." when `config_path`
// is given and the ClientAuthConfig knows its lines.
absl::StatusOr<ClientAuthPtr> LoadClientAuth(const ClientAuthConfig& config,
                                             std::string_view config_path);

struct LoadedCertificate {
  std::string name;                 // [[certificates]] name
  UniqueX509 leaf;
  std::vector<UniqueX509> chain;    // intermediates, in file order
  UniqueEvpPkey key;
  std::vector<std::string> dns_names;  // SAN dNSName entries, lowercase (CN if no SAN)
  int64_t not_after = 0;               // unix seconds
  ClientAuthPtr client_auth;  // the entry's own client_auth; nullptr: the listener's applies
};
using CertificatePtr = std::shared_ptr<const LoadedCertificate>;

// Loads every [[certificates]] entry. Errors name the file and what is wrong:
// unreadable file, no certificate, key does not match certificate, expired is
// NOT an error (logged by the caller if wanted).
absl::StatusOr<std::vector<CertificatePtr>> LoadCertificates(const Config& config);

// Maps an SNI host name to the index of a certificate: exact names first, then
// single-label wildcards ("*.example.test" matches "a.example.test", not
// "example.test" nor "a.b.example.test"). Case-insensitive; a trailing dot is
// ignored. Earlier Add() calls win ties. Patterns mean what host_pattern.h
// says; Add() ignores "" and malformed patterns, which never match.
class SniTable {
 public:
  void Add(std::string_view pattern, int index);
  int Match(std::string_view server_name) const;  // -1 if nothing matches
 private:
  // Patterns as added (see host_pattern.h), in Add() order: small, so linear.
  std::vector<std::pair<std::string, int>> exact_;
  std::vector<std::pair<std::string, int>> wildcard_;  // "*.example.test"
};

// Which keys opened the ticket of a resumed session (set by the ticket key
// callback); nullopt when the handshake opened no ticket.
std::optional<TicketKeySource> ResumedTicketSource(const SSL* ssl);

// A listener's TlsPolicy on one context (tls_policy.cc).
absl::Status ApplyTlsPolicy(SSL_CTX* ctx, const TlsPolicy& policy);
// Tries every name of every terminate listener's policy on the linked
// OpenSSL. Errors read "FILE:LINE: listeners[i].tls_groups: <what is wrong>".
absl::Status CheckTlsPolicies(const Config& config);

// Why a handshake failed: a stable metric label each.
enum class HandshakeFailure {
  kUnknownSni,       // unknown_sni = "reject" and no certificate matched
  kNoSharedCipher,
  kProtocolVersion,  // TLS 1.0/1.1 or SSLv3 offered
  kPlainHttp,        // first bytes were an HTTP request, not a TLS record
  kTimeout,
  kClientReset,      // EOF / reset during the handshake
  kBadRecord,        // malformed TLS
  kClientCertMissing,   // mTLS "require" and the client sent no certificate
  kClientCertRejected,  // its certificate failed verification (unknown CA,
                        // expired, revoked), or a resumed session does not
                        // carry what the selected certificate's client_auth asks
  kOther,
};
const char* HandshakeFailureLabel(HandshakeFailure f);
// Call right after SSL_do_handshake() failed with `ssl_error` (SSL_get_error).
// Consumes (clears) the OpenSSL error queue. Never returns kTimeout: only the
// caller's timer knows about that.
HandshakeFailure ClassifyHandshakeFailure(SSL* ssl, int ssl_error);

// One listener's TLS server context on one worker.
class ServerTlsContext {
 public:
  // `certs` are the listener's certificates in the listener's order (the first
  // is the default for unknown SNI when the policy is kDefault).
  // `listener_auth` is the listener's client_auth (nullptr: none); a
  // certificate's own client_auth overrides it when SNI selects that one.
  static absl::StatusOr<std::unique_ptr<ServerTlsContext>> Create(
      const ListenerConfig& listener, const std::vector<CertificatePtr>& certs,
      const TicketKeys& keys, ClientAuthPtr listener_auth = nullptr);
  ~ServerTlsContext();

  // A new server-side SSL bound to `bio` (ownership of bio passes to the SSL;
  // on failure the bio is freed and nullptr returned). The SSL's handshake
  // callbacks point into this object: it must outlive every SSL it created
  // that may still be handshaking (e.g. across a reload, keep it alive with
  // the connections of its snapshot).
  UniqueSsl NewSsl(BIO* bio) const;

 private:
  ServerTlsContext() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The BIO between OpenSSL and the io_uring connection: reads come from `in`
// (the caller points it at received ciphertext and sees how much is left),
// writes append to *queue (or, for simple users and tests, to *out); the
// caller sends them. Reads on empty input ask to retry unless `in_eof`.
// BIO_flush always succeeds. With `ktls` set, OpenSSL's kTLS controls
// (72-76) reach the hooks and control records land in *queue as records.
struct BioIo {
  std::string_view in{};
  bool in_eof = false;
  std::string* out = nullptr;
  OutputQueue* queue = nullptr;
  KtlsHooks* ktls = nullptr;
  int ctrl_record_type = -1;  // set between controls 74 and 75
};
BIO* NewBufferBio(BioIo* io);  // io must outlive the BIO

// The name the client asked for (SNI), "" if none.
std::string_view ServerName(const SSL* ssl);

namespace internal {
// The "refused on purpose" mark that the servername callback
// (server_context.cc) leaves on an SSL for ClassifyHandshakeFailure
// (handshake_failure.cc): the error queue would only say "callback failed".
// Declared here because src/tls has no private headers; nothing outside
// src/tls should call these.
void MarkRejected(SSL* ssl, HandshakeFailure why);
bool WasRejected(const SSL* ssl, HandshakeFailure* why);
// Why OpenSSL failed, in words (certificates.cc), then an empty error queue:
// later unrelated calls on this thread must not pick up the leftovers.
std::string TakeOpenSslReason();
// Makes `ctx` seal and open session tickets with `reader`'s keys
// (session_tickets.cc); `reader` must outlive `ctx`. False on failure.
bool InstallTicketKeys(SSL_CTX* ctx, TicketKeyReader* reader);
}  // namespace internal

}  // namespace ktlb::tls
