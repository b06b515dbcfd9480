"""Which backend runs a call.

Backends: "torch" (reference), "cpu", "triton", "cuda", and "auto". The most specific choice wins: the call's
`backend=` argument, then a module's `backend=`, then `use_backend(...)`, then the LARGECONV_BACKEND environment
variable; "auto" (or nothing) at one level defers to the next. An explicit backend that cannot run a call raises a
clear error; "auto" falls back.

"auto" picks per (op, direction, device, dtype, layout, shape bucket, geometry) among {cpu, torch} for CPU tensors
and {cuda, triton, torch} for CUDA tensors, in one of two ways:
- measured (the default, like cudnn.benchmark): the first call of a key times each remaining candidate once (a few
  times when calls are sub-millisecond), returns the winner's result and caches the winner. Candidates known to lose
  (`known_to_lose`) and candidates whose estimated workspace is far above the others' or above free device memory
  (the unfold reference of involution) are never run, so the first call costs at most about the sum of the kept
  candidates' single calls.
- by rule, with no timing (`table_choice`, a committed table per device class and kernel size): under
  `torch.use_deterministic_algorithms(True)` or with LARGECONV_AUTO=table, so the same script picks the same
  backends, and gives the same numbers, in every process.
Choices can be saved and loaded (`save_auto_choices`, `load_auto_choices`), like a tuning cache; loaded choices are
used in both modes. During CUDA graph capture nothing is measured: an uncached key goes to the table.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import json
import math
import os
import threading
import time

import torch

from .arguments import cudnn_conv_allows_tf32, is_channels_last
from .cpu import FFT_MIN_TAPS

BACKENDS = ("auto", "torch", "cpu", "triton", "cuda")
_MODULES = {"torch": "largeconv.reference", "cpu": "largeconv.cpu", "triton": "largeconv.kernels",
            "cuda": "largeconv.cuda"}
_GPU_CANDIDATES = ("cuda", "triton", "torch")
_CPU_CANDIDATES = ("cpu", "torch")
# A candidate whose estimated workspace exceeds this many times the smallest estimate is not measured. Meant for
# K*K blow-ups (involution's unfold reference: 2*K*K input-sized buffers, 98x at K=7); 16 keeps the cpu backend's
# fp32 working copies of a bf16/fp16 input (8x PyTorch's estimate), which a limit of 4 wrongly dropped, so auto
# picked PyTorch for every bf16 call it could have run 4-6x faster (conv1d (32,512,1000), measured 2026-11-27).
WORKSPACE_RATIO_LIMIT = 16
# On a GPU a workspace this small is never the reason to drop a candidate, whatever the ratio (the cuda backend's
# dense products of a 7x7 map at batch 8: ~30 MB, 18x the input).
WORKSPACE_FLOOR_BYTES = 1 << 28
# A direction through the custom-op machinery has cost up to ~0.35 ms beyond PyTorch's own call (host time: the H100
# and H200 boxes, bench/NOTES.md; ~0.07 ms on the 2-core CI machines). `settle` keeps a call on its chosen kernels
# without timing the whole call where they beat PyTorch's by more than this bound per direction (15x that figure).
_OVERHEAD_BOUND_S = 5e-3
# A candidate whose calls add up to less than this is timed up to three times and its fastest call counts (cheap,
# and robust to a busy machine); slower ones once (the first call stays cheap).
_REPEAT_BELOW_S = 0.02
# Ten rounds of a 0.1 ms layer cost ~2 ms once and keep a loaded machine from making auto pick a custom op that is
# slower in quiet conditions (seen with three rounds on the 2-core CI machine under a load of 2-4).
_MAX_ROUNDS = 10

_local = threading.local()
_pinning_contexts = 0  # use_backend contexts open in any thread: while 0, no thread-local stack needs reading
_pinning_lock = threading.Lock()
_auto_cache: dict[tuple, str] = {}
_loaded_keys: set[tuple] = set()
# The fixed rule's pick per key (a function of the key and the backends installed), kept so that repeated calls in
# table mode skip the rule and, where it picked torch for a whole call, take ops.dwconv2d's fast path.
_table_choices: dict[tuple, str] = {}
_auto_times: dict[tuple, dict[str, float]] = {}  # key -> each timed candidate's best seconds, for `settle`
_settled: dict[tuple, tuple] = {}  # a call's keys -> the choices `settle` kept for them after timing the whole call


def check_backend_name(name, argument="backend"):
    if name is not None and name not in BACKENDS:
        raise ValueError(f"{argument} must be one of {BACKENDS} or None, got {name!r}")


@contextlib.contextmanager
def use_backend(name: str):
    """Run the enclosed calls on backend `name` unless a call or module pins its own."""
    global _pinning_contexts
    check_backend_name(name)
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(name)
    with _pinning_lock:
        _pinning_contexts += 1
    try:
        yield
    finally:
        stack.pop()
        with _pinning_lock:
            _pinning_contexts -= 1


def requested_backend(*choices) -> str:
    """The first choice that is not None/"auto" among `choices`, the context manager and the environment (read only
    when nothing more specific decides)."""
    stack = getattr(_local, "stack", None)
    for choice in (*choices, stack[-1] if stack else None):
        if choice is not None and choice != "auto":
            check_backend_name(choice)
            return choice
    env = getenv("LARGECONV_BACKEND") or None
    check_backend_name(env, "LARGECONV_BACKEND")
    return env if env not in (None, "auto") else "auto"


def getenv(name: str) -> str | None:
    """os.environ.get(name) for largeconv's variables, read on every call: the lookup in os.environ's own dict
    skips the key encoding and the method calls that made up a third of auto's per-call cost on tiny layers."""
    raw = _environ_data.get(_ENVIRON_KEYS[name])
    return None if raw is None else os.environ.decodevalue(raw)


