"""Load test of ``cachec serve`` on loopback: throughput, p50/p99 latency, exactness, nothing lost.

    python tools/serve_load_test.py                                   # compiles builtin:tiny-dit fora:3, starts Serve
    python tools/serve_load_test.py --artifact DIR --policies none,fora:3 --concurrency 1,4,8 --requests 200
    python tools/serve_load_test.py --url http://127.0.0.1:8000       # against a running `cachec serve`

For every policy (the served one and run-time overrides such as ``none``) and every concurrency,
it sends ``--requests`` requests from that many client threads over HTTP (127.0.0.1 only) and
reports requests/s and the client-side p50/p99 latency. Every reply carries its final sample
(``return_latent``); each is compared bit for bit with a *single-request reference*: the same
request (policy, seed, class, steps) run alone through ``cachec.load`` in this process, without
Serve, with the server's batch rows (``GET /info``: a padded server runs every static-policy
trajectory with ``max_batch`` rows; dynamic policies run at batch 1). A request counts as *lost*
if it got neither a reply nor an error within ``--timeout``; the run stops sending new requests
after ``--time-limit`` seconds. Exit code 1 if any reply differs from its reference, or any
request failed or was lost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import urlparse

import torch

DISTINCT = 8  # distinct (seed, class) requests per policy; requests cycle through them


def post(url: str, body: dict, timeout: float) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read())
        except ValueError:
            return e.code, {"detail": "non-JSON error body"}


def get_info(url: str) -> dict:
    with urllib.request.urlopen(url + "/info", timeout=30) as r:
        return json.loads(r.read())


def latent_of(reply: dict) -> torch.Tensor:
    from cachec.serve_schema import decode_tensor

    return decode_tensor(reply["latent"], "latent")


def request_for(policy: str, i: int, steps: int, num_classes: int) -> dict:
    return {"class_label": (3 * i + 1) % num_classes, "seed": 1000 + i, "steps": steps, "policy": policy,
            "return_latent": True}


def reference(artifact: str, body: dict, rows: int, served_policy: str) -> torch.Tensor:
    """The request run alone through ``cachec.load`` (no Serve), repeated to ``rows`` rows; row 0."""
    import cachec
    from cachec.artifact import read_manifest
    from cachec.sampling import denoise
    from cachec.session import artifact_bundle

    m = read_manifest(artifact)
    bundle = artifact_bundle(m)
    key = (body["policy"], rows)
    cache = reference.__dict__.setdefault("runtimes", {})
    if key not in cache:
        cache[key] = cachec.load(artifact, policy=None if body["policy"] == served_policy else body["policy"])
    rt = cache[key]
    latent = m["capture"]["latent_input"]  # manifest schema 2: shapes are in the program description
    shape = [1 if d == "B" else d for d in m["program"]["values"][latent]["shape"]]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(body["seed"])).repeat(rows, *[1] * (len(shape) - 1))
    kw = {"class_labels": torch.full((rows,), body["class_label"], dtype=torch.long),
          "timestep": torch.zeros(rows, dtype=torch.long)}
    rt.reset(body["steps"])
    return denoise(rt, bundle, x, kw, body["steps"]).sample[:1]


def rows_for(info: dict, policy: str) -> int:
    """How many rows the server runs this policy's trajectories with (see cachec/serve_worker.py)."""
    from cachec.policy import parse_policy
    from cachec.serve_worker import runs_alone

    if runs_alone(parse_policy(policy)) or not info["pad"]:
        return 1
    return info["max_batch"]


def run_load(url: str, policy: str, concurrency: int, count: int, steps: int, num_classes: int, refs: dict,
             timeout: float, deadline: float) -> dict:
    """``count`` requests from ``concurrency`` threads; latencies, exactness, failures, losses."""
    latencies, failed, mismatched, batch_sizes, max_diff = [], [], 0, [], 0.0
    answered = 0
    lock = threading.Lock()
    sent = 0

    def one(i):
        body = request_for(policy, i % DISTINCT, steps, num_classes)
        t0 = time.perf_counter()
        try:
            code, reply = post(url, body, timeout)
        except Exception as exc:  # noqa: BLE001 - a transport failure is a lost request here
            return i, None, repr(exc), time.perf_counter() - t0
        return i, code, reply, time.perf_counter() - t0

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        futures = []
        for i in range(count):
            if time.perf_counter() > deadline:
                break
            futures.append(ex.submit(one, i))
            sent += 1
        for fut in as_completed(futures):
            i, code, reply, seconds = fut.result()
            with lock:
                if code is None:
                    continue  # lost: no reply and no error status
                answered += 1
                if code != 200:
                    failed.append(f"{code}: {reply.get('detail')}")
                    continue
                latencies.append(seconds)
                batch_sizes.append(reply["batch_size"])
                got, ref = latent_of(reply), refs[(policy, i % DISTINCT)]
                if not torch.equal(got, ref):
                    mismatched += 1
                    max_diff = max(max_diff, float((got - ref).abs().max()))
    wall = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(q):
        return lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))] if lat else float("nan")

    return {"policy": policy, "concurrency": concurrency, "sent": sent, "ok": len(latencies), "failed": len(failed),
            "lost": sent - answered, "mismatched": mismatched, "throughput_rps": len(latencies) / wall if wall else 0.0,
            "p50_s": pct(0.50), "p99_s": pct(0.99),
            "mean_batch": statistics.mean(batch_sizes) if batch_sizes else 0.0, "max_abs_diff": max_diff,
            "errors": failed[:3]}


