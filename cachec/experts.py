"""Several denoisers in one pipeline: each expert counts its own steps.

Wan 2.2 denoises with two experts: ``transformer`` for the high-noise steps (``t >= boundary``)
and ``transformer_2`` for the rest, where ``boundary = boundary_ratio * num_train_timesteps``. The
pipeline names each call's place in the *whole* trajectory (``cache_context(step_index=i,
num_inference_steps=N)``), so the low-noise expert would never see a step 0 (its trajectories
would run into each other) and each expert would count the other's steps. :class:`ExpertSteps`
turns the pipeline's numbering into the expert's own: its first step is 0 and its length the
number of steps it runs. With a known boundary that length is counted from the scheduler's
timesteps (one read per trajectory, when the scheduler made new timesteps); without one, an
expert is taken to run from its first step to the end.
"""

from __future__ import annotations


class ExpertSteps:
    """The step numbering of expert ``index`` (0: the first denoiser attribute) of ``pipe``."""

    def __init__(self, pipe, index: int):
        self.pipe = pipe
        self.index = index
        self._start: int | None = None  # the pipeline's step index of this expert's first step
        self._last: int | None = None
        self._counted: tuple | None = None  # (timesteps tensor, boundary) -> steps at or above the boundary

    def local(self, kwargs: dict) -> dict:
        """``cache_context`` keyword arguments with this expert's own ``step_index`` and length."""
        step, total = kwargs.get("step_index"), kwargs.get("num_inference_steps")
        if step is None:
            return kwargs
        high = self._high_steps()
        if high is not None:
            start, length = (0, high) if self.index == 0 else (high, None if total is None else total - high)
        else:
            if self._last is None or step < self._last:
                self._start = step  # a new trajectory reaches this expert
            start, length = self._start, None if total is None else total - self._start
        self._last = step
        out = dict(kwargs, step_index=step - start)
        if length is not None:
            out["num_inference_steps"] = length
        return out

    def _high_steps(self) -> int | None:
        """How many of the scheduler's timesteps the high-noise expert runs (None: no boundary)."""
        ratio = getattr(getattr(self.pipe, "config", None), "boundary_ratio", None)
        scheduler = getattr(self.pipe, "scheduler", None)
        timesteps = getattr(scheduler, "timesteps", None)
        if ratio is None or timesteps is None:
            return None
        boundary = ratio * scheduler.config.num_train_timesteps
        if self._counted is None or self._counted[0] is not timesteps or self._counted[1] != boundary:
            self._counted = (timesteps, boundary, int((timesteps >= boundary).sum()))  # one read per trajectory
        return self._counted[2]
