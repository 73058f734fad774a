"""``cachec serve`` against hostile or careless clients (issue 21, items 3, 4, 5 and 11).

Each test sends what a client should not be able to get away with and checks the one clear answer:
a 422 naming the field, a 413 for a huge body, a 503 with Retry-After for a full queue, no file
opened for a path a request names, no reply that echoes a megabyte back, no work for a client that
left, and a one-line error before Ray starts for a bad command line. The worker tests run without
Ray; the HTTP tests share one local Serve instance on 127.0.0.1 (``slow``: starting Ray dominates).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

import cachec
import cachec.cli
from cachec.errors import CachecError, RequestError
from cachec.methods import METHODS
from cachec.serve_limits import (
    DETAIL_CHARS,
    MIN_BODY_BYTES,
    RUNTIME_CACHE,
    default_body_limit,
    placement_problem,
    request_bytes,
)
from cachec.serve_worker import Abandoned, ArtifactWorker

pytestmark = [pytest.mark.serial, pytest.mark.usefixtures("one_thread")]

MAX_BATCH = 2
STEPS = 4
HOSTILE_LABELS = (99, -1, 2**62)  # past the table, negative, far past int32


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """tiny-dit compiled for ``budget``: a policy with a file-valued parameter (calib=FILE)."""
    out = str(tmp_path_factory.mktemp("hostile") / "budget")
    assert cachec.cli.main(["compile", "builtin:tiny-dit", "--policy", "budget:4", "--out", out]) == 0
    return out


@pytest.fixture(scope="module")
def worker(artifact):
    return ArtifactWorker(artifact, device="cpu", max_batch=MAX_BATCH)


def labels(value: int) -> dict:
    """``inputs.class_labels`` as a raw int64 tensor: the field the schema's ``ge=0`` does not guard."""
    return {"shape": [1], "dtype": "int64", "data": base64.b64encode(struct.pack("<q", value)).decode()}


def req(label=1, seed=0, steps=STEPS, **kw) -> dict:
    return {"class_label": label, "seed": seed, "steps": steps, "return_latent": True, **kw}


# -- 3: one request must not fail its batch -------------------------------------------------------------
@pytest.mark.parametrize("value", HOSTILE_LABELS)
def test_out_of_range_class_labels_are_rejected_naming_the_field(worker, value):
    with pytest.raises(RequestError, match=rf"^inputs\.class_labels: {value} is out of range; this model has "
                                           r"classes 0\.\.9$"):
        worker.prepare({"steps": STEPS, "inputs": {"class_labels": labels(value)}})
    with pytest.raises(RequestError, match="class_label"):
        worker.prepare(req(label=value))  # the named field: schema (ge=0) or range check


def test_a_failed_batch_is_rerun_one_request_at_a_time(worker):
    """A request that slipped past validation (here: its label set after prepare) fails alone; the
    requests batched with it get the images they get when run alone."""
    jobs = [worker.prepare(req(label=label, seed=seed)) for label, seed in ((3, 1), (4, 2))]
    poisoned = worker.prepare(req(label=5, seed=3))
    poisoned.cond["class_labels"] = torch.tensor([10**6])
    assert [0, 1] in worker.groups([jobs[0], poisoned, jobs[1]])  # the poisoned job shares a batch
    replies = worker.run([jobs[0], poisoned, jobs[1]])
    # the runtime's own label check (cachec.call_checks) refuses it; without it, an IndexError
    assert isinstance(replies[1], Exception) and "1000000" in str(replies[1]), replies[1]
    for job, reply in zip(jobs, (replies[0], replies[2]), strict=True):
        alone = worker.run([job])[0]
        assert reply["latent"] == alone["latent"] and reply["schedule"] == alone["schedule"]


# -- 4: a request never names a server file --------------------------------------------------------------
FILE_PARAMS = [(m.name, p.name) for m in METHODS.values() for p in m.all_params() if p.file]


def test_file_valued_parameters_are_declared():
    assert ("budget", "calib") in FILE_PARAMS and ("magcache", "ratios") in FILE_PARAMS


