from weakseg.methods import cam, pmp, ppc, rloss, spml, supervised
from weakseg.methods.base import METHODS, Method, build_method, register_method

__all__ = ["METHODS", "Method", "build_method", "cam", "pmp", "ppc", "register_method", "rloss", "spml", "supervised"]
