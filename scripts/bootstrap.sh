#!/usr/bin/env bash
# Installs what lazyrestore needs on a Debian 12 machine, from the registries only:
#   1. Debian 12 packages: CRIU's build dependencies and the tools CRIU calls.
#   2. CRIU 4.2.x (the newest the newer suites offer as a source package), built from
#      its upstream tarball and installed as $CRIU_BIN. Debian 12's 3.17 cannot start on
#      kernels >= 6.13; 4.1.x cannot dump any TCP/UDP socket on kernels >= 6.16.
#   3. The project's virtual environment (.venv) with pycriu from the same tree.
# Idempotent: a second run with everything present changes nothing and is fast.
set -euo pipefail

CRIU_SERIES=4.2            # the series to build: its newest version in NEWER_SUITES' source index
NEWER_SUITES=(forky sid)   # where Debian carries CRIU 4.2 as a source package
CRIU_BIN=${LAZYRESTORE_CRIU:-/usr/local/sbin/criu}
CACHE=${LAZYRESTORE_CACHE:-/var/cache/lazyrestore}
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$REPO/.venv}
PYTHON=${PYTHON:-python3}
# The tree the plugin and pycriu come from: $CACHE/criu (a symlink to criu-VERSION, set once built).
CRIU_LINK=$CACHE/criu

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
# Real programs the integration tests migrate (tests/integration/test_apps.py). Installed with their services
# kept stopped: the tests start their own instances.
APP_PACKAGES=(redis-server redis-tools nginx-light
  podman                    # tests/integration/test_podman.py: checkpoint --export / restore --import through runc
  containerd                # tests/integration/test_containerd.py: ctr checkpoint / restore through runc (own instance)
)

# Install packages without letting their maintainer scripts start services (policy-rc.d 101: action forbidden).
install_stopped() {
  local policy=/usr/sbin/policy-rc.d own=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 0755 "$policy" && own=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || {
    [ "$own" = 1 ] && rm -f "$policy"; return 1; }
  [ "$own" = 1 ] && rm -f "$policy"
  return 0
}

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

require_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (CRIU needs it); try: sudo make bootstrap"
}

missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || printf '%s\n' "$p"
  done
}

