"""Running a plan: levels in order, the calls of a level batched and spread over devices.

For every level the runner takes the calls the cache does not already hold, groups them into
batches of ``micro_batch`` calls of equal length, prepares each batch on the main thread (the
known frames are gathered before they can be released) and samples it on a worker thread per
device, the same thread from render to render (:func:`device_worker`). Results are consumed
in plan order, so frames reach the :class:`~storygen.sink.FrameSink` in order; a frame is
forgotten once it is written and no later level needs it as a known frame.
How one batch is sampled is the pipeline's business (:meth:`StoryVideoPipeline.prepare_latents`
and :meth:`StoryVideoPipeline.denoise`).

Progress is shown per level (one bar for all sliding windows), in denoising steps of model
calls: a level of 15 calls at 25 steps is 375 steps, and every UNet evaluation of a batch of
B calls moves its bar by B, so the bar and its ETA move steadily instead of jumping a whole
batch at a time (:class:`LevelProgress`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import resource
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from storygen.accel import (
    CompilePolicy,
    aot_fallbacks,
    apply_speedups,
    compile_decoder,
    compile_phases,
    compile_seconds,
    compile_unet,
    compiled_rows,
    cudnn_autotune,
    decoder_compiles,
    eager_calls,
    has_repeated_blocks,
    inductor_options,
    is_compiled,
    needs_copy,
    ordinary_weights,
    phases_since,
    record_fallback,
    resolve_speedups,
    use_compiled_rows,
    use_tuned_rows,
)
from storygen.attention import pack_eager
from storygen.cache import CallCache
from storygen.plan import AUTOREGRESSIVE, Call, Level, Plan
from storygen.sampling import CallInputs, runs_whole_forward
from storygen.settings import RenderSettings
from storygen.sink import FrameSink
from storygen.text import PromptCache

#: one worker thread per device for the life of the process (:func:`device_worker`)
_DEVICE_WORKERS: dict[str, ThreadPoolExecutor] = {}
_DEVICE_WORKERS_LOCK = threading.Lock()
# a forked child has none of its parent's threads: it starts its own
os.register_at_fork(after_in_child=_DEVICE_WORKERS.clear)


def device_worker(device: torch.device, slot: int = 0) -> ThreadPoolExecutor:
    """The worker thread that samples batches on ``device``, kept from render to render
    (``slot``: a device named more than once in ``devices``, each time with its own thread).

    PyTorch keeps some of what a thread learns on its first passes with that thread: the
    algorithms cuDNN's autotuner picked (``cudnn_autotune``), CUDA graph trees. With a fresh
    thread for every render, each render's first batch of each size ran slow in a warmed-up
    process (H200, ModelScope shape, 5 steps: a 2-row call 1.6-2.1 s against 0.25 s, the first
    114-row batch 11.4 s against 7.4 s), but not when the passes were replayed CUDA graphs."""
    key = f"{device}#{slot}"
    with _DEVICE_WORKERS_LOCK:
        if key not in _DEVICE_WORKERS:
            _DEVICE_WORKERS[key] = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"storygen-{key}"
            )
        return _DEVICE_WORKERS[key]


#: ``micro_batch="auto"``: calls per forward pass on the CPU, and on CUDA until a batch has
#: been measured
AUTO_MICRO_BATCH = 16
#: ``micro_batch="auto"`` on CUDA: the most calls per forward pass, and the share of the free
#: memory a batch may take (the rest: the allocator's slack, VAE decode, the next batch's
#: inputs)
logger = logging.getLogger(__name__)

AUTO_MICRO_BATCH_MAX = 128
AUTO_MEMORY_SHARE = 0.5
#: a pipeline UNet -> its latest render's sped-up copy on each device (one at a time: a copy
#: is a whole UNet's memory), by device
_SPEEDUP_COPIES: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
#: on a speed-up copy: the speed-ups it was made for and :func:`weights_stamp` of the UNet it
#: was copied from, when copied
_STAMP_ATTR = "_storyloom_copied_from"


def device_named(name: str | torch.device) -> torch.device:
    """One spelling per device, so that the device a UNet lives on is known as such: a
    bare ``cuda`` is the current CUDA device by its index, ``cpu:0`` is ``cpu``."""
    device = torch.device(name)
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def weights_stamp(module: Any) -> tuple:
    """What a copy of ``module`` depends on: each parameter's and buffer's identity, storage,
    version (which in-place changes bump: an optimizer step, ``load_state_dict``), dtype and
    device. Reading it touches no tensor's data."""
    return tuple(
        (id(t), t.data_ptr(), t._version, t.dtype, t.device)
        for t in (*module.parameters(), *module.buffers())
    )


