"""The boto3/botocore client of the compatibility suite (tests/compat).

One long-lived boto3 session and STS client; GetCallerIdentity against the
STS at argv[1] every argv[2] seconds for at most argv[3] seconds. The first
line names the versions; then one JSON line per call with the access key id
the request was really signed with (read off the Authorization header), so
the suite can tell which credentials botocore's own cache handed out.
"""
import json
import sys
import time

import boto3
import botocore

url, interval, most = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
print(json.dumps({"version": f"boto3 {boto3.__version__} / botocore {botocore.__version__}"}), flush=True)

signed = {}


def remember_key(request, **_):
    auth = request.headers.get("Authorization", b"")
    if isinstance(auth, bytes):
        auth = auth.decode()
    if "Credential=" in auth:
        signed["key"] = auth.split("Credential=", 1)[1].split("/", 1)[0]


session = boto3.session.Session()
sts = session.client("sts", endpoint_url=url)
sts.meta.events.register("before-send", remember_key)

start = time.monotonic()
for _ in range(int(most / max(interval, 0.05)) + 1):
    if time.monotonic() - start >= most:
        break
    t = time.time()
    signed.clear()
    try:
        arn = sts.get_caller_identity()["Arn"]
        line = {"t": t, "ok": True, "arn": arn, "key": signed.get("key")}
    except Exception as e:  # every failure is a result to report
        line = {"t": t, "ok": False, "key": signed.get("key"), "err": f"{type(e).__name__}: {e}"}
    print(json.dumps(line), flush=True)
    time.sleep(interval)
