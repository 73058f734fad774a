"""Planning grows linearly with depth, checked by counting work (not by timing it).

Planning once re-read every graph node's module path per block and per region, and coalescing
rescanned every variant per pair of segments, so the work per block grew with the number of
blocks (FLUX.1-dev's 57 spent most of their planning there). Here a hand-built DiT-like stack
(attention and feed-forward modules in each block, exported in a second) is planned at 2, 5 and
8 blocks. Its blocks are identical, so linear work adds exactly as much from 5 to 8 blocks as
from 2 to 5: every function's call count (cProfile's, which sees a quadratic scan wherever it
hides, in cachec or in what it calls) must grow by equal steps, and module paths are read a
fixed number of times per node.
"""

import cProfile
import gc
import pstats
from collections import Counter
from unittest import mock

import pytest
import torch
from torch import nn

from cachec import regions
from cachec.capture import capture
from cachec.planner import compile_program
from cachec.policy import parse_policy

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, TOKENS, BATCH = 16, 6, 2


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(DIM, DIM) for _ in range(4))

    def forward(self, x):
        q, k, v = (p(x).view(x.shape[0], TOKENS, 2, DIM // 2).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v))
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(x.shape[0], TOKENS, DIM))


class FeedForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)

    def forward(self, x):
        return self.down(nn.functional.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.modulation = nn.Linear(DIM, 2 * DIM)
        self.attn, self.ff = Attention(), FeedForward()

    def forward(self, x, emb):
        scale, shift = self.modulation(emb)[:, None].chunk(2, dim=-1)
        x = x + self.attn(self.norm1(x) * (1 + scale) + shift)
        return x + self.ff(self.norm2(x))


class Stack(nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.time_embed = nn.Linear(1, DIM)
        self.blocks = nn.ModuleList(Block() for _ in range(depth))
        self.proj_out = nn.Linear(DIM, DIM)

    def forward(self, hidden_states, timestep, return_dict=False):  # capture passes return_dict, as to diffusers
        emb = self.time_embed(timestep[:, None].float())
        for block in self.blocks:
            hidden_states = block(hidden_states, emb)
        return (self.proj_out(hidden_states),)


@pytest.fixture(scope="module")
def captures():
    """Captures of the stack at 2, 5 and 8 blocks (each test plans a copy; a static batch exports faster)."""
    torch.manual_seed(0)
    inputs = {"hidden_states": torch.randn(BATCH, TOKENS, DIM), "timestep": torch.full((BATCH,), 500.0)}
    return {depth: capture(Stack(depth).eval(), inputs, dynamic_batch=False) for depth in DEPTHS}


DEPTHS = (2, 5, 8)


def _work(captured, policy: str, depth: int) -> tuple[Counter, int]:
    """Calls per function, and module paths read, while planning ``policy`` on a copy of ``captured``."""
    profile = cProfile.Profile()
    # no garbage collection inside the profile: the weakref callbacks it runs (torch._dynamo's
    # id tables) count the garbage earlier tests left, not planning work
    gc.collect()
    gc.disable()
    try:
        with mock.patch.object(regions, "module_path", wraps=regions.module_path) as paths:
            profile.enable()
            program = compile_program(captured.copy(), parse_policy(policy))
            profile.disable()
    finally:
        gc.enable()
    kinds = [r["kind"] for r in program.planned.regions]
    assert len(program.planned.blocks) == depth and kinds == ["attn", "mlp"] * depth  # it planned every block
    calls = Counter({f"{path}:{line}({name})": stats[0] for (path, line, name), stats in pstats.Stats(profile).stats.items()})
    return calls, paths.call_count


@pytest.mark.parametrize("policy", ["none", "fora:3"])
def test_planning_work_grows_linearly_with_depth(captures, policy):
    _work(captures[DEPTHS[0]], policy, DEPTHS[0])  # first use of torch's lazily built tables is not per-block work
    work = {d: _work(captures[d], policy, d) for d in DEPTHS}
    (small, _), (middle, _), (large, _) = (work[d] for d in DEPTHS)
    # equal steps (2 -> 5 -> 8 blocks) for linear work; a scan per block or per pair grows the second step
    growing = {f: (small[f], middle[f], large[f]) for f in large
               if large[f] - middle[f] > 1.05 * max(middle[f] - small[f], 0) + 3}
    assert not growing, f"calls that grow faster than the depth (at {DEPTHS} blocks): {growing}"
    for depth, (_, paths) in work.items():  # once per node and once per computed node (segment assignment)
        assert paths <= 2 * len(captures[depth].graph_module.graph.nodes), (depth, paths)
