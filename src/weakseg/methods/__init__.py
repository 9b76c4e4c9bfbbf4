from weakseg.methods import cam, pmp, ppc, rloss, spml, supervised
from weakseg.methods.base import METHODS, Method, build_method, learners, method_plan, register_method
from weakseg.methods.stages import PseudoLabel, Relabel, Stage, Train

__all__ = [
    "METHODS",
    "Method",
    "PseudoLabel",
    "Relabel",
    "Stage",
    "Train",
    "build_method",
    "cam",
    "learners",
    "method_plan",
    "pmp",
    "ppc",
    "register_method",
    "rloss",
    "spml",
    "supervised",
]
