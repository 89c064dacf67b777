"""credvend's SDK compatibility suite (issue 7).

Starts moto (the STS emulator), then for every (client, protocol) cell its
own credvend with 30 s sessions that rotate every 8 to 10 s, and one
long-lived real client that calls GetCallerIdentity about once a second and
reports, per call, whether it worked and which access key id it signed with.
Each cell checks, in this order:

  1. identity  the first call works and reports assumed-role/demo/<session>;
  2. rotation  across two credvend rotations: no error, no call signed with a
               key past its real expiry; requests to credvend per rotation;
  4. restart   credvend is SIGKILLed and started again on the same ports and
               token file: the client gets credentials of the new process by
               itself (errors while it is down are counted, not failed);
  3. token     the auth token file is rotated: across two more rotations no
               error, and the client fetched new credentials after it.

(Restart comes before the token rotation so that each check is about one
thing: the previous token's grace period lives in the process's memory.)

Writes docs/compatibility.md and ends with the line "N passed, N failed".
Exits non-zero when a check fails that is not a documented SDK limitation.
Everything runs on 127.0.0.1, every wait is bounded, and every process it
starts is stopped on the way out.
"""

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CREDVEND = ROOT / "target/debug/credvend"
RUST_PROBE = ROOT / "target/debug/examples/compat_probe"
VENV = Path(os.environ.get("CREDVEND_TEST_VENV", ROOT / ".venv-test"))
OLD_VENV = Path(os.environ.get("CREDVEND_COMPAT_OLD_VENV", ROOT / ".venv-compat-botocore"))
JS_DIR = ROOT / "tests/compat/js"
HERE = ROOT / "tests/compat"

ROLE_ARN = "arn:aws:iam::123456789012:role/demo"
ACCOUNT = "123456789012"
# A loopback port nothing listens on, for the IMDS link of container cells.
CLOSED = "http://127.0.0.1:9"
# Session shape: rotations every 8-10 s (see the module docstring).
DURATION, LEAD = "30s", "20s"
ROTATIONS = 2  # per phase
CALL_INTERVAL = 1.0
CLIENT_MAX_SECS = 240  # the clients' own bound; the suite stops them sooner
PHASE_TIMEOUT = 45  # two rotations take 16-20 s
RECOVER_TIMEOUT = 40

CHECKS = ["identity", "rotation", "token", "restart"]

# Where a check fails because of the SDK's own behaviour, not credvend's.
# A failing check listed here is reported as a limitation only when its
# note matches `when` and not `unless` (so another kind of failure in the
# same cell still fails the suite); anything else that fails fails it.
BOTOCORE_IMDS = {
    "id": "L1",
    "when": r"past its real expiry",
    "unless": r"error",
    "why": (
        "botocore's IMDS fetcher moves the expiry of any credential with less than "
        "10 min + 2-10 min of jitter left to now + that window (static stability), and "
        "only refreshes inside 15 min of that new expiry, so with this suite's 30 s "
        "sessions it keeps a key for minutes after it really expired without asking "
        "credvend (a real STS would answer ExpiredToken). credvend's default 1 h "
        "sessions are always served with more than 35 min left, where this never fires"
    ),
}
JS_CONTAINER_METADATA = {
    "id": "L2",
    "when": r"Error response received from instance metadata service",
    "unless": r"",
    "why": (
        "fromContainerMetadata sends only AWS_CONTAINER_AUTHORIZATION_TOKEN and ignores "
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, so with credvend's documented variables "
        "it sends no Authorization header and gets 401; the token-variable row shows it "
        "working when given the token's value"
    ),
}
LIMITS = {
    **{(c, "imds", k): BOTOCORE_IMDS for c in ["boto3", "botocore-old"] for k in ["rotation", "token"]},
    **{
        (c, "imds", "restart"): dict(BOTOCORE_IMDS, when=r"past its real expiry, without asking credvend again")
        for c in ["boto3", "botocore-old"]
    },
    **{("js-fromContainerMetadata", "container", k): JS_CONTAINER_METADATA for k in CHECKS},
}

PROCS = []  # every process started, stopped in cleanup()
PROCS_LOCK = threading.Lock()


