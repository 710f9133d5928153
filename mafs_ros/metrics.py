"""Evaluation metrics: infrared-visible fusion quality and semantic segmentation, as the MAFS paper reports them.

Pure numpy/OpenCV; independent of ROS and of the model.

Fusion metrics
--------------
Notation: A = infrared image, B = visible luma, F = fused image. All three are HxW arrays holding 8-bit grey
values, either as uint8 or as floats on the 0..255 scale. They are never rescaled to [0, 1].

Every definition follows **CDDFuse's evaluator** (`Zhaozixiang1228/MMIF-CDDFuse`, `utils/Evaluator.py`,
commit fd8da1f). The same code is used by EMMA, DDFM and many later papers. Two community evaluators are
documented in `test/fixtures/fusion_metrics/SOURCE.md`, and that document does not designate one. CDDFuse's is
the one whose definitions match the metrics the MAFS paper reports:

- EN is the exact Shannon entropy. The other evaluator, "Metric_Python", adds 1e-7 inside the log.
- AG is a plain mean over all H·W pixels. Metric_Python divides the sum by (H-1)(W-1).
- Its SSIM can be reproduced in float64. Metric_Python's SSIM depends on float32 rounding in flat image regions,
  which a float64 implementation cannot reproduce (up to 0.013 apart on saturated day frames).

The units follow from that choice. MI is in **nats** (divide by ln 2 for the bits of Metric_Python-based
tables). SSIM keeps CDDFuse's data_range = 2 quirk (see `ssim`).

Deliberate differences from the evaluator:

- Everything is computed in float64, while the evaluator works in float32 for SD, SF, AG, SCD and Qabf, and in
  float32 inside SSIM. Float64 gives the exact value of the same formula. On the reference sample the results
  agree to within float32 rounding, except SSIM, which agrees to about 3e-5 (see `ssim`).
- The callers supply B. The evaluator makes B itself, with OpenCV's floating-point BT.601 gray conversion
  rounded half-to-even. `luma_u8` gives Pillow's integer BT.601 luma, the B that the reference fused images
  and Metric_Python use. On the 24-pair MSRS sample the two differ by one grey level in 45 of 7.4 M pixels, so
  the two-source metrics can differ from CDDFuse's published numbers by slightly more than float32 rounding.
  The largest case is MI, by up to 4e-5 relative.
- EN and MI bin integer grey levels, so non-integer float input is rounded half-to-even first. CDDFuse also
  rounds for EN, but in MI it treats every distinct float value as its own label. The two agree on 8-bit-valued
  input, the only input these functions are meant for.

Segmentation
------------
`ConfusionMatrix` follows the MAFS test protocol (the official test code). One matrix is accumulated over the whole
test set, with rows for the ground truth and columns for the prediction, and the label 255 ignored. mIoU is the
mean IoU over all classes including class 0; classes whose IoU is undefined (absent from both the ground truth
and the prediction) are dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

import cv2
import numpy as np

from .constants import LUMA_BT601
from .errors import DataError

FUSION_METRIC_NAMES: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")

_LEVELS = 256  # grey levels of an 8-bit image: the bins of EN and MI


# ---------------------------------------------------------------------------------------------------------------
# Input helpers
# ---------------------------------------------------------------------------------------------------------------


def luma_u8(rgb: np.ndarray) -> np.ndarray:
    """Pillow's `Image.convert('L')` luma of an HxWx3 uint8 RGB array, as HxW uint8.

    This is ITU-R BT.601 in Pillow's 16-bit fixed point:
    Y = (19595·R + 38470·G + 7471·B + 32768) >> 16. It is the B used to make the reference fused images. It
    differs from rounding 0.299 R + 0.587 G + 0.114 B for about 0.05 % of all RGB triples.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"expected an HxWx3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    c = rgb.astype(np.uint32)
    r, g, b = (round(w * 65536) for w in LUMA_BT601)  # 19595, 38470, 7471
    y = (r * c[..., 0] + g * c[..., 1] + b * c[..., 2] + 32768) >> 16
    return y.astype(np.uint8)


