"""Can a model folder learn the motion word when every training window shows it?

Every window is one scene over a whole global call (16 frames, nothing known: the case where
the words alone decide where the shape goes). Each arm continues the same folder for the same
seconds on those windows (latents and text states computed once), with its own loss weighting
(``ft-minsnr``, ``ft-floor``, ``-coord``: coordinate channels added); ``base`` is the folder
as it is. Each is read by sampling held-out one-scene prompts (DPM-Solver++, guidance 2) and
reading motion and colour from the pixels (chance for motion: 1/7).

    python benchmarks/storygen_motion_focus.py --folder models/shapes-storygen --seconds 95 \
        --lr 2e-4 --out benchmarks/results/storygen_motion_focus_h200.json    # one H200, 6 min
"""

import argparse
import copy
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from curate.shapes.read import read_frame, read_motion
from curate.shapes.vocab import MOTIONS
from storygen.loading import load_pipeline
from storygen.text import encode_texts
from storygen.training.unet import time_weight
from storygen.training.vae import decode, encode
from storygen.training.windows import sample_window


def draw(args):
    seed, n = args
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        w = sample_window(rng, frames=16, size=64, role="global", spacing=1.0)
        if len(set(w.prompts)) == 1:
            out.append((w.frames, w.prompts[0], w.facts[0].motion, w.facts[0].color))
    return out


def centroid_step(frames: np.ndarray) -> float:
    """Mean distance, in pixels, between the shape's centres in consecutive frames."""
    size = frames.shape[1]
    c = [read_frame(f).centroid for f in frames]
    xy = np.array([p if p else (np.nan, np.nan) for p in c]) * size
    return float(np.nanmean(np.linalg.norm(np.diff(xy, axis=0), axis=1)))


