#!/usr/bin/env bash
# Shared helpers for the orderflow scripts. Source it; it does nothing on its own.
# shellcheck disable=SC2034  # variables here are used by the scripts that source this file

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$ROOT/.run"
LOG_DIR="$RUN_DIR/logs"
PID_DIR="$RUN_DIR/pids"
DEFAULT_DATABASE_URL="postgres://postgres@127.0.0.1:5432/orderflow"
# Debian cluster that ensure_postgres starts when the local server is down.
PG_CLUSTER="${PG_CLUSTER:-main}"

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# Developers may not be root; CI and these machines are.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

_APT_UPDATED=""
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install manually: $*"
    if [ -z "$_APT_UPDATED" ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        _APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

pkg_installed() { dpkg -s "$1" >/dev/null 2>&1; }

# --- PostgreSQL -------------------------------------------------------------

# Splits postgres://user[:pass]@host[:port]/db[?query] into PG_USER, PG_HOST,
# PG_PORT, PG_DB and PG_ADMIN_URL (same server, `postgres` maintenance DB).
parse_db_url() {
    local url="$1" scheme rest userinfo="" hostport path query=""
    case "$url" in
        postgres://* | postgresql://*) ;;
        *) die "DATABASE_URL must start with postgres:// or postgresql:// (got: $url)" ;;
    esac
    scheme="${url%%://*}"
    rest="${url#*://}"
    if [[ "$rest" == *\?* ]]; then
        query="?${rest#*\?}"
        rest="${rest%%\?*}"
    fi
    if [[ "$rest" == */* ]]; then
        path="${rest#*/}"
        rest="${rest%%/*}"
    else
        path=""
    fi
    if [[ "$rest" == *@* ]]; then
        userinfo="${rest%@*}"
        hostport="${rest##*@}"
    else
        hostport="$rest"
    fi
    if [[ "$hostport" == \[* ]]; then # [::1]:5432
        PG_HOST="${hostport%%]*}"
        PG_HOST="${PG_HOST#[}"
        PG_PORT="${hostport##*]}"
        PG_PORT="${PG_PORT#:}"
    else
        PG_HOST="${hostport%%:*}"
        PG_PORT=""
        [[ "$hostport" == *:* ]] && PG_PORT="${hostport##*:}"
    fi
    PG_HOST="${PG_HOST:-127.0.0.1}"
    PG_PORT="${PG_PORT:-5432}"
    PG_USER="${userinfo%%:*}"
    PG_USER="${PG_USER:-postgres}"
    PG_DB="${path:-$PG_USER}"
    PG_ADMIN_URL="${scheme}://${userinfo:+$userinfo@}${hostport}/postgres${query}"
}

pg_is_local() {
    case "$PG_HOST" in
        127.0.0.1 | localhost | ::1) return 0 ;;
        *) return 1 ;;
    esac
}

pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3; }

ensure_postgres() {
    DATABASE_URL="${DATABASE_URL:-$DEFAULT_DATABASE_URL}"
    export DATABASE_URL
    parse_db_url "$DATABASE_URL"

    # psql/pg_isready are needed even for a remote server.
    if ! command -v pg_isready >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
        if pg_is_local; then apt_install postgresql; else apt_install postgresql-client; fi
    fi
    if pg_ready; then
        log "PostgreSQL is up at $PG_HOST:$PG_PORT"
        pg_is_local && _pg_ensure_local_login
        return 0
    fi
    pg_is_local || die "PostgreSQL at $PG_HOST:$PG_PORT is not reachable, and it is not local so it cannot be started from here. Check DATABASE_URL or start that server."

    pkg_installed postgresql || apt_install postgresql
    local version
    version="$(_pg_cluster_version)"
    log "starting PostgreSQL cluster $version/$PG_CLUSTER"
    # --skip-systemctl-redirect: works in containers without systemd.
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" start ||
        warn "pg_ctlcluster start failed (maybe already starting); waiting for it anyway"
    _pg_wait_ready 30
    _pg_ensure_local_login
}

_pg_cluster_version() {
    local version
    # shellcheck disable=SC2012  # names are plain version numbers
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)"
    [ -n "$version" ] || die "no PostgreSQL cluster found under /etc/postgresql"
    printf '%s\n' "$version"
}

_pg_wait_ready() {
    local timeout="$1" i
    for ((i = 0; i < timeout; i++)); do
        pg_ready && return 0
        sleep 1
    done
    die "PostgreSQL at $PG_HOST:$PG_PORT did not become ready within ${timeout}s"
}

