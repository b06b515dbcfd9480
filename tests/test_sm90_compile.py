"""Every Triton kernel compiled for sm_90 (H100) on this CPU machine, under the venv's Triton and under
triton 3.6.0, the GPU box's version (the two have compiled the same kernel differently: fp64 tl.dot failed under
3.6.0 only). The gate is bench/sm90.py, run in a subprocess: this process runs Triton's interpreter, which cannot
compile. triton 3.6.0 lives in a second small venv, .venv-triton36 (made by `make test`; the Makefile says why).

Fails on a compile error, on register spills above bench.sm90.SPILL_BOUND (0 bytes; the older kernels listed in
bench.sm90.KNOWN_SPILLS up to what they spilled when the gate first measured spills) and on shared memory above the
227 KB an H100 block can have; and when the gate stops covering every kernel, layout, dtype and tile config.
About two minutes of CPU per Triton version on a fresh Triton cache (Triton caches the cubins afterwards).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench import sm90  # noqa: E402
from largeconv.kernels import (dwconv as dw, dwconv1d as dw1, involution as inv,  # noqa: E402
                               involution_fused as fused)

OP_MODULES = {"dwconv2d": dw, "involution2d": inv, "involution2d_fused": fused, "dwconv1d": dw1}

GPU_BOX_TRITON = "3.6.0"
TRITON36_PYTHON = ROOT / ".venv-triton36" / "bin" / "python"


def kernel_names(module):
    return {name for name, obj in vars(module).items() if name.endswith("_kernel") and hasattr(obj, "run")}


def run_gate(python, tmp_path):
    out = tmp_path / "gate.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([str(python), "bench/sm90.py", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert out.exists(), f"the gate did not finish:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc, json.loads(out.read_text())


@pytest.mark.parametrize("version", ["venv", GPU_BOX_TRITON])
def test_every_kernel_compiles_for_sm90(version, tmp_path):
    if version == "venv":
        python, expected = sys.executable, triton.__version__
    elif triton.__version__ == GPU_BOX_TRITON:
        pytest.skip(f"the venv's Triton is {GPU_BOX_TRITON} (the 'venv' case compiles under it)")
    else:
        python, expected = TRITON36_PYTHON, GPU_BOX_TRITON
        assert python.exists(), f"{python} is missing: `make venv-triton36` makes it (`make test` does)"
    proc, records = run_gate(python, tmp_path)

    assert {r["triton"] for r in records} == {expected}
    failed = [f"{r['kernel']} {r['dtype']} {r['layout']} {r['config']}: {r['error']}" for r in records
              if not r["ok"]]
    assert not failed, f"{len(failed)} of {len(records)} kernels fail for sm_90:\n" + "\n".join(failed)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in records:  # the bounds, restated here
        assert r["spills"] <= sm90.spill_bound(r["op"], r["kernel"]) and r["shared"] <= 227 * 1024, r
    assert sm90.SPILL_BOUND == 0
    assert not [k for k in sm90.KNOWN_SPILLS if k[0] == "dwconv1d"], "dwconv1d's kernels have never spilled"

    # Coverage: every kernel of kernels/, each direction and layout in every dtype, every config on the headline
    # shapes in fp32.
    assert {r["kernel"] for r in records} == set().union(*map(kernel_names, OP_MODULES.values()))
    for op, module in OP_MODULES.items():  # per op too: kernel names are not unique across modules
        assert {r["kernel"] for r in records if r["op"] == op} == kernel_names(module), op
    combos = {(r["op"], r["direction"], r["layout"]) for r in records}
    # directions of dwconv2d, involution2d, involution2d_fused x 2 layouts; dwconv1d's 3 in NCHW only and the sum
    # of its banded grad-weight's splits ("grad-weight then"); the NCHW grad-input's redo ("grad-input then")
    assert len(combos) == (3 + 3 + 4) * 2 + 4 + 1
    assert ("dwconv2d", "grad-input then", "nchw") in combos
    assert {c for c in combos if c[0] == "dwconv1d"} == {
        ("dwconv1d", d, "nchw") for d in ("forward", "grad-input", "grad-weight", "grad-weight then")}
    for combo in combos:
        dtypes = {r["dtype"] for r in records if (r["op"], r["direction"], r["layout"]) == combo}
        banded_only = combo == ("dwconv1d", "grad-weight then", "nchw")  # fp64 takes the direct kernels
        assert {"fp32-ieee", "fp16", "bf16"} | (set() if banded_only else {"fp64"}) <= dtypes, combo
    tf32 = {r["kernel"] for r in records if r["dtype"] == "fp32-tf32"}
    assert tf32 == {"_fwd_nchw_kernel", "_grad_input_nchw_kernel", "_grad_weight_nchw_kernel",
                    "_fused_fwd_kernel", "_fused_grad_reduced_kernel", "_fused_grad_span_kernel",
                    "_corr_toeplitz_kernel", "_grad_weight_toeplitz_kernel"}
    headline = {"dwconv2d": next(iter(sm90.DWCONV_SHAPES)), "involution2d": next(iter(sm90.INVOLUTION_SHAPES)),
                "involution2d_fused": next(iter(sm90.FUSED_INVOLUTION_SHAPES)),
                "dwconv1d": next(iter(sm90.DWCONV1D_SHAPES))}
    for r in records:
        if r["shape"] == headline[r["op"]] and r["dtype"] == "fp32-ieee":
            seen = {s["config_index"] for s in records if all(s[k] == r[k] for k in
                                                              ("op", "shape", "dtype", "layout", "direction"))}
            assert seen == set(range(r["configs"])), f"not every config of {r['kernel']} {r['layout']} compiled"


def test_gate_plans_the_precision_that_runs():
    """The gate compiles fp32 as it runs: with TF32 off ("fp32-ieee") 3xTF32 in dwconv2d's NCHW Toeplitz dots and
    IEEE in grad-weight's; with TF32 allowed, TF32."""
    shape = next(iter(sm90.DWCONV_SHAPES))
    for mode, expected in (("fp32-ieee", {"forward": "tf32x3", "grad-input": "tf32x3", "grad-weight": "ieee"}),
                           ("fp32-tf32", dict.fromkeys(("forward", "grad-input", "grad-weight"), "tf32"))):
        planned = sm90.launches("dwconv2d", shape, mode, "nchw")
        assert {d: launch.meta.get("PRECISION") for d, launch in planned.items()} == {
            **expected, "grad-input then": None}, mode  # the redo runs no dot