_environ_data = os.environ._data  # what os.environ reads and writes: setenv/putenv through it show here
_ENVIRON_KEYS = {name: os.environ.encodekey(name) for name in ("LARGECONV_BACKEND", "LARGECONV_AUTO")}


def backend_module(name: str):
    return importlib.import_module(_MODULES[name])


def unsupported_reason(backend: str, op: str, x: torch.Tensor, kernel_size) -> str | None:
    """None if `backend` can run `op` on tensors like `x` with this kernel size, else why not."""
    try:
        module = backend_module(backend)
    except ImportError as error:  # e.g. triton not installed
        return f"backend {backend!r} cannot be imported: {error}"
    return module.unsupported_reason(op, x, tuple(kernel_size))


def by_table() -> bool:
    """True when "auto" must pick by the fixed rule (no timing): deterministic mode or LARGECONV_AUTO=table."""
    mode = getenv("LARGECONV_AUTO") or "measure"
    if mode not in ("measure", "table"):
        raise ValueError(f"LARGECONV_AUTO must be 'measure' or 'table', got {mode!r}")
    return mode == "table" or torch.are_deterministic_algorithms_enabled()


def run(op: str, direction: str, backend: str, x: torch.Tensor, kernel_size, run_args: tuple):
    """Run `op`'s `direction` ("forward", "grad_input", "grad_weight") with `run_args` (backend_api.md) on the
    backend chosen for it; `x` is the tensor whose device, dtype, layout and shape decide."""
    if backend != "auto":
        reason = unsupported_reason(backend, op, x, kernel_size)
        if reason is not None:
            raise RuntimeError(f"{op}: backend {backend!r} cannot run this call: {reason}")
        return _call(backend, op, direction, run_args)
    key = cache_key(op, direction, x, kernel_size, run_args[-3:])
    name = _auto_cache.get(key)
    if name is not None and (key in _loaded_keys or not by_table()):
        return _call(name, op, direction, run_args)
    on_gpu = x.device.type == "cuda"
    if by_table() or (on_gpu and torch.cuda.is_current_stream_capturing()):
        name = _table_choices.get(key)
        if name is None:
            name = _table_choices[key] = table_choice(op, direction, x, kernel_size, _candidates(op, x, kernel_size))
        return _call(name, op, direction, run_args)
    candidates = _candidates(op, x, kernel_size)
    kept = [name for name in candidates if not known_to_lose(name, op, direction, x, kernel_size)]
    kept = _within_memory(kept, op, direction, x, kernel_size, run_args)
    if len(kept) == 1:
        _auto_cache[key] = kept[0]
        return _call(kept[0], op, direction, run_args)
    _auto_cache[key], result, _auto_times[key] = _fastest(op, direction, kept, run_args, on_gpu)
    return result


def _call(name, op, direction, run_args):
    return getattr(backend_module(name), f"{op}_{direction}")(*run_args)


