"""Training: the paper's sampling recipe, loss reduction, exact resume, held-out validation."""

import csv
import dataclasses
import json
import pickle
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from scipy import ndimage

from napari_xfusion import devices
from napari_xfusion.alignment import align_keyframes
from napari_xfusion.config import OpticsConfig, TrainConfig
from napari_xfusion.lr_match import fit_lr_filter
from napari_xfusion.models import build_model, load_weights, read_metadata
from napari_xfusion.simulate import bin_frames, lr_optics
from napari_xfusion.synthetic import synthetic_lpbf
from napari_xfusion.training import train as train_module
from napari_xfusion.training.data import (
    BRACKET,
    KEYFRAME,
    OUTSIDE,
    PairSampler,
    augment,
    frame_times,
    load_sequence_file,
    make_sequence,
    pan_shifts,
    quantize,
    save_sequence_file,
    synthetic_seed,
    training_sequences,
    validation_batches,
)
from napari_xfusion.training.train import CHECKPOINT, LOG_CSV, charbonnier, train

SMALL = dict(
    preset="tiny",
    batch_size=2,
    lr_crop=8,
    synthetic_sequences=0,
    validation_sequences=0,
    real_validation=("held",),
    validation_samples=2,
    device="cpu",
    loader_threads=1,
)


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny network's small convolutions run faster on one thread than on several."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    """Three short LPBF-like stacks in camera units: two to train on, one held out."""
    folder = tmp_path_factory.mktemp("real")
    for seed, name in enumerate(("a", "b", "held")):
        frames = synthetic_lpbf(n_frames=40, height=64, width=96, seed=seed)
        np.save(folder / f"{name}.npy", (frames * 4000 + 100).astype(np.uint16))
    return folder


def ramp_sequence(n=30, size=64, seed=0):
    """A random texture whose frame i is brighter by 2 grey levels per frame (n <= 100)."""
    texture = np.random.default_rng(seed).integers(0, 256 - 2 * n, (size, size))
    frames = (texture[None] + 2 * np.arange(n)[:, None, None]).astype(np.uint8)
    return make_sequence("ramp", frames, "real")


def test_sample_batch_shapes_and_times():
    config = TrainConfig(lr_crop=8, keyframe_fraction=0.2, outside_fraction=0.2)
    frames = np.random.default_rng(0).integers(0, 256, (200, 48, 48), dtype=np.uint8)
    sampler = PairSampler([make_sequence("noise", frames, "real")], config)
    batch = sampler.sample_batch(np.random.default_rng(0), 200)
    assert batch.lr.shape == (200, 3, 1, 8, 8)
    assert batch.hr.shape == (200, 2, 1, 32, 32)
    assert batch.target.shape == (200, 1, 32, 32)
    rec = batch.record
    assert set(rec.separation) == {1, 2, 3}
    assert set(rec.kind) == {BRACKET, KEYFRAME, OUTSIDE}
    r, t, k0, k1 = rec.separation, rec.t, rec.k0, rec.k1
    assert np.all(k0 < k1)
    for kind, ti, ri, a, b in zip(rec.kind, t, r, k0, k1, strict=True):
        if kind == KEYFRAME:
            assert ti in (a, b)
        elif kind == OUTSIDE:
            assert a > ti or b < ti
        else:
            assert a <= ti <= b
        # Keyframe offsets are whole multiples 1..20 (1..40 for the far keyframe of a
        # one-sided sample) of the separation, unless clamped to the sequence ends.
        for k in (a, b):
            if k not in (0, 199) and k != ti:
                assert abs(ti - k) % ri == 0 and 1 <= abs(ti - k) // ri <= 40
        if kind == BRACKET and a > 0 and b < 199:
            assert 1 <= (ti - a) // ri <= 20 and 1 <= (b - ti) // ri <= 20


