#!/usr/bin/env python3
"""Side-by-side load benchmark (see run.sh). Only loopback addresses are used; every run is
bounded by DURATION seconds and every process started here is stopped at the end."""

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

DURATION = int(os.environ.get("DURATION", "10"))
RATE = int(os.environ.get("RATE", "4000"))  # fixed-rate run, requests/s in total
CONNECTIONS = int(os.environ.get("CONNECTIONS", "32"))
# ONLY=obsgate,nginx runs a subset (for tuning); PERF=1 records obsgate's saturation run with perf
# "replicas" is the failover case: obsgate in front of three query_frontend replicas, one killed
# "floor" is the bare hyper proxy (examples/floor_proxy.rs: same hyper, same runtime, no checks);
# "caddy" is Debian's Caddy (reverse_proxy, GOMAXPROCS=1): what a Go gateway costs
# "nginx_fa" is nginx + auth_request + obsgate forward-auth: nginx (1 worker) asks a second obsgate
# (same config and policies, with forward_auth.listen) about every request, then proxies it itself;
# its CPU is nginx's and that obsgate's together
# what tracing costs (run only when named in ONLY): "obsgate_before" is obsgate built before
# tracing was added (the binary named by OBSGATE_BEFORE), "obsgate_traced" is obsgate with
# `tracing:` (sample_ratio TRACED_RATIO, default 1, OTLP/HTTP) exporting to a second push_sink,
# whose CPU is not counted;
# both have obsgate's config and token
TRACING_COST = ("obsgate_before", "obsgate_traced")
SIDE_BY_SIDE = ("direct", "floor", "obsgate") + TRACING_COST + ("nginx", "haproxy", "caddy", "nginx_fa")
DEFAULT_ONLY = [n for n in SIDE_BY_SIDE if n not in TRACING_COST] + ["replicas"]
ONLY = set(filter(None, os.environ.get("ONLY", ",".join(DEFAULT_ONLY)).split(",")))
if ONLY - set(SIDE_BY_SIDE + ("replicas",)):
    raise SystemExit(f"unknown ONLY names: {','.join(sorted(ONLY - set(SIDE_BY_SIDE + ('replicas',))))}")
# the replicas case: wrk at saturation unless REPLICAS_RATE is set; replica 1 is killed (SIGKILL)
# at a third of DURATION
REPLICAS_RATE = int(os.environ.get("REPLICAS_RATE", "0")) or None
PERF = os.environ.get("PERF") == "1"
TRACED_RATIO = os.environ.get("TRACED_RATIO", "1")  # obsgate_traced's tracing.sample_ratio
OBSGATE_BEFORE = os.environ.get("OBSGATE_BEFORE")
if "obsgate_before" in ONLY and not OBSGATE_BEFORE:
    print("obsgate_before skipped: OBSGATE_BEFORE (the path of an obsgate binary built before tracing) is not set",
          file=sys.stderr, flush=True)
    ONLY.discard("obsgate_before")
REPEAT = int(os.environ.get("REPEAT", "3"))  # interleaved rounds; the report shows medians
# WORKLOAD=query|push|both: the query workload (GET PATH, nginx `return 200` upstream) and/or the
# push workload (POST PUSH_PATH, a PUSH_BYTES body, the push_sink upstream, which reads the whole
# body before it answers, as a Mimir distributor does); both are measured in the same rounds
WORKLOADS_ALL = ("query", "push")
WORKLOAD = os.environ.get("WORKLOAD", "both")
if WORKLOAD not in WORKLOADS_ALL + ("both",):
    raise SystemExit(f"unknown WORKLOAD {WORKLOAD!r} (query, push or both)")
WORKLOADS = WORKLOADS_ALL if WORKLOAD == "both" else (WORKLOAD,)
PUSH_RATE = int(os.environ.get("PUSH_RATE", "1000"))  # the push workload's fixed rate, requests/s
PUSH_BYTES = 256 * 1024
RATES = {"query": RATE, "push": PUSH_RATE}
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "target", "bench-report")
OBSGATE = os.path.join(ROOT, "target", "release", "obsgate")
FLOOR = os.path.join(ROOT, "target", "release", "examples", "floor_proxy")
PUSH_SINK = os.path.join(ROOT, "target", "release", "examples", "push_sink")
PATH = "/prometheus/api/v1/query?query=up"
PUSH_PATH = "/api/v1/push"
PATHS = {"query": PATH, "push": PUSH_PATH}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def cpu_ticks(pids):
    """(user, system) clock ticks of these processes."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except OSError:
            pass
    return user, system


def bytes_received(port):
    """{peer: bytes received so far} of the established connections to this local port (ss -i)."""
    out = subprocess.run(["ss", "-Htin", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    got, peer = {}, None
    for line in out.splitlines():
        if line[:1].isspace():  # the connection's tcp_info, without bytes_received if none came
            m = re.search(r"bytes_received:(\d+)", line)
            got[peer] = int(m.group(1)) if m else 0
        else:
            peer = line.split()[-1]
    return got


def family(pid):
    """The process and its children (nginx workers)."""
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid] + [int(k) for k in kids]


def stop_proc(p):
    """SIGTERM, so that an nginx master stops and reaps its worker (a SIGKILLed master leaves the
    worker running and listening); SIGKILL to the whole family if it is not gone within 10 s."""
    if p.poll() is not None:
        return
    kids = family(p.pid)[1:]
    p.terminate()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        p.kill()
        p.wait()


def start(cmd, log, core="1", env=None):
    return subprocess.Popen(["taskset", "-c", core] + cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def wrk_cmd(url, auth, rate=None, count_status=False, name="wrk", push=False):
    script = os.path.join(WORK, f"{name}.lua")
    with open(script, "w") as f:
        f.write('wrk.headers["Authorization"] = "%s"\n' % auth if auth else "")
        if push:
            # a remote-write push: PUSH_BYTES of body (not real snappy: no contestant decodes it)
            f.write('wrk.method = "POST"\n'
                    f'wrk.body = string.rep("0123456789abcdef", {PUSH_BYTES // 16})\n'
                    'wrk.headers["Content-Type"] = "application/x-protobuf"\n'
                    'wrk.headers["Content-Encoding"] = "snappy"\n'
                    'wrk.headers["X-Prometheus-Remote-Write-Version"] = "0.1.0"\n')
        if rate:
            # each connection waits so that all together send about `rate` requests per second (a
            # little less: the response time adds to the wait)
            d = max(1, int(CONNECTIONS * 1000 / rate))
            if push:
                # pushes: a wait drawn uniformly from 0..2d (mean d), so that the connections do not
                # send their 256 KiB bodies in step, in bursts of CONNECTIONS at once
                f.write("function delay() return math.random(0, %d) end\n" % (2 * d))
            else:
                f.write("function delay() return %d end\n" % d)
        if count_status:
            # every status other than 200 is counted (wrk's own "Non-2xx or 3xx" line counts > 399)
            f.write(WRK_STATUS_LUA)
    return ["taskset", "-c", "0", "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}s", "--latency", "-s", script, url]


WRK_STATUS_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0; codes = {} end
function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    codes[tostring(status)] = (codes[tostring(status)] or 0) + 1
  end
end
function done(summary, latency, requests)
  local n = 0
  local all = {}
  for _, t in ipairs(threads) do
    n = n + t:get("bad")
    for k, v in pairs(t:get("codes")) do all[k] = (all[k] or 0) + v end
  end
  io.write(string.format("lua non-200: %d\\n", n))
  for k, v in pairs(all) do io.write(string.format("lua status %s: %d\\n", k, v)) end
end
"""


