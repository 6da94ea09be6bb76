#!/usr/bin/env bash
# Side-by-side load benchmark: the same upstream reached directly, through the bare hyper proxy
# (examples/floor_proxy.rs, no checks: the floor), through obsgate (full checks), through nginx
# proxy_pass (keepalive), through haproxy (http-reuse) and through Caddy (reverse_proxy,
# GOMAXPROCS=1), and through nginx + auth_request asking a second obsgate's forward-auth listener
# (nginx_fa: its CPU is nginx's and that obsgate's together). Two workloads, measured in the same
# interleaved rounds:
#   query: GET /prometheus/api/v1/query?query=up, upstream nginx `return 200`;
#   push:  POST /api/v1/push with a 256 KiB body, upstream examples/push_sink.rs (reads the whole
#          body, then 200, like a Mimir distributor); nobody buffers the body (nginx
#          proxy_request_buffering off), and every response must be 200.
# wrk runs on core 0; the proxy under test and the upstream share core 1.
# Case "replicas": obsgate in front of three nginx replicas of the query_frontend (health checks on
# /ready); wrk sends reads for DURATION s and one replica is killed a third of the way in; every read
# must succeed, and the report shows the requests each replica served before and after the kill.
# Output: target/bench-report/load.md and target/bench-report/load.svg.
#   bash benches/load/run.sh   (DURATION=10 RATE=4000 CONNECTIONS=32 REPEAT=3 ONLY=obsgate,nginx PERF=1)
#   WORKLOAD=query|push|both (default both) picks the workloads; RATE is the query's fixed rate and
#   PUSH_RATE (default 1000) the push's, in requests/s. ONLY names targets: direct, floor, obsgate,
#   nginx, haproxy, caddy, nginx_fa, replicas (and, only when named, obsgate_before with
#   OBSGATE_BEFORE=<binary>, obsgate_traced with TRACED_RATIO=<sample_ratio, default 1>).
#   PERF=1 writes obsgate.perf.data (query), obsgate-push.perf.data.
#   ONLY=replicas bash benches/load/run.sh   (REPLICAS_RATE=4000 for a fixed rate instead of saturation)
set -euo pipefail
cd "$(dirname "$0")/../.."
need=()
for b in nginx haproxy wrk caddy; do command -v "$b" >/dev/null 2>&1 || need+=("$b"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked --bin obsgate --example floor_proxy --example push_sink
exec python3 benches/load/run.py
