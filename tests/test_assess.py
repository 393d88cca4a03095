"""Which method, on this recording: keyframe predictions rank the methods as the truth does."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_xfusion.assess import assess, assessable_keyframes, candidate_methods
from napari_xfusion.config import EngineConfig, TimeModel
from napari_xfusion.demo import sample_experiment
from napari_xfusion.methods import create_method
from napari_xfusion.metrics import evaluate
from napari_xfusion.timeline import Timeline


def options(name: str) -> dict:
    return {"engine": EngineConfig(device="cpu")} if name in ("stf", "edvr") else {}


def true_unseen_psnr(method, exp) -> float:
    fused = (f.image for f in method.fuse(exp.lr, exp.hr, exp.timeline))
    summary = evaluate(fused, exp.truth, exp.timeline.keyframe_mask()).summary()
    return summary["unseen"]["psnr_mean"]


@pytest.mark.slow
@pytest.mark.parametrize("noise_psnr", [None, 30.0], ids=["clean", "noisy"])
def test_estimates_rank_methods_as_their_true_unseen_psnr(noise_psnr):
    # Generated sequences with full-rate ground truth: noisy LR favours the network, which
    # denoises; on clean LR the network and the keyframe-detail methods are close.
    exp = sample_experiment(n_frames=41, shape=(128, 256), time_model=TimeModel(spacing=5),
                            noise_psnr=noise_psnr)
    methods, _ = candidate_methods(options)
    assessment = assess(exp.lr, exp.hr, exp.timeline, methods)
    truth = {name: true_unseen_psnr(method, exp) for name, method in methods.items()}
    estimate = {s.name: s.psnr_mean for s in assessment.scores}
    # Every pair that the truth separates clearly is ordered the same way.
    for a, b in itertools.permutations(truth, 2):
        if truth[a] > truth[b] + 0.5:
            assert estimate[a] > estimate[b], (a, b, truth, estimate)
    # The recommendation is the truly best method, or within 0.3 dB of it.
    assert truth[assessment.recommended] >= max(truth.values()) - 0.3
    if noise_psnr is not None:
        assert assessment.recommended == "stf"


def test_assessment_reports_every_keyframe_and_a_table():
    exp = sample_experiment(n_frames=31, shape=(64, 128), time_model=TimeModel(spacing=5),
                            noise_psnr=None)
    methods = {"bicubic": create_method("bicubic"), "mine": create_method("transfer")}
    seen: list[tuple[int, int]] = []
    assessment = assess(exp.lr, exp.hr, exp.timeline, methods,
                        progress=lambda done, total: seen.append((done, total)))
    # Keyframes 0..6 at times 0..30: the interior ones are predicted.
    assert assessment.keyframes == [1, 2, 3, 4, 5]
    assert seen[-1] == (10, 10)
    for score in assessment.scores:
        assert len(score.psnr) == len(score.ssim) == 5
        assert score.psnr_spread > 0 and np.isfinite(score.psnr_mean)
    assert assessment.recommended == "mine"
    table = assessment.table().splitlines()
    assert table[1].startswith("mine") and table[1].endswith("<- recommended")
    assert table[2].startswith("bicubic")


def test_each_prediction_leaves_its_own_keyframe_out():
    exp = sample_experiment(n_frames=21, shape=(32, 64), time_model=TimeModel(spacing=5),
                            noise_psnr=None)

    class Recorder:
        label = "recorder"

        def __init__(self):
            self.inputs = []

        def prepare(self, lr, hr, timeline):
            pass

        def fuse_frame(self, lr, hr, inputs):
            self.inputs.append(inputs)
            return np.zeros((32, 64), np.float32)

    recorder = Recorder()
    assess(exp.lr, exp.hr, exp.timeline, {"r": recorder})
    assert [(i.t, i.hr) for i in recorder.inputs] == [(5, (0, 2)), (10, (1, 3)), (15, (2, 4))]


def test_keyframe_choice_and_clear_errors():
    timeline = Timeline(n_lr=101, n_hr=11, model=TimeModel(spacing=10))
    assert assessable_keyframes(timeline, None) == list(range(1, 10))
    assert assessable_keyframes(timeline, 3) == [1, 5, 9]
    # Keyframe 2 lies past the LR sequence but still brackets keyframe 1 with keyframe 0.
    assert assessable_keyframes(Timeline(n_lr=12, n_hr=3, model=TimeModel(spacing=10)),
                                None) == [1]
    with pytest.raises(ValueError, match="at least 3 HR keyframes"):
        assessable_keyframes(Timeline(n_lr=12, n_hr=2, model=TimeModel(spacing=10)))
    with pytest.raises(ValueError, match="at least one method"):
        assess(np.zeros((11, 8, 8)), np.zeros((3, 32, 32)),
               Timeline(11, 3, TimeModel(spacing=5)), {})


def test_cancel_stops_between_predictions():
    exp = sample_experiment(n_frames=21, shape=(32, 64), time_model=TimeModel(spacing=5),
                            noise_psnr=None)
    with pytest.raises(InterruptedError):
        assess(exp.lr, exp.hr, exp.timeline, {"bicubic": create_method("bicubic")},
               should_stop=lambda: True)
