# Shared helpers for the lab scripts: where the cache and state live, and how binaries are named.
# Sourced, never run.
LAB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lab/versions.env
. "$LAB_ROOT/versions.env"
LAB_CACHE=${VM_IMPORT_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vm-import-lab}
LAB_STATE=${VM_IMPORT_LAB_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/vm-import-lab}

log() { printf 'lab: %s\n' "$*" >&2; }
die() { printf 'lab: error: %s\n' "$*" >&2; exit 1; }

vcsim_source_hash() {
  cat "$LAB_ROOT"/vcsim/go.mod "$LAB_ROOT"/vcsim/*.go 2>/dev/null | sha256sum | cut -c1-12
}

# The OpenStack venv (Keystone, Glance, gunicorn from PyPI) with its template databases, keyed by the
# pinned versions and the constraints file, so bumping either installs afresh beside the old one.
openstack_home() {
  local key
  key=$(cat "$LAB_ROOT/openstack/constraints.txt" "$LAB_ROOT/openstack/templates.sh" | sha256sum | cut -c1-12)
  echo "$LAB_CACHE/openstack/keystone-$KEYSTONE_VERSION-glance-$GLANCE_VERSION-$key"
}

lab_bin() {
  case $1 in
    kube-apiserver|kubectl) echo "$LAB_CACHE/bin/$1-v$K8S_VERSION" ;;
    etcd) echo "$LAB_CACHE/bin/etcd-v$ETCD_VERSION" ;;
    helm) echo "$LAB_CACHE/bin/helm-v$HELM_VERSION" ;;
    vcsim-lab) echo "$LAB_CACHE/bin/vcsim-lab-v$GOVMOMI_VERSION-$(vcsim_source_hash)" ;;
    *) die "no lab binary named '$1'" ;;
  esac
}

# Prints N distinct free TCP ports on 127.0.0.1 (held open together while choosing, so they differ).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# start_daemon NAME BINARY ARGS...: runs BINARY in its own session (so `down` can signal its whole process
# group), logging to $LAB_STATE/logs/NAME.log, pid in $LAB_STATE/pids/NAME.pid. TMPDIR points into the state
# dir so nothing a daemon leaves behind escapes `lab/down`.
start_daemon() {
  local name=$1; shift
  mkdir -p "$LAB_STATE/tmp/$name"
  TMPDIR="$LAB_STATE/tmp/$name" setsid "$@" >"$LAB_STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$LAB_STATE/pids/$name.pid"
}

# wait_for NAME SECONDS COMMAND...: polls COMMAND until it succeeds; fails with NAME's log if NAME dies or time runs out.
wait_for() {
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs)) pid
  pid=$(cat "$LAB_STATE/pids/$name.pid")
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$LAB_STATE/logs/$name.log" >&2 || true
      die "$name exited during start-up (log: $LAB_STATE/logs/$name.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$LAB_STATE/logs/$name.log" >&2 || true
      die "$name not ready after ${secs}s (log: $LAB_STATE/logs/$name.log)"
    fi
    sleep 0.2
  done
}

# True when the lab in $LAB_STATE has written its env file and all its daemons are alive.
lab_is_up() {
  [[ -s $LAB_STATE/lab.env ]] || return 1
  local name pid
  for name in etcd kube-apiserver vcsim keystone glance openstack-fakes; do
    pid=$(cat "$LAB_STATE/pids/$name.pid" 2>/dev/null) || return 1
    kill -0 "$pid" 2>/dev/null || return 1
  done
}