def _candidates(op, x, kernel_size):
    names = _GPU_CANDIDATES if x.device.type == "cuda" else _CPU_CANDIDATES
    return [name for name in names if unsupported_reason(name, op, x, kernel_size) is None]


def _bucket(n: int) -> int:
    """Round up to a power of two, so nearby sizes share one measurement."""
    return 1 << max(int(n) - 1, 0).bit_length()


def cache_key(op, direction, x, kernel_size, geometry, shape=None) -> tuple:
    """Kernel size, stride, padding and dilation exactly; batch, channels and spatial size (x's, or `shape` of a
    tensor laid out like x) bucketed. fp32 on CUDA with TF32 allowed for convs is a dtype of its own ("float32-tf32"):
    the fastest candidate differs (cuDNN and the cuda backend switch to one TF32 product)."""
    dtype = str(x.dtype).removeprefix("torch.")
    if x.is_cuda and x.dtype == torch.float32 and cudnn_conv_allows_tf32():
        dtype += "-tf32"
    return (op, direction, str(x.device), dtype, is_channels_last(x),
            tuple(_bucket(n) for n in (x.shape if shape is None else shape)), tuple(kernel_size),
            tuple(tuple(g) if isinstance(g, (tuple, list)) else g for g in geometry))  # geometry: ints or pairs


def _plain(value):
    return tuple(_plain(v) for v in value) if isinstance(value, (tuple, list)) else value


def settle(keys, whole_call) -> None:
    """For a dwconv2d or dwconv1d call whose directions have the auto-cache `keys`: once every one of them was
    measured against torch, and unless all chose torch, compare the two ways the call can run, PyTorch's own op for
    every direction (ops.auto_chose_torch's fast path) and the chosen backends through the custom ops, by timing
    the whole call both ways (`whole_call("torch")`, `whole_call("custom")`: its forward and the backward it will
    run); if PyTorch's is no slower, choose torch for all the keys. Timed once per call and choices. The custom ops'
    own cost is host time that differs from machine to machine and with the call (an estimate charged per direction
    kept mixed choices on an H200 that lost 0.46x to PyTorch, bench/NOTES.md session 16), so it is measured, not
    estimated. (A key shared with another kind of call, e.g. the forward of inference-only calls, follows this
    call's choice.)"""
    times = [_auto_times.get(key) for key in keys]
    if any(t is None or "torch" not in t or key in _loaded_keys for t, key in zip(times, keys)):
        return  # not all measured against torch yet, or loaded choices (used as they are)
    chosen = tuple(_auto_cache.get(key) for key in keys)
    if None in chosen or all(name == "torch" for name in chosen) or by_table():
        return  # (None: the cache was cleared since; measured again first)
    device = torch.device(keys[0][2])  # cache_key's third item: the device
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing() or _settled.get(tuple(keys)) == chosen:
        return
    chosen_s = sum(t.get(name, math.inf) for t, name in zip(times, chosen))
    if sum(t["torch"] for t in times) - chosen_s > _OVERHEAD_BOUND_S * len(keys):
        torch_s, custom_s = math.inf, chosen_s  # far faster whatever the custom ops cost: not worth timing
    else:
        with _saved_tensor_hooks_suspended():
            torch_s, custom_s = _whole_call_times(keys, whole_call)
    _settled[tuple(keys)] = chosen
    if torch_s <= custom_s:
        _auto_cache.update(dict.fromkeys(keys, "torch"))


@contextlib.contextmanager
def _saved_tensor_hooks_suspended():
    """Without the saved-tensor hooks in force (torch.utils.checkpoint's non-reentrant mode, save_on_cpu) while
    settle times its calls: checkpoint counts the tensors a region saves and raised on a forward that had saved
    the timing calls' too. Through torch's private hook stack: no public way to set hooks aside."""
    hooks = []
    while (top := torch._C._autograd._top_saved_tensors_default_hooks(False)) is not None:
        hooks.append(top)
        torch._C._autograd._pop_saved_tensors_default_hooks()
    try:
        yield
    finally:
        for pack, unpack in reversed(hooks):
            torch._C._autograd._push_saved_tensors_default_hooks(pack, unpack)


