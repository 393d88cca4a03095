"""EDVR-STF (Tang et al. 2024) and its EDVR baseline (Wang et al. 2019), single channel, x4.

The networks follow BasicSR's EDVR, on which the paper's code was built, and use its
parameter names (``conv_first``, ``feature_extraction.0.conv1``, ``pcd_align.dcn_pack.l3``,
``fusion.temporal_attn1``, ``reconstruction.39.conv2``, ``upconv1`` ...), so that BasicSR
checkpoints load without renaming. EDVR-STF adds a feature branch that brings the two HR
keyframes down to the LR grid (``hr_feature``).

Frames are ordered ``[LR t-r, LR t, LR t+r, HR k0, HR k1]``; the reference is frame 1 (LR t).
Every network returns the HR estimate at time ``t`` and, per input frame, the spatial mean of
its raw (pre-sigmoid) temporal-attention map: the paper's attention score.

The forward pass has two halves. :meth:`~FusionNetwork.extract_features` turns single frames
into feature pyramids that do not depend on the reference frame, so a frame's pyramid serves
every output that reads it (an LR frame feeds three outputs, an HR keyframe up to ``2D``);
:meth:`~FusionNetwork.fuse_features` aligns, fuses and reconstructs one output from the
pyramids of its frames. ``forward(lr, hr)`` runs both halves, as training does.

Options beyond the paper (:class:`~napari_xfusion.config.ModelConfig`; the ``paper`` preset
uses none of them): the residual added to a detail-transfer estimate instead of bilinear LR
(``base="transfer"``, or ``"agreement"`` weighted by :func:`keyframe_agreement`,
optionally trusted where it agrees: ``trust_agreement``;
:class:`KeyframeDetailBase`), the position of ``t`` between its keyframes as an input
(``time_input``), and narrower layers at full HR resolution
(``hr_tail_channels``, ``hr_branch_channels``), where most of a compact network's work is.
Networks with either of the first two options take ``position`` (:func:`~napari_xfusion.
timeline.keyframe_position`) in :meth:`~FusionNetwork.fuse_features` and ``forward``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_scale
from ..config import ModelConfig
from .deform import Backend, deform_conv2d, resolve_backend

#: Index of the reference frame (LR t) in the frame order.
REFERENCE_INDEX = 1
#: LR height and width must be multiples of this (two stride-2 pyramid levels).
SIZE_MULTIPLE = 4


def _lrelu(x: Tensor) -> Tensor:
    # In place, as in BasicSR: every call site passes a fresh conv (or sum) output that
    # nothing else reads, which saves one full-size allocation per activation.
    return F.leaky_relu(x, negative_slope=0.1, inplace=True)


def _scaled_kaiming_(conv: nn.Conv2d, scale: float) -> None:
    """Kaiming-normal weights times ``scale``, zero bias (BasicSR's residual-block init).

    The small scale keeps a deep stack of residual blocks close to the identity at the start
    of training.
    """
    nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
    with torch.no_grad():
        conv.weight.mul_(scale)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, 1)


def _conv_with_reference(conv: nn.Conv2d, x: Tensor, reference: Tensor) -> Tensor:
    """``conv(cat([x, reference], 1))``, where consecutive frames of ``x`` share a reference.

    The convolution is linear in its input channels, so the reference's half of it is
    computed once per reference instead of once per frame: PCD compares every frame with
    the same reference.

    Shapes: x (N * T, C, H, W), reference (N, C, H, W) -> (N * T, C_out, H, W).
    """
    c = x.shape[1]
    out = F.conv2d(x, conv.weight[:, :c], conv.bias, conv.stride, conv.padding)
    shared = F.conv2d(reference, conv.weight[:, c:], None, conv.stride, conv.padding)
    out.unflatten(0, (reference.shape[0], -1)).add_(shared.unsqueeze(1))
    return out


class ResidualBlockNoBN(nn.Module):
    """``x + conv2(relu(conv1(x)))``, without batch normalization.

    Shape: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.conv2 = _conv3x3(channels, channels)
        _scaled_kaiming_(self.conv1, 0.1)
        _scaled_kaiming_(self.conv2, 0.1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x), inplace=True))


