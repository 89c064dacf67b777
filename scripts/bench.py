#!/usr/bin/env python3
"""The measurements behind docs/performance.md; run it through scripts/bench,
which installs the tools and builds the binaries first.

Everything listens on 127.0.0.1 and everything started here is stopped on
exit, however the script ends. Load runs are bounded by wrk's -d.
"""

import argparse
import atexit
import http.client
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
CREDVEND = os.path.join(RELEASE, "credvend")
FAKE_STS = os.path.join(RELEASE, "examples", "fake_sts")
BASELINE = os.path.join(RELEASE, "examples", "bench_baseline")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TICK = os.sysconf("SC_CLK_TCK")
CONNECTIONS = [1, 32, 256]

STARTED = []  # Popen objects, each the leader of its own process group


def stop_all():
    for p in reversed(STARTED):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    for p in reversed(STARTED):
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    STARTED.clear()


def on_signal(signum, _frame):
    sys.exit(128 + signum)


def start(argv, env=None, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL):
    p = subprocess.Popen(
        argv, env=env, stdout=stdout, stderr=stderr, start_new_session=True, text=True
    )
    STARTED.append(p)
    return p


def stop(p):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if p in STARTED:
        STARTED.remove(p)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def read_listening(p):
    line = p.stdout.readline()
    if not line.startswith("listening "):
        raise RuntimeError(f"unexpected first line: {line!r}")
    return line.split()[1]


