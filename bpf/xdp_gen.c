// SPDX-License-Identifier: GPL-2.0
/*
 * Benchmark helpers for the XDP pre-filter (bench/xdp.py); not part of the product.
 *
 * xdp_gen:  a NIC-like packet generator. Run with BPF_PROG_TEST_RUN in live-frames mode
 *           (BPF_F_TEST_XDP_LIVE_FRAMES) on the sender's veth: every repetition turns the
 *           template frame into a real xdp_frame and XDP_TX sends it out of that veth, in
 *           batches, so the peer (the receiver) gets frames with full headroom through its NAPI
 *           poll, as from a NIC's ring. The UDP source port walks through `n_ports` values
 *           (from `base_port`); the MACs are written anew into every frame (the pages are
 *           recycled, and the pre-filter's fast path rewrites the receiver's copy in place).
 * xdp_floor: the cheapest useful receiver program: drop every IPv4 packet to `vip`.
 * xdp_drop:  drop every frame unread: what the driver costs with any XDP program at all.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct gen_conf {
	__u32 vip;		/* network byte order */
	__u16 base_port;
	__u16 n_ports;		/* a power of two */
	__u8 dst[6];		/* the template's MACs, written again into every frame: the */
	__u8 src[6];		/* receiver may rewrite them in place, and pages are recycled */
};

const volatile struct gen_conf gconf = {};

__u32 seq = 0;

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = (void *)(eth + 1);
	struct udphdr *uh = (void *)(iph + 1);

	if ((void *)(uh + 1) > end)
		return XDP_ABORTED;
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++) {
		eth->h_dest[i] = gconf.dst[i];
		eth->h_source[i] = gconf.src[i];
	}
	if (gconf.n_ports > 1) {
		uh->source = bpf_htons(gconf.base_port + (seq & (gconf.n_ports - 1)));
		seq++;
	}
	return XDP_TX;
}

SEC("xdp")
int xdp_floor(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = (void *)(eth + 1);

	if ((void *)(iph + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP) && iph->daddr == gconf.vip)
		return XDP_DROP;
	return XDP_PASS;
}

SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
