"""Structure instead of names, the rules that need no export: shapes whose latent is not the first
input, the signature-built inputs, and ``--inputs`` files. The rules checked on captured models (a
timestep counting up, a batch baked into the code, a branch on a tensor's value, parallel blocks
outside FLUX, cross-attention, ``enable`` on a class outside the six) are in
``e2e/test_any_class_capture.py``.
"""

import pytest
import torch
from family_models import inputs as family_inputs
from family_models import make as make_family
from safetensors.torch import save_file

import cachec
from cachec.models import ModelBundle, load_inputs, signature_inputs
from cachec.structure import latent_from_output

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_latent_is_the_input_whose_shape_the_output_has():
    t = {"text": torch.zeros(2, 6, 8), "image": torch.zeros(2, 4, 8, 8), "t": torch.zeros(2)}
    assert latent_from_output(t, (2, 4, 8, 8), guess="text") == "image"
    # a learned-variance output (twice the channels) differs from the latent in one dimension only
    assert latent_from_output(t, (2, 8, 8, 8), guess="text") == "image"
    assert latent_from_output(t, (2, 4, 8, 8), guess="image") == "image"


def test_example_inputs_from_the_signature_and_config_or_a_clear_error():
    m = make_family("SanaTransformer2DModel")
    kw = ModelBundle("dir", m).example_inputs(batch=2)
    assert list(kw) == ["hidden_states", "encoder_hidden_states", "timestep"]
    assert kw["hidden_states"].shape == (2, 4, 8, 8) and kw["encoder_hidden_states"].shape[-1] == 8
    with torch.no_grad():
        assert m(**kw, return_dict=False)[0].shape == kw["hidden_states"].shape
    cfg = dict(make_family("CogView3PlusTransformer2DModel").config)  # needs original_size etc.
    with pytest.raises(cachec.ModelError, match=r"original_size.*--inputs FILE"):
        signature_inputs("CogView3PlusTransformer2DModel", cfg)


def test_an_inputs_file_gives_the_example_inputs(tmp_path):
    kw = family_inputs("CogView3PlusTransformer2DModel", 2)
    save_file({k: v.contiguous() for k, v in kw.items()}, tmp_path / "in.safetensors")
    got = load_inputs(tmp_path / "in.safetensors", 3, torch.float32)  # the file's batch of 2 repeated to 3
    assert set(got) == set(kw) and got["hidden_states"].shape[0] == 3
    torch.testing.assert_close(got["hidden_states"][:2], kw["hidden_states"])
    (tmp_path / "bad").write_text("not safetensors")
    with pytest.raises(cachec.ModelError, match="not a readable safetensors file"):
        load_inputs(tmp_path / "bad", 2, torch.float32)
