"""``cachec serve``: exact batching, request isolation, bad requests, replica death, a small load test.

References are independent of the server: the same request run alone through ``cachec.load``
with a sampling loop written here (diffusers' DDIM scheduler), and the uncached diffusers model.
The worker tests run without Ray; the Serve tests (``slow``) start one local Serve instance on
127.0.0.1 and share it.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import diffusers
import pytest
import torch

import cachec
import cachec.cli
from cachec.errors import RequestError
from cachec.models import builtin_dir, resolve
from cachec.serve_schema import decode_tensor, encode_tensor
from cachec.serve_worker import ArtifactWorker, PipelineWorker, unaligned_rows

pytestmark = [pytest.mark.serial, pytest.mark.usefixtures("one_thread")]

STEPS = 12
MAX_BATCH = 4
ROOT = Path(__file__).resolve().parents[2]  # the repository (tests/e2e/ is two levels down)


# -- fixtures and the independent reference ----------------------------------------------------------
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    out = {}
    for name, spec in (("fora", "fora:3"), ("fbcache", "fbcache:0.03")):
        out[name] = str(d / name)
        assert cachec.cli.main(["compile", "builtin:tiny-dit", "--policy", spec, "--out", out[name]]) == 0
    return out


_RUNTIMES: dict = {}


def reference(art: str, policy: str | None, seed: int, label: int, steps: int, rows: int) -> torch.Tensor:
    """The request alone: cachec.load, the request's noise repeated to ``rows`` rows, a DDIM loop; row 0."""
    key = (art, policy)
    if key not in _RUNTIMES:
        _RUNTIMES[key] = cachec.load(art, policy=policy)
    return ddim(_RUNTIMES[key], seed, label, steps, rows)


def ddim(denoiser, seed: int, label: int, steps: int, rows: int) -> torch.Tensor:
    sched = diffusers.DDIMScheduler.from_pretrained(str(builtin_dir("tiny-dit") / "scheduler"))
    sched.set_timesteps(steps)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed)).repeat(rows, 1, 1, 1)
    y = torch.full((rows,), label, dtype=torch.long)
    if isinstance(denoiser, cachec.CacheRuntime):
        denoiser.reset(steps)
    with torch.no_grad():
        for t in sched.timesteps:
            out = denoiser(hidden_states=x, timestep=t.expand(rows), class_labels=y, return_dict=False)[0]
            x = sched.step(out, t, x, return_dict=False)[0]
    return x[:1]


def latent(reply: dict) -> torch.Tensor:
    return decode_tensor(reply["latent"], "latent")


def req(label=1, seed=0, steps=STEPS, **kw) -> dict:
    return {"class_label": label, "seed": seed, "steps": steps, "return_latent": True, **kw}


# -- worker (no Ray) -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fora_worker(artifacts):
    return ArtifactWorker(artifacts["fora"], device="cpu", max_batch=MAX_BATCH)


def test_batched_requests_equal_each_request_alone_bit_for_bit(fora_worker, artifacts):
    reqs = [req(label=3, seed=11), req(label=7, seed=12), req(label=0, seed=13)]
    batched = fora_worker.run([fora_worker.prepare(r) for r in reqs])
    assert [r["batch_size"] for r in batched] == [3, 3, 3] and batched[0]["batch_rows"] == MAX_BATCH
    assert batched[0]["schedule"] == "FRRFRRFRRFRR" and batched[0]["nfe"] < STEPS / 2
    for r, reply in zip(reqs, batched, strict=True):
        alone = fora_worker.run([fora_worker.prepare(r)])[0]  # through the server's code, alone
        assert alone["batch_size"] == 1
        ref = reference(artifacts["fora"], None, r["seed"], r["class_label"], STEPS, MAX_BATCH)
        assert torch.equal(latent(reply), ref)
        assert torch.equal(latent(alone), ref)
        assert reply["image_png"] == alone["image_png"]
    # the padding is what makes this exact: at batch 1 the CPU kernels round differently (by ~1e-6)
    one = reference(artifacts["fora"], None, reqs[0]["seed"], reqs[0]["class_label"], STEPS, 1)
    assert (one - latent(batched[0])).abs().max() < 1e-4


def test_none_override_equals_the_uncached_model(fora_worker):
    reply = fora_worker.run([fora_worker.prepare(req(label=5, seed=4, policy="none"))])[0]
    assert reply["schedule"] == "F" * STEPS and reply["nfe"] == pytest.approx(STEPS)
    model = resolve("builtin:tiny-dit").model
    uncached = ddim(model, 4, 5, STEPS, MAX_BATCH)
    torch.testing.assert_close(latent(reply), uncached, rtol=0, atol=1e-5)