@pytest.mark.parametrize("method,key", FILE_PARAMS)
def test_a_request_naming_a_file_is_refused_without_touching_it(worker, tmp_path, monkeypatch, method, key):
    opened = []
    real_open = open

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"steps": STEPS, "ratios": [1.0] * STEPS}))
    monkeypatch.setattr("builtins.open", spy)
    monkeypatch.setattr("pathlib.Path.read_text", lambda self, *a, **k: opened.append(str(self)) or "")
    answers = set()
    for path in (secret, tmp_path / "missing.json", "/etc/passwd", tmp_path):
        with pytest.raises(RequestError, match=f"policy: {key} may name a file, and only the server sets files") as e:
            worker.prepare(req(policy=f"{method}:{key}={path}"))
        answers.add(str(e.value))
    assert not [p for p in opened if str(tmp_path) in p or p == "/etc/passwd"]
    assert len(answers) == 1  # the same answer whether the file exists, is JSON, or is a folder: no oracle


def test_a_request_without_the_file_parameter_keeps_the_served_one(worker):
    job = worker.prepare(req(policy="budget:3"))
    assert job.policy == "budget:3"  # the served artifact has no calibration file: evenly spaced steps


# -- 5: denial of service --------------------------------------------------------------------------------
def test_runtimes_per_policy_are_bounded_and_share_one_loaded_artifact(worker, monkeypatch):
    loads = []
    monkeypatch.setattr(cachec, "load", lambda *a, **k: loads.append(a) or pytest.fail("the artifact was reloaded"))
    for nfe in range(1, RUNTIME_CACHE + 3):
        worker.runtime(f"budget:{nfe}", MAX_BATCH)
        assert len(worker._runtimes) <= RUNTIME_CACHE
    assert loads == []
    programs = {id(rt.program) for rt in worker._runtimes.values()}
    assert programs == {id(worker._loaded.program)}  # one set of weights, however many policies


def test_a_first_request_for_none_leaves_the_compiled_plan_for_the_next(artifact):
    """The loaded program is always the artifact's own plan: a replica whose first request asks for
    `none` still runs the compiled policy's requests afterwards, on the same program."""
    fresh = ArtifactWorker(artifact, device="cpu", max_batch=MAX_BATCH)
    plain = fresh.run([fresh.prepare(req(steps=8, policy="none"))])[0]
    cached = fresh.run([fresh.prepare(req(steps=8))])[0]  # budget:4 over 8 steps: 4 full, 4 reused
    assert set(plain["schedule"]) == {"F"} and "R" in cached["schedule"], (plain["schedule"], cached["schedule"])
    assert {id(rt.program) for rt in fresh._runtimes.values()} == {id(fresh._loaded.program)}


def test_an_abandoned_trajectory_stops_between_steps(worker, monkeypatch):
    """The client leaves at step 3 of 1000: the trajectory stops after the step it was running."""
    job = worker.prepare(req(steps=1000))
    real = worker._stop_if_abandoned
    steps = []

    def leave_at_step_3(group):
        check = real(group)

        def callback(step, x):
            steps.append(step)
            if step == 2:
                job.cancelled = True  # what CachecServer.sample does when Serve cancels the request
            check(step, x)
        return callback

    monkeypatch.setattr(worker, "_stop_if_abandoned", leave_at_step_3)
    before = worker.abandoned
    [reply] = worker.run([job])
    assert isinstance(reply, Abandoned) and steps == [0, 1, 2] and worker.abandoned == before + 1
    # a job abandoned before its batch starts is not run at all; the one beside it still is
    gone, kept = worker.prepare(req(seed=1)), worker.prepare(req(seed=2))
    gone.cancelled = True
    replies = worker.run([gone, kept])
    assert isinstance(replies[0], Abandoned) and replies[1]["batch_size"] == 1
    # a batch keeps running while one of its clients still waits
    steps.clear()
    a, b = worker.prepare(req(seed=3)), worker.prepare(req(seed=4))
    a.cancelled = True
    worker.run([a, b])  # `a` is dropped before the start; b runs all its steps
    assert steps == list(range(STEPS))


