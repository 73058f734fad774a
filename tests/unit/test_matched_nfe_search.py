"""tools/matched_nfe.py without a model: which parameter a policy template tunes, and the NFE search.

The tool's tables are only as good as its match: these check that the search lands within the
tables' tolerance on monotone NFE curves of both directions, on a log scale for thresholds, and
that it reports the closest value when a method's floor is above the target instead of looping."""

import importlib.util
import sys
from pathlib import Path

import pytest

from cachec.errors import CachecError

_path = Path(__file__).resolve().parents[2] / "tools" / "matched_nfe.py"
_spec = importlib.util.spec_from_file_location("matched_nfe", _path)
matched_nfe = importlib.util.module_from_spec(_spec)
sys.modules["matched_nfe"] = matched_nfe  # its dataclasses look their module up there
_spec.loader.exec_module(matched_nfe)


@pytest.mark.parametrize("text, spec_at_3, key, kind", [
    ("abcache", "abcache:N=3", "N", int),  # a bare method: its main value
    ("fbcache+taylorseer:O=1", "fbcache:t=3+taylorseer:O=1", "t", float),  # a hybrid: its decision's
    ("dbcache:t=?+taylorseer:O=1", "dbcache:t=3+taylorseer:O=1", "t", float),  # KEY=? names another
    ("budget:nfe=?,base=forecast", "budget:nfe=3,base=forecast", "nfe", int),
    ("speca:N=20", "speca:tau0=3,N=20", "tau0", float),  # keys given, main value left open
])
def test_template_tunes_the_named_or_main_parameter(text, spec_at_3, key, kind):
    tpl = matched_nfe.template(text)
    assert (tpl.key, tpl.kind, tpl.spec(3)) == (key, kind, spec_at_3)


def test_a_spec_with_its_main_value_is_fixed_and_a_bad_key_is_named():
    assert matched_nfe.template("fora:3").key is None
    with pytest.raises(CachecError, match="sigma=\\? must name a numeric parameter of fora"):
        matched_nfe.template("fora:sigma=?")


@pytest.mark.parametrize("nfe_at, lo, hi, start, target, integer", [
    (lambda v: 2 + 48 / v, 1, 1000, 3, 10.5, True),  # an interval: NFE falls as N grows
    (lambda v: v + 0.6, 1, 200, 10, 17.5, True),  # budget's nfe: NFE grows with the value
    (lambda v: 50 / (1 + 40 * v), 0.0, 10.0, 0.08, 10.5, False),  # a threshold, over decades
])
def test_search_lands_within_the_tables_tolerance(nfe_at, lo, hi, start, target, integer):
    value, nfe = matched_nfe.monotone_search(nfe_at, lo, hi, start, target, integer)
    assert abs(nfe - target) <= matched_nfe.TOLERANCE and nfe == nfe_at(value)


def test_search_reports_the_closest_nfe_when_the_floor_is_above_the_target():
    calls = []

    def floored(v):
        calls.append(v)
        return max(13.76, 50 / (1 + v))

    value, nfe = matched_nfe.monotone_search(floored, 0.0, 100.0, 7.0, 10.5, False)
    assert nfe == 13.76 and len(calls) <= matched_nfe.MAX_PROBES
