"""Deep residual MLP whose depth loop belongs to a Connection.

    h_0 = act([LN](W_in x))                          stem
    h_j = connection(h_{j-1}, f_j)                   K blocks, one branch each
    f_j = ([Linear -> [LN] -> act] x layers_per_branch)
    y   = W_out h_K                                  head

With ``layers_per_branch=4``, ``layernorm=True``, ``activation="silu"`` this is the residual MLP of
the goal-conditioned RL networks in the ANCRe paper (Zhang et al. 2026, arXiv:2602.09009; its code's
``x + 4 x [Dense -> LayerNorm -> swish]`` blocks after a ``Dense -> LayerNorm -> swish`` stem), and
with ``residual`` the block is exactly ``h + f(h)``. Every layer of a branch ends with the
activation, including the last one, as in that code.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..connections import Connection
from ..connections import connection as build_connection

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
_ALIASES = {"swish": "silu"}


def make_activation(name: str) -> nn.Module:
    key = _ALIASES.get(name, name)
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)} (swish = silu)")
    return ACTIVATIONS[key]()


def _layer(din: int, dout: int, layernorm: bool, activation: str) -> list[nn.Module]:
    return [nn.Linear(din, dout)] + ([nn.LayerNorm(dout)] if layernorm else []) + [make_activation(activation)]


class MLPBranch(nn.Module):
    """f(h) = ([Linear -> [LN] -> act] x n_layers)(h), width -> width."""

    def __init__(self, width: int, n_layers: int, layernorm: bool, activation: str):
        super().__init__()
        self.net = nn.Sequential(*[m for _ in range(n_layers) for m in _layer(width, width, layernorm, activation)])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ResidualMLP(nn.Module):
    """``forward(x: (B, in_dim) or (B, ...) with flatten_input) -> (B, out_dim)``.

    Args:
        in_dim, out_dim: input features (after flattening) and outputs (classes or targets).
        width: stream width D. n_blocks: K blocks the connection wires.
        layers_per_branch: Linear layers in each branch (default 2; the ANCRe RL nets use 4).
        layernorm: LayerNorm after every Linear of the stem and of the branches.
        activation: relu | gelu | silu (swish) | tanh.
        flatten_input: flatten (B, C, H, W) images to (B, C*H*W) first.
        connection: spec string, or a built Connection with n_blocks=K, dim=width.
    Linear layers keep PyTorch's default initialisation.
    """

    def __init__(self, in_dim: int, out_dim: int, width: int = 128, n_blocks: int = 4, layers_per_branch: int = 2,
                 layernorm: bool = True, activation: str = "silu", flatten_input: bool = False,
                 connection: str | Connection = "residual"):
        super().__init__()
        for k, v in (("in_dim", in_dim), ("out_dim", out_dim), ("width", width), ("n_blocks", n_blocks),
                     ("layers_per_branch", layers_per_branch)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ResidualMLP: {k} must be a positive int, got {v!r}")
        make_activation(activation)  # validate early
        self.in_dim, self.flatten_input = in_dim, flatten_input
        self.stem = nn.Sequential(*_layer(in_dim, width, layernorm, activation))
        self.blocks = nn.ModuleList(
            nn.ModuleList([MLPBranch(width, layers_per_branch, layernorm, activation)]) for _ in range(n_blocks))
        self.head = nn.Linear(width, out_dim)
        # built last, like every model in reslab: a connection carries its own initialisation
        self.connection = build_connection(connection, n_blocks, width, channel_dim=-1)
        if (self.connection.n_blocks, self.connection.dim) != (n_blocks, width):
            raise ValueError(f"ResidualMLP: the given connection has n_blocks={self.connection.n_blocks}, "
                             f"dim={self.connection.dim}; this model needs n_blocks={n_blocks}, dim={width}")

    def forward(self, x: Tensor) -> Tensor:
        if self.flatten_input:
            x = x.flatten(1)
        if x.shape[-1] != self.in_dim:
            hint = "" if self.flatten_input or x.ndim <= 2 else "; use flatten_input=True for images"
            raise ValueError(f"ResidualMLP expects {self.in_dim} input features, got shape {tuple(x.shape)}{hint}")
        h = self.stem(x)
        h = self.connection(h, self.blocks)
        return self.head(h)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
