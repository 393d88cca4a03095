"""The LR camera matched to the keyframes' binning: the filter, and where fusion uses it."""

import json

import dask.array as da
import numpy as np
import pytest

from napari_xfusion.assess import assess
from napari_xfusion.config import NoiseConfig, OpticsConfig, TimeModel
from napari_xfusion.demo import sample_experiment
from napari_xfusion.io import read_metadata
from napari_xfusion.lr_match import MIN_SYSTEMATIC, fit_lr_filter
from napari_xfusion.methods import create_method
from napari_xfusion.pipeline import fuse_to_file, prepare_inputs
from napari_xfusion.simulate import bin_frames, simulate_experiment


@pytest.fixture(scope="module")
def truth():
    return sample_experiment(n_frames=21, shape=(128, 256), noise_psnr=None).truth


def recording(truth, optics=OpticsConfig(), noise=None):
    return simulate_experiment(truth, TimeModel(spacing=5),
                               NoiseConfig(target_psnr=noise, seed=3), optics=optics)


def pairs_of(exp):
    return [(int(t), j) for j, t in enumerate(exp.timeline.keyframe_times)
            if 0 <= t < exp.timeline.n_lr]


def test_exactly_binned_lr_needs_no_filter_clean_or_noisy(truth):
    clean = recording(truth)
    found = fit_lr_filter(clean.lr, clean.hr, pairs_of(clean), 4)
    identity = np.zeros((5, 5), np.float32)
    identity[2, 2] = 1
    np.testing.assert_allclose(found.sharp.kernel, identity, atol=1e-4)
    assert found.misfit_before == 0 and not found.needed
    noisy = recording(truth, noise=30.0)
    found = fit_lr_filter(noisy.lr, noisy.hr, pairs_of(noisy), 4)
    assert found.systematic < MIN_SYSTEMATIC / 4 and not found.needed
    assert fit_lr_filter(clean.lr, clean.hr, [], 4) is None


@pytest.mark.parametrize("optics", [OpticsConfig(blur=1.5), OpticsConfig(shift=(0.5, -0.5)),
                                    OpticsConfig(blur=1.0, shift=(1.0, 1.0)),
                                    OpticsConfig(shading=0.2)])
def test_a_blurred_or_shifted_lr_camera_is_matched_at_every_frame(truth, optics):
    exp = recording(truth, optics)
    found = fit_lr_filter(exp.lr, exp.hr, pairs_of(exp), 4)
    assert found.needed and found.misfit_after < 0.7 * found.misfit_before
    # Fitted at the keyframe times only, it brings the other frames closer to the binned
    # truth too.
    unseen = np.flatnonzero(~exp.timeline.keyframe_mask())
    target = bin_frames(exp.truth[unseen], 4)
    before = np.mean((exp.lr[unseen] - target) ** 2)
    after = np.mean((found.apply(exp.lr[unseen]) - target) ** 2)
    assert after < 0.7 * before
    lazy = found.apply(da.from_array(exp.lr, chunks=(1, 16, 16)))
    np.testing.assert_allclose(lazy.compute(), found.apply(exp.lr), atol=1e-6)


def test_a_shaded_lr_camera_is_flattened_to_the_keyframes_brightness(truth):
    exp = recording(truth, OpticsConfig(shading=0.2))
    inputs = prepare_inputs(exp.lr, exp.hr, exp.timeline.model)
    assert inputs.lr_filter is not None and inputs.lr_filter.needed
    # The gain found across the frame undoes the shading: the filtered frames' ratio to
    # the binned truth is flat, where the frames as recorded fall by a fifth.
    reference = bin_frames(inputs.hr_norm.apply(exp.truth), 4)
    unseen = np.flatnonzero(~exp.timeline.keyframe_mask())
    lit = reference[unseen] > 0.2

    def ratio_spread(lr) -> float:
        ratio = np.asarray(lr)[unseen] / np.maximum(reference[unseen], 1e-3)
        return float(np.std(ratio[lit]))

    plain = prepare_inputs(exp.lr, exp.hr, exp.timeline.model, match_optics=False)
    assert ratio_spread(inputs.lr) < 0.25 * ratio_spread(plain.lr)
    assert np.abs(inputs.lr_filter.sharp.gain).max() > 0.05


