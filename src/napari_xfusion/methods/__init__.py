"""Fusion methods: the common base, the registry, and the methods themselves.

- :mod:`.base` -- :class:`FusionMethod`, :class:`PerFrameMethod` and the registry;
- :mod:`.classical` -- bicubic interpolation, detail transfer, Bayesian fusion;
- :mod:`.neural` -- the networks (EDVR-STF, EDVR) run by the inference engine.

Importing this package registers every method (as BasicSR fills its registries on import),
so :func:`create_method` knows them all. A new method is a subclass of
:class:`FusionMethod` decorated with :func:`register`, in a module imported here.
"""

from . import classical, neural  # noqa: F401  (registers the methods)
from .base import (
    FusionMethod,
    PerFrameMethod,
    calibrated_methods,
    create_method,
    method_aligns_keyframes,
    method_labels,
    method_names,
    method_network,
    register,
)

__all__ = [
    "FusionMethod",
    "PerFrameMethod",
    "calibrated_methods",
    "create_method",
    "method_aligns_keyframes",
    "method_labels",
    "method_names",
    "method_network",
    "register",
]
