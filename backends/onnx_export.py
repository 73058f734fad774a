"""Export program segments to ONNX, one file per segment (shared by ONNX Runtime and TensorRT).

Each segment is exported once, whatever the number of variants that use it, so a weight lives
in exactly one file. Inputs and outputs carry the program's value names behind a ``@`` (the
exporter names its internal values after FX nodes, and a bare name could collide with one);
the batch dimension is dynamic wherever the program's value spec says ``B``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch
from torch.export import Dim

from cachec.errors import BackendError
from cachec.passes.infra import ready
from cachec.program import Program

OPSET = 20
EXAMPLE_BATCH = 2
log = logging.getLogger("cachec")


def io_name(value: str) -> str:
    return "@" + value


def example_value(shape: list, dtype: str, batch: int = EXAMPLE_BATCH) -> torch.Tensor:
    size = [batch if d == "B" else int(d) for d in shape]
    dt = getattr(torch, dtype)
    if dt.is_floating_point:
        return torch.randn(size, generator=torch.Generator().manual_seed(0)).to(dt)
    return torch.zeros(size, dtype=dt)


@contextlib.contextmanager
def quiet_exporter():
    """Keep the exporter's per-segment chatter off the terminal (a compile printed 180 lines).

    Every segment export warned that torchvision is missing, that the axis name ``batch`` is
    shared, and that a pytree class is deprecated: nothing a cachec user can act on. They are
    shown with ``--debug`` (cachec's logger at DEBUG). Errors still raise.
    """
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    onnx_log = logging.getLogger("torch.onnx")
    old = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        onnx_log.setLevel(old)


def export_segment(program: Program, name: str, path: Path, max_batch: int = 1024) -> None:
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it
    except ImportError as exc:
        raise BackendError("ONNX export needs the onnx extra: pip install 'cachec[onnx]'") from exc
    seg = program.segments[name]
    specs = [program.values[n] for n in seg.inputs]
    args = tuple(example_value(s.shape, s.dtype) for s in specs)
    batch = Dim("batch", min=1, max=max_batch)
    dynamic = tuple({i: batch for i, d in enumerate(s.shape) if d == "B"} or None for s in specs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), quiet_exporter():
        try:
            torch.onnx.export(
                ready(seg.module), args, str(path),
                input_names=[io_name(n) for n in seg.inputs], output_names=[io_name(n) for n in seg.outputs],
                dynamic_shapes=dynamic if any(d is not None for d in dynamic) else None,
                opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
            )
        except torch.onnx.OnnxExporterError as exc:
            raise BackendError(conversion_failure(program, name, exc)) from exc


def conversion_failure(program: Program, name: str, exc: BaseException) -> str:
    """One line for an operator the ONNX exporter cannot convert: which model and segment, the
    exporter's own reason (its innermost cause, where the failing operator is named), and what runs
    instead. The exporter's full report is long and mostly generic (its 'next steps')."""
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    reason = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
    return (f"the ONNX exporter (opset {OPSET}) cannot convert segment {name!r} of {program.model.model_class}: "
            f"{reason[:300]}. The onnxruntime and tensorrt backends need every segment in ONNX; the eager, "
            "inductor and aotinductor backends run this model (--debug shows the exporter's full report)")


def export_program(program: Program, out_dir: Path, progress: bool = False) -> dict[str, str]:
    """Export every segment to ``out_dir/<segment>.onnx``; returns segment → file name."""
    files = {}
    names = list(program.segments)
    it = names
    if progress:
        from cachec.progress import steps

        it = steps(names, "onnx export")  # a bar on a terminal, one line per item in a log
    for name in it:
        path = Path(out_dir) / f"{name}.onnx"
        export_segment(program, name, path, program.model.max_batch or 1024)
        files[name] = path.name
    return files

