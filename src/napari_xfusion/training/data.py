"""Paired training samples for the fusion networks, drawn with the paper's recipe.

Every sample is cut from one full-rate HR sequence (normalized to [0, 1]) as in Tang et al.
2024, section 7.1.2:

* an output time ``t`` and an LR separation ``r`` drawn uniformly from ``{1, 2, 3}``; the LR
  frames are ``t - r, t, t + r`` and the target is the HR frame at ``t``;
* HR keyframes at ``t - r * a`` and ``t + r * b``, ``a`` and ``b`` drawn uniformly from
  ``1..20``. Beyond the paper, a share of samples has the output time on a keyframe (one
  HR input is the target itself) or both keyframes on one side of it, because a fused
  sequence contains such frames: at its keyframes and after its last keyframe. All times
  are clamped to the sequence, as :class:`~napari_xfusion.timeline.Timeline` clamps them;
* an HR crop of ``4 * lr_crop`` pixels (256 in the paper) at one place in all five frames
  or, beyond the paper, for a share of samples (``pan_fraction``) at a place that moves
  along a straight line in time, as a panning camera sees a still scene: most training
  scenes are filmed by a still camera, and a moving one is where keyframes and LR frames
  disagree most;
* the same random flips and transposition (a 90-degree rotation with a flip) for all
  frames of a sample;
* LR frames made by 4 x 4 mean binning of the HR crops, then Poisson noise with one
  blank-scan factor per sample, ``b0 = 10 ** U(1, 7)``: ``noisy = Poisson(x * b0) / b0``
  (:func:`napari_xfusion.simulate.poisson_noise`); a share of samples stays noise-free.
  Beyond the paper, for a share of samples (``optics_fraction``) the crops are first
  blurred and shifted a little (:func:`napari_xfusion.simulate.lr_optics`), as a second
  camera's optics and its registration hand them over: the LR frames are then never the
  exact binning of the HR frames, as on a real two-camera recording. After the noise, such
  a sample's LR frames pass through the filter that ``xfusion fuse`` would fit to them
  (:func:`napari_xfusion.lr_match.fit_lr_filter`, on its three LR frames and the HR frames
  of their times, applied where the pipeline would apply it), so that the network learns
  the LR frames as the pipeline hands them over: a blur the filter could not undo and
  noise it sharpened.

Sequences live in memory as uint8 ``(frames, y, x)`` arrays, so a batch is numpy slicing
of a few megabytes: :meth:`PairSampler.sample_batch` cuts the crops, bins them, adds noise
with torch and warps the keyframes of a share of the samples (``aligned_fraction``);
training calls it in loader threads on the CPU, so that the training thread never waits
for the warping (tens of milliseconds a sample), and moves the batch to its device.
Quantizing [0, 1] to 8 bits limits a frame's PSNR to about 59 dB, far above the 35 to 40
dB the networks reach, and halves memory and transfers against 16 bits.

Sources of sequences: synthetic LPBF scenes with randomized settings
(:func:`synthetic_sequences`), folders of ``.npy`` / ``.tif`` stacks
(:func:`load_folder`) and the ``.npz`` files of ``scripts/build_training_data.py``
(:func:`load_sequence_file`). Validation sequences are kept apart by name (files) or by
seed (synthetic scenes: training seeds are even, validation seeds odd).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..alignment import align_keyframes
from ..config import NormalizationConfig, OpticsConfig, TimeModel, TrainConfig
from ..lr_match import fit_lr_filter
from ..normalize import fit_normalization
from ..simulate import lr_optics
from ..synthetic import LPBFScene
from ..timeline import Timeline, keyframe_count, keyframe_position, lr_indices

#: Spatial scale between the LR and HR grids.
SCALE = 4
#: Binning of the coarse frames that locate motion for motion-biased crops.
COARSE = 8
#: Frames of one sample, in this order: LR times t - r, t, t + r, then HR keyframes k0, k1.
#: The target is frame 1 (the HR frame at t, whose binning is the middle LR frame).
FRAMES = 5
#: Sample kinds recorded in :class:`BatchRecord`.
BRACKET, KEYFRAME, OUTSIDE = 0, 1, 2
#: Groups of sequences; the sampler balances them with ``real_fraction``.
SYNTHETIC, REAL = "synthetic", "real"
#: File suffixes :func:`load_folder` reads.
STACK_SUFFIXES = (".npy", ".tif", ".tiff")
#: Format tag of the files of :func:`save_sequence_file`.
FILE_FORMAT = "napari-xfusion-training-sequences"
#: Frames normalized and quantized at a time when loading a stack (bounds float memory).
_CHUNK = 32


@dataclass(frozen=True)
class Sequence:
    """One full-rate HR sequence held in memory for sampling.

    Attributes
    ----------
    name : str
        Unique name (file stem or synthetic seed); used to keep validation apart.
    frames : ndarray, shape (n, y, x), uint8
        Intensities in [0, 1] stored as ``value * 255``.
    group : str
        ``"synthetic"`` or ``"real"``.
    coarse : ndarray, shape (n, y // 8, x // 8), float32
        8 x 8 means of the frames, to find where they change.
    """

    name: str
    frames: np.ndarray
    group: str
    coarse: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.frames.shape)


def quantize(frames: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 (``round(x * 255)``, clipped)."""
    return np.clip(np.rint(np.asarray(frames, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def distinct_frames(frames: np.ndarray) -> np.ndarray:
    """The frames that differ from the one before (the first is kept).

    Some videos repeat frames (a low frame rate padded to a higher one). On such a video
    unseen frames are exact copies of keyframes, which no real recording has: a score on
    them flatters methods that copy keyframes, and training on them teaches copying.

    Parameters
    ----------
    frames : ndarray, shape (n, ...)

    Returns
    -------
    ndarray
        ``frames`` without the frames equal to their predecessor.
    """
    frames = np.asarray(frames)
    changed = np.any(frames[1:] != frames[:-1], axis=tuple(range(1, frames.ndim)))
    return frames[np.concatenate([[True], changed])]


def make_sequence(name: str, frames: np.ndarray, group: str) -> Sequence:
    """Wrap a uint8 stack ``(n, y, x)`` as a :class:`Sequence` and compute its coarse frames.

    Parameters
    ----------
    name : str
        Unique name of the sequence.
    frames : ndarray, shape (n, y, x), uint8
        The quantized frames (see :func:`quantize`).
    group : str
        ``"synthetic"`` or ``"real"``.

    Returns
    -------
    Sequence
    """
    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 3:
        raise ValueError(
            f"sequence {name!r}: expected uint8 frames (n, y, x), got {frames.dtype} "
            f"{frames.shape}; quantize [0, 1] floats with quantize()."
        )
    if group not in (SYNTHETIC, REAL):
        raise ValueError(f"sequence group must be {SYNTHETIC!r} or {REAL!r}, got {group!r}.")
    n, y, x = frames.shape
    if n < 2 or y < 4 * COARSE or x < 4 * COARSE:
        raise ValueError(
            f"sequence {name!r} of shape {frames.shape} is too small to train on: use at "
            f"least 2 frames of {4 * COARSE} x {4 * COARSE} pixels."
        )
    cy, cx = y // COARSE, x // COARSE
    coarse = np.empty((n, cy, cx), dtype=np.float32)
    for i in range(0, n, _CHUNK):
        block = frames[i : i + _CHUNK, : cy * COARSE, : cx * COARSE].astype(np.float32)
        coarse[i : i + _CHUNK] = block.reshape(-1, cy, COARSE, cx, COARSE).mean(axis=(2, 4))
    return Sequence(name, frames, group, coarse / 255.0)


def normalize_stack(stack, name: str) -> np.ndarray:
    """Normalize a raw stack as the paper prepares its data and quantize it to uint8.

    The 0.35th and 99.65th percentiles are clipped and the result min-max scaled over the
    whole sequence (:func:`napari_xfusion.normalize.fit_normalization`).

    Parameters
    ----------
    stack : array_like, shape (n, y, x)
        Frames of any integer or float dtype (numpy array or memory map).
    name : str
        The sequence's name, for error messages.

    Returns
    -------
    ndarray, shape (n, y, x), uint8
    """
    if getattr(stack, "ndim", None) != 3:
        raise ValueError(
            f"{name}: expected a stack (frames, y, x), got shape {getattr(stack, 'shape', '?')}."
        )
    norm = fit_normalization(stack, NormalizationConfig())
    out = np.empty(stack.shape, dtype=np.uint8)
    for i in range(0, len(stack), _CHUNK):
        out[i : i + _CHUNK] = quantize(norm.apply(stack[i : i + _CHUNK]))
    return out


# -- synthetic scenes --------------------------------------------------------------------


def synthetic_seed(index: int, base_seed: int, validation: bool) -> int:
    """Scene seed of synthetic sequence ``index``: even for training, odd for validation.

    The parity keeps the two sets disjoint for every ``base_seed`` and count (as long as
    fewer than 100,000 sequences are made per base seed).
    """
    return 2 * (base_seed * 100_000 + index) + int(validation)


def synthetic_scene(seed: int, n_frames: int) -> tuple[LPBFScene, int]:
    """A synthetic LPBF scene with settings drawn from ``seed``, and its first frame.

    Sizes, laser speed, keyhole depth, event rates, blur, detector noise and phase contrast
    vary from scene to scene so that the networks meet a spread of feature sizes, speeds
    and contrasts. The first frame is drawn too, so that sequences start at different
    laser positions (some span the change to a fresh powder layer).

    Parameters
    ----------
    seed : int
        Scene seed (see :func:`synthetic_seed`).
    n_frames : int
        Frames the sequence will have.

    Returns
    -------
    scene : LPBFScene
    start : int
        Index of the first frame to render.
    """
    rng = np.random.default_rng([seed, 7])
    height = int(rng.choice([256, 288, 320, 384]))
    width = int(rng.choice([384, 448, 512, 640, 768]))
    start = int(rng.integers(0, 300))
    scene = LPBFScene(
        height,
        width,
        start + n_frames,
        seed,
        phase_contrast=bool(rng.random() < 0.5),
        scan_speed=float(rng.uniform(2.0, 8.0)),
        keyhole_depth=float(rng.uniform(0.10, 0.25) * height),
        spatter_rate=float(rng.uniform(0.2, 1.5)),
        collapse_rate=float(rng.uniform(0.01, 0.08)),
        pore_rate=float(rng.uniform(0.01, 0.05)),
        gravity=float(rng.uniform(0.02, 0.1)),
        blur=float(rng.uniform(0.4, 1.2)),
        noise=float(rng.uniform(0.0, 0.01)) if rng.random() < 0.5 else 0.0,
    )
    return scene, start


def _render_synthetic(seed: int, n_frames: int) -> Sequence:
    scene, start = synthetic_scene(seed, n_frames)
    frames = np.stack([scene.frame(t) for t in range(start, start + n_frames)])
    name = f"synthetic-{seed}"
    return make_sequence(name, normalize_stack(frames, name), SYNTHETIC)


def synthetic_sequences(
    count: int,
    n_frames: int,
    base_seed: int = 0,
    validation: bool = False,
    workers: int | None = None,
) -> list[Sequence]:
    """Render ``count`` synthetic LPBF sequences with randomized scenes.

    Frames are normalized like real data (percentile clip, min-max) so that the networks
    see the same intensity statistics in training and at inference.

    Parameters
    ----------
    count : int
        Number of sequences.
    n_frames : int
        Frames per sequence.
    base_seed : int
        Seed of the set; scene seeds follow :func:`synthetic_seed`.
    validation : bool
        Make the held-out validation set (odd scene seeds) instead of the training set.
    workers : int, optional
        Rendering threads (default: the CPU count, at most ``count``).

    Returns
    -------
    list of Sequence
        Named ``synthetic-<scene seed>``.
    """
    seeds = [synthetic_seed(i, base_seed, validation) for i in range(count)]
    if not seeds:
        return []
    workers = workers or min(len(seeds), os.cpu_count() or 1)
    # Rendering is numpy and scipy filtering, which release the GIL: threads scale.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: _render_synthetic(s, n_frames), seeds))


# -- sequences from files ----------------------------------------------------------------


def _read_stack(path: Path):
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r", allow_pickle=False)
    import tifffile

    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
    return np.squeeze(data) if data.ndim > 3 else data


def load_folder(
    folder: str | os.PathLike, validation_names: tuple[str, ...] = ()
) -> tuple[list[Sequence], list[Sequence]]:
    """Load every ``.npy`` / ``.tif`` stack of a folder, normalized, as real sequences.

    Parameters
    ----------
    folder : str or PathLike
        Folder of stacks ``(frames, y, x)`` of any integer or float dtype.
    validation_names : tuple of str
        File names without suffix to hold out for validation.

    Returns
    -------
    train, validation : list of Sequence
        Named by file stem.

    Raises
    ------
    ValueError
        When the folder has no stacks, a name is given twice, or a validation name matches
        no file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"real data folder {folder} does not exist: check the path.")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in STACK_SUFFIXES)
    if not paths:
        raise ValueError(
            f"no .npy or .tif stacks in {folder}: put one stack (frames, y, x) per file there."
        )
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f"{folder} holds several stacks with one name (e.g. a.npy and a.tif).")
    unknown = sorted(set(validation_names) - set(stems))
    if unknown:
        raise ValueError(
            f"validation sequence(s) {', '.join(unknown)} are not in {folder}; its stacks are "
            f"{', '.join(stems)}."
        )
    train, validation = [], []
    for path in paths:
        frames = normalize_stack(_read_stack(path), str(path))
        sequence = make_sequence(path.stem, frames, REAL)
        (validation if path.stem in validation_names else train).append(sequence)
    return train, validation


def save_sequence_file(
    path: str | os.PathLike,
    train: list[Sequence],
    validation: list[Sequence],
    info: dict | None = None,
) -> Path:
    """Write training and validation sequences to one compressed ``.npz`` file.

    Frames are stored as uint8 under ``train/<name>`` and ``val/<name>``; ``info`` (JSON)
    holds the groups of the sequences and any description given.

    Returns
    -------
    Path
        The written file.
    """
    names = [s.name for s in train + validation]
    if len(set(names)) != len(names):
        raise ValueError("sequence names must be unique across training and validation.")
    meta = dict(info or {})
    meta["format"] = FILE_FORMAT
    meta["groups"] = {s.name: s.group for s in train + validation}
    arrays = {f"train/{s.name}": s.frames for s in train}
    arrays.update({f"val/{s.name}": s.frames for s in validation})
    arrays["info"] = np.array(json.dumps(meta, sort_keys=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def load_sequence_file(path: str | os.PathLike) -> tuple[list[Sequence], list[Sequence], dict]:
    """Read a file of :func:`save_sequence_file`.

    Returns
    -------
    train, validation : list of Sequence
    info : dict
        The file's description.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"no training data file at {path}: build one with "
            "`python scripts/build_training_data.py`."
        )
    with np.load(path, allow_pickle=False) as data:
        if "info" not in data.files:
            raise ValueError(f"{path} is not a training data file (it has no 'info' entry).")
        info = json.loads(str(data["info"]))
        if info.get("format") != FILE_FORMAT:
            raise ValueError(f"{path} is not a napari-xfusion training data file.")
        groups = info["groups"]
        train, validation = [], []
        for key in data.files:
            part, _, name = key.partition("/")
            if part in ("train", "val"):
                seq = make_sequence(name, data[key], groups.get(name, REAL))
                (train if part == "train" else validation).append(seq)
    return train, validation, info


def training_sequences(config: TrainConfig) -> tuple[list[Sequence], list[Sequence], dict]:
    """All training and validation sequences a :class:`TrainConfig` names.

    Synthetic scenes are rendered (training seeds from ``config.seed``), then the data file
    and the real-data folder are read.

    Returns
    -------
    train, validation : list of Sequence
    description : dict
        Names and frame counts of the sources, for logs and weight metadata.

    Raises
    ------
    ValueError
        When two sequences share a name, so that held-out data could be mistaken for
        training data.
    """
    train = synthetic_sequences(config.synthetic_sequences, config.synthetic_frames, config.seed)
    validation = synthetic_sequences(
        config.validation_sequences, config.synthetic_frames, config.seed, validation=True
    )
    if config.data_file:
        file_train, file_val, _ = load_sequence_file(config.data_file)
        train += file_train
        validation += file_val
    if config.real_dir:
        real_train, real_val = load_folder(config.real_dir, config.real_validation)
        train += real_train
        validation += real_val
    names = [s.name for s in train + validation]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"sequence name(s) {', '.join(duplicates)} occur more than once across the data "
            "sources: rename the files so that validation data cannot enter training."
        )
    if not train:
        raise ValueError("no training sequences: the data sources are empty.")

    def summary(seqs: list[Sequence]) -> list[str]:
        return [f"{s.name} ({len(s)}x{s.shape[1]}x{s.shape[2]})" for s in seqs]

    description = {"train": summary(train), "validation": summary(validation)}
    return train, validation, description


# -- batches -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRecord:
    """What was drawn for each sample of a batch (arrays of length B).

    Attributes
    ----------
    sequence : ndarray of int
        Index into the sampler's sequences.
    t, separation, k0, k1 : ndarray of int
        Output time, LR separation ``r`` and the keyframe times (after clamping).
    kind : ndarray of int
        :data:`BRACKET`, :data:`KEYFRAME` or :data:`OUTSIDE` (as drawn, before clamping).
    y, x : ndarray of int
        Top-left corner of the HR crop in the sequence's frames.
    flip_y, flip_x, transpose : ndarray of bool
        Augmentations, applied in this order to every frame of the sample.
    b0 : ndarray of float
        Blank-scan factor of the LR noise; ``inf`` for noise-free samples.
    noise_seed : int
        Seed of the torch generator that draws the batch's Poisson noise.
    aligned : ndarray of bool
        Samples whose keyframes are warped onto their LR ``t`` (``aligned_fraction``).
    pan : ndarray of float, shape (B, 2)
        Velocity ``(y, x)`` of the crop window in HR pixels per frame (``pan_fraction``);
        the crop of frame ``f`` lies ``trunc(pan * (f - t))`` from ``(y, x)``. Zero for
        samples cut at one place.
    optics : ndarray of float, shape (B, 3)
        Blur and shift ``(dy, dx)`` in HR pixels of the LR camera's optics
        (``optics_fraction``, :func:`~napari_xfusion.simulate.lr_optics`); zero for LR
        frames binned from the HR crops exactly.
    """

    sequence: np.ndarray
    t: np.ndarray
    separation: np.ndarray
    k0: np.ndarray
    k1: np.ndarray
    kind: np.ndarray
    y: np.ndarray
    x: np.ndarray
    flip_y: np.ndarray
    flip_x: np.ndarray
    transpose: np.ndarray
    b0: np.ndarray
    noise_seed: int
    aligned: np.ndarray
    pan: np.ndarray
    optics: np.ndarray


@dataclass(frozen=True)
class TrainingBatch:
    """Network inputs and target of a batch, on the training device.

    Attributes
    ----------
    lr : Tensor, shape (B, 3, 1, h, w)
        LR frames ``t - r, t, t + r`` (noisy where ``record.b0`` is finite).
    hr : Tensor, shape (B, 2, 1, 4h, 4w)
        HR keyframes ``k0, k1``.
    target : Tensor, shape (B, 1, 4h, 4w)
        The HR frame at ``t``.
    position : Tensor, shape (B,)
        Where ``t`` lies between the keyframes
        (:func:`~napari_xfusion.timeline.keyframe_position`).
    record : BatchRecord or None
        The draws, for inspection; None for fixed validation samples.
    """

    lr: torch.Tensor
    hr: torch.Tensor
    target: torch.Tensor
    position: torch.Tensor
    record: BatchRecord | None

    def to(self, device: torch.device | str) -> "TrainingBatch":
        """The same batch on ``device``."""
        return TrainingBatch(
            self.lr.to(device), self.hr.to(device), self.target.to(device),
            self.position.to(device), self.record,
        )

    def __reduce__(self):
        # Pickled as numpy arrays (a batch from a loader process, training.train): torch
        # would hand tensors over in shared memory, which containers often keep small.
        arrays = (self.lr, self.hr, self.target, self.position)
        return _training_batch, (*(t.numpy() for t in arrays), self.record)


def _training_batch(lr, hr, target, position, record) -> TrainingBatch:
    """A :class:`TrainingBatch` of the arrays of a pickled one."""
    return TrainingBatch(*(torch.from_numpy(a) for a in (lr, hr, target, position)), record)


def augment(frames: np.ndarray, flip_y: bool, flip_x: bool, transpose: bool) -> np.ndarray:
    """The same flips and transposition of every frame ``(n, y, x)`` of a sample.

    Together they give all eight rotations and reflections of a square crop.
    """
    if flip_y:
        frames = frames[:, ::-1]
    if flip_x:
        frames = frames[:, :, ::-1]
    if transpose:
        frames = frames.transpose(0, 2, 1)
    return frames


def frame_times(t: int, r: int, k0: int, k1: int, n: int) -> list[int]:
    """Frame indices of a sample in :data:`FRAMES` order, LR times clamped to the sequence."""
    return [*lr_indices(t, r, n), k0, k1]


def pan_shifts(velocity: np.ndarray, t: int, times: list[int]) -> np.ndarray:
    """Offsets ``(len(times), 2)`` of a panned sample's crops from the crop at ``t``.

    Truncated towards zero, so that the window never travels farther than its velocity
    carries it (:meth:`PairSampler._pan_velocity` keeps that inside the frame).
    """
    return np.trunc(np.outer(np.asarray(times) - t, velocity)).astype(int)


def make_batch(
    frames: np.ndarray,
    position: np.ndarray,
    b0: np.ndarray,
    noise_seed: int,
    device: torch.device | str = "cpu",
    record: BatchRecord | None = None,
) -> TrainingBatch:
    """Bin and add noise to HR sample frames, on ``device``.

    Parameters
    ----------
    frames : ndarray, shape (B, 5, H, W), uint8
        Per sample: HR frames at ``t - r, t, t + r``, then keyframes ``k0, k1``.
    position : ndarray, shape (B,)
        Where ``t`` lies between ``k0`` and ``k1`` per sample (:func:`sample_position`).
    b0 : ndarray, shape (B,)
        Blank-scan factor per sample; ``inf`` for no noise.
    noise_seed : int
        Seed of the Poisson draws.
    device : torch.device or str
        Where the tensors are made.
    record : BatchRecord, optional
        Stored in the batch.

    Returns
    -------
    TrainingBatch
    """
    hr = torch.from_numpy(frames).to(device, non_blocking=True).float().div_(255.0)
    seen = hr[:, :3]
    if record is not None and record.optics.any():
        seen = seen.clone()
        for i in np.flatnonzero(record.optics.any(axis=1)):
            blur, dy, dx = record.optics[i]
            optics = OpticsConfig(blur=float(blur), shift=(float(dy), float(dx)))
            seen[i] = torch.from_numpy(lr_optics(frames[i, :3] / np.float32(255.0),
                                                 optics)).to(seen.device)
    lr = F.avg_pool2d(seen, SCALE)
    b0_t = torch.as_tensor(np.asarray(b0, dtype=np.float64), dtype=torch.float32, device=device)
    noisy = torch.isfinite(b0_t).view(-1, 1, 1, 1)
    if bool(noisy.any()):
        scale = torch.where(noisy, b0_t.view(-1, 1, 1, 1), torch.ones_like(b0_t).view(-1, 1, 1, 1))
        generator = torch.Generator(device=device).manual_seed(int(noise_seed))
        counts = torch.poisson(lr.clamp(min=0) * scale, generator=generator)
        lr = torch.where(noisy, counts / scale, lr)
    if record is not None and record.optics.any():
        lr = _matched_optics(lr, frames, np.flatnonzero(record.optics.any(axis=1)))
    return TrainingBatch(
        lr=lr.unsqueeze(2),
        hr=hr[:, 3:].unsqueeze(2).contiguous(),
        target=hr[:, 1:2].contiguous(),
        position=torch.as_tensor(np.asarray(position, dtype=np.float32), device=device),
        record=record,
    )


def _matched_optics(lr: torch.Tensor, frames: np.ndarray, samples: np.ndarray) -> torch.Tensor:
    """``lr`` with the given samples' frames filtered as the pipeline matches an LR camera
    to the keyframes' binning (:func:`~napari_xfusion.lr_match.fit_lr_filter` on the
    sample's three LR frames and the HR frames of their times), where it would.

    Shapes: lr (B, 3, h, w), frames (B, 5, 4h, 4w) uint8 -> (B, 3, h, w).
    """
    lr = lr.clone()
    pairs = [(k, k) for k in range(3)]
    for i in samples:
        seen = lr[i].cpu().numpy()
        lr_filter = fit_lr_filter(seen, frames[i, :3] / np.float32(255.0), pairs, SCALE)
        if lr_filter.needed:
            lr[i] = torch.from_numpy(lr_filter.apply(seen)).to(lr.device)
    return lr


def sample_position(t: int, k0: int, k1: int) -> float:
    """:func:`~napari_xfusion.timeline.keyframe_position` of a sample, whose keyframes may
    coincide after clamping to a short sequence (position 0 then)."""
    return keyframe_position(t, k0, k1) if k1 > k0 else 0.0


class PairSampler:
    """Draws training batches from sequences in memory with the paper's recipe.

    Parameters
    ----------
    sequences : list of Sequence
        Training sequences; each frame must be at least ``4 * config.lr_crop`` pixels in y
        and x.
    config : TrainConfig
        The crop size and the data recipe (separations, keyframe offsets, noise, shares of
        keyframe, one-sided, noise-free and motion-centred samples, real-data share).

    Examples
    --------
    >>> sampler = PairSampler(synthetic_sequences(2, 64), TrainConfig(lr_crop=32))
    >>> batch = sampler.sample_batch(np.random.default_rng(0), 4)
    >>> batch.lr.shape, batch.hr.shape, batch.target.shape
    (torch.Size([4, 3, 1, 32, 32]), torch.Size([4, 2, 1, 128, 128]), torch.Size([4, 1, 128, 128]))
    """

    def __init__(self, sequences: list[Sequence], config: TrainConfig = TrainConfig()) -> None:
        if not sequences:
            raise ValueError("the sampler needs at least one training sequence.")
        self.sequences = list(sequences)
        self.config = config
        self.crop = SCALE * config.lr_crop
        small = [s.name for s in self.sequences if min(s.shape[1:]) < self.crop]
        if small:
            raise ValueError(
                f"sequence(s) {', '.join(small)} have frames smaller than the {self.crop}-pixel "
                f"HR crop of lr_crop={config.lr_crop}: lower lr_crop or leave them out."
            )
        self.weights = self._weights()

    def _weights(self) -> np.ndarray:
        """Probability of drawing each sequence.

        Within a group, each frame pixel is equally likely; between the groups, non-synthetic
        sequences get ``real_fraction`` of the samples when both groups are present.
        """
        size = np.array([float(np.prod(s.shape)) for s in self.sequences])
        real = np.array([s.group == REAL for s in self.sequences])
        weights = np.zeros(len(size))
        if real.all() or not real.any():
            return size / size.sum()
        share = self.config.real_fraction
        weights[real] = share * size[real] / size[real].sum()
        weights[~real] = (1 - share) * size[~real] / size[~real].sum()
        return weights

    def _times(self, rng: np.random.Generator, n: int) -> tuple[int, int, int, int, int]:
        """Draw ``(t, r, k0, k1, kind)`` for a sequence of ``n`` frames."""
        cfg = self.config
        t = int(rng.integers(0, n))
        r = int(rng.integers(1, cfg.max_separation + 1))
        a, b = (int(v) for v in rng.integers(1, cfg.max_keyframe_factor + 1, size=2))
        u = rng.random()
        if u < cfg.keyframe_fraction:
            kind = KEYFRAME
            # The keyframe at t is k0, or k1 for the last keyframe of a sequence; the other
            # keyframe goes to the side that lies inside the sequence.
            forward = rng.random() < 0.5
            fits_forward, fits_backward = t + r * b <= n - 1, t - r * a >= 0
            if fits_forward != fits_backward:
                forward = fits_forward
            k0, k1 = (t, t + r * b) if forward else (t - r * a, t)
        else:
            kind = BRACKET
            k0, k1 = t - r * a, t + r * b
            if u < cfg.keyframe_fraction + cfg.outside_fraction:
                # After the last keyframe, or before the first. Clamping could put both on
                # one frame, which no timeline does: such draws stay bracketing ones.
                after = rng.random() < 0.5
                o0, o1 = (t - r * (a + b), t - r * a) if after else (t + r * a, t + r * (a + b))
                if o0 >= 0 and o1 <= n - 1:
                    kind, k0, k1 = OUTSIDE, o0, o1
        return t, r, min(max(k0, 0), n - 1), min(max(k1, 0), n - 1), kind

    def _corner(
        self, rng: np.random.Generator, seq: Sequence, t: int, k0: int, k1: int
    ) -> tuple[int, int]:
        """Top-left corner of the HR crop.

        Most of a frame is static background and substrate that the HR keyframes already
        show; what fusion must get right is what moved between the keyframes and ``t``
        (keyhole, spatter, melt pool, pores). Uniform crops seldom contain it, so a share
        of the crops is centred on a coarse cell drawn with probability proportional to the
        frame change ``|f(t) - f(k0)| + |f(t) - f(k1)|``, with a jitter of a quarter crop.
        """
        _, height, width = seq.shape
        c = self.crop
        if rng.random() < self.config.motion_crop_fraction:
            # float64: numpy checks that the probabilities sum to 1 within about 1e-8.
            now = seq.coarse[t].astype(np.float64)
            change = np.abs(now - seq.coarse[k0]) + np.abs(now - seq.coarse[k1])
            total = float(change.sum())
            if total > 0:
                cell = int(rng.choice(change.size, p=(change / total).ravel()))
                cy, cx = np.unravel_index(cell, change.shape)
                jitter = rng.integers(-c // 4, c // 4 + 1, size=2)
                y = int(cy * COARSE + COARSE // 2 + jitter[0] - c // 2)
                x = int(cx * COARSE + COARSE // 2 + jitter[1] - c // 2)
                return min(max(y, 0), height - c), min(max(x, 0), width - c)
        return int(rng.integers(0, height - c + 1)), int(rng.integers(0, width - c + 1))

    def _pan_velocity(
        self, rng: np.random.Generator, seq: Sequence, t: int, times: list[int]
    ) -> np.ndarray:
        """Velocity ``(y, x)`` of a panned crop, HR pixels per frame.

        The shift at the frame farthest from ``t`` is drawn uniformly from
        ``0..max_pan`` pixels in a random direction, and lowered where the frame leaves
        too little room around the crop for it.
        """
        span = max(abs(f - t) for f in times)
        if span == 0:
            return np.zeros(2)
        angle = rng.uniform(0, 2 * np.pi)
        velocity = rng.uniform(0, self.config.max_pan) / span * np.array(
            [np.sin(angle), np.cos(angle)])
        room = np.array(seq.shape[1:], dtype=float) - self.crop
        # The window travels |velocity| * (latest - earliest frame) along each axis.
        travel = np.abs(velocity) * (max(times) - min(times))
        return velocity * min([1.0, *(room[travel > 0] / travel[travel > 0])])

    def _draw(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, BatchRecord]:
        """Draw a batch's HR frames on the CPU: the first half of :meth:`sample_batch`.

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of every random choice of the batch (noise included, through a seed).
        batch_size : int
            Samples.

        Returns
        -------
        frames : ndarray, shape (B, 5, 4 * lr_crop, 4 * lr_crop), uint8
            Per sample the HR frames at ``t - r, t, t + r, k0, k1``, augmented.
        record : BatchRecord
        """
        cfg = self.config
        c = self.crop
        out = np.empty((batch_size, FRAMES, c, c), dtype=np.uint8)
        fields = {k: np.zeros(batch_size, dtype=np.int64) for k in
                  ("sequence", "t", "separation", "k0", "k1", "kind", "y", "x")}
        flips = rng.random((batch_size, 3)) < 0.5
        noise_free = rng.random(batch_size) < cfg.noise_free_fraction
        b0 = np.where(noise_free, np.inf, 10.0 ** rng.uniform(*cfg.log_b0_range, batch_size))
        pan = np.zeros((batch_size, 2))
        for i in range(batch_size):
            index = int(rng.choice(len(self.sequences), p=self.weights))
            seq = self.sequences[index]
            t, r, k0, k1, kind = self._times(rng, len(seq))
            y, x = self._corner(rng, seq, t, k0, k1)
            times = frame_times(t, r, k0, k1, len(seq))
            # Drawn only when asked for, so that runs without panning draw as before.
            if cfg.pan_fraction > 0 and rng.random() < cfg.pan_fraction:
                pan[i] = self._pan_velocity(rng, seq, t, times)
            if pan[i].any():
                shifts = pan_shifts(pan[i], t, times)
                y = int(np.clip(y, -shifts[:, 0].min(), seq.shape[1] - c - shifts[:, 0].max()))
                x = int(np.clip(x, -shifts[:, 1].min(), seq.shape[2] - c - shifts[:, 1].max()))
                crop = np.stack([seq.frames[f, y + dy : y + dy + c, x + dx : x + dx + c]
                                 for f, (dy, dx) in zip(times, shifts, strict=True)])
            else:
                crop = seq.frames[times, y : y + c, x : x + c]
            out[i] = augment(crop, *flips[i])
            for key, value in (("sequence", index), ("t", t), ("separation", r), ("k0", k0),
                               ("k1", k1), ("kind", kind), ("y", y), ("x", x)):
                fields[key][i] = value
        noise_seed = int(rng.integers(0, 2**62))
        # Drawn last, and only when asked for, so that runs without it draw as before.
        aligned = np.zeros(batch_size, dtype=bool)
        if cfg.aligned_fraction > 0:
            aligned = rng.random(batch_size) < cfg.aligned_fraction
        optics = np.zeros((batch_size, 3))
        if cfg.optics_fraction > 0:
            chosen = rng.random(batch_size) < cfg.optics_fraction
            optics[:, 0] = rng.uniform(0, cfg.max_lr_blur, batch_size)
            optics[:, 1:] = rng.uniform(-cfg.max_lr_shift, cfg.max_lr_shift, (batch_size, 2))
            optics[~chosen] = 0.0
        record = BatchRecord(
            **fields,
            flip_y=flips[:, 0],
            flip_x=flips[:, 1],
            transpose=flips[:, 2],
            b0=b0,
            noise_seed=noise_seed,
            aligned=aligned,
            pan=pan,
            optics=optics,
        )
        return out, record

    def _to_tensors(
        self, frames: np.ndarray, record: BatchRecord, device: torch.device | str = "cpu"
    ) -> TrainingBatch:
        """Bin and add noise on ``device``, then warp the keyframes of the samples
        ``record.aligned`` marks onto their noisy LR ``t``: the second half of
        :meth:`sample_batch`."""
        position = [
            sample_position(t, k0, k1)
            for t, k0, k1 in zip(record.t, record.k0, record.k1, strict=True)
        ]
        batch = make_batch(frames, np.array(position), record.b0, record.noise_seed, device,
                           record)
        for i in np.flatnonzero(record.aligned):
            keyframes = align_keyframes(batch.lr[i, 1, 0].cpu().numpy(),
                                        batch.hr[i, :, 0].cpu().numpy(), scale=SCALE)
            batch.hr[i, :, 0] = torch.from_numpy(keyframes).to(batch.hr.device)
        return batch

    def sample_batch(
        self, rng: np.random.Generator, batch_size: int, device: torch.device | str = "cpu"
    ) -> TrainingBatch:
        """Draw a batch: ``lr (B,3,1,h,w)``, ``hr (B,2,1,4h,4w)``, ``target (B,1,4h,4w)``.

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of every random choice; the same generator state gives the same batch.
        batch_size : int
            Samples.
        device : torch.device or str
            Where the tensors are made.

        Returns
        -------
        TrainingBatch
        """
        frames, record = self._draw(rng, batch_size)
        return self._to_tensors(frames, record, device)


# -- validation --------------------------------------------------------------------------


def validation_batches(
    sequences: list[Sequence],
    samples: int,
    spacing: int,
    seed: int = 0,
    b0: float = 10.0**3.5,
) -> list[TrainingBatch]:
    """Fixed whole-frame validation samples, one CPU batch per sequence.

    Samples are taken as inference takes them (:class:`~napari_xfusion.timeline.Timeline`
    with keyframe spacing ``spacing``) at output times spread over the sequence between
    keyframes, with LR separations cycling through 1, 2, 3. Every other sample has Poisson
    noise of blank-scan factor ``b0`` (an LR PSNR of 35 to 40 dB), the others
    none. Frames are cropped to a multiple of 16 pixels (LR sizes divisible by 4).

    Parameters
    ----------
    sequences : list of Sequence
        Held-out sequences with at least ``spacing + 2`` frames (shorter ones use a smaller
        spacing).
    samples : int
        Samples per sequence.
    spacing : int
        Keyframe spacing ``D``.
    seed : int
        Seed of the noise.
    b0 : float
        Blank-scan factor of the noisy samples.

    Returns
    -------
    list of TrainingBatch
        On the CPU, ``record`` None.
    """
    batches = []
    for number, seq in enumerate(sequences):
        n, height, width = seq.shape
        d = max(1, min(spacing, (n - 1) // 2))
        timeline = Timeline(n, keyframe_count(n, TimeModel(spacing=d)), TimeModel(spacing=d))
        unseen = np.flatnonzero(~timeline.keyframe_mask())
        if unseen.size == 0 or samples == 0:
            continue
        picks = unseen[np.round(np.linspace(0, unseen.size - 1, samples)).astype(int)]
        h, w = height - height % (4 * SCALE), width - width % (4 * SCALE)
        frames, positions, noise = [], [], []
        for i, t in enumerate(picks):
            model = TimeModel(spacing=d, separation=min(1 + i % 3, n - 1))
            inputs = Timeline(timeline.n_lr, timeline.n_hr, model).inputs(int(t))
            times = list(inputs.lr) + list(inputs.hr_times)
            frames.append(seq.frames[times, :h, :w])
            positions.append(inputs.position)
            noise.append(b0 if i % 2 else np.inf)
        batches.append(make_batch(
            np.stack(frames), np.array(positions), np.array(noise), seed * 1000 + number
        ))
    return batches