def _gray(img: np.ndarray) -> np.ndarray:
    """`img` as an HxW float64 array (0..255 values)."""
    out = np.asarray(img, dtype=np.float64)
    if out.ndim != 2:
        raise DataError(f"expected a single-channel HxW image, got shape {out.shape}")
    return out


def _triple(ir: np.ndarray, vi_y: np.ndarray, fused: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, B, F) as float64 HxW arrays of one common shape."""
    a, b, f = _gray(ir), _gray(vi_y), _gray(fused)
    if not a.shape == b.shape == f.shape:
        raise DataError(f"image shapes differ: ir {a.shape}, vi {b.shape}, fused {f.shape}")
    return a, b, f


def _levels(img: np.ndarray) -> np.ndarray:
    """The integer grey levels 0..255 of `img` (round half-to-even, like the evaluator's `np.round`).

    The histogram metrics (EN, MI) bin integer levels, so non-integer float input is rounded first.
    """
    lv = np.round(_gray(img))
    if lv.size and (lv.min() < 0 or lv.max() > _LEVELS - 1):
        raise DataError(f"grey levels must lie in 0..{_LEVELS - 1}, got {lv.min()}..{lv.max()}")
    return lv.astype(np.intp)


def _entropy(p: np.ndarray, log: Callable[[np.ndarray], np.ndarray] = np.log2) -> float:
    """-Σ p·log p over the non-zero entries of a pmf."""
    p = p[p > 0]
    return float(-(p * log(p)).sum())


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Whole-image Pearson correlation (MATLAB `corr2`); NaN where either image is constant, as corr2 gives."""
    dx, dy = x - x.mean(), y - y.mean()
    # A blanked camera is a constant image: say undefined plainly rather than through numpy's 0/0 warning.
    den = math.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / den) if den else math.nan


# ---------------------------------------------------------------------------------------------------------------
# Fusion metrics on F alone
# ---------------------------------------------------------------------------------------------------------------


def en(fused: np.ndarray) -> float:
    """Entropy of F in bits: -Σ p_i·log2 p_i over the 256 grey levels, with p_i = count_i / (H·W).

    This is the exact Shannon entropy, as in CDDFuse. Metric_Python's log2(p + 1e-7) would be smaller by up to
    4e-5 on MSRS.
    """
    lv = _levels(fused).ravel()
    return _entropy(np.bincount(lv, minlength=_LEVELS) / lv.size)


def sd(fused: np.ndarray) -> float:
    """Population standard deviation of F (divide by H·W), on the 0..255 scale."""
    return float(_gray(fused).std())


def sf(fused: np.ndarray) -> float:
    """Spatial frequency √(RF² + CF²) of F.

    RF² and CF² are the mean squared differences between vertically and horizontally adjacent pixels. Only
    pairs inside the image count: (H-1)·W and H·(W-1) of them; there is no padding.
    """
    f = _gray(fused)
    return math.sqrt(np.mean(np.diff(f, axis=0) ** 2) + np.mean(np.diff(f, axis=1) ** 2))


def ag(fused: np.ndarray) -> float:
    """Average gradient of F: the mean over all H·W pixels of √((∂x² + ∂y²)/2).

    The derivatives are `numpy.gradient`'s: central differences (x[i+1] - x[i-1])/2 inside the image, and
    one-sided differences on the first and last rows and columns. CDDFuse uses the same derivatives. The plain
    mean is the definition the paper's evaluator uses; Metric_Python divides by (H-1)(W-1) instead, which gives 0.37 % more.
    """
    dy, dx = np.gradient(_gray(fused))
    return float(np.sqrt((dx * dx + dy * dy) / 2).mean())


# ---------------------------------------------------------------------------------------------------------------
# Fusion metrics on (A, B, F)
# ---------------------------------------------------------------------------------------------------------------


