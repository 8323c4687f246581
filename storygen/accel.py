"""Compiling the UNet (``torch.compile``), with a compile cache on disk.

``compile="on"`` (``storygen render --compile on``) compiles a render's UNet where it repays:
the forward passes of each row bucket are counted as the plan's levels are batched, and a
bucket is compiled once the render holds :data:`COMPILE_MIN_PASSES` passes of it (a
3,376-frame plan at 25 steps: the last level's 4 batches × 25 steps compile, the global and
middle levels' 25 passes each stay eager; the autoregressive baseline's batch-1 windows compile
from its third window on; a short render stays eager). ``compile="all"`` compiles every
bucket from its first pass. The UNet is compiled in place (``nn.Module.compile``: it keeps its
class, so every caller still sees a ``MaskedUNet3D`` or ``UNet3DConditionModel``; an eager
pass calls its ``forward`` directly), with static shapes: every batch of a level is padded to
the level's row bucket (:func:`row_bucket` of its largest batch: a power of two up to 8 rows,
then an even count; the padding repeats the last row and is dropped from the output), so a
render compiles one graph per level shape instead of one per batch size. A level's batches
are as even as they can be (225 calls in 4 batches of 57 and 56, 114 and 112 rows with
guidance), so padded to their own bucket they run 456 rows for 450 (1.3 % spare) where a
multiple of 8 ran 480 (6.7 %) and the next power of two 512 (12 %). Compiled graphs are kept in Inductor's cache
(:func:`compile_cache_dir`, by default ``~/.cache/storyloom/inductor``), so a second run of the
same model and shapes pays a fraction of the first compile.

``compile="auto"`` (the default) is ``"off"`` on a CPU. On CUDA it compiles the row buckets
``"on"`` would, block by block as ``"regional"`` does (whole passes for a UNet without
:data:`REPEATED_BLOCKS`, or with the ``cgraph`` speed-up, whose CUDA graphs replay whole
passes); a bucket it leaves eager runs the compiled blocks eager (:func:`eager_blocks`), so
its shapes compile nothing. Whole passes, ``"on"``, were the default before; a warm cache
repaid them on a long render (3,376 frames, 25 steps, ModelScope-shape UNet on an H200: 245 s
against about 289 s eager), a cold one did not on the first (the 114-120-row graph compiles in
2-2.5 minutes, the compiled passes save about 80 s). Measured earlier with dynamic shapes
(``benchmarks/storygen_speed.py --device cuda --preset modelscope --steps 5 --lengths 3376
--compile on``, bf16, before the padding): the autoregressive baseline's batch-1 calls ran 1.5x faster compiled (96.9 s
against 144.3 s eager), the hierarchical levels' batched calls slower (66 TFLOP/s after a
136 s warm-up, against about 180 TFLOP/s eager); with ``TORCH_LOGS=recompiles`` the shipped
model recompiled for every new batch size (2, 30, 114 rows: "tensor 'mask' size mismatch at
index 0"), about a minute each. With static shapes and every bucket compiled, a 25-step
3,376-frame render of that UNet had not finished compiling after 395 s (cold cache), which is
why ``"on"`` compiles only the buckets that carry the work.

``compile="regional"`` compiles the UNet's repeated blocks one by one instead of the whole
forward (diffusers' ``compile_repeated_blocks``, :data:`REPEATED_BLOCKS`), every row bucket
as ``"all"`` does. Blocks of one class and one input shape share a graph, so dynamo traces
far less: for the ModelScope-shape UNet at one 2-row shape, 4.3 s in 28 block graphs against
16.2 s for the whole forward as one graph (dynamo alone, ``backend="eager"``, on a 2-core
CPU). On an H200 (ModelScope shape, bf16, 3,376 frames, the GPU's default speed-ups,
``benchmarks/storygen_speed.py --compile regional`` against ``all``): 177-210 s compiling cold
against 290-404 s; from the cache on disk 35-39 s against 92-129 s, so the first 25-step render
of a process took 210.8 s against 270.5 s; a warm 25-step render 162.9 s against 154.2 s (the
blocks' boundaries cost 5.6 % of the passes). A render is mostly one per process, so
``"auto"`` compiles block by block.

``compile="aot"`` compiles ahead of time: each row bucket's forward pass is exported
(``torch.export``) and compiled by AOTInductor into a package on disk
(``<compile cache>/aot/<key>.pt2``, :class:`AotForward`), every bucket as ``"all"`` does. A
later process with the same model structure, dtype, speed-ups, device kind and PyTorch loads
the package instead of compiling: no dynamo tracing and no Inductor, which from the cache on
disk still cost ``"all"`` 92-104 s of a 25-step ModelScope-shape render on an H200, 74-83 s
of it dynamo's tracing. The packages hold the compiled code only: the weights stay the
module's own, handed to the package by pointer (a weight replaced or changed in place is
handed over again before the next call), so one package serves any weights of the same
shapes. The VAE decoder (``vdec``) is compiled the same way.

``compile="pre"`` keeps PyTorch's own runtime and skips dynamo in a later process another way:
each row bucket's forward is traced whole by dynamo, compiled by Inductor and saved with
``torch.compile``'s ``aot_compile`` (``<compile cache>/aot/<key>.dynamo``,
:class:`PrecompiledForward`); a later process loads the file and calls it, no tracing. The
module is the saved function's first argument, so its weights are read at each call. It is
what ``"aot"`` does where AOTInductor's loader cannot run its packages; a module dynamo cannot
trace as one graph compiles in process as ``"all"`` does, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from curate.compile_cache import CACHE_ENV, compile_cache_dir, use_compile_cache
from curate.float8 import fp8_unavailable, linears_to_rowwise_fp8

__all__ = [
    "CACHE_ENV",
    "COMPILE_CHOICES",
    "COMPILE_MIN_PASSES",
    "AOT_PHASES",
    "AotForward",
    "AotUnavailable",
    "PrecompiledForward",
    "aot_fallbacks",
    "CompilePolicy",
    "REPEATED_BLOCKS",
    "compile_cache_dir",
    "SPEEDUPS",
    "applied_speedups",
    "apply_speedups",
    "beside_sampling",
    "check_render_speed",
    "compile_decoder",
    "compile_phases",
    "compile_seconds",
    "compile_unet",
    "has_repeated_blocks",
    "compiled_call",
    "decoder_compiles",
    "default_compile",
    "eager_blocks",
    "fast_temporal_convs",
    "subpixel_kernels",
    "subpixel_upsamplers",
    "eager_calls",
    "fp8_unavailable",
    "ordinary_weights",
    "inductor_options",
    "resolve_speedups",
    "compiled_rows",
    "cudnn_autotune",
    "is_compiled",
    "phases_since",
    "row_bucket",
    "resolve_compile",
    "use_compiled_rows",
    "use_tuned_rows",
    "tuned_rows",
    "tuning_compiles",
    "TUNING_OPTIONS",
]

logger = logging.getLogger(__name__)

#: the choices of ``compile`` (``storygen render --compile``)
COMPILE_CHOICES = ("auto", "on", "all", "regional", "aot", "pre", "off")
#: the compile choices that compile every row bucket from its first pass
EVERY_BUCKET = ("all", "regional", "aot", "pre")
#: ``compile="aot"``: the packages' folder in the compile cache
AOT_DIR = "aot"
#: ``compile="aot"``'s phases in :func:`compile_phases`: exporting a forward pass,
#: compiling it to a package, loading a package, waiting for another process to build one,
#: a child process's first load of a package (:func:`_probe`)
AOT_PHASES = (
    "aot_export",
    "aot_compile",
    "aot_load",
    "aot_wait",
    "aot_probe",
    "pre_compile",
    "pre_load",
)
#: where AOTInductor cannot load packages: a module's precompiled calls
#: (:class:`PrecompiledForward`), one file per call signature beside the packages
PRE_SUFFIX = ".dynamo"
#: ``compile="regional"``: the UNet's blocks compiled one by one (by class name), the rest of
#: its forward left eager
REPEATED_BLOCKS = (
    "Transformer2DModel",
    "TransformerTemporalModel",
    "ResnetBlock2D",
    "TemporalConvLayer",
)
#: ``compile="on"``: forward passes of one row bucket a render must hold before that bucket is
#: compiled (a cold compile of a large UNet costs a minute or two per graph; a pass of a full
#: batch saves a fraction of a second to a few seconds)
COMPILE_MIN_PASSES = 50
_COMPILED_FLAG = "_storyloom_compiled"
_BUCKETS_ATTR = "_storyloom_compiled_rows"


def default_compile(device_type: str) -> str:
    """``compile="auto"``: ``"regional"`` on CUDA (the UNet's repeated blocks, in the row
    buckets where it repays: :class:`CompilePolicy`), ``"off"`` elsewhere."""
    return "regional" if device_type == "cuda" else "off"


def resolve_compile(choice: str | bool | None, device_type: str = "cpu") -> str:
    """A render's compile setting: ``"on"`` / ``True`` (where it repays), ``"all"`` (every
    row bucket), ``"regional"`` (every row bucket, the repeated blocks one by one), ``"aot"``
    (every row bucket, compiled ahead of time into packages on disk), ``"pre"`` (every row
    bucket, traced by dynamo ahead of time into files on disk: :class:`PrecompiledForward`),
    ``"off"``
    / ``False`` / ``None``, or ``"auto"`` (:func:`default_compile` of the render's device)."""
    if choice == "auto":
        return default_compile(device_type)
    if choice in (True, "on"):
        return "on"
    if choice in EVERY_BUCKET:
        return str(choice)
    if choice in (None, False, "off"):
        return "off"
    raise ValueError(f"compile must be one of {COMPILE_CHOICES}, got {choice!r}")


class CompilePolicy:
    """Which row buckets of a render run compiled: counts the forward passes each bucket is
    planned to take, level by level, and compiles a bucket once the count reaches
    ``min_passes`` (``"all"``: from the first). ``rows`` is the set a compiled UNet reads."""

    def __init__(
        self, choice: str, min_passes: int = COMPILE_MIN_PASSES, device_type: str = "cpu"
    ) -> None:
        #: chosen by ``"auto"``: compiled where it repays, block by block where the UNet has
        #: repeated blocks (else its whole forward)
        self.auto = choice == "auto"
        self.choice = resolve_compile(choice, device_type)
        #: every row bucket compiled from its first pass ("all", "regional", "aot" chosen as
        #: such); else a bucket once the render holds ``min_passes`` passes of it
        self.every_bucket = self.choice in EVERY_BUCKET and not self.auto
        self.min_passes = 1 if self.every_bucket else int(min_passes)
        #: forward passes planned per row bucket
        self.passes: dict[int, int] = {}
        #: the buckets compiled so far
        self.buckets: set[int] = set()
        #: batch rows -> the compiled bucket they are padded to (what a compiled UNet reads);
        #: a level planned later may map a row count anew (levels run one after another)
        self.rows: dict[int, int] = {}
        #: the rows × passes the whole render will run (:meth:`expect`), and those planned
        #: per bucket so far
        self.total_work = 0
        self.work: dict[int, int] = {}
        #: the compiled buckets that carry half the render's work or more: where kernel-tuning
        #: options (:data:`TUNING_OPTIONS`, the ``cdt`` and ``mat`` speed-ups) apply
        self.tuned: set[int] = set()

    @property
    def enabled(self) -> bool:
        return self.choice != "off"

    def regional_for(self, unet: Any, speedups: tuple[str, ...] = ()) -> bool:
        """Whether ``unet`` compiles block by block: ``"regional"``; chosen by ``"auto"``, only
        where it has :data:`REPEATED_BLOCKS` and no ``cgraph`` among ``speedups`` (CUDA graphs
        replay whole passes), else its whole forward."""
        if self.choice != "regional":
            return False
        return not self.auto or (has_repeated_blocks(unet) and "cgraph" not in speedups)

    def expect(self, total_work: int) -> None:
        """The rows × passes the whole render will run (every call's guidance branches times
        its denoising steps), against which :meth:`plan` finds the bucket that carries the
        render (:attr:`tuned`)."""
        self.total_work = int(total_work)

    def plan(self, batches: list[tuple[int, int]]) -> None:
        """Count a level's batches, ``(rows, passes)`` each (rows: calls × guidance branches;
        passes: the denoising steps of the batch), and choose whether their bucket (the
        :func:`row_bucket` of the largest) is compiled, and whether its kernels are tuned:
        a compiled bucket that runs half the render's work (:meth:`expect`) or more."""
        if not self.enabled or not batches:
            return
        bucket = row_bucket(max(rows for rows, _ in batches))
        self.passes[bucket] = self.passes.get(bucket, 0) + sum(p for _, p in batches)
        self.work[bucket] = self.work.get(bucket, 0) + sum(r * p for r, p in batches)
        if self.passes[bucket] >= self.min_passes:
            self.buckets.add(bucket)
            self.rows.update({rows: bucket for rows, _ in batches})
            if self.total_work and 2 * self.work[bucket] >= self.total_work:
                self.tuned.add(bucket)


def compiled_rows(unet: Any) -> dict[int, int]:
    """Batch rows a compiled UNet runs compiled, each mapped to the bucket it is padded to
    (empty: every pass eager)."""
    if not is_compiled(unet):
        return {}
    return getattr(unet, _BUCKETS_ATTR, {})


def use_compiled_rows(unet: Any, rows: dict[int, int]) -> None:
    """Let ``unet`` (compiled) run the batch rows in ``rows`` compiled, padded to their
    bucket (the mapping is read live)."""
    setattr(unet, _BUCKETS_ATTR, rows)


#: Inductor options that tune kernels by timing candidates as graphs compile (the ``cdt`` and
#: ``mat`` speed-ups): minutes more per graph, for a few per cent faster passes. A render
#: applies them only to the graphs of the bucket that carries it (:attr:`CompilePolicy.tuned`:
#: on an H200 the ModelScope shape's 114-row graph took over 12 minutes to compile with
#: ``cdt``, and a 3,376-frame render's two other buckets run 13 % of its rows × passes)
TUNING_OPTIONS = ("coordinate_descent_tuning", "max_autotune_gemm", "max_autotune_gemm_backends")
_TUNED_ATTR = "_storyloom_tuned_rows"


class _ThreadFlag:
    """A switch per thread, off until a block turns it (:meth:`held`)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def on(self) -> bool:
        return getattr(self._local, "on", False)

    @contextlib.contextmanager
    def held(self, on: bool = True) -> Iterator[None]:
        before = self.on
        self._local.on = on
        try:
            yield
        finally:
            self._local.on = before


#: this thread's compiles take the tuning options (:func:`tuning_compiles`)
_TUNING = _ThreadFlag()


def use_tuned_rows(unet: Any, buckets: set[int]) -> None:
    """Let ``unet`` (compiled) compile the graphs of ``buckets`` with the tuning options
    (read live, as :func:`use_compiled_rows`'s mapping)."""
    setattr(unet, _TUNED_ATTR, buckets)


def tuned_rows(unet: Any) -> set[int]:
    """The row buckets whose graphs ``unet`` compiles with the tuning options."""
    return getattr(unet, _TUNED_ATTR, set())


def tuning_compiles(on: bool = True) -> contextlib.AbstractContextManager[None]:
    """Graphs compiled on this thread in the block take the tuning options of a
    :class:`BucketTuning` backend (``on``), or leave them out. A graph compiles on a row
    bucket's first pass, which runs alone in the process (:func:`compiled_call`)."""
    return _TUNING.held(on)


class BucketTuning:
    """A ``torch.compile`` backend: Inductor with ``options``, those among
    :data:`TUNING_OPTIONS` only for the graphs compiled inside :func:`tuning_compiles` (the
    bucket that carries the render). Inductor's cache keys hold the options a graph compiled
    with, so a later process loads the tuned graphs as it does the others."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.tuned = dict(options)
        self.plain = {k: v for k, v in options.items() if k not in TUNING_OPTIONS}

    def __call__(self, gm: Any, example_inputs: Any) -> Any:
        from torch._inductor.compile_fx import compile_fx

        patches = self.tuned if _TUNING.on else self.plain
        return compile_fx(gm, example_inputs, config_patches=patches)


def tunes(options: dict[str, Any] | None) -> bool:
    """Whether ``options`` hold any of :data:`TUNING_OPTIONS`."""
    return any(k in (options or {}) for k in TUNING_OPTIONS)


def compile_unet(
    unet: Any,
    options: dict[str, Any] | None = None,
    *,
    regional: bool = False,
    aot: bool = False,
    precompile: bool = False,
) -> None:
    """Compile ``unet``'s forward in place, once, with static shapes (the graphs themselves
    compile lazily, on the first call of each row bucket and call length); ``options``:
    Inductor's (:func:`inductor_options`). ``regional``: compile its repeated blocks
    (:data:`REPEATED_BLOCKS`) one by one instead; ``aot``: ahead of time, into packages on
    disk (:class:`AotForward`); ``precompile``: traced ahead of time, into files on disk
    (:class:`PrecompiledForward`). A UNet compiled already stays as it is."""
    if is_compiled(unet):
        return
    if regional and not has_repeated_blocks(unet):
        raise ValueError(
            f"compile='regional': {type(unet).__name__} has none of the blocks it compiles "
            f"({', '.join(REPEATED_BLOCKS)}); use compile='all'"
        )
    import torch._dynamo

    # one graph per (row bucket, call length): a handful, more than dynamo's default of 8
    # would only be reached by plans of many uneven call lengths (aot and pre too, where they
    # compile in process instead). Regional: the blocks of a class share one forward, with a
    # graph per (input shape, row bucket): the up path's ResNet blocks alone take a dozen
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 256 if regional else 32))
    if aot or precompile:
        _aot_in_place(unet, "the UNet", options, precompile=precompile)
        return
    if not regional:
        _compile_in_place(unet, "the UNet", options)
        return
    cache = use_compile_cache()
    unet._repeated_blocks = REPEATED_BLOCKS
    unet.compile_repeated_blocks(fullgraph=False, dynamic=False, **_backend(options))
    for block in unet.modules():
        if type(block).__name__ in REPEATED_BLOCKS and block._compiled_call_impl is not None:
            block._compiled_call_impl = _GatedBlock(block, block._compiled_call_impl)
    setattr(unet, _COMPILED_FLAG, True)
    logger.info("compiling the UNet's repeated blocks (graphs cached in %s)", cache)


def has_repeated_blocks(unet: Any) -> bool:
    """Whether ``unet`` has any of the blocks ``compile="regional"`` compiles
    (:data:`REPEATED_BLOCKS`)."""
    return any(type(m).__name__ in REPEATED_BLOCKS for m in unet.modules())


#: this thread's forward passes leave the compiled blocks eager (:func:`eager_blocks`)
_EAGER_BLOCKS = _ThreadFlag()


def eager_blocks() -> contextlib.AbstractContextManager[None]:
    """Run a regionally compiled UNet's blocks eager on this thread for the block (a row
    bucket the render leaves eager: its shapes compile nothing). Other threads' passes, a
    decoder compiled on the main thread, another device's worker, are left as they are."""
    return _EAGER_BLOCKS.held()


