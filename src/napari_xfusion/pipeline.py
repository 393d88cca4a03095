"""From files to a fused file: the steps the CLI and the napari widget share.

:func:`prepare_inputs` opens the two stacks lazily, checks that they fit together and fits
the paper's normalization to each; :func:`fuse_to_file` streams the fused frames of any
method to disk in the HR stack's units and dtype, with the attention scores beside them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from .alignment import MOVING, recording_moves
from .attention import AttentionLog, attention_csv_path
from .checks import check_scale, full_rate_selection
from .config import NoiseConfig, NormalizationConfig, OpticsConfig, TimeModel
from .io import (
    BackgroundWriter,
    StackError,
    check_output_path,
    incomplete_path,
    open_writer,
    read_metadata,
    read_stack,
    remove_stack,
    resuming_path,
    source_stamp,
)
from .lr_match import LRFilter, fit_lr_filter
from .methods import FusionMethod, method_aligns_keyframes, method_labels, method_network
from .normalize import (
    CLIP_TOLERANCE,
    Normalization,
    fit_normalization,
    match_normalization,
    restore_clipped,
)
from .simulate import bin_frames, lr_optics, noise_b0, noisy_frame
from .streaming import FrameCache, FusedFrame, MappedFrames, ProgressCallback, output_times
from .timeline import Timeline, full_rate_keyframes, keyframe_position

if TYPE_CHECKING:
    from .registration import Registration


@dataclass
class FusionInputs:
    """Two stacks ready for fusion.

    Attributes
    ----------
    lr, hr : dask.array.Array
        Normalized float32 stacks in [0, 1], ``(N, h, w)`` and ``(M, s*h, s*w)``.
    timeline : Timeline
    lr_norm, hr_norm : Normalization
        The mappings from each camera's units to [0, 1]; :meth:`camera_units` brings fused
        frames back to the HR camera's units.
    registration : Registration or None
        The camera registration the stacks went through (recorded with fused stacks).
    sources : tuple
        :func:`~napari_xfusion.io.source_stamp` of the LR and HR files when opened (None for
        arrays); :meth:`check_unchanged` compares them with the files as they are now.
    hr_source : FrameCache or None
        The HR keyframes in the camera's units, unclipped (registered, if a registration
        was given), from which :meth:`camera_units` restores clipped values.
    lr_filter : LRFilter or None
        The filter that matched the LR camera to the keyframes' binning
        (:mod:`napari_xfusion.lr_match`), applied to ``lr``; None when the LR frames were
        left as they are.
    lr_smoothed : dask.array.Array or None
        The LR stack through the filter's smooth form, which also smooths the noise, for
        the methods without a noise model (:meth:`lr_for`); None without a filter.
    """

    lr: object
    hr: object
    timeline: Timeline
    lr_norm: Normalization
    hr_norm: Normalization
    registration: Registration | None = None
    sources: tuple = (None, None)
    hr_source: object = None
    lr_filter: LRFilter | None = None
    lr_smoothed: object = None

    def lr_for(self, method: FusionMethod):
        """The LR stack ``method`` reads (see
        :meth:`~napari_xfusion.methods.FusionMethod.lr_stack`)."""
        return method.lr_stack(self.lr, self.lr_smoothed)

    def provenance(self) -> dict:
        """What was done to the stacks before fusion, for the fused stack's metadata: the
        registration and the LR filter, where there were any."""
        done = {}
        if self.registration is not None:
            done["registration"] = self.registration.to_dict()
        if self.lr_filter is not None:
            done["lr_filter"] = self.lr_filter.to_dict()
        return done

    def camera_units(self, frame: FusedFrame) -> np.ndarray:
        """A fused frame in the HR camera's units and dtype (see :func:`camera_units`)."""
        return camera_units(frame, self.hr_norm, self.timeline, self.hr_source)

    def check_unchanged(self) -> None:
        """Refuse when an input file was replaced or rewritten since it was opened.

        Raises
        ------
        StackError
            Naming the file: frames read before and after the change would be mixed.
        """
        for stamp in self.sources:
            if stamp is not None and source_stamp(stamp[0]) != stamp:
                raise StackError(
                    f"{stamp[0]} changed while it was being fused (replaced or rewritten), so "
                    "the output would mix frames of two versions; it was not created. Run "
                    "again once the file is final."
                )


