/*
 * lr_proto.h: the wire protocol between lr-pageserver (source) and lr-lazyd
 * (destination). Version 3. Every integer is little-endian; every struct here
 * is packed by construction (fixed-width fields, no padding, sizes asserted).
 *
 * A session has two TCP connections ("channels"), each authenticated:
 *   urgent: requests and their replies (files, page ranges, hints, DONE);
 *           small frames, TCP_NODELAY. A fault's request never queues behind
 *           bulk data: bulk data has its own connection.
 *   bulk:   after BULK_START the server streams every lazy range, in chunks of
 *           about LR_BULK_BYTES (whole checksum blocks), without being asked range
 *           by range, then BULK_END. HINTs on the urgent channel move the
 *           stream to the place the faults are.
 *
 * Frame: struct lr_frame, then `length` payload bytes (length <= LR_FRAME_MAX;
 * frames a client sends are at most LR_REQUEST_MAX). A peer that receives a
 * malformed frame answers ERROR (when it can) and closes the connection.
 *
 * Frame checksum (version 2): a frame flagged LR_F_SUM carries in `sum` the low
 * 32 bits of XXH3-64 of its payload seeded with XXH3-64 (seed 0) of its 24
 * header bytes with `sum` = 0, so type, flags, length and req_id are covered
 * too; unflagged, `sum` is 0. TCP's checksum misses a byte a middlebox rewrites
 * and checksums again, and the index covers only page bytes, so every frame
 * built in memory is sealed: all the client sends, and the server's
 * CHALLENGE, WELCOME, FILES, FILE_DATA, ERROR, DONE, BULK_END, COMMIT and ABORT. PAGES are not
 * (page bytes go out with sendfile; every block is checked against the index).
 * The receiver checks a sum once the whole frame is in, so a mismatch leaves
 * the stream in step: lr-lazyd takes no FILES or FILE_DATA without LR_F_SUM,
 * and on a mismatch asks again (LIST; GET_FILE after the file's last frame,
 * with a new req_id: late answers to the old one are skipped), at most
 * 8 times (lr-lazyd's LR_FETCH_BAD_MAX); lr-pageserver drops a damaged WORKINGSET
 * (a hint) and refuses any other damaged frame with ERROR LR_ERR_DAMAGED.
 *
 * Handshake, on each channel:
 *   client -> HELLO     {magic, version, channel, session (bulk: from WELCOME), client_nonce}
 *   server -> CHALLENGE {version, checkpoint_id, server_nonce}
 *   client -> AUTH      {mac = HMAC-SHA256(secret, "lazyrestore-client-v1" || channel || session ||
 *                                          checkpoint_id || server_nonce || client_nonce)}
 *   server -> WELCOME   {session, mac = HMAC-SHA256(secret, "lazyrestore-server-v1" || channel || session ||
 *                                                   checkpoint_id || client_nonce || server_nonce)}
 * The secret is the checkpoint's 32 random bytes (lazyrestore/secret, mode
 * 0600). Both nonces are fresh random bytes, so a recorded AUTH is worthless
 * on another connection; the server's mac proves to the client that the
 * server holds the secret too (the client trusts the files it is sent). A
 * wrong mac gets ERROR LR_ERR_AUTH and the connection closed. Nothing but the
 * handshake is accepted before WELCOME, and the handshake must finish within
 * LR_HANDSHAKE_MS.
 *
 * Requests (urgent channel, req_id chosen by the client, echoed in replies):
 *   LIST        -> FILES       the checkpoint's files: struct lr_file_entry + name, repeated
 *   GET_FILE    -> FILE_DATA   {struct lr_file_req}; the file's bytes in frames flagged
 *                              LR_F_MORE but the last (metadata images, manifest, index;
 *                              pages files are fetched as page ranges)
 *   GET_PAGES   -> PAGES       {struct lr_page_req}: whole checksum blocks of one index record
 *   HINT        (no reply)     {struct lr_page_req}: stream near here next
 *   WORKINGSET  (no reply)     this restore's working set (lr_wset.h file bytes) in frames flagged
 *                              LR_F_MORE but the last, sent just before DONE; the server checks it
 *                              against its index and merges it into lazyrestore/workingset (a bad
 *                              one is logged and dropped: it is a hint, the session goes on)
 *   TUNE        (no reply)     no payload; its flags (LR_F_ZSTD, LR_F_COMPRESS) replace BULK_START's for
 *                              the rest of the bulk stream (the client measured its link)
 *   DONE        -> DONE        every page is placed and verified: the checkpoint is delivered
 *   COMMIT      -> COMMIT      no payload: "this destination starts its restore now: its tree may run from
 *                              here on". With --live (a held source tree) the server answers only when no
 *                              other live session holds the tree, and records this one as the holder; else
 *                              ERROR LR_ERR_BUSY naming the holder's session. The holder stops holding when
 *                              its session ends (urgent channel closed), so another destination may take
 *                              over. Serving images from disk, any number of sessions commit (the
 *                              checkpoint may be restored many times). lr-lazyd commits once the checkpoint
 *                              is fetched, before it reports listening (CRIU is started after that).
 *   ABORT       -> ABORT       no payload: "my tree never ran and never will" (CRIU's restore failed, or
 *                              lr-lazyd was stopped before CRIU connected); the session holds the tree no
 *                              more. Never sent once CRIU reported the restore finished.
 * COMMIT and ABORT echo the request's req_id; lr-pageserver reports both on --events-fd ("committed",
 * "aborted", with the session id).
 * LIST names lazyrestore/workingset (kind META) when the server has one: the snapshot taken at LIST is
 * what GET_FILE of that name sends on that session.
 * Bulk channel: BULK_START {struct lr_page_req: where to begin} -> PAGES..., BULK_END.
 *
 * PAGES carries struct lr_pages_hdr, then the nblocks XXH3-64 checksums of
 * the blocks (u64 each, from the server's index), then the bytes of blocks
 * [first_block, first_block + nblocks) of index record `record` (clipped to
 * the record, as in lr_index.h; data_len bytes). The client places nothing
 * unless every block's bytes hash to the checksum sent and that checksum is
 * the one in its own copy of the index. Every record, block and length is
 * checked against the lazy index by the server before any byte is read.
 * GET_PAGES asks for at most LR_PAGES_MAX_DATA bytes.
 */
