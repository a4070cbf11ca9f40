#!/usr/bin/env bash
# Installs what lazyrestore needs on a Debian 12 machine, from the registries only:
#   1. Debian 12 packages: CRIU's build dependencies and the tools CRIU calls.
#   2. CRIU 4.1.1, built from Debian 13's source package (Debian 12's 3.17 cannot
#      start on kernels >= 6.13), installed as $CRIU_BIN.
#   3. The project's virtual environment (.venv) with pycriu from the same tree.
# Idempotent: a second run with everything present changes nothing and is fast.
set -euo pipefail

CRIU_VERSION=4.1.1
NEWER_SUITE=trixie
CRIU_BIN=${LAZYRESTORE_CRIU:-/usr/local/sbin/criu}
CACHE=${LAZYRESTORE_CACHE:-/var/cache/lazyrestore}
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$REPO/.venv}
PYTHON=${PYTHON:-python3}
CRIU_TREE=$CACHE/criu-$CRIU_VERSION

APT_PACKAGES=(
  build-essential pkgconf xz-utils
  libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev libnl-3-dev
  libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler
  uuid-dev python3-protobuf libxxhash-dev
  libzstd-dev               # lr-pageserver / lr-lazyd: zstd-compressed page frames on slow links
  iptables util-linux iproute2 procps
  runc busybox-static
  clang libclang-rt-14-dev  # make fuzz: libFuzzer (libclang_rt.fuzzer) comes with libclang-rt-14-dev
  nftables                  # tests/integration/faults.py: packet loss, duplication and corruption
)

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

require_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (CRIU needs it); try: sudo make bootstrap"
}

install_apt_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The archive URI of the machine's own Debian sources (deb822 or one-line format).
debian_archive_uri() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; exit}}')
  fi
  [ -n "$uri" ] || die "no Debian archive URI found in /etc/apt/sources.list or /etc/apt/sources.list.d/debian.sources"
  printf '%s\n' "$uri"
}

criu_version_ok() {  # $1: binary; true when it runs and is >= 4.1
  local v
  [ -x "$1" ] || return 1
  v=$("$1" --version 2>/dev/null | awk '/^Version:/ {print $2}')
  [ -n "$v" ] || return 1
  [ "$(printf '4.1\n%s\n' "$v" | sort -V | head -1)" = "4.1" ]
}

# Download the criu source package of the newer suite with a private apt state,
# so the machine's own package lists never see that suite.
fetch_criu_source() {
  local apt_dir=$CACHE/apt dl=$CACHE/download uri
  local tarball=$dl/criu_$CRIU_VERSION.orig.tar.xz
  [ -f "$tarball" ] && return 0
  uri=$(debian_archive_uri)
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$dl"
  printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
    "$uri" "$NEWER_SUITE" > "$apt_dir/sources.list"
  local opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
              -o APT::Get::List-Cleanup=0)
  say "fetching criu $CRIU_VERSION source from $NEWER_SUITE ($uri)"
  apt-get "${opts[@]}" update -qq || die "apt-get update for the $NEWER_SUITE deb-src entry failed"
  # The .dsc has been seen to answer 404 while the orig tarball downloads: the tarball suffices.
  local debver
  debver=$(apt-cache "${opts[@]}" showsrc criu | awk -v v="$CRIU_VERSION" '$1 == "Version:" && index($2, v "-") == 1 {print $2; exit}')
  [ -n "$debver" ] || die "the $NEWER_SUITE sources at $uri have no criu $CRIU_VERSION source package"
  (cd "$dl" && apt-get "${opts[@]}" source --download-only -qq "criu=$debver") \
    || say "apt-get source did not complete; checking for the upstream tarball"
  [ -f "$tarball" ] || die "criu_$CRIU_VERSION.orig.tar.xz was not downloaded into $dl"
}

build_criu() {
  if criu_version_ok "$CRIU_BIN" && [ -f "$CRIU_TREE/lib/pycriu/images/pagemap_pb2.py" ]; then
    return 0
  fi
  fetch_criu_source
  if [ ! -f "$CRIU_TREE/Makefile" ]; then
    rm -rf "$CRIU_TREE.tmp" && mkdir -p "$CRIU_TREE.tmp"
    tar -xJf "$CACHE/download/criu_$CRIU_VERSION.orig.tar.xz" -C "$CRIU_TREE.tmp" --strip-components=1
    mv "$CRIU_TREE.tmp" "$CRIU_TREE"
  fi
  say "building criu $CRIU_VERSION in $CRIU_TREE"
  make -C "$CRIU_TREE" -j"$(nproc)" criu >"$CACHE/criu-build.log" 2>&1 \
    || die "criu build failed; see $CACHE/criu-build.log"
  make -C "$CRIU_TREE" -j"$(nproc)" lib >>"$CACHE/criu-build.log" 2>&1 \
    || die "pycriu build (make lib) failed; see $CACHE/criu-build.log"
  install -D -m 0755 "$CRIU_TREE/criu/criu" "$CRIU_BIN"
}

setup_venv() {
  local stamp=$VENV/.lazyrestore-stamp want
  want=$(cat "$REPO/pyproject.toml" "$CRIU_TREE/lib/pycriu/__init__.py" | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
     && "$VENV/bin/python" -c 'import pycriu.images, lazyrestore' 2>/dev/null; then
    return 0
  fi
  say "setting up $VENV"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e "$REPO[test]"
  local site
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -rf "$site/pycriu"
  cp -r "$CRIU_TREE/lib/pycriu" "$site/pycriu"
  "$VENV/bin/python" -c 'import pycriu.images, pycriu.rpc_pb2' \
    || die "pycriu does not import in $VENV"
  printf '%s\n' "$want" > "$stamp"
}

verify_criu() {
  criu_version_ok "$CRIU_BIN" || die "$CRIU_BIN --version does not report >= 4.1"
  local out
  out=$("$CRIU_BIN" check 2>&1) || die "criu check failed: $(printf '%s' "$out" | tail -3)"
  say "ok: $("$CRIU_BIN" --version | head -1) at $CRIU_BIN; criu check passed; venv $VENV"
}

main() {
  require_root
  mkdir -p "$CACHE"
  install_apt_packages
  build_criu
  setup_venv
  verify_criu
}

main "$@"