def camera_units(
    frame: FusedFrame, hr_norm: Normalization, timeline: Timeline, hr_source=None
) -> np.ndarray:
    """A fused frame in the HR camera's units and dtype.

    Values the normalization clipped are given back where the HR camera saw them
    (:func:`~napari_xfusion.normalize.restore_clipped`); the two keyframes are read only for
    frames that touch a clip limit.

    Parameters
    ----------
    frame : FusedFrame
        In [0, 1].
    hr_norm : Normalization
    timeline : Timeline
    hr_source : array_like, optional
        The HR keyframes in the camera's units, unclipped; None only inverts the mapping.

    Returns
    -------
    ndarray
    """
    image = hr_norm.invert(frame.image)
    near_limit = (frame.image >= 1.0 - CLIP_TOLERANCE) | (frame.image <= CLIP_TOLERANCE)
    if hr_source is None or not near_limit.any():
        return image
    index = np.searchsorted(timeline.keyframe_times, frame.hr_times)
    keyframes = np.stack([np.asarray(hr_source[int(j)]) for j in index])
    position = keyframe_position(frame.t, *frame.hr_times)
    return restore_clipped(image, frame.image, keyframes, position, hr_norm)


def prepare_inputs(
    lr,
    hr,
    time_model: TimeModel,
    normalization: NormalizationConfig = NormalizationConfig(),
    hr_full_rate: bool = False,
    match_intensity: bool = True,
    registration: Registration | None = None,
    match_optics: bool = True,
) -> FusionInputs:
    """Open, check and normalize an LR stack and an HR stack.

    Parameters
    ----------
    lr, hr : str, Path or array_like
        A multi-page TIFF, a folder of TIFF frames, or an array ``(frames, y, x)``.
    time_model : TimeModel
        Keyframe spacing and offset, LR separation, scale.
    normalization : NormalizationConfig
        Percentiles and sampling of the normalization.
    hr_full_rate : bool
        The HR stack has a frame at every LR time (a simulation): keep every
        ``spacing``-th frame from ``offset`` as the keyframes.
    match_intensity : bool
        Map the LR stack into the HR stack's normalized units using the frames both
        cameras took at the same time (:func:`~napari_xfusion.normalize.match_normalization`);
        with False, or when that fit fails, each stack gets the paper's own percentile
        normalization.
    registration : Registration, optional
        The two cameras' registration (:func:`napari_xfusion.registration.register`): the
        LR stack is cropped to the common field of view and the HR keyframes resampled
        onto ``scale`` times that crop, frame by frame as they are read.
    match_optics : bool
        Filter the LR frames so that they match the binned keyframes of their time where
        the LR camera's optics blur, shift or shade the scene beyond its noise
        (:func:`~napari_xfusion.lr_match.fit_lr_filter`, from up to 8 pairs of frames
        taken at the same time); exactly binned clean LR is left as it is. The networks read
        the filtered frames with their noise, the classical methods with it smoothed
        (:meth:`FusionInputs.lr_for`).

    Returns
    -------
    FusionInputs
    """
    sources = (source_stamp(lr), source_stamp(hr))
    lr_raw = read_stack(lr, name="LR stack")
    hr_raw = read_stack(hr, name="HR stack")
    if hr_full_rate:
        hr_raw = hr_raw[full_rate_selection(len(lr_raw), len(hr_raw), time_model)]
    if registration is not None:
        registration.check_stacks(lr_raw.shape, hr_raw.shape)
        if registration.time_model.scale != time_model.scale:
            raise ValueError(
                f"the registration resamples to scale {registration.time_model.scale}, but "
                f"the scale is set to {time_model.scale}: set the scale to "
                f"{registration.time_model.scale}, or register again at this scale."
            )
        lr_raw = registration.crop_lr(lr_raw)
        hr_raw = read_stack(registration.resample_hr(hr_raw), name="HR stack")
    check_scale(lr_raw.shape, hr_raw.shape, time_model.scale)
    timeline = Timeline(len(lr_raw), len(hr_raw), time_model)
    hr_norm = fit_normalization(hr_raw, normalization)
    times = timeline.keyframe_times
    pairs = [(int(t), j) for j, t in enumerate(times) if 0 <= t < timeline.n_lr]
    lr_norm = None
    if match_intensity:
        lr_norm = match_normalization(
            lr_raw, hr_raw, hr_norm, pairs, time_model.scale, normalization
        )
    if lr_norm is None:
        lr_norm = fit_normalization(lr_raw, normalization)
    lr, hr = lr_norm.apply(lr_raw), hr_norm.apply(hr_raw)
    lr_filter = fit_lr_filter(lr, hr, pairs, time_model.scale) if match_optics else None
    if lr_filter is not None and not lr_filter.needed:
        lr_filter = None
    return FusionInputs(
        lr=normalized_lr(lr_raw, lr_norm, lr_filter),
        hr=hr,
        timeline=timeline,
        lr_norm=lr_norm,
        hr_norm=hr_norm,
        registration=registration,
        sources=sources,
        # Consecutive outputs share their keyframes: each is read once for camera_units.
        hr_source=FrameCache(hr_raw, capacity=2, dtype=None),
        lr_filter=lr_filter,
        lr_smoothed=None if lr_filter is None else normalized_lr(
            lr_raw, lr_norm, lr_filter, smooth=True),
    )


