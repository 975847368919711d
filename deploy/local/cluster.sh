#!/usr/bin/env bash
# Local Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager v1.20.2)
# on 127.0.0.1, built from Debian packages only. See --help.
set -euo pipefail

readonly K8S_VERSION="v1.20.2"
readonly K8S_MAJOR="1"
readonly K8S_MINOR="20"
# What a run needs. make and gcc are not for the control plane but for the operator's build:
# jemalloc, its allocator, is compiled from C source. This is the one place that apt-installs.
readonly RUNTIME_PACKAGES=(etcd-server openssl curl make gcc)
# What building the control plane needs besides.
readonly DEB_PACKAGES=("${RUNTIME_PACKAGES[@]}" golang-go dpkg-dev golang-github-modern-go-reflect2-dev)
readonly RUNTIME_COMMANDS=(etcd openssl curl make cc)
# Room for the three Services of each of tens of thousands of VecodexSets (a /12 is the
# largest range kube-apiserver accepts).
readonly SERVICE_CIDR="${VECODEX_K8S_SERVICE_CIDR:-10.96.0.0/12}"

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
readonly SELF
CACHE_DIR="${VECODEX_K8S_CACHE:-${HOME:-/root}/.cache/vecodex-operator/k8s-${K8S_VERSION}}"
BIN_DIR="${CACHE_DIR}/bin"
UP_TIMEOUT="${VECODEX_K8S_UP_TIMEOUT:-90}"
MARKER=".vecodex-k8s-cluster"

usage() {
    cat <<EOF
Usage: $(basename "$0") COMMAND [ARGS]

Local Kubernetes ${K8S_VERSION} control plane (etcd, kube-apiserver, kube-controller-manager)
on 127.0.0.1, built from Debian packages. No scheduler, no kubelet.

Commands:
  install                         Install apt packages (adds a deb-src stanza if needed) and build
                                  kube-apiserver + kube-controller-manager into
                                  \${VECODEX_K8S_CACHE:-\$HOME/.cache/vecodex-operator/k8s-${K8S_VERSION}}/bin.
                                  Idempotent; ~1 s when the cached binaries are present.
  up [--dir DIR] [--owner-pid PID]
                                  Start a new cluster on free ports in DIR (default: a new
                                  mktemp -d /tmp/vecodex-k8s.XXXXXX). Runs 'install' first if the
                                  binaries are missing. Writes DIR/kubeconfig (admin, bearer token)
                                  and DIR/env. Prints only the run dir on stdout (last line).
                                  --owner-pid PID: a detached watchdog runs 'down DIR' once PID exits.
  down DIR                        Stop what 'up' started in DIR and remove its etcd data. Idempotent.
  env DIR                         Print 'export KUBECONFIG=DIR/kubeconfig'.
  stop DIR COMPONENT              Stop one component (etcd, kube-apiserver, kube-controller-manager)
                                  of the cluster in DIR, keeping its data: for fault tests.
  start DIR COMPONENT             Start a stopped component again with its recorded command line
                                  (same ports, same data).
  -h, --help                      This text.

Environment:
  VECODEX_K8S_CACHE               cache dir (binaries, sources, Go build cache)
  VECODEX_K8S_UP_TIMEOUT          seconds 'up' waits for readiness (default 90)
  VECODEX_ETCD_QUOTA_BYTES        etcd --quota-backend-bytes (default 8 GiB; etcd's own 2 GiB
                                  default fills up in a 10,000-set load test)
  VECODEX_KCM_CONTROLLERS         kube-controller-manager --controllers (default '*'); the load
                                  test turns the deployment controller off and simulates it
  VECODEX_ETCD_LOG_LEVEL          etcd --log-level (default warn; info logs each compaction)
  VECODEX_APISERVER_GOGC          GOGC of kube-apiserver (default Go's 100). The load test
                                  raises it: at 10,000 sets the API server holds 1-3 GB live
                                  and each GC's mark phase slows requests for seconds
  VECODEX_APISERVER_GOMEMLIMIT    GOMEMLIMIT of kube-apiserver (default none), e.g. 12GiB: a
                                  cap on the heap that a high GOGC would otherwise let grow
  VECODEX_K8S_AUDIT               1: kube-apiserver writes an audit log to DIR/audit.log (JSON
                                  lines, blocking): Lease writes with their request body, every
                                  other write as metadata, no reads. The tests read it as the
                                  witness of what each replica wrote
EOF
}

log() { printf '[cluster.sh] %s\n' "$*" >&2; }
die() { printf '[cluster.sh] ERROR: %s\n' "$*" >&2; exit 1; }

# Close every inherited fd above 2 (used in children that must not hold a caller's pipes or locks).
close_fds() {
    local p fd
    for p in /proc/"$BASHPID"/fd/*; do
        fd="${p##*/}"
        [[ "$fd" =~ ^[0-9]+$ ]] || continue
        ((fd > 2)) || continue
        eval "exec ${fd}>&-" 2>/dev/null || true
    done
}

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------

