"""Batches of chunks as the models see them, shared by training's evaluation and prediction."""

from __future__ import annotations

import torch

#: Evaluation batches are padded to a multiple of this many chunks. PyTorch's CPU kernels
#: (oneDNN) keep memory for every input shape they meet, so X batches whose chunk counts all
#: differ grew the heap by 300 MB over 10,000 validation clips; a few bucket sizes keep it flat.
CHUNK_BUCKET = 32


def padded_rows(n: int, multiple: int = CHUNK_BUCKET) -> int:
    """The rows :func:`pad_chunks` pads ``n`` rows to: the next power of two up to ``multiple``,
    past it the next multiple of ``multiple``.

    Examples
    --------
    >>> [padded_rows(n, multiple=4) for n in (1, 2, 3, 4, 5, 8, 9)]
    [1, 2, 4, 4, 8, 8, 12]
    """
    return 1 << max(0, (n - 1).bit_length()) if n <= multiple else -(-n // multiple) * multiple


def pad_chunks(x: torch.Tensor, multiple: int = CHUNK_BUCKET) -> torch.Tensor:
    """``x`` with zero rows appended up to :func:`padded_rows` rows (outputs past ``len(x)`` are
    to be dropped).

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
    return x if padded_rows(len(x), multiple) == len(x) else cat_padded([x], multiple)


def cat_padded(xs: list[torch.Tensor], multiple: int = CHUNK_BUCKET) -> torch.Tensor:
    """``pad_chunks(torch.cat(xs))``, written straight into one tensor of the padded size: one
    allocation and one copy of the batch instead of two, each of a varying size.

    Examples
    --------
    >>> out = cat_padded([torch.ones(2, 3), 2 * torch.ones(1, 3)])
    >>> out.shape, out[:, 0].tolist()
    (torch.Size([4, 3]), [1.0, 1.0, 2.0, 0.0])
    """
    n = sum(len(x) for x in xs)
    out = xs[0].new_empty((padded_rows(n, multiple), *xs[0].shape[1:]))
    torch.cat(xs, out=out[:n])
    out[n:] = 0
    return out
