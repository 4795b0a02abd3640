"""nn.Conv1d / nn.Conv2d: a Linear layer applied to every patch of the input (im2col)."""

from torch import nn
from torch.nn import functional as F

from .registry import register_rule
from .linear import LinearRule


@register_rule(nn.Conv1d, nn.Conv2d)
class ConvRule(LinearRule):
    @staticmethod
    def check(module) -> None:
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str) and module.padding != "valid":
            raise ValueError("only groups=1, zero padding given as numbers (or 'valid') are supported")

    @staticmethod
    def flatten(module, a, g):
        two_d = isinstance(module, nn.Conv2d)
        pair = (lambda v: tuple(v)) if two_d else (lambda v: (1, v[0]))
        padding = (0, 0) if module.padding == "valid" else (tuple(module.padding) if two_d else (0, module.padding[0]))
        x = a if two_d else a.unsqueeze(2)
        patches = F.unfold(x, pair(module.kernel_size), dilation=pair(module.dilation), padding=padding,
                           stride=pair(module.stride))  # [B, C_in * k, L]
        return patches.transpose(1, 2), g.reshape(g.shape[0], g.shape[1], -1).transpose(1, 2)

    @classmethod
    def clipped(cls, module, a, g, c, keys, cache: dict | None = None) -> dict:
        out = super().clipped(module, a, g, c, keys, cache)
        if "weight" in out:
            out["weight"] = out["weight"].reshape(module.weight.shape)
        return out
