"""What a step would cost a GPU, counted on the CPU: dispatched ops (≈ eager kernel launches) and
device→host syncs, on full-depth, tiny-width FLUX.1-dev (19 + 38 blocks) and DiT-XL/2 (28 blocks).

The reference is the plain diffusers model under the same counter (``cachec.dispatch_count``
counts every non-view ATen op and every ``item``/``equal``/``is_nonzero``). Bounds:

* ``none`` ≤ 1.02 × the plain model: compiling must not add work;
* a FORA cached step ≤ 0.35 × plain on DiT and ≤ 0.25 × on FLUX: a skipped attention/MLP takes
  its layer norm and shift/scale with it (they only feed it);
* a TaylorSeer full step ≤ 1.25 × plain, its predicted step ≤ 0.40 × plain on FLUX: the state
  update is one product per stream, not a multiply-add per order;
* a step-level cached step (static, FBCache) ≤ the plain model's prologue (+ block 0 for a probe)
  + epilogue, measured on the plain model with hooks at the block boundaries, plus a few ops for
  the probe and the residual apply;
* syncs: a static policy makes none once the trajectory's call pattern is known (from the first
  step with a pipeline's ``cache_context``), a dynamic one exactly one per step, its decision.
"""

import pytest
import torch
from diffusers import DiTTransformer2DModel, FluxTransformer2DModel

from cachec.capture import capture
from cachec.dispatch_count import count
from cachec.models import synth_inputs
from cachec.planner import compile_program
from cachec.policy import parse_policy
from cachec.runtime import CacheRuntime, signature_of

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

STEPS = 6
CONFIGS = {
    "dit-xl-2": (DiTTransformer2DModel, dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                             num_layers=28, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                                             norm_type="ada_norm_zero"), "transformer_blocks", None),
    "flux.1-dev": (FluxTransformer2DModel, dict(patch_size=1, in_channels=16, num_layers=19, num_single_layers=38,
                                                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                                pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
                   "transformer_blocks", "single_transformer_blocks"),
}
FORA_CACHED_BOUND = {"dit-xl-2": 0.35, "flux.1-dev": 0.25}
# the residual apply of the reused stack (one add per stream) and the probe's relative L1 (a handful of
# reductions and the copy that keeps the current residual); generous against the ~2800-op models
PROBE_AND_APPLY_OPS = 24


class Model:
    def __init__(self, name):
        cls, cfg, first, last = CONFIGS[name]
        torch.manual_seed(0)
        self.name = name
        self.module = cls(**cfg).eval()
        for p in self.module.parameters():  # no adaLN-zero identity blocks: every block does something
            torch.nn.init.normal_(p, std=0.05)
        self.kw = synth_inputs(cls.__name__, dict(self.module.config), batch=2)
        self.latent = "hidden_states"
        self.captured = capture(self.module, self.kw, stream_inputs=["hidden_states", "encoder_hidden_states"],
                                latent_input=self.latent)
        self.first = self.module.get_submodule(first)
        self.last = self.module.get_submodule(last or first)
        self.plain, self.parts = self._plain_counts()
        self._runtimes = {}

    def timestep(self, i):
        t = self.kw["timestep"]
        return torch.full_like(t, 900 - 100 * i) if t.dtype == torch.long else torch.full_like(t, 0.9 - 0.1 * i)

    def _plain_counts(self):
        """Ops of the plain model, and of its prologue, block 0 and epilogue (hooks at the block boundaries)."""
        marks = {}
        holder = {}

        def mark(key):
            def hook(*_):  # returns None: a pre-hook's return value would replace the block's inputs
                marks.setdefault(key, holder["counter"].ops)
            return hook

        hooks = [self.first[0].register_forward_pre_hook(mark("block0_start")),
                 self.first[0].register_forward_hook(mark("block0_end")),
                 self.last[len(self.last) - 1].register_forward_hook(mark("last_end"))]
        from cachec.dispatch_count import DispatchCounter

        try:
            with torch.no_grad(), DispatchCounter() as counter:
                holder["counter"] = counter
                self.module(**self.kw, return_dict=False)
        finally:
            for h in hooks:
                h.remove()
        parts = {"prologue": marks["block0_start"], "block0": marks["block0_end"] - marks["block0_start"],
                 "epilogue": counter.ops - marks["last_end"]}
        return counter.ops, parts

    def runtime(self, policy):
        """One runtime per policy for the module (planning full-depth FLUX takes seconds); trajectories reset it."""
        if policy not in self._runtimes:
            self._runtimes[policy] = self._plan(policy)
        return self._runtimes[policy]

    def _plan(self, policy):
        program = compile_program(self.captured.copy(), parse_policy(policy))
        return CacheRuntime(program, policy, num_steps=STEPS, signature=signature_of(self.module))

    def trajectory(self, policy, context=False):
        """Per step of the second trajectory: (schedule letter, ops, syncs).

        The first trajectory allocates the cache buffers (zero-filled once per shape, then reused
        by every later trajectory), which is not a per-step cost; the second one is what a served
        model pays on every request.
        """
        rt = self.runtime(policy)
        steps = []
        for trajectory in range(2):
            rt.reset()
            for i in range(STEPS):
                kw = {**self.kw, "timestep": self.timestep(i)}
                if context:
                    with rt.cache_context("cond", step_index=i, num_inference_steps=STEPS):
                        _, c = count(rt, **kw)
                else:
                    _, c = count(rt, **kw)
                if trajectory == 1:
                    steps.append((rt.stats.schedule[-1], c.ops, c.syncs))
        return steps


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    return Model(request.param)


