// Test-only helpers for the tls_*_test.cc files: a throwaway PKI made with the
// OpenSSL API at test time (no checked-in keys), and an in-memory handshake
// between a client SSL and a server SSL, both on ktlb's buffer BIO.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "gtest/gtest.h"
#include "ktlb/openssl_ptr.h"
#include "ktlb/tls.h"

namespace ktlb::tls::testing {

using UniqueExtension =
    std::unique_ptr<X509_EXTENSION, OpenSslDeleter<X509_EXTENSION, X509_EXTENSION_free>>;

inline UniqueEvpPkey MakeRsaKey() { return UniqueEvpPkey(EVP_RSA_gen(2048)); }
inline UniqueEvpPkey MakeEcKey() { return UniqueEvpPkey(EVP_EC_gen("P-256")); }

inline UniqueX509 Dup(X509* x) {
  X509_up_ref(x);
  return UniqueX509(x);
}

struct CertSpec {
  std::string cn{};
  std::string san{};  // X509v3 config syntax: "DNS:a.test,DNS:b.test"; "" = none
  bool ca = false;
};

// Signs a certificate for `key`; `issuer`/`issuer_key` null = self-signed.
inline UniqueX509 MakeCert(const CertSpec& spec, EVP_PKEY* key, X509* issuer = nullptr,
                           EVP_PKEY* issuer_key = nullptr) {
  static long serial = 1;
  UniqueX509 x(X509_new());
  X509_set_version(x.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), serial++);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 30L * 24 * 3600);
  X509_set_pubkey(x.get(), key);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(spec.cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x.get(), issuer != nullptr ? X509_get_subject_name(issuer) : name);

  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer != nullptr ? issuer : x.get(), x.get(), nullptr, nullptr, 0);
  auto add = [&](int nid, const char* value) {
    UniqueExtension ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
    EXPECT_NE(ext, nullptr) << value;
    if (ext != nullptr) X509_add_ext(x.get(), ext.get(), -1);
  };
  if (spec.ca) {
    add(NID_basic_constraints, "critical,CA:TRUE");
    add(NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add(NID_basic_constraints, "CA:FALSE");
  }
  if (!spec.san.empty()) add(NID_subject_alt_name, spec.san.c_str());
  EVP_PKEY* signer = issuer_key != nullptr ? issuer_key : key;
  // Ed25519 signs the message itself, without a separate digest.
  const EVP_MD* md = EVP_PKEY_is_a(signer, "ED25519") ? nullptr : EVP_sha256();
  EXPECT_GT(X509_sign(x.get(), signer, md), 0);
  return x;
}

inline std::string BioContents(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(len));
}

inline std::string CertPem(X509* x) {
  UniqueBio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), x);
  return BioContents(bio.get());
}

inline std::string KeyPem(EVP_PKEY* key) {
  UniqueBio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  return BioContents(bio.get());
}

// A fresh directory, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "ktlb_tls_XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string Write(const std::string& name, const std::string& content) const {
    std::string p = path_ + "/" + name;
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// One root, one intermediate, and leaves below the intermediate, generated
// once per test binary (RSA key generation is slow under sanitizers).
struct Pki {
  UniqueEvpPkey root_key, inter_key, site_key, other_key, legacy_key;
  UniqueX509 root, inter, site, other, legacy;

  static const Pki& Get() {
    static const Pki pki = Build();
    return pki;
  }

 private:
  static Pki Build() {
    Pki p;
    p.root_key = MakeEcKey();
    p.root = MakeCert({.cn = "ktlb test root", .ca = true}, p.root_key.get());
    p.inter_key = MakeEcKey();
    p.inter = MakeCert({.cn = "ktlb test intermediate", .ca = true}, p.inter_key.get(),
                       p.root.get(), p.root_key.get());
    // "site": RSA, issued by the intermediate.
    p.site_key = MakeRsaKey();
    p.site = MakeCert({.cn = "site.example.test",
                       .san = "DNS:site.example.test,DNS:*.site.example.test"},
                      p.site_key.get(), p.inter.get(), p.inter_key.get());
    // "other": ECDSA, mixed-case SAN to check lowercasing.
    p.other_key = MakeEcKey();
    p.other = MakeCert({.cn = "other", .san = "DNS:Other.Example.TEST,DNS:*.wild.example.test"},
                       p.other_key.get(), p.inter.get(), p.inter_key.get());
    // "legacy": self-signed, CN only.
    p.legacy_key = MakeEcKey();
    p.legacy = MakeCert({.cn = "Legacy.Example.Test"}, p.legacy_key.get());
    return p;
  }
};

// Writes site/other/legacy into `dir` and returns the [[certificates]] for them.
inline std::vector<CertificateConfig> WriteStandardCerts(const TempDir& dir) {
  const Pki& pki = Pki::Get();
  std::vector<CertificateConfig> out;
  out.push_back({"site", dir.Write("site.crt", CertPem(pki.site.get()) + CertPem(pki.inter.get())),
                 dir.Write("site.key", KeyPem(pki.site_key.get()))});
  out.push_back({"other",
                 dir.Write("other.crt", CertPem(pki.other.get()) + CertPem(pki.inter.get())),
                 dir.Write("other.key", KeyPem(pki.other_key.get()))});
  out.push_back({"legacy", dir.Write("legacy.crt", CertPem(pki.legacy.get())),
                 dir.Write("legacy.key", KeyPem(pki.legacy_key.get()))});
  return out;
}

inline std::string FirstErrorReason() {
  unsigned long e = ERR_peek_error();
  const char* r = e != 0 ? ERR_reason_error_string(e) : nullptr;
  return r != nullptr ? r : "";
}