def _whole_call_times(keys, whole_call) -> tuple[float, float]:
    """Seconds of the whole call PyTorch's way and the custom ops' way (see `settle`)."""
    return tuple(interleaved_wall_times([lambda: whole_call("torch"), lambda: whole_call("custom")],
                                        torch.device(keys[0][2])))


def interleaved_wall_times(calls, device, batch=3, enough_s=_REPEAT_BELOW_S, max_rounds=_MAX_ROUNDS):
    """Seconds per call of each of `calls`: after a warm-up call each, timed in batches of `batch` back-to-back calls
    in wall time, synchronized per batch (host time counts on a GPU, and the host runs ahead of the GPU within a
    batch, as in training), the calls alternating batch by batch (a busy moment of the machine hits all of them) and
    each one's fastest batch counting; rounds until every call has run for `enough_s`, or `max_rounds`. Garbage
    collection is off meanwhile (a full collection in a long-lived process takes milliseconds)."""
    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    best, spent = [math.inf] * len(calls), [0.0] * len(calls)
    collecting = gc.isenabled()
    gc.disable()
    try:
        for call in calls:
            call()
        for _ in range(max_rounds):
            for i, call in enumerate(calls):
                synchronize()
                start = time.perf_counter()
                for _ in range(batch):
                    call()
                synchronize()
                elapsed = time.perf_counter() - start
                best[i], spent[i] = min(best[i], elapsed / batch), spent[i] + elapsed
            if min(spent) >= enough_s:
                break
    finally:
        if collecting:
            gc.enable()
    return best


def auto_still_picks(keys, name: str) -> bool:
    """For auto's fast path (ops.dwconv2d): nothing more specific than "auto" is requested (use_backend,
    LARGECONV_BACKEND; the slow path applies and checks those) and the cache still holds `name` for every key."""
    if _pinning_contexts:
        stack = getattr(_local, "stack", None)
        if stack and stack[-1] not in (None, "auto"):
            return False
    return getenv("LARGECONV_BACKEND") in (None, "", "auto") and all_cached_as(keys, name)


def all_cached_as(keys, name: str) -> bool:
    """True when auto's choice for every key is `name`: a loaded choice in either mode; otherwise, under the fixed
    rule, the rule's pick (once a call has made it), else the measured one."""
    table = by_table()
    for key in keys:
        chosen = _table_choices.get(key) if table and key not in _loaded_keys else _auto_cache.get(key)
        if chosen != name:
            return False
    return True


# ---- the committed rule ------------------------------------------------------------------------------------------

def table_choice(op, direction, x, kernel_size, candidates) -> str:
    """The backend the fixed rule picks among `candidates`: the first of the table's preference order that can run.

    CPU rows: `_cpu_wins` for dwconv2d; involution's shift-and-accumulate always (the unfold reference is 9-25x
    slower). CUDA rows: `_cuda_order`."""
    taps = math.prod(kernel_size)
    if op == "dwconv1d":  # K = 31 measured on CPU (largeconv/conv1d.py) and on an H100 (cuda 2.5-3.4x F.conv1d)
        fused = ("cpu",) if x.device.type == "cpu" else ("cuda", "triton")
        order = (*fused, "torch") if taps >= 31 else ("torch", *fused)
    elif op == "involution2d_fused":  # CPU measured (bench/results/cpu/fused_involution.md); CUDA a prediction
        order = ("cpu", "torch") if x.device.type == "cpu" else ("triton", "torch")
    elif x.device.type == "cuda":
        order = _cuda_order(op, direction, x, taps)
    elif op == "involution2d":
        order = ("cpu", "torch")
    else:
        order = ("cpu", "torch") if _cpu_wins(direction, x, kernel_size) else ("torch", "cpu")
    for name in order:
        if name in candidates:
            return name
    return "torch"


