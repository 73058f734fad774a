"""The plain model run once on its example inputs before export, and errors that blame the right party.

Why: ``cachec inspect/compile DIR`` synthesises a bare directory's example inputs from its config
(:mod:`cachec.input_synthesis`). When that guess is wrong — a 4-D latent for a video U-Net, an
optional input the model needs left out — torch.export fails deep inside the model, and its
error used to read "the model uses a construct torch.export cannot trace": the model was blamed
for the inputs' fault. One eager forward (cheaper than the export's own trace) tells the two
apart before export: a model that does not run on its inputs has wrong inputs (or a missing
package), and the message says where the inputs came from and what to give instead. An export
that still fails on synthesised inputs says so too; the "model uses a construct torch.export
cannot trace" wording stays for inputs the user gave (``--inputs``, a pipeline's own call).
"""

from __future__ import annotations

import torch

from .errors import CaptureError, ModelError
from .input_synthesis import INPUTS_FILE_HELP

_PIPELINE_HELP = "give the pipeline directory (with model_index.json) instead: its own first denoiser call supplies them"


def checked_inputs(bundle, batch: int) -> dict:
    """``bundle.example_inputs(batch)`` once the plain model has run on them. A pipeline directory
    whose synthesised inputs the model refuses falls back to the pipeline's own first call."""
    inputs = bundle.example_inputs(batch=batch)
    try:
        run_plain(bundle.model, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure of the model's own forward is named below
        if bundle.inputs_origin != "config" or bundle.pipeline_dir is None or _missing_package(exc):
            raise plain_failure(bundle, inputs, exc) from exc
        bundle.recorded_call(ModelError(f"{bundle.class_name} fails on inputs synthesised from its config"))
        inputs = bundle.example_inputs(batch=batch)
        try:
            run_plain(bundle.model, inputs)
        except Exception as exc2:  # noqa: BLE001
            raise plain_failure(bundle, inputs, exc2) from exc2
    return inputs


def run_plain(model: torch.nn.Module, inputs: dict) -> None:
    """One forward without gradients (skipped for a model without weights, on the meta device)."""
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "meta":
        return
    with torch.no_grad():
        model(**inputs)


def plain_failure(bundle, inputs: dict, exc: BaseException) -> ModelError:
    """The model failed on its example inputs: whose fault, in one message."""
    cls, what = bundle.class_name, _failure(exc)
    if _missing_package(exc):
        return ModelError(f"{cls} fails in its own forward before export ({what}): most likely its code needs an "
                          "optional package that is not installed (diffusers imports some, such as torchvision, only "
                          "when present); install it and retry")
    shapes = describe(inputs)
    if bundle.inputs_origin == "config":
        return ModelError(f"{cls} does not run on the example inputs cachec synthesised from its config ({shapes}): "
                          f"{what}. The synthesis guessed wrong, not the model: give real inputs with "
                          f"{INPUTS_FILE_HELP}, or {_PIPELINE_HELP}")
    if bundle.inputs_origin == "file":
        return ModelError(f"{cls} does not run on the example inputs of --inputs {bundle.inputs_file} ({shapes}): "
                          f"{what}. The file must hold one call's tensors, each named as the forward's argument "
                          f"(a__b for a nested a={{'b': ...}}) and shaped as the model's pipeline passes them")
    return ModelError(f"{cls} does not run on the example inputs recorded from {bundle.pipeline_dir}'s first "
                      f"denoiser call ({shapes}): {what}; give them with {INPUTS_FILE_HELP}")


def capture_blaming_inputs(bundle, inputs: dict, latent_input: str | None = None):
    """:func:`cachec.capture.capture` of the bundle's model; a failure on synthesised inputs says so first."""
    from .capture import capture

    try:
        return capture(bundle.model, inputs, latent_input=latent_input)
    except CaptureError as exc:
        if getattr(bundle, "inputs_origin", None) != "config":
            raise  # the user's own inputs (or a pipeline's): the model's code is what export cannot trace
        raise synthesised_capture_error(bundle.class_name, inputs, exc.__cause__ or exc) from exc


def synthesised_capture_error(cls: str, inputs: dict, cause: BaseException) -> ModelError:
    from .structure import export_failure_construct

    return ModelError(
        f"torch.export could not capture {cls} on the example inputs cachec synthesised from its config "
        f"({describe(inputs)}; the plain model runs on them): it stopped at {export_failure_construct(cause)} — "
        f"{_failure(cause)}. Synthesised inputs can differ from what the model's pipeline passes (a shape, a mask, "
        f"an optional input left out), so give real inputs with {INPUTS_FILE_HELP}, or {_PIPELINE_HELP}; if export "
        "fails on real inputs too, the model's code is what it cannot trace (--debug shows torch's full report)")


def describe(inputs: dict) -> str:
    """``name (shape), ...`` of the tensors (nested ones as ``a.b``), other values by type."""
    parts = []
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            parts.append(f"{name} {tuple(value.shape)}")
        elif isinstance(value, dict):
            parts.extend(f"{name}.{k} {tuple(v.shape)}" for k, v in value.items() if isinstance(v, torch.Tensor))
        elif value is not None:
            parts.append(f"{name} {type(value).__name__}")
    return ", ".join(parts)


def _failure(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:300]}"


def _missing_package(exc: BaseException) -> bool:
    return isinstance(exc, (NameError, ImportError))
