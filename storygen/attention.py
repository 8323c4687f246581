"""Temporal attention over a call's frames in forms that suit 16-token sequences (the ``tattn``
and ``pattn`` speed-ups).

A storygen UNet's temporal attention layers attend over the frames of one call: sequences of
16 tokens, one per pixel of every frame's feature map (at 32×32 latents and 120 rows, 122,880
sequences × 5-20 heads a layer). Fused attention kernels tile queries and keys by 64-128, so a
16-token sequence fills an eighth of a tile or less and the kernel's fixed cost per tile
dominates: in an eager ModelScope-shape pass of 120 rows on an H200, attention took 259 of
2,422 ms for 3 % of the FLOPs, 210 ms of it the 34 temporal calls
(``benchmarks/unet_kernels.py --profile``). For short sequences the scores
are small (16 × 16 a head), so :class:`ShortSequenceAttnProcessor` computes them with two
batched matrix products and a softmax in float32 instead; other calls (masks, norms, long
sequences) go to the processor it replaced. :class:`PackedSequenceAttnProcessor` keeps a
fused kernel but fills its tiles: the sequences of a call lie one after another in memory, so
eight 16-token sequences are one 128-token row without a copy, and FlexAttention (compiled to
one Triton kernel) attends within each 16-token block of it, skipping nothing it needs and
computing the other scores only to mask them. Measured there, compiled with the other CUDA
speed-ups: 1,528 ms a pass with matrix products, 1,447 ms packed (52.8 % of the bf16 matrix
rate); eager, 2,461 and 2,268 ms against 2,422.

Cross-attention (the ``xkv`` speed-up) has another waste: the UNet gives every frame its own
copy of its prompt's text embedding, so each cross-attention layer projects the same 77 tokens
to keys and values once per frame, 1.3 % of a ModelScope-shape pass's FLOPs (63 of 4,888
GFLOP). A :class:`ContextTable` holds each distinct embedding once and a frame's row in it;
:class:`TableCrossAttnProcessor` projects the table and gathers each frame's keys and values.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import torch

__all__ = [
    "MAX_SHORT_SEQUENCE",
    "PACKED_ROW",
    "ContextTable",
    "PackedSequenceAttnProcessor",
    "ShortSequenceAttnProcessor",
    "TableCrossAttnProcessor",
    "pack_eager",
    "packed_temporal_attention",
    "reads_context_tables",
    "short_temporal_attention",
    "table_cross_attention",
]

#: the longest sequence :class:`ShortSequenceAttnProcessor` computes itself
MAX_SHORT_SEQUENCE = 32
#: the row length :class:`PackedSequenceAttnProcessor` packs sequences into (one kernel tile)
PACKED_ROW = 128


def _projections(
    attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``attn``'s query, key and value of a call (fused projections where ``attn`` has them)."""
    fused = getattr(attn, "fused_projections", False)
    if encoder_hidden_states is None and fused:
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        return query, key, value
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    query = attn.to_q(hidden_states)
    if fused and encoder_hidden_states is not None:
        key, value = attn.to_kv(context).chunk(2, dim=-1)
    else:
        key, value = attn.to_k(context), attn.to_v(context)
    return query, key, value


