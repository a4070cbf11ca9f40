/* auth.c: the checkpoint secret, handshake MACs and nonces. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "lr_auth.h"
#include "lr_cleanup.h"

int lr_secret_load(const char *path, uint8_t secret[LR_SECRET_SIZE], struct lr_error *err)
{
	LR_CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat st;
	uint8_t extra;

	if (fd < 0)
		return lr_error_set(err, errno, "secret file %s", path);
	if (fstat(fd, &st))
		return lr_error_set(err, errno, "stat secret file %s", path);
	if (!S_ISREG(st.st_mode) || (st.st_mode & 077))
		return lr_error_set(err, 0, "secret file %s: must be a regular file readable by its owner only "
				    "(mode 0600), has mode %03o", path, (unsigned)(st.st_mode & 0777));
	ssize_t n = read(fd, secret, LR_SECRET_SIZE);
	if (n < 0)
		return lr_error_set(err, errno, "read secret file %s", path);
	if (n != LR_SECRET_SIZE || read(fd, &extra, 1) != 0)
		return lr_error_set(err, 0, "secret file %s: expected exactly %u bytes", path, LR_SECRET_SIZE);
	return 0;
}

static void put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

int lr_auth_mac(const uint8_t secret[LR_SECRET_SIZE], enum lr_auth_role role, uint32_t channel, uint64_t session,
		const uint8_t checkpoint_id[16], const uint8_t server_nonce[LR_NONCE_SIZE],
		const uint8_t client_nonce[LR_NONCE_SIZE], uint8_t mac[LR_MAC_SIZE], struct lr_error *err)
{
	static const char client_label[] = "lazyrestore-client-v1", server_label[] = "lazyrestore-server-v1";
	uint8_t msg[sizeof(client_label) - 1 + 4 + 8 + 16 + 2 * LR_NONCE_SIZE], *p = msg;
	unsigned int len = 0;

	_Static_assert(sizeof(client_label) == sizeof(server_label), "labels of one length");
	memcpy(p, role == LR_AUTH_CLIENT ? client_label : server_label, sizeof(client_label) - 1);
	p += sizeof(client_label) - 1;
	put_u32(p, channel);
	put_u64(p + 4, session);
	memcpy(p + 12, checkpoint_id, 16);
	p += 28;
	/* The client's mac covers server nonce then client nonce; the server's the other way round. */
	memcpy(p, role == LR_AUTH_CLIENT ? server_nonce : client_nonce, LR_NONCE_SIZE);
	memcpy(p + LR_NONCE_SIZE, role == LR_AUTH_CLIENT ? client_nonce : server_nonce, LR_NONCE_SIZE);
	if (!HMAC(EVP_sha256(), secret, LR_SECRET_SIZE, msg, sizeof(msg), mac, &len) || len != LR_MAC_SIZE)
		return lr_error_set(err, 0, "HMAC-SHA256 failed (OpenSSL)");
	return 0;
}

bool lr_auth_equal(const uint8_t a[LR_MAC_SIZE], const uint8_t b[LR_MAC_SIZE])
{
	return CRYPTO_memcmp(a, b, LR_MAC_SIZE) == 0;
}

int lr_random(void *buf, size_t len, struct lr_error *err)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = getrandom((char *)buf + done, len - done, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return lr_error_set(err, errno, "getrandom");
		done += (size_t)n;
	}
	return 0;
}
