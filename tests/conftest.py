import os

import pytest
import torch
from diffusers import DiTTransformer2DModel
from serial_lock import module_lock

# deterministic, quiet CPU runs; under pytest-xdist (`-n N`) the cores are shared by the N workers, so
# each takes its share instead of two workers each running two threads on two cores
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.manual_seed(0)
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="module", autouse=True)
def _serial_modules_run_alone(request, tmp_path_factory):
    """Under pytest-xdist, a module marked ``serial`` (Ray Serve clusters, HTTP floods whose outcome
    depends on timing) runs while no other module runs; other modules share the machine. Without
    xdist this does nothing. The lock is held per module (``--dist loadfile`` keeps a module on one
    worker), so module fixtures that start and stop a cluster are covered too."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    exclusive = any(item.get_closest_marker("serial") for item in request.session.items
                    if item.path == request.node.path)
    with module_lock(tmp_path_factory.getbasetemp().parent, exclusive):
        yield


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


@pytest.fixture(scope="module")
def capture_once_per_model():
    """``cachec.build_program`` captures the model for every policy; the capture depends on the
    model and its example inputs only, so a module using this keeps one per model and plans on
    deep copies of it (the capture is most of a compile)."""
    import copy

    import cachec.capture as capture_module

    real, captured = capture_module.capture, {}

    def capture(model, inputs, **kw):
        key = (id(model), repr(sorted(kw.items())))
        if key not in captured:
            captured[key] = real(model, inputs, **kw)
        return copy.deepcopy(captured[key])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(capture_module, "capture", capture)
        yield
