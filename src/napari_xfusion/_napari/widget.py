"""The fusion dock: pick the two layers, set the time model, fuse in the background.

The widget only collects settings, checks them with the library (so an impossible setting
is flagged with the library's own reason before anything runs) and shows results. The work
is in :mod:`.jobs`: :func:`~.jobs.fusion_steps`, a generator run in a napari thread worker
that yields one fused frame at a time (the dock stores each frame in the result layer, which
fills in while the run goes on), and the calibration and assessment steps.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QSize, Qt, Signal
from qtpy.QtWidgets import QScrollArea, QSizePolicy, QWidget
from superqt import QCollapsible

from ..checks import check_scale, full_rate_selection
from ..config import CalibrationConfig, EngineConfig, TimeModel
from ..devices import available_devices
from ..io import check_output_path, read_stack
from ..methods import calibrated_methods, method_aligns_keyframes, method_labels, method_network
from ..models.weights import check_weights_file
from ..registration import Registration
from ..timeline import Timeline
from .jobs import (
    FusionPlan,
    Prepared,
    assessment_steps,
    calibration_steps,
    fusion_steps,
    registration_steps,
)
from .placement import keyframe_time_placement
from .record import RECORD_KEY, FusionRecord, ResultStack

#: Methods in the order the menu offers them; others registered later follow.
METHOD_ORDER = ("stf-aligned", "stf", "edvr", "bayes", "transfer", "bicubic")
#: Largest result held in memory without an output file (bytes).
IN_MEMORY_LIMIT = 4 * 2**30
#: Memory kept for recent frames while a run streams to a file (bytes).
STREAMING_CACHE = 2**30
#: Minimum seconds between two redraws of the progress line.
PROGRESS_INTERVAL = 0.2


class _Lines(QObject):
    """Carries report lines from a worker thread to the GUI thread."""

    line = Signal(str)


class _Background:
    """The running worker, its stop flag and its report lines, kept apart from the widget.

    When the dock (or the viewer) closes, its Qt objects are deleted while a worker may
    still run; the worker's next signal would then reach deleted widgets and abort Python.
    :meth:`stop` is connected to the dock's ``destroyed`` signal: it cuts the worker off
    from the widget and sets the stop flag, so the work ends at its next step the way a
    cancel ends it, closing what it holds (an output file, the fusion's allocator
    settings); the worker is not told to quit, which would leave the work suspended.

    Parameters
    ----------
    say : callable
        Receives, in the GUI thread, each line the work passes to :meth:`report`.
    """

    def __init__(self, say: Callable[[str], None]) -> None:
        self.worker = None
        self.handlers: dict = {}
        self.stop_event = threading.Event()
        self.activity: progress | None = None
        self._lines = _Lines()
        self._lines.line.connect(say)

    def report(self, text: str) -> None:
        """Pass a line to the dock; callable from the worker thread."""
        self._lines.line.emit(text)

    def start(
        self, worker, handlers: dict, stop_event: threading.Event, activity: progress
    ) -> None:
        self.worker, self.handlers, self.stop_event = worker, handlers, stop_event
        self.activity = activity
        worker.start()

    def end_activity(self) -> None:
        """Take the work's entry out of napari's activity panel."""
        activity, self.activity = self.activity, None
        if activity is not None:
            activity.close()

    def stop(self, *_) -> None:
        self.stop_event.set()
        self.end_activity()
        with contextlib.suppress(TypeError, RuntimeError):  # already disconnected
            self._lines.line.disconnect()
        worker, self.worker = self.worker, None
        if worker is None:
            return
        # Only the dock's own slots: napari's task bookkeeping stays connected.
        for name, handler in self.handlers.items():
            try:
                getattr(worker, name).disconnect(handler)
            except (TypeError, RuntimeError):  # already gone
                pass


#: What each setting means, shown when the pointer rests on it (attribute: text).
_TOOLTIPS = {
    "lr": "The fast, low-resolution camera's stack: one frame per output time.",
    "hr": "The slow, high-resolution camera's frames: one every D LR frames.",
    "full_rate": "For simulations: the HR stack has a frame at every LR time, and only every "
    "D-th (from the first keyframe) is used, as a real HR camera would give them.",
    "spacing": "LR frames from one HR keyframe to the next (the ratio of the frame rates).",
    "offset": "The LR frame taken at the same moment as the first HR keyframe (negative: "
    "before the LR recording starts).",
    "separation": "The network sees LR frames t-r, t and t+r; 1 suits most recordings.",
    "scale": "HR pixels per LR pixel along each axis (after registration).",
    "method": "How to fuse: the networks (EDVR-STF) or a classical method; 'Assess methods' "
    "below tells which suits this recording.",
    "weights": "A .safetensors file from xfusion train or calibration; empty uses the "
    "bundled weights.",
    "device": "Where the network runs; auto picks a GPU when there is one.",
    "precision": "Number format of the network's arithmetic: auto uses bf16 where the "
    "processor computes it natively (faster, same result to about 66 dB), else fp32.",
    "batch": "Tiles the network fuses at once; more is faster on a GPU and uses more memory.",
    "tile": "Networks fuse large frames in overlapping tiles; smaller tiles use less memory.",
    "overlap": "LR pixels shared by neighbouring tiles, blended to hide seams.",
    "truth": "A full-rate HR stack of the same event (simulations): the dock then reports "
    "each frame's PSNR.",
    "output": "Stream the fused frames to this .tif or .zarr as they are made (optional).",
    "overwrite": "Replace an existing output or calibrated weights file; also discards the "
    "frames of an interrupted run to that file.",
    "calibrate_minutes": "How long to fine-tune the network on this recording's keyframes; a "
    "few minutes on a laptop.",
    "calibrated_out": "Where to save the calibrated weights (.safetensors), whether or not "
    "they helped; empty keeps them in a temporary folder.",
    "calibrate_button": "Fine-tune the network on this recording's keyframes (for the chosen "
    "method, aligned keyframes included), and say whether it helped on keyframes it did not "
    "train on.",
    "assess_button": "Predict each keyframe from its neighbours with every method and rank "
    "the methods for this recording.",
    "register_button": "Two separate cameras: find the scale, rotation, mirror and shift "
    "that map the HR frames onto the LR ones.",
    "estimate_offset": "Let the registration also choose the first keyframe's LR frame.",
}


class FusionWidget(Container):
    """Dock widget that fuses an LR layer and an HR layer of the viewer.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.worker = None
        self.result_layer = None
        self._warnings: list[str] = []
        self._run_warnings: list[str] = []
        self._run_notes: list[str] = []
        self._plan: FusionPlan | None = None
        self._failed = False
        self._stop = threading.Event()
        self._started = 0.0
        self._last_progress = 0.0

        layers = self._image_layers
        self.lr = ComboBox(label="LR stream", choices=layers, nullable=True)
        self.hr = ComboBox(label="HR keyframes", choices=layers, nullable=True)
        self.full_rate = CheckBox(text="HR stack is full-rate: keep every D-th frame")
        self.spacing = SpinBox(label="keyframe spacing D", value=10, min=1, max=10**7)
        self.offset = SpinBox(label="first keyframe at LR frame", value=0, min=-(10**7), max=10**7)
        self.separation = SpinBox(label="LR neighbours ±r (frames)", value=1, min=1, max=100)
        self.scale = SpinBox(label="scale", value=4, min=1, max=16)
        labels = method_labels()
        names = [n for n in METHOD_ORDER if n in labels] + sorted(set(labels) - set(METHOD_ORDER))
        self.method = ComboBox(label="method", choices=[(labels[n], n) for n in names])
        self.weights = FileEdit(label="weights (empty: bundled)", mode="r", filter="*.safetensors")
        devices = available_devices()
        self.device = ComboBox(label="device", choices=["auto", *devices])
        self.badge = Label(label="runs on")
        self.precision = ComboBox(label="precision", choices=["auto", "fp32", "bf16", "fp16"])
        self.batch = SpinBox(label="tiles per pass", value=EngineConfig.batch, min=1, max=256)
        self.tile = SpinBox(label="tile size, LR pixels (0 = auto)", value=0, min=0, max=8192)
        self.overlap = SpinBox(label="tile overlap, LR pixels", value=16, min=0, max=512)
        self.truth = ComboBox(label="ground truth (optional)", choices=layers, nullable=True)
        self.output = FileEdit(
            label="output file (optional)", mode="w", filter="*.tif *.tiff *.zarr"
        )
        self.overwrite = CheckBox(text="replace an existing output file")
        self.message = Label(label="")
        # Room for three lines: a form layout does not grow a wrapped label by itself.
        self.message.native.setWordWrap(True)
        self.message.native.setMinimumHeight(3 * self.message.native.fontMetrics().height() + 4)
        self.run_button = PushButton(text="Fuse")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.speed = Label(label="")
        self.speed.native.setWordWrap(True)  # a long line must not widen the dock
        self.calibrate_button = PushButton(text="Calibrate on keyframes")
        self.calibrate_minutes = SpinBox(label="calibration minutes", value=5, min=1, max=600)
        self.calibrated_out = FileEdit(
            label="save calibrated weights to", mode="w", filter="*.safetensors"
        )
        self.assess_button = PushButton(text="Assess methods on keyframes")
        self.assessment = Label(label="")
        self.assessment.native.setStyleSheet("font-family: monospace")
        self.register_button = PushButton(text="Register cameras")
        self.estimate_offset = CheckBox(text="estimate the keyframe offset", value=False)
        self.registration: Registration | None = None
        self.extend([
            self.lr, self.hr, self.register_button, self.estimate_offset, self.full_rate,
            self.spacing, self.offset, self.separation, self.scale, self.method, self.badge,
            self.truth, self.output, self.overwrite, self.run_button, self.cancel_button,
            self.progress, self.assess_button,
        ])
        # Status lines and the assessment table span the dock's width: in a labelled row
        # they would wrap in its right-hand column.
        for label in (self.message, self.speed, self.assessment):
            label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self._insert_row(self.message.native, before=self.run_button)
        self._insert_row(self.speed.native, before=self.assess_button)
        self._insert_row(self.assessment.native)
        # What a beginner never needs waits, folded, under the main form.
        self.network_section = self._add_section(
            "Network and device",
            [self.weights, self.device, self.precision, self.batch, self.tile, self.overlap],
            before=self.message,
        )
        self.calibration_section = self._add_section(
            "Calibrate the network on this recording",
            [self.calibrate_minutes, self.calibrated_out, self.calibrate_button],
        )
        for name, text in _TOOLTIPS.items():
            getattr(self, name).tooltip = text
        self._guess_layers()

        self._settings = [
            self.lr, self.hr, self.full_rate, self.spacing, self.offset, self.separation,
            self.scale, self.method, self.weights, self.device, self.precision, self.batch,
            self.tile, self.overlap, self.truth, self.output, self.overwrite,
            self.estimate_offset, self.calibrate_minutes, self.calibrated_out,
        ]
        self._calibration_dock = None
        self.hr.changed.connect(self._read_time_model)
        for widget in self._settings:
            widget.changed.connect(self._on_change)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.calibrate_button.changed.connect(self.start_calibration)
        self.assess_button.changed.connect(self.start_assessment)
        self.register_button.changed.connect(self.start_registration)
        for choice in (self.lr, self.hr):
            choice.changed.connect(self._forget_registration)
            choice.changed.connect(self._on_dataset_changed)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._on_layers_changed)
        self._background = _Background(self._say)
        self.native.destroyed.connect(self._background.stop)
        self._read_time_model()
        self._on_change()

    def _insert_row(self, native: QWidget, before=None) -> None:
        """Put a Qt widget in the form's layout, above the widget ``before`` (None: at the
        end), outside magicgui's labelled rows."""
        layout = self.native.layout()
        index = layout.count() if before is None else layout.indexOf(before.native.parent())
        if index < 0:  # `before` is not wrapped in a labelled row
            index = layout.indexOf(before.native)
        layout.insertWidget(index, native)

    def _add_section(self, title: str, widgets: list, before=None) -> QCollapsible:
        """A folded section of ``widgets`` in the form, above ``before`` (None: at the end).

        magicgui has no folding container: the section's own labelled form goes into a
        superqt QCollapsible placed in this form's layout.
        """
        form = Container(widgets=widgets, labels=True)
        form.margins = (0, 0, 0, 0)
        section = QCollapsible(title)
        section.addWidget(form.native)
        self._insert_row(section, before)
        return section

    # --- settings -------------------------------------------------------------------

    def _image_layers(self, widget=None) -> list[tuple[str, object]]:
        return [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, Image) and RECORD_KEY not in layer.metadata
        ]

    def _guess_layers(self) -> None:
        """Pick the layers whose names say what they are (the sample data's, for one)."""
        for layer in self.viewer.layers:
            name = layer.name.lower()
            # "scan42_lr", "LR stream", "hr-keyframes": the words, whatever separates them.
            words = re.split(r"[^a-z0-9]+", name)
            if self.lr.value is None and "lr" in words:
                self.lr.value = layer
            elif self.hr.value is None and ("keyframe" in name or "hr" in words):
                if "truth" not in name:
                    self.hr.value = layer
        self._guess_truth()

    def _guess_truth(self) -> None:
        """A ground truth with one frame per LR frame, named so, if there is one."""
        lr = self.lr.value
        if self.truth.value is not None or lr is None:
            return
        for layer in self.viewer.layers:
            if "truth" in layer.name.lower() and layer.data.shape[0] == lr.data.shape[0]:
                self.truth.value = layer
                return

    def _on_layers_changed(self, event=None) -> None:
        removed = getattr(event, "type", None) == "removed"
        if removed and self.worker is not None and event.value is self.result_layer:
            # The layer the run fills is gone: stop the run rather than fuse into nothing.
            self.cancel()
            self._say("the result layer was deleted: the run stops after the current frame.")
        self.reset_choices()
        self._guess_layers()
        self._on_change()

    def _on_dataset_changed(self, *_) -> None:
        """Another LR or HR layer: a ground truth chosen for the old one no longer applies."""
        truth = self.truth.value
        lr = self.lr.value
        if truth is not None and lr is not None and truth.data.shape[0] != lr.data.shape[0]:
            self.truth.value = None
        self._guess_truth()

    def _read_time_model(self, *_) -> None:
        """Take spacing, offset and scale from an HR layer that records its time model."""
        layer = self.hr.value
        model = None if layer is None else layer.metadata.get("time_model")
        if isinstance(model, TimeModel):
            self.spacing.value, self.offset.value = model.spacing, model.offset
            self.scale.value, self.separation.value = model.scale, model.separation

    @staticmethod
    def _path(edit: FileEdit) -> Path | None:
        # The raw text: an empty FileEdit's value is the current folder, not "nothing".
        text = edit.line_edit.value.strip()
        return Path(text).expanduser() if text else None

    def plan(self) -> FusionPlan:
        """The run the current settings describe.

        Raises
        ------
        ValueError
            Naming what is wrong and how to fix it.
        """
        lr, hr, truth = self.lr.value, self.hr.value, self.truth.value
        if lr is None or hr is None:
            raise ValueError("choose the LR stream and the HR keyframe layers (open two stacks).")
        if lr is hr:
            raise ValueError("the LR and HR layers are the same layer: choose two different ones.")
        for role, layer in (("LR", lr), ("HR", hr), ("ground truth", truth)):
            if layer is not None and (layer.rgb or layer.ndim != 3):
                raise ValueError(
                    f"the {role} layer {layer.name!r} is not a (t, y, x) grayscale stack "
                    f"(shape {layer.data.shape}): open a stack of frames."
                )
        time_model = TimeModel(
            spacing=self.spacing.value, offset=self.offset.value,
            separation=self.separation.value, scale=self.scale.value,
        )
        n_lr = lr.data.shape[0]
        registration = self.registration
        if registration is not None:
            registration.check_stacks(lr.data.shape, hr.data.shape)
            y0, y1, x0, x1 = registration.crop
            s = time_model.scale
            frame_shape = (s * (y1 - y0), s * (x1 - x0))
        else:
            check_scale(lr.data.shape, hr.data.shape, time_model.scale)
            frame_shape = tuple(int(n) for n in hr.data.shape[1:])
        n_hr = hr.data.shape[0]
        if self.full_rate.value:
            n_hr = len(full_rate_selection(n_lr, n_hr, time_model))
        self._warnings = Timeline(n_lr, n_hr, time_model).warnings()
        if truth is not None and tuple(truth.data.shape) != (n_lr, *frame_shape):
            raise ValueError(
                f"the ground truth {truth.name!r} has shape {truth.data.shape}, not one HR frame "
                f"per LR frame {(n_lr, *frame_shape)}: choose another layer or none."
            )
        method = self.method.value
        weights = self._path(self.weights)
        network = method_network(method)
        if network is not None:
            check_weights_file(weights, network, time_model.scale)
        output = self._path(self.output)
        if output is not None:
            output = check_output_path(output, overwrite=self.overwrite.value)
        else:
            size = n_lr * frame_shape[0] * frame_shape[1] * np.dtype(hr.data.dtype).itemsize
            if size > IN_MEMORY_LIMIT:
                raise ValueError(
                    f"the result ({size / 2**30:.1f} GiB) is too large to keep in memory: "
                    "choose an output file to stream it to disk."
                )
        tile = self.tile.value or None
        engine = EngineConfig(
            device=self.device.value, tile=tile, overlap=self.overlap.value,
            batch=self.batch.value, precision=self.precision.value,
        )
        return FusionPlan(
            lr=lr.data, hr=hr.data, truth=None if truth is None else truth.data,
            time_model=time_model, hr_full_rate=self.full_rate.value, method=method,
            weights=weights, engine=engine, output=output, overwrite=self.overwrite.value,
            n_frames=n_lr, frame_shape=frame_shape, registration=registration,
        )

    def _on_change(self, *_) -> None:
        self._show_device()
        if self.worker is not None:
            return
        try:
            plan = self.plan()
        except ValueError as err:
            self._say(str(err), error=True)
            self.run_button.enabled = self.calibrate_button.enabled = False
            self.assess_button.enabled = False
            return
        self._place_layers(plan.time_model)
        registered = " (registered cameras)" if plan.registration is not None else ""
        ready = (f"ready: {plan.n_frames} frames of {plan.frame_shape[1]}x"
                 f"{plan.frame_shape[0]}{registered}")
        if self._warnings:
            self._say(f"{ready}, but {' '.join(self._warnings)}", error=True)
        else:
            self._say(ready)
        self.run_button.enabled = self.assess_button.enabled = True
        self.calibrate_button.enabled = plan.method in calibrated_methods()
        try:
            self._calibrated_out()
        except ValueError as err:
            self._say(str(err), error=True)
            self.calibrate_button.enabled = False

    def _calibrated_out(self) -> Path | None:
        """The checked file the calibrated weights go to, or None for a temporary one."""
        path = self._path(self.calibrated_out)
        if path is None:
            return None
        return check_output_path(path, overwrite=self.overwrite.value, suffixes=(".safetensors",))

    def _show_device(self) -> None:
        choice = self.device.value
        devices = available_devices()
        name = (devices[1] if len(devices) > 1 else "cpu") if choice == "auto" else choice
        if method_network(self.method.value) is None:
            text, colour = "CPU (classical method)", "#8a8a8a"
        elif name.startswith("cuda"):
            import torch

            text, colour = f"GPU: {torch.cuda.get_device_name(torch.device(name))}", "#2e9e44"
        else:
            text, colour = "CPU (slow for neural methods)", "#d08a1e"
        self.badge.value = text
        self.badge.native.setStyleSheet(f"color: {colour}; font-weight: bold")

    def _warned(self, text: str) -> str:
        """``text`` followed by the notes and warnings of the current run, if any."""
        return " ".join([text, *(line[:1].upper() + line[1:] for line in self._run_notes),
                         *(f"Warning: {line}" for line in self._run_warnings)])

    def _say(self, text: str, error: bool = False) -> None:
        # The library speaks the command line's language; here the flag is a check box.
        text = text.replace("pass --overwrite", "tick 'replace an existing output file'")
        self.message.value = text
        # A long message is cut by the dock's width: the whole of it rests on the label.
        self.message.tooltip = text
        self.message.native.setStyleSheet("color: #e05050" if error else "")

    def _place_layers(self, model: TimeModel) -> None:
        """Put both stacks on the LR time axis and the fusion grid, so scrubbing matches.

        At LR time t the HR layer shows the keyframe in effect: the latest one taken at or
        before t (none before the first keyframe).

        World units are pixels of the fusion grid (``scale`` per LR pixel). Without a
        registration the HR layer already is that grid; with one, the HR camera's frames are
        drawn through its transform (an affine), so that they lie over the LR frames.
        """
        lr, hr = self.lr.value, self.hr.value
        s = model.scale
        if self.registration is not None:
            hr_scale, hr_shift = np.ones(2), np.zeros(2)
            t = self.registration.transform
            # World = s * (LR coordinates) + (s - 1) / 2, LR = matrix @ HR + offset.
            affine = np.eye(4)
            affine[1:3, 1:3] = s * t.matrix
            affine[1:3, 3] = s * t.offset + (s - 1) / 2
            hr.affine = affine
        else:
            hr_scale, hr_shift = np.asarray(hr.scale[1:]), np.asarray(hr.translate[1:])
        if self.full_rate.value:
            hr.scale, hr.translate = (1, *hr_scale), (0, *hr_shift)
        else:
            time_scale, time_shift = keyframe_time_placement(model)
            hr.scale, hr.translate = (time_scale, *hr_scale), (time_shift, *hr_shift)
        # An LR pixel covers s HR pixels, so its centre sits (s - 1) / 2 HR pixels in.
        placed = (1, *(s * hr_scale)), (0, *(hr_shift + (s - 1) / 2 * hr_scale))
        moved = not np.allclose(lr.scale, placed[0]) or not np.allclose(lr.translate, placed[1])
        lr.scale, lr.translate = placed
        if moved:
            # The LR layer now spans the fusion grid: show all of it, not the corner it was.
            self.viewer.reset_view()

    def _fused_placement(self) -> tuple[tuple, tuple]:
        """Scale and translate of a fused layer: the fusion grid over the crop, if any."""
        plan, hr = self._plan, self.hr.value
        if plan.registration is None:
            return (1, *hr.scale[1:]), (0, *hr.translate[1:])
        y0, _, x0, _ = plan.registration.crop
        s = plan.time_model.scale
        return (1, 1, 1), (0, s * y0, s * x0)

    def _forget_registration(self, *_) -> None:
        """Another LR or HR layer: the registration was for the old ones."""
        if self.registration is None:
            return
        self.registration = None
        hr = self.hr.value
        if hr is not None:
            hr.affine = np.eye(4)
        self._on_change()

    # --- fusion ---------------------------------------------------------------------

    def _begin(self) -> FusionPlan | None:
        """The checked plan of a new background run, or None when none can start now."""
        if self.worker is not None:
            return None
        try:
            plan = self.plan()
        except ValueError as err:
            show_error(str(err))
            return None
        self._stop = threading.Event()
        self._plan, self._failed = plan, False
        return plan

    def _run_in_background(self, work, *args, activity: str, total: int = 0, **handlers) -> None:
        """Run ``work(*args)`` in a worker thread, shown in napari's activity panel as
        ``activity`` (with ``total`` steps; 0: busy without a count)."""
        # Handlers are given at creation: a worker without an `errored` handler re-raises.
        connect = {"errored": self._on_error, **handlers}
        self.worker = thread_worker(work, start_thread=False, connect=connect)(*args)
        self._set_running(True)
        # The same progress as the dock's, where it shows with the dock hidden.
        self._background.start(
            self.worker, connect, self._stop, progress(total=total, desc=activity)
        )

    def start(self) -> None:
        """Start fusing with the current settings (a no-op while a run is going)."""
        plan = self._begin()
        if plan is None:
            return
        self._run_warnings, self._run_notes = [], []
        self._say("preparing: normalizing the stacks and loading the method...")
        self.progress.max, self.progress.value = plan.n_frames, 0
        self._started = time.perf_counter()
        self._run_in_background(
            fusion_steps, plan, self._stop, activity=f"fusing ({plan.method})",
            total=plan.n_frames, yielded=self._on_yielded, finished=self._on_finished,
        )

    def cancel(self) -> None:
        """Stop the work after its current step (a fusion: the frame being fused)."""
        self._stop.set()
        activity = self._background.activity
        if activity is not None and not activity.desc.startswith("fusing"):
            self._say(f"cancelling: {activity.desc} stops after its current step...")
        else:
            self._say("cancelling after the current frame...")

    def _set_running(self, running: bool) -> None:
        # A run works from the plan made at its start: settings changed meanwhile would
        # look applied and be ignored.
        for widget in self._settings:
            widget.enabled = not running
        self.run_button.enabled = self.assess_button.enabled = not running
        self.register_button.enabled = not running
        self.calibrate_button.enabled = not running
        self.cancel_button.enabled = running
        if not running:
            self._background.end_activity()

    def _on_yielded(self, item) -> None:
        if isinstance(item, Prepared):
            self._add_result_layer(item.timeline)
            self._run_warnings, self._run_notes = list(item.warnings), list(item.notes)
            self._say(self._warned(f"fusing on {item.device}..."), error=bool(item.warnings))
            return
        frame = item.frame
        self.result_layer.data[frame.t] = item.image
        self.result_layer.metadata[RECORD_KEY].add(frame, item.psnr)
        if round(self.viewer.dims.point[0]) == frame.t or len(self._record.done) == 1:
            self.result_layer.refresh()
        self._show_progress(len(self._record.done))

    @property
    def _record(self) -> FusionRecord:
        return self.result_layer.metadata[RECORD_KEY]

    def result_name(self) -> str:
        """The result layer's name: the LR layer's and the method's, so that fusing another
        dataset (or with another method) never replaces this one's result."""
        return f"{self.lr.value.name} fused ({method_labels()[self._plan.method]})"

    def _add_result_layer(self, timeline: Timeline) -> None:
        plan, hr = self._plan, self.hr.value
        label = method_labels()[plan.method]
        name = self.result_name()
        per_frame = plan.frame_shape[0] * plan.frame_shape[1] * np.dtype(hr.data.dtype).itemsize
        capacity = None if plan.output is None else max(STREAMING_CACHE // per_frame, 1)
        data = ResultStack((plan.n_frames, *plan.frame_shape), hr.data.dtype, capacity)
        scale, translate = self._fused_placement()
        inputs = {"lr": self.lr.value.name, "hr": hr.name}
        if self.truth.value is not None:
            inputs["truth"] = self.truth.value.name
        index = None
        if name in self.viewer.layers:
            old = self.viewer.layers[name]
            index = self.viewer.layers.index(old)
            self.viewer.layers.remove(old)
        self.result_layer = self.viewer.add_image(
            data,
            name=name,
            contrast_limits=hr.contrast_limits,
            colormap=hr.colormap.name,
            scale=scale,
            translate=translate,
            axis_labels=("t", "y", "x"),
            multiscale=False,
            metadata={RECORD_KEY: FusionRecord(timeline, label, inputs)},
        )
        if index is not None:
            self.viewer.layers.move(self.viewer.layers.index(self.result_layer), index)

    def _show_progress(self, done: int) -> None:
        now = time.perf_counter()
        if done < self.progress.max and now - self._last_progress < PROGRESS_INTERVAL:
            return
        self._last_progress = now
        self.progress.value = done
        activity = self._background.activity
        if activity is not None:
            activity.n = done
            activity.refresh()
        rate = done / max(now - self._started, 1e-9)
        line = f"{done}/{self.progress.max} frames, {rate:.2f} frames/s"
        if done < self.progress.max:
            left = (self.progress.max - done) / rate if rate > 0 else float("nan")
            line += f", {left:.0f} s left"
        self.speed.value = line

    def _on_error(self, err: Exception) -> None:
        self._failed = True
        if isinstance(err, InterruptedError):  # a cancelled assessment
            self._say(str(err))
            return
        show_error(f"failed: {err}")
        self._say(f"failed: {err}", error=True)

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)
        layer, plan = self.result_layer, self._plan
        done = 0 if layer is None else len(layer.metadata[RECORD_KEY].done)
        if layer is not None and done:
            self._show_progress(done)
        seconds = time.perf_counter() - self._started
        if self._failed:  # the error is already shown
            return
        if done < plan.n_frames:
            kept = ""
            if plan.output is not None:
                kept = (
                    "; the frames written so far are kept in "
                    f"{plan.output.stem}.incomplete{plan.output.suffix}"
                )
            self._say(f"cancelled after {done} of {plan.n_frames} frames{kept}.")
            self.speed.value = f"{done}/{plan.n_frames} frames, cancelled"
            return
        where = ""
        if plan.output is not None:
            # Frames older than the memory cache were dropped: show the file instead.
            layer.data = read_stack(plan.output, name="fused stack")
            where = f", written to {plan.output}"
        self._say(
            self._warned(f"fused {done} frames in {seconds:.1f} s ({done / seconds:.2f} "
                         f"frames/s){where}."),
            error=bool(self._run_warnings),
        )

    # --- calibration ----------------------------------------------------------------

    def start_calibration(self) -> None:
        """Fine-tune the network on this experiment's keyframes in the background."""
        plan = self._begin()
        if plan is None:
            return

        try:
            out = self._calibrated_out()
        except ValueError as err:
            show_error(str(err))
            return
        if out is None:
            out = Path(tempfile.mkdtemp(prefix="xfusion-calibrated-")) / "calibrated.safetensors"
        config = CalibrationConfig(
            device=plan.engine.device, max_minutes=float(self.calibrate_minutes.value),
            out=str(out), align_keyframes=method_aligns_keyframes(plan.method),
        )
        self.progress.max, self.progress.value = 0, 0  # busy indicator
        self._say("calibrating: preparing the keyframes...")
        self._run_in_background(
            calibration_steps, plan, config, self._stop, self._background.report,
            activity="calibrating the network", returned=self._on_calibrated,
            finished=self._on_background_finished,
        )

    def _on_calibrated(self, result) -> None:
        from .calibration import CalibrationView

        view = CalibrationView(result, self.viewer)
        if self._calibration_dock is not None:
            # One calibration dock: the latest run's replaces the one before.
            with contextlib.suppress(LookupError, RuntimeError):
                self.viewer.window.remove_dock_widget(self._calibration_dock)
        self._calibration_dock = self.viewer.window.add_dock_widget(
            view, name="Calibration", area="right"
        )
        if result.helped:
            self.weights.value = str(result.weights_path)
            show_info(f"calibration {result.summary()}: the calibrated weights are selected.")
        else:
            show_info(
                f"calibration {result.summary()}: keeping the current weights (the calibrated "
                f"ones are in {result.weights_path})."
            )

    def _on_background_finished(self) -> None:
        self.worker = None
        self._set_running(False)
        self.calibrate_button.enabled = self.method.value in calibrated_methods()
        self.progress.max, self.progress.value = 1, 1

    # --- registration ---------------------------------------------------------------

    def start_registration(self) -> None:
        """Register the two cameras in the background (before a plan can be made)."""
        lr, hr = self.lr.value, self.hr.value
        if self.worker is not None or lr is None or hr is None or lr is hr:
            show_error("choose two different layers: the LR stream and the HR keyframes.")
            return
        self.registration = None
        time_model = TimeModel(
            spacing=self.spacing.value, offset=self.offset.value,
            separation=self.separation.value, scale=self.scale.value,
        )
        self._stop, self._failed = threading.Event(), False
        self.progress.max, self.progress.value = 0, 0  # busy indicator
        self._say("registering the cameras: searching mirrors, scales and rotations...")
        self._registered = None
        self._run_in_background(
            registration_steps, lr.data, hr.data, time_model, self.estimate_offset.value,
            activity="registering the cameras", returned=self._keep_registration,
            finished=self._on_registered,
        )
        self.cancel_button.enabled = False  # the search runs to its end

    def _keep_registration(self, result) -> None:
        self._registered = result

    def _on_registered(self) -> None:
        """After the worker: use the registration, show the checkerboard, say what it is."""
        self._on_background_finished()
        if self._registered is None:  # failed: the error is shown
            return
        registration, board, (y0, x0) = self._registered
        self.registration = registration
        t, s = registration.transform, registration.time_model.scale
        if registration.offset_estimated:
            self.offset.value = registration.time_model.offset
        name = "Registration check (checkerboard)"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.viewer.add_image(board, name=name, translate=(s * y0, s * x0),
                              contrast_limits=(0, 1), colormap="gray")
        self._on_change()
        self.viewer.reset_view()
        notes = "; ".join(registration.warnings)
        self._say(
            f"registered: {t.ratio_y:.3f} x {t.ratio_x:.3f} HR px per LR px, rotation "
            f"{t.rotation_deg:+.2f} deg, agreement {registration.similarity:.3f}, residual "
            f"{registration.residual:.3f} LR px, offset {registration.time_model.offset}"
            + (f". Warning: {notes}" if notes else ".")
        )

    # --- assessment -----------------------------------------------------------------

    def start_assessment(self) -> None:
        """Score every method on this recording's keyframes in the background."""
        plan = self._begin()
        if plan is None:
            return

        self.progress.max, self.progress.value = 0, 0  # busy indicator
        self._say("assessing: normalizing the stacks...")
        self._run_in_background(
            assessment_steps, plan, self._stop, self._background.report,
            activity="assessing the methods", returned=self._on_assessed,
            finished=self._on_background_finished,
        )

    def _on_assessed(self, assessment) -> None:
        best = assessment.best
        self.assessment.value = (
            f"keyframes {assessment.keyframes}, each predicted from its neighbours:\n"
            + assessment.table()
        )
        self.method.value = best.name
        self._say(f"{best.label} is recommended for this recording: selected.")


class FusionDock(QScrollArea):
    """The fusion dock as napari shows it: a :class:`FusionWidget` in a scroll area.

    The form is taller than a laptop screen beside the plot dock; in a scroll area it
    shrinks with the window instead of setting the window's minimum height.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer

    Attributes
    ----------
    fusion : FusionWidget
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.fusion = FusionWidget(napari_viewer)
        self.setWidget(self.fusion.native)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)

    def minimumSizeHint(self) -> QSize:
        """As wide as the form (measured when asked: fonts and styles change it once
        shown) and the vertical scroll bar; as short as a few rows."""
        width = (
            self.fusion.native.minimumSizeHint().width()
            + self.verticalScrollBar().sizeHint().width()
            + 2 * self.frameWidth()
        )
        return QSize(width, 120)

