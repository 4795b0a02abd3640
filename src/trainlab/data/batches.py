"""Inputs are a tensor or a dict of tensors (one row per sample in each): the few operations the
trainer needs on either."""


def rows(inputs, index):
    """The rows `index` (a tensor of indices or a slice) of every input tensor."""
    if isinstance(inputs, dict):
        return {k: v[index] for k, v in inputs.items()}
    return inputs[index]


def count(inputs) -> int:
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)


def to_device(inputs, device, dtype):
    """Floating tensors cast to the trial's dtype (integers, e.g. token ids, stay), on its device."""
    if isinstance(inputs, dict):
        return {k: to_device(v, device, dtype) for k, v in inputs.items()}
    if inputs.is_floating_point():
        inputs = inputs.to(dtype)
    return inputs.to(device)


def split(inputs, parts: int) -> list:
    """`parts` consecutive micro-batches (as torch.tensor_split)."""
    if isinstance(inputs, dict):
        pieces = {k: v.tensor_split(parts) for k, v in inputs.items()}
        return [{k: pieces[k][i] for k in pieces} for i in range(parts)]
    return list(inputs.tensor_split(parts))
