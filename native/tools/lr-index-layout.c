/*
 * lr-index-layout: prints the offsets of the lazy index structs as C sees them,
 * one "struct.field offset size" per line, so a test can compare them with the
 * layout Python writes (lazyrestore/lazyindex.py).
 */
#include <stdio.h>

#include "lr_index.h"

#define FIELD(s, f) printf("%s.%s %zu %zu\n", #s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f))

int main(void)
{
	FIELD(lr_index_header, magic);
	FIELD(lr_index_header, version);
	FIELD(lr_index_header, header_size);
	FIELD(lr_index_header, record_size);
	FIELD(lr_index_header, page_size);
	FIELD(lr_index_header, block_size);
	FIELD(lr_index_header, task_count);
	FIELD(lr_index_header, record_count);
	FIELD(lr_index_header, checksum_count);
	FIELD(lr_index_header, lazy_pages);
	FIELD(lr_index_header, eager_pages);
	FIELD(lr_index_header, checkpoint_id);
	FIELD(lr_index_record, pid);
	FIELD(lr_index_record, flags);
	FIELD(lr_index_record, start);
	FIELD(lr_index_record, nr_pages);
	FIELD(lr_index_record, pages_id);
	FIELD(lr_index_record, reserved);
	FIELD(lr_index_record, offset);
	FIELD(lr_index_record, first_checksum);
	printf("sizeof.lr_index_header %zu\nsizeof.lr_index_record %zu\n",
	       sizeof(struct lr_index_header), sizeof(struct lr_index_record));
	return 0;
}