def spawn(argv, **kw):
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kw)
    with PROCS_LOCK:
        PROCS.append(p)
    return p


def stop(p, grace=3.0):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def cleanup():
    with PROCS_LOCK:
        procs = list(PROCS)
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass


WORKROOT = []  # the scratch directory, removed on the way out


def on_signal(signum, _frame):
    # Worker threads may be in the middle of a bounded wait: do not wait for
    # them, stop every process now and leave.
    cleanup()
    for d in WORKROOT:
        shutil.rmtree(d, ignore_errors=True)
    print(f"compat: stopped by signal {signum}", file=sys.stderr, flush=True)
    os._exit(128 + signum)


# ---------------------------------------------------------------- helpers


def http_get(url, headers=None, timeout=3.0):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def parse_metrics(text):
    """[(name, {label: value}, float)] from the Prometheus text format."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def metric_sum(series, name, **labels):
    return sum(
        v for n, ls, v in series if n == name and all(ls.get(k) == x for k, x in labels.items())
    )


def iso_to_epoch(s):
    return time.mktime(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone


def write_token(path, token):
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.replace(tmp, path)


def wait_for(pred, timeout, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None


class Moto:
    SCRIPT = (
        "import sys\n"
        "from moto.server import ThreadedMotoServer\n"
        "s = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
        "s.start()\n"
        "print(s._server.server_port, flush=True)\n"
        "sys.stdin.read()\n"
        "s.stop()\n"
    )

    def __init__(self):
        self.proc = subprocess.Popen(
            [str(VENV / "bin/python"), "-c", self.SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        with PROCS_LOCK:
            PROCS.append(self.proc)
        self.port = int(self.proc.stdout.readline().strip())
        self.url = f"http://127.0.0.1:{self.port}"


# ---------------------------------------------------------------- credvend


class Daemon:
    """One credvend for one cell; restartable on the same ports."""

    def __init__(self, moto, cell_id, workdir, imds):
        self.moto, self.imds_on, self.dir = moto, imds, workdir
        self.session = f"compat-{cell_id}"
        self.token_file = workdir / "token"
        self.proc = None
        self.logs = []
        self.addrs = {}
        self.instance = 0
        self.own_requests = 0  # our own GETs of the container endpoint
        self._auth = None  # the token credvend holds as current
        self._reloads = 0
        self.keys = {}  # access key id -> {"exp", "instance", "seen"}
        self._last_refresh = None
        self._lock = threading.Lock()
        self._poller_stop = threading.Event()

    def argv(self):
        a = self.addrs
        argv = [
            str(CREDVEND), "serve",
            "--role-arn", ROLE_ARN,
            "--sts-endpoint", self.moto.url,
            "--region", "us-east-1",
            "--session-name", self.session,
            "--testing-short-sessions",
            "--duration", DURATION,
            "--refresh-lead", LEAD,
            "--shutdown-delay", "0s",
            "--drain-timeout", "1s",
            "--listen", a.get("listen", "127.0.0.1:0"),
            "--admin-listen", a.get("admin", "127.0.0.1:0"),
            "--token-file", str(self.token_file),
            "--log-format", "json",
            "--log-level", "info",
        ]
        if self.imds_on:
            argv += ["--imds-listen", a.get("imds", "127.0.0.1:0")]
        return argv

    def start(self):
        """Starts (or restarts) and waits until ready; False on failure."""
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.dir),
            "AWS_ACCESS_KEY_ID": "AKIDCREDVENDCOMPAT00",
            "AWS_SECRET_ACCESS_KEY": "compat-base-secret-not-real-0123456789",
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": CLOSED,
        }
        # Counters start again from zero in a new process.
        with self._lock:
            self.instance += 1
            self._last_refresh = None
            self.own_requests = 0
            # A new process takes the file as it is.
            self._auth = self.token_file.read_text() if self.token_file.exists() else None
            self._reloads = 0
        # A restart may race the old sockets for a moment: bounded retries.
        for _ in range(5):
            logs = []
            self.proc = spawn(
                self.argv(), env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True,
            )
            self.logs.append(logs)
            threading.Thread(target=self._read_logs, args=(self.proc, logs), daemon=True).start()
            ready = wait_for(lambda: self._has(logs, "ready: every role") or self.proc.poll() is not None, 20)
            if ready and self.proc.poll() is None:
                break
            stop(self.proc)
            time.sleep(0.5)
        else:
            return False
        if self._auth is None:
            self._auth = self.token_file.read_text()
        first = not self.addrs
        for key, msg in [
            ("listen", "container credentials endpoint listening"),
            ("admin", "admin endpoint listening"),
            ("imds", "IMDS listening"),
        ]:
            line = self._has(logs, msg)
            if line and first:
                self.addrs[key] = line["addrs"].strip("[]").split(",")[0].strip()
        return True

    @staticmethod
    def _read_logs(proc, logs):
        for line in proc.stderr:
            try:
                logs.append(json.loads(line))
            except ValueError:
                logs.append({"message": line.rstrip()})

    @staticmethod
    def _has(logs, msg):
        for v in list(logs):
            if msg in str(v.get("message", "")):
                return v
        return None

    def kill(self):
        self.proc.kill()
        self.proc.wait(5)

    def shutdown(self):
        self._poller_stop.set()
        if self.proc:
            stop(self.proc)

    def url(self):
        return f"http://{self.addrs['listen']}/v1/credentials"

    def metrics(self):
        try:
            _, body = http_get(f"http://{self.addrs['admin']}/metrics")
            return parse_metrics(body.decode())
        except OSError:
            return None

    def _learn_key(self):
        """GETs the credentials credvend serves now and records their key.

        Sends the token credvend holds as current (see poll), so that the
        suite's own requests never race credvend's pickup of a new token and
        add neither a 401 nor a "previous token" use to the counts the cells
        report. Holds the lock, so that a snapshot of (requests_total,
        own_requests) is consistent."""
        with self._lock:
            try:
                code, body = http_get(self.url(), {"Authorization": self._auth})
            except OSError:
                return False
            self.own_requests += 1
            if code != 200:
                return False
            v = json.loads(body)
            self.keys.setdefault(
                v["AccessKeyId"],
                {"exp": iso_to_epoch(v["Expiration"]), "instance": self.instance, "seen": time.time()},
            )
            return True

    def snapshot(self, endpoint):
        """(requests to the endpoint not made by the suite, non-200 codes)."""
        with self._lock:
            m = self.metrics() or []
            own = self.own_requests if endpoint == "container" else 0
        total = metric_sum(m, "credvend_requests_total", endpoint=endpoint)
        codes = {
            ls.get("code"): v for n, ls, v in m
            if n == "credvend_requests_total" and ls.get("endpoint") == endpoint and ls.get("code") != "200"
        }
        return total - own, codes

    def poll(self):
        """Background: notices every rotation and learns the new key."""
        while not self._poller_stop.wait(0.25):
            m = self.metrics()
            if m is None:
                continue
            # Switch to the new token only once credvend says it has it.
            reloads = metric_sum(m, "credvend_token_reloads_total")
            if reloads != self._reloads:
                self._reloads = reloads
                self._auth = self.token_file.read_text()
            n = metric_sum(m, "credvend_refresh_total", outcome="success")
            if n != self._last_refresh and self._learn_key():
                self._last_refresh = n

    def refreshes(self):
        m = self.metrics()
        return None if m is None else metric_sum(m, "credvend_refresh_total", outcome="success")

    def wait_rotations(self, base, n, timeout):
        return wait_for(lambda: (self.refreshes() or 0) >= base + n, timeout, 0.25)


# ---------------------------------------------------------------- clients


class Client:
    def __init__(self, id, name, protocols, argv, token_in_env=False):
        self.id, self.name, self.protocols, self.argv = id, name, protocols, argv
        # True: the token's value goes in AWS_CONTAINER_AUTHORIZATION_TOKEN
        # (read once, at the client's start) instead of the token file.
        self.token_in_env = token_in_env


def clients(moto_url):
    iv, most = str(CALL_INTERVAL), str(CLIENT_MAX_SECS)
    py = lambda venv: [str(venv / "bin/python"), str(HERE / "py_probe.py"), moto_url, iv, most]
    js = lambda p: ["node", str(JS_DIR / "probe.mjs"), p, moto_url, iv, most]
    rs = lambda p: [str(RUST_PROBE), p, moto_url, iv, most]
    return [
        Client("boto3", "boto3 (current)", ["container", "imds"], py(VENV)),
        Client("botocore-old", "botocore (older, token read once)", ["container", "imds"], py(OLD_VENV)),
        Client("aws-cli", "aws-cli v1", ["container", "imds"],
               [str(VENV / "bin/python"), str(HERE / "cli_probe.py"), str(VENV / "bin/aws"), moto_url, iv, most]),
        Client("js-default", "aws-sdk-js-v3 default chain", ["container", "imds"], js("default")),
        Client("js-fromHttp", "aws-sdk-js-v3 fromHttp", ["container"], js("fromHttp")),
        Client("js-fromContainerMetadata", "aws-sdk-js-v3 fromContainerMetadata (token file)", ["container"],
               js("fromContainerMetadata")),
        Client("js-fromContainerMetadata-tokenvar", "aws-sdk-js-v3 fromContainerMetadata (token variable)",
               ["container"], js("fromContainerMetadata"), token_in_env=True),
        Client("js-fromInstanceMetadata", "aws-sdk-js-v3 fromInstanceMetadata", ["imds"],
               js("fromInstanceMetadata")),
        Client("rust-default", "aws-sdk-rust default chain", ["container", "imds"], rs("default")),
        Client("rust-ecs", "aws-sdk-rust EcsCredentialsProvider", ["container"], rs("ecs")),
        Client("rust-imds", "aws-sdk-rust ImdsCredentialsProvider", ["imds"], rs("imds")),
    ]


def rust_sdk_version():
    lock = (ROOT / "Cargo.lock").read_text()
    m = re.search(r'name = "aws-config"\nversion = "([^"]+)"', lock)
    return f"aws-config {m.group(1)}" if m else "aws-config ?"


class Run:
    """The client process of one cell and the lines it printed."""

    def __init__(self, argv, env):
        self.lines = []
        self.version = None
        self.stderr = []
        self.proc = spawn(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            try:
                v = json.loads(raw)
            except ValueError:
                continue
            if "version" in v:
                self.version = v["version"]
            elif "t" in v:
                self.lines.append(v)

    def _read_err(self):
        for raw in self.proc.stderr:
            if len(self.stderr) < 200:
                self.stderr.append(raw.rstrip())

    def calls(self, since, until=None):
        until = until if until is not None else float("inf")
        return [l for l in list(self.lines) if since <= l["t"] < until]


def client_env(daemon, client, protocol, home):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    if protocol == "container":
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = daemon.url()
        if client.token_in_env:
            env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = daemon.token_file.read_text()
        else:
            env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(daemon.token_file)
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = CLOSED
    else:
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = f"http://{daemon.addrs['imds']}"
    return env


# ---------------------------------------------------------------- one cell


def judge(daemon, calls):
    """Errors and calls signed with an expired or unknown key."""
    # The poller learns a new key within 250 ms of a rotation; a client can
    # fetch and use it sooner. Learn the key being served now before
    # calling any key unknown.
    if any(c.get("key") and c["key"] not in daemon.keys for c in calls):
        daemon._learn_key()
    errors = [c for c in calls if not c["ok"]]
    expired, unknown = [], []
    for c in calls:
        if not c["ok"] or not c.get("key"):
            continue
        k = daemon.keys.get(c["key"])
        if k is None:
            unknown.append(c)
        elif c["t"] >= k["exp"]:
            expired.append(dict(c, late=c["t"] - k["exp"]))
    return errors, expired, unknown


def describe(errors, expired, unknown):
    parts = []
    if errors:
        parts.append(f"{len(errors)} error(s), first: {errors[0].get('err', '?')[:300]}")
    if expired:
        late = max(c["late"] for c in expired)
        parts.append(f"{len(expired)} call(s) signed with a key past its real expiry (up to {late:.0f} s late)")
    if unknown:
        parts.append(f"{len(unknown)} call(s) with a key credvend never served")
    return "; ".join(parts)


def other_codes(daemon, endpoint, before):
    """Non-200 answers of the endpoint since the `before` snapshot. The
    suite's own requests always get 200 (see Daemon._learn_key)."""
    _, now = daemon.snapshot(endpoint)
    diff = {c: v - before.get(c, 0) for c, v in now.items() if v - before.get(c, 0) > 0}
    return now, ", ".join(f"{v:.0f}x {c}" for c, v in sorted(diff.items()))


