#!/usr/bin/env bash
# Builds/installs the real control plane used by the e2e suite, idempotently:
#   kube-apiserver  built from Debian bookworm's `kubernetes` source package (v1.20.2)
#   kubectl         extracted from Debian's `kubernetes-client` .deb (never installed in /usr/bin)
#   etcd            Debian's `etcd-server` package (/usr/bin/etcd)
# Results are cached in ${UA_E2E_CACHE:-~/.cache/ua-sentinel-e2e}/<package-version>/ so only a
# new machine pays (~8 min build on 2 cores). A lock file serialises concurrent callers.
# On success the last line on stdout is the cache directory; `<cache>/current` names it too.
# Needs root (apt-get). Any failure exits non-zero with the reason on stderr.
set -euo pipefail

CACHE_ROOT="${UA_E2E_CACHE:-$HOME/.cache/ua-sentinel-e2e}"
PINNED_VERSION="${UA_E2E_KUBERNETES_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}"
mkdir -p "$CACHE_ROOT"

log() { printf '[e2e-build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

have_all() { # $1 = version dir; the binaries must exist AND run
    "$1/bin/kube-apiserver" --version >/dev/null 2>&1 &&
        "$1/bin/kubectl" version --client >/dev/null 2>&1 &&
        etcd --version >/dev/null 2>&1
}

fast_path() {
    local v
    for v in "$(cat "$CACHE_ROOT/current" 2>/dev/null || true)" "$PINNED_VERSION"; do
        [ -n "$v" ] || continue
        if have_all "$CACHE_ROOT/$v"; then
            echo "$CACHE_ROOT/$v"
            return 0
        fi
    done
    return 1
}

fast_path && exit 0

exec 9>"$CACHE_ROOT/build.lock"
if ! flock -n 9; then
    log "another process is building (lock $CACHE_ROOT/build.lock); waiting for it"
    flock 9
fi
# Someone else may have finished while we waited.
fast_path && exit 0

[ "$(id -u)" = 0 ] || die "must run as root (needs apt-get); binaries are missing from $CACHE_ROOT"

export DEBIAN_FRONTEND=noninteractive
retry() { # retry transient failures (apt mirrors, network)
    local n=1
    until "$@"; do
        [ $n -ge 4 ] && return 1
        log "attempt $n of '$*' failed; retrying in $((n * 10)) s"
        sleep $((n * 10))
        n=$((n + 1))
    done
}

# deb-src entries mirroring the deb ones (deb822 format on bookworm, one-line format on older images).
if ! grep -rqsE '^(Types: .*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        log "adding deb-src entries (/etc/apt/sources.list.d/debian-src.sources)"
        sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
            >/etc/apt/sources.list.d/debian-src.sources
    elif grep -qs '^deb ' /etc/apt/sources.list; then
        log "adding deb-src entries (/etc/apt/sources.list.d/debian-src.list)"
        sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >/etc/apt/sources.list.d/debian-src.list
    else
        die "no Debian apt sources to derive deb-src entries from"
    fi
fi

log "apt-get update"
retry apt-get update -qq >&2 || die "apt-get update"
log "apt-get install golang-go etcd-server rsync make"
retry apt-get install -y -qq --no-install-recommends golang-go etcd-server rsync make >&2 \
    || die "apt-get install golang-go etcd-server rsync make"
command -v etcd >/dev/null || die "etcd-server installed but no etcd binary on PATH"

# Which source version does the archive have? Prefer the pinned one.
AVAILABLE="$(apt-cache showsrc kubernetes 2>/dev/null | awk '/^Version:/ {print $2}' | sort -V | tail -n1)"
[ -n "$AVAILABLE" ] || die "apt-cache showsrc kubernetes: no source package (deb-src missing?)"
if apt-cache showsrc kubernetes | grep -qx "Version: $PINNED_VERSION"; then
    VERSION="$PINNED_VERSION"
else
    log "pinned kubernetes source $PINNED_VERSION not available; using $AVAILABLE"
    VERSION="$AVAILABLE"
fi
OUT="$CACHE_ROOT/$VERSION"
mkdir -p "$OUT/bin" "$OUT/work"
log "cache directory $OUT"

# kubectl from Debian's kubernetes-client .deb, extracted (never installed).
if ! "$OUT/bin/kubectl" version --client >/dev/null 2>&1; then
    log "downloading kubernetes-client .deb for kubectl"
    rm -rf "$OUT/work/kubectl" && mkdir -p "$OUT/work/kubectl"
    (cd "$OUT/work/kubectl" && retry apt-get download kubernetes-client >&2) || die "apt-get download kubernetes-client"
    dpkg-deb -x "$OUT"/work/kubectl/kubernetes-client_*.deb "$OUT/work/kubectl/root" || die "dpkg-deb -x kubernetes-client"
    K="$OUT/work/kubectl/root/usr/bin/kubectl"
    [ -f "$K" ] || die "no usr/bin/kubectl in kubernetes-client .deb"
    install -m 0755 "$K" "$OUT/bin/kubectl.tmp" && mv "$OUT/bin/kubectl.tmp" "$OUT/bin/kubectl"
    rm -rf "$OUT/work/kubectl"
    log "kubectl: $("$OUT/bin/kubectl" version --client --short)"
fi

if ! "$OUT/bin/kube-apiserver" --version >/dev/null 2>&1; then
    SRC="$OUT/work/src"
    mkdir -p "$SRC"
    if ! ls "$SRC"/kubernetes_*.orig.tar.* >/dev/null 2>&1; then
        log "apt-get source --download-only kubernetes=$VERSION (~34 MB)"
        (cd "$SRC" && retry apt-get source -q --download-only "kubernetes=$VERSION" >&2) || die "apt-get source kubernetes=$VERSION"
    fi
    TARBALL="$(ls "$SRC"/kubernetes_*.orig.tar.* | head -n1)"
    TREE="$SRC/tree"
    if [ ! -f "$TREE/.extracted" ]; then
        log "extracting $(basename "$TARBALL")"
        rm -rf "$TREE" && mkdir -p "$TREE"
        tar xf "$TARBALL" -C "$TREE" || die "tar xf $TARBALL"
        touch "$TREE/.extracted"
    fi
    KDIR="$(find "$TREE" -mindepth 1 -maxdepth 1 -type d | head -n1)"
    [ -f "$KDIR/Makefile" ] || die "no Makefile in extracted source ($KDIR)"
    mkdir -p "$KDIR/.go/src/k8s.io"
    [ -e "$KDIR/.go/src/k8s.io/kubernetes" ] || ln -s ../../.. "$KDIR/.go/src/k8s.io/kubernetes"
    log "building kube-apiserver with $(go version) in $KDIR (about 8 min on 2 cores; log: $OUT/work/build.log)"
    START=$(date +%s)
    GOHOME="$(mktemp -d)"
    if ! (cd "$KDIR" && GOPATH="$KDIR/.go" CGO_ENABLED=0 HOME="$GOHOME" GOFLAGS= \
            make WHAT=cmd/kube-apiserver >"$OUT/work/build.log" 2>&1); then
        tail -n 40 "$OUT/work/build.log" >&2
        rm -rf "$GOHOME"
        die "make WHAT=cmd/kube-apiserver (see $OUT/work/build.log)"
    fi
    rm -rf "$GOHOME"
    BIN="$(find "$KDIR/_output" -type f -name kube-apiserver -perm -u+x | head -n1)"
    [ -n "$BIN" ] || die "build succeeded but no kube-apiserver under $KDIR/_output"
    install -m 0755 "$BIN" "$OUT/bin/kube-apiserver.tmp" && mv "$OUT/bin/kube-apiserver.tmp" "$OUT/bin/kube-apiserver"
    log "built kube-apiserver in $(( $(date +%s) - START )) s: $("$OUT/bin/kube-apiserver" --version)"
    echo "$(( $(date +%s) - START ))" >"$OUT/build-seconds"
    # Keep the tarball (cheap re-build); drop the tree and the Go build cache (~GBs).
    rm -rf "$TREE"
fi

have_all "$OUT" || die "binaries still missing in $OUT after build"
echo "$VERSION" >"$CACHE_ROOT/current.tmp" && mv "$CACHE_ROOT/current.tmp" "$CACHE_ROOT/current"
log "ready: $OUT"
echo "$OUT"
