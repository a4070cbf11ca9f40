#!/bin/sh
# dump-live.sh CRIU_TREE: prints 1 when the plugin can make a dump live in the tree's CRIU: its dump
# (cr_dump_tasks in criu/cr-dump.c) starts its plugins (cr_plugin_init(CR_PLUGIN_STAGE__DUMP)) before anything reads
# --lazy-pages, --ps-socket or --status-fd (or connects to a page server), and cr_dump_finish serves the lazy pages
# (cr_lazy_mem_dump) before it runs the plugins' fini; prints 0 otherwise, or when the file or a step is not found.
# The Makefile passes the answer to the plugin as LR_CRIU_DUMP_LIVE.
src="$1/criu/cr-dump.c"
[ -r "$src" ] || { echo 0; exit 0; }
awk '
  /^int cr_dump_tasks\(pid_t pid\)/ { inside = "dump"; next }
  /^static int cr_dump_finish\(int ret\)/ { inside = "finish"; next }
  inside && /^}/ { inside = "" }
  inside == "dump" && !plugins && /cr_plugin_init\(CR_PLUGIN_STAGE__DUMP\)/ { plugins = NR }
  inside == "dump" && !early && /lazy_pages|ps_socket|status_fd|status_ready|connect_to_page_server/ { early = NR }
  inside == "finish" && !serve && /cr_lazy_mem_dump\(\)/ { serve = NR }
  inside == "finish" && !fini && /cr_plugin_fini\(CR_PLUGIN_STAGE__DUMP/ { fini = NR }
  END { print (plugins && (!early || plugins < early) && serve && fini && serve < fini) ? 1 : 0 }
' "$src"