def restart_phase(d, run, res, endpoint):
    """4. SIGKILL credvend, start it again on the same ports and token file."""
    t_kill = time.time()
    old_instance = d.instance
    d.kill()
    time.sleep(0.5)
    if not d.start():
        res["restart"]["note"] = "credvend could not start again on the same ports"
        return False
    t_ready = time.time()
    inst = d.instance
    # The new process counts from zero.
    codes0 = {}

    def recovered():
        for c in run.calls(t_ready):
            k = d.keys.get(c.get("key") or "")
            if c["ok"] and k and k["instance"] == inst:
                return c
        return None

    rec = wait_for(recovered, RECOVER_TIMEOUT, 0.2)
    _, codes = other_codes(d, endpoint, codes0)
    answered = f"; the new process answered {codes}" if codes else ""
    if rec is None:
        after = run.calls(t_ready)
        stale = [c for c in after if c["ok"] and d.keys.get(c.get("key") or "", {}).get("instance") == old_instance]
        late = [c for c in stale if c["t"] >= d.keys[c["key"]]["exp"]]
        errs = [c for c in after if not c["ok"]]
        note = f"no call with the new process's credentials within {RECOVER_TIMEOUT} s"
        if stale:
            note += f"; kept using the previous process's key for {len(stale)} call(s)"
            if late:
                note += f", {len(late)} of them past its real expiry"
            if d.snapshot(endpoint)[0] == 0:
                note += ", without asking credvend again"
        if errs:
            note += f"; {len(errs)} error(s), last: {errs[-1].get('err', '?')[:300]}"
        res["restart"]["note"] = note + answered
        return True
    down = [c for c in run.calls(t_kill, rec["t"]) if not c["ok"]]
    res["restart"] = {
        "ok": True,
        "note": f"recovered {rec['t'] - t_ready:.1f} s after the restart"
        + (f", {len(down)} failed call(s) while credvend was down" if down else "")
        + answered,
    }
    return True


