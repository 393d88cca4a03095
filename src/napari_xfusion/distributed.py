"""Fusion of one sequence on many workers (GPUs, nodes) with dask.distributed.

:func:`fuse_distributed` cuts the output times into contiguous chunks and submits one task
per chunk to a dask cluster. A task re-opens the two input stacks lazily on its worker and
reads only the frames its chunk needs: the LR frames ``t - r .. t + r`` and the HR
keyframes that bracket its times (its *halo*). The normalization is fitted once, on the
client, and shipped with each task, so every worker maps intensities exactly as a
single-process run does, and the output is the same: bit for bit for the classical
methods; for the networks, but for the last unit of a few pixels on CPUs whose fp32
matrix products round with the batch they are in (a chunk groups frames differently).

Each worker process builds a method once and keeps it for every later chunk (a network is
loaded once per worker, not once per chunk). A worker with several visible GPUs and a name
ending in a number ``i`` (LocalCluster names its workers 0, 1, ...; ``dask worker
--nworkers`` and dask-jobqueue end them in ``-0``, ``-1``, ...) runs ``device="auto"`` on
GPU ``i`` modulo the GPU count; otherwise ``"auto"`` means the first visible GPU, so run one
worker per GPU with ``CUDA_VISIBLE_DEVICES`` set for each (as HPC schedulers do for a job
granted one GPU).

Results go to one output, in order, and appear under its name only once complete:

* ``.zarr``: the client creates ``<stem>.incomplete.zarr`` with one frame per zarr chunk;
  each task writes its own frames there, so retried tasks rewrite the same frames and no two
  tasks share a zarr chunk; the store is renamed onto the output at the end.
* ``.tif``: each task writes its frames to a TIFF of its own in
  ``<stem>.incomplete.parts/``; the client appends finished parts, in order, to
  ``<stem>.incomplete.tif`` (streamed, one frame at a time), deletes them, and renames the
  stack onto the output at the end.

A task that raises is retried (``retries``); one whose worker dies is rescheduled by dask
itself (up to ``distributed.scheduler.allowed-failures`` times). A run that fails leaves
nothing under the output name.

``distributed`` is an optional dependency: ``pip install "napari-xfusion[distributed]"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from .attention import AttentionLog, attention_csv_path
from .checks import full_rate_selection
from .config import EngineConfig, NormalizationConfig, TimeModel
from .io import (
    StackError,
    check_output_path,
    incomplete_path,
    move_into_place,
    open_writer,
    read_stack,
)
from .io.lock import OutputLock
from .io.write import claim, file_identity
from .lr_match import LRFilter
from .methods import create_method, method_names
from .normalize import Normalization
from .pipeline import (
    FusionInputs,
    FusionResult,
    camera_units,
    normalized_lr,
    output_metadata,
    prepare_inputs,
)
from .streaming import FrameCache, FusedFrame, ProgressCallback, output_times
from .timeline import Timeline

if TYPE_CHECKING:
    from .registration import Registration

#: Output frames per task by default: long enough that reading the halo (2r LR frames and
#: one or two keyframes more than the chunk itself) costs little, short enough that a few
#: thousand frames keep many workers busy and a retried chunk loses little work.
DEFAULT_CHUNK_FRAMES = 64

#: Times a chunk whose task raised is tried again before the run fails.
DEFAULT_RETRIES = 2

log = logging.getLogger(__name__)

_INSTALL_HINT = 'install it with `pip install "napari-xfusion[distributed]"`'


def import_distributed():
    """The ``distributed`` module, or an ImportError that says how to install it.

    Returns
    -------
    module
    """
    try:
        import distributed
    except ImportError:
        raise ImportError(
            f"fusing on a dask cluster needs the optional distributed package: {_INSTALL_HINT}."
        ) from None
    if not logging.getLogger().isEnabledFor(logging.INFO):
        # dask's own configuration logs every connection at INFO; unless asked for
        # (xfusion -v), only what the user must act on is shown, and errors reach the
        # caller as exceptions.
        # asyncio reports the client's cancelled gathers after a Ctrl-C the same way.
        for name in ("distributed", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    return distributed


class ClusterError(RuntimeError):
    """The cluster could not finish a task (a worker died on it again and again)."""


@contextlib.contextmanager
def connect(scheduler: Any, workers: int | None = None) -> Iterator[Any]:
    """A dask client for the duration of a ``with`` block.

    Parameters
    ----------
    scheduler : str or distributed.Client
        A scheduler address (``"tcp://host:8786"``), ``"local"`` to start a LocalCluster on
        this machine for the block, or a client, which is used as it is and left open.
    workers : int, optional
        Workers of the local cluster (one thread each): by default one per CUDA GPU, or one
        per CPU core without a GPU. Only for ``"local"``.

    Yields
    ------
    distributed.Client
    """
    distributed = import_distributed()
    if isinstance(scheduler, distributed.Client):
        if workers is not None:
            raise ValueError(
                "the number of workers is set only for a local cluster (scheduler 'local')."
            )
        yield scheduler
        return
    if not isinstance(scheduler, str) or not scheduler:
        raise ValueError(
            f"scheduler must be a dask scheduler address (tcp://host:8786), 'local' or a "
            f"Client, got {scheduler!r}."
        )
    if workers is not None and workers < 1:
        raise ValueError(f"the number of workers must be >= 1, got {workers}.")
    if scheduler != "local":
        if workers is not None:
            raise ValueError(
                "the number of workers is set only for a local cluster (scheduler 'local'); "
                "a running cluster has the workers it was started with."
            )
        with distributed.Client(scheduler) as client:
            yield client
        return
    n_workers = workers or _cuda_device_count() or None
    quiet = not logging.getLogger().isEnabledFor(logging.INFO)
    with distributed.LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True,
        silence_logs=logging.CRITICAL if quiet else logging.INFO,
    ) as cluster, distributed.Client(cluster) as client:
        log.info("local dask cluster: %d workers, dashboard %s", len(cluster.workers),
                 client.dashboard_link)
        yield client


def _cuda_device_count() -> int:
    # device_count does not create a CUDA context, so the client takes no GPU memory.
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def chunk_bounds(n_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """``(start, stop)`` positions of consecutive chunks covering ``n_frames`` outputs.

    Parameters
    ----------
    n_frames : int
        Number of output frames.
    chunk_frames : int
        Frames per chunk; the last chunk may be shorter.

    Returns
    -------
    list of (int, int)
    """
    if chunk_frames < 1:
        raise ValueError(f"frames per chunk must be >= 1, got {chunk_frames}.")
    return [(s, min(s + chunk_frames, n_frames)) for s in range(0, n_frames, chunk_frames)]


def worker_device(device: str, worker_name: Any, gpu_count: int) -> str:
    """The device a worker runs a network on, for a device setting.

    Parameters
    ----------
    device : str
        The setting (``"auto"``, ``"cpu"``, ``"cuda:N"``...); only ``"auto"`` is changed.
    worker_name : int or str
        The dask worker's name.
    gpu_count : int
        CUDA GPUs the worker sees.

    Returns
    -------
    str
        ``"cuda:{i % gpu_count}"`` for ``"auto"`` when the worker sees several GPUs and its
        name is a number ``i`` or ends in ``-i``; ``device`` unchanged otherwise.
    """
    if device != "auto" or gpu_count < 2:
        return device
    match = re.search(r"(?:^|-)(\d+)$", str(worker_name))
    return f"cuda:{int(match.group(1)) % gpu_count}" if match else device


@dataclass(frozen=True)
class _Job:
    """What every chunk task of one run needs besides its frames (small, pickled per task)."""

    run: str
    method: str
    options: dict
    timeline: Timeline
    lr_norm: Normalization
    hr_norm: Normalization
    hr_full_rate: bool
    frame_shape: tuple[int, int]
    #: The ``.incomplete.zarr`` array, or the folder of per-chunk TIFFs.
    target: str
    zarr: bool
    registration: Registration | None = None
    lr_filter: LRFilter | None = None


def fuse_distributed(
    lr: Any,
    hr: Any,
    time_model: TimeModel,
    method: str,
    output: str | Path,
    client: Any,
    method_options: dict | None = None,
    normalization: NormalizationConfig = NormalizationConfig(),
    hr_full_rate: bool = False,
    match_intensity: bool = True,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    retries: int = DEFAULT_RETRIES,
    resources: dict[str, float] | None = None,
    overwrite: bool = False,
    frames: Iterable[int] | None = None,
    progress: ProgressCallback | None = None,
    metadata: dict | None = None,
    registration: Registration | None = None,
    prepared: FusionInputs | None = None,
) -> FusionResult:
    """Fuse a sequence on a dask cluster and write it to one output, in order.

    The result equals :func:`~napari_xfusion.pipeline.fuse_to_file` with the same settings,
    frame for frame and bit for bit, attention scores included (for a network, to the last
    unit of a few pixels on some CPUs: see the module's notes).

    Parameters
    ----------
    lr, hr : str, Path or array_like
        As for :func:`~napari_xfusion.pipeline.prepare_inputs`. Paths are made absolute and
        re-opened by the workers, which must see them under the same name (a shared file
        system); numpy arrays are scattered to the workers once; other arrays (zarr, dask)
        are pickled with every task.
    time_model : TimeModel
    method : str
        A registered fusion method name (``"stf"``, ``"transfer"``...).
    output : str or Path
        BigTIFF ``.tif`` or ``.zarr``, on a file system the workers can write to.
    client : distributed.Client or str
        A client, a scheduler address, or ``"local"`` for a LocalCluster on this machine
        (see :func:`connect`).
    method_options : dict, optional
        Keyword options of the method (for the neural ones ``weights`` and ``engine``, an
        :class:`~napari_xfusion.config.EngineConfig`). A ``weights`` path is made absolute.
    normalization, hr_full_rate, match_intensity, registration
        As for :func:`~napari_xfusion.pipeline.prepare_inputs`; the normalization is fitted
        here, once, and the workers apply the registration to the stacks they open.
    chunk_frames : int
        Output frames per task.
    retries : int
        Times a failed task is tried again before the run fails.
    resources : dict, optional
        Worker resources each task claims, e.g. ``{"GPU": 1}`` with workers started with
        ``--resources GPU=1``: tasks then run only on those workers, one at a time each.
    overwrite : bool
        Replace an existing output.
    frames : iterable of int, optional
        LR times to fuse (default: all), in output order.
    progress : callable, optional
        ``progress(done, total)`` in frames, called as chunks finish.
    metadata : dict, optional
        Extra entries stored in the output's metadata.
    prepared : FusionInputs, optional
        What :func:`~napari_xfusion.pipeline.prepare_inputs` returned for ``lr``, ``hr``
        and the settings above, when the caller opened the recording already (to choose the
        method, say): the normalization and the LR filter are then not fitted again.

    Returns
    -------
    FusionResult
    """
    start_time = time.perf_counter()
    distributed = import_distributed()
    if method not in method_names():
        create_method(method)  # raises the registry's "unknown method" error
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}.")
    output = check_output_path(output, overwrite=overwrite).resolve()
    options = dict(method_options or {})
    if options.get("weights") is not None:
        options["weights"] = str(Path(options["weights"]).expanduser().resolve())
    inputs = prepared or prepare_inputs(lr, hr, time_model, normalization, hr_full_rate,
                                        match_intensity, registration)
    times = output_times(inputs.timeline, frames)
    bounds = chunk_bounds(len(times), chunk_frames)
    _, height, width = inputs.lr.shape
    scale = inputs.timeline.model.scale
    frame_shape = (scale * height, scale * width)
    metadata = {**inputs.provenance(), **(metadata or {})}
    info = output_metadata(method, inputs.timeline, times, frames is not None, metadata)
    dtype = np.dtype(inputs.hr_norm.dtype)
    sink_class = _ZarrSink if output.suffix.lower() == ".zarr" else _TiffSink
    scores: dict[int, list[FusedFrame]] = {}
    with connect(client) as client, sink_class(
        output, frame_shape, dtype, len(times), overwrite, info
    ) as sink:
        job = _Job(
            run=uuid.uuid4().hex,
            method=method,
            options=options,
            timeline=inputs.timeline,
            lr_norm=inputs.lr_norm,
            hr_norm=inputs.hr_norm,
            hr_full_rate=hr_full_rate,
            frame_shape=frame_shape,
            target=str(sink.target),
            zarr=sink_class is _ZarrSink,
            registration=registration,
            lr_filter=inputs.lr_filter,
        )
        sources = [_source_for_workers(client, source) for source in (lr, hr)]
        futures = {
            client.submit(
                _fuse_chunk, job, *sources, index, start, times[start:stop],
                key=f"xfusion-chunk-{index:05d}-{job.run}", retries=retries,
                resources=resources,
            ): index
            for index, (start, stop) in enumerate(bounds)
        }
        done = 0
        try:
            for future in distributed.as_completed(futures):
                try:
                    part, chunk_scores = future.result()
                except distributed.KilledWorker as err:
                    raise ClusterError(
                        f"the workers died {retries + 1} time(s) on chunk {futures[future]} "
                        f"(frames {bounds[futures[future]][0]}-{bounds[futures[future]][1] - 1}"
                        "), most often from running out of memory: give them more memory, "
                        "fewer frames per task (--chunk-frames) or a smaller --tile; run "
                        "with -v to see the workers' logs."
                    ) from err
                index = futures[future]
                scores[index] = chunk_scores
                sink.add(index, part, bounds[index])
                done += bounds[index][1] - bounds[index][0]
                if progress is not None:
                    progress(done, len(times))
        except BaseException:
            client.cancel(list(futures))
            raise
        inputs.check_unchanged()
    attention = AttentionLog()
    for index in sorted(scores):
        for frame in scores[index]:
            attention.add(frame)
    attention_path = None
    if len(attention):
        attention_path = attention_csv_path(output)
        attention.write_csv(attention_path)
    return FusionResult(output, len(times), time.perf_counter() - start_time, attention_path)


def _source_for_workers(client: Any, source: Any) -> Any:
    """A stack source as the workers receive it: an absolute path, a scattered array..."""
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source).expanduser().resolve())
    if isinstance(source, np.ndarray):
        # Sent once to the workers that need it, not with every task.
        return client.scatter(source, hash=False)
    return source


class _ZarrSink:
    """A zarr array pre-created for the whole output; tasks write their own frames."""

    def __init__(self, output, frame_shape, dtype, n_frames, overwrite, metadata) -> None:
        import zarr

        self.output, self.n_frames, self.overwrite = output, n_frames, overwrite
        self.target = incomplete_path(output)
        self.lock = OutputLock(output)
        self.lock.acquire()
        # One frame per zarr chunk: tasks never write to the same chunk file.
        self.array = zarr.open_array(
            store=str(self.target), mode="w", shape=(n_frames, *frame_shape),
            chunks=(1, *frame_shape), dtype=dtype,
        )
        self.identity = claim(self.target)
        self.array.attrs.update({**metadata, "complete": False, "frames_written": 0})
        # Tasks finish out of order: the store records which frames it holds.
        self.written: list[tuple[int, int]] = []

    def add(self, index: int, part: None, span: tuple[int, int]) -> None:
        """Record that the task of ``span`` (output frames start, stop) wrote its frames."""
        self.written.append(span)

    def __enter__(self) -> _ZarrSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._finish(exc_type)
        finally:
            self.lock.release()

    def _finish(self, exc_type) -> None:
        if exc_type is not None:
            # As for the streaming writers: bad input leaves nothing behind; after an
            # interruption the frames made so far stay in the store marked incomplete,
            # with their count and where they are.
            if issubclass(exc_type, ValueError):
                shutil.rmtree(self.target, ignore_errors=True)
            else:
                spans = sorted(self.written)
                self.array.attrs.update({
                    "frames_written": sum(stop - start for start, stop in spans),
                    "written_frames": [list(span) for span in spans],
                })
            return
        if file_identity(self.target) != self.identity:
            raise StackError(
                f"{self.target} was removed or replaced while the workers wrote it, so "
                f"{self.output} was not created. Run again."
            )
        self.array.attrs.update({"complete": True, "frames_written": self.n_frames})
        move_into_place(self.target, self.output, self.overwrite)


class _TiffSink:
    """Per-chunk TIFFs appended in order to one streamed BigTIFF as they arrive."""

    def __init__(self, output, frame_shape, dtype, n_frames, overwrite, metadata) -> None:
        self.writer = open_writer(output, frame_shape, dtype, n_frames, overwrite, metadata)
        self.target = incomplete_path(output).with_suffix(".parts")
        shutil.rmtree(self.target, ignore_errors=True)
        self.target.mkdir()
        self.waiting: dict[int, str] = {}
        self.next = 0

    def add(self, index: int, part: str, span: tuple[int, int]) -> None:
        """Take the part of chunk ``index``; append every part now in sequence."""
        self.waiting[index] = part
        while self.next in self.waiting:
            path = Path(self.waiting.pop(self.next))
            stack = read_stack(path, name="chunk")
            for i in range(len(stack)):
                self.writer.write(np.asarray(stack[i]))
            del stack
            path.unlink()
            self.next += 1

    def __enter__(self) -> _TiffSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.writer.__exit__(exc_type, exc, tb)
        finally:
            shutil.rmtree(self.target, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# On the workers


class _WorkerCache:
    """Methods and opened stacks kept by a worker process between its tasks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.methods: dict[tuple[str, str], Any] = {}
        # Opened stacks of the latest runs only: a long-lived cluster serves many runs.
        self.stacks: OrderedDict[str, tuple[Any, Any]] = OrderedDict()


_CACHE = _WorkerCache()


def _fuse_chunk(
    job: _Job, lr_source: Any, hr_source: Any, index: int, start: int, times: list[int]
) -> tuple[str | None, list[FusedFrame]]:
    """Fuse one chunk on a worker and write its frames; return its part and scores.

    Returns
    -------
    part : str or None
        The chunk's TIFF (None for zarr, written in place).
    scores : list of FusedFrame
        The frames that carry attention scores, without their images.
    """
    lr, lr_smoothed, hr, hr_raw = _worker_stacks(job, lr_source, hr_source)
    method = _worker_method(job.method, job.options)
    lr = method.lr_stack(lr, lr_smoothed)
    if job.zarr:
        import zarr

        array = zarr.open_array(store=job.target, mode="r+")
        part, writer = None, contextlib.nullcontext()

        def write(k: int, image: np.ndarray) -> None:
            array[start + k] = image

    else:
        # A name of its own per attempt: a task that dask runs twice never shares a file.
        part = str(Path(job.target) / f"chunk-{index:05d}-{uuid.uuid4().hex[:8]}.tif")
        writer = open_writer(part, job.frame_shape, job.hr_norm.dtype, n_frames=len(times))

        def write(k: int, image: np.ndarray) -> None:
            writer.write(image)

    empty = np.empty((0, 0), np.float32)
    scores, made = [], 0
    with writer:
        for k, frame in enumerate(method.fuse(lr, hr, job.timeline, times)):
            if k >= len(times) or frame.t != times[k]:
                raise RuntimeError(f"method {job.method!r} fused other frames than asked.")
            write(k, camera_units(frame, job.hr_norm, job.timeline, hr_raw))
            if frame.attention is not None:
                scores.append(dataclasses.replace(frame, image=empty))
            made += 1
    if made != len(times):
        raise RuntimeError(f"method {job.method!r} fused {made} of the {len(times)} frames asked.")
    return part, scores


class _SynchronousStack:
    """A dask stack whose frames are computed in the calling thread.

    Inside a task, dask would send a computation to the cluster the task runs on; reading
    a frame is cheaper done here.
    """

    def __init__(self, stack) -> None:
        self.stack = stack
        self.shape, self.dtype, self.ndim = stack.shape, stack.dtype, stack.ndim

    def __len__(self) -> int:
        return len(self.stack)

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self.stack[key].compute(scheduler="synchronous"))


