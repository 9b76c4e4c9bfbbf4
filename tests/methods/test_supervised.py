"""The registry and the full / pce methods' targets."""

from __future__ import annotations

import pytest
import torch

from weakseg.data.classes import VOC
from weakseg.errors import ConfigError
from weakseg.methods import METHODS, build_method


def _batch() -> dict:
    scribble = torch.full((1, 6, 6), 255)
    scribble[0, 1, 1:4] = 7
    return {"scribble": scribble, "points": [torch.tensor([[4.0, 4.0, 2.0], [1.0, 1.0, 9.0]])]}


def test_registry_and_supervision_checks() -> None:
    assert {"full", "pce"} <= set(METHODS)
    with pytest.raises(ConfigError, match="trains from points, scribbles, mixed"):
        build_method("pce", {}, "tags", VOC)
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        build_method("nope", {}, "full", VOC)
    with pytest.raises(ConfigError, match="unknown key 'method_args.radius'"):
        build_method("pce", {"radius": 2}, "points", VOC)


def test_mixed_target_prefers_scribbles_then_points() -> None:
    method = build_method("pce", {"point_radius": 1}, "mixed", VOC)
    assert method.label_kinds() == ("points", "scribbles") and method.required_kinds() == ("any-weak",)
    target = method.sparse_target(_batch())[0]
    assert target[1, 1:4].tolist() == [7, 7, 7]
    assert target[4, 4] == 2 and target[3, 4] == 2 and target[4, 5] == 2 and target[3, 3] == 255
    assert target[2, 1] == 9  # the point at (1, 1) grows into unlabelled pixels only


def test_points_only_ignores_scribbles_and_scribbles_only_ignores_points() -> None:
    points = build_method("pce", {}, "points", VOC).sparse_target({**_batch(), "scribble": torch.full((1, 6, 6), 255)})
    assert (points != 255).sum() == 2
    scribbles = build_method("pce", {}, "scribbles", VOC).sparse_target(_batch())
    assert (scribbles != 255).sum() == 3