def token_phase(d, run, res, endpoint):
    """3. Rotate the auth token file; two more rotations must go by cleanly."""
    base = d.refreshes() or 0
    prev0 = metric_sum(d.metrics() or [], "credvend_token_previous_accepted_total")
    codes0, _ = other_codes(d, endpoint, {})
    t_tok = time.time()
    write_token(d.token_file, "compat-rotated-" + os.urandom(16).hex())
    if not d.wait_rotations(base, ROTATIONS, PHASE_TIMEOUT):
        res["token"]["note"] = "credvend did not rotate twice in time"
        return False

    def fetched_after_rotation():
        return [c for c in run.calls(t_tok) if c["ok"] and d.keys.get(c.get("key") or "", {}).get("seen", 0) > t_tok]

    # A client with a long cache (aws-sdk-rust keeps a key until 10 s
    # before it expires) may need a little longer to fetch again.
    wait_for(fetched_after_rotation, RECOVER_TIMEOUT, 0.2)
    t2 = time.time()
    prev = metric_sum(d.metrics() or [], "credvend_token_previous_accepted_total") - prev0
    _, codes = other_codes(d, endpoint, codes0)
    calls = run.calls(t_tok, t2)
    errors, expired, unknown = judge(d, calls)
    fresh = fetched_after_rotation()
    notes = [describe(errors, expired, unknown)]
    if not fresh:
        notes.append("no call with credentials fetched after the token rotation")
    if prev:
        notes.append(f"sent the previous token {prev:.0f} time(s), accepted within --token-grace")
    if codes:
        notes.append(f"credvend answered {codes} meanwhile (the client retried)" if not errors
                     else f"credvend answered {codes}")
    res["token"] = {"ok": not (errors or expired or unknown or not fresh), "note": "; ".join(n for n in notes if n)}
    return True


