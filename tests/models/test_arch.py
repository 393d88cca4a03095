"""EDVR-STF and EDVR: shapes, batching, input checks, size, residual base, HR influence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_xfusion.config import ModelConfig
from napari_xfusion.models import EDVR, EDVRSTF, build_model, count_parameters
from napari_xfusion.models.arch import (
    DCNv2Pack,
    keyframe_agreement,
    keyframe_fit,
    keyframe_lows,
    lr_noise_variance,
)


def _inputs(b=1, h=8, w=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lr = torch.rand(b, 3, 1, h, w, generator=gen)
    return lr, torch.rand(b, 2, 1, 4 * h, 4 * w, generator=gen)


def _tiny(arch="stf", seed=0, offsets=0.0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig.preset("tiny", arch), deform_backend="torch")
    if offsets:
        # Untrained offset convs are zero; give them weights so the deformable path is used.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "conv_offset" in name:
                    p.normal_(0, offsets)
    return model.eval()


@pytest.mark.parametrize("arch, frames", [("stf", 5), ("edvr", 3)])
def test_output_and_attention_shapes(arch, frames):
    model = _tiny(arch)
    lr, hr = _inputs(b=2)
    with torch.no_grad():
        out, attention = model(lr, hr if arch == "stf" else None)
    assert out.shape == (2, 1, 32, 48)
    assert attention.shape == (2, frames)
    assert torch.isfinite(out).all() and torch.isfinite(attention).all()


def test_build_model_picks_the_class():
    assert type(build_model(ModelConfig.preset("tiny", "stf"))) is EDVRSTF
    assert type(build_model(ModelConfig.preset("tiny", "edvr"))) is EDVR
    with pytest.raises(ValueError, match="arch='stf'"):
        EDVRSTF(ModelConfig.preset("tiny", "edvr"))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["stf", "edvr"])
def test_batch_of_two_equals_two_singles(arch):
    model = _tiny(arch, offsets=0.05)
    lr, hr = _inputs(b=2, seed=1)
    with torch.no_grad():
        out, attention = model(lr, hr)
        for i in range(2):
            single, single_attention = model(lr[i : i + 1], hr[i : i + 1])
            torch.testing.assert_close(out[i : i + 1], single, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(attention[i : i + 1], single_attention, atol=1e-5, rtol=1e-5)


def test_sizes_not_multiple_of_four_are_refused():
    model = _tiny("stf")
    lr, hr = _inputs(h=10, w=12)
    with pytest.raises(ValueError, match="multiples of 4.*pad"):
        model(lr, hr)


def test_bad_input_shapes_are_refused():
    model = _tiny("stf")
    lr, hr = _inputs()
    with pytest.raises(ValueError, match="HR keyframes"):
        model(lr, None)
    with pytest.raises(ValueError, match=r"\(B, 2, 1, 4h, 4w\)"):
        model(lr, hr[:, :1])
    with pytest.raises(ValueError, match="HR frames are 28x48 and LR frames 8x12"):
        model(lr, hr[:, :, :, :-4])
    with pytest.raises(ValueError, match=r"\(B, 3, 1, h, w\)"):
        model(lr[:, :, 0], hr)


def test_paper_preset_has_the_published_size():
    # Tang et al. report 20.9 M parameters for C = 128, 5 + 40 blocks.
    n = count_parameters(EDVRSTF(ModelConfig.preset("paper")))
    assert n == 20_926_817
    assert abs(n - 20.9e6) / 20.9e6 < 0.01


def test_deform_backend_is_passed_down():
    model = _tiny("stf")
    packs = [m for m in model.modules() if isinstance(m, DCNv2Pack)]
    assert len(packs) == 4
    assert all(p.backend == "torch" for p in packs)


@pytest.mark.parametrize("arch", ["stf", "edvr"])
def test_zero_last_conv_gives_bilinear_upsampling(arch):
    model = _tiny(arch)
    with torch.no_grad():
        model.conv_last.weight.zero_()
        model.conv_last.bias.zero_()
        lr, hr = _inputs()
        out, _ = model(lr, hr)
    base = F.interpolate(lr[:, 1], scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.equal(out, base)


def test_hr_keyframes_drive_stf_but_not_edvr():
    lr, hr = _inputs()
    hr.requires_grad_()
    out, _ = _tiny("stf")(lr, hr)
    (grad,) = torch.autograd.grad(out.sum(), hr)
    assert grad.abs().sum() > 0
    # Both keyframes matter, not just one.
    assert (grad.abs().sum(dim=(2, 3, 4)) > 0).all()

    model = _tiny("edvr")
    out, _ = model(lr, hr)
    (grad,) = torch.autograd.grad(out.sum(), hr, allow_unused=True)
    assert grad is None  # hr is not part of the graph at all
    with torch.no_grad():
        torch.testing.assert_close(model(lr, torch.rand_like(hr))[0], out, atol=0, rtol=0)


@pytest.mark.slow
def test_receptive_field_bounds_the_influence():
    # With (small) learned offsets, the gradient of one output pixel must stay within the
    # advertised radius of it, in LR and HR inputs alike.
    model = _tiny("stf", offsets=1e-3)
    size = 128
    radius = model.receptive_field(max_offset=1.0)
    assert 2 * radius < size
    lr, hr = _inputs(h=size, w=size)
    lr.requires_grad_()
    hr.requires_grad_()
    out, _ = model(lr, hr)
    centre = 4 * (size // 2)
    out[0, 0, centre, centre].backward()
    ys, xs = torch.nonzero(lr.grad[0].abs().sum(dim=(0, 1)), as_tuple=True)
    assert (ys - size // 2).abs().max() <= radius and (xs - size // 2).abs().max() <= radius
    ys, xs = torch.nonzero(hr.grad[0].abs().sum(dim=(0, 1)), as_tuple=True)
    assert (ys - centre).abs().max() <= 4 * radius and (xs - centre).abs().max() <= 4 * radius
    # The estimate is an upper bound, but not a loose one: the influence reaches most of it.
    assert (ys - centre).abs().max() >= 0.75 * 4 * radius
    assert model.receptive_field() >= radius


def test_attention_scores_keep_fp32_resolution_under_bf16():
    # The plotted scores differ from frame to frame by less than bf16's ~3 digits.
    model = _tiny()
    lr, hr = _inputs(b=4, h=16, w=16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, attention = model(lr, hr)
    assert attention.dtype == torch.float32
    assert (attention != attention.to(torch.bfloat16).float()).any()


# -- options beyond the paper -------------------------------------------------------------


def _signature(model) -> str:
    import hashlib

    names = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(names.encode()).hexdigest()[:16]


@pytest.mark.parametrize("arch, signature", [("stf", "232f9147679ba4c6"),
                                             ("edvr", "ca817b6c371ea443")])
def test_paper_preset_keeps_the_papers_tensors(arch, signature):
    # The names and shapes of every tensor, as in the paper's (BasicSR) checkpoints: the
    # options beyond the paper must not change the paper preset.
    config = ModelConfig.preset("paper", arch)
    assert (config.base, config.time_input, config.hr_tail_channels) == ("bilinear", False, 64)
    assert config.hr_branch_channels is None and not config.trust_agreement
    assert _signature(build_model(config)) == signature


def _with(**options):
    torch.manual_seed(0)
    config = ModelConfig.from_dict({**ModelConfig.preset("tiny").to_dict(), **options})
    return build_model(config, deform_backend="torch").eval()


def test_transfer_base_starts_as_detail_transfer():
    from napari_xfusion.methods.classical import detail_transfer

    model = _with(base="transfer")
    lr, hr = _inputs(b=2)
    position = torch.tensor([0.25, 1.5])
    with torch.no_grad():
        out, _ = model(lr, hr, position)
    for i, w0 in enumerate((0.75, 0.0)):  # past the last keyframe all weight goes to k1
        expected = detail_transfer(lr[i, 1, 0].numpy(), hr[i, 0, 0].numpy(),
                                   hr[i, 1, 0].numpy(), w0, 4)
        torch.testing.assert_close(out[i, 0].clamp(0, 1), torch.from_numpy(expected),
                                   atol=1e-5, rtol=0)


def test_transfer_base_learns_per_pixel_keyframe_weights():
    model = _with(base="transfer")
    lr, hr = _inputs()
    hr.requires_grad_()
    with torch.no_grad():
        model.keyframe_base.gate.bias.copy_(torch.tensor([-0.5, 0.5]))  # trust k1 more
        out, _ = model(lr, hr, torch.tensor([0.5]))
    base = F.interpolate(lr[:, 1], scale_factor=4, mode="bicubic", align_corners=False)
    from napari_xfusion.models.arch import keyframe_detail

    detail = keyframe_detail(hr.detach()[0])  # (2, 1, H, W)
    torch.testing.assert_close(out[0], base[0] + detail[1], atol=1e-5, rtol=0)


def _scene(shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An HR frame of fine texture and its 4 x 4 binning, the texture moved by ``shift``."""
    g = torch.Generator().manual_seed(3)
    frame = F.avg_pool2d(torch.rand(1, 1, 68, 96, generator=g), 3, 1, 1)[..., 2:66, :]
    frame = (frame - frame.mean()) * 4 + 0.5  # the contrast of a real edge-rich scene
    frame = torch.roll(frame, shift, dims=-1)
    return F.avg_pool2d(frame, 4), frame


