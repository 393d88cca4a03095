"""Plot docks that follow the viewer's time: per-frame attention scores and PSNR.

:class:`FramePlot` is the small base: a matplotlib figure in napari's colours, a cursor
at the current frame, and click-to-seek. :class:`AttentionPlot` draws what a fusion run
records (:class:`~napari_xfusion._napari.record.FusionRecord`): the paper's normalized backward
and forward attention scores, optionally the raw scores of the five inputs, the keyframe
times and, with a ground truth, the PSNR of each fused frame. The numbers come from the
library; the docks only plot them.

All layers share one world in which the time axis (axis 0) is the LR frame index, so the
x axis of every plot is that index too.
"""

from __future__ import annotations

import time

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backend_bases import MouseEvent
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils.theme import get_theme
from qtpy.QtWidgets import QCheckBox, QVBoxLayout, QWidget
from superqt.utils import qthrottled

from ..attention import INPUT_NAMES
from .record import RECORD_KEY, FusionRecord

#: Shortest time between two redraws while frames arrive (ms): a fast run stays fluid.
REDRAW_INTERVAL_MS = 100
#: While frames arrive, the plot waits this many times its last redraw's duration before
#: the next, so that it takes at most about a sixth of the GUI thread's time.
REDRAW_BACKOFF = 5

# The HR inputs share the colours of their normalized scores.
_INPUT_COLOURS = ("tab:blue", "tab:cyan", "tab:olive", "tab:purple", "tab:orange")

_NO_RECORD = (
    "Fuse first: Plugins > X-ray Fusion > Fuse LR and HR stacks.\n"
    "The attention scores of the fused layer appear here."
)


def apply_theme(figure: Figure, theme) -> None:
    """Colour a drawn matplotlib figure (background, text, axes, legends) like napari.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
    theme : napari.utils.theme.Theme
        For instance ``get_theme(viewer.theme)``.
    """
    background, text = theme.background.as_hex(), theme.text.as_hex()
    figure.set_facecolor(background)
    for label in figure.texts:
        label.set_color(text)
    for ax in figure.axes:
        ax.set_facecolor(background)
        ax.tick_params(colors=text, which="both")
        for spine in ax.spines.values():
            spine.set_color(text)
        for label in (ax.xaxis.label, ax.yaxis.label, ax.title):
            label.set_color(text)
        for child in ax.texts:
            child.set_color(text)
        legend = ax.get_legend()
        if legend is not None:
            legend.get_frame().set_facecolor(background)
            legend.get_frame().set_edgecolor(text)
            for label in legend.get_texts():
                label.set_color(text)


class FramePlot(QWidget):
    """A matplotlib dock whose x axis is the frame index of the viewer's time axis.

    Subclasses implement :meth:`draw`; :meth:`refresh` clears the figure, calls it, applies
    the napari theme and adds the frame cursor to the axes :meth:`draw` returns. Moving the
    cursor redraws only the cursor over a saved image of the rest (blitting), so scrubbing
    the viewer does not redraw the figure.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose time the plot follows and sets.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.figure = Figure(figsize=(5, 3), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        # Small enough that the viewer, this dock and the fusion dock fit a 768-px screen.
        self.canvas.setMinimumHeight(150)
        self.setLayout(QVBoxLayout())
        self.layout().addWidget(self.canvas)
        self.cursors: list = []
        #: Seconds the last full redraw took.
        self.last_draw_seconds = 0.0
        self._background = None
        self.canvas.mpl_connect("button_press_event", self._on_click)
        self.canvas.mpl_connect("draw_event", self._on_full_draw)
        self.viewer.dims.events.point.connect(self._move_cursors)
        self.viewer.events.theme.connect(self.refresh)

    @property
    def theme(self):
        """The viewer's napari theme (colours as ``pydantic`` colours)."""
        return get_theme(self.viewer.theme)

    def current_frame(self) -> float:
        """The viewer's time, in LR frames."""
        return float(self.viewer.dims.point[0])

    def seek(self, t: float) -> None:
        """Move the viewer to the frame nearest ``t`` (napari clamps it to the data)."""
        self.viewer.dims.set_point(0, round(t))

    def draw(self) -> list[Axes]:
        """Draw onto :attr:`figure`; return the axes whose x axis is the frame index."""
        raise NotImplementedError

    def refresh(self) -> None:
        """Redraw the whole figure."""
        start = time.perf_counter()
        self.figure.clear()
        frame_axes = self.draw()
        self._apply_theme()
        colour = self.theme.current.as_hex()
        t = self.current_frame()
        # Animated: left out of full draws and drawn over their saved image instead.
        self.cursors = [
            ax.axvline(t, color=colour, linewidth=1.5, zorder=5, animated=True)
            for ax in frame_axes
        ]
        self.canvas.draw()
        self.last_draw_seconds = time.perf_counter() - start

    def show_message(self, text: str) -> None:
        """Replace the figure with a centred message."""
        self.figure.text(0.5, 0.5, text, ha="center", va="center", wrap=True)

    def _apply_theme(self) -> None:
        apply_theme(self.figure, self.theme)

    def _on_full_draw(self, event=None) -> None:
        """Keep the image of everything but the cursors, then draw the cursors on it."""
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._draw_cursors()

    def _draw_cursors(self) -> None:
        for cursor in self.cursors:
            cursor.axes.draw_artist(cursor)

    def _move_cursors(self) -> None:
        t = self.current_frame()
        for cursor in self.cursors:
            cursor.set_xdata([t, t])
        if self._background is None:
            self.canvas.draw_idle()
            return
        self.canvas.restore_region(self._background)
        self._draw_cursors()
        self.canvas.blit(self.figure.bbox)

    def _on_click(self, event: MouseEvent) -> None:
        if event.button == 1 and event.inaxes in self.figure.axes and event.xdata is not None:
            self.seek(event.xdata)


