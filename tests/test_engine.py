"""The tiled streaming engine: tiles match whole frames, padding, streaming, OOM recovery."""

import logging

import numpy as np
import pytest
import torch

from napari_xfusion import devices
from napari_xfusion import engine as engine_module
from napari_xfusion.config import EngineConfig, ModelConfig, TimeModel
from napari_xfusion.devices import autocast_dtype, resolve_device
from napari_xfusion.engine import Engine, FeatureCache
from napari_xfusion.methods import create_method
from napari_xfusion.metrics import psnr
from napari_xfusion.models import build_model
from napari_xfusion.tiling import tile_grid
from napari_xfusion.timeline import Timeline


def tiny(arch="stf", seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig.preset("tiny", arch=arch))
    # Random weights give a near-bilinear output; strengthen the learned residual so that
    # the tests see the network's own (context-dependent) contribution.
    with torch.no_grad():
        model.conv_last.weight.mul_(5.0)
    return model


def cpu(**settings) -> EngineConfig:
    """Engine settings for exact comparisons: the CPU in fp32."""
    return EngineConfig(device="cpu", precision="fp32", **settings)


def textured(h, w, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / 7.0
    base = 0.5 + 0.2 * np.sin(x) * np.cos(0.7 * y)
    return np.clip(base + 0.1 * rng.random((h, w)), 0, 1).astype(np.float32)


def inputs(h=40, w=56, seed=0):
    lr = np.stack([textured(h, w, seed + i) for i in range(3)])
    hr = np.stack([textured(4 * h, 4 * w, seed + 10 + i) for i in range(2)])
    return lr, hr


@pytest.mark.slow
def test_tiled_output_matches_whole_frame():
    model = tiny()
    lr, hr = inputs(96, 128)
    whole, att_whole = Engine(model, cpu(tile=0)).fuse_frame(lr, hr)
    tiled, att_tiled = Engine(model, cpu(tile=48, overlap=16, batch=3)).fuse_frame(lr, hr)
    assert whole.shape == tiled.shape == (384, 512)
    # The residual is a real, context-dependent signal, not just the bilinear base.
    base = torch.nn.functional.interpolate(torch.from_numpy(lr[1][None, None]), scale_factor=4,
                                           mode="bilinear", align_corners=False)[0, 0].numpy()
    assert psnr(whole, np.clip(base, 0, 1)) < 30
    assert psnr(tiled, whole) > 50
    np.testing.assert_allclose(att_tiled, att_whole, rtol=0.05, atol=0.05)


@pytest.mark.slow
def test_no_seam_on_a_ramp():
    model = tiny(seed=1)
    h, w = 32, 96
    ramp = np.tile(np.linspace(0.1, 0.9, w, dtype=np.float32), (h, 1))
    lr = np.stack([ramp] * 3)
    hr_ramp = np.tile(np.linspace(0.1, 0.9, 4 * w, dtype=np.float32), (4 * h, 1))
    hr = np.stack([hr_ramp] * 2)
    engine = Engine(model, cpu(tile=32, overlap=8))
    tiled, _ = engine.fuse_frame(lr, hr)
    whole, _ = Engine(model, cpu(tile=0)).fuse_frame(lr, hr)
    # Along x the tiled output must be as smooth as the whole-frame output everywhere,
    # tile boundaries included.
    rough_tiled = np.abs(np.diff(tiled[8:-8], n=2, axis=1)).max()
    rough_whole = np.abs(np.diff(whole[8:-8], n=2, axis=1)).max()
    assert rough_tiled < rough_whole + 2e-3
    assert np.abs(tiled - whole).max() < 5e-3


@pytest.mark.slow
def test_pads_sizes_that_are_not_multiples_of_four():
    model = tiny()
    lr, hr = inputs(30, 45)
    out, att = Engine(model, cpu(tile=0)).fuse_frame(lr, hr)
    assert out.shape == (120, 180) and att.shape == (5,)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    tiled, _ = Engine(model, cpu(tile=24, overlap=8)).fuse_frame(lr, hr)
    assert tiled.shape == (120, 180)
    assert psnr(tiled, out) > 40


def test_rejects_mismatched_hr_size():
    lr, hr = inputs(32, 32)
    with pytest.raises(ValueError, match="4 times the LR size"):
        Engine(tiny(), cpu()).fuse_frame(lr, hr[:, :100])


@pytest.mark.slow
def test_run_streams_frames_reading_each_input_once(counting):
    model = tiny()
    n = 9
    lr_arr = np.stack([textured(16, 16, i) for i in range(n)])
    hr_arr = np.stack([textured(64, 64, 100 + i) for i in range(3)])
    lr, hr = counting(lr_arr), counting(hr_arr)
    timeline = Timeline(n, 3, TimeModel(spacing=4, separation=2))
    progress = []
    frames = list(
        Engine(model, cpu(tile=0)).run(
            lr, hr, timeline, progress=lambda d, t: progress.append((d, t))
        )
    )
    assert [f.t for f in frames] == list(range(n))
    assert [f.is_keyframe for f in frames] == [t in (0, 4, 8) for t in range(n)]
    assert all(f.attention.shape == (5,) and f.image.shape == (64, 64) for f in frames)
    assert sorted(lr.frames_read) == list(range(n))
    assert sorted(hr.frames_read) == [0, 1, 2]
    assert progress[-1] == (n, n)


@pytest.mark.slow
@pytest.mark.parametrize("tile", [0, 24])
def test_features_of_each_input_frame_are_computed_once(monkeypatch, tile):
    model = tiny()
    n, n_hr = 10, 4
    lr = np.stack([textured(40, 48, i) for i in range(n)])
    hr = np.stack([textured(160, 192, 100 + i) for i in range(n_hr)])
    timeline = Timeline(n, n_hr, TimeModel(spacing=3, separation=2))
    extracted = {"lr": 0, "hr": 0}
    real = model.extract_features

    def counting(frames, stream="lr"):
        extracted[stream] += len(frames)
        return real(frames, stream)

    monkeypatch.setattr(model, "extract_features", counting)

    def run(cache_mb):
        extracted.update(lr=0, hr=0)
        config = EngineConfig(
            device="cpu", tile=tile, overlap=8, feature_cache_mb=cache_mb, precision="fp32"
        )
        frames = list(Engine(model, config).run(lr, hr, timeline))
        return frames, dict(extracted)

    shared, counts = run(1024)
    per_output, counts_plain = run(0)
    tiles = len(tile_grid(40, 48, tile, 8))
    assert tiles == (1 if tile == 0 else 6)
    assert counts == {"lr": n * tiles, "hr": n_hr * tiles}
    # Without the cache every output extracts its frames, less the clamped duplicates.
    assert counts_plain["lr"] > 2.5 * n * tiles and counts_plain["hr"] == 2 * n * tiles
    for a, b in zip(shared, per_output, strict=True):
        np.testing.assert_allclose(a.image, b.image, atol=1e-5)
        np.testing.assert_allclose(a.attention, b.attention, atol=1e-5)


def test_feature_cache_holds_only_the_frames_still_needed(monkeypatch):
    sizes = []

    class Recording(FeatureCache):
        def put(self, key, pyramid):
            super().put(key, pyramid)
            sizes.append(len(self))

    monkeypatch.setattr(engine_module, "FeatureCache", Recording)
    n, r = 30, 2
    lr = np.stack([textured(16, 16, i) for i in range(n)])
    hr = np.stack([textured(64, 64, 100 + i) for i in range(4)])
    timeline = Timeline(n, 4, TimeModel(spacing=8, separation=r))
    list(Engine(tiny(), EngineConfig(device="cpu", tile=0)).run(lr, hr, timeline))
    assert len(sizes) == n + 4  # every frame's pyramid computed once
    # LR t-r .. t+r plus the frame read next, and two keyframes plus the next one.
    assert max(sizes) <= (2 * r + 2) + 3


def test_feature_cache_keeps_to_its_budget():
    cache = FeatureCache(budget_bytes=3 * 400)

    def pyramid():
        return [torch.zeros(100), torch.zeros(0)]  # 400 bytes

    for key in range(5):
        cache.put(key, pyramid())
    assert cache.size == 1200
    assert cache.get(0) is None and cache.get(1) is None
    assert cache.get(2) is not None
    cache.put(5, pyramid())  # drops 3: 2 was used more recently
    assert cache.get(3) is None and cache.get(2) is not None
    assert (cache.hits, cache.misses) == (2, 3)


def test_out_of_memory_halves_tiles_and_retries(monkeypatch, caplog):
    model = tiny()
    engine = Engine(model, cpu(tile=64, overlap=8))
    lr, hr = inputs(64, 64)
    expected, _ = Engine(model, cpu(tile=0)).fuse_frame(lr, hr)
    real = engine._run_batch
    calls = {"n": 0}

    def flaky(lr_tiles, hr_tiles, *names_and_cache):
        calls["n"] += 1
        if lr_tiles.shape[-1] > 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(lr_tiles, hr_tiles, *names_and_cache)

    monkeypatch.setattr(engine, "_run_batch", flaky)
    with caplog.at_level(logging.WARNING, logger="napari_xfusion.engine"):
        out, _ = engine.fuse_frame(lr, hr)
    assert engine.tile == 32 and engine.oom_retries == 1
    assert "out of GPU memory" in caplog.text
    assert psnr(out, expected) > 40


def test_edvr_attention_has_three_scores_and_ignores_hr():
    model = tiny("edvr")
    engine = Engine(model, cpu(tile=0))
    lr, hr = inputs(16, 16)
    out_a, att = engine.fuse_frame(lr, hr)
    out_b, _ = engine.fuse_frame(lr, np.zeros_like(hr))
    assert att.shape == (3,)
    np.testing.assert_array_equal(out_a, out_b)


def test_neural_methods_through_registry():
    timeline = Timeline(4, 2, TimeModel(spacing=3))
    lr = np.stack([textured(16, 16, i) for i in range(4)])
    hr = np.stack([textured(64, 64, 10 + i) for i in range(2)])
    method = create_method("stf", model=tiny(), engine=cpu(tile=0))
    frames = list(method.fuse(lr, hr, timeline))
    assert len(frames) == 4 and frames[0].attention.shape == (5,)
    with pytest.raises(ValueError, match="runs an 'edvr' network, not this 'stf' one"):
        create_method("edvr", model=tiny("stf"))
    with pytest.raises(ValueError, match="scale"):
        list(method.fuse(lr, hr, Timeline(4, 2, TimeModel(spacing=3, scale=2))))


def test_device_selection():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="precision"):
        EngineConfig(precision="fp8")
    with pytest.raises(ValueError, match="half the tile"):
        EngineConfig(tile=16, overlap=8)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_cpu(monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") == (torch.bfloat16 if native else None)
    assert autocast_dtype(cpu, "auto", training=True) == (torch.bfloat16 if native else None)
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16", training=True) == torch.bfloat16


def test_bf16_output_stays_close_to_fp32():
    model = tiny()
    lr, hr = inputs(48, 64)
    fp32, _ = Engine(model, cpu()).fuse_frame(lr, hr)
    bf16, _ = Engine(model, EngineConfig(device="cpu", precision="bf16")).fuse_frame(lr, hr)
    assert 45 < psnr(bf16, fp32) < 200


@pytest.mark.slow
def test_a_transfer_base_network_gets_its_keyframes_and_positions(small_experiment):
    # Untrained, a network with base="transfer" is detail transfer itself: streamed by the
    # engine over a sequence (keyframe times and frames past the last keyframe included),
    # it must give the transfer method's frames, which needs each frame's keyframes and
    # position to arrive.
    torch.manual_seed(0)
    config = ModelConfig.from_dict({**ModelConfig.preset("tiny").to_dict(), "base": "transfer"})
    exp = small_experiment
    engine = Engine(build_model(config), cpu())
    fused = [f.image for f in engine.run(exp.lr, exp.hr, exp.timeline)]
    expected = [f.image for f in create_method("transfer").fuse(exp.lr, exp.hr, exp.timeline)]
    np.testing.assert_allclose(np.stack(fused), np.stack(expected), atol=2e-5)
    with pytest.raises(ValueError, match="frame's inputs"):
        engine.fuse_frame(exp.lr[:3], exp.hr[:2])


def test_non_finite_network_output_is_an_error_not_a_black_frame():
    model = tiny()
    with torch.no_grad():
        model.conv_last.bias.fill_(float("nan"))
    lr, hr = inputs(16, 16)
    with pytest.raises(ValueError, match="NaN or infinite values"):
        Engine(model, cpu()).fuse_frame(lr, hr)


def test_a_run_keeps_freed_memory_for_its_whole_length():
    lr = np.stack([textured(16, 16, i) for i in range(5)])
    hr = np.stack([textured(64, 64, 100 + i) for i in range(2)])
    timeline = Timeline(5, 2, TimeModel(spacing=4))
    before = devices._retain_depth
    run = Engine(tiny(), cpu(tile=0)).run(lr, hr, timeline)
    held = [devices._retain_depth for _ in run]
    assert held == [before + 1] * 5
    assert devices._retain_depth == before
    abandoned = Engine(tiny(), cpu(tile=0)).run(lr, hr, timeline)
    next(abandoned)
    abandoned.close()
    assert devices._retain_depth == before