def run_cell(moto, client, protocol, workroot):
    cid = f"{client.id}-{protocol}"
    res = {c: {"ok": False, "note": "not reached"} for c in CHECKS}
    out = {"client": client, "protocol": protocol, "checks": res, "rpr": None, "cpr": None,
           "version": None, "log": []}
    work = workroot / cid
    work.mkdir(parents=True)
    home = work / "home"
    home.mkdir()
    d = Daemon(moto, cid, work, protocol == "imds")
    run = None
    try:
        if not d.start():
            res["identity"]["note"] = "credvend did not become ready"
            return out
        threading.Thread(target=d.poll, daemon=True).start()
        expected = f"arn:aws:sts::{ACCOUNT}:assumed-role/demo/{d.session}"
        endpoint = "container" if protocol == "container" else "imds"

        # Requests per rotation are counted from before the client starts, so
        # that the first fetch counts too (a client with a long cache, like
        # aws-sdk-rust, may fetch only once in the whole window).
        (req_start, _), rot_start = d.snapshot(endpoint), d.refreshes() or 0

        # 1. identity
        run = Run(client.argv, client_env(d, client, protocol, home))
        first = wait_for(lambda: run.lines[0] if run.lines else None, 60)
        out["version"] = run.version
        if first is None:
            res["identity"]["note"] = "no call finished within 60 s; stderr: " + " | ".join(run.stderr[-3:])
            return out
        if first["ok"] and first["arn"] == expected:
            res["identity"] = {"ok": True, "note": ""}
        else:
            res["identity"]["note"] = first.get("err") or f"got {first.get('arn')}"
            # Later checks still run: they say whether it ever works.

        # 2. rotation
        t0 = time.time()
        base = d.refreshes() or 0
        codes0, _ = other_codes(d, endpoint, {})
        if not d.wait_rotations(base, ROTATIONS, PHASE_TIMEOUT):
            res["rotation"]["note"] = "credvend did not rotate twice in time"
            return out
        t1 = time.time()
        req1, _ = d.snapshot(endpoint)
        rot1 = d.refreshes() or 0
        rots = rot1 - base
        calls = run.calls(t0, t1)
        out["rpr"] = (req1 - req_start) / max(rot1 - rot_start, 1)
        out["cpr"] = len(run.calls(0, t1)) / max(rot1 - rot_start, 1)
        errors, expired, unknown = judge(d, calls)
        keys = {c["key"] for c in calls if c["ok"] and c.get("key")}
        note = describe(errors, expired, unknown)
        if not calls:
            note = "no calls during the rotations"
        _, codes = other_codes(d, endpoint, codes0)
        res["rotation"] = {"ok": not note, "note": note}
        if not note:
            res["rotation"]["note"] = f"{len(calls)} calls over {rots:.0f} rotations, {len(keys)} distinct key(s)"
        if codes:
            res["rotation"]["note"] += f"; credvend answered {codes}"

        # Container cells restart before the token rotation, so that a
        # client still sending the previous token (within --token-grace) is
        # not also asked to survive losing that grace with the process.
        # IMDS cells do not use the token file: they rotate it first, so
        # that what an SDK does after the outage cannot spill into it.
        phases = [restart_phase, token_phase]
        if protocol == "imds":
            phases.reverse()
        for phase in phases:
            if not phase(d, run, res, endpoint):
                break
        return out
    except Exception as e:  # a crash of the suite itself is a failure of the cell
        for c in CHECKS:
            if res[c]["note"] == "not reached":
                res[c]["note"] = f"suite error: {type(e).__name__}: {e}"
        return out
    finally:
        if run is not None:
            stop(run.proc)
            out["version"] = out["version"] or run.version
            if any(not r["ok"] for r in res.values()):
                out["log"] = run.stderr[-5:]
        d.shutdown()