class AttentionPlot(FramePlot):
    """Attention scores and PSNR per fused frame of the selected (or latest) fused layer.

    The record comes from the selected layer when it carries one, otherwise from the
    topmost layer that does; the plot follows it as frames arrive, redrawing at most
    every :data:`REDRAW_INTERVAL_MS` milliseconds.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer holding the fused layer.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.raw_scores = QCheckBox("raw scores")
        self.raw_scores.setToolTip("Also plot the raw attention scores of the five inputs.")
        self.raw_scores.toggled.connect(self.refresh)
        self.layout().addWidget(self.raw_scores)
        self.record: FusionRecord | None = None
        # Frames arrive faster than a figure redraws: one redraw per interval, after them.
        self._schedule_redraw = qthrottled(
            self._redraw_while_fusing, timeout=REDRAW_INTERVAL_MS, leading=False, parent=self
        )
        layers = self.viewer.layers
        layers.events.inserted.connect(self._follow_record)
        layers.events.removed.connect(self._follow_record)
        layers.selection.events.active.connect(self._follow_record)
        self._show_record(self.find_record())

    def find_record(self) -> FusionRecord | None:
        """The record of the selected layer, else of the topmost layer that has one."""
        active = self.viewer.layers.selection.active
        if active is not None and RECORD_KEY in active.metadata:
            return active.metadata[RECORD_KEY]
        for layer in reversed(self.viewer.layers):
            if RECORD_KEY in layer.metadata:
                return layer.metadata[RECORD_KEY]
        return None

    def draw(self) -> list[Axes]:
        record = self.record
        if record is None:
            self.show_message(_NO_RECORD)
            return []
        log = record.attention
        if not len(log) and not record.psnr:
            why = (
                "no attention scores (not a neural method) and no ground truth"
                if record.done
                else "waiting for the first fused frame"
            )
            self.show_message(f"{record.method}: {why}.")
            return []
        show_raw = self.raw_scores.isChecked() and len(log) > 0
        axes = list(self.figure.subplots(2 if show_raw else 1, 1, sharex=True, squeeze=False)[:, 0])
        self._plot_scores(axes[0], record)
        if show_raw:
            self._plot_raw(axes[1], record)
        timeline = record.timeline
        keys = timeline.keyframe_times
        keys = keys[(keys >= 0) & (keys < timeline.n_lr)]
        for ax in axes:
            ax.vlines(keys, 0, 1, transform=ax.get_xaxis_transform(), colors="gray",
                      linestyles=":", linewidth=1)
            ax.set_xlim(-0.5, timeline.n_lr - 0.5)
        axes[0].set_title(f"{record.method}: {len(record.done)} of {timeline.n_lr} frames "
                          "(dotted: HR keyframes)", fontsize="small")
        axes[-1].set_xlabel("LR frame")
        return axes

    @staticmethod
    def _plot_scores(ax: Axes, record: FusionRecord) -> None:
        """Normalized backward/forward scores and, on a right-hand axis, the PSNR."""
        log = record.attention
        if len(log):
            order = np.argsort(log.times, kind="stable")
            times = np.asarray(log.times)[order]
            backward, forward = log.normalized()
            ax.plot(times, backward[order], ".-", markersize=3, color="tab:purple",
                    label="backward (HR k0)")
            ax.plot(times, forward[order], ".-", markersize=3, color="tab:orange",
                    label="forward (HR k1)")
            ax.set_ylabel("normalized attention")
        top = ax
        if record.psnr and not len(log):
            # A classical method has no attention scores: the PSNR takes the main axis.
            ax.plot(*record.psnr_series(), ".-", markersize=3, color="tab:green", label="PSNR")
            ax.set_ylabel("PSNR (dB)")
        elif record.psnr:
            top = ax.twinx()
            top.plot(*record.psnr_series(), ".-", markersize=3, color="tab:green", label="PSNR")
            top.set_ylabel("PSNR (dB)")
        handles, labels = ax.get_legend_handles_labels()
        if top is not ax:
            more_handles, more_labels = top.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        # On the topmost axes, so the PSNR line does not hide it.
        top.legend(handles, labels, fontsize="small", loc="upper right", framealpha=0.7)

    @staticmethod
    def _plot_raw(ax: Axes, record: FusionRecord) -> None:
        """Raw scores of each input (three for EDVR, five for EDVR-STF)."""
        log = record.attention
        order = np.argsort(log.times, kind="stable")
        raw = np.stack(log.raw)[order]
        for i in range(raw.shape[1]):
            ax.plot(np.asarray(log.times)[order], raw[:, i], linewidth=1,
                    color=_INPUT_COLOURS[i], label=INPUT_NAMES[i])
        ax.set_ylabel("raw score")
        ax.legend(fontsize="small", ncols=raw.shape[1], loc="upper center", framealpha=0.7)

    def _redraw_while_fusing(self, *_) -> None:
        self.refresh()
        interval = max(REDRAW_INTERVAL_MS, round(1000 * REDRAW_BACKOFF * self.last_draw_seconds))
        self._schedule_redraw.setTimeout(interval)

    def _on_frame(self, t: int) -> None:
        if len(self.record.done) < self.record.timeline.n_lr:
            self._schedule_redraw()
        else:  # the last frame: show the whole run now, not after the back-off
            self._schedule_redraw.cancel()
            self.refresh()

    def _follow_record(self) -> None:
        record = self.find_record()
        if record is not self.record:
            self._show_record(record)

    def _show_record(self, record: FusionRecord | None) -> None:
        if self.record is not None:
            self.record.updated.disconnect(self._on_frame)
        self.record = record
        if record is not None:
            record.updated.connect(self._on_frame)
        self.refresh()
