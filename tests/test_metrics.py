import numpy as np
import pytest

from napari_xfusion import metrics


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    truth = rng.random((40, 50))
    estimate = np.clip(truth + rng.normal(0, 0.05, truth.shape), 0, 1)
    return estimate, truth


def test_psnr_known_value():
    a = np.zeros((4, 4))
    b = np.full((4, 4), 0.1)
    assert metrics.psnr(a, b) == pytest.approx(20.0)
    assert metrics.psnr(a, a) == float("inf")


def test_aad_known_value():
    assert metrics.aad(np.zeros((3, 3)), np.full((3, 3), 0.25)) == pytest.approx(0.25)


def reference_ssim(a, b, sigma=1.5, truncate=3.5):
    """Wang et al.'s SSIM written out: Gaussian local statistics, population covariances,
    the mean away from the truncated border."""
    from scipy.ndimage import gaussian_filter

    filt = dict(sigma=sigma, truncate=truncate, mode="reflect")
    mu_a, mu_b = gaussian_filter(a, **filt), gaussian_filter(b, **filt)
    var_a = gaussian_filter(a * a, **filt) - mu_a**2
    var_b = gaussian_filter(b * b, **filt) - mu_b**2
    cov = gaussian_filter(a * b, **filt) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    pad = int(truncate * sigma + 0.5)
    return s[pad:-pad, pad:-pad].mean()


def test_ssim_matches_the_written_out_definition(pair):
    estimate, truth = pair
    ours = metrics.ssim(estimate, truth)
    assert ours == pytest.approx(reference_ssim(estimate, truth), abs=1e-12)
    assert metrics.ssim(truth, truth) == pytest.approx(1.0)
    assert ours < 0.99
    with pytest.raises(ValueError, match="at least 11 x 11 pixels"):
        metrics.ssim(truth[:10], truth[:10])


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shapes"):
        metrics.psnr(np.zeros((2, 2)), np.zeros((3, 3)))


def test_evaluate_separates_unseen_frames():
    rng = np.random.default_rng(1)
    truth = rng.random((6, 16, 16)).astype(np.float32)
    fused = truth.copy()
    fused[1] += 0.1  # the only unseen frame with an error
    mask = np.array([True, False, False, True, False, False])
    ev = metrics.evaluate(fused, truth, mask)
    summary = ev.summary()
    assert summary["all"]["frames"] == 6 and summary["unseen"]["frames"] == 4
    assert summary["unseen"]["psnr_mean"] == pytest.approx(20.0, abs=1e-4)
    assert summary["unseen"]["aad_mean"] == pytest.approx(0.025, abs=1e-6)
    assert summary["all"]["ssim_median"] == pytest.approx(1.0)


def test_evaluate_subset_and_csv(tmp_path):
    truth = np.zeros((5, 16, 16))
    ev = metrics.evaluate([truth[2] + 0.1, truth[4]], truth, np.zeros(5, bool), frames=[2, 4])
    assert ev.frames == [2, 4]
    path = tmp_path / "m.csv"
    ev.write_csv(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "frame,keyframe,psnr,aad,ssim"
    assert lines[1].startswith("2,0,20")
    with pytest.raises(ValueError, match="no ground-truth"):
        metrics.evaluate([truth[0]], truth, np.zeros(5, bool), frames=[7])


def test_lr_psnr():
    clean = np.full((2, 4, 4), 0.5)
    assert metrics.lr_psnr(clean + 0.01, clean) == pytest.approx(40.0)


def test_summary_table_columns_line_up_for_long_method_labels():
    from napari_xfusion.evaluate import format_summary

    truth = np.random.default_rng(2).random((4, 16, 16))
    summary = metrics.evaluate(truth * 0.9, truth, np.array([True, False, False, True])).summary()
    table = format_summary({"EDVR": summary, "EDVR-STF, aligned keyframes and more": summary})
    rows = [line for line in table.splitlines()
            if line and "PSNR mean" not in line and line not in ("unseen frames", "all frames")]
    assert len(rows) == 4
    # The frame counts (the first number of each row) end in the same column as "frames".
    header = next(line for line in table.splitlines() if "PSNR mean" in line)
    end = header.index("frames") + len("frames")
    assert [row[end - 1] for row in rows] == ["2", "2", "4", "4"]
    assert all(row[end] == " " for row in rows)
