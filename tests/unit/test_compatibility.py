"""Methods are immutable, and one rule (cachec.compatibility) says which method a program compiled
for another may run: the runtime, the serve worker and the artifact loader all apply it. No model."""

import pytest

from cachec.compatibility import compatible, with_program_data
from cachec.errors import PolicyError, RequestError
from cachec.policy import parse_policy
from cachec.serve_worker import check_policy

MAG = "magcache:0.1,ratios=flux.1-dev"  # needs data: published ratios, read by load_data


def test_a_method_is_never_mutated_by_reading_its_data():
    m = parse_policy(MAG)
    assert m.data is None
    controller = m.controller(10)  # reads the ratios for this controller's method only
    assert m.data is None and controller.policy is not m and controller.policy.data["ratios"]
    resolved = m.resolved()
    assert resolved is not m and resolved.spec == m.spec and resolved.data == controller.policy.data
    assert resolved.resolved() is resolved  # read once
    with pytest.raises(AttributeError):
        m.data = {"ratios": [1.0]}  # no assignment after construction
    hybrid = parse_policy(MAG + "+taylorseer")
    hybrid.controller(10)
    assert hybrid.data is None and hybrid.resolved().data == resolved.data


def test_budget_with_data_keeps_what_validate_derives(tmp_path):
    b = parse_policy(f"budget:3,calib={tmp_path / 'c.json'}")
    assert b.needs_data and b.with_data({"schedule": "FFRF"}).needs_data


@pytest.mark.parametrize("requested", ["fora:3", "fora:5", "fora:3,warmup=1", "none"])
def test_runtime_parameters_and_none_run_on_the_compiled_variants(requested):
    got = compatible(parse_policy(requested), parse_policy("fora:3"), 4)
    assert got.spec == parse_policy(requested).spec


@pytest.mark.parametrize("requested", ["teacache:0.1", "fbcache:0.1", "delta:2"])
def test_a_method_that_needs_other_variants_is_refused_naming_both(requested):
    with pytest.raises(PolicyError, match=r"compiled for 'fora:3'; '[^']+' needs other variants"):
        compatible(parse_policy(requested), parse_policy("fora:3"), 4)


def test_the_program_data_goes_to_a_method_of_the_same_source_only():
    data = {"ratios": [1.0, 0.9, 0.8]}
    compiled = parse_policy(MAG)
    other_threshold = compatible(parse_policy("magcache:0.2,ratios=flux.1-dev"), compiled, 4, data)
    assert other_threshold.data == data
    other_file = parse_policy("magcache:0.2,ratios=elsewhere.json")
    assert with_program_data(other_file, compiled, data) is other_file  # its own file, read when it runs
    assert with_program_data(parse_policy("none"), compiled, data).data is None


def test_serve_applies_the_same_rule_as_a_request_error():
    assert check_policy("fora:5", parse_policy("fora:3"), 4, 10).spec == "fora:5"
    assert check_policy(None, parse_policy("fora:3"), 4, 10).spec == "fora:3"
    with pytest.raises(RequestError, match="policy: the program was compiled for 'fora:3'"):
        check_policy("teacache:0.1", "fora:3", 4, 10)


def _described(policy: str):
    from cachec.program import Program

    return Program.from_description({
        "inputs": ["x"], "output": "out",
        "segments": {"s": {"role": "region", "inputs": ["x"], "outputs": ["out"], "flops_per_sample": 1.0}},
        "variants": {"full": [["run", "s"]]},
        "values": {n: {"shape": ["B", 4], "dtype": "float32"} for n in ("x", "out")},
        "meta": {"policy": policy, "blocks": []}})


def test_the_compiled_method_is_the_planners_own_or_its_description_parsed_once(monkeypatch):
    """The runtime and the artifact writer take the method a program was compiled for from the
    program (issue 23, item 4): the planner's object, or a described program's spec parsed once."""
    import cachec.policy
    from cachec.compatibility import compiled_method

    program = _described("fora:3")
    calls = []
    real = cachec.policy.parse_policy
    monkeypatch.setattr(cachec.policy, "parse_policy", lambda spec: calls.append(spec) or real(spec))
    first = compiled_method(program)
    assert first.spec == "fora:3" and compiled_method(program) is first and calls == ["fora:3"]
    planned = real("fora:5")
    program.planned.method = planned  # what the planner records
    assert compiled_method(program) is planned and calls == ["fora:3"]
    assert program.describe()["meta"]["policy"] == "fora:3"  # in memory only: the description keeps its spec


def test_with_params_is_a_new_validated_method():
    m = parse_policy("taylorseer:4,O=1")
    step = m.with_params(streams="step")
    assert step is not m and m.params["streams"] != "step"
    assert step.spec == parse_policy("taylorseer:4,O=1,streams=step").spec
    with pytest.raises(PolicyError):
        parse_policy("budget:3").with_params(base="nowhere")
    hybrid = parse_policy("fbcache:0.1+taylorseer")
    assert hybrid.with_params(warmup=2).spec == parse_policy("fbcache:0.1,warmup=2+taylorseer").spec
