"""lazyrestore's benchmarks, run as `python -m bench local|remote|coldstart|compress|soak|render` (see __main__).

Layout, one job per module:

- __main__: the command line; applies each suite's process configuration, then runs its module's main(argv).
- local, local_methods, local_report: `make bench`'s first part (eager, CRIU lazy-pages, lr-lazyd on one host):
  the run, the three restore methods, the report (the top of BENCHMARKS.md).
- remote, remote_methods, remote_report: remote migration (BENCHMARKS.md's remote-bench section).
- served: what coldstart and compress share (one checkpoint served by `lazyrestore serve`, restored many times,
  and the process around it); coldstart + coldstart_report, compress + compress_report: their sections.
- soak: the soak (RELIABILITY.md's soak section, rendered by scripts/reliability.py).
- memory: the check every restore ends with (checksums, BAD lines in the log).
- cells: Markdown table cells (fmt, times, ratio, table_row ...); markers: BENCHMARKS.md's marked sections.
- procs (process plumbing: subreaper, kill, wait), netprocs (network namespaces, JSON-line commands), options
  (argparse types), machine (the machine, commit and command line a run records).
- summaries: the committed per-suite summaries (bench/results/*.json) and the raw per-run records
  (build/bench/*.jsonl, not committed); render: BENCHMARKS.md and RELIABILITY.md from the summaries alone.
"""
