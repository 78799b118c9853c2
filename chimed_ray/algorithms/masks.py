"""Masked reductions over response tokens, response masks, and log-probabilities from logits.

Every reduction selects with `torch.where` before multiplying, so padding positions may hold
anything (even NaN or inf from a padded forward pass) without leaking into the result.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

# Rows of logits handled at once: bounds the float32 copy to chunk_size * vocab_size elements.
DEFAULT_CHUNK_SIZE = 1024


def zero_masked(values: Tensor, mask: Tensor) -> Tensor:
    """Return `values * mask`, with exact zeros wherever `mask` is 0 even if `values` is NaN or inf there.

    Args:
        values: Any tensor.
        mask: 0/1 (bool, int or float) or fractional weights, broadcastable to `values`.
    """
    mask = mask.to(values.dtype)
    return torch.where(mask != 0, values * mask, torch.zeros_like(values))


def masked_sum(values: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """Sum of `values` where `mask` is set (mask entries act as weights).

    Args:
        values: Tensor to reduce, e.g. `[B, T]`.
        mask: Same shape as `values`.
        dim: Dimension to reduce; `None` reduces everything to a scalar.
    """
    masked = zero_masked(values, mask)
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(values: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """Mean of `values` over the positions where `mask` is set.

    An all-zero mask gives 0 rather than NaN, so an empty micro-batch contributes nothing.

    Args:
        values: Tensor to reduce, e.g. `[B, T]`.
        mask: Same shape as `values`.
        dim: Dimension to reduce; `None` reduces everything to a scalar.
    """
    mask = mask.to(values.dtype)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1e-8)


def masked_var(values: Tensor, mask: Tensor, dim: Optional[int] = None, unbiased: bool = True) -> Tensor:
    """Variance of `values` over the positions where `mask` is set.

    Args:
        values: Tensor to reduce, e.g. `[B, T]`.
        mask: Same shape as `values`.
        dim: Dimension to reduce; `None` reduces everything to a scalar.
        unbiased: Apply Bessel's correction n / (n - 1). With a single selected element the
            correction is skipped and the variance is 0.
    """
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask, dim)
    if dim is not None:
        mean = mean.unsqueeze(dim)
    variance = masked_mean((values - mean) ** 2, mask, dim)
    if unbiased:
        count = mask.sum() if dim is None else mask.sum(dim=dim)
        variance = variance * count / (count - 1).clamp(min=1)
    return variance


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise `values` to mean 0 and (unbiased) variance 1 over the whole mask.

    Args:
        values: `[B, T]` (any shape works; statistics are taken over all selected elements).
        mask: Same shape as `values`.
        shift_mean: If False, add the mean back so only the scale changes (as for PPO rewards).
        eps: Added to the variance before the square root.

    Returns:
        Whitened values with the shape of `values`; positions outside the mask are 0.
    """
    mean = masked_mean(values, mask)
    variance = masked_var(values, mask, unbiased=True)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return zero_masked(whitened, mask)


def response_mask_from_eos(
    response_ids: Tensor,
    eos_token_id: Union[int, Sequence[int]],
    pad_token_id: Optional[int] = None,
) -> Tensor:
    """Mask of the generated tokens that belong to each response.

    A response ends at its first EOS token, which is kept (the policy chose to stop there), or just
    before its first pad token, whichever comes first. A row with neither was truncated at the
    length limit and is valid throughout. When the pad token is also the EOS token, its first
    occurrence counts as EOS.

    Args:
        response_ids: `[B, T]` generated token ids, without the prompt.
        eos_token_id: One EOS id or several (chat models often stop on more than one).
        pad_token_id: Id used to right-pad finished rows; `None` if rows are padded with EOS.

    Returns:
        `[B, T]` long tensor of 1s (response tokens) and 0s (after the end).
    """
    eos_ids = torch.as_tensor(eos_token_id, device=response_ids.device).reshape(-1)
    is_eos = torch.isin(response_ids, eos_ids)  # [B, T]
    is_pad = torch.zeros_like(is_eos) if pad_token_id is None else (response_ids == pad_token_id) & ~is_eos
    eos_seen_before = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0  # strictly earlier EOS
    pad_seen_so_far = torch.cumsum(is_pad.long(), dim=1) > 0  # this or an earlier pad
    return (~eos_seen_before & ~pad_seen_so_far).long()


