# lazyrestore: `make demo` and `make test` work on a fresh Debian 12 machine (as root).
VENV      := .venv
NATIVE    := build/native
CC        ?= cc
CFLAGS    := -O2 -g -std=gnu11 -Wall -Wextra -Werror
SANFLAGS  := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

.PHONY: all bootstrap build native test demo clean

all: build

bootstrap:
	bash scripts/bootstrap.sh

build: bootstrap native plugin

native: $(NATIVE)/lr-workload $(NATIVE)/lr-index-layout $(NATIVE)/lr-fill-rate $(NATIVE)/lr-lazyd $(NATIVE)/san/lr-lazyd $(NATIVE)/lr-pageserver $(NATIVE)/san/lr-pageserver $(NATIVE)/tests/test_spans $(NATIVE)/tests/test_index $(NATIVE)/tests/test_wset $(NATIVE)/tests/test_proto $(NATIVE)/tests/test_live_frame $(NATIVE)/tests/test_uffd_place $(NATIVE)/tests/test_src_local

WORKLOAD_SRC := native/workload/lr-workload.c native/workload/writers.c native/workload/serve.c

$(NATIVE)/lr-workload: $(WORKLOAD_SRC) native/workload/writers.h native/workload/serve.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -static -pthread -o $@ $(WORKLOAD_SRC)

$(NATIVE)/lr-fill-rate: native/tools/lr-fill-rate.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -pthread -o $@ $<

$(NATIVE)/lr-index-layout: native/tools/lr-index-layout.c native/include/lr_index.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -Inative/include -o $@ $<

# make test: the pytest suite, then CRIU's own zdtm lazy-pages suite with lazyrestore as the daemon.
test: build
	$(VENV)/bin/python -m pytest -ra tests
	$(MAKE) --no-print-directory zdtm

# CRIU CI's lazy set (maps0|uffd-events|lazy-thp|futex|fork) from the bootstrap's CRIU tree, in --lazy-pages,
# --remote-lazy-pages and --lazy-migrate (ns flavour), and --lazy-pages with the drain capped at 1 MB/s (faults place
# most pages), `lazyrestore lazy-pages` as the daemon, the plugin loaded.
# ZDTM_DAEMONS=stock,lazyrestore adds CRIU's own daemon (no plugin) for comparison; ZDTM_RECORD=1 writes
# bench/results/zdtm.json for RELIABILITY.md (`scripts/reliability.py --render-only`). See scripts/zdtm.py.
ZDTM_MODES   ?= lazy-pages,remote-lazy-pages,lazy-migrate,lazy-pages-slow-drain
ZDTM_DAEMONS ?= lazyrestore
ZDTM_RECORD  ?=
.PHONY: zdtm
zdtm: build
	$(VENV)/bin/python scripts/zdtm.py --modes $(ZDTM_MODES) --daemons $(ZDTM_DAEMONS) $(if $(ZDTM_RECORD),--record)

# Circles between files (Python imports in lazyrestore/ and bench/, C calls in native/lazyd and native/pageserver): exit 1
# while there is one (issue 19). See scripts/cycles.py.
.PHONY: cycles
cycles:
	$(VENV)/bin/python scripts/cycles.py

demo: build
	$(VENV)/bin/lazyrestore demo

clean:
	rm -rf build

# --- the CRIU plugin (criu-plugin/), built against the CRIU tree the bootstrap built -----------------------
# CRIU loads every .so in $(PLUGIN_DIR) into each dump and restore; the plugin runs this checkout's lazyrestore.
CRIU_TREE  ?= /var/cache/lazyrestore/criu
PLUGIN_DIR ?= /usr/lib/criu
PLUGIN_INC := -I$(CRIU_TREE)/compel/include/uapi -iquote $(CRIU_TREE)/include -iquote $(CRIU_TREE)/criu/include \
	-iquote $(CRIU_TREE)/criu/arch/x86/include -iquote $(CRIU_TREE)
