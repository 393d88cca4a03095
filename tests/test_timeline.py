import pytest

from napari_xfusion.config import TimeModel
from napari_xfusion.timeline import Timeline, keyframe_count


def simulated(n, spacing, separation=1, offset=0):
    model = TimeModel(spacing=spacing, offset=offset, separation=separation)
    return Timeline(n, keyframe_count(n, model), model)


@pytest.mark.parametrize("spacing", [1, 2, 10, 20, 47])
@pytest.mark.parametrize("separation", [1, 2, 3])
@pytest.mark.parametrize("offset", [0, 1, 5])
def test_every_frame_gets_valid_bracketing_inputs(spacing, separation, offset):
    n = 48
    if keyframe_count(n, TimeModel(spacing=spacing, offset=offset)) < 2:
        # Only one simulated keyframe fits: nothing brackets the frames, which must be refused.
        with pytest.raises(ValueError, match="at least 2 HR keyframes"):
            simulated(n, spacing, separation, offset)
        return
    tl = simulated(n, spacing, separation, offset)
    seen = []
    for inp in tl:
        seen.append(inp.t)
        a, b, c = inp.lr
        assert b == inp.t
        assert a == max(inp.t - separation, 0) and c == min(inp.t + separation, n - 1)
        j0, j1 = inp.hr
        assert j1 == j0 + 1 and 0 <= j0 and j1 < tl.n_hr
        k0, k1 = inp.hr_times
        assert k0 == offset + j0 * spacing and k1 == offset + j1 * spacing
        last_key = tl.keyframe_times[-1]
        first_key = tl.keyframe_times[0]
        if first_key <= inp.t < last_key:
            assert k0 <= inp.t < k1
        elif inp.t >= last_key:
            assert (j0, j1) == (tl.n_hr - 2, tl.n_hr - 1)
        else:
            assert (j0, j1) == (0, 1)
        assert inp.is_keyframe == (inp.t in set(tl.keyframe_times.tolist()))
    # No skipped frame 0 and no index error at the end.
    assert seen == list(range(n))


def test_keyframe_mask_matches_inputs_and_counts():
    tl = simulated(48, 10, offset=3)
    assert tl.keyframe_times.tolist() == [3, 13, 23, 33, 43]
    mask = tl.keyframe_mask()
    assert mask.sum() == 5
    assert [i.is_keyframe for i in tl] == mask.tolist()


def test_first_and_last_only():
    tl = simulated(30, 29)
    assert tl.n_hr == 2
    assert all(i.hr == (0, 1) for i in tl)
    assert tl.inputs(29).is_keyframe and tl.inputs(0).is_keyframe
    assert not tl.inputs(15).is_keyframe


def test_every_frame_is_a_keyframe_with_spacing_one():
    tl = simulated(6, 1)
    assert all(i.is_keyframe for i in tl)
    assert tl.inputs(2).hr == (2, 3)
    assert tl.inputs(5).hr == (4, 5)


def test_sequence_shorter_than_spacing():
    # Real data: 5 LR frames between two HR frames taken 10 LR frames apart.
    tl = Timeline(5, 2, TimeModel(spacing=10, offset=0))
    assert [i.hr for i in tl] == [(0, 1)] * 5
    assert tl.inputs(0).is_keyframe and not tl.inputs(4).is_keyframe
    assert tl.keyframe_mask().tolist() == [True, False, False, False, False]


def test_negative_offset_hr_camera_started_first():
    tl = Timeline(20, 3, TimeModel(spacing=10, offset=-5))
    assert tl.keyframe_times.tolist() == [-5, 5, 15]
    assert tl.inputs(0).hr == (0, 1)
    assert tl.inputs(5).hr == (1, 2) and tl.inputs(5).is_keyframe
    assert tl.inputs(19).hr == (1, 2)
    assert tl.keyframe_mask().sum() == 2


def test_single_lr_frame():
    tl = Timeline(1, 2, TimeModel(spacing=4, separation=1))
    assert tl.inputs(0).lr == (0, 0, 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(spacing=0), "spacing D"),
        (dict(spacing=2.5), "spacing D"),
        (dict(separation=0), "separation r"),
        (dict(scale=0), "scale"),
    ],
)
def test_bad_time_model(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TimeModel(**kwargs)


def test_rejects_impossible_settings():
    with pytest.raises(ValueError, match="at least 2 HR keyframes"):
        Timeline(10, 1, TimeModel(spacing=5))
    with pytest.raises(ValueError, match="choose r <= 4"):
        Timeline(5, 2, TimeModel(spacing=2, separation=5))
    with pytest.raises(ValueError, match="outside the LR sequence"):
        Timeline(10, 3, TimeModel(spacing=5, offset=20))
    with pytest.raises(ValueError, match="outside the LR sequence"):
        Timeline(10, 3, TimeModel(spacing=5, offset=-30))
    with pytest.raises(ValueError, match="no frames"):
        Timeline(0, 3, TimeModel())
    with pytest.raises(ValueError, match="offset"):
        keyframe_count(10, TimeModel(spacing=2, offset=12))
    with pytest.raises(IndexError):
        simulated(10, 2).inputs(10)


def test_a_spacing_that_leaves_most_keyframes_outside_is_flagged():
    # 48 LR frames and 5 keyframes every 60 frames: only the first lies inside.
    timeline = Timeline(n_lr=48, n_hr=5, model=TimeModel(spacing=60))
    [warning] = timeline.warnings()
    assert "only 1 of the 5 HR keyframes fall inside the 48 LR frames" in warning
    assert Timeline(n_lr=48, n_hr=5, model=TimeModel(spacing=10)).warnings() == []
