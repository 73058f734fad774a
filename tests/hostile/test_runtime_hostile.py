"""Hostile use of the runtime (issue 21, items 6 and 11): one runtime shared by two threads, and
calls whose inputs the model cannot take (labels out of range, batches that disagree, batch 0, meta
tensors, a batch above the program's max_batch). Each must be refused with one clear error, never
run into a silently wrong result or a traceback from inside torch.

One small DiT (labels 0..9, plus 10: the null class of classifier-free guidance) is compiled once
for the module with fora:2, whose cached steps make a mixed-up trajectory visible.
"""

from __future__ import annotations

import threading

import pytest
import torch
from small_models import make

import cachec
from cachec.errors import ConcurrentUseError, ShapeError
from cachec.models import example_inputs

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 6
TIMESTEPS = [999 - 150 * i for i in range(STEPS)]


@pytest.fixture(scope="module")
def model():
    return make("dit")


@pytest.fixture(scope="module")
def runtime(model):
    return cachec.compile(model, example_inputs(model, batch=2), "fora:2", num_steps=STEPS)


@pytest.fixture(scope="module")
def inputs(model):
    kw = example_inputs(model, batch=2, seed=3)
    return kw["hidden_states"], kw["class_labels"], kw["timestep"]


def step(rt, x, labels, ts, t):
    return rt(x, timestep=torch.full_like(ts, t), class_labels=labels, return_dict=False)[0]


def trajectory(rt, inputs, between=lambda i: None) -> torch.Tensor:
    x, labels, ts = inputs
    x = x.clone()
    for i, t in enumerate(TIMESTEPS):
        between(i)
        x = x - 0.1 * step(rt, x, labels, ts, t)
    return x


@pytest.fixture(scope="module")
def reference(runtime, inputs):
    runtime.reset(STEPS)
    out = trajectory(runtime, inputs)
    assert runtime.stats.schedule == "FRFRFR"  # the cached steps read what earlier steps stored
    return out


def in_thread(fn):
    """Run ``fn`` in a thread; returns a dict that will hold its "result" or its "error"."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            box["error"] = exc

    box["thread"] = threading.Thread(target=target)
    box["thread"].start()
    return box


# -- item 6: one runtime, two threads ---------------------------------------------------------------

def test_a_call_while_another_thread_is_inside_a_step_is_refused(runtime, inputs, reference, monkeypatch):
    """Deterministic overlap: the first thread's step waits inside until the second has called."""
    inside, tried = threading.Event(), threading.Event()
    full = runtime.variants["full"]

    def slow_full(env, caches):
        inside.set()
        tried.wait(30)
        return full(env, caches)

    monkeypatch.setitem(runtime.variants, "full", slow_full)
    runtime.reset(STEPS)
    first = in_thread(lambda: trajectory(runtime, inputs))
    assert inside.wait(30)
    second = in_thread(lambda: trajectory(runtime, inputs))
    second["thread"].join(30)
    tried.set()
    first["thread"].join(30)
    assert isinstance(second.get("error"), ConcurrentUseError), second
    assert "another thread was inside a step" in str(second["error"])
    assert torch.equal(first["result"], reference)  # the refused call did not touch its trajectory


def test_steps_of_two_threads_taking_turns_are_refused(runtime, inputs, reference):
    """Calls that take turns (never overlapping) would splice two trajectories into one: the second
    thread's first call restarted the first thread's trajectory, which then went on silently wrong."""
    paused, done = threading.Event(), threading.Event()

    def pause_after_first_step(i):
        if i == 1:
            paused.set()
            done.wait(30)

    def second_thread():
        paused.wait(30)
        try:
            return trajectory(runtime, inputs)
        finally:
            done.set()

    runtime.reset(STEPS)
    a = in_thread(lambda: trajectory(runtime, inputs, pause_after_first_step))
    b = in_thread(second_thread)
    a["thread"].join(60)
    b["thread"].join(60)
    assert isinstance(b.get("error"), ConcurrentUseError), b
    assert "in the middle of a trajectory" in str(b["error"])
    assert torch.equal(a["result"], reference)