def test_frames_and_augmentations_agree():
    # Frame i of the ramp is texture + 2 i: the difference of two sample frames tells
    # their times, and any transform that differed between frames would break equality.
    seq = ramp_sequence()
    config = TrainConfig(lr_crop=8, noise_free_fraction=1.0, motion_crop_fraction=0.0)
    batch = PairSampler([seq], config).sample_batch(np.random.default_rng(1), 32)
    rec = batch.record
    assert rec.flip_y.any() and rec.flip_x.any() and rec.transpose.any()
    assert np.isinf(rec.b0).all()
    for i in range(32):
        crop = seq.frames[rec.t[i], rec.y[i] : rec.y[i] + 32, rec.x[i] : rec.x[i] + 32]
        if rec.flip_y[i]:
            crop = crop[::-1]
        if rec.flip_x[i]:
            crop = crop[:, ::-1]
        if rec.transpose[i]:
            crop = crop.T
        target = batch.target[i, 0]
        np.testing.assert_allclose(target.numpy(), crop / 255.0, atol=1e-6)
        for j, k in enumerate((rec.k0[i], rec.k1[i])):
            np.testing.assert_allclose(
                (batch.hr[i, j, 0] - target).numpy(), 2.0 * (k - rec.t[i]) / 255, atol=1e-5
            )
        lr_times = (max(rec.t[i] - rec.separation[i], 0), rec.t[i],
                    min(rec.t[i] + rec.separation[i], len(seq) - 1))
        binned = F.avg_pool2d(target[None], 4)[0]
        for j, k in enumerate(lr_times):
            np.testing.assert_allclose(
                (batch.lr[i, j, 0] - binned).numpy(), 2.0 * (k - rec.t[i]) / 255, atol=1e-5
            )


def test_noise_follows_b0():
    config = TrainConfig(lr_crop=8, noise_free_fraction=0.25)
    batch = PairSampler([ramp_sequence()], config).sample_batch(np.random.default_rng(2), 64)
    b0 = batch.record.b0
    clean = F.avg_pool2d(batch.target, 4)[:, 0]
    noisy = np.isfinite(b0)
    assert 0 < (~noisy).sum() < 64
    assert np.all((b0[noisy] >= 10.0) & (b0[noisy] <= 1e7))
    error = (batch.lr[:, 1, 0] - clean).pow(2).mean(dim=(1, 2)).numpy()
    assert np.all(error[~noisy] == 0)
    # Poisson noise of Poisson(x b0) / b0 has variance x / b0.
    low = noisy & (b0 < 1e3)
    expected = clean.mean(dim=(1, 2)).numpy()[low] / b0[low]
    np.testing.assert_allclose(error[low], expected, rtol=0.5)


def test_aligned_samples_take_keyframes_warped_onto_their_lr_frame():
    # A camera panning 1 and 2 HR pixels per frame over a smooth texture.
    texture = ndimage.gaussian_filter(np.random.default_rng(0).random((160, 160)), 3)
    texture = (texture - texture.min()) / np.ptp(texture) * 255
    frames = np.stack([np.roll(texture, (i, 2 * i), (0, 1)) for i in range(30)])
    seq = make_sequence("pan", frames.astype(np.uint8), "real")
    recipe = dict(lr_crop=16, max_separation=1, max_keyframe_factor=2, keyframe_fraction=0,
                  outside_fraction=0, noise_free_fraction=0.5)
    plain = PairSampler([seq], TrainConfig(**recipe)).sample_batch(np.random.default_rng(4), 16)
    batch = PairSampler([seq], TrainConfig(**recipe, aligned_fraction=0.5)).sample_batch(
        np.random.default_rng(4), 16
    )
    aligned = batch.record.aligned
    assert aligned.any() and not aligned.all() and not plain.record.aligned.any()
    # The same draws otherwise: alignment is drawn last.
    torch.testing.assert_close(batch.lr, plain.lr, atol=0, rtol=0)
    torch.testing.assert_close(batch.target, plain.target, atol=0, rtol=0)
    torch.testing.assert_close(batch.hr[~aligned], plain.hr[~aligned], atol=0, rtol=0)
    for i in np.flatnonzero(aligned):
        warped = align_keyframes(plain.lr[i, 1, 0].numpy(), plain.hr[i, :, 0].numpy(), scale=4)
        np.testing.assert_array_equal(batch.hr[i, :, 0].numpy(), warped)
    inner = (slice(None), slice(None), slice(None), slice(8, -8), slice(8, -8))
    before = (plain.hr - plain.target[:, None])[inner].abs()[aligned].mean()
    after = (batch.hr - batch.target[:, None])[inner].abs()[aligned].mean()
    assert after < 0.6 * before
    with pytest.raises(ValueError, match="aligned_fraction must lie in"):
        TrainConfig(aligned_fraction=1.5)