class _GatedBlock:
    """A compiled block's call (``nn.Module._compiled_call_impl``) that runs the block eager,
    hooks and all, inside :func:`eager_blocks`."""

    def __init__(self, block: Any, compiled: Any) -> None:
        self.block = block
        self.compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _EAGER_BLOCKS.on:
            return self.block._call_impl(*args, **kwargs)
        return self.compiled(*args, **kwargs)


def decoder_compiles(
    choice: str, frames: int, chunk: int, every_bucket: bool | None = None
) -> bool:
    """Whether a render compiled as ``choice`` (:func:`resolve_compile`'s) that decodes
    ``frames`` frames ``chunk`` at a time compiles its VAE decoder (``vdec``): one that
    compiles every bucket (``every_bucket``, by default ``choice`` in :data:`EVERY_BUCKET`)
    always, one that compiles where it repays (``"on"``, ``"auto"``) once it decodes
    :data:`COMPILE_MIN_PASSES` chunks (800 frames of 16)."""
    if choice == "off":
        return False
    if every_bucket is None:
        every_bucket = choice in EVERY_BUCKET
    return every_bucket or -(-frames // chunk) >= COMPILE_MIN_PASSES


def compile_decoder(vae: Any, *, aot: bool = False, precompile: bool = False) -> bool:
    """Compile ``vae.decoder`` in place, once, with static shapes (the pipeline's decode pads
    a short last chunk to a full one, so one graph serves a render; ``aot``: ahead of time,
    as :class:`AotForward`; ``precompile``: as :class:`PrecompiledForward`); False when
    there is no decoder to compile or it is compiled already."""
    decoder = getattr(vae, "decoder", None)
    if decoder is None or is_compiled(decoder):
        return False
    if aot or precompile:
        _aot_in_place(decoder, "the VAE decoder", precompile=precompile)
    else:
        _compile_in_place(decoder, "the VAE decoder")
    return True


@contextlib.contextmanager
def eager_calls(module: Any) -> Any:
    """Inside the block, calls of ``module`` compiled in place (:func:`compile_decoder`) run
    its eager forward, as :func:`is_compiled` then says: a render that did not ask for the
    compiled one. Its graphs are kept for a later render that does."""
    impl = getattr(module, "_compiled_call_impl", None)
    flag = getattr(module, _COMPILED_FLAG, False)
    if module is None or (impl is None and not flag):
        yield
        return
    module._compiled_call_impl = None
    setattr(module, _COMPILED_FLAG, False)
    try:
        yield
    finally:
        module._compiled_call_impl = impl
        setattr(module, _COMPILED_FLAG, flag)


def _backend(options: dict[str, Any] | None) -> dict[str, Any]:
    """``torch.compile``'s arguments for Inductor with ``options``: a :class:`BucketTuning`
    backend where they tune kernels (so only the tuned bucket's graphs do), else the options
    as they are."""
    if tunes(options):
        return {"backend": BucketTuning(options or {})}
    return {"options": options or None}


def _compile_in_place(module: Any, name: str, options: dict[str, Any] | None = None) -> None:
    """``module.compile`` with static shapes and the compile cache on disk, marked compiled."""
    cache = use_compile_cache()
    module.compile(fullgraph=False, dynamic=False, **_backend(options))
    setattr(module, _COMPILED_FLAG, True)
    logger.info("compiling %s (graphs cached in %s)", name, cache)


def _aot_in_place(
    module: Any, name: str, options: dict[str, Any] | None = None, precompile: bool = False
) -> None:
    """Run ``module``'s calls through :class:`AotForward` (the hook ``nn.Module.compile``
    uses: ``module(...)`` runs the package of its shapes, ``module.forward(...)`` stays eager),
    marked compiled; ``precompile``: through its :class:`PrecompiledForward` from the start."""
    if options and options.get("triton.cudagraphs"):
        raise ValueError(_no_cuda_graphs("pre" if precompile else "aot"))
    module._compiled_call_impl = AotForward(module, options, precompile=precompile)
    setattr(module, _COMPILED_FLAG, True)
    what = "traced ahead of time" if precompile else "compiling ahead of time"
    logger.info("%s: %s (files in %s)", name, what, compile_cache_dir() / AOT_DIR)


#: seconds this process has spent in each of :data:`AOT_PHASES`
_AOT_SECONDS: dict[str, float] = dict.fromkeys(AOT_PHASES, 0.0)
_AOT_LOCK = threading.Lock()


def _aot_spent(phase: str, seconds: float) -> None:
    with _AOT_LOCK:
        _AOT_SECONDS[phase] += seconds


class AotUnavailable(RuntimeError):
    """AOTInductor cannot load packages here: its loader ended a child process (a crash in
    native code, which no Python error reports), so ``compile="aot"`` compiles in process."""


#: why this process's compiled modules ran otherwise than asked, and how, in order
_AOT_FALLBACKS: list[str] = []

#: a child process's load of a package (:func:`_probe`)
_PROBE = "import sys, torch; torch._inductor.aoti_load_package(sys.argv[1], device_index=int(sys.argv[2]))"


def aot_fallbacks() -> list[str]:
    """Why modules compiled otherwise than asked in this process so far, and how: ``aot``
    running precompiled graphs, ``pre`` compiling in process, a UNet called block by block
    compiling its blocks (:func:`record_fallback`); one message per module."""
    with _AOT_LOCK:
        return list(_AOT_FALLBACKS)


def record_fallback(message: str) -> None:
    """Log ``message`` (``"compile='<choice>': <why>; <what runs instead>"``) as a warning and
    keep it for :func:`aot_fallbacks`."""
    logger.warning(message)
    with _AOT_LOCK:
        _AOT_FALLBACKS.append(message)


def _probe(path: Path, index: int) -> tuple[bool, str]:
    """Load the package at ``path`` in a child process: (True, "") when it loads; (False,
    why) when the loader died there (a signal: the package would end this process too);
    (True, why) when it raised (an unreadable file, which this process may build again)."""
    import signal
    import subprocess
    import time

    started = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path), str(index)],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return False, f"loading {path.name} in a child process took over 900 s"
    finally:
        _aot_spent("aot_probe", time.perf_counter() - started)
    if done.returncode == 0:
        return True, ""
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return False, f"AOTInductor's loader died with {name} loading {path.name}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return True, lines[-1] if lines else f"exit status {done.returncode}"


