"""Is a model plain? A check on its traced aten graph: no ``t + f(t)``, and one depth per tensor.

Written for PNNH (a plain net with an internal path must pass it, a ResNet must fail it), but it reads
any model: ``skip_add_report(model, example)``.
"""
from __future__ import annotations

import operator

import torch
from torch import Tensor, nn

#: element-wise activations: the non-linearities that define a "layer" of a plain net
ACTIVATIONS = frozenset({"relu", "relu_", "gelu", "gelu_", "silu", "silu_", "tanh", "tanh_", "sigmoid", "sigmoid_",
                         "leaky_relu", "leaky_relu_", "elu", "elu_", "hardtanh", "hardtanh_", "softplus",
                         "threshold", "threshold_", "mish", "hardswish"})
#: ops that only select or re-shape data: a value that is a view of t is "t itself" for the skip test
VIEWS = frozenset({"view", "_unsafe_view", "reshape", "slice", "select", "split", "split_with_sizes", "transpose",
                   "permute", "expand", "unsqueeze", "squeeze", "t", "alias", "clone", "contiguous", "detach",
                   "unbind", "chunk", "narrow", "flatten", "getitem"})
#: ops that add (or subtract) tensors; addmm/baddbmm add their first operand
ADDS = frozenset({"add", "add_", "sub", "sub_", "rsub", "addmm", "baddbmm", "addcmul", "addcdiv"})


def _op_name(node) -> str:
    t = node.target
    if t is operator.getitem:
        return "getitem"
    if t in (operator.add, operator.iadd):
        return "add"
    if t in (operator.sub, operator.isub):
        return "sub"
    name = getattr(t, "__name__", str(t))
    packet = getattr(t, "overloadpacket", None)
    if packet is not None:
        name = packet.__name__
    return name.split(".")[0]


def skip_add_report(model: nn.Module, example: Tensor) -> dict:
    """Trace ``model(example)`` to an aten graph (``torch.fx`` via ``make_fx``, real values, eval mode)
    and check the defining property of a plain net on it:

    - ``skip_adds``: add/sub nodes one of whose operands is (a view of) a tensor t while the other is
      computed *from* t through at least one non-view op -- i.e. ``t + f(t)``, a skip connection
      (ResNet's ``x + F(x)``, and also ``ReLU(x + W x)`` with a linear branch). PNNH's decode
      ``p - q`` subtracts two views of one state and is not one.
    - ``mixed_depth``: nodes reached from the input along paths that cross *different numbers of
      activations* (:data:`ACTIVATIONS`). In a plain net every path crosses every layer's ReLU, so
      each tensor has one depth; any shortcut around a non-linearity shows up here.

    Returns ``{"plain": bool, "skip_adds": [...], "mixed_depth": [...], "n_nodes", "n_activations",
    "depth": max activations on a path}``; ``plain`` is True iff both lists are empty. The model's
    training mode is restored afterwards."""
    from torch.fx.experimental.proxy_tensor import make_fx

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            gm = make_fx(lambda x: model(x))(example)
    finally:
        model.train(was_training)

    depth: dict = {}  # node -> set of activation counts along paths from the input (absent: not reached)
    root: dict = {}  # node -> the node it is a view of (itself if not a view)
    ancestors: dict = {}  # node -> set of reached nodes it is computed from through >= 1 non-view op
    skip_adds, mixed = [], []
    n_act = 0
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            depth[node], root[node], ancestors[node] = {0}, node, set()
            continue
        if node.op != "call_function":
            continue
        ins = [a for a in node.all_input_nodes if a in depth]
        if not ins:
            continue
        name = _op_name(node)
        d = set().union(*(depth[a] for a in ins))
        if name in ACTIVATIONS:
            d = {k + 1 for k in d}
            n_act += 1
        depth[node] = d
        if len(d) > 1:
            mixed.append(f"{node.name} ({name}): paths cross {sorted(d)} activations")
        if name in VIEWS and len(ins) == 1:
            root[node] = root[ins[0]]
            ancestors[node] = ancestors[ins[0]]
        else:
            root[node] = node
            anc = set()
            for a in ins:
                anc |= ancestors[a] | {a, root[a]}
            ancestors[node] = anc
        if name in ADDS and len(ins) >= 2:
            for a in ins:
                for b in ins:
                    if a is not b and root[a] is not root[b] and root[a] in ancestors[b]:
                        skip_adds.append(f"{node.name} ({name}): {a.name} + f({a.name}) via {b.name}")
    return {"plain": not skip_adds and not mixed, "skip_adds": skip_adds, "mixed_depth": mixed,
            "n_nodes": len(gm.graph.nodes), "n_activations": n_act,
            "depth": max((max(v) for v in depth.values()), default=0)}