def _worker_stacks(job: _Job, lr_source: Any, hr_source: Any) -> tuple[Any, Any, Any, Any]:
    """The normalized LR stack of a run (and through the LR filter's smooth form, or None
    without a filter), its normalized HR stack, and the HR one in its camera's units,
    opened once per worker process."""
    with _CACHE.lock:
        stacks = _CACHE.stacks.get(job.run)
        if stacks is not None:
            return stacks
        lr_raw = read_stack(lr_source, name="LR stack")
        hr_raw = read_stack(hr_source, name="HR stack")
        if job.hr_full_rate:
            hr_raw = hr_raw[full_rate_selection(len(lr_raw), len(hr_raw), job.timeline.model)]
        if job.registration is not None:
            lr_raw = job.registration.crop_lr(lr_raw)
            hr_raw = read_stack(job.registration.resample_hr(hr_raw), name="HR stack")
        seen = (len(lr_raw), len(hr_raw))
        if seen != (job.timeline.n_lr, job.timeline.n_hr):
            raise ValueError(
                f"a worker sees {seen[0]} LR and {seen[1]} HR frames where the client saw "
                f"{job.timeline.n_lr} and {job.timeline.n_hr}: the workers must see the same "
                "files under the same paths (a shared file system)."
            )
        smoothed = None if job.lr_filter is None else _SynchronousStack(
            normalized_lr(lr_raw, job.lr_norm, job.lr_filter, smooth=True))
        stacks = (
            _SynchronousStack(normalized_lr(lr_raw, job.lr_norm, job.lr_filter)),
            smoothed,
            _SynchronousStack(job.hr_norm.apply(hr_raw)),
            FrameCache(_SynchronousStack(hr_raw), capacity=2, dtype=None),
        )
        _CACHE.stacks[job.run] = stacks
        while len(_CACHE.stacks) > 2:
            _CACHE.stacks.popitem(last=False)
        return stacks


def _worker_method(name: str, options: dict) -> Any:
    """The fusion method ``name`` built once per worker process, on the worker's device."""
    engine = options.get("engine")
    if isinstance(engine, EngineConfig) and engine.device == "auto":
        from distributed import get_worker

        device = worker_device("auto", get_worker().name, _cuda_device_count())
        options = {**options, "engine": dataclasses.replace(engine, device=device)}
    key = (name, repr(sorted(options.items())))
    with _CACHE.lock:
        method = _CACHE.methods.get(key)
        if method is None:
            method = _CACHE.methods[key] = create_method(name, **options)
        return method
