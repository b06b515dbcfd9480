"""Shape suites for the roofline benchmark.

A Case is one op on one shape; padding is always d*(K-1)//2 per side (size-preserving at stride 1, odd K).
`sweep` groups cases that differ only in kernel size, for the speedup-vs-kernel-size plot.
Full suites are sized for a GPU (batch 64); "cpu-default" is scaled down to finish in minutes on a 2-core CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    name: str
    op: str  # "dwconv2d" or "involution2d"
    n: int
    c: int
    h: int
    w: int
    kernel: tuple  # (kh, kw); involution: kh == kw
    stride: int = 1
    dilation: int = 1
    groups: int = 0  # involution groups G (C % G == 0); unused for dwconv
    sweep: str = ""  # e.g. "R32": cases of one sweep differ only in kernel size
    tags: tuple = field(default=())

    @property
    def padding(self):
        return tuple(self.dilation * (k - 1) // 2 for k in self.kernel)

    @property
    def shape(self):
        return (self.n, self.c, self.h, self.w)

    def describe(self):
        k = f"{self.kernel[0]}x{self.kernel[1]}"
        extra = f" s{self.stride}" if self.stride != 1 else ""
        extra += f" d{self.dilation}" if self.dilation != 1 else ""
        extra += f" G{self.groups}" if self.op == "involution2d" else ""
        return f"({self.n},{self.c},{self.h}x{self.w}) K{k}{extra}"


def dw(name, n, c, h, w, k, stride=1, dilation=1, sweep="", tags=()):
    kernel = (k, k) if isinstance(k, int) else tuple(k)
    return Case(name, "dwconv2d", n, c, h, w, kernel, stride, dilation, 0, sweep, tuple(tags))


def inv(name, n, c, h, w, k=7, stride=1, group_channels=16, dilation=1, tags=()):
    return Case(name, "involution2d", n, c, h, w, (k, k), stride, dilation, c // group_channels, "", tuple(tags))


TABLE1_KERNELS = (3, 5, 7, 9, 13, 17, 21, 27, 29, 31)


def replknet31b(batch=64):
    """RepLKNet-31B stages: kernels 31, 29, 27, 13 at 56², 28², 14², 7²."""
    return [dw("replknet31b-s1", batch, 128, 56, 56, 31), dw("replknet31b-s2", batch, 256, 28, 28, 29),
            dw("replknet31b-s3", batch, 512, 14, 14, 27), dw("replknet31b-s4", batch, 1024, 7, 7, 13)]


def slak(batch=64):
    """SLaK-T (width 1.3x: odd channel counts 124, 249, 499): decomposed K x 5 and 5 x K kernels, K = 51, 49, 47."""
    cases = []
    for stage, (c, size, k) in enumerate([(124, 56, 51), (249, 28, 49), (499, 14, 47)], start=1):
        cases.append(dw(f"slak-s{stage}-{k}x5", batch, c, size, size, (k, 5)))
        cases.append(dw(f"slak-s{stage}-5x{k}", batch, c, size, size, (5, k)))
    return cases


def unireplknet(batch=64):
    """UniRepLKNet-S 13x13 depthwise convs at 28², 14², 7²."""
    return [dw("unireplknet-28", batch, 192, 28, 28, 13), dw("unireplknet-14", batch, 384, 14, 14, 13),
            dw("unireplknet-7", batch, 768, 7, 7, 13)]


def table1(batch=64, channels=384, sizes=(16, 32, 64), kernels=TABLE1_KERNELS):
    """RepLKNet paper Table 1: (64, 384, R², K), R in {16, 32, 64}, K in 3..31."""
    return [dw(f"table1-R{r}-K{k}", batch, channels, r, r, k, sweep=f"R{r}") for r in sizes for k in kernels]


def weak_spots():
    """Where the existing kernels lose to PyTorch: batch 1-8, and wide (segmentation/detection) maps."""
    cases = []
    for n in (1, 2, 4, 8):
        cases.append(dw(f"weak-b{n}-s1", n, 128, 56, 56, 31))
        cases.append(dw(f"weak-b{n}-s4", n, 1024, 7, 7, 13))
    cases.append(dw("weak-wide-90x180", 1, 1536, 90, 180, 13))
    cases.append(dw("weak-wide-128x256-K31", 1, 256, 128, 256, 31))
    cases.append(dw("weak-stride2", 8, 256, 56, 56, 31, stride=2))
    return cases


def rednet50(batch=64):
    """RedNet-50 involutions: K=7, G=C/16, stride 1 in every stage and stride 2 at the first block of stages 2-4."""
    return [inv("rednet50-s1", batch, 64, 56, 56), inv("rednet50-s2", batch, 128, 28, 28),
            inv("rednet50-s3", batch, 256, 14, 14), inv("rednet50-s4", batch, 512, 7, 7),
            inv("rednet50-s2-stride2", batch, 128, 56, 56, stride=2),
            inv("rednet50-s3-stride2", batch, 256, 28, 28, stride=2),
            inv("rednet50-s4-stride2", batch, 512, 14, 14, stride=2)]


def cpu_default():
    """Scaled-down batch: a kernel-size sweep, one RepLKNet stage, a SLaK strip, RedNet involutions."""
    cases = [dw(f"cpu-R32-K{k}", 2, 64, 32, 32, k, sweep="R32-cpu") for k in (3, 5, 7, 9, 13, 17, 21, 27, 31)]
    cases += [dw("cpu-replknet31b-s1-b1", 1, 128, 56, 56, 31), dw("cpu-replknet31b-s4-b2", 2, 1024, 7, 7, 13),
              dw("cpu-slak-s1-51x5-b1", 1, 124, 56, 56, (51, 5))]
    cases += [inv("cpu-rednet50-s1-b2", 2, 64, 56, 56), inv("cpu-rednet50-s2-b2", 2, 128, 28, 28),
              inv("cpu-rednet50-s2-stride2-b2", 2, 128, 56, 56, stride=2)]
    return cases


def tiny():
    """One tiny case per op (tests, smoke runs)."""
    return [dw("tiny-dw", 1, 4, 8, 8, 3), inv("tiny-inv", 1, 8, 8, 8, k=3, group_channels=4)]


SUITES = {
    "cpu-default": cpu_default,
    "replknet31b": replknet31b,
    "slak": slak,
    "unireplknet": unireplknet,
    "table1": table1,
    "weak": weak_spots,
    "rednet50": rednet50,
    "tiny": tiny,
}
# "gpu": everything the design asks for on one GPU
SUITES["gpu"] = lambda: (replknet31b() + slak() + unireplknet() + weak_spots() + rednet50() + table1())


def get_suite(names: str):
    """Cases of one or more comma-separated suite names, in order, without duplicates."""
    cases, seen = [], set()
    for name in names.split(","):
        name = name.strip()
        if name not in SUITES:
            raise SystemExit(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
        for case in SUITES[name]():
            if case.name not in seen:
                seen.add(case.name)
                cases.append(case)
    return cases
