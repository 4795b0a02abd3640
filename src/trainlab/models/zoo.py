"""Named models of the DP suite (dp-consistency, dp-profile, the DP benchmark), from a
40k-parameter GPT to the Llama-3.2-1B shape, plus small Hugging Face models built from a config.

    make, vocab = zoo_model("gpt-tiny", seq_len=32)   # make() -> a fresh nn.Module; vocab None for the CNN
"""

import torch
from torch import nn

from .cnn import PlainCNN
from .gpt import GPT, GPTConfig
from .llama import Llama, llama_config

GPTS = {"gpt-tiny": dict(n_layer=2, n_head=2, n_embd=32, mlp_ratio=4),
        "gpt-small": dict(n_layer=4, n_head=4, n_embd=128, mlp_ratio=4),
        "gpt-256": dict(n_layer=4, n_head=4, n_embd=256, mlp_ratio=4, bias=True),
        "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, mlp_ratio=4, bias=True)}
MODEL_NAMES = (*GPTS, "llama-tiny", "llama-small", "llama-3.2-1b", "cnn", "hf-llama", "hf-gpt2")


def zoo_model(name: str, seq_len: int):
    """(factory of a fresh model, vocabulary size or None); ValueError for an unknown name."""
    if name in GPTS:
        vocab = 50257 if name == "gpt2-small" else 256
        return (lambda: GPT(GPTConfig(vocab_size=vocab, block_size=seq_len, **GPTS[name]))), vocab
    if name.startswith("llama-"):
        cfg = llama_config(name, max_seq_len=max(seq_len, 8))
        return (lambda: Llama(cfg)), cfg.vocab_size
    if name in ("hf-llama", "hf-gpt2"):
        return hf_model(name), 256
    if name == "cnn":
        return PlainCNN, None
    raise ValueError(f"unknown model (allowed: {', '.join(MODEL_NAMES)})")


class HuggingFaceLM(nn.Module):
    """A `transformers` causal LM built from a config, called with one row of position ids per
    sample (so per-sample rules see each sample's position embeddings) and returning logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, T = tokens.shape
        positions = torch.arange(T, device=tokens.device).expand(B, T)
        return self.model(input_ids=tokens, position_ids=positions, use_cache=False).logits


def hf_model(name: str):
    """Small random-init Hugging Face models (needs `pip install 'trainlab[hf]'`); untied heads."""
    try:
        import transformers
    except ImportError:
        raise ValueError("needs Hugging Face transformers: pip install 'trainlab[hf]'") from None
    transformers.logging.set_verbosity_error()

    if name == "hf-llama":
        config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                          tie_word_embeddings=False, attn_implementation="eager")
        return lambda: HuggingFaceLM(transformers.LlamaForCausalLM(config))
    config = transformers.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                                     tie_word_embeddings=False, attn_implementation="eager", bos_token_id=0,
                                     eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # modes compare
    # exactly only without dropout: vmap draws its own masks
    return lambda: HuggingFaceLM(transformers.GPT2LMHeadModel(config))