class DCNv2Pack(nn.Module):
    """Modulated deformable 3x3 conv whose offsets and masks come from a second input.

    ``conv_offset(feat)`` gives ``3 * G * 9`` channels: the first ``2 * G * 9`` are offsets
    in torchvision's layout, the rest mask logits (sigmoid). The offset conv starts at zero,
    so an untrained pack is a plain convolution with a mask of 0.5.

    Parameters
    ----------
    channels : int
        Input and output channels.
    deform_groups : int
        Offset groups ``G``; must divide ``channels``.
    backend : {"auto", "torch", "torchvision"}
        Deformable-convolution implementation (:func:`~.deform.deform_conv2d`).

    Shapes: x (N, C, H, W), feat (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, deform_groups: int, backend: Backend = "auto") -> None:
        super().__init__()
        self.deform_groups = deform_groups
        self.backend = resolve_backend(backend)
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.conv_offset = nn.Conv2d(channels, 3 * deform_groups * 9, 3, 1, 1)
        bound = 1.0 / math.sqrt(channels * 9)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor, feat: Tensor) -> Tensor:
        # Split rather than sliced: the backward then joins the two gradients in one
        # concatenation instead of zero-filling a full-size gradient for each slice.
        offset, mask = self.conv_offset(feat).split(
            [2 * self.deform_groups * 9, self.deform_groups * 9], dim=1
        )
        mask = torch.sigmoid(mask)
        return deform_conv2d(
            x, offset, self.weight, self.bias, 1, 1, 1, mask, backend=self.backend
        )


class PCDAlignment(nn.Module):
    """Pyramid, cascading and deformable alignment of a frame's features to the reference.

    Offsets are estimated coarse to fine on three pyramid levels (L3 = 1/4 size, L2 = 1/2,
    L1 = full); each level's offset features and aligned features are upsampled x2 (offsets
    also doubled in magnitude) and refine the next. A last, cascading deformable conv at L1
    corrects residual misalignment.

    Shapes: ``neighbour`` is a list ``[L1, L2, L3]`` of (N * T, C, H, W), (N * T, C, H/2, W/2),
    (N * T, C, H/4, W/4): T frames per batch item; ``reference`` the same with N items, one
    reference per T consecutive frames -> aligned (N * T, C, H, W).
    """

    def __init__(self, channels: int, deform_groups: int, backend: Backend = "auto") -> None:
        super().__init__()
        c = channels
        self.offset_conv1 = nn.ModuleDict()
        self.offset_conv2 = nn.ModuleDict()
        self.offset_conv3 = nn.ModuleDict()
        self.dcn_pack = nn.ModuleDict()
        self.feat_conv = nn.ModuleDict()
        for level in ("l3", "l2", "l1"):
            self.offset_conv1[level] = _conv3x3(2 * c, c)
            if level == "l3":
                self.offset_conv2[level] = _conv3x3(c, c)
            else:
                # Coarser offset features are concatenated in.
                self.offset_conv2[level] = _conv3x3(2 * c, c)
                self.offset_conv3[level] = _conv3x3(c, c)
                self.feat_conv[level] = _conv3x3(2 * c, c)
            self.dcn_pack[level] = DCNv2Pack(c, deform_groups, backend)
        self.cas_offset_conv1 = _conv3x3(2 * c, c)
        self.cas_offset_conv2 = _conv3x3(c, c)
        self.cas_dcnpack = DCNv2Pack(c, deform_groups, backend)

    @staticmethod
    def _up(x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, neighbour: list[Tensor], reference: list[Tensor]) -> Tensor:
        up_offset = up_feat = None
        for i, level in ((2, "l3"), (1, "l2"), (0, "l1")):
            offset = _lrelu(
                _conv_with_reference(self.offset_conv1[level], neighbour[i], reference[i])
            )
            if level == "l3":
                offset = _lrelu(self.offset_conv2[level](offset))
            else:
                offset = _lrelu(self.offset_conv2[level](torch.cat([offset, up_offset], 1)))
                offset = _lrelu(self.offset_conv3[level](offset))
            feat = self.dcn_pack[level](neighbour[i], offset)
            if level != "l3":
                feat = self.feat_conv[level](torch.cat([feat, up_feat], 1))
            if level != "l1":
                feat = _lrelu(feat)
                # Offset features are in pixels of their level: double them with the grid.
                up_offset = self._up(offset) * 2
                up_feat = self._up(feat)
        offset = _lrelu(_conv_with_reference(self.cas_offset_conv1, feat, reference[0]))
        offset = _lrelu(self.cas_offset_conv2(offset))
        return _lrelu(self.cas_dcnpack(feat, offset))


class TSAFusion(nn.Module):
    """Temporal and spatial attention fusion of the aligned frames.

    Temporal attention: each frame's embedded features are dotted with the reference's
    embedding at every pixel; the sigmoid of that correlation weights the frame's features.
    The fused features are then modulated by a spatial attention computed on a small
    pyramid (max and average pooling).

    Parameters
    ----------
    channels : int
    frames : int
        Number of aligned frames ``T``.
    reference : int
        Index of the reference frame.

    Shapes: aligned (N, T, C, H, W) -> fused (N, C, H, W) and the raw correlation maps
    (N, T, H, W) (pre-sigmoid; their spatial means are the attention scores).
    """

    def __init__(self, channels: int, frames: int, reference: int = REFERENCE_INDEX) -> None:
        super().__init__()
        c = channels
        self.reference = reference
        self.temporal_attn1 = _conv3x3(c, c)
        self.temporal_attn2 = _conv3x3(c, c)
        self.feat_fusion = nn.Conv2d(frames * c, c, 1)
        self.spatial_attn1 = nn.Conv2d(frames * c, c, 1)
        self.spatial_attn2 = nn.Conv2d(2 * c, c, 1)
        self.spatial_attn3 = _conv3x3(c, c)
        self.spatial_attn4 = nn.Conv2d(c, c, 1)
        self.spatial_attn5 = _conv3x3(c, c)
        self.spatial_attn_l1 = nn.Conv2d(c, c, 1)
        self.spatial_attn_l2 = _conv3x3(2 * c, c)
        self.spatial_attn_l3 = _conv3x3(c, c)
        self.spatial_attn_add1 = nn.Conv2d(c, c, 1)
        self.spatial_attn_add2 = nn.Conv2d(c, c, 1)

    @staticmethod
    def _pool(x: Tensor) -> Tensor:
        """3x3 stride-2 max and average pooling, stacked: (N, C, H, W) -> (N, 2C, H/2, W/2)."""
        return torch.cat(
            [F.max_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1, count_include_pad=True)], 1
        )

    @staticmethod
    def _up(x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, aligned: Tensor) -> tuple[Tensor, Tensor]:
        n, t, c, h, w = aligned.shape
        embedding_ref = self.temporal_attn1(aligned[:, self.reference])
        embedding = self.temporal_attn2(aligned.reshape(n * t, c, h, w)).reshape(n, t, c, h, w)
        correlation = (embedding * embedding_ref.unsqueeze(1)).sum(2)  # (N, T, H, W)
        weighted = (aligned * torch.sigmoid(correlation).unsqueeze(2)).reshape(n, t * c, h, w)

        feat = _lrelu(self.feat_fusion(weighted))

        attn = _lrelu(self.spatial_attn1(weighted))
        attn = _lrelu(self.spatial_attn2(self._pool(attn)))  # 1/2 size
        attn_level = _lrelu(self.spatial_attn_l1(attn))
        attn_level = _lrelu(self.spatial_attn_l2(self._pool(attn_level)))  # 1/4 size
        attn_level = self._up(_lrelu(self.spatial_attn_l3(attn_level)))
        attn = _lrelu(self.spatial_attn3(attn)) + attn_level
        attn = self._up(_lrelu(self.spatial_attn4(attn)))
        attn = self.spatial_attn5(attn)
        attn_add = self.spatial_attn_add2(_lrelu(self.spatial_attn_add1(attn)))
        # sigmoid(attn) starts near 0.5; the factor 2 keeps the modulation near 1.
        return feat * torch.sigmoid(attn) * 2 + attn_add, correlation


class HRFeatureExtractor(nn.Module):
    """The HR keyframe branch of EDVR-STF: features on the LR grid from an HR frame.

    ``conv1`` + LeakyReLU, then ``conv2`` and ``conv3`` each followed by LeakyReLU and a 3x3,
    stride-2 max pooling; two poolings bring the 4x HR grid down to the LR grid.

    Parameters
    ----------
    channels : int
        Output channels ``C``.
    inner_channels : int, optional
        Channels of ``conv1`` and ``conv2``, which run at full and half HR resolution;
        default ``channels`` (the paper).

    Shape: (N, 1, 4H, 4W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, inner_channels: int | None = None) -> None:
        super().__init__()
        inner = inner_channels or channels
        self.conv1 = _conv3x3(1, inner)
        self.conv2 = _conv3x3(inner, inner)
        self.conv3 = _conv3x3(inner, channels)

    def forward(self, x: Tensor) -> Tensor:
        x = _lrelu(self.conv1(x))
        x = F.max_pool2d(_lrelu(self.conv2(x)), 3, 2, 1)
        return F.max_pool2d(_lrelu(self.conv3(x)), 3, 2, 1)


