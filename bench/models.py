"""End-to-end benchmark: whole models with and without largeconv, one training step and one inference forward.

    python -m bench.models                                  # every model, on the GPU if there is one, else CPU
    python -m bench.models --out bench/results/cpu --wait-quiet 30   # the committed CPU run
    python -m bench.models --models convnext_t_k31,rednet50 --budget-s 240
    python -m bench.models --min-kernel-size 7          # convert smaller kernels too (to measure convert's default)

Models (built once each; batch and resolution per device below, or --batch / --resolution):
  replknet31b       RepLKNet-31B (kernels 31-29-27-13, small kernel 5) from largeconv's ReparamLargeKernelConv
  unireplknet_t     a UniRepLKNet-T-like net (depths 3-3-18-3, widths 80-160-320-640, 13x13 DilatedReparamBlocks)
  convnext_t_k31    timm convnext_tiny with 31x31 depthwise kernels
  convnext_t        timm convnext_tiny (7x7)
  rednet50          RedNet-50: torchvision's ResNet-50 with each bottleneck's 3x3 conv an Involution2d(7x7)
  efficientnet_b0, mobilenetv3_large_100   timm, small kernels (3x3, 5x5)

Variants: "pytorch" is the model in plain PyTorch (nn.Conv2d everywhere; RedNet's involution by the unfold
reference, as the official PyTorch code computes it); "largeconv" is `largeconv.convert(model)` with its defaults
(RedNet: Involution2d with backend "auto"). Re-parameterized models (RepLKNet, UniRepLKNet) train in their training
structure and run inference deployed (reparameterize_model), as they are used. A training step is forward +
cross-entropy + backward + SGD step; inference is a forward under no_grad in eval mode. The two variants are timed
alternately, pair after pair, so both see the same background load; the speedup is the median of the pairs'
ratios. The CPU is usually shared: each row records how many cores other processes used meanwhile, and
--wait-quiet waits (up to that many seconds) for a quiet machine before each pair.

Writes OUT/models.csv, models.md and models.png (default OUT: bench/out).
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime
import math
import os
import statistics
import sys
import textwrap
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import largeconv  # noqa: E402
from largeconv import Involution2d, LargeDWConv2d  # noqa: E402
from largeconv.reparam import DilatedReparamBlock, ReparamLargeKernelConv, reparameterize_model  # noqa: E402
from bench.roofline import OtherWork, wait_until_quiet  # noqa: E402

# (batch, resolution) per device type: the CPU's keep a full run within minutes on 2 cores
SHAPES = {"cpu": (2, 128), "cuda": (32, 224)}
COLUMNS = ["date", "device", "torch_version", "threads", "model", "variant", "phase", "batch", "resolution",
           "converted", "clock", "median_ms", "min_ms", "cpu_median_ms", "repeats", "speedup", "auto_choices",
           "other_cores", "loadavg"]


# ---- models -----------------------------------------------------------------------------------------------------

def conv_bn(cin, cout, k, stride=1, groups=1, relu=True):
    layers = OrderedDict(conv=nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         bn=nn.BatchNorm2d(cout))
    if relu:
        layers["relu"] = nn.ReLU()
    return nn.Sequential(layers)


class RepLKBlock(nn.Module):
    """BN -> 1x1 conv-BN-ReLU -> ReparamLargeKernelConv -> ReLU -> 1x1 conv-BN, plus the shortcut."""

    def __init__(self, channels, kernel, small_kernel):
        super().__init__()
        self.prelkb_bn = nn.BatchNorm2d(channels)
        self.pw1 = conv_bn(channels, channels, 1)
        self.large_kernel = ReparamLargeKernelConv(channels, channels, kernel, 1, channels, small_kernel)
        self.pw2 = conv_bn(channels, channels, 1, relu=False)

    def forward(self, x):
        return x + self.pw2(F.relu(self.large_kernel(self.pw1(self.prelkb_bn(x)))))


class ConvFFN(nn.Module):
    def __init__(self, channels, ratio=4):
        super().__init__()
        self.preffn_bn = nn.BatchNorm2d(channels)
        self.pw1 = conv_bn(channels, channels * ratio, 1, relu=False)
        self.pw2 = conv_bn(channels * ratio, channels, 1, relu=False)

    def forward(self, x):
        return x + self.pw2(F.gelu(self.pw1(self.preffn_bn(x))))


def replknet(kernels=(31, 29, 27, 13), depths=(2, 2, 18, 2), widths=(128, 256, 512, 1024), small_kernel=5,
             classes=1000):
    """RepLKNet (31B by default): stem, four stages of (RepLK block, ConvFFN) pairs, transitions, BN-pool-FC."""
    w0 = widths[0]
    layers = [conv_bn(3, w0, 3, 2), conv_bn(w0, w0, 3, groups=w0), conv_bn(w0, w0, 1), conv_bn(w0, w0, 3, 2, w0)]
    for i, (k, depth, width) in enumerate(zip(kernels, depths, widths)):
        for _ in range(depth):
            layers += [RepLKBlock(width, k, small_kernel), ConvFFN(width)]
        if i + 1 < len(widths):
            layers += [conv_bn(width, widths[i + 1], 1), conv_bn(widths[i + 1], widths[i + 1], 3, 2, widths[i + 1])]
    layers += [nn.BatchNorm2d(widths[-1]), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], classes)]
    return nn.Sequential(*layers)


class UniRepLKBlock(nn.Module):
    """depthwise (DilatedReparamBlock for K >= 7) -> BN -> 1x1 (x4) -> GELU -> 1x1 -> layer scale, plus shortcut."""

    def __init__(self, channels, kernel):
        super().__init__()
        self.dwconv = (DilatedReparamBlock(channels, kernel) if kernel >= 7
                       else nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels))
        self.norm = nn.BatchNorm2d(channels)
        self.pwconv1 = nn.Conv2d(channels, 4 * channels, 1)
        self.pwconv2 = nn.Conv2d(4 * channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), 1e-2))

    def forward(self, x):
        return x + self.gamma * self.pwconv2(F.gelu(self.pwconv1(self.norm(self.dwconv(x)))))


def unireplknet(depths=(3, 3, 18, 3), widths=(80, 160, 320, 640), classes=1000):
    """UniRepLKNet-T-like: 3x3 blocks in stage 1, 13x13 dilated re-param blocks in stages 2 and 4, alternating
    13x13 and 3x3 in stage 3 (UniRepLKNet-T's layout); no SE or GRN."""
    kernels = [[3] * depths[0], [13] * depths[1], [13 if i % 2 == 0 else 3 for i in range(depths[2])], [13] * depths[3]]
    layers = [conv_bn(3, widths[0] // 2, 3, 2), conv_bn(widths[0] // 2, widths[0], 3, 2, relu=False)]
    for i, (ks, width) in enumerate(zip(kernels, widths)):
        if i:
            layers.append(conv_bn(widths[i - 1], width, 3, 2, relu=False))
        layers += [UniRepLKBlock(width, k) for k in ks]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(widths[-1]), nn.Linear(widths[-1], classes)]
    return nn.Sequential(*layers)


def rednet(depths=(3, 4, 6, 3), width=64, classes=1000):
    """RedNet (50 by default): torchvision's ResNet with every bottleneck's 3x3 conv an Involution2d (7x7, 16
    channels per group, reduction 4) with the conv's stride (the stem is ResNet's)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    model = ResNet(Bottleneck, list(depths), num_classes=classes, width_per_group=width)
    for m in model.modules():
        if isinstance(m, Bottleneck):
            m.conv2 = Involution2d(m.conv2.in_channels, 7, m.conv2.stride[0], group_channels=16, reduction_ratio=4)
    return model


def timm_model(name, **kwargs):
    import timm
    return timm.create_model(name, pretrained=False, **kwargs)


# name -> build(smoke): smoke builds tiny versions, so the test suite runs every code path in seconds
MODELS = {
    "replknet31b": lambda smoke: replknet(depths=(1, 1, 1, 1), widths=(8, 16, 16, 16), kernels=(31, 17, 13, 7))
    if smoke else replknet(),
    "unireplknet_t": lambda smoke: unireplknet(depths=(1, 1, 2, 1), widths=(8, 16, 16, 16)) if smoke
    else unireplknet(),
    "convnext_t_k31": lambda smoke: timm_model("convnext_atto" if smoke else "convnext_tiny", kernel_sizes=31),
    "convnext_t": lambda smoke: timm_model("convnext_atto" if smoke else "convnext_tiny"),
    "rednet50": lambda smoke: rednet(depths=(1, 1, 1, 1), width=16) if smoke else rednet(),
    "efficientnet_b0": lambda smoke: timm_model("mobilenetv3_small_050" if smoke else "efficientnet_b0"),
    "mobilenetv3_large_100": lambda smoke: timm_model("mobilenetv3_small_050" if smoke else "mobilenetv3_large_100"),
}


# ---- variants ---------------------------------------------------------------------------------------------------

def as_pytorch(model):
    """`model` in plain PyTorch: every LargeDWConv2d an nn.Conv2d sharing its parameters, every Involution2d on
    the unfold reference backend."""
    for name, child in model.named_children():
        if isinstance(child, LargeDWConv2d):
            conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                             child.dilation, child.groups, bias=child.bias is not None, device="meta")
            conv.weight, conv.bias = child.weight, child.bias
            setattr(model, name, conv.train(child.training))
        else:
            if isinstance(child, Involution2d):
                child.backend = "torch"
            as_pytorch(child)
    return model


def with_largeconv(model, min_kernel_size=None):
    """What a user gets: convert's defaults (or --min-kernel-size); involution on "auto"."""
    model = largeconv.convert(model, min_kernel_size=min_kernel_size)
    for m in model.modules():
        if isinstance(m, Involution2d):
            m.backend = "auto"
    return model


def n_converted(model):
    return sum(isinstance(m, LargeDWConv2d) for m in model.modules()) + sum(
        isinstance(m, Involution2d) and m.backend != "torch" for m in model.modules())


def variants(build, smoke, min_kernel_size=None):
    """{phase: {variant: model}}: training structure for "train", deployed structure for "infer"."""
    torch.manual_seed(0)
    base = as_pytorch(build(smoke))
    deployed = copy.deepcopy(base).eval()
    reparameterize_model(deployed)  # no-op for models without re-parameterizable blocks
    deployed = as_pytorch(deployed)
    return {"train": {"pytorch": base, "largeconv": with_largeconv(copy.deepcopy(base), min_kernel_size)},
            "infer": {"pytorch": deployed, "largeconv": with_largeconv(copy.deepcopy(deployed), min_kernel_size)}}


# ---- timing -----------------------------------------------------------------------------------------------------

def step_function(model, phase, x, labels):
    if phase == "infer":
        model.eval()

        def infer():
            with torch.no_grad():
                return model(x)
        return infer
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step():
        loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss
    return train_step


def elapsed_ms(fn, device):
    """(wall ms, this process's CPU ms) of one call. CPU time leaves out the time other processes held the cores,
    so with --threads 1 it is the measure that survives a shared machine."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3, (time.process_time() - start_cpu) * 1e3


def time_pairs(fns, device, args, deadline):
    """Alternate the variants' calls (order flipped each pair). Returns ({variant: [(wall ms, cpu ms)]}, other
    processes' cores meanwhile)."""
    names = list(fns)
    times = {name: [] for name in names}
    for fn in fns.values():  # warm-up: page faults, "auto"'s one-time measurement, allocator
        fn()
    monitor = OtherWork()
    for i in range(args.repeats):
        if i and time.time() > deadline:
            break
        if args.wait_quiet > 0 and device.type == "cpu":
            wait_until_quiet(args.wait_quiet, args.quiet_cores)
        for name in (names if i % 2 == 0 else names[::-1]):
            times[name].append(elapsed_ms(fns[name], device))
    return times, monitor.cores()


def run_model(name, args, device, deadline):
    build = MODELS[name]
    models = variants(build, args.smoke, args.min_kernel_size)
    batch, resolution = args.batch, args.resolution
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, resolution, resolution, generator=gen).to(device)
    labels = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    rows = []
    clock = 1 if args.clock == "cpu" else 0
    for phase, pair in models.items():
        fns = {variant: step_function(model.to(device), phase, x, labels) for variant, model in pair.items()}
        known = set(largeconv.dispatch.auto_choices())
        times, other = time_pairs(fns, device, args, deadline)
        picked = [v for k, v in largeconv.dispatch.auto_choices().items() if k not in known]
        choices = " ".join(f"{b}:{picked.count(b)}" for b in sorted(set(picked)))  # "auto"'s new picks
        speedup = statistics.median(a[clock] / b[clock] for a, b in zip(times["pytorch"], times["largeconv"]))
        for variant, model in pair.items():
            wall, cpu = zip(*times[variant])
            rows.append(dict(model=name, variant=variant, phase=phase, batch=batch, resolution=resolution,
                             converted=n_converted(model), clock=args.clock,
                             median_ms=round(statistics.median(wall), 3), min_ms=round(min(wall), 3),
                             cpu_median_ms=round(statistics.median(cpu), 3), repeats=len(wall),
                             speedup=round(speedup, 3) if variant == "largeconv" else 1.0,
                             auto_choices=choices if variant == "largeconv" else "",
                             other_cores=round(other, 2), loadavg=round(os.getloadavg()[0], 2)))
    return rows


# ---- output -----------------------------------------------------------------------------------------------------

def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_md(rows, skipped, path, header):
    lines = [f"# End-to-end models, {header}", "",
             "Times: medians, wall clock or this process's CPU time as the title says. Speedup: median over "
             "alternating pairs of (PyTorch time / largeconv time); > 1 means largeconv is faster. Converted: "
             "LargeDWConv2d / Involution2d layers in the largeconv variant (models.csv's auto_choices: the backends "
             "'auto' newly picked in that phase, one per op direction and shape bucket). Other cores: CPU cores "
             "used by other processes during the timing (the machine is shared).", "",
             "| model | batch x res | converted | train step PyTorch | train step largeconv | train speedup | "
             "inference PyTorch | inference largeconv | inference speedup | other cores |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    by_key = {(r["model"], r["phase"], r["variant"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        cells = []
        for phase in ("train", "infer"):
            base, fast = by_key[(model, phase, "pytorch")], by_key[(model, phase, "largeconv")]
            key = "cpu_median_ms" if fast["clock"] == "cpu" else "median_ms"
            cells += [f"{base[key]:.1f} ms", f"{fast[key]:.1f} ms", f"{fast['speedup']:.2f}x"]
        first = by_key[(model, "train", "largeconv")]
        other = max(by_key[(model, p, "largeconv")]["other_cores"] for p in ("train", "infer"))
        lines.append(f"| {model} | {first['batch']} x {first['resolution']}^2 | {first['converted']} | "
                     + " | ".join(cells) + f" | {other:.2f} |")
    for model, why in skipped:
        lines.append(f"| {model} | skipped: {why} | | | | | | | | |")
    Path(path).write_text("\n".join(lines) + "\n")


def plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fast = [r for r in rows if r["variant"] == "largeconv"]
    models = list(dict.fromkeys(r["model"] for r in fast))
    speed = {(r["model"], r["phase"]): r["speedup"] for r in fast}
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(models) + 1.5))
    height = 0.38
    for offset, phase, label in ((-height / 2, "train", "training step"), (height / 2, "infer", "inference")):
        values = [speed[(m, phase)] for m in models]
        bars = ax.barh([i + offset for i in range(len(models))], values, height, label=label)
        for bar, value in zip(bars, values):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.2f}x", va="center", fontsize=8)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvline(0.98, color="r", lw=0.8, ls="--", label="0.98x (never slower, within noise)")
    ax.set_xscale("log")
    ax.set_yticks(range(len(models)), models)
    ax.invert_yaxis()
    ax.set_xlabel("speedup of largeconv over PyTorch (log scale)")
    ax.set_title(textwrap.fill(title, 90), fontsize=8)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main -------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {','.join(MODELS)}")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--batch", type=int, default=None, help="default: per device (CPU %d, CUDA %d)"
                   % (SHAPES["cpu"][0], SHAPES["cuda"][0]))
    p.add_argument("--resolution", type=int, default=None, help="default: per device (CPU %d, CUDA %d)"
                   % (SHAPES["cpu"][1], SHAPES["cuda"][1]))
    p.add_argument("--repeats", type=int, default=5, help="timed pairs per model and phase (fewer if over budget)")
    p.add_argument("--budget-s", type=float, default=math.inf, help="stop starting models / pairs after this")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each pair, wait up to this long until other processes use < --quiet-cores cores")
    p.add_argument("--quiet-cores", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what the speedup compares: wall time, or this process's CPU time (with --threads 1, "
                        "robust to other processes on a shared CPU)")
    p.add_argument("--min-kernel-size", type=int, default=None,
                   help="passed to largeconv.convert (default: its per-device default); to measure that default")
    p.add_argument("--smoke", action="store_true", help="tiny models (tests)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    batch, resolution = SHAPES.get(device.type, SHAPES["cpu"])
    args.batch = args.batch or batch
    args.resolution = args.resolution or resolution
    names = [n for n in args.models.split(",") if n]
    unknown = set(names) - set(MODELS)
    if unknown:
        raise SystemExit(f"--models: unknown {sorted(unknown)}; choose from {list(MODELS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    deadline = start + args.budget_s
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    header = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  device=device_name, torch_version=torch.__version__, threads=torch.get_num_threads())
    rows, skipped = [], []
    for name in names:
        if time.time() > deadline:
            skipped.append((name, f"over --budget-s {args.budget_s:g}"))
            continue
        t0 = time.time()
        model_rows = run_model(name, args, device, deadline)
        rows += [{**header, **row} for row in model_rows]
        speed = {r["phase"]: r["speedup"] for r in model_rows if r["variant"] == "largeconv"}
        print(f"{name}: train {speed['train']:.2f}x, inference {speed['infer']:.2f}x "
              f"({time.time() - t0:.0f} s)", flush=True)
        write_csv(rows, out / "models.csv")  # as it goes, so a cut-off run keeps what it measured
    title = (f"{header['device']}, torch {header['torch_version']}, {header['threads']} threads, "
             f"{header['date']}; batch {args.batch}, {args.resolution}^2; speedup by {args.clock} time"
             + ("" if args.min_kernel_size is None else f"; convert(min_kernel_size={args.min_kernel_size})"))
    write_csv(rows, out / "models.csv")
    write_md(rows, skipped, out / "models.md", title)
    if rows:
        plot(rows, out / "models.png", title)
    print(f"wrote {out}/models.csv, models.md, models.png in {time.time() - start:.0f} s")
    return rows


if __name__ == "__main__":
    main()
