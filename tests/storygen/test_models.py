"""MaskedUNet3D: config round trip, per-frame prompt routing, the mask condition."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet3DConditionModel

from storygen.models import MaskedUNet3D, unet3d_forward

TINY = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock3D", "CrossAttnDownBlock3D"),
    "up_block_types": ("CrossAttnUpBlock3D", "UpBlock3D"),
    "cross_attention_dim": 16,
    "attention_head_dim": 2,
    "norm_num_groups": 4,
}


def _masked(seed: int = 0, **kw) -> MaskedUNet3D:
    torch.manual_seed(seed)
    return MaskedUNet3D(sample_channels=3, time_cond_proj_dim=8, **TINY, **kw).eval()


def _inputs(b: int = 1, f: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, f, 16, 16, generator=g)
    ctx = torch.randn(b, f, 77, 16, generator=g)
    return x, ctx


def _same_outputs(got: torch.Tensor, want: torch.Tensor) -> None:
    """Outputs of a model and its saved-and-loaded copy: the same weights, bit for bit, but a
    loaded model's tensors sit in the memory-mapped file at addresses the CPU's vector kernels
    may take another path for, so the outputs agree to float32 rounding, not always bit for bit
    (1e-6 on the machines here)."""
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_config_and_weights_round_trip(tmp_path):
    model = _masked()
    assert model.config.in_channels == 7 and model.config.out_channels == 3
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = MaskedUNet3D.from_pretrained(tmp_path).eval()
    assert loaded.config.sample_channels == 3
    assert loaded.config.time_cond_proj_dim == 8
    x, ctx = _inputs()
    known, mask = torch.randn_like(x), torch.tensor([[1.0, 0, 0, 0, 1]])
    with torch.no_grad():
        a = model(x, 10, ctx, known=known, mask=mask, spacing=torch.tensor([4.0]))
        b = loaded(x, 10, ctx, known=known, mask=mask, spacing=torch.tensor([4.0]))
    _same_outputs(b, a)


def test_channel_arguments_must_match_sample_channels():
    with pytest.raises(ValueError, match="sample_channels=3"):
        MaskedUNet3D(sample_channels=3, in_channels=4, **TINY)


def test_per_frame_forward_equals_stock_forward_for_one_prompt():
    torch.manual_seed(0)
    unet = UNet3DConditionModel(in_channels=3, out_channels=3, **TINY).eval()
    x, ctx = _inputs(b=2)
    one = ctx[:, 0]  # (B, S, D): one prompt per video
    with torch.no_grad():
        stock = unet(x, 10, one).sample
        ours = unet3d_forward(unet, x, 10, one[:, None].expand(-1, x.shape[2], -1, -1))
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [0, 2, 4])
def test_changing_one_frames_prompt_changes_that_frame_most(k):
    model = _masked()
    x, ctx = _inputs(b=2)
    changed = ctx.clone()
    changed[:, k] = torch.randn(changed[:, k].shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        a = model(x, 500, ctx)
        b = model(x, 500, changed)
    per_frame = (a - b).abs().mean(dim=(0, 1, 3, 4))  # (F,)
    assert int(per_frame.argmax()) == k
    others = torch.cat([per_frame[:k], per_frame[k + 1 :]])
    assert per_frame[k] > 2 * others.max()


def test_batch_items_keep_their_own_prompts():
    # the (b f) flattening must not mix videos: changing video 1's prompts leaves video 0 alone
    model = _masked()
    x, ctx = _inputs(b=2)
    changed = ctx.clone()
    changed[1] = torch.randn(changed[1].shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = model(x, 500, ctx)
        b = model(x, 500, changed)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])


def test_known_values_only_matter_where_the_mask_is_set():
    model = _masked()
    x, ctx = _inputs()
    known = torch.randn_like(x)
    noise = torch.randn_like(x)
    mask = torch.tensor([[1.0, 0, 0, 0, 1]])
    edited = known.clone()
    edited[:, :, 1:4] += noise[:, :, 1:4]  # change only unknown positions
    with torch.no_grad():
        a = model(x, 10, ctx, known=known, mask=mask)
        b = model(x, 10, ctx, known=edited, mask=mask)
        c = model(x, 10, ctx, known=known + noise, mask=mask)  # known positions too
        d = model(x, 10, ctx)  # no condition at all
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, d)


def test_spacing_conditions_the_output():
    model = _masked()
    x, ctx = _inputs()
    with torch.no_grad():
        a = model(x, 10, ctx, spacing=torch.tensor([1.0]))
        b = model(x, 10, ctx, spacing=torch.tensor([225.0]))
    assert not torch.allclose(a, b)


def test_wrong_embedding_shape_is_named():
    model = _masked()
    x, ctx = _inputs()
    with pytest.raises(ValueError, match="one embedding per frame"):
        model(x, 10, ctx[:, :3])


def test_prompt_progress_grows_silently_then_reads_prompt_and_progress_together(tmp_path):
    """The prompt-and-progress embedding: a grown model computes what it did; once its output
    layer is trained, the output depends on the progress, on the prompt through the pooled
    path, and on the two jointly (the change the progress makes differs between prompts); the
    training gradient reaches the pooling queries and the prompt states."""
    from storygen.models import add_prompt_progress_embedding

    model = _masked()
    grown = add_prompt_progress_embedding(model).eval()
    assert grown.config.progress_embedding and grown.config.prompt_progress_embedding
    x, ctx = _inputs()
    other = ctx.flip(-1)  # a different prompt on every frame
    mask, spacing = torch.tensor([[1.0, 0, 0, 0, 1]]), torch.tensor([4.0])
    early, late = torch.zeros(1, 5), torch.linspace(0, 1, 5)[None]
    with torch.no_grad():
        want = model(x, 10, ctx, mask=mask, spacing=spacing)
        assert torch.equal(grown(x, 10, ctx, mask=mask, spacing=spacing, progress=late), want)
        grown.prompt_progress.linear_2.weight.normal_()

        def out(c, p):
            return grown(x, 10, c, mask=mask, spacing=spacing, progress=p)

        a, b = out(ctx, early), out(ctx, late)
        c, d = out(other, early), out(other, late)
    assert not torch.allclose(a, b)
    assert not torch.allclose(b - a, d - c, atol=1e-6)
    states = ctx.clone().requires_grad_(True)
    grown.train()
    grown(x, 10, states, mask=mask, spacing=spacing, progress=late).square().mean().backward()
    assert grown.prompt_progress.query.grad.abs().sum() > 0
    assert states.grad.abs().sum() > 0
    grown.eval().save_pretrained(tmp_path)
    loaded = MaskedUNet3D.from_pretrained(tmp_path).eval()
    assert add_prompt_progress_embedding(loaded) is loaded
    with torch.no_grad():
        _same_outputs(loaded(x, 10, ctx, mask=mask, spacing=spacing, progress=late), b)


@pytest.mark.parametrize("way", ["embedding", "channel"])
def test_progress_starts_as_the_model_it_grows_from_and_then_conditions(tmp_path, way):
    from storygen.models import add_progress_channel, add_progress_embedding

    add_progress = add_progress_embedding if way == "embedding" else add_progress_channel

    model = _masked()
    grown = add_progress(model).eval()
    assert grown.has_progress and not model.has_progress
    extra = 1 if way == "channel" else 0
    assert grown.config.in_channels == model.config.in_channels + extra
    x, ctx = _inputs()
    mask, spacing = torch.tensor([[1.0, 0, 0, 0, 1]]), torch.tensor([4.0])
    early, late = torch.zeros(1, 5), torch.linspace(0, 1, 5)[None]
    with torch.no_grad():
        want = model(x, 10, ctx, mask=mask, spacing=spacing)
        assert torch.equal(grown(x, 10, ctx, mask=mask, spacing=spacing, progress=late), want)
        if way == "channel":  # as training sets it
            grown.conv_in.weight[:, -1].normal_()
        else:
            grown.progress_proj.weight.normal_()
        a = grown(x, 10, ctx, mask=mask, spacing=spacing, progress=early)
        b = grown(x, 10, ctx, mask=mask, spacing=spacing, progress=late)
    assert not torch.allclose(a, b)
    assert torch.equal(a, grown(x, 10, ctx, mask=mask, spacing=spacing))  # None reads as 0
    grown.save_pretrained(tmp_path)
    loaded = MaskedUNet3D.from_pretrained(tmp_path).eval()
    assert loaded.has_progress and add_progress(loaded) is loaded
    with torch.no_grad():
        _same_outputs(loaded(x, 10, ctx, mask=mask, spacing=spacing, progress=late), b)


def test_frame_positions_grow_silently_then_tell_the_temporal_attention_the_order(tmp_path):
    """diffusers' temporal attention sees no frame index: a video whose frames are all alike
    comes out alike over frames. The frame-position embedding starts at zero (a grown model
    computes what it did, bit for bit); trained, the same alike frames come out different by
    their place in the call, the gradient reaches it, and it round-trips."""
    from storygen.models import add_frame_position_embedding, temporal_blocks

    model = _masked()
    grown = add_frame_position_embedding(model).eval()
    assert grown.config.frame_position_embedding
    blocks = temporal_blocks(grown)
    assert blocks and all(b.pos_embed is not None for b in blocks)
    assert all(b.pos_embed is None for b in temporal_blocks(model))
    x, ctx = _inputs()
    mask, spacing = torch.tensor([[1.0, 0, 0, 0, 1]]), torch.tensor([4.0])
    with torch.no_grad():
        want = model(x, 10, ctx, mask=mask, spacing=spacing)
        assert torch.equal(grown(x, 10, ctx, mask=mask, spacing=spacing), want)
    temporal = grown.transformer_in  # one temporal attention on its own: (B·F, C, H, W) in
    alike = torch.randn(1, temporal.in_channels, 4, 4).expand(5, -1, -1, -1).contiguous()
    with torch.no_grad():
        before = temporal(alike, num_frames=5).sample
        assert torch.allclose(before, before[:1].expand_as(before), atol=1e-5)
        for block in blocks:
            block.pos_embed.proj.weight.normal_()
        after = temporal(alike, num_frames=5).sample
    assert (after[1:] - after[:1]).abs().amax() > 1e-2
    grown.train()
    grown(x, 10, ctx, mask=mask, spacing=spacing).square().mean().backward()
    assert blocks[0].pos_embed.proj.weight.grad.abs().sum() > 0
    _round_trips(grown, add_frame_position_embedding, tmp_path)


def test_coordinate_channels_grow_silently_then_tell_each_pixel_where_it_is(tmp_path):
    """Grown with the two coordinate channels (zero weights) the UNet computes what it did,
    bit for bit; once they carry weight, a level input gains an output that varies with the
    pixel's place (not one shift for the whole frame), the gradient reaches them, and they
    round-trip (and sit after the progress channel a legacy model may also gain)."""
    from storygen.models import add_coordinate_channels, add_progress_channel, coordinate_maps

    maps = coordinate_maps(3, 5, like=torch.zeros(()))
    assert maps.shape == (1, 2, 1, 3, 5)
    assert maps[0, 0, 0, :, 0].eq(-1).all() and maps[0, 0, 0, :, -1].eq(1).all()  # x
    assert maps[0, 1, 0, 0].eq(-1).all() and maps[0, 1, 0, -1].eq(1).all()  # y

    model = _masked()
    grown = add_coordinate_channels(model).eval()
    assert grown.config.coordinate_channels and not model.config.get("coordinate_channels")
    assert grown.config.in_channels == model.config.in_channels + 2
    x, ctx = _inputs()
    mask, spacing = torch.tensor([[1.0, 0, 0, 0, 1]]), torch.tensor([4.0])
    with torch.no_grad():
        want = model(x, 10, ctx, mask=mask, spacing=spacing)
        assert torch.equal(grown(x, 10, ctx, mask=mask, spacing=spacing), want)
        flat, none = torch.zeros_like(x), torch.zeros(1, 5)
        before = grown(flat, 10, ctx, mask=none, spacing=spacing)
        grown.conv_in.weight[:, -2:].normal_()
        change = grown(flat, 10, ctx, mask=none, spacing=spacing) - before
    per_pixel = change - change.mean(dim=(-2, -1), keepdim=True)
    assert per_pixel.abs().amax() > 1e-2
    grown.train()
    grown(x, 10, ctx, mask=mask, spacing=spacing).square().mean().backward()
    assert grown.conv_in.weight.grad[:, -2:].abs().sum() > 0
    loaded = _round_trips(grown, add_coordinate_channels, tmp_path)
    # a legacy progress channel goes before the coordinates, where forward puts it
    both = add_progress_channel(loaded).eval()
    with torch.no_grad():
        _same_outputs(
            both(x, 10, ctx, mask=mask, spacing=spacing, progress=torch.linspace(0, 1, 5)[None]),
            loaded(x, 10, ctx, mask=mask, spacing=spacing),
        )


def _round_trips(grown, add, folder):
    """``grown`` saves and loads with the same outputs, and ``add`` leaves the loaded model as
    it is (it has what ``add`` adds); returns the loaded model."""
    x, ctx = _inputs()
    mask, spacing = torch.tensor([[1.0, 0, 0, 0, 1]]), torch.tensor([4.0])
    grown.eval().save_pretrained(folder)
    loaded = MaskedUNet3D.from_pretrained(folder).eval()
    assert add(loaded) is loaded
    with torch.no_grad():
        _same_outputs(
            loaded(x, 10, ctx, mask=mask, spacing=spacing),
            grown(x, 10, ctx, mask=mask, spacing=spacing),
        )
    return loaded


def test_a_prompt_progress_model_reads_a_context_table_as_its_per_frame_context():
    """With ``xkv``'s table processors, a model whose prompt-and-progress embedding pools each
    frame's prompt states gets them from the table's rows: the output of the per-frame
    context."""
    from storygen.attention import ContextTable, table_cross_attention
    from storygen.models import add_prompt_progress_embedding

    grown = add_prompt_progress_embedding(_masked()).eval()
    with torch.no_grad():
        grown.prompt_progress.linear_2.weight.normal_()  # so the prompt states matter
    x, ctx = _inputs(b=2)
    table = ctx[0, :3]  # three distinct prompts
    rows = torch.tensor([[0, 0, 1, 1, 2], [2, 1, 1, 0, 0]])
    progress = torch.linspace(0, 1, 5)[None].expand(2, -1)
    spacing = torch.tensor([4.0, 2.0])
    with torch.no_grad():
        want = grown(x, 10, table[rows], spacing=spacing, progress=progress)
        assert table_cross_attention(grown) > 0
        got = grown(x, 10, ContextTable(table, rows), spacing=spacing, progress=progress)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "add",
    [
        "add_frame_position_embedding",
        "add_coordinate_channels",
        "add_prompt_progress_embedding",
        "add_progress_channel",
    ],
)
@pytest.mark.parametrize("fused", [False, True])
def test_a_grown_model_keeps_its_attention_processors_and_fused_projections(add, fused):
    """Growing keeps the attention as it runs: the speed-ups' processors, layer by layer, and
    fused projections, whose weights (what a fused model trains) are the ones carried."""
    from diffusers.models.attention_processor import Attention

    import storygen.models as models
    from storygen.attention import (
        ContextTable,
        ShortSequenceAttnProcessor,
        TableCrossAttnProcessor,
        short_temporal_attention,
        table_cross_attention,
    )

    model = _masked()
    if fused:
        model.fuse_qkv_projections()
        with torch.no_grad():  # trained after fusing: the separate projections are stale
            for module in model.modules():
                if isinstance(module, Attention):
                    joint = module.to_kv if module.is_cross_attention else module.to_qkv
                    joint.weight.mul_(1.25)
    short_temporal_attention(model)
    table_cross_attention(model)
    grown = getattr(models, add)(model).eval()
    processors = model.attn_processors
    assert grown.attn_processors.keys() == processors.keys()
    for name, processor in grown.attn_processors.items():
        assert type(processor) is type(processors[name]), name
    kinds = {type(p) for p in processors.values()}
    assert {ShortSequenceAttnProcessor, TableCrossAttnProcessor} <= kinds
    layers = {n: m for n, m in grown.named_modules() if isinstance(m, Attention)}
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            assert getattr(layers[name], "fused_projections", False) == fused, name
    x, ctx = _inputs()
    table = ContextTable(ctx[0], torch.arange(5)[None])
    spacing = torch.tensor([4.0])
    with torch.no_grad():
        for context in (ctx, table):
            torch.testing.assert_close(
                grown(x, 10, context, spacing=spacing),
                model(x, 10, context, spacing=spacing),
                rtol=0,
                atol=1e-6,
            )
