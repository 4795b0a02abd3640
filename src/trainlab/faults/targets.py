"""Where a fault lands: a parameter, its gradient, an optimizer-state entry, or a module's output.

Optimizer state is named by role so that arms with different optimizers are hit at the same
site: the first moment is Adam's `exp_avg` or the momentum buffer of SGD, RMSprop and Muon;
the second moment is Adam's `exp_avg_sq` or RMSprop's `square_avg`.
"""

from torch import nn

TARGETS = ("weights", "gradients", "optimizer_state", "activations")
STATE_KEYS = {"first_moment": ("exp_avg", "momentum_buffer"), "second_moment": ("exp_avg_sq", "square_avg")}


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Leaf modules (no children): their outputs are the activations a fault can hit."""
    return {name: m for name, m in model.named_modules() if name and not list(m.children())}


def state_entry(optimizer, param, role: str):
    """(key, tensor) of the optimizer state playing `role` for `param`, or (None, None)."""
    state = optimizer.state.get(param, {})
    for key in STATE_KEYS[role]:
        if key in state:
            return key, state[key]
    return None, None
