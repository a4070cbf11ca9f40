/*
 * criu_ps.h: CRIU's own page server as lr-lazyd's page source (--criu-page-server).
 *
 * `criu dump --lazy-pages --address A --port P` (and `runc checkpoint
 * --lazy-pages --page-server A:P`) keeps the dumped tree's lazy pages in
 * memory and serves them on one TCP connection with CRIU's page-server
 * protocol (criu/page-xfer.c): the client sends a fixed struct page_server_iov
 * (below) {cmd PS_IOV_GET, nr_pages, vaddr, dst_id = the task's pid in the dump};
 * the server answers in order with the same struct, cmd PS_IOV_ADD_F | PE_PRESENT
 * << 16 and nr_pages possibly fewer than asked (what is contiguous in its page
 * buffer), followed by nr_pages pages. PS_IOV_CLOSE ends the session: the
 * server answers an int32 status, and the dump finishes (the source tree is
 * gone). An unknown range makes the server drop the connection, so only the
 * index's lazy ranges are ever asked for.
 *
 * The connection cannot be re-established (the server serves one), so losing
 * it is fatal: the guardian kills the restored tree. CRIU sends no checksums:
 * the index has none (LR_RANGE_UNVERIFIED) and TCP's are all there is.
 *
 * `criu page-server --lazy-pages -D DIR` serves a normal dump's images the
 * same way: its PE_LAZY pages, which are the index's LR_RANGE_LAZY records
 * (the plugin's index, with checksums). Each block a reply holds whole is
 * checked against them before it is placed; a mismatch is fatal (the server
 * serves another dump). A block a partial reply cuts is placed unverified.
 */
#ifndef LR_CRIU_PS_H
#define LR_CRIU_PS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lr_error.h"

/*
 * CRIU's page-server header, as CRIU 4.2.1 defines it (criu/page-xfer.c): {u32 cmd; u64 nr_pages; u64 vaddr;
 * u64 dst_id}, not packed, so 4 bytes of padding follow cmd on x86-64 and the header is 32 bytes. CRIU 4.1.x had
 * u32 nr_pages and 24 bytes: a 4.1 peer and a 4.2 peer cannot talk. The padding is explicit here (and sent as
 * zeros); CRIU reuses a GET's header for its reply, so a reply carries what the request had there.
 */
struct page_server_iov {
	uint32_t cmd;
	uint32_t pad;
	uint64_t nr_pages;
	uint64_t vaddr;
	uint64_t dst_id;
};
_Static_assert(sizeof(struct page_server_iov) == 32, "CRIU 4.2's page_server_iov is 32 bytes");
_Static_assert(offsetof(struct page_server_iov, nr_pages) == 8, "CRIU 4.2 pads cmd to 8 bytes");

/* CRIU 4.2.1 criu/page-xfer.c: the commands lr-lazyd uses; a reply's cmd carries flags above PS_CMD_BITS. */
#define PS_IOV_ADD_F 6
#define PS_IOV_GET 7
#define PS_IOV_CLOSE 0x1023
#define PS_CMD_MASK 0xffffu

/* The source itself: lr_src_criu_ops (source.h, src_criu.c). */

#endif /* LR_CRIU_PS_H */
