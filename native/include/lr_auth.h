/*
 * lr_auth.h: the checkpoint secret and the handshake MACs (see lr_proto.h).
 * HMAC-SHA256 and the constant-time comparison come from OpenSSL's libcrypto;
 * nonces from getrandom(2).
 */
#ifndef LR_AUTH_H
#define LR_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lr_error.h"
#include "lr_proto.h"

enum lr_auth_role {
	LR_AUTH_CLIENT, /* the mac in AUTH */
	LR_AUTH_SERVER, /* the mac in WELCOME */
};

/* Read the 32-byte secret at path; refuse a file others may read or write, or of another size. */
int lr_secret_load(const char *path, uint8_t secret[LR_SECRET_SIZE], struct lr_error *err);

/* The handshake mac of `role` (message layout in lr_proto.h). */
int lr_auth_mac(const uint8_t secret[LR_SECRET_SIZE], enum lr_auth_role role, uint32_t channel, uint64_t session,
		const uint8_t checkpoint_id[16], const uint8_t server_nonce[LR_NONCE_SIZE],
		const uint8_t client_nonce[LR_NONCE_SIZE], uint8_t mac[LR_MAC_SIZE], struct lr_error *err);

/* Constant-time equality of two macs. */
bool lr_auth_equal(const uint8_t a[LR_MAC_SIZE], const uint8_t b[LR_MAC_SIZE]);

/* Fill buf with len random bytes. */
int lr_random(void *buf, size_t len, struct lr_error *err);

#endif /* LR_AUTH_H */