def parse_wrk(out):
    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    m = re.search(r"(\d+) requests in", out)
    if not m:
        raise SystemExit(f"wrk printed no result:\n{out}")
    reqs = int(m.group(1))
    non2xx = sum(int(m.group(1)) for m in re.finditer(r"Non-2xx or 3xx responses: (\d+)", out))
    m = re.search(r"lua non-200: (\d+)", out)
    non200 = int(m.group(1)) if m else non2xx
    statuses = {k: int(v) for k, v in re.findall(r"lua status (\d+): (\d+)", out)}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sock = dict(zip(("connect", "read", "write", "timeout"), (int(x) for x in m.groups()))) if m else {}
    errors = max(non200, non2xx) + sum(sock.values())
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"requests": reqs, "rps": rps, "p50": lat("50"), "p99": lat("99"), "errors": errors,
            "non200": max(non200, non2xx), "statuses": statuses, "socket": sock, "raw": out}


def wrk(url, auth, rate=None, workload="query"):
    # the push runs check every status (a push answers 200; 413 or 502 must show); the query runs
    # keep wrk's own count of statuses above 399, which costs wrk no Lua call per response
    push = workload == "push"
    out = subprocess.run(wrk_cmd(url, auth, rate, count_status=push, name=f"wrk-{workload}", push=push),
                         capture_output=True, text=True, timeout=DURATION + 60).stdout
    r = parse_wrk(out)
    del r["non200"]
    return r


