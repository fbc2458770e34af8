#!/usr/bin/env bash
# The floor under same-run.sh's load, in one run: nginx, relay-floor in its variants, the relay
# (embedded store) and nginx again, each behind the same wrk load (64 connections, unique
# FASHN-style JSON) in front of the same Go sink. Prints per system: acks/s (2xx per second of
# load), p50/p99 ms, other answers, the drain after the load, the ratio of acks to nginx's (the mean
# of its two runs), CPU per webhook of the process over load and drain, and its ratio to nginx's per
# request. Usage, from the project root: cmd/relay-floor/run.sh [duration=10s]  (needs wrk, nginx)
set -u
B=$(cd "$(dirname "$0")/../../../shared/bench" && pwd) || exit 1
DUR=${1:-10s}; SINK=127.0.0.1:18090; AT=127.0.0.1:18092; ADMIN=127.0.0.1:18093
W=$(mktemp -d -t floor.XXXX); sinkpid=
trap 'kill $sinkpid 2>/dev/null; wait 2>/dev/null; rm -rf $W' EXIT
(cd "$B/sink" && go build -o $W/sink main.go) && go build -o $W/floor ./cmd/relay-floor && go build -o $W/relay ./cmd/relay || exit 1
$W/sink -addr $SINK >/dev/null 2>&1 & sinkpid=$!
tck=$(getconf CLK_TCK)
cpu() { local t=0 p c; for p in "$@"; do c=$(awk '{print $14+$15}' /proc/$p/stat) || { echo "process $p is gone" >&2; exit 1; }; t=$((t+c)); done; echo $t; }
unique() { curl -s http://$SINK/_stats | python3 -c 'import sys,json;print(json.load(sys.stdin)["unique_ids"])'; }
waitfor() { for i in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "$1 did not answer" >&2; exit 1; }
load() { # url tag -> "acks/s p50 p99 2xx other"
  wrk -t2 -c64 -d$DUR --latency -s $B/post.lua "$1" -- "$2" >$W/wrk.txt 2>&1
  python3 - $W/wrk.txt <<'PY'
import re, sys
t = open(sys.argv[1]).read()
secs = int(re.search(r'duration_us=(\d+)', t).group(1)) / 1e6
mix = dict(kv.split('=') for kv in re.search(r'STATUS_MIX ?(.*)', t).group(1).split())
ok = sum(int(v) for k, v in mix.items() if k.startswith('2'))
errs = sum(int(x) for x in re.search(r'errors_connect=(\d+) read=(\d+) write=(\d+) status=\d+ timeout=(\d+)', t).groups())
l = re.search(r'LAT_US .*p50=(\d+).*p99=(\d+)', t)
print(f"{ok/secs:.0f} {int(l.group(1))/1000:.2f} {int(l.group(2))/1000:.2f} {ok} {sum(int(v) for v in mix.values()) - ok + errs}")
PY
}
cat >$W/nginx.conf <<NG
worker_processes auto; pid $W/nginx.pid; error_log $W/error.log;
events { worker_connections 4096; }
http { access_log $W/access.log; client_body_temp_path $W;
  upstream sink { server $SINK; keepalive 128; }
  server { listen $AT; location / { proxy_pass http://sink; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NG
# nginxrun and one run in subshells ($(...)), so cur is their own: each stops what it started when it ends, however it ends.
nginxrun() { # -> "acks/s p50 p99 cpu-us-per-request other"
  cur=; trap 'kill $cur 2>/dev/null' EXIT
  sleep 2; nginx -c $W/nginx.conf -g 'daemon off;' & cur=$!; waitfor http://$AT/; curl -s http://$SINK/_reset >/dev/null
  local c0 c1 rate p50 p99 ok other; c0=$(cpu $cur $(pgrep -P $cur)) || exit 1
  read -r rate p50 p99 ok other <<<"$(load http://$AT/hooks/fashn/x nginx)"
  c1=$(cpu $cur $(pgrep -P $cur)) || exit 1; kill $cur; wait $cur 2>/dev/null; cur=
  echo "$rate $p50 $p99 $(python3 -c "print(($c1-$c0)/$tck/$ok*1e6)") $other"
}
one() { # name url ready-url cmd... -> one line, ratios filled in at the end
  local name=$1 url=$2 ready=$3; cur=; shift 3; trap 'kill $cur 2>/dev/null' EXIT; sleep 2
  "$@" >$W/$name.log 2>&1 & cur=$!; waitfor "$ready"; curl -s http://$SINK/_reset >/dev/null
  local c0 c1 rate p50 p99 ok other n t1 t2; c0=$(cpu $cur) || exit 1
  read -r rate p50 p99 ok other <<<"$(load "$url" "$name$$")"; t1=$(date +%s.%N)
  for i in $(seq 600); do n=$(unique); [ "$n" -ge "$ok" ] && break; sleep 0.1; done; t2=$(date +%s.%N)
  c1=$(cpu $cur) || exit 1; kill $cur; wait $cur 2>/dev/null; cur=
  echo "$name $rate $p50 $p99 $other $(python3 -c "print(f'{$t2-$t1:.1f}')") $(python3 -c "print(($c1-$c0)/$tck/max($n,1)*1e6)") $((ok-n))"
}
echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg); wrk -t2 -c64 -d$DUR; $(nproc) cores"
# A phase that fails (a process gone, a server not answering) ends the run.
first=$(nginxrun) || exit 1
rows=()
for v in "nethttp" "nethttp -log" "fasthttp" "fasthttp -log" "fasthttp -nosync"; do
  r=$(one "floor-${v// /}" http://$AT/hooks/x http://$AT/ $W/floor -listen $AT -target http://$SINK/hook -dir $W -server $v) || exit 1
  rows+=("$r")
done
export BENCH_TOKEN=bench-token-0123456789abcdef
cat >$W/relay.yaml <<CFG
listen: $AT
admin: {listen: $ADMIN}
data_dir: $W/relaydata
log: {level: info, format: json}
store: {type: embedded}
targets:
  - {name: sink, url: "http://$SINK/hook", concurrency: 64}
routes:
  - {name: fashn, path: /hooks/fashn, provider: fashn, targets: [sink], verify: {type: url_token, secrets_env: [BENCH_TOKEN]}}
CFG
r=$(one relay-embedded http://$AT/hooks/fashn/$BENCH_TOKEN http://$ADMIN/readyz $W/relay serve -config $W/relay.yaml) || exit 1
rows+=("$r")
last=$(nginxrun) || exit 1
python3 - "$first" "$last" "${rows[@]}" <<'PY'
import sys
a, b = (s.split() for s in sys.argv[1:3])
rate, cpu = (float(a[0]) + float(b[0])) / 2, (float(a[3]) + float(b[3])) / 2
print(f"{'system':<22}{'acks/s':>7}{'p50ms':>7}{'p99ms':>7}{'other':>6}{'drain':>6}{'ratio':>7}{'cpu/webhook':>12}{'ratio':>7}")
for tag, n in (("nginx (first)", a), ("nginx (last)", b)):
    print(f"{tag:<22}{float(n[0]):>7.0f}{n[1]:>7}{n[2]:>7}{n[4]:>6}{'':>6}{float(n[0])/rate:>6.2f}x{float(n[3]):>10.0f}us{float(n[3])/cpu:>6.2f}x")
for r in sys.argv[3:]:
    name, rt, p50, p99, other, drain, c, missing = r.split()
    print(f"{name:<22}{float(rt):>7.0f}{p50:>7}{p99:>7}{other:>6}{drain+'s':>6}{float(rt)/rate:>6.2f}x{float(c):>10.0f}us{float(c)/cpu:>6.2f}x" + (f"  MISSING {missing}" if int(missing) > 0 else ""))
PY
