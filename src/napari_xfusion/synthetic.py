"""A synthetic high-speed x-ray video of laser powder-bed fusion (LPBF), seen from the side.

The scene imitates operando synchrotron radiography of a laser melting a powder layer on a
metal plate (the paper's case 1, imaged at 50 kHz), so that fusion methods can be tried and
tested with a known ground truth and without real data. Intensities are transmissions in
[0, 1] built from an attenuation map ``A`` as ``flat * exp(-A)`` (Beer-Lambert):

* **background** - argon above the sample: bright (about 0.75 to 0.9) with a static,
  slightly non-uniform flat field (beam profile, horizontal stripes, faint scintillator
  dust spots);
* **substrate** - solid metal filling the lower part of the frame: dark (about 0.3);
* **powder layer** - a band of overlapping spherical particles of varying size on top of
  the substrate, denser at the bottom, with an irregular top edge;
* **laser scan** - the laser moves along +x at ``scan_speed`` pixels per frame. In front of
  it the powder is intact; behind it the powder is consumed (only a thin denuded remnant
  stays) and a solidified **track bead**, lower and smoother than the powder, is left;
* **melt pool** - a half-ellipse trailing the laser, reaching below the surface; liquid
  metal is less dense, so the pool is slightly brighter than the solid around it;
* **keyhole** - the vapour depression below the laser spot: a narrow, tapered, backward
  tilted cavity that is much brighter than the metal around it. Its depth oscillates
  smoothly and randomly from frame to frame and sometimes collapses (drops sharply, then
  recovers over a few frames);
* **pores** - small bright round voids, born at the keyhole tip (most of them when it
  collapses), drifting with the melt flow while inside the pool and frozen in place once
  the pool has passed them;
* **spatter** - small dark droplets ejected upwards (mostly backwards) from the melt pool
  on ballistic paths under ``gravity``, leaving the field of view or falling back;
* **phase contrast** (optional) - bright/dark fringe pairs at edges, made by subtracting a
  scaled Laplacian of Gaussian of the transmission image, as propagation-based imaging
  does;
* **detector** - a small Gaussian blur and optional Gaussian read noise; values are clipped
  to [0, 1].

The background and substrate are static; the keyhole, pores and spatter move by several
pixels per frame at the default settings, so that motion matters for fusion.

Sizes are set relative to the frame height (a 256-pixel-high frame has the surface at
y = 154, a 28-pixel powder layer, a 44-pixel keyhole) so that any frame size shows the
whole scene; speeds are in pixels per frame.

Long sequences: when the laser has left the frame on the right, a fresh powder layer is
spread and the laser starts a new pass from the left (a scene change). At the default
settings this happens about every 210 frames, the first time after about 130 frames.

Every random draw is either made when the scene is built or derived from ``(seed, pass)``
or ``(seed, frame)``, so :meth:`LPBFScene.frame` gives the same frame for the same seed
whatever order the frames are asked for in. :class:`LPBFScene` also behaves like a
read-only ``(n_frames, height, width)`` float32 array that renders frames on demand
(``scene[t]``, ``scene[a:b]``, ``dask.array.from_array(scene, chunks=(1, -1, -1))``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

# Tags that keep the random streams of the static scene, of each pass and of each frame's
# noise apart although they share the user's seed.
_STATIC, _PASS, _NOISE = 0, 1, 2

#: Attenuation of the substrate (intensity about 0.3 under the flat field).
SUBSTRATE_ATTENUATION = 1.05
#: Fraction of the attenuation removed by a void along the whole beam path at its centre.
KEYHOLE_VOID = 0.55
#: The same for a pore (exaggerated over a real pore's share of the path, for visibility).
PORE_VOID = 0.5
#: Fractional density drop of the liquid metal in the melt pool.
POOL_VOID = 0.1
#: Fraction of the powder consumed behind the laser.
POWDER_CONSUMED = 0.85
#: Time constant (frames) of the keyhole's recovery after a collapse.
COLLAPSE_RECOVERY = 3.0

_PASS_CACHE_SIZE = 4


@dataclass(frozen=True)
class _Pass:
    """The static layer and the events of one laser pass over the frame."""

    powder: np.ndarray
    bead: np.ndarray
    collapse_time: np.ndarray
    collapse_depth: np.ndarray
    pores: dict[str, np.ndarray]
    spatter: dict[str, np.ndarray]


class LPBFScene:
    """A synthetic side-view x-ray video of laser powder-bed fusion, rendered frame by frame.

    See the module documentation for what the scene contains.

    Parameters
    ----------
    height, width : int
        Frame size in pixels (at least 16 each).
    n_frames : int
        Number of frames of the sequence (the scene itself has no end).
    seed : int
        Seed (>= 0) of every random draw; the same seed gives the same sequence.
    phase_contrast : bool
        Add edge fringes as in propagation-based phase-contrast imaging.
    scan_speed : float
        Laser speed along +x, pixels per frame.
    keyhole_depth : float, optional
        Mean keyhole depth below the substrate surface in pixels; default 17% of the height.
    spatter_rate : float
        Mean number of spatter droplets ejected per frame.
    collapse_rate : float
        Mean number of keyhole collapses per frame.
    pore_rate : float
        Mean number of pores per frame born at the keyhole tip besides those of collapses.
    gravity : float
        Downward acceleration of spatter, pixels per frame squared.
    blur : float
        Standard deviation (pixels) of the detector's Gaussian blur; 0 for none.
    noise : float
        Standard deviation of additive Gaussian detector noise; 0 (default) for none.

    Examples
    --------
    >>> scene = LPBFScene(256, 512, n_frames=5000, seed=1)
    >>> frame = scene.frame(1234)          # (256, 512) float32 in [0, 1]
    >>> first = scene[:8]                  # (8, 256, 512)
    """

    def __init__(
        self,
        height: int = 256,
        width: int = 512,
        n_frames: int = 64,
        seed: int = 0,
        *,
        phase_contrast: bool = True,
        scan_speed: float = 4.0,
        keyhole_depth: float | None = None,
        spatter_rate: float = 0.5,
        collapse_rate: float = 0.04,
        pore_rate: float = 0.02,
        gravity: float = 0.05,
        blur: float = 0.7,
        noise: float = 0.0,
    ) -> None:
        for name, value, low in (("height", height, 16), ("width", width, 16),
                                 ("n_frames", n_frames, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}.")
        if not np.isfinite(scan_speed) or scan_speed <= 0:
            raise ValueError(
                f"scan_speed must be > 0 pixels per frame, got {scan_speed!r} (the paper's "
                "case 1 moves a few pixels per frame)."
            )
        for name, value in (("spatter_rate", spatter_rate), ("collapse_rate", collapse_rate),
                            ("pore_rate", pore_rate), ("gravity", gravity), ("blur", blur),
                            ("noise", noise)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        if keyhole_depth is not None and not (0 < keyhole_depth < 0.38 * height):
            raise ValueError(
                f"keyhole_depth must be > 0 and < {0.38 * height:.0f} pixels (what fits below "
                f"the surface of a {height}-pixel-high frame), got {keyhole_depth!r}."
            )
        self.height, self.width = int(height), int(width)
        self.n_frames, self.seed = int(n_frames), int(seed)
        self.phase_contrast = bool(phase_contrast)
        self.scan_speed = float(scan_speed)
        self.spatter_rate, self.collapse_rate = float(spatter_rate), float(collapse_rate)
        self.pore_rate, self.gravity = float(pore_rate), float(gravity)
        self.blur, self.noise = float(blur), float(noise)

        # Lengths follow the frame height so that any frame size shows the whole scene.
        self.unit = u = min(max(self.height / 256.0, 0.25), 4.0)
        self.surface = 0.6 * self.height
        self.powder_thickness = 0.11 * self.height
        self.bead_height = 0.55 * self.powder_thickness
        default_depth = 0.17 * self.height
        self.keyhole_depth = default_depth if keyhole_depth is None else float(keyhole_depth)
        self.keyhole_radius = max(6.5 * u, 1.2)
        self.pool_depth = 1.3 * self.keyhole_depth
        self.pool_length = 3.2 * self.keyhole_depth
        # The laser runs this far past both frame edges so that its pool enters and leaves
        # the frame whole.
        self.margin = self.pool_length + 3.0 * self.keyhole_radius + 10.0 * u
        self.pass_length = self.width + 2.0 * self.margin
        self._start = 0.3 * self.width + self.margin

        rng = np.random.default_rng([self.seed, _STATIC])
        self._flat = self._make_flat(rng)
        self._substrate = self._make_substrate(rng)
        self._osc_amp = rng.uniform(0.5, 1.0, 4)
        self._osc_amp /= self._osc_amp.sum()
        self._osc_freq = 2 * np.pi / rng.uniform(3.0, 25.0, 4)
        self._osc_phase = rng.uniform(0, 2 * np.pi, 4)

        self._passes: dict[int, _Pass] = {}
        self._lock = threading.Lock()

    # -- array-like face -------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_frames, self.height, self.width)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (3 - len(key) + 1)
            key = key[:at] + fill + key[at + 1:]
        times = np.arange(self.n_frames)[key[0]]
        rest = key[1:]
        if times.ndim == 0:
            return self.frame(int(times))[rest]
        if times.size == 0:
            return np.empty(times.shape + (self.height, self.width), np.float32)[(Ellipsis,) + rest]
        frames = np.stack([self.frame(int(t)) for t in times.ravel()])
        frames = frames.reshape(times.shape + (self.height, self.width))
        return frames[(slice(None),) * times.ndim + rest]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self[:]
        return frames if dtype is None else frames.astype(dtype)

    # -- public geometry -------------------------------------------------------------------

    def laser_x(self, t: float) -> float:
        """x position (pixels) of the laser spot at frame ``t``.

        It lies outside ``0..width`` while the laser is between passes.
        """
        return self._laser(t)[1]

    def keyhole_depth_at(self, t: float) -> float:
        """Keyhole depth (pixels below the substrate surface) at frame ``t``."""
        k, _ = self._laser(t)
        return self._depth(t, self._pass(k))

    # -- rendering -------------------------------------------------------------------------

    def frame(self, t: int) -> np.ndarray:
        """Render frame ``t``.

        Parameters
        ----------
        t : int
            Frame index, ``0 <= t < n_frames`` (negative indices count from the end).

        Returns
        -------
        ndarray, shape (height, width), float32 in [0, 1]
        """
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise TypeError(f"frame index must be an integer, got {t!r}.")
        t = int(t) + (self.n_frames if t < 0 else 0)
        if not 0 <= t < self.n_frames:
            raise IndexError(f"frame {t} is outside the sequence 0..{self.n_frames - 1}.")
        k, xl = self._laser(t)
        layer = self._pass(k)
        cols = np.arange(self.width, dtype=np.float32)
        # 1 behind the laser (powder melted), 0 in front of it, over a few pixels.
        behind = np.clip((xl + self.keyhole_radius - cols) / (3.0 * self.unit) + 0.5, 0, 1)
        att = self._substrate + layer.powder * (1 - POWDER_CONSUMED * behind) + layer.bead * behind
        self._draw_melt(att, t, xl, layer)
        self._draw_pores(att, t, layer)
        self._draw_spatter(att, t, [layer] if k == 0 else [self._pass(k - 1), layer])

        image = self._flat * np.exp(-att)
        if self.phase_contrast:
            image -= 0.8 * ndi.gaussian_laplace(image, sigma=max(1.0 * self.unit, 0.7))
        if self.blur > 0:
            image = ndi.gaussian_filter(image, self.blur)
        if self.noise > 0:
            rng = np.random.default_rng([self.seed, _NOISE, t])
            image += self.noise * rng.standard_normal(image.shape, dtype=np.float32)
        return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)

    # -- time ------------------------------------------------------------------------------

    def _laser(self, t: float) -> tuple[int, float]:
        s = self._start + self.scan_speed * t
        k = int(np.floor(s / self.pass_length))
        return k, s - k * self.pass_length - self.margin

    def _pass_times(self, k: int) -> tuple[float, float]:
        return (
            (k * self.pass_length - self._start) / self.scan_speed,
            ((k + 1) * self.pass_length - self._start) / self.scan_speed,
        )

    def _free_depth(self, t):
        """Keyhole depth without collapses: a smooth random oscillation around the mean."""
        t = np.asarray(t, dtype=np.float64)[..., None]
        osc = (self._osc_amp * np.sin(self._osc_freq * t + self._osc_phase)).sum(axis=-1)
        return self.keyhole_depth * (1.0 + 0.5 * osc)

    def _depth(self, t: float, layer: _Pass) -> float:
        since = t - layer.collapse_time
        recent = (since >= 0) & (since < 10 * COLLAPSE_RECOVERY)
        drops = layer.collapse_depth[recent] * np.exp(-since[recent] / COLLAPSE_RECOVERY)
        factor = np.prod(1 - drops)
        return float(self._free_depth(t) * factor)

    # -- static parts ----------------------------------------------------------------------

    def _smooth_noise(self, rng, shape, sigma) -> np.ndarray:
        field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
        return field / max(field.std(), 1e-12)

    def _make_flat(self, rng) -> np.ndarray:
        h, w, u = self.height, self.width, self.unit
        rows = (np.arange(h) - 0.4 * h) / h
        beam = 0.86 - 0.25 * rows**2
        flat = beam[:, None] + 0.02 * self._smooth_noise(rng, (h, w), max(h, w) / 8)
        flat += 0.006 * self._smooth_noise(rng, (h,), 1.0 * u)[:, None]
        for _ in range(8):
            ball = _ball((h, w), rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 8) * u)
            if ball is not None:
                flat[ball[0]] *= 1 - 0.03 * ball[1]
        return np.clip(flat, 0.72, 0.92).astype(np.float32)

    def _make_substrate(self, rng) -> np.ndarray:
        h, w, u = self.height, self.width, self.unit
        top = self.surface + 0.4 * u * self._smooth_noise(rng, (w,), 6 * u)
        inside = np.clip(np.arange(h)[:, None] - top[None, :] + 0.5, 0, 1)
        texture = 1 + 0.02 * self._smooth_noise(rng, (h, w), 3 * u)
        return (SUBSTRATE_ATTENUATION * inside * texture).astype(np.float32)

    # -- one pass --------------------------------------------------------------------------

    def _pass(self, k: int) -> _Pass:
        with self._lock:
            layer = self._passes.get(k)
            if layer is None:
                layer = self._make_pass(k)
                self._passes[k] = layer
                while len(self._passes) > _PASS_CACHE_SIZE:
                    self._passes.pop(next(iter(self._passes)))
            return layer

    def _make_pass(self, k: int) -> _Pass:
        rng = np.random.default_rng([self.seed, _PASS, k])
        h, w, u = self.height, self.width, self.unit
        t_begin, t_end = self._pass_times(k)
        duration = t_end - t_begin

        def laser_at(times):
            return self._start + self.scan_speed * times - k * self.pass_length - self.margin

        # Powder: overlapping spheres, denser at the bottom of a layer of varying thickness.
        powder = np.zeros((h, w), np.float32)
        thickness = self.powder_thickness * (1 + 0.25 * self._smooth_noise(rng, (w,), 15 * u))
        radius_mean = 3.2 * u
        count = int(4.5 * w * self.powder_thickness / (np.pi * radius_mean**2))
        xs = rng.uniform(-4 * u, w + 4 * u, count)
        radii = np.clip(rng.lognormal(np.log(radius_mean), 0.35, count), 0.8, 8 * u)
        column = np.clip(xs.astype(int), 0, w - 1)
        ys = self.surface - 0.6 * radii - rng.beta(1.0, 1.7, count) * thickness[column]
        strengths = rng.uniform(0.1, 0.22, count) * np.sqrt(radii / radius_mean)
        for y, x, r, a in zip(ys, xs, radii, strengths, strict=True):
            ball = _ball((h, w), y, x, r)
            if ball is not None:
                powder[ball[0]] += a * ball[1]

        # Track bead: consolidated powder, lower than the powder layer, with a smooth top.
        top = self.surface - self.bead_height * (1 + 0.1 * self._smooth_noise(rng, (w,), 5 * u))
        rows = np.arange(h, dtype=np.float32)[:, None]
        above_surface = np.clip(self.surface - rows + 0.5, 0, 1)
        inside = np.clip((rows - top[None, :]) / (1.5 * u) + 0.5, 0, 1) * above_surface
        ripples = 1 + 0.06 * self._smooth_noise(rng, (h, w), 1.2 * u)
        bead = (0.5 * inside * ripples).astype(np.float32)

        # Keyhole collapses.
        n = rng.poisson(self.collapse_rate * duration)
        collapse_time = np.sort(rng.uniform(t_begin, t_end, n))
        collapse_depth = rng.uniform(0.3, 0.6, n)

        # Pores: one from most collapses (the pinched-off keyhole tip), plus some others.
        n_extra = rng.poisson(self.pore_rate * duration)
        from_collapse = collapse_time[rng.random(n) < 0.8]
        born = np.concatenate([from_collapse, rng.uniform(t_begin, t_end, n_extra)])
        m = born.size
        depth = self._free_depth(born) * rng.uniform(0.7, 0.95, m)
        vx = self.scan_speed * rng.uniform(-0.2, 0.6, m)
        x0 = laser_at(born) - 0.35 * depth
        # Frozen once the pool's tail (at this depth) has passed the pore.
        tail = self.pool_length * np.sqrt(np.clip(1 - (depth / self.pool_depth) ** 2, 0.05, 1))
        freeze = born + (tail - (laser_at(born) - x0)) / (self.scan_speed - vx)
        pores = {
            "t0": born, "x0": x0, "y0": self.surface + depth, "vx": vx,
            "vy": rng.uniform(-0.35, 0.1, m) * u, "radius": rng.uniform(2.0, 4.0, m) * u,
            "freeze": np.maximum(freeze, born), "phase": rng.uniform(0, 2 * np.pi, m),
        }

        # Spatter: ejected upwards from the pool, mostly backwards.
        m = rng.poisson(self.spatter_rate * duration)
        emitted = rng.uniform(t_begin, t_end, m)
        speed = rng.uniform(1.5, 9.0, m) * u
        angle = np.clip(rng.normal(-0.35, 0.5, m), -1.3, 1.3)
        large = rng.random(m) < 0.15
        spatter = {
            "t0": emitted,
            "x0": laser_at(emitted) + rng.uniform(-1, 1, m) * self.keyhole_radius,
            "y0": self.surface - self.bead_height - rng.uniform(0, 4 * u, m),
            "vx": speed * np.sin(angle), "vy": -speed * np.cos(angle),
            "radius": np.where(large, rng.uniform(3.5, 6.0, m), rng.uniform(1.2, 3.5, m)) * u,
            "strength": rng.uniform(0.35, 0.8, m),
        }
        return _Pass(powder, bead, collapse_time, collapse_depth, pores, spatter)

    # -- moving parts ----------------------------------------------------------------------

    def _draw_melt(self, att: np.ndarray, t: int, xl: float, layer: _Pass) -> None:
        """Melt pool and keyhole: less dense regions that let more x-rays through."""
        h, w, u = self.height, self.width, self.unit
        r0 = self.keyhole_radius
        depth = self._depth(t, layer)
        tilt = 0.35 * (1 + 0.3 * np.sin(2 * np.pi * t / 11.0 + self._osc_phase[0]))
        top = self.surface - self.powder_thickness - 2 * r0
        x_lo = int(max(np.floor(xl - self.pool_length - 2 * r0 - tilt * depth), 0))
        x_hi = int(min(np.ceil(xl + 3 * r0), w))
        y_lo = int(max(np.floor(top - r0), 0))
        y_hi = int(min(np.ceil(self.surface + max(self.pool_depth, depth) + 2 * r0), h))
        if x_lo >= x_hi or y_lo >= y_hi:
            return
        ys = np.arange(y_lo, y_hi, dtype=np.float32)[:, None]
        xs = np.arange(x_lo, x_hi, dtype=np.float32)[None, :]
        du, dv = xs - xl, np.maximum(ys - self.surface, 0)

        length = np.where(du < 0, self.pool_length, 1.5 * r0)
        radial = np.sqrt((du / length) ** 2 + (dv / self.pool_depth) ** 2)
        pool = np.clip((1 - radial) * self.pool_depth / (2 * u) + 0.5, 0, 1)

        # Tapered capsule from above the surface down to the (tilted back) tip.
        x0, y0 = xl, self.surface - self.bead_height - r0
        x1, y1 = xl - tilt * depth, self.surface + depth
        dx, dy = x1 - x0, y1 - y0
        along = np.clip(((xs - x0) * dx + (ys - y0) * dy) / (dx * dx + dy * dy), 0, 1)
        dist = np.hypot(xs - (x0 + along * dx), ys - (y0 + along * dy))
        wobble = 1 + 0.15 * np.sin(2 * np.pi * 1.7 * along + 0.8 * t)
        radius = r0 * (1 - 0.4 * along) * wobble
        keyhole = np.sqrt(np.clip(1 - (dist / radius) ** 2, 0, 1))

        att[y_lo:y_hi, x_lo:x_hi] *= (1 - POOL_VOID * pool) * (1 - KEYHOLE_VOID * keyhole)

    def _draw_pores(self, att: np.ndarray, t: int, layer: _Pass) -> None:
        p = layer.pores
        alive = p["t0"] <= t
        if not alive.any():
            return
        age = np.minimum(t, p["freeze"][alive]) - p["t0"][alive]
        phase = p["phase"][alive]
        # Wobble in the flow, zero at birth so that a pore starts where it pinched off.
        wobble = 1.5 * self.unit * (np.sin(0.7 * age + phase) - np.sin(phase))
        xs = p["x0"][alive] + p["vx"][alive] * age + wobble
        radii = p["radius"][alive]
        ys = np.clip(p["y0"][alive] + p["vy"][alive] * age,
                     self.surface + radii + 1, self.surface + 0.92 * self.pool_depth)
        for y, x, r in zip(ys, xs, radii, strict=True):
            ball = _ball(att.shape, y, x, r)
            if ball is not None:
                att[ball[0]] *= 1 - PORE_VOID * ball[1]

    def _draw_spatter(self, att: np.ndarray, t: int, layers: list[_Pass]) -> None:
        for layer in layers:
            s = layer.spatter
            age = t - s["t0"]
            xs = s["x0"] + s["vx"] * age
            ys = s["y0"] + s["vy"] * age + 0.5 * self.gravity * age**2
            r = s["radius"]
            # In flight (not yet fallen back below its launch height) and inside the frame.
            visible = (
                (age >= 0) & (ys <= s["y0"]) & (xs > -r) & (xs < self.width + r)
                & (ys > -r) & (ys < self.height + r)
            )
            shown = zip(ys[visible], xs[visible], r[visible], s["strength"][visible], strict=True)
            for y, x, rad, a in shown:
                ball = _ball(att.shape, y, x, rad)
                if ball is not None:
                    att[ball[0]] += a * ball[1]


def _ball(shape: tuple[int, int], yc: float, xc: float, radius: float):
    """Slices of the bounding box of a sphere seen in projection and its chord-length profile.

    The profile is ``sqrt(1 - r^2 / R^2)``: 1 at the centre, 0 at the rim. Returns None
    when the sphere lies outside ``shape``.
    """
    y0, y1 = max(int(np.floor(yc - radius)), 0), min(int(np.ceil(yc + radius)) + 1, shape[0])
    x0, x1 = max(int(np.floor(xc - radius)), 0), min(int(np.ceil(xc + radius)) + 1, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(yc)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(xc)
    profile = np.sqrt(np.clip(1 - (dy * dy + dx * dx) / np.float32(radius * radius), 0, 1))
    return (slice(y0, y1), slice(x0, x1)), profile


def synthetic_lpbf(
    n_frames: int = 64,
    height: int = 256,
    width: int = 512,
    seed: int = 0,
    phase_contrast: bool = True,
    **options,
) -> np.ndarray:
    """A synthetic side-view x-ray video of laser powder-bed fusion, as one array.

    Parameters
    ----------
    n_frames, height, width : int
        Sequence size.
    seed : int
        Seed (>= 0); the same seed gives the same sequence.
    phase_contrast : bool
        Add phase-contrast edge fringes.
    **options
        Further scene settings of :class:`LPBFScene` (``scan_speed``, ``keyhole_depth``,
        ``spatter_rate``, ``collapse_rate``, ``pore_rate``, ``gravity``, ``blur``,
        ``noise``).

    Returns
    -------
    ndarray, shape (n_frames, height, width), float32 in [0, 1]

    See Also
    --------
    LPBFScene : the same scene rendered one frame at a time, for long sequences.
    """
    scene = LPBFScene(height, width, n_frames, seed, phase_contrast=phase_contrast, **options)
    out = np.empty(scene.shape, dtype=np.float32)
    for t in range(n_frames):
        out[t] = scene.frame(t)
    return out
