#!/usr/bin/env bash
# AMI upload benchmark: the same 64 MiB half-sparse raw disk (alternating 1 MiB of random data
# and 1 MiB holes) uploaded into an EBS snapshot two ways, side by side, against one moto_server
# on loopback:
#   stamp:    `stamp push DISK aws://bench-N --endpoint-url URL --json` (EBS direct upload of the
#             non-zero blocks, wait for `completed`, RegisterImage)
#   coldsnap: `coldsnap --endpoint URL upload --omit-zero-blocks DISK` (crates.io; EBS direct
#             upload, no AMI), and once more without --omit-zero-blocks (its default).
# Both go through a counting proxy (python) that counts the PutSnapshotBlock requests and their
# body bytes of each run, and answers StartSnapshot with AWS's 512 KiB block size (moto says
# 512 bytes, which no real client sees). Prints the wall times (best of N), the ratio
# stamp/coldsnap and the blocks and bytes each sent. Not part of .ci/run.
#
# usage: benches/ami.sh [-n N]
# env:   STAMP_BIN=path uses that stamp binary instead of building target/release/stamp
#        COLDSNAP=path uses that coldsnap; otherwise it is installed (`cargo install coldsnap
#        --locked`, several minutes on 2 cores) into ${STAMP_BENCH_TOOLS:-~/.cache/stamp-dev/bench-tools}
set -euo pipefail
cd "$(dirname "$0")/.."
runs=1
while (($#)); do
  case $1 in
    -n) runs=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "-n wants a positive count" >&2; exit 2; }
command -v moto_server >/dev/null || { echo "moto_server is needed (scripts/install-test-deps.sh)" >&2; exit 1; }

tools=${STAMP_BENCH_TOOLS:-$HOME/.cache/stamp-dev/bench-tools}
coldsnap=${COLDSNAP:-}
if [[ -z $coldsnap ]]; then
  coldsnap=$tools/bin/coldsnap
  if [[ ! -x $coldsnap ]]; then
    echo "installing coldsnap into $tools (cargo install coldsnap --locked; takes a while)" >&2
    nice cargo install -q coldsnap --locked --root "$tools"
  fi
fi
if [[ -n ${STAMP_BIN:-} ]]; then
  stamp=$STAMP_BIN
else
  cargo build --release --locked -q -p stamp
  stamp=$PWD/target/release/stamp
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/stamp-bench-ami.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 300); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2; return 1
}

moto_port=$(free_port)
moto_server -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
pids+=($!)
wait_port "$moto_port"

# The counting proxy: forwards every request to moto, counts PutSnapshotBlock requests and body
# bytes by client (stamp's User-Agent is stamp/…, coldsnap's aws-sdk-rust/…), GET /__counts
# returns them as JSON.
cat >"$work/proxy.py" <<'EOF'
import http.client, http.server, json, re, sys, threading

upstream = ("127.0.0.1", int(sys.argv[1]))
counts, lock, local = {}, threading.Lock(), threading.local()
PUT_BLOCK = re.compile(r"^/snapshots/[^/]+/blocks/\d+")
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "expect"}

def upstream_request(method, path, body, headers):
    for attempt in (0, 1):
        conn = getattr(local, "conn", None) or http.client.HTTPConnection(*upstream, timeout=600)
        local.conn = conn
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp, resp.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            local.conn = None
            if attempt:
                raise

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status, headers, data):
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in HOP and k.lower() not in ("server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        if self.path == "/__counts":
            with lock:
                data = json.dumps(counts).encode()
            return self.answer(200, [("Content-Type", "application/json")], data)
        body = self.read_body()
        agent = self.headers.get("User-Agent", "")
        client = "stamp" if agent.startswith("stamp/") else "coldsnap"
        if self.command == "PUT" and PUT_BLOCK.match(self.path):
            with lock:
                c = counts.setdefault(client, {"blocks": 0, "bytes": 0})
                c["blocks"] += 1
                c["bytes"] += len(body)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        headers["Content-Length"] = str(len(body))
        resp, data = upstream_request(self.command, self.path, body, headers)
        if self.command == "POST" and self.path.rstrip("/") == "/snapshots" and resp.status == 200:
            # moto says 512-byte blocks; AWS says 512 KiB, which is what clients meet.
            answer = json.loads(data)
            answer["BlockSize"] = 512 * 1024
            data = json.dumps(answer).encode()
        self.answer(resp.status, resp.getheaders(), data)

    do_GET = do_PUT = do_POST = do_DELETE = handle_any

# A deep accept queue: 64 clients connecting at once must not wait for SYN retransmits.
http.server.ThreadingHTTPServer.request_queue_size = 1024
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler)
server.daemon_threads = True
server.serve_forever()
EOF
proxy_port=$(free_port)
python3 "$work/proxy.py" "$moto_port" "$proxy_port" 2>"$work/proxy.log" &
pids+=($!)
wait_port "$proxy_port"
url=http://127.0.0.1:$proxy_port

