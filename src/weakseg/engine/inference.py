"""Test-time inference: multi-scale, horizontal flip and sliding-window prediction."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["predict_labels", "predict_probs"]


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners=False); a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis: every ``stride`` pixels, the last one aligned with the end."""
    if length <= window:
        return [0]
    return [*range(0, length - window, stride), length - window]


def _forward(model: Callable[[Tensor], Tensor], x: Tensor, num_classes: int | None) -> Tensor:
    """Softmax probabilities of one forward pass, at the model's output resolution."""
    probs = model(x).float().softmax(1)
    if num_classes is not None and probs.shape[1] != num_classes:
        raise ValueError(f"model returned {probs.shape[1]} classes, expected {num_classes}")
    return probs


def _sliding(
    model: Callable[[Tensor], Tensor], x: Tensor, window: int, overlap: float, num_classes: int | None
) -> Tensor:
    """Probabilities from window×window tiles; overlapping tiles' probabilities are averaged."""
    b, _, h, w = x.shape
    ph, pw = max(h, window), max(w, window)
    x = F.pad(x, (0, pw - w, 0, ph - h))  # zeros = the mean of normalised input
    stride = max(1, round(window * (1 - overlap)))
    acc: Tensor | None = None
    count = torch.zeros(1, 1, ph, pw, device=x.device)
    for top in _window_starts(ph, window, stride):
        for left in _window_starts(pw, window, stride):
            tile = (..., slice(top, top + window), slice(left, left + window))
            probs = _resize(_forward(model, x[tile], num_classes), (window, window))
            if acc is None:
                acc = torch.zeros(b, probs.shape[1], ph, pw, device=x.device)
            acc[tile] += probs
            count[tile] += 1
    return acc.div_(count)[..., :h, :w]


def predict_probs(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | None = None,
    overlap: float = 1 / 3,
    num_classes: int | None = None,
) -> Tensor:
    """B×K×H×W class probabilities of a normalised B×3×H×W batch, averaged over scales and flips.

    ``model`` maps a batch to B×K×h×w logits at any resolution (put it in eval mode first). With ``window``
    set, a scaled image larger than the window in either dimension is run as overlapping window×window
    tiles (stride window × (1 − overlap), last tile flush with the border, short sides zero-padded); an
    image that fits inside the window is run whole. Probabilities are upsampled bilinearly to H×W.
    """
    if images.ndim != 4:
        raise ValueError(f"expected a B×C×H×W batch, got shape {tuple(images.shape)}")
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")
    if window is not None and window < 1:
        raise ValueError(f"window must be a positive number of pixels, got {window}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}")
    height, width = images.shape[-2:]
    total: Tensor | None = None
    runs = 0
    with torch.inference_mode():
        for scale in scales:
            size = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
            scaled = _resize(images, size)
            for flipped in (False, True) if flip else (False,):
                x = scaled.flip(-1) if flipped else scaled
                if window is not None and (size[0] > window or size[1] > window):
                    probs = _sliding(model, x, window, overlap, num_classes)
                else:
                    probs = _forward(model, x, num_classes)
                probs = _resize(probs.flip(-1) if flipped else probs, (height, width))
                total = probs if total is None else total.add_(probs)
                runs += 1
        return total.div_(runs)


def predict_labels(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | None = None,
    overlap: float = 1 / 3,
    num_classes: int | None = None,
) -> Tensor:
    """B×H×W int64 arg-max labels of :func:`predict_probs`."""
    probs = predict_probs(
        model, images, scales=scales, flip=flip, window=window, overlap=overlap, num_classes=num_classes
    )
    return probs.argmax(1)
