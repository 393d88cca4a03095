"""Peak memory of fusing long sequences from disk to disk.

For each sequence length it writes an LR stack and an HR keyframe stack to disk as uint16
BigTIFFs, frame by frame (the whole stack is never in memory), runs ``xfusion fuse`` on them
in a subprocess and reports that process's peak resident memory, its run time and
frames/s. Memory that does not grow with the length is what lets a recording of any length
be fused.

Peak RSS is the kernel's high-water mark of the subprocess (``os.wait4``). On Linux the
benchmark also polls ``/proc/PID/status`` and reports the peaks of anonymous memory
(``RssAnon``: arrays, the network, the interpreter) and of file pages mapped into the
process (``RssFile``: pages of memory-mapped input stacks, which the kernel can drop at any
time), and the anonymous memory in the first and second halves of the run, to show growth.

Run::

    python benchmarks/bench_memory.py                          # bicubic, 500 and 5000 frames
    python benchmarks/bench_memory.py --method stf --frames 30 # the network on top
    python benchmarks/bench_memory.py --frames 100 --size 512  # a quick check

The generated stacks and the output are deleted afterwards unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from napari_xfusion.io import open_writer
from napari_xfusion.simulate import bin_frames

SCALE = 4
#: Free disk space kept beyond what the run needs.
DISK_MARGIN = 1 << 30


class Scene:
    """An x-ray-like test scene made one frame at a time: a textured still background and a
    bright blob crossing it, so that consecutive frames differ where something moves.
    """

    def __init__(self, size: int, n_frames: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
        self.background = (
            0.4 + 0.15 * np.sin(40 * x) * np.cos(33 * y) + 0.05 * rng.random((size, size))
        ).astype(np.float32)
        self.size, self.n_frames = size, n_frames
        self.radius = max(size // 20, 2)

    def frame(self, i: int) -> np.ndarray:
        """HR frame ``i``, float32 in [0, 1]."""
        frame = self.background.copy()
        r, size = self.radius, self.size
        cy = size // 2
        cx = int(r + (size - 2 * r) * i / max(self.n_frames - 1, 1))
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r, size), max(cx - r, 0), min(cx + r, size)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.3 * r * r)).astype(np.float32)
        frame[y0:y1, x0:x1] += 0.5 * blob
        return np.clip(frame, 0.0, 1.0)


def stack_bytes(n_frames: int, size: int, spacing: int) -> dict[str, int]:
    """Bytes of the LR stack, the HR keyframes and the uint16 output."""
    lr = n_frames * (size // SCALE) ** 2 * 2
    keys = ((n_frames - 1) // spacing + 1) * size * size * 2
    return {"LR": lr, "HR": keys, "output": n_frames * size * size * 2}


def write_inputs(folder: Path, n_frames: int, size: int, spacing: int) -> tuple[Path, Path]:
    """Write ``lr.tif`` (every frame, binned) and ``hr.tif`` (every ``spacing``-th frame)."""
    scene = Scene(size, n_frames)
    lr_path, hr_path = folder / "lr.tif", folder / "hr.tif"
    n_keys = (n_frames - 1) // spacing + 1
    with open_writer(lr_path, (size // SCALE,) * 2, np.uint16, n_frames) as lr, open_writer(
        hr_path, (size, size), np.uint16, n_keys
    ) as hr:
        for i in range(n_frames):
            frame = scene.frame(i)
            lr.write(np.rint(bin_frames(frame, SCALE) * 4000 + 100).astype(np.uint16))
            if i % spacing == 0:
                hr.write(np.rint(frame * 60000).astype(np.uint16))
    return lr_path, hr_path


def _proc_status_kb(pid: int) -> dict[str, int]:
    """``VmRSS``, ``RssAnon`` and ``RssFile`` of a process in kB ({} where unavailable)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0])
    return values