def test_mixed_requests_are_grouped_by_policy_and_steps(fora_worker, artifacts):
    reqs = [req(seed=1), req(seed=2, policy="fora:2"), req(seed=3, steps=9), req(seed=4), req(seed=5, policy="fora:2")]
    jobs = [fora_worker.prepare(r) for r in reqs]
    assert sorted(map(sorted, fora_worker.groups(jobs))) == [[0, 3], [1, 4], [2]]
    replies = fora_worker.run(jobs)
    for r, reply in zip(reqs, replies, strict=True):
        policy = r.get("policy")
        assert reply["policy"] == (policy or "fora:3")
        ref = reference(artifacts["fora"], policy, r["seed"], r["class_label"], r["steps"], MAX_BATCH)
        assert torch.equal(latent(reply), ref)
    assert replies[1]["schedule"] == "FRFRFRFRFRFR"


def test_dynamic_policy_requests_run_alone(artifacts):
    w = ArtifactWorker(artifacts["fbcache"], device="cpu", max_batch=MAX_BATCH)
    reqs = [req(label=2, seed=21), req(label=8, seed=22), req(label=4, seed=23)]
    jobs = [w.prepare(r) for r in reqs]
    assert all(j.alone for j in jobs) and sorted(map(sorted, w.groups(jobs))) == [[0], [1], [2]]
    for r, reply in zip(reqs, w.run(jobs), strict=True):
        assert reply["batch_size"] == 1 and reply["batch_rows"] == 1
        assert torch.equal(latent(reply), reference(artifacts["fbcache"], None, r["seed"], r["class_label"], STEPS, 1))


BAD = [
    ({"seed": 1, "steps": 5}, "missing field class_label"),
    (req(policy="teacache:0.1"), "compiled for 'fora:3'"),
    (req(policy="nosuch:3"), "unknown policy 'nosuch'"),
    (req(policy="fora:N=0"), "N=0 is out of range"),
    (req(policy="fora:3,bogus=1"), "bogus"),
    (req(steps=0), "steps: Input should be greater than or equal to 1"),
    (req(steps=5000), "steps: 5000 is out of range; this server runs 1..1000"),
    (req(label=10), "class_label: 10 is out of range"),
    (req(colour="red"), "colour: unknown field"),
    (req(prompt="a cat"), "no text encoder"),
    (req(prompt_embeds=encode_tensor(torch.zeros(1, 4, 8))), "takes no encoder_hidden_states"),
    (req(inputs={"class_labels": encode_tensor(torch.zeros(2, dtype=torch.long))}), "given twice"),
    ({"seed": 1, "inputs": {"class_labels": encode_tensor(torch.zeros(2, dtype=torch.long))}},
     "shape [2] int64 is not accepted; this model takes [1] int64"),
    ({"inputs": {"class_labels": {"shape": [1], "dtype": "int64", "data": "AAA="}}}, "bytes of data"),
    ("not an object", "a request is a JSON object"),
]


@pytest.mark.parametrize("body,message", BAD, ids=[m for _, m in BAD])
def test_bad_requests_are_rejected_with_a_clear_message(fora_worker, body, message):
    with pytest.raises(RequestError, match=None) as info:
        fora_worker.prepare(body)
    assert message in str(info.value)


