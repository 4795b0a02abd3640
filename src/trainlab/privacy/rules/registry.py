"""DP rules as plugins: registered by module class (or by structure), looked up for a module."""

from typing import Callable

from torch import nn

from ...plugin import REGISTRIES, Registries, register


def register_rule(*module_types: type, registries: Registries | None = None):
    """Class decorator: `rule` handles modules of these types (and subclasses keeping their forward)."""
    def add(rule):
        for module_type in module_types:
            register("dp_rule", f"{module_type.__module__}.{module_type.__qualname__}", rule, registries=registries,
                     doc=(rule.__doc__ or "").strip().splitlines()[0] if rule.__doc__ else "", module_type=module_type)
        return rule
    return add


def register_lookalike(match: Callable[[nn.Module], bool], rule, registries: Registries | None = None) -> None:
    """A rule for modules recognised by `match` (classes this package cannot import)."""
    register("dp_rule", rule.lookalike, rule, registries=registries, match=match)


def rule_of(module: nn.Module, registries: Registries | None = None):
    """The rule for `module`, or None."""
    plugins = (registries or REGISTRIES).dp_rules
    by_type = {p.trait("module_type"): p.target for p in plugins.values() if p.trait("module_type") is not None}
    for klass in type(module).__mro__:
        rule = by_type.get(klass)
        if rule is not None:
            return rule if type(module).forward is klass.forward else None
    for plugin in plugins.values():
        match = plugin.trait("match")
        if match is not None and match(module):
            return plugin.target
    return None


def supported(registries: Registries | None = None) -> str:
    """The supported layer types, for messages."""
    plugins = (registries or REGISTRIES).dp_rules.values()
    return ", ".join(sorted(p.trait("module_type").__name__ if p.trait("module_type") else p.name for p in plugins))
