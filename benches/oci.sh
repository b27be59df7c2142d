#!/usr/bin/env bash
# Registry benchmark: stamp pull/push of the Debian rootfs image (one gzip layer, 130 MB) through
# a local docker-registry, against skopeo (the fastest existing copier) doing the same transfer
# (docker:// to an OCI layout, and back), one run each, side by side. Prints the times and ratios.
#
# usage: benches/oci.sh        (needs docker-registry and skopeo: scripts/install-test-deps.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p stamp
stamp=$PWD/target/release/stamp
tar=$(scripts/debian-image.sh --tar)
work=$(mktemp -d "${TMPDIR:-/tmp}/stamp-bench.XXXXXX")
port=$((20000 + RANDOM % 20000))
cat >"$work/reg.yml" <<YML
version: 0.1
storage: { filesystem: { rootdirectory: $work/reg }, delete: { enabled: true } }
http: { addr: 127.0.0.1:$port }
log: { level: error }
YML
docker-registry serve "$work/reg.yml" >"$work/reg.log" 2>&1 &
reg_pid=$!
trap 'kill $reg_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
reg=127.0.0.1:$port

now() { date +%s.%N; }
elapsed() { awk -v s="$1" -v e="$2" 'BEGIN { printf "%.2f", e - s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# The image: the rootfs as one gzip layer, in a stamp store and as an OCI layout for skopeo.
gzip -1 -c "$tar" >"$work/rootfs.tar.gz"
export STAMP_STORE=$work/store
"$stamp" pull -q rootfs:"$work/rootfs.tar.gz" >/dev/null
"$stamp" export localhost/rootfs:latest -o "$work/image.oci.tar" >/dev/null

s=$(now); "$stamp" push -q --tls-verify=false localhost/rootfs:latest "$reg/stamp:1" >/dev/null; e=$(now)
t_stamp_push=$(elapsed "$s" "$e")
s=$(now); skopeo copy -q --dest-tls-verify=false oci-archive:"$work/image.oci.tar" "docker://$reg/skopeo:1"; e=$(now)
t_skopeo_push=$(elapsed "$s" "$e")

s=$(now); STAMP_STORE=$work/store2 "$stamp" pull -q --tls-verify=false "$reg/stamp:1" >/dev/null; e=$(now)
t_stamp_pull=$(elapsed "$s" "$e")
s=$(now); skopeo copy -q --src-tls-verify=false "docker://$reg/skopeo:1" "oci:$work/skopeo-layout:1"; e=$(now)
t_skopeo_pull=$(elapsed "$s" "$e")

echo "push 130 MB layer   stamp ${t_stamp_push} s   skopeo ${t_skopeo_push} s   ratio stamp/skopeo $(ratio "$t_stamp_push" "$t_skopeo_push")"
echo "pull 130 MB layer   stamp ${t_stamp_pull} s   skopeo ${t_skopeo_pull} s   ratio stamp/skopeo $(ratio "$t_stamp_pull" "$t_skopeo_pull")"