def test_body_limit_default_follows_the_largest_valid_request(artifact):
    from cachec.artifact import read_manifest

    manifest = read_manifest(artifact)
    assert request_bytes(manifest) < MIN_BODY_BYTES == default_body_limit(manifest)
    big = json.loads(json.dumps(manifest))  # a text model: [1, 512, 4096] float32 embeddings, 8 MiB raw
    big["program"]["inputs"].append("encoder_hidden_states")
    big["program"]["values"]["encoder_hidden_states"] = {"shape": ["B", 512, 4096], "dtype": "float32"}
    assert default_body_limit(big) >= 2 * (512 * 4096 * 4 * 4 // 3)


def test_an_unplaceable_replica_is_named():
    two_cpus = [{"CPU": 2.0, "memory": 1e9}]
    assert placement_problem(two_cpus, 1.0, 0.0) is None
    assert placement_problem(two_cpus, 100.0, 0.0) == (
        "a replica reserves 100 CPUs (--cpus-per-replica) and the largest node of the Ray cluster has 2: "
        "lower --cpus-per-replica or add a larger node")
    assert "needs 1 GPU and no node" in placement_problem(two_cpus, 1.0, 1.0)
    assert placement_problem([*two_cpus, {"CPU": 8.0, "GPU": 1.0}], 4.0, 1.0) is None


# -- 11: a bad command line is one line, before Ray starts -------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["--policy", "fora:2"], "--policy is for pipeline directories; an artifact serves the policy it was compiled "
                             "with (budget:4"),
    (["--port", "99999"], "--port must be 1..65535; got 99999"),
    (["--port", "0"], "--port must be 1..65535; got 0"),
    (["--max-queued", "0"], "--max-queued must be at least 1"),
    (["--max-body-bytes", "10"], "--max-body-bytes must be at least 1024"),
    (["--cpus-per-replica", "-1"], "--cpus-per-replica must be at least 0"),
], ids=["policy-on-artifact", "port-99999", "port-0", "queue-0", "body-10", "cpus-negative"])
def test_bad_serve_options_are_one_line_before_ray_starts(artifact, capsys, argv, message):
    ray = pytest.importorskip("ray", reason="cachec[serve] is not installed")  # CI installs it
    was_running = ray.is_initialized()
    assert cachec.cli.main(["serve", artifact, "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert ray.is_initialized() == was_running  # refused before Ray was started


# -- over HTTP: one local Serve instance for the module ---------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(artifact):
    ray = pytest.importorskip("ray", reason="cachec[serve] is not installed")  # CI installs it
    from ray import serve

    from cachec import serve as cserve

    env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env} if env else None)
    port = _free_port()
    cserve.start(artifact, port=port, max_batch=MAX_BATCH, batch_wait_s=0.1, max_queued=1, device="cpu")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def post(url: str, body=None, raw: bytes | None = None, timeout: float = 120) -> tuple[int, dict, object]:
    """Status, JSON reply and headers (case-insensitive) of one POST /generate."""
    data = raw if raw is not None else json.dumps(body).encode()
    r = urllib.request.Request(url + "/generate", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def post_politely(url: str, body) -> tuple[int, dict, object]:
    """A client that honours Retry-After: a full queue (503) is retried after the delay it names."""
    for _ in range(30):
        code, reply, headers = post(url, body)
        if code != 503 or headers.get("Retry-After") is None:
            return code, reply, headers
        time.sleep(float(headers["Retry-After"]))
    return code, reply, headers


def concurrently(url: str, bodies: list, send_one=post_politely) -> list:
    results: list = [None] * len(bodies)

    def send(i):
        results[i] = send_one(url, bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


@pytest.mark.slow
def test_http_bad_labels_fail_alone_and_files_are_not_named(served):
    # at once, the bad one between the good ones (the module's server queues one request: the client retries)
    bodies = [req(seed=1), {"steps": STEPS, "inputs": {"class_labels": labels(99)}}, req(seed=2)]
    results = concurrently(served, bodies)
    assert results[0][0] == results[2][0] == 200, results
    assert max(results[0][1]["batch_size"], results[2][1]["batch_size"]) <= MAX_BATCH
    for value in HOSTILE_LABELS:
        code, reply, _ = post(served, {"steps": STEPS, "inputs": {"class_labels": labels(value)}})
        assert (code, reply) == (422, {"detail": f"inputs.class_labels: {value} is out of range; this model has "
                                                 "classes 0..9"})
    answers = {json.dumps(post(served, req(policy=f"budget:3,calib={path}"))[:2])
               for path in ("/etc/passwd", "/etc/shadow", "/nonexistent", "/tmp")}
    assert len(answers) == 1 and '"policy: calib may name a file' in answers.pop()


@pytest.mark.slow
def test_http_body_limit_and_clipped_echoes(served):
    code, reply, _ = post(served, raw=b'{"class_label": 1, "pad": "' + b"x" * (2 * MIN_BODY_BYTES) + b'"}')
    assert code == 413 and "larger than this server's limit of 1048576 bytes" in reply["detail"]
    for body in (req(policy="fora:" + "9" * 200_000), {**req(), "k" * 200_000: 1},
                 req(inputs={"y" * 200_000: labels(1)}), req(inputs={"class_labels": {**labels(1), "dtype": "z" * 10**5}})):
        code, reply, _ = post(served, body)
        assert code == 422 and len(reply["detail"]) <= DETAIL_CHARS + 50, reply["detail"][:200]
        assert "z" * 100 not in reply["detail"] and "y" * 100 not in reply["detail"]


@pytest.mark.slow
def test_http_a_full_queue_answers_503_with_retry_after(served):
    results = concurrently(served, [req(seed=i, steps=200) for i in range(10)], send_one=post)
    codes = [code for code, _, _ in results]
    assert set(codes) == {200, 503}, codes
    for code, reply, headers in results:
        if code == 503:
            assert headers.get("Retry-After") == "1" and "queue is full" in reply["detail"]


@pytest.mark.slow
def test_http_a_client_that_leaves_costs_no_more_steps(served):
    info = json.loads(urllib.request.urlopen(served + "/info", timeout=30).read())
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        post(served, req(steps=1000), timeout=0.5)  # gives up long before 1000 steps
    assert post(served, req(seed=9))[0] == 200  # the next client is served
    deadline = time.time() + 30
    while json.loads(urllib.request.urlopen(served + "/info", timeout=30).read())["abandoned"] == info["abandoned"]:
        assert time.time() < deadline, "the abandoned request was never stopped"
        time.sleep(0.2)


@pytest.mark.slow
def test_http_the_cluster_cannot_place_a_huge_replica(served):
    from cachec import serve as cserve

    with pytest.raises(CachecError, match="cannot place a sampling replica: a replica reserves 100 CPUs"):
        cserve.check_placement(100.0, "cpu", cluster=False)


# -- fuzz: any body is a 200 or a 4xx JSON error, never a 500, and the server keeps answering ------------------
def _bodies():
    """Near-valid requests with hostile parts: each field is often valid, sometimes out of range,
    sometimes JSON of another type or shape, so that bodies reach every check and some run."""
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                        st.floats(), st.text(max_size=40))
    junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=12)
    int64 = st.integers(-2**63, 2**63 - 1).map(labels)
    raw = st.fixed_dictionaries({
        "shape": st.one_of(st.lists(st.integers(-2, 2**40), max_size=4), junk),
        "dtype": st.one_of(st.sampled_from(["int64", "int32", "float32", "float16", "bfloat16"]), junk),
        "data": st.one_of(st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()), junk)})
    fields = {
        "class_label": st.one_of(st.integers(0, 9), st.integers(-2**64, 2**64), junk),
        "seed": st.one_of(st.integers(0, 2**63 - 1), st.integers(-2**64, 2**64), junk),
        "steps": st.one_of(st.integers(1, 12), st.sampled_from([0, -1, 1001, 2**31, 2**63]), junk),
        "policy": st.one_of(st.sampled_from(["budget:2", "budget:3,calib=/etc/passwd", "none", "fora:2",
                                             "budget:nfe=0", "magcache:ratios=/etc/hostname", "budget:3,base=step",
                                             "budget:2,warmup=9", "budget:" + "9" * 300]), junk),
        "inputs": st.one_of(st.dictionaries(st.sampled_from(["class_labels", "timestep", "x"]),
                                            st.one_of(int64, raw), max_size=2), junk),
        "return_latent": st.one_of(st.booleans(), junk),
        "prompt": junk, "prompt_embeds": st.one_of(raw, junk)}
    required = st.fixed_dictionaries({"class_label": fields["class_label"]},
                                      optional={k: v for k, v in fields.items() if k != "class_label"})
    valid = st.fixed_dictionaries({"class_label": st.integers(0, 9), "seed": st.integers(0, 2**63 - 1),
                                   "steps": st.integers(4, 8)})
    one_bad_field = st.sampled_from(sorted(fields)).flatmap(
        lambda key: fields[key].map(lambda value: {"class_label": 1, "steps": 4, key: value}))
    return st.one_of(valid, one_bad_field, required, st.fixed_dictionaries({}, optional=fields), junk)


@pytest.mark.slow
def test_http_fuzzed_bodies_get_200_or_a_clean_4xx(served):
    from hypothesis import HealthCheck, given, settings

    seen = {}

    @settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(_bodies())
    def one(body):
        code, reply, _ = post(served, body)
        seen[code] = seen.get(code, 0) + 1
        assert code == 200 or (400 <= code < 500 and isinstance(reply.get("detail"), str)), (code, body, reply)

    one()
    print("fuzzed bodies by status:", dict(sorted(seen.items())))
    assert seen.get(422, 0) > 10 and seen.get(200, 0) > 2  # bad bodies answered as such, and some ran
    assert post(served, req(seed=5))[0] == 200  # and the server still serves
