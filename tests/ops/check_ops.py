"""Checks of credvend's packaging: the Helm chart, the systemd unit, the alert
rules, and the real binary run the way the unit and the chart run it.

Started by scripts/check-ops, which installs the tools first. Prints one line
per check and ends with `N passed, N failed`. Everything listens on and talks
to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import helm_python as helm
import kubernetes_validate.utils as kv
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "credvend"
UNIT_DIR = ROOT / "deploy" / "systemd"
ALERTS_FILE = ROOT / "deploy" / "prometheus" / "credvend-alerts.yaml"
BINARY = Path(os.environ.get("CREDVEND_BIN", ROOT / "target" / "debug" / "credvend"))
# Exposure level (times ten) that `systemd-analyze security` must not exceed.
SECURITY_THRESHOLD = 12
# Objects whose schema kubernetes-validate does not carry (Prometheus
# operator CRDs); they get the structural checks below instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
BAD_ENV = {
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_PROFILE",
}

results: list[tuple[str, bool]] = []
# strace output of credvend run as the unit runs it.
TRACE: list[str] = []


class CheckFailed(Exception):
    pass


def ensure(cond: bool, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


def check(name: str):
    """Runs the decorated function now, recording pass or fail."""

    def run(fn):
        started = time.monotonic()
        try:
            note = fn()
            ok = True
        except CheckFailed as e:
            ok, note = False, str(e)
        except Exception:  # a broken check is a failed check, with its trace
            ok, note = False, traceback.format_exc()
        took = time.monotonic() - started
        results.append((name, ok))
        line = f"{'PASS' if ok else 'FAIL'} {name} ({took:.1f}s)"
        if note:
            line += ": " + str(note)
        print(line, flush=True)
        return fn

    return run


# ---------------------------------------------------------------- helpers


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict) -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name="demo", namespace="apps", is_install=True)
    objs = []
    for tpl, text in sorted(out.items()):
        if not tpl.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objs.append(doc)
    return objs


def good_ci_files() -> list[Path]:
    files = sorted(Path(p) for p in glob.glob(str(CHART / "ci" / "*-values.yaml")))
    return [f for f in files if not f.name.startswith("bad-")]


def pod_spec(objs: list[dict]) -> dict:
    deps = [o for o in objs if o["kind"] == "Deployment"]
    ensure(len(deps) == 1, f"expected one Deployment, got {len(deps)}")
    return deps[0]["spec"]["template"]["spec"]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def wait_status(url: str, want: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if http_status(url) == want:
            return True
        time.sleep(0.1)
    return False


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def replace_port(addr: str, port: int) -> str:
    host, _, _ = addr.rpartition(":")
    return f"{host}:{port}"


# ------------------------------------------------------------ Helm chart

for values_file in good_ci_files():

    @check(f"helm lint --strict with ci/{values_file.name}")
    def _lint(values_file=values_file):
        report = helm.lint(str(CHART), load_values(values_file), strict=True)
        bad = [m for m in report["messages"] if m["severity"] >= 2]
        ensure(not report["errors"] and not bad, json.dumps(report, indent=1))

    @check(f"render ci/{values_file.name} and validate every object (kubernetes-validate --strict)")
    def _validate(values_file=values_file):
        objs = render(load_values(values_file))
        ensure(objs, "nothing rendered")
        kinds = []
        for o in objs:
            key = (o.get("apiVersion"), o.get("kind"))
            kinds.append(o["kind"])
            if key in CRD_KINDS:
                ensure(o["metadata"].get("name"), f"{key} has no name")
                ensure(isinstance(o.get("spec"), dict), f"{key} has no spec")
                continue
            try:
                kv.validate(o, kv.latest_version(), strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                raise CheckFailed(f"{o['kind']}/{o['metadata']['name']}: {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                raise CheckFailed(e.message)
        return ", ".join(kinds)

    @check(f"ci/{values_file.name}: sidecar shape, security context, one variable of each pair")
    def _shape(values_file=values_file):
        spec = pod_spec(render(load_values(values_file)))
        sidecars = [c for c in spec.get("initContainers", []) if c["name"] == "credvend"]
        ensure(len(sidecars) == 1, "no credvend init container")
        side = sidecars[0]
        ensure(side.get("restartPolicy") == "Always", "the sidecar needs restartPolicy: Always")
        probe = side.get("startupProbe", {}).get("httpGet", {})
        ensure(probe.get("path") == "/readyz", "the startup probe must GET /readyz")
        sc = side["securityContext"]
        ensure(sc.get("runAsNonRoot") is True, "runAsNonRoot")
        ensure(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
        ensure(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation")
        ensure(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities must drop ALL")
        res = side.get("resources", {})
        ensure(res.get("requests", {}).get("memory") and res.get("limits", {}).get("memory"),
               "memory request and limit")
        senv = env_of(side)
        for c in spec["containers"]:
            env = env_of(c)
            aws = sorted(k for k in env if k.startswith("AWS_"))
            ensure(aws == ["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"],
                   f"container {c['name']} has AWS variables {aws}")
            # The app's two variables must point where the sidecar listens.
            port = senv["CREDVEND_LISTEN"].rpartition(":")[2]
            host = senv["CREDVEND_ADVERTISE_HOST"]
            ensure(env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == f"http://{host}:{port}/v1/credentials",
                   "FULL_URI does not match the sidecar's listener")
            ensure(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] == senv["CREDVEND_TOKEN_FILE"],
                   "TOKEN_FILE does not match the sidecar's token file")
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            tdir = str(Path(senv["CREDVEND_TOKEN_FILE"]).parent)
            ensure(mounts.get(tdir, {}).get("readOnly") is True, "token volume must be mounted read-only in apps")
        for c in spec["containers"] + spec["initContainers"]:
            bad = BAD_ENV & set(env_of(c))
            ensure(not bad, f"container {c['name']} sets {sorted(bad)}")
        ensure(spec.get("securityContext", {}).get("fsGroup"), "the pod needs an fsGroup for the token file")


@check("ci/bad-non-loopback-host-values.yaml fails schema validation")
def _bad_host():
    values = load_values(CHART / "ci" / "bad-non-loopback-host-values.yaml")
    try:
        render(values)
    except helm.HelmValuesError as e:
        ensure("advertiseHost" in str(e), f"failed for another reason: {e}")
        return "rejected: advertiseHost"
    raise CheckFailed("the chart rendered a non-loopback advertised host")


@check("schema rejects a lead at or above the duration, a missing or malformed role ARN, a privileged port")
def _schema_nonsense():
    arn = "arn:aws:iam::123456789012:role/app"
    bad = {
        "lead = duration": {"role": {"arn": arn, "durationMinutes": 60, "refreshLeadMinutes": 60}},
        "lead > duration": {"role": {"arn": arn, "durationMinutes": 30, "refreshLeadMinutes": 45}},
        "missing ARN": {"role": {"durationMinutes": 60}},
        "not a role ARN": {"role": {"arn": "arn:aws:iam::123456789012:user/bob"}},
        "pod IP host": {"role": {"arn": arn}, "advertiseHost": "10.1.2.3"},
        "port 80": {"role": {"arn": arn}, "port": 80},
        "unknown key": {"role": {"arn": arn}, "advertisehost": "127.0.0.1"},
        "a plain secret key": {"role": {"arn": arn},
                               "extraEnv": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]},
    }
    chart = helm.Chart.load(str(CHART))
    for what, values in bad.items():
        try:
            chart.validate_schema(chart.merge_values(values))
        except helm.HelmValuesError:
            continue
        raise CheckFailed(f"schema accepted {what}")
    chart.validate_schema(chart.merge_values({"role": {"arn": arn, "durationMinutes": 30, "refreshLeadMinutes": 20}}))


# ------------------------------------------------------------ alert rules


def rendered_rules() -> dict:
    objs = render(load_values(CHART / "ci" / "metrics-values.yaml"))
    rules = [o for o in objs if o["kind"] == "PrometheusRule"]
    ensure(len(rules) == 1, "metrics-values.yaml renders no PrometheusRule")
    return rules[0]["spec"]


@check("promtool check rules on the rendered PrometheusRule")
def _promtool_check():
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "rules.yaml"
        p.write_text(yaml.safe_dump(rendered_rules(), sort_keys=False))
        r = run(["promtool", "check", "rules", str(p)])
        ensure(r.returncode == 0, r.stdout + r.stderr)
        return r.stdout.strip().splitlines()[-1]


@check("promtool test rules: each alert fires from synthetic series")
def _promtool_test():
    spec = rendered_rules()
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"]}
    tests = yaml.safe_load((Path(__file__).parent / "alerts_test.yaml").read_text())
    fired = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if t["exp_alerts"]}
    ensure(alerts == fired, f"alerts {sorted(alerts)} but tests fire {sorted(fired)}")
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        shutil.copy(Path(__file__).parent / "alerts_test.yaml", d)
        r = run(["promtool", "test", "rules", "alerts_test.yaml"], cwd=d)
        ensure(r.returncode == 0, r.stdout + r.stderr)
    return ", ".join(sorted(alerts))


@check("deploy/prometheus/credvend-alerts.yaml matches the chart's rules")
def _alerts_file():
    shipped = yaml.safe_load(ALERTS_FILE.read_text())
    ensure(shipped == rendered_rules(), "the file drifted from helm/credvend/templates/prometheusrule.yaml")
    r = run(["promtool", "check", "rules", str(ALERTS_FILE)])
    ensure(r.returncode == 0, r.stdout + r.stderr)


# ------------------------------------------------------------ systemd unit


def unit_with_binary(dest: Path) -> Path:
    """The unit as shipped, with ExecStart pointing at the built binary
    (systemd-analyze verify insists that the program exists)."""
    text = (UNIT_DIR / "credvend.service").read_text()
    ensure("ExecStart=/usr/bin/credvend serve" in text, "unexpected ExecStart")
    text = text.replace("ExecStart=/usr/bin/credvend", f"ExecStart={BINARY.resolve()}")
    unit = dest / "credvend.service"
    unit.write_text(text)
    dropins = dest / "credvend.service.d"
    dropins.mkdir()
    shutil.copy(UNIT_DIR / "base-credentials.conf", dropins)
    return unit


@check("systemd-analyze verify (with the base-credentials drop-in): no error, no warning")
def _verify():
    with tempfile.TemporaryDirectory() as d:
        unit = unit_with_binary(Path(d))
        env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{d}:")
        r = run(["systemd-analyze", "verify", str(unit)], env=env)
        out = (r.stdout + r.stderr).strip()
        ensure(r.returncode == 0 and not out, f"exit {r.returncode}: {out}")


@check(f"systemd-analyze security --offline=true: exposure at most {SECURITY_THRESHOLD / 10}")
def _security():
    with tempfile.TemporaryDirectory() as d:
        unit = unit_with_binary(Path(d))
        r = run(["systemd-analyze", "security", "--offline=true", f"--threshold={SECURITY_THRESHOLD}", str(unit)])
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
        ensure(m is not None, r.stdout + r.stderr)
        ensure(r.returncode == 0, f"exposure {m.group(1)} is above {SECURITY_THRESHOLD / 10}")
        doc = (ROOT / "docs" / "systemd.md").read_text()
        ensure(f"exposure level {m.group(1)}" in doc, f"docs/systemd.md does not state the score {m.group(1)}")
        return f"exposure {m.group(1)}"


# ------------------------------------------- the real binary, as packaged


class Moto:
    def __enter__(self):
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        ensure(wait_status(f"http://127.0.0.1:{self.port}/moto-api/", 200, 15), "moto did not start")
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        self.server.stop()


CLIENT = r"""
import json, sys, boto3
session = boto3.session.Session()
creds = session.get_credentials()
sts = session.client("sts", endpoint_url=sys.argv[1], region_name="us-east-1")
print(json.dumps({"method": creds.method, "arn": sts.get_caller_identity()["Arn"]}))
"""


def client_identity(moto_url: str, full_uri: str, token_file: str, home: Path) -> dict:
    """An unmodified boto3 whose only configuration is the two variables."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(home / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "none"),
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": full_uri,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": token_file,
    }
    r = run([sys.executable, "-c", CLIENT, moto_url], env=env)
    ensure(r.returncode == 0, f"client failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def stop_and_expect_clean_exit(proc: subprocess.Popen, admin: str, within: float, pid: int | None = None) -> None:
    os.kill(pid or proc.pid, signal.SIGTERM)
    # /readyz turns 503 at once while credentials are still served.
    ensure(wait_status(f"http://{admin}/readyz", 503, 2), "/readyz did not turn 503 after SIGTERM")
    try:
        code = proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise CheckFailed(f"credvend did not exit within {within}s of SIGTERM")
    ensure(code == 0, f"credvend exited {code} after SIGTERM")


def secrets_absent(log: str, token_file: Path) -> None:
    token = token_file.read_text()
    ensure(token not in log, "the auth token appears in credvend's log")
    ensure("SecretAccessKey" not in log, "a secret key field appears in credvend's log")


def parse_unit(path: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file or drop-in (the subset of the syntax the
    shipped files use: no line continuations)."""
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        k, _, v = line.partition("=")
        keys.setdefault(k, []).append(v)
    return keys


def parse_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


def read_notify(sock: socket.socket, want: str, seconds: float) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            break
        seen.extend(msg.split("\n"))
        if want in seen:
            break
    return seen


@check("the real binary under the systemd unit's command line and environment: READY=1, a client gets credentials")
def _binary_systemd():
    ensure(BINARY.exists(), f"{BINARY} is missing: run cargo build first")
    unit = parse_unit(UNIT_DIR / "credvend.service")
    dropin = parse_unit(UNIT_DIR / "base-credentials.conf")
    with tempfile.TemporaryDirectory() as d, Moto() as moto:
        d = Path(d)
        runtime = d / "run" / "credvend"
        creds_dir = d / "credentials"
        runtime.mkdir(parents=True, mode=0o750)
        creds_dir.mkdir(mode=0o700)
        (creds_dir / "aws-credentials").write_text(
            "[default]\naws_access_key_id = AKIDEXAMPLEBASE\naws_secret_access_key = base-secret-example\n"
        )
        hostname = socket.gethostname().split(".")[0]

        def specifiers(v: str) -> str:
            return v.replace("%l", hostname).replace("%d", str(creds_dir))

        # What systemd gives the process: Environment= lines, the env file,
        # its own variables for RuntimeDirectory=, LoadCredential=,
        # WatchdogSec= and Type=notify.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(d)}
        for line in unit.get("Environment", []) + dropin.get("Environment", []):
            k, _, v = specifiers(line).partition("=")
            env[k] = v
        env_file = parse_env_file(UNIT_DIR / "credvend.env")
        ensure(unit["EnvironmentFile"] == ["-/etc/credvend/credvend.env"], "EnvironmentFile moved")
        env.update(env_file)
        ensure(unit["RuntimeDirectory"] == ["credvend"], "RuntimeDirectory changed")
        env["RUNTIME_DIRECTORY"] = str(runtime)
        env["CREDENTIALS_DIRECTORY"] = str(creds_dir)
        watchdog = unit["WatchdogSec"][0]
        ensure(watchdog.endswith("s"), "WatchdogSec in seconds expected")
        env["WATCHDOG_USEC"] = str(int(watchdog[:-1]) * 1_000_000)
        notify_path = d / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        env["NOTIFY_SOCKET"] = str(notify_path)

        # The only changes for this machine: the STS emulator, and free
        # ports instead of 9911/9912 (other tests may run in parallel).
        env["CREDVEND_STS_ENDPOINT"] = moto.url
        listen = replace_port(env["CREDVEND_LISTEN"], free_port())
        admin = replace_port(env["CREDVEND_ADMIN_LISTEN"], free_port())
        env["CREDVEND_LISTEN"], env["CREDVEND_ADMIN_LISTEN"] = listen, admin

        argv = shlex.split(unit["ExecStart"][0])
        argv[0] = str(BINARY)
        # systemd sets WATCHDOG_PID to the service's pid; a shell that
        # execs credvend knows that pid in advance. strace records every
        # system call, for the SystemCallFilter check below.
        pidfile, trace = d / "pid", d / "trace"
        argv = ["strace", "-f", "-qq", "-o", str(trace), "--", "/bin/sh", "-c",
                'echo $$ > "$PIDFILE"; WATCHDOG_PID=$$ exec "$0" "$@"'] + argv
        log = d / "credvend.log"
        with open(log, "w") as logf:
            proc = subprocess.Popen(argv, env=dict(env, PIDFILE=str(pidfile)), stdout=logf,
                                    stderr=subprocess.STDOUT, cwd=d)
        try:
            seen = read_notify(notify, "READY=1", 20)
            ensure("READY=1" in seen, f"no READY=1 on NOTIFY_SOCKET (got {seen}); log: {log.read_text()[-2000:]}")
            ensure("WATCHDOG=1" in seen or "WATCHDOG=1" in read_notify(notify, "WATCHDOG=1", 2),
                   "no WATCHDOG=1 although WATCHDOG_USEC is set")
            ensure(http_status(f"http://{admin}/readyz") == 200, "/readyz is not 200 after READY=1")

            # The token file where the docs say: $RUNTIME_DIRECTORY/token,
            # group-readable as the env file asks, no newline.
            token = runtime / "token"
            ensure(token.exists(), f"no token file in $RUNTIME_DIRECTORY ({token})")
            mode = stat.S_IMODE(token.stat().st_mode)
            ensure(mode == int(env_file["CREDVEND_TOKEN_FILE_MODE"], 8), f"token file mode {oct(mode)}")
            ensure(not token.read_bytes().endswith(b"\n"), "token file ends with a newline")

            # `credvend env` under the same environment prints the two lines
            # docs/systemd.md tells client units to set.
            r = run([str(BINARY), "env"], env=env)
            ensure(r.returncode == 0, r.stderr)
            full_uri = f"http://{listen}/v1/credentials"
            ensure(r.stdout.splitlines() == [
                f"export AWS_CONTAINER_CREDENTIALS_FULL_URI={full_uri}",
                f"export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={token}",
            ], f"credvend env printed {r.stdout!r}")

            ident = client_identity(moto.url, full_uri, str(token), d)
            role = env_file["CREDVEND_ROLE_ARN"].rpartition("/")[2]
            ensure(ident["method"] == "container-role", f"boto3 used {ident['method']}")
            ensure(f":assumed-role/{role}/credvend-{hostname}" in ident["arn"], f"caller is {ident['arn']}")

            delay = float(env_file["CREDVEND_SHUTDOWN_DELAY"].rstrip("s"))
            drain = float(env_file["CREDVEND_DRAIN_TIMEOUT"].rstrip("s"))
            stop_and_expect_clean_exit(proc, admin, delay + drain + 5, pid=int(pidfile.read_text()))
            TRACE.extend(trace.read_text().splitlines())
            seen = read_notify(notify, "STOPPING=1", 1)
            ensure("STOPPING=1" in seen, f"no STOPPING=1 after SIGTERM (got {seen})")
            secrets_absent(log.read_text(), token)
            return ident["arn"]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            notify.close()


@check("the real binary under the chart's sidecar args and env (web identity): startup probe passes, the app gets credentials")
def _binary_chart():
    ensure(BINARY.exists(), f"{BINARY} is missing: run cargo build first")
    spec = pod_spec(render(load_values(CHART / "ci" / "web-identity-values.yaml")))
    side = next(c for c in spec["initContainers"] if c["name"] == "credvend")
    app = spec["containers"][0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    with tempfile.TemporaryDirectory() as d, Moto() as moto:
        d = Path(d)

        # Each volume of the sidecar becomes a directory under d; the
        # projected service account token gets a dummy JWT (moto accepts
        # any token), as the kubelet would write it.
        remap: dict[str, str] = {}
        for m in side["volumeMounts"]:
            local = d / m["name"]
            local.mkdir(mode=0o2770)
            remap[m["mountPath"]] = str(local)
            proj = volumes[m["name"]].get("projected")
            if proj:
                for src in proj["sources"]:
                    sat = src["serviceAccountToken"]
                    ensure(sat["audience"] == "sts.amazonaws.com", "audience")
                    (local / sat["path"]).write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2ln")

        def local_path(p: str) -> str:
            for mount, here in remap.items():
                if p == mount or p.startswith(mount + "/"):
                    return here + p[len(mount):]
            return p

        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(d), "HOSTNAME": "demo-pod"}
        for e in side["env"]:
            ensure("value" in e, f"{e['name']} is not a plain value")
            env[e["name"]] = local_path(e["value"])
        env["CREDVEND_STS_ENDPOINT"] = moto.url
        listen = replace_port(env["CREDVEND_LISTEN"], free_port())
        # The admin listener binds the pod IP (0.0.0.0) in a pod; here it
        # stays on loopback.
        admin_port = free_port()
        ensure(env["CREDVEND_ADMIN_LISTEN"] == f"0.0.0.0:{side['ports'][0]['containerPort']}", "admin port")
        admin = f"127.0.0.1:{admin_port}"
        env["CREDVEND_LISTEN"], env["CREDVEND_ADMIN_LISTEN"] = listen, admin

        argv = [str(BINARY)] + side.get("command", [])[1:] + side["args"]
        log = d / "credvend.log"
        with open(log, "w") as logf:
            proc = subprocess.Popen(argv, env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=d)
        try:
            probe = side["startupProbe"]
            ensure(probe["httpGet"]["port"] == side["ports"][0]["name"], "probe port")
            budget = probe["periodSeconds"] * probe["failureThreshold"]
            ok = wait_status(f"http://{admin}{probe['httpGet']['path']}", 200, min(budget, 20))
            ensure(ok, f"startup probe never passed; log: {log.read_text()[-2000:]}")
            ensure(http_status(f"http://{admin}{side['livenessProbe']['httpGet']['path']}") == 200, "liveness")

            aenv = env_of(app)
            full_uri = aenv["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
            port = full_uri.split("/")[2].rpartition(":")[2]
            full_uri = full_uri.replace(f":{port}/", f":{listen.rpartition(':')[2]}/", 1)
            token_file = local_path(aenv["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"])
            mode = stat.S_IMODE(os.stat(token_file).st_mode)
            ensure(mode == 0o640, f"token file mode {oct(mode)}: the app container could not read it")

            ident = client_identity(moto.url, full_uri, token_file, d)
            role = env["CREDVEND_ROLE_ARN"].rpartition("/")[2]
            ensure(ident["method"] == "container-role", f"boto3 used {ident['method']}")
            ensure(f":assumed-role/{role}/" in ident["arn"], f"caller is {ident['arn']}")
            ensure("AssumeRoleWithWebIdentity" in log.read_text(), "credvend did not use web identity")

            delay = float(env["CREDVEND_SHUTDOWN_DELAY"].rstrip("s"))
            drain = float(env["CREDVEND_DRAIN_TIMEOUT"].rstrip("s"))
            grace = spec["terminationGracePeriodSeconds"]
            ensure(delay + drain < grace, "terminationGracePeriodSeconds leaves no room for the drain")
            stop_and_expect_clean_exit(proc, admin, delay + drain + 5)
            secrets_absent(log.read_text(), Path(token_file))
            return ident["arn"]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def syscall_groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    current = None
    for line in run(["systemd-analyze", "syscall-filter"]).stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith(" ") and current is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                current.append(item)
        else:
            current = None
    return groups


def expand(name: str, groups: dict[str, list[str]]) -> set[str]:
    if not name.startswith("@"):
        return {name}
    out: set[str] = set()
    for item in groups[name]:
        out |= expand(item, groups)
    return out


@check("every system call credvend made as the unit is allowed by the unit's SystemCallFilter")
def _syscalls():
    ensure(TRACE, "no strace output (the test above failed)")
    start = next((i for i, l in enumerate(TRACE) if f'execve("{BINARY}' in l), None)
    ensure(start is not None, "credvend's execve is not in the trace")
    used = set()
    for line in TRACE[start:]:
        m = re.match(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)", line)
        if m:
            used.add(m.group(1))
    groups = syscall_groups()
    allowed, denied = expand("@default", groups), set()
    for line in parse_unit(UNIT_DIR / "credvend.service")["SystemCallFilter"]:
        names = line.lstrip("~").split()
        target = denied if line.startswith("~") else allowed
        for n in names:
            target |= expand(n, groups)
    blocked = sorted(used - (allowed - denied))
    ensure(not blocked, f"the unit's filter would refuse {blocked}")
    return f"{len(used)} distinct system calls, all allowed"


passed = sum(1 for _, ok in results if ok)
failed = len(results) - passed
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
