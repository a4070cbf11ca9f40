/*
 * criu_ps.h: CRIU's own page server as lr-lazyd's page source (--criu-page-server).
 *
 * `criu dump --lazy-pages --address A --port P` (and `runc checkpoint
 * --lazy-pages --page-server A:P`) keeps the dumped tree's lazy pages in
 * memory and serves them on one TCP connection with CRIU's page-server
 * protocol (criu/page-xfer.c): the client sends a fixed struct page_server_iov
 * {cmd PS_IOV_GET, nr_pages, vaddr, dst_id = the task's pid in the dump};
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
 */
#ifndef LR_CRIU_PS_H
#define LR_CRIU_PS_H

#include <stdbool.h>
#include <stdint.h>

#include "lr_error.h"

struct lr_lazyd;

/* Connect to cfg.criu_ps and put the connection in the event loop. */
int lr_cps_start(struct lr_lazyd *d, struct lr_error *err);
/* Ask for the pages of record rec in checkpoint addresses [a, b) not already asked for (urgent: for a fault). */
int lr_cps_want(struct lr_lazyd *d, uint32_t rec, uint64_t a, uint64_t b, bool urgent, struct lr_error *err);
/* The background drain: ask for pending pages while less than a window is in flight; 1 when it asked. */
int lr_cps_drain_step(struct lr_lazyd *d, struct lr_error *err);
/* Every page placed: PS_IOV_CLOSE, and the server's status. */
int lr_cps_done(struct lr_lazyd *d, struct lr_error *err);
void lr_cps_close(struct lr_lazyd *d);

#endif /* LR_CRIU_PS_H */
