#!/bin/sh
# plugins-first.sh CRIU_TREE: prints 1 when the tree's restore (cr_restore_tasks in criu/cr-restore.c) starts its
# plugins (cr_plugin_init(CR_PLUGIN_STAGE__RESTORE)) before its first lazy-pages step (prepare_lazy_pages_socket, or
# any read of opts.lazy_pages), so the plugin can still turn a restore lazy; prints 0 otherwise, or when the file or
# either step is not found. The Makefile passes the answer to the plugin as LR_CRIU_PLUGINS_FIRST.
src="$1/criu/cr-restore.c"
[ -r "$src" ] || { echo 0; exit 0; }
awk '
  /^int cr_restore_tasks\(void\)/ { inside = 1; next }
  inside && /^}/ { inside = 0 }
  inside && !plugins && /cr_plugin_init\(CR_PLUGIN_STAGE__RESTORE\)/ { plugins = NR }
  inside && !lazy && /prepare_lazy_pages_socket|lazy_pages/ { lazy = NR }
  END { print (plugins && lazy && plugins < lazy) ? 1 : 0 }
' "$src"