def test_optics_samples_bin_blurred_and_shifted_crops_and_change_nothing_else():
    texture = ndimage.gaussian_filter(np.random.default_rng(5).random((160, 160)), 2)
    texture = (texture - texture.min()) / np.ptp(texture) * 255
    seq = make_sequence("still", np.repeat(texture[None].astype(np.uint8), 30, axis=0), "real")
    recipe = dict(lr_crop=16, noise_free_fraction=1.0)
    plain = PairSampler([seq], TrainConfig(**recipe)).sample_batch(np.random.default_rng(6), 16)
    batch = PairSampler([seq], TrainConfig(**recipe, optics_fraction=0.5, max_lr_blur=2.0,
                                           max_lr_shift=1.5)).sample_batch(
        np.random.default_rng(6), 16)
    optics = batch.record.optics
    seen = optics.any(axis=1)
    assert seen.any() and not seen.all() and not plain.record.optics.any()
    assert (optics[:, 0] <= 2.0).all() and (np.abs(optics[:, 1:]) <= 1.5).all()
    # The same draws otherwise: the optics are drawn last; only LR frames change.
    torch.testing.assert_close(batch.target, plain.target, atol=0, rtol=0)
    torch.testing.assert_close(batch.hr, plain.hr, atol=0, rtol=0)
    torch.testing.assert_close(batch.lr[~seen], plain.lr[~seen], atol=0, rtol=0)
    filtered = 0
    for i in np.flatnonzero(seen):
        hr_frames = plain.target[i, 0].numpy()[None].repeat(3, 0)  # a still scene
        blur, dy, dx = optics[i]
        raw = bin_frames(lr_optics(hr_frames, OpticsConfig(blur=blur, shift=(dy, dx))), 4)
        # Then matched to the binning as the pipeline would: closer to it than raw.
        lr_filter = fit_lr_filter(raw, hr_frames, [(0, 0), (1, 1), (2, 2)], 4)
        expected = lr_filter.apply(raw) if lr_filter.needed else raw
        np.testing.assert_allclose(batch.lr[i, :, 0].numpy(), expected, atol=1e-5)
        exact = plain.lr[i, :, 0].numpy()
        if lr_filter.needed:
            filtered += 1
            assert np.mean((expected - exact) ** 2) < 0.5 * np.mean((raw - exact) ** 2)
        assert not np.allclose(raw, exact, atol=1e-3)
    assert filtered > 0
    with pytest.raises(ValueError, match="optics_fraction must lie in"):
        TrainConfig(optics_fraction=2.0)
    with pytest.raises(ValueError, match="max_lr_blur and max_lr_shift"):
        TrainConfig(max_lr_shift=-1.0)


def test_panned_samples_move_the_crop_window_along_a_line():
    # A still scene: whatever differs between a sample's frames is the pan.
    texture = np.random.default_rng(1).integers(0, 256, (200, 200), dtype=np.uint8)
    seq = make_sequence("still", np.repeat(texture[None], 40, axis=0), "real")
    config = TrainConfig(lr_crop=16, max_separation=3, max_keyframe_factor=5,
                         noise_free_fraction=1.0, pan_fraction=0.5, max_pan=24)
    batch = PairSampler([seq], config).sample_batch(np.random.default_rng(2), 32)
    record = batch.record
    moving = record.pan.any(axis=1)
    assert moving.any() and not moving.all()
    for i in range(32):
        t = int(record.t[i])
        times = frame_times(t, int(record.separation[i]), int(record.k0[i]), int(record.k1[i]),
                            len(seq))
        shifts = pan_shifts(record.pan[i], t, times)
        assert np.abs(shifts).max() <= 24 and (moving[i] or not shifts.any())
        crops = np.stack([texture[record.y[i] + dy : record.y[i] + dy + 64,
                                  record.x[i] + dx : record.x[i] + dx + 64] for dy, dx in shifts])
        crops = augment(crops, record.flip_y[i], record.flip_x[i], record.transpose[i])
        expected = torch.from_numpy(crops.astype(np.float32) / 255)
        torch.testing.assert_close(batch.target[i, 0], expected[1])
        torch.testing.assert_close(batch.hr[i, :, 0], expected[3:])
        torch.testing.assert_close(batch.lr[i, :, 0], F.avg_pool2d(expected[:3], 4))
        # Keyframes of a panned sample are shifted against the target; still ones are not.
        assert torch.equal(batch.hr[i, 0, 0], batch.target[i, 0]) == (not shifts[3].any())
    with pytest.raises(ValueError, match="pan_fraction must lie in"):
        TrainConfig(pan_fraction=-0.1)
    with pytest.raises(ValueError, match="max_pan must be a whole number"):
        TrainConfig(max_pan=2.5)


