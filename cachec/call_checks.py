"""What a runtime call must satisfy beyond each input's shape and dtype, checked before it runs.

Without these checks a bad call failed somewhere inside torch (an ``IndexError`` from an
embedding, an ``.item()`` on a meta tensor) or, worse, ran: a batch above the artifact's
``max_batch`` (the largest its lowered files were built for), or a latent of 2 rows with labels of
3. Each problem is one :class:`~cachec.errors.ShapeError` saying what was wrong and what is
accepted.

Cost: :func:`check_inputs` reads shapes, devices and dtypes only (no device→host sync).
:func:`check_labels` needs the label values: the runtime calls it on every call whose labels are
on the CPU (read from host memory directly: no dispatched op, no sync), and once per trajectory
(its first step) for labels on a GPU, one sync per trajectory.
"""

from __future__ import annotations

import torch

from .errors import ShapeError
from .program import Program


def check_inputs(program: Program, inputs: dict[str, torch.Tensor]) -> None:
    """Real tensors (not meta), one batch of 1..max_batch across every batched input."""
    meta = [n for n, t in inputs.items() if t.is_meta]
    if meta:
        raise ShapeError(f"inputs {meta} are meta tensors (shapes without data); the runtime runs on cpu or cuda tensors")
    batch_dims = program.model.batch_dims
    batches = {n: int(inputs[n].shape[d]) for n, d in batch_dims.items() if n in inputs and inputs[n].dim() > d}
    if len(set(batches.values())) > 1:
        raise ShapeError(f"inputs disagree on the batch: {batches}; every batched input needs the same batch")
    batch = next(iter(batches.values()), None)
    limit = program.model.max_batch
    if batch is not None and batch < 1:
        raise ShapeError(f"the batch is {batch}; a call needs at least one item")
    if batch is not None and limit is not None and batch > limit:
        raise ShapeError(f"the batch is {batch}, above this program's max_batch {limit} (what it was compiled and "
                         "lowered for); split the batch, or compile with a larger --max-batch")


def label_count(config) -> int | None:
    """How many class labels the model's embedding accepts (0 .. count-1), from its config.

    DiT's ``num_embeds_ada_norm`` classes come with one more row, the null class that
    classifier-free guidance feeds (diffusers' ``LabelEmbedding``); a U-Net's ``num_class_embeds``
    is the table's size.
    """
    if config.get("num_embeds_ada_norm") is not None:
        return int(config["num_embeds_ada_norm"]) + 1
    if config.get("num_class_embeds") is not None:
        return int(config["num_class_embeds"])
    return None


def check_labels(inputs: dict[str, torch.Tensor], config, *, read_device: bool = False) -> None:
    """Integer ``class_labels`` within the embedding's range. Labels on a GPU are read only with
    ``read_device`` (a device→host sync: the runtime asks for it once per trajectory)."""
    labels = inputs.get("class_labels")
    if labels is None or labels.is_floating_point() or labels.is_complex() or not labels.numel():
        return
    if labels.device.type != "cpu" and not read_device:
        return
    count = label_count(config)
    if count is None:
        return
    if labels.device.type == "cpu":  # host memory: read it directly (no dispatched op, nothing a GPU would pay)
        values = labels.numpy()
        low, high = int(values.min()), int(values.max())
    else:
        low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= count:
        raise ShapeError(f"class_labels hold {low if low < 0 else high}; this model takes labels 0..{count - 1}")
