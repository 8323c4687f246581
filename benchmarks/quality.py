"""Curation quality on a held-out shapes-world corpus, and CLIP scoring throughput.

Measures, with the shipped shapes-world CLIP (``models/shapes-clip``):

- noisy-caption detection: AUROC of the caption score, per clip and per video, and precision /
  recall of the filter at the model's recommended threshold;
- re-captioning: do the prompts of the stories name each scene's true colour, shape and
  motion (and background)? Once with the corpus' own prompt bank (its kept captions), once
  with a user-supplied bank (every caption of the shapes-world grammar), with the ceiling
  each bank allows;
- dedup: precision and recall of the planted duplicate videos, clip by clip;
- throughput: frames/s of CLIP image embedding with the shipped model and with a real-size
  ViT-B/32 CLIP (random weights), on the chosen device.

The corpus is generated from a seed the CLIP training never saw. Scenes come from the ground
truth by default (``--scenes splitter`` runs the real scene splitter instead).

    python benchmarks/quality.py                       # everything, CPU
    python benchmarks/quality.py --device cuda --real-size-only --dtype bfloat16

Prints a table and writes ``benchmarks/results/quality.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"

logger = logging.getLogger("benchmarks.quality")

CORPUS_SETTINGS: dict[str, Any] = {
    "videos": 80,
    "seed": 2027,
    "noise_rate": 0.3,
    "duplicate_rate": 0.15,
    "transition_rate": 0.3,
    "resolutions": ["284x160", "320x240", "640x360"],
    "progress": False,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--corpus-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "storyloom-quality-corpus",
        help="where the held-out corpus is generated (reused when present)",
    )
    p.add_argument("--videos", type=int, default=CORPUS_SETTINGS["videos"])
    p.add_argument("--seed", type=int, default=CORPUS_SETTINGS["seed"], help="corpus seed")
    p.add_argument("--model", default=None, help="CLIP folder (default: the shipped one)")
    p.add_argument(
        "--captioner",
        default=None,
        help="BLIP-class captioner folder for the captioner re-caption run (default: the "
        "shipped one; none skips the run)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--k", type=int, default=4, help="frames sampled per scene")
    p.add_argument(
        "--scenes",
        default="truth",
        choices=("truth", "splitter"),
        help="scenes from ground truth or from the scene splitter",
    )
    p.add_argument(
        "--real-size-only",
        action="store_true",
        help="only the throughput of a real-size (ViT-B/32) CLIP",
    )
    p.add_argument("--skip-real-size", action="store_true", help="skip the ViT-B/32 throughput")
    p.add_argument("--throughput-frames", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--clip-variants",
        default="eager,compiled,fp8,fp8-mlp",
        help="CUDA: the ViT-L/14 variants timed (eager, compiled, fp8 = compiled + float8 "
        "linear layers, fp8-mlp = compiled + float8 in the encoder layers' MLPs only)",
    )
    p.add_argument("--caption-scenes", type=int, default=1024, help="CUDA: scenes captioned")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.real_size_only and args.skip_real_size:
        p.error("--real-size-only and --skip-real-size leave nothing to measure: choose one")
    return args


# --- corpus and clips ---------------------------------------------------------------------------


def load_corpus(args: argparse.Namespace):
    from curate.shapes import GroundTruth, generate_corpus

    settings = {**CORPUS_SETTINGS, "videos": args.videos, "seed": args.seed}
    gt_file = args.corpus_dir / "ground_truth.json"
    if gt_file.exists():
        gt = GroundTruth.load(gt_file)
        if gt.seed == args.seed and len(gt) == args.videos:
            return gt
    logger.info("generating the held-out corpus (%s videos, seed %s)", args.videos, args.seed)
    generate_corpus(args.corpus_dir, **settings)
    return GroundTruth.load(gt_file)


def truth_clips(v) -> list[dict]:
    from curate.captions import clean_caption

    cap = clean_caption(v.source_caption)
    return [
        {
            "clip_id": f"{v.video_id}:{i:04d}",
            "video_id": v.video_id,
            "scene_index": i,
            "uri": str(v.path),
            "start_frame": s.start_frame,
            "end_frame": s.end_frame,
            "start_s": s.start_frame / v.fps,
            "end_s": s.end_frame / v.fps,
            "fps": v.fps,
            "width": v.width,
            "height": v.height,
            "transition": s.transition_in,
            "source_caption": cap.text or None,
            "status": "dropped" if not cap.ok else "kept",
            "reason": cap.reason,
        }
        for i, s in enumerate(v.scenes)
    ]


def scene_truth_for(v, clip: dict):
    """The ground-truth scene covering most of a (possibly detected) clip."""
    best, overlap = None, -1
    for s in v.scenes:
        o = min(s.end_frame, clip["end_frame"]) - max(s.start_frame, clip["start_frame"])
        if o > overlap:
            best, overlap = s, o
    return best


def names_scene(caption: str | None, s) -> bool:
    """Whether a caption names the scene's colour and shape (what a caption must get right)."""
    if not caption:
        return False
    return re.search(rf"\b{s.color}\s+{s.shape}\b", caption, re.IGNORECASE) is not None