// One side of an in-memory connection. Holds its BioIo at a fixed address
// (the BIO points at it), so Peer is neither copied nor moved.
struct Peer {
  Peer() = default;
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  std::string inbox;   // received, not yet consumed by OpenSSL
  std::string outbox;  // written by OpenSSL, not yet delivered
  BioIo io;
  UniqueSsl ssl;
  bool done = false;
  bool failed = false;
  int ssl_error = SSL_ERROR_NONE;
  std::string reason;  // first queued OpenSSL reason when failed
  HandshakeFailure failure = HandshakeFailure::kOther;  // server only

  bool active() const { return !done && !failed; }

  // Lets OpenSSL see `inbox` through the BIO for one call, then drops what
  // it consumed.
  template <typename F>
  int WithIo(F&& f) {
    io.in = inbox;
    io.out = &outbox;
    int rc = f();
    inbox.erase(0, inbox.size() - io.in.size());
    io.in = {};
    return rc;
  }
};

// Client and server on buffer BIOs; Run() shuttles bytes until both finish,
// one fails, or neither can make progress.
class Handshake {
 public:
  Handshake(const ServerTlsContext& server_ctx, SSL_CTX* client_ctx) {
    server.ssl = server_ctx.NewSsl(NewBufferBio(&server.io));
    client.ssl.reset(SSL_new(client_ctx));
    BIO* bio = NewBufferBio(&client.io);
    SSL_set_bio(client.ssl.get(), bio, bio);
    SSL_set_connect_state(client.ssl.get());
  }

  void Run() {
    for (int round = 0; round < 50; ++round) {
      bool moved = StepClient();
      moved |= Deliver(client, server);
      moved |= StepServer();
      moved |= Deliver(server, client);
      if ((!client.active() && !server.active()) || !moved) break;
    }
  }

  // Lets the client process what arrived after its handshake finished
  // (TLS 1.3 NewSessionTickets). Returns SSL_get_error of the read.
  int ClientReadPending() {
    Deliver(server, client);
    char byte;
    int rc = client.WithIo([&] { return SSL_read(client.ssl.get(), &byte, 1); });
    int err = SSL_get_error(client.ssl.get(), rc);
    ERR_clear_error();
    return err;
  }

  // Sends the client's close_notify. OpenSSL marks a session unresumable
  // when the SSL that holds it is freed without a clean shutdown.
  void ShutdownClient() {
    client.WithIo([&] { return SSL_shutdown(client.ssl.get()); });
    ERR_clear_error();
  }

  bool Succeeded() const { return client.done && server.done; }

  Peer client;
  Peer server;

 private:
  static bool Deliver(Peer& from, Peer& to) {
    if (from.outbox.empty()) return false;
    to.inbox += from.outbox;
    from.outbox.clear();
    return true;
  }

  bool StepClient() {
    if (!client.active()) return false;
    int rc = client.WithIo([&] { return SSL_do_handshake(client.ssl.get()); });
    if (rc == 1) {
      client.done = true;
      return true;
    }
    client.ssl_error = SSL_get_error(client.ssl.get(), rc);
    if (client.ssl_error != SSL_ERROR_WANT_READ && client.ssl_error != SSL_ERROR_WANT_WRITE) {
      client.failed = true;
      client.reason = FirstErrorReason();
      ERR_clear_error();
      return true;
    }
    return false;
  }

  bool StepServer() {
    if (!server.active()) return false;
    size_t before = server.inbox.size();
    int rc = server.WithIo([&] { return SSL_do_handshake(server.ssl.get()); });
    if (rc == 1) {
      server.done = true;
      return true;
    }
    server.ssl_error = SSL_get_error(server.ssl.get(), rc);
    if (server.ssl_error != SSL_ERROR_WANT_READ && server.ssl_error != SSL_ERROR_WANT_WRITE) {
      server.failed = true;
      server.reason = FirstErrorReason();
      // Classify at once: the client runs on this thread and would add to
      // the same error queue.
      server.failure = ClassifyHandshakeFailure(server.ssl.get(), server.ssl_error);
      return true;
    }
    return server.inbox.size() != before;
  }
};

// A client context; min/max 0 = library defaults.
inline UniqueSslCtx MakeClientCtx(int min_version = 0, int max_version = 0) {
  UniqueSslCtx ctx(SSL_CTX_new(TLS_client_method()));
  if (min_version != 0) SSL_CTX_set_min_proto_version(ctx.get(), min_version);
  if (max_version != 0) SSL_CTX_set_max_proto_version(ctx.get(), max_version);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  return ctx;
}

inline void SetSni(SSL* ssl, const char* name) {
  ASSERT_EQ(SSL_set_tlsext_host_name(ssl, name), 1);
}

// ALPN wire format from a list of protocol names.
inline void SetAlpn(SSL* ssl, const std::vector<std::string>& protocols) {
  std::string wire;
  for (const std::string& p : protocols) {
    wire.push_back(static_cast<char>(p.size()));
    wire += p;
  }
  ASSERT_EQ(SSL_set_alpn_protos(ssl, reinterpret_cast<const unsigned char*>(wire.data()),
                                static_cast<unsigned int>(wire.size())),
            0);  // 0 is success for this one
}

inline ListenerConfig MakeListener(std::vector<std::string> certs,
                                   UnknownSniPolicy unknown_sni = UnknownSniPolicy::kDefault) {
  ListenerConfig l;
  l.name = "public";
  l.certificates = std::move(certs);
  l.unknown_sni = unknown_sni;
  l.alpn = {"h2", "http/1.1"};
  l.ktls = KtlsMode::kAuto;
  return l;
}

}  // namespace ktlb::tls::testing
