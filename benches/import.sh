#!/usr/bin/env bash
# Controller benchmark on the local lab: how long an import takes next to the time the source
# needs just to hand the same bytes over, how much scratch it uses next to upstream's design, and
# how much memory the controller needs with 20 imports at once.
#
#   benches/import.sh [WORKDIR] [SIZE_GIB]
#
# 1. Builds a source disk once (SIZE_GIB, default 2: ext4 holding a copy of /usr/share and 256 MiB
#    of /dev/urandom, then free space) and its streamOptimized VMDK with qemu-img.
# 2. Puts a powered-off VM with three such disks into the lab's simulated vCenter.
# 3. Baseline, RUNS times: `lab-bench serve` takes an ExportVm lease and downloads the three disks
#    at once into nothing: the simulator's serving time for these bytes on this machine.
# 4. Import, RUNS times: a VirtualMachineImport for the VM against a release `vm-import controller`;
#    timed from creation until every disk's SHA-256 is in status (every image committed and served),
#    sampling the image directory's allocated bytes (scratch) every 0.1 s. Each digest is checked
#    against the source disk's.
# 5. Twenty one-disk VMs (256 MiB, 64 MiB of data) imported at once (--max-concurrent-imports 20):
#    wall time and the controller's peak RSS (VmHWM).
# Upstream's time is at least the serving time plus `qemu-img convert` of each disk in turn (run
# here on the same files); its scratch for the same import is computed from its design (reference §3.10): every
# disk's VMDK is downloaded before conversion, and the VMDKs and sparse RAWs stay until the end.
#
# Needs a release build: `cargo build --release -p vm-import --bin vm-import --example lab-bench`
# (or VM_IMPORT / LAB_BENCH paths), qemu-img, mkfs.ext4, and a lab: VM_IMPORT_LAB_ENV, else
# `lab/up` starts (or reuses) the default one.
set -euo pipefail