class TimeEmbedding(nn.Module):
    """The position of ``t`` between its keyframes as a per-channel feature offset.

    The position ``p`` enters as ``(clip(p, 0, 1), p - clip(p, 0, 1))``: where ``t`` lies
    between the keyframes, and how far past them at the sequence ends. The linear map
    starts at zero, so adding it changes nothing until it is trained.

    Shape: position (N,) -> (N, C, 1, 1).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2, channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, position: Tensor) -> Tensor:
        p = position.float()
        inside = p.clamp(0.0, 1.0)
        return self.linear(torch.stack([inside, p - inside], 1))[:, :, None, None]


def keyframe_detail(keyframes: Tensor, scale: int = 4) -> Tensor:
    """What binning loses and bicubic interpolation does not bring back: ``x - up(bin(x))``.

    The torch twin of :func:`napari_xfusion.methods.classical.high_frequencies` (same kernels), for
    frames whose sides are multiples of ``scale``.

    Shape: (N, 1, H, W) -> (N, 1, H, W).
    """
    coarse = F.avg_pool2d(keyframes, scale)
    return keyframes - F.interpolate(
        coarse, scale_factor=scale, mode="bicubic", align_corners=False
    )


#: Starting width of the agreement weight (``base="agreement"``), in the [0, 1] units of
#: normalized frames: a keyframe whose binned image differs from LR ``t`` by this much
#: (root-mean-square over 3 x 3 LR pixels) keeps ``1/e`` of its detail there. 0.06 fused
#: best on the held-out real videos, clean and noisy, before any training.
AGREEMENT_WIDTH = 0.06


def keyframe_fit(lr_reference: Tensor, keyframes: Tensor, scale: int = 4
                 ) -> tuple[Tensor, Tensor]:
    """Each keyframe binned to the LR grid and matched to LR ``t``, and how well it fits.

    The match is a gain and offset (least squares over the frame, the gain kept within
    [0.5, 2]), so that two cameras of different response, or a flicker of the source, do
    not count as a misfit. The misfit is the squared difference from LR ``t`` averaged
    over 3 x 3 LR pixels.

    Shapes: lr_reference (N, 1, h, w), keyframes (N, 2, 1, sh, sw) -> matched keyframes
    (N, 2, 1, h, w), misfit (N, 2, 1, h, w).
    """
    coarse = F.avg_pool2d(keyframes.flatten(0, 1), scale).unflatten(0, (-1, 2))
    target = lr_reference[:, None]
    x = coarse - coarse.mean((-2, -1), keepdim=True)
    target_mean = target.mean((-2, -1), keepdim=True)
    y = target - target_mean
    gain = ((x * y).mean((-2, -1), keepdim=True) / (x.square().mean((-2, -1), keepdim=True)
                                                     + 1e-12)).clamp(0.5, 2.0)
    matched = gain * x + target_mean
    misfit = (matched - target).square().flatten(0, 1)
    local = F.avg_pool2d(misfit, 3, stride=1, padding=1, count_include_pad=False)
    return matched, local.unflatten(0, (-1, 2))


def keyframe_agreement(misfit: Tensor, width: Tensor, noise: Tensor | None = None) -> Tensor:
    """How well each keyframe agrees with LR ``t`` around each pixel, in (0, 1].

    ``exp(-m / width^2)`` with ``m`` the :func:`keyframe_fit` misfit, less the LR noise
    variance when ``noise`` is given (a misfit no larger than the noise is agreement).

    Shapes: misfit (N, 2, 1, h, w), width (), noise (N, 1, 1, 1) -> (N, 2, 1, h, w).
    """
    if noise is not None:
        misfit = (misfit - noise[:, None]).clamp(min=0.0)
    return torch.exp(-misfit / width.square())


#: Immerkaer's noise-estimation kernel: it cancels planes and gains 36 on white noise.
_NOISE_KERNEL = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def lr_noise_variance(lr_reference: Tensor, matched: Tensor) -> Tensor:
    """The noise variance of LR ``t``, from the keyframes' share of fine-scale energy.

    A frame's fine-scale energy ``E`` (the mean square of Immerkaer's kernel, per unit of
    white-noise variance) and its variance ``V`` both gain the noise variance ``n``. Binned
    to the LR grid, a keyframe is nearly noise-free and shows the same kind of scene, even
    where it has moved, so LR ``t`` would have ``E/V`` of its keyframes without noise:
    ``n ~ E_t - V_t E_k / V_k``, which ignores the camera's gain and errs low (by the
    fraction ``E_k / V_k``, small for real scenes) unless LR ``t`` shows finer structure
    than its keyframes; about 0 on clean LR.

    Shapes: lr_reference (N, 1, h, w), matched (N, 2, 1, h, w) -> (N, 1, 1, 1).
    """
    kernel = _NOISE_KERNEL.to(lr_reference)[None, None]

    def energy_and_variance(frames: Tensor) -> tuple[Tensor, Tensor]:
        energy = F.conv2d(frames, kernel).square().mean((-3, -2, -1)) / 36.0
        return energy, frames.var((-3, -2, -1))

    energy, variance = energy_and_variance(lr_reference)
    key_energy, key_variance = energy_and_variance(matched.flatten(0, 1))
    share = (key_energy / (key_variance + 1e-12)).unflatten(0, (-1, 2)).mean(1)
    return (energy - variance * share).clamp(min=0.0).view(-1, 1, 1, 1)


def keyframe_lows(lr_reference: Tensor, matched: Tensor, misfit: Tensor, noise: Tensor
                  ) -> Tensor:
    """LR ``t`` with its noise averaged out against the keyframes that agree with it.

    Each pixel is the inverse-variance mean of LR ``t`` (variance ``noise``) and the two
    matched keyframes (variance ``tau^2``, their misfit less the noise: what changed
    since they were taken). On clean LR it is LR ``t`` itself; where a noisy frame is
    still, it is mostly the keyframes.

    Shapes: lr_reference (N, 1, h, w), matched and misfit (N, 2, 1, h, w), noise
    (N, 1, 1, 1) -> (N, 1, h, w).
    """
    change = (misfit - noise[:, None]).clamp(min=1e-6)
    ratio = noise[:, None] / change
    weights = ratio / (1.0 + ratio.sum(1, keepdim=True))
    return lr_reference + (weights * (matched - lr_reference[:, None])).sum(1)


class KeyframeDetailBase(nn.Module):
    """The residual base of ``base="transfer"`` and ``"agreement"``: detail transfer with
    learned weights.

    ``bicubic(LR t) + g0 * D(HR k0) + g1 * D(HR k1)`` with ``D`` the keyframes' detail
    (:func:`keyframe_detail`) and per-pixel weights ``g = w + delta``: ``w`` the linear
    time weights of the ``transfer`` method (:func:`~napari_xfusion.methods.classical.
    keyframe_weights`), ``delta`` predicted on the LR grid from the reconstruction features
    and upsampled. ``delta`` starts at zero, so an untrained base is detail transfer itself;
    the network learns where a keyframe's detail is wrong (it moved) or right. Computed in
    fp32: the detail is small and bf16 would round it away.

    With ``agreement``, ``w`` is weighed by :func:`keyframe_agreement` ``a``: ``w_k a_k``
    renormalized over the two keyframes and scaled by the larger agreement, so the detail
    comes from the keyframe that still looks like LR ``t`` and fades where neither does.
    The width of the agreement is learned (it starts at :data:`AGREEMENT_WIDTH`). With
    ``trust``, the base stands where a keyframe agrees: ``delta`` is scaled by
    ``1 - max(a)``, and so is the network's residual (the second output, None otherwise);
    and since a noisy LR ``t`` would pass its noise on, the agreement discounts the LR
    noise (:func:`lr_noise_variance`) and ``bicubic`` upsamples LR ``t`` averaged with
    the keyframes that agree with it (:func:`keyframe_lows`) instead of LR ``t``.

    Shapes: lr_reference (N, 1, h, w), keyframes (N, 2, 1, 4h, 4w), position (N,),
    features (N, C, h, w) -> base (N, 1, 4h, 4w), residual weight (N, 1, 4h, 4w) or None.
    """

    def __init__(
        self, channels: int, scale: int = 4, agreement: bool = False, trust: bool = False
    ) -> None:
        super().__init__()
        self.scale = scale
        self.trust = trust
        self.gate = _conv3x3(channels, 2)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.log_width = None
        if agreement:
            self.log_width = nn.Parameter(torch.tensor(math.log(AGREEMENT_WIDTH)))

    def forward(
        self, lr_reference: Tensor, keyframes: Tensor, position: Tensor, features: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        s = self.scale
        with torch.autocast(lr_reference.device.type, enabled=False):
            lr_reference, keyframes = lr_reference.float(), keyframes.float()
            detail = keyframe_detail(keyframes.flatten(0, 1), s).unflatten(0, (-1, 2))
            w1 = position.float().clamp(0.0, 1.0).view(-1, 1, 1, 1)
            delta = F.interpolate(
                self.gate(features.float()), scale_factor=s, mode="bilinear",
                align_corners=False,
            )
            weights = torch.cat([1.0 - w1, w1], 1)
            residual_weight = None
            lows = lr_reference
            if self.log_width is not None:
                matched, misfit = keyframe_fit(lr_reference, keyframes, s)
                noise = None
                if self.trust:
                    noise = lr_noise_variance(lr_reference, matched)
                    lows = keyframe_lows(lr_reference, matched, misfit, noise)
                agreement = keyframe_agreement(misfit, self.log_width.exp(), noise)[:, :, 0]
                agreement = agreement.repeat_interleave(s, -2).repeat_interleave(s, -1)
                best = agreement.amax(1, keepdim=True)
                agreed = weights * agreement
                weights = best * agreed / (agreed.sum(1, keepdim=True) + 1e-6)
                if self.trust:
                    residual_weight = 1.0 - best
                    delta = delta * residual_weight
            weights = weights + delta
            lr_up = F.interpolate(lows, scale_factor=s, mode="bicubic", align_corners=False)
            return lr_up + (weights * detail[:, :, 0]).sum(1, keepdim=True), residual_weight


class FusionNetwork(nn.Module):
    """Shared body of :class:`EDVRSTF` and :class:`EDVR`.

    Per frame (:meth:`extract_features`): first-layer features on the LR grid, shared
    residual extraction and a 3-level pyramid. Per output (:meth:`fuse_features`): PCD
    alignment of every frame to the reference, TSA fusion, residual reconstruction and two
    x2 pixel-shuffle stages, added to the bilinear x4 upsampling of LR ``t``.

    Attributes
    ----------
    config : ModelConfig
        The network's size and architecture (stored in weight files).
    frames : int
        Number of frames aligned and fused (5 for EDVR-STF, 3 for EDVR).
    deform_backend : str
        ``"torch"`` or ``"torchvision"``, the deformable-convolution implementation in use.
    """

    frames: int

    def __init__(self, config: ModelConfig, deform_backend: Backend = "auto") -> None:
        super().__init__()
        c = config.channels
        self.config = config
        self.deform_backend = resolve_backend(deform_backend)

        self.conv_first = _conv3x3(1, c)
        self.feature_extraction = nn.Sequential(
            *(ResidualBlockNoBN(c) for _ in range(config.extract_blocks))
        )
        self.conv_l2_1 = _conv3x3(c, c, stride=2)
        self.conv_l2_2 = _conv3x3(c, c)
        self.conv_l3_1 = _conv3x3(c, c, stride=2)
        self.conv_l3_2 = _conv3x3(c, c)

        self.pcd_align = PCDAlignment(c, config.deform_groups, self.deform_backend)
        self.fusion = TSAFusion(c, self.frames, REFERENCE_INDEX)

        self.reconstruction = nn.Sequential(
            *(ResidualBlockNoBN(c) for _ in range(config.recon_blocks))
        )
        tail = config.hr_tail_channels
        self.upconv1 = _conv3x3(c, 4 * c)
        self.upconv2 = _conv3x3(c, 4 * tail)
        self.conv_hr = _conv3x3(tail, tail)
        self.conv_last = _conv3x3(tail, 1)
        if config.adds_keyframe_detail:
            self.keyframe_base = KeyframeDetailBase(
                c, config.scale, agreement=config.base == "agreement",
                trust=config.trust_agreement,
            )
            # A zero residual at the start: the untrained network is detail transfer.
            nn.init.zeros_(self.conv_last.weight)
            nn.init.zeros_(self.conv_last.bias)
        if config.time_input:
            self.time_embedding = TimeEmbedding(c)

    # -- pieces -------------------------------------------------------------------------

    def _check_lr(self, lr: Tensor) -> tuple[int, int, int]:
        if lr.dim() != 5 or lr.shape[1] != 3 or lr.shape[2] != 1:
            raise ValueError(
                f"lr must have shape (B, 3, 1, h, w) (frames t-r, t, t+r, one channel), got "
                f"{tuple(lr.shape)}."
            )
        b, _, _, h, w = lr.shape
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(
                f"LR frames of {h}x{w} pixels: height and width must be multiples of "
                f"{SIZE_MULTIPLE}; pad them (the inference engine does) to "
                f"{h + (-h) % SIZE_MULTIPLE}x{w + (-w) % SIZE_MULTIPLE}."
            )
        return b, h, w

    def _first_layer(self, frames: Tensor, stream: str) -> Tensor:
        """First-layer features on the LR grid: (N, 1, h, w) LR frames -> (N, C, h, w)."""
        if stream != "lr":
            raise ValueError(
                f"{type(self).__name__} reads LR frames only, not the {stream!r} stream."
            )
        return _lrelu(self.conv_first(frames))

    def _run(
        self, lr: Tensor, hr: Tensor | None, position: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        b, h, w = self._check_lr(lr)
        pyramids = [self.extract_features(lr.reshape(b * 3, 1, h, w), "lr")]
        if hr is not None:
            pyramids.append(self.extract_features(hr.reshape(b * 2, 1, 4 * h, 4 * w), "hr"))
        features = [
            torch.cat([pyramid[level].unflatten(0, (b, -1)) for pyramid in pyramids], 1)
            for level in range(3)
        ]
        return self.fuse_features(features, lr[:, REFERENCE_INDEX], hr, position)

    @property
    def needs_position(self) -> bool:
        """Whether :meth:`fuse_features` needs the position of ``t`` between its keyframes."""
        return self.config.adds_keyframe_detail or self.config.time_input

    def _base(
        self, lr_reference: Tensor, keyframes: Tensor | None, position: Tensor | None,
        features: Tensor,
    ) -> tuple[Tensor, Tensor | None]:
        """What the reconstructed residual is added to (``config.base``), and the weight
        of the residual where the base asks for one (``trust_agreement``)."""
        if self.config.adds_keyframe_detail:
            return self.keyframe_base(lr_reference, keyframes, position, features)
        up = F.interpolate(lr_reference, scale_factor=4, mode="bilinear", align_corners=False)
        return up, None

    # -- public -------------------------------------------------------------------------

    def extract_features(self, frames: Tensor, stream: str = "lr") -> list[Tensor]:
        """Feature pyramids of single frames: the part of the network that does not depend
        on the reference frame.

        The first layer depends on the stream (one conv for LR frames; for HR keyframes the
        HR branch, which brings them down to the LR grid); the residual extraction and the
        pyramid are shared.

        Parameters
        ----------
        frames : Tensor
            LR frames of shape (N, 1, h, w) for ``stream="lr"``, HR keyframes of shape
            (N, 1, 4h, 4w) for ``stream="hr"`` (EDVR-STF only); ``h`` and ``w`` multiples
            of 4, values in [0, 1].
        stream : {"lr", "hr"}
            Which camera the frames come from.

        Returns
        -------
        list of Tensor
            ``[L1 (N, C, h, w), L2 (N, C, h/2, w/2), L3 (N, C, h/4, w/4)]``.
        """
        feat_l1 = self.feature_extraction(self._first_layer(frames, stream))
        feat_l2 = _lrelu(self.conv_l2_2(_lrelu(self.conv_l2_1(feat_l1))))
        feat_l3 = _lrelu(self.conv_l3_2(_lrelu(self.conv_l3_1(feat_l2))))
        return [feat_l1, feat_l2, feat_l3]

    def fuse_features(
        self,
        features: list[Tensor],
        lr_reference: Tensor,
        keyframes: Tensor | None = None,
        position: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One output frame per batch item from the feature pyramids of its input frames.

        PCD alignment of every frame to the reference (frame 1), TSA fusion, reconstruction
        and upsampling: the part of the network that runs once per output.

        Parameters
        ----------
        features : list of Tensor
            ``[L1 (B, T, C, h, w), L2 (B, T, C, h/2, w/2), L3 (B, T, C, h/4, w/4)]``: the
            :meth:`extract_features` pyramids of the T input frames of each output, stacked
            in frame order (``[LR t-r, LR t, LR t+r, HR k0, HR k1]``, or the first three
            for EDVR).
        lr_reference : Tensor, shape (B, 1, h, w)
            LR frame ``t`` itself, whose upsampling is (part of) the residual base.
        keyframes : Tensor, shape (B, 2, 1, 4h, 4w), optional
            The HR keyframes ``k0, k1`` themselves; needed by the bases that add their
            detail (``"transfer"``, ``"agreement"``).
        position : Tensor, shape (B,), optional
            Where ``t`` lies between its keyframes (0 at ``k0``, 1 at ``k1``, outside
            [0, 1] past the ends); needed when :attr:`needs_position`.

        Returns
        -------
        out : Tensor, shape (B, 1, 4h, 4w)
            The HR estimate at time ``t`` (not clipped).
        attention : Tensor, shape (B, T)
            Spatial mean of each frame's pre-sigmoid temporal-attention map.
        """
        b, t = features[0].shape[:2]
        if self.needs_position and position is None:
            raise ValueError(
                "this network needs the position of t between its keyframes (its base is "
                f"{self.config.base!r}, time_input={self.config.time_input}): pass position "
                "(B,), see napari_xfusion.timeline.keyframe_position."
            )
        if self.config.adds_keyframe_detail and keyframes is None:
            raise ValueError(
                f"a network with base {self.config.base!r} needs the HR keyframes themselves: pass "
                "keyframes of shape (B, 2, 1, 4h, 4w)."
            )
        reference = [x[:, REFERENCE_INDEX] for x in features]
        aligned = self.pcd_align([x.flatten(0, 1) for x in features], reference)
        fused, correlation = self.fusion(aligned.unflatten(0, (b, t)))
        if self.config.time_input:
            fused = fused + self.time_embedding(position).to(fused.dtype)

        recon = self.reconstruction(fused)
        out = _lrelu(F.pixel_shuffle(self.upconv1(recon), 2))
        out = _lrelu(F.pixel_shuffle(self.upconv2(out), 2))
        out = self.conv_last(_lrelu(self.conv_hr(out)))
        # Averaged in fp32: under bf16 autocast a bf16 mean would round the scores to
        # about three digits, coarser than the differences the attention plot shows.
        attention = correlation.float().mean(dim=(2, 3))
        base, residual_weight = self._base(lr_reference, keyframes, position, recon)
        if residual_weight is not None:
            out = out * residual_weight
        return out + base, attention

    def receptive_field(self, max_offset: float = 8.0) -> int:
        """Upper estimate of the receptive-field radius, in LR pixels.

        Counted along the longest path: extraction and pyramid convolutions, the PCD offset
        and deformable convolutions (plus ``max_offset`` LR pixels for each of the two
        full-resolution deformable convolutions, whose reach depends on the learned
        offsets), the TSA spatial-attention pyramid, the reconstruction blocks and the
        upsampling tail. Tiles that overlap by this much give exactly the whole-frame
        result; the effective receptive field of a trained network is much smaller, so
        the tile overlap can usually be far less.

        Parameters
        ----------
        max_offset : float
            Assumed largest deformable offset, in LR pixels.
        """
        cfg = self.config
        # Input layers: the HR branch (3 convs and 2 poolings, 1.75 LR px) reaches further
        # than the single LR conv (1 px).
        radius = 1.75 if cfg.arch == "stf" else 1.0
        radius += 2 * cfg.extract_blocks  # two 3x3 convs per block
        radius += 1 + 2 + 2 + 4  # pyramid: conv_l2_1, conv_l2_2 (at 1/2), conv_l3_* (1/2, 1/4)
        # PCD, longest chain: L3 offset convs (2 x 4 px), x2 bilinear upsampling (4 px),
        # L2 offset convs (2 x 2 px), upsampling (2 px), L1 offset convs (2 x 1 px), L1 DCN
        # and feature conv (2 px), cascade offset convs (2 px) and DCN (1 px).
        radius += 8 + 4 + 4 + 2 + 2 + 2 + 2 + 1 + 2 * max_offset
        # TSA: embedding (1), pooling (1), pyramid pooling (2), two 3x3 at 1/4 (8),
        # upsampling (4 + 2), spatial_attn5 (1).
        radius += 1 + 1 + 2 + 8 + 6 + 1
        radius += 2 * cfg.recon_blocks
        radius += 1 + 0.5 + 0.25 + 0.25  # upconv1, upconv2 (at 2x), conv_hr, conv_last (4x)
        return math.ceil(radius)