#ifndef LR_PROTO_H
#define LR_PROTO_H

#include <stdint.h>

#define LR_PROTO_MAGIC 0x3150524cu /* "LRP1" */
#define LR_PROTO_VERSION 3u  /* 2: LR_F_SUM, LR_ERR_DAMAGED; 3: COMMIT, ABORT, LR_ERR_BUSY (a version 2 client
			       * never commits: a live source would take it for one whose tree cannot run) */
#define LR_FRAME_MAX (4u << 20)    /* largest payload of any frame */
#define LR_REQUEST_MAX 4096u       /* largest payload a client may send */
#define LR_BULK_BYTES (1u << 20)   /* page bytes per bulk PAGES frame: this many bytes of whole blocks (one at least) */
#define LR_PAGES_MAX_DATA (2u << 20) /* page bytes in one PAGES frame */
#define LR_FILE_CHUNK (1u << 20)   /* FILE_DATA payload per frame */
#define LR_NONCE_SIZE 32u
#define LR_MAC_SIZE 32u            /* HMAC-SHA256 */
#define LR_SECRET_SIZE 32u
#define LR_HANDSHAKE_MS 10000      /* a connection must authenticate within this */
#define LR_NAME_MAX 255u           /* file names in LIST / GET_FILE */

enum lr_frame_type {
	LR_HELLO = 1,
	LR_CHALLENGE = 2,
	LR_AUTH = 3,
	LR_WELCOME = 4,
	LR_LIST = 5,
	LR_FILES = 6,
	LR_GET_FILE = 7,
	LR_FILE_DATA = 8,
	LR_GET_PAGES = 9,
	LR_PAGES = 10,
	LR_HINT = 11,
	LR_BULK_START = 12,
	LR_BULK_END = 13,
	LR_DONE = 14,
	LR_ERROR = 15,
	LR_WORKINGSET = 16,
	LR_TUNE = 17,
	LR_COMMIT = 18,
	LR_ABORT = 19,
	LR_FRAME_TYPES /* one past the last */
};

enum lr_frame_flags {
	LR_F_MORE = 1 << 0, /* FILE_DATA, WORKINGSET: more frames of this file follow */
	LR_F_ZSTD = 1 << 1, /* PAGES: the data is one zstd frame (lr_zpages.h); GET_PAGES, BULK_START: the
			     * client takes such frames (then all-zero blocks never travel as bytes) */
	LR_F_COMPRESS = 1 << 2, /* GET_PAGES, BULK_START (with LR_F_ZSTD): compress every frame (a slow link) */
	LR_F_SUM = 1 << 3,  /* any frame: `sum` holds its checksum (above) */
};