work=${1:-/var/tmp/vm-import-bench}
size_gib=${2:-2}
runs=${RUNS:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin=${VM_IMPORT:-$target/release/vm-import}
lab_bench=${LAB_BENCH:-$target/release/examples/lab-bench}
for tool in qemu-img mkfs.ext4 python3 "$bin" "$lab_bench"; do
    command -v "$tool" >/dev/null || { echo "bench: missing $tool" >&2; exit 1; }
done
mkdir -p "$work"
work=$(cd "$work" && pwd)

env_file=${VM_IMPORT_LAB_ENV:-$("$root/lab/up")}
# shellcheck disable=SC1090
. "$env_file"
# shellcheck source=../lab/lib.sh
. "$root/lab/lib.sh"
kubectl() { "$(lab_bin kubectl)" "$@"; }
labvm() { "$root/lab/vm" "$@"; }

cd "$work"
if [[ ! -f import-disk.vmdk ]]; then
    echo "bench: building import-disk.raw (${size_gib} GiB ext4: /usr/share + 256 MiB random)" >&2
    rm -rf stage && mkdir stage
    cp -al /usr/share stage/ 2>/dev/null || cp -a /usr/share stage/
    head -c 256M /dev/urandom > stage/random.bin
    truncate -s "${size_gib}G" import-disk.raw.tmp
    mkfs.ext4 -q -F -d stage import-disk.raw.tmp
    rm -rf stage
    qemu-img convert -f raw -O vmdk -o subformat=streamOptimized import-disk.raw.tmp import-disk.vmdk.tmp
    mv import-disk.raw.tmp import-disk.raw && mv import-disk.vmdk.tmp import-disk.vmdk
fi
if [[ ! -f small-disk.vmdk ]]; then
    truncate -s 256M small-disk.raw
    dd if=/dev/urandom of=small-disk.raw bs=1M count=64 seek=32 conv=notrunc status=none
    qemu-img convert -f raw -O vmdk -o subformat=streamOptimized small-disk.raw small-disk.vmdk
fi
# What status.diskImportStatus[].checksum must say: the SHA-512 of the disk served as raw.
[[ -f import-disk.sha512 ]] || sha512sum import-disk.raw | cut -d' ' -f1 > import-disk.sha512
[[ -f small-disk.sha512 ]] || sha512sum small-disk.raw | cut -d' ' -f1 > small-disk.sha512
want=$(cat import-disk.sha512)
vmdk_bytes=$(stat -c %s import-disk.vmdk)
raw_alloc=$(( $(stat -c %b import-disk.raw) * $(stat -c %B import-disk.raw) ))
for d in a b c; do ln -f import-disk.vmdk "disk-$d.vmdk"; done

run_id=$(date +%s)
vm="bench-3disk-$run_id"
labvm create "$vm" --cpus 2 --memory-mb 2048 --power off \
    --disk "pvscsi:$work/disk-a.vmdk" --disk "pvscsi:$work/disk-b.vmdk" --disk "sata:$work/disk-c.vmdk" \
    --nic 'vmxnet3:VM Network' >/dev/null

echo "machine: $(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "disk: $(stat -c %s import-disk.raw) bytes virtual, $raw_alloc allocated; VMDK $vmdk_bytes bytes; VM $vm has 3 of them" >&2

best_serve=""
for _ in $(seq "$runs"); do
    s=$("$lab_bench" serve "$vm" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
    echo "  serve: $s s" >&2
    best_serve=$(python3 -c "print(min(x for x in [$s, ${best_serve:-$s}]))")
done

# Upstream's design after the download: `qemu-img convert` of each VMDK to raw, one disk after another.
best_qemu=""
for _ in $(seq "$runs"); do
    started=$(date +%s.%N)
    for d in a b c; do qemu-img convert -f vmdk -O raw "disk-$d.vmdk" "$work/upstream-$d.raw"; done
    ended=$(date +%s.%N)
    rm -f "$work"/upstream-?.raw
    s=$(python3 -c "print(round($ended - $started, 2))")
    echo "  qemu-img convert x3: $s s" >&2
    best_qemu=$(python3 -c "print(min(x for x in [$s, ${best_qemu:-$s}]))")
done

ns="bench-$run_id"
kubectl create namespace "$ns" >/dev/null
kubectl -n "$ns" create secret generic vcenter --from-literal=username="$VSPHERE_USERNAME" \
    --from-literal=password="$VSPHERE_PASSWORD" --from-file=caCert="$VSPHERE_CA_CERT" >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: migration.harvesterhci.io/v1beta1
kind: VmwareSource
metadata: {name: vcenter, namespace: $ns}
spec: {endpoint: "$VSPHERE_URL", dc: "$VSPHERE_DC", credentials: {name: vcenter, namespace: $ns}}
EOF

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
controller_pid=""
start_controller() { # IMAGE_DIR EXTRA_ARGS...
    local images=$1; shift
    local port metrics_port; port=$(free_port); metrics_port=$(free_port)
    SVC_ADDRESS="127.0.0.1:$port" "$bin" controller --namespace "$ns" --image-dir "$images" \
        --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics_port" \
        --leader-election-namespace "$ns" --identity bench --progress-seconds 1 "$@" \
        >"$work/controller.log" 2>&1 &
    controller_pid=$!
    for _ in $(seq 120); do
        curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    tail -n 30 "$work/controller.log" >&2; echo "bench: the controller is not ready" >&2; exit 1
}
stop_controller() { kill "$controller_pid" 2>/dev/null || true; wait "$controller_pid" 2>/dev/null || true; }
trap stop_controller EXIT
start_controller "$work/images"
for _ in $(seq 300); do
    kubectl -n "$ns" get vmwaresource vcenter -o jsonpath='{.status.status}' 2>/dev/null | grep -q . && break
    sleep 0.2
done
kubectl -n "$ns" get vmwaresource vcenter -o jsonpath='{.status.status}' | grep -qx clusterReady \
    || { echo "bench: the source is not ready" >&2; exit 1; }

import() { # NAME VM
    kubectl apply -f - >/dev/null <<EOF
apiVersion: migration.harvesterhci.io/v1beta1
kind: VirtualMachineImport
metadata: {name: $1, namespace: $ns}
spec:
  virtualMachineName: $2
  sourceCluster: {name: vcenter, namespace: $ns, kind: VmwareSource, apiVersion: migration.harvesterhci.io/v1beta1}
EOF
}
# Prints the import's disk checksums (SHA-512), one per line, once every disk of it has one.
digests() {
    kubectl -n "$ns" get virtualmachineimport "$1" -o json | python3 -c '
import json, sys
s = json.load(sys.stdin).get("status") or {}
disks = s.get("diskImportStatus") or []
if s.get("importStatus") in ("virtualMachineImportInvalid", "VMMigrationFailed"):
    sys.exit("import failed: " + json.dumps(s.get("importConditions")))
if disks and all(d.get("checksum") for d in disks):
    print("\n".join(d["checksum"] for d in disks))'
}

deadline() { (( $(date +%s) < $1 )) || { echo "bench: timed out; see $work/controller.log" >&2; exit 1; }; }

best_import=""; peak_scratch=0
for r in $(seq "$runs"); do
    rm -rf "$work/images"; mkdir -p "$work/images"
    name="three-$r"
    started=$(date +%s.%N)
    import "$name" "$vm"
    peak=0; got=""; until=$(( $(date +%s) + 1800 ))
    while [[ -z $got ]]; do
        deadline "$until"
        used=$(( $(du -s -B1 "$work/images" | cut -f1) ))
        (( used > peak )) && peak=$used
        got=$(digests "$name")
        sleep 0.1
    done
    ended=$(date +%s.%N)
    for d in $got; do [[ $d == "$want" ]] || { echo "bench: digest $d differs from $want" >&2; exit 1; }; done
    [[ $(wc -w <<<"$got") -eq 3 ]] || { echo "bench: expected 3 digests, got: $got" >&2; exit 1; }
    secs=$(python3 -c "print(round($ended - $started, 2))")
    echo "  import $name: $secs s to all images served, peak scratch $peak bytes" >&2
    best_import=$(python3 -c "print(min(x for x in [$secs, ${best_import:-$secs}]))")
    (( peak > peak_scratch )) && peak_scratch=$peak
    kubectl -n "$ns" delete virtualmachineimport "$name" --wait=false >/dev/null
    for _ in $(seq 100); do kubectl -n "$ns" get virtualmachineimport "$name" >/dev/null 2>&1 || break; sleep 0.2; done
done
stop_controller

upstream_scratch=$(( 3 * vmdk_bytes + 3 * raw_alloc ))
python3 - "$best_serve" "$best_import" "$peak_scratch" "$upstream_scratch" "$raw_alloc" "$best_qemu" <<'PY' >&2
import sys
serve, imp, ours, upstream, alloc, qemu = map(float, sys.argv[1:])
print(f"3-disk VM: simulator serves the bytes in {serve:.2f} s; import to all images served {imp:.2f} s "
      f"(ratio {imp / serve:.2f})")
print(f"upstream's design needs at least {serve:.2f} s download + {qemu:.2f} s qemu-img convert = "
      f"{serve + qemu:.2f} s before anything is served (ours / that: {imp / (serve + qemu):.2f})")
print(f"scratch: ours {ours / 2**20:.0f} MiB (images only, {ours / (3 * alloc):.2f} x the disks' allocation); "
      f"upstream's design {upstream / 2**20:.0f} MiB ({upstream / ours:.2f} x ours)")
PY

echo "bench: twenty one-disk VMs at once" >&2
small_want=$(cat small-disk.sha512)
for i in $(seq 20); do
    labvm create "bench-small-$run_id-$i" --cpus 1 --memory-mb 256 --power off \
        --disk "lsilogic:$work/small-disk.vmdk" >/dev/null
done
rm -rf "$work/images"; mkdir -p "$work/images"
start_controller "$work/images" --max-concurrent-imports 20 --max-imports-per-host 20
started=$(date +%s.%N)
for i in $(seq 20); do import "small-$i" "bench-small-$run_id-$i"; done
until=$(( $(date +%s) + 1800 ))
for i in $(seq 20); do
    got=""
    while [[ -z $got ]]; do deadline "$until"; got=$(digests "small-$i"); [[ -n $got ]] || sleep 0.2; done
    [[ $got == "$small_want" ]] || { echo "bench: small-$i digest $got differs" >&2; exit 1; }
done
ended=$(date +%s.%N)
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$controller_pid/status")
python3 -c "print(f'20 imports at once: all images served in {$ended - $started:.1f} s; controller peak RSS {$hwm / 1024:.1f} MiB')" >&2
stop_controller
for i in $(seq 20); do labvm delete "bench-small-$run_id-$i" >/dev/null; done
labvm delete "$vm" >/dev/null
rm -rf "$work/images"