def normalized_lr(lr_raw, lr_norm: Normalization, lr_filter: LRFilter | None, *,
                  smooth: bool = False):
    """The LR stack as the methods read it: normalized, then filtered to match the
    keyframes' binning when a filter was found, in its ``smooth`` form or not (lazy for a
    dask stack)."""
    lr = lr_norm.apply(lr_raw)
    return lr if lr_filter is None else lr_filter.apply(lr, smooth=smooth)


@dataclass
class FusionResult:
    """What :func:`fuse_to_file` wrote."""

    path: Path
    frames: int
    seconds: float
    attention_path: Path | None


def output_metadata(
    method: str,
    timeline: Timeline,
    times: list[int],
    subset: bool,
    extra: dict | None = None,
) -> dict[str, str]:
    """The metadata stored with a fused stack: method, time model and keyframe mask.

    Parameters
    ----------
    method : str
        Name of the fusion method.
    timeline : Timeline
    times : list of int
        The LR times of the output frames, in order.
    subset : bool
        Whether ``times`` were chosen by the user (they are then stored).
    extra : dict, optional
        More entries.

    Returns
    -------
    dict
        ``{"napari_xfusion": JSON}``, as the stack writers take it.
    """
    info = {
        "method": method,
        "time_model": asdict(timeline.model),
        "frames": times if subset else None,
        "keyframe_mask": timeline.keyframe_mask()[times].astype(int).tolist(),
        **(extra or {}),
    }
    return {"napari_xfusion": json.dumps(info)}