# --- metrics -----------------------------------------------------------------------------------


def prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return {
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r) if p + r else 0.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def throughput(
    model: str,
    *,
    device: str,
    dtype: str,
    frames: int,
    batch: int,
    size: tuple[int, int] | None,
    threads: int | None,
) -> dict[str, float]:
    """Frames/s of ``embed_images`` on random frames (``size`` ``None``: the model's input)."""
    from curate.clip_score import ClipScorer

    rng = np.random.default_rng(0)
    with ClipScorer(
        model=model, device=device, dtype=dtype, batch_size=batch, num_threads=threads
    ) as s:
        size = size or s.input_size
        x = rng.integers(0, 256, (frames, *size, 3), dtype=np.uint8)
        s.embed_images(x[: min(batch, frames)])  # warm-up
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        t = time.perf_counter()
        s.embed_images(x)
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        params = sum(p.numel() for p in s._model.parameters())
    return {
        "frames": frames,
        "seconds": dt,
        "frames_per_s": frames / dt,
        "parameters": params,
        "input": list(size),
        "batch_size": batch,
    }


#: OpenAI's ``clip-vit-large-patch14`` shape: 24 vision layers of width 1,024 at 224 px, a
#: 12-layer text tower of width 768
VIT_L14 = {
    "text_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
    },
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "image_size": 224,
    },
    "projection_dim": 768,
}


