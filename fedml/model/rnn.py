"""The LEAF Shakespeare model: characters -> 8-dim embedding -> 2-layer LSTM(256) -> next-character logits."""

from __future__ import annotations

import torch
from torch import nn


class CharLSTM(nn.Module):
    """LEAF's next-character LSTM (Caldas et al., 2018), as used in FedProx and most Shakespeare studies.

    Input: int64 character ids shaped (batch, sequence length); output: (batch, vocabulary) logits of
    the character that follows, from the LSTM's output at the last time step. The vocabulary is
    ``output_dim`` (LEAF's 80 characters): the characters read and predicted are the same set. With
    PyTorch's two bias vectors per LSTM layer it has 819,920 parameters for 80 characters (LEAF's
    TensorFlow cell, with one bias, has 817,872).

    Parameters
    ----------
    input_shape
        ``(sequence length,)``; any length works, the prediction is read at the last step.
    output_dim
        Vocabulary size, read and predicted.
    embedding_dim, hidden, layers
        Embedding width, LSTM units per layer and LSTM layers (LEAF: 8, 256, 2).

    Notes
    -----
    ``torch.func.vmap`` has no batching rule for the fused LSTM kernel, so this model trains in the
    sequential engine (``train_args.engine: auto`` finds that out and logs it).

    Examples
    --------
    >>> model = CharLSTM((80,), 80)
    >>> model(torch.zeros(2, 80, dtype=torch.int64)).shape
    torch.Size([2, 80])

    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        output_dim: int,
        embedding_dim: int = 8,
        hidden: int = 256,
        layers: int = 2,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(output_dim, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return next-character logits for int64 character ids shaped (batch, sequence length)."""
        out, _ = self.lstm(self.embedding(x))
        return self.fc(out[:, -1])
