"""Never stale: whatever changes a denoiser after capture is in the next call's output.

One test per kind of change, each against the plain model after the same change (``none`` is
bit-exact): an in-place weight edit (read live, no recompile), a replaced parameter storage, a
PEFT adapter injected, a second one with ``set_adapters`` weights, ``disable_lora``/``enable_lora``,
a LoRA scale passed per call through ``joint_attention_kwargs``, ``delete_adapters``. The runtime
looks at its model once per trajectory (:mod:`cachec.staleness`); each test starts a trajectory
with ``cachec.reset``. ``fuse_lora``/``unfuse_lora``/``unload_lora_weights`` are tested through
the pipeline API in ``test_lora.py``, and that Inductor reads weights edited in place (no
recompile) by ``load_weights`` there. The tests share one compiled model and are ordered so each
starts from the state the previous one left (each still sets up its own adapters).
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from small_loras import lora_state_dict
from small_models import TEXT_TOKENS, make

import cachec
from cachec.models import example_inputs

pytestmark = pytest.mark.slow  # each change is a new capture (a few seconds each on two cores)

class Compiled:
    """A tiny FLUX and its ``none`` runtime, shared by the tests of this module."""

    def __init__(self):
        self.model = make("flux")
        self.kw = example_inputs(self.model, 1, 0, text_tokens=TEXT_TOKENS)
        self.rt = cachec.compile(self.model, self.kw, "none")

    def adapters(self, *names: str) -> None:
        """Make sure exactly the adapters ``names`` are loaded (unfused, all active at weight 1)."""
        loaded = set(getattr(self.model, "peft_config", {}) or {})
        for name in loaded - set(names):
            self.model.delete_adapters(name)
        for i, name in enumerate(names):
            if name not in loaded:
                self.model.load_lora_adapter(lora_state_dict(self.model, seed=i), adapter_name=name, prefix="transformer")
        if names:
            self.model.set_adapters(list(names))

    def assert_current(self, rebuilt: bool, **extra) -> None:
        """The next trajectory's output equals the plain model's, bit for bit; ``rebuilt``: it recompiled."""
        before = self.rt.watch.rebuilds
        cachec.reset(self.rt)
        out = self.rt(**self.kw, **extra)[0]
        with torch.no_grad():
            plain = self.model(**self.kw, **extra, return_dict=False)[0]
        assert torch.equal(out, plain), (out - plain).abs().max()
        assert (self.rt.watch.rebuilds > before) == rebuilt


@pytest.fixture(scope="module")
def compiled():
    return Compiled()


def test_an_in_place_weight_edit_is_read_live(compiled):
    compiled.assert_current(rebuilt=False)
    with torch.no_grad():
        compiled.model.proj_out.weight.mul_(1.5)
    compiled.assert_current(rebuilt=False)


def test_a_replaced_parameter_storage_recompiles(compiled):
    weight = compiled.model.proj_out.weight
    weight.data = weight.data * 0.5
    compiled.assert_current(rebuilt=True)


def test_an_injected_adapter_recompiles(compiled):
    compiled.adapters()
    compiled.assert_current(rebuilt=False)
    compiled.adapters("a")
    compiled.assert_current(rebuilt=True)


def test_set_adapters_weights_recompile(compiled):
    compiled.adapters("a", "b")
    compiled.assert_current(rebuilt=True)
    compiled.model.set_adapters(["a", "b"], [0.7, -0.4])
    compiled.assert_current(rebuilt=True)


def test_disabling_and_enabling_adapters_recompiles(compiled):
    compiled.adapters("a")
    compiled.model.disable_lora()
    compiled.assert_current(rebuilt=True)
    compiled.model.enable_lora()
    compiled.assert_current(rebuilt=True)


def test_a_lora_scale_per_call_recompiles(compiled):
    compiled.adapters("a")
    cachec.reset(compiled.rt)
    compiled.rt(**compiled.kw)  # recompiles if an earlier test left another state
    compiled.assert_current(rebuilt=True, joint_attention_kwargs={"scale": 0.25})
    compiled.assert_current(rebuilt=False, joint_attention_kwargs={"scale": 0.25})
    compiled.assert_current(rebuilt=True)  # back to the adapters' own scale


def test_deleting_an_adapter_recompiles(compiled):
    compiled.adapters("a", "b")
    cachec.reset(compiled.rt)
    compiled.rt(**compiled.kw)  # compiled for both adapters
    compiled.model.delete_adapters("b")
    compiled.assert_current(rebuilt=True)


def test_no_recompile_without_a_change(compiled):
    compiled.adapters("a")
    cachec.reset(compiled.rt)
    compiled.rt(**compiled.kw)  # recompiles if an earlier test left another state
    for _ in range(2):
        compiled.assert_current(rebuilt=False)


def _dit():
    return make("dit")


def test_the_torch_compile_backend_follows_adapters_and_replaced_storage():
    torch._dynamo.reset()
    model = _dit()
    kw = example_inputs(model, 2, 0)
    compiled = torch.compile(model, backend="cachec", options={"policy": "none", "lower": "eager"})

    def assert_current():
        with torch.no_grad():
            assert torch.equal(compiled(**kw, return_dict=False)[0], model(**kw, return_dict=False)[0])

    assert_current()
    torch.manual_seed(0)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["to_q"], init_lora_weights=False), model, adapter_name="a")
    assert_current()  # Dynamo's guards see the new modules
    model.proj_out_2.weight.data = model.proj_out_2.weight.data * 1.5
    assert_current()  # its guards do not see a new storage: the runtime's watch does
    assert any(rt.watch.rebuilds for rt in cachec.torch_compile.runtimes_of(compiled))