def _unavailable_file(folder: Path, device_type: str) -> Path:
    return folder / f"unavailable-{device_type}.json"


def _record_unavailable(path: Path, device_type: str, why: str) -> None:
    """Keep why AOTInductor's loader died on ``path`` (a package for ``device_type``), so
    later renders with this PyTorch compile in process at once instead of building packages
    first."""
    import json

    import torch

    record = {"torch": torch.__version__, "package": path.name, "reason": why}
    _unavailable_file(path.parent, device_type).write_text(json.dumps(record, indent=1) + "\n")


def _refuse_where_unavailable(folder: Path, device_type: str) -> None:
    """Raise :class:`AotUnavailable` where a render with this PyTorch found AOTInductor's
    loader dying on this device type (a record of another PyTorch is dropped)."""
    import json

    import torch

    file = _unavailable_file(folder, device_type)
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError):
        return
    if record.get("torch") != torch.__version__:
        file.unlink(missing_ok=True)
        return
    raise AotUnavailable(f"{record.get('reason')} (recorded in {file}: delete it to try again)")


def _stamp(path: Path) -> str:
    """A package file's size and modification time: what its ``.ok`` mark vouches for."""
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


class _Program:
    """One loaded package, the weights it reads (by name) and the state of those last handed
    to it."""

    #: the names of constants a package computes itself from the weights (runtime folding)
    FOLDED = "_FOLDED_CONST"

    def __init__(self, model: Any, weights: dict[str, Any], path: Any) -> None:
        self.model = model
        self.fqns = [f for f in model.get_constant_fqns() if not f.startswith(self.FOLDED)]
        missing = [f for f in self.fqns if f not in weights]
        if missing:
            raise ValueError(f"{path} reads weights the module lacks: {missing[:3]}")
        self.state: tuple[tuple[int, int], ...] = ()

    def bind(self, weights: dict[str, Any]) -> None:
        """Hand ``weights`` to the package when any was replaced or changed in place since
        the last time (its pointer or version counter moved); the package then folds its
        derived constants again."""
        state = tuple((weights[f].data_ptr(), _version(weights[f])) for f in self.fqns)
        if state != self.state:
            self.model.load_constants(
                {f: weights[f] for f in self.fqns}, check_full_update=False, user_managed=True
            )
            self.state = state


