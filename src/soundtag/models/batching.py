"""Batches of chunks as the models see them, shared by training's evaluation and prediction."""

from __future__ import annotations

import torch

#: Evaluation batches are padded to a multiple of this many chunks. PyTorch's CPU kernels
#: (oneDNN) keep memory for every input shape they meet, so X batches whose chunk counts all
#: differ grew the heap by 300 MB over 10,000 validation clips; a few bucket sizes keep it flat.
CHUNK_BUCKET = 32


def pad_chunks(x: torch.Tensor, multiple: int = CHUNK_BUCKET) -> torch.Tensor:
    """``x`` with zero rows appended up to the next power of two rows, or past ``multiple`` rows
    up to a multiple of it (outputs past ``len(x)`` are to be dropped).

    Few shapes either way; a power of two below ``multiple`` keeps one file's single crop
    from paying for 32 (it made tagging a 10 s clip with CNN14 60x slower).

    Examples
    --------
    >>> pad_chunks(torch.ones(5, 2, 3), multiple=4).shape
    torch.Size([8, 2, 3])
    >>> pad_chunks(torch.ones(8, 2), multiple=4).shape
    torch.Size([8, 2])
    >>> pad_chunks(torch.ones(1, 2)).shape, pad_chunks(torch.ones(3, 2)).shape, pad_chunks(torch.ones(33, 2)).shape
    (torch.Size([1, 2]), torch.Size([4, 2]), torch.Size([64, 2]))
    """
    n = x.shape[0]
    target = 1 << max(0, (n - 1).bit_length()) if n <= multiple else -(-n // multiple) * multiple
    pad = target - n
    return torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
