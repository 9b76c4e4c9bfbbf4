from weakseg.methods import supervised
from weakseg.methods.base import METHODS, Method, build_method, register_method

__all__ = ["METHODS", "Method", "build_method", "register_method", "supervised"]