def http_req(port, method, path, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    head = r.getheaders()
    c.close()
    return r.status, head, body


def raw_head_size(port, path, headers):
    """Bytes of the response head, as sent on the wire."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
    return data.index(b"\r\n\r\n") + 4


# --- process figures ----------------------------------------------------------


def group_pids(leader):
    """The leader and every process in its process group (nginx workers)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == leader:  # field 5, pgrp
            out.append(int(d))
    return out or [leader]


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def machine_busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle


class RssSampler:
    """Samples the summed RSS of some processes every 50 ms; keeps the peak."""

    def __init__(self, pids):
        self.pids, self.peak, self._stop = pids, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pids))
            self._stop.wait(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._t.join()


# --- load ---------------------------------------------------------------------

DONE_HOOK = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,' ..
    '"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read,
    e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
"""


class Load:
    def __init__(self, workdir):
        self.done_lua = os.path.join(workdir, "done.lua")
        with open(self.done_lua, "w") as f:
            f.write(DONE_HOOK)

    def run(self, url, conns, seconds, headers=None, script=None, watch=None):
        """One wrk run. `watch` is the process-group leader of the server:
        its CPU time and peak RSS are measured over the run, and so is the
        CPU time used by everything else on the machine (noise)."""
        threads = 1 if conns == 1 else 2
        argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "2s"]
        argv += ["-s", script or self.done_lua]
        for k, v in (headers or {}).items():
            argv += ["-H", f"{k}: {v}"]
        argv.append(url)
        pids = group_pids(watch) if watch else []
        busy0, cpu0 = machine_busy_ticks(), cpu_ticks(pids)
        self_before = os.times()
        t0_ms = time.time() * 1e3
        with RssSampler(pids) as rss:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        self_after = os.times()
        cpu1, busy1 = cpu_ticks(pids), machine_busy_ticks()
        line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
        r = json.loads(line[6:])
        r["window_ms"] = (t0_ms, time.time() * 1e3)
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
        r["errors"] = sum(r[k] for k in r if k.startswith("err_"))
        wrk_ticks = round(
            (self_after.children_user + self_after.children_system
             - self_before.children_user - self_before.children_system) * TICK
        )
        server_ticks = cpu1 - cpu0
        r["server_cpu_s"] = server_ticks / TICK
        r["cpu_ms_per_10k"] = 1e3 * r["server_cpu_s"] * 1e4 / max(1, r["requests"])
        r["wrk_cpu_s"] = wrk_ticks / TICK
        other = (busy1 - busy0) - server_ticks - wrk_ticks
        r["other_cpu_share"] = max(0.0, other / TICK / (r["duration_us"] / 1e6))
        r["rss_peak_kib"] = rss.peak
        return r


def multi_role_script(workdir, targets):
    """A wrk script that walks round every role, each with its own token."""
    path = os.path.join(workdir, f"roles{len(targets)}.lua")
    with open(path, "w") as f:
        f.write("local targets = {\n")
        for p, tok in targets:
            f.write(f'  {{"{p}", "{tok}"}},\n')
        f.write("}\nlocal i = 0\n")
        f.write(
            "request = function()\n  i = i % #targets + 1\n"
            '  return wrk.format("GET", targets[i][1], {["Authorization"] = targets[i][2]})\n'
            "end\n"
        )
        f.write(DONE_HOOK)
    return path


# --- the contenders -------------------------------------------------------------


class FakeSts:
    def __init__(self):
        self.p = start([FAKE_STS])
        self.addr = read_listening(self.p)
        self.port = int(self.addr.rsplit(":", 1)[1])
        self.url = f"http://{self.addr}"

    def calls(self):
        _, _, body = http_req(self.port, "GET", "/calls")
        return [int(x) for x in body.split()]


class Credvend:
    """One credvend serve process with its own HOME, tokens and ports."""

    def __init__(self, workdir, sts, roles=0, flag_role=True, extra=()):
        self.dir = tempfile.mkdtemp(prefix="credvend-", dir=workdir)
        home = os.path.join(self.dir, "home")
        os.makedirs(home)
        self.port, self.admin, self.imds = free_port(), free_port(), free_port()
        self.token = self._token("flag")
        self.targets = []
        argv = [CREDVEND, "serve", "--log-format", "json", "--log-level", "info"]
        argv += ["--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin}"]
        # Stopping is not measured: skip the 5 s of serving while not ready.
        argv += ["--shutdown-delay", "0s", "--drain-timeout", "1s"]
        if flag_role:
            argv += [
                "--role-arn", "arn:aws:iam::123456789012:role/bench",
                "--region", "us-east-1", "--sts-endpoint", sts.url,
                "--token-file", os.path.join(self.dir, "flag.token"),
                "--imds-listen", f"127.0.0.1:{self.imds}",
            ]
        if roles:
            conf = os.path.join(self.dir, "credvend.toml")
            with open(conf, "w") as f:
                for i in range(roles):
                    name = f"r{i:04d}"
                    tok = self._token(name)
                    self.targets.append((f"/v1/credentials/{name}", tok))
                    f.write(
                        f'[roles.{name}]\nrole_arn = "arn:aws:iam::123456789012:role/{name}"\n'
                        f'region = "us-east-1"\nsts_endpoint = "{sts.url}"\n'
                        f'token_file = "{self.dir}/{name}.token"\n\n'
                    )
            argv += ["--config", conf]
        argv += list(extra)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "AWS_ACCESS_KEY_ID": "AKIDBENCHMARKONLY000",
            "AWS_SECRET_ACCESS_KEY": "benchmark-only-not-a-real-secret-000000",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.path.join(home, "none"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(home, "none"),
        }
        self.ready = threading.Event()
        self.t_ready = None
        self.log_tail = []
        self.t_wall0 = time.time()
        self.t0 = time.monotonic()
        self.p = start(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        threading.Thread(target=self._logs, daemon=True).start()

    def _token(self, name):
        tok = secrets.token_urlsafe(32)
        path = os.path.join(self.dir, f"{name}.token")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, tok.encode())
        os.close(fd)
        return tok

    def _logs(self):
        for line in self.p.stderr:
            self.log_tail = (self.log_tail + [line.rstrip()])[-20:]
            if not self.ready.is_set() and "ready: every role has credentials" in line:
                self.t_ready = time.monotonic()
                self.ready.set()

    def wait_ready(self, timeout):
        if not self.ready.wait(timeout):
            raise RuntimeError("credvend not ready:\n" + "\n".join(self.log_tail))
        return self.t_ready - self.t0

    def imds_token(self):
        st, _, body = http_req(
            self.imds, "PUT", "/latest/api/token",
            {"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
        )
        assert st == 200, st
        return body.decode()


def nginx_start(workdir, body_file, threads):
    """nginx as a user would set it up to serve one static file well."""
    port = free_port()
    ndir = os.path.join(workdir, "nginx")
    os.makedirs(os.path.join(ndir, "tmp"), exist_ok=True)
    conf = os.path.join(ndir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes {threads};
daemon off;
pid {ndir}/nginx.pid;
error_log {ndir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    etag off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    open_file_cache max=64 inactive=60s;
    client_body_temp_path {ndir}/tmp/body;
    proxy_temp_path {ndir}/tmp/proxy;
    fastcgi_temp_path {ndir}/tmp/fastcgi;
    uwsgi_temp_path {ndir}/tmp/uwsgi;
    scgi_temp_path {ndir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /v1/credentials {{
            default_type application/json;
            add_header Cache-Control no-store;
            alias {body_file};
        }}
    }}
}}
""")
    p = start([NGINX, "-p", ndir, "-c", conf, "-e", f"{ndir}/error.log"], stdout=subprocess.DEVNULL)
    wait_port(port)
    return p, port


