import numpy as np
import pytest

from napari_xfusion.attention import AttentionLog, attention_csv_path
from napari_xfusion.config import TimeModel
from napari_xfusion.streaming import FusedFrame
from napari_xfusion.timeline import Timeline


def test_normalized_scores_follow_paper_definition(tmp_path):
    tl = Timeline(12, 3, TimeModel(spacing=5))  # keyframes at 0, 5, 10
    log = AttentionLog()
    for inp in tl:
        k0, k1 = inp.hr_times
        raw = np.array([0.1, 0.2, 0.3, 10.0 - (inp.t - k0), 1.0 + (inp.t - k0), ])
        log.add(FusedFrame(inp.t, np.zeros((4, 4)), inp.is_keyframe, raw, inp.hr_times))
    log.add(FusedFrame(0, np.zeros((4, 4)), True, None, (0, 5)))  # no scores: ignored
    assert len(log) == 12
    backward, forward = log.normalized()
    # t = 2: group k0 = 0, normalizer = backward raw score at t = 0 (10).
    assert backward[2] == pytest.approx(8.0 / 10.0)
    assert forward[2] == pytest.approx(3.0 / 10.0)
    assert backward[5] == pytest.approx(1.0)
    # Past the last keyframe the group is k0 = 5.
    assert backward[11] == pytest.approx((10.0 - 6) / 10.0)
    path = tmp_path / "a.csv"
    log.write_csv(path)
    rows = path.read_text().splitlines()
    assert rows[0].split(",")[:5] == [
        "frame", "keyframe", "hr_k0_time", "hr_k1_time", "frames_after_k0"
    ]
    assert len(rows) == 13


def test_missing_normalizer_gives_nan():
    log = AttentionLog()
    log.add(FusedFrame(3, np.zeros((2, 2)), False, np.ones(5), (0, 10)))
    backward, forward = log.normalized()
    assert np.isnan(backward[0]) and np.isnan(forward[0])


def test_csv_path():
    assert attention_csv_path("/a/b/fused.tif").as_posix() == "/a/b/fused.attention.csv"
    assert attention_csv_path("out.zarr").name == "out.attention.csv"
