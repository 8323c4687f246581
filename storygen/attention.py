"""Temporal attention over a call's frames as plain matrix products (the ``tattn`` speed-up).

A storygen UNet's temporal attention layers attend over the frames of one call: sequences of
16 tokens, one per pixel of every frame's feature map (at 32×32 latents and 120 rows, 122,880
sequences × 5-20 heads a layer). Fused attention kernels tile queries and keys by 64-128, so a
16-token sequence fills an eighth of a tile or less and the kernel's fixed cost per tile
dominates: on an H200, the UNet's 66 attention calls took 18 % of a compiled forward pass for
3 % of its FLOPs (``benchmarks/unet_kernels.py --profile``). For short sequences the scores
are small (16 × 16 a head), so :class:`ShortSequenceAttnProcessor` computes them with two
batched matrix products and a softmax in float32 instead; other calls (masks, norms, long
sequences) go to the processor it replaced.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["MAX_SHORT_SEQUENCE", "ShortSequenceAttnProcessor", "short_temporal_attention"]

#: the longest sequence :class:`ShortSequenceAttnProcessor` computes itself
MAX_SHORT_SEQUENCE = 32


class ShortSequenceAttnProcessor:
    """Self- or cross-attention of short sequences as ``softmax(q kᵀ · scale) v``: the scores
    in the activations' dtype (float32 accumulation in the matrix product), the softmax in
    float32. Calls it does not cover go to ``fallback``."""

    def __init__(self, fallback: Any, max_len: int = MAX_SHORT_SEQUENCE) -> None:
        self.fallback = fallback
        self.max_len = int(max_len)

    def covers(
        self, attn: Any, hidden_states: torch.Tensor, context: torch.Tensor | None, mask: Any
    ) -> bool:
        return (
            mask is None
            and hidden_states.ndim == 3
            and hidden_states.shape[1] <= self.max_len
            and (context is None or context.shape[1] <= self.max_len)
            and attn.spatial_norm is None
            and attn.group_norm is None
            and attn.norm_q is None
            and attn.norm_k is None
            and not (context is not None and attn.norm_cross)
        )

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if args or not self.covers(attn, hidden_states, encoder_hidden_states, attention_mask):
            return self.fallback(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        residual = hidden_states
        batch, length, _ = hidden_states.shape
        if encoder_hidden_states is None and getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            query = attn.to_q(hidden_states)
            if getattr(attn, "fused_projections", False) and encoder_hidden_states is not None:
                key, value = attn.to_kv(context).chunk(2, dim=-1)
            else:
                key, value = attn.to_k(context), attn.to_v(context)
        heads = attn.heads
        dim = key.shape[-1] // heads
        query = query.reshape(batch, -1, heads, dim).transpose(1, 2)
        key = key.reshape(batch, -1, heads, dim).transpose(1, 2)
        value = value.reshape(batch, -1, heads, dim).transpose(1, 2)
        scores = torch.matmul(query, key.transpose(-1, -2)).float() * (dim**-0.5)
        probs = scores.softmax(dim=-1).to(value.dtype)
        out = torch.matmul(probs, value).transpose(1, 2).reshape(batch, length, heads * dim)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def short_temporal_attention(unet: torch.nn.Module, max_len: int = MAX_SHORT_SEQUENCE) -> int:
    """Give every temporal attention layer of ``unet`` (its ``TransformerTemporalModel``
    blocks) a :class:`ShortSequenceAttnProcessor` over its current processor; returns how
    many layers."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    count = 0
    for module in unet.modules():
        if not isinstance(module, TransformerTemporalModel):
            continue
        for attn in module.modules():
            if isinstance(attn, Attention) and not isinstance(
                attn.processor, ShortSequenceAttnProcessor
            ):
                processor: Any = ShortSequenceAttnProcessor(attn.processor, max_len)
                attn.set_processor(processor)
                count += 1
    return count