def baseline_start(body_file):
    p = start([BASELINE, body_file])
    addr = read_listening(p)
    return p, int(addr.rsplit(":", 1)[1])


# --- the measurements --------------------------------------------------------------


def log(msg):
    print(msg, flush=True)


def guarded(load, label, *args, **kw):
    """A load run, repeated once when something else took more than half a
    core meanwhile; refuses any run that saw an error or a non-2xx answer,
    since a refused request is cheaper than a served one."""
    r = load.run(*args, **kw)
    if r["other_cpu_share"] > 0.5:
        log(f"   {label}: {r['other_cpu_share']:.2f} core busy elsewhere; repeating")
        r2 = load.run(*args, **kw)
        r["repeated"] = r2["repeated"] = True
        if r2["other_cpu_share"] < r["other_cpu_share"]:
            r = r2
    if r["errors"]:
        raise RuntimeError(f"{label}: {r['errors']} errors or non-2xx answers: {r}")
    log(
        f"   {label:<28} {r['rps']:>9.0f} req/s  p50 {r['p50']:>5} us  p99 {r['p99']:>5} us"
        f"  p99.9 {r['p999']:>6} us  other load {r['other_cpu_share']:.2f}"
    )
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench"))
    args = ap.parse_args()
    d = args.duration

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    work = tempfile.mkdtemp(prefix="credvend-bench-")
    # atexit runs in reverse: stop every process first, then remove files.
    atexit.register(shutil.rmtree, work, True)
    atexit.register(stop_all)
    os.chmod(work, 0o755)
    os.makedirs(args.out, exist_ok=True)
    load = Load(work)
    res = {"machine": machine(), "duration_s": d}
    t_begin = time.monotonic()

    sts = FakeSts()

    # 1. Start to ready, five times, one role. The fake STS answers within a
    #    fraction of a millisecond; its share is taken out below.
    log("==> start to ready (1 role, 5 starts)")
    starts = []
    for _ in range(5):
        n0 = len(sts.calls())
        cv = Credvend(work, sts)
        total = cv.wait_ready(10)
        calls = sts.calls()[n0:]
        stop(cv.p)
        starts.append({
            "total_ms": total * 1e3,
            "before_sts_ms": (calls[0] / 1e3 - cv.t_wall0) * 1e3 if calls else None,
            "sts_calls": len(calls),
        })
    res["start_to_ready"] = starts
    rt = sts_round_trip(sts)
    res["sts_round_trip_ms"] = rt
    med = statistics.median(s["total_ms"] for s in starts)
    log(f"   median {med:.1f} ms (fake STS round trip {rt:.2f} ms)")

    # 2. The contenders, at each connection count back to back.
    cv = Credvend(work, sts)
    cv.wait_ready(10)
    time.sleep(1)
    res["rss_idle_1_role_kib"] = rss_kib([cv.p.pid])
    st, _, body = http_req(cv.port, "GET", "/v1/credentials", {"Authorization": cv.token})
    assert st == 200, st
    body_file = os.path.join(work, "www", "credentials.json")
    os.makedirs(os.path.dirname(body_file))
    with open(body_file, "wb") as f:
        f.write(body)
    os.chmod(os.path.dirname(body_file), 0o755)
    os.chmod(body_file, 0o644)
    itok = cv.imds_token()
    _, _, role = http_req(
        cv.imds, "GET", "/latest/meta-data/iam/security-credentials/",
        {"X-aws-ec2-metadata-token": itok},
    )
    imds_path = "/latest/meta-data/iam/security-credentials/" + role.decode().strip()
    st, _, ibody = http_req(cv.imds, "GET", imds_path, {"X-aws-ec2-metadata-token": itok})
    assert st == 200, st
    threads = os.cpu_count()
    ngx, ngx_port = nginx_start(work, body_file, threads)
    base, base_port = baseline_start(body_file)

    auth = {"Authorization": cv.token}
    contenders = {
        "nginx static file": (f"http://127.0.0.1:{ngx_port}/v1/credentials", auth, ngx.pid),
        "hyper baseline": (f"http://127.0.0.1:{base_port}/v1/credentials", auth, base.pid),
        "credvend container": (f"http://127.0.0.1:{cv.port}/v1/credentials", auth, cv.p.pid),
        "credvend IMDS": (
            f"http://127.0.0.1:{cv.imds}{imds_path}",
            {"X-aws-ec2-metadata-token": itok}, cv.p.pid,
        ),
    }
    res["bodies"] = {"container": len(body), "imds": len(ibody)}
    res["head_bytes"] = {
        name: raw_head_size(int(url.split(":")[2].split("/")[0]), "/" + url.split("/", 3)[3], h)
        for name, (url, h, _) in contenders.items()
    }
    log(f"==> contenders, {d} s per run; body {len(body)} B (IMDS {len(ibody)} B)")
    for name, (url, h, pid) in contenders.items():
        load.run(url, 32, 2, headers=h, watch=pid)  # warm-up, not recorded
    runs = {}
    for c in CONNECTIONS:
        log(f"-- {c} connection(s)")
        for name, (url, h, pid) in contenders.items():
            runs[f"{name}|{c}"] = guarded(load, name, url, c, d, headers=h, watch=pid)
    res["runs"] = runs
    res["rss_load_1_role_kib"] = max(runs[f"credvend {k}|{c}"]["rss_peak_kib"]
                                     for k in ("container", "IMDS") for c in CONNECTIONS)
    stop(ngx)
    stop(base)

    # 3. Latency while renewals swap the credentials: the same load on a
    #    credvend with 1 h sessions and on one with 20 s sessions.
    log(f"==> renewal under load, 32 connections, {2 * d} s each")
    swap = {}
    for label in ("no renewal", "renewals"):
        if label == "no renewal":
            inst = cv
        else:
            # 20 s sessions renew every 5 to 7 s (lead: two thirds of the
            # session; jitter: a fifth of the rest).
            stop(cv.p)
            inst = Credvend(work, sts, extra=["--duration", "20s", "--testing-short-sessions"])
            inst.wait_ready(10)
        r = guarded(load, label, f"http://127.0.0.1:{inst.port}/v1/credentials", 32, 2 * d,
                    headers={"Authorization": inst.token}, watch=inst.p.pid)
        t0, t1 = r["window_ms"]
        r["renewals"] = sum(1 for t in sts.calls() if t0 <= t <= t1)
        swap[label] = r
        log(f"   {label}: {r['renewals']} renewal(s), max {r['max']} us")
    res["swap"] = swap
    stop(inst.p)

    # 4. Memory with many roles, and the STS spread of 1000 roles starting at
    #    once with the default --sts-rate.
    res["roles"] = {}
    for n in (100, 1000):
        log(f"==> {n} roles (default --sts-rate 10)")
        n0 = len(sts.calls())
        many = Credvend(work, sts, roles=n, flag_role=False)
        took = many.wait_ready(n / 10 + 60)
        calls = sts.calls()[n0:]
        time.sleep(1)
        idle = rss_kib([many.p.pid])
        script = multi_role_script(work, many.targets)
        r = guarded(load, f"{n} roles round robin", f"http://127.0.0.1:{many.port}/", 32, d,
                    script=script, watch=many.p.pid)
        res["roles"][n] = {
            "ready_s": took, "rss_idle_kib": idle, "rss_load_kib": r["rss_peak_kib"],
            "rps": r["rps"], "p99": r["p99"], "sts": spread(calls),
        }
        log(f"   ready in {took:.1f} s; RSS idle {idle / 1024:.1f} MiB, "
            f"under load {r['rss_peak_kib'] / 1024:.1f} MiB; STS {spread(calls)}")
        stop(many.p)

    res["binary_bytes"] = os.path.getsize(CREDVEND)
    res["wall_s"] = time.monotonic() - t_begin
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    report = render(res)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(report)
    print()
    print(report)