def test_panning_is_limited_by_the_room_around_the_crop():
    # Frames only 8 HR pixels wider than the crop: a pan of up to 40 pixels must shrink.
    frames = np.random.default_rng(3).integers(0, 256, (30, 72, 72), dtype=np.uint8)
    seq = make_sequence("narrow", frames, "real")
    config = TrainConfig(lr_crop=16, pan_fraction=1.0, max_pan=40, noise_free_fraction=1.0)
    record = PairSampler([seq], config).sample_batch(np.random.default_rng(0), 32).record
    assert record.pan.any()
    for i in range(32):
        t = int(record.t[i])
        times = frame_times(t, int(record.separation[i]), int(record.k0[i]), int(record.k1[i]),
                            len(seq))
        shifts = pan_shifts(record.pan[i], t, times)
        for axis, corner in ((0, record.y[i]), (1, record.x[i])):
            assert 0 <= corner + shifts[:, axis].min()
            assert corner + shifts[:, axis].max() + 64 <= 72


def test_motion_crops_find_the_moving_part():
    frames = np.full((40, 128, 128), 100, np.uint8)
    for i in range(40):
        frames[i, 100:110, 10 + 2 * i : 18 + 2 * i] = 250  # a blob moving along the bottom
    config = TrainConfig(lr_crop=8, motion_crop_fraction=1.0, keyframe_fraction=0,
                         outside_fraction=0)
    batch = PairSampler([make_sequence("blob", frames, "real")], config).sample_batch(
        np.random.default_rng(3), 32
    )
    moving = (batch.target[:, None] != batch.hr).flatten(1).any(dim=1)
    assert moving.float().mean() > 0.9


def test_validation_is_held_out(real_dir, tmp_path):
    config = TrainConfig(synthetic_sequences=3, validation_sequences=2, synthetic_frames=2,
                         real_dir=str(real_dir), real_validation=("held",), seed=5)
    train_seqs, val_seqs, description = training_sequences(config)
    train_names = {s.name for s in train_seqs}
    val_names = {s.name for s in val_seqs}
    assert val_names == {"held", f"synthetic-{synthetic_seed(0, 5, True)}",
                         f"synthetic-{synthetic_seed(1, 5, True)}"}
    assert not train_names & val_names
    assert {"a", "b"} <= train_names
    assert all(int(n.split("-")[1]) % 2 == 0 for n in train_names if n.startswith("synthetic"))
    assert description["validation"][0].startswith("synthetic-")

    # A data file keeps its validation sequences apart as well.
    path = save_sequence_file(tmp_path / "data.npz", train_seqs, val_seqs, {"note": "test"})
    file_train, file_val, info = load_sequence_file(path)
    assert {s.name for s in file_val} == val_names
    assert {s.name for s in file_train} == train_names
    assert info["note"] == "test"
    held = next(s for s in file_val if s.name == "held")
    assert held.frames.dtype == np.uint8 and held.frames.max() == 255


def test_validation_batches_are_fixed_unseen_frames():
    seq = ramp_sequence(n=50)
    first = validation_batches([seq], 4, spacing=10, seed=0)
    again = validation_batches([seq], 4, spacing=10, seed=0)
    assert first[0].lr.shape == (4, 3, 1, 16, 16)
    assert torch.equal(first[0].lr, again[0].lr)
    # The target is never one of the keyframes (times 0, 10, 20, ...): the ramp tells times.
    offsets = (first[0].hr[:, :, 0] - first[0].target).mean(dim=(2, 3)) * 255 / 2
    assert torch.all(offsets.abs().round() > 0)