# ---------------------------------------------------------------- report


def classify(cell):
    """pass / limit / fail per check, with the limitation's reason."""
    out = {}
    for c in CHECKS:
        r = cell["checks"][c]
        if r["ok"]:
            out[c] = ("pass", r["note"], None)
            continue
        lim = LIMITS.get((cell["client"].id, cell["protocol"], c))
        if lim and re.search(lim["when"], r["note"]) and not (
            lim["unless"] and re.search(lim["unless"], r["note"])
        ):
            out[c] = ("limit", f"{r['note']} (SDK limitation {lim['id']})", lim)
        else:
            out[c] = ("fail", r["note"], None)
    return out


def render(cells, elapsed):
    rows, notes, limits = [], [], {}
    for cell in cells:
        cls = classify(cell)
        cid = f"{cell['client'].id}-{cell['protocol']}"
        marks = []
        for c in CHECKS:
            kind, _, lim = cls[c]
            if lim:
                limits[lim["id"]] = lim
            marks.append({"pass": "pass", "fail": "**FAIL**"}.get(kind) or f"SDK limit ({lim['id']})")
        rpr = "n/a" if cell["rpr"] is None else f"{cell['rpr']:.1f} / {cell['cpr']:.1f}"
        rows.append(
            f"| {cell['client'].name} | {cell['version'] or '?'} | {cell['protocol']} | "
            + " | ".join(marks) + f" | {rpr} | [notes](#{cid}) |"
        )
        lines = [f"- {c}: {cls[c][1]}" for c in CHECKS if cls[c][1]]
        notes.append(f"### {cid}\n\n" + ("\n".join(lines) if lines else "- nothing to note") + "\n")
    lim_text = "\n".join(f"- **{k}**: {v['why']}." for k, v in sorted(limits.items())) or "- none seen in this run"
    return TEMPLATE.format(
        rows="\n".join(rows),
        notes="\n".join(notes),
        limits=lim_text,
        elapsed=f"{elapsed:.0f}",
        cells=len(cells),
        duration=DURATION,
        lead=LEAD,
    )


