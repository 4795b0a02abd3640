"""Hugging Face's Conv1D (GPT-2): y = x W + b with W stored [in, out], i.e. a Linear layer
whose weight is transposed. Matched by structure: trainlab does not import transformers."""

from .registry import register_lookalike
from .linear import LinearRule


class TransposedLinearRule(LinearRule):
    lookalike = "Hugging Face Conv1D"

    @classmethod
    def clipped(cls, module, a, g, c, keys, cache: dict | None = None) -> dict:
        out = super().clipped(module, a, g, c, keys, cache)
        if "weight" in out:
            out["weight"] = out["weight"].T
        return out


def is_hf_conv1d(module) -> bool:
    return (type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")
            and hasattr(module, "nf") and module.weight.dim() == 2)


register_lookalike(is_hf_conv1d, TransposedLinearRule)
