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
SIDE_BY_SIDE = ("direct", "floor", "obsgate", "nginx", "haproxy", "caddy")
ONLY = set(filter(None, os.environ.get("ONLY", ",".join(SIDE_BY_SIDE + ("replicas",))).split(",")))
if ONLY - set(SIDE_BY_SIDE + ("replicas",)):
    raise SystemExit(f"unknown ONLY names: {','.join(sorted(ONLY - set(SIDE_BY_SIDE + ('replicas',))))}")
# the replicas case: wrk at saturation unless REPLICAS_RATE is set; replica 1 is killed (SIGKILL)
# at a third of DURATION
REPLICAS_RATE = int(os.environ.get("REPLICAS_RATE", "0")) or None
PERF = os.environ.get("PERF") == "1"
REPEAT = int(os.environ.get("REPEAT", "3"))  # interleaved rounds; the report shows medians
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "target", "bench-report")
OBSGATE = os.path.join(ROOT, "target", "release", "obsgate")
FLOOR = os.path.join(ROOT, "target", "release", "examples", "floor_proxy")
PATH = "/prometheus/api/v1/query?query=up"
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


def wrk_cmd(url, auth, rate=None, count_status=False, name="wrk"):
    script = os.path.join(WORK, f"{name}.lua")
    with open(script, "w") as f:
        f.write('wrk.headers["Authorization"] = "%s"\n' % auth if auth else "")
        if rate:
            # each connection waits so that all together send about `rate` requests per second
            f.write("function delay() return %d end\n" % max(1, int(CONNECTIONS * 1000 / rate)))
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


def wrk(url, auth, rate=None):
    out = subprocess.run(wrk_cmd(url, auth, rate), capture_output=True, text=True, timeout=DURATION + 60).stdout
    r = parse_wrk(out)
    for k in ("non200", "statuses", "socket"):
        del r[k]
    return r