def truncated_answers(
    response_ids: Tensor,
    response_mask: Tensor,
    eos_token_id: Union[int, Sequence[int]],
    max_new_tokens: int,
) -> Tensor:
    """Which answers the generation limit cut off: `max_new_tokens` tokens and no EOS at the end.

    The padded width of a batch is its longest answer, not the limit, so "the last column is
    valid" says nothing about truncation; an answer that ends in EOS exactly at the limit was not
    cut off either.

    Args:
        response_ids: `[B, T]` generated token ids, without the prompt.
        response_mask: `[B, T]` 0/1 mask of each answer (up to and including its EOS).
        eos_token_id: One EOS id or several.
        max_new_tokens: The generation limit.

    Returns:
        `[B]` bool.
    """
    lengths = (response_mask != 0).sum(dim=1)  # [B]
    last = (lengths - 1).clamp(min=0).unsqueeze(1)  # [B, 1]
    last_token = response_ids.gather(1, last).squeeze(1)  # [B]
    eos_ids = torch.as_tensor(eos_token_id, device=response_ids.device).reshape(-1)
    return (lengths >= max_new_tokens) & ~torch.isin(last_token, eos_ids)


def logprobs_from_logits(logits: Tensor, labels: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Log-probability of each label under the softmax of `logits`, computed in float32.

    The vocabulary axis is large (150k for Qwen), so a float32 `log_softmax` of bf16 `[B, T, V]`
    logits would triple their memory. Rows are processed `chunk_size` at a time, forward and
    backward alike: the backward pass recomputes each chunk's softmax from the logits (which the
    caller holds anyway) and the saved `[N]` log-normalisers, so the extra memory is one float32
    `chunk_size x V` block in both passes, with or without gradients. Gradients flow to `logits`.

    Args:
        logits: `[..., V]`, e.g. `[B, T, V]`, in any float dtype.
        labels: `[...]` token ids, e.g. `[B, T]`.
        chunk_size: Rows per chunk.

    Returns:
        `[...]` float32 log-probabilities.
    """
    vocab_size = logits.shape[-1]
    flat = _ChunkedLogprobs.apply(logits.reshape(-1, vocab_size), labels.reshape(-1), chunk_size)  # [N]
    return flat.reshape(labels.shape)


class _ChunkedLogprobs(torch.autograd.Function):
    """log p(label) = z[label] - logsumexp(z); d/dz = g * (onehot(label) - softmax(z)), by chunks."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, chunk_size: int) -> Tensor:  # [N, V], [N] -> [N]
        log_normalisers = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)  # [N]
        picked = torch.empty_like(log_normalisers)  # [N]
        for start in range(0, logits.shape[0], chunk_size):
            chunk = logits[start : start + chunk_size].float()  # [n, V]
            log_normalisers[start : start + chunk_size] = torch.logsumexp(chunk, dim=-1)
            picked[start : start + chunk_size] = chunk.gather(-1, labels[start : start + chunk_size, None]).squeeze(-1)
        ctx.save_for_backward(logits, labels, log_normalisers)
        ctx.chunk_size = chunk_size
        return picked - log_normalisers

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        logits, labels, log_normalisers = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)  # [N, V], the logits' own dtype
        for start in range(0, logits.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            probs = (logits[rows].float() - log_normalisers[rows, None]).exp_()  # [n, V]
            grad = probs.mul_(-grad_output[rows, None].float())
            grad.scatter_add_(-1, labels[rows, None], grad_output[rows, None].float())
            grad_logits[rows] = grad.to(grad_logits.dtype)
        return grad_logits, None, None


def entropy_from_logits(logits: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Entropy of the categorical distribution softmax(`logits`) at each position, in float32.

    Uses H = logsumexp(z) - sum(softmax(z) * z), chunked over rows like `logprobs_from_logits`.

    Args:
        logits: `[..., V]`, e.g. `[B, T, V]`.
        chunk_size: Rows per chunk.

    Returns:
        `[...]` float32 entropies in nats.
    """
    vocab_size = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab_size)  # [N, V]
    pieces = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        chunk = flat_logits[start : start + chunk_size].float()  # [n, V]
        probs = torch.softmax(chunk, dim=-1)
        # Banned tokens carry -inf logits and probability 0; their term is 0, not 0 * -inf = NaN.
        expected_logit = torch.where(probs > 0, probs * chunk, torch.zeros_like(chunk)).sum(dim=-1)
        pieces.append(torch.logsumexp(chunk, dim=-1) - expected_logit)
    return _cat_or_empty(pieces, logits).reshape(logits.shape[:-1])


def _cat_or_empty(pieces: list[Tensor], like: Tensor) -> Tensor:
    if not pieces:
        return torch.zeros(0, dtype=torch.float32, device=like.device)
    return torch.cat(pieces)
