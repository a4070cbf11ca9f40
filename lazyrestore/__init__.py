"""lazyrestore: post-copy checkpoint, restore and migration on CRIU."""