# The plugin reads CRIU's `opts`, laid out as in this tree, and works only in the CRIU whose CRIU_VERSION this
# header names (it checks at run time). It is rebuilt whenever the tree changes: when version.h is newer, and when
# the stamp (the tree's real path and version, rewritten only when they change) says it is another tree, even an
# older one. PLUGIN_CFLAGS: extra flags, e.g. -DLR_CRIU_BUILT_FOR='"0.0.0"' (tests/integration/test_plugin_version.py).
CRIU_VERSION_H := $(CRIU_TREE)/criu/include/version.h
PLUGIN_STAMP   := $(NATIVE)/lazyrestore_plugin.criu
PLUGIN_CFLAGS  ?=
# 1 when the tree's restore starts plugins before it reads --lazy-pages: the plugin may then make a restore of a served
# checkpoint lazy by itself (criu-plugin/plugins-first.sh; overridable for tests: PLUGINS_FIRST=0).
PLUGINS_FIRST  ?= $(shell sh criu-plugin/plugins-first.sh $(CRIU_TREE))
# 1 when the tree's dump starts plugins before it reads --lazy-pages, --ps-socket and --status-fd, and serves lazy pages
# before the plugins' fini: the plugin may then make a dump live (LAZYRESTORE_LIVE; criu-plugin/dump-live.sh;
# overridable for tests: DUMP_LIVE=0).
DUMP_LIVE      ?= $(shell sh criu-plugin/dump-live.sh $(CRIU_TREE))
# Installed whenever it differs from this checkout's build: the plugin runs the lazyrestore of the checkout that
# installed it last.
.PHONY: plugin FORCE
plugin: $(NATIVE)/lazyrestore_plugin.so
	@cmp -s $< $(PLUGIN_DIR)/lazyrestore_plugin.so || install -D -m 0644 $< $(PLUGIN_DIR)/lazyrestore_plugin.so

$(PLUGIN_STAMP): $(CRIU_VERSION_H) FORCE
	@mkdir -p $(@D)
	@printf '%s %s\n' "$$(readlink -f $(CRIU_TREE))" "$$(sed -n 's/^#define CRIU_VERSION "\(.*\)"$$/\1/p' $<)" > $@.new
	@if cmp -s $@.new $@; then rm -f $@.new; else mv $@.new $@; fi

