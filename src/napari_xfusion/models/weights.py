"""Weight files: safetensors with the network's config in the metadata.

A weights file is a plain safetensors file (tensors only: opening one cannot run code)
whose metadata holds::

    format          "napari-xfusion-weights"
    format_version  "1"
    model_config    JSON of a ModelConfig (architecture and size)

plus any extra string fields (training notes, provenance). :func:`load_weights` rebuilds the
network from ``model_config`` and loads the tensors strictly. PyTorch ``.pth`` checkpoints,
such as those of the paper's BasicSR code, are converted once with :func:`convert_pth`.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import MODEL_ARCHS, ModelConfig
from .arch import build_model
from .deform import Backend

FORMAT = "napari-xfusion-weights"
FORMAT_VERSION = "1"
#: Metadata keys written by :func:`save_weights`; extra metadata may not replace them.
RESERVED_KEYS = ("format", "format_version", "model_config")
#: Where the trained weights shipped with the package live.
BUNDLED_DIR = Path(__file__).resolve().parent / "weights"

#: A safetensors header larger than this is taken as a sign the file is something else.
_MAX_HEADER_BYTES = 100 * 2**20
_CONVERT_HINT = (
    "convert it with `xfusion convert-weights` (or napari_xfusion.models.weights.convert_pth; "
    "it loads the checkpoint with torch.load(weights_only=True), which runs no code)"
)


class WeightsError(ValueError):
    """A weights file that cannot be used, with the reason and what to do about it."""


def bundled_weights_path(arch: str) -> Path:
    """Path of the trained weights bundled for ``arch`` (``"stf"`` or ``"edvr"``).

    The file may not exist (no trained weights are bundled yet); check ``.exists()``.
    """
    if arch not in MODEL_ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; use one of {', '.join(MODEL_ARCHS)}.")
    return BUNDLED_DIR / f"{arch}_default.safetensors"


def save_weights(
    model: nn.Module,
    path: str | os.PathLike,
    extra_metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a network's weights and config to a safetensors file.

    The file is written next to its destination and renamed into place, so an interrupted
    save never leaves a truncated weights file behind.

    Parameters
    ----------
    model : EDVRSTF or EDVR
        Any module with a ``config`` attribute holding its :class:`ModelConfig`.
    path : str or PathLike
        Destination, conventionally ``*.safetensors``.
    extra_metadata : mapping of str to str, optional
        Extra fields (e.g. training data, iterations); may not use the reserved keys.
    dtype : torch.dtype, optional
        Store floating-point tensors in this type (e.g. ``torch.float16`` halves the file);
        default: as they are.

    Returns
    -------
    Path
        The written file.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError(
            "save_weights needs a network built from a ModelConfig (EDVRSTF, EDVR or "
            "build_model(config)); this module has no .config."
        )
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": json.dumps(config.to_dict(), sort_keys=True),
    }
    for key, value in (extra_metadata or {}).items():
        if key in RESERVED_KEYS:
            raise ValueError(f"extra metadata may not set the reserved key {key!r}.")
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(
                f"metadata keys and values must be strings, got {key!r}: {value!r}; "
                "convert values with str() or json.dumps()."
            )
        metadata[key] = value

    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _check_container(path: Path) -> None:
    """Raise WeightsError unless ``path`` looks like a complete safetensors file."""
    if not path.exists():
        if path.resolve().parent == BUNDLED_DIR:
            raise WeightsError(
                f"trained weights are not bundled yet ({path.name} is missing from the "
                "package); pass a weights file of your own, or train one with the "
                "napari_xfusion.training.train module."
            )
        raise WeightsError(f"no weights file at {path}: check the path.")
    if not path.is_file():
        raise WeightsError(f"{path} is not a file: give the path of a .safetensors weights file.")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        raise WeightsError(
            f"{path} is only {size} bytes: it is empty or truncated; copy it again."
        )
    header_len = int.from_bytes(head[:8], "little")
    opens_json = head[8:9] == b"{"
    zip_magic = head.startswith(b"PK\x03\x04")  # torch.save since PyTorch 1.6
    pickle_magic = head[0] == 0x80 and 2 <= head[1] <= 5  # older torch.save, plain pickle
    if not opens_json and (zip_magic or pickle_magic):
        raise WeightsError(
            f"{path} looks like a PyTorch pickle checkpoint (.pth), not a safetensors "
            f"weights file; {_CONVERT_HINT}."
        )
    if not opens_json or header_len > _MAX_HEADER_BYTES:
        raise WeightsError(
            f"{path} is not a safetensors weights file; give a file written by "
            "napari-xfusion (save_weights), or convert a PyTorch checkpoint: "
            f"{_CONVERT_HINT}."
        )
    if 8 + header_len > size:
        raise WeightsError(
            f"{path} is truncated ({size} bytes, its header alone needs {8 + header_len}); "
            "copy or download it again."
        )


def _open_metadata(path: Path) -> tuple[dict[str, str], list[str]]:
    """Metadata and tensor names of a checked safetensors file."""
    _check_container(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), list(f.keys())
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError
        raise WeightsError(
            f"{path} is corrupt or truncated ({exc}); copy or download it again."
        ) from exc


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a napari-xfusion weights file, validated.

    Raises
    ------
    WeightsError
        If the file is missing, not safetensors, damaged, or lacks the napari-xfusion fields.
    """
    path = Path(path)
    metadata, _ = _open_metadata(path)
    if "format" not in metadata or "model_config" not in metadata:
        raise WeightsError(
            f"{path} is a safetensors file without napari-xfusion metadata (format, "
            "model_config), so the network it belongs to is unknown; convert it with "
            "convert_pth(src, dst, config), giving the ModelConfig it was trained with."
        )
    if metadata["format"] != FORMAT:
        raise WeightsError(
            f"{path} is a {metadata['format']!r} file, not napari-xfusion weights ({FORMAT!r})."
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise WeightsError(
            f"{path} has weights format version {metadata.get('format_version')!r}; this "
            f"napari-xfusion reads version {FORMAT_VERSION}: update napari-xfusion."
        )
    return metadata


def _config_from_metadata(path: Path, metadata: Mapping[str, str]) -> ModelConfig:
    try:
        return ModelConfig.from_dict(json.loads(metadata["model_config"]))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise WeightsError(f"{path} has an unusable model_config in its metadata: {exc}") from exc


def _require_arch(path: Path, config: ModelConfig, arch: str) -> None:
    if config.arch != arch:
        raise WeightsError(
            f"{path.name} holds {config.arch!r} weights, not {arch!r}: use the method "
            f"{config.arch!r} with it, or another weights file."
        )


def check_weights_file(
    path: str | os.PathLike | None, arch: str, scale: int | None = None
) -> Path:
    """The weights file a network method will load, checked before any work starts.

    Parameters
    ----------
    path : str, PathLike or None
        The file; None for the weights bundled for ``arch``.
    arch : {"stf", "edvr"}
        The network the method runs.
    scale : int, optional
        The scale of the time model, which the network must upsample by.

    Returns
    -------
    Path
        The file to load.

    Raises
    ------
    WeightsError
        When no weights are bundled for ``arch``, or the file is missing, damaged, holds
        another architecture or upsamples by another factor; the message says what to do.
    """
    resolved = Path(path) if path is not None else bundled_weights_path(arch)
    if path is None and not resolved.exists():
        raise WeightsError(
            f"no trained {arch!r} weights are bundled with this installation: give a weights "
            "file, or choose a method that needs none (transfer, bayes or bicubic)."
        )
    config = _config_from_metadata(resolved, read_metadata(resolved))
    _require_arch(resolved, config, arch)
    if scale is not None and config.scale != scale:
        raise WeightsError(
            f"{resolved.name} upsamples {config.scale}x but the scale is set to {scale}: set "
            f"the scale to {config.scale}."
        )
    return resolved


def _describe(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _load_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str, fix: str
) -> None:
    """Load ``state`` strictly; a WeightsError names the first mismatched keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected {_describe(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatch for {_describe(wrong_shape, 3)} (file vs network)")
    if problems:
        config = getattr(model, "config", None)
        raise WeightsError(
            f"the tensors in {source} do not fit the network {config}: "
            + "; ".join(problems)
            + f". {fix}"
        )
    model.load_state_dict(state, strict=True)


def load_weights(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    arch: str | None = None,
    deform_backend: Backend = "auto",
) -> nn.Module:
    """Build the network stored in a weights file and load its weights.

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`save_weights` or :func:`convert_pth`.
    device : str or torch.device
        Where to put the network.
    arch : {"stf", "edvr"}, optional
        The architecture the caller needs; a file for the other one is an error.
    deform_backend : {"auto", "torch", "torchvision"}
        Deformable-convolution implementation.

    Returns
    -------
    EDVRSTF or EDVR
        In eval mode, with ``.config`` set from the file and ``.metadata`` holding all the
        file's metadata.

    Raises
    ------
    WeightsError
        With the reason and the fix: missing file, pickle checkpoint, damaged file, missing
        metadata, another architecture, tensors that do not fit, or NaN/infinite values.
    """
    path = Path(path)
    metadata = read_metadata(path)
    config = _config_from_metadata(path, metadata)
    if arch is not None:
        _require_arch(path, config, arch)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise WeightsError(f"{path} is corrupt or truncated ({exc}); copy it again.") from exc
    broken = [name for name, tensor in state.items() if not torch.isfinite(tensor).all()]
    if broken:
        raise WeightsError(
            f"{path} holds NaN or infinite values in {len(broken)} tensor(s) (first: "
            f"{broken[0]}): a training run diverged or the file is damaged; use other weights."
        )
    model = build_model(config, deform_backend)
    _load_state(
        model,
        state,
        str(path),
        "Its tensors do not match the model_config in its own metadata: the file was "
        "edited or written by other software; re-export it with save_weights.",
    )
    model.metadata = dict(metadata)
    return model.to(device).eval()


#: 1x1 convolutions of TSA fusion over the features of all frames stacked frame by frame.
_STACKED_FRAME_CONVS = ("fusion.feat_fusion.weight", "fusion.spatial_attn1.weight")


def init_from(target: nn.Module, source: nn.Module) -> list[str]:
    """Start ``target`` from the trained weights of a related network ``source``.

    Transfer learning between sizes, options and architectures of the same family: every
    tensor whose name and shape agree is copied. Beyond that, an EDVR started from an
    EDVR-STF takes the LR frames' share of the 1x1 fusion convolutions over stacked frames
    (the LR frames come first), and the output layer ``conv_last`` is not copied when one
    network adds its residual to a base with keyframe detail and the other to one without
    (``ModelConfig.adds_keyframe_detail``): it would add a residual meant for another base.
    Between the two keyframe bases it is kept, since both start from the same detail
    transfer. Everything else keeps its initialization; the new
    heads of the options start at zero, so the started network behaves like its source
    where the architectures agree.

    Parameters
    ----------
    target : EDVRSTF or EDVR
        The network to fill (changed in place).
    source : EDVRSTF or EDVR
        The trained network.

    Returns
    -------
    list of str
        Names of the tensors of ``target`` left at their initialization.
    """
    theirs = source.state_dict()
    skip = set()
    if source.config.adds_keyframe_detail != target.config.adds_keyframe_detail:
        skip = {"conv_last.weight", "conv_last.bias"}
    fresh = []
    with torch.no_grad():
        for name, tensor in target.state_dict().items():
            value = theirs.get(name)
            if name in skip or value is None:
                fresh.append(name)
            elif value.shape == tensor.shape:
                tensor.copy_(value)
            elif (
                name in _STACKED_FRAME_CONVS
                and value.shape[0] == tensor.shape[0]
                and value.shape[1] > tensor.shape[1]
                and value.shape[2:] == tensor.shape[2:]
            ):
                tensor.copy_(value[:, : tensor.shape[1]])
            else:
                fresh.append(name)
    return fresh


def _read_checkpoint(src: Path, param_key: str | None) -> dict[str, torch.Tensor]:
    """The state dict inside a .pth (or metadata-less .safetensors) checkpoint."""
    if not src.is_file():
        raise WeightsError(f"no checkpoint file at {src}: check the path.")
    with src.open("rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":  # a bare safetensors state dict
        try:
            return load_file(str(src), device="cpu")
        except Exception as exc:
            raise WeightsError(f"{src} is a damaged safetensors file ({exc}).") from exc
    try:
        data = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{src} holds Python objects other than tensors, which are not loaded because "
            f"that could run code ({exc}); re-save just the state dict with "
            "torch.save(model.state_dict(), path) where the file was made."
        ) from exc
    except Exception as exc:
        raise WeightsError(f"{src} is not a readable PyTorch checkpoint ({exc}).") from exc

    if isinstance(data, dict) and param_key is not None:
        if param_key not in data:
            raise WeightsError(
                f"{src} has no entry {param_key!r}; its top-level keys are {_describe(list(data))}."
            )
        data = data[param_key]
    elif isinstance(data, dict):
        # BasicSR keeps the averaged weights under params_ema next to params.
        for key in ("params_ema", "params", "state_dict", "model"):
            if key in data and isinstance(data[key], dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(
            f"{src} does not hold a state dict of tensors; pass param_key= naming the "
            "entry that does."
        )
    # Checkpoints saved from DataParallel / DistributedDataParallel prefix every name.
    return {k.removeprefix("module."): v for k, v in data.items()}


def convert_pth(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    config: ModelConfig,
    key_map: Mapping[str, str] | None = None,
    param_key: str | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> Path:
    """Convert a PyTorch checkpoint into a napari-xfusion weights file.

    The checkpoint is read with ``torch.load(weights_only=True)``, which loads tensors and
    plain containers but runs no code. BasicSR wrappings (``params_ema``, ``params``) and
    ``state_dict`` / ``model`` entries are unwrapped, and ``module.`` prefixes removed. Our
    parameter names are BasicSR's, so the paper's checkpoints need no renaming; if some
    differ, ``key_map`` renames name prefixes.

    Parameters
    ----------
    src : str or PathLike
        A ``.pth`` checkpoint (or a safetensors state dict without our metadata).
    dst : str or PathLike
        The weights file to write.
    config : ModelConfig
        The network the checkpoint belongs to (architecture and size).
    key_map : mapping of str to str, optional
        ``{old_prefix: new_prefix}`` applied to checkpoint names, e.g.
        ``{"hr_conv_first.": "hr_feature.conv1."}``.
    param_key : str, optional
        Entry of the checkpoint holding the state dict, if not one of the usual ones.
    extra_metadata : mapping of str to str, optional
        Stored with the weights; ``converted_from`` (the source file name) is added.

    Returns
    -------
    Path
        The written file.
    """
    src = Path(src)
    state = _read_checkpoint(src, param_key)
    if key_map:
        renamed = {}
        for name, tensor in state.items():
            for old, new in key_map.items():
                if name.startswith(old):
                    name = new + name[len(old) :]
                    break
            renamed[name] = tensor
        state = renamed
    model = build_model(config, deform_backend="torch")
    _load_state(
        model,
        state,
        str(src),
        "The checkpoint is for another architecture or size: pass the ModelConfig it was "
        "trained with, or rename differing parameters with key_map.",
    )
    return save_weights(
        model, dst, extra_metadata={"converted_from": src.name, **(extra_metadata or {})}
    )