# The services and tests connect over TCP without a password; a fresh Debian cluster
# only allows peer/md5 auth, so open up loopback with `trust` for local development.
_pg_ensure_local_login() {
    local err
    if err="$(PGCONNECT_TIMEOUT=5 psql -w -X -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -c 'SELECT 1' 2>&1 >/dev/null)"; then
        return 0
    fi
    case "$err" in
        *authentication* | *password* | *pg_hba.conf*) ;;
        *) die "cannot connect to PostgreSQL as $PG_USER: $err" ;;
    esac
    local version hba
    version="$(_pg_cluster_version)"
    hba="/etc/postgresql/$version/$PG_CLUSTER/pg_hba.conf"
    [ -f "$hba" ] || die "login as $PG_USER failed ($err) and $hba does not exist to fix it"
    warn "***********************************************************************"
    warn "* DEV-ONLY: setting 'trust' auth for 127.0.0.1/32 and ::1/128 in       *"
    warn "* $hba"
    warn "* Anyone on this machine can now log in as any role without password. *"
    warn "* Never do this on a shared or production server.                      *"
    warn "***********************************************************************"
    # pg_hba.conf is first-match, so the trust lines must come before the defaults.
    local tmp
    tmp="$(mktemp)"
    {
        echo "# orderflow scripts: DEV-ONLY passwordless loopback access"
        echo "host all all 127.0.0.1/32 trust"
        echo "host all all ::1/128 trust"
        as_root cat "$hba"
    } >"$tmp"
    as_root cp "$tmp" "$hba"
    rm -f "$tmp"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" reload
    sleep 1
    PGCONNECT_TIMEOUT=5 psql -w -X -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -c 'SELECT 1' >/dev/null ||
        die "still cannot log in as $PG_USER after enabling trust auth (does the role exist?)"
}

ensure_database() {
    DATABASE_URL="${DATABASE_URL:-$DEFAULT_DATABASE_URL}"
    parse_db_url "$DATABASE_URL"
    local exists
    # Variables are only interpolated in psql scripts, not in -c, hence the here-strings.
    exists="$(psql -w -X -q -At -v ON_ERROR_STOP=1 -v db="$PG_DB" -d "$PG_ADMIN_URL" \
        <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")" ||
        die "cannot query databases on $PG_HOST:$PG_PORT"
    if [ "$exists" = "1" ]; then
        log "database $PG_DB exists"
    else
        log "creating database $PG_DB"
        psql -w -X -q -v ON_ERROR_STOP=1 -v db="$PG_DB" -d "$PG_ADMIN_URL" \
            <<<'CREATE DATABASE :"db";' >/dev/null || die "could not create database $PG_DB"
    fi
}

# --- Rust -------------------------------------------------------------------

