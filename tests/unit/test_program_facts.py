"""The typed program (issue 23, item 5): a manifest's ``program.meta`` as schema 3 writes it maps onto
``Program.model`` / ``Program.planned`` and back unchanged, so artifacts written before the typed
fields load as they are (no schema change), and a backend's files reach it through
``artifact_options``, not through the program."""

from pathlib import Path

import torch

from cachec.backends import artifact_backend
from cachec.program import ModelFacts, PlanFacts, Program

# a schema-3 description as cachec wrote it before the typed fields (an FBCache program, per sample)
DESCRIPTION = {
    "inputs": ["x", "t"],
    "output": "out",
    "segments": {
        "head": {"role": "probe", "inputs": ["x", "t"], "outputs": ["h", "sig", "sig__items"], "flops_per_sample": 2.0},
        "tail": {"role": "region", "inputs": ["h"], "outputs": ["out"], "flops_per_sample": 8.0},
    },
    "variants": {"head": [["run", "head"]], "tail_full": [["run", "tail"], ["store", "out", "cache__o"]],
                 "tail_reuse": [["load", "cache__o", "out"]]},
    "values": {n: {"shape": ["B", 4], "dtype": "float32"} for n in ("x", "h", "out", "cache__o")}
    | {"t": {"shape": ["B"], "dtype": "float32"}, "sig": {"shape": [], "dtype": "float32"},
       "sig__items": {"shape": ["B"], "dtype": "float32"}},
    "meta": {"model_class": "DiT", "policy": "fbcache:0.1,per_sample=1", "blocks": ["blocks.0"],
             "regions": [{"name": "blocks.0", "kind": "block", "share": 1.0}], "signal": "sig", "feedback": [],
             "step_inputs": [], "policy_data": None, "base_path": ["head", "tail"], "batch_dims": {"x": 0, "t": 0},
             "max_batch": 8, "output_form": "tensor", "none_flops": 10.0},
}


def test_a_schema_3_description_maps_onto_the_typed_facts_and_back():
    program = Program.from_description(DESCRIPTION)
    assert program.model == ModelFacts(model_class="DiT", batch_dims={"x": 0, "t": 0}, max_batch=8, output_form="tensor")
    assert program.planned == PlanFacts(policy="fbcache:0.1,per_sample=1", blocks=["blocks.0"],
                                        regions=DESCRIPTION["meta"]["regions"], base_path=["head", "tail"],
                                        none_flops=10.0, signal="sig")
    assert program.host_reads() == {"sig", "sig__items"}
    assert program.batch_of({"x": torch.zeros(3, 4)}) == 3
    assert program.describe() == DESCRIPTION


def test_a_bare_description_leaves_out_what_it_does_not_know():
    meta = {"policy": "none", "blocks": []}
    program = Program.from_description({**DESCRIPTION, "meta": meta, "variants": {"full": [["run", "tail"]]}})
    assert program.model.max_batch is None and program.model.batch_dims == {} and program.planned.tokens is None
    assert program.describe()["meta"] == {**meta, "model_class": "", "batch_dims": {}, "regions": [], "signal": None,
                                          "base_path": [], "feedback": [], "step_inputs": [], "policy_data": None}


def test_backend_files_travel_in_the_lowering_options():
    lowered = {"onnx_files": {"head": "onnx/head.onnx", "tail": "onnx/tail.onnx"}}
    assert artifact_backend("onnxruntime").artifact_options(Path("art"), lowered) == {
        "onnx_dir": Path("art"), "onnx_files": lowered["onnx_files"]}
    aoti = {"aoti_packages": {}, "aoti_weights": {"file": "w.safetensors", "aliases": {}}, "aoti_device": "cuda"}
    options = artifact_backend("aotinductor").artifact_options(Path("art"), aoti)
    assert options == {"package_dir": Path("art"), **aoti}
    problem = artifact_backend("aotinductor").move_problem(Program.from_description(DESCRIPTION),
                                                           torch.device("cpu"), **options)
    assert "compiled for cuda" in problem