@pytest.mark.slow
def test_training_reduces_the_loss(real_dir, tmp_path):
    config = TrainConfig(**{**SMALL, "batch_size": 4, "lr_crop": 16}, iterations=50,
                         learning_rate=1e-3, noise_free_fraction=1.0, real_dir=str(real_dir),
                         out_dir=str(tmp_path), log_every=10, validate_every=50,
                         checkpoint_every=50)
    train_seqs, _, _ = training_sequences(config)
    fixed = PairSampler(train_seqs, config).sample_batch(np.random.default_rng(123), 16)

    def loss_of(model):
        with torch.no_grad():
            return float(charbonnier(model(fixed.lr, fixed.hr)[0], fixed.target))

    torch.manual_seed(config.seed)
    before = loss_of(build_model(config.model_config()))
    weights = train(config, progress=None)
    after = loss_of(load_weights(weights))
    assert after < 0.92 * before
    meta = read_metadata(weights)
    assert meta["iterations"] == "50" and meta["complete"] == "true"
    assert "psnr" in json.loads(meta["validation_psnr"])
    assert "held" in meta["training_data"]


def test_keyframes_are_warped_in_the_loader_threads(real_dir, tmp_path, monkeypatch):
    from napari_xfusion.training import data as data_module

    on_main = []

    def spy(*args, **kwargs):
        on_main.append(threading.current_thread() is threading.main_thread())
        return align_keyframes(*args, **kwargs)

    monkeypatch.setattr(data_module, "align_keyframes", spy)
    config = TrainConfig(**{**SMALL, "lr_crop": 16}, iterations=3, aligned_fraction=1.0,
                         real_dir=str(real_dir), out_dir=str(tmp_path))
    weights = train(config, progress=None)
    # Every sample of every batch, none on the thread that trains.
    assert len(on_main) == 3 * config.batch_size and not any(on_main)
    assert json.loads(read_metadata(weights)["training_config"])["aligned_fraction"] == 1.0


def test_a_pickled_batch_is_the_same_batch():
    # How a batch comes back from a loader process.
    frames = np.random.default_rng(0).integers(0, 256, (30, 48, 48), dtype=np.uint8)
    sampler = PairSampler([make_sequence("noise", frames, "real")], TrainConfig(lr_crop=8))
    batch = sampler.sample_batch(np.random.default_rng(3), 4)
    back = pickle.loads(pickle.dumps(batch))
    # As numpy arrays: tensors would travel through shared memory.
    assert all(isinstance(a, np.ndarray) for a in batch.__reduce__()[1][:4])
    for name in ("lr", "hr", "target", "position"):
        assert torch.equal(getattr(back, name), getattr(batch, name)), name
    for field in dataclasses.fields(batch.record):
        name = field.name
        assert np.array_equal(getattr(back.record, name), getattr(batch.record, name)), name


def test_loader_processes_train_exactly_as_threads(real_dir, tmp_path, monkeypatch):
    from napari_xfusion.training import data as data_module

    warped_here = []

    def spy(*args, **kwargs):
        warped_here.append(1)
        return align_keyframes(*args, **kwargs)

    monkeypatch.setattr(data_module, "align_keyframes", spy)
    base = dict(SMALL, lr_crop=16, iterations=3, aligned_fraction=0.5, real_dir=str(real_dir))
    threads = train(TrainConfig(**base, out_dir=str(tmp_path / "t")), progress=None)
    assert warped_here
    warped_here.clear()
    processes = train(TrainConfig(**base, loader_processes=2, out_dir=str(tmp_path / "p")),
                      progress=None)
    assert not warped_here  # the warping happened in the loader processes
    a, b = load_file(threads), load_file(processes)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads(read_metadata(processes)["training_config"])["loader_processes"] == 2


