// The client certificate's identity as ktlb hands it to the backend
// (X-Client-Cert-*): subject, SANs, fingerprint. Runs once per handshake,
// and only allocates when the client sent a certificate.
#include <openssl/bio.h>
#include <openssl/buffer.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>

#include <string>
#include <string_view>

#include "ktlb/openssl_ptr.h"
#include "ktlb/tls_transport.h"

namespace ktlb::tls {
namespace {

using UniqueGeneralNames =
    std::unique_ptr<GENERAL_NAMES, OpenSslDeleter<GENERAL_NAMES, GENERAL_NAMES_free>>;

constexpr char kHex[] = "0123456789abcdef";
constexpr char kHexUpper[] = "0123456789ABCDEF";

// Appends `bytes`, %XX-escaping what could break an HTTP field (control
// bytes, DEL, non-ASCII) and, in an element of the comma-separated SAN list
// (`list_item`), ',' and the escape character '%' itself.
void AppendFieldSafe(std::string* out, std::string_view bytes, bool list_item) {
  for (unsigned char c : bytes) {
    if (c < 0x20 || c >= 0x7f || (list_item && (c == ',' || c == '%'))) {
      out->push_back('%');
      out->push_back(kHexUpper[c >> 4]);
      out->push_back(kHexUpper[c & 15]);
    } else {
      out->push_back(static_cast<char>(c));
    }
  }
}

std::string_view AsView(const ASN1_STRING* s) {
  return std::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                          static_cast<size_t>(ASN1_STRING_length(s)));
}

// RFC 2253 (most specific RDN first, ',' between RDNs, '+' within one);
// OpenSSL's flags escape control and non-ASCII bytes as \XX already.
void AppendSubject(const X509* cert, std::string* out) {
  UniqueBio bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr) return;
  if (X509_NAME_print_ex(bio.get(), X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) < 0) return;
  BUF_MEM* mem = nullptr;
  BIO_get_mem_ptr(bio.get(), &mem);
  if (mem != nullptr) AppendFieldSafe(out, std::string_view(mem->data, mem->length), false);
}

void AppendSans(const X509* cert, std::string* out) {
  UniqueGeneralNames sans(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  if (sans == nullptr) return;
  for (int i = 0; i < sk_GENERAL_NAME_num(sans.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(sans.get(), i);
    std::string_view prefix;
    std::string_view value;
    char ip[INET6_ADDRSTRLEN] = {};
    switch (gn->type) {
      case GEN_DNS:
        prefix = "DNS:";
        value = AsView(gn->d.dNSName);
        break;
      case GEN_URI:
        prefix = "URI:";
        value = AsView(gn->d.uniformResourceIdentifier);
        break;
      case GEN_EMAIL:
        prefix = "email:";
        value = AsView(gn->d.rfc822Name);
        break;
      case GEN_IPADD: {
        const ASN1_OCTET_STRING* a = gn->d.iPAddress;
        const int family = ASN1_STRING_length(a) == 4 ? AF_INET : AF_INET6;
        if (ASN1_STRING_length(a) != 4 && ASN1_STRING_length(a) != 16) continue;
        if (inet_ntop(family, ASN1_STRING_get0_data(a), ip, sizeof ip) == nullptr) continue;
        prefix = "IP:";
        value = ip;
        break;
      }
      default:
        continue;  // other name forms (otherName, dirName, ...) are not passed on
    }
    if (!out->empty()) out->push_back(',');
    out->append(prefix);
    AppendFieldSafe(out, value, true);
  }
}

void AppendFingerprint(const X509* cert, std::string* out) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert, EVP_sha256(), md, &len) != 1) return;
  out->reserve(2 * len);
  for (unsigned int i = 0; i < len; ++i) {
    out->push_back(kHex[md[i] >> 4]);
    out->push_back(kHex[md[i] & 15]);
  }
}

}  // namespace

void CopyPeerIdentity(const SSL* ssl, HandshakeInfo* info) {
  info->peer_verified = false;
  info->peer_subject.clear();
  info->peer_san.clear();
  info->peer_fingerprint.clear();
  // The session's copy: also there when the session was resumed.
  const X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) return;
  info->peer_verified = SSL_get_verify_result(ssl) == X509_V_OK;
  AppendSubject(cert, &info->peer_subject);
  AppendSans(cert, &info->peer_san);
  AppendFingerprint(cert, &info->peer_fingerprint);
}

}  // namespace ktlb::tls
