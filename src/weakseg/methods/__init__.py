from weakseg.methods import boxinst, boxprior, cam, pmp, ppc, probe, rloss, spml, supervised
from weakseg.methods.base import METHODS, Method, build_method, learners, method_plan, register_method
from weakseg.methods.stages import Fit, PseudoLabel, Relabel, Stage, Train

__all__ = [
    "METHODS",
    "Fit",
    "Method",
    "PseudoLabel",
    "Relabel",
    "Stage",
    "Train",
    "boxinst",
    "boxprior",
    "build_method",
    "cam",
    "learners",
    "method_plan",
    "pmp",
    "ppc",
    "probe",
    "register_method",
    "rloss",
    "spml",
    "supervised",
]