@dataclass
class GenerationStats:
    """What a run cost: model calls, sequential rounds, UNet evaluations, time, memory."""

    num_frames: int
    model_calls: int
    rounds: int
    unet_forwards: int = 0
    calls_run: int = 0
    calls_from_cache: int = 0
    wall_time_s: float = 0.0
    level_times_s: list[float] = field(default_factory=list)
    peak_memory_bytes: int = 0
    peak_memory_kind: str = "cpu-rss"
    #: most model-space frames held at once: the earlier level's frames still needed as
    #: known frames plus those waiting to be written, not the whole video
    peak_frames_held: int = 0
    devices: list[str] = field(default_factory=list)
    #: model calls each device of ``devices`` ran, in the same order
    calls_per_device: list[int] = field(default_factory=list)
    output_path: str | None = None
    cache_dir: str | None = None
    #: why the render stopped keeping calls in ``cache_dir`` part way (a full disk: the cache
    #: is optional, the render goes on without it); None when every call was kept
    cache_error: str | None = None
    #: whether compiling was asked for (storygen.accel: "on" where it repays, "all")
    compiled: bool = False
    #: cuDNN's autotuner was on for the render's convolutions (CUDA)
    cudnn_autotune: bool = False
    #: the row buckets (padded rows of a forward pass) that ran compiled
    compiled_rows: list[int] = field(default_factory=list)
    #: the UNet speed-ups the render ran with (storygen.accel.SPEEDUPS) and the layers each
    #: changed
    speedups: dict[str, int] = field(default_factory=dict)
    #: whether the VAE's decoder ran compiled (the ``vdec`` speed-up, where it repays)
    decoder_compiled: bool = False
    #: seconds the render spent compiling (the UNet's graphs, the decoder's, packed
    #: attention's kernels; loading cached graphs counts too), from PyTorch's record: the
    #: compile time apart from the rest, which :meth:`warmup_s` estimates by batch
    compile_s: float = 0.0
    #: those seconds by the phases PyTorch times (nested, longest first): where a compile,
    #: or the load of cached graphs, goes (``storygen.accel.compile_phases``)
    compile_phases_s: dict[str, float] = field(default_factory=dict)
    #: ``compile="aot"`` where AOTInductor could not load packages, ``"pre"`` where dynamo
    #: could not trace a module whole: why, and what each module ran instead
    #: (``storygen.accel.aot_fallbacks``)
    compile_fallbacks: list[str] = field(default_factory=list)
    #: the micro-batch each level ran at (``micro_batch="auto"`` sizes it as it goes)
    micro_batches: list[int] = field(default_factory=list)
    #: CUDA memory one model call took (both guidance branches), as measured by the runner
    call_bytes: int | None = None
    #: seconds of every batch by its shape ("calls x frames"): the first batch of a shape
    #: includes compiling (or cuDNN's autotuning), :meth:`warmup_s` counts it apart
    batch_times_s: dict[str, list[float]] = field(default_factory=dict)
    #: the same batches by the input shape the UNet sees, "rows x frames" (rows: calls x
    #: guidance branches), as ``[calls, seconds]`` pairs; batches that ran compiled are
    #: keyed by the level's padded bucket, "rows x frames compiled" (one graph each: batches
    #: of 57 and 56 calls share a graph of 114 rows)
    bucket_times_s: dict[str, list[list[float]]] = field(default_factory=dict)
    #: where the wall time went: "text" (prompt encoding), "unet" (the batches' sampling),
    #: "decode" (model space to pixels), "write" (waiting for the video file's writer) and
    #: "rest" (planning, copies, the levels' bookkeeping); decoding runs on the main thread
    #: while worker threads sample the next batch, so stages can overlap and "rest" is what
    #: is left of the wall time, at least 0
    stage_times_s: dict[str, float] = field(default_factory=dict)
    #: seconds from the end of the last batch's sampling to the end of the run: the last
    #: frames' decode and write, which nothing runs beside
    tail_s: float = 0.0

    def set_stages(self, **seconds: float) -> None:
        """Fill :attr:`stage_times_s` from the given stages, the UNet's batch times and the
        wall time."""
        stages = {"text": 0.0, "unet": sum(sum(v) for v in self.batch_times_s.values())}
        stages |= {**self.stage_times_s, **seconds}
        stages.pop("rest", None)
        stages["rest"] = max(0.0, self.wall_time_s - sum(stages.values()))
        self.stage_times_s = stages

    def warmup_s(self) -> float:
        """The compile (or autotuning) cost of a run: per input shape the UNet sees, the time
        its first batch took beyond its calls at the median per-call time of the later ones."""
        extra = 0.0
        for entries in self.bucket_times_s.values():
            if len(entries) > 1:
                per_call = sorted(t / max(c, 1) for c, t in entries[1:])
                calls, first = entries[0]
                extra += max(0.0, first - calls * per_call[len(per_call) // 2])
        return extra

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record_peak_memory(self) -> None:
        """Peak CUDA memory allocated on the run's CUDA devices, else this process's peak RSS."""
        cuda = [torch.device(d) for d in self.devices if str(d).startswith("cuda")]
        if cuda:
            now = max(torch.cuda.max_memory_allocated(d) for d in cuda)
            self.peak_memory_bytes = max(self.peak_memory_bytes, now)
            self.peak_memory_kind = "cuda-allocated"
        else:
            # ru_maxrss is in KiB on Linux
            self.peak_memory_bytes = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@dataclass(frozen=True)
class CallResult:
    """Handed to ``callback_on_call_end`` after every model call."""

    level: int
    index: int
    call: Call
    #: the call's frames in model space: (C, F, h, w)
    sample: torch.Tensor
    from_cache: bool


@dataclass
class CallBatch:
    """Calls of one level, of equal length, sampled in one forward pass."""

    level: int
    indices: list[int]
    calls: list[Call]


class CallSampler(Protocol):
    """The pipeline as the runner sees it (:class:`~storygen.pipeline.StoryVideoPipeline` is one):
    it makes a batch's inputs and samples them; the runner decides what runs where and when."""

    unet: Any

    def unet_for_level(self, level: int) -> Any: ...

    def prepare_latents(
        self,
        batch: CallBatch,
        *,
        settings: RenderSettings,
        frames: Mapping[int, torch.Tensor],
        text: PromptCache,
    ) -> CallInputs: ...

    def denoise(
        self,
        unet: Any,
        inputs: CallInputs,
        *,
        negative: torch.Tensor | None,
        settings: RenderSettings,
        callback_on_step_end: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, int]: ...


class LevelProgress:
    """One progress bar over some levels, counted in denoising steps of model calls.

    A call takes ``num_inference_steps`` steps, times ``resample_steps`` where it is given
    frames (RePaint repeats every step). While a batch runs, each denoising step (the
    sampler's ``callback_on_step_end``) advances the bar by the batch's calls, never past what
    the batch is expected to take; when the batch returns, the bar makes up any difference, so
    a scheduler that takes more or fewer steps than asked never leaves the bar off.
    """

    def __init__(self, bar: Any, settings: RenderSettings) -> None:
        self.bar = bar
        self.settings = settings
        self._lock = threading.Lock()

    @staticmethod
    def label(plan: Plan, level: Level, todo: int, cached: int) -> str:
        """``"level 2/3 (15 calls)"``, or ``"sliding windows (225 calls)"``."""
        calls = f"{todo} call{'s' if todo != 1 else ''}" + (
            f", {cached} from cache" if cached else ""
        )
        if plan.policy == AUTOREGRESSIVE:
            return f"sliding windows ({calls})"
        return f"level {level.index + 1}/{plan.rounds} ({calls})"

    @staticmethod
    def steps_of(call: Call, settings: RenderSettings) -> int:
        """Denoising steps of one call (RePaint repeats each step where frames are given)."""
        repeats = settings.resample_steps if any(call.known) else 1
        return settings.num_inference_steps * repeats

    def steps(self, call: Call) -> int:
        return self.steps_of(call, self.settings)

    def advance(self, n: int) -> None:
        if n > 0:
            with self._lock:
                self.bar.update(n)

    def watch(self, calls: list[Call]) -> tuple[Callable[[], None], Callable[[], None]]:
        """For one batch: ``on_step`` (the sampler calls it after every denoising step) and
        ``finish`` (call when the batch returned)."""
        expected = sum(self.steps(c) for c in calls)
        done = 0

        def on_step() -> None:
            nonlocal done
            step = min(len(calls), expected - done)
            done += step
            self.advance(step)

        def finish() -> None:
            nonlocal done
            self.advance(expected - done)
            done = expected

        return on_step, finish

    def close(self) -> None:
        self.bar.close()


class PlanRunner:
    """Runs the levels of a plan: batching, devices, cache, callbacks, progress."""

    def __init__(
        self,
        pipe: CallSampler,
        plan: Plan,
        settings: RenderSettings,
        *,
        text_cache: PromptCache,
        negative: torch.Tensor | None,
        cache: CallCache | None,
        callback_on_call_end: Callable | None = None,
        callback_on_level_end: Callable | None = None,
    ) -> None:
        self.pipe = pipe
        self.plan = plan
        self.settings = settings
        self.text_cache = text_cache
        self.negative = negative
        self.cache = cache
        self.callback_on_call_end = callback_on_call_end
        self.callback_on_level_end = callback_on_level_end
        self.devices = [device_named(d) for d in (settings.devices or [pipe.unet.device])]
        self.stats = GenerationStats(
            num_frames=plan.num_frames,
            model_calls=plan.model_calls,
            rounds=plan.rounds,
            devices=[str(d) for d in self.devices],
            calls_per_device=[0] * len(self.devices),
        )
        # frames in model space, (C, h, w) float32 on the CPU, kept only while still needed
        self.store: dict[int, torch.Tensor] = {}
        self.written: set[int] = set()
        # the last level at which each frame is given to a call as a known frame
        self.last_use: dict[int, int] = {}
        for level in plan.levels:
            for call in level.calls:
                for f in call.known_frames:
                    self.last_use[f] = level.index
        self._unets: dict[tuple[int, str], Any] = {}
        self._lock = threading.Lock()
        #: compile the UNets (storygen.accel): which row buckets, counted as levels are batched
        device_type = self.devices[0].type
        self.compile = CompilePolicy(settings.compile, device_type=device_type)
        branches = 1 if negative is None else 2
        self.compile.expect(
            sum(
                branches * LevelProgress.steps_of(call, settings)
                for level in plan.levels
                for call in level.calls
            )
        )
        self.speedups = resolve_speedups(settings.speedups, device_type)
        self.stats.compiled = self.compile.enabled
        self.progress: LevelProgress | None = None
        #: calls per batch of the levels batched so far (:meth:`drain`)
        self.batch_sizes: set[int] = set()
        #: when the last batch so far finished sampling (``time.perf_counter``)
        self.sampling_ended: float | None = None

    # ---------------------------------------------------------------- devices
    def unet_on(self, level: int, device: torch.device) -> Any:
        """The level's UNet on ``device``: the pipeline's own copy where it lives, else a copy."""
        base = self.pipe.unet_for_level(level)
        key = (id(base), str(device))
        with self._lock:
            if key not in self._unets:
                # weights loaded inside torch.inference_mode track no in-place changes, which
                # the speed-up copy's stamp and a package's folded constants rely on
                ordinary_weights(base)
                unet = self._speedup_copy(base, device)
                if unet is None:
                    same = base.device == device and not any(
                        v is base for v in self._unets.values()
                    )
                    unet = base if same else copy.deepcopy(base).to(device)
                # layers each changed (0: a compiler option, mm1x1, or the decoder's vdec);
                # what an earlier render applied in place (tconv, the same sums) stays and
                # is reported
                changed = apply_speedups(unet, self.speedups)
                self.stats.speedups = {k: 0 for k in self.speedups} | changed
                # packed attention's kernel compiles per shape: where the render compiles its
                # bulk, its eager passes (short levels) keep the processor it replaced
                pack_eager(unet, not self.compile.enabled)
                if self.compile.enabled and not is_compiled(unet):
                    self._compile(unet)
                if is_compiled(unet):  # compiled by an earlier render: this one's buckets
                    use_compiled_rows(unet, self.compile.rows)
                    use_tuned_rows(unet, self.compile.tuned)
                self._unets[key] = unet
            return self._unets[key]

    def _compile(self, unet: Any) -> None:
        """Compile ``unet`` as the render's compile choice asks. A UNet that sampling calls
        block by block (a diffusers text-to-video UNet: a prompt per frame) never runs a
        whole forward, so a whole-UNet choice compiles its blocks one by one instead, and the
        render says so (``compile_fallbacks``)."""
        choice = self.compile.choice
        regional = self.compile.regional_for(unet, self.speedups)
        if not regional and not runs_whole_forward(unet):
            name = type(unet).__name__
            why = f"compile={choice!r}: sampling calls a {name} block by block (a prompt per frame)"
            if not has_repeated_blocks(unet):
                record_fallback(f"{why}; it runs eager instead (it has none of the blocks)")
                return
            record_fallback(f"{why}; its blocks compile one by one instead (as 'regional')")
            regional = True
        compile_unet(
            unet,
            inductor_options(self.speedups),
            regional=regional,
            aot=not regional and choice == "aot",
            precompile=not regional and choice == "pre",
        )

    def _speedup_copy(self, base: Any, device: torch.device) -> Any | None:
        """The render's own copy of ``base`` on ``device`` when its speed-ups change modules
        or attention processors (fused projections, float8 layers, packed attention), kept on
        ``base`` for later renders with the same speed-ups (and its compiled graphs with it)
        while ``base``'s weights stay as they were (:func:`weights_stamp`); None when the
        speed-ups keep ``base`` as it is."""
        if not needs_copy(self.speedups):
            return None
        copies = _SPEEDUP_COPIES.setdefault(base, {})
        key = str(device)
        stamp = (self.speedups, weights_stamp(base))
        if key not in copies or getattr(copies[key], _STAMP_ATTR, None) != stamp:
            # none yet, one for other speed-ups, or ``base`` changed since (a training step,
            # a loaded state dict, a cast): a copy of the weights as they are now, in place
            # of the one before, whose memory goes with it
            copies.pop(key, None)
            made = copy.deepcopy(base).to(device)
            setattr(made, _STAMP_ATTR, stamp)
            copies[key] = made
        return copies[key]

    # ---------------------------------------------------------------- one batch
    def run_batch(
        self, batch: CallBatch, inputs: CallInputs, device: torch.device
    ) -> tuple[torch.Tensor, int]:
        negative = None if self.negative is None else self.negative.to(device)[None, None]
        unet = self.unet_on(batch.level, device)
        on_step, finish = self.progress.watch(batch.calls) if self.progress else (None, None)
        measure = self.settings.micro_batch == "auto" and device.type == "cuda"
        if measure:  # what the batch takes beyond what is already held
            with self._lock:
                self.stats.peak_memory_bytes = max(
                    self.stats.peak_memory_bytes, torch.cuda.max_memory_allocated(device)
                )
            torch.cuda.reset_peak_memory_stats(device)
            held = torch.cuda.memory_allocated(device)
        started = time.perf_counter()
        samples, forwards = self.pipe.denoise(
            unet,
            inputs.to(device),
            negative=negative,
            settings=self.settings,
            callback_on_step_end=on_step,
        )
        if finish is not None:
            finish()
        samples = samples.float().cpu()  # waits for the device: the batch's time ends here
        ended = time.perf_counter()
        if measure:
            per_call = (torch.cuda.max_memory_allocated(device) - held) // len(batch.calls)
            with self._lock:
                self.stats.call_bytes = max(self.stats.call_bytes or 0, int(per_call))
        took = ended - started
        frames = len(batch.calls[0])
        rows = len(batch.calls) * (1 if self.negative is None else 2)
        padded = compiled_rows(unet).get(rows)
        # a bucket that starts compiled part-way (the autoregressive windows compile from
        # the one that reaches the pass count on) is timed apart from its eager batches, so
        # the compile lands in the first batch of its own key
        bucket = f"{rows}x{frames}" if padded is None else f"{padded}x{frames} compiled"
        with self._lock:
            self.sampling_ended = max(self.sampling_ended or ended, ended)
            self.stats.batch_times_s.setdefault(f"{len(batch.calls)}x{frames}", []).append(took)
            self.stats.bucket_times_s.setdefault(bucket, []).append([len(batch.calls), took])
        return samples, forwards

    def batches(self, level: int, todo: list[tuple[int, Call]]) -> list[CallBatch]:
        """Calls of equal length in batches of at most ``micro_batch``, ordered by their first
        call, as even in size as they can be and as many as a multiple of the devices, so that
        the round-robin over devices gives each the same share of a level (225 calls, 16 per
        batch, 2 devices: 16 batches of 14 or 15, 113 and 112 calls per device).

        A level of an uneven plan alternates call lengths (3 and 4 frames, say); grouping by
        length rather than by run keeps the batches full. On one CUDA device the plan's last
        level ends on a small batch of a size an earlier level ran (:meth:`drain`).
        """
        size, parts = self.micro_batch(), len(self.devices)
        self.stats.micro_batches.append(size)
        groups: dict[int, list[tuple[int, Call]]] = {}
        for idx, call in todo:
            groups.setdefault(len(call), []).append((idx, call))
        out, last = [], None
        if len(groups) == 1 and (drain := self.drain(level, len(todo), size)):
            items = next(iter(groups.values()))
            groups = {0: items[:-drain]}
            last = CallBatch(level, [i for i, _ in items[-drain:]], [c for _, c in items[-drain:]])
        for items in groups.values():
            count = -(-len(items) // size)
            if len(items) >= parts:  # a multiple of the devices, but never an empty batch
                count = min(len(items), parts * -(-count // parts))
            base, extra = divmod(len(items), count)
            start = 0
            for k in range(count):
                chunk = items[start : start + base + (k < extra)]
                start += len(chunk)
                out.append(CallBatch(level, [i for i, _ in chunk], [c for _, c in chunk]))
        branches = 1 if self.negative is None else 2
        self.compile.plan(
            [
                (
                    len(b.calls) * branches,
                    max(LevelProgress.steps_of(c, self.settings) for c in b.calls),
                )
                for b in out
            ]
        )
        self.stats.compiled_rows = sorted(self.compile.buckets)
        self.batch_sizes.update(len(b.calls) for b in out)
        # the drained batch runs last, in the shape an earlier level ran it (see drain)
        return sorted(out, key=lambda b: b.indices[0]) + ([last] if last is not None else [])

    def drain(self, level: int, calls: int, size: int) -> int:
        """How many of the render's last calls run as a small batch of their own, after the
        others (0: none).

        When the last pass of a render ends, the frames of its last batch are still to
        decode: on an H200 (ModelScope shape, 3,376 frames) the last level ran 2 batches of
        113 and 112 calls, and the second's 1,680 frames take about 2.8 s to decode at the
        compiled decoder's 602 frames/s, with nothing left to run beside them. Ending the
        level on a small batch lets the batch before it decode beside it, so what is left
        after the last pass is the small batch's frames (15 calls: 225 frames). The small
        batch takes the size of an earlier level's batch, so it runs a shape the render has
        run already: compiled only where that shape is (a new shape would compile, or leave
        FlexAttention another block mask to build).

        Only on the plan's last level, on one CUDA device (there the decode runs beside the
        sampling, :func:`storygen.accel.beside_sampling`; on a CPU they share the cores), for
        a level of 2 batches or more, and a small batch at most a quarter of the others."""
        if (
            level != len(self.plan.levels) - 1
            or len(self.devices) != 1
            or self.devices[0].type != "cuda"
        ):
            return 0
        branches = 1 if self.negative is None else 2
        for small in sorted(self.batch_sizes, reverse=True):
            rest = calls - small
            batches = -(-rest // size)
            if batches < 2 or 4 * small > rest // batches:
                continue
            # compiled, or eager, as the level's other batches will be: a compiling render
            # drains only into a bucket that is compiled already
            if self.compile.enabled and small * branches not in self.compile.rows:
                continue
            return small
        return 0

    def micro_batch(self) -> int:
        """Calls per forward pass for the next level: the setting, or for ``"auto"``
        :data:`AUTO_MICRO_BATCH` on the CPU (and on CUDA before any batch was measured),
        else what :data:`AUTO_MEMORY_SHARE` of the free memory of the tightest device holds
        at the measured bytes per call, up to :data:`AUTO_MICRO_BATCH_MAX`.

        Not rounded down to a power of two: :meth:`batches` evens a level's calls out over
        the batches anyway, and rounding put a knife's edge at every power of two. On an H200
        (ModelScope shape, 3,376 frames) half the free memory held about 128 calls, and the
        bytes a call measured varied by 4 % between renders (583 and 558 MB), so one render
        ran its last level in 4 batches of 57 calls and the next in 2 of 113, compiling a
        new graph."""
        setting = self.settings.micro_batch
        if setting != "auto":
            return int(setting)
        cuda = [d for d in self.devices if d.type == "cuda"]
        if not cuda or not self.stats.call_bytes:
            return AUTO_MICRO_BATCH
        free = min(
            torch.cuda.mem_get_info(d)[0]
            + torch.cuda.memory_reserved(d)
            - torch.cuda.memory_allocated(d)
            for d in cuda
        )
        fits = max(1, int(free * AUTO_MEMORY_SHARE) // self.stats.call_bytes)
        return min(AUTO_MICRO_BATCH_MAX, fits)

    # ---------------------------------------------------------------- levels
    def start_progress(self, level: Level, todo: list[tuple[int, Call]]) -> None:
        """A bar for this level's calls still to run; sliding windows (one call per level)
        share one bar over the whole plan, where a window from the cache counts as done."""
        shared = self.plan.policy == AUTOREGRESSIVE
        cached = len(level.calls) - len(todo)
        if self.progress is None or not shared:
            if self.progress is not None:
                self.progress.close()
            calls = list(self.plan.calls) if shared else [c for _, c in todo]
            label = LevelProgress.label(self.plan, level, len(calls), 0 if shared else cached)
            total = sum(LevelProgress.steps_of(c, self.settings) for c in calls)
            # diffusers' set_progress_bar_config (disable=True, say) holds here too
            config = dict(getattr(self.pipe, "_progress_bar_config", None) or {})
            bar = tqdm(**{"total": total, "desc": label, "unit": "step", **config})
            self.progress = LevelProgress(bar, self.settings)
        if shared and cached:
            self.progress.advance(sum(self.progress.steps(c) for c in level.calls))
        # the UNet copies for other devices are made now, on this thread, before batches run
        for device in self.devices:
            self.unet_on(level.index, device)

    def run(self, sink: FrameSink) -> None:
        cuda = any(d.type == "cuda" for d in self.devices)
        vae = getattr(self.pipe, "vae", None)
        if (
            "vdec" in self.speedups
            and vae is not None
            and decoder_compiles(
                self.compile.choice, self.plan.num_frames, sink.chunk, self.compile.every_bucket
            )
        ):
            compile_decoder(
                vae, aot=self.compile.choice == "aot", precompile=self.compile.choice == "pre"
            )
        decoder = getattr(vae, "decoder", None)
        # a decoder an earlier render compiled serves only renders that ask for it
        wanted = "vdec" in self.speedups and self.compile.choice != "off"
        self.stats.decoder_compiled = wanted and is_compiled(decoder)
        phases = compile_phases()
        fallen = len(aot_fallbacks())
        try:
            with (
                cudnn_autotune(self.settings.cudnn_autotune and cuda) as tuned,
                contextlib.nullcontext() if wanted else eager_calls(decoder),
            ):
                self.stats.cudnn_autotune = tuned
                self._run(sink)
        finally:
            self.stats.compile_phases_s = phases_since(phases, compile_phases())
            self.stats.compile_s = compile_seconds(self.stats.compile_phases_s)
            self.stats.compile_fallbacks = aot_fallbacks()[fallen:]

    def _run(self, sink: FrameSink) -> None:
        show = self.settings.progress
        # one worker thread per device, so a device runs its batches one after another
        names = [str(d) for d in self.devices]
        executors = [device_worker(d, names[:k].count(str(d))) for k, d in enumerate(self.devices)]
        futures: list[Future] = []  # the level's batches: waited for on the way out
        batches: list[CallBatch] = []
        saved: set[int] = set()  # the level's batches (by position) the cache holds
        try:
            for level in self.plan.levels:
                t0 = time.perf_counter()
                cached = self.cache.load(level.index) if self.cache is not None else {}
                todo = [(i, c) for i, c in enumerate(level.calls) if i not in cached]
                if show:
                    self.start_progress(level, todo)
                batches = self.batches(level.index, todo)
                futures, owners, saved = [], [], set()
                for k, batch in enumerate(batches):
                    inputs = self.pipe.prepare_latents(
                        batch, settings=self.settings, frames=self.store, text=self.text_cache
                    )
                    slot = k % len(self.devices)  # batch k runs on device k mod N (see batches)
                    futures.append(
                        executors[slot].submit(self.run_batch, batch, inputs, self.devices[slot])
                    )
                    owners.append(slot)
                # the frames the level before left to write (its last call's) decode now,
                # beside this level's first batch (an autoregressive window: the next one)
                if level.index > 0:
                    self.emit(sink, level.index - 1)
                pending = iter(enumerate(zip(batches, futures, owners)))
                results = {i: (s, True) for i, s in cached.items() if i < len(level.calls)}
                # consume in plan order, so that frames stream out in order
                for idx, call in enumerate(level.calls):
                    while idx not in results:
                        k, (batch, future, device) = next(pending)
                        samples, forwards = future.result()
                        self.stats.unet_forwards += forwards
                        self.stats.calls_run += len(batch.calls)
                        self.stats.calls_per_device[device] += len(batch.calls)
                        if self.keep(batch, samples):
                            saved.add(k)
                        results.update({i: (s, False) for i, s in zip(batch.indices, samples)})
                    sample, from_cache = results.pop(idx)
                    self.stats.calls_from_cache += int(from_cache)
                    # a level's last call leaves its frames to the next level's start
                    held = idx == len(level.calls) - 1 and level is not self.plan.levels[-1]
                    self.finish_call(
                        level.index, idx, call, sample, from_cache, sink, emit=not held
                    )
                self.stats.level_times_s.append(time.perf_counter() - t0)
                self.release(level.index)
                if self.callback_on_level_end is not None:
                    self.callback_on_level_end(self.pipe, level.index)
            sink.offer(self.store, flush=True)
        finally:
            # on an error: batches not started are dropped, a running one is waited for
            for f in futures:
                f.cancel()
            wait_futures(futures)
            self.keep_finished(batches, futures, saved)
            if self.progress is not None:
                self.progress.close()
                self.progress = None

    def keep(self, batch: CallBatch, samples: torch.Tensor) -> bool:
        """Keep a finished batch in the cache; True when it was. The cache is optional: where
        it cannot be written (a full disk), the render warns once and goes on without it."""
        if self.cache is None:
            return False
        try:
            self.cache.save(batch.level, batch.indices, samples)
        except OSError as exc:
            why = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
            self.stats.cache_error = why
            logger.warning(
                "cannot keep level %s's calls %s-%s in the cache %s (%s); the render goes on "
                "without the cache, and a resumed render samples these calls and the later "
                "ones again",
                batch.level,
                batch.indices[0],
                batch.indices[-1],
                self.cache.path.parent,
                why,
            )
            self.cache = None  # no retry: not of this batch, nor of the ones after it
            return False
        return True

    def keep_finished(
        self, batches: list[CallBatch], futures: list[Future], saved: set[int]
    ) -> None:
        """On the way out of a failed or interrupted render: the batches of the level that
        finished but were not yet taken in plan order go to the cache, so a resumed render
        does not sample them again."""
        kept = 0
        for k, (batch, future) in enumerate(zip(batches, futures)):
            if self.cache is None:  # none asked for, or it could not be written
                break
            if k in saved or future.cancelled() or future.exception() is not None:
                continue
            samples, _ = future.result()
            try:
                if self.keep(batch, samples):
                    kept += len(batch.calls)
            except Exception:  # the error that stopped the render is the one to raise
                logger.exception("could not keep level %s's finished calls", batch.level)
                return
        if kept:
            logger.info("kept %s finished calls in the cache for a resumed render", kept)

    def finish_call(
        self,
        level: int,
        idx: int,
        call: Call,
        sample: torch.Tensor,
        from_cache: bool,
        sink: FrameSink,
        *,
        emit: bool = True,
    ) -> None:
        # a frame is made once and never changed: later calls get it back exactly as known
        for k, frame in enumerate(call.frames):
            if not call.known[k] and frame not in self.store and frame not in self.written:
                self.store[frame] = sample[:, k].clone()
        if self.callback_on_call_end is not None:
            self.callback_on_call_end(self.pipe, CallResult(level, idx, call, sample, from_cache))
        self.stats.peak_frames_held = max(self.stats.peak_frames_held, len(self.store))
        if emit:
            self.emit(sink, level)

    def emit(self, sink: FrameSink, level: int) -> None:
        """Decode and write the frames that are final, in order; forget those no level
        after ``level`` needs.

        A level's last call leaves this to the next level's start (:meth:`_run`), so that
        its decode runs beside that level's first batch rather than before it is queued:
        the autoregressive baseline's windows then overlap their decode with the next
        window's passes, as a hierarchical level's batches overlap theirs."""
        before = sink.next
        sink.offer(self.store)
        self.written.update(range(before, sink.next))
        # frames this level still gives to its later calls were gathered when it started
        self.release(level)

    def release(self, level: int) -> None:
        """Forget frames already written that no later level needs."""
        done = [f for f in self.written if f in self.store and self.last_use.get(f, -1) <= level]
        for frame in done:
            del self.store[frame]