binaries_ok() {
    local b
    for b in kube-apiserver kube-controller-manager; do
        [[ -x "$BIN_DIR/$b" ]] || return 1
    done
    local v
    v="$("$BIN_DIR/kube-apiserver" --version 2>/dev/null || true)"
    [[ "$v" == *"$K8S_VERSION"* ]] || return 1
    return 0
}

runtime_commands_ok() {
    local c
    for c in "${RUNTIME_COMMANDS[@]}"; do
        command -v "$c" >/dev/null 2>&1 || return 1
    done
    return 0
}

missing_packages() {
    local p status
    for p in "$@"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
        [[ "$status" == "installed" ]] || printf '%s\n' "$p"
    done
}

have_deb_src() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        grep -Eqs '^[[:space:]]*deb-src[[:space:]]' "$f" && return 0
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        grep -Eiqs '^[[:space:]]*Types:.*[[:space:]]deb-src([[:space:]]|$)' "$f" && return 0
    done
    return 1
}

ensure_deb_src() {
    have_deb_src && return 0
    local codename uri="" signed="" f
    # shellcheck disable=SC1091
    codename="$( . /etc/os-release && printf '%s' "${VERSION_CODENAME:-bookworm}")"
    # Take URI and Signed-By from the existing Debian (non-security) deb822 entry.
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        read -r uri signed < <(awk -v cn="$codename" '
            function flush() {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && uris ~ /\/debian\/?([ \t]|$)/ && suites ~ ("(^|[ \t])" cn "([ \t]|$)") && !found) {
                    split(uris, u, /[ \t]+/); found = 1; print u[1], (signed == "" ? "-" : signed)
                }
                types = uris = suites = signed = ""
            }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]*#/ { next }
            tolower($1) == "types:"     { sub(/^[^:]*:[ \t]*/, ""); types = $0 }
            tolower($1) == "uris:"      { sub(/^[^:]*:[ \t]*/, ""); uris = $0 }
            tolower($1) == "suites:"    { sub(/^[^:]*:[ \t]*/, ""); suites = $0 }
            tolower($1) == "signed-by:" { sub(/^[^:]*:[ \t]*/, ""); signed = $0 }
            END { flush() }
        ' "$f") || true
        [[ -n "$uri" ]] && break
    done
    if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
        uri="$(awk -v cn="$codename" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/) { if ($(i + 1) == cn) { print $i; exit } break } }' /etc/apt/sources.list || true)"
    fi
    [[ -n "$uri" ]] || uri="http://deb.debian.org/debian"
    [[ -n "$signed" && "$signed" != "-" ]] || signed="/usr/share/keyrings/debian-archive-keyring.gpg"
    local out=/etc/apt/sources.list.d/vecodex-deb-src.sources
    log "adding deb-src stanza $out ($uri $codename main)"
    printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
        "$uri" "$codename" "$signed" >"$out"
}