def _mutual_information(x: np.ndarray, f: np.ndarray) -> float:
    """MI(X, F) = H(X) + H(F) - H(X, F) in nats, from the 256x256 joint histogram of integer grey levels."""
    joint = np.bincount((x * _LEVELS + f).ravel(), minlength=_LEVELS * _LEVELS).reshape(_LEVELS, _LEVELS)
    p = joint / x.size
    return _entropy(p.sum(axis=1), np.log) + _entropy(p.sum(axis=0), np.log) - _entropy(p.ravel(), np.log)


def mutual_information(source: np.ndarray, fused: np.ndarray) -> float:
    """MI(source, fused) in nats of two grey images of the same size (one term of `mi`): how much of one input
    the fused image keeps."""
    if source.shape != fused.shape:
        raise DataError(f"images of different sizes: {source.shape} and {fused.shape}")
    return _mutual_information(_levels(source), _levels(fused))


def mi(ir: np.ndarray, vi_y: np.ndarray, fused: np.ndarray) -> float:
    """Mutual information MI(A, F) + MI(B, F), in nats.

    Each term comes from the 256x256 joint histogram of the grey levels, normalised to a joint pmf. The marginals
    are taken from that pmf. The natural log is CDDFuse's (scikit-learn `mutual_info_score`). Divide by ln 2 for
    the bits of MATLAB/Metric_Python-based tables.
    """
    _triple(ir, vi_y, fused)  # validates the shapes
    a, b, f = _levels(ir), _levels(vi_y), _levels(fused)
    return _mutual_information(a, f) + _mutual_information(b, f)


def scd(ir: np.ndarray, vi_y: np.ndarray, fused: np.ndarray) -> float:
    """Sum of the correlations of differences (Aslantas & Bendes 2015): corr(F - B, A) + corr(F - A, B).

    "corr" is the whole-image Pearson correlation.
    """
    a, b, f = _triple(ir, vi_y, fused)
    return _pearson(f - b, a) + _pearson(f - a, b)


def _valid_filter(img: np.ndarray, kernel_1d: np.ndarray) -> np.ndarray:
    """Correlation with the separable kernel outer(k, k), "valid" part only: the image shrinks by len(k) - 1.

    The kernels used here are symmetric, so this is also the convolution. Filtering with OpenCV and then cropping
    the margin gives the same values as scipy's convolve2d(mode='valid'); the border type does not matter,
    because all border-affected pixels are cropped.
    """
    r = (len(kernel_1d) - 1) // 2
    out = cv2.sepFilter2D(img, cv2.CV_64F, kernel_1d, kernel_1d, borderType=cv2.BORDER_REFLECT)
    return out[r : out.shape[0] - r, r : out.shape[1] - r]


def _vif_kernel(n: int) -> np.ndarray:
    """1-D factor of MATLAB's `fspecial('gaussian', n, n/5)`, so that outer(k, k) sums to 1.

    fspecial also zeroes taps below eps·max. No tap of these kernels is that small: the smallest, a corner of
    the 17x17 window, is 4e-3 of the maximum.
    """
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2
    k = np.exp(-(x * x) / (2 * (n / 5) ** 2))
    return k / k.sum()


def _vif_terms(
    ref: np.ndarray, dist: np.ndarray, mu_d: np.ndarray, var_d: np.ndarray, k: np.ndarray
) -> tuple[float, float]:
    """(numerator, denominator) of one VIF scale for the reference `ref` and distorted image `dist`.

    `mu_d` and `var_d` are the distorted image's local mean and variance (negatives already set to 0), which
    are shared by both sources. The clamps run in the reference code's order, because later ones overwrite
    earlier ones:

    1. Negative σr² is set to 0. Then g = σrd / (σr² + eps) and sv² = σd² - g·σrd.
    2. Where σr² < eps: g = 0, sv² = σd², σr² = 0.
    3. Where σd² < eps: g = 0, sv² = 0.
    4. Where g < 0: sv² = σd², g = 0.
    5. Every sv² <= eps becomes eps.
    """
    eps = 1e-10  # the reference code's variance floor
    sigma_nsq = 2.0  # HVS noise variance, on the 0..255 scale
    mu_r = _valid_filter(ref, k)
    var_r = np.maximum(_valid_filter(ref * ref, k) - mu_r * mu_r, 0)
    cov = _valid_filter(ref * dist, k) - mu_r * mu_d
    g = cov / (var_r + eps)
    sv_sq = var_d - g * cov
    flat_r = var_r < eps
    g[flat_r] = 0
    sv_sq[flat_r] = var_d[flat_r]
    var_r[flat_r] = 0
    flat_d = var_d < eps
    g[flat_d] = 0
    sv_sq[flat_d] = 0
    neg = g < 0
    sv_sq[neg] = var_d[neg]
    g[neg] = 0
    sv_sq = np.maximum(sv_sq, eps)
    num = np.log10(1 + g * g * var_r / (sv_sq + sigma_nsq)).sum()
    den = np.log10(1 + var_r / sigma_nsq).sum()
    return float(num), float(den)


