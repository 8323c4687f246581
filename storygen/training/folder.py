"""The model folder a training run writes: the pipeline layout with ``sampling.json``, and the
same network exported as a plain text-to-video folder (the ModelScope layout).

The noise schedule of training and the recommended sampling live here, beside the folder they
are written into; :mod:`.unet` trains with them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

#: the noise schedule of training; samplers are built from it
NOISE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
}
#: recommended sampling, written to the folder's sampling.json (measured: see the model card);
#: a trained folder's frames per call are those it was trained with
SAMPLING: dict[str, Any] = {
    "scheduler": "dpm",
    "num_inference_steps": 12,
    "guidance_scale": 2.0,
    "fps": 8.0,
    "frames_per_call": 16,
}


def sampler(name: str = SAMPLING["scheduler"]) -> Any:
    """The inference scheduler for the training noise schedule."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "dpm":
        return DPMSolverMultistepScheduler(
            **NOISE, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"
        )
    return DDIMScheduler(
        **NOISE, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing"
    )


def save_folder(
    out: Path,
    *,
    unet: Any,
    vae: Any,
    text_encoder: Any,
    tokenizer: Any,
    frames_per_call: int = SAMPLING["frames_per_call"],
    size: int | None = None,
    fps: float = SAMPLING["fps"],
) -> None:
    """Write the model folder: the pipeline layout, UNet and autoencoder in float16 (halves the
    folder; they load as float32 unless asked otherwise), and ``sampling.json``, which
    recommends the call length, frame size and frame rate the network was trained at
    (``frames_per_call``; ``size``, by default the autoencoder's; ``fps``, by default the
    shapes renderer's, a ``curate export``'s own for a model trained on its shards:
    :func:`storygen.training.shards.export_fps`)."""
    from storygen.pipeline import StoryVideoPipeline

    pipe = StoryVideoPipeline(
        unet=copy.deepcopy(unet).half(),
        scheduler=sampler(),
        text_encoder=text_encoder.float(),
        tokenizer=tokenizer,
        vae=copy.deepcopy(vae).half(),
    )
    if size is None:
        size = int(vae.config.sample_size)
    pipe.sampling = SAMPLING | {
        "frames_per_call": frames_per_call,
        "height": size,
        "width": size,
        "fps": float(fps),
    }
    pipe.save_pretrained(str(out), max_shard_size="12MB")


def to_t2v_folder(
    src: str | Path, dst: str | Path, *, spacing: float = 1.0, progress: float = 0.5
) -> Path:
    """The same network as a plain text-to-video model in the ModelScope layout.

    The UNet loses its conditions (known frames, mask and segment progress: ``conv_in`` keeps
    the weights of the noisy sample's channels only, the progress projection goes), which is
    the network the global role trained, with nothing given; a prompt-and-progress embedding
    (which reads each frame's prompt, as a stock UNet's timestep embedding cannot) is left
    out, so a model trained with one differs from its global role by it, and so are the
    temporal attention's frame positions (a stock temporal attention has none) and the
    coordinate input channels (``conv_in`` keeps the sample's channels only). A stock
    ``UNet3DConditionModel`` has no spacing input, so the
    embedding of ``spacing`` is folded into the time embedding's bias, and so is a progress
    embedding's value at ``progress`` (mid-segment by default). The folder loads as
    ``TextToVideoSDPipeline`` saves it, and storygen runs it training-free.
    """
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    from storygen.loading import load_checked
    from storygen.models import PER_FRAME_INPUTS, spacing_embedding
    from storygen.pipeline import StoryVideoPipeline, loading_as_saved
    from storygen.settings import write_sampling_json

    with loading_as_saved():  # the masked network as saved, not its export (which this is)
        masked = load_checked(StoryVideoPipeline, src, {"torch_dtype": torch.float32})
    unet = masked.unet
    config = {
        k: v
        for k, v in unet.config.items()
        if not k.startswith("_")
        and k not in ("sample_channels", "time_cond_proj_dim", *PER_FRAME_INPUTS)
    }
    c = unet.sample_channels
    config.update(in_channels=c, out_channels=c)
    plain: Any = UNet3DConditionModel(**config)
    state = dict(unet.state_dict())
    state["conv_in.weight"] = state["conv_in.weight"][:, :c]
    cond = spacing_embedding(torch.tensor([spacing]), unet.config["time_cond_proj_dim"])
    with torch.no_grad():
        shift = unet.time_embedding.cond_proj(cond)[0]  # added to the timestep embedding
        state["time_embedding.linear_1.bias"] = (
            state["time_embedding.linear_1.bias"] + unet.time_embedding.linear_1.weight @ shift
        )
    del state["time_embedding.cond_proj.weight"]
    if unet.config.get("progress_embedding", False):  # a stock UNet takes no per-frame input
        from storygen.models import progress_embedding

        with torch.no_grad():
            at = unet.progress_proj(progress_embedding(torch.tensor([[progress]])))[0, 0]
        state["time_embedding.linear_2.bias"] = state["time_embedding.linear_2.bias"] + at
    # the plain layout leaves out what a stock UNet cannot hold: the prompt-and-progress path
    # (it reads each frame's prompt) and the temporal attention's frame positions
    for key in [
        k
        for k in state
        if k.startswith(("progress_proj.", "prompt_progress.")) or ".pos_embed.proj." in k
    ]:
        del state[key]
    plain.load_state_dict(state)
    pipe: Any = TextToVideoSDPipeline(
        unet=plain.half(),
        vae=masked.vae,
        text_encoder=masked.text_encoder,
        tokenizer=masked.tokenizer,
        scheduler=masked.scheduler,
    )
    pipe.save_pretrained(str(dst))
    if masked.sampling:
        write_sampling_json(dst, masked.sampling)
    return Path(dst)