$(NATIVE)/lazyrestore_plugin.so: criu-plugin/lazyrestore_plugin.c criu-plugin/plugins-first.sh criu-plugin/dump-live.sh \
		$(CRIU_VERSION_H) $(PLUGIN_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -shared -fPIC $(PLUGIN_INC) -DLR_HOOK_COMMAND='"$(CURDIR)/$(VENV)/bin/lazyrestore"' \
		-DLR_CRIU_PLUGINS_FIRST=$(PLUGINS_FIRST) -DLR_CRIU_DUMP_LIVE=$(DUMP_LIVE) $(PLUGIN_CFLAGS) -o $@ $<

# --- lr-pageserver -----------------------------------------------------------
PS_SRC := $(wildcard native/pageserver/*.c) native/common/error.c native/common/index.c native/common/auth.c \
	native/common/net.c native/common/proto.c native/common/wset.c native/common/zpages.c
PS_HDR := $(wildcard native/pageserver/*.h native/include/*.h)

$(NATIVE)/lr-pageserver: $(PS_SRC) $(PS_HDR)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -Inative/include -Inative/pageserver -o $@ $(PS_SRC) -lxxhash -lcrypto -lzstd

$(NATIVE)/san/lr-pageserver: $(PS_SRC) $(PS_HDR)
	@mkdir -p $(@D)
	$(CC) $(SANFLAGS) -std=gnu11 -Wall -Wextra -Werror -Inative/include -Inative/pageserver -o $@ $(PS_SRC) -lxxhash -lcrypto -lzstd

# --- lr-lazyd --------------------------------------------------------------
LAZYD_SRC := $(wildcard native/lazyd/*.c) native/common/error.c native/common/index.c native/common/pages.c \
	native/common/ahead.c native/common/auth.c native/common/net.c native/common/proto.c native/common/wset.c native/common/zpages.c
LAZYD_HDR := $(wildcard native/lazyd/*.h native/include/*.h)
NATIVE_INC := -Inative/include -Inative/lazyd

$(NATIVE)/lr-lazyd: $(LAZYD_SRC) $(LAZYD_HDR)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(NATIVE_INC) -pthread -o $@ $(LAZYD_SRC) -lxxhash -lcrypto -lzstd

$(NATIVE)/san/lr-lazyd: $(LAZYD_SRC) $(LAZYD_HDR)
	@mkdir -p $(@D)
	$(CC) $(SANFLAGS) -std=gnu11 -Wall -Wextra -Werror $(NATIVE_INC) -pthread -o $@ $(LAZYD_SRC) -lxxhash -lcrypto -lzstd

# --- benchmarks ------------------------------------------------------------
# `python -m bench SUITE` (bench/__init__.py: the layout). Each suite writes its summary (bench/results/SUITE.json,
# committed), its part of BENCHMARKS.md rendered from it, and its raw records (build/bench/SUITE.jsonl);
# `python -m bench render` rewrites BENCHMARKS.md and RELIABILITY.md from the summaries without running anything.
# Eager restore, CRIU's local lazy mode and lr-lazyd side by side; writes BENCHMARKS.md.
# About 20 minutes, 6 of them waiting on CRIU's 4 GiB scanning case; `make bench BENCH_ARGS=--quick` for a smoke run.
BENCH_ARGS ?= --repeat 3 --drain-timeout 120
# Then remote migration (lazyrestore migrate live / destination first / --via-disk + restore --from, CRIU's remote
# lazy mode, eager checkpoint + copy + restore) at 256 MiB, 1, 4 and 8 GiB on loopback and at 1 GiB between the test
# hosts, idle and scanning workloads (the tmpfs-copy methods only up to --disk-max 4096 MiB); rewrites only
# BENCHMARKS.md's remote section and bench/results/remote.json. About an hour (CRIU's remote drain of the scanning
# workload runs into its 120 s limit at 4 and 8 GiB); REMOTE_BENCH_ARGS=--quick for a smoke run (256 MiB, 1 repeat,
# loopback, both workloads).
REMOTE_BENCH_ARGS ?= --repeat 3 --drain-timeout 120
# Then the cold start (`make coldstart` alone): one checkpoint of a serving 1 GiB workload restored 5 times lazily
# with --prefetch off, 5 times with auto and once eagerly, between the test hosts; time to the first correct answer
# and remote faults until it. Rewrites only BENCHMARKS.md's cold-start section and bench/results/coldstart.json.
# About 2 minutes; COLDSTART_ARGS=--quick for a smoke run (256 MiB, 2 + 2 restores).
COLDSTART_ARGS ?=
# Then slow links (`make compress` alone): a 256 MiB workload, compressible (text) and not (random), migrated between
# the test hosts over a tbf-limited link (unlimited, 1 Gbit/s, 100 Mbit/s) with --compress off, on and auto, twice in
# rotating order; total migration time, bytes on the link, auto's choice. Rewrites only BENCHMARKS.md's slow-links
# section and bench/results/compress.json. About 5 minutes; COMPRESS_ARGS=--quick for a smoke run (64 MiB, 1 round).
COMPRESS_ARGS ?=
.PHONY: bench coldstart compress
bench: build
	$(VENV)/bin/python -m bench local $(BENCH_ARGS)
	$(VENV)/bin/python -m bench remote $(REMOTE_BENCH_ARGS)
	$(VENV)/bin/python -m bench coldstart $(COLDSTART_ARGS)
	$(VENV)/bin/python -m bench compress $(COMPRESS_ARGS)

coldstart: build
	$(VENV)/bin/python -m bench coldstart $(COLDSTART_ARGS)

compress: build
	$(VENV)/bin/python -m bench compress $(COMPRESS_ARGS)

# --- C unit tests (ASan + UBSan), run by tests/unit/test_native.py ------------
TEST_SANFLAGS := $(SANFLAGS) -std=gnu11 -Wall -Wextra -Werror $(NATIVE_INC)

$(NATIVE)/tests/test_spans: native/tests/test_spans.c native/lazyd/spans.c native/common/index.c native/common/error.c native/tests/check.h $(LAZYD_HDR)
	@mkdir -p $(@D)
	$(CC) $(TEST_SANFLAGS) -o $@ native/tests/test_spans.c native/lazyd/spans.c native/common/index.c native/common/error.c -lxxhash

$(NATIVE)/tests/test_index: native/tests/test_index.c native/common/index.c native/common/error.c $(LAZYD_HDR)
	@mkdir -p $(@D)
	$(CC) $(TEST_SANFLAGS) -o $@ native/tests/test_index.c native/common/index.c native/common/error.c -lxxhash

$(NATIVE)/tests/test_uffd_place: native/tests/test_uffd_place.c native/lazyd/uffd.c native/common/error.c native/tests/check.h $(LAZYD_HDR)
	@mkdir -p $(@D)
	$(CC) $(TEST_SANFLAGS) -o $@ native/tests/test_uffd_place.c native/lazyd/uffd.c native/common/error.c

SRC_LOCAL_SRC := native/tests/test_src_local.c native/lazyd/src_local.c native/lazyd/blocks.c native/lazyd/prefetch.c \
	native/common/pages.c native/common/index.c native/common/error.c native/common/wset.c native/common/ahead.c
$(NATIVE)/tests/test_src_local: $(SRC_LOCAL_SRC) native/tests/check.h $(LAZYD_HDR)
	@mkdir -p $(@D)
	$(CC) $(TEST_SANFLAGS) -pthread -o $@ $(SRC_LOCAL_SRC) -lxxhash

$(NATIVE)/tests/test_wset: native/tests/test_wset.c native/common/wset.c native/common/error.c native/tests/check.h $(LAZYD_HDR)
	@mkdir -p $(@D)
	$(CC) $(TEST_SANFLAGS) -o $@ native/tests/test_wset.c native/common/wset.c native/common/error.c

$(NATIVE)/tests/test_proto: native/tests/test_proto.c native/common/proto.c native/common/net.c native/common/error.c native/tests/check.h $(LAZYD_HDR)
	@mkdir -p $(@D)
	$(CC) $(TEST_SANFLAGS) -o $@ native/tests/test_proto.c native/common/proto.c native/common/net.c native/common/error.c -lxxhash

LIVE_FRAME_SRC := native/tests/test_live_frame.c native/lazyd/remote_fetch.c native/common/index.c native/common/error.c \
	native/common/net.c native/common/proto.c native/common/auth.c native/common/zpages.c
$(NATIVE)/tests/test_live_frame: $(LIVE_FRAME_SRC) native/tests/check.h $(LAZYD_HDR)
	@mkdir -p $(@D)
	$(CC) $(TEST_SANFLAGS) -o $@ $(LIVE_FRAME_SRC) -lxxhash -lcrypto -lzstd

# --- libFuzzer harnesses (native/fuzz/): clang, and libclang-rt-14-dev for the fuzzer runtime ----------------
# `make fuzz` fuzzes each harness FUZZ_SECONDS (on a copy of native/fuzz/corpus/ in build/fuzz-corpus/) and
# writes build/fuzz/results.json; `make fuzz-smoke` replays the committed corpus, then fuzzes each harness
# FUZZ_SMOKE_SECONDS (tests/unit/test_fuzz_smoke.py). Crashing inputs land in build/fuzz/artifacts/.
FUZZ_CC            ?= clang
FUZZ_SECONDS       ?= 60
FUZZ_SMOKE_SECONDS ?= 20
FUZZ_FLAGS  := -O1 -g -std=gnu11 -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer -Inative/include -Inative/pageserver -Inative/lazyd -Inative/fuzz
FUZZ_PS_SRC := native/fuzz/fixture.c $(filter-out native/pageserver/main.c native/pageserver/log.c,$(PS_SRC))
FUZZ_HDR    := $(wildcard native/fuzz/*.h) $(PS_HDR) $(LAZYD_HDR)

.PHONY: fuzz-build fuzz fuzz-smoke
fuzz-build: $(NATIVE)/fuzz/fuzz_frame $(NATIVE)/fuzz/fuzz_handshake $(NATIVE)/fuzz/fuzz_index

$(NATIVE)/fuzz/fuzz_frame: native/fuzz/fuzz_frame.c native/lazyd/remote_fetch.c $(FUZZ_PS_SRC) $(FUZZ_HDR)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $(filter %.c,$^) -lxxhash -lcrypto -lzstd

$(NATIVE)/fuzz/fuzz_handshake: native/fuzz/fuzz_handshake.c $(FUZZ_PS_SRC) $(FUZZ_HDR)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $(filter %.c,$^) -lxxhash -lcrypto -lzstd

$(NATIVE)/fuzz/fuzz_index: native/fuzz/fuzz_index.c native/common/index.c native/common/error.c $(FUZZ_HDR)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $(filter %.c,$^) -lxxhash

fuzz: fuzz-build
	python3 scripts/fuzz.py run --seconds $(FUZZ_SECONDS) --summary build/fuzz/results.json

fuzz-smoke: fuzz-build
	python3 scripts/fuzz.py smoke --seconds $(FUZZ_SMOKE_SECONDS) --summary build/fuzz/smoke.json

# --- reliability: fault injection, load and hostile input (RELIABILITY.md); the soak ------------------------
# `make reliability` runs the fault-injection and load tests RELIABILITY_RUNS times and the hostile-input
# tests once, and writes RELIABILITY.md with bench/results/fuzz.json, soak.json and zdtm.json.
RELIABILITY_RUNS ?= 3
SOAK_MINUTES     ?= 20
.PHONY: reliability soak
reliability: build fuzz-build
	$(VENV)/bin/python scripts/reliability.py --runs $(RELIABILITY_RUNS)

soak: build
	$(VENV)/bin/python -m bench soak --minutes $(SOAK_MINUTES)