def test_loader_processes_are_checked():
    with pytest.raises(ValueError, match="loader_processes must be a whole number >= 0"):
        TrainConfig(loader_processes=-1)


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resume_gives_the_uninterrupted_result(real_dir, tmp_path):
    base = dict(SMALL, iterations=8, real_dir=str(real_dir), log_every=1, validate_every=4)
    straight = train(TrainConfig(**base, out_dir=str(tmp_path / "a"), checkpoint_every=8),
                     progress=None)

    out = tmp_path / "b"
    # A budget too small for even one step: stops after the first, with a checkpoint.
    partial = train(TrainConfig(**base, out_dir=str(out), max_minutes=1e-9), progress=None)
    assert read_metadata(partial)["complete"] == "false"
    assert read_metadata(partial)["iterations"] == "1"

    def killed_at_6(line):
        if line.startswith("iter 6/"):
            raise Interrupt

    # Killed at iteration 6, after its checkpoint of iteration 4.
    with pytest.raises(Interrupt):
        train(TrainConfig(**base, out_dir=str(out), checkpoint_every=4), progress=killed_at_6)
    lines = []
    resumed = train(TrainConfig(**base, out_dir=str(out), checkpoint_every=4),
                    progress=lines.append)
    assert lines[0].startswith("continuing from iteration 4 of 8")

    a, b = load_file(straight), load_file(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with open(out / LOG_CSV) as f:
        iterations = [int(row["iteration"]) for row in csv.DictReader(f)]
    assert iterations == list(range(1, 9))

    # A checkpoint only continues the run it belongs to.
    with pytest.raises(ValueError, match="learning_rate"):
        train(TrainConfig(**base, out_dir=str(out), learning_rate=5e-4), progress=None)
    assert (out / CHECKPOINT).exists()


def test_sampler_refuses_frames_smaller_than_the_crop():
    with pytest.raises(ValueError, match="lower lr_crop"):
        PairSampler([ramp_sequence(size=64)], TrainConfig(lr_crop=32))


def test_quantize_round_trips_grey_levels():
    levels = np.arange(256) / 255.0
    assert np.array_equal(quantize(levels), np.arange(256))


@pytest.mark.slow
def test_a_variant_starts_from_related_weights_and_logs_its_start(real_dir, tmp_path):
    from napari_xfusion.config import ModelConfig
    from napari_xfusion.models import save_weights

    torch.manual_seed(1)
    start = save_weights(build_model(ModelConfig.preset("tiny")), tmp_path / "start.safetensors")
    variant = ModelConfig.from_dict(
        {**ModelConfig.preset("tiny").to_dict(), "base": "transfer", "time_input": True}
    )
    lines = []
    config = TrainConfig(**SMALL, model=variant, iterations=2, real_dir=str(real_dir),
                         init_weights=str(start), out_dir=str(tmp_path / "run"),
                         log_every=1, validate_every=2)
    weights = train(config, progress=lines.append)
    assert any("new: conv_last.weight" in line and "keyframe_base.gate.weight" in line
               for line in lines)
    trained = load_weights(weights)
    assert trained.config == variant
    # The config round-trips through the checkpoint's identity and the weights' metadata.
    saved = TrainConfig.from_dict(json.loads(read_metadata(weights)["training_config"]))
    assert saved.model == variant
    with open(tmp_path / "run" / LOG_CSV) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2]
    assert float(rows[0]["val_psnr"]) > 0 and rows[0]["loss"] == ""
    with pytest.raises(ValueError, match="make them agree"):
        TrainConfig(model=variant, arch="edvr")


def test_distinct_frames_drops_repeats_only():
    from napari_xfusion.training.data import distinct_frames

    a, b = np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8)
    video = np.stack([a, a, b, b, b, a, b])
    np.testing.assert_array_equal(distinct_frames(video), np.stack([a, b, a, b]))
    assert len(distinct_frames(video[:1])) == 1


def test_training_steps_keep_freed_memory(real_dir, tmp_path, monkeypatch):
    depths = []
    step = train_module._step

    def recording(*args):
        depths.append(devices._retain_depth)
        return step(*args)

    monkeypatch.setattr(train_module, "_step", recording)
    train(TrainConfig(**SMALL, iterations=2, real_dir=str(real_dir), out_dir=str(tmp_path)),
          progress=None)
    assert depths == [devices._retain_depth + 1] * 2