enum lr_channel {
	LR_CHANNEL_URGENT = 1,
	LR_CHANNEL_BULK = 2,
};

/* ERROR codes: what the peer did wrong (or what went wrong here). */
enum lr_error_code {
	LR_ERR_PROTOCOL = 1, /* malformed frame, wrong order, unknown type */
	LR_ERR_VERSION = 2,  /* unsupported protocol version */
	LR_ERR_AUTH = 3,     /* missing or wrong proof of the secret */
	LR_ERR_TOO_BIG = 4,  /* frame longer than allowed */
	LR_ERR_RANGE = 5,    /* record, block or length outside the lazy index */
	LR_ERR_NO_FILE = 6,  /* GET_FILE of a file that is not served */
	LR_ERR_IO = 7,       /* the server could not read its images */
	LR_ERR_TIMEOUT = 8,  /* handshake not finished in time */
	LR_ERR_SESSION = 9,  /* bulk channel for an unknown or already joined session */
	LR_ERR_DAMAGED = 10, /* the request failed its LR_F_SUM checksum: damaged on the way, worth sending again */
	LR_ERR_BUSY = 11,    /* COMMIT: another destination's session holds the live tree */
};

struct lr_frame {
	uint32_t magic;   /* LR_PROTO_MAGIC */
	uint16_t type;    /* enum lr_frame_type */
	uint16_t flags;   /* enum lr_frame_flags */
	uint32_t length;  /* payload bytes that follow */
	uint32_t sum;     /* LR_F_SUM: the frame's checksum (above); else 0 */
	uint64_t req_id;  /* the request's id, echoed in its reply; 0 for bulk data */
};

struct lr_hello {
	uint32_t version;  /* LR_PROTO_VERSION */
	uint32_t channel;  /* enum lr_channel */
	uint64_t session;  /* 0 on the urgent channel; the WELCOME's session on the bulk one */
	uint8_t client_nonce[LR_NONCE_SIZE];
};

struct lr_challenge {
	uint32_t version;
	uint32_t reserved;
	uint8_t checkpoint_id[16];
	uint8_t server_nonce[LR_NONCE_SIZE];
};

struct lr_auth {
	uint8_t mac[LR_MAC_SIZE];
};

struct lr_welcome {
	uint64_t session;
	uint8_t mac[LR_MAC_SIZE];
};

struct lr_file_entry {   /* FILES payload: entries back to back */
	uint64_t size;
	uint32_t kind;       /* LR_FILE_META or LR_FILE_PAGES */
	uint32_t name_len;   /* 1..LR_NAME_MAX bytes of name follow, no NUL */
};

enum lr_file_kind {
	LR_FILE_META = 1,    /* fetch whole with GET_FILE */
	LR_FILE_PAGES = 2,   /* pages-N.img: only its eager ranges are fetched (GET_PAGES); the rest is lazy */
};

struct lr_file_req {
	uint32_t name_len;   /* name follows */
	uint32_t reserved;
};

struct lr_page_req {
	uint64_t record;     /* index record */
	uint32_t first_block;/* within the record */
	uint32_t nblocks;    /* GET_PAGES: >= 1 and at most LR_FRAME_MAX bytes; HINT/BULK_START: ignored */
};

struct lr_pages_hdr {
	uint64_t record;
	uint32_t first_block;
	uint32_t nblocks;    /* nblocks u64 checksums follow, then the data */
	uint64_t data_len;   /* page bytes after the checksums */
};

struct lr_error_frame {
	uint32_t code;       /* enum lr_error_code */
	uint32_t reserved;   /* a UTF-8 message follows (the rest of the payload) */
};

_Static_assert(sizeof(struct lr_frame) == 24, "lr_frame is 24 bytes");
_Static_assert(sizeof(struct lr_hello) == 48, "lr_hello is 48 bytes");
_Static_assert(sizeof(struct lr_challenge) == 56, "lr_challenge is 56 bytes");
_Static_assert(sizeof(struct lr_welcome) == 40, "lr_welcome is 40 bytes");
_Static_assert(sizeof(struct lr_file_entry) == 16, "lr_file_entry is 16 bytes");
_Static_assert(sizeof(struct lr_page_req) == 16, "lr_page_req is 16 bytes");
_Static_assert(sizeof(struct lr_pages_hdr) == 24, "lr_pages_hdr is 24 bytes");
_Static_assert(sizeof(struct lr_error_frame) == 8, "lr_error_frame is 8 bytes");

#endif /* LR_PROTO_H */
