"""Image conventions shared by the engine, the trainer, the metrics and the ROS node (no ROS here).

- YCbCr: the official MAFS formulas, in torch on whatever device the tensor lives.
- Thermal normalisation: raw thermal (uint8, uint16 counts or float32 degrees) to float [0, 1].
- Label visualisation: palette colouring and overlay; label 255 (ignore) is never coloured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import ConfigurationError, InputError
from .class_sets import IGNORE_LABEL
from .constants import LUMA_BT601

THERMAL_NORMALIZATIONS = ("fixed", "minmax", "percentile", "auto")
THERMAL_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)
# Full range of the integer dtypes, used by `fixed` when no explicit range is given.
_DEFAULT_FIXED_RANGE = {np.dtype(np.uint8): (0.0, 255.0), np.dtype(np.uint16): (0.0, 65535.0)}
_TORCH_TO_NUMPY_DTYPE = {
    torch.uint8: np.uint8,
    torch.uint16: np.uint16,
    torch.float32: np.float32,
    torch.float64: np.float64,
}


# ---------------------------------------------------------------------------------------------------------
# YCbCr (the official MAFS formulas)


def rgb_to_ycbcr(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split RGB into (Y, Cb, Cr) with the official MAFS formulas (utils.RGB2YCrCb).

    rgb: (..., 3, H, W) float in [0, 1], channel order R, G, B (e.g. (B,3,H,W) or (3,H,W)).
    Returns y, cb, cr, each (..., 1, H, W), clamped to [0, 1]:
        Y = 0.299 R + 0.587 G + 0.114 B,  Cr = 0.713 (R - Y) + 0.5,  Cb = 0.564 (B - Y) + 0.5.
    Cb and Cr are detached, as in the official code: the losses only back-propagate through Y.
    """
    if rgb.dim() < 3 or rgb.shape[-3] != 3:
        raise ValueError(f"rgb_to_ycbcr expects (..., 3, H, W), got shape {tuple(rgb.shape)}")
    r, g, b = rgb[..., 0:1, :, :], rgb[..., 1:2, :, :], rgb[..., 2:3, :, :]
    y = LUMA_BT601[0] * r + LUMA_BT601[1] * g + LUMA_BT601[2] * b
    cr = (r - y) * 0.713 + 0.5
    cb = (b - y) * 0.564 + 0.5
    return y.clamp(0.0, 1.0), cb.clamp(0.0, 1.0).detach(), cr.clamp(0.0, 1.0).detach()


