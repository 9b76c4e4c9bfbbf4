"""Low-level tensor operations shared by losses, refiners and inference."""

from weakseg.ops.bilateral import (
    PermutohedralLattice,
    dense_gaussian_filter,
    exact_gaussian_filter,
    local_gaussian_filter,
    pixel_features,
)

__all__ = [
    "PermutohedralLattice",
    "dense_gaussian_filter",
    "exact_gaussian_filter",
    "local_gaussian_filter",
    "pixel_features",
]
