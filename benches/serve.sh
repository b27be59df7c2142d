#!/usr/bin/env bash
# stamp serve benchmark, two parts against one `stamp serve` (release build, SQLite, a local
# objects directory) on loopback:
#   api:     CLIENTS concurrent clients (default 200; crates/stamp-serve/examples/serve_load.rs,
#            our SigV4 client, one keep-alive connection each) send DescribeImportImageTasks for
#            SECONDS (default 60): throughput, p50, p99 and max latency. Goal: p99 < 50 ms.
#   imports: 20 ImportSnapshot tasks of a 256 MiB VMDK (half random data, half holes) submitted
#            at once (boto3), timed until all are completed, against the same 20 conversions
#            run one by one with `qemu-img convert -O qcow2`. Prints the ratio stamp/qemu-img.
# Not part of .ci/run.
#
# usage: benches/serve.sh [--clients N] [--seconds S] [--imports N]
# env:   STAMP_BIN=path uses that stamp binary instead of building target/release/stamp
set -euo pipefail
cd "$(dirname "$0")/.."
clients=200 seconds=60 imports=20
while (($#)); do
  case $1 in
    --clients) clients=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --imports) imports=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cargo build --release --locked -q -p stamp-serve --example serve_load
load=$PWD/target/release/examples/serve_load
if [[ -n ${STAMP_BIN:-} ]]; then
  stamp=$STAMP_BIN
else
  cargo build --release --locked -q -p stamp
  stamp=$PWD/target/release/stamp
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/stamp-bench-serve.XXXXXX")
pid=
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/objects/src"
echo "AKIDBENCH benchsecret bench" > "$work/keys"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$stamp" serve --listen "127.0.0.1:$port" --db "sqlite:$work/db" --objects "$work/objects" \
  --credentials "$work/keys" --scratch "$work/scratch" --workers "$(nproc)" >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
url=http://127.0.0.1:$port

# The disk: 256 MiB, 1 MiB of random data then a 1 MiB hole, as a streamOptimized VMDK.
python3 - "$work/disk.raw" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.truncate(256 << 20)
    for i in range(0, 256, 2):
        f.seek(i << 20); f.write(os.urandom(1 << 20))
PY
"$stamp" convert -O vmdk -o subformat=streamOptimized "$work/disk.raw" "$work/objects/src/disk.vmdk"
for i in $(seq "$imports"); do ln "$work/objects/src/disk.vmdk" "$work/objects/src/disk$i.vmdk"; done

echo "== imports: $imports x 256 MiB VMDK (128 MiB data), $(nproc) workers"
start=$(date +%s.%N)
python3 - "$url" "$imports" <<'PY'
import boto3, sys, time
ec2 = boto3.client("ec2", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="AKIDBENCH", aws_secret_access_key="benchsecret")
ids = [ec2.import_snapshot(DiskContainer={"Format": "VMDK", "UserBucket": {"S3Bucket": "src", "S3Key": f"disk{i}.vmdk"}})["ImportTaskId"]
       for i in range(1, int(sys.argv[2]) + 1)]
while True:
    tasks = ec2.describe_import_snapshot_tasks(ImportTaskIds=ids)["ImportSnapshotTasks"]
    states = [t["SnapshotTaskDetail"]["Status"] for t in tasks]
    if any(s == "deleted" for s in states):
        sys.exit("an import failed: %s" % [t["SnapshotTaskDetail"].get("StatusMessage") for t in tasks])
    if all(s == "completed" for s in states):
        break
    time.sleep(0.2)
PY
stamp_s=$(echo "$(date +%s.%N) - $start" | bc)
start=$(date +%s.%N)
for i in $(seq "$imports"); do qemu-img convert -O qcow2 "$work/objects/src/disk$i.vmdk" "$work/q$i.qcow2"; rm -f "$work/q$i.qcow2"; done
qemu_s=$(echo "$(date +%s.%N) - $start" | bc)
printf 'stamp serve, %d concurrent ImportSnapshot: %.2f s\nqemu-img convert, one by one:          %.2f s\nratio stamp/qemu-img: %.2f\n' \
  "$imports" "$stamp_s" "$qemu_s" "$(echo "$stamp_s / $qemu_s" | bc -l)"

echo "== api: $clients clients, DescribeImportImageTasks, ${seconds} s (the store holds $imports tasks)"
"$load" "$url" AKIDBENCH benchsecret "$clients" "$seconds"
