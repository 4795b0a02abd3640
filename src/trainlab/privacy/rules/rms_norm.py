"""RMS norms, y = x / rms(x) * w: torch's nn.RMSNorm and trainlab's own by class; Hugging
Face's (LlamaRMSNorm and its many copies) by structure."""

import torch
from torch import nn

from ...models.moe import RMSNorm as TrainlabRMSNorm
from .registry import register_lookalike, register_rule
from .layer_norm import AffineNormRule


@register_rule(nn.RMSNorm, TrainlabRMSNorm)
class RMSNormRule(AffineNormRule):
    params = ("weight",)

    @staticmethod
    def normalised(module, x):
        dims = tuple(range(-len(module.weight.shape), 0))
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        return x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)


class HFRMSNormRule(RMSNormRule):
    """Hugging Face normalises in float32, then casts back."""

    lookalike = "Hugging Face *RMSNorm"

    @staticmethod
    def normalised(module, x):
        dims = tuple(range(-len(module.weight.shape), 0))
        x32 = x.to(torch.float32)
        return (x32 * torch.rsqrt(x32.pow(2).mean(dims, keepdim=True) + module.variance_epsilon)).to(x.dtype)


def is_hf_rms_norm(module) -> bool:
    return (type(module).__name__.endswith("RMSNorm") and type(module).__module__.startswith("transformers")
            and isinstance(getattr(module, "weight", None), nn.Parameter) and hasattr(module, "variance_epsilon"))


register_lookalike(is_hf_rms_norm, HFRMSNormRule)