def _output(attn: Any, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``attn``'s output projection, residual and rescaling of the attended values."""
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def _plain(attn: Any, context: torch.Tensor | None, mask: Any) -> bool:
    """Whether a call of ``attn`` is plain attention (no mask, no norms) that a replacement
    processor may compute itself."""
    return (
        mask is None
        and attn.spatial_norm is None
        and attn.group_norm is None
        and attn.norm_q is None
        and attn.norm_k is None
        and not (context is not None and attn.norm_cross)
    )


class _ReplacingProcessor:
    """An attention processor for the calls :meth:`covers` accepts (:meth:`compute`); the
    others go to ``fallback``, the processor it replaced."""

    fallback: Any

    def covers(
        self, attn: Any, hidden_states: torch.Tensor, context: torch.Tensor | None, mask: Any
    ) -> bool:
        raise NotImplementedError

    def compute(
        self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError

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
        return self.compute(attn, hidden_states, encoder_hidden_states)


class ShortSequenceAttnProcessor(_ReplacingProcessor):
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
            _plain(attn, context, mask)
            and hidden_states.ndim == 3
            and hidden_states.shape[1] <= self.max_len
            and (context is None or context.shape[1] <= self.max_len)
        )

    def compute(
        self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        query, key, value = _projections(attn, hidden_states, encoder_hidden_states)
        heads = attn.heads
        dim = key.shape[-1] // heads
        query, key, value = (
            t.reshape(batch, -1, heads, dim).transpose(1, 2) for t in (query, key, value)
        )
        scores = torch.matmul(query, key.transpose(-1, -2)).float() * (dim**-0.5)
        probs = scores.softmax(dim=-1).to(value.dtype)
        out = torch.matmul(probs, value).transpose(1, 2).reshape(batch, length, heads * dim)
        return _output(attn, out, hidden_states)


def _same_sequence_score(length: int) -> Any:
    """A FlexAttention ``score_mod`` that keeps the scores of a query and key of one
    ``length``-token sequence of a packed row and masks the rest."""

    def score_mod(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return torch.where(q_idx // length == kv_idx // length, score, -float("inf"))

    return score_mod


def _kernel_head_dim(dim: int) -> bool:
    """Head sizes the packed CUDA kernel is given: powers of two from 16 (what FlexAttention's
    Triton templates tile without padding; 16 is its least); others go to the replaced
    processor."""
    return dim >= 16 and dim & (dim - 1) == 0


_SCORE_MODS: dict[int, Any] = {}


#: kernel shapes FlexAttention compiles on its own for eager forward passes in one process:
#: an eager render compiles one a resolution of the UNet (four to five) for each row count of
#: its levels, so dynamo's default of eight recompiles ran out within one story and later
#: shapes fell back to FlexAttention's unfused reference (slow, and scores held in memory)
FLEX_SHAPES = 64


@functools.cache
def _compiled_flex(backend: str = "inductor") -> Any:
    """FlexAttention compiled on its own with static shapes, for eager forward passes on
    CUDA: one kernel a shape, up to :data:`FLEX_SHAPES` of them."""
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=False, backend=backend)

    def run(*args: Any, **kwargs: Any) -> Any:
        limit = max(FLEX_SHAPES, torch._dynamo.config.recompile_limit)
        with torch._dynamo.config.patch(recompile_limit=limit):
            return compiled(*args, **kwargs)

    return run


def _flex(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, length: int) -> Any:
    """FlexAttention of packed rows of ``length``-token sequences: traced into the graph
    being compiled, compiled on its own on CUDA in an eager forward (one kernel per shape),
    its unfused reference elsewhere."""
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():
        return flex_attention(query, key, value, score_mod=_same_sequence_score(length))
    if length not in _SCORE_MODS:  # one function a length: the compiled kernel's guards hold
        _SCORE_MODS[length] = _same_sequence_score(length)
    score_mod = _SCORE_MODS[length]
    if query.device.type != "cuda":
        with warnings.catch_warnings():  # the reference is what a CPU runs: no news
            warnings.filterwarnings("ignore", "flex_attention called without torch.compile")
            return flex_attention(query, key, value, score_mod=score_mod)
    return _compiled_flex()(query, key, value, score_mod=score_mod)


class PackedSequenceAttnProcessor(_ReplacingProcessor):
    """Self-attention of short sequences with several sequences packed into one
    :data:`PACKED_ROW`-token row of a fused FlexAttention kernel and masked to their own
    block: the same sums as unpacked attention (float32 accumulation, bf16 inputs), in full
    tiles. Calls it does not cover (cross-attention, masks, norms, sequences longer than half
    a row, a batch no packing divides, on CUDA a head size the kernel does not tile) go to
    ``fallback``, as do compiled graphs on a CPU (eager passes there run FlexAttention's
    unfused reference)."""

    def __init__(self, fallback: Any, row: int = PACKED_ROW, eager: bool = True) -> None:
        self.fallback = fallback
        self.row = int(row)
        #: pack in eager forward passes too (on CUDA the kernel compiles once per shape,
        #: seconds each); off, only graphs being compiled pack (:func:`pack_eager`)
        self.eager = bool(eager)

    def pack(self, batch: int, length: int) -> int:
        """How many sequences of a ``batch`` of ``length``-token ones share a row (the most
        that fit and divide the batch; 1 when none do)."""
        pack = max(1, self.row // max(1, length))
        while pack > 1 and batch % pack:
            pack -= 1
        return pack

    def covers(
        self, attn: Any, hidden_states: torch.Tensor, context: torch.Tensor | None, mask: Any
    ) -> bool:
        compiling = torch.compiler.is_compiling()
        cuda = hidden_states.device.type == "cuda"
        return (
            # eager: on a CPU FlexAttention's reference; compiled: CUDA's Triton kernel only
            # (Inductor's C++ template for a CPU does not lower it)
            (self.eager and not compiling or compiling and cuda)
            and context is None
            and _plain(attn, context, mask)
            and hidden_states.ndim == 3
            and (not cuda or _kernel_head_dim(attn.inner_dim // attn.heads))
            and self.pack(hidden_states.shape[0], hidden_states.shape[1]) > 1
        )

    def compute(
        self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        pack = self.pack(batch, length)
        query, key, value = _projections(attn, hidden_states, None)
        heads = attn.heads
        dim = key.shape[-1] // heads
        rows = batch // pack
        # (batch, length, heads·dim) → (rows, heads, pack·length, dim): a view when the
        # projection is contiguous, the packing costs no copy
        query, key, value = (
            t.reshape(rows, pack * length, heads, dim).transpose(1, 2) for t in (query, key, value)
        )
        out = _flex(query, key, value, length)
        out = out.transpose(1, 2).reshape(batch, length, heads * dim)
        return _output(attn, out, hidden_states)


def _temporal_processors(unet: torch.nn.Module, make: Any, kind: type) -> int:
    """Give every temporal attention layer of ``unet`` (its ``TransformerTemporalModel``
    blocks) the processor ``make(current)`` unless it has a ``kind`` one; returns how many."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    count = 0
    for module in unet.modules():
        if not isinstance(module, TransformerTemporalModel):
            continue
        for attn in module.modules():
            if isinstance(attn, Attention) and not isinstance(attn.processor, kind):
                attn.set_processor(make(attn.processor))
                count += 1
    return count


def short_temporal_attention(unet: torch.nn.Module, max_len: int = MAX_SHORT_SEQUENCE) -> int:
    """Give every temporal attention layer of ``unet`` a :class:`ShortSequenceAttnProcessor`
    over its current processor; returns how many layers."""
    return _temporal_processors(
        unet, lambda p: ShortSequenceAttnProcessor(p, max_len), ShortSequenceAttnProcessor
    )


def packed_temporal_attention(unet: torch.nn.Module, row: int = PACKED_ROW) -> int:
    """Give every temporal attention layer of ``unet`` a :class:`PackedSequenceAttnProcessor`
    over its current processor; returns how many layers."""
    return _temporal_processors(
        unet, lambda p: PackedSequenceAttnProcessor(p, row), PackedSequenceAttnProcessor
    )


def pack_eager(unet: torch.nn.Module, on: bool) -> int:
    """Whether ``unet``'s packed attention layers pack in eager forward passes too (a render
    that compiles its bulk keeps its short eager levels on the replaced processor, so they
    compile nothing); returns how many layers."""
    count = 0
    for module in unet.modules():
        processor = getattr(module, "processor", None)
        if isinstance(processor, PackedSequenceAttnProcessor):
            processor.eager = bool(on)
            count += 1
    return count


class ContextTable(NamedTuple):
    """Text embeddings as a table and each frame's row in it, in place of a per-frame copy.

    table: (P, S, D), each distinct embedding once; rows: (B, F) for a UNet's input (a row of
    ``table`` per frame), (B·F,) inside the UNet, in its frame order."""

    table: torch.Tensor
    rows: torch.Tensor


def _name_for_packages() -> None:
    """Give :class:`ContextTable` the name under which an AOTInductor package
    (``compile="aot"``) writes it into the structure of the call it was built for; a package
    built with one as an argument cannot be saved without it."""
    from torch.utils import _pytree

    register = getattr(_pytree, "_register_namedtuple", None)
    if register is None or ContextTable in _pytree.SUPPORTED_NODES:
        return
    register(ContextTable, serialized_type_name=f"{__name__}.ContextTable")


_name_for_packages()


class TableCrossAttnProcessor:
    """Cross-attention whose context is a :class:`ContextTable`: keys and values projected
    once per distinct embedding, then gathered for each frame (rounding only). A context given
    as a tensor goes to ``fallback``, the processor it replaced."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Any = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if not isinstance(encoder_hidden_states, ContextTable):
            return self.fallback(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        table, rows = encoder_hidden_states
        if args or not _plain(attn, table, attention_mask) or hidden_states.ndim != 3:
            raise ValueError(
                "a context table needs plain cross-attention over (batch, tokens, channels) "
                "hidden states: no mask, no norms"
            )
        if rows.shape != hidden_states.shape[:1]:
            raise ValueError(
                f"the context table's rows have shape {tuple(rows.shape)}; expected one "
                f"per item of the hidden states {tuple(hidden_states.shape)}"
            )
        query = attn.to_q(hidden_states)
        if getattr(attn, "fused_projections", False):
            key, value = attn.to_kv(table).chunk(2, dim=-1)
        else:
            key, value = attn.to_k(table), attn.to_v(table)
        key, value = key.index_select(0, rows), value.index_select(0, rows)
        batch, heads = hidden_states.shape[0], attn.heads
        dim = key.shape[-1] // heads
        query, key, value = (
            t.reshape(batch, -1, heads, dim).transpose(1, 2) for t in (query, key, value)
        )
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).reshape(batch, -1, heads * dim).to(query.dtype)
        return _output(attn, out, hidden_states)


def table_cross_attention(unet: torch.nn.Module) -> int:
    """Give every cross-attention layer of ``unet`` a :class:`TableCrossAttnProcessor` over
    its current processor unless it has one; returns how many layers it gave one."""
    from diffusers.models.attention_processor import Attention

    count = 0
    for attn in unet.modules():
        if (
            isinstance(attn, Attention)
            and attn.is_cross_attention
            and not isinstance(attn.processor, TableCrossAttnProcessor)
        ):
            processor: Any = TableCrossAttnProcessor(attn.processor)
            attn.set_processor(processor)
            count += 1
    return count


def reads_context_tables(unet: torch.nn.Module) -> bool:
    """Whether every cross-attention layer of ``unet`` takes a :class:`ContextTable` (and
    there is one)."""
    from diffusers.models.attention_processor import Attention

    layers = [m for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention]
    return bool(layers) and all(isinstance(m.processor, TableCrossAttnProcessor) for m in layers)
