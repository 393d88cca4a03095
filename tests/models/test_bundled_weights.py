"""The weights shipped inside the package load and fuse better than the baselines."""

import pytest

from napari_xfusion.config import EngineConfig, TimeModel
from napari_xfusion.demo import sample_experiment
from napari_xfusion.methods import create_method
from napari_xfusion.metrics import evaluate
from napari_xfusion.models import bundled_weights_path, load_weights, read_metadata


def test_bundled_stf_weights_describe_themselves():
    path = bundled_weights_path("stf")
    assert path.exists()
    assert path.stat().st_size < 16 * 2**20
    model = load_weights(path)
    assert model.config.arch == "stf" and model.config.channels == 32
    assert int(read_metadata(path)["iterations"]) > 0


@pytest.fixture(scope="module")
def unseen_scene():
    # A short, noisy scene the networks were never trained on, at the sample's frame size.
    return sample_experiment(n_frames=12, time_model=TimeModel(spacing=5), noise_psnr=40.0)


def unseen_psnr(method, exp):
    fused = (f.image for f in method.fuse(exp.lr, exp.hr, exp.timeline))
    return evaluate(fused, exp.truth, exp.timeline.keyframe_mask()).summary()["unseen"]["psnr_mean"]


@pytest.mark.slow
def test_bundled_stf_beats_the_baselines(unseen_scene):
    stf = unseen_psnr(create_method("stf", engine=EngineConfig(device="cpu")), unseen_scene)
    bicubic = unseen_psnr(create_method("bicubic"), unseen_scene)
    transfer = unseen_psnr(create_method("transfer"), unseen_scene)
    assert stf > bicubic + 3.0
    assert stf > transfer


def test_bundled_edvr_weights_describe_themselves():
    path = bundled_weights_path("edvr")
    assert path.stat().st_size < 16 * 2**20
    model = load_weights(path)
    assert model.config.arch == "edvr" and model.config.channels == 32
    assert int(read_metadata(path)["iterations"]) > 0


@pytest.mark.slow
def test_bundled_edvr_beats_bicubic(unseen_scene):
    edvr = unseen_psnr(create_method("edvr", engine=EngineConfig(device="cpu")), unseen_scene)
    assert edvr > unseen_psnr(create_method("bicubic"), unseen_scene) + 0.5
