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

DURATION = int(os.environ.get("DURATION", "10"))
RATE = int(os.environ.get("RATE", "4000"))  # fixed-rate run, requests/s in total
CONNECTIONS = int(os.environ.get("CONNECTIONS", "32"))
# ONLY=obsgate,nginx runs a subset (for tuning); PERF=1 records obsgate's saturation run with perf
ONLY = set(filter(None, os.environ.get("ONLY", "direct,obsgate,nginx,haproxy").split(",")))
PERF = os.environ.get("PERF") == "1"
REPEAT = int(os.environ.get("REPEAT", "3"))  # interleaved rounds; the report shows medians
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "target", "bench-report")
OBSGATE = os.path.join(ROOT, "target", "release", "obsgate")
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


def start(cmd, log, core="1", env=None):
    return subprocess.Popen(["taskset", "-c", core] + cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def wrk(url, auth, rate=None):
    script = os.path.join(WORK, "wrk.lua")
    with open(script, "w") as f:
        f.write('wrk.headers["Authorization"] = "%s"\n' % auth if auth else "")
        if rate:
            # each connection waits so that all together send about `rate` requests per second
            f.write("function delay() return %d end\n" % max(1, int(CONNECTIONS * 1000 / rate)))
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}s", "--latency", "-s", script, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=DURATION + 60).stdout
    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    for m in re.finditer(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"requests": reqs, "rps": rps, "p50": lat("50"), "p99": lat("99"), "errors": errors, "raw": out}


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
    up, nx, ha, gw = free_port(), free_port(), free_port(), free_port()
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
            if p.poll() is None:
                p.kill()
                p.wait()
        log.close()

    report(results)
    failed = sum(r[m]["errors"] for r in results.values() for m in r)
    shutil.rmtree(WORK, ignore_errors=True)
    if failed:
        raise SystemExit(f"{failed} failed requests")


def report(results):
    ng = results.get("nginx", {}).get("saturation", {}).get("cpu_us_per_req", float("nan"))
    og = results.get("obsgate", {}).get("saturation", {}).get("cpu_us_per_req", float("nan"))
    lines = [
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
    lines += ["", f"obsgate CPU per request = {og / ng:.2f}× nginx's (target ≤ 0.80×).",
              f"Policy reloads completed during obsgate's runs (one per second): {RELOADS[0]}."]
    md = "\n".join(lines) + "\n"
    with open(os.path.join(OUT, "load.md"), "w") as f:
        f.write(md)
    # a bar chart of CPU per request and req/s at saturation
    names = [n for n in results if n != "direct"]
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
    print(md)


if __name__ == "__main__":
    main()
