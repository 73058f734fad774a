import os

import torch

# deterministic, quiet CPU runs
torch.manual_seed(0)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("TQDM_DISABLE", "1")