install_apt_packages() {
  local missing apps
  mapfile -t missing < <(missing_packages "${APT_PACKAGES[@]}")
  mapfile -t apps < <(missing_packages "${APP_PACKAGES[@]}")
  [ ${#missing[@]} -eq 0 ] && [ ${#apps[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]} ${apps[*]}"
  apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ ${#apps[@]} -gt 0 ]; then
    install_stopped "${apps[@]}" || die "installing ${apps[*]} failed"
  fi
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

installed_criu_version() {  # $1: binary; prints its version, or nothing
  [ -x "$1" ] || return 0
  "$1" --version 2>/dev/null | awk '/^Version:/ {print $2; exit}'
}

in_series() {  # $1: a version; true when it is CRIU_SERIES.x
  case "$1" in "$CRIU_SERIES" | "$CRIU_SERIES".*) return 0 ;; *) return 1 ;; esac
}

# apt options for a private apt state over the newer suites' deb-src lines, so the machine's own package
# lists never see those suites. The archive URI is the machine's own.
private_apt_opts() {
  local apt_dir=$CACHE/apt
  printf '%s\n' -o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=- \
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Get::List-Cleanup=0
}

write_private_sources() {
  local apt_dir=$CACHE/apt uri suite
  uri=$(debian_archive_uri)
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  : > "$apt_dir/sources.list"
  for suite in "${NEWER_SUITES[@]}"; do
    printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
      "$uri" "$suite" >> "$apt_dir/sources.list"
  done
}

# The newest CRIU_SERIES.x Debian version (e.g. 4.2.1-1) in the private source index; updates it first.
newest_criu_source() {
  local opts
  mapfile -t opts < <(private_apt_opts)
  write_private_sources
  apt-get "${opts[@]}" update -qq >&2 \
    || die "apt-get update for the deb-src entries of ${NEWER_SUITES[*]} failed (see $CACHE/apt/sources.list)"
  apt-cache "${opts[@]}" showsrc criu 2>/dev/null \
    | awk -v s="$CRIU_SERIES." '$1 == "Version:" && index($2, s) == 1 {print $2}' | sort -V | tail -1
}

# Download the criu source package into $CACHE/download; prints the upstream version.
fetch_criu_source() {
  local dl=$CACHE/download debver version opts
  debver=$(newest_criu_source)
  [ -n "$debver" ] || die "the ${NEWER_SUITES[*]} source index has no criu $CRIU_SERIES.x source package"
  version=${debver%-*}
  version=${version#*:}
  mkdir -p "$dl"
  if [ ! -f "$dl/criu_$version.orig.tar.xz" ]; then
    mapfile -t opts < <(private_apt_opts)
    say "fetching criu $debver source from ${NEWER_SUITES[*]} ($(debian_archive_uri))" >&2
    # The .dsc or .debian.tar.xz has been seen to answer 404 while the orig tarball downloads: it suffices.
    (cd "$dl" && apt-get "${opts[@]}" source --download-only -qq "criu=$debver") >&2 2>&1 \
      || say "apt-get source did not complete; checking for the upstream tarball" >&2
    [ -f "$dl/criu_$version.orig.tar.xz" ] || die "criu_$version.orig.tar.xz was not downloaded into $dl"
  fi
  printf '%s\n' "$version"
}

# Nothing to do when the installed binary is CRIU_SERIES.x and its tree (with pycriu) is the one linked.
criu_current() {
  local v
  v=$(installed_criu_version "$CRIU_BIN")
  in_series "$v" && [ "$(readlink "$CRIU_LINK" 2>/dev/null)" = "criu-$v" ] \
    && [ -f "$CRIU_LINK/lib/pycriu/images/pagemap_pb2.py" ] && [ -f "$CRIU_LINK/criu/criu" ]
}

build_criu() {
  criu_current && return 0
  local old version tree
  old=$(installed_criu_version "$CRIU_BIN")
  version=$(fetch_criu_source)
  tree=$CACHE/criu-$version
  if [ ! -f "$tree/criu/criu" ] || [ ! -f "$tree/lib/pycriu/images/pagemap_pb2.py" ]; then
    if [ ! -f "$tree/Makefile" ]; then
      rm -rf "$tree.tmp" && mkdir -p "$tree.tmp"
      tar -xJf "$CACHE/download/criu_$version.orig.tar.xz" -C "$tree.tmp" --strip-components=1
      mv "$tree.tmp" "$tree"
    fi
    say "building criu $version in $tree"
    make -C "$tree" -j"$(nproc)" criu >"$CACHE/criu-build.log" 2>&1 \
      || die "criu build failed; see $CACHE/criu-build.log"
    make -C "$tree" -j"$(nproc)" lib >>"$CACHE/criu-build.log" 2>&1 \
      || die "pycriu build (make lib) failed; see $CACHE/criu-build.log"
  fi
  install -D -m 0755 "$tree/criu/criu" "$CRIU_BIN"
  ln -sfn "criu-$version" "$CRIU_LINK"
  [ -n "$old" ] && [ "$old" != "$version" ] && say "upgraded criu $old -> $version at $CRIU_BIN"
  return 0
}

setup_venv() {
  local stamp=$VENV/.lazyrestore-stamp want
  want=$( (cat "$REPO/pyproject.toml"; readlink "$CRIU_LINK"; cat "$CRIU_LINK/lib/pycriu/__init__.py") | sha256sum | cut -c1-16)
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
  cp -r "$CRIU_LINK/lib/pycriu" "$site/pycriu"
  "$VENV/bin/python" -c 'import pycriu.images, pycriu.rpc_pb2' \
    || die "pycriu does not import in $VENV"
  printf '%s\n' "$want" > "$stamp"
}

verify_criu() {
  in_series "$(installed_criu_version "$CRIU_BIN")" || die "$CRIU_BIN --version does not report $CRIU_SERIES.x"
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
