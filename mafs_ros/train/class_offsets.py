"""Per-class logit offsets fitted after training and folded into the classifier's bias (post-hoc logit
adjustment, after Menon et al., "Long-tail learning via logit adjustment", ICLR 2021).

Why: trained on about a hundred labelled frames, a thin rare class (curbs) is learnt, with a fair share of the
probability at its pixels, yet never wins the arg-max against the background around it. A constant added to
that class's logits moves the decision without retraining. The constants are chosen on the run's own
training frames (never the held-out ones), greedily per class, to maximise mIoU. A constant per class added
before the bilinear resize is the same as one added after, so they are folded into the 1x1 classifier's bias:
the checkpoint, the engine and an ONNX export need nothing new.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io.images import load_pair
from ..io.layouts import PairFiles
from ..metrics import ConfusionMatrix

# The offsets tried per class (in logits); every second pixel of each axis is scored.
OFFSET_GRID = tuple(np.arange(0.0, 3.01, 0.25))
PASSES = 2


def class_log_probs(
    net: nn.Module, pairs: Sequence[PairFiles], thermal_normalization, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities (C, N) float32 and labels (N,) of every second pixel of each axis over `pairs`,
    ignored pixels dropped. `thermal_normalization` is a ThermalNormalization (as the engine's)."""
    net.eval()
    scores, labels = [], []
    for pair in pairs:
        rgb, thermal, label = load_pair(pair, num_classes)
        if label is None:
            continue
        vi = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
        ir = thermal_normalization.apply(thermal)[None, None].float()
        with torch.inference_mode():
            logits = net(vi, ir).semantic.float()
            logits = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False)
            logp = torch.log_softmax(logits[0], 0)[:, ::2, ::2].numpy()
        label = label[::2, ::2]
        keep = label != 255
        scores.append(logp[:, keep])
        labels.append(label[keep])
    if not labels:
        raise ValueError("fitting class offsets needs labelled training frames; none were given")
    return np.concatenate(scores, axis=1), np.concatenate(labels)


def confusion_with(logp: np.ndarray, labels: np.ndarray, offsets: np.ndarray) -> ConfusionMatrix:
    """The confusion matrix of arg-max(logp + offsets) against labels."""
    matrix = ConfusionMatrix(len(offsets))
    matrix.update((logp + offsets[:, None]).argmax(0), labels)
    return matrix


def fit_class_offsets(logp: np.ndarray, labels: np.ndarray, grid: Sequence[float] = OFFSET_GRID) -> np.ndarray:
    """Offsets (C,) float32, class 0 (background) fixed at 0: each other class in turn takes the grid value that
    maximises mIoU with the others held, over PASSES passes."""
    offsets = np.zeros(logp.shape[0], dtype=np.float32)
    for _ in range(PASSES):
        for c in range(1, len(offsets)):
            def miou(value: float) -> float:
                trial = offsets.copy()
                trial[c] = value
                return confusion_with(logp, labels, trial).miou()

            offsets[c] = max(grid, key=miou)
    return offsets


def fold_into_classifier(net: nn.Module, offsets: np.ndarray) -> None:
    """Add `offsets` to the bias of `net.classifier` (a 1x1 convolution producing the class logits)."""
    classifier = getattr(net, "classifier", None)
    if not isinstance(classifier, nn.Conv2d) or classifier.bias is None or classifier.out_channels != len(offsets):
        raise ValueError(f"class offsets need a model whose class logits come from a 1x1 `classifier` with a bias "
                         f"and {len(offsets)} outputs ({type(net).__name__} has none: use config mafs-lite)")
    with torch.no_grad():
        classifier.bias += torch.as_tensor(offsets, dtype=classifier.bias.dtype, device=classifier.bias.device)