def measure(name, workload, url, auth, pids, parts=None):
    """parts: None, or a function giving {part: pids} (the processes of a contestant made of more
    than one program); each part's CPU per request is kept as `<part>_us_per_req`."""
    res = {}
    for mode, rate in (("saturation", None), ("fixed", RATES[workload])):
        part_pids = parts() if parts else {}
        part_before = {k: cpu_ticks(v) for k, v in part_pids.items()}
        before = cpu_ticks(pids())
        # obsgate_traced: what its trace sink receives (the OTLP exports) per request
        sink_before = bytes_received(TRACE_SINK["port"]) if name == "obsgate_traced" else None
        perf = None
        if PERF and name == "obsgate" and rate is None:
            data = "obsgate.perf.data" if workload == "query" else f"obsgate-{workload}.perf.data"
            perf = subprocess.Popen(["perf", "record", "-g", "-o", os.path.join(OUT, data),
                                     "-p", ",".join(str(p) for p in pids()), "--", "sleep", str(DURATION)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = wrk(url, auth, rate, workload)
        if perf:
            perf.wait()
        after = cpu_ticks(pids())
        per_req = lambda ticks: ticks / CLK_TCK * 1e6 / max(1, r["requests"]) if pids() else float("nan")
        r["user_us_per_req"] = per_req(after[0] - before[0])
        r["sys_us_per_req"] = per_req(after[1] - before[1])
        r["cpu_us_per_req"] = r["user_us_per_req"] + r["sys_us_per_req"]
        for k, v in part_pids.items():
            a, b = part_before[k], cpu_ticks(v)
            r[f"{k}_us_per_req"] = per_req(b[0] + b[1] - a[0] - a[1])
        if sink_before is not None:
            # a connection closed during the run is not counted (the exporter keeps one open)
            got = sum(v - sink_before.get(k, 0) for k, v in bytes_received(TRACE_SINK["port"]).items())
            TRACE_SINK["total"] += got
            r["trace_bytes_per_req"] = got / max(1, r["requests"])
        res[mode] = r
        bad = "".join(f" [status {k} ×{v}]" for k, v in sorted(r["statuses"].items()))
        split = "".join(f" {k} {r[f'{k}_us_per_req']:.1f}" for k in part_pids)
        if sink_before is not None:
            bad += f"  trace sink {r['trace_bytes_per_req']:.0f} B/req"
        print(f"{workload:5} {name:14} {mode:10} {r['rps']:10.0f} req/s  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms  "
              f"cpu {r['cpu_us_per_req']:.1f} µs/req (user {r['user_us_per_req']:.1f} sys {r['sys_us_per_req']:.1f}"
              f"{';' + split if split else ''})  errors {r['errors']}{bad}", flush=True)
    return res


WORK = tempfile.mkdtemp(prefix="obsgate-load-")
RELOADS = [0]
# nginx_fa: its obsgate's forward-auth decisions before and after the rounds ({(result, reason): n})
# and the lines of nginx's error log (level warn and above)
NGINX_FA = {}
NGINX_BUFFERED = [None]  # pushes nginx wrote to a temporary file (its "buffered" warnings)
TRACE_SINK = {"port": None, "total": 0}  # obsgate_traced's trace sink, and the bytes it received in its runs
# per workload and contestant, each round's CPU per request: {w: {name: {mode: [µs, ...]}}}
ROUND_CPU = {}


def curl_status(url, headers, data=None):
    """(status, {lower-case header: value}) of one GET (a POST of data if given) with curl."""
    cmd = ["curl", "-sS", "-o", "/dev/null", "-D", "-", "--max-time", "5", url] + (["--data-binary", data] if data else [])
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    lines = out.replace("\r", "").split("\n")
    m = re.match(r"HTTP/\S+ (\d+)", lines[0]) if lines else None
    hdrs = {}
    for l in lines[1:]:
        if ":" in l:
            k, v = l.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    return (int(m.group(1)) if m else None), hdrs


def check_forward_auth(fa, nfa, auth):
    """Before the rounds, fail loudly unless the bench token is allowed by the forward-auth
    listener for every workload's request (200 with X-Scope-OrgID: bench, and a label policy for a
    read), is
    refused without a token, and nginx_fa answers 200 with the token and 401 without."""
    problems = []
    for w in WORKLOADS:
        method = "POST" if w == "push" else "GET"
        q = {"X-Original-Method": method, "X-Original-URI": PATHS[w]}
        st, h = curl_status(f"http://127.0.0.1:{fa}/auth", dict(q, Authorization=auth))
        print(f"nginx_fa check: forward-auth {method} {PATHS[w]} with the bench token: {st}, "
              f"X-Scope-OrgID {h.get('x-scope-orgid')!r}, X-Prom-Label-Policy-1 {h.get('x-prom-label-policy-1')!r}", flush=True)
        # a read carries the token's label policy; a push does not (label policies restrict reads)
        if st != 200 or h.get("x-scope-orgid") != "bench" or (w == "query" and not h.get("x-prom-label-policy-1")):
            problems.append(f"forward-auth {method} {PATHS[w]} with the bench token answered {st} {h}")
        st, _ = curl_status(f"http://127.0.0.1:{fa}/auth", q)
        print(f"nginx_fa check: forward-auth {method} {PATHS[w]} without a token: {st}", flush=True)
        if st != 401:
            problems.append(f"forward-auth {method} {PATHS[w]} without a token answered {st}, not 401")
    for w in WORKLOADS:
        method, data = ("POST", "0123456789abcdef" * 64) if w == "push" else ("GET", None)
        st, _ = curl_status(f"http://127.0.0.1:{nfa}{PATHS[w]}", {"Authorization": auth}, data)
        st_none, _ = curl_status(f"http://127.0.0.1:{nfa}{PATHS[w]}", {}, data)
        print(f"nginx_fa check: {method} {PATHS[w]} through nginx_fa with the bench token: {st}, without: {st_none}", flush=True)
        if st != 200 or st_none != 401:
            problems.append(f"nginx_fa answered {method} {PATHS[w]} with {st} (token) and {st_none} (no token): want 200 and 401")
    if problems:
        raise SystemExit("nginx_fa: the forward-auth decision is not what the bench needs:\n  " + "\n  ".join(problems))


def fa_decisions(port):
    """{(result, reason): count} of obsgate_auth_decisions_total{mode="forward_auth"}."""
    out = {}
    for l, v in metric(port, "obsgate_auth_decisions_total") or []:
        if l.get("mode") == "forward_auth":
            k = (l.get("result"), l.get("reason"))
            out[k] = out.get(k, 0) + int(v)
    return out


def median_of(runs):
    """Per mode, the median of every number over the rounds; failed requests are summed."""
    out = {}
    for mode in runs[0]:
        xs = [r[mode] for r in runs]
        m = {}
        for k in xs[0]:
            if k == "raw":
                continue
            if k == "errors" or k == "requests":
                m[k] = sum(x[k] for x in xs)
            elif isinstance(xs[0][k], dict):  # statuses, socket errors: summed per key
                m[k] = {}
                for x in xs:
                    for kk, v in x[k].items():
                        m[k][kk] = m[k].get(kk, 0) + v
            else:
                m[k] = statistics.median(x[k] for x in xs)
        out[mode] = m
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(os.path.join(WORK, "tmp"), exist_ok=True)
    # up: the query upstream (nginx `return 200`); sink: the push upstream (push_sink); fl and flp:
    # the floor for queries and the floor for pushes (one upstream each, so that the floor routes
    # nothing); every other contestant routes PUSH_PATH to the sink and the rest to up
    # nfa: nginx_fa's nginx; fa and gwfa: its obsgate's forward-auth and (unused) proxy listeners
    # gwb, gwt: obsgate_before's and obsgate_traced's listeners; tsink: obsgate_traced's trace sink
    up, nx, ha, gw, fl, cd, sink, flp, nfa, fa, gwfa, gwb, gwt, tsink = (free_port() for _ in range(14))
    temps = " ".join(f"{d}_temp_path {WORK}/tmp/{d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    with open(f"{WORK}/up.conf", "w") as f:
        f.write(f"worker_processes 1; daemon off; pid {WORK}/up.pid; error_log {WORK}/up-error.log;\n"
                f"events {{ worker_connections 4096; }}\n"
                f"http {{ access_log off; {temps}\n"
                f"  server {{ listen 127.0.0.1:{up}; location / {{ return 200 'ok\\n'; }} }} }}\n")
    # pushes: proxy_request_buffering off, so that nginx streams the body as it arrives (as obsgate,
    # haproxy and Caddy do by default) instead of writing it to a temporary file first
    keep = "proxy_http_version 1.1; proxy_set_header Connection \"\";"
    with open(f"{WORK}/nx.conf", "w") as f:
        # error_log at warn: a request body written to a temporary file would show there
        f.write(f"worker_processes 1; daemon off; pid {WORK}/nx.pid; error_log {WORK}/nx-error.log warn;\n"
                f"events {{ worker_connections 4096; }}\n"
                f"http {{ access_log off; {temps}\n"
                f"  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}\n"
                f"  upstream sink {{ server 127.0.0.1:{sink}; keepalive 64; }}\n"
                f"  server {{ listen 127.0.0.1:{nx}; client_max_body_size 64m;\n"
                f"    location = {PUSH_PATH} {{ proxy_pass http://sink; {keep} proxy_request_buffering off; }}\n"
                f"    location / {{ proxy_pass http://up; {keep} }} }} }}\n")
    # nginx_fa: nginx + auth_request + obsgate forward-auth, the directives of
    # docs/forward-auth/nginx.conf (the README's, run by tests/e2e_nginx.rs) without its error
    # location (a denial would be nginx's 500 here, and every request must be allowed), and with a
    # push location of its own for the sink:
    # one auth subrequest per request (no body), to obsgate's forward-auth listener over keepalive;
    # nginx copies the tenant and the label policies (numbered_label_policies: 4) upstream and drops
    # the client's Authorization; pushes are streamed (proxy_request_buffering off), as for nginx
    auth_loc = (f"location = /_obsgate_auth {{ internal; proxy_pass http://obsgate_auth/auth; {keep}\n"
                "      proxy_pass_request_body off; proxy_set_header Content-Length \"\";\n"
                "      proxy_set_header X-Original-Method $request_method; proxy_set_header X-Original-URI $request_uri;\n"
                "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }\n")
    fa_headers = ("auth_request /_obsgate_auth; auth_request_set $obsgate_tenant $upstream_http_x_scope_orgid;\n"
                  + "".join(f"      auth_request_set $obsgate_lp{i} $upstream_http_x_prom_label_policy_{i};\n" for i in range(1, 5))
                  + "      proxy_set_header X-Scope-OrgID $obsgate_tenant;\n"
                  + "".join(f"      proxy_set_header X-Prom-Label-Policy $obsgate_lp{i};\n" for i in range(1, 5))
                  + f"      proxy_headers_hash_bucket_size 256; proxy_set_header Authorization \"\"; {keep}")
    with open(f"{WORK}/nfa.conf", "w") as f:
        f.write(f"worker_processes 1; daemon off; pid {WORK}/nfa.pid; error_log {WORK}/nfa-error.log warn;\n"
                f"events {{ worker_connections 4096; }}\n"
                f"http {{ access_log off; {temps}\n"
                f"  upstream obsgate_auth {{ server 127.0.0.1:{fa}; keepalive 16; }}\n"
                f"  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}\n"
                f"  upstream sink {{ server 127.0.0.1:{sink}; keepalive 64; }}\n"
                f"  server {{ listen 127.0.0.1:{nfa}; client_max_body_size 64m;\n"
                f"    {auth_loc}"
                f"    location = {PUSH_PATH} {{ {fa_headers} proxy_pass http://sink; proxy_request_buffering off; }}\n"
                f"    location / {{ {fa_headers} proxy_pass http://up; }} }} }}\n")
    # haproxy streams request bodies unless `option http-buffer-request` is set (it is not)
    with open(f"{WORK}/ha.cfg", "w") as f:
        f.write(f"global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n"
                f"  timeout client 30s\n  timeout server 30s\n  http-reuse always\n"
                f"frontend f\n  bind 127.0.0.1:{ha}\n  use_backend sink if {{ path {PUSH_PATH} }}\n  default_backend b\n"
                f"backend b\n  server s1 127.0.0.1:{up}\n"
                f"backend sink\n  server s1 127.0.0.1:{sink}\n")
    # Caddy's reverse_proxy streams request bodies by default (request_buffers unset)
    with open(f"{WORK}/Caddyfile", "w") as f:
        f.write("{\n  admin off\n  auto_https off\n}\n"
                f"http://127.0.0.1:{cd} {{\n"
                f"  handle {PUSH_PATH} {{\n    reverse_proxy 127.0.0.1:{sink}\n  }}\n"
                f"  handle {{\n    reverse_proxy 127.0.0.1:{up}\n  }}\n}}\n")
    # obsgate with every check on: glc token, realm, scope, allowed subnet, LBAC header mode; the
    # mimir backend's distributor (pushes) is the sink, everything else goes to url
    payload = json.dumps({"o": "1", "n": "bench-load", "k": "loadbenchsecret0123456789abcdefghij", "m": {"r": "local"}})
    token = "glc_" + base64.b64encode(payload.encode()).decode()
    digest = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    with open(f"{WORK}/policies.yaml", "w") as f:
        f.write("tenants:\n  - name: bench\naccess_policies:\n  - name: bench-rw\n"
                "    scopes: [metrics:read, metrics:write]\n"
                "    realms:\n      - tenant: bench\n        label_policies:\n          - selector: '{env=\"prod\"}'\n"
                "    conditions:\n      allowed_subnets: [\"127.0.0.0/8\"]\n"
                f"tokens:\n  - name: load\n    access_policy: bench-rw\n    hash: \"{digest}\"\n")
    with open(f"{WORK}/gateway.yaml", "w") as f:
        f.write(f"server:\n  listen: \"127.0.0.1:{gw}\"\nstore:\n  policy_files: [policies.yaml]\n"
                f"backends:\n  metrics:\n    kind: mimir\n    url: \"http://127.0.0.1:{up}\"\n"
                f"    components:\n      distributor: {{ url: \"http://127.0.0.1:{sink}\" }}\n"
                f"lbac:\n  mode: header\nlog:\n  level: warn\n")
    # nginx_fa's obsgate: the same config and policies (reloaded every second as well), plus the
    # forward-auth listener; its proxy listener (gwfa) carries no traffic, only /metrics
    with open(f"{WORK}/gateway.yaml") as f:
        gateway_yaml = f.read()
    with open(f"{WORK}/gateway-fa.yaml", "w") as f:
        f.write(gateway_yaml.replace(f"127.0.0.1:{gw}\"", f"127.0.0.1:{gwfa}\"", 1)
                + f"forward_auth:\n  listen: \"127.0.0.1:{fa}\"\n  numbered_label_policies: 4\n")
    # obsgate_before's and obsgate_traced's: the same config on listeners of their own; the traced
    # one records a share TRACED_RATIO of the requests (default 1: all) and exports by OTLP/HTTP to POST /v1/traces on tsink
    for name, port, extra in (("before", gwb, ""),
                              ("traced", gwt, f"tracing:\n  endpoint: \"http://127.0.0.1:{tsink}\"\n  sample_ratio: {TRACED_RATIO}\n")):
        with open(f"{WORK}/gateway-{name}.yaml", "w") as f:
            f.write(gateway_yaml.replace(f"127.0.0.1:{gw}\"", f"127.0.0.1:{port}\"", 1) + extra)
    auth = "Basic " + base64.b64encode(f"bench:{token}".encode()).decode()

    results = {}
    if ONLY & set(SIDE_BY_SIDE):
        procs = []
        log = open(f"{WORK}/procs.log", "w")
        stop = threading.Event()
        try:
            # every target is started once and stays up; the rounds interleave them (and the two
            # workloads) so that a noisy neighbour on this machine hits all of them alike, and the
            # report takes the medians. targets[workload][name] = (url, authorization, pids)
            targets = {w: {} for w in WORKLOADS}

            def add(name, port_of, a, pids):
                for w in WORKLOADS:
                    targets[w][name] = (f"http://127.0.0.1:{port_of[w]}{PATHS[w]}", a, pids)

            upstream = start(["nginx", "-c", f"{WORK}/up.conf", "-p", WORK], log)
            procs.append(upstream)
            wait_port(up)
            if "push" in WORKLOADS:
                s = start([PUSH_SINK, f"127.0.0.1:{sink}"], log)
                procs.append(s)
                wait_port(sink)
            add("direct", {"query": up, "push": sink}, None, lambda: [])
            if "obsgate" in ONLY:
                env = dict(os.environ, TOKIO_WORKER_THREADS="1")
                g = start([OBSGATE, "serve", "--config", f"{WORK}/gateway.yaml"], log, env=env)
                procs.append(g)
                wait_port(gw)
                add("obsgate", {"query": gw, "push": gw}, auth, lambda: [g.pid])
            if "obsgate_before" in ONLY:
                env = dict(os.environ, TOKIO_WORKER_THREADS="1")
                gb = start([OBSGATE_BEFORE, "serve", "--config", f"{WORK}/gateway-before.yaml"], log, env=env)
                procs.append(gb)
                wait_port(gwb)
                add("obsgate_before", {"query": gwb, "push": gwb}, auth, lambda: [gb.pid])
            if "obsgate_traced" in ONLY:
                ts = start([PUSH_SINK, f"127.0.0.1:{tsink}"], log)  # push_sink answers any POST 200
                procs.append(ts)
                wait_port(tsink)
                TRACE_SINK["port"] = tsink
                env = dict(os.environ, TOKIO_WORKER_THREADS="1")
                gt = start([OBSGATE, "serve", "--config", f"{WORK}/gateway-traced.yaml"], log, env=env)
                procs.append(gt)
                wait_port(gwt)
                st, h = curl_status(f"http://127.0.0.1:{gwt}{PATH}", {"Authorization": auth})
                print(f"obsgate_traced check: GET {PATH}: {st}, X-Trace-Id {h.get('x-trace-id')!r}", flush=True)
                if st != 200 or not h.get("x-trace-id"):
                    raise SystemExit("obsgate_traced does not trace (no X-Trace-Id) or refuses the bench token")
                add("obsgate_traced", {"query": gwt, "push": gwt}, auth, lambda: [gt.pid])
            if ONLY & {"obsgate", "nginx_fa", "obsgate_before", "obsgate_traced"}:
                # a policy reload every second for the whole run (rename-over, as editors do)
                def reload_every_second():
                    text = open(f"{WORK}/policies.yaml").read()
                    while not stop.wait(1.0):
                        with open(f"{WORK}/policies.yaml.tmp", "w") as f:
                            f.write(text)
                        os.replace(f"{WORK}/policies.yaml.tmp", f"{WORK}/policies.yaml")
                threading.Thread(target=reload_every_second, daemon=True).start()
            if "floor" in ONLY:
                floors = {}
                for w, port, upstream_port in (("query", fl, up), ("push", flp, sink)):
                    if w in WORKLOADS:
                        p = start([FLOOR, f"127.0.0.1:{port}", f"127.0.0.1:{upstream_port}"], log)
                        procs.append(p)
                        wait_port(port)
                        floors[w] = p
                for w, p in floors.items():
                    targets[w]["floor"] = (f"http://127.0.0.1:{fl if w == 'query' else flp}{PATHS[w]}", auth,
                                           lambda p=p: [p.pid])
            if "caddy" in ONLY:
                env = dict(os.environ, GOMAXPROCS="1", HOME=WORK, XDG_DATA_HOME=WORK, XDG_CONFIG_HOME=WORK)
                c = start(["caddy", "run", "--config", f"{WORK}/Caddyfile", "--adapter", "caddyfile"], log, env=env)
                procs.append(c)
                wait_port(cd)
                add("caddy", {"query": cd, "push": cd}, auth, lambda: [c.pid])
            if "nginx" in ONLY:
                n = start(["nginx", "-c", f"{WORK}/nx.conf", "-p", WORK], log)
                procs.append(n)
                wait_port(nx)
                add("nginx", {"query": nx, "push": nx}, auth, lambda: family(n.pid))
            if "haproxy" in ONLY:
                h = start(["haproxy", "-f", f"{WORK}/ha.cfg"], log)
                procs.append(h)
                wait_port(ha)
                add("haproxy", {"query": ha, "push": ha}, auth, lambda: [h.pid])
            if "nginx_fa" in ONLY:
                env = dict(os.environ, TOKIO_WORKER_THREADS="1")
                gfa = start([OBSGATE, "serve", "--config", f"{WORK}/gateway-fa.yaml"], log, env=env)
                procs.append(gfa)
                wait_port(fa)
                wait_port(gwfa)
                t = subprocess.run(["nginx", "-t", "-c", f"{WORK}/nfa.conf", "-p", WORK], capture_output=True, text=True)
                if t.returncode or "[warn]" in t.stderr or "[emerg]" in t.stderr:
                    raise SystemExit(f"nginx_fa: nginx -t refused or warned about {WORK}/nfa.conf:\n{t.stderr}")
                nf = start(["nginx", "-c", f"{WORK}/nfa.conf", "-p", WORK], log)
                procs.append(nf)
                wait_port(nfa)
                check_forward_auth(fa, nfa, auth)
                NGINX_FA["before"] = fa_decisions(gwfa)
                add("nginx_fa", {"query": nfa, "push": nfa}, auth, lambda: family(nf.pid) + [gfa.pid])
                for w in WORKLOADS:
                    targets[w]["nginx_fa"] += (lambda: {"nginx": family(nf.pid), "obsgate": [gfa.pid]},)
            names = [n for n in SIDE_BY_SIDE if n in ONLY]
            rounds = {w: {n: [] for n in names if n in targets[w]} for w in WORKLOADS}
            for r in range(REPEAT):
                print(f"-- round {r + 1}/{REPEAT}", flush=True)
                for w in WORKLOADS:
                    for name in rounds[w]:
                        url, a, pids, *parts = targets[w][name]
                        rounds[w][name].append(measure(name, w, url, a, pids, *parts))
            stop.set()
            for w in WORKLOADS:
                ROUND_CPU[w] = {n: {m: [r[m]["cpu_us_per_req"] for r in rs] for m in ("saturation", "fixed")}
                                for n, rs in rounds[w].items()}
            if "obsgate_traced" in ONLY:
                # spans the traced obsgate's exporter handed over, {result: n} (success, failure)
                TRACE_SINK["exported"] = {l.get("result"): v for l, v in
                                          metric(gwt, "obsgate_trace_spans_exported_total") or []}
            if "obsgate" in ONLY:
                metrics = subprocess.run(["curl", "-s", f"http://127.0.0.1:{gw}/metrics"],
                                         capture_output=True, text=True).stdout
                m = re.search(r'^obsgate_store_reloads_total\{result="success"\} (\d+)', metrics, re.M)
                RELOADS[0] = int(m.group(1)) - 1 if m else 0
            if "nginx_fa" in ONLY:
                NGINX_FA["after"] = fa_decisions(gwfa)
            results = {w: {name: median_of(rs) for name, rs in rounds[w].items()} for w in WORKLOADS}
        finally:
            stop.set()
            for p in procs:
                stop_proc(p)
            log.close()
        for nginx_name, log_name in (("nginx", "nx"), ("nginx_fa", "nfa")):
            if nginx_name in ONLY and "push" in WORKLOADS:
                try:
                    # a spooled body logs "buffered to a temporary file", or (its worker cannot enter
                    # WORK, which is root's and 0700) an open() of WORK/tmp/client_body/... failing
                    with open(f"{WORK}/{log_name}-error.log", errors="replace") as f:
                        NGINX_BUFFERED[0] = (NGINX_BUFFERED[0] or 0) + sum(
                            1 for l in f if "buffered to a temporary file" in l or "client_body/" in l)
                except OSError:
                    pass
        if "nginx_fa" in ONLY:
            try:
                with open(f"{WORK}/nfa-error.log", errors="replace") as f:
                    NGINX_FA["log"] = [l.rstrip() for l in f if l.strip()]
            except OSError:
                pass
    replicas = run_replicas(auth, temps) if "replicas" in ONLY else None

    report(results, replicas)
    failed = sum(x[m]["errors"] for wr in results.values() for x in wr.values() for m in x)
    shutil.rmtree(WORK, ignore_errors=True)
    msgs = []
    if failed:
        msgs.append(f"{failed} failed requests")
    if replicas is not None and replicas["failed"]:
        msgs.append(f"replicas case: {replicas['failed']} failed reads (replica 1 stopped during the run)")
    if replicas is not None and replicas["obsgate_exited"] is not None:
        msgs.append(f"replicas case: obsgate exited during the run (status {replicas['obsgate_exited']})")
    if msgs:
        raise SystemExit("; ".join(msgs))


def metric(port, name):
    """[(labels, value)] of one metric family on obsgate's /metrics; None if /metrics is unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})?\s+(\S+)", line)
        if m and m.group(1) == name:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            out.append((labels, float(m.group(3))))
    return out


def qf_samples(port, name):
    """[(labels, value)] of the metrics backend's query_frontend only."""
    return [(l, v) for l, v in (metric(port, name) or [])
            if l.get("backend") == "metrics" and l.get("component") == "query_frontend"]


def qf_healthy(port):
    return {l.get("endpoint"): v for l, v in qf_samples(port, "obsgate_upstream_endpoint_healthy")}


def qf_requests(port):
    """{(endpoint, code): count} from obsgate_upstream_requests_total."""
    out = {}
    for l, v in qf_samples(port, "obsgate_upstream_requests_total"):
        k = (l.get("endpoint"), l.get("code"))
        out[k] = out.get(k, 0) + v
    return out


def run_replicas(auth, temps):
    """obsgate in front of three query_frontend replicas (one nginx process each, with its own
    access log); wrk sends reads for DURATION s and replica 1 is SIGKILLed a third of the way in."""
    ports = [free_port() for _ in range(3)]
    gw = free_port()
    eps = [f"127.0.0.1:{p}" for p in ports]
    for i, p in enumerate(ports, 1):
        # master_process off: one process per replica, so one kill stops the replica for good
        with open(f"{WORK}/r{i}.conf", "w") as f:
            f.write(f"master_process off; daemon off; pid {WORK}/r{i}.pid; error_log {WORK}/r{i}-error.log;\n"
                    f"events {{ worker_connections 4096; }}\n"
                    f"http {{ log_format st '$status'; access_log {WORK}/r{i}-access.log st; {temps}\n"
                    f"  server {{ listen 127.0.0.1:{p};\n"
                    f"    location = /ready {{ access_log off; return 200 'ready\\n'; }}\n"
                    f"    location / {{ return 200 'ok\\n'; }} }} }}\n")
    urls = ", ".join(f'"http://{e}"' for e in eps)
    with open(f"{WORK}/gateway-replicas.yaml", "w") as f:
        f.write(f"server:\n  listen: \"127.0.0.1:{gw}\"\nstore:\n  policy_files: [policies.yaml]\n"
                f"backends:\n  metrics:\n    kind: mimir\n    url: \"http://{eps[0]}\"\n"
                f"    components:\n      query_frontend: {{ urls: [{urls}] }}\n"
                f"    health_check: {{ path: /ready, interval: 1s, timeout: 1s, unhealthy_after: 2, healthy_after: 1 }}\n"
                f"lbac:\n  mode: header\nlog:\n  level: warn\n")

    def served():
        n = []
        for i in range(1, 4):
            try:
                with open(f"{WORK}/r{i}-access.log", "rb") as f:
                    n.append(f.read().count(b"\n"))
            except OSError:
                n.append(0)
        return n

    glog_path = f"{WORK}/replicas-obsgate.log"
    log, glog = open(f"{WORK}/replicas-procs.log", "w"), open(glog_path, "w")
    procs = []
    res = {"ports": ports, "endpoints": eps, "rate": REPLICAS_RATE}
    print("-- replicas: obsgate in front of 3 query_frontend replicas, replica 1 killed at "
          f"{DURATION / 3:.1f} s", flush=True)
    try:
        reps = []
        for i in range(1, 4):
            reps.append(start(["nginx", "-c", f"{WORK}/r{i}.conf", "-p", WORK], log))
            procs.append(reps[-1])
        for p in ports:
            wait_port(p)
        g = start([OBSGATE, "serve", "--config", f"{WORK}/gateway-replicas.yaml"], glog,
                  env=dict(os.environ, TOKIO_WORKER_THREADS="1"))
        procs.append(g)
        try:
            wait_port(gw)
        except SystemExit:
            glog.flush()
            print(open(glog_path).read()[-4000:], file=sys.stderr)
            raise SystemExit(f"replicas case: obsgate did not start (log above, config {WORK}/gateway-replicas.yaml)")
        # wait until obsgate reports the three replicas healthy (at most 5 s)
        deadline = time.time() + 5
        while time.time() < deadline:
            h = qf_healthy(gw)
            if all(h.get(e) == 1 for e in eps):
                break
            time.sleep(0.2)
        res["healthy_at_start"] = qf_healthy(gw)
        base_served, base_req = served(), qf_requests(gw)
        cpu0 = cpu_ticks([g.pid])
        url = f"http://127.0.0.1:{gw}{PATH}"
        t0 = time.time()
        w = subprocess.Popen(wrk_cmd(url, auth, REPLICAS_RATE, count_status=True, name="wrk-replicas"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(DURATION / 3)
        reps[0].kill()  # SIGKILL: open connections are reset, new ones refused
        t_kill = time.time()
        reps[0].wait()
        # "before" ends at the kill: replica 1 has served its last request
        stop_served, stop_req = served(), qf_requests(gw)
        res["kill_at"] = t_kill - t0
        res["unhealthy_after"] = None
        while w.poll() is None and time.time() < t0 + DURATION + 30:
            if res["unhealthy_after"] is None and qf_healthy(gw).get(eps[0]) == 0:
                res["unhealthy_after"] = time.time() - t_kill
            time.sleep(0.1)
        out = w.communicate(timeout=DURATION + 60)[0]
        t_end = time.time()
        cpu1 = cpu_ticks([g.pid])
        end_served, end_req = served(), qf_requests(gw)
        res["healthy_at_end"] = qf_healthy(gw)
        res["obsgate_exited"] = g.poll()
    finally:
        for p in procs:
            stop_proc(p)
        log.close()
        glog.close()
    r = parse_wrk(out)
    res.update(r)
    res["cpu_us_per_req"] = (cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1]) / CLK_TCK * 1e6 / max(1, r["requests"])
    res["before"] = [b - a for a, b in zip(base_served, stop_served)]
    res["after"] = [b - a for a, b in zip(stop_served, end_served)]
    res["secs_before"], res["secs_after"] = res["kill_at"], max(1e-9, t_end - t0 - res["kill_at"])
    keys = set(base_req) | set(stop_req) | set(end_req)
    res["codes_before"] = {k: stop_req.get(k, 0) - base_req.get(k, 0) for k in keys}
    res["codes_after"] = {k: end_req.get(k, 0) - stop_req.get(k, 0) for k in keys}
    res["log"] = [l.rstrip() for l in open(glog_path, errors="replace") if l.strip()]
    res["failed"] = r["errors"]
    print(f"replicas  {r['rps']:10.0f} req/s  requests {r['requests']}  failed {r['errors']}  "
          f"served before stop {res['before']}  after {res['after']}", flush=True)
    return res


def replicas_lines(x):
    eps = x["endpoints"]
    mode = f"fixed rate ≈ {x['rate']} req/s" if x["rate"] else "saturation"
    sock = x["socket"]
    sock_s = "/".join(str(sock.get(k, 0)) for k in ("connect", "read", "write", "timeout")) if sock else "0"
    lines = [
        "### Replicas: one of three query_frontend replicas killed under load",
        "",
        f"obsgate (same checks, one worker) in front of three nginx `return 200` replicas of the query_frontend",
        "(one process each, each with its own access log), default balance, health_check `/ready` every 1 s",
        f"(timeout 1 s, unhealthy_after 2, healthy_after 1). wrk: {CONNECTIONS} connections, {DURATION} s, {mode};",
        f"replica 1 ({eps[0]}) SIGKILLed at {x['kill_at']:.1f} s. Failed = responses other than 200 + wrk socket errors.",
        "",
        "| requests | req/s | p50 ms | p99 ms | failed | non-200 | socket errors connect/read/write/timeout | obsgate CPU µs/req |",
        "|---|---|---|---|---|---|---|---|",
        f"| {x['requests']} | {x['rps']:.0f} | {x['p50']:.3f} | {x['p99']:.3f} | {x['errors']} | {x['non200']} | "
        f"{sock_s} | {x['cpu_us_per_req']:.1f} |",
        "",
        "Counts are split at the kill (snapshots taken right after it: requests in flight on replica 1 when it",
        "died count in the first columns). Served = lines in the replica's access log; codes = obsgate's",
        "`obsgate_upstream_requests_total{component=\"query_frontend\"}` by `code`.",
        "",
        "| replica | endpoint | served up to the stop | served after | share up to the stop | share after | "
        "obsgate upstream codes up to the stop | after | healthy at end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    tb, ta = sum(x["before"]), sum(x["after"])
    codes = lambda d, e: ", ".join(f"{c}: {int(v)}" for (ep, c), v in sorted(d.items()) if ep == e and v) or "—"
    for i, e in enumerate(eps):
        h = x["healthy_at_end"].get(e)
        lines.append(f"| {i + 1}{' (killed)' if i == 0 else ''} | {e} | {x['before'][i]} | {x['after'][i]} | "
                     f"{100 * x['before'][i] / max(1, tb):.0f}% | {100 * x['after'][i] / max(1, ta):.0f}% | "
                     f"{codes(x['codes_before'], e)} | {codes(x['codes_after'], e)} | "
                     f"{'—' if h is None else int(h)} |")
    lines.append(f"| all | | {tb} ({tb / x['secs_before']:.0f}/s) | {ta} ({ta / x['secs_after']:.0f}/s) | | | | | |")
    lines.append("")
    u = x["unhealthy_after"]
    lines.append(f"Replica 1 marked unhealthy (obsgate_upstream_endpoint_healthy = 0) "
                 + (f"{u:.2f} s after the kill (polled every 0.1 s)." if u is not None else "— not seen during the run."))
    if not all(x["healthy_at_start"].get(e) == 1 for e in eps):
        lines.append(f"Health at the start (after up to 5 s of waiting): {x['healthy_at_start'] or 'not exported'}.")
    if x["statuses"]:
        lines.append("Statuses other than 200: " + ", ".join(f"{k} ×{v}" for k, v in sorted(x["statuses"].items())) + ".")
    if x["obsgate_exited"] is not None:
        lines.append(f"**obsgate exited during the run** (status {x['obsgate_exited']}).")
    lines.append(f"obsgate log lines (level warn and above): {len(x['log'])}"
                 + (", the first ones:" if x["log"] else "."))
    if x["log"]:
        lines += ["", "```"] + [l[:300] for l in x["log"][:12]] + ["```"]
    lines.append("")
    lines.append(f"**Replicas case: {x['failed']} failed reads" + (" — FAILED.**" if x["failed"] else ".**"))
    return lines


# obsgate's targets (issue 12): CPU per request at saturation against nginx's (per workload), the
# floor's and Caddy's, and p99 at the fixed rate against nginx's
NGINX_TARGET = {"query": 1.0, "push": 0.6}
FLOOR_TARGET = 1.05
CADDY_TARGET = 4.0


def finite(*xs):
    return all(x == x and x not in (float("inf"), float("-inf")) and x > 0 for x in xs)


def target_lines(w, res):
    """One line per target of this workload, each ending MET or MISSED (ratios are judged as
    printed, to two decimals)."""
    cpu = lambda n: res.get(n, {}).get("saturation", {}).get("cpu_us_per_req", float("nan"))
    og, ng, fg, cg = cpu("obsgate"), cpu("nginx"), cpu("floor"), cpu("caddy")
    verdict = lambda ok: "**MET**" if ok else "**MISSED**"
    na = lambda what: f"- {w}: {what}: not measured (ONLY={','.join(sorted(ONLY))})"
    out = []
    t = NGINX_TARGET[w]
    if finite(og, ng):
        r = round(og / ng, 2)
        out.append(f"- {w}: obsgate CPU/req {og:.1f} µs = {r:.2f}× nginx's {ng:.1f} µs (target ≤ {t:.1f}×): {verdict(r <= t)}")
    else:
        out.append(na("obsgate CPU/req vs nginx's"))
    if finite(og, fg):
        r = round(og / fg, 2)
        out.append(f"- {w}: obsgate CPU/req = {r:.2f}× the floor's {fg:.1f} µs (bare hyper proxy; target ≤ {FLOOR_TARGET:.2f}×): "
                   f"{verdict(r <= FLOOR_TARGET)}")
    else:
        out.append(na("obsgate CPU/req vs the floor's"))
    if finite(og, cg):
        r = round(cg / og, 2)
        out.append(f"- {w}: Caddy's CPU/req {cg:.1f} µs = {r:.2f}× obsgate's (target: obsgate ≥ {CADDY_TARGET:.0f}× less): "
                   f"{verdict(r >= CADDY_TARGET)}")
    else:
        out.append(na("obsgate CPU/req vs Caddy's"))
    op = res.get("obsgate", {}).get("fixed", {}).get("p99", float("nan"))
    np_ = res.get("nginx", {}).get("fixed", {}).get("p99", float("nan"))
    if finite(op, np_):
        out.append(f"- {w}: p99 at ≈{RATES[w]} req/s: obsgate {op:.3f} ms, nginx {np_:.3f} ms (target ≤ nginx's): "
                   f"{verdict(round(op, 3) <= round(np_, 3))}")
    else:
        out.append(na("p99 at the fixed rate vs nginx's"))
    return out


def nginx_fa_lines(w, res):
    """nginx_fa against obsgate alone (and nginx alone): CPU per request at saturation, its split
    between nginx and obsgate, p99 at the fixed rate; and the forward-auth decisions counted."""
    fa = res.get("nginx_fa")
    if not fa:
        return [f"- {w}: nginx_fa not measured"]
    s, f = fa["saturation"], fa["fixed"]
    tot, ng, og = s["cpu_us_per_req"], s.get("nginx_us_per_req", float("nan")), s.get("obsgate_us_per_req", float("nan"))
    line = (f"- {w}: nginx_fa CPU/req {tot:.1f} µs (user {s['user_us_per_req']:.1f}, sys {s['sys_us_per_req']:.1f}) = "
            f"nginx {ng:.1f} ({100 * ng / tot:.0f}%) + obsgate forward-auth {og:.1f} ({100 * og / tot:.0f}%)")
    alone = res.get("obsgate", {}).get("saturation", {}).get("cpu_us_per_req", float("nan"))
    if finite(tot, alone):
        line += f"; = {tot / alone:.2f}× obsgate alone's {alone:.1f} µs"
    nx = res.get("nginx", {}).get("saturation", {}).get("cpu_us_per_req", float("nan"))
    if finite(tot, nx):
        line += f"; = {tot / nx:.2f}× nginx alone's {nx:.1f} µs (the auth subrequest adds {tot - nx:.1f} µs)"
    out = [line]
    op = res.get("obsgate", {}).get("fixed", {}).get("p99", float("nan"))
    out.append(f"- {w}: at ≈{RATES[w]} req/s: nginx_fa p99 {f['p99']:.3f} ms"
               + (f", obsgate alone {op:.3f} ms" if finite(op) else "")
               + f"; req/s at saturation: nginx_fa {s['rps']:.0f}"
               + (f", obsgate alone {res['obsgate']['saturation']['rps']:.0f}" if "obsgate" in res else ""))
    return out


def tracing_cost_lines(w, res):
    """obsgate against obsgate_before (tracing off against the build without tracing) and
    obsgate_traced against obsgate (tracing on against off): CPU per request, the medians with each
    round's range, and each round's difference (the rounds interleave the contestants)."""
    out = []
    for a, b in (("obsgate", "obsgate_before"), ("obsgate_traced", "obsgate")):
        if a not in res or b not in res:
            continue
        for m in ("saturation", "fixed"):
            xa, xb = ROUND_CPU[w][a][m], ROUND_CPU[w][b][m]
            ma, mb = res[a][m]["cpu_us_per_req"], res[b][m]["cpu_us_per_req"]
            label = m if m == "saturation" else f"fixed ≈{RATES[w]}/s"
            out.append(f"- {w}, {label}: {a} {ma:.1f} µs/req (rounds {min(xa):.1f}–{max(xa):.1f}) against {b} "
                       f"{mb:.1f} ({min(xb):.1f}–{max(xb):.1f}): {ma - mb:+.1f} µs ({100 * (ma - mb) / mb:+.1f}%); "
                       "per round " + ", ".join(f"{p - q:+.1f}" for p, q in zip(xa, xb)))
    if "obsgate_traced" in res:
        t = res["obsgate_traced"]
        out.append(f"- {w}: obsgate_traced's trace sink received {t['saturation']['trace_bytes_per_req']:.0f} bytes "
                   f"per request at saturation, {t['fixed']['trace_bytes_per_req']:.0f} at the fixed rate "
                   "(OTLP/HTTP protobuf; fewer at saturation would mean spans dropped)")
    return out


def workload_lines(w, res):
    if w == "query":
        head = [f"### Query: `GET {PATH}`",
                "",
                f"Upstream: nginx `return 200`. Fixed rate ≈ {RATE} req/s (`RATE`): each connection waits",
                f"{max(1, int(CONNECTIONS * 1000 / RATE))} ms before each request, so the rate reached is a little lower.",
                ""]
    else:
        head = [f"### Push: `POST {PUSH_PATH}`, {PUSH_BYTES // 1024} KiB body",
                "",
                "Upstream: `push_sink` (examples/push_sink.rs, hyper, current-thread runtime): it reads the whole body,",
                "then answers 200, as a Mimir distributor does. Headers `Content-Type: application/x-protobuf`,",
                "`Content-Encoding: snappy` (the body is not snappy: nobody decodes it). Every contestant streams the",
                "body: nginx `proxy_request_buffering off`, haproxy without `option http-buffer-request`, Caddy and the",
                "floor by default; obsgate routes it to the mimir backend's `distributor` (scope `metrics:write`).",
                f"Every status other than 200 counts as failed. Fixed rate ≈ {PUSH_RATE} req/s (`PUSH_RATE`): each",
                f"connection waits a random 0–{2 * max(1, int(CONNECTIONS * 1000 / PUSH_RATE))} ms before each push, so the rate reached is a little",
                "lower (the response time adds to the wait).",
                ""]
    lines = head + [
        "| target | mode | req/s | p50 ms | p99 ms | proxy CPU µs/req | user | sys | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        for mode in ("saturation", "fixed"):
            x = r[mode]
            us = lambda k: "—" if x[k] != x[k] else f"{x[k]:.1f}"
            label = mode if mode == "saturation" else f"fixed ≈{RATES[w]}/s"
            lines.append(f"| {name} | {label} | {x['rps']:.0f} | {x['p50']:.3f} | {x['p99']:.3f} | "
                         f"{us('cpu_us_per_req')} | {us('user_us_per_req')} | {us('sys_us_per_req')} | {x['errors']} |")
    notes = []
    if "nginx_fa" in res:
        x = res["nginx_fa"]
        notes.append("nginx_fa = nginx + auth_request + obsgate forward-auth; its CPU is both together (medians of "
                     "each part, so the parts need not add up exactly): "
                     + "; ".join(f"{m} nginx {x[m].get('nginx_us_per_req', float('nan')):.1f} + obsgate "
                                 f"{x[m].get('obsgate_us_per_req', float('nan')):.1f} µs/req" for m in ("saturation", "fixed")) + ".")
    if w == "push" and NGINX_BUFFERED[0] is not None:
        notes.append("nginx spooled no request body to a temporary file (no such line in its error log)."
                     if NGINX_BUFFERED[0] == 0 else
                     f"**nginx tried to spool {NGINX_BUFFERED[0]} request bodies to a temporary file** (its error log).")
    for name, r in res.items():
        st = r["saturation"].get("statuses", {}), r["fixed"].get("statuses", {})
        codes = {k: st[0].get(k, 0) + st[1].get(k, 0) for k in set(st[0]) | set(st[1])}
        if codes:
            notes.append(f"{name}: statuses other than 200: " + ", ".join(f"{k} ×{v}" for k, v in sorted(codes.items())) + ".")
        sock = {}
        for m in ("saturation", "fixed"):
            for k, v in r[m].get("socket", {}).items():
                sock[k] = sock.get(k, 0) + v
        if any(sock.values()):
            notes.append(f"{name}: wrk socket errors: " + ", ".join(f"{k} {v}" for k, v in sock.items() if v) + ".")
        if r["saturation"]["rps"] < RATES[w]:
            notes.append(f"{name} cannot sustain the fixed rate: {r['saturation']['rps']:.0f} req/s at saturation, "
                         f"below ≈{RATES[w]}.")
    if notes:
        lines += [""] + notes
    return lines


def report(results, replicas=None):
    lines = []
    if results:
        lines += [
            f"Load benchmark: {CONNECTIONS} connections, {DURATION} s per run, medians of {REPEAT} interleaved rounds",
            f"(workloads: {', '.join(results)}); wrk on core 0, proxy and upstream on core 1. obsgate runs every check",
            "(glc token, realm, scope, subnet, LBAC header mode) with a policy reload every second. The floor is",
            "examples/floor_proxy.rs: a bare hyper proxy with obsgate's hyper, hyper-util, runtime and allocator",
            "(mimalloc), no checks; it keeps hyper-util's pooled legacy client, where obsgate has its own HTTP/1 pool.",
            "Proxy CPU µs/req = the proxy's user+sys time from /proc ÷ requests (nginx_fa: nginx's master and worker",
            "plus the forward-auth obsgate, all on core 1); failed = non-200 responses (push)",
            "or statuses > 399 (query), plus wrk socket errors.",
        ]
        for w, res in results.items():
            lines += [""] + workload_lines(w, res)
        lines += ["", "Targets (CPU per request at saturation; p99 at the fixed rate):", ""]
        for w, res in results.items():
            lines += target_lines(w, res)
        if "nginx_fa" in ONLY:
            lines += ["", "nginx + auth_request + obsgate forward-auth (nginx_fa) against obsgate alone (no target):", ""]
            for w, res in results.items():
                lines += nginx_fa_lines(w, res)
        if ONLY & set(TRACING_COST):
            lines += ["", "What tracing costs: obsgate (tracing off) against obsgate_before (built before tracing was",
                      f"added), obsgate_traced (tracing on, sample_ratio {TRACED_RATIO}, OTLP/HTTP to a local push_sink whose CPU",
                      "is not counted) against obsgate. CPU per request, medians (each round's min–max):", ""]
            for w, res in results.items():
                lines += tracing_cost_lines(w, res)
            if "obsgate_traced" in ONLY:
                lines.append(f"- obsgate_traced's trace sink received {TRACE_SINK['total']} bytes of exports during its runs"
                             + ("." if TRACE_SINK["total"] else ": **no export arrived**."))
                ex = TRACE_SINK.get("exported", {})
                sent = sum(x[m]["requests"] for res in results.values() for x in (res["obsgate_traced"],) for m in x)
                lines.append(f"- obsgate_trace_spans_exported_total: success {ex.get('success', 0):.0f} "
                             f"({ex.get('success', 0) / max(1, sent):.2f} spans per request wrk counted), "
                             f"failure {ex.get('failure', 0):.0f}" + ("." if not ex.get("failure") else " — **exports failed**."))
        if "obsgate" in ONLY:
            lines += ["", f"Policy reloads completed during obsgate's runs (one per second): {RELOADS[0]}."]
        if "nginx_fa" in ONLY and "after" in NGINX_FA:
            b, a = NGINX_FA.get("before", {}), NGINX_FA["after"]
            d = {k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b)}
            sent = sum(x[m]["requests"] for res in results.values() if "nginx_fa" in res
                       for x in (res["nginx_fa"],) for m in x)
            allowed = sum(v for (result, _), v in d.items() if result == "allow")
            other = {k: v for k, v in d.items() if k[0] != "allow" and v}
            lines += ["", f"nginx_fa's obsgate decided {allowed} forward-auth questions \"allow\" during the rounds "
                      f"(wrk counted {sent} completed requests to nginx_fa; requests still in flight when wrk stops "
                      "are asked but not counted by wrk)"
                      + (": other decisions " + ", ".join(f"{r}/{why} ×{v}" for (r, why), v in sorted(other.items())) + "."
                         if other else ", and nothing else.")]
            log_ = NGINX_FA.get("log", [])
            lines.append(f"nginx_fa's nginx error log (warn and above): {len(log_)} lines"
                         + (", the first ones:" if log_ else "."))
            if log_:
                lines += ["", "```"] + [l[:300] for l in log_[:8]] + ["```"]
    if replicas is not None:
        lines += ([""] if lines else []) + replicas_lines(replicas)
    md = "\n".join(lines) + "\n"
    with open(os.path.join(OUT, "load.md"), "w") as f:
        f.write(md)
    print(md)
    if results:
        chart(results)


def chart(results):
    """load.svg: per workload, the proxies' CPU per request at saturation (user and sys stacked),
    and every target's req/s at saturation; one panel per workload and measure, each to its own scale."""
    bar, gap, left, ph = 56, 18, 50, 230  # bar width, gap, panel margin, bar area height
    ws = list(results)
    most = max(len(r) for r in results.values())
    pw = max(400, left + most * (bar + gap) + 20)  # panel width (the titles need 400)
    W, H = max(560, pw * len(ws) + 20), 2 * (ph + 100) + 60
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="10" y="20" font-size="15">obsgate load benchmark: {CONNECTIONS} connections, {DURATION} s per run, medians of {REPEAT} round{"s" if REPEAT > 1 else ""}</text>',
           '<text x="10" y="42">CPU:</text>',
           '<rect x="48" y="31" width="12" height="12" fill="#2f5fb3"/><text x="64" y="42">user</text>',
           '<rect x="104" y="31" width="12" height="12" fill="#9cb8e8"/><text x="120" y="42">sys</text>',
           '<text x="160" y="42">(obsgate darker; "direct" = no proxy, so no proxy CPU)</text>']
    for row, measure_ in enumerate(("cpu", "rps")):
        y0 = 60 + row * (ph + 100)  # panel top
        base = y0 + 42 + ph  # bar baseline
        for col, w in enumerate(ws):
            res = results[w]
            x0 = 10 + col * pw
            names = [n for n in res if measure_ == "rps" or n != "direct"]
            title = (f"{w}: proxy CPU µs per request, saturation" if measure_ == "cpu"
                     else f"{w}: requests/s, saturation")
            svg.append(f'<text x="{x0}" y="{y0 + 14}" font-size="14" font-weight="bold">{title}</text>')
            svg.append(f'<line x1="{x0 + left - 10}" y1="{base}" x2="{x0 + pw - 20}" y2="{base}" stroke="#444"/>')
            vals = []
            for n in names:
                x = res[n]["saturation"]
                if measure_ == "cpu":
                    u, s = x["user_us_per_req"], x["sys_us_per_req"]
                    vals.append((n, u if u == u else 0, s if s == s else 0))
                else:
                    vals.append((n, x["rps"], 0))
            top = max((a + b for _, a, b in vals), default=0) or 1
            for i, (n, a, b) in enumerate(vals):
                x = x0 + left + i * (bar + gap)
                ha_, hb = ph * a / top, ph * b / top
                color = "#2f5fb3" if measure_ == "cpu" else ("#b35a1f" if n == "obsgate" else "#e0a46e")
                if measure_ == "cpu" and n == "obsgate":
                    color = "#173f85"
                svg.append(f'<rect x="{x}" y="{base - ha_:.1f}" width="{bar}" height="{ha_:.1f}" fill="{color}"/>')
                if measure_ == "cpu":
                    svg.append(f'<rect x="{x}" y="{base - ha_ - hb:.1f}" width="{bar}" height="{hb:.1f}" fill="#9cb8e8"/>')
                label = f"{a + b:.1f}" if measure_ == "cpu" else f"{a:.0f}"
                weight = ' font-weight="bold"' if n == "obsgate" else ""
                svg.append(f'<text x="{x + bar / 2}" y="{base - ha_ - hb - 5:.1f}" text-anchor="middle"{weight}>{label}</text>')
                svg.append(f'<text x="{x + bar / 2}" y="{base + 16}" text-anchor="middle"{weight}>{n}</text>')
    svg.append("</svg>")
    with open(os.path.join(OUT, "load.svg"), "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