def test_text_conditioned_artifact_takes_prompt_embeddings(tmp_path):
    """SD3 (small, random weights): prompt_embeds and pooled_prompt_embeds as exact tensors.

    Its 6-wide pooled projection has 24-byte rows: on the CPU a sample's bits then depend on its
    row in the batch (measured: 2e-7), so the worker runs such a model's requests alone, and each
    equals the request run alone bit for bit."""
    from small_models import make

    make("sd3").save_pretrained(tmp_path / "sd3")
    art = str(tmp_path / "sd3-fora2")
    assert cachec.cli.main(["compile", str(tmp_path / "sd3"), "--policy", "fora:2", "--out", art]) == 0
    w = ArtifactWorker(art, device="cpu", max_batch=2)
    info = w.info()
    assert info["conditioning"]["encoder_hidden_states"]["shape"] == [1, 8, 12]
    assert info["conditioning"]["pooled_projections"]["shape"] == [1, 6]
    assert info["batching"].startswith("alone: per-sample rows of") and "pooled_projections" in w.unaligned
    g = torch.Generator().manual_seed(0)
    embeds = [(torch.randn(1, 8, 12, generator=g), torch.randn(1, 6, generator=g)) for _ in range(2)]
    reqs = [{"seed": 40 + i, "steps": 6, "return_latent": True, "prompt_embeds": encode_tensor(e),
             "pooled_prompt_embeds": encode_tensor(p)} for i, (e, p) in enumerate(embeds)]
    replies = w.run([w.prepare(r) for r in reqs])
    rt = cachec.load(art)
    for r, (e, p), reply in zip(reqs, embeds, replies, strict=True):
        assert reply["batch_size"] == 1 and reply["schedule"] == "FRFRFR"
        sched = diffusers.FlowMatchEulerDiscreteScheduler()
        sched.set_timesteps(6)
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(r["seed"]))
        rt.reset(6)
        with torch.no_grad():
            for t in sched.timesteps:
                out = rt(hidden_states=x, timestep=t.expand(1).float(), encoder_hidden_states=e, pooled_projections=p,
                         return_dict=False)[0]
                x = sched.step(out, t, x, return_dict=False)[0]
        assert torch.equal(latent(reply), x)
    bad = dict(reqs[0], prompt_embeds=encode_tensor(torch.zeros(1, 7, 12)))
    with pytest.raises(RequestError, match=r"prompt_embeds \(encoder_hidden_states\): shape \[1, 7, 12\] float32 is not accepted; this model takes \[1, 8, 12\]"):
        w.prepare(bad)
    with pytest.raises(RequestError, match="missing field pooled_prompt_embeds"):
        w.prepare({k: v for k, v in reqs[0].items() if k != "pooled_prompt_embeds"})
    with pytest.raises(RequestError, match="takes no class_labels"):
        w.prepare(dict(reqs[0], class_label=1))


def test_row_alignment_rule():
    values = {"x": {"shape": ["B", 3, 16, 16], "dtype": "float32"}, "t": {"shape": ["B"], "dtype": "float32"},
              "y": {"shape": ["B"], "dtype": "int64"}, "p": {"shape": ["B", 6], "dtype": "float32"},
              "h": {"shape": ["B", 6], "dtype": "float16"}, "w": {"shape": [6, 6], "dtype": "float32"}}
    assert unaligned_rows(values) == ["p", "h"]


def test_a_failing_trajectory_fails_only_its_own_requests(fora_worker, artifacts, monkeypatch):
    real = fora_worker.runtime

    def runtime(method, rows):  # the worker hands its runtimes parsed methods
        if method.spec == "fora:2":
            raise RuntimeError("simulated device fault")
        return real(method, rows)

    monkeypatch.setattr(fora_worker, "runtime", runtime)
    reqs = [req(seed=31), req(seed=32, policy="fora:2"), req(seed=33)]
    replies = fora_worker.run([fora_worker.prepare(r) for r in reqs])
    assert isinstance(replies[1], RuntimeError) and "simulated device fault" in str(replies[1])
    for i in (0, 2):
        assert torch.equal(latent(replies[i]), reference(artifacts["fora"], None, reqs[i]["seed"], 1, STEPS, MAX_BATCH))


def test_pipeline_directory_is_served_like_the_pipeline_runs(tmp_path):
    torch.manual_seed(0)
    tr = diffusers.DiTTransformer2DModel(sample_size=8, in_channels=4, out_channels=8, num_layers=2,
                                         num_attention_heads=2, attention_head_dim=8, num_embeds_ada_norm=1000).eval()
    with torch.no_grad():
        for p in tr.parameters():
            p.normal_(0, 0.05)
    torch.manual_seed(1)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), latent_channels=4,
                                  norm_num_groups=8).eval()
    diffusers.DiTPipeline(transformer=tr, vae=vae, scheduler=diffusers.DDIMScheduler()).save_pretrained(tmp_path)
    w = PipelineWorker(tmp_path, policy="fora:3", device="cpu")
    reply = w.run([w.prepare(req(label=7, seed=5, steps=6))])[0]
    assert reply["schedule"] == "FRRFRR"
    pipe = cachec.enable(diffusers.DiTPipeline.from_pretrained(tmp_path), policy="fora:3")
    direct = pipe(class_labels=[7], num_inference_steps=6, generator=torch.Generator().manual_seed(5),
                  output_type="np").images[0]
    assert torch.equal(latent(reply)[0], torch.as_tensor(direct).permute(2, 0, 1).float())
    with pytest.raises(RequestError, match="does not take prompt"):
        w.prepare({"prompt": "a cat"})
    with pytest.raises(RequestError, match="compiled for 'fora:3'"):
        w.prepare(req(policy="fbcache:0.1"))


