// SPDX-License-Identifier: GPL-2.0
/*
 * clusterip XDP pre-filter: drop packets to a VIP whose bucket another node owns, before the
 * stack and before nft's netdev ingress hook. Everything it cannot decide goes on (XDP_PASS)
 * to the unchanged nft datapath, which stays the authority.
 *
 * The bucket is the one nft computes with `jhash FIELDS mod N seed S offset 1`
 * (net/netfilter/nft_hash.c): jhash over nft's registers, where every field starts on a 4-byte
 * boundary (saddr; then sport, zero-padded to 4 bytes; then dport, likewise), then
 * reciprocal_scale(h, N) + 1. Its Python twin is clusterip/hashing.py.
 *
 * Passed unchanged: non-IP frames (ARP, VLAN, ...), IPv6 neighbour discovery and anything
 * that is not to a configured VIP, IPv4 fragments (MF set or a non-zero offset: no ports in
 * the later ones), protocols that are not configured for the VIP (ICMP included), packets to
 * ports not configured, IPv6 with extension headers, truncated headers, and every bucket whose
 * value is PASS. The bucket map starts zeroed: 0 is PASS, so a fresh program drops nothing.
 *
 * OWNED (prototype of the fast path for owned buckets): the frame's destination MAC becomes the
 * interface's own MAC, so the stack sees PACKET_HOST, and its source MAC the VIP's cluster MAC,
 * a multicast address no real sender can use as a source: nft can recognise (and accept at
 * once) the frames this program vouched for with `ether saddr CLUSTER_MAC`. TCP bare SYNs and
 * protocols not in `owned_protos` pass unchanged, to nft's full chain. Because that source marks
 * frames this program vouched for, a frame to a VIP that arrives with a multicast source (which
 * no real sender may use: a forgery, or a loop) is dropped first, whatever its bucket (counter
 * `forged`).
 *
 * Configuration (VIPs, hashmode, seed, protocols, ports) is read-only data fixed at load time
 * (.rodata, frozen: the verifier prunes what a configuration does not use); the modulus and
 * the bucket values are maps the control plane updates at run time. Compile:
 *   clang -O2 -g -target bpf -I/usr/include/$(dpkg-architecture -qDEB_HOST_MULTIARCH) -c
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_VIPS 8
#define MAX_BUCKETS 16384 /* per VIP; clusterip.agent.assign.MAX_BUCKETS */
#define DPORT_BYTES 8192  /* one bit per port */

enum verdict { V_PASS = 0, V_DROP = 1, V_OWNED = 2 };
enum counter { C_DROPPED = 0, C_PASSED = 1, C_OWNED = 2, C_FORGED = 3, N_COUNTERS = 4 };
enum hashmode { H_SOURCEIP = 0, H_SPORT = 1, H_SPORT_DPORT = 2 };
#define P_TCP 1
#define P_UDP 2
#define P_SCTP 4

struct vip_cfg {
	__u32 addr[4];		/* network byte order; IPv4 in addr[0] */
	__u32 seed;
	__u8 family;		/* 4 or 6 */
	__u8 hashmode;		/* enum hashmode */
	__u8 protos;		/* P_* that are hashed */
	__u8 any_dport;		/* 1: every destination port; 0: only those in dports */
	__u8 owned_protos;	/* P_* that the OWNED fast path may rewrite */
	__u8 cluster_mac[6];
	__u8 pad;
};

struct xdp_conf {
	__u32 n_vips;
	__u8 own_mac[6];
	__u8 has_v6;
	__u8 meta_bucket;	/* tests only: write the bucket into the XDP metadata */
	struct vip_cfg vips[MAX_VIPS];
	__u8 dports[MAX_VIPS][DPORT_BYTES];
};