apt_install() {
    local pkgs=("$@") created_policy=0
    [[ ${#pkgs[@]} -gt 0 ]] || return 0
    # Never let a package start a system daemon (etcd) that would inherit our pipes.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    log "apt-get install ${pkgs[*]}"
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" </dev/null >&2 || rc=$?
    if ((created_policy)); then rm -f /usr/sbin/policy-rc.d; fi
    ((rc == 0)) || die "apt-get install failed (rc=$rc)"
}

# Build env for GOPATH-mode builds of the vendored tree.
go_env() {
    export GOPATH="$CACHE_DIR/gopath"
    export GOCACHE="$CACHE_DIR/gocache"
    export GO111MODULE=off GOFLAGS='' CGO_ENABLED=0 GOPROXY=off GOENV=off GOTOOLCHAIN=local
    export GOMAXPROCS="${GOMAXPROCS:-2}"
    GOROOT="$(go env GOROOT)"
    export GOROOT
}

first_dsc() {
    local f
    for f in "$1"/kubernetes_*.dsc; do
        [[ -f "$f" ]] && { printf '%s\n' "$f"; return 0; }
    done
    return 0
}

prepare_source() {
    local srcdir="$CACHE_DIR/src" tree="$CACHE_DIR/src/kubernetes"
    if [[ -f "$srcdir/.stamp-extracted" && -d "$tree" ]]; then
        return 0
    fi
    mkdir -p "$srcdir/dl"
    local dsc
    dsc="$(first_dsc "$srcdir/dl")"
    if [[ -z "$dsc" ]]; then
        log "downloading Debian source package 'kubernetes'"
        (cd "$srcdir/dl" && apt-get source --download-only kubernetes </dev/null >&2) ||
            die "apt-get source --download-only kubernetes failed"
        dsc="$(first_dsc "$srcdir/dl")"
        [[ -n "$dsc" ]] || die "no kubernetes_*.dsc downloaded"
    fi
    local ver
    ver="$(awk '/^Version:/ { print $2; exit }' "$dsc")"
    [[ "$ver" == *"${K8S_VERSION#v}"* ]] || die "Debian source package is version '$ver', expected ${K8S_VERSION#v}"
    log "extracting $(basename "$dsc") (version $ver)"
    rm -rf "$tree" "$tree.tmp"
    dpkg-source --no-check -x "$dsc" "$tree.tmp" </dev/null >&2 || die "dpkg-source -x failed"

    # reflect2 v1.0.1 (vendored) panics under Go >= 1.18: replace with Debian's v1.0.2.
    local r2src=/usr/share/gocode/src/github.com/modern-go/reflect2
    local r2dst="$tree.tmp/vendor/github.com/modern-go/reflect2"
    [[ -d "$r2src" ]] || die "$r2src missing (golang-github-modern-go-reflect2-dev)"
    [[ -d "$r2dst" ]] || die "$r2dst missing in the source tree"
    log "replacing vendored reflect2 with Debian's $(basename "$r2src") from $r2src"
    find "$r2dst" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
    find "$r2src" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
        -exec cp -L {} "$r2dst"/ \;

    mv "$tree.tmp" "$tree"
    rm -f "$srcdir/.stamp-openapi"
    touch "$srcdir/.stamp-extracted"
}

generate_openapi() {
    local srcdir="$CACHE_DIR/src"
    [[ -f "$srcdir/.stamp-openapi" ]] && return 0
    local kroot="$GOPATH/src/k8s.io/kubernetes"
    log "building openapi-gen"
    mkdir -p "$CACHE_DIR/tools"
    (cd "$kroot" && go build -p 2 -o "$CACHE_DIR/tools/openapi-gen" \
        k8s.io/kubernetes/vendor/k8s.io/kube-openapi/cmd/openapi-gen >&2) || die "building openapi-gen failed"

    local pkgs
    pkgs="$(cd "$kroot" && grep -rl --include='*.go' '+k8s:openapi-gen=' \
            --exclude-dir=vendor --exclude-dir=_output --exclude-dir=.git --exclude-dir=testdata \
            --exclude-dir=third_party --exclude-dir=debian --exclude-dir=code-generator \
            --exclude-dir=sample-apiserver . |
        sed -e 's|^\./||' -e 's|/[^/]*$||' -e 's|^staging/src/|vendor/|' |
        LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)"
    [[ -n "$pkgs" ]] || die "found no packages tagged +k8s:openapi-gen="
    log "generating pkg/generated/openapi from $(tr ',' '\n' <<<"$pkgs" | wc -l) packages"
    (cd "$kroot" && "$CACHE_DIR/tools/openapi-gen" \
        -i "$pkgs" \
        -p k8s.io/kubernetes/pkg/generated/openapi \
        -O zz_generated.openapi \
        -o "$GOPATH/src" \
        -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
        -r "$CACHE_DIR/tools/api-rule-violations.txt" >&2) || die "openapi-gen failed"
    [[ -s "$kroot/pkg/generated/openapi/zz_generated.openapi.go" ]] || die "openapi-gen produced no output"
    touch "$srcdir/.stamp-openapi"
}

build_binaries() {
    local kroot="$GOPATH/src/k8s.io/kubernetes"
    local out="$CACHE_DIR/bin.tmp"
    rm -rf "$out"
    mkdir -p "$out"
    local ld="-s -w" p
    local build_date
    build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    for p in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
        ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$K8S_MAJOR -X $p.gitMinor=$K8S_MINOR"
        ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
    done
    log "go build kube-apiserver kube-controller-manager (-p 2; several minutes on a cold cache)"
    local t0=$SECONDS
    (cd "$kroot" && go build -p 2 -trimpath -tags notest -ldflags "$ld" -o "$out/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager >&2) ||
        die "go build failed"
    log "go build finished in $((SECONDS - t0)) s"
    rm -rf "$BIN_DIR"
    mv "$out" "$BIN_DIR"
}

cmd_install() {
    [[ $# -eq 0 ]] || die "install takes no arguments"
    if binaries_ok && runtime_commands_ok; then
        log "kube-apiserver/kube-controller-manager $K8S_VERSION already in $BIN_DIR"
        return 0
    fi
    [[ "$(id -u)" -eq 0 ]] || die "install needs root (apt-get)"
    mkdir -p "$CACHE_DIR"
    local lock
    exec {lock}>"$CACHE_DIR/.install.lock"
    if ! flock -n "$lock"; then
        log "another install is running; waiting for $CACHE_DIR/.install.lock"
        flock -w 3600 "$lock" || die "could not get the install lock"
    fi
    # Someone else may have finished while we waited.
    if binaries_ok && runtime_commands_ok; then
        log "kube-apiserver/kube-controller-manager $K8S_VERSION already in $BIN_DIR"
        exec {lock}>&-
        return 0
    fi
    local t0=$SECONDS
    local need_build=1 need_source=1
    binaries_ok && need_build=0
    [[ -f "$CACHE_DIR/src/.stamp-extracted" ]] && need_source=0

    local pkgs=("${RUNTIME_PACKAGES[@]}")
    ((need_build)) && pkgs=("${DEB_PACKAGES[@]}")
    local missing=()
    mapfile -t missing < <(missing_packages "${pkgs[@]}")
    if ((${#missing[@]} > 0)) || ((need_build && need_source)); then
        if ((need_build && need_source)); then ensure_deb_src; fi
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update </dev/null >&2 || die "apt-get update failed"
        apt_install "${missing[@]}"
    fi
    runtime_commands_ok || die "etcd/openssl/curl/make/cc still missing after apt-get install"

    if ((need_build)); then
        prepare_source
        go_env
        local link="$GOPATH/src/k8s.io/kubernetes"
        mkdir -p "$(dirname "$link")"
        ln -sfn "$CACHE_DIR/src/kubernetes" "$link"
        generate_openapi
        build_binaries
        binaries_ok || die "built kube-apiserver does not report $K8S_VERSION: $("$BIN_DIR/kube-apiserver" --version 2>&1 || true)"
    fi
    log "install done in $((SECONDS - t0)) s: $("$BIN_DIR/kube-apiserver" --version 2>&1)"
    exec {lock}>&-
}

# ---------------------------------------------------------------------------------------------
# process bookkeeping
# ---------------------------------------------------------------------------------------------

# pid_matches DIR NAME: recorded PID is alive and still runs the recorded command line.
pid_matches() {
    local dir="$1" name="$2" pid
    [[ -f "$dir/pids/$name.pid" && -f "$dir/pids/$name.cmdline" ]] || return 1
    pid="$(<"$dir/pids/$name.pid")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    # Through a pipe: cmp would trust the (zero) st_size of /proc files.
    # shellcheck disable=SC2002
    cat "/proc/$pid/cmdline" 2>/dev/null | cmp -s - "$dir/pids/$name.cmdline"
}

# Environment (NAME=VALUE words) for the next start_detached; kept with the command line so
# that 'start' restarts a component as 'up' started it.
DETACHED_ENV=()

# start_detached DIR NAME LOGFILE CMD...: start CMD in its own session, record PID + command line.
start_detached() {
    local dir="$1" name="$2" logfile="$3"
    shift 3
    mkdir -p "$dir/pids"
    printf '%s\0' "$@" >"$dir/pids/$name.cmdline"
    local -a envs=("${DETACHED_ENV[@]}")
    DETACHED_ENV=()
    : >"$dir/pids/$name.env"
    ((${#envs[@]} == 0)) || printf '%s\0' "${envs[@]}" >"$dir/pids/$name.env"
    (
        close_fds
        exec setsid nohup env "${envs[@]}" "$@" </dev/null >>"$logfile" 2>&1
    ) &
    local pid=$!
    printf '%s\n' "$pid" >"$dir/pids/$name.pid"
    # Wait until setsid/nohup have exec'd into the real command.
    local i
    for ((i = 0; i < 100; i++)); do
        pid_matches "$dir" "$name" && return 0
        [[ -d "/proc/$pid" ]] || break
        sleep 0.05
    done
    pid_matches "$dir" "$name" || die "$name did not start (pid $pid); see $logfile"
}

readonly STOP_ORDER=(watchdog kube-controller-manager kube-apiserver etcd)

# stop_all DIR: SIGTERM, then SIGKILL, every recorded process whose command line still matches.
stop_all() {
    local dir="$1" name pid any=0
    local -a names=()
    for name in "${STOP_ORDER[@]}"; do
        if pid_matches "$dir" "$name"; then
            pid="$(<"$dir/pids/$name.pid")"
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            names+=("$name")
            any=1
        fi
    done
    ((any)) || return 0
    local i alive
    for ((i = 0; i < 100; i++)); do
        alive=0
        for name in "${names[@]}"; do
            pid_matches "$dir" "$name" && alive=1
        done
        ((alive)) || return 0
        sleep 0.1
    done
    for name in "${names[@]}"; do
        if pid_matches "$dir" "$name"; then
            pid="$(<"$dir/pids/$name.pid")"
            log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for ((i = 0; i < 50; i++)); do
        alive=0
        for name in "${names[@]}"; do
            pid_matches "$dir" "$name" && alive=1
        done
        ((alive)) || return 0
        sleep 0.1
    done
    log "WARNING: some processes in $dir are still alive after SIGKILL"
}

# ---------------------------------------------------------------------------------------------
# up
# ---------------------------------------------------------------------------------------------

pick_ports() {
    python3 - <<'EOF'
import random, socket
ports, socks = [], []
cands = random.sample(range(20000, 32000), 200)  # below the ephemeral range (32768+)
for p in cands:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        s.close()
        continue
    socks.append(s)
    ports.append(p)
    if len(ports) == 4:
        break
print(" ".join(map(str, ports)))
EOF
}

proc_starttime() {
    local stat rest
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    rest="${stat##*) }"
    local -a f
    read -r -a f <<<"$rest"
    # f[0] is field 3 (state); field 22 (starttime) is f[19].
    [[ "${f[0]}" != Z && "${f[0]}" != X ]] || return 1
    printf '%s\n' "${f[19]}"
}

gen_certs() {
    local pki="$1"
    mkdir -p "$pki"
    cat >"$pki/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:10.0.0.1, IP:10.96.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
authorityKeyIdentifier = keyid
[v3_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
EOF
    local cnf="$pki/openssl.cnf"
    mkca() { # name cn
        openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 -config "$cnf" \
            -extensions v3_ca -subj "/CN=$2" -keyout "$pki/$1.key" -out "$pki/$1.crt" 2>/dev/null
    }
    mkcert() { # name cn ca ext
        openssl req -new -newkey rsa:2048 -nodes -sha256 -config "$cnf" -subj "/CN=$2" \
            -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
        openssl x509 -req -in "$pki/$1.csr" -CA "$pki/$3.crt" -CAkey "$pki/$3.key" -CAcreateserial \
            -days 3650 -sha256 -extfile "$cnf" -extensions "$4" -out "$pki/$1.crt" 2>/dev/null
        rm -f "$pki/$1.csr"
    }
    mkca ca vecodex-local-ca
    mkcert apiserver kube-apiserver ca v3_server
    mkca front-proxy-ca vecodex-front-proxy-ca
    mkcert front-proxy-client front-proxy-client front-proxy-ca v3_client
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    chmod 600 "$pki"/*.key
}

write_kubeconfig() { # file server user token ca-file
    local ca_data
    ca_data="$(base64 -w0 <"$5")"
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: vecodex-local
  cluster:
    server: $2
    certificate-authority-data: $ca_data
users:
- name: $3
  user:
    token: $4
contexts:
- name: vecodex-local
  context:
    cluster: vecodex-local
    user: $3
    namespace: default
current-context: vecodex-local
EOF
    chmod 600 "$1"
}

UP_DIR=""
UP_OK=0
UP_CLEANUP=0

up_on_exit() {
    local rc=$?
    if ((UP_CLEANUP)) && ((UP_OK == 0)) && [[ -n "$UP_DIR" ]]; then
        log "up failed; stopping what was started in $UP_DIR (logs kept there)"
        stop_all "$UP_DIR" || true
        rm -rf "$UP_DIR/etcd-data"
    fi
    exit "$rc"
}

# fail_with_log NAME MESSAGE
fail_with_log() {
    local logfile="$UP_DIR/$1.log"
    log "ERROR: $2"
    if [[ -f "$logfile" ]]; then
        log "---- last 40 lines of $logfile ----"
        tail -n 40 "$logfile" >&2 || true
        log "---- end of $logfile ----"
    fi
    exit 1
}

# wait_for NAME DESCRIPTION COMMAND...: poll COMMAND until success, fail if NAME died or deadline passed.
wait_for() {
    local name="$1" what="$2"
    shift 2
    while true; do
        if "$@"; then
            return 0
        fi
        if [[ "$name" != - ]] && ! pid_matches "$UP_DIR" "$name"; then
            fail_with_log "$name" "$name exited while waiting for $what"
        fi
        if ((SECONDS >= UP_DEADLINE)); then
            fail_with_log "$name" "timed out after ${UP_TIMEOUT} s waiting for $what"
        fi
        sleep 0.25
    done
}

check_etcd() { curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; }
check_apiserver() {
    [[ "$(curl -s --max-time 3 --cacert "$UP_DIR/pki/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" \
        "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null)" == ok ]]
}
check_kcm() {
    [[ "$(curl -s --max-time 3 -k "https://127.0.0.1:$KCM_PORT/healthz" 2>/dev/null)" == ok ]]
}
check_default_sa() {
    curl -sf --max-time 3 --cacert "$UP_DIR/pki/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" \
        "https://127.0.0.1:$API_PORT/api/v1/namespaces/default/serviceaccounts/default" 2>/dev/null |
        python3 -c 'import json,sys; sa=json.load(sys.stdin); sys.exit(0 if sa.get("secrets") else 1)' 2>/dev/null
}

# The audit policy: every write to a Lease with its body (the holder it names), every other
# write as metadata (who, what, when, the answer), nothing for reads. Recorded once answered.
write_audit_policy() {
    cat >"$1" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Request
    verbs: [create, update, patch, delete]
    resources:
      - group: coordination.k8s.io
        resources: [leases]
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
EOF
}

cmd_up() {
    local dir="" owner=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dir) [[ $# -ge 2 ]] || die "--dir needs a value"; dir="$2"; shift 2 ;;
            --dir=*) dir="${1#--dir=}"; shift ;;
            --owner-pid) [[ $# -ge 2 ]] || die "--owner-pid needs a value"; owner="$2"; shift 2 ;;
            --owner-pid=*) owner="${1#--owner-pid=}"; shift ;;
            -h | --help) usage; exit 0 ;;
            *) die "up: unknown argument '$1' (see --help)" ;;
        esac
    done
    local owner_start=""
    if [[ -n "$owner" ]]; then
        [[ "$owner" =~ ^[0-9]+$ ]] || die "--owner-pid must be a PID, got '$owner'"
        owner_start="$(proc_starttime "$owner")" || die "--owner-pid $owner is not running"
    fi

    if ! [[ -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kube-controller-manager" ]] || ! runtime_commands_ok; then
        log "binaries or runtime packages missing; running install first"
        cmd_install 3>&-
    fi
    local etcd_bin
    etcd_bin="$(command -v etcd)"

    if [[ -z "$dir" ]]; then
        dir="$(mktemp -d /tmp/vecodex-k8s.XXXXXX)"
    else
        mkdir -p "$dir"
    fi
    dir="$(cd "$dir" && pwd -P)"
    UP_DIR="$dir"

    local lock
    exec {lock}>"$dir/.lock"
    flock -n "$lock" || die "another up/down is running in $dir"
    local n
    for n in "${STOP_ORDER[@]}"; do
        if pid_matches "$dir" "$n"; then
            die "$dir already has a running $n; run '$0 down $dir' first"
        fi
    done
    rm -rf "$dir/etcd-data" "$dir/pids" "$dir/pki" "$dir/kcm-certs" "$dir/apiserver-certs" "$dir/flexvolume"
    rm -f "$dir"/*.log "$dir/kubeconfig" "$dir/env" "$dir/kcm.kubeconfig" "$dir/tokens.csv" "$dir/cluster-info"
    touch "$dir/$MARKER"
    mkdir -p "$dir/pids"

    UP_CLEANUP=1
    trap up_on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP

    local t0=$SECONDS
    UP_DEADLINE=$((SECONDS + UP_TIMEOUT))

    if [[ -n "$owner" ]]; then
        start_detached "$dir" watchdog "$dir/watchdog.log" \
            "$BASH" "$SELF" __watchdog "$dir" "$owner" "$owner_start"
        log "watchdog (pid $(<"$dir/pids/watchdog.pid")) will run 'down' when pid $owner exits"
    fi

    local ports
    ports="$(pick_ports)" || die "could not pick free ports (python3)"
    read -r ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT <<<"$ports"
    [[ -n "${KCM_PORT:-}" ]] || die "could not pick 4 free ports (got '$ports')"
    log "run dir $dir; ports: etcd $ETCD_PORT, etcd-peer $ETCD_PEER_PORT, apiserver $API_PORT, controller-manager $KCM_PORT"

    local pki="$dir/pki"
    gen_certs "$pki"
    ADMIN_TOKEN="$(openssl rand -hex 24)"
    local kcm_token
    kcm_token="$(openssl rand -hex 24)"
    printf '%s,admin,vecodex-admin,"system:masters"\n%s,system:kube-controller-manager,vecodex-kcm\n' \
        "$ADMIN_TOKEN" "$kcm_token" >"$dir/tokens.csv"
    chmod 600 "$dir/tokens.csv"
    local server="https://127.0.0.1:$API_PORT"
    write_kubeconfig "$dir/kubeconfig" "$server" admin "$ADMIN_TOKEN" "$pki/ca.crt"
    write_kubeconfig "$dir/kcm.kubeconfig" "$server" system:kube-controller-manager "$kcm_token" "$pki/ca.crt"
    printf 'export KUBECONFIG=%q\n' "$dir/kubeconfig" >"$dir/env"
    cat >"$dir/cluster-info" <<EOF
SERVER=$server
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
API_PORT=$API_PORT
KCM_PORT=$KCM_PORT
KUBECONFIG=$dir/kubeconfig
EOF

    # etcd
    local etcd_name="vecodex-$API_PORT"
    start_detached "$dir" etcd "$dir/etcd.log" "$etcd_bin" \
        --name="$etcd_name" \
        --data-dir="$dir/etcd-data" \
        --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster="$etcd_name=http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster-state=new \
        --initial-cluster-token="$etcd_name-$$" \
        --logger=zap \
        --log-level="${VECODEX_ETCD_LOG_LEVEL:-warn}" \
        --quota-backend-bytes="${VECODEX_ETCD_QUOTA_BYTES:-8589934592}"
    log "etcd started (pid $(<"$dir/pids/etcd.pid")); waiting for /health"
    wait_for etcd "etcd /health" check_etcd

    # kube-apiserver
    local audit=()
    if [[ "${VECODEX_K8S_AUDIT:-0}" == 1 ]]; then
        write_audit_policy "$dir/audit-policy.yaml"
        audit=(--audit-policy-file="$dir/audit-policy.yaml" --audit-log-path="$dir/audit.log"
            --audit-log-format=json --audit-log-maxsize=100000 --audit-log-maxbackup=0
            --audit-log-mode=blocking)
    fi
    local issuer="https://kubernetes.default.svc.cluster.local"
    DETACHED_ENV=("GOGC=${VECODEX_APISERVER_GOGC:-100}")
    [[ -z "${VECODEX_APISERVER_GOMEMLIMIT:-}" ]] ||
        DETACHED_ENV+=("GOMEMLIMIT=$VECODEX_APISERVER_GOMEMLIMIT")
    start_detached "$dir" kube-apiserver "$dir/kube-apiserver.log" "$BIN_DIR/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
        --bind-address=127.0.0.1 \
        --secure-port="$API_PORT" \
        --advertise-address=127.0.0.1 \
        --endpoint-reconciler-type=none \
        --cert-dir="$dir/apiserver-certs" \
        --tls-cert-file="$pki/apiserver.crt" \
        --tls-private-key-file="$pki/apiserver.key" \
        --client-ca-file="$pki/ca.crt" \
        --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
        --requestheader-allowed-names=front-proxy-client \
        --requestheader-extra-headers-prefix=X-Remote-Extra- \
        --requestheader-group-headers=X-Remote-Group \
        --requestheader-username-headers=X-Remote-User \
        --proxy-client-cert-file="$pki/front-proxy-client.crt" \
        --proxy-client-key-file="$pki/front-proxy-client.key" \
        --token-auth-file="$dir/tokens.csv" \
        --authorization-mode=Node,RBAC \
        --service-account-key-file="$pki/sa.pub" \
        --service-account-signing-key-file="$pki/sa.key" \
        --service-account-issuer="$issuer" \
        --api-audiences="$issuer" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --allow-privileged=true \
        "${audit[@]}"
    log "kube-apiserver started (pid $(<"$dir/pids/kube-apiserver.pid")); waiting for /readyz"
    wait_for kube-apiserver "kube-apiserver /readyz" check_apiserver
    log "kube-apiserver ready after $((SECONDS - t0)) s"

    # kube-controller-manager
    mkdir -p "$dir/kcm-certs" "$dir/flexvolume"
    start_detached "$dir" kube-controller-manager "$dir/kube-controller-manager.log" "$BIN_DIR/kube-controller-manager" \
        --kubeconfig="$dir/kcm.kubeconfig" \
        --authentication-kubeconfig="$dir/kcm.kubeconfig" \
        --authorization-kubeconfig="$dir/kcm.kubeconfig" \
        --bind-address=127.0.0.1 \
        --secure-port="$KCM_PORT" \
        --port=0 \
        --cert-dir="$dir/kcm-certs" \
        --flex-volume-plugin-dir="$dir/flexvolume" \
        --leader-elect=false \
        --controllers="${VECODEX_KCM_CONTROLLERS:-*}" \
        --use-service-account-credentials=true \
        --service-account-private-key-file="$pki/sa.key" \
        --root-ca-file="$pki/ca.crt" \
        --cluster-signing-cert-file="$pki/ca.crt" \
        --cluster-signing-key-file="$pki/ca.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --cluster-name=vecodex-local
    log "kube-controller-manager started (pid $(<"$dir/pids/kube-controller-manager.pid")); waiting for /healthz"
    wait_for kube-controller-manager "kube-controller-manager /healthz" check_kcm
    wait_for kube-controller-manager "ServiceAccount default/default with a token secret" check_default_sa

    UP_OK=1
    exec {lock}>&-
    log "cluster up in $((SECONDS - t0)) s: $server (KUBECONFIG=$dir/kubeconfig)"
    log "stop it with: $SELF down $dir"
    printf '%s\n' "$dir" >&3
}

# ---------------------------------------------------------------------------------------------
# down / env / watchdog
# ---------------------------------------------------------------------------------------------

cmd_down() {
    [[ $# -eq 1 ]] || die "usage: down DIR"
    local dir="$1"
    if [[ ! -d "$dir" ]]; then
        log "$dir does not exist; nothing to stop"
        return 0
    fi
    dir="$(cd "$dir" && pwd -P)"
    [[ -f "$dir/$MARKER" ]] || die "$dir is not a cluster dir made by '$(basename "$0") up'"
    local lock
    exec {lock}>"$dir/.lock"
    flock -w 180 "$lock" || die "timed out waiting for the lock on $dir"
    stop_all "$dir"
    rm -rf "$dir/etcd-data"
    exec {lock}>&-
    log "cluster in $dir is down"
}

component_ok() {
    case "$1" in etcd | kube-apiserver | kube-controller-manager) return 0 ;; *) return 1 ;; esac
}

cmd_stop() {
    [[ $# -eq 2 ]] || die "usage: stop DIR COMPONENT"
    local dir="$1" name="$2" pid i
    component_ok "$name" || die "unknown component '$name' (etcd, kube-apiserver, kube-controller-manager)"
    pid_matches "$dir" "$name" || { log "$name is not running"; return 0; }
    pid="$(<"$dir/pids/$name.pid")"
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        pid_matches "$dir" "$name" || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cmd_start() {
    [[ $# -eq 2 ]] || die "usage: start DIR COMPONENT"
    local dir="$1" name="$2"
    component_ok "$name" || die "unknown component '$name' (etcd, kube-apiserver, kube-controller-manager)"
    [[ -f "$dir/pids/$name.cmdline" ]] || die "$dir has no recorded command line for $name"
    pid_matches "$dir" "$name" && { log "$name is already running"; return 0; }
    local -a args=()
    mapfile -d '' args <"$dir/pids/$name.cmdline"
    DETACHED_ENV=()
    [[ ! -s "$dir/pids/$name.env" ]] || mapfile -d '' DETACHED_ENV <"$dir/pids/$name.env"
    start_detached "$dir" "$name" "$dir/$name.log" "${args[@]}"
    log "started $name again (pid $(<"$dir/pids/$name.pid"))"
}

cmd_env() {
    [[ $# -eq 1 ]] || die "usage: env DIR"
    local dir
    [[ -d "$1" ]] || die "$1 does not exist"
    dir="$(cd "$1" && pwd -P)"
    printf 'export KUBECONFIG=%q\n' "$dir/kubeconfig" >&3
}

cmd_watchdog() {
    local dir="$1" owner="$2" start="$3" now
    while [[ -d "$dir" ]]; do
        now="$(proc_starttime "$owner" 2>/dev/null)" || break
        [[ "$now" == "$start" ]] || break
        sleep 1
    done
    [[ -d "$dir" ]] || exit 0
    printf '[cluster.sh] %s owner pid %s exited; running down %s\n' "$(date -u +%FT%TZ)" "$owner" "$dir"
    exec "$BASH" "$SELF" down "$dir"
}

main() {
    # stdout is reserved for the command's result (fd 3); everything else goes to stderr.
    exec 3>&1 1>&2
    local cmd="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        install) cmd_install "$@" 3>&- ;;
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        env) cmd_env "$@" ;;
        stop) cmd_stop "$@" ;;
        start) cmd_start "$@" ;;
        __watchdog) cmd_watchdog "$@" ;;
        -h | --help | help) usage >&3 ;;
        "") usage; exit 2 ;;
        *) log "unknown command '$cmd'"; usage; exit 2 ;;
    esac
}

main "$@"