def test_static_model_of_the_fused_involution_launches():
    """bench/static_gpu.py's estimate of the four fused-involution launches at the kit's first layer compiles them
    under triton 3.6.0 and finds a gathering loop in each (the GPU kit's suite fused_launches is set beside it)."""
    python = TRITON36_PYTHON if TRITON36_PYTHON.exists() else Path(sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import json; from bench import static_gpu; print(json.dumps(static_gpu.fused_involution_rows()))"
    proc = subprocess.run([str(python), "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["direction"] for r in rows] == ["forward", "grad-reduced", "grad-span", "grad-input"]
    for r in rows:
        assert r["loads"] > 0 and r["spills"] == 0 and r["bound"] in ("issue", "l1", "latency", "l2"), r
        assert 0.01 < r["predicted_ms"] < 10 and r["predicted_ms"] >= r[f"{r['bound']}_ms"], r


def test_compare_sets_cuda_involution_rows_beside_their_predictions(tmp_path):
    """static_gpu.compare (run after a GPU loan: `bench/static_gpu.py --compare`) finds the predictions of the CUDA
    involution rows: fwd = the forward's, fwdbwd = the three directions' sum; off by more than 2x is flagged."""
    from bench import static_gpu
    results, predicted = tmp_path / "results.csv", tmp_path / "predicted.csv"
    head = "suite,case,op,backend,dtype,layout,direction,status,time_ms\n"
    results.write_text(head + "headline,rednet50-s1,involution2d,cuda,fp32,nchw,fwd,ok,0.205\n"
                              "headline,rednet50-s1,involution2d,cuda,fp32,nchw,fwdbwd,ok,0.584\n"
                              "headline,rednet50-s1,involution2d,cuda,bf16,nchw,fwd,ok,0.1\n")
    predicted.write_text("case,op,backend,dtype,direction,predicted_ms,floor_ms,bound\n" + "".join(
        f"rednet50-s1,involution2d,cuda-nchw,fp32,{d},{ms},0.078,memory\n"
        for d, ms in (("forward", 0.082), ("grad-input", 0.090), ("grad-weight", 0.120))))
    table = static_gpu.compare(str(results), str(predicted)).splitlines()
    assert len(table) == 4  # header, rule, the two fp32 rows: no prediction for bf16, no row
    assert table[2].endswith("| fwd | 0.205 | 0.082 | 2.50 | **yes** |")
    assert table[3].endswith("| fwdbwd | 0.584 | 0.292 | 2.00 | no |")


def test_compare_takes_the_dense_prediction_where_cuda_runs_dense_products(tmp_path):
    """On maps the kernel covers (RepLKNet-31B s3/s4) the cuda backend runs dense products: compare sets its rows
    beside those predictions (cuda-dense), not the tiled kernels' (cuda-nchw), which stay for the other maps; on
    small planes forward and grad-input run corr_plane_kernel (cuda-plane), taken first, direction by direction."""
    from bench import static_gpu
    results, predicted = tmp_path / "results.csv", tmp_path / "predicted.csv"
    head = "suite,case,op,backend,dtype,layout,direction,status,time_ms\n"
    results.write_text(head + "headline,replknet31b-s4,dwconv2d,cuda,fp32,nchw,fwd,ok,0.05\n"
                              "headline,replknet31b-s1,dwconv2d,cuda,fp32,nchw,fwd,ok,1.0\n")
    predicted.write_text("case,op,backend,dtype,direction,predicted_ms,floor_ms,bound\n"
                         "replknet31b-s4,dwconv2d,cuda-nchw,fp32,forward,0.176,0.001,issue\n"
                         "replknet31b-s4,dwconv2d,cuda-dense,fp32,forward,0.033,0.005,memory\n"
                         "replknet31b-s1,dwconv2d,cuda-nchw,fp32,forward,0.742,0.074,issue\n")
    table = static_gpu.compare(str(results), str(predicted)).splitlines()
    assert table[2].endswith("| fwd | 0.050 | 0.033 | 1.52 | no |")
    assert table[3].endswith("| fwd | 1.000 | 0.742 | 1.35 | no |")
    # small planes: their kernel's forward and grad-input, the dense grad-weight, per direction
    results.write_text(head + "headline,replknet31b-s4,dwconv2d,cuda,fp32,nchw,fwd,ok,0.05\n"
                              "headline,replknet31b-s4,dwconv2d,cuda,fp32,nchw,fwdbwd,ok,0.2\n")
    with open(predicted, "a") as f:
        f.write("replknet31b-s4,dwconv2d,cuda-plane,fp32,forward,0.040,0.005,issue\n"
                "replknet31b-s4,dwconv2d,cuda-plane,fp32,grad-input,0.040,0.005,issue\n"
                "replknet31b-s4,dwconv2d,cuda-dense,fp32,grad-weight,0.055,0.005,memory\n")
    table = static_gpu.compare(str(results), str(predicted)).splitlines()
    assert table[2].endswith("| fwd | 0.050 | 0.040 | 1.25 | no |")
    assert table[3].endswith("| fwdbwd | 0.200 | 0.135 | 1.48 | no |")