def vif(ir: np.ndarray, vi_y: np.ndarray, fused: np.ndarray) -> float:
    """Visual information fidelity VIFF(A, F) + VIFF(B, F), multi-scale pixel-domain VIF (Sheikh & Bovik 2006).

    This follows the multi-scale pixel-domain code ("vifp_mscale") used by CDDFuse. Each source in turn is the
    reference and F the distorted image:

    - There are 4 scales, s = 1..4, with Gaussian windows of size N = 2^(5-s) + 1 (17, 9, 5, 3) and σ = N/5,
      normalised to sum 1.
    - For s > 1, both images are first filtered "valid" with that scale's window and then decimated by 2,
      keeping every second row and column starting with the first.
    - Local means, variances and covariance are window-weighted population moments, filtered "valid".
    - The clamps on g and sv² are listed in `_vif_terms`. The noise variance is σn² = 2.
    - VIF = Σ_s num_s / Σ_s den_s, a ratio of sums over scales (the log base cancels). A NaN ratio (constant
      reference) counts as 1.0, as in the evaluator.
    """
    a, b, f = _triple(ir, vi_y, fused)
    refs = [a, b]
    num, den = [0.0, 0.0], [0.0, 0.0]
    for scale in range(1, 5):
        k = _vif_kernel(2 ** (5 - scale) + 1)
        if scale > 1:
            refs = [_valid_filter(r, k)[::2, ::2] for r in refs]
            f = _valid_filter(f, k)[::2, ::2]
        mu_d = _valid_filter(f, k)
        var_d = np.maximum(_valid_filter(f * f, k) - mu_d * mu_d, 0)
        for i, r in enumerate(refs):
            n, d = _vif_terms(r, f, mu_d, var_d, k)
            num[i] += n
            den[i] += d
    # den = 0 only for a constant reference, where num = 0 too: the evaluator's 0/0 is NaN, which it scores 1.0.
    return sum(1.0 if d == 0 else n / d for n, d in zip(num, den))


# Sobel kernels for cv2.filter2D (a correlation): x = right column minus left, y = upper row minus lower.
# Orientation is arctan(gy/gx), with pi/2 where gx == 0, so the *relative* sign of the two responses matters.
# Flipping only one of them changes Qabf by up to 2e-3. The evaluator's true convolution negates both, which
# changes nothing.
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)


