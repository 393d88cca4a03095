import numpy as np
import pytest

from napari_xfusion.synthetic import LPBFScene, synthetic_lpbf

H, W = 128, 256


@pytest.fixture(scope="module")
def frames():
    return synthetic_lpbf(12, H, W, seed=5)


def test_shape_dtype_and_range(frames):
    assert frames.shape == (12, H, W)
    assert frames.dtype == np.float32
    assert frames.min() >= 0.0 and frames.max() <= 1.0


def test_same_seed_same_sequence_other_seed_other_sequence(frames):
    np.testing.assert_array_equal(synthetic_lpbf(12, H, W, seed=5), frames)
    assert not np.array_equal(synthetic_lpbf(12, H, W, seed=6), frames)


def test_frames_do_not_depend_on_the_order_they_are_asked_for(frames):
    scene = LPBFScene(H, W, n_frames=12, seed=5)
    for t in [11, 3, 7, 0, 3]:
        np.testing.assert_array_equal(scene.frame(t), frames[t])


def test_order_independence_across_laser_passes():
    n = 400  # several passes of the laser over the frame
    forward = LPBFScene(64, 96, n_frames=n, seed=2, noise=0.01)
    backward = LPBFScene(64, 96, n_frames=n, seed=2, noise=0.01)
    times = [0, 90, 180, 250, 399]
    expected = {t: forward.frame(t) for t in times}
    for t in reversed(times):
        np.testing.assert_array_equal(backward.frame(t), expected[t])


def test_scene_layout_looks_like_lpbf_radiography(frames):
    frame = frames[0]
    background = frame[: int(0.1 * H)]
    substrate = frame[int(0.9 * H):]
    assert 0.72 <= np.median(background) <= 0.92
    assert 0.25 <= np.median(substrate) <= 0.35
    # The powder layer sits between them, darker than the background, textured.
    scene = LPBFScene(H, W, seed=5)
    x = int(scene.laser_x(0)) + 20
    band = frame[int(scene.surface - 0.7 * scene.powder_thickness): int(scene.surface) - 1, x:]
    assert band.mean() < np.median(background) - 0.15
    assert band.std() > 0.03


def test_laser_keyhole_and_spatter_move(frames):
    scene = LPBFScene(H, W, n_frames=12, seed=5)
    assert scene.laser_x(1) - scene.laser_x(0) == pytest.approx(scene.scan_speed)
    depths = [scene.keyhole_depth_at(t) for t in range(40)]
    assert np.std(depths) > 0.05 * scene.keyhole_depth
    # Around the keyhole the image changes a lot from one frame to the next.
    t = 4
    xl, top = int(scene.laser_x(t)), int(scene.surface - scene.bead_height)
    window = np.s_[top: int(scene.surface + scene.pool_depth), xl - 15: xl + 10]
    assert np.abs(frames[t + 1][window] - frames[t][window]).mean() > 0.02
    # Spatter crosses the background above the powder.
    sky = np.s_[: int(scene.surface - 1.5 * scene.powder_thickness)]
    assert np.abs(frames[t + 1][sky] - frames[t][sky]).max() > 0.1


def test_static_parts_stay_still(frames):
    scene = LPBFScene(H, W, seed=5)
    diff = np.abs(frames[7] - frames[6])
    # Substrate far below the melt pool, and most of the background.
    assert diff[int(0.92 * H):].max() < 1e-6
    assert np.median(diff[: int(0.3 * H)]) < 1e-6
    # The solidified track well behind the pool (with its frozen pores) does not move.
    x_end = int(scene.laser_x(6) - scene.pool_length - 10)
    track = np.s_[int(scene.surface) + 4: int(scene.surface + scene.pool_depth), :x_end]
    assert x_end > 10
    assert diff[track].max() < 1e-6


def test_phase_contrast_adds_edge_fringes():
    plain = LPBFScene(H, W, seed=1, phase_contrast=False).frame(0)
    fringed = LPBFScene(H, W, seed=1, phase_contrast=True).frame(0)
    assert not np.array_equal(plain, fringed)
    assert np.abs(np.diff(fringed, axis=0)).mean() > np.abs(np.diff(plain, axis=0)).mean()


@pytest.mark.parametrize("shape", [(16, 16), (37, 53), (129, 67), (300, 41)])
def test_odd_sizes(shape):
    out = synthetic_lpbf(3, *shape, seed=0)
    assert out.shape == (3, *shape)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_scene_is_array_like():
    scene = LPBFScene(32, 48, n_frames=6, seed=3)
    assert scene.shape == (6, 32, 48) and scene.ndim == 3 and len(scene) == 6
    assert scene.dtype == np.float32
    whole = np.asarray(scene)
    np.testing.assert_array_equal(whole, synthetic_lpbf(6, 32, 48, seed=3))
    np.testing.assert_array_equal(scene[2], whole[2])
    np.testing.assert_array_equal(scene[-1], whole[5])
    np.testing.assert_array_equal(scene[1:5:2, 3:9, ::2], whole[1:5:2, 3:9, ::2])
    np.testing.assert_array_equal(scene[..., 7], whole[..., 7])
    np.testing.assert_array_equal(scene[[4, 0]], whole[[4, 0]])
    assert scene[0:0].shape == (0, 32, 48)
    with pytest.raises(IndexError):
        scene.frame(6)


def test_scene_through_dask():
    da = pytest.importorskip("dask.array")
    scene = LPBFScene(32, 48, n_frames=5, seed=3)
    lazy = da.from_array(scene, chunks=(1, -1, -1))
    np.testing.assert_array_equal(lazy[1:3].compute(), scene[1:3])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"height": 8}, "height"),
        ({"seed": -1}, "seed"),
        ({"n_frames": 0}, "n_frames"),
        ({"scan_speed": 0.0}, "scan_speed"),
        ({"gravity": -1.0}, "gravity"),
        ({"keyhole_depth": 500.0}, "keyhole_depth"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LPBFScene(**kwargs)
