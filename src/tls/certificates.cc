// Loads the [[certificates]] of a config into memory: leaf, intermediates,
// private key, and the DNS names SNI selection matches against. Runs at
// startup and on reload, never on the connection path.
#include <ctime>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "ktlb/read_file.h"
#include "ktlb/tls.h"

namespace ktlb::tls {

namespace internal {

std::string TakeOpenSslReason() {
  unsigned long err = ERR_peek_last_error();
  const char* reason = err != 0 ? ERR_reason_error_string(err) : nullptr;
  std::string text = reason != nullptr ? reason : "unknown OpenSSL error";
  ERR_clear_error();
  return text;
}

}  // namespace internal

namespace {

using internal::TakeOpenSslReason;

using UniqueGeneralNames =
    std::unique_ptr<GENERAL_NAMES, OpenSslDeleter<GENERAL_NAMES, GENERAL_NAMES_free>>;

struct OpenSslStringFree {
  void operator()(unsigned char* p) const { OPENSSL_free(p); }
};
using UniqueOpenSslString = std::unique_ptr<unsigned char, OpenSslStringFree>;

// Debian's abseil has its own string_view type (see parse_internal.h).
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string Quoted(const CertificateConfig& c) { return absl::StrCat("certificate \"", c.name, "\""); }

// PEM files are small; the cap only stops a mistaken path from eating memory.
constexpr size_t kMaxPemBytes = 1 << 20;

absl::StatusOr<std::string> ReadWholeFile(std::string_view what, const std::string& path) {
  absl::StatusOr<std::string> data = ReadSmallFile(path, kMaxPemBytes);
  if (!data.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(Av(what), ": ", data.status().message()));
  }
  if (data->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(Av(what), ": ", path, " is empty"));
  }
  return data;
}

absl::StatusOr<std::string> ReadWholeFile(const CertificateConfig& c, const std::string& path) {
  return ReadWholeFile(Quoted(c), path);
}

UniqueBio MemoryBio(const std::string& data) {
  return UniqueBio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

// True when the last queued error is PEM's "no more PEM blocks", i.e. the
// file simply ended; anything else means a damaged block.
bool PemQueueEndedCleanly() {
  unsigned long err = ERR_peek_last_error();
  return ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE;
}

// Every PEM block of one type in `pem` (PEM_read_bio_X509 or _X509_CRL):
// at least one, no damaged ones. Other block types are skipped.
template <typename T, typename Unique>
absl::Status ReadPemBlocks(std::string_view what, const std::string& path, const std::string& pem,
                           T* (*read)(BIO*, T**, pem_password_cb*, void*),
                           std::vector<Unique>* out) {
  UniqueBio bio = MemoryBio(pem);
  if (bio == nullptr) return absl::ResourceExhaustedError("BIO_new_mem_buf failed");
  ERR_clear_error();
  while (T* x = read(bio.get(), nullptr, nullptr, nullptr)) out->emplace_back(x);
  if (!PemQueueEndedCleanly()) {
    return absl::InvalidArgumentError(absl::StrCat("bad PEM ", Av(what), " in ", path, " (after ",
                                                   out->size(), " good ones): ",
                                                   TakeOpenSslReason()));
  }
  ERR_clear_error();
  if (out->empty()) {
    return absl::InvalidArgumentError(absl::StrCat("no PEM ", Av(what), " in ", path));
  }
  return absl::OkStatus();
}

absl::Status ReadCertificates(const CertificateConfig& c, LoadedCertificate& out) {
  absl::StatusOr<std::string> pem = ReadWholeFile(c, c.cert_path);
  if (!pem.ok()) return pem.status();
  // PEM_read_bio_X509 skips blocks of other types (a key in the same file),
  // so a combined cert+key file still works.
  std::vector<UniqueX509> certs;
  if (absl::Status s = ReadPemBlocks("certificate", c.cert_path, *pem, &PEM_read_bio_X509, &certs);
      !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(Quoted(c), ": ", s.message()));
  }
  out.leaf = std::move(certs.front());
  for (size_t i = 1; i < certs.size(); ++i) out.chain.push_back(std::move(certs[i]));
  return absl::OkStatus();
}

