// A listener's TLS policy (versions, groups, TLS 1.2 ciphers, TLS 1.3
// suites): applied to each of its contexts, and checked against the linked
// OpenSSL when a snapshot is built so that `ktlb --check` and a reload refuse
// a name OpenSSL does not know.
//
// OpenSSL 3.0 is lenient where an operator needs it strict: a cipher list or
// a TLS 1.3 suite list with one unknown name among known ones is accepted and
// the unknown name silently dropped. So each name is tried on its own on a
// scratch context, and the error names the one that failed.
#include <algorithm>
#include <iterator>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "ktlb/tls.h"

namespace ktlb::tls {
namespace {

using internal::TakeOpenSslReason;

// Splits an OpenSSL name list at any of `separators`, dropping empty pieces.
std::vector<std::string> SplitNames(std::string_view list, std::string_view separators) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find_first_of(separators, start);
    if (end == std::string_view::npos) end = list.size();
    if (end > start) out.emplace_back(list.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// True when `suite` names a TLS 1.3 suite this OpenSSL has: alone in the
// list, it must come back out of the context (an unknown name in a longer
// list is dropped without an error).
bool KnowsSuite(SSL_CTX* scratch, const std::string& suite) {
  if (SSL_CTX_set_ciphersuites(scratch, suite.c_str()) != 1) return false;
  STACK_OF(SSL_CIPHER)* ciphers = SSL_CTX_get_ciphers(scratch);
  for (int i = 0; i < sk_SSL_CIPHER_num(ciphers); ++i) {
    const char* name = SSL_CIPHER_standard_name(sk_SSL_CIPHER_value(ciphers, i));
    if (name != nullptr && suite == name) return true;
  }
  return false;
}

// True when one element of a TLS 1.2 cipher string (a cipher name, an alias
// like ECDHE+AESGCM, possibly prefixed !, - or +) matches some cipher.
bool KnowsCipherElement(SSL_CTX* scratch, const std::string& element) {
  if (element.starts_with("@")) return true;  // @STRENGTH, @SECLEVEL=n: directives
  const bool prefixed =
      element.starts_with("!") || element.starts_with("-") || element.starts_with("+");
  const std::string name = prefixed ? element.substr(1) : element;
  return !name.empty() && SSL_CTX_set_cipher_list(scratch, name.c_str()) == 1;
}

// One name-list key of the policy: how to split it, how to try one element,
// and how to apply the whole list.
struct NameList {
  const char* key;
  const char* separators;
  bool (*known)(SSL_CTX* scratch, const std::string& element);
  int (*apply)(SSL_CTX* scratch, const char* list);
  const char* unknown;  // what an unknown element is, after its quoted name
};

// SSL_CTX_set1_groups_list is a macro over SSL_CTX_ctrl (a long).
int SetGroups(SSL_CTX* ctx, const char* list) {
  return static_cast<int>(SSL_CTX_set1_groups_list(ctx, list));
}
bool KnowsGroup(SSL_CTX* scratch, const std::string& group) {
  return SetGroups(scratch, group.c_str()) == 1;
}

const NameList kNameLists[] = {
    {"tls_groups", ":", &KnowsGroup, &SetGroups,
     "is not a group OpenSSL knows (e.g. X25519, P-256, P-384, P-521, X448, ffdhe2048)"},
    {"tls_ciphers", ": ,;", &KnowsCipherElement, &SSL_CTX_set_cipher_list,
     "matches no TLS 1.2 cipher (e.g. ECDHE-RSA-AES128-GCM-SHA256; TLS 1.3 suites go in "
     "tls_ciphersuites)"},
    {"tls_ciphersuites", ":", &KnowsSuite, &SSL_CTX_set_ciphersuites,
     "is not a TLS 1.3 suite OpenSSL knows (e.g. TLS_AES_128_GCM_SHA256; TLS 1.2 ciphers go in "
     "tls_ciphers)"},
};

// What is wrong with `list`, or "" when OpenSSL takes every element and the
// whole (each element may be known and the whole still empty: "!ALL").
std::string CheckNames(const NameList& kind, const std::string& list) {
  UniqueSslCtx scratch(SSL_CTX_new(TLS_server_method()));
  if (scratch == nullptr) return "SSL_CTX_new failed";
  std::string problem;
  for (const std::string& element : SplitNames(list, kind.separators)) {
    if (!kind.known(scratch.get(), element)) {
      problem = absl::StrCat("\"", element, "\" ", kind.unknown);
      break;
    }
  }
  if (problem.empty() && kind.apply(scratch.get(), list.c_str()) != 1) {
    problem = absl::StrCat("OpenSSL refuses \"", list, "\": ", TakeOpenSslReason());
  }
  ERR_clear_error();  // the per-name attempts leave errors behind
  return problem;
}

absl::Status OpenSslRefused(const char* call) {
  return absl::InvalidArgumentError(absl::StrCat(call, " failed: ", TakeOpenSslReason()));
}

}  // namespace

absl::Status ApplyTlsPolicy(SSL_CTX* ctx, const TlsPolicy& policy) {
  if (SSL_CTX_set_min_proto_version(ctx, policy.min_version) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, policy.max_version) != 1) {
    return OpenSslRefused("SSL_CTX_set_{min,max}_proto_version");
  }
  if (SSL_CTX_set_cipher_list(ctx, policy.ciphers.c_str()) != 1) {
    return OpenSslRefused("SSL_CTX_set_cipher_list");
  }
  if (SSL_CTX_set_ciphersuites(ctx, policy.ciphersuites.c_str()) != 1) {
    return OpenSslRefused("SSL_CTX_set_ciphersuites");
  }
  if (SSL_CTX_set1_groups_list(ctx, policy.groups.c_str()) != 1) {
    return OpenSslRefused("SSL_CTX_set1_groups_list");
  }
  return absl::OkStatus();
}

absl::Status CheckTlsPolicies(const Config& config) {
  for (size_t i = 0; i < config.listeners.size(); ++i) {
    const ListenerConfig& listener = config.listeners[i];
    if (listener.mode != ListenerMode::kTerminate) continue;
    const TlsPolicy& policy = listener.tls;
    const std::pair<const std::string&, uint32_t> values[] = {
        {policy.groups, policy.groups_line},
        {policy.ciphers, policy.ciphers_line},
        {policy.ciphersuites, policy.ciphersuites_line}};
    static_assert(std::size(values) == std::size(kNameLists));
    for (size_t k = 0; k < std::size(kNameLists); ++k) {
      std::string problem = CheckNames(kNameLists[k], values[k].first);
      if (problem.empty()) continue;
      // The defaults never fail, so a line of 0 only comes from a config
      // built in code.
      return absl::InvalidArgumentError(
          absl::StrCat(config.path, ":", std::max<uint32_t>(values[k].second, 1), ": listeners[",
                       i, "].", kNameLists[k].key, ": ", problem));
    }
  }
  return absl::OkStatus();
}

}  // namespace ktlb::tls
