"""Per-experiment calibration: sample selection, hold-out, results and weights file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_xfusion.calibrate import calibrate, neighbours, split_keyframes
from napari_xfusion.config import CalibrationConfig, ModelConfig, TimeModel
from napari_xfusion.demo import sample_experiment
from napari_xfusion.models import build_model, bundled_weights_path, load_weights, save_weights
from napari_xfusion.timeline import Timeline


@pytest.fixture(scope="module")
def experiment():
    # 25 frames at D = 4: keyframes 0..6 at LR times 0..24; keyframe 1 is held out.
    return sample_experiment(
        n_frames=25, shape=(128, 256), time_model=TimeModel(spacing=4), noise_psnr=None
    )


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig.preset("tiny"))


class RecordingStack:
    """A read-only stack that records the frame index of every read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = data.shape
        self.reads: list[int] = []

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        self.reads.append(int(index))
        return self.data[key]


def test_split_keyframes_holds_out_interior_keyframes():
    timeline = Timeline(n_lr=41, n_hr=9, model=TimeModel(spacing=5))
    train, held = split_keyframes(timeline, holdout_every=4)
    assert held == [1, 5]
    assert train == [0, 2, 3, 4, 6, 7, 8]


def test_neighbours_bracket_or_lie_on_one_side():
    assert neighbours(3, [0, 2, 4, 6]) == (2, 4)
    assert neighbours(0, [2, 3, 4]) == (2, 3)
    assert neighbours(6, [0, 2, 4]) == (2, 4)


def test_too_few_keyframes_is_a_clear_error(experiment):
    # Only keyframes 0 and 1 fall inside a 5-frame LR sequence.
    timeline = Timeline(n_lr=5, n_hr=2, model=TimeModel(spacing=4))
    with pytest.raises(ValueError, match="at least 3 HR keyframes inside the LR sequence"):
        calibrate(experiment.lr[:5], experiment.hr[:2], timeline, model=tiny_model(),
                  progress=None)
    timeline = Timeline(n_lr=9, n_hr=3, model=TimeModel(spacing=4))
    with pytest.raises(ValueError, match="at least 4 HR keyframes"):
        calibrate(experiment.lr[:9], experiment.hr[:3], timeline, model=tiny_model(),
                  progress=None)


def test_mismatched_stacks_are_rejected(experiment):
    with pytest.raises(ValueError, match="do not fit the timeline"):
        calibrate(experiment.lr[:-1], experiment.hr, experiment.timeline, model=tiny_model(),
                  progress=None)
    with pytest.raises(ValueError, match="not both"):
        calibrate(experiment.lr, experiment.hr, experiment.timeline, weights="w.safetensors",
                  model=tiny_model(), progress=None)


def test_held_out_keyframes_are_never_read_while_training(experiment, monkeypatch):
    import napari_xfusion.calibrate as calibration

    hr = RecordingStack(experiment.hr)
    training_reads: list[int] = []
    draw = calibration._draw_batch

    def recording_draw(*args):
        start = len(hr.reads)
        batch = draw(*args)
        training_reads.extend(hr.reads[start:])
        return batch

    monkeypatch.setattr(calibration, "_draw_batch", recording_draw)
    config = CalibrationConfig(iterations=40, batch_size=4, lr_crop=16)
    result = calibrate(experiment.lr, hr, experiment.timeline, config, model=tiny_model(),
                       progress=None)
    assert result.validation_keyframes == [1, 5]
    assert len(training_reads) == 40 * 4 * 3
    assert not set(training_reads) & set(result.validation_keyframes)
    # Every other keyframe serves, as target or input.
    assert set(training_reads) == {0, 2, 3, 4, 6}
    # Validation did read the held-out keyframes.
    assert {1, 5} <= set(hr.reads)


def test_short_calibration_reduces_the_training_loss(experiment):
    config = CalibrationConfig(iterations=40, batch_size=4, lr_crop=16, learning_rate=2e-3)
    result = calibrate(experiment.lr, experiment.hr, experiment.timeline, config,
                       model=tiny_model(), progress=None)
    assert result.iterations == 40 and len(result.losses) == 40
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])


def test_bundled_calibration_writes_loadable_weights(experiment, tmp_path):
    out = tmp_path / "calibrated.safetensors"
    lines: list[str] = []
    config = CalibrationConfig(iterations=3, batch_size=2, lr_crop=16, validation_crop=16,
                               out=str(out))
    result = calibrate(experiment.lr, experiment.hr, experiment.timeline, config,
                       progress=lines.append)
    assert result.iterations == 3
    assert result.training_keyframes == [0, 2, 3, 4, 6]
    for value in (result.psnr_before, result.psnr_after, result.bicubic_psnr):
        assert np.isfinite(value) and 10 < value < 80
    # The shipped network beats bicubic on this scene before any calibration.
    assert result.psnr_before > result.bicubic_psnr
    assert result.helped == (result.psnr_after > result.psnr_before)
    assert result.recommended == (out if result.helped else bundled_weights_path("stf"))
    assert result.seconds > 0
    assert result.weights_path == out and out.exists()
    loaded = load_weights(out)
    assert loaded.metadata["validation_keyframes"] == "[1, 5]"
    assert loaded.metadata["helped"] == str(result.helped).lower()
    assert "stf_default.safetensors" in loaded.metadata["calibrated_from"]
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, result.model.state_dict()[name])
    assert any("held out [1, 5]" in line for line in lines)


def test_unhelpful_calibration_recommends_the_original_weights(experiment, tmp_path):
    # A learning rate far too large wrecks the network, so it cannot help.
    config = CalibrationConfig(iterations=2, batch_size=1, lr_crop=16, validation_crop=16,
                               learning_rate=1.0, out=str(tmp_path / "w.safetensors"))
    source = tmp_path / "start.safetensors"
    save_weights(tiny_model(), source)
    result = calibrate(experiment.lr, experiment.hr, experiment.timeline, config,
                       weights=source, progress=None)
    assert not result.helped
    assert result.recommended == source
