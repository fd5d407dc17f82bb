"""Pure tensor functions: the WRC solvers, the operators they are built from, and the functional layers."""

from .layer import converse_layer, weight_map, wrc_layer
from .sampling import alias_mean, circular_pad, decimate, decimate_adjoint, kernel_shift
from .solvers import converse, exact, official
from .spectral import alias_power, otf

__all__ = [
    "official", "exact", "converse", "wrc_layer", "converse_layer", "weight_map",
    "decimate", "decimate_adjoint", "alias_mean", "circular_pad", "kernel_shift", "otf", "alias_power",
]
