"""The inference engine: runs a fusion network over a whole sequence, tile by tile.

:class:`Engine` takes LR and HR stacks of any length and frame size (numpy or dask), reads
each input frame once per pass, cuts every frame into overlapping tiles, runs the tiles in
batches on the chosen device and blends them back with feathered seams. It yields one
:class:`~napari_xfusion.streaming.FusedFrame` at a time, with the attention scores of the five
inputs, so callers can stream results to disk or to a viewer and stop between frames.

Work is done once per input frame, not once per output: the network's first half
(:meth:`~napari_xfusion.models.arch.FusionNetwork.extract_features`) does not depend on the
reference frame, so the feature pyramid of each input tile is kept in a :class:`FeatureCache`
and reused by every output that reads that frame (an LR frame feeds three outputs, an HR
keyframe up to ``2D``). Only the second half runs once per output.

On a CUDA out-of-memory error it frees memory, halves the tile size and retries the frame,
logging that it did.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Hashable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .alignment import align_keyframes
from .checks import check_scale
from .config import EngineConfig
from .devices import autocast, autocast_dtype, resolve_device, retain_freed_memory
from .models.arch import SIZE_MULTIPLE
from .streaming import FusedFrame, ProgressCallback, stream_frames
from .tiling import Tile, feather_weights, tile_grid
from .timeline import FrameInputs, Timeline

log = logging.getLogger(__name__)

#: Smallest tile the engine shrinks to after out-of-memory errors (LR pixels).
MIN_TILE = 32
#: With ``tile=None``, frames up to this many LR pixels run whole, larger ones in tiles of
#: :data:`AUTO_TILE`: overlaps cost compute, and whole frames of this size fit in memory.
AUTO_WHOLE_PIXELS = 256 * 256
AUTO_TILE = 256
#: Feature-cache stream of keyframes aligned to one output time (keys ``(ALIGNED, t, j)``).
ALIGNED = "aligned"


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _pad_frames(frames: np.ndarray, pad_y: int, pad_x: int) -> np.ndarray:
    """Pad ``(n, y, x)`` frames at the bottom/right by mirroring (edge copies if too small)."""
    if not pad_y and not pad_x:
        return frames
    mode = "reflect" if pad_y < frames.shape[1] and pad_x < frames.shape[2] else "edge"
    return np.pad(frames, ((0, 0), (0, pad_y), (0, pad_x)), mode=mode)


class FeatureCache:
    """Feature pyramids of input frames (or frame tiles), least recently used dropped first.

    Parameters
    ----------
    budget_bytes : int
        Memory the kept pyramids may take; 0 keeps nothing.

    Attributes
    ----------
    hits, misses : int
        Lookups that found a pyramid and that did not.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.size = 0
        self.hits = self.misses = 0
        self._entries: OrderedDict[Hashable, list[torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> list[torch.Tensor] | None:
        """The pyramid stored under ``key``, or None."""
        pyramid = self._entries.get(key)
        if pyramid is None:
            self.misses += 1
        else:
            self.hits += 1
            self._entries.move_to_end(key)
        return pyramid

    def put(self, key: Hashable, pyramid: list[torch.Tensor]) -> None:
        """Keep ``pyramid`` under ``key``, dropping the oldest entries beyond the budget."""
        self._entries[key] = pyramid
        self.size += _nbytes(pyramid)
        while self.size > self.budget and self._entries:
            self.size -= _nbytes(self._entries.popitem(last=False)[1])

    def discard_before(self, stream: str, index: int) -> None:
        """Drop the pyramids of ``stream`` frames before ``index`` (keys ``(stream, i, ...)``).

        In a pass over increasing output times, frames behind the current inputs are never
        read again; without this the cache would fill up to its budget with them.
        """
        for key in [k for k in self._entries if k[0] == stream and k[1] < index]:
            self.size -= _nbytes(self._entries.pop(key))

    def clear(self) -> None:
        """Drop every pyramid (after the tiling changed)."""
        self._entries.clear()
        self.size = 0


def _nbytes(pyramid: list[torch.Tensor]) -> int:
    return sum(level.nbytes for level in pyramid)


class Engine:
    """Runs a fusion network over sequences, tile by tile, on one device.

    Parameters
    ----------
    model : FusionNetwork
        An ``EDVRSTF`` or ``EDVR`` network (:mod:`napari_xfusion.models.arch`).
    config : EngineConfig
        Device, tile size, overlap, batch and precision.
    """

    def __init__(self, model: torch.nn.Module, config: EngineConfig = EngineConfig()) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = autocast_dtype(self.device, config.precision)
        memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format).eval()
        self.scale = model.config.scale
        self.uses_hr = model.config.arch == "stf"
        self.tile = _round_up(config.tile, SIZE_MULTIPLE) if config.tile else config.tile
        self.overlap = _round_up(config.overlap, SIZE_MULTIPLE)
        #: Number of times the tile size was halved after running out of GPU memory.
        self.oom_retries = 0
        #: Whether keyframes are warped onto each output time: ``config.align_keyframes``,
        #: switched off by a method that finds its recording still.
        self.align_keyframes = config.align_keyframes

    def _run_batch(
        self,
        lr: np.ndarray,
        hr: np.ndarray,
        keys: Sequence[Sequence[Hashable]],
        cache: FeatureCache,
        position: float | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Forward a batch of tiles of one output frame; numpy outputs.

        ``lr`` is ``(B, 3, t, t)`` and ``hr`` ``(B, 2, s*t, s*t)``; ``keys[b]`` names the
        input frames of tile ``b`` in the order ``[LR t-r, LR t, LR t+r, HR k0, HR k1]``.
        Pyramids found in ``cache`` under those names are reused, the others computed (once
        per name) and stored. ``position`` is where the output time lies between its
        keyframes, for networks that need it.
        """
        streams = [("lr", lr), ("hr", hr)] if self.uses_hr else [("lr", lr)]
        with torch.inference_mode(), autocast(self.device, self.dtype):
            pyramids = {}
            # EDVR has no HR stream: the zip stops after the LR one.
            for first, (stream, tiles) in zip((0, 3), streams, strict=False):
                wanted = {}
                for b, tile_keys in enumerate(keys):
                    for j in range(tiles.shape[1]):
                        wanted.setdefault(tile_keys[first + j], (b, j))
                pyramids.update((key, cache.get(key)) for key in wanted)
                missing = [key for key in wanted if pyramids[key] is None]
                if missing:
                    frames = np.stack([tiles[wanted[key]] for key in missing])[:, None]
                    levels = self.model.extract_features(self._to_device(frames), stream)
                    for n, key in enumerate(missing):
                        # Cloned so that a kept pyramid does not hold its whole batch.
                        pyramids[key] = [level[n].clone() for level in levels]
                        cache.put(key, pyramids[key])
            n_frames = 5 if self.uses_hr else 3
            features = [
                self._stack([pyramids[k[j]][level] for k in keys for j in range(n_frames)])
                .unflatten(0, (len(keys), n_frames))
                for level in range(3)
            ]
            reference = self._to_device(lr[:, 1:2])
            keyframes = None
            if self.model.config.adds_keyframe_detail:
                keyframes = self._to_device(hr[:, :, None])
            positions = None
            if self.model.needs_position:
                if position is None:
                    raise ValueError(
                        "this network needs to know where the output time lies between its "
                        "keyframes: pass the frame's inputs (FrameInputs)."
                    )
                positions = torch.full((len(keys),), float(position), device=self.device)
            out, attention = self.model.fuse_features(features, reference, keyframes, positions)
        image = out[:, 0].float().cpu().numpy()
        if not np.isfinite(image).all():
            # Clipping would turn NaN into a plausible-looking black frame.
            raise ValueError(
                "the network produced NaN or infinite values: its weights do not suit these "
                "inputs (or are damaged); try other weights or a classical method."
            )
        return image, attention.float().cpu().numpy()

    def _to_device(self, frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(frames)).to(self.device, non_blocking=True)

    def _stack(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """``(C, h, w)`` feature maps -> ``(N, C, h, w)``, channels-last if configured."""
        if not self.config.channels_last:
            return torch.stack(maps)
        return torch.stack([m.permute(1, 2, 0) for m in maps]).permute(0, 3, 1, 2)

    def fuse_frame(
        self, lr: np.ndarray, hr: np.ndarray, inputs: FrameInputs | None = None,
        cache: FeatureCache | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fuse one output frame from its five inputs.

        Parameters
        ----------
        lr : ndarray, shape (3, h, w)
            LR frames ``t - r, t, t + r`` in [0, 1].
        hr : ndarray, shape (2, s*h, s*w)
            The bracketing HR keyframes in [0, 1].
        inputs : FrameInputs, optional
            Which frames of their stacks these are and when they were taken; with ``cache``,
            the feature pyramids of frames met before are taken from it instead of being
            computed again. Networks that use the output time's position between its
            keyframes (a keyframe base or ``time_input``) need it.
        cache : FeatureCache, optional
            Pyramids of earlier frames of the same stacks (see :meth:`run`).

        Returns
        -------
        image : ndarray, shape (s*h, s*w), float32, clipped to [0, 1]
        attention : ndarray, shape (T,)
            Spatial mean of the raw temporal-attention maps of each input frame (T = 5 for
            EDVR-STF, 3 for EDVR), averaged over tiles with their blend weights.
        """
        position = None if inputs is None else inputs.position
        if inputs is None or cache is None:
            # Frames without a place in a sequence: nothing to share with other calls.
            names, cache = [("lr", 0), ("lr", 1), ("lr", 2), ("hr", 0), ("hr", 1)], FeatureCache(0)
        elif self.align_keyframes:
            # Keyframes moved onto this output time serve this output alone.
            names = [("lr", i) for i in inputs.lr] + [(ALIGNED, inputs.t, j) for j in inputs.hr]
        else:
            names = [("lr", i) for i in inputs.lr] + [("hr", j) for j in inputs.hr]
        with retain_freed_memory():
            while True:
                try:
                    return self._fuse_frame(lr, hr, names, cache, position)
                except torch.cuda.OutOfMemoryError:
                    cache.clear()
                    self._shrink_tiles(lr.shape[1:])

    def _tile_for(self, height: int, width: int) -> int:
        """The tile size used for frames of ``height x width`` LR pixels (0 = whole)."""
        if self.tile is None:
            return 0 if height * width <= AUTO_WHOLE_PIXELS else AUTO_TILE
        return self.tile

    def _shrink_tiles(self, lr_size: tuple[int, int]) -> None:
        current = self._tile_for(*lr_size) or _round_up(max(lr_size), SIZE_MULTIPLE)
        smaller = _round_up(current // 2, SIZE_MULTIPLE)
        torch.cuda.empty_cache()
        if smaller < max(MIN_TILE, 2 * self.overlap + SIZE_MULTIPLE):
            raise RuntimeError(
                f"out of GPU memory even with {current}-pixel tiles: lower the batch size "
                f"(now {self.config.batch}), use precision bf16/fp16, or run on the CPU."
            )
        self.tile = smaller
        self.oom_retries += 1
        log.warning("out of GPU memory: retrying the frame with %d-pixel LR tiles", smaller)

    def _fuse_frame(
        self,
        lr: np.ndarray,
        hr: np.ndarray,
        names: list[tuple[str, int]],
        cache: FeatureCache,
        position: float | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        s = self.scale
        _, h, w = lr.shape
        check_scale(lr.shape, hr.shape, s)
        if self.align_keyframes:
            hr = align_keyframes(lr[1], hr, scale=s)
        ph, pw = (-h) % SIZE_MULTIPLE, (-w) % SIZE_MULTIPLE
        lr = _pad_frames(np.ascontiguousarray(lr, dtype=np.float32), ph, pw)
        hr = _pad_frames(np.ascontiguousarray(hr, dtype=np.float32), s * ph, s * pw)
        H, W = lr.shape[1:]
        tiles = tile_grid(H, W, self._tile_for(H, W), self.overlap)
        if len(tiles) == 1:
            # Whole frame: no blending buffers to fill.
            out, attention = self._run_batch(lr[None], hr[None], [names], cache, position)
            return np.clip(out[0, : s * h, : s * w], 0.0, 1.0), attention[0]
        acc = np.zeros((s * H, s * W), dtype=np.float32)
        norm = np.zeros_like(acc)
        attention_sum, attention_weight = 0.0, 0.0
        for first in range(0, len(tiles), self.config.batch):
            batch = tiles[first : first + self.config.batch]
            out, attention = self._run_batch(
                np.stack([lr[:, t.y0 : t.y1, t.x0 : t.x1] for t in batch]),
                np.stack([hr[:, s * t.y0 : s * t.y1, s * t.x0 : s * t.x1] for t in batch]),
                [[(*name, tile) for name in names] for tile in batch],
                cache,
                position,
            )
            for tile, frame, scores in zip(batch, out, attention, strict=True):
                weight = feather_weights(tile, H, W, self.overlap, s)
                region = _hr_region(tile, s)
                acc[region] += frame * weight
                norm[region] += weight
                # Scores are spatial means per tile; weigh them like the pixels they cover.
                attention_sum = attention_sum + scores * float(weight.sum())
                attention_weight += float(weight.sum())
        image = np.clip(acc / norm, 0.0, 1.0)[: s * h, : s * w]
        return image, np.asarray(attention_sum / attention_weight, dtype=np.float32)

    def run(
        self,
        lr,
        hr,
        timeline: Timeline,
        frames: Iterable[int] | None = None,
        progress: ProgressCallback | None = None,
    ) -> Iterator[FusedFrame]:
        """Fuse a sequence frame by frame, as :meth:`FusionMethod.fuse
        <napari_xfusion.methods.FusionMethod.fuse>` does; ``attention`` is set on each frame.

        The feature pyramids of the input frames are kept while later outputs need them
        (within ``config.feature_cache_mb``), so each is computed once.
        """
        cache = FeatureCache(self.config.feature_cache_mb << 20)

        def one(lr_frames, hr_frames, inputs):
            cache.discard_before("lr", min(inputs.lr))
            cache.discard_before("hr", min(inputs.hr))
            cache.discard_before(ALIGNED, inputs.t)
            return self.fuse_frame(lr_frames, hr_frames, inputs, cache)

        return _retaining_freed_memory(stream_frames(lr, hr, timeline, one, frames, progress))


def _retaining_freed_memory(frames: Iterator[FusedFrame]) -> Iterator[FusedFrame]:
    # Held over the whole run, not frame by frame, so that each frame reuses the memory
    # the one before freed (about 1.4x faster on a CPU; see retain_freed_memory).
    with retain_freed_memory():
        yield from frames


def _hr_region(tile: Tile, scale: int) -> tuple[slice, slice]:
    return (
        slice(scale * tile.y0, scale * tile.y1),
        slice(scale * tile.x0, scale * tile.x1),
    )