def measure(name, url, auth, pids):
    res = {}
    for mode, rate in (("saturation", None), ("fixed", RATE)):
        before = cpu_ticks(pids())
        perf = None
        if PERF and name == "obsgate" and rate is None:
            perf = subprocess.Popen(["perf", "record", "-g", "-o", os.path.join(OUT, "obsgate.perf.data"),
                                     "-p", ",".join(str(p) for p in pids()), "--", "sleep", str(DURATION)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = wrk(url, auth, rate)
        if perf:
            perf.wait()
        after = cpu_ticks(pids())
        per_req = lambda ticks: ticks / CLK_TCK * 1e6 / max(1, r["requests"]) if pids() else float("nan")
        r["user_us_per_req"] = per_req(after[0] - before[0])
        r["sys_us_per_req"] = per_req(after[1] - before[1])
        r["cpu_us_per_req"] = r["user_us_per_req"] + r["sys_us_per_req"]
        res[mode] = r
        print(f"{name:8} {mode:10} {r['rps']:10.0f} req/s  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms  "
              f"cpu {r['cpu_us_per_req']:.1f} µs/req (user {r['user_us_per_req']:.1f} sys {r['sys_us_per_req']:.1f})  errors {r['errors']}", flush=True)
    return res


WORK = tempfile.mkdtemp(prefix="obsgate-load-")
RELOADS = [0]


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
            else:
                m[k] = statistics.median(x[k] for x in xs)
        out[mode] = m
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(os.path.join(WORK, "tmp"), exist_ok=True)
    up, nx, ha, gw, fl, cd = (free_port() for _ in range(6))
    temps = " ".join(f"{d}_temp_path {WORK}/tmp/{d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    with open(f"{WORK}/up.conf", "w") as f:
        f.write(f"worker_processes 1; daemon off; pid {WORK}/up.pid; error_log {WORK}/up-error.log;\n"
                f"events {{ worker_connections 4096; }}\n"
                f"http {{ access_log off; {temps}\n"
                f"  server {{ listen 127.0.0.1:{up}; location / {{ return 200 'ok\\n'; }} }} }}\n")
    with open(f"{WORK}/nx.conf", "w") as f:
        f.write(f"worker_processes 1; daemon off; pid {WORK}/nx.pid; error_log {WORK}/nx-error.log;\n"
                f"events {{ worker_connections 4096; }}\n"
                f"http {{ access_log off; {temps}\n"
                f"  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}\n"
                f"  server {{ listen 127.0.0.1:{nx}; location / {{ proxy_pass http://up; proxy_http_version 1.1;"
                f" proxy_set_header Connection \"\"; }} }} }}\n")
    with open(f"{WORK}/ha.cfg", "w") as f:
        f.write(f"global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n"
                f"  timeout client 30s\n  timeout server 30s\n  http-reuse always\n"
                f"frontend f\n  bind 127.0.0.1:{ha}\n  default_backend b\n"
                f"backend b\n  server s1 127.0.0.1:{up}\n")
    with open(f"{WORK}/Caddyfile", "w") as f:
        f.write("{\n  admin off\n  auto_https off\n}\n"
                f"http://127.0.0.1:{cd} {{\n  reverse_proxy 127.0.0.1:{up}\n}}\n")
    # obsgate with every check on: glc token, realm, scope, allowed subnet, LBAC header mode
    payload = json.dumps({"o": "1", "n": "bench-load", "k": "loadbenchsecret0123456789abcdefghij", "m": {"r": "local"}})
    token = "glc_" + base64.b64encode(payload.encode()).decode()
    digest = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    with open(f"{WORK}/policies.yaml", "w") as f:
        f.write("tenants:\n  - name: bench\naccess_policies:\n  - name: bench-read\n    scopes: [metrics:read]\n"
                "    realms:\n      - tenant: bench\n        label_policies:\n          - selector: '{env=\"prod\"}'\n"
                "    conditions:\n      allowed_subnets: [\"127.0.0.0/8\"]\n"
                f"tokens:\n  - name: load\n    access_policy: bench-read\n    hash: \"{digest}\"\n")
    with open(f"{WORK}/gateway.yaml", "w") as f:
        f.write(f"server:\n  listen: \"127.0.0.1:{gw}\"\nstore:\n  policy_files: [policies.yaml]\n"
                f"backends:\n  metrics:\n    kind: mimir\n    url: \"http://127.0.0.1:{up}\"\n"
                f"lbac:\n  mode: header\nlog:\n  level: warn\n")
    auth = "Basic " + base64.b64encode(f"bench:{token}".encode()).decode()

    results = {}
    if ONLY & set(SIDE_BY_SIDE):
        procs = []
        log = open(f"{WORK}/procs.log", "w")
        stop = threading.Event()
        try:
            # every target is started once and stays up; the rounds interleave them so that a noisy
            # neighbour on this machine hits all of them alike, and the report takes the medians
            targets = {}
            upstream = start(["nginx", "-c", f"{WORK}/up.conf", "-p", WORK], log)
            procs.append(upstream)
            wait_port(up)
            targets["direct"] = (f"http://127.0.0.1:{up}{PATH}", None, lambda: [])
            if "obsgate" in ONLY:
                env = dict(os.environ, TOKIO_WORKER_THREADS="1")
                g = start([OBSGATE, "serve", "--config", f"{WORK}/gateway.yaml"], log, env=env)
                procs.append(g)
                wait_port(gw)
                targets["obsgate"] = (f"http://127.0.0.1:{gw}{PATH}", auth, lambda: [g.pid])
                # a policy reload every second for the whole run (rename-over, as editors do)
                def reload_every_second():
                    text = open(f"{WORK}/policies.yaml").read()
                    while not stop.wait(1.0):
                        with open(f"{WORK}/policies.yaml.tmp", "w") as f:
                            f.write(text)
                        os.replace(f"{WORK}/policies.yaml.tmp", f"{WORK}/policies.yaml")
                threading.Thread(target=reload_every_second, daemon=True).start()
            if "floor" in ONLY:
                fp = start([FLOOR, f"127.0.0.1:{fl}", f"127.0.0.1:{up}"], log)
                procs.append(fp)
                wait_port(fl)
                targets["floor"] = (f"http://127.0.0.1:{fl}{PATH}", auth, lambda: [fp.pid])
            if "caddy" in ONLY:
                env = dict(os.environ, GOMAXPROCS="1", HOME=WORK, XDG_DATA_HOME=WORK, XDG_CONFIG_HOME=WORK)
                c = start(["caddy", "run", "--config", f"{WORK}/Caddyfile", "--adapter", "caddyfile"], log, env=env)
                procs.append(c)
                wait_port(cd)
                targets["caddy"] = (f"http://127.0.0.1:{cd}{PATH}", auth, lambda: [c.pid])
            if "nginx" in ONLY:
                n = start(["nginx", "-c", f"{WORK}/nx.conf", "-p", WORK], log)
                procs.append(n)
                wait_port(nx)
                targets["nginx"] = (f"http://127.0.0.1:{nx}{PATH}", auth, lambda: family(n.pid))
            if "haproxy" in ONLY:
                h = start(["haproxy", "-f", f"{WORK}/ha.cfg"], log)
                procs.append(h)
                wait_port(ha)
                targets["haproxy"] = (f"http://127.0.0.1:{ha}{PATH}", auth, lambda: [h.pid])
            rounds = {name: [] for name in targets if name in ONLY}
            for r in range(REPEAT):
                print(f"-- round {r + 1}/{REPEAT}", flush=True)
                for name in rounds:
                    url, a, pids = targets[name]
                    rounds[name].append(measure(name, url, a, pids))
            stop.set()
            if "obsgate" in targets:
                metrics = subprocess.run(["curl", "-s", f"http://127.0.0.1:{gw}/metrics"],
                                         capture_output=True, text=True).stdout
                m = re.search(r'^obsgate_store_reloads_total\{result="success"\} (\d+)', metrics, re.M)
                RELOADS[0] = int(m.group(1)) - 1 if m else 0
            results = {name: median_of(rs) for name, rs in rounds.items()}
        finally:
            stop.set()
            for p in procs:
                stop_proc(p)
            log.close()
    replicas = run_replicas(auth, temps) if "replicas" in ONLY else None

    report(results, replicas)
    failed = sum(r[m]["errors"] for r in results.values() for m in r)
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


def report(results, replicas=None):
    lines = []
    if results:
        cpu = lambda n: results.get(n, {}).get("saturation", {}).get("cpu_us_per_req", float("nan"))
        ng, og, fg, cg = cpu("nginx"), cpu("obsgate"), cpu("floor"), cpu("caddy")
        lines += [
            f"Load benchmark: {CONNECTIONS} connections, {DURATION} s per run, medians of {REPEAT} interleaved rounds;",
            "wrk on core 0, proxy and upstream on core 1;",
            f"fixed rate ≈ {RATE} req/s. obsgate runs every check (glc token, realm, scope, subnet, LBAC header mode).",
            "",
            "| target | mode | req/s | p50 ms | p99 ms | proxy CPU µs/req | user | sys | failed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in results.items():
            for mode in ("saturation", "fixed"):
                x = r[mode]
                us = lambda k: "—" if x[k] != x[k] else f"{x[k]:.1f}"
                lines.append(f"| {name} | {mode} | {x['rps']:.0f} | {x['p50']:.3f} | {x['p99']:.3f} | "
                             f"{us('cpu_us_per_req')} | {us('user_us_per_req')} | {us('sys_us_per_req')} | {x['errors']} |")
        lines += ["", f"obsgate CPU per request = {og / ng:.2f}× nginx's (target ≤ 1.0×), "
                      f"{og / fg:.2f}× the bare hyper proxy's (target ≤ 1.05×), "
                      f"{cg / og:.2f}× less than Caddy's (target ≥ 4×).",
                  f"Policy reloads completed during obsgate's runs (one per second): {RELOADS[0]}."]
    if replicas is not None:
        lines += ([""] if lines else []) + replicas_lines(replicas)
    md = "\n".join(lines) + "\n"
    with open(os.path.join(OUT, "load.md"), "w") as f:
        f.write(md)
    print(md)
    # a bar chart of CPU per request and req/s at saturation (side-by-side targets only)
    names = [n for n in results if n != "direct"]
    if not names:
        return
    cpus = [results[n]["saturation"]["cpu_us_per_req"] for n in names]
    rps = [results[n]["saturation"]["rps"] for n in results]
    w, h, bar = 640, 300, 60
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           '<text x="10" y="18" font-size="14">Proxy CPU per request (µs), saturation</text>']
    top = max(cpus) or 1
    for i, (n, c) in enumerate(zip(names, cpus)):
        bh = 200 * c / top
        x = 40 + i * (bar + 40)
        svg.append(f'<rect x="{x}" y="{260 - bh:.0f}" width="{bar}" height="{bh:.0f}" fill="#4a7bd0"/>')
        svg.append(f'<text x="{x}" y="{255 - bh:.0f}">{c:.1f}</text><text x="{x}" y="278">{n}</text>')
    svg.append('<text x="360" y="18" font-size="14">req/s, saturation</text>')
    topr = max(rps) or 1
    for i, (n, r) in enumerate(zip(results, rps)):
        bh = 200 * r / topr
        x = 360 + i * 68
        svg.append(f'<rect x="{x}" y="{260 - bh:.0f}" width="48" height="{bh:.0f}" fill="#d08a4a"/>')
        svg.append(f'<text x="{x}" y="{255 - bh:.0f}" font-size="10">{r:.0f}</text><text x="{x}" y="278" font-size="10">{n}</text>')
    svg.append("</svg>")
    with open(os.path.join(OUT, "load.svg"), "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
