"""Can this machine's PyTorch load AOTInductor packages (what ``--compile aot`` needs)?

Compiles a two-layer MLP with AOTInductor on each device there is (the CPU, and CUDA where
present), then loads it in a child process by each path PyTorch offers: the package loader
(``torch._inductor.aoti_load_package``), on CUDA also the runner on the package's bare wrapper
library (``AOTIModelContainerRunnerCuda``) and the deprecated ``torch._export.aot_compile`` /
``aot_load`` pair. A child that dies from a signal is what ``--compile aot`` falls back from
(``storygen.accel``): a loader broken in the image, not in storyloom's packages.

    python benchmarks/aoti_load_paths.py --out benchmarks/results/aoti_load_paths.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch


def _net_and_input(device: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 32))
    return net.to(device), torch.randn(8, 64, device=device)


def _load(path: str, work: str) -> float:
    """In the child: load by ``path`` and return the largest difference from eager."""
    device = "cpu" if path == "package-cpu" else "cuda"
    net, x = _net_and_input(device)
    if path.startswith("package-"):
        model = torch._inductor.aoti_load_package(
            f"{work}/{device}.pt2", device_index=0 if device == "cuda" else -1
        )
        y = model(x)
    elif path == "runner-cuda":
        so = glob.glob(f"{work}/cuda_x/**/*.so", recursive=True)[0]
        runner = torch._C._aoti.AOTIModelContainerRunnerCuda(so, 1, "cuda:0", os.path.dirname(so))
        y = runner.run([x])[0]
    else:  # aot_load-cuda
        y = torch._export.aot_load(Path(f"{work}/old.txt").read_text(), "cuda")(x)
    with torch.no_grad():
        return float((y - net(x)).abs().max())


def _build(work: str, devices: list[str]) -> list[str]:
    """Compile the MLP for ``devices``; the load paths to try."""
    paths = []
    for device in devices:
        net, x = _net_and_input(device)
        program = torch.export.export(net, (x,), strict=False)
        package = torch._inductor.aoti_compile_and_package(
            program, package_path=f"{work}/{device}.pt2"
        )
        zipfile.ZipFile(package).extractall(f"{work}/{device}_x")
        paths.append(f"package-{device}")
    if "cuda" in devices:
        paths.append("runner-cuda")
        net, x = _net_and_input("cuda")
        try:
            Path(f"{work}/old.txt").write_text(torch._export.aot_compile(net, (x,)))
            paths.append("aot_load-cuda")
        except Exception as exc:  # noqa: BLE001 - a PyTorch without the deprecated pair
            print(f"torch._export.aot_compile: {type(exc).__name__}: {exc}", file=sys.stderr)
    return paths


def _try(path: str, work: str) -> dict[str, Any]:
    cmd = [sys.executable, "-X", "faulthandler", __file__, "--child", path, "--work", work]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return {"path": path, "result": f"died with {name}", "loads": False}
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"path": path, "result": f"error: {last[:160]}", "loads": False}
    diff = float(done.stdout.strip().splitlines()[-1])
    return {"path": path, "result": f"loaded, max diff {diff:.2e}", "loads": True, "diff": diff}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(_load(args.child, args.work))
        return 0
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as work:
        rows = [_try(path, work) for path in _build(work, devices)]
    print(f"PyTorch {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"{'load path':<16} result")
    for row in rows:
        print(f"{row['path']:<16} {row['result']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"torch": torch.__version__, "cuda": torch.version.cuda, "paths": rows}
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if all(row["loads"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