def load_test(url: str, artifact: str, policies: list[str], concurrencies: list[int], requests: int, steps: int,
              timeout: float = 120.0, time_limit: float = 600.0, log=print) -> list[dict]:
    info = get_info(url)
    num_classes = info.get("num_classes") or 1
    refs = {}
    t0 = time.perf_counter()
    for policy in policies:
        rows = rows_for(info, policy)
        for i in range(DISTINCT):
            refs[(policy, i)] = reference(artifact, request_for(policy, i, steps, num_classes), rows, info["policy"])
    log(f"references: {len(refs)} single requests through cachec.load in {time.perf_counter() - t0:.1f} s")
    # warm-up: every (policy, rows) runtime on the server is loaded before timing
    for policy in policies:
        post(url, request_for(policy, 0, steps, num_classes), timeout)
    deadline = time.perf_counter() + time_limit
    rows = []
    for c in concurrencies:
        for policy in policies:
            r = run_load(url, policy, c, requests, steps, num_classes, refs, timeout, deadline)
            log(f"  {policy:<10} concurrency {c:>3}: {r['ok']}/{r['sent']} ok, {r['throughput_rps']:.2f} req/s, "
                f"p50 {r['p50_s']:.3f} s, p99 {r['p99_s']:.3f} s, mean batch {r['mean_batch']:.2f}, "
                f"mismatched {r['mismatched']} (max diff {r['max_abs_diff']:.2g}), failed {r['failed']}, lost {r['lost']}")
            rows.append(r)
    return rows


def table(rows: list[dict], steps: int, info: dict) -> str:
    out = [f"steps {steps}, max batch {info['max_batch']} ({'padded' if info['pad'] else 'not padded'}), "
           f"device {info['device']}, policy served {info['policy']}",
           "| policy | concurrency | requests ok/sent | req/s | p50 (s) | p99 (s) | mean batch | equal to reference | lost |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| `{r['policy']}` | {r['concurrency']} | {r['ok']}/{r['sent']} | {r['throughput_rps']:.2f} | "
                   f"{r['p50_s']:.3f} | {r['p99_s']:.3f} | {r['mean_batch']:.2f} | {r['ok'] - r['mismatched']}/{r['ok']} "
                   f"| {r['lost']} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", default=None, help="artifact dir (default: compile builtin:tiny-dit with fora:3)")
    ap.add_argument("--url", default=None, help="a running server (127.0.0.1 only); default: start one")
    ap.add_argument("--policies", default="none,fora:3", help="policies to compare (run-time overrides of the artifact)")
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--requests", type=int, default=64, help="requests per (policy, concurrency)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--cpus-per-replica", type=float, default=1.0)
    ap.add_argument("--no-pad", action="store_true", help="start the server with --no-pad (replies then may differ "
                                                          "from the batch-1 reference by rounding)")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take before it counts as lost")
    ap.add_argument("--time-limit", type=float, default=900.0, help="no new requests after this many seconds")
    ap.add_argument("--json", default=None, help="write the rows as JSON to this file")
    args = ap.parse_args(argv)
    artifact = args.artifact
    if artifact is None:
        from cachec.cli import main as cli

        artifact = str(Path(tempfile.mkdtemp()) / "tiny-fora3")
        cli(["compile", "builtin:tiny-dit", "--policy", "fora:3", "--out", artifact])
    url = args.url
    if url is None:
        from cachec import serve as cserve

        cserve.start(artifact, port=args.port, replicas=args.replicas, max_batch=args.max_batch,
                     cpus_per_replica=args.cpus_per_replica, pad=not args.no_pad)
        url = f"http://127.0.0.1:{args.port}"
    if urlparse(url).hostname not in ("127.0.0.1", "localhost"):
        print("serve_load_test: loopback only (127.0.0.1)", file=sys.stderr)
        return 2
    try:
        policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        conc = [int(c) for c in args.concurrency.split(",")]
        rows = load_test(url, artifact, policies, conc, args.requests, args.steps, args.timeout, args.time_limit)
        print(table(rows, args.steps, get_info(url)))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    finally:
        if args.url is None:
            from ray import serve

            serve.shutdown()
    bad = sum(r["mismatched"] + r["failed"] + r["lost"] for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