// Called by PEM when the key is encrypted. We never prompt (we are a daemon);
// recording the request lets the error say "encrypted" instead of a vague
// decoding failure.
int RefusePassphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* asked) {
  *static_cast<bool*>(asked) = true;
  return -1;
}

absl::Status ReadKey(const CertificateConfig& c, LoadedCertificate& out) {
  absl::StatusOr<std::string> pem = ReadWholeFile(c, c.key_path);
  if (!pem.ok()) return pem.status();
  UniqueBio bio = MemoryBio(*pem);
  if (bio == nullptr) return absl::ResourceExhaustedError("BIO_new_mem_buf failed");

  ERR_clear_error();
  bool asked_passphrase = false;
  out.key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, RefusePassphrase, &asked_passphrase));
  if (out.key == nullptr) {
    if (asked_passphrase) {
      ERR_clear_error();
      return absl::InvalidArgumentError(absl::StrCat(
          Quoted(c), ": key ", c.key_path, " is encrypted; ktlb needs an unencrypted PEM key"));
    }
    // OpenSSL 3.0's decoder chain reports every failure as "unsupported",
    // so tell the two real cases apart ourselves.
    ERR_clear_error();
    if (pem->find("PRIVATE KEY-----") != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(Quoted(c), ": cannot decode the private key in ", c.key_path));
    }
    return absl::InvalidArgumentError(
        absl::StrCat(Quoted(c), ": no PEM private key in ", c.key_path));
  }
  ERR_clear_error();
  return absl::OkStatus();
}

// SAN dNSName entries, lowercased, in certificate order. Clients match SAN
// only; the subject CN is used solely for certificates with no DNS SAN at
// all (old self-signed ones), as RFC 6125 allows.
std::vector<std::string> DnsNames(X509* leaf) {
  std::vector<std::string> names;
  UniqueGeneralNames sans(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(leaf, NID_subject_alt_name, nullptr, nullptr)));
  if (sans != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans.get()); ++i) {
      const GENERAL_NAME* gn = sk_GENERAL_NAME_value(sans.get(), i);
      if (gn->type != GEN_DNS) continue;
      const ASN1_STRING* s = gn->d.dNSName;
      std::string name(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                       static_cast<size_t>(ASN1_STRING_length(s)));
      // An embedded NUL is the classic "good.test\0.evil.test" trick; such a
      // name is never a real host, so it never enters the SNI table.
      if (name.empty() || name.find('\0') != std::string::npos) continue;
      names.push_back(absl::AsciiStrToLower(name));
    }
  }
  if (!names.empty()) return names;

  const X509_NAME* subject = X509_get_subject_name(leaf);
  int pos = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (pos < 0) return names;
  const ASN1_STRING* cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, pos));
  unsigned char* utf8 = nullptr;
  int len = ASN1_STRING_to_UTF8(&utf8, cn);
  UniqueOpenSslString owned(utf8);
  if (len > 0) {
    std::string name(reinterpret_cast<const char*>(utf8), static_cast<size_t>(len));
    if (name.find('\0') == std::string::npos) names.push_back(absl::AsciiStrToLower(name));
  }
  return names;
}

// notAfter as unix seconds (0 if OpenSSL cannot read it).
int64_t NotAfter(const X509* leaf) {
  struct tm t = {};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(leaf), &t) != 1) return 0;
  return static_cast<int64_t>(timegm(&t));
}

// Prefixes "FILE:LINE: certificates[i].cert|key: " when the config recorded
// where the value came from (configs built in code, e.g. tests, have no lines).
absl::Status At(const Config* config, const CertificateConfig& c, bool key, absl::Status s) {
  uint32_t line = key ? c.key_line : c.cert_line;
  if (config == nullptr || line == 0) return s;
  return absl::Status(s.code(), absl::StrCat(config->path, ":", line, ": certificates[", c.index,
                                             "].", key ? "key" : "cert", ": ", s.message()));
}