def test_none_adds_no_work(model):
    for letter, ops, _ in model.trajectory("none"):
        assert letter == "F"
        assert ops <= 1.02 * model.plain, (ops, model.plain)


def test_fora_cached_step_runs_no_glue_of_the_modules_it_skips(model):
    steps = model.trajectory("fora:3")
    assert "".join(s[0] for s in steps) == "FRRFRR"
    for letter, ops, _ in steps:
        bound = FORA_CACHED_BOUND[model.name] * model.plain if letter == "R" else 1.06 * model.plain
        assert ops <= bound, (letter, ops, model.plain)


def test_taylorseer_update_and_forecast_are_one_product_per_stream(model):
    steps = model.trajectory("taylorseer:4")
    assert "".join(s[0] for s in steps) == "FFRRRF"
    for letter, ops, _ in steps:
        if letter == "F":
            assert ops <= 1.25 * model.plain, (ops, model.plain)
        elif model.name == "flux.1-dev":
            assert ops <= 0.40 * model.plain, (ops, model.plain)


def test_step_level_cached_steps_cost_no_more_than_prologue_probe_and_epilogue(model):
    parts = model.parts
    static = model.trajectory("static:FRRRRR")
    for letter, ops, _ in static[1:]:
        assert letter == "R"
        assert ops <= parts["prologue"] + parts["epilogue"] + PROBE_AND_APPLY_OPS, (ops, parts)
    fb = model.trajectory("fbcache:10")  # the largest threshold: block 0's change stays below it, every later step is cached
    assert "".join(s[0] for s in fb) == "FRRRRR"
    for _, ops, _ in fb[1:]:
        assert ops <= parts["prologue"] + parts["block0"] + parts["epilogue"] + PROBE_AND_APPLY_OPS, (ops, parts)


def test_host_syncs_per_step(model):
    # a static policy reads the timestep only while it learns how many calls a step makes
    fora = model.trajectory("fora:3")
    assert [s[2] for s in fora[2:]] == [0] * (STEPS - 2), fora
    assert all(s[2] <= 1 for s in fora[:2]), fora
    # with the pipeline's step index it never reads it
    assert [s[2] for s in model.trajectory("fora:3", context=True)] == [0] * STEPS
    # a dynamic policy reads exactly its decision
    assert [s[2] for s in model.trajectory("fbcache:0.05", context=True)] == [1] * STEPS