def fuse_iter(
    inputs: FusionInputs,
    method: FusionMethod,
    output: str | Path | None = None,
    overwrite: bool = False,
    frames: Iterable[int] | None = None,
    progress: ProgressCallback | None = None,
    metadata: dict | None = None,
    resume: bool = False,
) -> Iterator[FusedFrame]:
    """Fuse frame after frame, yielding each one and streaming it to ``output`` if given.

    This is the loop behind :func:`fuse_to_file` and the napari widget: a caller can stop
    between frames by closing the generator. Frames go to disk in the HR stack's units and
    dtype as they are made; the output appears under its name only once every frame is
    written, and a run stopped early leaves the frames written so far in a file marked
    ``.incomplete``, with a fingerprint of the inputs and settings that made them
    (:func:`run_fingerprint`). Neural methods also save their attention scores to
    ``<stem>.attention.csv`` at the end.

    Parameters
    ----------
    inputs : FusionInputs
    method : FusionMethod
    output : str or Path, optional
        BigTIFF ``.tif`` or ``.zarr``; None keeps the frames in memory only.
    overwrite : bool
        Replace an existing output (and discard an interrupted run's frames).
    frames : iterable of int, optional
        LR times to fuse (default: all).
    progress : callable, optional
        ``progress(done, total)``, counting the frames a resumed run found done.
    metadata : dict, optional
        Extra entries stored in the output's metadata.
    resume : bool
        Continue an interrupted run to ``output`` from its ``.incomplete`` file: its frames
        are kept and only the rest are fused, so the result equals an uninterrupted run
        (a network's, to the last unit of a few pixels on CPUs whose fp32 matrix products
        round with the batch they are in).
        The partial must come from the same inputs and settings (else a StackError says
        so). Without a partial the run starts from the first frame. The attention scores
        then cover the frames fused by this run.

    Yields
    ------
    FusedFrame
        In the normalized [0, 1] units (only those fused by this call);
        ``inputs.camera_units`` gives camera units.
    """
    times = output_times(inputs.timeline, frames)
    if output is None:
        yield from method.fuse(inputs.lr_for(method), inputs.hr, inputs.timeline, times,
                               progress)
        return
    output = check_output_path(output, overwrite=overwrite, resume=resume)
    n_lr, height, width = inputs.lr.shape
    scale = inputs.timeline.model.scale
    metadata = {**inputs.provenance(), **(metadata or {})}
    info = output_metadata(method.name, inputs.timeline, times, frames is not None, metadata)
    info["fingerprint"] = run_fingerprint(inputs, method, info)
    earlier = _set_aside_partial(output, info["fingerprint"]) if resume else None
    log = AttentionLog()
    stack = open_writer(
        output,
        frame_shape=(scale * height, scale * width),
        dtype=np.dtype(inputs.hr_norm.dtype),
        n_frames=len(times),
        overwrite=overwrite,
        metadata=info,
        resume=resume,
    )
    done = 0
    if earlier is not None:
        try:
            kept = read_stack(earlier, name="interrupted run's frames")
            for frame in kept:
                stack.write(np.asarray(frame))
        except BaseException:
            # The frames are still in `earlier`, where the next resume looks first.
            stack.abort(keep=False)
            raise
        done = len(kept)
        remove_stack(earlier)
    remaining = times[done:]
    if progress is not None and done:
        progress(done, len(times))
        progress = _offset_progress(progress, done)
    # Frames are converted and written in a thread of their own while the next is fused.
    with BackgroundWriter(stack, convert=inputs.camera_units) as writer:
        if remaining:
            fused = method.fuse(inputs.lr_for(method), inputs.hr, inputs.timeline, remaining,
                                progress)
            for frame in fused:
                writer.write(frame)
                log.add(frame)
                yield frame
        inputs.check_unchanged()
    if len(log):
        log.write_csv(attention_csv_path(output))