def _cuda_order(op, direction, x, taps):
    """The fixed rule's preference on CUDA for dwconv2d and involution2d. Measured on one H100 (batch 64, 2026-11-27,
    bench/results/h100/run2): cuda beats PyTorch in every direction timed from 13x13 on (fp32 and bf16, maps 7x7 to
    90x180), except the forward on 7x7 maps (RepLKNet-31B s4, K13: PyTorch 0.124 ms, cuda 0.275); at 56x56, bf16
    K31, triton beat cuda's FMA kernels (forward 1.96 vs 2.12 ms, backward 3.68 vs 4.87), and the NCHW involution
    on triton beats cuda 1.4-4.8x (stride 1 and 2, fp32 and bf16). Since that run cuda runs fp16/bf16 NCHW large
    kernels on tensor cores (H200, 2026-11-28: bf16 forward 0.447 ms at 56x56 against Triton's 0.970), and since
    2026-11-29 channels_last calls of the kind run them on NCHW copies (predicted ~0.5 ms against the FMA kernels'
    2.82 measured), so fp16/bf16 goes to cuda first in both layouts; either way far from PyTorch's 7.80 ms. Below
    7x7 kernels, smaller maps for the involution on triton and channels_last involution are not timed: the
    prediction of bench/results/static-sm90 stands there (PyTorch below 7x7, cuda from it)."""
    h, w = x.shape[-2:]
    large_map = h >= 56 and w >= 56
    if op == "involution2d":
        return ("triton", "cuda", "torch") if large_map and not is_channels_last(x) else ("cuda", "triton", "torch")
    if taps < 49:
        return ("torch",)
    if direction == "forward" and h * w <= 49:
        return ("torch", "cuda", "triton")
    return ("cuda", "triton", "torch")


# PyTorch's depthwise conv on CPU is another program on another SIMD class: measured on a 2-core AVX2 EPYC
# (2026-11-22, bench/results/cpu) its NCHW forward took 5-28x the FFT path's from 13x13, on a 2-core AVX-512 Xeon
# (2026-11-27, bench/NOTES.md) 2-25x less at 13x13 and up to 14 kernel columns. The rule follows the class it runs on.
_AVX512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _cpu_wins(direction, x, kernel_size) -> bool:
    """Where the cpu backend beats PyTorch's depthwise conv on CPU, fp32 NCHW. AVX2 (EPYC): from 13x13 in forward and
    grad-input, from 5x5 in grad-weight. AVX-512 (Xeon; torch 2.14.1, batch 1-32, maps 7x7 to 112x112): PyTorch's
    forward is fast up to 14 kernel columns (13x13: 2-25x the FFT path's speed; 51x5: 10x) and slow from 15 (3x15
    to 31x31: 3-17x slower); its input gradient is fast at every size but the largest (K31 at 56x56: 1.4x slower);
    its weight gradient is slow from 7x7: the FFT wins from 13x13 at any map and from 7x7 at 28x28 and up
    (1.35-4.4x), not on smaller maps (0.5-1.1x), and below FFT_MIN_TAPS the cpu backend's per-tap weight gradient
    is 4-6x slower than PyTorch's."""
    taps, (h, w) = math.prod(kernel_size), x.shape[-2:]
    if not _AVX512:
        return taps >= {"forward": 169, "grad_input": 169, "grad_weight": 25}[direction]
    if direction == "forward":
        return kernel_size[1] >= 15
    if direction == "grad_input":
        return taps >= 961 and h * w >= 56 * 56
    return taps >= 169 or taps >= FFT_MIN_TAPS and h * w >= 28 * 28


def known_to_lose(name, op, direction, x, kernel_size) -> bool:
    """Candidates never worth timing: on CPU, involution's unfold reference (9-25x slower and K*K times the memory)
    and PyTorch's NCHW depthwise conv where it is far slower than the cpu backend (`_cpu_wins`; a single call of it
    made auto's first call cost seconds): on AVX2 from 13x13 (5-28x); on AVX-512, on maps of 14x14 and up, its
    forward from 15 kernel columns and its weight gradient from 13x13 (3-42x), not its input gradient, which wins
    on all but the largest maps. And the other way round: the cpu backend's Conv1d on bf16 with K <= 3, where
    PyTorch has a fast kernel (fwd+bwd 1.3-1.7x the cpu backend's speed at (32,512,1000) and (8,1024,4000), K = 1-3;
    at K = 4-7 it is 1.4-1.7x slower: 2026-11-27, 2-core AVX-512 Xeon, torch 2.14.1); every direction, so the
    whole call is PyTorch's own (its one backward beats the separate grad-input and grad-weight)."""
    if x.device.type != "cpu":
        return False
    if name == "cpu":
        return op == "dwconv1d" and x.dtype == torch.bfloat16 and kernel_size[0] <= 3
    if name != "torch" or op == "dwconv1d":
        return False
    if op in ("involution2d", "involution2d_fused"):  # the fused op's reference is the unfold one too
        return True
    if is_channels_last(x):
        return False
    if not _AVX512:
        return math.prod(kernel_size) >= 169
    if x.shape[-2] * x.shape[-1] < 14 * 14:
        return False
    if direction == "forward":
        return kernel_size[1] >= 15
    return direction == "grad_weight" and math.prod(kernel_size) >= 169


