"""docs/workflows.md is what the code does: a few of its cells, run again, say the same.

The table (workflow × policy × backend) is written by ``tools/workflow_matrix.py`` from runs; a
full run takes many minutes, so this re-runs a cheap subset — a ControlNet pipeline under fbcache
(whose residual inputs once were baked into the graph), a quantized model under ``none`` (bit-exact)
and a backend's refusal by capability — and checks every row and column the tool knows is there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import workflow_matrix as wm  # noqa: E402

pytestmark = pytest.mark.slow  # whole pipelines and a quantized model, one capture each

CELLS = [("ControlNet FLUX", "fbcache:10", "eager"), ("int8 weight-only", "none", "eager"),
         ("int8 weight-only", "none", "onnxruntime")]


@pytest.fixture(scope="module")
def table():
    return wm.parse((ROOT / "docs" / "workflows.md").read_text())


def test_the_table_has_every_workflow_policy_and_backend(table):
    assert set(table) == {(w, p, b) for w in wm.WORKFLOWS for p in wm.POLICIES for b in wm.BACKENDS}


@pytest.mark.parametrize(("workflow", "policy", "backend"), CELLS)
def test_a_cell_run_again_says_what_the_table_says(table, workflow, policy, backend):
    documented = table[workflow, policy, backend]
    assert documented != wm.NOT_RUN, f"docs/workflows.md did not run {workflow} × {policy} × {backend}"
    assert wm.cell(workflow, policy, backend) == documented