def test_free_running_threads_are_refused_or_exact(runtime, inputs, reference):
    """Two threads stepping one runtime as fast as they can: each either gets the reference result
    or a ConcurrentUseError (before: results off by up to 0.079 on tiny-dit, no error)."""
    runtime.reset(STEPS)
    start = threading.Barrier(2)

    def go():
        start.wait(30)
        return [trajectory(runtime, inputs) for _ in range(3)]

    boxes = [in_thread(go) for _ in range(2)]
    for box in boxes:
        box["thread"].join(120)
    for box in boxes:
        if "error" in box:
            assert isinstance(box["error"], ConcurrentUseError), box["error"]
        else:
            assert all(torch.equal(r, reference) for r in box["result"])


def test_another_thread_may_run_the_next_trajectory(runtime, inputs, reference):
    runtime.reset(STEPS)
    assert torch.equal(trajectory(runtime, inputs), reference)  # the main thread's trajectory, complete
    other = in_thread(lambda: trajectory(runtime, inputs))
    other["thread"].join(60)
    assert "error" not in other, other.get("error")
    assert torch.equal(other["result"], reference)


def test_reset_from_another_thread_mid_trajectory_is_refused(runtime, inputs):
    x, labels, ts = inputs
    runtime.reset(STEPS)
    step(runtime, x, labels, ts, TIMESTEPS[0])
    other = in_thread(lambda: runtime.reset(STEPS))
    other["thread"].join(30)
    assert isinstance(other.get("error"), ConcurrentUseError), other
    runtime.reset(STEPS)  # the owner may


# -- item 11: inputs the model cannot take -----------------------------------------------------------

@pytest.mark.parametrize("label", [11, -1, 10_000])
def test_a_label_out_of_range_is_refused(runtime, inputs, label):
    x, labels, ts = inputs
    runtime.reset(STEPS)
    with pytest.raises(ShapeError, match=r"class_labels hold .*labels 0\.\.10"):
        step(runtime, x, torch.tensor([0, label]), ts, TIMESTEPS[0])


def test_the_null_class_label_is_accepted(runtime, inputs):
    x, labels, ts = inputs
    runtime.reset(STEPS)
    out = step(runtime, x, torch.tensor([10, 9]), ts, TIMESTEPS[0])  # 10: classifier-free guidance's null class
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_latent_and_labels_of_different_batches_are_refused(runtime, inputs):
    x, labels, ts = inputs
    runtime.reset(STEPS)
    with pytest.raises(ShapeError, match="disagree on the batch"):
        step(runtime, x, torch.tensor([1, 2, 3]), ts, TIMESTEPS[0])


def test_batch_zero_is_refused(runtime, inputs):
    x, labels, ts = inputs
    runtime.reset(STEPS)
    with pytest.raises(ShapeError, match="at least one item"):
        step(runtime, x[:0], labels[:0], ts[:0], TIMESTEPS[0])


def test_meta_tensors_are_refused(runtime, inputs):
    x, labels, ts = inputs
    runtime.reset(STEPS)
    with pytest.raises(ShapeError, match="meta tensors"):
        step(runtime, x.to("meta"), labels.to("meta"), ts.to("meta"), TIMESTEPS[0])


def test_a_batch_above_max_batch_is_refused(runtime, inputs, monkeypatch):
    """An artifact records the largest batch its lowered files were built for (``--max-batch``);
    loading puts it in the program's ``model.max_batch``, where the runtime reads it."""
    x, labels, ts = inputs
    monkeypatch.setattr(runtime.program.model, "max_batch", 2)
    runtime.reset(STEPS)
    with pytest.raises(ShapeError, match="above this program's max_batch 2"):
        step(runtime, torch.cat([x, x]), torch.cat([labels, labels]), torch.cat([ts, ts]), TIMESTEPS[0])
