"""Issue 24's methods behind ``cachec serve``: the serve worker (no Ray: the same
:class:`~cachec.serve_worker.ArtifactWorker` a replica runs) takes an artifact compiled for a new
method and answers requests exactly as that artifact loaded with ``cachec.load`` and run alone by a
sampling loop written here (diffusers' DDIM scheduler).

Two methods, one of each serving rule: DiCache is dynamic (a probe decides per step for the whole
batch, so each request runs alone), FEB-Cache static (requests batch together). The other methods
reach the same worker code through their artifacts; ``test_every_method.py`` walks them all through
planning, eager and the backends' capability gates.
"""

from __future__ import annotations

import diffusers
import pytest
import torch

import cachec
import cachec.cli
from cachec.models import builtin_dir
from cachec.serve_schema import decode_tensor
from cachec.serve_worker import ArtifactWorker

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # two exports of the bundled model

STEPS = 10
SPECS = {"dicache": "dicache:0.3,warmup=3", "febcache": "febcache:2,2"}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_new")
    out = {}
    for name, spec in SPECS.items():
        out[name] = str(root / name)
        assert cachec.cli.main(["compile", "builtin:tiny-dit", "--policy", spec, "--out", out[name]]) == 0
    return out


def alone(artifact: str, seed: int, label: int, rows: int) -> tuple[torch.Tensor, str]:
    """The request alone: ``cachec.load`` and a DDIM loop, its noise repeated to the ``rows`` rows
    the worker ran it in (a batch's row count is what its kernels see); (row 0, schedule)."""
    rt = cachec.load(artifact)
    sched = diffusers.DDIMScheduler.from_pretrained(str(builtin_dir("tiny-dit") / "scheduler"))
    sched.set_timesteps(STEPS)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed)).repeat(rows, 1, 1, 1)
    y = torch.full((rows,), label, dtype=torch.long)
    rt.reset(STEPS)
    with torch.no_grad():
        for t in sched.timesteps:
            out = rt(hidden_states=x, timestep=t.expand(rows), class_labels=y, return_dict=False)[0]
            x = sched.step(out, t, x, return_dict=False)[0]
    return x[:1], rt.stats.schedule


@pytest.mark.parametrize("name", list(SPECS))
def test_the_worker_serves_a_new_method_like_the_artifact_run_alone(name, artifacts):
    worker = ArtifactWorker(artifacts[name], device="cpu", max_batch=4)
    reqs = [{"class_label": 3, "seed": 11, "steps": STEPS, "return_latent": True},
            {"class_label": 7, "seed": 12, "steps": STEPS, "return_latent": True}]
    jobs = [worker.prepare(r) for r in reqs]
    groups = sorted(map(sorted, worker.groups(jobs)))
    assert groups == ([[0], [1]] if name == "dicache" else [[0, 1]]), groups  # dynamic: alone; static: batched
    for r, reply in zip(reqs, worker.run(jobs), strict=True):
        want, schedule = alone(artifacts[name], r["seed"], r["class_label"], reply["batch_rows"])
        assert "R" in schedule or "P" in schedule, schedule  # the method really reused something
        assert torch.equal(decode_tensor(reply["latent"], "latent"), want)
