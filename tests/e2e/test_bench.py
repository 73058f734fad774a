"""``cachec bench`` on the bundled model: every number in the table is re-derived independently.

A short run (8 steps, 2 seeds, batch 2, 2 repeats) of ``fora:2`` and ``fbcache:0.05`` against
``none``; then NFE is recomputed from the per-step FLOPs the runtime recorded, speedup from the
recorded latencies, PSNR with a hand formula, SSIM and the error curve from the returned samples
and latents, cache bytes from the runtime's allocated buffers. Speed itself is never asserted.
"""

import json
import math
import statistics

import pytest
import torch
from PIL import Image

from cachec import bench, figures
from cachec.cli import main
from cachec.metrics import ssim

pytestmark = pytest.mark.slow  # a bench run of several policies and seeds (tests/README.md)

STEPS, SEEDS, BATCH, REPEATS = 8, 2, 2, 2
POLICIES = "fora:2,fbcache:0.05"


@pytest.fixture(scope="module")
def result():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: avoid oversubscription stalls; speed is not asserted
    try:
        yield bench.run_bench("builtin:tiny-dit", [POLICIES], steps=STEPS, seeds=SEEDS, batch=BATCH, repeats=REPEATS)
    finally:
        torch.set_num_threads(threads)


def _row(result, policy):
    return next(r for r in result.rows if r["policy"] == policy)


def test_policies_and_reference(result):
    assert [r["policy"] for r in result.rows] == ["none", "fora:2", "fbcache:0.05"]
    none = _row(result, "none")
    assert none["nfe"] == STEPS and none["full_steps"] == STEPS
    assert none["psnr_vs_none"] is None and none["ssim_vs_none"] == pytest.approx(1.0)
    assert all(v == 0 for v in none["rel_l2_per_step"])
    assert _row(result, "fora:2")["schedules"] == {str(s): "FRFRFRFR" for s in range(SEEDS)}


def test_nfe_is_full_steps_plus_flops_share_of_cached_steps(result):
    for pol, run in result.runs.items():
        nfes, tflops = [], []
        for seed in range(SEEDS):
            st = run.stats[seed]
            assert len(st.step_flops) == len(st.schedule) == STEPS
            full = st.full_flops
            for c, f in zip(st.schedule, st.step_flops, strict=True):
                if c == "F":  # a full step (probe included) costs exactly one uncached forward
                    assert f == pytest.approx(full, rel=1e-9)
                else:
                    assert 0 < f < full
            cached_share = sum(f / full for c, f in zip(st.schedule, st.step_flops, strict=True) if c == "R")
            nfes.append(st.schedule.count("F") + cached_share)
            tflops.append(sum(st.step_flops) / 1e12)
        row = _row(result, pol)
        assert row["nfe"] == pytest.approx(statistics.fmean(nfes), abs=1e-4)
        assert row["tflops_per_trajectory"] == pytest.approx(statistics.fmean(tflops), rel=1e-9)
        assert row["nfe_ideal_speedup"] == pytest.approx(STEPS / statistics.fmean(nfes), rel=1e-3)


def test_speedup_is_none_latency_over_policy_latency_from_the_same_run(result):
    none_s = result.runs["none"].seconds
    for pol, run in result.runs.items():
        assert len(run.seconds) == REPEATS * SEEDS
        row = _row(result, pol)
        lat = row["latency_s"]
        assert lat["median"] == statistics.median(run.seconds)
        assert lat["min"] == min(run.seconds) and lat["max"] == max(run.seconds)
        assert row["speedup_vs_none"] == pytest.approx(statistics.median(none_s) / statistics.median(run.seconds))
        assert row["measured_over_ideal"] == pytest.approx(row["speedup_vs_none"] / row["nfe_ideal_speedup"])


def test_fidelity_matches_hand_computation(result):
    ref = result.runs["none"]
    for pol in ("fora:2", "fbcache:0.05"):
        run, row = result.runs[pol], _row(result, pol)
        psnrs, ssims = [], []
        for seed in range(SEEDS):
            a = ((run.samples[seed].double() + 1) / 2).clamp(0, 1)  # pixel space [-1, 1] -> [0, 1]
            b = ((ref.samples[seed].double() + 1) / 2).clamp(0, 1)
            psnrs.append(10 * math.log10(1.0 / ((a - b) ** 2).mean().item()))
            ssims.append(ssim(a, b))
            # the last latent of the error curve is the final sample
            assert torch.equal(run.latents[seed][-1], run.samples[seed])
        assert row["psnr_vs_none"] == pytest.approx(statistics.fmean(psnrs), abs=1e-5)  # fp32 vs fp64 mapping
        assert row["ssim_vs_none"] == pytest.approx(statistics.fmean(ssims), abs=1e-6)
        curve = [statistics.fmean(
            (torch.linalg.vector_norm((run.latents[s][i] - ref.latents[s][i]).double())
             / torch.linalg.vector_norm(ref.latents[s][i].double())).item() for s in range(SEEDS))
            for i in range(STEPS)]
        assert row["rel_l2_per_step"] == pytest.approx(curve, rel=1e-9)
        assert row["rel_l2_per_step"][0] == 0.0  # step 0 is always full
        assert 10 < row["psnr_vs_none"] < 80 and 0.5 < row["ssim_vs_none"] < 1


