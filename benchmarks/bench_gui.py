"""How responsive napari stays while the fusion dock works: the longest event-loop stall.

Opens the synthetic laser-melting sample (``--frames`` long) in a napari window, optionally
with the attention plot dock (``--plot``), runs the fusion dock on it with the chosen method,
and meanwhile fires a Qt timer every ``--tick-ms`` milliseconds. The gap between two timer
events is how long the GUI could not react; the script prints the median, 95th percentile
and longest gap during the run, the frames per second, and the same gaps with the viewer
idle for reference. After the run it steps the time slider over ``--steps`` frames and
prints how long each step took to draw (viewer and plot).

Needs a display; on a machine without one run it through Xvfb::

    xvfb-run -a python benchmarks/bench_gui.py --method transfer --frames 480 --plot
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import napari
import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

from napari_xfusion._napari.plots import AttentionPlot
from napari_xfusion._napari.sample_data import sample_lpbf
from napari_xfusion._napari.widget import FusionWidget
from napari_xfusion.demo import sample_experiment


def event_gaps(seconds_or_until, tick_ms: int) -> np.ndarray:
    """Gaps (s) between Qt timer events while processing events until a condition holds."""
    gaps, last = [], [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(tick_ms)
    app = QApplication.instance()
    while not seconds_or_until():
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    return np.asarray(gaps)


def stall_line(name: str, gaps: np.ndarray) -> str:
    return (f"{name:>7s}: event-loop stalls median {1000 * np.median(gaps):.1f} ms, "
            f"95th percentile {1000 * np.percentile(gaps, 95):.0f} ms, "
            f"longest {1000 * gaps.max():.0f} ms ({len(gaps)} timer events)")


def open_sample(viewer, frames: int) -> None:
    """The sample's three layers; a longer sample is rendered with the same settings."""
    layers = sample_lpbf()
    if frames != len(layers[0][0]):
        exp = sample_experiment(n_frames=frames)
        layers = [(data, meta, kind) for (_, meta, kind), data
                  in zip(layers, (exp.truth, exp.hr, exp.lr), strict=True)]
    for data, meta, _ in layers:
        viewer.add_image(data, **meta)


def slider_steps(viewer, steps: int) -> np.ndarray:
    """Seconds to move the time slider by one frame and draw, ``steps`` times."""
    app, times = QApplication.instance(), []
    last = int(viewer.dims.range[0].stop)
    for t in np.linspace(0, last, steps).round().astype(int):
        start = time.perf_counter()
        viewer.dims.set_point(0, int(t))
        app.processEvents()
        times.append(time.perf_counter() - start)
    return np.asarray(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="stf")
    parser.add_argument("--frames", type=int, default=48, help="LR frames of the sample")
    parser.add_argument("--plot", action="store_true", help="open the attention plot dock")
    parser.add_argument("--steps", type=int, default=40, help="slider steps timed after")
    parser.add_argument("--tick-ms", type=int, default=5)
    args = parser.parse_args()

    viewer = napari.Viewer(show=True)
    open_sample(viewer, args.frames)
    widget = FusionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    if args.plot:
        viewer.window.add_dock_widget(AttentionPlot(viewer), area="bottom")
    widget.method.value = args.method
    idle_end = time.perf_counter() + 2.0
    idle = event_gaps(lambda: time.perf_counter() > idle_end, args.tick_ms)

    start = time.perf_counter()
    widget.start()
    busy = event_gaps(lambda: widget.worker is None, args.tick_ms)
    seconds = time.perf_counter() - start
    frames = len(widget.result_layer.metadata["xfusion_record"].done)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"device: {widget.badge.value}")
    print(f"method {args.method}: {frames} frames in {seconds:.1f} s "
          f"({frames / seconds:.2f} frames/s, preparation included); "
          f"attention plot {'open' if args.plot else 'closed'}")
    for name, gaps in (("idle", idle), ("fusing", busy)):
        print(stall_line(name, gaps))
    steps = slider_steps(viewer, args.steps)
    print(f"slider: {len(steps)} steps, median {1000 * np.median(steps):.0f} ms, "
          f"longest {1000 * steps.max():.0f} ms per step")
    viewer.close()


if __name__ == "__main__":
    main()