def _edges(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(strength, orientation) of `img` with zero-padded same-size 3x3 Sobel filters."""
    gx = cv2.filter2D(img, cv2.CV_64F, _SOBEL_X, borderType=cv2.BORDER_CONSTANT)
    gy = cv2.filter2D(img, cv2.CV_64F, _SOBEL_Y, borderType=cv2.BORDER_CONSTANT)
    vertical = gx == 0
    alpha = np.where(vertical, np.pi / 2, np.arctan(gy / np.where(vertical, 1.0, gx)))
    return np.sqrt(gx * gx + gy * gy), alpha


def _edge_preservation(g_x: np.ndarray, a_x: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    """Per-pixel Q_XF = Q_g·Q_α of Xydeas & Petrović (2000), with that paper's constants."""
    lo, hi = np.minimum(g_x, g_f), np.maximum(g_x, g_f)
    # Relative strength min/max. Where g_X == g_F, the MATLAB-derived code takes g_F itself rather than 1 (so 0
    # where both are 0); kept so that the values match the published ones.
    strength = np.where(g_x == g_f, g_f, lo / np.where(hi > 0, hi, 1.0))
    # Relative orientation, without wrap-around, so it can be negative, as in the reference code.
    orient = 1 - np.abs(a_x - a_f) / (np.pi / 2)
    q_g = 0.9994 / (1 + np.exp(-15 * (strength - 0.5)))
    q_a = 0.9879 / (1 + np.exp(-22 * (orient - 0.8)))
    return q_g * q_a


def qabf(ir: np.ndarray, vi_y: np.ndarray, fused: np.ndarray) -> float:
    """Xydeas-Petrović edge-preservation quality Q^{AB/F} (Electronics Letters 2000).

    - Gradients come from 3x3 Sobel filters with zero padding and same-size output.
    - The edge strength is g = √(gx² + gy²) and the orientation α = arctan(gy/gx), with α = π/2 where gx = 0.
    - The sigmoids are Γg = 0.9994, κg = -15, σg = 0.5 and Γα = 0.9879, κα = -22, σα = 0.8.
    - The relative strength is min/max of the two edge strengths, except where they are equal: there it is g_F
      itself, a quirk of the MATLAB-derived code that is kept (see `_edge_preservation`).
    - Qabf = Σ(Q_AF·g_A + Q_BF·g_B) / Σ(g_A + g_B) over all pixels. The weights are the edge strengths to the
      power L = 1.
    """
    a, b, f = _triple(ir, vi_y, fused)
    (g_a, a_a), (g_b, a_b), (g_f, a_f) = _edges(a), _edges(b), _edges(f)
    num = (_edge_preservation(g_a, a_a, g_f, a_f) * g_a + _edge_preservation(g_b, a_b, g_f, a_f) * g_b).sum()
    return float(num / (g_a + g_b).sum())


def _ssim_skimage_019(x: np.ndarray, y: np.ndarray) -> float:
    """scikit-image 0.19 `structural_similarity(x, y)` with default arguments, for float input.

    - The window is a 7x7 uniform box. The border is mirrored with the edge pixel repeated (scipy "reflect",
      OpenCV BORDER_REFLECT: d c b a | a b c d).
    - Variances and covariance are sample moments (factor 49/48). K1 = 0.01 and K2 = 0.03.
    - data_range = 2, the value 0.19 assumes for any float image.
    - The SSIM map is cropped by 3 pixels on every side before the mean.
    """
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    cov_norm = 49 / 48

    def box(img: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(img, cv2.CV_64F, (7, 7), normalize=True, borderType=cv2.BORDER_REFLECT)

    ux, uy = box(x), box(y)
    vx = cov_norm * (box(x * x) - ux * ux)
    vy = cov_norm * (box(y * y) - uy * uy)
    vxy = cov_norm * (box(x * y) - ux * uy)
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s[3:-3, 3:-3].mean())


def ssim(ir: np.ndarray, vi_y: np.ndarray, fused: np.ndarray) -> float:
    """SSIM(F, A) + SSIM(F, B) with the SSIM of Wang et al. (2004), as computed by CDDFuse's evaluator.

    CDDFuse's evaluator calls scikit-image 0.19's `structural_similarity` on float32 0..255 images with default
    arguments. That version then takes data_range = 2, meaning float images in [-1, 1]. On 0..255 values this
    gives C1 = 4e-4 and C2 = 3.6e-3, so SSIM has almost no stabilisation: flat and dark regions score lower than
    in a textbook SSIM with data_range = 255.

    The quirk is kept because it is what CDDFuse-family papers report. `_ssim_skimage_019` lists the window,
    border and crop. The evaluator computes in float32, whose rounding in E[x²] - μ² is comparable to C2 in flat
    windows. Float64 is used here, so results differ from the published values by up to about 3e-5 on MSRS.
    """
    a, b, f = _triple(ir, vi_y, fused)
    return _ssim_skimage_019(f, a) + _ssim_skimage_019(f, b)


def fusion_metrics(ir: np.ndarray, vi_y: np.ndarray, fused: np.ndarray) -> dict[str, float]:
    """All fusion metrics of one (A, B, F) triple, keyed and ordered as `FUSION_METRIC_NAMES`."""
    values = {
        "EN": en(fused),
        "SD": sd(fused),
        "SF": sf(fused),
        "AG": ag(fused),
        "MI": mi(ir, vi_y, fused),
        "SCD": scd(ir, vi_y, fused),
        "VIF": vif(ir, vi_y, fused),
        "Qabf": qabf(ir, vi_y, fused),
        "SSIM": ssim(ir, vi_y, fused),
    }
    return {name: values[name] for name in FUSION_METRIC_NAMES}


# ---------------------------------------------------------------------------------------------------------------
# Report helpers
# ---------------------------------------------------------------------------------------------------------------

_MSRS_STEM = re.compile(r"\d+([DN])")


def day_night(stem: str) -> str | None:
    """'day' or 'night' for an MSRS/MFNet frame stem such as '00213D' or '00008N' (digits, then D or N).

    Returns None for any other stem.
    """
    m = _MSRS_STEM.fullmatch(stem)
    if m is None:
        return None
    return "day" if m.group(1) == "D" else "night"


def mean_metrics(per_image: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Arithmetic means of per-image metrics: {"mean": {...}}, plus "day" and "night" where stems allow.

    `per_image` maps stem -> {metric: value}, and every image must have the same metrics. "day" and "night"
    average only the images that `day_night` classifies, and appear only if at least one image has that tag.
    Metric order follows the first image. A report is `{"per_image": per_image, **mean_metrics(per_image)}`.
    """
    if not per_image:
        raise DataError("no images to average")
    names = list(next(iter(per_image.values())))
    for stem, values in per_image.items():
        if set(values) != set(names):
            raise DataError(f"{stem}: metrics {sorted(values)} differ from {sorted(names)}")

    def average(stems: list[str]) -> dict[str, float]:
        return {n: float(np.mean([per_image[s][n] for s in stems])) for n in names}

    out = {"mean": average(list(per_image))}
    for group in ("day", "night"):
        stems = [s for s in per_image if day_night(s) == group]
        if stems:
            out[group] = average(stems)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------------------------


class ConfusionMatrix:
    """Pixel confusion matrix accumulated over a test set: rows = ground truth, columns = prediction.

    Ground-truth pixels equal to `ignore_index` are skipped. Any other label or prediction outside
    0..num_classes-1 raises ValueError, because it means a wrong class count.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if num_classes < 1:
            raise DataError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one prediction (class ids, e.g. the argmax map) and its ground-truth label map of the same shape."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise DataError(f"prediction shape {pred.shape} != label shape {gt.shape}")
        keep = gt != self.ignore_index if self.ignore_index is not None else np.ones(gt.shape, dtype=bool)
        p, g = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
        c = self.num_classes
        for name, ids in (("prediction", p), ("label", g)):
            if ids.size and (ids.min() < 0 or ids.max() >= c):
                raise DataError(f"{name} class ids {ids.min()}..{ids.max()} outside 0..{c - 1}")
        self.matrix += np.bincount(g * c + p, minlength=c * c).reshape(c, c)

    def per_class_iou(self) -> np.ndarray:
        """IoU_c = TP / (TP + FP + FN) per class; NaN where the class is in neither ground truth nor prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return tp / union

    def miou(self) -> float:
        """Mean IoU over all classes including class 0, NaN classes dropped (NaN if every class is NaN)."""
        iou = self.per_class_iou()
        iou = iou[~np.isnan(iou)]
        return float(iou.mean()) if iou.size else math.nan

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted (non-ignored) pixels; NaN before any pixel was counted."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else math.nan

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary. Undefined values (NaN) become None, because strict JSON has no NaN."""

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "miou": clean(self.miou()),
            "pixel_accuracy": clean(self.pixel_accuracy()),
            "per_class_iou": [clean(v) for v in self.per_class_iou()],
            "confusion_matrix": self.matrix.tolist(),
        }
