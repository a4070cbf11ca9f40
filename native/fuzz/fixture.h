/*
 * fixture.h: what the frame and handshake harnesses run against: an lr-pageserver
 * (struct ps_server) opened by its own catalog code (ps_catalog_open) on a small
 * checkpoint written to a temporary directory, and connections made through its
 * own accept path (ps_conn_accept) on a Unix socket.
 *
 * The checkpoint: pages-1.img and pages-2.img, a manifest, and a valid lazy index
 * of the FX_RANGES records below with FX_BLOCK_SIZE checksum blocks, so a record can
 * start mid-block and end mid-block. scripts/fuzz.py builds its seeds (PAGES frames
 * with the right checksums, GET_PAGES of real records) from the same table: keep them
 * in step.
 */
#ifndef LR_FUZZ_FIXTURE_H
#define LR_FUZZ_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "fuzz.h"
#include "server.h"

#define FX_PAGE_SIZE 4096u
#define FX_BLOCK_SIZE 8192u
#define FX_CLIENTS_MAX 8      /* connections one input may open */
#define FX_SERVER_MAX_CONNS 3 /* its --max-conns: below the 4 client slots of fuzz_handshake, so that a full
                               * server evicts an unauthenticated connection or refuses (conn.c make_room) */

/* Open the fixture server (once per process; aborts when it cannot). */
void fx_server_open(struct ps_server *s);

/* A connection the server accepted; *peer is the client's end (non-blocking). NULL when the server refused it
 * (busy: FX_SERVER_MAX_CONNS connections, all authenticated). */
struct ps_conn *fx_connect(struct ps_server *s, int *peer);

/* Send bytes as the client (what the socket takes now; the rest is dropped). */
void fx_send(int peer, const void *bytes, size_t len);

/* Read and drop what the server sent to this client so far. */
void fx_drain(int peer);

/* Close every connection and client end; checks nothing (connection, session) outlived them. */
void fx_teardown(struct ps_server *s, int *peers, size_t npeers);

#endif /* LR_FUZZ_FIXTURE_H */