def ycbcr_to_rgb(y: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_ycbcr` with the official formulas (utils.YCbCr2RGB).

    y, cb, cr: (..., 1, H, W) float (broadcastable against each other).
    Returns (..., 3, H, W) RGB clamped to [0, 1]:
        R = Y + 1.403 (Cr - 0.5),  G = Y - 0.714 (Cr - 0.5) - 0.344 (Cb - 0.5),  B = Y + 1.773 (Cb - 0.5).
    """
    cr0 = cr - 0.5
    cb0 = cb - 0.5
    r = y + 1.403 * cr0
    g = y - 0.714 * cr0 - 0.344 * cb0
    b = y + 1.773 * cb0
    return torch.cat([r, g, b], dim=-3).clamp(0.0, 1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float in [0, 1] -> uint8 0..255, rounded to nearest, on the tensor's device.

    (The official saver truncates instead; rounding avoids its average -0.5 level bias.)
    """
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------
# Thermal normalisation


@dataclass(frozen=True)
class ThermalNormalization:
    """How raw thermal values become the network's [0, 1] infrared input.

    name:
      - "fixed": (x - lo) / (hi - lo), clipped to [0, 1]. Without lo/hi the dtype's full range is used
        (uint8 0..255, which equals the official `to_tensor`, or uint16 0..65535); float thermal (e.g.
        degrees Celsius) needs an explicit range.
      - "minmax": per frame, (x - min) / (max - min); a constant frame gives zeros.
      - "percentile": per frame, clip to the p_lo..p_hi percentiles (linear interpolation, as
        numpy.percentile) and stretch that interval to [0, 1]; robust to hot or dead pixels.
      - "auto": "fixed" for uint8 frames (an AGC camera's 8-bit output, as the network was trained on), and
        "percentile" for uint16 and float frames (raw 14/16-bit counts, temperatures), which "fixed" would squeeze
        into a few percent of the range. `ThermalAgc` smooths that range over the frames of a stream.
    lo, hi: the range of "fixed" (both or neither).
    p_lo, p_hi: percentiles of "percentile", 0 <= p_lo < p_hi <= 100.

    Text form (`from_spec`/`str`): "fixed", "fixed:20,40", "minmax", "percentile", "percentile:2,98", "auto".
    """

    name: str = "fixed"
    lo: float | None = None
    hi: float | None = None
    p_lo: float = 1.0
    p_hi: float = 99.0

    def __post_init__(self) -> None:
        if self.name not in THERMAL_NORMALIZATIONS:
            raise ConfigurationError(f"unknown thermal normalisation {self.name!r}; known: {THERMAL_NORMALIZATIONS}")
        if (self.lo is None) != (self.hi is None):
            raise ConfigurationError("thermal normalisation 'fixed' needs both lo and hi (or neither)")
        if self.lo is not None:
            if self.name != "fixed":
                raise ConfigurationError(f"lo/hi only apply to 'fixed', not {self.name!r}")
            if not (np.isfinite(self.lo) and np.isfinite(self.hi) and self.lo < self.hi):
                raise ConfigurationError(f"thermal range needs finite lo < hi, got lo={self.lo}, hi={self.hi}")
        if not 0.0 <= self.p_lo < self.p_hi <= 100.0:
            raise ConfigurationError(f"percentiles need 0 <= p_lo < p_hi <= 100, got {self.p_lo}, {self.p_hi}")

    @classmethod
    def from_spec(cls, spec: "str | dict[str, Any] | ThermalNormalization | None") -> "ThermalNormalization":
        """Parse "name" / "name:a,b" (a,b = lo,hi for fixed, p_lo,p_hi for percentile), a dict as written by
        `to_dict`, or pass an instance through. None gives the default ("fixed")."""
        if spec is None:
            return cls()
        if isinstance(spec, ThermalNormalization):
            return spec
        if isinstance(spec, dict):
            known = {"name", "lo", "hi", "p_lo", "p_hi"}
            unknown = sorted(set(spec) - known)
            if unknown:
                raise ConfigurationError(f"unknown thermal normalisation fields {unknown}; known: {sorted(known)}")
            return cls(**spec)
        if not isinstance(spec, str):
            raise ConfigurationError(f"thermal normalisation spec must be a str or dict, got {type(spec).__name__}")
        name, _, args = spec.strip().partition(":")
        if not args:
            return cls(name=name.strip())
        try:
            values = [float(v) for v in args.split(",")]
        except ValueError:
            raise ConfigurationError(f"bad thermal normalisation spec {spec!r}: parameters must be numbers") from None
        if len(values) != 2 or name.strip() not in ("fixed", "percentile"):
            raise ConfigurationError(
                f"bad thermal normalisation spec {spec!r}; use 'fixed', 'fixed:LO,HI', 'minmax', "
                "'percentile', 'percentile:P_LO,P_HI' or 'auto'"
            )
        if name.strip() == "fixed":
            return cls(name="fixed", lo=values[0], hi=values[1])
        return cls(name="percentile", p_lo=values[0], p_hi=values[1])

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that matter for this name (JSON-ready)."""
        if self.name == "fixed":
            return {"name": "fixed"} if self.lo is None else {"name": "fixed", "lo": self.lo, "hi": self.hi}
        if self.name == "percentile":
            return {"name": "percentile", "p_lo": self.p_lo, "p_hi": self.p_hi}
        return {"name": self.name}

    def __str__(self) -> str:
        if self.name == "fixed" and self.lo is not None:
            return f"fixed:{self.lo:g},{self.hi:g}"
        if self.name == "percentile":
            return f"percentile:{self.p_lo:g},{self.p_hi:g}"
        return self.name  # minmax, auto (percentiles 1, 99)

    def apply(self, thermal: "np.ndarray | torch.Tensor", device: "torch.device | str | None" = None) -> torch.Tensor:
        """Normalise one thermal frame.

        thermal: (H, W) uint8, uint16, float32 or float64, as a numpy array or torch tensor.
        device: where to compute (default: the tensor's device, or CPU for numpy input).
        Returns (H, W) float32 in [0, 1] on `device`.
        Raises ValueError for another dtype or shape, or NaN/inf values in float thermal.
        """
        return self.normalize(*self.prepare(thermal, device))

    def normalize(self, x: torch.Tensor, np_dtype: np.dtype) -> torch.Tensor:
        """The normalisation of a frame `prepare` made: x (H, W) float32, np_dtype its original dtype."""
        if self.name == "fixed" or (self.name == "auto" and np_dtype == np.uint8):
            if self.lo is not None:
                lo, hi = self.lo, self.hi
            elif np_dtype in _DEFAULT_FIXED_RANGE:
                lo, hi = _DEFAULT_FIXED_RANGE[np_dtype]
            else:
                raise InputError(
                    f"thermal normalisation 'fixed' needs an explicit range for {np_dtype} thermal "
                    "(e.g. 'fixed:-20,60' in the image's units), or use 'minmax'/'percentile'"
                )
            return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        if np_dtype.kind == "f":
            x = x.double()  # finite values near ±3e38 would overflow (x - lo) and (hi - lo) in float32
        if self.name == "minmax":
            return stretch(x, x.min(), x.max())
        return stretch(x, *_percentiles(x, self.p_lo, self.p_hi))

    @staticmethod
    def prepare(thermal: "np.ndarray | torch.Tensor", device: "torch.device | str | None") -> tuple[torch.Tensor, np.dtype]:
        """One thermal frame as a float32 tensor on `device` and its original dtype; InputError for another dtype
        or shape, or NaN/inf values in float thermal."""
        x, np_dtype = _thermal_to_float_tensor(thermal, device)
        if np_dtype.kind == "f":
            bad = int((~torch.isfinite(x)).sum())
            if bad:
                raise InputError(
                    f"thermal image contains {bad} non-finite value(s) (NaN/inf); mask or replace them "
                    "before inference"
                )
        return x, np_dtype


def stretch(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(x - lo) / (hi - lo) clipped to [0, 1] as float32; zeros where hi <= lo. Tensor ops only (no .item()),
    so that a GPU never has to synchronise here."""
    span = hi - lo
    scale = torch.where(span > 0, 1.0 / span.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
    return ((x - lo) * scale).clamp(0.0, 1.0).float()


class ThermalAgc:
    """A stream's thermal normalisation: "auto" with its percentile range smoothed over the frames, as a thermal
    camera's automatic gain control does, so that the brightness of the network's input does not flicker from
    frame to frame; every other normalisation, and "auto" on 8-bit frames, as `ThermalNormalization.apply`.

    weight: the newest frame's share of the smoothed range (exponential smoothing; 1 is per frame). A frame of
    another dtype or size starts over, as does `reset`.
    """

    def __init__(self, normalization: ThermalNormalization, weight: float = 0.2) -> None:
        if not 0.0 < weight <= 1.0:
            raise ConfigurationError(f"the AGC weight must be in (0, 1], got {weight}")
        self.normalization = normalization
        self.weight = weight
        self._range: tuple[torch.Tensor, torch.Tensor] | None = None
        self._key: tuple[Any, ...] | None = None

    def reset(self) -> None:
        self._range = self._key = None

    def apply(self, thermal: "np.ndarray | torch.Tensor", device: "torch.device | str | None" = None) -> torch.Tensor:
        """Normalise the next frame of the stream: (H, W) in, (H, W) float32 in [0, 1] on `device` out."""
        norm = self.normalization
        x, np_dtype = norm.prepare(thermal, device)
        if norm.name != "auto" or np_dtype == np.uint8:
            return norm.normalize(x, np_dtype)
        x = x.double()
        lo, hi = _percentiles(x, norm.p_lo, norm.p_hi)
        key = (np_dtype, tuple(x.shape), x.device)
        if self._range is not None and key == self._key:
            lo = (1 - self.weight) * self._range[0] + self.weight * lo
            hi = (1 - self.weight) * self._range[1] + self.weight * hi
        self._range, self._key = (lo, hi), key
        return stretch(x, lo, hi)


def thermal_u8(source: Any, thermal: np.ndarray) -> np.ndarray:
    """The infrared image A of the fusion metrics: the thermal normalisation x 255, rounded (uint8).

    `source` is a ThermalNormalization (e.g. the one a recorded node used) or an engine (its
    `thermal_normalization`). This is what the network sees, so a 16-bit or float thermal frame is reduced to 8
    bits exactly as the engine normalises it; an 8-bit frame under the default "fixed" normalisation comes back
    unchanged.
    """
    normalization = source if isinstance(source, ThermalNormalization) else source.thermal_normalization
    return to_uint8(normalization.apply(thermal, "cpu")).numpy()


def _thermal_to_float_tensor(
    thermal: "np.ndarray | torch.Tensor", device: "torch.device | str | None"
) -> tuple[torch.Tensor, np.dtype]:
    """(H, W) thermal -> float32 tensor on `device`, plus the original (numpy) dtype."""
    if isinstance(thermal, torch.Tensor):
        if thermal.dtype not in _TORCH_TO_NUMPY_DTYPE:
            raise InputError(f"thermal dtype must be uint8, uint16, float32 or float64, got {thermal.dtype}")
        np_dtype = np.dtype(_TORCH_TO_NUMPY_DTYPE[thermal.dtype])
        t = thermal
    elif isinstance(thermal, np.ndarray):
        np_dtype = thermal.dtype
        if np_dtype not in [np.dtype(d) for d in THERMAL_DTYPES]:
            raise InputError(f"thermal dtype must be uint8, uint16, float32 or float64, got {np_dtype}")
        t = torch.from_numpy(_writable_contiguous(thermal))
    else:
        raise InputError(f"thermal must be a numpy array or torch tensor, got {type(thermal).__name__}")
    if t.dim() != 2 or t.numel() == 0:
        raise InputError(f"thermal must be a non-empty (H, W) image, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint16:
        # uint16 is a limited dtype in torch: cast it where the cast is certain to exist (CPU), exactly.
        t = t.to("cpu").to(torch.float32)
    target = t.device if device is None else torch.device(device)
    return t.to(target, non_blocking=True).to(torch.float32), np_dtype


def _writable_contiguous(a: np.ndarray) -> np.ndarray:
    """`a` if torch can wrap it without a copy or a warning (C-contiguous, writable), else a copy."""
    if a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, order="C", copy=True)


def _percentiles(x: torch.Tensor, p_lo: float, p_hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The p_lo and p_hi percentiles of all of x, interpolated linearly like numpy.percentile.

    Sort-based, because torch.quantile refuses inputs above 2**24 elements.
    """
    flat = x.flatten().sort().values
    last = flat.numel() - 1
    result = []
    for p in (p_lo, p_hi):
        pos = p / 100.0 * last
        i0 = int(np.floor(pos))
        i1 = min(i0 + 1, last)
        frac = pos - i0
        result.append(flat[i0] + (flat[i1] - flat[i0]) * frac)
    return result[0], result[1]


# ---------------------------------------------------------------------------------------------------------
# Label visualisation


def _palette_lut(palette: "Sequence[Sequence[int]] | np.ndarray") -> tuple[np.ndarray, int]:
    """A 256-entry colour lookup table (uint8, (256, 3)) from an (N, 3) palette, and N."""
    pal = np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3 or not 1 <= pal.shape[0] <= IGNORE_LABEL:
        raise ConfigurationError(f"palette must be (N, 3) with 1 <= N <= {IGNORE_LABEL}, got shape {pal.shape}")
    if pal.min() < 0 or pal.max() > 255:
        raise ConfigurationError("palette colours must be within 0..255")
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: pal.shape[0]] = pal
    return lut, pal.shape[0]


def _check_labels(labels: np.ndarray, num_colors: int) -> None:
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise InputError(f"labels must be (H, W) uint8, got {labels.dtype} with shape {labels.shape}")
    unknown = (labels >= num_colors) & (labels != IGNORE_LABEL)
    if unknown.any():
        raise InputError(
            f"labels contain ids without a palette colour (palette has {num_colors}): "
            f"{sorted(np.unique(labels[unknown]).tolist())[:10]}"
        )


def colorize(
    labels: np.ndarray,
    palette: "Sequence[Sequence[int]] | np.ndarray",
    ignore_color: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Colour a label map: (H, W) uint8 class ids -> (H, W, 3) uint8 RGB; IGNORE_LABEL gets `ignore_color`."""
    lut, num_colors = _palette_lut(palette)
    _check_labels(labels, num_colors)
    lut[IGNORE_LABEL] = ignore_color
    return lut[labels]


def overlay(
    rgb: np.ndarray, labels: np.ndarray, palette: "Sequence[Sequence[int]] | np.ndarray", alpha: float = 0.5
) -> np.ndarray:
    """Blend the label colours over an image: out = (1 - alpha) * rgb + alpha * palette[label], rounded.

    rgb: (H, W, 3) uint8; labels: (H, W) uint8 class ids; palette: (N, 3) RGB; alpha in [0, 1].
    Pixels labelled IGNORE_LABEL (255) keep the image's colour. Returns (H, W, 3) uint8.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be within [0, 1], got {alpha}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"rgb must be (H, W, 3) uint8, got {rgb.dtype} with shape {rgb.shape}")
    lut, num_colors = _palette_lut(palette)
    _check_labels(labels, num_colors)
    if labels.shape != rgb.shape[:2]:
        raise InputError(f"labels {labels.shape} and image {rgb.shape[:2]} differ in size")
    colors = lut[labels].astype(np.float32)
    blended = (rgb.astype(np.float32) * (1.0 - alpha) + colors * alpha + 0.5).astype(np.uint8)
    return np.where((labels == IGNORE_LABEL)[..., None], rgb, blended)