def _version(tensor: Any) -> int:
    """A tensor's in-place change counter (an inference tensor has none: -1)."""
    try:
        return int(tensor._version)
    except RuntimeError:
        return -1


def ordinary_weights(module: Any) -> int:
    """Replace ``module``'s parameters and buffers made under ``torch.inference_mode`` (a
    pipeline loaded inside it) by ordinary tensors of the same values; the number replaced.

    An inference tensor keeps no version counter, so an in-place change to it (a state dict
    loaded into it) cannot be seen: a speed-up copy or a package's folded constants made from
    it would silently keep the old weights. An ordinary tensor's counter moves even when it
    is changed inside ``inference_mode``."""
    import torch

    replaced = 0
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is not None and param.is_inference():
                    grad = param.requires_grad
                    sub._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=grad)
                    replaced += 1
            for name, buf in list(sub._buffers.items()):
                if buf is not None and buf.is_inference():
                    sub._buffers[name] = buf.clone()
                    replaced += 1
    return replaced


class AotForward:
    """A module's calls (``nn.Module._compiled_call_impl``) run by AOTInductor packages, one
    per call signature (:func:`call_signature` of the arguments: shapes, dtypes, devices and
    other values), kept on disk under :func:`compile_cache_dir`/``aot``.

    A signature's first call loads its package when one is on disk for the same key
    (:meth:`key`: the module's class, config, structure, parameter shapes and dtypes, the
    Inductor options, the signature, the device kind and PyTorch's version), else exports the
    module's ``forward`` with these arguments (``torch.export``, non-strict) and compiles it
    (``torch._inductor.aoti_compile_and_package``, the weights left out of the package and
    the constants Inductor derives from them folded at run time). A package that cannot be
    read is compiled again; processes that share the cache build a package once (a file lock
    per package). The module's weights are handed to a package by pointer
    (``load_constants(user_managed=True)``) and again whenever one of them is replaced (a
    loaded state dict) or changed in place. A module moved to another device calls with
    other signatures, so it gets its own packages."""

    def __init__(
        self, module: Any, options: dict[str, Any] | None = None, precompile: bool = False
    ) -> None:
        self.module = module
        self.options = dict(options or {})
        self.precompile = bool(precompile)
        self.programs: dict[tuple, _Program] = {}
        #: per signature: "built" (exported and compiled) or "loaded" (from the disk)
        self.sources: dict[tuple, str] = {}
        #: where AOTInductor cannot load packages (:class:`AotUnavailable`), or asked for
        #: (``precompile``): the module's calls run by a :class:`PrecompiledForward` instead
        self.fallback: Any = (
            PrecompiledForward(module, self.options, self.key) if precompile else None
        )

    def active_options(self) -> dict[str, Any]:
        """The Inductor options of a package built now: :data:`TUNING_OPTIONS` only inside
        :func:`tuning_compiles` (the bucket that carries the render)."""
        return _active_options(self.options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        if needs_gradient(args, kwargs):
            return self.module.forward(*args, **kwargs)
        if self.fallback is not None:
            return self.fallback(*args, **kwargs)
        signature = self.signature(args, kwargs, self.module)
        program = self.programs.get(signature)
        if program is None:
            try:
                program = self._program(signature, args, kwargs)
            except AotUnavailable as exc:
                return self._fall_back(str(exc))(*args, **kwargs)
            self.programs[signature] = program
        weights = self._weights()
        if any(w.is_inference() for w in weights.values()) and ordinary_weights(self.module):
            weights = self._weights()
        program.bind(weights)
        with torch.no_grad():
            return program.model(*args, **kwargs)

    def _fall_back(self, reason: str) -> Any:
        """Run every later call through :class:`PrecompiledForward`: graphs dynamo traced
        once and saved, loaded by a later process without tracing again. The reason is logged
        and kept (:func:`aot_fallbacks`)."""
        name = type(self.module).__name__
        message = (
            f"compile='aot': {reason}; {name} runs precompiled graphs instead "
            f"(torch.compile's aot_compile, saved as *{PRE_SUFFIX} beside the packages)"
        )
        record_fallback(message)
        self.fallback = PrecompiledForward(self.module, self.options, self.key, "aot")
        return self.fallback

    # copies and pickles (a runner's copy of a UNet, a Beam worker's) start without packages
    def __deepcopy__(self, memo: dict[int, Any]) -> AotForward:
        import copy

        return AotForward(
            copy.deepcopy(self.module, memo), copy.deepcopy(self.options, memo), self.precompile
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"module": self.module, "options": self.options, "precompile": self.precompile}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["module"], state["options"], state.get("precompile", False)
        )

    @staticmethod
    def signature(args: tuple, kwargs: dict[str, Any], module: Any = None) -> tuple:
        """:func:`call_signature` of a call's arguments, keyword ones by name, and whether
        ``module`` is in training mode (dropout, norms' statistics: traced into a graph)."""
        mode = () if module is None else (("training", bool(module.training)),)
        return call_signature(*args, *(v for kv in sorted(kwargs.items()) for v in kv), *mode)

    def _weights(self) -> dict[str, Any]:
        """The module's parameters and buffers by their name in the exported program."""
        named = dict(self.module.named_parameters(prefix="m"))
        named.update(self.module.named_buffers(prefix="m"))
        return named

    def key(self, signature: tuple) -> str:
        """The package's name: a hash of everything the compiled code depends on."""
        import hashlib
        import json
        import platform

        import torch

        from storygen.cache import _config_dict

        module = self.module
        device = next(iter(self._weights().values())).device
        where: Any = [platform.machine(), _vector_isa()]  # the CPU code's instruction set
        if device.type == "cuda":
            where = [torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)]
        payload = {
            "format": 2,
            # a precompiled file holds Python bytecode
            "python": list(sys.version_info[:2]),
            # TF32 changes what a float32 product computes
            "tf32": [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32],
            "torch": torch.__version__,
            "device": [device.type, where],
            "class": type(module).__qualname__,
            # the config's own settings, not where it was read from (``_name_or_path``)
            "config": {
                k: v for k, v in (_config_dict(module) or {}).items() if not k.startswith("_")
            },
            # speed-ups show here: a patched forward (tconv), an attention processor (pattn),
            # a fused projection (qkv), a float8 layer (fp8)
            "modules": [
                [
                    name,
                    type(m).__qualname__,
                    "forward" in vars(m),
                    type(getattr(m, "processor", None)).__qualname__,
                ]
                for name, m in module.named_modules()
            ],
            "weights": [
                [n, list(t.shape), str(t.dtype), list(t.stride())]
                for n, t in self._weights().items()
            ],
            "options": self.active_options(),
            "signature": repr(tuple(_device_kind(v) for v in signature)),
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def _program(self, signature: tuple, args: tuple, kwargs: dict[str, Any]) -> _Program:
        import time

        import torch

        folder = compile_cache_dir() / AOT_DIR
        path = folder / f"{self.key(signature)}.pt2"
        device = next(iter(self._weights().values())).device
        index = device.index if device.type == "cuda" and device.index is not None else -1
        if device.type == "cuda" and index < 0:
            index = torch.cuda.current_device()
        folder.mkdir(parents=True, exist_ok=True)
        # processes that share the cache (a Beam job's workers) build a package once: the
        # others wait for it, then load it
        started = time.perf_counter()
        with FileLock(f"{path}.lock"):
            _aot_spent("aot_wait", time.perf_counter() - started)
            _refuse_where_unavailable(folder, device.type)
            loaded = self._load(signature, path, (device.type, index))
            return loaded or self._build(signature, args, kwargs, path, (device.type, index))

    def _checked(self, path: Path, device: tuple[str, int]) -> bool:
        """Whether a child process loads the package at ``path`` (once per file: a ``.ok``
        mark beside it vouches for it until it changes). AOTInductor's loader is native
        code: a package it cannot run ends the process that loads it, with no error to
        catch, so a render's own process loads only packages a child has. Raises
        :class:`AotUnavailable` (and records it for later renders) when the loader died;
        False when it raised (an unreadable file)."""
        mark = path.with_name(f"{path.name}.ok")
        if mark.exists() and mark.read_text() == _stamp(path):
            return True
        loads, why = _probe(path, device[1])
        if not loads:
            _record_unavailable(path, device[0], why)
            raise AotUnavailable(why)
        if why:
            logger.warning("compile='aot': cannot load %s (%s)", path, why)
            return False
        mark.write_text(_stamp(path))
        return True

    def _load(self, signature: tuple, path: Path, device: tuple[str, int]) -> _Program | None:
        """The package at ``path``, loaded on ``device`` (its type and index); None when
        there is none or it cannot be read (compiled again then)."""
        import time

        import torch

        if path.exists() and self._checked(path, device):
            started = time.perf_counter()
            try:
                model = torch._inductor.aoti_load_package(str(path), device_index=device[1])
                loaded = _Program(model, self._weights(), path)
            except Exception as exc:  # a torn or foreign file: compile it again
                logger.warning("compile='aot': cannot load %s (%s); compiling it again", path, exc)
            else:
                _aot_spent("aot_load", time.perf_counter() - started)
                self.sources[signature] = "loaded"
                return loaded
        return None

    def _build(
        self,
        signature: tuple,
        args: tuple,
        kwargs: dict[str, Any],
        path: Path,
        device: tuple[str, int],
    ) -> _Program:
        """Export the module's forward with ``args`` and ``kwargs``, compile it into a
        package at ``path`` and load it."""
        import time

        import torch

        started = time.perf_counter()
        # non-strict export restores the attributes of every submodule after tracing, as
        # copies: the live objects (the render's row buckets, read as levels are planned)
        # are put back
        kept = [(m, dict(vars(m))) for m in self.module.modules()]
        try:
            with torch.no_grad():
                program = torch.export.export(_forward_of(self.module), args, kwargs, strict=False)
        finally:
            for m, attrs in kept:
                for name, value in attrs.items():
                    if vars(m).get(name) is not value:
                        vars(m)[name] = value
        _aot_spent("aot_export", time.perf_counter() - started)
        started = time.perf_counter()
        partial = path.parent / f"{path.stem}.{os.getpid()}.{threading.get_ident()}.partial.pt2"
        # the weights stay out of the package; what Inductor derives from them (folded
        # constants: a reshaped weight, a norm's scale folded into a product) is computed
        # when they are handed over, not baked in from these weights' values
        configs = {
            **self.active_options(),
            "aot_inductor.package_constants_in_so": False,
            "aot_inductor.use_runtime_constant_folding": True,
        }
        try:
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(partial), inductor_configs=configs
            )
            os.replace(partial, path)  # whole or not at all: another process may read it
        finally:
            partial.unlink(missing_ok=True)
        _aot_spent("aot_compile", time.perf_counter() - started)
        if not self._checked(path, device):
            raise RuntimeError(f"compile='aot': the package just built, {path}, cannot be loaded")
        started = time.perf_counter()
        model = torch._inductor.aoti_load_package(str(path), device_index=device[1])
        _aot_spent("aot_load", time.perf_counter() - started)
        self.sources[signature] = "built"
        return _Program(model, self._weights(), path)