def test_cli_rejects_a_bad_target_before_starting_ray(tmp_path, capsys):
    pytest.importorskip("ray", reason="cachec[serve] is not installed")  # CI installs it
    assert cachec.cli.main(["serve", str(tmp_path)]) == 2
    assert "neither a cachec artifact" in capsys.readouterr().err
    assert cachec.cli.main(["serve", str(tmp_path), "--max-batch", "0"]) == 2
    assert "--max-batch must be at least 1" in capsys.readouterr().err


def test_serve_config_builder_and_device_checks(artifacts):
    pytest.importorskip("ray", reason="cachec[serve] is not installed")  # CI installs it
    from cachec import serve as cserve

    assert cserve.app({"target": artifacts["fora"], "max_batch": "2", "pad": "false", "device": "cpu"}) is not None
    with pytest.raises(cachec.CachecError, match="unknown arguments"):
        cserve.app({"target": artifacts["fora"], "batch": 2})
    with pytest.raises(cachec.CachecError, match="unknown device .gpu7."):
        cserve.build_app(artifacts["fora"], device="gpu7")
    if not torch.cuda.is_available():  # a GPU this machine lacks is refused here, not in a replica
        with pytest.raises(cachec.CachecError, match="no CUDA GPU"):
            cserve.build_app(artifacts["fora"], device="cuda")
        assert cserve.build_app(artifacts["fora"], device="cuda", ray_cluster=True) is not None
    with pytest.raises(cachec.CachecError, match="--max-batch must be 1..1024"):
        cserve.build_app(artifacts["fora"], max_batch=2000)


def test_worker_rejects_a_batch_beyond_the_artifact(artifacts):
    with pytest.raises(cachec.CachecError, match="--max-batch must be 1..1024"):
        ArtifactWorker(artifacts["fora"], device="cpu", max_batch=4096)


# -- Ray Serve ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cachec_serve_command(artifacts):
    """The console command as a user runs it: starts Ray and Serve, answers on loopback, stops on SIGTERM."""
    import signal
    import subprocess

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cachec.cli", "serve", artifacts["fora"], "--port", str(port),
                             "--max-batch", "2", "--device", "cpu"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        lines = []
        while not lines or (lines[-1] and "/generate" not in lines[-1]):  # printed once the app is ready
            lines.append(proc.stdout.readline())
        assert f"http://127.0.0.1:{port}/generate" in lines[-1], lines
        code, reply = post(f"http://127.0.0.1:{port}", req(label=6, seed=3, steps=4))
        assert code == 200 and reply["schedule"] == "FRRF" and reply["batch_rows"] == 2
        assert torch.equal(latent(reply), reference(artifacts["fora"], None, 3, 6, 4, 2))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(artifacts):
    ray = pytest.importorskip("ray", reason="cachec[serve] is not installed")  # CI installs it
    from ray import serve

    from cachec import serve as cserve

    env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env} if env else None)
    port = _free_port()
    handle = cserve.start(artifacts["fora"], port=port, replicas=1, max_batch=MAX_BATCH, batch_wait_s=0.1)
    yield {"url": f"http://127.0.0.1:{port}", "handle": handle, "artifact": artifacts["fora"]}
    serve.shutdown()
    ray.shutdown()