def sts_round_trip(sts):
    """Median time of one STS call to the fake, from a fresh connection."""
    times = []
    form = "Action=AssumeRole&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fprobe" \
           "&RoleSessionName=probe&DurationSeconds=3600&Version=2011-06-15"
    for _ in range(5):
        t = time.monotonic()
        c = http.client.HTTPConnection("127.0.0.1", sts.port, timeout=5)
        c.request("POST", "/", body=form,
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
        c.getresponse().read()
        c.close()
        times.append((time.monotonic() - t) * 1e3)
    return statistics.median(times)


def spread(calls_ms):
    """Calls per calendar second and in any sliding one-second window."""
    if not calls_ms:
        return {"calls": 0}
    per_sec = {}
    for t in calls_ms:
        per_sec[t // 1000] = per_sec.get(t // 1000, 0) + 1
    s = sorted(calls_ms)
    window, j = 0, 0
    for i, t in enumerate(s):
        while s[j] <= t - 1000:
            j += 1
        window = max(window, i - j + 1)
    return {
        "calls": len(calls_ms),
        "max_per_second": max(per_sec.values()),
        "max_in_any_1s_window": window,
        "span_s": (s[-1] - s[0]) / 1e3,
    }


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ver = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    ngx = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    return {
        "nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
        "wrk": ver[0] if ver else "", "nginx": ngx,
    }


def render(res):
    m = res["machine"]
    runs = res["runs"]
    out = [
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}; {m['wrk']}; {m['nginx']}",
        f"Load runs: {res['duration_s']} s each; wrk -t1 at 1 connection, -t2 otherwise; "
        f"body {res['bodies']['container']} B (IMDS {res['bodies']['imds']} B)",
        "",
        "| contender | conns | req/s | p50 µs | p99 µs | p99.9 µs | max µs | vs nginx | vs hyper | "
        "p99 vs hyper | CPU ms / 10k req | RSS peak MiB | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in CONNECTIONS:
        ngx, hyp = runs[f"nginx static file|{c}"], runs[f"hyper baseline|{c}"]
        for name in ("nginx static file", "hyper baseline", "credvend container", "credvend IMDS"):
            r = runs[f"{name}|{c}"]
            out.append(
                f"| {name} | {c} | {r['rps']:.0f} | {r['p50']} | {r['p99']} | {r['p999']} | "
                f"{r['max']} | {r['rps'] / ngx['rps']:.2f}x | {r['rps'] / hyp['rps']:.2f}x | "
                f"{r['p99'] / max(1, hyp['p99']):.2f}x | {r['cpu_ms_per_10k']:.0f} | "
                f"{r['rss_peak_kib'] / 1024:.1f} | "
                f"{r['other_cpu_share']:.2f}{' (repeated)' if r.get('repeated') else ''} |"
            )
    heads = ", ".join(f"{k} {v} B" for k, v in res["head_bytes"].items())
    out += ["", f"Response head sizes: {heads}.", ""]

    sw = res["swap"]
    out += [
        "| renewal under load (32 conns) | renewals | req/s | p99 µs | p99.9 µs | max µs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k, r in sw.items():
        out.append(f"| {k} | {r['renewals']} | {r['rps']:.0f} | {r['p99']} | {r['p999']} | {r['max']} |")

    starts = res["start_to_ready"]
    tot = sorted(s["total_ms"] for s in starts)
    pre = sorted(s["before_sts_ms"] for s in starts if s["before_sts_ms"] is not None)
    out += [
        "",
        "| figure | value |",
        "|---|---|",
        f"| start to ready, 1 role (median of 5; min / max) | {statistics.median(tot):.1f} ms "
        f"({tot[0]:.1f} / {tot[-1]:.1f}) |",
        f"| of which before the first STS call arrives (median) | "
        f"{statistics.median(pre):.1f} ms |" if pre else "| before the first STS call | n/a |",
        f"| fake STS round trip (median) | {res['sts_round_trip_ms']:.2f} ms |",
        f"| STS calls during one start (1 role) | {starts[0]['sts_calls']} |",
        f"| release binary (stripped) | {res['binary_bytes'] / 2**20:.2f} MiB |",
        f"| RSS, 1 role, idle | {res['rss_idle_1_role_kib'] / 1024:.1f} MiB |",
        f"| RSS, 1 role, peak under load (256 conns) | {res['rss_load_1_role_kib'] / 1024:.1f} MiB |",
    ]
    for n, r in res["roles"].items():
        s = r["sts"]
        out += [
            f"| RSS, {n} roles, idle / under load | {r['rss_idle_kib'] / 1024:.1f} / "
            f"{r['rss_load_kib'] / 1024:.1f} MiB |",
            f"| {n} roles: ready after; req/s round robin (32 conns) | {r['ready_s']:.1f} s; "
            f"{r['rps']:.0f} |",
            f"| {n} roles: STS calls; max per second; max in any 1 s window; span | "
            f"{s['calls']}; {s.get('max_per_second')}; {s.get('max_in_any_1s_window')}; "
            f"{s.get('span_s', 0):.1f} s |",
        ]
    out += ["", f"Whole run: {res['wall_s']:.0f} s.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
