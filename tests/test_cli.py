"""End-to-end runs of the ``xfusion`` command line and its refusals of bad input."""

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage import data

from napari_xfusion.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_works_without_configuration(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "fuse" in capsys.readouterr().out
    for command in ("fuse", "simulate", "evaluate", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "usage: xfusion " + command in capsys.readouterr().out


@pytest.mark.parametrize("method", ["bicubic", "transfer", "bayes"])
def test_fuse_then_evaluate(tmp_path, capsys, stack_files, method):
    lr, hr, truth = stack_files
    out = tmp_path / f"fused_{method}.tif"
    code, stdout, err = run(capsys, "fuse", lr, hr, "-o", out, "--spacing", 5, "--method", method)
    assert code == 0, err
    fused = tifffile.imread(out)
    assert fused.shape == (16, 64, 96) and fused.dtype == np.uint16
    code, stdout, err = run(capsys, "evaluate", out, truth, "--csv", tmp_path / "m.csv")
    assert code == 0, err
    assert "unseen frames" in stdout
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert len(rows) == 17
    # Keyframe flags come from the fused file's metadata: frames 0, 5, 10, 15.
    flags = [int(r.split(",")[1]) for r in rows[1:]]
    assert [i for i, f in enumerate(flags) if f] == [0, 5, 10, 15]
    psnr_unseen = float(stdout.split("unseen frames")[1].split("\n")[2].split()[2])
    assert psnr_unseen > 20


def test_simulate_writes_experiment(tmp_path, capsys, stack_files):
    _, _, truth = stack_files
    out_dir = tmp_path / "sim"
    out_dir.mkdir()
    code, stdout, err = run(
        capsys, "simulate", truth, "-o", out_dir, "--spacing", 4, "--noise-psnr", 35
    )
    assert code == 0, err
    lr = tifffile.imread(out_dir / "lr.tif")
    keys = tifffile.imread(out_dir / "hr_keyframes.tif")
    full = tifffile.imread(out_dir / "truth.tif")
    assert lr.shape == (16, 16, 24) and keys.shape == (4, 64, 96) and full.shape == (16, 64, 96)
    np.testing.assert_array_equal(keys, full[::4])
    clean = full.reshape(16, 16, 4, 24, 4).mean(axis=(2, 4))
    lr_psnr = 10 * np.log10(1 / np.mean((lr - clean) ** 2))
    assert 33 < lr_psnr < 37


def test_existing_output_is_not_overwritten(tmp_path, capsys, stack_files):
    lr, hr, _ = stack_files
    out = tmp_path / "fused.tif"
    out.write_bytes(b"precious")
    code, _, err = run(capsys, "fuse", lr, hr, "-o", out, "--spacing", 5)
    assert code == 2 and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    code, _, err = run(capsys, "fuse", lr, hr, "-o", out, "--spacing", 5, "--overwrite",
                       "--method", "bicubic")
    assert code == 0, err
    assert tifffile.imread(out).shape == (16, 64, 96)


def test_fuse_defaults_to_the_bundled_network(tmp_path, capsys, stack_files):
    from napari_xfusion.io import read_metadata

    lr, hr, _ = stack_files
    out = tmp_path / "fused.tif"
    code, printed, err = run(capsys, "fuse", lr, hr, "-o", out, "--spacing", 5, "--device", "cpu")
    assert code == 0, err
    # The network with keyframes aligned where the recording moves; this one stands still.
    assert json.loads(read_metadata(out)["napari_xfusion"])["method"] == "stf-aligned"
    assert "attention scores" in printed
    assert "stf-aligned: the keyframes stand still" in printed
    assert "moves" not in err


def _panning_recording(folder):
    """LR and HR keyframe files (every 5th frame) of a camera panning 1 HR pixel a frame."""
    image = data.camera()[::2, ::2].astype(np.float32)
    truth = np.stack([ndimage.shift(image, (t, -t), order=1, mode="nearest")
                      for t in range(11)])[:, 64:192, 64:192]
    lr, hr = folder / "lr.tif", folder / "hr.tif"
    binned = truth.reshape(11, 32, 4, 32, 4).mean(axis=(2, 4))
    tifffile.imwrite(lr, binned.astype(np.uint16), photometric="minisblack")
    tifffile.imwrite(hr, truth[::5].astype(np.uint16), photometric="minisblack")
    return lr, hr


def test_stf_on_a_panning_recording_warns_and_fuses(tmp_path, capsys):
    lr, hr = _panning_recording(tmp_path)
    out = tmp_path / "fused.tif"
    code, _, err = run(capsys, "fuse", lr, hr, "-o", out, "--spacing", 5, "--device", "cpu",
                       "--method", "stf")
    assert code == 0, err
    assert "warning: the scene moves between keyframes" in err and "use stf-aligned" in err
    assert tifffile.imread(out).shape == (11, 128, 128)
    # The default aligns the keyframes of a recording that moves, and says so.
    code, printed, err = run(capsys, "fuse", lr, hr, "-o", out, "--spacing", 5, "--device",
                             "cpu", "--overwrite")
    assert code == 0, err
    assert "moves" not in err
    assert "stf-aligned: the keyframes move" in printed and "aligned onto each frame" in printed


def test_a_cluster_run_of_stf_on_a_panning_recording_warns_too(tmp_path, capsys):
    pytest.importorskip("distributed")
    lr, hr = _panning_recording(tmp_path)
    code, printed, err = run(capsys, "fuse", lr, hr, "-o", tmp_path / "fused.tif", "--spacing", 5,
                             "--device", "cpu", "--method", "stf", "--scheduler", "local",
                             "--workers", 1)
    assert code == 0, err
    assert "warning: the scene moves between keyframes" in err
    assert "wrote 11 fused frames" in printed


def _no_outputs(directory, keep):
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


@pytest.mark.parametrize(
    "make_case, message",
    [
        ("scale", "4 times the LR size"),
        ("two_d", "2-D image"),
        ("rgb", "grayscale"),
        ("nan", "NaN"),
        ("corrupt", "TIFF"),
        ("empty", "empty"),
        ("spacing", "outside the LR sequence"),
        ("separation", "choose r <="),
        ("one_keyframe", "at least 2 HR keyframes"),
        ("bad_dir", "does not exist"),
    ],
)
def test_bad_input_gets_one_clear_message_and_no_output(
    tmp_path, capsys, stack_files, make_case, message
):
    lr, hr, _ = stack_files
    lr_arr, hr_arr = tifffile.imread(lr), tifffile.imread(hr)
    args = ["--spacing", 5]
    out = tmp_path / "out.tif"
    bad = tmp_path / "bad.tif"
    if make_case == "scale":
        tifffile.imwrite(bad, hr_arr[:, :, :80], photometric="minisblack")
        hr = bad
    elif make_case == "two_d":
        tifffile.imwrite(bad, lr_arr[0])
        lr = bad
    elif make_case == "rgb":
        tifffile.imwrite(bad, np.zeros((16, 24, 3), np.uint8), photometric="rgb")
        lr = bad
    elif make_case == "nan":
        arr = lr_arr.astype(np.float32)
        arr[7, 3, 3] = np.nan
        tifffile.imwrite(bad, arr)
        lr = bad
    elif make_case == "corrupt":
        bad.write_bytes(lr.read_bytes()[:300])
        lr = bad
    elif make_case == "empty":
        bad.write_bytes(b"")
        lr = bad
    elif make_case == "spacing":
        args = ["--spacing", 5, "--offset", 40]
    elif make_case == "separation":
        args = ["--spacing", 5, "--separation", 16]
    elif make_case == "one_keyframe":
        tifffile.imwrite(bad, hr_arr[:1])
        hr = bad
    elif make_case == "bad_dir":
        out = tmp_path / "missing" / "out.tif"
    before = set(p.name for p in tmp_path.iterdir())
    code, stdout, err = run(capsys, "fuse", lr, hr, "-o", out, *args, "--method", "transfer")
    assert code == 2
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]
    assert set(p.name for p in tmp_path.iterdir()) == before


def test_simulate_can_give_the_lr_camera_optics_of_its_own(tmp_path, capsys, stack_files):
    from napari_xfusion.config import OpticsConfig
    from napari_xfusion.simulate import bin_frames, lr_optics

    _, _, truth = stack_files
    out_dir = tmp_path / "sim"
    out_dir.mkdir()
    code, _, err = run(capsys, "simulate", truth, "-o", out_dir, "--spacing", 4,
                       "--lr-blur", 1.5, "--lr-shift", 0.5, -1, "--lr-shading", 0.1)
    assert code == 0, err
    lr = tifffile.imread(out_dir / "lr.tif")
    full = tifffile.imread(out_dir / "truth.tif")
    expected = bin_frames(lr_optics(full, OpticsConfig(blur=1.5, shift=(0.5, -1.0),
                                                       shading=0.1)), 4)
    np.testing.assert_allclose(lr, expected, atol=1e-6)
    assert not np.allclose(lr, bin_frames(full, 4), atol=1e-3)


def test_simulate_refuses_settings_that_do_not_fit(tmp_path, capsys, stack_files):
    _, _, truth = stack_files
    out_dir = tmp_path / "sim"
    out_dir.mkdir()
    code, _, err = run(capsys, "simulate", truth, "-o", out_dir, "--spacing", 20)
    assert code == 2 and "at least 2 HR keyframes" in err
    assert list(out_dir.iterdir()) == []


def test_neural_method_without_weights_is_refused(tmp_path, capsys, stack_files):
    lr, hr, _ = stack_files
    missing = tmp_path / "nothing.safetensors"
    code, _, err = run(capsys, "fuse", lr, hr, "-o", tmp_path / "o.tif", "--spacing", 5,
                       "--method", "stf", "--weights", missing)
    assert code == 2 and "nothing.safetensors" in err
    assert not (tmp_path / "o.tif").exists()


def test_demo_runs_and_reports(tmp_path, capsys):
    code, stdout, err = run(capsys, "demo", "-o", tmp_path / "demo", "--frames", 12,
                            "--methods", "bicubic", "transfer")
    assert code == 0, err
    assert "Bicubic" in stdout or "bicubic" in stdout
    assert (tmp_path / "demo" / "fused_transfer.tif").exists()
    assert tifffile.imread(tmp_path / "demo" / "truth.tif").shape[0] == 12


@pytest.mark.slow
def test_stf_with_bundled_weights_writes_attention_scores(tmp_path, capsys, stack_files):
    lr, hr, truth = stack_files
    out = tmp_path / "fused_stf.tif"
    code, stdout, err = run(capsys, "fuse", lr, hr, "-o", out, "--spacing", 5, "--method", "stf",
                            "--device", "cpu")
    assert code == 0, err
    assert tifffile.imread(out).shape == (16, 64, 96)
    csv_path = tmp_path / "fused_stf.attention.csv"
    assert str(csv_path) in stdout
    rows = [line.split(",") for line in csv_path.read_text().splitlines()]
    header, body = rows[0], rows[1:]
    assert header[-2:] == ["backward", "forward"] and len(body) == 16
    col = {name: i for i, name in enumerate(header)}
    # At a keyframe time the normalized backward score is 1 by definition.
    key_rows = [r for r in body if r[col["frames_after_k0"]] == "0"]
    assert key_rows and all(float(r[col["backward"]]) == pytest.approx(1.0) for r in key_rows)
    assert all(np.isfinite(float(r[col["hr_k1"]])) for r in body)


@pytest.mark.slow
def test_calibrate_reports_before_and_after(tmp_path, capsys):
    # 21 frames with keyframes every 4: five keyframes inside, one held out for checking.
    from napari_xfusion.config import TimeModel
    from napari_xfusion.demo import sample_experiment
    from napari_xfusion.models import read_metadata as weights_metadata

    exp = sample_experiment(n_frames=21, shape=(64, 96), time_model=TimeModel(spacing=4),
                            noise_psnr=None)
    lr, hr = tmp_path / "lr.tif", tmp_path / "hr.tif"
    tifffile.imwrite(lr, exp.lr, photometric="minisblack")
    tifffile.imwrite(hr, exp.hr, photometric="minisblack")
    out = tmp_path / "calibrated.safetensors"
    code, stdout, err = run(capsys, "calibrate", lr, hr, "-o", out, "--spacing", 4,
                            "--iterations", 3, "--device", "cpu")
    assert code == 0, err
    # One held-out keyframe and 3 steps: too little to tell, so the bundled weights stay.
    assert "after 3 steps: cannot tell" in stdout
    assert "keep using --weights" in stdout and "stf_default.safetensors" in stdout
    assert out.exists()
    code, _, err = run(capsys, "calibrate", lr, hr, "-o", tmp_path / "w.tif", "--spacing", 4)
    assert code == 2 and ".safetensors" in err

    aligned = tmp_path / "aligned.safetensors"
    code, stdout, err = run(capsys, "calibrate", lr, hr, "-o", aligned, "--spacing", 4,
                            "--iterations", 2, "--device", "cpu", "--method", "stf-aligned")
    assert code == 0, err
    assert weights_metadata(aligned)["aligned_keyframes"] == "true"
    # assess weighs weights calibrated for the aligned method with aligned keyframes.
    code, stdout, err = run(capsys, "assess", lr, hr, "--spacing", 4, "--methods", "bicubic",
                            "--calibrated", aligned, "--device", "cpu")
    assert code == 0, err
    assert "stf-aligned (aligned.safetensors)" in stdout


@pytest.mark.slow
def test_assess_ranks_methods_and_auto_fuses_with_the_best(tmp_path, capsys, stack_files):
    lr, hr, _ = stack_files
    code, stdout, err = run(capsys, "assess", lr, hr, "--spacing", 5,
                            "--methods", "bicubic", "transfer", "--calibrated",
                            bundled_stf(), "--device", "cpu")
    assert code == 0, err
    # 16 frames at D = 5: keyframes at 0, 5, 10, 15; the interior two are predicted.
    assert "keyframes [1, 2] predicted from its neighbours" in stdout
    rows = [line.split()[0] for line in stdout.splitlines()[2:5]]
    assert sorted(rows) == ["bicubic", "stf", "transfer"]
    recommended = next(line for line in stdout.splitlines() if line.startswith("recommended"))
    best = next(line.split()[0] for line in stdout.splitlines() if "<- recommended" in line)
    assert best != "bicubic"
    assert recommended.endswith(f"--method {best}") or best == "stf"

    out = tmp_path / "auto.tif"
    code, stdout, err = run(capsys, "fuse", lr, hr, "-o", out, "--spacing", 5, "--method",
                            "auto", "--device", "cpu")
    assert code == 0, err
    chosen = next(line for line in stdout.splitlines() if line.startswith("auto: fusing with"))
    assert chosen.split()[3] in ("transfer", "bayes", "stf", "stf-aligned")
    assert tifffile.imread(out).shape == (16, 64, 96)
    code, _, err = run(capsys, "assess", lr, hr, "--spacing", 5, "--methods", "nearest")
    assert code == 2 and "unknown method(s) nearest" in err


def bundled_stf():
    from napari_xfusion.models import bundled_weights_path

    return bundled_weights_path("stf")


def test_train_defaults_are_the_library_defaults():
    # A run started from Python (TrainConfig()) must be resumable from the command line,
    # and the run's identity includes these settings.
    from napari_xfusion.cli import build_parser
    from napari_xfusion.config import TrainConfig

    args = build_parser().parse_args(["train"])
    defaults = TrainConfig()
    assert (args.iterations, args.out_dir, args.batch_size, args.preset, args.arch,
            args.seed, args.noise_free_fraction, args.aligned_fraction) == (
        defaults.iterations, defaults.out_dir, defaults.batch_size, defaults.preset,
        defaults.arch, defaults.seed, defaults.noise_free_fraction, defaults.aligned_fraction)
    assert build_parser().parse_args(["train", "--aligned-fraction", "0.5"]).aligned_fraction == 0.5
    assert args.loader_processes == defaults.loader_processes
    assert args.pan_fraction == defaults.pan_fraction


def test_train_hands_its_loader_and_alignment_settings_to_training(monkeypatch, tmp_path):
    from napari_xfusion.training import train as train_module

    seen = []
    monkeypatch.setattr(train_module, "train",
                        lambda config, resume: seen.append(config) or tmp_path / "w")
    assert main(["train", "--loader-processes", "3", "--aligned-fraction", "0.25",
                 "--pan-fraction", "0.3"]) == 0
    assert (seen[0].loader_processes, seen[0].aligned_fraction, seen[0].pan_fraction) == (
        3, 0.25, 0.3)


@pytest.mark.slow
def test_sigterm_stops_a_run_like_ctrl_c_and_resume_finishes_it(tmp_path, same_network_output):
    import signal
    import subprocess
    import sys
    import time

    from napari_xfusion.io import incomplete_path, read_metadata, read_stack

    rng = np.random.default_rng(0)
    lr, hr = tmp_path / "lr.tif", tmp_path / "hr.tif"
    tifffile.imwrite(lr, rng.integers(0, 4000, (120, 32, 32), dtype=np.uint16))
    tifffile.imwrite(hr, rng.integers(0, 4000, (7, 128, 128), dtype=np.uint16))
    out = tmp_path / "fused.tif"
    partial = incomplete_path(out)
    run = subprocess.Popen(
        [sys.executable, "-m", "napari_xfusion.cli", "fuse", str(lr), str(hr), "-o", str(out),
         "--spacing", "20", "--method", "stf", "--device", "cpu"],
        stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        try:
            if read_metadata(partial).get("frames_written", 0) >= 3:
                break
        except Exception:  # not there yet, or its first page not yet written
            pass
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 143, err
    assert "interrupted" in err and "Traceback" not in err
    meta = read_metadata(partial)
    assert meta["complete"] is False and meta["frames_written"] >= 3
    assert read_stack(partial).shape == (meta["frames_written"], 128, 128)
    assert not out.exists()
    # --resume finishes it, and the result is the uninterrupted run's (to the last unit).
    args = [lr, hr, "--spacing", 20, "--method", "stf", "--device", "cpu"]
    assert main([str(a) for a in ["fuse", *args, "-o", out, "--resume"]]) == 0
    reference = tmp_path / "reference.tif"
    assert main([str(a) for a in ["fuse", *args, "-o", reference]]) == 0
    same_network_output(tifffile.imread(out), tifffile.imread(reference))
