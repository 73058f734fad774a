"""The workflow table: what deployments run (LoRA, quantized weights, experts, ControlNet, edit
pipelines, hub ids, saved models) × policy × backend, every cell from a run.

    python tools/workflow_matrix.py [--out docs/workflows.md] [--backends B ...] [--policies P ...] [WORKFLOW ...]

A cell is ``ok SCHEDULE`` (the schedule of the trajectory, ``|`` between a pipeline's denoisers
or CFG branches), with ``exact`` for ``none`` when the output equals the plain model or pipeline
bit for bit (``Δ`` and the largest difference otherwise), or the one-line message of the error
the workflow raised — a refusal by capability names what the backend cannot do. A backend not
run (``--backends``) shows ``not run``. Pipelines and models are the tests' tiny random-weight
ones (``tests/tiny_pipelines.py``, ``tests/small_models.py``); ``fbcache`` is ``fbcache:10``, a
threshold every unforced step is under, as in the family matrix, so its column shows reuse.
Shares its message format with ``tools/family_matrix.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from family_matrix import _message  # noqa: E402

import cachec  # noqa: E402

STEPS = 3
POLICIES = ("none", "fora:3", "fbcache:10", "taylorseer")
BACKENDS = ("eager", "inductor", "aotinductor", "onnxruntime", "tensorrt")
NOT_RUN = "not run"


# -- helpers -----------------------------------------------------------------------------------------
def _verdict(policy: str, schedule: str, out: torch.Tensor, plain: torch.Tensor) -> str:
    if policy != "none":
        return f"ok {schedule}"
    diff = float((out - plain).abs().max())
    return f"ok {schedule} exact" if diff == 0 else f"ok {schedule} Δ {diff:.0e}"


def _pipeline_schedule(pipe) -> str:
    from cachec.pipeline import denoiser_attrs

    parts = []
    for attr in denoiser_attrs(pipe):
        runtime = getattr(pipe, attr).current
        parts += [st.history[-1].schedule for st in runtime.branches.values()]
    return "|".join(parts)


def _pipeline_cell(build, policy: str, backend: str, prepare=None) -> str:
    """Run the pipeline plain, then under ``cachec.enable`` (``prepare(pipe)`` after enable: a LoRA)."""
    import tiny_pipelines as tp

    pipe, kw, field = build()
    pipe.set_progress_bar_config(disable=True)
    if prepare:
        plain_pipe, _, _ = build()
        plain_pipe.set_progress_bar_config(disable=True)
        prepare(plain_pipe)
        plain = tp.run(plain_pipe, kw, field, STEPS)
    else:
        plain = tp.run(pipe, kw, field, STEPS)
    cachec.enable(pipe, policy, backend=backend)
    try:
        if prepare:
            prepare(pipe)
        out = tp.run(pipe, kw, field, STEPS)
        return _verdict(policy, _pipeline_schedule(pipe), out, plain)
    finally:
        cachec.disable(pipe)


def _trajectory(rt, kw: dict) -> torch.Tensor:
    """``STEPS`` calls at decreasing timesteps, each on the last output (a crude sampler)."""
    x, kw = kw["hidden_states"], dict(kw)
    with torch.no_grad():
        for i in range(STEPS):
            t = kw["timestep"]
            out = rt(**dict(kw, hidden_states=x, timestep=t * (1 - 0.3 * i) if t.is_floating_point() else t - 100 * i))
            out = out[0] if isinstance(out, tuple) else out.sample
            x = x - out[:, : x.shape[1]] / STEPS
    return x


def _model_cell(make_model, policy: str, backend: str) -> str:
    """``cachec.compile`` on a model (quantized, say): a trajectory against the plain model's."""
    model, kw = make_model()
    plain = _trajectory(lambda **k: model(**k, return_dict=False), kw)
    rt = cachec.compile(model, kw, policy, backend=backend, num_steps=STEPS)
    out = _trajectory(rt, kw)
    return _verdict(policy, rt.stats.schedule, out, plain)


def _artifact_cell(write_model, policy: str, backend: str, swap=None) -> str:
    """``cachec compile SPEC --backend B`` then ``cachec.load``. ``write_model(dir)`` returns the spec, the
    plain model, its inputs and extra compile arguments; ``swap(rt, model)`` loads other weights into
    the runtime (``rt.load_weights``) and returns the model they come from. Inductor writes no
    artifact of its own: its cells compile an eager artifact and load it on Inductor, as a user would."""
    from cachec.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        spec, model, kw, extra = write_model(Path(tmp))
        out = Path(tmp) / "art"
        written = "eager" if backend == "inductor" else backend
        args = ["compile", spec, "--policy", policy, "--backend", written, "--out", str(out), "--device", "cpu",
                *extra]
        with contextlib.redirect_stderr(sys.stdout):
            code = main(args)
        if code != 0:
            raise RuntimeError(f"cachec compile exited {code}")
        rt = cachec.load(out, backend=backend, num_steps=STEPS, trust_native=True)
        if swap is not None:
            model = swap(rt, model)
        plain = _trajectory(lambda **k: model(**k, return_dict=False), kw)
        result = _trajectory(rt, kw)
        return _verdict(policy, rt.stats.schedule, result, plain)