const volatile struct xdp_conf conf = {};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_VIPS * MAX_BUCKETS);
	__type(key, __u32);
	__type(value, __u8);
} buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_VIPS);
	__type(key, __u32);
	__type(value, __u32);	/* the bucket count N; 0 = not set: pass everything */
} modulus SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_VIPS * N_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* include/linux/jhash.h */
#define rol32(x, k) (((x) << (k)) | ((x) >> (32 - (k))))
#define JHASH_INITVAL 0xdeadbeef
#define jhash_mix(a, b, c) {                   \
	a -= c; a ^= rol32(c, 4);  c += b;     \
	b -= a; b ^= rol32(a, 6);  a += c;     \
	c -= b; c ^= rol32(b, 8);  b += a;     \
	a -= c; a ^= rol32(c, 16); c += b;     \
	b -= a; b ^= rol32(a, 19); a += c;     \
	c -= b; c ^= rol32(b, 4);  b += a;     \
}
#define jhash_final(a, b, c) {                 \
	c ^= b; c -= rol32(b, 14);             \
	a ^= c; a -= rol32(c, 11);             \
	b ^= a; b -= rol32(a, 25);             \
	c ^= b; c -= rol32(b, 16);             \
	a ^= c; a -= rol32(c, 4);              \
	b ^= a; b -= rol32(a, 14);             \
	c ^= b; c -= rol32(b, 24);             \
}

/* jhash() of `n` 32-bit words (4 <= 4n <= 24 bytes) as the kernel reads them on a little-endian
 * CPU: the words here were loaded from packet bytes, so they already are those bytes' LE view. */
static __always_inline __u32 jhash_words(const __u32 *k, int n, __u32 initval)
{
	__u32 a, b, c;

	a = b = c = JHASH_INITVAL + (__u32)(n * 4) + initval;
	if (n > 3) {
		a += k[0]; b += k[1]; c += k[2];
		jhash_mix(a, b, c);
		k += 3;
		n -= 3;
	}
	a += k[0];
	if (n > 1)
		b += k[1];
	if (n > 2)
		c += k[2];
	jhash_final(a, b, c);
	return c;
}

static __always_inline void count(__u32 vip, __u32 which)
{
	__u32 key = vip * N_COUNTERS + which;
	__u64 *v = bpf_map_lookup_elem(&counters, &key);

	if (v)
		*v += 1;
}

/* A frame to a VIP with a multicast source MAC: no real sender uses one, and the OWNED fast
 * path marks the frames it vouched for with the cluster MAC as source (nft accepts those at once). */
static __always_inline int forged(__u32 vip)
{
	count(vip, C_FORGED);
	return XDP_DROP;
}

static __always_inline int proto_bit(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP: return P_TCP;
	case IPPROTO_UDP: return P_UDP;
	case IPPROTO_SCTP: return P_SCTP;
	}
	return 0;
}

/* The verdict for a VIP packet whose key words (saddr words, then ports) are in k[0..nsaddr+1]
 * and whose layer 4 header (at least 4 bytes) starts at l4. */
static __always_inline int decide(struct xdp_md *ctx, __u32 idx, __u32 *k, int nsaddr,
				  __u8 pbit, void *l4, void *end)
{
	const volatile struct vip_cfg *v = &conf.vips[idx];
	__u16 sport = ((__u16 *)l4)[0], dport = ((__u16 *)l4)[1];
	__u32 *m, key, h, b;
	__u8 *val;
	int n = nsaddr;

	if (!(v->protos & pbit))
		goto pass;
	if (!v->any_dport) {
		__u16 p = bpf_ntohs(dport);

		if (!(conf.dports[idx & (MAX_VIPS - 1)][p >> 3] & (1 << (p & 7))))
			goto pass;
	}
	if (v->hashmode != H_SOURCEIP) {
		k[n++] = sport;		/* the 2 port bytes, then 2 zero bytes */
		if (v->hashmode == H_SPORT_DPORT)
			k[n++] = dport;
	}
	m = bpf_map_lookup_elem(&modulus, &idx);
	if (!m || !*m)
		goto pass;
	h = jhash_words(k, n, v->seed);
	b = (__u32)(((__u64)h * *m) >> 32);	/* reciprocal_scale; nft adds the offset 1 */
	if (conf.meta_bucket) {
		/* Tests: the bucket (1..N) in front of the frame, returned by BPF_PROG_TEST_RUN. */
		if (bpf_xdp_adjust_meta(ctx, -4) == 0) {
			__u32 *meta = (void *)(long)ctx->data_meta;

			if ((void *)(meta + 1) <= (void *)(long)ctx->data)
				*meta = b + 1;
		}
		/* adjust_meta invalidates packet pointers: decide from the map only below. */
		l4 = 0;
	}
	key = idx * MAX_BUCKETS + b;
	val = bpf_map_lookup_elem(&buckets, &key);
	if (!val)
		goto pass;
	if (*val == V_DROP) {
		count(idx, C_DROPPED);
		return XDP_DROP;
	}
	if (*val == V_OWNED && (v->owned_protos & pbit) && !conf.meta_bucket) {
		void *data = (void *)(long)ctx->data;
		struct ethhdr *eth = data;

		if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
			goto pass;
		if (pbit == P_TCP) {
			/* Bare SYNs go to nft unchanged: it records the flows it accepts. */
			struct tcphdr *th = l4;

			if ((void *)(th + 1) > end)
				goto pass;
			if (th->syn && !th->ack)
				goto pass;
		}
		/* Byte by byte through the volatile view: a memcpy from a cast-away-volatile
		 * pointer lets clang fold in the zeros `conf` is initialised with. */
#pragma unroll
		for (int i = 0; i < ETH_ALEN; i++) {
			eth->h_dest[i] = conf.own_mac[i];
			eth->h_source[i] = v->cluster_mac[i];
		}
		count(idx, C_OWNED);
		return XDP_PASS;
	}
pass:
	count(idx, C_PASSED);
	return XDP_PASS;
}

