"""Fast checks of the roofline benchmark (bench/): counts, roofs, CSV schema, --compare, the FMA peak kernel."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from bench import counts, peaks, roofline, suites  # noqa: E402

SYNTHETIC_PEAKS = dict(device="synthetic", device_type="cpu", bandwidth=10.0, fma_fp32=100.0, matmul_fp32=100.0,
                       bandwidth_method="synthetic", fma_method="synthetic")


# ---- counts against hand counts -------------------------------------------------------------------------------

def test_dwconv_counts_by_hand():
    # (1, 2, 4, 4), K=3, pad 1: per axis the 4 outputs see 2, 3, 3, 2 in-bounds taps = 10; 2-D: 100 per channel
    c = counts.dwconv2d_counts(1, 2, 4, 4, 3, stride=1, padding=1, itemsize=4, direction="fwd")
    assert (c["out_h"], c["out_w"]) == (4, 4)
    assert c["flops"] == 2 * 2 * 100
    assert c["flops_dense"] == 2 * 2 * 16 * 9
    assert c["min_bytes"] == 4 * (32 + 18 + 32)  # x, weight, out
    b = counts.dwconv2d_counts(1, 2, 4, 4, 3, padding=1, itemsize=4, direction="bwd")
    assert b["flops"] == 4 * 2 * 100  # grad-input and grad-weight
    assert b["min_bytes"] == 4 * (32 + 32 + 18 + 32 + 18)  # grad_out, x, weight -> grad_x, grad_w
    fb = counts.dwconv2d_counts(1, 2, 4, 4, 3, padding=1, itemsize=4, direction="fwdbwd")
    assert (fb["flops"], fb["min_bytes"]) == (c["flops"] + b["flops"], c["min_bytes"] + b["min_bytes"])
    half = counts.dwconv2d_counts(1, 2, 4, 4, 3, padding=1, itemsize=2, direction="fwd")
    assert half["min_bytes"] * 2 == c["min_bytes"] and half["flops"] == c["flops"]


def test_involution_counts_by_hand():
    # (1, 4, 5, 5), G=2, K=3, stride 2, pad 1: Ho = 3; per axis taps 2, 3, 2 = 7; 2-D: 49 per channel
    c = counts.involution2d_counts(1, 4, 5, 5, 3, groups=2, stride=2, itemsize=4, direction="fwd")
    assert (c["out_h"], c["out_w"]) == (3, 3)
    assert c["flops"] == 2 * 4 * 49
    assert c["flops_dense"] == 2 * 4 * 9 * 9
    assert c["min_bytes"] == 4 * (100 + 2 * 9 * 9 + 36)  # x, weight (B, G*K*K, Ho, Wo), out
    b = counts.involution2d_counts(1, 4, 5, 5, 3, groups=2, stride=2, itemsize=4, direction="bwd")
    assert b["flops"] == 4 * 4 * 49
    assert b["min_bytes"] == 4 * (36 + 100 + 162 + 100 + 162)


@pytest.mark.parametrize("kernel,stride,dilation", [((3, 3), 1, 1), ((5, 2), 2, 1), ((3, 7), 1, 2), ((4, 4), 2, 1)])
def test_dwconv_useful_flops_match_a_conv_of_ones(kernel, stride, dilation):
    """Useful MACs = sum of a conv of ones with ones: it counts exactly the in-bounds taps."""
    n, c, h, w = 2, 3, 9, 7
    padding = tuple(dilation * (k - 1) // 2 for k in kernel)
    taps = F.conv2d(torch.ones(1, 1, h, w, dtype=torch.float64), torch.ones(1, 1, *kernel, dtype=torch.float64),
                    None, stride, padding, dilation)
    got = counts.dwconv2d_counts(n, c, h, w, kernel, stride, padding, dilation)
    assert got["flops"] == 2 * n * c * int(taps.sum())
    assert (got["out_h"], got["out_w"]) == tuple(taps.shape[2:])


def test_case_counts_follow_the_suite_padding():
    case = suites.dw("x", 2, 8, 14, 14, 13)
    c = roofline.case_counts(case, torch.bfloat16, "fwd")
    assert (c["out_h"], c["out_w"]) == (14, 14)
    assert c["min_bytes"] == 2 * (2 * 8 * 196 * 2 + 8 * 169)


# ---- roofs ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ai", [0.1, 1.0, 9.99, 10.0, 10.01, 1000.0])
def test_roof_fraction_is_at_most_one(ai):
    """A run that takes at least max(flops / peak, bytes / bandwidth) never reaches more than 100% of its roof."""
    peak, bw = 100e9, 10e9
    flops = 1e9
    min_bytes = flops / ai
    fastest = max(flops / peak, min_bytes / bw)
    for slowdown in (1.0, 1.5, 10.0):
        row = dict(flops=flops, min_bytes=min_bytes, ai=ai)
        roofline.fill_measurement(row, fastest * slowdown, 5, SYNTHETIC_PEAKS)
        assert row["roof_fraction"] <= 1.0 + 1e-12
        assert row["roof_fraction"] == pytest.approx(1.0 / slowdown)
        assert row["roof_bound"] == ("memory" if ai < 10.0 else "compute")


# ---- the benchmark core on a tiny synthetic suite -------------------------------------------------------------

def test_run_benchmark_tiny_csv_schema(tmp_path):
    args = roofline.parse_args(["--suite", "tiny", "--min-time", "0.002", "--no-progress", "--max-sets", "2",
                                "--out", str(tmp_path)])
    cases = [suites.dw("tiny-dw", 1, 4, 6, 6, 3), suites.inv("tiny-inv", 1, 8, 6, 6, k=3, group_channels=4)]
    rows = roofline.run_benchmark(cases, args, torch.device("cpu"), SYNTHETIC_PEAKS, progress=False)
    roofline.write_csv(rows, tmp_path / "results.csv")
    with open(tmp_path / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == roofline.COLUMNS
        read = list(reader)
    assert len(read) == len(rows)
    # one row per case x backend x direction (dtype fp32), every row accounted for
    planned = {(c.name, b) for c in cases for b in roofline.ALL_BACKENDS
               if b not in ("torch_cl", "torch_compile") or b in roofline.BASELINES[c.op]}
    assert {(r["case"], r["backend"]) for r in read} == planned
    assert all(r["status"] in ("ok", "skipped", "error") for r in read)
    assert all(r["reason"] for r in read if r["status"] != "ok")
    by_key = {(r["case"], r["backend"], r["direction"]): r for r in read}
    for direction in counts.DIRECTIONS:
        base = by_key[("tiny-dw", "torch", direction)]
        assert base["status"] == "ok", base["reason"]
        assert float(base["time_ms"]) > 0 and float(base["speedup_vs_torch"]) == 1.0
        assert 0 < float(base["roof_fraction"]) <= 1.0
        assert base["check"] == "ok"
        cl = by_key[("tiny-dw", "torch_cl", direction)]
        assert cl["status"] == "ok" and float(cl["speedup_vs_best_torch"]) <= 1.0 + 1e-9
    triton_row = by_key[("tiny-dw", "triton", "fwd")]
    assert triton_row["status"] == "skipped" and "TRITON_INTERPRET" in triton_row["reason"]


def test_largeconv_backends_on_channels_last_inputs(tmp_path):
    """"cpu_cl" (and the other *_cl names) time largeconv's backend on channels_last inputs: rows say so, the output
    is checked, "cuda_cl" is skipped for the reason "cuda" is."""
    args = roofline.parse_args(["--suite", "tiny", "--min-time", "0.002", "--no-progress", "--max-sets", "2",
                                "--backends", "torch,cpu_cl,cuda_cl", "--out", str(tmp_path)])
    cases = [suites.dw("tiny-dw", 1, 4, 6, 6, 3), suites.inv("tiny-inv", 1, 8, 6, 6, k=3, group_channels=4)]
    rows = roofline.run_benchmark(cases, args, torch.device("cpu"), SYNTHETIC_PEAKS, progress=False)
    cl = [r for r in rows if r["backend"] == "cpu_cl"]
    assert len(cl) == 2 * len(counts.DIRECTIONS)
    assert all(r["status"] == "ok" and r["check"] == "ok" and r["layout"] == "channels_last" for r in cl), cl
    assert all(r["layout"] == "nchw" for r in rows if r["backend"] == "torch")
    cuda = [r for r in rows if r["backend"] == "cuda_cl"]
    assert cuda and all(r["status"] == "skipped" and "CUDA" in r["reason"] for r in cuda), cuda
    inputs = roofline.InputSets(cases[0], torch.float32, torch.device("cpu"))[0]
    out = roofline.prepare("fwd", roofline.op_function(cases[0], "cpu_cl", {}), inputs, "cpu_cl")()
    assert out.is_contiguous(memory_format=torch.channels_last)  # largeconv keeps its input's layout


def test_main_writes_every_output(tmp_path):
    peaks_file = tmp_path / "peaks.in.json"
    peaks_file.write_text(json.dumps(SYNTHETIC_PEAKS))
    out = tmp_path / "out"
    roofline.main(["--suite", "tiny", "--min-time", "0.002", "--no-progress", "--max-sets", "2",
                   "--backends", "torch,torch_cl", "--directions", "fwd", "--no-memory",
                   "--peaks", str(peaks_file), "--out", str(out)])
    for name in ("results.csv", "results.md", "roofline.png", "peaks.json", "environment.txt"):
        assert (out / name).stat().st_size > 0, name
    assert "| tiny-dw |" in (out / "results.md").read_text()


# ---- --compare ------------------------------------------------------------------------------------------------

def _write_rows(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=roofline.COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in roofline.COLUMNS})


def test_compare_two_csvs(tmp_path, capsys):
    row = dict(device="d", case="c1", op="dwconv2d", backend="cpu", dtype="fp32", direction="fwd", status="ok")
    _write_rows(tmp_path / "a.csv", [dict(row, time_ms=4.0), dict(row, case="c2", time_ms=9.0),
                                     dict(row, case="c3", time_ms=1.0)])
    _write_rows(tmp_path / "b.csv", [dict(row, time_ms=2.0), dict(row, case="c2", time_ms=3.0)])
    ratios = roofline.compare(tmp_path / "a.csv", tmp_path / "b.csv")
    assert ratios[("cpu", "fp32", "fwd")] == pytest.approx([2.0, 3.0])
    printed = capsys.readouterr().out
    assert "c1" in printed and "2.00" in printed and "1 measurements appear in only one file" in printed
    roofline.main(["--compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    assert "geomean" in capsys.readouterr().out


# ---- peaks ----------------------------------------------------------------------------------------------------

def test_measure_peaks_quick_cpu():
    p = peaks.measure_peaks("cpu", quick=True)
    for key in ("bandwidth", "fma_fp32", "matmul_fp32", "matmul_bf16", "matmul_fp16"):
        assert p[key] > 0, key
    assert peaks.datasheet_for("NVIDIA H100 80GB HBM3")[0] == "H100 SXM"
    assert peaks.datasheet_for("NVIDIA H200")[0] == "H200"
    assert peaks.datasheet_for(p["device"]) is None


def test_fma_kernel_computes_the_chain_under_the_interpreter():
    """The GPU FMA-roof kernel, run by Triton's interpreter: it must compute what it claims (8 chains of FMAs)."""
    pytest.importorskip("triton")
    code = f"""
import sys; sys.path.append({str(ROOT)!r})
import torch
from bench.peaks import fma_chain_kernel, FMA_UNROLL, FMA_CHAINS
n, iters = 300, 3
x = torch.rand(n); out = torch.empty(n)
fma_chain_kernel[(3,)](x, out, n, iters, BLOCK=128, UNROLL=FMA_UNROLL)
b, c = x * 1e-3 + 0.999, x * 1e-3
acc = [x + i for i in range(FMA_CHAINS)]
for _ in range(iters * FMA_UNROLL):
    acc = [a * b + c for a in acc]
ref = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
torch.testing.assert_close(out, ref)
"""
    env = dict(os.environ, TRITON_INTERPRET="1", KINETO_LOG_LEVEL="6")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_design_targets_pick_the_worst_case():
    row = dict(status="ok", backend="auto", device_type="cpu", op="dwconv2d", kh="31", kw="31", dtype="fp32",
               direction="fwd", case="a", speedup_vs_torch="12.0")
    rows = [row, dict(row, case="b", speedup_vs_torch="8.5"), dict(row, case="c", kh="13", kw="13",
                                                                    speedup_vs_torch="0.5")]
    lines = roofline.target_lines(rows)
    assert len(lines) == 1 and lines[0].startswith("FAIL") and "8.5 (b" in lines[0]
    assert roofline.target_lines(rows[:1])[0].startswith("PASS")


def test_append_merges_runs(tmp_path):
    peaks_file = tmp_path / "peaks.in.json"
    peaks_file.write_text(json.dumps(SYNTHETIC_PEAKS))
    common = ["--min-time", "0.002", "--no-progress", "--max-sets", "2", "--backends", "torch",
              "--no-memory", "--peaks", str(peaks_file), "--out", str(tmp_path)]
    roofline.main(["--suite", "tiny", "--directions", "fwd"] + common)
    roofline.main(["--suite", "tiny", "--directions", "fwd,bwd", "--append"] + common)
    rows = roofline.read_csv(tmp_path / "results.csv")
    keys = [tuple(r[k] for k in roofline.KEY) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 2  # 2 tiny cases x torch x (fwd, bwd), fwd not duplicated
