"""Curvature of a training loss: Hessian-vector products, exact Hessians, top-k by Lanczos,
traces and spectral densities. Tooling that probes and recipes use, not a probe itself."""

from .hessian import HessianOperator, exact_hessian, hutchinson_trace, power_iteration, spectral_density, top_eigenpairs

__all__ = ["HessianOperator", "exact_hessian", "hutchinson_trace", "power_iteration", "spectral_density",
           "top_eigenpairs"]