def needs_gradient(args: tuple, kwargs: dict[str, Any]) -> bool:
    """Whether a call is to be differentiated: autograd on, and an input that requires a
    gradient (reconstruction guidance differentiates the UNet's output by its noisy input).
    Graphs built ahead of time (``aot``, ``pre``) run without autograd, so such a call runs
    the module's own forward instead."""
    import torch
    from torch.utils._pytree import tree_leaves

    return torch.is_grad_enabled() and any(
        isinstance(v, torch.Tensor) and v.requires_grad for v in tree_leaves((args, kwargs))
    )


def _vector_isa() -> str:
    """The vector instruction set Inductor compiles CPU code for on this machine ("" where
    PyTorch cannot tell): code built for another does not run here."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        return str(pick_vec_isa())
    except Exception:  # an older PyTorch, or no compiler to probe with
        return ""


def _active_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for a graph compiled now: :data:`TUNING_OPTIONS` only inside
    :func:`tuning_compiles` (the bucket that carries the render)."""
    if _TUNING.on:
        return dict(options)
    return {k: v for k, v in options.items() if k not in TUNING_OPTIONS}


class PrecompiledForward:
    """A module's calls run by graphs dynamo traced ahead of time (``torch.compile``'s
    ``aot_compile``, whole graph, static shapes), one per call signature, saved to
    ``<compile cache>/aot/<key>.dynamo`` (``key(signature)``: :meth:`AotForward.key`) and
    loaded by a later process, which then neither traces nor compiles. The module is the
    compiled function's first argument, so its weights are read at every call (one file
    serves any weights of the same shapes). The graphs' guards are not kept: the signature
    the file is named by stands for them.

    Inductor's code for a CUDA graph names the device it was traced on, so a file is kept per
    CUDA device index (a render over two GPUs traces each once).

    A module that dynamo cannot trace as one graph (a graph break) compiles in process
    instead, as ``compile="all"`` does, and says why (:func:`aot_fallbacks`); ``choice``
    names the compile choice in what it says. It is called through :class:`AotForward`, which
    keeps calls to differentiate (:func:`needs_gradient`) from it."""

    def __init__(
        self, module: Any, options: dict[str, Any] | None, key: Any, choice: str = "pre"
    ) -> None:
        self.module = module
        self.options = dict(options or {})
        self.key = key
        self.choice = choice
        self.calls: dict[tuple, Any] = {}
        #: per signature: "built" (traced, compiled and saved) or "loaded" (from the disk)
        self.sources: dict[tuple, str] = {}
        #: where a call could not be traced whole: the module compiled in process
        self.whole: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        if self.whole is not None:
            return self.whole(*args, **kwargs)
        signature = AotForward.signature(args, kwargs, self.module)
        call = self.calls.get(signature)
        if call is None:
            if (why := precompile_unavailable()) is not None:
                return self._compile_in_process(why)(*args, **kwargs)
            try:
                call = self._call(signature, args, kwargs)
            except _NotWhole as exc:
                return self._compile_in_process(str(exc))(*args, **kwargs)
            self.calls[signature] = call
        with torch.no_grad():
            return call(self.module, *args, **kwargs)

    def _compile_in_process(self, reason: str) -> Any:
        name = type(self.module).__name__
        message = (
            f"compile={self.choice!r}: {reason}; {name} compiles in process instead "
            "(torch.compile, every shape)"
        )
        record_fallback(message)
        self.module._compiled_call_impl = None
        _compile_in_place(self.module, name, self.options)
        self.whole = self.module._compiled_call_impl
        return self.whole

    def _call(self, signature: tuple, args: tuple, kwargs: dict[str, Any]) -> Any:
        import time

        use_compile_cache()  # the kernels a loaded graph runs are Inductor's cached ones
        folder = compile_cache_dir() / AOT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        cuda = {v[2].index or 0 for v in _tensor_entries(signature) if v[2].type == "cuda"}
        where = f".cuda{min(cuda)}" if cuda else ""
        path = folder / f"{self.key(signature)}{where}{PRE_SUFFIX}"
        started = time.perf_counter()
        with FileLock(f"{path}.lock"):  # processes that share the cache build a file once
            _aot_spent("aot_wait", time.perf_counter() - started)
            return self._load(signature, path) or self._build(signature, args, kwargs, path)

    def _load(self, signature: tuple, path: Path) -> Any:
        import time

        import torch

        if not path.exists():
            return None
        started = time.perf_counter()
        try:
            with open(path, "rb") as f:
                call = torch.compiler.load_compiled_function(f)
        except Exception as exc:  # a torn file, another PyTorch's or GPU's: traced again
            logger.warning(
                "compile=%r: cannot load %s (%s); tracing it again", self.choice, path, exc
            )
            return None
        _aot_spent("pre_load", time.perf_counter() - started)
        self.sources[signature] = "loaded"
        return call

    def _build(self, signature: tuple, args: tuple, kwargs: dict[str, Any], path: Path) -> Any:
        import time

        import torch

        started = time.perf_counter()
        options = {
            **_active_options(self.options),
            # the file's name (its signature and everything the code depends on) is its guard
            "guard_filter_fn": torch.compiler.skip_all_guards_unsafe,
        }
        compiled: Any = torch.compile(_module_call, fullgraph=True, dynamic=False, options=options)
        partial = path.parent / f"{path.stem}.{os.getpid()}.{threading.get_ident()}.partial"
        try:
            with torch.no_grad():
                call = compiled.aot_compile(((self.module, *args), kwargs))
            call.save_compiled_function(str(partial))
            os.replace(partial, path)  # whole or not at all: another process may read it
        except Exception as exc:  # a graph break, code dynamo cannot save
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise _NotWhole(f"dynamo cannot precompile it as one graph: {first}") from exc
        finally:
            partial.unlink(missing_ok=True)
        _aot_spent("pre_compile", time.perf_counter() - started)
        self.sources[signature] = "built"
        return call


