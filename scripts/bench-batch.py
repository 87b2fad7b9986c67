#!/usr/bin/env python3
"""End-to-end throughput of noop jobs through POST /v1/jobs/batch, against a running stack.

Enqueues N noop jobs in batches of 1000, then waits until none is waiting or running, and prints
enqueue rate and end-to-end jobs/s (first request -> last job finished). Run it against an
otherwise idle stack: it watches the tenant's whole job list.

    scripts/bench-batch.py --url http://127.0.0.1:8080 --token dev-token --jobs 10000
"""
import argparse
import json
import time
import urllib.request


def call(url, token, method="GET", body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.loads(r.read())


def pending(base, token):
    for state in ("scheduled", "queued", "running", "retrying"):
        _, page = call(f"{base}/v1/jobs?state={state}&limit=1", token)
        if page["jobs"]:
            return True
    return False


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--token", default="dev-token")
    p.add_argument("--jobs", type=int, default=10000)
    p.add_argument("--batch", type=int, default=1000)
    a = p.parse_args()

    start = time.monotonic()
    sent = 0
    while sent < a.jobs:
        n = min(a.batch, a.jobs - sent)
        status, _ = call(f"{a.url}/v1/jobs/batch", a.token, "POST", {"jobs": [{"kind": "noop"}] * n})
        assert status == 201, status
        sent += n
    enqueued = time.monotonic()
    while pending(a.url, a.token):
        time.sleep(0.02)
    done = time.monotonic()
    print(f"jobs:                {a.jobs}")
    print(f"enqueue:             {enqueued - start:.2f} s  ({a.jobs / (enqueued - start):.0f} jobs/s)")
    print(f"end to end:          {done - start:.2f} s  ({a.jobs / (done - start):.0f} jobs/s)")


if __name__ == "__main__":
    main()
