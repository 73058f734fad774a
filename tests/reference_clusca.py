"""Hook-based reference for ClusCa (``clusca:N,O,K,gamma,fresh,iters,seed,warmup``), independent of
``cachec`` (test code only: ``reference_predictive``'s TaylorSeer and ``reference_hooks``).

Written from docs/methods.md:

* TaylorSeer on every attention/feed-forward output (``taylorseer:N,O,warmup``: full at step 0,
  during the warm-up and every N steps after the last full step).
* Full step: K-means of the last block's output tokens, per sample, in float64: initial centres are
  the tokens at positions ``round(i·(N−1)/(K−1))``; ``iters`` times: every token joins its nearest
  centre (squared distance, lowest index on a tie), every centre with members moves to their mean;
  the labels are a last assignment.
* Cached step: one ``torch.rand(B, N)`` from a generator seeded with ``seed`` (one draw per cached
  step); per sample and non-empty cluster the member of highest score is its fresh token. Each
  feed-forward's ``D_0`` takes the exact values of the fresh tokens (the model computed every token;
  the reference reads their rows), then every member ``m`` of a cluster with fresh token ``t`` moves
  to ``γ·D_0[t] + (1−γ)·D_0[m]``; ``D_0`` keeps the result and the output is the Taylor forecast
  from it. Attention outputs are TaylorSeer forecasts. ``fresh=0``: no token, no change.
"""

from __future__ import annotations

import torch
from reference_hooks import block_list
from reference_predictive import PredictiveReference


def kmeans(x: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Labels ``[N]`` of one sample's tokens ``x [N, C]``."""
    x = x.double()
    n = x.shape[0]
    centres = torch.stack([x[round(i * (n - 1) / (k - 1)) if k > 1 else (n - 1) // 2] for i in range(k)])

    def assign():
        dist = torch.stack([((x - c) ** 2).sum(dim=1) for c in centres], dim=1)  # [N, K]
        return dist.argmin(dim=1)

    labels = assign()
    for _ in range(iters):
        for j in range(k):
            if (labels == j).any():
                centres[j] = x[labels == j].mean(dim=0)
        labels = assign()
    return labels


class ClusCaReference(PredictiveReference):
    def __init__(self, model, num_steps: int, *, N: int, O: int, K: int, gamma: float,  # noqa: E741
                 fresh: int = 1, iters: int = 5, seed: int = 0, warmup: int = 2):
        self.K, self.gamma, self.fresh, self.iters, self.seed = K, gamma, fresh, iters, seed
        super().__init__(model, f"taylorseer:{N},O={O},warmup={warmup}", num_steps)
        blocks = block_list(model)
        self.ffs = {b.ff for b in blocks}
        self.handles.append(blocks[-1].register_forward_hook(self._cluster))

    def reset(self) -> None:
        super().reset()
        self.generator = torch.Generator().manual_seed(self.seed)
        self.labels = None
        self.picks_step = None

    def _cluster(self, module, args, out):
        if self.full:
            h = out[0] if isinstance(out, tuple) else out
            self.labels = torch.stack([kmeans(h[b], self.K, self.iters) for b in range(h.shape[0])])

    def _picks(self) -> list[dict[int, int]]:
        """Per sample: cluster -> its fresh token, drawn once per cached step."""
        if self.picks_step != self.step:
            self.picks_step = self.step
            score = torch.rand(*self.labels.shape, generator=self.generator)
            self.picks = []
            for b in range(self.labels.shape[0]):
                chosen = {}
                for j in range(self.K):
                    members = (self.labels[b] == j).nonzero().flatten()
                    if len(members):
                        chosen[j] = int(members[score[b, members].argmax()])
                self.picks.append(chosen)
        return self.picks

    def _unit_hook(self, module, args, out):
        if module not in self.ffs or self.full or not self.fresh:
            return super()._unit_hook(module, args, out)
        fc = self.streams[(module, 0)]
        d0 = fc.D[0].clone()
        for b, chosen in enumerate(self._picks()):
            for t in chosen.values():
                d0[b, t] = out[b, t]
            for j, t in chosen.items():
                members = self.labels[b] == j
                d0[b, members] = self.gamma * d0[b, t] + (1 - self.gamma) * d0[b, members]
        fc.D[0] = d0
        return fc.predict(self.step)