def precompile_unavailable() -> str | None:
    """Why this PyTorch cannot save dynamo's graphs (``torch.compile(...).aot_compile`` and
    ``torch.compiler.load_compiled_function``), or None where it can."""
    import torch

    needs = ("load_compiled_function", "skip_all_guards_unsafe")
    missing = [n for n in needs if not hasattr(torch.compiler, n)]
    if missing:
        return f"PyTorch {torch.__version__} has no torch.compiler.{missing[0]}"
    return None


class _NotWhole(RuntimeError):
    """Dynamo could not trace a module's call as one graph."""


def _module_call(module: Any, *args: Any, **kwargs: Any) -> Any:
    """``module``'s forward, the function :class:`PrecompiledForward` compiles (the module an
    argument, so the saved graph reads whatever weights it holds)."""
    return module.forward(*args, **kwargs)


def _is_entry(value: Any) -> bool:
    """Whether a signature's entry is a tensor's (shape, dtype, device, strides)."""
    return isinstance(value, tuple) and len(value) == 4 and hasattr(value[2], "type")


def _device_kind(value: Any) -> Any:
    """A signature's entry with a tensor's device as its kind (cuda:1's package is cuda:0's),
    a tuple's entries too."""
    if _is_entry(value):
        return (value[0], str(value[1]), value[2].type, value[3])
    if _is_tuple_entry(value):
        return (value[0], tuple(_device_kind(v) for v in value[1]))
    return value


def _is_tuple_entry(value: Any) -> bool:
    """Whether a signature's entry is a tuple's (its type's name, its items' entries)."""
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], tuple)
    )


def _tensor_entries(signature: tuple) -> Iterator[tuple]:
    """The tensors' entries of a signature, those inside its tuples' too."""
    for value in signature:
        if _is_entry(value):
            yield value
        elif _is_tuple_entry(value):
            yield from _tensor_entries(value[1])


def _forward_of(module: Any) -> Any:
    """A module whose forward is ``module.forward`` (its weights named ``m.<name>``), for
    export: calling ``module`` itself would run its compiled call."""
    import torch

    class Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = module

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.m.forward(*args, **kwargs)

    return Forward()


#: the call signatures each compiled module has run (:func:`compiled_call`), by the module
#: itself: a copy (``copy.deepcopy``) starts with none, as its graphs compile anew
_WARM: weakref.WeakKeyDictionary[Any, set[tuple]] = weakref.WeakKeyDictionary()


def warm_calls(module: Any) -> set[tuple]:
    """The call signatures ``module`` has run compiled, through :func:`compiled_call`."""
    with _GATE._cond:
        return set(_WARM.get(module, ()))