def windows(seed, n, procs):
    per = -(-n // procs)
    with Pool(procs) as p:
        parts = p.map(draw, [((seed, k), per) for k in range(procs)])
    ws = [w for part in parts for w in part][:n]
    return ws


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="models/shapes-storygen")
    ap.add_argument("--arms", default="base,ft-minsnr,ft-floor,ft-floor-coord")
    ap.add_argument("--seconds", type=float, default=90)
    ap.add_argument("--n-train", type=int, default=6144)
    ap.add_argument("--n-test", type=int, default=112)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--procs", type=int, default=14)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", default="benchmarks/results/storygen_motion_focus.json")
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    train = windows(1, a.n_train, a.procs)
    test = windows(2, a.n_test, a.procs)
    print(f"data {time.time() - t0:.0f}s", flush=True)
    pipe0 = load_pipeline(a.folder)
    vae = pipe0.vae.to(dev)
    text = pipe0.text_encoder.to(dev)

    def latents(ws):
        fr = torch.from_numpy(np.stack([w[0] for w in ws]))
        with torch.no_grad():
            z = torch.cat(
                [encode(vae, fr[i : i + 64].flatten(0, 1)).float() for i in range(0, len(ws), 64)]
            )
        return z.reshape(len(ws), 16, *z.shape[1:]).transpose(1, 2).contiguous()

    def states(prompts):
        uniq = sorted(set(prompts))
        where = {p: i for i, p in enumerate(uniq)}
        with torch.no_grad():
            tab = torch.cat(
                [
                    encode_texts(pipe0.tokenizer, text, uniq[i : i + 256], device=dev)
                    for i in range(0, len(uniq), 256)
                ]
            ).float()
        return tab, torch.tensor([where[p] for p in prompts], device=dev)

    x0 = latents(train)
    tab, idx = states([w[1] for w in train])
    empty = states([""])[0][0]
    ttab, tidx = states([w[1] for w in test])
    print(f"encoded {time.time() - t0:.0f}s", flush=True)
    progress = torch.linspace(0, 1, 16, device=dev)
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler.from_config(
        pipe0.scheduler.config, algorithm_type="dpmsolver++", solver_order=2
    )
    alphas = pipe0.scheduler.alphas_cumprod.to(dev)

    def evaluate(unet, guidance=2.0):
        unet.eval()
        b = len(test)
        g = torch.Generator(device=dev).manual_seed(7)
        x = torch.randn((b, 4, 16, 16, 16), generator=g, device=dev)
        ctx = ttab[tidx][:, None].expand(-1, 16, -1, -1)
        unc = empty[None, None].expand(b, 16, -1, -1)
        sched.set_timesteps(a.steps, device=dev)
        m = torch.zeros(b, 16, device=dev)
        sp = torch.ones(b, device=dev)
        pr = progress[None].expand(b, -1)
        with (
            torch.no_grad(),
            torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"),
        ):
            for t in sched.timesteps:
                tt = torch.full((2 * b,), int(t), device=dev)
                v = unet(
                    torch.cat([x, x]),
                    tt,
                    torch.cat([ctx, unc]),
                    mask=torch.cat([m, m]),
                    spacing=torch.cat([sp, sp]),
                    progress=torch.cat([pr, pr]),
                ).float()
                vc, vu = v.chunk(2)
                x = sched.step(vu + guidance * (vc - vu), t, x).prev_sample
            frames = decode(vae, x.transpose(1, 2).flatten(0, 1)).reshape(b, 16, 64, 64, 3).numpy()
        unet.train()
        per = {m_: [0, 0] for m_ in MOTIONS}
        colour = 0
        confusion = {}
        steps = {"generated": [], "real": []}
        for w, fr in zip(test, frames):
            steps["generated"].append(centroid_step(fr))
            steps["real"].append(centroid_step(w[0]))
            got = read_motion(fr)
            per[w[2]][0] += got == w[2]
            per[w[2]][1] += 1
            confusion[f"{w[2]}->{got}"] = confusion.get(f"{w[2]}->{got}", 0) + 1
            colour += np.mean([read_frame(f).color == w[3] for f in fr[::5]])
        acc = sum(v[0] for v in per.values()) / b
        return {
            "motion": round(acc, 3),
            "colour": round(colour / b, 3),
            "per_motion": {k: round(v[0] / max(v[1], 1), 2) for k, v in per.items()},
            "confusion": dict(sorted(confusion.items(), key=lambda kv: -kv[1])[:12]),
            # how far the shape's centre moves from one frame to the next, pixels (real
            # video: a smooth glide; a call that redraws the shape elsewhere jumps)
            "centroid_step_px": {k: round(float(np.nanmean(v)), 2) for k, v in steps.items()},
        }

    results = {}
    base_unet = pipe0.unet.to(dev)
    for arm in a.arms.split(","):
        unet = copy.deepcopy(base_unet).to(dev)
        if "coord" in arm:
            from storygen.models import add_coordinate_channels

            unet = add_coordinate_channels(unet).to(dev)
        if arm == "base":
            results[arm] = {"steps": 0, **evaluate(unet)}
            print(arm, results[arm], flush=True)
            continue
        kind = "min-snr-floor" if "floor" in arm else "v" if "-v" in arm else "min-snr"
        unet.train()
        opt = torch.optim.AdamW(unet.parameters(), lr=a.lr, weight_decay=0.01)
        g = torch.Generator(device=dev).manual_seed(3)
        s = 0
        losses = []
        ts = time.time()
        hist = []
        while time.time() - ts < a.seconds:
            i = torch.randint(0, len(train), (a.batch,), device=dev, generator=g)
            z = x0[i]
            ctx = tab[idx[i]][:, None].expand(-1, 16, -1, -1).clone()
            drop = torch.rand(a.batch, device=dev, generator=g) < 0.1
            ctx[drop] = empty
            t = torch.randint(0, 1000, (a.batch,), device=dev, generator=g)
            noise = torch.randn(z.shape, device=dev, generator=g)
            al = alphas[t].view(-1, 1, 1, 1, 1)
            noisy = al.sqrt() * z + (1 - al).sqrt() * noise
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                pred = unet(
                    noisy,
                    t,
                    ctx,
                    mask=torch.zeros(a.batch, 16, device=dev),
                    spacing=torch.ones(a.batch, device=dev),
                    progress=progress[None].expand(a.batch, -1),
                )
            target = al.sqrt() * noise - (1 - al).sqrt() * z
            snr = alphas[t] / (1 - alphas[t])
            loss = (
                ((pred.float() - target) ** 2).mean((1, 2, 3, 4)) * time_weight(snr, kind)
            ).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            losses.append(loss.detach())
            s += 1
            if s % 200 == 0:
                hist.append((s, round(float(torch.stack(losses[-200:]).mean()), 5)))
        results[arm] = {"steps": s, "loss": hist, **evaluate(unet)}
        print(arm, results[arm], f"{time.time() - t0:.0f}s", flush=True)
        Path(a.out).write_text(json.dumps(results, indent=1))
    Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