def run_measured(command: list[str], log: Path, interval: float = 0.2) -> dict:
    """Run ``command`` with its output in ``log``; exit status, seconds and memory figures."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    samples: list[tuple[float, dict[str, int]]] = []
    finished = threading.Event()

    def poll() -> None:
        while not finished.is_set():
            status = _proc_status_kb(proc.pid)
            if status:
                samples.append((time.perf_counter() - start, status))
            finished.wait(interval)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    # wait4 gives the resource use of this child alone (RUSAGE_CHILDREN would mix in
    # earlier runs).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    finished.set()
    poller.join()
    anon = [(t, s.get("RssAnon", 0)) for t, s in samples]
    half = seconds / 2
    return {
        "returncode": proc.returncode,
        "log": log.read_text(),
        "seconds": seconds,
        # ru_maxrss is in kB on Linux, bytes on macOS.
        "peak_rss_mb": usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10),
        "peak_anon_mb": max((s.get("RssAnon", 0) for _, s in samples), default=0) / 1024,
        "peak_file_mb": max((s.get("RssFile", 0) for _, s in samples), default=0) / 1024,
        "anon_first_half_mb": max((a for t, a in anon if t <= half), default=0) / 1024,
        "anon_second_half_mb": max((a for t, a in anon if t > half), default=0) / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="bicubic", help="fusion method (default bicubic)")
    parser.add_argument("--frames", default="500,5000",
                        help="comma-separated sequence lengths (default 500,5000)")
    parser.add_argument("--size", type=int, default=1024,
                        help="HR frame side in pixels; LR is a quarter (default 1024)")
    parser.add_argument("--spacing", type=int, default=10, help="keyframe spacing D (default 10)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write the stacks (default: a temporary folder here)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("fuse_args", nargs=argparse.REMAINDER,
                        help="after --, extra arguments for xfusion fuse (e.g. -- --device cpu)")
    args = parser.parse_args(argv)
    lengths = [int(n) for n in args.frames.split(",")]
    if args.size % SCALE:
        parser.error(f"--size must be a multiple of {SCALE}.")
    extra = [a for a in args.fuse_args if a != "--"]

    base = args.dir or Path.cwd()
    base.mkdir(parents=True, exist_ok=True)
    # The lengths run one after another, each deleting its files before the next.
    need = max(sum(stack_bytes(n, args.size, args.spacing).values()) for n in lengths)
    free = shutil.disk_usage(base).free
    if free < need + DISK_MARGIN:
        print(
            f"not enough free disk in {base}: the largest run needs {need / 2**30:.1f} GiB "
            f"(+{DISK_MARGIN / 2**30:.0f} GiB margin) but {free / 2**30:.1f} GiB are free; "
            "use --dir elsewhere or fewer --frames.",
            file=sys.stderr,
        )
        return 1

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}")
    print(f"method {args.method}, HR {args.size}x{args.size}, LR {args.size // SCALE}x"
          f"{args.size // SCALE}, keyframes every {args.spacing} frames, uint16 BigTIFF in/out")
    header = ("frames", "write s", "fuse s", "frames/s", "peak RSS MB", "peak anon MB",
              "peak file MB", "anon 1st half MB", "anon 2nd half MB")
    print(" | ".join(header))
    for n in lengths:
        folder = Path(tempfile.mkdtemp(prefix=f"xfusion-mem-{n}-", dir=base))
        try:
            start = time.perf_counter()
            lr, hr = write_inputs(folder, n, args.size, args.spacing)
            written = time.perf_counter() - start
            out = folder / "fused.tif"
            command = [sys.executable, "-m", "napari_xfusion.cli", "fuse", str(lr), str(hr),
                       "-o", str(out), "--spacing", str(args.spacing), "--method", args.method,
                       *extra]
            result = run_measured(command, folder / "fuse.log")
            if result["returncode"] != 0:
                print(result["log"], file=sys.stderr)
                return result["returncode"]
            row = (n, f"{written:.0f}", f"{result['seconds']:.1f}",
                   f"{n / result['seconds']:.2f}", f"{result['peak_rss_mb']:.0f}",
                   f"{result['peak_anon_mb']:.0f}", f"{result['peak_file_mb']:.0f}",
                   f"{result['anon_first_half_mb']:.0f}", f"{result['anon_second_half_mb']:.0f}")
            print(" | ".join(str(v) for v in row), flush=True)
        finally:
            if args.keep:
                print(f"kept {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
