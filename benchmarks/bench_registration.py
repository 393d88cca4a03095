"""Registering simulated camera pairs whose registration is known: accuracy, time, and
what it does to the fused result.

Each scenario records a full-rate scene with the paper's LR camera (4 x 4 binning) and an
HR camera placed by a known :class:`~napari_xfusion.registration.CameraTransform` (a
pixel-size ratio that is no whole number, rotation, mirror, shift, partial overlap, its own
blur and response), with the keyframe offset known only as 0. Reported:

* the errors of the estimated transform and offset, and the time :func:`register` took;
* the unseen-frame PSNR of detail transfer fused after registration, against the same
  fusion with the true transform (registration error alone), with the scene's own
  keyframes on the exact grid (what a perfect HR camera would give), and with no
  registration (the HR frames stretched to 4x the LR size, as if the cameras were aligned).

PSNR is in the scene's units (the fused frames mapped back through the HR camera's
normalization and response), over the common field of view.

Example::

    PYTHONPATH=src python benchmarks/bench_registration.py
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from skimage.transform import resize

from napari_xfusion.config import NoiseConfig, TimeModel
from napari_xfusion.methods import create_method
from napari_xfusion.metrics import psnr
from napari_xfusion.pipeline import prepare_inputs
from napari_xfusion.registration import (
    CameraTransform,
    HRCamera,
    Registration,
    register,
    two_camera_recording,
)
from napari_xfusion.synthetic import synthetic_lpbf

SCENARIOS = {
    "HR inside LR: 3.3/3.27 px, 4 deg, mirrored columns, gamma 0.8, LR 35 dB": dict(
        transform=CameraTransform(3.3, 3.27, 4.0, False, True, 2.3, -5.7, (300, 480),
                                  (100, 160)),
        camera=HRCamera(blur=0.8, gamma=0.8, gain=40_000, dark=1_000), noise=35.0,
    ),
    "HR beyond LR: 5.2 px, -7 deg, mirrored rows, gamma 1.2, clean": dict(
        transform=CameraTransform(5.2, 5.2, -7.0, True, False, -1.4, 3.1, (600, 900),
                                  (100, 160)),
        camera=HRCamera(blur=1.2, gamma=1.2, gain=30_000, dark=500), noise=None,
    ),
    "small offset: 2.6/2.65 px, 1.5 deg, no mirror, LR 30 dB": dict(
        transform=CameraTransform(2.6, 2.65, 1.5, False, False, 0.6, -0.4, (240, 380),
                                  (100, 160)),
        camera=HRCamera(blur=0.6, gamma=1.0, gain=50_000, dark=800), noise=30.0,
    ),
}
TIME = TimeModel(spacing=10, offset=3)
#: Scene pixels beyond the LR camera's field of view on each side.
MARGIN = 80


def unseen_psnr(recording, registration: Registration, crop) -> float:
    """Unseen-frame PSNR of detail transfer after ``registration``, in the scene's units."""
    inputs = prepare_inputs(recording.lr, recording.hr, TIME, registration=registration)
    return score(inputs, recording, crop)


def score(inputs, recording, crop) -> float:
    cam = recording.camera
    y0, y1, x0, x1 = crop
    truth = recording.truth[:, 4 * y0 : 4 * y1, 4 * x0 : 4 * x1]
    values = []
    for frame in create_method("transfer").fuse(inputs.lr, inputs.hr, inputs.timeline):
        if frame.is_keyframe:
            continue
        counts = inputs.hr_norm.invert(frame.image).astype(np.float64)
        scene = np.clip((counts - cam.dark) / cam.gain, 0, 1) ** (1 / cam.gamma)
        values.append(psnr(scene, truth[frame.t]))
    return float(np.mean(values))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=81)
    args = parser.parse_args(argv)
    # The scene reaches MARGIN pixels beyond the LR camera's view, as a real one does.
    scene = synthetic_lpbf(n_frames=args.frames, height=400 + 2 * MARGIN,
                           width=640 + 2 * MARGIN, seed=5)
    rows = []
    for name, setting in SCENARIOS.items():
        true = setting["transform"]
        recording = two_camera_recording(scene, true, TIME, setting["camera"],
                                         NoiseConfig(target_psnr=setting["noise"], seed=1),
                                         margin=MARGIN)
        truth = recording.truth
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimated = register(recording.lr, recording.hr, TimeModel(spacing=10, offset=0),
                                 estimate_offset=True)
        seconds = time.perf_counter() - started
        fit, crop = estimated.transform, estimated.crop
        known = Registration(transform=true, crop=crop, time_model=TIME, offset_estimated=False,
                             offsets=None, spacings={}, similarity=1.0, margin=float("inf"),
                             residual=0.0, intensity={})
        y0, y1, x0, x1 = crop
        # The scene's own keyframes on the exact 4x grid: a perfect HR camera.
        perfect = prepare_inputs(recording.lr[:, y0:y1, x0:x1],
                                 truth[TIME.offset :: TIME.spacing, 4 * y0 : 4 * y1,
                                       4 * x0 : 4 * x1], TIME)
        # No registration: the HR frames stretched over the LR frame as if aligned.
        stretched = np.stack([
            resize(f.astype(np.float64), (400, 640), order=3, preserve_range=True)
            for f in recording.hr
        ]).astype(np.uint16)[:, 4 * y0 : 4 * y1, 4 * x0 : 4 * x1]
        naive = prepare_inputs(recording.lr[:, y0:y1, x0:x1], stretched, TIME)
        perfect_camera = type(recording)(recording.lr, recording.hr, truth, true, TIME,
                                         HRCamera(blur=0, gamma=1.0, gain=1.0, dark=0.0))
        rows.append({
            "scenario": name,
            "seconds": seconds,
            "shift": max(abs(fit.shift_y - true.shift_y), abs(fit.shift_x - true.shift_x)),
            "rotation": abs(fit.rotation_deg - true.rotation_deg),
            "scale": 100 * max(abs(fit.ratio_y / true.ratio_y - 1),
                               abs(fit.ratio_x / true.ratio_x - 1)),
            "mirror": (fit.flip_y, fit.flip_x) == (true.flip_y, true.flip_x),
            "offset": estimated.time_model.offset,
            "second": estimated.offsets["second"],
            "crop": crop,
            "estimated": unseen_psnr(recording, estimated, crop),
            "true": unseen_psnr(recording, known, crop),
            "perfect": score(perfect, perfect_camera, crop),
            "naive": score(naive, recording, crop),
        })
        print(f"done: {name} ({seconds:.1f} s)", flush=True)

    print("\n| scenario | time (s) | shift error (LR px) | rotation error (deg) | "
          "scale error (%) | mirror | offset (true 3) | crop (LR px) |")
    print("| --- | ---: | ---: | ---: | ---: | --- | --- | --- |")
    for r in rows:
        y0, y1, x0, x1 = r["crop"]
        second = "" if r["second"] is None else f", second {r['second'][0]}"
        print(f"| {r['scenario']} | {r['seconds']:.1f} | {r['shift']:.3f} | "
              f"{r['rotation']:.4f} | {r['scale']:.3f} | {'right' if r['mirror'] else 'WRONG'} "
              f"| {r['offset']}{second} | {y1 - y0}x{x1 - x0} |")
    print("\nunseen-frame PSNR of detail transfer (dB), common field of view")
    print("| scenario | no registration | estimated registration | true registration | "
          "perfect HR camera |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['scenario']} | {r['naive']:.2f} | {r['estimated']:.2f} | {r['true']:.2f} "
              f"| {r['perfect']:.2f} |")


if __name__ == "__main__":
    main()