def test_agreement_base_is_detail_transfer_where_the_keyframes_agree():
    lr_t, frame = _scene()
    plain, agreeing = _with(base="transfer"), _with(base="agreement")
    # Brighter keyframes (another camera's response) still agree: gain and offset are fit.
    keys = torch.stack([frame, 1.5 * frame + 0.1], 1)  # (1, 2, 1, H, W)
    position = torch.tensor([0.3])
    base = agreeing.keyframe_base
    agreement = keyframe_agreement(keyframe_fit(lr_t, keys)[1], base.log_width.exp())
    assert agreement.shape == (1, 2, 1, *lr_t.shape[-2:]) and agreement.min() > 0.99
    features = torch.zeros(1, 8, *lr_t.shape[-2:])
    with torch.no_grad():
        expected, _ = plain.keyframe_base(lr_t, keys, position, features)
        torch.testing.assert_close(base(lr_t, keys, position, features)[0], expected,
                                   atol=2e-3, rtol=0)


def test_agreement_base_leaves_out_the_detail_of_what_moved():
    lr_t, frame = _scene()
    _, moved = _scene(shift=6)
    model = _with(base="agreement")
    features = torch.zeros(1, 8, *lr_t.shape[-2:])
    position = torch.tensor([0.5])
    bicubic = F.interpolate(lr_t, scale_factor=4, mode="bicubic", align_corners=False)
    with torch.no_grad():
        # k0 agrees, k1 moved: the detail comes from k0 alone, at full weight.
        out, _ = model.keyframe_base(lr_t, torch.stack([frame, moved], 1), position, features)
        error = (out - frame).square().mean()
        transfer, _ = _with(base="transfer").keyframe_base(
            lr_t, torch.stack([frame, moved], 1), position, features
        )
        assert error < 0.2 * (transfer - frame).square().mean()
        # Neither agrees: little detail is added to bicubic LR t.
        out, _ = model.keyframe_base(lr_t, torch.stack([moved, moved], 1), position, features)
        assert (out - bicubic).abs().mean() < 0.3 * (transfer - bicubic).abs().mean()
    assert "keyframe_base.log_width" in model.state_dict()