def run_fingerprint(inputs: FusionInputs, method: FusionMethod, info: dict) -> str:
    """A digest of what decides a run's output: the input files as they are (path, inode,
    size, modification time), the normalizations, the method and its settings, the time
    model and the output frames (``info``, from :func:`output_metadata`)."""
    identity = {
        "sources": inputs.sources,
        "normalizations": [asdict(inputs.lr_norm), asdict(inputs.hr_norm)],
        "method": method.name,
        "settings": method.settings(),
        "metadata": info,
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _set_aside_partial(output: Path, fingerprint: str) -> Path | None:
    """Check an interrupted run's partial and move it aside for copying; None if none.

    A copy cut short earlier left the frames in :func:`resuming_path`: they are the ones
    to keep, and the partial beside them is discarded.
    """
    partial, aside = incomplete_path(output), resuming_path(output)
    source = aside if aside.exists() else partial
    if not source.exists():
        return None
    try:
        found = read_metadata(source).get("fingerprint")
    except (OSError, ValueError) as err:  # StackError is a ValueError
        raise StackError(
            f"{source} cannot be read ({err}); pass --overwrite to start over."
        ) from err
    if found != fingerprint:
        raise StackError(
            f"{source} was made from other inputs or settings (or by an older version), so "
            "it cannot be continued: pass --overwrite to start over, or rerun with the "
            "settings of that run."
        )
    if source is partial:
        os.replace(partial, aside)
    elif partial.exists():
        remove_stack(partial)
    return aside


def _offset_progress(progress: ProgressCallback, done: int) -> ProgressCallback:
    """Progress of the remaining frames, reported as part of the whole run."""
    return lambda k, total: progress(done + k, done + total)


def motion_warnings(inputs: FusionInputs, method: str) -> list[str]:
    """Whether fusion method ``method`` (a registered name) is probably the wrong one for a
    recording that moves.

    EDVR-STF fed the keyframes as they are (``stf``) loses the detail that moved between a
    keyframe and the frame being fused; ``stf-aligned`` warps the keyframes there first.
    When the recording moves (:func:`~napari_xfusion.alignment.recording_moves`), one
    sentence says so, with the fix; other methods are not measured (the flow takes a few
    seconds on large frames).

    Returns
    -------
    list of str
        Empty, or one warning.
    """
    if method_network(method) != "stf" or method_aligns_keyframes(method):
        return []
    moves, motion = recording_moves(inputs.lr, inputs.hr, inputs.timeline)
    if not moves:
        return []
    labels = method_labels()
    return [
        f"the scene moves between keyframes (by mid-interval, up to {motion:.2f} LR pixels "
        f"from the keyframe before) and {method} "
        f"({labels[method]}) takes the keyframes as they are: use stf-aligned "
        f"({labels['stf-aligned']}), "
        "which warps them onto each frame first (0.05-4.5 dB better on held-out videos that "
        "move this much), or assess the methods on this recording's keyframes."
    ]


def alignment_notes(inputs: FusionInputs, method: FusionMethod) -> list[str]:
    """What ``method`` does with this recording's keyframes, if it aligns them where the
    recording moves (``stf-aligned``): its :meth:`~napari_xfusion.methods.FusionMethod.
    prepare` measures the motion now, and a run of it on the same inputs measures it no more.

    Returns
    -------
    list of str
        Empty for other methods, or one sentence.
    """
    if not method.align_keyframes:
        return []
    method.prepare(inputs.lr_for(method), inputs.hr, inputs.timeline)
    if method.aligning:
        return [f"the keyframes move ({method.motion:.2f} LR pixels by mid-interval, at "
                "most): they are aligned onto each frame."]
    return [f"the keyframes stand still ({method.motion:.2f} LR pixels by mid-interval, "
            f"under {MOVING:g}): they are fused as they are, as stf fuses them."]


def fuse_to_file(
    inputs: FusionInputs,
    method: FusionMethod,
    output: str | Path,
    overwrite: bool = False,
    frames: Iterable[int] | None = None,
    progress: ProgressCallback | None = None,
    metadata: dict | None = None,
    resume: bool = False,
) -> FusionResult:
    """Fuse and stream every frame to ``output`` (BigTIFF ``.tif`` or ``.zarr``).

    Memory use does not grow with the sequence length; see :func:`fuse_iter` for what is
    written, what an interrupted run leaves behind and how ``resume`` continues it.

    Parameters
    ----------
    inputs, method, overwrite, frames, progress, metadata, resume
        As for :func:`fuse_iter`.
    output : str or Path

    Returns
    -------
    FusionResult
        ``frames`` counts every frame in the output, those a resumed run kept included.
    """
    start = time.perf_counter()
    scored = False
    for frame in fuse_iter(
        inputs, method, output, overwrite, frames, progress, metadata, resume=resume
    ):
        scored = scored or frame.attention is not None
    path = Path(output).expanduser()
    count = int(read_metadata(path)["frames_written"])
    return FusionResult(
        path, count, time.perf_counter() - start, attention_csv_path(path) if scored else None
    )


def simulate_to_files(
    hr_full,
    out_dir: str | Path,
    time_model: TimeModel,
    noise: NoiseConfig = NoiseConfig(),
    normalization: NormalizationConfig = NormalizationConfig(),
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    optics: OpticsConfig = OpticsConfig(),
) -> dict[str, Path]:
    """The paper's numerical experiment from a full-rate HR stack, streamed to files.

    Each HR frame is normalized to [0, 1], binned ``scale x scale`` into an LR frame (with
    Poisson noise if asked, and seen through the LR camera's ``optics`` first) and kept as
    a keyframe every ``spacing`` frames from ``offset``.
    Frames are processed one at a time, so stacks of any length fit in memory.

    Parameters
    ----------
    hr_full : str, Path or array_like
        Full-rate HR stack ``(N, H, W)``; ``H`` and ``W`` multiples of the scale.
    out_dir : str or Path
        Folder for ``lr.tif``, ``hr_keyframes.tif`` and ``truth.tif`` (float32 in [0, 1]).
    time_model : TimeModel
    noise : NoiseConfig
    normalization : NormalizationConfig
    overwrite : bool
    progress : callable, optional
    optics : OpticsConfig
        Blur and shift of the LR camera before binning (:func:`~napari_xfusion.simulate.
        lr_optics`); exact binning by default.

    Returns
    -------
    dict of str to Path
        ``{"LR stack": ..., "HR keyframes": ..., "ground truth": ...}``.
    """
    hr = read_stack(hr_full, name="HR stack")
    n, height, width = hr.shape
    s = time_model.scale
    if height % s or width % s:
        raise ValueError(
            f"HR frames of {height}x{width} cannot be binned {s}x{s}: crop them to "
            f"{height - height % s}x{width - width % s} first."
        )
    key_times = full_rate_keyframes(n, time_model)
    Timeline(n, len(key_times), time_model)  # refuses settings that cannot bracket the frames
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} does not exist: create it first.")
    paths = {
        "LR stack": check_output_path(out_dir / "lr.tif", overwrite),
        "HR keyframes": check_output_path(out_dir / "hr_keyframes.tif", overwrite),
        "ground truth": check_output_path(out_dir / "truth.tif", overwrite),
    }
    norm = fit_normalization(hr, normalization)
    truth = MappedFrames(hr, norm.apply)

    def lr_of(frame: np.ndarray) -> np.ndarray:
        return bin_frames(lr_optics(frame, optics), s)

    lr_clean = MappedFrames(truth, lr_of)
    b0 = noise_b0(lr_clean, noise)
    info = {"napari_xfusion": json.dumps({"time_model": asdict(time_model), "b0": b0})}
    with contextlib.ExitStack() as stack:
        lr_w, key_w, truth_w = (
            stack.enter_context(
                open_writer(
                    path, shape, np.float32, n_frames=frames, overwrite=overwrite, metadata=info
                )
            )
            for path, shape, frames in (
                (paths["LR stack"], (height // s, width // s), n),
                (paths["HR keyframes"], (height, width), len(key_times)),
                (paths["ground truth"], (height, width), n),
            )
        )
        key_set = set(key_times.tolist())
        for i in range(n):
            frame = truth[i]
            clean = lr_of(frame)
            lr_w.write(clean if b0 is None else noisy_frame(clean, i, b0, noise.seed))
            truth_w.write(frame)
            if i in key_set:
                key_w.write(frame)
            if progress is not None:
                progress(i + 1, n)
    return paths