TEMPLATE = (HERE / "compatibility.md.in").read_text() if (HERE / "compatibility.md.in").exists() else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("CREDVEND_COMPAT_JOBS", "16")))
    ap.add_argument("--only", default="", help="run only cells whose id contains this")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite docs/compatibility.md")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    started = time.monotonic()
    workroot = Path(tempfile.mkdtemp(prefix="credvend-compat-"))
    WORKROOT.append(workroot)
    try:
        moto = Moto()
        todo = [(c, p) for c in clients(moto.url) for p in c.protocols if args.only in f"{c.id}-{p}"]
        print(f"==> {len(todo)} cells, {args.jobs} at a time, STS at {moto.url}", flush=True)
        results = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futs = {pool.submit(run_cell, moto, c, p, workroot): (c, p) for c, p in todo}
            for f in concurrent.futures.as_completed(futs):
                cell = f.result()
                c, p = futs[f]
                results[(c.id, p)] = cell
                cls = classify(cell)
                summary = " ".join(f"{k}={v[0]}" for k, v in cls.items())
                print(f"    {c.id}-{p}: {summary}", flush=True)
                for k, (v, note, _) in cls.items():
                    if v != "pass":
                        print(f"      {k}: {note}", flush=True)
                for l in cell["log"]:
                    print(f"      | {l[:300]}", flush=True)
        cells = [results[(c.id, p)] for c, p in todo]
        for cell in cells:
            if cell["client"].id.startswith("rust"):
                cell["version"] = rust_sdk_version()
        elapsed = time.monotonic() - started
        if not args.only and not args.no_write:
            (ROOT / "docs/compatibility.md").write_text(render(cells, elapsed))
            print("==> wrote docs/compatibility.md", flush=True)
        counts = {"pass": 0, "limit": 0, "fail": 0}
        for cell in cells:
            for v, _, _ in classify(cell).values():
                counts[v] += 1
        print(f"==> compat suite took {elapsed:.0f} s", flush=True)
        if counts["limit"]:
            print(f"{counts['limit']} check(s) fail for documented SDK limitations (see docs/compatibility.md)")
        print(f"compat: {counts['pass']} passed, {counts['fail']} failed", flush=True)
        return 1 if counts["fail"] else 0
    finally:
        cleanup()
        shutil.rmtree(workroot, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
