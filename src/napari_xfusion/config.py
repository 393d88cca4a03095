"""Every setting of napari-xfusion, as typed dataclasses.

One place holds the knobs so that the CLI, the napari widget and the Python API build the
same objects and validate them the same way. Each dataclass checks itself in
``__post_init__`` and raises :class:`ValueError` with a message that names the setting and
how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class TimeModel:
    """How the two cameras' frames line up in time.

    LR frame ``i`` is taken at time ``i`` (in LR frame units). HR keyframe ``j`` is taken at
    time ``offset + j * spacing``.

    Parameters
    ----------
    spacing : int
        HR keyframe spacing ``D``: the number of LR frames between two HR frames (the
        frame-rate ratio of the two cameras).
    offset : int
        LR time of the first HR keyframe (the trigger offset). May be negative when the HR
        camera started first.
    separation : int
        LR frame separation ``r``: the model sees LR frames ``t - r, t, t + r``.
    scale : int
        Spatial scale factor between the HR and LR pixel grids.
    """

    spacing: int = 10
    offset: int = 0
    separation: int = 1
    scale: int = 4

    def __post_init__(self) -> None:
        _require(
            isinstance(self.spacing, int) and self.spacing >= 1,
            f"HR keyframe spacing D must be a whole number >= 1, got {self.spacing!r}: "
            "set it to the ratio of the LR and HR camera frame rates.",
        )
        _require(
            isinstance(self.offset, int),
            f"HR keyframe offset must be a whole number of LR frames, got {self.offset!r}.",
        )
        _require(
            isinstance(self.separation, int) and self.separation >= 1,
            f"LR separation r must be a whole number >= 1, got {self.separation!r}.",
        )
        _require(
            isinstance(self.scale, int) and self.scale >= 1,
            f"scale must be a whole number >= 1, got {self.scale!r}.",
        )


@dataclass(frozen=True)
class NoiseConfig:
    """Poisson noise on simulated LR frames.

    Give either the blank-scan factor ``b0`` (``noisy = Poisson(x * b0) / b0``) or a target
    LR-image PSNR in dB, from which ``b0`` is solved; neither means no noise.
    """

    b0: float | None = None
    target_psnr: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _require(
            self.b0 is None or self.target_psnr is None,
            "give either the blank-scan factor b0 or a target LR PSNR for the noise, not both.",
        )
        _require(self.b0 is None or self.b0 > 0, f"b0 must be > 0, got {self.b0!r}.")
        _require(
            self.target_psnr is None or self.target_psnr > 0,
            f"target LR PSNR must be > 0 dB, got {self.target_psnr!r}.",
        )


@dataclass(frozen=True)
class OpticsConfig:
    """What the LR camera's optics do to the scene before its pixels bin it, in HR pixels.

    A second camera never sees exactly the 4 x 4 means of the HR frame: its optics blur
    more, a registration leaves some misalignment, and its gain varies across the frame
    otherwise than the HR camera's. ``blur`` is the standard deviation of a Gaussian blur,
    ``shift`` a ``(dy, dx)`` translation, ``shading`` how far the relative gain falls from
    the centre of an off-centre Gaussian beam footprint to the farthest corner (0.2: to
    80%; :func:`napari_xfusion.simulate.shading_field`); all 0: exact binning.
    """

    blur: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    shading: float = 0.0

    def __post_init__(self) -> None:
        _require(self.blur >= 0, f"LR optics blur must be >= 0 HR pixels, got {self.blur!r}.")
        _require(0 <= self.shading < 1,
                 f"LR shading must be in [0, 1) (the gain's fall), got {self.shading!r}.")
        _require(
            len(self.shift) == 2 and all(abs(v) <= 64 for v in self.shift),
            f"LR optics shift must be (dy, dx) within 64 HR pixels, got {self.shift!r}.",
        )

    @property
    def exact(self) -> bool:
        """Whether the LR frames are the exact binning of the HR frames."""
        return self.blur == 0 and not any(self.shift) and self.shading == 0


@dataclass(frozen=True)
class NormalizationConfig:
    """The paper's intensity normalization: percentile clip, then min-max over the sequence.

    ``max_sample_frames`` bounds how many frames (evenly spread) are read to estimate the
    percentiles, so that a 10,000-frame stack is never read in full for it.
    """

    low_percentile: float = 0.35
    high_percentile: float = 99.65
    max_sample_frames: int = 64

    def __post_init__(self) -> None:
        _require(
            0.0 <= self.low_percentile < self.high_percentile <= 100.0,
            "normalization percentiles must satisfy 0 <= low < high <= 100, got "
            f"{self.low_percentile} and {self.high_percentile}.",
        )
        _require(self.max_sample_frames >= 1, "max_sample_frames must be >= 1.")


@dataclass(frozen=True)
class EngineConfig:
    """How the inference engine runs a network over a sequence.

    Parameters
    ----------
    device : str
        ``"auto"`` (the first CUDA GPU if one works, else the CPU), ``"cpu"``, ``"cuda"`` or
        ``"cuda:N"``.
    tile : int or None
        Tile size in LR pixels (square), rounded up to a multiple of 4; 0 runs whole frames;
        None picks whole frames up to 256 x 256 LR pixels and 256-pixel tiles above, which
        bounds memory at any frame size without paying for overlaps on small frames.
    overlap : int
        Overlap between neighbouring tiles in LR pixels; the blended seam region. It should
        cover the network's effective receptive field for tiled output to match whole-frame
        output.
    batch : int
        Tiles per forward pass.
    precision : str
        ``"auto"`` (bf16 autocast on CUDA where supported, and on CPUs with native bf16
        instructions; fp32 on other CPUs), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    channels_last : bool
        Channels-last memory format for the network (faster on both CPUs and GPUs).
    feature_cache_mb : int
        Most memory (on the device) for the feature pyramids of input frames, kept so that
        each frame's pyramid is computed once and reused by every output that reads it; 0
        computes them per output. Pyramids are dropped once the pass has moved past their
        frame, so a sequence needs only about ``(2r + 3) * 1.33 * C * h * w`` values
        (``C`` channels, ``h x w`` LR pixels per frame): 100 MB in fp32 for the default
        preset at 256 x 256 LR pixels with r = 3.
    align_keyframes : bool
        Warp each keyframe onto the LR frame of the output time along their optical flow
        before the network sees it (:func:`napari_xfusion.alignment.align_keyframes`): for
        a scene that moves. The ``stf-aligned`` method sets it, and switches it off for a
        recording that stands still.
    """

    device: str = "auto"
    tile: int | None = None
    overlap: int = 16
    batch: int = 4
    precision: str = "auto"
    channels_last: bool = True
    feature_cache_mb: int = 1024
    align_keyframes: bool = False

    def __post_init__(self) -> None:
        _require(
            self.feature_cache_mb >= 0,
            f"feature cache size must be >= 0 MB, got {self.feature_cache_mb}.",
        )
        _require(
            self.tile is None or self.tile >= 0,
            f"tile size must be >= 0 LR pixels (0 = whole frame), got {self.tile}.",
        )
        _require(self.overlap >= 0, f"tile overlap must be >= 0, got {self.overlap}.")
        _require(
            not self.tile or 2 * self.overlap < self.tile,
            f"tile overlap {self.overlap} must be less than half the tile size {self.tile}: "
            "raise the tile size or lower the overlap.",
        )
        _require(self.batch >= 1, f"batch must be >= 1, got {self.batch}.")
        _require(
            self.precision in ("auto", "fp32", "bf16", "fp16"),
            f"precision must be one of auto, fp32, bf16, fp16; got {self.precision!r}.",
        )


#: Architectures the ``models`` package can build.
MODEL_ARCHS = ("stf", "edvr")
#: What a network's reconstruction residual can be added to (see :class:`ModelConfig`).
#: Residual bases that add the keyframes' detail (EDVR-STF only).
KEYFRAME_BASES = ("transfer", "agreement")
MODEL_BASES = ("bilinear", *KEYFRAME_BASES)


@dataclass(frozen=True)
class ModelConfig:
    """The shape of an EDVR-STF or EDVR network.

    Everything needed to rebuild a network from a weights file; stored as JSON in the file's
    metadata.

    Parameters
    ----------
    arch : str
        ``"stf"`` (EDVR-STF: three LR frames plus two HR keyframes) or ``"edvr"`` (the EDVR
        baseline: three LR frames only).
    channels : int
        Feature channels ``C`` (128 in the paper).
    extract_blocks : int
        Residual blocks in the shared feature extraction (5 in the paper).
    recon_blocks : int
        Residual blocks in the reconstruction (40 in the paper).
    deform_groups : int
        Deformable groups of the alignment convolutions (8 in the paper); must divide
        ``channels``.
    scale : int
        Spatial scale between LR and HR; only 4 is supported.
    base : str
        What the reconstruction's residual is added to. ``"bilinear"`` (the paper):
        bilinear x4 upsampling of LR ``t``. ``"transfer"`` (EDVR-STF only): detail
        transfer, i.e. bicubic LR ``t`` plus the high frequencies of the two keyframes,
        each weighted per pixel by a weight the network predicts on top of the linear time
        weight; it starts as exactly the ``transfer`` method and learns what to change.
        ``"agreement"`` (EDVR-STF only): the same, with each keyframe's time weight also
        scaled by how well the keyframe agrees with LR ``t`` around each pixel (its binned
        image against LR ``t``), so that detail of what moved since is not pasted in.
    time_input : bool
        Give the network the position of ``t`` between its two keyframes (it cannot tell
        otherwise); added to the fused features through a learned vector.
    trust_agreement : bool
        With base ``"agreement"``: where a keyframe agrees with LR ``t`` (agreement ``a``
        near 1: nothing moved), keep the base as it is; the learned corrections (the
        reconstruction's residual and the change of the keyframe weights) are scaled by
        ``1 - a``, the better keyframe's agreement. The agreement discounts the LR noise
        (measured on each frame) and the base's LR ``t`` is averaged with the keyframes
        that agree with it, so a still scene gets the keyframe's own image, clean or
        noisy LR alike.
    hr_tail_channels : int
        Channels of the two layers at full HR resolution (64 in EDVR and the paper).
    hr_branch_channels : int or None
        Channels of the EDVR-STF keyframe branch's two layers at (and near) full HR
        resolution; None: ``channels``, as in the paper.
    """

    arch: str = "stf"
    channels: int = 32
    extract_blocks: int = 5
    recon_blocks: int = 10
    deform_groups: int = 4
    scale: int = 4
    base: str = "bilinear"
    time_input: bool = False
    trust_agreement: bool = False
    hr_tail_channels: int = 64
    hr_branch_channels: int | None = None

    def __post_init__(self) -> None:
        _require(
            self.arch in MODEL_ARCHS,
            f"model arch must be one of {', '.join(MODEL_ARCHS)}; got {self.arch!r}.",
        )
        for name in ("channels", "extract_blocks", "recon_blocks", "deform_groups", "scale"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool),
                f"model setting {name} must be a whole number, got {value!r}.",
            )
        _require(self.channels >= 1, f"model channels must be >= 1, got {self.channels}.")
        _require(
            self.extract_blocks >= 0 and self.recon_blocks >= 0,
            "model block counts must be >= 0, got "
            f"extract_blocks={self.extract_blocks}, recon_blocks={self.recon_blocks}.",
        )
        _require(
            self.deform_groups >= 1 and self.channels % self.deform_groups == 0,
            f"deform_groups ({self.deform_groups}) must be >= 1 and divide channels "
            f"({self.channels}): pick a divisor such as 1, 2, 4 or 8.",
        )
        _require(
            self.scale == 4,
            f"only a scale of 4 is supported by the EDVR-STF network, got {self.scale}: "
            "bin or resample the LR stream to a quarter of the HR size.",
        )
        _require(
            self.base in MODEL_BASES,
            f"model base must be one of {', '.join(MODEL_BASES)}; got {self.base!r}.",
        )
        _require(
            self.base == "bilinear" or self.arch == "stf",
            f"base {self.base!r} transfers keyframe detail, which the LR-only {self.arch!r} "
            "network does not see: use base 'bilinear' for it.",
        )
        for name in ("time_input", "trust_agreement"):
            _require(
                isinstance(getattr(self, name), bool),
                f"model setting {name} must be true or false, got {getattr(self, name)!r}.",
            )
        _require(
            not self.trust_agreement or self.base == "agreement",
            f"trust_agreement needs base 'agreement' (the keyframes' agreement with LR t), "
            f"not {self.base!r}.",
        )
        for name in ("hr_tail_channels", "hr_branch_channels"):
            value = getattr(self, name)
            _require(
                (value is None and name == "hr_branch_channels")
                or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
                f"model setting {name} must be a whole number >= 1, got {value!r}.",
            )
        _require(
            self.hr_branch_channels is None or self.arch == "stf",
            "hr_branch_channels sizes the keyframe branch of EDVR-STF; leave it None for "
            f"the {self.arch!r} network.",
        )

    @property
    def adds_keyframe_detail(self) -> bool:
        """Whether the residual base adds the HR keyframes' detail (it needs them)."""
        return self.base in KEYFRAME_BASES

    def to_dict(self) -> dict:
        """The settings as a plain JSON-compatible dict."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """Build from a dict such as :meth:`to_dict` wrote; unknown keys are an error.

        Missing keys take their defaults.
        """
        if not isinstance(data, dict):
            raise ValueError(
                f"a model config must be a dict of settings, got {type(data).__name__}."
            )
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        _require(
            not unknown,
            f"unknown model setting(s) {', '.join(map(repr, unknown))}; the known settings are "
            f"{', '.join(cls.__dataclass_fields__)}.",
        )
        return cls(**data)

    @classmethod
    def preset(cls, name: str, arch: str = "stf") -> "ModelConfig":
        """A named preset (see :data:`MODEL_PRESETS`) for the given architecture.

        ``"paper"`` is the published network (C = 128, 5 + 40 blocks, 8 deformable groups);
        ``"default"`` a compact network that runs on a laptop CPU, its residual added to
        detail transfer weighted by keyframe agreement (``base="agreement"``, trusted where
        a keyframe agrees: ``trust_agreement``; LR-only EDVR keeps the bilinear base);
        ``"tiny"`` a toy for tests.
        """
        if name not in MODEL_PRESETS:
            raise ValueError(
                f"unknown model preset {name!r}; choose one of {', '.join(MODEL_PRESETS)}."
            )
        settings = {**MODEL_PRESETS[name].to_dict(), "arch": arch}
        if arch != "stf":
            # Options about keyframes have no meaning for an LR-only network.
            settings.update(base="bilinear", hr_branch_channels=None, trust_agreement=False)
        return cls.from_dict(settings)


#: Named network sizes; :meth:`ModelConfig.preset` picks one and sets the architecture.
MODEL_PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(channels=128, extract_blocks=5, recon_blocks=40, deform_groups=8),
    # Compact, and its residual is added to detail transfer weighted by keyframe agreement:
    # at an equal training budget detail transfer beat the paper's bilinear base by 6 dB on
    # held-out video, and the agreement weighting beat plain transfer by 0.4 dB
    # (benchmarks/ablate_arch.py, docs/benchmarks.md). Trusting the agreement raised the
    # same weights' validation from 37.55 to 39.11 dB before any training for it.
    "default": ModelConfig(
        channels=32, extract_blocks=5, recon_blocks=10, deform_groups=4, base="agreement",
        trust_agreement=True,
    ),
    "tiny": ModelConfig(channels=8, extract_blocks=1, recon_blocks=1, deform_groups=1),
}


#: Settings that may change between runs of one training without changing its results:
#: how often to report, where and how fast to run, and for how long.
TRAIN_RUN_SETTINGS = (
    "validate_every",
    "checkpoint_every",
    "log_every",
    "device",
    "precision",
    "channels_last",
    "max_minutes",
    "out_dir",
    "loader_threads",
    "loader_processes",
)


@dataclass(frozen=True)
class TrainConfig:
    """How to train a fusion network (the recipe of Tang et al. 2024, section 7.1.2).

    The network, the optimizer and the data recipe are fixed for a training run: a run
    continued from its checkpoint must use the same values. The settings named in
    :data:`TRAIN_RUN_SETTINGS` (reporting, device, time budget, output folder) may change
    between the chunks of one run.

    Parameters
    ----------
    preset : str
        Network size, a key of :data:`MODEL_PRESETS`.
    arch : str
        ``"stf"`` (EDVR-STF) or ``"edvr"`` (the LR-only baseline).
    model : ModelConfig, optional
        The network to train, when it is none of the presets (architecture ablations);
        replaces ``preset`` and must have the architecture ``arch``.
    iterations : int
        Optimizer steps of the whole run; the cosine schedule spans them.
    batch_size : int
        Samples per step.
    lr_crop : int
        LR crop size in pixels (square, a multiple of 4); the HR crop is 4 times larger
        (64 and 256 in the paper).
    learning_rate, min_learning_rate : float
        Adam's initial learning rate, annealed along a cosine to ``min_learning_rate``.
    betas : tuple of float
        Adam's betas (BasicSR's (0.9, 0.99)).
    charbonnier_eps : float
        The loss is ``mean(sqrt(d**2 + eps**2))``; 1e-6 equals BasicSR's Charbonnier loss,
        which adds 1e-12 under the square root.
    seed : int
        Seed of the network's initial weights, of every sample and of the synthetic scenes.
    synthetic_sequences : int
        Synthetic LPBF training sequences rendered at the start, with randomized scenes.
    synthetic_frames : int
        Frames per synthetic sequence.
    validation_sequences : int
        Synthetic sequences held out for validation (their seeds never train).
    data_file : str, optional
        A ``.npz`` file of sequences written by ``scripts/build_training_data.py``; its
        ``val/`` sequences are held out for validation.
    real_dir : str, optional
        A folder of ``.npy`` / ``.tif`` stacks ``(frames, y, x)`` of any dtype, normalized
        like the paper's data (percentile clip, then min-max per sequence).
    real_validation : tuple of str
        File names (without suffix) in ``real_dir`` held out for validation.
    real_fraction : float
        Share of samples drawn from non-synthetic sequences when both kinds are present.
    max_separation : int
        LR frame separation ``r`` is drawn uniformly from ``1..max_separation``.
    max_keyframe_factor : int
        HR keyframes lie ``r * a`` before and ``r * b`` after the output time, ``a`` and
        ``b`` drawn uniformly from ``1..max_keyframe_factor``.
    keyframe_fraction : float
        Share of samples whose output time is itself a keyframe time (one HR input is the
        target frame), as at the keyframes of a fused sequence.
    outside_fraction : float
        Share of samples with both keyframes on one side of the output time, as for the
        frames after the last (or before the first) keyframe of a sequence.
    noise_free_fraction : float
        Share of samples without Poisson noise on the LR frames.
    aligned_fraction : float
        Share of samples whose keyframes are warped onto their (noisy) LR ``t`` before the
        network sees them (:func:`napari_xfusion.alignment.align_keyframes`), as the
        ``stf-aligned`` method fuses; 0 trains on keyframes as they come only.
    pan_fraction : float
        Share of samples cut as if the camera panned: each frame's crop window moves along
        a straight line in time, so the keyframes are shifted against the output frame
        (see :mod:`napari_xfusion.training.data`). Most training scenes are filmed by a
        still camera, where a moving one is what plain EDVR-STF fuses worst.
    max_pan : int
        The largest shift of a panned sample, in HR pixels, between the output time and
        the farther of its keyframes (and its LR frames); each sample draws it uniformly
        from ``0..max_pan`` in a random direction.
    optics_fraction : float
        Share of samples whose LR frames see the scene through optics of their own before
        binning (:func:`napari_xfusion.simulate.lr_optics`): a Gaussian blur and a shift
        against the HR frames, as a real second camera, never binning the HR frame exactly
        nor registered to it exactly, hands them over; then matched to the binning again
        where ``xfusion fuse`` would (:mod:`napari_xfusion.lr_match`), so that the network
        learns what the pipeline hands it.
    max_lr_blur : float
        The largest blur of such a sample, HR pixels (drawn uniformly from ``0..max``).
    max_lr_shift : float
        The largest shift of such a sample along each axis, HR pixels (drawn uniformly
        from ``-max..max``).
    log_b0_range : tuple of float
        ``log10`` range of the blank-scan factor ``b0`` of the LR Poisson noise.
    motion_crop_fraction : float
        Share of crops centred where the frame changes between the keyframes and the output
        time (see :mod:`napari_xfusion.training.data`).
    validation_samples : int
        Fixed whole-frame samples per validation sequence.
    validation_spacing : int
        Keyframe spacing ``D`` of the validation samples.
    validate_every, checkpoint_every, log_every : int
        Intervals in iterations.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision : str
        ``"auto"`` (bf16 autocast on CUDA and on CPUs with native bf16, else fp32),
        ``"fp32"`` or ``"bf16"``.
    channels_last : bool
        Channels-last memory format for the network (a few percent faster on GPUs and
        CPUs alike).
    max_minutes : float, optional
        Wall-clock budget of one call; training stops cleanly with a checkpoint when it is
        spent and continues from there on the next call.
    out_dir : str
        Folder of the checkpoint, logs and weights.
    loader_threads : int
        Threads that cut the next batches while the current one trains.
    loader_processes : int
        Worker processes that make the batches instead, when > 0. Warping keyframes
        (``aligned_fraction``) holds Python's global lock, so threads do not run it side by
        side; on a machine of many cores, such as one that trains on a GPU, processes do.
        Each holds its own copy of the training sequences (about 370 MB for the bundled
        weights' data file and the rendered scenes).
    init_weights : str, optional
        A weights file of a related network to start from (transfer learning) instead of
        random initial weights: every tensor that fits is copied
        (:func:`napari_xfusion.models.init_from`), the rest starts afresh.
    """

    preset: str = "default"
    arch: str = "stf"
    model: ModelConfig | None = None
    iterations: int = 24000
    batch_size: int = 16
    lr_crop: int = 64
    learning_rate: float = 1e-4
    min_learning_rate: float = 1e-7
    betas: tuple[float, float] = (0.9, 0.99)
    charbonnier_eps: float = 1e-6
    seed: int = 0
    synthetic_sequences: int = 12
    synthetic_frames: int = 128
    validation_sequences: int = 1
    data_file: str | None = None
    real_dir: str | None = None
    real_validation: tuple[str, ...] = ()
    real_fraction: float = 0.3
    max_separation: int = 3
    max_keyframe_factor: int = 20
    keyframe_fraction: float = 0.1
    outside_fraction: float = 0.05
    noise_free_fraction: float = 0.1
    aligned_fraction: float = 0.0
    pan_fraction: float = 0.0
    max_pan: int = 32
    optics_fraction: float = 0.0
    max_lr_blur: float = 2.0
    max_lr_shift: float = 1.5
    log_b0_range: tuple[float, float] = (1.0, 7.0)
    motion_crop_fraction: float = 0.5
    validation_samples: int = 6
    validation_spacing: int = 20
    validate_every: int = 1000
    checkpoint_every: int = 500
    log_every: int = 100
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    max_minutes: float | None = None
    out_dir: str = "xfusion-train"
    loader_threads: int = 4
    loader_processes: int = 0
    init_weights: str | None = None

    def __post_init__(self) -> None:
        # Tuples come back from JSON as lists; store them as tuples so configs compare equal.
        for name in ("betas", "real_validation", "log_b0_range"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        _require(
            self.model is None or self.model.arch == self.arch,
            f"the model to train is an {getattr(self.model, 'arch', None)!r} network but arch "
            f"is {self.arch!r}: make them agree.",
        )
        _require(
            self.preset in MODEL_PRESETS,
            f"unknown model preset {self.preset!r}; choose one of {', '.join(MODEL_PRESETS)}.",
        )
        _require(
            self.arch in MODEL_ARCHS,
            f"model arch must be one of {', '.join(MODEL_ARCHS)}; got {self.arch!r}.",
        )
        for name in (
            "iterations", "batch_size", "max_separation", "max_keyframe_factor",
            "validation_spacing", "validate_every", "checkpoint_every", "log_every",
            "loader_threads",
        ):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"training setting {name} must be a whole number >= 1, got {value!r}.",
            )
        for name in (
            "synthetic_sequences", "validation_sequences", "validation_samples", "seed",
            "loader_processes", "max_pan",
        ):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                f"training setting {name} must be a whole number >= 0, got {value!r}.",
            )
        _require(
            isinstance(self.lr_crop, int) and self.lr_crop >= 8 and self.lr_crop % 4 == 0,
            f"lr_crop must be a multiple of 4 and >= 8 LR pixels, got {self.lr_crop!r}.",
        )
        _require(
            self.synthetic_frames >= 2,
            f"synthetic_frames must be >= 2, got {self.synthetic_frames!r}.",
        )
        _require(
            0 < self.min_learning_rate <= self.learning_rate,
            "learning rates must satisfy 0 < min_learning_rate <= learning_rate, got "
            f"{self.min_learning_rate} and {self.learning_rate}.",
        )
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas!r}.",
        )
        _require(
            self.charbonnier_eps > 0, f"charbonnier_eps must be > 0, got {self.charbonnier_eps}."
        )
        for name in ("real_fraction", "keyframe_fraction", "outside_fraction",
                     "noise_free_fraction", "aligned_fraction", "pan_fraction",
                     "optics_fraction", "motion_crop_fraction"):
            value = getattr(self, name)
            _require(0 <= value <= 1, f"{name} must lie in [0, 1], got {value!r}.")
        _require(
            0 <= self.max_lr_blur <= 8 and 0 <= self.max_lr_shift <= 8,
            "max_lr_blur and max_lr_shift must lie in [0, 8] HR pixels, got "
            f"{self.max_lr_blur!r} and {self.max_lr_shift!r}.",
        )
        _require(
            self.keyframe_fraction + self.outside_fraction <= 1,
            "keyframe_fraction + outside_fraction must not exceed 1, got "
            f"{self.keyframe_fraction} + {self.outside_fraction}.",
        )
        _require(
            len(self.log_b0_range) == 2 and self.log_b0_range[0] <= self.log_b0_range[1],
            f"log_b0_range must be (low, high) with low <= high, got {self.log_b0_range!r}.",
        )
        _require(
            self.synthetic_sequences > 0 or self.data_file or self.real_dir,
            "no training data: set synthetic_sequences > 0, a data_file or a real_dir.",
        )
        _require(
            self.precision in ("auto", "fp32", "bf16"),
            f"training precision must be one of auto, fp32, bf16; got {self.precision!r}.",
        )
        _require(
            self.max_minutes is None or self.max_minutes > 0,
            f"max_minutes must be > 0 (or None for no limit), got {self.max_minutes!r}.",
        )

    def to_dict(self) -> dict:
        """The settings as a plain JSON-compatible dict."""
        def plain(value):
            if isinstance(value, tuple):
                return list(value)
            return value.to_dict() if isinstance(value, ModelConfig) else value

        return {name: plain(getattr(self, name)) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Build from a dict such as :meth:`to_dict` wrote; unknown keys are an error."""
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        _require(not unknown, f"unknown training setting(s) {', '.join(map(repr, unknown))}.")
        return cls(**data)

    def model_config(self) -> ModelConfig:
        """The network this run trains."""
        return self.model or ModelConfig.preset(self.preset, self.arch)


@dataclass(frozen=True)
class CalibrationConfig:
    """How to fine-tune a trained network on one experiment's own keyframes.

    See :func:`napari_xfusion.training.calibrate.calibrate`.

    Parameters
    ----------
    iterations : int
        Most optimizer steps.
    batch_size : int
        Samples per step.
    lr_crop : int
        LR crop size in pixels (multiple of 4); the HR crop is ``scale`` times larger.
        Frames smaller than this are cropped to their own size.
    learning_rate : float
        Initial Adam learning rate; small, so that the shipped network is adjusted rather
        than retrained. It decays to zero on a cosine schedule over the run, which ends
        after ``iterations`` steps or ``max_minutes`` of training, whichever comes first.
    max_separation : int
        Largest LR separation ``r`` drawn for training samples (1..this, limited by the
        sequence length).
    holdout_every : int
        Every this-many-th keyframe inside the LR sequence is held out for validation
        (at least one always is; judging a gain needs two or more).
    min_iterations : int
        A run that took fewer steps (a budget too short) is judged "cannot tell", whatever
        its held-out PSNR did.
    validation_crop : int or None
        Side of the central LR crop (multiple of 4) on which validation PSNR is measured;
        None for whole frames.
    charbonnier_eps : float
        Epsilon of the Charbonnier loss.
    seed : int
        Seed of the sample draws.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision : str
        ``"auto"`` (bf16 autocast on CUDA and on CPUs with native bf16, else fp32),
        ``"fp32"`` or ``"bf16"``.
    max_minutes : float or None
        Wall-clock budget of the fine-tuning steps (reading the keyframes and validating
        come on top); the run takes as many steps as fit.
    out : str or None
        Where to write the fine-tuned weights (``.safetensors``); None to keep them in
        memory only.
    align_keyframes : bool
        Warp each training and validation sample's keyframes onto its target's LR frame
        first where the recording moves, as the ``stf-aligned`` method fuses
        (:func:`napari_xfusion.alignment.recording_moves`, :func:`~napari_xfusion.
        alignment.align_keyframes`): calibrate the network for that method.
    """

    iterations: int = 300
    batch_size: int = 4
    lr_crop: int = 48
    learning_rate: float = 2e-5
    max_separation: int = 3
    holdout_every: int = 4
    min_iterations: int = 20
    validation_crop: int | None = None
    charbonnier_eps: float = 1e-6
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    max_minutes: float | None = None
    out: str | None = None
    align_keyframes: bool = False

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "lr_crop", "max_separation", "holdout_every",
                     "min_iterations"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"calibration setting {name} must be a whole number >= 1, got {value!r}.",
            )
        _require(
            self.lr_crop % 4 == 0,
            f"calibration lr_crop must be a multiple of 4, got {self.lr_crop}.",
        )
        _require(
            self.validation_crop is None
            or (self.validation_crop >= 4 and self.validation_crop % 4 == 0),
            "calibration validation_crop must be None or a multiple of 4 (>= 4), got "
            f"{self.validation_crop!r}.",
        )
        _require(
            self.learning_rate > 0,
            f"calibration learning_rate must be > 0, got {self.learning_rate!r}.",
        )
        _require(
            self.precision in ("auto", "fp32", "bf16"),
            f"calibration precision must be one of auto, fp32, bf16; got {self.precision!r}.",
        )
        _require(
            self.max_minutes is None or self.max_minutes > 0,
            f"max_minutes must be > 0 (or None for no limit), got {self.max_minutes!r}.",
        )