def real_size_clip(folder: Path, shape: dict[str, Any] | None = None) -> Path:
    """A CLIP with random weights, saved to ``folder``: transformers' default config (ViT-B/32),
    or ``shape`` (e.g. :data:`VIT_L14`: text and vision configs, projection width)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from curate.training.clip import save_clip_folder
    from curate.training.tokenizer import train_clip_tokenizer

    if (folder / "model.safetensors").exists():
        return folder
    torch.manual_seed(0)
    tok = train_clip_tokenizer(["a photo of a cat"], vocab_size=512)
    shape = shape or {}
    text = {
        **shape.get("text_config", {}),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    extra = {k: v for k, v in shape.items() if k != "text_config"}
    cfg = CLIPConfig(text_config=text, **extra)
    save_clip_folder(CLIPModel(cfg).eval(), tok, folder, squash=False)
    return folder


def clip_speed(
    folder: str, *, device: str, frames: int, variants: list[str], batch: int | None
) -> dict[str, Any]:
    """``ClipScorer.embed_images`` (frames preprocessed on the device included) per variant
    ("eager", "compiled", "fp8": compiled with float8 linear layers, "fp8-mlp": float8 in
    the MLPs only), bf16 on CUDA: frames/s,
    FLOPs per frame (PyTorch's counter), the share of the chip's measured bf16 matrix rate,
    warm-up (the compile), peak memory, the model alone (preprocessed batches), and the
    cosine of each variant's embeddings with the eager ones (eager runs first, and where it
    is not among ``variants`` embeds the frames for that alone)."""
    import torch

    from benchmarks.flop_count import flop_counter
    from benchmarks.gpu_rate import matmul_rate
    from curate.clip_score import ClipScorer

    cuda = device.startswith("cuda")
    dtype = "bfloat16" if cuda else "float32"
    peak = matmul_rate(device, torch.bfloat16) if cuda else None
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (frames, 224, 224, 3), dtype=np.uint8)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out: dict[str, Any] = {
        "frames": frames,
        "matmul_peak_tflops_per_s": peak / 1e12 if peak else None,
    }
    reference = None
    flops = None
    if "eager" not in variants:  # the embeddings the others are compared with
        with ClipScorer(
            model=folder, device=device, dtype=dtype, batch_size=batch, compile="off", fp8="off"
        ) as scorer:
            reference = scorer.embed_images(x)
    for variant in sorted(variants, key=lambda v: v != "eager"):
        scorer = ClipScorer(
            model=folder,
            device=device,
            dtype=dtype,
            batch_size=batch,
            compile="on" if variant in ("compiled", "fp8", "fp8-mlp") and cuda else "off",
            fp8={"fp8": "all", "fp8-mlp": "mlp"}.get(variant, "off"),
        )
        scorer.setup()
        if flops is None:
            one = scorer.preprocess(x[:1])
            with torch.inference_mode(), flop_counter(display=False) as counter:
                scorer._model.get_image_features(pixel_values=one)
            flops = counter.get_total_flops()
            out["flops_per_frame"] = flops
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        scorer.embed_images(x[: scorer.batch_size])  # warm-up: kernels, the compile
        sync()
        warm = time.perf_counter() - t
        t = time.perf_counter()
        emb = scorer.embed_images(x)
        sync()
        dt = time.perf_counter() - t
        # the model alone, on batches already preprocessed on the device
        pixels = scorer.preprocess(x[: scorer.batch_size])
        reps = max(1, frames // scorer.batch_size)
        with torch.inference_mode():
            scorer.image_features(pixels)
            sync()
            t = time.perf_counter()
            for _ in range(reps):
                scorer.image_features(pixels)
            sync()
        model_dt = (time.perf_counter() - t) / (reps * scorer.batch_size)
        if variant == "eager":
            reference = emb
        cos = (emb * reference).sum(axis=1)
        rate = frames / dt
        out[variant] = {
            "frames_per_s": rate,
            "model_frames_per_s": 1 / model_dt,
            "tflops_per_s": rate * flops / 1e12,
            "utilisation_of_matmul_peak": rate * flops / peak if peak else None,
            "model_utilisation_of_matmul_peak": flops / model_dt / peak if peak else None,
            "warmup_s": warm,
            "batch_size": scorer.batch_size,
            "peak_cuda_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
            "cosine_vs_eager_min": float(cos.min()),
            "cosine_vs_eager_mean": float(cos.mean()),
            "parameters": sum(p.numel() for p in scorer._model.parameters()),
        }
        scorer.teardown()
        del scorer
        if cuda:
            torch.cuda.empty_cache()
    return out


def captioner_throughput(
    folder: str,
    *,
    device: str,
    scenes: int,
    batch: int | None,
    max_new_tokens: int = 30,
    compile: str = "off",
) -> dict[str, Any]:
    """Scenes/s of ``Captioner.caption_scenes`` (storyboard or middle frame, resize and
    normalisation on the device, then greedy decoding) on random 4-frame scenes at the
    pipeline's sample size; bf16 on CUDA; ``compile="on"`` compiles the image tower (its
    warm-up reported as ``warmup_s``)."""
    from curate.captioner import Captioner

    rng = np.random.default_rng(0)
    cap = Captioner(
        folder, device=device, batch_size=batch, max_new_tokens=max_new_tokens, compile=compile
    )
    cap.setup()
    x = [rng.integers(0, 256, (4, 224, 298, 3), dtype=np.uint8) for _ in range(scenes)]
    t = time.perf_counter()
    cap.caption_scenes(x[: min(cap.batch_size, scenes)])  # warm-up (and the compile)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    texts = cap.caption_scenes(x)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    tokens = [
        len(cap._processor.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts
    ]
    return {
        "scenes": scenes,
        "seconds": dt,
        "scenes_per_s": scenes / dt,
        "parameters": sum(p.numel() for p in cap._model.parameters()),
        "input": list(cap.input_size),
        "storyboard": cap.storyboard_grid is not None,
        "mean_tokens": float(np.mean(tokens)) if tokens else 0.0,
        "batch_size": cap.batch_size,
        "dtype": cap.dtype,
        "compile": compile,
        "warmup_s": warm,
    }


def real_size_blip(folder: Path) -> Path:
    """A BLIP-base captioner (transformers' default ``BlipConfig``: ViT-B/16 at 384 px, a
    12-layer BERT decoder) with random weights and the shipped captioner's tokenizer."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration

    from curate.models import DEFAULT_CAPTIONER
    from curate.training.captioner import image_processor

    if (folder / "model.safetensors").exists():
        return folder
    torch.manual_seed(0)
    tok = BertTokenizer.from_pretrained(DEFAULT_CAPTIONER)
    cfg = BlipConfig(
        text_config={
            "vocab_size": len(tok),
            "bos_token_id": tok.convert_tokens_to_ids("[DEC]"),
            "sep_token_id": tok.sep_token_id,
            "eos_token_id": tok.sep_token_id,
            "pad_token_id": tok.pad_token_id,
        }
    )
    from transformers import BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    BlipForConditionalGeneration(cfg).eval().save_pretrained(folder)
    size = cfg.vision_config.image_size
    BlipProcessor(image_processor=image_processor(size), tokenizer=tok).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from curate.models import DEFAULT_MODEL

    model = args.model or str(DEFAULT_MODEL)
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "device": args.device,
            "dtype": args.dtype,
        },
        "model": model,
    }
    if not args.real_size_only:
        result.update(quality(args, model))
        result["throughput_shipped"] = throughput(
            model,
            device=args.device,
            dtype=args.dtype,
            frames=args.throughput_frames,
            batch=args.batch_size,
            size=None,
            threads=args.threads,
        )
    from curate.models import DEFAULT_CAPTIONER

    captioner = args.captioner or str(DEFAULT_CAPTIONER)
    if not args.real_size_only and captioner.lower() != "none":
        result["captioner_shipped"] = captioner_throughput(
            captioner, device=args.device, scenes=64, batch=args.batch_size
        )
    if not args.skip_real_size:
        cuda = args.device.startswith("cuda")
        blip = real_size_blip(Path(tempfile.gettempdir()) / "storyloom-blip-base-random")
        # about the length of a real caption, so that decoding costs what it would
        result["captioner_blip_base"] = captioner_throughput(
            str(blip),
            device=args.device,
            scenes=8 if args.device == "cpu" else args.caption_scenes,
            batch=None if cuda else args.batch_size,
            max_new_tokens=12,
        )
        if cuda:
            result["captioner_blip_base_compiled"] = captioner_throughput(
                str(blip),
                device=args.device,
                scenes=args.caption_scenes,
                batch=None,
                max_new_tokens=12,
                compile="on",
            )
            l14 = real_size_clip(
                Path(tempfile.gettempdir()) / "storyloom-clip-vit-l14-random", VIT_L14
            )
            result["clip_vit_l14"] = clip_speed(
                str(l14),
                device=args.device,
                frames=args.throughput_frames * 16,
                variants=args.clip_variants.split(","),
                batch=None,
            )
        folder = real_size_clip(Path(tempfile.gettempdir()) / "storyloom-clip-vit-b32-random")
        result["throughput_vit_b32"] = throughput(
            str(folder),
            device=args.device,
            dtype=args.dtype,
            frames=min(args.throughput_frames, 64)
            if args.device == "cpu"
            else args.throughput_frames * 4,
            batch=args.batch_size,
            size=(224, 224),
            threads=args.threads,
        )
    print_table(result)
    out = args.out
    if args.real_size_only and out == RESULTS:
        out = RESULTS.with_name(f"quality_real_size_{args.device.replace(':', '')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


def score_corpus(args: argparse.Namespace, model: str, gt) -> tuple[Any, list, list, dict]:
    """Every clip of the corpus ``gt`` scored (its ground-truth scenes, or the splitter's):
    the scorer, the clips, the failures, and the scoring's frames and seconds (sampling,
    embedding, scoring), the model's load before them timed apart (``load_s``)."""
    from curate.clip_score import ClipScorer
    from curate.sampling import FrameSampler
    from curate.scoring import score_videos

    by_id = gt.by_id
    t0 = time.perf_counter()
    scorer = ClipScorer(
        model=model,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        num_threads=args.threads,
    )
    scorer.setup()
    sampler = FrameSampler(k=args.k, size=scorer.sample_size)
    sampler.setup()
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    videos = [{"video_id": v.video_id, "uri": str(v.path), "caption": v.source_caption} for v in gt]
    if args.scenes == "truth":
        clips, failures = score_videos(
            videos,
            scorer=scorer,
            sampler=sampler,
            clips_of=lambda r: truth_clips(by_id[r["video_id"]]),
        )
    else:
        from curate.captions import CaptionCleaner
        from curate.scenes import SceneSplitter

        cleaner = CaptionCleaner()
        with SceneSplitter() as splitter:
            clips, failures = score_videos(
                videos,
                scorer=scorer,
                sampler=sampler,
                clips_of=lambda r: list(
                    cleaner.process_all(
                        {**c, "status": "kept", "reason": None} for c in splitter.process(r)
                    )
                ),
            )
    scoring = {
        "frames": sum(len(c["frames"]) for c in clips),
        "seconds": time.perf_counter() - t0,
        "load_s": t_load,
        "k": args.k,
    }
    return scorer, clips, failures, scoring


def quality(args: argparse.Namespace, model: str) -> dict[str, Any]:
    from curate.dedup import Deduplicator
    from curate.filtering import CaptionFilter
    from curate.models import recommended_threshold
    from curate.prompt_bank import build_prompt_bank
    from curate.training.evaluate import auroc

    gt = load_corpus(args)
    by_id = gt.by_id
    scorer, clips, failures, scoring = score_corpus(args, model, gt)

    # -- noisy-caption detection
    threshold = recommended_threshold(model)
    threshold_from = "model folder scoring.json"
    if threshold is None:  # a checkpoint without a measured cut: calibrate on the corpus
        from curate.threshold import calibrate_threshold

        threshold = calibrate_threshold([c["caption_score"] for c in clips], percentile=30)
        threshold_from = "corpus percentile 30"
    filt = CaptionFilter(threshold=threshold)
    clips = list(filt.process_all(clips))
    good, bad, flags = [], [], Counter()
    for c in clips:
        v = by_id[c["video_id"]]
        s = scene_truth_for(v, c)
        describes = names_scene(c.get("source_caption"), s) and not v.caption_is_noise
        score = c["caption_score"] if c["caption_score"] is not None else -1.0
        (good if describes else bad).append(score)
        dropped = c["status"] == "dropped" and c["reason"] in (
            "low_caption_score",
            "empty_caption",
            "invalid_caption",
        )
        flags[("drop" if dropped else "keep", "noise" if not describes else "good")] += 1
    video_scores, video_noise = [], []
    per_video = defaultdict(list)
    for c in clips:
        per_video[c["video_id"]].append(
            c["caption_score"] if c["caption_score"] is not None else -1.0
        )
    for vid, scores in per_video.items():
        video_scores.append(max(scores))
        video_noise.append(by_id[vid].caption_is_noise)
    vs, vn = np.array(video_scores), np.array(video_noise)
    video_dropped = {
        vid
        for vid in per_video
        if all(
            c["status"] == "dropped" and c["reason"] != "duplicate"
            for c in clips
            if c["video_id"] == vid
        )
    }
    detection = {
        "threshold": threshold,
        "threshold_from": threshold_from,
        "clip_auroc": auroc(np.array(good), np.array(bad)),
        "video_auroc": auroc(vs[~vn], vs[vn]),
        "clips": len(clips),
        "noise_clips": len(bad),
        # positive class: a caption that does not describe its scene, caught by the filter
        "clip_filter": prf(
            flags[("drop", "noise")], flags[("drop", "good")], flags[("keep", "noise")]
        ),
        "video_filter": prf(
            sum(1 for vid in video_dropped if by_id[vid].caption_is_noise),
            sum(1 for vid in video_dropped if not by_id[vid].caption_is_noise),
            sum(1 for vid in per_video if by_id[vid].caption_is_noise and vid not in video_dropped),
        ),
        "noise_kinds_caught": {
            kind: f"{sum(1 for v in gt if v.caption_noise == kind and v.video_id in video_dropped)}"
            f"/{sum(1 for v in gt if v.caption_noise == kind)}"
            for kind in sorted({v.caption_noise for v in gt})
        },
    }

    # -- re-captioning, with the corpus' own prompt bank and with a user-supplied one
    from curate.shapes import all_captions

    vocabulary = all_captions()
    recaption = recaption_quality(clips, by_id, scorer, build_prompt_bank(clips))
    recaption_user = recaption_quality(clips, by_id, scorer, vocabulary)
    from curate.models import DEFAULT_CAPTIONER

    captioner = args.captioner or (str(DEFAULT_CAPTIONER) if DEFAULT_CAPTIONER.is_dir() else None)
    recaption_cap = None
    if captioner and captioner.lower() != "none":
        recaption_cap = recaption_quality(
            clips, by_id, scorer, build_prompt_bank(clips), captioner=captioner
        )
        recaption_cap["captioner"] = captioner

    # -- dedup
    t2 = time.perf_counter()
    dedup = Deduplicator()
    deduped = list(dedup.process_all(clips))
    group_of = {vid: i for i, g in enumerate(gt.duplicate_groups) for vid in g}
    expected = set()
    for g in gt.duplicate_groups:
        members = [c for c in clips if c["video_id"] in g]
        by_scene = defaultdict(list)
        for c in members:
            s = scene_truth_for(by_id[c["video_id"]], c)
            by_scene[by_id[c["video_id"]].scenes.index(s)].append(c["clip_id"])
        for ids in by_scene.values():
            expected.update(sorted(ids)[1:] if len(ids) > 1 else [])
    index = {c["clip_id"]: c for c in clips}
    tp = fp = 0
    for c in deduped:
        if not c.get("duplicate_of"):
            continue
        other = index[c["duplicate_of"]]
        same_group = c["video_id"] in group_of and group_of[c["video_id"]] == group_of.get(
            other["video_id"]
        )
        same_scene = same_group and (
            by_id[c["video_id"]].scenes.index(scene_truth_for(by_id[c["video_id"]], c))
            == by_id[other["video_id"]].scenes.index(
                scene_truth_for(by_id[other["video_id"]], other)
            )
        )
        tp += same_scene
        fp += not same_scene
    n_expected = len(expected)
    dedup_res = {
        "planted_groups": len(gt.duplicate_groups),
        "expected_duplicate_clips": n_expected,
        "flagged": tp + fp,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / n_expected if n_expected else 1.0,
        "threshold": dedup.threshold,
        "relaxed_threshold": dedup.relaxed_threshold,
        "seconds": time.perf_counter() - t2,
    }
    return {
        "corpus": {
            "videos": len(gt),
            "seed": gt.seed,
            "scenes_from": args.scenes,
            "clips": len(clips),
            "failures": len(failures),
            "noise_kinds": dict(Counter(v.caption_noise for v in gt)),
            "duplicate_groups": len(gt.duplicate_groups),
        },
        "scoring": scoring,
        "detection": detection,
        "recaption": recaption,
        "recaption_user_bank": recaption_user,
        "recaption_captioner": recaption_cap,
        "dedup": dedup_res,
    }


def named_facts(text: str | None) -> dict[str, str | None]:
    """The colour, shape, motion and background a prompt names, slot by slot (``None`` where
    it names none or several): a prompt cut short ("a white star moving up on a black ba") still
    names its colour, shape and motion."""
    from curate.shapes import BACKGROUNDS, COLORS, MOTIONS, SHAPES

    out: dict[str, str | None] = dict.fromkeys(("color", "shape", "motion", "background"))
    if not text:
        return out
    t = " ".join(text.lower().split())
    cs = {(c, sh) for c in COLORS for sh in SHAPES if re.search(rf"\b{c}\s+{sh}\b", t)}
    if len(cs) == 1:
        out["color"], out["shape"] = next(iter(cs))
    motions = [
        m for m in MOTIONS if re.search(rf"\b{'standing still' if m == 'still' else m}\b", t)
    ]
    out["motion"] = motions[0] if len(motions) == 1 else None
    bgs = [b for b in BACKGROUNDS if re.search(rf"\bon\s+(?:an?\s+)?{b}\s+background\b", t)]
    out["background"] = bgs[0] if len(bgs) == 1 else None
    return out


def recaption_quality(
    clips, by_id, scorer, bank: list[str], *, captioner: str | None = None
) -> dict[str, Any]:
    """Re-caption every video with ``bank`` as the prompt bank (and, with ``captioner``, the
    captioner's caption as the other candidate, CLIP choosing); how well prompts match truth.

    ``csm`` (colour, shape and motion: what a prompt must get right to regenerate the scene)
    is the headline; ``visible`` and ``full`` add the background. ``reachable_csm`` is the
    ceiling: scenes whose true colour, shape and motion appear in their own caption's
    fragments, in some bank prompt or in the captioner's caption of the scene.
    """
    from curate.captions import split_caption
    from curate.recaption import Recaptioner

    t1 = time.perf_counter()
    groups = defaultdict(list)
    for c in clips:
        groups[c["video_id"]].append(c)
    keys = ("color", "shape", "background", "motion", "csm", "visible", "full")
    match = Counter()
    by_source = defaultdict(Counter)
    stories = 0

    def csm(f: dict) -> tuple:
        return (f["color"], f["shape"], f["motion"])

    in_bank = {csm(named_facts(p)) for p in bank}
    reachable = 0
    kwargs: dict[str, Any] = {"captioner": captioner, "fallback": "best"} if captioner else {}
    with Recaptioner(scorer=scorer, prompt_bank=bank, **kwargs) as rec:
        out_clips = []
        for cs in groups.values():
            rows, story = rec.recaption_video(cs)
            stories += bool(story["segments"])
            out_clips.extend(rows)
    for c in out_clips:
        s = scene_truth_for(by_id[c["video_id"]], c)
        named = named_facts(c.get("recaption"))
        ok = {k: named[k] == getattr(s, k) for k in ("color", "shape", "background", "motion")}
        ok["csm"] = ok["color"] and ok["shape"] and ok["motion"]
        ok["visible"] = ok["color"] and ok["shape"] and ok["background"]
        ok["full"] = ok["visible"] and ok["motion"]
        own = {csm(named_facts(f)) for f in split_caption(c.get("source_caption") or "")}
        if c.get("generated_caption"):
            own.add(csm(named_facts(c["generated_caption"])))
        reachable += (s.color, s.shape, s.motion) in (own | in_bank)
        match["scenes"] += 1
        for k, v in ok.items():
            match[k] += v
        src = c.get("recaption_source") or "none"
        by_source[src]["scenes"] += 1
        by_source[src]["csm"] += ok["csm"]
        by_source[src]["full"] += ok["full"]
    n = match["scenes"]
    return {
        "scenes": n,
        "stories_with_segments": stories,
        "prompt_bank_size": len(bank),
        **{f"{k}_match": match[k] / n for k in keys},
        "reachable_csm": reachable / n,
        "by_source": {
            k: {
                "scenes": v["scenes"],
                "csm_match": v["csm"] / v["scenes"],
                "full_match": v["full"] / v["scenes"],
            }
            for k, v in by_source.items()
        },
        "seconds": time.perf_counter() - t1,
    }


def print_table(r: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    if "detection" in r:
        d, dd = r["detection"], r["dedup"]
        rows += [
            (
                "corpus",
                f"{r['corpus']['videos']} videos, seed {r['corpus']['seed']}, "
                f"{r['corpus']['clips']} clips ({r['corpus']['scenes_from']} scenes)",
            ),
            ("noise AUROC (clip / video)", f"{d['clip_auroc']:.4f} / {d['video_auroc']:.4f}"),
            ("filter threshold", f"{d['threshold']:.4f}"),
            (
                "filter P / R (clips)",
                f"{d['clip_filter']['precision']:.3f} / {d['clip_filter']['recall']:.3f}",
            ),
            (
                "filter P / R (videos)",
                f"{d['video_filter']['precision']:.3f} / {d['video_filter']['recall']:.3f}",
            ),
            (
                "noise kinds caught (videos)",
                ", ".join(f"{k} {v}" for k, v in d["noise_kinds_caught"].items()),
            ),
        ]
        for key, label in (
            ("recaption", "corpus bank"),
            ("recaption_user_bank", "user bank"),
            ("recaption_captioner", "corpus bank + captioner"),
        ):
            rc = r.get(key)
            if rc is None:
                continue
            rows += [
                (
                    f"recaption, {label} ({rc['prompt_bank_size']})",
                    f"colour+shape+motion {rc['csm_match']:.3f} (reachable "
                    f"{rc['reachable_csm']:.3f}); all four {rc['full_match']:.3f}",
                ),
                (
                    "  colour / shape / motion / bg",
                    f"{rc['color_match']:.3f} / {rc['shape_match']:.3f} / "
                    f"{rc['motion_match']:.3f} / {rc['background_match']:.3f}",
                ),
                (
                    "  by source (scenes, c+s+m)",
                    ", ".join(
                        f"{k} {v['scenes']} {v['csm_match']:.2f}"
                        for k, v in rc["by_source"].items()
                    ),
                ),
            ]
        rows += [
            (
                "dedup P / R",
                f"{dd['precision']:.3f} / {dd['recall']:.3f} ({dd['flagged']} flagged, {dd['expected_duplicate_clips']} planted)",
            ),
            (
                "scoring (sample+embed+score)",
                f"{r['scoring']['frames'] / r['scoring']['seconds']:.0f} frames/s end to end"
                + (
                    f" (the model loaded before, in {r['scoring']['load_s']:.1f} s)"
                    if "load_s" in r["scoring"]
                    else ""
                ),
            ),
        ]
    for key, name in (
        ("throughput_shipped", "shipped CLIP"),
        ("throughput_vit_b32", "ViT-B/32 (random)"),
    ):
        if key in r:
            t = r[key]
            rows.append(
                (
                    f"{name} embed, {r['machine']['device']}",
                    f"{t['frames_per_s']:.0f} frames/s ({t['parameters'] / 1e6:.1f} M params, {t['input'][0]} px)",
                )
            )
    for key, name in (
        ("captioner_shipped", "shipped captioner"),
        ("captioner_blip_base", "BLIP-base captioner (random)"),
        ("captioner_blip_base_compiled", "BLIP-base captioner, compiled"),
    ):
        if key in r:
            t = r[key]
            rows.append(
                (
                    f"{name}, {r['machine']['device']}",
                    f"{t['scenes_per_s']:.1f} scenes/s ({t['parameters'] / 1e6:.1f} M params, "
                    f"{t['input'][0]} px, {t['mean_tokens']:.0f} tokens, batch "
                    f"{t['batch_size']}, warm-up {t.get('warmup_s', 0):.1f} s)",
                )
            )
    if "clip_vit_l14" in r:
        c = r["clip_vit_l14"]
        for variant, t in c.items():
            if not isinstance(t, dict):
                continue
            share = t["utilisation_of_matmul_peak"]
            rows.append(
                (
                    f"ViT-L/14 CLIP {variant}, {r['machine']['device']}",
                    f"{t['frames_per_s']:.0f} frames/s (model alone {t['model_frames_per_s']:.0f}; "
                    f"{t['tflops_per_s']:.0f} TFLOP/s"
                    + (f" = {share * 100:.0f} % of the matmul peak" if share else "")
                    + f"; batch {t['batch_size']}, warm-up {t['warmup_s']:.1f} s, "
                    f"cosine vs eager >= {t['cosine_vs_eager_min']:.4f})",
                )
            )
    if "captioner_shipped" in r and "captioner_blip_base" in r:
        ratio = r["captioner_shipped"]["scenes_per_s"] / r["captioner_blip_base"]["scenes_per_s"]
        rows.append(("shipped / BLIP-base captioner speed", f"{ratio:.0f}x"))
    if "throughput_shipped" in r and "throughput_vit_b32" in r:
        ratio = r["throughput_shipped"]["frames_per_s"] / r["throughput_vit_b32"]["frames_per_s"]
        rows.append(("shipped / ViT-B/32 speed", f"{ratio:.0f}x"))
    w = max(len(a) for a, _ in rows)
    print(f"\n{'metric':{w}s} | value\n{'-' * w}-+-{'-' * 40}")
    for a, b in rows:
        print(f"{a:{w}s} | {b}")
    print(f"(load average {r['machine']['load_avg_1m']:.1f} on {r['machine']['cpus']} CPUs)")


if __name__ == "__main__":
    sys.exit(main())
