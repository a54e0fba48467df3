"""Batches of chunks as the models see them, shared by training's evaluation and prediction."""

from __future__ import annotations

import torch

#: Evaluation batches are padded to a multiple of this many chunks. PyTorch's CPU kernels
#: (oneDNN) keep memory for every input shape they meet, so X batches whose chunk counts all
#: differ grew the heap by 300 MB over 10,000 validation clips; a few bucket sizes keep it flat.
CHUNK_BUCKET = 32


def pad_chunks(x: torch.Tensor, multiple: int = CHUNK_BUCKET) -> torch.Tensor:
    """``x`` with zero rows appended up to a multiple of ``multiple`` rows (outputs past
    ``len(x)`` are to be dropped).

    Examples
    --------
    >>> pad_chunks(torch.ones(5, 2, 3), multiple=4).shape
    torch.Size([8, 2, 3])
    >>> pad_chunks(torch.ones(8, 2), multiple=4).shape
    torch.Size([8, 2])
    """
    pad = (-x.shape[0]) % multiple
    return torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