# ---- measurement -------------------------------------------------------------------------------------------------

def workspace_bytes(name, op, direction, x, kernel_size) -> int:
    """A rough estimate of the memory a backend allocates beyond its inputs and output."""
    elem = x.element_size()
    if op == "involution2d" and name == "torch":
        return 2 * x.numel() * math.prod(kernel_size) * elem  # the unfolded input and the product
    if op == "involution2d_fused":  # torch: the unfold above plus the kernel (~3x x); the others a piece of it
        if name == "torch":
            return (2 * math.prod(kernel_size) + 3) * x.numel() * elem
        return x.numel() * elem
    if name == "cpu":  # fp32 working copies: dwconv2d's FFT spectra (~4 inputs), else a padded input and an output
        return (4 if op == "dwconv2d" else 2) * x.numel() * max(elem, 4)
    if name == "cuda" and op == "dwconv2d" and all(k >= 2 * n - 1 for k, n in zip(kernel_size, x.shape[2:])):
        # a kernel that covers the map ("same" padding): the dense products (cuda.covers_whole_map), whose fp32
        # tap matrices, or grad-weight's pairs, are (H*W)^2 per channel, with a copy or two
        return max(x.numel() * elem, 3 * 4 * x.shape[1] * (x.shape[2] * x.shape[3]) ** 2)
    if name == "cuda" and op == "dwconv2d" and is_channels_last(x):  # NCHW copies of the operands (through_nchw)
        return 2 * x.numel() * elem
    return x.numel() * elem


def _within_memory(names, op, direction, x, kernel_size, run_args):
    estimates = {name: workspace_bytes(name, op, direction, x, kernel_size) for name in names}
    limit = WORKSPACE_RATIO_LIMIT * min(estimates.values())
    if x.device.type == "cuda":
        limit = min(max(limit, WORKSPACE_FLOOR_BYTES), torch.cuda.mem_get_info(x.device)[0])
    kept = [name for name in names if estimates[name] <= limit]
    return kept or [min(estimates, key=estimates.get)]


def _fastest(op, direction, candidates, run_args, on_gpu):
    """(winner, its result, {candidate: seconds}): each candidate timed once, or, when its calls are short, in rounds
    that alternate between the candidates (so a busy moment of the machine does not hit one candidate only) with
    each one's fastest call counting: on CPU until its calls add up to _REPEAT_BELOW_S (at most _MAX_ROUNDS), on GPU
    three rounds after a warm-up call (Triton compiles and autotunes on it)."""
    fns = {name: getattr(backend_module(name), f"{op}_{direction}") for name in candidates}
    if on_gpu:
        for fn in fns.values():
            fn(*run_args)
    times, results = {name: [] for name in candidates}, {}
    for round_ in range(3 if on_gpu else _MAX_ROUNDS):
        for name, fn in fns.items():
            if round_ == 0 or on_gpu or sum(times[name]) < _REPEAT_BELOW_S:
                elapsed, results[name] = _timed(fn, run_args, on_gpu)
                times[name].append(elapsed)
    timings = {name: min(t) for name, t in times.items()}
    winner = min(timings, key=timings.get)
    return winner, results[winner], timings


def _timed(fn, args, on_gpu):
    if on_gpu:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn(*args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, result
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


# ---- the cache ---------------------------------------------------------------------------------------------------

def auto_choices() -> dict:
    """What "auto" has picked so far (for the benchmark and for users who want to see it)."""
    return dict(_auto_cache)


def save_auto_choices(path) -> None:
    """Write auto's choices to a JSON file (like a tuning cache), to be loaded in another process."""
    with open(path, "w") as file:
        json.dump([[list(key), name] for key, name in _auto_cache.items()], file, indent=1)


def load_auto_choices(path) -> None:
    """Load choices written by `save_auto_choices`; they are used as they are, also under deterministic mode."""
    with open(path) as file:
        entries = json.load(file)
    for key, name in entries:
        check_backend_name(name, f"backend in {path}")
        key = _plain(key)
        _auto_cache[key] = name
        _loaded_keys.add(key)
