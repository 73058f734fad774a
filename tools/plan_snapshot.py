"""Print every compiled program of a list of policies on three small models, as text to diff.

A refactor of the planner or of the methods' plans must leave every program byte-identical:
the same variants (op lists), the same segments (name, role, FLOPs, inputs, outputs and graph
code), the same value specs and the same ``meta``. This prints all of them for one DiT (blocks,
attention/MLP), one PixArt (cross-attention: T-GATE, PAB, token methods) and one U-Net (DeepCache),
each exported once and planned per policy on a copy of its capture::

    python tools/plan_snapshot.py > before.txt      # on the old tree
    python tools/plan_snapshot.py > after.txt       # on the new one
    diff before.txt after.txt                       # must print nothing

A policy whose planning fails prints its error (that message must not change either).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from small_models import make  # noqa: E402  (tests/small_models.py)

from cachec.capture import capture  # noqa: E402
from cachec.models import example_inputs  # noqa: E402
from cachec.planner import compile_program  # noqa: E402
from cachec.policy import parse_policy  # noqa: E402

COMMON = ["none", "static:FRRFRF", "fora:3", "delta:2,blocks=0-1", "fbcache:0.1", "fbcache:0.1,per_sample=1",
          "dbcache:1,B=0", "teacache:0.3", "teacache:0.3,per_sample=1", "taylorseer:4,O=2",
          "taylorseer:4,O=1,streams=step", "hicache:5", "foca:5,streams=step", "magcache:0.2,ratios=flux.1-dev",
          "easycache:0.05", "easycache:0.05,per_sample=1", "budget:3", "budget:3,base=step", "budget:3,base=forecast",
          "blockcache:0.2", "toca:3", "toca:3,select=random,attn=sdpa", "duca:3", "pab:2", "tgate:3",
          "fastercache:2", "fastercache:2,cfg=2", "dbcache:1,B=0+taylorseer:O=1", "static:FRRF+hicache:O=1",
          "easycache:0.05+foca", "teacache:0.3+taylorseer", "deepcache:3"]
MODELS = {"dit": COMMON, "pixart": ["tgate:3", "pab:2", "toca:3,select=attn", "duca:3", "fora:3", "teacache:0.3"],
          "unet": ["deepcache:3", "deepcache:3,branch=1", "fora:3", "fastercache:2,cfg=2"]}


def describe(program) -> list[str]:
    lines = []
    for name, ops in program.variants.items():
        lines.append(f"variant {name}: " + " ".join(json.dumps(op.to_json()) for op in ops))
    for name, seg in program.segments.items():
        lines.append(f"segment {name} role={seg.role} flops={seg.flops!r} in={seg.inputs} out={seg.outputs}")
        lines.extend("    " + line for line in seg.module.code.strip().splitlines())
    for name, spec in program.values.items():
        lines.append(f"value {name}: {spec.shape} {spec.dtype}")
    meta = {**dataclasses.asdict(program.model), **dataclasses.asdict(program.planned)}
    # diffusers keeps the names of defaulted config keys in a set: their order changes from run to run
    meta["config"] = {k: v for k, v in meta["config"].items() if k != "_use_default_values"}
    meta.pop("method", None)  # the planned method object itself: its spec is "policy"
    lines.append("meta " + json.dumps(meta, sort_keys=True, default=repr))
    return lines


def main() -> int:
    only = sys.argv[1:]
    for model_name, specs in MODELS.items():
        if only and model_name not in only:
            continue
        model = make(model_name)
        captured = capture(model, example_inputs(model, batch=2, text_tokens=5))
        for spec in specs:
            print(f"=== {model_name} {spec}", flush=True)
            try:
                program = compile_program(captured.copy(), parse_policy(spec))
            except Exception as exc:  # noqa: BLE001 - the message is part of what must not change
                print(f"error {type(exc).__name__}: {exc}")
                continue
            print("\n".join(describe(program)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
