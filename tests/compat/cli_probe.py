"""The aws-cli v1 client of the compatibility suite (tests/compat).

aws-cli is one process per command, so there is no cache to observe across
calls: this loop runs `aws --debug sts get-caller-identity` against the STS
at argv[2] (argv[1] is the `aws` executable) every argv[3] seconds for at
most argv[4] seconds, and prints one JSON line per run with the access key
id the request was signed with (found in botocore's debug log).
"""
import json
import re
import subprocess
import sys
import time

aws, url, interval, most = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
ver = subprocess.run([aws, "--version"], capture_output=True, text=True, timeout=60)
print(json.dumps({"version": (ver.stdout or ver.stderr).split()[0]}), flush=True)

KEY = re.compile(r"Credential=([A-Z0-9]+)/")
start = time.monotonic()
for _ in range(int(most / max(interval, 0.05)) + 1):
    if time.monotonic() - start >= most:
        break
    t = time.time()
    try:
        run = subprocess.run(
            [aws, "--debug", "sts", "get-caller-identity", "--endpoint-url", url, "--output", "json"],
            capture_output=True, text=True, timeout=60,
        )
        keys = KEY.findall(run.stderr)
        key = keys[-1] if keys else None
        if run.returncode == 0:
            line = {"t": t, "ok": True, "arn": json.loads(run.stdout)["Arn"], "key": key}
        else:
            tail = [l for l in run.stderr.splitlines() if l.strip()][-1:]
            line = {"t": t, "ok": False, "key": key, "err": f"exit {run.returncode}: {' '.join(tail)}"}
    except subprocess.TimeoutExpired:
        line = {"t": t, "ok": False, "err": "aws timed out after 60s"}
    print(json.dumps(line), flush=True)
    time.sleep(interval)