def post(url: str, body) -> tuple[int, dict]:
    r = urllib.request.Request(url + "/generate", data=json.dumps(body).encode(),
                               headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(r, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_http_concurrent_requests_batched_and_bad_ones_rejected(served):
    url = served["url"]
    info = json.loads(urllib.request.urlopen(url + "/info", timeout=30).read())
    assert info["policy"] == "fora:3" and info["max_batch"] == MAX_BATCH and info["steps"] == [1, 1000]
    good = [req(label=i % 10, seed=100 + i) for i in range(8)]
    bad = [(b, m) for b, m in BAD if isinstance(b, dict)][:6]
    bodies = good + [b for b, _ in bad]
    results: list = [None] * len(bodies)

    def send(i):
        results[i] = post(url, bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for (code, reply), (_, message) in zip(results[len(good):], bad, strict=True):
        assert code == 422 and message in reply["detail"]
    for body, (code, reply) in zip(good, results[:len(good)], strict=True):
        assert code == 200, reply
        assert torch.equal(latent(reply), reference(served["artifact"], None, body["seed"], body["class_label"],
                                                    STEPS, MAX_BATCH))
        from PIL import Image

        assert Image.open(io.BytesIO(base64.b64decode(reply["image_png"]))).size == (16, 16)
    assert max(r["batch_size"] for _, r in results[:len(good)]) > 1  # concurrent requests did share trajectories
    code, reply = post(url, "not json object")
    assert code == 422 and "request" in reply["detail"]


@pytest.mark.slow
def test_python_handle(served):
    from ray import serve

    handle = serve.get_app_handle("cachec")  # what an in-cluster caller does
    reply = handle.sample.remote(req(label=2, seed=7, policy="fora:2")).result(timeout_s=120)
    assert reply["schedule"] == "FRFRFRFRFRFR"
    assert torch.equal(latent(reply), reference(served["artifact"], "fora:2", 7, 2, STEPS, MAX_BATCH))
    with pytest.raises(RequestError, match="class_label: 12 is out of range"):
        handle.sample.remote(req(label=12)).result(timeout_s=120)


@pytest.mark.slow
def test_small_load_test(served):
    spec = importlib.util.spec_from_file_location("serve_load_test", ROOT / "tools" / "serve_load_test.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules["serve_load_test"] = tool
    spec.loader.exec_module(tool)
    rows = tool.load_test(served["url"], served["artifact"], ["none", "fora:3"], [1, 4], requests=8, steps=10,
                          timeout=120, time_limit=240, log=lambda *_: None)
    assert len(rows) == 4
    for r in rows:
        assert (r["sent"], r["ok"], r["failed"], r["lost"], r["mismatched"]) == (8, 8, 0, 0, 0), r
    fora4 = next(r for r in rows if r["policy"] == "fora:3" and r["concurrency"] == 4)
    assert fora4["mean_batch"] > 1


def _kill_the_replica():
    import ray

    actors = [a for a in ray.util.list_named_actors(all_namespaces=True)
              if "CachecServer" in a["name"] and "Ingress" not in a["name"]]
    assert len(actors) == 1, actors
    ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=True)


@pytest.mark.slow
def test_a_replica_that_dies_mid_request_is_restarted_and_no_request_is_lost(served):
    """Runs last in this module: it kills the only sampling replica while it samples, twice.

    With ``retries=1`` (the default) the ingress resends the requests; they are served by the
    replica Serve starts instead and still equal their references. With ``retries=0`` every
    request in flight gets a 503 that says the replica died. Either way none hangs or vanishes.
    """
    from ray import serve

    from cachec import serve as cserve

    handle, url, art = served["handle"], served["url"], served["artifact"]
    steps = 1000  # the most a request may ask for: the trajectory is still running when the replica is killed
    before = handle.sample.remote(req(steps=2)).result(timeout_s=120)["replica"]
    long = [req(label=3, seed=200, steps=steps)] * MAX_BATCH  # one batch; one reference serves all four
    responses = [handle.sample.remote(body) for body in long]
    time.sleep(0.5)
    _kill_the_replica()
    replies = [r.result(timeout_s=300) for r in responses]  # retried: every request answered with its image
    ref = reference(art, None, 200, 3, steps, MAX_BATCH)
    for reply in replies:
        assert reply["replica"] != before  # served again, by the replacement replica
        assert torch.equal(latent(reply), ref)

    serve.run(cserve.build_app(art, max_batch=MAX_BATCH, batch_wait_s=0.1, retries=0), name=cserve.APP_NAME,
              route_prefix="/")
    results: list = [None] * MAX_BATCH

    def send(i):
        results[i] = post(url, long[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(MAX_BATCH)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    _kill_the_replica()
    for t in threads:
        t.join(300)
    assert all(r is not None for r in results)  # every request answered, none hangs
    for code, reply in results:
        assert code == 503 and "the sampling replica died while running this request" in reply["detail"], reply
    # Serve starts a new replica; requests succeed again and still equal their references
    deadline = time.time() + 180
    while True:
        code, reply = post(url, req(label=4, seed=9))
        if code == 200 or time.time() > deadline:
            break
        time.sleep(2)
    assert code == 200, reply
    assert torch.equal(latent(reply), reference(art, None, 9, 4, STEPS, MAX_BATCH))
    assert serve.status().applications[cserve.APP_NAME].status == "RUNNING"
