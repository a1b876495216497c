#!/usr/bin/env bash
# Creates the test PKI used by the quickstart, the integration tests and the
# benchmarks:
#
#   gen-certs.sh DIR
#
#   ca.crt ca.key                   test root CA (RSA-2048); trust it with curl --cacert DIR/ca.crt
#   intermediate.crt intermediate.key   intermediate CA, signed by the root
#   site.crt site.key               RSA-2048 leaf for localhost, example.test, *.example.test,
#                                   IP 127.0.0.1; site.crt = leaf then intermediate
#   other.crt other.key             ECDSA P-256 leaf for other.test, *.other.test;
#                                   other.crt = leaf then intermediate
#   client.crt client.key           ECDSA P-256 client certificate (CN=test-client), for mTLS
#   mismatch.key                    an RSA-2048 key that matches no certificate
#
# Idempotent: does nothing when DIR/ca.crt already exists. Files are made in a
# scratch directory and moved into DIR with ca.crt last, so an interrupted run
# never leaves a half-made set behind that later runs would trust.
# Private keys are test material only: never use them for anything real.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1
if [[ -e "$dir/ca.crt" ]]; then
  exit 0
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)  # absolute: the work below happens in a scratch dir
work=$(mktemp -d "$dir/.gen-certs.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

days=3650
serial() { echo "0x$(openssl rand -hex 16)"; }

rsa_key() { openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1"; }
ec_key() { openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

cat > ext.cnf <<'EOF'
[req]
distinguished_name = req_dn

[req_dn]

[v3_root]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_intermediate]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[v3_site]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = DNS:localhost, DNS:example.test, DNS:*.example.test, IP:127.0.0.1

[v3_other]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = DNS:other.test, DNS:*.other.test

[v3_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

# sign NAME SUBJECT ISSUER SECTION: certifies NAME.key with ISSUER.pem/.key using
# the extensions of [v3_SECTION]; writes NAME.pem.
sign() {
  local name=$1 subject=$2 issuer=$3 section=$4
  openssl req -new -key "$name.key" -subj "$subject" -config ext.cnf -out "$name.csr"
  if ! openssl x509 -req -in "$name.csr" -CA "$issuer.pem" -CAkey "$issuer.key" \
      -set_serial "$(serial)" -days "$days" -sha256 \
      -extfile ext.cnf -extensions "v3_$section" -out "$name.pem" 2>"$name.log"; then
    cat "$name.log" >&2
    exit 1
  fi
}

# Root CA (self-signed).
rsa_key ca.key
openssl req -new -x509 -key ca.key -subj "/O=ktlb test/CN=ktlb test root CA" \
  -set_serial "$(serial)" -days "$days" -sha256 -config ext.cnf -extensions v3_root -out ca.pem

rsa_key intermediate.key
sign intermediate "/O=ktlb test/CN=ktlb test intermediate CA" ca intermediate

rsa_key site.key
sign site "/O=ktlb test/CN=localhost" intermediate site

ec_key other.key
sign other "/O=ktlb test/CN=other.test" intermediate other

ec_key client.key
sign client "/O=ktlb test/CN=test-client" intermediate client

rsa_key mismatch.key

# Check the chains before publishing them.
openssl verify -CAfile ca.pem -untrusted intermediate.pem site.pem other.pem client.pem >/dev/null

cat site.pem intermediate.pem > site.crt
cat other.pem intermediate.pem > other.crt
cat client.pem intermediate.pem > client.crt
cp intermediate.pem intermediate.crt
cp ca.pem ca.crt
chmod 600 ./*.key

for f in intermediate.crt intermediate.key site.crt site.key other.crt other.key \
         client.crt client.key mismatch.key ca.key ca.crt; do
  mv -f "$f" "$dir/$f"
done
