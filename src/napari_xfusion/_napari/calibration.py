"""What a calibration from the viewer did: the before/after figure and its dock."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils.theme import get_theme
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..training.calibrate import CalibrationResult
from .plots import apply_theme


def draw_calibration(result: CalibrationResult, figure: Figure) -> None:
    """Draw the held-out PSNR before and after calibration, and the training loss.

    Parameters
    ----------
    result : CalibrationResult
    figure : matplotlib.figure.Figure
        Cleared and drawn into.
    """
    figure.clear()
    bars, loss = figure.subplots(1, 2)
    names = ["bicubic", "before", "after"]
    values = [result.bicubic_psnr, result.psnr_before, result.psnr_after]
    verdict_colour = {"helped": "#2e9e44", "did not help": "#d04040"}.get(
        result.verdict, "#d08a1e"
    )
    bars.bar(names, values, color=["#8a8a8a", "#4a78c2", verdict_colour])
    # Each held-out keyframe, before and after: the spread the verdict weighs the gain by.
    for before, after in zip(result.keyframe_psnr_before, result.keyframe_psnr_after, strict=True):
        bars.plot([1, 2], [before, after], color="gray", lw=0.8, marker="o", ms=3)
    points = [*values, *result.keyframe_psnr_before, *result.keyframe_psnr_after]
    bars.set_ylim(min(points) - 2.0, max(points) + 1.0)
    for x, value in enumerate(values):
        bars.text(x, value + 0.1, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
    bars.set_ylabel("held-out PSNR (dB)", fontsize=8)
    bars.set_title(
        f"{result.verdict}: {result.gain:+.2f} dB\n"
        f"over {len(result.validation_keyframes)} held-out keyframes",
        fontsize=8,
    )
    loss.plot(range(1, len(result.losses) + 1), result.losses, lw=0.8)
    loss.set_xlabel("step", fontsize=8)
    loss.set_ylabel("training loss", fontsize=8)
    loss.set_yscale("log")
    loss.set_title(f"{result.iterations} steps in {result.seconds:.0f} s", fontsize=8)
    for ax in (bars, loss):
        ax.tick_params(labelsize=7)


class CalibrationView(QWidget):
    """A dock showing what a calibration did (see :func:`draw_calibration`), in the
    viewer's colours.

    Parameters
    ----------
    result : CalibrationResult
    napari_viewer : napari.viewer.Viewer
        Whose theme the figure follows.
    """

    def __init__(self, result: CalibrationResult, napari_viewer) -> None:
        super().__init__()
        self.result = result
        self.viewer = napari_viewer
        # Constrained layout keeps titles, tick labels and axis labels from overlapping.
        self.figure = Figure(figsize=(6, 2.6), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        layout = QVBoxLayout(self)
        layout.addWidget(self.canvas)
        self.refresh()
        napari_viewer.events.theme.connect(self.refresh)

    def refresh(self, *_) -> None:
        """Redraw the figure in the viewer's current theme."""
        draw_calibration(self.result, self.figure)
        apply_theme(self.figure, get_theme(self.viewer.theme))
        self.canvas.draw_idle()
