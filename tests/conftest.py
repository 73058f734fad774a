import os

import pytest
import torch
from diffusers import DiTTransformer2DModel

# deterministic, quiet CPU runs
torch.manual_seed(0)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small DiT saved as a diffusers model directory (what `cachec compile DIR` takes).

    Weights are re-drawn with small noise: diffusers zero-initialises adaLN-zero gates, which would
    make every block an identity and every cache policy trivially exact.
    """
    torch.manual_seed(0)
    m = DiTTransformer2DModel(sample_size=8, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2,
                              attention_head_dim=8, num_embeds_ada_norm=10)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    d = tmp_path_factory.mktemp("model") / "dit"
    m.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded (and do not fight other processes for cores).
    Modules of small-model trajectory tests opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
