#!/usr/bin/env bash
# The floor under same-run.sh's load, in one run: nginx, relay-floor in its variants and the relay
# (embedded store), each behind the same wrk load (64 connections, unique FASHN-style JSON) in front
# of the same Go sink. Prints per system: acks/s, p50/p99 ms, the ratio of acks to nginx's, CPU per
# webhook of the process (load and drain) and its ratio to nginx's CPU per request.
# Usage, from the project root: cmd/relay-floor/run.sh [duration=10s]   (needs wrk, nginx; see docs/BENCHMARKS.md)
set -u
B=$(cd "$(dirname "$0")/../../../shared/bench" && pwd) || exit 1
DUR=${1:-10s}; SINK=127.0.0.1:18090; AT=127.0.0.1:18092
W=$(mktemp -d -t floor.XXXX); pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done; wait 2>/dev/null; rm -rf $W' EXIT
(cd "$B/sink" && go build -o $W/sink main.go) && go build -o $W/floor ./cmd/relay-floor && go build -o $W/relay ./cmd/relay || exit 1
$W/sink -addr $SINK >/dev/null 2>&1 & pids+=($!)
sleep 0.5
tck=$(getconf CLK_TCK)
cpu() { local t=0 p; for p in "$@"; do t=$((t+$(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
unique() { curl -s http://$SINK/_stats | python3 -c 'import sys,json;print(json.load(sys.stdin)["unique_ids"])'; }
load() { # url tag -> "acks p50 p99"
  wrk -t2 -c64 -d$DUR --latency -s $B/post.lua "$1" -- "$2" >$W/wrk.txt 2>&1
  python3 - $W/wrk.txt <<'PY'
import re, sys
t = open(sys.argv[1]).read()
secs = int(re.search(r'duration_us=(\d+)', t).group(1)) / 1e6
mix = dict(kv.split('=') for kv in re.search(r'STATUS_MIX ?(.*)', t).group(1).split())
ok = sum(int(v) for k, v in mix.items() if k.startswith('2'))
l = re.search(r'LAT_US .*p50=(\d+).*p99=(\d+)', t)
print(f"{ok/secs:.0f} {int(l.group(1))/1000:.2f} {int(l.group(2))/1000:.2f} {ok}")
PY
}
echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg); wrk -t2 -c64 -d$DUR; $(nproc) cores"
echo "system              acks/s  p50ms  p99ms  ratio  cpu/webhook  ratio"
cat >$W/nginx.conf <<NG
worker_processes auto; pid $W/nginx.pid; error_log $W/error.log;
events { worker_connections 4096; }
http { access_log $W/access.log; client_body_temp_path $W;
  upstream sink { server $SINK; keepalive 128; }
  server { listen $AT; location / { proxy_pass http://sink; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NG
nginx -c $W/nginx.conf -g 'daemon off;' & np=$!; sleep 0.5; curl -s http://$SINK/_reset >/dev/null
c0=$(cpu $np $(pgrep -P $np)); read -r nrate np50 np99 nok <<<"$(load http://$AT/hooks/fashn/x nginx)"; c1=$(cpu $np $(pgrep -P $np))
ncpu=$(python3 -c "print(($c1-$c0)/$tck/$nok*1e6)")
printf "%-18s %7s %6s %6s  1.00x  %8.0fus  1.00x\n" nginx $nrate $np50 $np99 $ncpu
kill $np; wait $np 2>/dev/null
one() { # name url cmd...
  local name=$1 url=$2; shift 2; sleep 2
  "$@" >$W/$name.log 2>&1 & local p=$!
  for i in $(seq 50); do curl -s -o /dev/null "http://$AT/" && break; sleep 0.1; done
  curl -s http://$SINK/_reset >/dev/null
  local c0 rate p50 p99 ok n c1; c0=$(cpu $p)
  read -r rate p50 p99 ok <<<"$(load "$url" "$name$$")"
  for i in $(seq 600); do n=$(unique); [ "$n" -ge "$ok" ] && break; sleep 0.1; done
  c1=$(cpu $p)
  python3 -c "
r,c=$rate/$nrate,($c1-$c0)/$tck/max($n,1)*1e6
print(f'%-18s %7d %6s %6s  {r:.2f}x  %8.0fus  {c/$ncpu:.2f}x%s' % ('$name', $rate, '$p50', '$p99', c, '' if $n >= $ok else '  MISSING $((ok-n))'))"
  kill $p; wait $p 2>/dev/null
}
for v in "nethttp" "nethttp -log" "fasthttp" "fasthttp -log" "fasthttp -nosync"; do
  one "floor-${v// /}" http://$AT/hooks/x $W/floor -listen $AT -target http://$SINK/hook -dir $W -server $v
done
export BENCH_TOKEN=bench-token-0123456789abcdef
cat >$W/relay.yaml <<CFG
listen: $AT
admin: {listen: 127.0.0.1:18093}
data_dir: $W/relaydata
log: {level: info, format: json}
store: {type: embedded}
targets:
  - {name: sink, url: "http://$SINK/hook", concurrency: 64}
routes:
  - {name: fashn, path: /hooks/fashn, provider: fashn, targets: [sink], verify: {type: url_token, secrets_env: [BENCH_TOKEN]}}
CFG
one relay-embedded http://$AT/hooks/fashn/$BENCH_TOKEN $W/relay serve -config $W/relay.yaml
