from weakseg.methods import cam, rloss, supervised
from weakseg.methods.base import METHODS, Method, build_method, register_method

__all__ = ["METHODS", "Method", "build_method", "cam", "register_method", "rloss", "supervised"]
