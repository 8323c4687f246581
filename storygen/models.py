"""Models: a mask-conditioned 3D UNet and per-frame text conditioning for any 3D UNet.

:class:`MaskedUNet3D` is diffusers' :class:`~diffusers.UNet3DConditionModel` (the ModelScope
text-to-video UNet) whose input carries the condition video as extra channels, as inpainting
UNets do: ``[noisy frames (C), known frames (C, zero where unknown), mask (1)]``, so
``in_channels = 2C + 1`` and ``out_channels = C``. Each frame's progress through its prompt's
segment (0 at the segment's first frame, 1 at its last) tells a keyframe drawn seconds from
its neighbours where along the prompted motion it stands: with ``progress_embedding`` its
sinusoidal embedding, projected, is added to that frame's timestep embedding, so it
modulates every residual block of that frame (``progress_channel``, an extra constant input
channel, is the earlier and weaker way: a model trained with it for 882 steps left its weights
at 1 % of the other channels'). ``prompt_progress_embedding`` adds a
:class:`PromptProgressEmbedding` of each frame's prompt and progress read together (which way a
prompted motion goes and how far along it a frame is). ``frame_position_embedding`` gives the
temporal attention, which in diffusers' 3D UNet sees no frame index, each frame's place in its
call (:class:`FramePositionEmbedding`). With an all-zero mask it is the global model; with the
first and last frame known it is NUWA-XL's local model. Its config (constructor
kwargs) round-trips through ``save_pretrained`` / ``from_pretrained`` as JSON beside safetensors.

Per-frame prompts: ``UNet3DConditionModel.forward`` takes one prompt per video and repeats it
over frames. :func:`unet3d_forward` is the same computation with one prompt embedding per
frame, ``encoder_hidden_states`` of shape (B, F, S, D) flattened to (B·F, S, D) in the order the
UNet flattens frames (``(b f)``), so frame k cross-attends to its own prompt. It works for a
stock ``UNet3DConditionModel`` too, which is how the training-free mode conditions an
off-the-shelf ModelScope checkpoint on a prompt per frame.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_3d_condition import UNet3DConditionModel
from einops import rearrange

from storygen.attention import ContextTable

# diffusers' pipeline loader resolves a saved component ["storygen.models", "MaskedUNet3D"] by
# looking up its base classes (ModelMixin) in this module: keep ModelMixin importable here
__all__ = [
    "FramePositionEmbedding",
    "MaskedUNet3D",
    "PER_FRAME_INPUTS",
    "ModelMixin",
    "PromptProgressEmbedding",
    "add_coordinate_channels",
    "add_frame_position_embedding",
    "add_progress_channel",
    "add_progress_embedding",
    "add_prompt_progress_embedding",
    "coordinate_maps",
    "progress_embedding",
    "spacing_embedding",
    "unet3d_forward",
]


#: the config flags of the per-frame inputs a stock ``UNet3DConditionModel`` has no place for
PER_FRAME_INPUTS = (
    "progress_channel",
    "progress_embedding",
    "prompt_progress_embedding",
    "frame_position_embedding",
    "coordinate_channels",
)


def spacing_embedding(spacing: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of log2 of the frame spacing of a call: (B,) -> (B, dim).

    The same network serves every level; the spacing tells it whether it is drawing keyframes
    seconds apart (global level) or filling adjacent frames (last local level).
    """
    half = dim // 2
    x = torch.log2(spacing.float().clamp(min=1.0))[:, None]
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=x.device) / max(half, 1))
    args = x * freqs[None] * 8.0
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


#: width of the sinusoidal embedding of a frame's segment progress
PROGRESS_DIM = 32