class _CompileGate:
    """Lets a compiled module's first call of a signature (the one that compiles a graph) run
    alone in the process, and its other calls side by side.

    A compile traces the module with process-wide state: PyTorch's FX tracer patches
    ``nn.Module.__call__`` and sets a global "FX tracing" flag. A compiled module called from
    another thread meanwhile is taken for one nested in the trace, which PyTorch 2.11 refuses
    ("Detected that you are using FX to symbolically trace a dynamo-optimized function"; 2.13
    also holds a global "compiling" flag that hides the case). A render calls its compiled
    UNet on a device's worker thread and its compiled VAE decoder on the render's own thread,
    so the first decode (which compiles the decoder) met the UNet's next batch (H200,
    ModelScope shape, compile ``all``). A compile waits for the calls running to finish and holds the others back until
    it is done; a call waiting to compile goes before calls that arrive after it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """No call running, none waiting (a forked child's start)."""
        self._cond = threading.Condition()
        self._running = 0  # calls of signatures already compiled, running now
        self._compiling = False
        self._waiting = 0  # first calls waiting to compile

    @contextlib.contextmanager
    def call(self, module: Any, signature: tuple) -> Iterator[bool]:
        with self._cond:
            warm = _WARM.setdefault(module, set())
            first = signature not in warm
            if first:
                self._waiting += 1
                self._cond.wait_for(lambda: not self._compiling and not self._running)
                self._waiting -= 1
                self._compiling = True
            else:
                self._cond.wait_for(lambda: not self._compiling and not self._waiting)
                self._running += 1
        ok = False
        try:
            yield first
            ok = True
        finally:
            with self._cond:
                if first:
                    self._compiling = False
                    if ok:  # a failed first call compiles again next time
                        warm.add(signature)
                else:
                    self._running -= 1
                self._cond.notify_all()


_GATE = _CompileGate()
# a forked child has none of its parent's threads, so none of their calls: it starts afresh
os.register_at_fork(after_in_child=_GATE.reset)


def call_signature(*values: Any) -> tuple:
    """What decides which graph a compiled call runs: each tensor's shape, dtype, device and
    strides (static shapes; a graph reads its inputs' memory as laid out when it was built);
    a number with its type (``True``, ``1`` and ``1.0`` compare equal); a tuple (a
    :class:`ContextTable`, say) or list as its type's name and its items' signature, a dict
    as its keys and values' in order; any other value as it is."""
    import torch

    def entry(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return (tuple(v.shape), v.dtype, v.device, tuple(v.stride()))
        if isinstance(v, (tuple, list)):
            return (type(v).__qualname__, tuple(entry(item) for item in v))
        if isinstance(v, dict):
            return ("dict", tuple(x for k, item in v.items() for x in (k, entry(item))))
        if isinstance(v, (bool, int, float, complex)):
            return (type(v).__qualname__, v)
        return v

    return tuple(entry(v) for v in values)


def compiled_call(module: Any, *values: Any) -> contextlib.AbstractContextManager[bool]:
    """The block that calls compiled ``module`` with ``values`` (its tensors and the settings
    its graph depends on): a first call of a signature, which compiles, runs alone in the
    process (:class:`_CompileGate`). Yields whether this call is that first one. Autograd
    on or off is part of the signature: a graph to differentiate is another graph."""
    import torch

    return _GATE.call(module, (("grad", torch.is_grad_enabled()), *call_signature(*values)))


#: the outermost compile phase PyTorch times: a compile, whole (dynamo's tracing and Inductor's
#: code generation, or the loads of their cached results)
OUTER_PHASE = "_compile.compile_inner"


def compile_phases() -> dict[str, float]:
    """Seconds this process has spent so far in each phase of compiling that PyTorch times
    (``bytecode_tracing``: dynamo reading the Python; Inductor's code generation and kernel
    compiles, or the loads of cached ones; ...), summed over calls. The phases nest, so they
    do not add up to the outermost, :data:`OUTER_PHASE`. Empty where PyTorch
    keeps no such record. ``compile="aot"``'s :data:`AOT_PHASES` are among them."""
    with _AOT_LOCK:
        phases = dict(_AOT_SECONDS)
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:  # pragma: no cover - a PyTorch without the record
        return phases
    return phases | {name: float(sum(t)) for name, t in compilation_time_metrics.items()}


def compile_seconds(phases: dict[str, float]) -> float:
    """A compile's whole time from its phases (:func:`phases_since`): dynamo's outermost
    phase (:data:`OUTER_PHASE`) and ``compile="aot"``'s (:data:`AOT_PHASES`)."""
    return phases.get(OUTER_PHASE, 0.0) + sum(phases.get(p, 0.0) for p in AOT_PHASES)


def phases_since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The compile phases' seconds between two :func:`compile_phases` records, longest first,
    those of a millisecond or more."""
    spent = {name: t - before.get(name, 0.0) for name, t in after.items()}
    return dict(sorted(((n, t) for n, t in spent.items() if t >= 1e-3), key=lambda kv: -kv[1]))


def is_compiled(unet: Any) -> bool:
    """Whether ``unet`` (or a decoder) runs compiled: marked so, and its compiled call, or its
    blocks' (regional), still in place. A copy (``copy.deepcopy``, a pickle) keeps the mark
    but not the compiled calls, which ``nn.Module`` drops: it runs eager until compiled anew."""
    if not getattr(unet, _COMPILED_FLAG, False):
        return False
    if getattr(unet, "_compiled_call_impl", None) is not None:
        return True
    modules = unet.modules() if hasattr(unet, "modules") else ()
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in modules)


def row_bucket(rows: int) -> int:
    """The rows a compiled forward pass of a level runs, from its largest batch: the next
    power of two up to 8 (1, 2, 4, 8), then the next even count (a guidance pair: 29 -> 30,
    114 -> 114), so the level's other batches (one call shorter at most) pad by a row or two:
    a level of 57- and 56-call batches with guidance runs 456 rows for 450 (1.3 % spare), where
    rounding to a multiple of 8 ran 480 (6.7 %)."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows!r}")
    if rows <= 8:
        return 1 << (rows - 1).bit_length()
    return rows + rows % 2


@contextlib.contextmanager
def cudnn_autotune(enabled: bool) -> Iterator[bool]:
    """cuDNN's autotuner (``torch.backends.cudnn.benchmark``) on inside the block when
    ``enabled``, the process's own setting back afterwards; yields whether it is on.

    Each convolution shape then times cuDNN's algorithms on its first pass and keeps the
    fastest (a render runs a handful of shapes many times). Every algorithm computes the same
    convolution, but the pick is made by timing and may differ from run to run, so repeated
    renders agree to floating-point rounding rather than bit for bit (turn it off for bit-exact
    repeats). CUDA renders turn it on by default; on a CPU it does nothing."""
    import torch

    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or enabled
    try:
        yield torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before


#: a device -> the high-priority CUDA stream its frames are decoded on (:func:`beside_sampling`)
_SIDE_STREAMS: dict[str, Any] = {}
_SIDE_STREAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def beside_sampling(device: Any) -> Iterator[Any]:
    """The calling thread's work on ``device`` inside the block (decoding finished frames)
    runs on a CUDA stream of its own, of high priority, beside the sampling; yields the
    stream, or None on a CPU, where nothing changes.

    The worker thread (:func:`storygen.runner.device_worker`) queues a batch's UNet passes on
    the device's default stream, as far ahead as the driver takes them. Decoding on that
    stream too, each chunk's copy to the device and back waited behind the passes queued
    before it, so the decode of a level's first batch trailed its second batch: on an H200
    (ModelScope shape, 3,376 frames, 25 steps) the decode stage took 69.4 s beside a 69.8 s
    batch, and at 5 steps a render ran 6.4-6.6 s past its last UNet batch, where decoding
    that batch's 1,680 frames alone takes about 2.8 s. On its own stream a chunk waits only
    for its own copies and kernels; the inputs and outputs are host tensors, so nothing is
    shared with the sampling's stream."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        yield None
        return
    key = str(
        device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
    )
    with _SIDE_STREAMS_LOCK:
        if key not in _SIDE_STREAMS:
            # lower is sooner: a decode's kernels take SMs as the UNet's free them
            _SIDE_STREAMS[key] = torch.cuda.Stream(device=torch.device(key), priority=-1)
        stream = _SIDE_STREAMS[key]
    with torch.cuda.stream(stream):
        yield stream


def _temporal_conv_forward(self: Any, hidden_states: Any, num_frames: int = 1) -> Any:
    """``TemporalConvLayer.forward`` with its (3, 1, 1) ``Conv3d`` run as a (3, 1) ``Conv2d``
    over (batch, channels, frames, height × width): the same weights, the same sums."""
    import torch.nn.functional as F

    bf, c, h, w = hidden_states.shape
    x = hidden_states.view(bf // num_frames, num_frames, c, h * w).permute(0, 2, 1, 3)
    identity = x
    for seq in (self.conv1, self.conv2, self.conv3, self.conv4):
        *pre, conv = seq
        for module in pre:  # GroupNorm (over channels' groups × frames × pixels), SiLU, Dropout
            x = module(x)
        x = F.conv2d(x, conv.weight.squeeze(-1), conv.bias, padding=(conv.padding[0], 0))
    x = identity + x
    return x.permute(0, 2, 1, 3).reshape(bf, -1, h, w)


def fast_temporal_convs(unet: Any) -> int:
    """Run every temporal convolution layer of ``unet`` (diffusers' ``TemporalConvLayer``:
    four ``Conv3d`` with (3, 1, 1) kernels) as 2-D convolutions with (3, 1) kernels over
    (frames, pixels); returns how many layers. The weights stay where they are (state dicts,
    training and saving are unchanged) and the result is the same convolution, but a 2-D one
    is what cuDNN's fast kernels and Inductor's channels-last layout handle (a ``Conv3d`` keeps
    the UNet's activations in channels-first order around it)."""
    import types

    from diffusers.models.resnet import TemporalConvLayer

    count = 0
    layers: list[Any] = [m for m in unet.modules() if isinstance(m, TemporalConvLayer)]
    for module in layers:
        if getattr(module, "_storyloom_2d", False):
            continue
        convs = [seq[-1] for seq in (module.conv1, module.conv2, module.conv3, module.conv4)]
        if not all(
            c.kernel_size[1:] == (1, 1)
            and c.stride == (1, 1, 1)
            and c.dilation == (1, 1, 1)
            and c.groups == 1
            and c.padding[1:] == (0, 0)
            for c in convs
        ):
            continue
        module.forward = types.MethodType(_temporal_conv_forward, module)
        module._storyloom_2d = True
        count += 1
    return count


#: for each output phase of a 2x nearest-neighbour upsampling (even or odd row; the same for
#: columns), which of a 3-tap kernel's taps fall on the input's two rows it reads: an even
#: output row 2i reads input rows i-1 (tap 0) and i (taps 1 and 2), an odd one 2i+1 reads
#: rows i (taps 0 and 1) and i+1 (tap 2)
_PHASE_TAPS = (((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def subpixel_kernels(weight: Any) -> Any:
    """The four 2x2 kernels, (out, in, 2, 2) each, stacked as (2, 2, out, in, 2, 2) by output
    row and column phase, that compute a 3x3 convolution of a 2x nearest-neighbour upsampling
    from the input itself: each is the taps of ``weight`` (out, in, 3, 3) that read the same
    input pixel, summed (in float32, then in the weight's dtype)."""
    import torch

    taps = torch.tensor(_PHASE_TAPS, dtype=torch.float32, device=weight.device)
    kernels = torch.einsum("apr,oirc,bqc->aboipq", taps, weight.float(), taps)
    return kernels.to(weight.dtype)


def _subpixel_upsample_forward(
    self: Any, hidden_states: Any, output_size: Any = None, *args: Any, **kwargs: Any
) -> Any:
    """``Upsample2D.forward`` (2x nearest-neighbour, then a 3x3 convolution) as four 2x2
    convolutions of the input, one per output phase, interleaved: the same sums (the taps
    that read one input pixel added first), 4/9 of the multiply-adds, and no upsampled copy
    of the input. An ``output_size`` other than twice the input's runs the usual way."""
    import torch.nn.functional as F

    n, _, h, w = hidden_states.shape
    if output_size is not None and tuple(output_size) != (2 * h, 2 * w):
        return type(self).forward(self, hidden_states, output_size, *args, **kwargs)
    conv = self.conv if self.name == "conv" else self.Conv2d_0
    kernels = subpixel_kernels(conv.weight)
    padded = F.pad(hidden_states, (1, 1, 1, 1))
    out = None
    for a in (0, 1):
        for b in (0, 1):
            # output pixel (2i+a, 2j+b) reads input rows i-1+a, i+a and columns j-1+b, j+b:
            # padded rows i+a, i+a+1 and columns j+b, j+b+1
            part = F.conv2d(padded[:, :, a : a + h + 1, b : b + w + 1], kernels[a, b], conv.bias)
            if out is None:  # (n, out, h, 2, w, 2): row 2i+a, column 2j+b
                out = part.new_empty(n, part.shape[1], h, 2, w, 2)
            out[:, :, :, a, :, b] = part
    assert out is not None
    return out.view(n, out.shape[1], 2 * h, 2 * w)


def subpixel_upsamplers(unet: Any) -> int:
    """Run every 2x nearest-neighbour upsampling that a 3x3 convolution follows (diffusers'
    ``Upsample2D`` with ``use_conv``, the UNet's up blocks' samplers) as four 2x2
    convolutions of the input (:func:`_subpixel_upsample_forward`); returns how many layers.
    The weights stay where they are; the combined kernels are computed from them at each call
    (one small product over the 3x3 taps, 16 values per weight pair), so they follow any
    change to the weights. A render applies it to its own copy of the UNet, as the sums'
    rounding changes."""
    import types

    import torch
    from diffusers.models.upsampling import Upsample2D

    count = 0
    for module in unet.modules():
        if not isinstance(module, Upsample2D) or getattr(module, "_storyloom_subpixel", False):
            continue
        conv = getattr(module, "conv" if module.name == "conv" else "Conv2d_0", None)
        if not (
            module.use_conv
            and module.interpolate
            and not module.use_conv_transpose
            and module.norm is None
            and isinstance(conv, torch.nn.Conv2d)
            and conv.kernel_size == (3, 3)
            and conv.padding == (1, 1)
            and conv.stride == (1, 1)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
        ):
            continue
        module.forward = types.MethodType(_subpixel_upsample_forward, module)
        module._storyloom_subpixel = True
        count += 1
    return count


#: the speed-ups a render can ask for (``storygen render --speedups``): the UNet's, and the
#: VAE decoder's ``vdec``; each with what it does to the numbers
SPEEDUPS: dict[str, str] = {
    "tconv": "temporal convolutions as 2-D convolutions (the same sums)",
    "qkv": "each attention's projections fused into one matrix product (rounding only)",
    "upconv": "each 2x nearest-neighbour upsampling and the 3x3 convolution after it as four "
    "2x2 convolutions of the input, interleaved (4/9 of those multiply-adds; rounding only: "
    "the taps that read one input pixel are summed first)",
    "tattn": "temporal attention over a call's frames as two matrix products and a float32 "
    "softmax instead of a fused kernel (rounding only)",
    "pattn": "temporal attention with eight 16-frame sequences packed into each 128-token row "
    "of a FlexAttention kernel, masked to their own frames (rounding only; a render that "
    "compiles packs in its compiled passes, one that does not in every pass)",
    "mm1x1": "compiled graphs run 1x1 convolutions as matrix products (rounding only)",
    "xkv": "cross-attention keys and values projected once per distinct prompt of the story, "
    "then gathered for each frame, instead of from every frame's copy of its prompt's "
    "embedding (rounding only)",
    "cdt": "compiled graphs' fused kernels tuned by coordinate descent, in the bucket that "
    "carries half the render's work or more (a much longer compile of that bucket; rounding "
    "only)",
    "cgraph": "compiled graphs replayed as CUDA graphs (a bucket's kernels launched as one, "
    "for the small batches where launching them costs the most: the autoregressive windows, "
    "a story's first levels; inputs copied to the graph's own buffers; CUDA only, harmless "
    "elsewhere; the same sums)",
    "mat": "compiled graphs time Triton matrix-product templates against cuBLAS for each "
    "linear layer's shape and keep the faster, fusing the element-wise work that follows a "
    "product into its kernel, in the bucket that carries half the render's work or more "
    "(max_autotune_gemm: a much longer compile of that bucket; rounding only)",
    "fp8": "linear layers in float8 with per-row scales (torch._scaled_mm; CUDA, compute "
    "capability 8.9+): an approximation, see the README's error figures",
    "vdec": "the VAE's decoder compiled, one static graph of a full decode chunk (a short last "
    "chunk is padded), where the render compiles and decodes at least as many chunks as a "
    "UNet bucket needs passes (rounding only)",
}
#: ``speedups="auto"``, by device type
DEFAULT_SPEEDUPS: dict[str, tuple[str, ...]] = {
    "cuda": ("tconv", "qkv", "pattn", "mm1x1", "vdec"),
    "cpu": ("tconv",),
}
#: speed-ups that change the UNet's modules or attention processors, or its sums' rounding
#: (``upconv``): a render applies them to its own copy, so the pipeline's UNet stays as
#: loaded, trainable and savable, and a later render without them computes what it did before
_RESHAPING = ("qkv", "upconv", "tattn", "pattn", "fp8", "xkv")
#: speed-ups that set attention processors, which fusing the projections (``qkv``) replaces
_PROCESSORS = ("tattn", "pattn", "xkv")
_SPEEDUPS_ATTR = "_storyloom_speedups"


def resolve_speedups(choice: str | Any, device_type: str) -> tuple[str, ...]:
    """A render's speed-ups: ``"auto"`` (:data:`DEFAULT_SPEEDUPS` of the device type),
    ``"none"``, or names of :data:`SPEEDUPS` (comma separated, or a sequence), among which
    ``auto`` stands for the defaults (``"auto,cdt"``: the defaults and ``cdt``)."""
    defaults = DEFAULT_SPEEDUPS.get(device_type, DEFAULT_SPEEDUPS["cpu"])
    if choice is None:
        return defaults
    raw = choice.split(",") if isinstance(choice, str) else list(choice)
    names = [n.strip() for n in raw if n.strip()]  # "qkv, tconv,": spaces, a trailing comma
    if names == ["auto"]:
        return defaults
    if not names or names == ["none"]:
        return ()
    if "none" in names:
        raise ValueError(f"speed-ups {choice!r}: 'none' goes alone, not with other names")
    if "auto" in names:  # the device's defaults and more: "auto,cdt"
        names = [n for n in names if n != "auto"] + list(defaults)
    unknown = [n for n in names if n not in SPEEDUPS]
    if unknown:
        raise ValueError(
            f"unknown speed-ups {unknown}: choose from {', '.join(SPEEDUPS)}, 'auto' or 'none'"
        )
    if "fp8" in names and device_type != "cuda":
        raise ValueError("the fp8 speed-up needs a CUDA device")
    return tuple(dict.fromkeys(n for n in SPEEDUPS if n in names))


def check_render_speed(compile: Any, speedups: Any, device_type: str) -> None:
    """Refuse, before a render starts, a compile choice or speed-ups that are not known or
    do not go together (``compile="aot"`` with ``cgraph``: AOTInductor packages replay no
    CUDA graphs). ValueError with the reason."""
    choice = resolve_compile(compile, device_type)
    names = resolve_speedups(speedups, device_type)
    if choice in ("aot", "pre") and "cgraph" in names:
        raise ValueError(_no_cuda_graphs(choice))


def _no_cuda_graphs(choice: str) -> str:
    """Why ``compile=choice`` (``aot``, ``pre``) and the ``cgraph`` speed-up do not go
    together."""
    return (
        f"compile={choice!r} runs graphs compiled ahead of time, which do not replay CUDA "
        "graphs: leave out the cgraph speed-up, or compile with 'all'"
    )


def needs_copy(speedups: tuple[str, ...]) -> bool:
    """Whether ``speedups`` change the UNet's modules (then a render works on a copy)."""
    return any(s in _RESHAPING for s in speedups)


def apply_speedups(unet: Any, speedups: tuple[str, ...]) -> dict[str, int]:
    """Apply ``speedups`` (model-side ones; ``mm1x1``, ``cdt``, ``cgraph`` and ``mat`` are
    :func:`inductor_options` ones) to
    ``unet`` in place, once; returns what changed (layers per speed-up)."""
    done = getattr(unet, _SPEEDUPS_ATTR, {})
    if "tconv" in speedups and "tconv" not in done:
        done["tconv"] = fast_temporal_convs(unet)
    if "upconv" in speedups and "upconv" not in done:
        done["upconv"] = subpixel_upsamplers(unet)
    if "qkv" in speedups and "qkv" not in done:
        if not hasattr(unet, "fuse_qkv_projections"):
            raise ValueError(f"{type(unet).__name__} cannot fuse its attention projections")
        unet.fuse_qkv_projections()  # every layer gets the fused processor
        for name in _PROCESSORS:  # applied before, now gone: set again below if asked
            done.pop(name, None)
        from diffusers.models.attention_processor import Attention

        done["qkv"] = sum(1 for m in unet.modules() if isinstance(m, Attention))
    if "tattn" in speedups and "tattn" not in done:
        from storygen.attention import short_temporal_attention

        done["tattn"] = short_temporal_attention(unet)
    if "pattn" in speedups and "pattn" not in done:
        from storygen.attention import packed_temporal_attention

        done["pattn"] = packed_temporal_attention(unet)
    if "fp8" in speedups and "fp8" not in done:
        done["fp8"] = linears_to_rowwise_fp8(unet, _sizes_fit_fp8)
    if "xkv" in speedups and "xkv" not in done:  # over the processors the others set
        from storygen.attention import table_cross_attention

        done["xkv"] = table_cross_attention(unet)
    setattr(unet, _SPEEDUPS_ATTR, done)
    return dict(done)


def applied_speedups(unet: Any) -> dict[str, int]:
    """The model-side speed-ups :func:`apply_speedups` gave ``unet`` (layers per speed-up),
    read without walking its modules."""
    return dict(getattr(unet, _SPEEDUPS_ATTR, {}))


def inductor_options(speedups: tuple[str, ...]) -> dict[str, Any]:
    """Inductor options of ``speedups`` (for :func:`compile_unet`)."""
    options: dict[str, Any] = {}
    if "mm1x1" in speedups:
        options["conv_1x1_as_mm"] = True
    if "cdt" in speedups:
        options["coordinate_descent_tuning"] = True
    if "mat" in speedups:
        options |= {"max_autotune_gemm": True, "max_autotune_gemm_backends": "ATEN,TRITON"}
    if "cgraph" in speedups:
        options["triton.cudagraphs"] = True
    return options


def _sizes_fit_fp8(m: Any, fqn: str) -> bool:
    """Float8 matrix products need both sizes of a layer to be multiples of 16."""
    return m.in_features % 16 == 0 and m.out_features % 16 == 0
