"""How ``cachec run`` times a policy against ``none``: the bench's measurement, for one policy and seed.

Why not one trajectory each: on the bundled model a trajectory of ``none`` takes about a second,
and one unrepeated timing of each side made the printed speedup swing between 0.9x and 1.9x
from run to run on an idle 2-core machine. So ``cachec run`` measures as ``cachec bench`` does
(it calls the bench's :func:`~cachec.bench.warm_runtimes` and
:func:`~cachec.bench.measure_round_robin`): a warm-up per runtime, then ``repeats`` timed
trajectories of each side, interleaved; the figure is median(none) / median(policy). The spread
is the range of the per-repeat ratios (each ratio pairs two neighbouring trajectories, which a
slow drift of the machine hits alike), and when that range includes 1 the difference is
reported as within the noise instead of as a speedup.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

WIDE_SPREAD = 1.3  # repeats whose fastest and slowest speedups differ by more than this: a noisy machine


@dataclass(frozen=True)
class Speedup:
    """The timing comparison of a policy against ``none`` (seconds per trajectory)."""

    median_s: float
    min_s: float
    max_s: float
    none_median_s: float
    none_min_s: float
    none_max_s: float
    ratios: tuple[float, ...]  # none / policy per repeat, each pair measured back to back

    @property
    def value(self) -> float:
        """median(none) / median(policy): the figure printed as the speedup."""
        return self.none_median_s / self.median_s

    @property
    def low(self) -> float:
        return min(self.ratios)

    @property
    def high(self) -> float:
        return max(self.ratios)

    @property
    def within_noise(self) -> bool:
        """True when some repeats found the policy faster and others not (or as fast)."""
        return len(self.ratios) > 1 and self.low <= 1.0 <= self.high

    def verdict(self) -> str:
        """One sentence on how far the figure can be trusted."""
        n = len(self.ratios)
        if n == 1:
            return "one repeat: no spread measured (--repeats 3 or more says how much it varies)"
        if self.within_noise:
            return (f"within the noise: over {n} repeats the policy was {self.low:.2f}x to {self.high:.2f}x as fast "
                    "as none (more --repeats, a larger --batch or --steps, or an idle machine decide it)")
        if self.high / self.low > WIDE_SPREAD:
            return (f"noisy machine: the {n} repeats ranged {self.low:.2f}x to {self.high:.2f}x; "
                    "the median is the figure")
        return f"{n} interleaved repeats ranged {self.low:.2f}x to {self.high:.2f}x"

    def to_json(self) -> dict:
        return {
            "latency_s": round(self.median_s, 4),
            "latency_none_s": round(self.none_median_s, 4),
            "latency_range_s": [round(self.min_s, 4), round(self.max_s, 4)],
            "latency_none_range_s": [round(self.none_min_s, 4), round(self.none_max_s, 4)],
            "speedup_vs_none": round(self.value, 3),
            "speedup_range": [round(self.low, 3), round(self.high, 3)],
            "within_noise": self.within_noise,
            "repeats": len(self.ratios),
        }


def speedup(policy_seconds: list[float], none_seconds: list[float]) -> Speedup:
    """Summarise interleaved timings: ``policy_seconds[i]`` and ``none_seconds[i]`` are repeat ``i``."""
    if not policy_seconds or len(policy_seconds) != len(none_seconds):
        raise ValueError("speedup needs one timing of each side per repeat")
    return Speedup(
        median_s=statistics.median(policy_seconds), min_s=min(policy_seconds), max_s=max(policy_seconds),
        none_median_s=statistics.median(none_seconds), none_min_s=min(none_seconds), none_max_s=max(none_seconds),
        ratios=tuple(n / p for n, p in zip(none_seconds, policy_seconds, strict=True)))


def busy_machine_note() -> str | None:
    """A warning when other processes already keep every core busy (1-minute load average above the
    core count): then torch's threads wait on each other and timings swing by 10x or more."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None
    cores = os.cpu_count() or 1
    if load <= cores:
        return None
    return (f"the machine was busy before the run (load {load:.1f} on {cores} cores): latencies are unreliable; "
            "an idle machine, or --threads 1, gives steadier figures")


def compare_with_none(session, method, *, steps: int, seed: int, batch: int, repeats: int, backend: str,
                      say) -> tuple[dict, Speedup]:
    """Sample ``method`` and ``none`` (warm-up, then ``repeats`` interleaved timed trajectories each).

    Returns the bench's ``PolicyRun`` per spec (stats, final sample of ``seed``) and the
    :class:`Speedup`. With ``none`` itself one runtime is timed against itself.
    """
    from .bench import measure_round_robin, warm_runtimes
    from .policy import parse_policy

    policy = method.spec
    methods = {m.spec: m for m in (parse_policy("none"), method)}
    runs = warm_runtimes(session, list(methods.values()), steps=steps, batch=batch, backend=backend, say=say)
    measure_round_robin(runs, session.bundle, steps=steps, seeds=[seed], batch=batch, repeats=repeats, say=say,
                        keep_latents=False)
    none_s = runs["none"].seconds
    pol_s = runs[policy].seconds if policy != "none" else none_s
    return runs, speedup(pol_s, none_s)