ensure_rust_tools() {
    # rustup installs there, and non-login shells (CI) may not have it on PATH.
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found. Install a Rust toolchain (https://rustup.rs); this script cannot download one here."
    # librdkafka is compiled from source by the rdkafka crate.
    local pkgs=(make gcc g++ perl pkg-config zlib1g-dev libssl-dev libsasl2-dev libzstd-dev liblz4-dev python3 curl)
    local missing=() p
    for p in "${pkgs[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
}

# --- Processes --------------------------------------------------------------

pid_file() { printf '%s/%s.pid\n' "$PID_DIR" "$1"; }

# The binary behind a process name: extra consumers are consumer-2, consumer-3, ...
process_binary() {
    if [[ "$1" =~ ^(.*)-[0-9]+$ ]]; then printf '%s\n' "${BASH_REMATCH[1]}"; else printf '%s\n' "$1"; fi
}

# True when NAME's pid file points at a live process that still runs NAME's binary (pids
# get reused).
is_running() {
    local f pid
    f="$(pid_file "$1")"
    [ -f "$f" ] || return 1
    pid="$(cat "$f" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [ -r "/proc/$pid/cmdline" ]; then
        local cmd
        cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
        [[ "$cmd" == *"$(process_binary "$1")"* ]] || return 1
    fi
    return 0
}

# wait_or_kill PID NAME: after a SIGTERM, up to 30 s for PID's graceful drain, then SIGKILL
# with a warning.
wait_or_kill() {
    local pid="$1" name="$2" i
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    warn "$name (pid $pid) did not stop within 30s of SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
}

# stop_process NAME: SIGTERM the process of NAME's pid file, wait up to 30 s for its
# graceful drain, then SIGKILL; removes the pid file.
stop_process() {
    local name="$1" f pid
    f="$(pid_file "$name")"
    if ! is_running "$name"; then
        [ -f "$f" ] && log "$name not running (removing stale pid file)"
        rm -f "$f"
        return 0
    fi
    pid="$(cat "$f")"
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    wait_or_kill "$pid" "$name"
    rm -f "$f"
    log "$name stopped"
}

# consumer_name I: the process name of the I-th consumer (1-based). The first keeps the plain
# name, so consumer.pid and consumer.log stay where other scripts look for them.
consumer_name() {
    if [ "$1" -eq 1 ]; then echo consumer; else echo "consumer-$1"; fi
}

# The indexes (2, 3, ...) of the extra consumers that have a pid file, sorted.
extra_consumer_indexes() {
    local f
    for f in "$PID_DIR"/consumer-*.pid; do
        [ -e "$f" ] || continue
        f="${f##*/consumer-}"
        f="${f%.pid}"
        [[ "$f" =~ ^[0-9]+$ ]] && echo "$f"
    done | sort -n
}

# wait_http URL TIMEOUT_S [NAME]: poll until URL answers 2xx; with NAME, give up early if it died.
wait_http() {
    local url="$1" timeout="$2" name="${3:-}" deadline
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
        if [ -n "$name" ] && ! is_running "$name"; then
            warn "$name exited while waiting for $url"
            return 1
        fi
        sleep 1
    done
    return 1
}

# host:port -> port
addr_port() { printf '%s\n' "${1##*:}"; }

# --- tansu: the default broker of the local stack ---------------------------------------
# tansu (crates.io) is a Kafka-protocol broker; with the libsql feature it keeps its log,
# topics and committed offsets in one SQLite file, so a backlog is bounded by disk, not
# memory, and survives a broker restart. Built from crates.io once (~15 min on 2 cores).

TANSU_VERSION="${TANSU_VERSION:-0.6.0}"

# Sets TANSU to a tansu binary of TANSU_VERSION built with SQLite storage, building it when
# missing. TANSU_BIN points at another build.
ensure_tansu() {
    TANSU="${TANSU_BIN:-$HOME/.cargo/bin/tansu}"
    if [ -x "$TANSU" ] && _tansu_has_sqlite; then
        return 0
    fi
    [ -n "${TANSU_BIN:-}" ] && die "TANSU_BIN=$TANSU_BIN is not a tansu $TANSU_VERSION build with the libsql feature"
    ensure_rust_tools
    log "building tansu $TANSU_VERSION with SQLite storage (first time only: about 15 min on 2 cores)"
    cargo install --locked "tansu@$TANSU_VERSION" --features libsql
    _tansu_has_sqlite || die "tansu was built but does not report version $TANSU_VERSION with libsql"
}

# cargo records what it installed, features included; a build without libsql cannot open
# sqlite:// storage and would only fail at start.
_tansu_has_sqlite() {
    local record="$HOME/.cargo/.crates2.json"
    [ "$TANSU" != "$HOME/.cargo/bin/tansu" ] && return 0
    [ -f "$record" ] || return 1
    python3 - "$record" "$TANSU_VERSION" <<'PY'
import json, sys
installs = json.load(open(sys.argv[1]))["installs"]
ok = any(key.startswith(f"tansu {sys.argv[2]} ") and "libsql" in info.get("features", [])
         for key, info in installs.items())
sys.exit(0 if ok else 1)
PY
}

# tansu_command ADDR: the command line of a tansu broker on ADDR (host:port), one word a
# line. It keeps its data in tansu.db in its working directory (SQLite paths are relative).
tansu_command() {
    local addr="$1"
    printf '%s\n' "$TANSU" broker --cluster-id orderflow \
        --listener-url "tcp://$addr" --advertised-listener-url "tcp://$addr" \
        --storage-engine "sqlite://tansu.db"
}

# tansu_wait ADDR TIMEOUT_S: until the broker answers a metadata request.
tansu_wait() {
    local addr="$1" timeout="$2" deadline
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        "$TANSU" topic list --broker "tcp://$addr" >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}

# tansu_ensure_topic ADDR NAME PARTITIONS: creates the topic unless it exists. No
# cleanup.policy is set: tansu's SQLite storage then never deletes records (no retention).
tansu_ensure_topic() {
    local addr="$1" name="$2" partitions="$3"
    if "$TANSU" topic list --broker "tcp://$addr" 2>/dev/null | grep -qw -- "$name"; then
        return 0
    fi
    log "creating topic $name ($partitions partitions) on tansu"
    "$TANSU" topic create "$name" --partitions "$partitions" --broker "tcp://$addr" >/dev/null
}

# --- Dashboard (producer/dashboard) ------------------------------------------

DASHBOARD_DIR="$ROOT/producer/dashboard"

# ensure_node: node and npm, from Debian when missing.
ensure_node() {
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && return 0
    apt_install nodejs npm
}

# ensure_dashboard_packages: the dashboard's npm packages (uplot for the page, playwright-core
# for its browser test), exactly as package-lock.json pins them. Nothing of them is
# committed; `npm ci` runs when node_modules is missing or older than the lockfile.
ensure_dashboard_packages() {
    local stamp="$DASHBOARD_DIR/node_modules/.package-lock.json"
    if [ -f "$stamp" ] && [ "$stamp" -nt "$DASHBOARD_DIR/package-lock.json" ]; then
        return 0
    fi
    ensure_node
    log "npm ci in producer/dashboard (the dashboard's chart library and browser test driver)"
    (cd "$DASHBOARD_DIR" && npm ci --no-audit --no-fund --loglevel=error)
}

# ensure_chromium: Debian's chromium, which the dashboard's browser test drives.
ensure_chromium() {
    [ -x /usr/bin/chromium ] && return 0
    apt_install --no-install-recommends chromium
}
