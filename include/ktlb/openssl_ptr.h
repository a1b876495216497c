// unique_ptr owners for OpenSSL objects, so no happy path calls *_free.
#pragma once

#include <memory>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

namespace ktlb {

template <typename T, void (*F)(T*)>
struct OpenSslDeleter {
  void operator()(T* p) const { F(p); }
};

using UniqueSsl = std::unique_ptr<SSL, OpenSslDeleter<SSL, SSL_free>>;
using UniqueSslCtx = std::unique_ptr<SSL_CTX, OpenSslDeleter<SSL_CTX, SSL_CTX_free>>;
using UniqueX509 = std::unique_ptr<X509, OpenSslDeleter<X509, X509_free>>;
using UniqueEvpPkey = std::unique_ptr<EVP_PKEY, OpenSslDeleter<EVP_PKEY, EVP_PKEY_free>>;
using UniqueBio = std::unique_ptr<BIO, OpenSslDeleter<BIO, BIO_free_all>>;
using UniqueX509Crl = std::unique_ptr<X509_CRL, OpenSslDeleter<X509_CRL, X509_CRL_free>>;
using UniqueX509Store = std::unique_ptr<X509_STORE, OpenSslDeleter<X509_STORE, X509_STORE_free>>;

}  // namespace ktlb
