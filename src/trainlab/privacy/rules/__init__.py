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

from . import conv, embedding, hf_conv1d, layer_norm, linear, rms_norm  # noqa: F401  the built-in rules
from .registry import register_lookalike, register_rule, rule_of, supported

__all__ = ["register_lookalike", "register_rule", "rule_of", "supported"]
