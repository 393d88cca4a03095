"""Kill `xfusion fuse` at random moments and check what it leaves behind.

Each trial starts a fusion of a generated recording (LR 200 x 32 x 32 uint16, an HR keyframe
every 20 frames) and, at a random moment, sends SIGKILL or SIGTERM to it, or starts a
second run to the same output. Then it checks the invariants the writers promise:

* a file under the final name exists only after exit status 0, and then holds exactly the
  frames of an uninterrupted run, bit for bit;
* a partial (``NAME.incomplete.tif`` / ``.zarr``) opens with tifffile/zarr and with
  ``read_stack``, its ``frames_written`` equals the frames it holds, and those frames equal the
  uninterrupted run's first frames, bit for bit;
* after SIGTERM the exit status is 143 and the partial's status is written (``complete``
  false);
* a second run to the same output while the first runs is refused (exit 2, "being written
  by another run") and leaves the first one's files alone;
* no lock is left that blocks the next run (``check_output_path(..., overwrite=True)``).

Prints one line per trial and the count of violated invariants (0 is the only good
figure). Example (about 10 minutes on a 2-core CPU)::

    PYTHONPATH=src python benchmarks/fault_injection.py --trials 40
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_xfusion.io import (
    StackError,
    check_output_path,
    incomplete_path,
    read_metadata,
    read_stack,
)

METHODS = ("bicubic", "transfer", "stf")


def make_inputs(folder: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    lr, hr = folder / "lr.tif", folder / "hr.tif"
    tifffile.imwrite(lr, rng.integers(0, 4000, (200, 32, 32), dtype=np.uint16))
    tifffile.imwrite(hr, rng.integers(0, 4000, (11, 128, 128), dtype=np.uint16))
    return lr, hr


def command(lr: Path, hr: Path, out: Path, method: str) -> list[str]:
    return [sys.executable, "-m", "napari_xfusion.cli", "fuse", str(lr), str(hr), "-o", str(out),
            "--spacing", "20", "--method", method, "--device", "cpu", "--overwrite"]


def read_all(path: Path) -> np.ndarray:
    return np.asarray(read_stack(path))


def check_partial(partial: Path, reference: np.ndarray) -> list[str]:
    """Problems with a partial left behind (empty list: none)."""
    problems = []
    try:
        meta = read_metadata(partial)
        frames = read_all(partial)
    except (StackError, OSError) as err:
        # A run killed before its first page was flushed leaves a header-only file.
        if partial.is_file() and partial.stat().st_size <= 64 * 1024:
            return []
        return [f"partial unreadable: {err}"]
    if meta.get("complete") is not False:
        problems.append(f"partial says complete={meta.get('complete')}")
    if meta.get("frames_written") != len(frames):
        problems.append(f"partial claims {meta.get('frames_written')} frames, holds {len(frames)}")
    if not np.array_equal(frames, reference[: len(frames)]):
        problems.append("partial frames differ from the uninterrupted run")
    if partial.suffix == ".tif" and len(frames):
        try:
            if tifffile.imread(partial).shape[0] < len(frames):
                problems.append("tifffile sees fewer frames than read_stack")
        except Exception as err:  # noqa: BLE001 - any failure is a finding
            # The page in flight may be cut short; tifffile then refuses the whole file.
            problems.append(f"tifffile cannot read the partial: {err}")
    return problems


def trial(folder: Path, lr: Path, hr: Path, method: str, fault: str, delay: float,
          reference: np.ndarray, suffix: str) -> list[str]:
    out = folder / f"fused{suffix}"
    for leftover in (out, incomplete_path(out)):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink(missing_ok=True)
    run = subprocess.Popen(command(lr, hr, out, method), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    problems = []
    if fault == "concurrent":
        second = subprocess.run(command(lr, hr, out, method), capture_output=True, text=True)
        first_done = run.poll() is not None
        if not first_done and (second.returncode != 2
                               or "being written by another run" not in second.stderr):
            problems.append(
                f"second run not refused: exit {second.returncode} {second.stderr[-200:]}"
            )
        run.wait()
    else:
        run.send_signal(signal.SIGKILL if fault == "SIGKILL" else signal.SIGTERM)
        run.wait()
    code = run.returncode
    if out.exists():
        if code != 0:
            problems.append(f"final output exists after exit {code}")
        elif not np.array_equal(read_all(out), reference):
            problems.append("final output differs from the uninterrupted run")
    elif code == 0:
        problems.append("exit 0 without an output")
    partial = incomplete_path(out)
    # Before the command has set up (Python still importing) SIGTERM ends it at once, as
    # it should: nothing was written yet.
    if fault == "SIGTERM" and code not in (0, 143) and partial.exists():
        problems.append(f"SIGTERM gave exit {code} after writing began")
    if partial.exists():
        problems += check_partial(partial, reference)
    try:
        check_output_path(out, overwrite=True)
    except StackError as err:
        if "interrupted run" not in str(err):
            problems.append(f"next run blocked: {err}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="xfusion-faults-"))
    lr, hr = make_inputs(folder)
    references, durations = {}, {}
    for method in args.methods:
        out = folder / f"reference-{method}.tif"
        start = time.perf_counter()
        subprocess.run(command(lr, hr, out, method), check=True, capture_output=True)
        durations[method] = time.perf_counter() - start
        references[method] = read_all(out)
        print(f"reference {method}: {durations[method]:.1f} s", flush=True)
    violations = 0
    counts: dict[str, int] = {}
    for k in range(args.trials):
        method = rng.choice(args.methods)
        fault = rng.choice(("SIGKILL", "SIGTERM", "concurrent"))
        suffix = rng.choice((".tif", ".zarr"))
        delay = rng.uniform(0.3, durations[method] * 1.05)
        problems = trial(folder, lr, hr, method, fault, delay, references[method], suffix)
        violations += len(problems)
        counts[fault] = counts.get(fault, 0) + 1
        status = "ok" if not problems else "; ".join(problems)
        print(f"trial {k:3d} {method:8s} {suffix:5s} {fault:10s} at {delay:5.1f} s: {status}",
              flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.trials} trials ({', '.join(f'{n} {f}' for f, n in sorted(counts.items()))}): "
          f"{violations} violated invariants")


if __name__ == "__main__":
    main()