absl::StatusOr<CertificatePtr> LoadOne(const CertificateConfig& c, const Config* config) {
  auto cert = std::make_shared<LoadedCertificate>();
  cert->name = c.name;
  if (absl::Status s = ReadCertificates(c, *cert); !s.ok()) return At(config, c, false, s);
  if (absl::Status s = ReadKey(c, *cert); !s.ok()) return At(config, c, true, s);

  if (X509_check_private_key(cert->leaf.get(), cert->key.get()) != 1) {
    ERR_clear_error();
    return At(config, c, true,
              absl::InvalidArgumentError(absl::StrCat(Quoted(c), ": key ", c.key_path,
                                                      " does not match certificate ", c.cert_path)));
  }
  // Only RSA and ECDSA certificates serve both TLS 1.2 and 1.3 clients.
  if (!EVP_PKEY_is_a(cert->key.get(), "RSA") && !EVP_PKEY_is_a(cert->key.get(), "EC")) {
    const char* type = EVP_PKEY_get0_type_name(cert->key.get());
    return At(config, c, true,
              absl::InvalidArgumentError(absl::StrCat(Quoted(c), ": key ", c.key_path, " is ",
                                                      type != nullptr ? type : "unknown",
                                                      "; use an RSA or ECDSA key")));
  }
  cert->dns_names = DnsNames(cert->leaf.get());
  cert->not_after = NotAfter(cert->leaf.get());
  absl::StatusOr<ClientAuthPtr> auth =
      LoadClientAuth(c.client_auth, config != nullptr ? std::string_view(config->path) : "");
  if (!auth.ok()) return auth.status();
  cert->client_auth = *std::move(auth);
  return CertificatePtr(std::move(cert));
}

// "FILE:LINE: listeners[0].client_auth.ca: " before `s` when the place is known.
absl::Status AtClientAuth(std::string_view config_path, const ClientAuthConfig& c,
                          std::string_view key, uint32_t line, absl::Status s) {
  if (config_path.empty() || line == 0) return s;
  return absl::Status(s.code(), absl::StrCat(Av(config_path), ":", line, ": ", c.key, ".",
                                             Av(key), ": ", s.message()));
}

}  // namespace

absl::StatusOr<ClientAuthPtr> LoadClientAuth(const ClientAuthConfig& config,
                                             std::string_view config_path) {
  if (!config.enabled) return ClientAuthPtr();
  auto auth = std::make_shared<LoadedClientAuth>();
  auth->mode = config.mode;
  absl::StatusOr<std::string> pem = ReadWholeFile("client CA file", config.ca_path);
  absl::Status st = pem.status();
  if (st.ok()) {
    st = ReadPemBlocks("certificate", config.ca_path, *pem, &PEM_read_bio_X509, &auth->cas);
  }
  if (!st.ok()) return AtClientAuth(config_path, config, "ca", config.ca_line, st);
  if (!config.crl_path.empty()) {
    pem = ReadWholeFile("CRL file", config.crl_path);
    st = pem.status();
    if (st.ok()) {
      st = ReadPemBlocks("CRL", config.crl_path, *pem, &PEM_read_bio_X509_CRL, &auth->crls);
    }
    if (!st.ok()) return AtClientAuth(config_path, config, "crl", config.crl_line, st);
  }
  return ClientAuthPtr(std::move(auth));
}

absl::StatusOr<std::vector<CertificatePtr>> LoadCertificates(const Config& config) {
  std::vector<CertificatePtr> certs;
  certs.reserve(config.certificates.size());
  for (const CertificateConfig& c : config.certificates) {
    absl::StatusOr<CertificatePtr> cert = LoadOne(c, &config);
    if (!cert.ok()) return cert.status();
    certs.push_back(*std::move(cert));
  }
  return certs;
}

}  // namespace ktlb::tls