static __always_inline int handle_v4(struct xdp_md *ctx, struct ethhdr *eth, void *end)
{
	struct iphdr *iph = (void *)(eth + 1);
	void *l3 = iph;
	__u32 k[6] = {};
	__u32 idx, daddr;
	__u8 pbit;
	void *l4;

	if ((void *)(iph + 1) > end)
		return XDP_PASS;
	daddr = iph->daddr;
#pragma unroll
	for (idx = 0; idx < MAX_VIPS; idx++) {
		if (idx >= conf.n_vips)
			return XDP_PASS;
		if (conf.vips[idx].family == 4 && conf.vips[idx].addr[0] == daddr)
			goto found;
	}
	return XDP_PASS;
found:
	if (eth->h_source[0] & 1)
		return forged(idx);
	/* A fragment: later ones carry no ports, the first is passed with them (nft decides). */
	if (iph->frag_off & bpf_htons(0x3fff))
		goto pass;
	pbit = proto_bit(iph->protocol);
	if (!pbit || iph->ihl < 5)
		goto pass;
	l4 = l3 + iph->ihl * 4;
	if (l4 + 4 > end)
		goto pass;
	k[0] = iph->saddr;
	return decide(ctx, idx, k, 1, pbit, l4, end);
pass:
	count(idx, C_PASSED);
	return XDP_PASS;
}

static __always_inline int handle_v6(struct xdp_md *ctx, struct ethhdr *eth, void *end)
{
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	__u32 k[6] = {};
	__u32 idx;
	__u8 pbit;
	void *l4;

	if ((void *)(ip6 + 1) > end)
		return XDP_PASS;
#pragma unroll
	for (idx = 0; idx < MAX_VIPS; idx++) {
		if (idx >= conf.n_vips)
			return XDP_PASS;
		if (conf.vips[idx].family == 6 &&
		    conf.vips[idx].addr[0] == ip6->daddr.in6_u.u6_addr32[0] &&
		    conf.vips[idx].addr[1] == ip6->daddr.in6_u.u6_addr32[1] &&
		    conf.vips[idx].addr[2] == ip6->daddr.in6_u.u6_addr32[2] &&
		    conf.vips[idx].addr[3] == ip6->daddr.in6_u.u6_addr32[3])
			goto found;
	}
	return XDP_PASS;
found:
	if (eth->h_source[0] & 1)
		return forged(idx);
	/* Extension headers (fragments among them) and ICMPv6 (ND) go on to nft. */
	pbit = proto_bit(ip6->nexthdr);
	if (!pbit)
		goto pass;
	l4 = (void *)(ip6 + 1);
	if (l4 + 4 > end)
		goto pass;
	k[0] = ip6->saddr.in6_u.u6_addr32[0];
	k[1] = ip6->saddr.in6_u.u6_addr32[1];
	k[2] = ip6->saddr.in6_u.u6_addr32[2];
	k[3] = ip6->saddr.in6_u.u6_addr32[3];
	return decide(ctx, idx, k, 4, pbit, l4, end);
pass:
	count(idx, C_PASSED);
	return XDP_PASS;
}

SEC("xdp")
int clusterip_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_v4(ctx, eth, end);
	if (conf.has_v6 && eth->h_proto == bpf_htons(ETH_P_IPV6))
		return handle_v6(ctx, eth, end);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