def test_cache_bytes_are_the_runtime_buffers(result):
    for pol, run in result.runs.items():
        held = sum(t.numel() * t.element_size() for t in run.runtime.caches.values())
        assert _row(result, pol)["cache_bytes"] == held
    assert _row(result, "none")["cache_bytes"] == 0 < _row(result, "fbcache:0.05")["cache_bytes"]


def test_table_json_and_plots(result, tmp_path):
    text = bench.format_table(result)
    for pol in ("none", "fora:2", "fbcache:0.05"):
        assert f"\n{pol} " in text
    bench.write_json(result, str(tmp_path / "b.json"))
    data = json.loads((tmp_path / "b.json").read_text())
    assert [r["policy"] for r in data["policies"]] == ["none", "fora:2", "fbcache:0.05"]
    assert data["steps"] == STEPS and data["seeds"] == list(range(SEEDS))
    paths = figures.write_plots(result, str(tmp_path / "plots"))
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["schedule.png", "error_curve.png", "pareto.png"]
    for p in paths:
        im = Image.open(p).convert("RGB")
        assert im.width >= 300 and im.height >= 150
        assert len(im.getcolors(1 << 16) or [0] * 3) > 2  # not blank


def test_schedule_strip_colours_follow_the_schedule(result, tmp_path):
    """Pixel check of the strip: fora:2's cells alternate dark (full) and light (cached)."""
    path = tmp_path / "s.png"
    figures.plot_schedule(result, path)
    im = Image.open(path).convert("L")
    row = [r["policy"] for r in result.rows].index("fora:2")
    y = 45 + 30 * row + 11
    dark = [im.getpixel((x, y)) < 60 for x in range(im.width)] + [False]
    runs, start = [], None  # (start, length) of dark stretches; cells are wide, label strokes thin
    for x, d in enumerate(dark):
        if d and start is None:
            start = x
        elif not d and start is not None:
            runs.append((start, x - start))
            start = None
    cells = [(a, n) for a, n in runs if n >= 8]
    assert len(cells) == STEPS // 2  # FRFRFRFR: four dark cells ...
    gaps = {b[0] - a[0] for a, b in zip(cells, cells[1:], strict=False)}
    assert len(gaps) == 1 and gaps.pop() > 2 * cells[0][1]  # ... evenly spaced, a light cell between


def test_pareto_front():
    pts = [(10, 30.0), (13, 28.0), (10, 22.0), (5, 20.0), (20, 40.0)]
    assert figures.pareto_front(pts) == [3, 0, 4]


def test_split_policies_keeps_policy_arguments_together():
    assert bench.split_policies("fora:2,delta:2,blocks=1-4,fbcache:0.05") == [
        "none", "fora:2", "delta:2,blocks=1-4", "fbcache:0.05"]
    assert bench.split_policies(["none,fora:N=4", "fora:4"]) == ["none", "fora:4"]


def test_cli_bench_output(result, monkeypatch, tmp_path, capsys):
    seen = {}

    def fake(model, policies, **kw):
        seen.update(kw, model=model, policies=policies)
        return result

    monkeypatch.setattr(bench, "run_bench", fake)
    threads = torch.get_num_threads()
    try:
        rc = main(["bench", "builtin:tiny-dit", "--policies", POLICIES, "--steps", "8", "--seeds", "2", "--batch", "2",
                   "--threads", "1", "--json", str(tmp_path / "o.json"), "--plots", str(tmp_path / "p")])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    assert seen["steps"] == 8 and seen["seeds"] == 2 and seen["policies"] == [POLICIES]
    out = capsys.readouterr().out
    assert "fbcache:0.05" in out and "speedup" in out
    assert json.loads((tmp_path / "o.json").read_text())["policies"][1]["policy"] == "fora:2"
    assert (tmp_path / "p" / "pareto.png").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--policies", "fora:2,nosuch:1"], "unknown policy 'nosuch'"),
    (["--policies", "fora:2", "--seeds", "0"], "--seeds must be at least 1"),
    (["--policies", "fora:2", "--repeats", "0"], "--repeats must be at least 1"),
    (["--policies", "fora:2", "--batch", "0"], "--batch must be at least 1"),
    (["--policies", "fora:2,,fbcache"], "empty entry"),
    (["--policies", "fora:x"], "fora"),
])
def test_bad_input_exits_2_with_one_message(argv, needle, capsys):
    assert main(["bench", "builtin:tiny-dit", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
