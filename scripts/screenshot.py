"""Screenshot of napari with the synthetic laser-melting sample and a fused result.

Run on a machine without a display through Xvfb::

    xvfb-run -a python scripts/screenshot.py docs/figures/napari-sample.png
"""

from __future__ import annotations

import sys

import napari
import numpy as np

from napari_xfusion.fusion import create_method
from napari_xfusion.timeline import Timeline


def main(path: str) -> None:
    viewer = napari.Viewer(show=True)
    layers = viewer.open_sample("napari-xfusion", "lpbf")
    by_name = {layer.name: layer for layer in layers}
    lr, keys = by_name["LR stream"].data, by_name["HR keyframes"].data
    model = by_name["HR keyframes"].metadata["time_model"]
    timeline = Timeline(len(lr), len(keys), model)
    method = create_method("transfer")
    fused = np.stack([f.image for f in method.fuse(lr, keys, timeline)])
    viewer.add_image(fused, name="fused (detail transfer)", axis_labels=("t", "y", "x"))
    for name in ("HR keyframes", "LR stream"):
        by_name[name].visible = False
    viewer.grid.enabled = False
    viewer.dims.set_point(0, 17)
    viewer.window.resize(1200, 800)
    viewer.screenshot(path, canvas_only=False, flash=False)
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "napari-sample.png")