def test_fusion_filters_the_lr_stack_of_a_camera_that_needs_it_and_records_it(truth,
                                                                             tmp_path):
    exp = recording(truth, OpticsConfig(blur=1.5))
    inputs = prepare_inputs(exp.lr, exp.hr, exp.timeline.model)
    assert inputs.lr_filter is not None and "filtered to match" in inputs.lr_filter.describe()
    plain = prepare_inputs(exp.lr, exp.hr, exp.timeline.model, match_optics=False)
    assert plain.lr_filter is None
    np.testing.assert_allclose(np.asarray(inputs.lr[7]),
                               inputs.lr_filter.apply(np.asarray(plain.lr[7])), atol=1e-6)
    reference = plain.hr_norm.apply(exp.truth)
    unseen = [int(t) for t in np.flatnonzero(~exp.timeline.keyframe_mask())]

    def error(stacks) -> float:
        fused = create_method("transfer").fuse(stacks.lr, stacks.hr, stacks.timeline, unseen)
        return float(np.mean([np.mean((f.image - reference[f.t]) ** 2) for f in fused]))

    assert error(inputs) < 0.8 * error(plain)
    result = fuse_to_file(inputs, create_method("bicubic"), tmp_path / "fused.tif")
    recorded = json.loads(read_metadata(result.path)["napari_xfusion"])["lr_filter"]
    for form in ("sharp", "smooth"):
        for part in ("kernel", "gain", "offset"):
            np.testing.assert_allclose(recorded[form][part],
                                       getattr(getattr(inputs.lr_filter, form), part),
                                       atol=1e-5)
    # An exactly binned recording is left alone, and says nothing of a filter.
    still = recording(truth)
    untouched = prepare_inputs(still.lr, still.hr, still.timeline.model)
    assert untouched.lr_filter is None and "lr_filter" not in untouched.provenance()


def test_the_smooth_form_smooths_the_noise_that_the_sharp_form_keeps(truth):
    def misfits(exp):
        """The filter, and its two forms' misfits to the binned truth at unseen times."""
        found = fit_lr_filter(exp.lr, exp.hr, pairs_of(exp), 4)
        assert found.needed
        unseen = np.flatnonzero(~exp.timeline.keyframe_mask())
        target = bin_frames(exp.truth[unseen], 4)
        return found, *(float(np.mean((found.apply(exp.lr[unseen], smooth=smooth) - target) ** 2))
                        for smooth in (False, True))

    # Without noise there is nothing to smooth: both forms undo the blur as well.
    _, sharp, smooth = misfits(recording(truth, OpticsConfig(blur=1.5)))
    assert 0.9 * sharp < smooth < 1.1 * sharp
    found, sharp, smooth = misfits(recording(truth, OpticsConfig(blur=1.5), noise=30.0))
    assert smooth < 0.5 * sharp
    # The sharp form amplifies the noise rather than smoothing it.
    assert np.sum(found.sharp.kernel ** 2) > 1 > 2 * np.sum(found.smooth.kernel ** 2)


def test_classical_methods_read_the_smooth_form_and_networks_the_sharp_one(truth):
    exp = recording(truth, OpticsConfig(blur=1.5), noise=30.0)
    inputs = prepare_inputs(exp.lr, exp.hr, exp.timeline.model)
    assert inputs.lr_filter is not None
    plain = prepare_inputs(exp.lr, exp.hr, exp.timeline.model, match_optics=False)
    np.testing.assert_allclose(np.asarray(inputs.lr_smoothed[4]), inputs.lr_filter.apply(
        np.asarray(plain.lr[4]), smooth=True), atol=1e-6)
    transfer, stf = create_method("transfer"), create_method("stf")
    assert inputs.lr_for(transfer) is inputs.lr_smoothed and inputs.lr_for(stf) is inputs.lr
    reference = inputs.hr_norm.apply(exp.truth)
    unseen = [int(t) for t in np.flatnonzero(~exp.timeline.keyframe_mask())]

    def error(lr) -> float:
        fused = transfer.fuse(lr, inputs.hr, inputs.timeline, unseen)
        return float(np.mean([np.mean((f.image - reference[f.t]) ** 2) for f in fused]))

    assert error(inputs.lr_for(transfer)) < 0.85 * error(inputs.lr)
    # The assessment scores each method on the form it reads, as fusion does.
    methods = {"bicubic": create_method("bicubic")}
    smoothed = assess(inputs.lr, inputs.hr, inputs.timeline, methods,
                      lr_smoothed=inputs.lr_smoothed)
    direct = assess(inputs.lr_smoothed, inputs.hr, inputs.timeline, methods)
    sharp = assess(inputs.lr, inputs.hr, inputs.timeline, methods)
    assert smoothed.scores[0].psnr == direct.scores[0].psnr != sharp.scores[0].psnr