# -- the workflows ----------------------------------------------------------------------------------
def _dit():
    from small_models import make

    from cachec.models import example_inputs

    model = make("dit")
    return model, example_inputs(model, 2, 0)


def _quantized(config: str, dtype=torch.float32):
    def build():
        from torchao import quantization

        model, kw = _dit()
        model = model.to(dtype)
        kw = {k: v.to(dtype) if v.is_floating_point() else v for k, v in kw.items()}
        quantization.quantize_(model, getattr(quantization, config)())
        return model, kw

    return build


def _saved(tmp: Path):
    model, kw = _dit()
    model.save_pretrained(tmp / "model")
    return str(tmp / "model"), model, kw, ()


def _hub(tmp: Path):
    """A repo id in an offline Hugging Face cache in the hub layout (as tests/e2e/test_hub_models.py)."""
    import os

    from huggingface_hub import constants

    model, kw = _dit()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp / "hub" / "models--tiny--dit"
    model.save_pretrained(repo / "snapshots" / commit / "transformer")
    (repo / "snapshots" / commit / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, value in {"HF_HUB_OFFLINE": True, "HF_HUB_CACHE": str(tmp / "hub")}.items():
        os.environ[name] = "1" if value is True else value
        setattr(constants, name, value)
    return "tiny/dit", model, kw, ("--subfolder", "transformer")


def _fused_lora(tmp: Path):
    """The small FLUX with a LoRA fused by ``cachec compile --lora FILE:0.5`` (as tests/e2e/test_lora.py)."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file
    from small_loras import lora_state_dict
    from small_models import make

    from cachec.lora import fuse_lora_files
    from cachec.models import example_inputs

    model = make("flux")
    model.save_pretrained(tmp / "model")
    save_file(lora_state_dict(model, seed=1), str(tmp / "lora.safetensors"))
    lora = f"{tmp / 'lora.safetensors'}:0.5"
    fused = FluxTransformer2DModel.from_pretrained(tmp / "model").eval()
    fuse_lora_files(fused, [lora])
    return str(tmp / "model"), fused, example_inputs(model, 2, 0), ("--lora", lora)


def _swap(rt, model):
    torch.manual_seed(1)
    other = type(model)(**model.config).eval()
    rt.load_weights(other.state_dict())
    return other


def _lora_after_enable(pipe):
    from small_loras import lora_state_dict

    model = getattr(pipe.transformer, "model", pipe.transformer)  # the same LoRA for the plain and enabled pipe
    pipe.load_lora_weights(lora_state_dict(model, seed=1), adapter_name="a")


def _flux_pipeline():
    import tiny_pipelines as tp
    from diffusers import FluxPipeline

    parts = tp._flux_parts()
    parts["vae"] = None
    return FluxPipeline(**parts), dict(tp._flux_text(), height=64, width=64), "images"


def _wan22():
    import diffusers
    from small_models import make

    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=make("wan"),
                                 transformer_2=make("wan", seed=1), boundary_ratio=0.75,
                                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    g = torch.Generator().manual_seed(3)
    kw = dict(prompt_embeds=torch.randn(1, 5, 12, generator=g), negative_prompt_embeds=torch.randn(1, 5, 12, generator=g),
              guidance_scale=4.0, height=64, width=64, num_frames=1, output_type="latent")
    return pipe, kw, "frames"


def _tiny(name):
    def build():
        import tiny_pipelines as tp

        return tp.WORKFLOWS[name]()

    return build


WORKFLOWS = {
    "LoRA loaded after enable": lambda p, b: _pipeline_cell(_flux_pipeline, p, b, prepare=_lora_after_enable),
    "LoRA fused at compile": lambda p, b: _artifact_cell(_fused_lora, p, b),
    "load_weights swap": lambda p, b: _artifact_cell(_saved, p, b, swap=_swap),
    "int8 weight-only": lambda p, b: _model_cell(_quantized("Int8WeightOnlyConfig"), p, b),
    "dynamic int8": lambda p, b: _model_cell(_quantized("Int8DynamicActivationInt8WeightConfig"), p, b),
    "float8 weight-only": lambda p, b: _model_cell(_quantized("Float8WeightOnlyConfig", torch.bfloat16), p, b),
    "two experts (Wan 2.2)": lambda p, b: _pipeline_cell(_wan22, p, b),
    "ControlNet FLUX": lambda p, b: _pipeline_cell(_tiny("controlnet-flux"), p, b),
    "ControlNet SD3": lambda p, b: _pipeline_cell(_tiny("controlnet-sd3"), p, b),
    "Kontext (FLUX)": lambda p, b: _pipeline_cell(_tiny("kontext"), p, b),
    "Qwen-Image-Edit": lambda p, b: _pipeline_cell(_tiny("qwen-edit"), p, b),
    "img2img (SD3)": lambda p, b: _pipeline_cell(_tiny("img2img-sd3"), p, b),
    "inpaint (FLUX)": lambda p, b: _pipeline_cell(_tiny("inpaint-flux"), p, b),
    "hub id (offline cache)": lambda p, b: _artifact_cell(_hub, p, b),
    "saved model dir": lambda p, b: _artifact_cell(_saved, p, b),
}


def cell(workflow: str, policy: str, backend: str) -> str:
    """One cell of the table, from a run."""
    try:
        return WORKFLOWS[workflow](policy, backend)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return _plain(_message(exc))


def _plain(text: str) -> str:
    """Without terminal colour codes (the ONNX exporter colours its messages)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def run(workflows, policies, backends, earlier: dict | None = None, on_row=None) -> dict:
    """The cells of ``backends``; the others from ``earlier`` runs (``--merge``) or ``not run``.
    ``on_row(rows)`` after each workflow (the JSON is written as the run goes: a long run keeps its rows)."""
    rows = {}
    for w in workflows:
        t0 = time.perf_counter()
        old = (earlier or {}).get(w, {})
        rows[w] = {f"{p} / {b}": cell(w, p, b) if b in backends else old.get(f"{p} / {b}", NOT_RUN)
                   for b in BACKENDS for p in policies}
        print(f"{w}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        if on_row:
            on_row(rows)
    return rows


def parse(markdown_text: str) -> dict[tuple[str, str, str], str]:
    """``{(workflow, policy, backend): cell}`` of a table this tool wrote (``〃`` resolved)."""
    cells, backend, policies = {}, None, []
    for line in markdown_text.splitlines():
        if line.startswith("### "):
            backend = line[4:].strip()
        elif line.startswith("| workflow |"):
            policies = [c.strip() for c in line.strip("|").split(" | ")[1:]]
        elif line.startswith("| ") and backend and not line.startswith("|---"):
            parts = [c.strip().replace("\\|", "|") for c in line.strip().strip("|").split(" | ")]
            texts = parts[1:]
            texts = [texts[0] if t == "〃" else t for t in texts]
            cells.update({(parts[0], p, backend): t for p, t in zip(policies, texts, strict=True)})
    return cells


def markdown(rows: dict, policies, backends) -> str:
    lines = []
    for b in BACKENDS:
        lines += [f"### {b}", "", "| workflow | " + " | ".join(policies) + " |", "|---|" + "---|" * len(policies)]
        for w, cells in rows.items():
            texts = [_plain(cells[f"{p} / {b}"]).replace("|", "\\|") for p in policies]
            if len(set(texts)) == 1 and not texts[0].startswith("ok") and texts[0] != NOT_RUN:
                texts = [texts[0]] + ["〃"] * (len(texts) - 1)  # refused for every policy
            lines.append(f"| {w} | " + " | ".join(texts) + " |")
        lines.append("")
    run_here = ", ".join(b for b in BACKENDS if any(c[f"{p} / {b}"] != NOT_RUN for c in rows.values() for p in policies))
    lines.append(f"{STEPS}-step trajectories, CPU, torch {torch.__version__}; backends run: {run_here}.")
    if any(v == NOT_RUN for c in rows.values() for v in c.values()):
        lines.append(f"`{NOT_RUN}`: not run for this table (each cell is a capture and a lowering: Inductor and "
                     "AOTInductor compile C++ per variant, minutes a cell on a CPU); fill them with "
                     "`python tools/workflow_matrix.py --backends B --json B.json`, then `--backends --merge *.json`.")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workflows", nargs="*", help="workflows to run (default: all)")
    ap.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--policies", nargs="+", default=list(POLICIES))
    ap.add_argument("--out", default=None, help="write the markdown here (default: stdout)")
    ap.add_argument("--json", default=None, help="also write the cells as JSON")
    ap.add_argument("--merge", nargs="*", default=[], help="JSON files of earlier runs: their cells fill "
                    "the backends this run does not run")
    args = ap.parse_args()
    unknown = [w for w in args.workflows if w not in WORKFLOWS]
    if unknown:
        ap.error(f"unknown workflows {unknown}; known: {', '.join(WORKFLOWS)}")
    logging.getLogger("cachec").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    earlier: dict = {}
    for file in args.merge:
        for w, cells in json.loads(Path(file).read_text()).items():
            earlier.setdefault(w, {}).update({k: v for k, v in cells.items() if v != NOT_RUN})
    def save_json(rows):
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))

    rows = run(args.workflows or list(WORKFLOWS), args.policies, args.backends, earlier, on_row=save_json)
    table = markdown(rows, args.policies, args.backends)
    if args.out:
        Path(args.out).write_text(HEADER + table + "\n")
    else:
        print(table)
    return 0


HEADER = """# Workflows × policies × backends

Written by `python tools/workflow_matrix.py --out docs/workflows.md` (every cell from a run; see the
tool's docstring for what a cell says). `tests/e2e/test_workflow_matrix.py` re-runs a few cells and
compares them with this file.

"""

if __name__ == "__main__":
    raise SystemExit(main())
