"""How responsive napari stays while the fusion dock works: the longest event-loop stall.

Opens the synthetic laser-melting sample in a napari window, runs the fusion dock on it
with the chosen method, and meanwhile fires a Qt timer every ``--tick-ms`` milliseconds. The
gap between two timer events is how long the GUI could not react; the script prints the
longest gap and the 99th percentile during the run, the frames per second, and the same
gaps with the viewer idle for reference.

Needs a display; on a machine without one run it through Xvfb::

    xvfb-run -a python benchmarks/bench_gui.py --method stf
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

from napari_xfusion._napari.widget import FusionWidget


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="stf")
    parser.add_argument("--tick-ms", type=int, default=5)
    args = parser.parse_args()

    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-xfusion", "lpbf")
    widget = FusionWidget(viewer)
    viewer.window.add_dock_widget(widget)
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
          f"({frames / seconds:.2f} frames/s, preparation included)")
    for name, gaps in (("idle", idle), ("fusing", busy)):
        print(f"{name:>7s}: longest event-loop stall {1000 * gaps.max():.0f} ms, "
              f"99th percentile {1000 * np.percentile(gaps, 99):.0f} ms, "
              f"median {1000 * np.median(gaps):.1f} ms ({len(gaps)} timer events)")
    viewer.close()


if __name__ == "__main__":
    main()