class EDVRSTF(FusionNetwork):
    """EDVR-STF: the HR frame at time ``t`` from three LR frames and two HR keyframes.

    Parameters
    ----------
    config : ModelConfig
        Network size; ``config.arch`` must be ``"stf"``.
    deform_backend : {"auto", "torch", "torchvision"}
        Deformable-convolution implementation (both give the same results).

    Examples
    --------
    >>> from napari_xfusion.config import ModelConfig
    >>> net = EDVRSTF(ModelConfig.preset("tiny"))
    >>> out, attention = net(torch.rand(1, 3, 1, 8, 8), torch.rand(1, 2, 1, 32, 32))
    >>> out.shape, attention.shape
    (torch.Size([1, 1, 32, 32]), torch.Size([1, 5]))
    """

    frames = 5

    def __init__(self, config: ModelConfig, deform_backend: Backend = "auto") -> None:
        if config.arch != "stf":
            raise ValueError(
                f"EDVRSTF needs a config with arch='stf', got {config.arch!r}: use EDVR or "
                "build_model(config)."
            )
        super().__init__(config, deform_backend)
        self.hr_feature = HRFeatureExtractor(config.channels, config.hr_branch_channels)

    def _first_layer(self, frames: Tensor, stream: str) -> Tensor:
        if stream == "hr":
            return self.hr_feature(frames)
        return super()._first_layer(frames, stream)

    def _check_hr(self, lr: Tensor, hr: Tensor | None) -> None:
        b, h, w = self._check_lr(lr)
        expected = (b, 2, 1, 4 * h, 4 * w)
        if hr is None:
            raise ValueError(
                "EDVR-STF needs the two bracketing HR keyframes: pass hr of shape "
                f"{expected}, or use the EDVR model for LR-only super-resolution."
            )
        if hr.dim() != 5 or tuple(hr.shape[:3]) != expected[:3]:
            raise ValueError(
                f"hr must have shape (B, 2, 1, 4h, 4w) = {expected} for lr of shape "
                f"{tuple(lr.shape)}, got {tuple(hr.shape)}."
            )
        check_scale(lr.shape, hr.shape, self.config.scale)

    def forward(
        self, lr: Tensor, hr: Tensor | None = None, position: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Fuse one output frame per batch item.

        Parameters
        ----------
        lr : Tensor, shape (B, 3, 1, h, w)
            LR frames ``t - r, t, t + r`` in [0, 1]; ``h`` and ``w`` multiples of 4.
        hr : Tensor, shape (B, 2, 1, 4h, 4w)
            HR keyframes ``k0 <= t < k1`` in [0, 1].
        position : Tensor, shape (B,), optional
            Where ``t`` lies between the keyframes (:meth:`fuse_features`); needed when
            :attr:`needs_position`.

        Returns
        -------
        out : Tensor, shape (B, 1, 4h, 4w)
            The HR estimate at time ``t`` (not clipped).
        attention : Tensor, shape (B, 5)
            Spatial mean of each frame's pre-sigmoid temporal-attention map, frames in input
            order ``[LR t-r, LR t, LR t+r, HR k0, HR k1]``.
        """
        self._check_hr(lr, hr)
        return self._run(lr, hr, position)


class EDVR(FusionNetwork):
    """The EDVR baseline: the HR frame at time ``t`` from three LR frames alone.

    Same as :class:`EDVRSTF` without the HR branch; ``hr`` is accepted and ignored so that
    both networks can be called alike.

    Parameters
    ----------
    config : ModelConfig
        Network size; ``config.arch`` must be ``"edvr"``.
    deform_backend : {"auto", "torch", "torchvision"}
    """

    frames = 3

    def __init__(self, config: ModelConfig, deform_backend: Backend = "auto") -> None:
        if config.arch != "edvr":
            raise ValueError(
                f"EDVR needs a config with arch='edvr', got {config.arch!r}: use EDVRSTF or "
                "build_model(config)."
            )
        super().__init__(config, deform_backend)

    def forward(
        self, lr: Tensor, hr: Tensor | None = None, position: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Super-resolve LR frame ``t``.

        Parameters
        ----------
        lr : Tensor, shape (B, 3, 1, h, w)
            LR frames ``t - r, t, t + r`` in [0, 1]; ``h`` and ``w`` multiples of 4.
        hr : Tensor, optional
            Ignored.
        position : Tensor, shape (B,), optional
            Where ``t`` lies between its keyframes; needed with ``time_input`` only.

        Returns
        -------
        out : Tensor, shape (B, 1, 4h, 4w)
        attention : Tensor, shape (B, 3)
            Spatial mean of each LR frame's pre-sigmoid temporal-attention map.
        """
        return self._run(lr, None, position)


def build_model(config: ModelConfig, deform_backend: Backend = "auto") -> FusionNetwork:
    """The network described by ``config``: :class:`EDVRSTF` or :class:`EDVR`."""
    if config.arch == "stf":
        return EDVRSTF(config, deform_backend)
    return EDVR(config, deform_backend)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