def progress_embedding(progress: torch.Tensor, dim: int = PROGRESS_DIM) -> torch.Tensor:
    """Sinusoidal embedding of each frame's progress through its segment, 0 to 1:
    (B, F) -> (B, F, dim), frequencies from 1/2 to 2^(dim/2 - 2) turns over the segment."""
    half = dim // 2
    freqs = math.pi * 2.0 ** torch.arange(-1, half - 1, device=progress.device, dtype=torch.float32)
    args = progress.float()[..., None] * freqs
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class PromptProgressEmbedding(torch.nn.Module):
    """Each frame's prompt read together with its segment progress, as an addition to the
    frame's timestep embedding: ``heads`` learnt queries attention-pool the frame's prompt
    states (so the network can single out the tokens that name a motion, which cross-attention
    to all 77 states dilutes), then a two-layer MLP of ``[pooled prompt, progress embedding]``
    (its last layer zero at start: a model grown with it computes what it did before).
    Where a prompted motion puts the shape depends on both at once, which a sum of a
    prompt-free progress term and per-token cross-attention expresses poorly."""

    def __init__(self, text_dim: int, out_dim: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.query = torch.nn.Parameter(torch.randn(heads, text_dim) * text_dim**-0.5)
        self.linear_1 = torch.nn.Linear(heads * text_dim + PROGRESS_DIM, out_dim)
        self.linear_2 = torch.nn.Linear(out_dim, out_dim)
        torch.nn.init.zeros_(self.linear_2.weight)
        torch.nn.init.zeros_(self.linear_2.bias)

    def forward(self, states: torch.Tensor, progress: torch.Tensor) -> torch.Tensor:
        """states: (B, F, S, D) per-frame prompt states; progress: (B, F) -> (B, F, out_dim)."""
        states = states.to(self.query.dtype)
        scores = torch.einsum("bfsd,hd->bfhs", states, self.query) * states.shape[-1] ** -0.5
        pooled = torch.einsum("bfhs,bfsd->bfhd", scores.softmax(dim=-1), states).flatten(2)
        p = progress_embedding(progress, PROGRESS_DIM).to(pooled.dtype)
        hidden = torch.nn.functional.silu(self.linear_1(torch.cat([pooled, p], dim=-1)))
        return self.linear_2(hidden)


#: width of the sinusoidal embedding of a frame's index within its call
FRAME_POSITION_DIM = 32


def frame_index_embedding(
    frames: int, device: Any = None, dim: int = FRAME_POSITION_DIM
) -> torch.Tensor:
    """Sinusoidal embedding of the frame indices 0..frames-1 of a call: (frames, dim), periods
    from 2 to about 200 frames."""
    half = dim // 2
    pos = torch.arange(frames, device=device, dtype=torch.float32)[:, None]
    freqs = torch.exp(-math.log(100.0) * torch.arange(half, device=device) / max(half, 1))
    args = pos * freqs[None] * math.pi
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class FramePositionEmbedding(torch.nn.Module):
    """Which frame of its call a token belongs to, for a temporal attention block: diffusers'
    3D UNet attends over frames with no position (only its 3-tap temporal convolutions know
    which frame comes first). A projection of :func:`frame_index_embedding`, zero at start,
    is added to the block's normalised input, ``(N, F, C)`` (diffusers' ``pos_embed`` hook)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(FRAME_POSITION_DIM, dim)
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = frame_index_embedding(x.shape[1], x.device).to(self.proj.weight.dtype)
        return x + self.proj(emb).to(x.dtype)[None]


def temporal_blocks(unet: torch.nn.Module) -> list[Any]:
    """The transformer blocks of ``unet``'s temporal attention (``transformer_in`` and every
    ``temp_attentions``)."""
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    return [
        block
        for module in unet.modules()
        if isinstance(module, TransformerTemporalModel)
        for block in module.transformer_blocks
    ]


def unet3d_forward(
    unet: UNet3DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor | float | int,
    encoder_hidden_states: torch.Tensor | ContextTable,
    *,
    timestep_cond: torch.Tensor | None = None,
    frame_emb: torch.Tensor | None = None,
) -> torch.Tensor:
    """``UNet3DConditionModel.forward`` with a prompt embedding per frame.

    sample: (B, C, F, H, W); encoder_hidden_states: (B, F, S, D) per frame, (B, S, D) for
    one prompt per video (then identical to ``unet(...)``), or a :class:`ContextTable` with
    (B, F) rows, for a UNet whose cross-attention layers read one (the ``xkv`` speed-up);
    frame_emb: (B, F, D_time) added to each frame's timestep embedding. Returns
    (B, C_out, F, H, W).
    """
    batch, _, num_frames = sample.shape[:3]
    if isinstance(encoder_hidden_states, ContextTable):
        table, rows = encoder_hidden_states
        if tuple(rows.shape) != (batch, num_frames):
            raise ValueError(
                f"the context table's rows have shape {tuple(rows.shape)}; expected "
                f"({batch}, {num_frames}): a table row for each frame of sample "
                f"{tuple(sample.shape)}"
            )
        context: Any = ContextTable(table.to(dtype=unet.dtype), rows.reshape(-1))
    else:
        if encoder_hidden_states.ndim == 3:
            encoder_hidden_states = encoder_hidden_states[:, None].expand(-1, num_frames, -1, -1)
        if encoder_hidden_states.shape[:2] != (batch, num_frames):
            raise ValueError(
                f"encoder_hidden_states has shape {tuple(encoder_hidden_states.shape)}; "
                f"expected ({batch}, {num_frames}, S, D): one embedding per frame of sample "
                f"{tuple(sample.shape)}"
            )
        # the one change: frames keep their own prompt, in the UNet's (b f) frame order
        context = rearrange(encoder_hidden_states, "b f s d -> (b f) s d").to(dtype=unet.dtype)
    up_factor = 2**unet.num_upsamplers
    forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])
    upsample_size = None

    # 1. time, one embedding per video repeated over its frames, as the UNet does
    timesteps = timestep
    if not torch.is_tensor(timesteps):
        timesteps = torch.tensor([timesteps], dtype=torch.float32, device=sample.device)
    elif timesteps.ndim == 0:
        timesteps = timesteps[None].to(sample.device)
    timesteps = timesteps.expand(batch)
    t_emb = unet.time_proj(timesteps).to(dtype=unet.dtype)
    if timestep_cond is not None:
        timestep_cond = timestep_cond.to(dtype=unet.dtype)
    emb = unet.time_embedding(t_emb, timestep_cond)
    emb = emb.repeat_interleave(num_frames, dim=0, output_size=batch * num_frames)
    if frame_emb is not None:
        emb = emb + rearrange(frame_emb, "b f d -> (b f) d").to(emb.dtype)

    # 2. pre-process
    x = rearrange(sample, "b c f h w -> (b f) c h w")
    x = unet.conv_in(x)
    x = unet.transformer_in(x, num_frames=num_frames, return_dict=False)[0]

    # 3. down
    residuals: tuple[torch.Tensor, ...] = (x,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            x, res = block(
                hidden_states=x, temb=emb, encoder_hidden_states=context, num_frames=num_frames
            )
        else:
            x, res = block(hidden_states=x, temb=emb, num_frames=num_frames)
        residuals += res

    # 4. mid
    if unet.mid_block is not None:
        x = unet.mid_block(x, emb, encoder_hidden_states=context, num_frames=num_frames)

    # 5. up
    for i, block in enumerate(unet.up_blocks):
        n_res = len(block.resnets)  # type: ignore[arg-type]
        res = residuals[-n_res:]
        residuals = residuals[:-n_res]
        if i < len(unet.up_blocks) - 1 and forward_upsample_size:
            upsample_size = residuals[-1].shape[2:]
        if getattr(block, "has_cross_attention", False):
            x = block(
                hidden_states=x,
                temb=emb,
                res_hidden_states_tuple=res,
                encoder_hidden_states=context,
                upsample_size=upsample_size,
                num_frames=num_frames,
            )
        else:
            x = block(
                hidden_states=x,
                temb=emb,
                res_hidden_states_tuple=res,
                upsample_size=upsample_size,
                num_frames=num_frames,
            )

    # 6. post-process
    if unet.conv_norm_out is not None:
        x = unet.conv_act(unet.conv_norm_out(x))
    x = unet.conv_out(x)
    return rearrange(x, "(b f) c h w -> b c f h w", b=batch)


class MaskedUNet3D(UNet3DConditionModel):
    """A 3D UNet conditioned on known frames and a per-frame mask (NUWA-XL's local model).

    ``sample_channels`` is C, the channels of a frame in model space (3 for pixels, 4 for SD
    latents). ``time_cond_proj_dim``, when set, adds the embedding of the call's frame spacing
    to the timestep embedding, so one network serves every level of the plan.
    ``progress_embedding`` adds each frame's segment progress to its timestep embedding
    (:func:`progress_embedding`, then ``progress_proj``); ``progress_channel`` feeds it as an
    input channel instead (kept for models trained that way). ``coordinate_channels`` adds
    two input channels holding each latent pixel's x and y (-1 to 1), as CoordConv does:
    convolutions and attention over content know where a pixel is only through the zero
    padding at the frame's edges, so from pure noise the network can hardly say *where* a
    shape should stand at a given point of its segment (left of centre early in "moving
    right"); the coordinates tell it.
    """

    @register_to_config
    def __init__(
        self,
        sample_channels: int = 4,
        sample_size: int | None = None,
        in_channels: int | None = None,
        out_channels: int | None = None,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "DownBlock3D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: int | tuple[int] = 64,
        num_attention_heads: int | tuple[int] | None = None,
        time_cond_proj_dim: int | None = None,
        progress_channel: bool = False,
        progress_embedding: bool = False,
        prompt_progress_embedding: bool = False,
        frame_position_embedding: bool = False,
        coordinate_channels: bool = False,
    ):
        if sample_channels < 1:
            raise ValueError(f"sample_channels must be >= 1, got {sample_channels!r}")
        expected_in = 2 * sample_channels + 1 + int(progress_channel) + 2 * int(coordinate_channels)
        expected_out = sample_channels
        if in_channels not in (None, expected_in) or out_channels not in (None, expected_out):
            raise ValueError(
                f"in_channels={in_channels!r} / out_channels={out_channels!r} do not match "
                f"sample_channels={sample_channels!r} (expected {expected_in} / {expected_out})"
            )
        super().__init__(
            sample_size=sample_size,
            in_channels=expected_in,
            out_channels=expected_out,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            time_cond_proj_dim=time_cond_proj_dim,
        )
        if progress_embedding:
            self.progress_proj = torch.nn.Linear(PROGRESS_DIM, block_out_channels[0] * 4)
            torch.nn.init.zeros_(self.progress_proj.weight)
            torch.nn.init.zeros_(self.progress_proj.bias)
        if prompt_progress_embedding:
            self.prompt_progress = PromptProgressEmbedding(
                cross_attention_dim, block_out_channels[0] * 4
            )
        if frame_position_embedding:
            for block in temporal_blocks(self):
                block.pos_embed = FramePositionEmbedding(block.norm1.normalized_shape[0])

    @property
    def sample_channels(self) -> int:
        return int(self.config["sample_channels"])

    @property
    def has_progress(self) -> bool:
        """Whether the model reads each frame's segment progress (either way)."""
        return bool(
            self.config.get("progress_channel", False)
            or self.config.get("progress_embedding", False)
            or self.config.get("prompt_progress_embedding", False)
        )

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | ContextTable,
        known: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        spacing: torch.Tensor | None = None,
        progress: torch.Tensor | None = None,
        return_dict: bool = False,
    ) -> torch.Tensor:
        """Predict noise (or v) for ``sample`` given the known frames.

        sample, known: (B, C, F, H, W); mask: (B, F) with 1 where a frame is known (known is
        multiplied by it, so its values at unknown frames never matter); spacing: (B,) frames
        of the final video between adjacent frames of the call; progress: (B, F) each frame's
        place in its prompt's segment, 0 to 1 (a model without ``progress_channel`` ignores
        it; None is read as 0); encoder_hidden_states: (B, F, S, D) or (B, S, D).
        """
        b, c, f, h, w = sample.shape
        if c != self.sample_channels:
            raise ValueError(f"sample has {c} channels, the model takes {self.sample_channels}")
        if mask is None:
            mask = sample.new_zeros(b, f)
        mask = mask.to(sample.dtype)
        known = sample.new_zeros(sample.shape) if known is None else known.to(sample.dtype)
        mask_map = mask[:, None, :, None, None].expand(b, 1, f, h, w)
        parts = [sample, known * mask_map, mask_map]
        p = sample.new_zeros(b, f) if progress is None else progress.to(sample.device)
        if self.config.get("progress_channel", False):
            parts.append(p.to(sample.dtype)[:, None, :, None, None].expand(b, 1, f, h, w))
        if self.config.get("coordinate_channels", False):
            parts.append(coordinate_maps(h, w, like=sample).expand(b, 2, f, h, w))
        x = torch.cat(parts, dim=1)
        cond = None
        if self.config["time_cond_proj_dim"] is not None:
            if spacing is None:
                spacing = sample.new_ones(b)
            cond = spacing_embedding(spacing.to(sample.device), self.config["time_cond_proj_dim"])
        frame_emb = None
        if self.config.get("progress_embedding", False):
            weight = self.progress_proj.weight
            frame_emb = self.progress_proj(progress_embedding(p, PROGRESS_DIM).to(weight.dtype))
        if self.config.get("prompt_progress_embedding", False):
            states = encoder_hidden_states
            if isinstance(states, ContextTable):  # each frame's embedding, from the table
                states = states.table[states.rows]
            if states.ndim == 3:
                states = states[:, None].expand(-1, f, -1, -1)
            extra = self.prompt_progress(states, p)
            frame_emb = extra if frame_emb is None else frame_emb + extra
        return unet3d_forward(
            self, x, timestep, encoder_hidden_states, timestep_cond=cond, frame_emb=frame_emb
        )


def _unfused_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``unet``'s weights as a model without fused projections holds them: an attention layer's
    fused ``to_qkv`` (``to_kv``), which is what it computes with (and what training moves),
    split back into ``to_q``, ``to_k`` and ``to_v``."""
    from diffusers.models.attention_processor import Attention

    state = dict(unet.state_dict())
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        prefix = f"{name}." if name else ""
        fused = getattr(module, "fused_projections", False)
        for joint, parts in (("to_qkv", ("to_q", "to_k", "to_v")), ("to_kv", ("to_k", "to_v"))):
            sizes = [getattr(module, part).out_features for part in parts]
            for kind in ("weight", "bias"):
                value = state.pop(f"{prefix}{joint}.{kind}", None)
                if value is not None and fused:
                    for part, piece in zip(parts, value.split(sizes)):
                        state[f"{prefix}{part}.{kind}"] = piece
    return state


def _carry_attention(unet: torch.nn.Module, grown: torch.nn.Module) -> None:
    """Give ``grown`` the attention of ``unet`` as it runs, layer by layer where their names
    match: the fused projections where ``unet`` fused them, and copies of its processors
    (``tattn``, ``pattn``, ``xkv``, a fused processor) and of the ones its fusion replaced."""
    from diffusers.models.attention_processor import Attention

    source = {name: m for name, m in unet.named_modules() if isinstance(m, Attention)}
    processors = copy.deepcopy({name: m.processor for name, m in source.items()})
    for name, module in grown.named_modules():
        if isinstance(module, Attention) and name in source:
            if getattr(source[name], "fused_projections", False):
                module.fuse_projections(fuse=True)
            module.set_processor(processors[name])
    original = getattr(unet, "original_attn_processors", None)
    if original is not None:  # what unfuse_qkv_projections puts back
        grown.original_attn_processors = copy.deepcopy(original)


def _grow(unet: MaskedUNet3D, flag: str, is_new: Callable[[str], bool]) -> MaskedUNet3D:
    """A copy of ``unet`` with the config ``flag`` set: every weight copied (fused projections
    too), the new modules' (the weights whose names ``is_new`` accepts) as they initialise
    them, and the attention processors carried over. ``unet`` itself when the flag is set."""
    if unet.config.get(flag, False):
        return unet
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    config[flag] = True
    grown = MaskedUNet3D(**config)
    missing, unexpected = grown.load_state_dict(_unfused_state(unet), strict=False)
    if unexpected or not missing or not all(is_new(k) for k in missing):
        raise ValueError(f"cannot grow the UNet: missing {missing}, unexpected {unexpected}")
    _carry_attention(unet, grown)
    grown = grown.to(unet.device)
    return grown if grown.dtype == unet.dtype else grown.to(unet.dtype)


def add_progress_embedding(unet: MaskedUNet3D) -> MaskedUNet3D:
    """A copy of ``unet`` that reads each frame's segment progress through its timestep
    embedding (``progress_proj`` all zero): it computes exactly what ``unet`` computes until
    training teaches it to use the progress (a model trained without it continues with
    ``storygen train --init``)."""
    return _grow(unet, "progress_embedding", lambda k: k.startswith("progress_proj."))


def add_prompt_progress_embedding(unet: MaskedUNet3D) -> MaskedUNet3D:
    """A copy of ``unet`` (grown with :func:`add_progress_embedding` first if it needs to be)
    that also reads each frame's prompt with its progress (:class:`PromptProgressEmbedding`,
    its output layer all zero): it computes exactly what ``unet`` computes until training
    teaches it to use them."""
    return _grow(
        add_progress_embedding(unet),
        "prompt_progress_embedding",
        lambda k: k.startswith("prompt_progress."),
    )


def add_frame_position_embedding(unet: MaskedUNet3D) -> MaskedUNet3D:
    """A copy of ``unet`` whose temporal attention blocks know each frame's index in its call
    (:class:`FramePositionEmbedding`, all zero): it computes exactly what ``unet`` computes
    until training teaches it to use the order."""
    return _grow(unet, "frame_position_embedding", lambda k: ".pos_embed.proj." in k)


def coordinate_maps(h: int, w: int, *, like: torch.Tensor) -> torch.Tensor:
    """(1, 2, 1, h, w): each pixel's x then y, -1 at the left / top edge's pixel centre to 1
    at the right / bottom one (the same maps at every frame and every size of latent)."""
    ys = torch.linspace(-1.0, 1.0, h, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=like.device, dtype=like.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])[None, :, None]


def add_coordinate_channels(unet: MaskedUNet3D) -> MaskedUNet3D:
    """A copy of ``unet`` with the two coordinate input channels (``conv_in``'s weights for
    them zero): it computes exactly what ``unet`` computes until training teaches it to use
    where each pixel is."""
    return _grow_inputs(unet, "coordinate_channels", at=int(unet.config["in_channels"]), count=2)


def _grow_inputs(unet: MaskedUNet3D, flag: str, *, at: int, count: int) -> MaskedUNet3D:
    """A copy of ``unet`` with the config ``flag`` set and ``count`` input channels more,
    inserted at ``conv_in`` channel ``at`` with zero weights (the same outputs), its attention
    as :func:`_grow` carries it; ``unet`` itself when the flag is set."""
    if unet.config.get(flag, False):
        return unet
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    config.update({flag: True, "in_channels": None})
    grown = MaskedUNet3D(**config)
    state = _unfused_state(unet)
    w = state["conv_in.weight"]
    zeros = w.new_zeros(w.shape[0], count, *w.shape[2:])
    state["conv_in.weight"] = torch.cat([w[:, :at], zeros, w[:, at:]], dim=1)
    grown.load_state_dict(state)
    _carry_attention(unet, grown)
    grown = grown.to(unet.device)
    return grown if grown.dtype == unet.dtype else grown.to(unet.dtype)


def add_progress_channel(unet: MaskedUNet3D) -> MaskedUNet3D:
    """A copy of ``unet`` with the progress input channel, its weights zero (the earlier,
    weaker way to give the progress; :func:`add_progress_embedding` is the one training
    uses)."""
    return _grow_inputs(unet, "progress_channel", at=2 * unet.sample_channels + 1, count=1)
