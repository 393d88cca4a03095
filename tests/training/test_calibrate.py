"""Per-experiment calibration: sample selection, hold-out, results and weights file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_xfusion import devices
from napari_xfusion.alignment import align_keyframes
from napari_xfusion.config import CalibrationConfig, ModelConfig, NoiseConfig, TimeModel
from napari_xfusion.demo import sample_experiment
from napari_xfusion.holdout import holdout_inputs, neighbours, split_keyframes
from napari_xfusion.models import build_model, bundled_weights_path, load_weights, save_weights
from napari_xfusion.models.weights import read_metadata
from napari_xfusion.simulate import simulate_experiment
from napari_xfusion.timeline import Timeline
from napari_xfusion.training import calibrate as calibrate_module
from napari_xfusion.training.calibrate import calibrate, judge_gain


@pytest.fixture(scope="module")
def experiment():
    # 25 frames at D = 4: keyframes 0..6 at LR times 0..24; keyframe 1 is held out.
    return sample_experiment(
        n_frames=25, shape=(128, 256), time_model=TimeModel(spacing=4), noise_psnr=None
    )


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig.preset("tiny"))


def test_split_keyframes_holds_out_interior_keyframes():
    timeline = Timeline(n_lr=41, n_hr=9, model=TimeModel(spacing=5))
    train, held = split_keyframes(timeline, holdout_every=4)
    assert held == [1, 5]
    assert train == [0, 2, 3, 4, 6, 7, 8]


def test_neighbours_bracket_or_lie_on_one_side():
    assert neighbours(3, [0, 2, 4, 6]) == (2, 4)
    assert neighbours(0, [2, 3, 4]) == (2, 3)
    assert neighbours(6, [0, 2, 4]) == (2, 4)


@pytest.mark.slow
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


@pytest.mark.slow
def test_mismatched_stacks_are_rejected(experiment):
    with pytest.raises(ValueError, match="do not fit the timeline"):
        calibrate(experiment.lr[:-1], experiment.hr, experiment.timeline, model=tiny_model(),
                  progress=None)
    with pytest.raises(ValueError, match="not both"):
        calibrate(experiment.lr, experiment.hr, experiment.timeline, weights="w.safetensors",
                  model=tiny_model(), progress=None)


@pytest.mark.slow
def test_held_out_keyframes_are_never_used_while_training(experiment, monkeypatch):
    import napari_xfusion.training.calibrate as calibration

    drawn: list = []
    draw = calibration._draw_batch

    def recording_draw(*args):
        batch = draw(*args)
        drawn.extend(batch[-1])
        return batch

    monkeypatch.setattr(calibration, "_draw_batch", recording_draw)
    config = CalibrationConfig(iterations=40, batch_size=4, lr_crop=16)
    result = calibrate(experiment.lr, experiment.hr, experiment.timeline, config,
                       model=tiny_model(), progress=None)
    assert result.validation_keyframes == [1, 5]
    assert len(drawn) == 40 * 4
    used = {j for j, _ in drawn} | {k for _, inputs in drawn for k in inputs.hr}
    assert not used & set(result.validation_keyframes)
    # Every other keyframe serves, as target or input, and never as its own input.
    assert used == {0, 2, 3, 4, 6}
    assert all(j not in inputs.hr for j, inputs in drawn)


def test_aligned_calibration_samples_take_keyframes_warped_onto_the_target_time():
    # A pan: every keyframe's content sits elsewhere at its neighbours' times.
    truth = np.stack([np.roll(sample_experiment(n_frames=11, shape=(64, 96)).truth[0],
                              (2 * t, -3 * t), (0, 1)) for t in range(9)])
    exp = simulate_experiment(truth, TimeModel(spacing=4), NoiseConfig(target_psnr=None))
    lr, hr = calibrate_module._FrameStore(exp.lr), calibrate_module._FrameStore(exp.hr)
    aligned = calibrate_module._AlignedKeyframes(lr, hr, 4)
    inputs = holdout_inputs(exp.timeline, 1, [0, 1, 2])
    plain_lr, plain_hr = calibrate_module._sample(lr, hr, inputs, 1, 4, 2, 3, 8, 12)
    lr_frames, hr_frames = calibrate_module._sample(lr, hr, inputs, 1, 4, 2, 3, 8, 12, aligned)
    np.testing.assert_array_equal(lr_frames, plain_lr)
    np.testing.assert_array_equal(hr_frames[2], plain_hr[2])  # the target is not moved
    warped = align_keyframes(exp.lr[inputs.t], exp.hr[list(inputs.hr)], scale=4)
    np.testing.assert_array_equal(hr_frames[:2], warped[:, 8:40, 12:60])
    target = hr_frames[2]
    assert all(np.abs(hr_frames[k] - target).mean() < 0.5 * np.abs(plain_hr[k] - target).mean()
               for k in range(2))


@pytest.mark.slow
def test_aligned_calibration_validates_and_records_aligned_keyframes(experiment, tmp_path):
    def both(exp):
        lines = []
        config = CalibrationConfig(iterations=2, batch_size=2, lr_crop=16, min_iterations=1,
                                   align_keyframes=True, out=str(tmp_path / "a.safetensors"))
        aligned = calibrate(exp.lr, exp.hr, exp.timeline, config, model=tiny_model(),
                            progress=lines.append)
        plain = calibrate(exp.lr, exp.hr, exp.timeline,
                          CalibrationConfig(iterations=2, batch_size=2, lr_crop=16),
                          model=tiny_model(), progress=None)
        return aligned, plain, "\n".join(lines)

    # A pan: warped neighbours predict the held-out keyframes differently.
    truth = np.stack([np.roll(experiment.truth[0], (2 * t, -3 * t), (0, 1)) for t in range(21)])
    pan = simulate_experiment(truth, TimeModel(spacing=4), NoiseConfig(target_psnr=None))
    aligned, plain, said = both(pan)
    assert read_metadata(aligned.weights_path)["aligned_keyframes"] == "true"
    assert aligned.keyframe_psnr_before != plain.keyframe_psnr_before
    assert "the keyframes are aligned" in said
    # The sample's camera stands still: its keyframes are taken as they are, as
    # stf-aligned fuses them there.
    aligned, plain, said = both(experiment)
    assert read_metadata(aligned.weights_path)["aligned_keyframes"] == "true"
    assert aligned.keyframe_psnr_before == plain.keyframe_psnr_before
    assert "the keyframes stand still" in said


def test_holdout_inputs_bracket_the_keyframe_with_other_keyframes():
    timeline = Timeline(n_lr=25, n_hr=7, model=TimeModel(spacing=4, separation=2))
    inputs = holdout_inputs(timeline, 2, [0, 2, 3, 4, 6])
    assert inputs.t == 8 and inputs.lr == (6, 8, 10)
    assert inputs.hr == (0, 3) and inputs.hr_times == (0, 12)
    assert inputs.position == pytest.approx(8 / 12) and not inputs.is_keyframe
    assert holdout_inputs(timeline, 6, [0, 2, 4, 6], separation=1).hr == (2, 4)
    with pytest.raises(ValueError, match="outside the LR sequence"):
        holdout_inputs(Timeline(n_lr=10, n_hr=4, model=TimeModel(spacing=4)), 3, [0, 1, 2])


def test_judge_gain_needs_a_gain_beyond_its_uncertainty():
    # Consistent gains on four keyframes: helped.
    verdict, _, gain, error = judge_gain([30, 31, 32, 33], [30.5, 31.6, 32.4, 33.5], 100)
    assert verdict == "helped" and gain == pytest.approx(0.5) and error > 0
    # The same mean gain, but one keyframe loses a lot: within the noise.
    verdict, reason, _, _ = judge_gain([30, 31, 32, 33], [31.5, 32.5, 33.5, 30.5], 100)
    assert verdict == "cannot tell" and "uncertainty" in reason
    # Consistent losses: did not help.
    assert judge_gain([30, 31, 32], [29.5, 30.4, 31.6], 100)[0] == "did not help"
    # One keyframe, or a handful of steps, cannot tell whatever the numbers say.
    assert judge_gain([30.0], [35.0], 100)[0] == "cannot tell"
    assert judge_gain([30, 31, 32], [31, 32, 33], 3, min_iterations=20)[0] == "cannot tell"


@pytest.mark.slow
def test_short_calibration_reduces_the_training_loss(experiment):
    config = CalibrationConfig(iterations=40, batch_size=4, lr_crop=16, learning_rate=2e-3)
    result = calibrate(experiment.lr, experiment.hr, experiment.timeline, config,
                       model=tiny_model(), progress=None)
    assert result.iterations == 40 and len(result.losses) == 40
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])


@pytest.mark.slow
def test_bundled_calibration_writes_loadable_weights(experiment, tmp_path):
    out = tmp_path / "calibrated.safetensors"
    lines: list[str] = []
    config = CalibrationConfig(iterations=3, batch_size=2, lr_crop=16, validation_crop=16,
                               out=str(out))
    result = calibrate(experiment.lr, experiment.hr, experiment.timeline, config,
                       progress=lines.append)
    assert result.iterations == 3
    assert result.training_keyframes == [0, 2, 3, 4, 6]
    assert len(result.keyframe_psnr_before) == len(result.keyframe_psnr_after) == 2
    for value in (result.psnr_before, result.psnr_after, result.bicubic_psnr):
        assert np.isfinite(value) and 10 < value < 80
    # The shipped network beats bicubic on this scene before any calibration.
    assert result.psnr_before > result.bicubic_psnr
    # Three steps are too few to judge: the bundled weights stay recommended.
    assert result.verdict == "cannot tell" and not result.helped
    assert result.recommended == bundled_weights_path("stf")
    assert result.seconds > 0
    assert result.weights_path == out and out.exists()
    loaded = load_weights(out)
    assert loaded.metadata["validation_keyframes"] == "[1, 5]"
    assert loaded.metadata["verdict"] == "cannot tell"
    assert loaded.metadata["helped"] == "false"
    assert "stf_default.safetensors" in loaded.metadata["calibrated_from"]
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, result.model.state_dict()[name])
    assert any("held out [1, 5]" in line for line in lines)
    assert lines[-1] == result.summary() and "cannot tell" in lines[-1]


@pytest.mark.slow
def test_a_time_budget_ends_the_run(experiment):
    config = CalibrationConfig(iterations=10_000, batch_size=1, lr_crop=16,
                               validation_crop=16, max_minutes=0.02)
    result = calibrate(experiment.lr, experiment.hr, experiment.timeline, config,
                       model=tiny_model(), progress=None)
    assert 1 <= result.iterations < 10_000
    assert result.verdict in ("helped", "did not help", "cannot tell")


@pytest.mark.slow
def test_unhelpful_calibration_recommends_the_original_weights(experiment, tmp_path):
    # A learning rate far too large wrecks the network, so it cannot help.
    config = CalibrationConfig(iterations=2, batch_size=1, lr_crop=16, validation_crop=16,
                               learning_rate=1.0, min_iterations=1,
                               out=str(tmp_path / "w.safetensors"))
    source = tmp_path / "start.safetensors"
    save_weights(tiny_model(), source)
    result = calibrate(experiment.lr, experiment.hr, experiment.timeline, config,
                       weights=source, progress=None)
    assert result.verdict == "did not help"
    assert result.recommended == source


@pytest.mark.slow
def test_training_steps_keep_freed_memory_and_validation_returns_it(experiment, monkeypatch):
    depths = []
    forward = calibrate_module._forward

    def recording(net, *args):
        depths.append((net.training, devices._retain_depth))
        return forward(net, *args)

    monkeypatch.setattr(calibrate_module, "_forward", recording)
    config = CalibrationConfig(iterations=3, batch_size=2, lr_crop=16)
    calibrate(experiment.lr, experiment.hr, experiment.timeline, config,
              model=tiny_model(), progress=None)
    start = devices._retain_depth
    assert [depth for training, depth in depths if training] == [start + 1] * 3
    assert depths[-1] == (False, start)
