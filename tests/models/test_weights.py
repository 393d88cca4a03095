"""Weight files: round trip, clear errors for wrong, damaged and pickle files, conversion."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from napari_xfusion.config import ModelConfig
from napari_xfusion.models import (
    WeightsError,
    build_model,
    bundled_weights_path,
    check_weights_file,
    convert_pth,
    init_from,
    load_weights,
    read_metadata,
    save_weights,
)


def _model(arch="stf", seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig.preset("tiny", arch), deform_backend="torch")
    with torch.no_grad():
        for p in model.parameters():  # make every tensor distinctive, offsets included
            p.add_(torch.randn_like(p) * 0.01)
    return model.eval()


def _inputs():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 1, 8, 8, generator=gen), torch.rand(1, 2, 1, 32, 32, generator=gen)


def test_round_trip_gives_identical_outputs(tmp_path):
    model = _model()
    path = save_weights(model, tmp_path / "net.safetensors", extra_metadata={"note": "test"})
    loaded = load_weights(path, deform_backend="torch")
    assert loaded.config == model.config
    assert not loaded.training
    meta = read_metadata(path)
    assert meta["format"] == "napari-xfusion-weights" and meta["format_version"] == "1"
    assert json.loads(meta["model_config"]) == model.config.to_dict()
    assert meta["note"] == "test" and loaded.metadata["note"] == "test"
    lr, hr = _inputs()
    with torch.no_grad():
        a, att_a = model(lr, hr)
        b, att_b = loaded(lr, hr)
    assert torch.equal(a, b) and torch.equal(att_a, att_b)


def test_reserved_metadata_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_weights(_model(), tmp_path / "x.safetensors", extra_metadata={"format": "mine"})


def test_wrong_architecture(tmp_path):
    path = save_weights(_model("edvr"), tmp_path / "edvr.safetensors")
    with pytest.raises(WeightsError, match="holds 'edvr' weights, not 'stf'"):
        load_weights(path, arch="stf")
    # A file whose tensors do not match its stated config names the offending keys.
    state = {k: v.contiguous() for k, v in _model("edvr").state_dict().items()}
    stf_config = json.dumps(ModelConfig.preset("tiny", "stf").to_dict())
    meta = read_metadata(path) | {"model_config": stf_config}
    bad = tmp_path / "mismatch.safetensors"
    save_file(state, str(bad), metadata=meta)
    names = r"missing hr_feature\.conv1\.weight.*shape mismatch for fusion\.feat_fusion"
    with pytest.raises(WeightsError, match=names):
        load_weights(bad)


def test_missing_file_and_missing_metadata(tmp_path):
    with pytest.raises(WeightsError, match="no weights file"):
        load_weights(tmp_path / "nothing.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(WeightsError, match="without napari-xfusion metadata"):
        load_weights(plain)


def test_truncated_file(tmp_path):
    path = save_weights(_model(), tmp_path / "net.safetensors")
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 4):
        short = tmp_path / f"short{cut}.safetensors"
        short.write_bytes(data[:cut])
        with pytest.raises(WeightsError, match="truncated"):
            load_weights(short)


def test_pickle_checkpoint_is_recognised(tmp_path):
    state = _model().state_dict()
    zipped = tmp_path / "net.pth"
    torch.save(state, zipped)
    with pytest.raises(WeightsError, match="PyTorch pickle checkpoint.*convert-weights"):
        load_weights(zipped)
    legacy = tmp_path / "legacy.pth"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsError, match="PyTorch pickle checkpoint"):
        load_weights(legacy)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(WeightsError, match="PyTorch pickle checkpoint"):
        load_weights(raw)
    text = tmp_path / "notes.safetensors"
    text.write_text("definitely not weights")
    with pytest.raises(WeightsError, match="not a safetensors"):
        load_weights(text)


@pytest.mark.parametrize("wrap", [None, "params", "params_ema", "state_dict"])
def test_convert_pth_round_trip(tmp_path, wrap):
    model = _model()
    state = model.state_dict()
    if wrap == "params_ema":
        # BasicSR saves both; the averaged weights are the ones to use.
        data = {"params": {k: torch.zeros_like(v) for k, v in state.items()}, "params_ema": state}
    elif wrap is not None:
        data = {wrap: {f"module.{k}": v for k, v in state.items()}}
    else:
        data = state
    src = tmp_path / "basicsr.pth"
    torch.save(data, src)
    dst = convert_pth(src, tmp_path / "converted.safetensors", model.config)
    assert read_metadata(dst)["converted_from"] == "basicsr.pth"
    loaded = load_weights(dst, deform_backend="torch")
    lr, hr = _inputs()
    with torch.no_grad():
        assert torch.equal(model(lr, hr)[0], loaded(lr, hr)[0])


def test_convert_pth_key_map_and_mismatch(tmp_path):
    model = _model()
    state = {k.replace("hr_feature.", "hr_branch."): v for k, v in model.state_dict().items()}
    src = tmp_path / "renamed.pth"
    torch.save(state, src)
    with pytest.raises(WeightsError, match=r"unexpected hr_branch\.") as info:
        convert_pth(src, tmp_path / "a.safetensors", model.config)
    assert "key_map" in str(info.value)
    dst = convert_pth(src, tmp_path / "b.safetensors", model.config,
                      key_map={"hr_branch.": "hr_feature."})
    assert load_weights(dst).config == model.config
    # The checkpoint of another size is refused with the shapes named.
    with pytest.raises(WeightsError, match="shape mismatch"):
        convert_pth(src, tmp_path / "c.safetensors",
                    ModelConfig(arch="stf", channels=16, extract_blocks=1, recon_blocks=1,
                                deform_groups=1),
                    key_map={"hr_branch.": "hr_feature."})


def test_convert_pth_refuses_code_in_pickles(tmp_path):
    src = tmp_path / "evil.pth"
    torch.save({"params": {"w": torch.zeros(1)}, "obj": ModelConfig()}, src)
    with pytest.raises(WeightsError, match="could run code"):
        convert_pth(src, tmp_path / "out.safetensors", ModelConfig.preset("tiny"))


def test_bundled_weights_path(tmp_path):
    path = bundled_weights_path("stf")
    assert path.name == "stf_default.safetensors"
    assert path.parent.name == "weights" and path.parent.parent.name == "models"
    if not path.exists():
        with pytest.raises(WeightsError, match="not bundled yet"):
            load_weights(path)
    with pytest.raises(ValueError, match="unknown architecture"):
        bundled_weights_path("srcnn")


def test_half_precision_file_loads_into_a_float32_network(tmp_path):
    model = _model()
    path = save_weights(model, tmp_path / "half.safetensors", dtype=torch.float16)
    loaded = load_weights(path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a.half().float(), atol=0, rtol=0, msg=name)


def test_init_from_copies_what_fits_and_names_the_rest():
    source = _model("stf")
    options = {"base": "transfer", "time_input": True, "hr_tail_channels": 4}
    config = ModelConfig.from_dict({**source.config.to_dict(), **options})
    target = build_model(config, deform_backend="torch")
    fresh = init_from(target, source)
    # The narrower tail and the new heads start afresh; conv_last also because the
    # residual is added to another base.
    assert set(fresh) == {
        "upconv2.weight", "upconv2.bias", "conv_hr.weight", "conv_hr.bias",
        "conv_last.weight", "conv_last.bias", "keyframe_base.gate.weight",
        "keyframe_base.gate.bias", "time_embedding.linear.weight", "time_embedding.linear.bias",
    }
    theirs = source.state_dict()
    for name, tensor in target.state_dict().items():
        if name not in fresh:
            assert torch.equal(tensor, theirs[name]), name


def test_edvr_starts_from_the_lr_path_of_edvr_stf():
    source = _model("stf")
    target = build_model(ModelConfig.preset("tiny", "edvr"), deform_backend="torch")
    assert init_from(target, source) == []
    c = source.config.channels
    theirs = source.state_dict()
    for name in ("fusion.feat_fusion.weight", "fusion.spatial_attn1.weight"):
        assert torch.equal(target.state_dict()[name], theirs[name][:, : 3 * c])
    assert torch.equal(target.state_dict()["pcd_align.dcn_pack.l1.weight"],
                       theirs["pcd_align.dcn_pack.l1.weight"])


def test_check_weights_file_is_the_one_check(tmp_path, monkeypatch):
    from napari_xfusion.models import weights as weights_module

    stf = save_weights(_model("stf"), tmp_path / "stf.safetensors")
    assert check_weights_file(stf, "stf", scale=4) == stf
    with pytest.raises(WeightsError, match="holds 'stf' weights, not 'edvr'"):
        check_weights_file(stf, "edvr")
    with pytest.raises(WeightsError, match="upsamples 4x but the scale is set to 2"):
        check_weights_file(stf, "stf", scale=2)
    monkeypatch.setattr(weights_module, "BUNDLED_DIR", tmp_path / "nothing-bundled")
    with pytest.raises(WeightsError, match="no trained 'edvr' weights are bundled"):
        check_weights_file(None, "edvr")
    # A file whose config does not name its architecture is an EDVR-STF, as load_weights
    # reads it (the dock used to fail on it with a KeyError).
    config = {k: v for k, v in _model("stf").config.to_dict().items() if k != "arch"}
    meta = read_metadata(stf) | {"model_config": json.dumps(config)}
    no_arch = tmp_path / "no-arch.safetensors"
    save_file({k: v.contiguous() for k, v in _model("stf").state_dict().items()},
              str(no_arch), metadata=meta)
    assert check_weights_file(no_arch, "stf", scale=4) == no_arch
    assert load_weights(no_arch).config.arch == "stf"


def test_non_finite_weights_are_refused_on_load(tmp_path):
    model = _model()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    path = save_weights(model, tmp_path / "diverged.safetensors")
    with pytest.raises(WeightsError, match="NaN or infinite values in 1 tensor"):
        load_weights(path)


def test_init_from_keeps_the_residual_between_keyframe_bases():
    source = build_model(ModelConfig.from_dict(
        {**ModelConfig.preset("tiny").to_dict(), "base": "transfer"}), deform_backend="torch")
    config = ModelConfig.from_dict({**source.config.to_dict(), "base": "agreement"})
    target = build_model(config, deform_backend="torch")
    # Both bases start as detail transfer: only the agreement's width is new.
    assert init_from(target, source) == ["keyframe_base.log_width"]
    torch.testing.assert_close(target.conv_last.weight, source.conv_last.weight)
