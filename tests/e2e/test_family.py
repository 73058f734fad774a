"""The diffusers family beyond the six: every class of family_models.py × the matrix policies.

Through the public API (``capture`` + ``compile_program`` + ``CacheRuntime``, as ``cachec.compile``
does, with one capture per class). For each class, ``none`` must equal the plain model at every
step at batch 2 and batch 1, and fora:3, fbcache, teacache, taylorseer and delta must run their
schedules written from the methods' definitions (``family_models.expected_schedule``); their
first step equals the plain model's and their reuse steps change the result. A class or policy
cachec cannot serve must fail with a CachecError carrying the declared message.
``tools/family_matrix.py`` runs the same checks and writes the table for the README.
"""

import pytest
from family_models import FAMILY, POLICIES, check, inputs, make

import cachec
from cachec.capture import capture

# fast enough for the fast subset (a few seconds each); the rest is marked slow
FAST = {"SanaTransformer2DModel", "CogView3PlusTransformer2DModel"}

SUPPORTED = [c for c, f in FAMILY.items() if not f.unsupported]
UNSUPPORTED = [c for c, f in FAMILY.items() if f.unsupported]


def _marks(cls_name):
    return [] if cls_name in FAST else [pytest.mark.slow]


@pytest.mark.parametrize("cls_name", [pytest.param(c, marks=_marks(c)) for c in SUPPORTED])
def test_class_runs_every_policy(cls_name):
    model = make(cls_name)
    captured = capture(model, inputs(cls_name, 2))
    declared = dict(FAMILY[cls_name].fails)
    for policy in POLICIES:
        if policy in declared:
            with pytest.raises(cachec.CachecError, match=declared[policy]):
                check(cls_name, policy, model=model, captured=captured)
        else:
            check(cls_name, policy, model=model, captured=captured)


@pytest.mark.slow
@pytest.mark.parametrize("cls_name", UNSUPPORTED)
def test_unsupported_class_fails_with_a_message(cls_name):
    model = make(cls_name)
    with pytest.raises(cachec.CachecError, match=FAMILY[cls_name].unsupported):
        cachec.compile(model, inputs(cls_name, 2), "fora:3")


def test_the_matrix_covers_at_least_sixteen_classes_beyond_the_six():
    from small_models import CONFIGS

    assert not set(FAMILY) & set(CONFIGS)
    assert len(SUPPORTED) >= 16


def test_the_cli_compiles_and_runs_a_directory_of_another_class(tmp_path, capsys):
    """`cachec compile DIR` / `cachec run ARTIFACT` for a class outside the six: inputs from the
    forward signature and config, then again from an --inputs file."""
    import json

    from safetensors.torch import save_file

    from cachec.cli import main

    model_dir, art = tmp_path / "sana", tmp_path / "art"
    make("SanaTransformer2DModel").save_pretrained(model_dir)
    assert main(["compile", str(model_dir), "--policy", "fora:3", "--out", str(art), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["run", str(art), "--steps", "6", "--batch", "1", "--out", str(tmp_path / "s"), "--json",
                 "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["schedule"] == "FRRFRR" and report["nfe"] < 6
    kw = inputs("SanaTransformer2DModel", 2)
    save_file({k: v.contiguous() for k, v in kw.items()}, tmp_path / "in.safetensors")
    assert main(["inspect", str(model_dir), "--inputs", str(tmp_path / "in.safetensors"), "--device", "cpu"]) == 0
    assert main(["inspect", str(model_dir), "--inputs", str(tmp_path / "missing.safetensors"), "--device", "cpu"]) == 2
    capsys.readouterr()
    assert main(["bench", str(model_dir), "--inputs", str(tmp_path / "in.safetensors"), "--policies", "fora:3",
                 "--steps", "6", "--seeds", "1", "--batch", "2", "--repeats", "1", "--json", "-", "--device", "cpu"]) == 0
    rows = {r["policy"]: r for r in json.loads(capsys.readouterr().out)["policies"]}
    assert rows["fora:3"]["schedules"] == {"0": "FRRFRR"} and rows["none"]["nfe"] == 6
