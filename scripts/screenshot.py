"""Screenshot of the plugin in use: the sample fused by EDVR-STF, with the docks open.

Opens the synthetic laser-melting sample, fuses it with the fusion dock's default method
(bundled EDVR-STF weights, keyframes aligned where the recording moves; ground truth
selected so the PSNR is plotted), opens the attention plot, and saves
the whole window. Run on a machine without a display through Xvfb::

    xvfb-run -a python scripts/screenshot.py docs/figures/napari-fusion.png
"""

from __future__ import annotations

import sys
import time

import napari
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from napari_xfusion._napari.plots import AttentionPlot
from napari_xfusion._napari.widget import FusionDock


def wait_until(condition, timeout: float = 600.0) -> None:
    app, end = QApplication.instance(), time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the fusion did not finish in time")
        app.processEvents()
        time.sleep(0.01)


def main(path: str) -> None:
    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-xfusion", "lpbf")
    dock = FusionDock(viewer)
    fusion = dock.fusion
    viewer.window.add_dock_widget(dock, name="Fuse LR and HR stacks", area="right")
    plot = AttentionPlot(viewer)
    plot_dock = viewer.window.add_dock_widget(plot, name="Attention and quality", area="bottom")
    fusion.start()
    wait_until(lambda: fusion.worker is None)
    for layer in viewer.layers:
        layer.visible = "fused (" in layer.name
    viewer.dims.set_point(0, 17)
    viewer.window.resize(1500, 1050)
    # Qt sizes the bottom dock by when it was laid out; fixed, the fusion dock fits unscrolled.
    viewer.window._qt_window.resizeDocks([plot_dock], [240], Qt.Orientation.Vertical)
    wait_until(lambda: True)
    QApplication.instance().processEvents()
    viewer.screenshot(path, canvas_only=False, flash=False)
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "napari-fusion.png")
