"""Which method, on this recording: keyframe predictions rank the methods as the truth does."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_xfusion.alignment import MOVING
from napari_xfusion.assess import (
    Assessment,
    MethodScore,
    assess,
    assessable_keyframes,
    candidate_methods,
)
from napari_xfusion.config import EngineConfig, ModelConfig, TimeModel
from napari_xfusion.demo import sample_experiment
from napari_xfusion.methods import PerFrameMethod, create_method
from napari_xfusion.metrics import evaluate
from napari_xfusion.models import build_model
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

    class Recorder(PerFrameMethod):
        name = label = "recorder"

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


def scored(name, psnr, network=None, aligns=False):
    return MethodScore(name, name, psnr=[psnr - 0.1, psnr + 0.1], ssim=[0.9, 0.9],
                       network=network, aligns=aligns)


def test_where_keyframes_move_aligned_edvr_stf_is_recommended_over_plain():
    scores = [scored("transfer", 29.0), scored("stf", 30.0, "stf"),
              scored("stf-aligned", 29.5, "stf", aligns=True), scored("edvr", 25.0, "edvr")]
    assert Assessment([1, 2], scores, motion=MOVING).recommended == "stf-aligned"
    # The estimates decide alone on a still scene, or where the motion was not measured.
    assert Assessment([1, 2], scores, motion=MOVING / 2).recommended == "stf"
    assert Assessment([1, 2], scores).recommended == "stf"
    # A method that beats EDVR-STF keeps its place: only plain EDVR-STF gives way.
    scores[0] = scored("transfer", 31.0)
    assert Assessment([1, 2], scores, motion=3.0).recommended == "transfer"
    table = Assessment([1, 2], scores[1:], motion=3.0).table().splitlines()
    assert table[2].startswith("stf-aligned") and table[2].endswith("<- recommended")
    assert table[-1].startswith("keyframe motion: 3.00 LR pixels (the keyframes move")


def test_the_motion_is_measured_when_it_can_decide_between_stf_and_stf_aligned():
    exp = sample_experiment(n_frames=21, shape=(64, 128), time_model=TimeModel(spacing=5),
                            noise_psnr=None)
    model = build_model(ModelConfig.preset("tiny"))
    engine = EngineConfig(device="cpu", precision="fp32", tile=0)
    plain = create_method("stf", model=model, engine=engine)
    aligned = create_method("stf-aligned", model=model, engine=engine)
    both = assess(exp.lr, exp.hr, exp.timeline, {"stf": plain, "stf-aligned": aligned})
    assert both.motion is not None and both.motion < MOVING  # the sample's camera is still
    assert [(s.network, s.aligns) for s in both.scores] == [("stf", False), ("stf", True)]
    one = assess(exp.lr, exp.hr, exp.timeline,
                 {"stf": plain, "transfer": create_method("transfer")})
    assert one.motion is None and "motion" not in one.table()