def _broad_scene(shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An HR frame of broad structure, as real scenes are once binned, and its binning."""
    y, x = torch.meshgrid(torch.arange(128.0), torch.arange(128.0) + shift, indexing="ij")
    frame = 0.5 + 0.2 * torch.sin(x / 9) * torch.cos(y / 13) + 0.1 * torch.sin((x + 2 * y) / 5)
    return F.avg_pool2d(frame[None, None], 4), frame[None, None]


def _lr_noise(lr: torch.Tensor, sigma: float = 0.03) -> torch.Tensor:
    return sigma * torch.randn(lr.shape, generator=torch.Generator().manual_seed(1))


def test_lr_noise_variance_measures_the_noise_of_lr_t_alone():
    lr_t, frame = _broad_scene()
    _, moved = _broad_scene(shift=7)
    # One keyframe from a camera of another gain, one taken after the scene moved.
    keys = torch.stack([1.5 * frame, moved], 1)
    for lr, variance in ((lr_t, 0.0), (lr_t + _lr_noise(lr_t), 0.03**2)):
        matched, _ = keyframe_fit(lr, keys)
        assert lr_noise_variance(lr, matched).item() == pytest.approx(variance, abs=2e-4)


def test_keyframe_lows_average_the_noise_out_only_where_the_keyframes_agree():
    lr_t, frame = _broad_scene()
    _, moved = _broad_scene(shift=7)
    noise = _lr_noise(lr_t)

    def lows(lr, key):
        matched, misfit = keyframe_fit(lr, torch.stack([key, key], 1))
        return keyframe_lows(lr, matched, misfit, lr_noise_variance(lr, matched))

    torch.testing.assert_close(lows(lr_t, frame), lr_t, atol=1e-4, rtol=0)
    # A still, noisy scene: most of the noise goes.
    assert (lows(lr_t + noise, frame) - lr_t).square().mean() < 0.2 * noise.square().mean()
    # The scene moved: LR t keeps (nearly) all it saw.
    assert (lows(lr_t + noise, moved) - lr_t).square().mean() < 1.2 * noise.square().mean()


def test_trusting_the_agreement_leaves_a_still_scene_to_its_keyframe():
    # A network whose learned corrections are strong (random, scaled up) changes the base
    # everywhere; trusting the agreement, it leaves the base where a keyframe agrees with
    # LR t and keeps its corrections where none does.
    lr_t, frame = _scene()
    _, moved = _scene(shift=6)
    torch.manual_seed(0)
    free = _with(base="agreement")
    trusting = _with(base="agreement", trust_agreement=True)
    with torch.no_grad():
        free.conv_last.weight.normal_(0, 0.1)
        free.keyframe_base.gate.weight.normal_(0, 0.1)
    trusting.load_state_dict(free.state_dict())
    position = torch.tensor([0.5])
    lr = lr_t.expand(1, 3, -1, -1).unsqueeze(2)

    def output(model, keys):
        with torch.no_grad():
            return model(lr, keys.unsqueeze(2), position)[0]

    still = torch.stack([frame, frame], 1)[:, :, 0]
    base, weight = trusting.keyframe_base(lr_t, still.unsqueeze(2), position,
                                          torch.zeros(1, 8, *lr_t.shape[-2:]))
    assert weight.max() < 0.01
    assert (output(trusting, still) - frame).abs().mean() < 0.2 * (
        output(free, still) - frame).abs().mean()
    elsewhere = torch.stack([moved, moved], 1)[:, :, 0]
    torch.testing.assert_close(output(trusting, elsewhere), output(free, elsewhere),
                               atol=0.05, rtol=0)


def test_trusting_the_agreement_takes_a_noisy_still_scene_from_its_keyframes():
    lr_t, frame = _broad_scene()
    noisy = (lr_t + _lr_noise(lr_t)).expand(1, 3, -1, -1).unsqueeze(2)
    keys = torch.stack([frame, frame], 1)
    position = torch.tensor([0.5])
    errors = {}
    for trust in (False, True):
        model = _with(base="agreement", trust_agreement=trust)
        with torch.no_grad():
            errors[trust] = (model(noisy, keys, position)[0] - frame).square().mean()
    assert errors[True] < 0.2 * errors[False]


def test_trust_agreement_needs_the_agreement_base():
    with pytest.raises(ValueError, match="trust_agreement needs base 'agreement'"):
        ModelConfig.from_dict({**ModelConfig.preset("tiny").to_dict(), "base": "transfer",
                               "trust_agreement": True})


def test_time_input_starts_neutral_and_then_matters():
    lr, hr = _inputs()
    plain, timed = _with(), _with(time_input=True)
    timed.load_state_dict({**plain.state_dict(), **{
        k: v for k, v in timed.state_dict().items() if k.startswith("time_embedding")}})
    with torch.no_grad():
        reference, _ = plain(lr, hr)
        same, _ = timed(lr, hr, torch.tensor([0.3]))
        torch.testing.assert_close(same, reference)
        timed.time_embedding.linear.weight.fill_(1.0)
        early, _ = timed(lr, hr, torch.tensor([0.1]))
        late, _ = timed(lr, hr, torch.tensor([0.9]))
    assert (early - late).abs().max() > 1e-4


@pytest.mark.parametrize(
    "options", [{"base": "transfer"}, {"base": "agreement"}, {"time_input": True}]
)
def test_networks_that_need_the_position_ask_for_it(options):
    lr, hr = _inputs()
    with pytest.raises(ValueError, match="position of t between its keyframes"):
        _with(**options)(lr, hr)


def test_narrow_hr_layers_have_the_asked_widths():
    model = _with(hr_tail_channels=6, hr_branch_channels=5)
    assert model.conv_hr.weight.shape == (6, 6, 3, 3)
    assert model.upconv2.weight.shape[0] == 4 * 6
    assert model.hr_feature.conv2.weight.shape == (5, 5, 3, 3)
    assert model.hr_feature.conv3.weight.shape == (8, 5, 3, 3)  # back to C = 8
    lr, hr = _inputs()
    with torch.no_grad():
        out, _ = model(lr, hr)
    assert out.shape == (1, 1, 32, 48)


def test_options_are_checked():
    with pytest.raises(ValueError, match="base must be one of"):
        ModelConfig(base="nearest")
    with pytest.raises(ValueError, match="LR-only 'edvr'"):
        ModelConfig(arch="edvr", base="transfer")
    with pytest.raises(ValueError, match="hr_tail_channels must be a whole number"):
        ModelConfig(hr_tail_channels=0)
    assert ModelConfig.preset("default", "edvr").base == "bilinear"
