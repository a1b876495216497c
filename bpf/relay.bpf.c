// Passthrough relay in the kernel: every socket of a relay that forwards by
// sockmap sits in `relay_socks`, keyed by its socket cookie, and `relay_peer`
// says which socket its bytes go to (the other socket of the same relay).
// The stream-verdict program runs on each socket's received bytes and sends
// them out of the peer (egress redirect): the bytes never reach user space.
//
// ktlb fills relay_peer before it inserts the two sockets, and removes the
// peer entries when the relay closes (a closed socket leaves relay_socks by
// itself).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// Sized for the process's whole passthrough population: an insert into a
// full map fails and that relay forwards by splice instead.
#define KTLB_RELAY_SOCKETS 65536

struct {
  __uint(type, BPF_MAP_TYPE_SOCKHASH);
  __uint(max_entries, KTLB_RELAY_SOCKETS);
  __type(key, __u64);    // socket cookie
  __type(value, __u64);  // socket fd on update
} relay_socks SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, KTLB_RELAY_SOCKETS);
  __type(key, __u64);    // socket cookie
  __type(value, __u64);  // the cookie of the socket its bytes go to
} relay_peer SEC(".maps");

SEC("sk_skb/stream_verdict")
int relay_verdict(struct __sk_buff *skb) {
  // A segment that carries only the FIN comes here with no bytes (tcp_read_skb
  // hands every skb to the verdict). Redirected, it reaches the peer's psock
  // backlog, whose send of 0 bytes counts as a broken pipe: EPIPE on the peer
  // and every byte still queued behind it lost. ktlb learns of the FIN from
  // the socket itself (RCV_SHUTDOWN is set before the verdict runs) and passes
  // it on once the bytes before it are out, so this skb is dropped here.
  if (skb->len == 0) return SK_DROP;
  __u64 cookie = bpf_get_socket_cookie(skb);
  __u64 *peer = bpf_map_lookup_elem(&relay_peer, &cookie);
  if (peer == 0) return SK_PASS;
  // The helper answers SK_DROP when the peer is not in relay_socks (yet, or
  // any more) and sets no redirect: SK_PASS then keeps the bytes for this
  // socket's own reader, where ktlb finds them and resets the relay rather
  // than lose them silently.
  bpf_sk_redirect_hash(skb, &relay_socks, peer, 0);
  return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
