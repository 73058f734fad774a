"""The one way from an artifact's manifest to its sampling bundle (cachec.session.artifact_bundle),
which the CLI's session, the serve worker and tools/serve_load_test.py share. No model, no export."""

from cachec.artifact import EXAMPLE_INPUTS
from cachec.session import artifact_bundle


def manifest(spec: str, files: dict) -> dict:
    return {"model": {"spec": spec, "class": "DiTTransformer2DModel", "config": {"sample_size": 8}},
            "capture": {"latent_input": "hidden_states"}, "files": files}


def test_a_builtin_artifact_samples_with_its_own_scheduler_and_kept_inputs(tmp_path):
    bundle = artifact_bundle(manifest("builtin:tiny-dit", {EXAMPLE_INPUTS: {}}), tmp_path, "cpu")
    assert bundle.model is None and bundle.class_name == "DiTTransformer2DModel"
    assert (bundle.scheduler_dir / "scheduler_config.json").is_file()
    assert bundle.latent_input == "hidden_states" and str(bundle.device) == "cpu"
    assert bundle.artifact_inputs == tmp_path / EXAMPLE_INPUTS


def test_other_artifacts_use_the_default_scheduler_and_keep_no_inputs_unless_listed(tmp_path):
    bundle = artifact_bundle(manifest("arch:dit-xl-2", {}), tmp_path)
    assert bundle.scheduler_dir is None and bundle.artifact_inputs is None
    assert artifact_bundle(manifest("builtin:tiny-dit", {EXAMPLE_INPUTS: {}})).artifact_inputs is None  # no path
