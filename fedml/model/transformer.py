"""A tiny causal transformer for next-character prediction, with the input/output contract of ``CharLSTM``."""

from __future__ import annotations

import math

import torch
from torch import nn

from fedml.errors import ConfigError


class _Block(nn.Module):
    """Pre-norm transformer block: causal multi-head self-attention, then a ReLU MLP, each residual."""

    def __init__(self, width: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        mlp: list[nn.Module] = [nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width)]
        # No Dropout module at all when dropout is 0: the vectorized engine refuses any random layer.
        self.mlp = nn.Sequential(*mlp, nn.Dropout(dropout)) if dropout else nn.Sequential(*mlp)
        self.attn_dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        head_dim = width // self.heads
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        # Attention written out rather than F.scaled_dot_product_attention, which vmap runs one client at a
        # time on the CPU (no batching rule for its fused kernels).
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(head_dim)
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        weights = self.attn_dropout(scores.masked_fill(future, float("-inf")).softmax(dim=-1))
        attended = (weights @ v).transpose(1, 2).reshape(batch, length, width)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """A small GPT-style model: token and learned position embeddings, causal pre-norm blocks, a linear head.

    Input: int64 character ids shaped (batch, sequence length) with length at most ``input_shape[0]``;
    output: (batch, vocabulary) logits of the character after the sequence, read from the last
    position. The vocabulary is ``output_dim``, as for ``CharLSTM``. The defaults (width 64, 4 heads,
    4 blocks, MLP of 256) give 215,504 parameters for 80 characters and sequences of 80.

    Parameters
    ----------
    input_shape
        ``(sequence length,)``: the longest sequence the position embedding covers.
    output_dim
        Vocabulary size, read and predicted.
    width, heads, blocks, hidden
        Model width, attention heads (dividing ``width``), number of blocks, MLP hidden units.
    dropout
        Dropout probability in attention and MLP; 0 (the default) adds no dropout layer, so training is
        deterministic and the vectorized engine can run it.

    Examples
    --------
    >>> model = TinyTransformer((80,), 80)
    >>> model(torch.zeros(2, 80, dtype=torch.int64)).shape
    torch.Size([2, 80])

    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        output_dim: int,
        width: int = 64,
        heads: int = 4,
        blocks: int = 4,
        hidden: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"TinyTransformer: heads ({heads}) must divide width ({width})")
        self.token = nn.Embedding(output_dim, width)
        self.position = nn.Embedding(input_shape[0], width)
        self.blocks = nn.Sequential(*(_Block(width, heads, hidden, dropout) for _ in range(blocks)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, output_dim)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return next-character logits for int64 character ids shaped (batch, sequence length)."""
        positions = torch.arange(x.shape[1], device=x.device)
        hidden = self.blocks(self.token(x) + self.position(positions))
        return self.head(self.norm(hidden[:, -1]))
