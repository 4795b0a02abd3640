"""Text into tokens and tokens into training windows, for every language-model task."""

import torch

VOCAB = " abcdefghijklmnopqrstuvwxy"  # a-y and space; everything else becomes a space


def encode(text: str) -> torch.Tensor:
    table = {c: i for i, c in enumerate(VOCAB)}
    return torch.tensor([table.get(c, 0) for c in text.lower()], dtype=torch.long)


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in ids)


def windows(tokens: torch.Tensor, length: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input/target windows: x = t[i:i+L], y = t[i+1:i+L+1] for i = 0, stride, ..."""
    starts = torch.arange(0, len(tokens) - length, stride)
    offsets = torch.arange(length)
    return tokens[starts[:, None] + offsets], tokens[starts[:, None] + offsets + 1]


def text_tokenizer(kind: str, text: str = ""):
    """(vocabulary size, encode: str -> ids, decode: ids -> str). `byte`: UTF-8 bytes (256
    ids); `char`: the distinct characters of `text`, sorted."""
    if kind == "byte":
        return 256, (lambda s: list(s.encode("utf-8"))), (lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    chars = sorted(set(text))
    table = {c: i for i, c in enumerate(chars)}
    return len(chars), (lambda s: [table.get(c, 0) for c in s]), (lambda ids: "".join(chars[i] for i in ids))
