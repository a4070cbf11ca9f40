"""Where lazyrestore keeps what: the names of its files and directories, each defined once.

A checkpoint (images) dir holds CRIU's images and, in META_DIR, lazyrestore's own files: the manifest, the lazy
index, the secret, a source description (on a destination), the runs of `serve` (RUNS_DIR), and during a live
migration the tree's pid map, the serving process's pid, lr-pageserver's held file, the fate keeper's log and a
runtime's destination kit. A restore's work dir holds the fetched images (IMAGES_SUBDIR), CRIU's run dir
(RUN_SUBDIR), lr-lazyd's socket, log, progress, status and the working set it recorded.
"""

from __future__ import annotations

# In a checkpoint dir
META_DIR = "lazyrestore"          # lazyrestore's own files, beside CRIU's images
MANIFEST_NAME = "manifest.json"   # META_DIR/: every file's size and SHA-256, the checkpoint's id
INDEX_NAME = "index.bin"          # META_DIR/: the lazy index (native/include/lr_index.h)
SECRET_NAME = "secret"            # META_DIR/: the checkpoint's 32-byte secret (mode 0600)
SOURCE_NAME = "source.json"       # META_DIR/: where a runtime's lazy restore gets its pages (sourcefile.py)
RUNS_DIR = "runs"                 # META_DIR/runs/: logs of `serve` and `migrate`
PID_MAP_NAME = "live-pids"        # META_DIR/: a live tree's "VPID HOSTPID" lines (livetree.py)
PID_FILE = "migrate.pid"          # META_DIR/: the process serving a live migration (SIGTERM stops it)
HELD_NAME = "held"                # META_DIR/: lr-pageserver's --held-file (fatekeeper.py)
FATEKEEPER_LOG = "fatekeeper.log"  # META_DIR/: what the fate keeper did
KIT_NAME = "kit"                  # META_DIR/: a runtime's live dump's destination kit (livehook.py)
DUMP_LOG = "dump.log"             # CRIU's dump log, in the checkpoint dir
RESTORE_LOG = "restore.log"       # CRIU's restore log, in the work dir

# In a restore's work dir
IMAGES_SUBDIR = "images"          # the fetched checkpoint (`restore --from`)
RUN_SUBDIR = "run"                # CRIU's work dir of that restore
SOCKET_NAME = "lazy-pages.socket"  # where CRIU connects to its lazy-pages daemon
LAZYD_LOG = "lazyd.log"
STATS_LOG = "progress.jsonl"      # every JSON line lr-lazyd reports (about 10 a second): `lazyrestore report` reads it
STATUS_FILE = "status.json"
WORKINGSET_NAME = "workingset"    # in a restore's run dir: what that restore faulted on
