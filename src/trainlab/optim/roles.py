"""What each parameter of a model does, read from the autograd graph of one forward pass.

Muon is meant for the hidden weight matrices of a network; the embeddings, the output head,
norm gains and biases belong to AdamW. Which parameter is which cannot be told from its
module's class or its place in `named_parameters()` (a head tied to the embedding, experts
stored as one 3-D tensor, Hugging Face's Conv1D layers), so it is read from what the
parameter does in a forward pass on a couple of training samples:

    embedding  indexed by token ids (an embedding lookup or gather)
    head       an operand of the matrix products nearest to the model's output, tied or not
    matrix     an operand of a matrix product elsewhere (Linear, Conv1D, `x @ W`, ...)
    conv       a convolution filter (Muon treats [out, in, k...] as the matrix [out, in*k...])
    stacked    a tensor of three or more dimensions used in matrix products, e.g. the experts of
               a mixture-of-experts layer stored as [E, in, out] (one matrix per leading index)
    vector     one- or zero-dimensional: norm gains, biases, scales
    other      anything else: added or multiplied elementwise (position tables, ...)

A parameter the example forward does not reach (an expert no token was routed to, a
branch not taken) gets the role of its module's class (Linear -> matrix, Conv -> conv,
Embedding -> embedding), else `other`, and is marked `reached=False`.
"""

import contextlib
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..graph import walk
from ..models.outputs import forward

# autograd nodes that only move, view, select or cast their input: a parameter seen through
# them is still the same operand
PASS_THROUGH = {"TBackward", "ViewBackward", "UnsafeViewBackward", "ReshapeAliasBackward", "PermuteBackward",
                "TransposeBackward", "ExpandBackward", "UnsqueezeBackward", "SqueezeBackward", "SelectBackward",
                "SliceBackward", "UnbindBackward", "CloneBackward", "ToCopyBackward", "AliasBackward",
                "AsStridedBackward", "SplitBackward", "SplitWithSizesBackward", "NarrowBackward", "ChunkBackward",
                "ContiguousBackward", "ExpandAsBackward", "FlattenBackward", "UnflattenBackward"}
MATMUL = {"MmBackward", "AddmmBackward", "BmmBackward", "BaddbmmBackward", "MatmulBackward", "LinearBackward",
          "MvBackward", "AddmvBackward", "MkldnnLinearBackward", "DotBackward", "VdotBackward"}
LOOKUP = {"EmbeddingBackward", "EmbeddingBagBackward", "IndexBackward", "IndexSelectBackward", "GatherBackward",
          "TakeBackward", "EmbeddingDenseBackward"}
MUON_ROLES = ("matrix", "conv", "stacked")


def op_name(node) -> str:
    return re.sub(r"\d+$", "", type(node).__name__)


def is_conv(name: str) -> bool:
    return "Convolution" in name or "Conv2D" in name or "Conv3D" in name or "ConvDepthwise" in name


def is_product(name: str) -> bool:
    return name in MATMUL or is_conv(name)


@dataclass
class Role:
    name: str
    role: str
    shape: tuple
    reached: bool = True

    @property
    def numel(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n


@contextlib.contextmanager
def inspection(model: nn.Module):
    """Gradients on, every module in eval mode (no dropout, BatchNorm statistics untouched),
    random state untouched; all restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            model.eval()
            yield
    finally:
        for module, training in modes:
            module.training = training


def parameter_roles(model: nn.Module, example) -> dict[str, Role]:
    """The role of every trainable parameter, from a forward pass of `example` (a few samples)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    with inspection(model):
        output = forward(model, example)
        consumers, head = read_graph(output.grad_fn)
    owners = {f"{prefix}.{n}" if prefix else n: module for prefix, module in model.named_modules()
              for n, _ in module.named_parameters(recurse=False)}
    roles = {}
    for name, p in params.items():
        ops = consumers.get(id(p))
        if ops is None:
            roles[name] = Role(name, role_by_module(owners.get(name), p), tuple(p.shape), reached=False)
        else:
            roles[name] = Role(name, role_by_use(p, ops, id(p) in head), tuple(p.shape))
    return roles


def read_graph(root) -> tuple[dict[int, set], set[int]]:
    """(consumers: for each leaf's id, the names of the operations that use it, looking through
    views and casts; head: the ids of the leaves that are operands of the matrix products
    nearest to `root`)."""
    graph = walk(root)
    consumers = {leaf: uses_of(node, graph.parents) for leaf, node in graph.leaves.items()}
    return consumers, head_leaves(root)


def uses_of(node, parents: dict) -> set[str]:
    ops, seen, stack = set(), set(), list(parents.get(id(node), []))
    while stack:
        parent = stack.pop()
        if id(parent) in seen:
            continue
        seen.add(id(parent))
        name = op_name(parent)
        if name in PASS_THROUGH:
            stack.extend(parents.get(id(parent), []))
        else:
            ops.add(name)
    return ops


def head_leaves(root) -> set[int]:
    """Leaves that are operands of the first matrix products met walking from the output
    towards the inputs (the output head: a Linear, or a tied embedding used as `x @ E.T`)."""
    found, seen, stack = set(), set(), [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if is_product(op_name(node)):
            found |= operands(node)
            continue
        stack.extend(child for child, _ in node.next_functions)
    return found


def operands(node) -> set[int]:
    """Leaves feeding a node directly or through views and casts."""
    found, stack = set(), [child for child, _ in node.next_functions]
    while stack:
        child = stack.pop()
        if child is None:
            continue
        variable = getattr(child, "variable", None)
        if variable is not None:
            found.add(id(variable))
        elif op_name(child) in PASS_THROUGH:
            stack.extend(grand for grand, _ in child.next_functions)
    return found


def role_by_use(p: torch.Tensor, ops: set[str], head: bool) -> str:
    if ops & LOOKUP:
        return "embedding"
    if head:
        return "head"
    if p.dim() < 2:
        return "vector"
    if any(is_conv(op) for op in ops):
        return "conv"
    if ops & MATMUL:
        return "stacked" if p.dim() > 2 else "matrix"
    return "other"


def role_by_module(module: nn.Module | None, p: torch.Tensor) -> str:
    if p.dim() < 2:
        return "vector"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":  # Hugging Face's transposed Linear
        return "matrix"
    return "other"
