"""Per-sample gradient rules, one small file per layer type, keyed by module class as in
Opacus's `grad_sample/`.

A forward hook keeps each supported module's input (the activation A) and autograd gives
the gradient of the summed per-sample losses with respect to its output (G). Because sample
i's loss depends only on sample i, row i of G is d loss_i / d output_i, and every per-sample
quantity of a layer follows from (A_i, G_i). A rule gives, for the module parameters it is
asked about (the trainable ones),

    norms_sq(module, a, g, keys, method, tile, budget) -> ({name: [B] squared norms}, cache)
    clipped(module, a, g, c, keys, cache)             -> {name: sum_i c_i grad_i}

without materialising per-sample gradients unless the method asks for it (see norms.py).

A rule covers a class and its subclasses that keep the class's `forward`; a subclass with a
forward of its own may compute something else, so it has no rule (and is refused). Layers
that cannot be imported here (Hugging Face's) are matched by their structure instead
(`register_lookalike`). Whatever the match, the engine checks each rule against autograd's
gradient the first time it meets a module class, so a rule that does not describe a layer is
refused, never trusted.

A rule of your own:

    from trainlab.privacy.rules import register_rule

    @register_rule(MyLayer)
    class MyLayerRule:
        params = ("weight",)
        def check(module): ...
        def norms_sq(module, a, g, keys, method, tile, budget): ...
        def clipped(module, a, g, c, keys, cache): ...
"""

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


from . import conv, embedding, hf_conv1d, layer_norm, linear, rms_norm  # noqa: E402,F401  the built-in rules

__all__ = ["register_lookalike", "register_rule", "rule_of", "supported"]