# The disk: 64 MiB, odd MiBs are holes, even MiBs random data.
disk=$work/disk.raw
truncate -s 64M "$disk"
for ((i = 0; i < 64; i += 2)); do
  dd if=/dev/urandom of="$disk" bs=1M seek=$i count=1 conv=notrunc status=none
done
cat "$disk" >/dev/null
alloc=$(($(stat -c %b "$disk") * 512))

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
unset AWS_PROFILE AWS_ENDPOINT_URL
counts() { python3 -c "import json, urllib.request; c = json.load(urllib.request.urlopen('$url/__counts')).get('$1', {}); print(c.get('blocks', 0), c.get('bytes', 0))"; }
now() { date +%s.%N; }
elapsed() { awk -v s="$1" -v e="$2" 'BEGIN { printf "%.3f", e - s }'; }
min() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b < a) print b; else print a }'; }

# Runs "$@" N times as client $1 (stamp|coldsnap); sets t (best seconds), blocks and bytes (of
# one run), or t=failed.
bench() {
  local who=$1; shift
  t= blocks= bytes=
  for ((i = 0; i < runs; i++)); do
    local before after s e
    read -r -a before < <(counts "$who")
    s=$(now)
    if ! "$@" >"$work/$who.out" 2>"$work/$who.err"; then
      t=failed
      echo "$who failed:" >&2
      tail -5 "$work/$who.err" >&2
      return 0
    fi
    e=$(now)
    read -r -a after < <(counts "$who")
    t=$(min "$t" "$(elapsed "$s" "$e")")
    blocks=$((after[0] - before[0])) bytes=$((after[1] - before[1]))
  done
}

n=0
stamp_push() { n=$((n + 1)); "$stamp" push "$disk" "aws://bench-$$-$n" --endpoint-url "$url" --json; }
bench stamp stamp_push
t_stamp=$t b_stamp=$blocks y_stamp=$bytes
bench coldsnap "$coldsnap" --endpoint "$url" --region us-east-1 upload --no-progress --omit-zero-blocks "$disk"
t_cold=$t b_cold=$blocks y_cold=$bytes
bench coldsnap "$coldsnap" --endpoint "$url" --region us-east-1 upload --no-progress "$disk"
t_full=$t b_full=$blocks y_full=$bytes

echo "disk: 64 MiB raw, $((alloc >> 20)) MiB allocated (1 MiB random data / 1 MiB hole); 512 KiB blocks; best of $runs; $(nproc) cores"
cold_version=$(cargo install --list --root "$tools" 2>/dev/null | awk '/^coldsnap / { print $2 }' | tr -d ':')
echo "moto_server $(python3 -c 'import moto; print(moto.__version__)') behind a counting proxy on loopback; coldsnap ${cold_version:-($coldsnap)}"
printf '%-58s %9s %8s %10s\n' case seconds blocks MiB
row() {
  if [[ $2 == failed ]]; then
    printf '%-58s %9s\n' "$1" failed
  else
    printf '%-58s %9s %8s %10s\n' "$1" "$2" "$3" "$(awk -v b="$4" 'BEGIN { printf "%.1f", b / 1048576 }')"
  fi
}
row "stamp push DISK aws://NAME (upload, wait, RegisterImage)" "$t_stamp" "$b_stamp" "$y_stamp"
row "coldsnap upload --omit-zero-blocks DISK" "$t_cold" "$b_cold" "$y_cold"
row "coldsnap upload DISK (default: zero blocks too)" "$t_full" "$b_full" "$y_full"
if [[ $t_stamp != failed && $t_cold != failed ]]; then
  awk -v a="$t_stamp" -v b="$t_cold" 'BEGIN { printf "ratio stamp/coldsnap (--omit-zero-blocks): %.2f\n", a / b }'
fi
if [[ $t_stamp != failed && $t_full != failed ]]; then
  awk -v a="$t_stamp" -v b="$t_full" 'BEGIN { printf "ratio stamp/coldsnap (default): %.2f\n", a / b }'
fi
