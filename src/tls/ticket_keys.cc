// Session-ticket key material shared by every worker, so a ticket issued by
// one worker's SSL_CTX resumes on any other.
#include <cstdio>
#include <cstdlib>

#include <openssl/rand.h>

#include "ktlb/tls.h"

namespace ktlb::tls {

static_assert(sizeof(TicketKeys::bytes) == 80,
              "SSL_CTX_set_tlsext_ticket_keys takes exactly 80 bytes: "
              "16 name + 32 HMAC + 32 AES");

TicketKeys TicketKeys::Generate() {
  TicketKeys keys;
  // Predictable ticket keys would let anyone decrypt resumed sessions, and
  // the signature leaves no way to report failure: stop instead. RAND_bytes
  // only fails when the OS entropy source itself is broken.
  if (RAND_bytes(keys.bytes, sizeof(keys.bytes)) != 1) {
    std::fputs("ktlb: RAND_bytes failed; cannot create session ticket keys\n", stderr);
    std::abort();
  }
  return keys;
}

}  // namespace ktlb::tls
