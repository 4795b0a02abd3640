"""Reading an autograd graph: which operations use which parameter, and how often.

Both the DP engine (is every parameter used once, by its own module?) and the Muon split
(is this parameter a matrix in a product, an embedding, the head?) ask these questions of the
graph of one forward pass, walked once from the output."""

from dataclasses import dataclass, field


@dataclass
class Graph:
    reached: dict = field(default_factory=dict)  # every node by id (kept alive, so ids stay unique)
    parents: dict = field(default_factory=dict)  # node id -> the nodes that take it as an input
    uses: dict = field(default_factory=dict)  # leaf (tensor) id -> edges into its accumulator
    leaves: dict = field(default_factory=dict)  # leaf (tensor) id -> its AccumulateGrad node


def walk(root) -> Graph:
    graph, stack = Graph(), [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in graph.reached:
            continue
        graph.reached[id(node)] = node
        for child, _ in node.next_functions:
            if child is None:
                continue
            graph.parents.setdefault(id(child), []).append(node)
            variable = getattr(child, "variable", None)
            if variable is not None:
                graph.uses[id(variable)] = graph.uses.get(id(variable), 0) + 1
                graph.leaves[id(variable)] = child
            stack.append(child)
    return graph
