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

lab_bin() {
  case $1 in
    kube-apiserver|kubectl) echo "$LAB_CACHE/bin/$1-v$K8S_VERSION" ;;
    etcd) echo "$LAB_CACHE/bin/etcd-v$ETCD_VERSION" ;;
    vcsim-lab) echo "$LAB_CACHE/bin/vcsim-lab-v$GOVMOMI_VERSION-$(vcsim_source_hash)" ;;
    *) die "no lab binary named '$1'" ;;
  esac
}
