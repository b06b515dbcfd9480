"""The GPU run kit (bench/gpu_check.sh + bench/gpu_kit.py) rehearsed on CPU, so a device call never dies on a typo
or a missing import: every stage runs on tiny shapes; a hung stage is cut at its budget and the next one starts;
a test that crashes pytest is deselected and the rest rerun; the budgets fit one device call."""
import csv
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from bench import gpu_kit  # noqa: E402

PYTHON_STAGES = ["env", "smoke-triton", "timings-triton", "smoke-cuda", "timings-cuda", "sanitizer", "auto", "model",
                 "pytest"]


def run_kit(out, timeout=600, **env):
    environment = dict(os.environ, OUT=str(out), PYTHON=sys.executable, **env)
    environment.pop("TRITON_INTERPRET", None)  # the script sets what it needs
    # A session of its own, so that a run cut here takes its stages' processes with it.
    proc = subprocess.Popen(["bash", str(SCRIPT), "--rehearse"], cwd=ROOT, env=environment, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def stage_rows(out):
    with open(out / "stages.csv") as f:
        return {row["stage"]: row for row in csv.DictReader(f)}


def test_budgets_fit_one_device_call():
    text = SCRIPT.read_text()
    total = int(re.search(r"GPU_KIT_TOTAL:-(\d+)", text).group(1))
    budgets = dict(re.findall(r"\[([a-z-]+)\]=(\d+|rest)", text))
    assert set(PYTHON_STAGES + ["build", "wait-build", "summary"]) <= set(budgets)
    assert budgets["pytest"] == "rest"
    fixed = sum(int(v) for k, v in budgets.items() if k != "build" and v != "rest")  # the build runs beside them
    # pytest's floor; stages that finish early leave it more (the first H100 run's left it 131 s)
    assert total <= 540 and fixed + 25 <= total, f"stage budgets {fixed} s leave pytest under 25 s of {total} s"
    assert int(budgets["build"]) < total
    assert f"The fixed budgets sum to {fixed} of the {total} s" in text  # the header says what the budgets are


def test_rehearsal_runs_every_stage(tmp_path):
    proc = run_kit(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = stage_rows(tmp_path)
    for name in PYTHON_STAGES + ["build", "wait-build"]:
        assert stages[name]["status"] == "ok", f"{name}: {stages[name]}\n{(tmp_path / 'log').read_text()[-5000:]}"
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    from bench.roofline import COLUMNS
    assert list(rows[0]) == COLUMNS
    kit = {r["case"]: r for r in rows if r["suite"] == "kit"}
    assert {"env", "smoke-triton", "timings-triton", "sanitizer", "auto", "model", "pytest"} <= set(kit)
    # no GPU: every GPU test skipped, and the note is pytest's tally
    assert re.fullmatch(r"\d+ skipped(, \d+ deselected)? in [\d.]+s", kit["pytest"]["reason"]), kit["pytest"]
    smoke = [r for r in rows if r["suite"] == "smoke" and r["op"] in ("dwconv2d", "involution2d")]
    combos = {(r["case"], r["dtype"], r["layout"], r["direction"]) for r in smoke}
    assert len(combos) == len(smoke) == 5 * 2 * 2 * 3  # dtypes x layouts x shapes x directions, each once
    smoke1d = [r for r in rows if r["suite"] == "smoke" and r["op"] == "dwconv1d"]
    combos1d = {(r["case"], r["dtype"], r["direction"]) for r in smoke1d}
    assert len(combos1d) == len(smoke1d) == 5 * 2 * 3  # dtypes x Conv1d shapes x directions, each once
    fused = [r for r in rows if r["suite"] == "smoke" and r["op"] == "involution2d_fused"]
    combos_fused = {(r["case"], r["dtype"], r["layout"], r["direction"]) for r in fused}
    assert {r["backend"] for r in fused} == {"triton"}  # the cuda backend has no fused involution
    assert len(combos_fused) == len(fused) == 3 * 2 * 2 * 5  # fp32/fp16/bf16 x layouts x shapes x 5 results
    assert {r["stride"] for r in fused} == {"1", "2"}
    assert all(r["check"] == "ok" and float(r["rel_err"]) >= 0 for r in smoke + smoke1d + fused)
    timed_fused = [r for r in rows if r["suite"] == "fused_involution"]
    assert {(r["backend"], r["op"], r["status"]) for r in timed_fused} == {
        (b, op, "ok") for b in ("triton", "auto") for op in ("involution2d", "involution2d_fused")}
    assert all(float(r["time_ms"]) > 0 for r in timed_fused)
    assert [r["check"] for r in timed_fused if r["op"] == "involution2d_fused"] == ["ok", "ok"]
    assert "fused involution: 2 layer pairs" in kit["timings-triton"]["reason"]
    launches = [r for r in rows if r["suite"] == "fused_launches"]  # the first layer's launches, one by one
    assert [r["direction"] for r in launches] == ["forward", "grad-reduced", "grad-span", "grad-input"]
    assert all(r["status"] == "ok" and float(r["time_ms"]) > 0 for r in launches), launches
    summary = (tmp_path / "summary.txt").read_text()
    assert re.search(r"tiny-layer-s2 +fp32 +triton +[\d.]+ +[\d.]+ +[\d.]+  (met|not met)\n", summary), summary
    assert re.search(r"tiny-layer-s2 +fp32 +fused launch grad-span +[\d.]+ ms\n", summary), summary
    conv1d = [r for r in rows if r["suite"] == "conv1d" and r["status"] == "ok"]
    assert {"torch", "torch_cl", "triton", "cpu"} <= {r["backend"] for r in conv1d}
    assert all(float(r["time_ms"]) > 0 for r in conv1d)
    assert all(r["check"] == "ok" for r in conv1d if r["direction"] == "fwd")
    parts = [(r["backend"], r["direction"], r["status"]) for r in rows if r["suite"] == "conv1d_launches"]
    assert parts[:6] == [("cpu", "forward", "ok"), ("cpu", "grad_input", "ok"), ("cpu", "grad_weight", "ok"),
                         ("torch", "bias_grad", "ok"), ("cpu", "fwdbwd_issue", "ok"), ("torch", "fwdbwd_issue", "ok")]
    assert ("cuda", "forward", "skipped") in parts[6:]  # timings-cuda: no CUDA tensors here
    assert re.search(r"conv1d-2x8x64-k31 +cpu +fp32 +grad_weight +[\d.]+\n", summary), summary
    timed = [r for r in rows if r["suite"] == "headline" and r["status"] == "ok"]
    assert {"torch", "torch_cl", "cpu"} <= {r["backend"] for r in timed}
    assert {"fp32", "tf32"} <= {r["dtype"] for r in timed}  # fp32 exact, and with TF32 allowed
    assert all(float(r["time_ms"]) > 0 for r in timed)
    assert any(r["suite"] == "weak" and r["backend"] == "auto" and r["reason"].startswith("auto picked") for r in rows)
    per_call = [r for r in rows if r["suite"] == "per-call"]
    judged = [r for r in per_call if r["backend"] == "auto"]  # and one custom-op path row per case (information)
    assert len(judged) == 9 and all(float(r["time_ms"]) > 0 and r["check"] in ("ok", "FAIL") for r in judged)
    assert len(per_call) == 12 and all("per direction" in r["reason"] for r in per_call if r not in judged)
    assert "per-call cost at worst" in kit["auto"]["reason"]
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) <= 8  # what the device tool brings back
    assert "cuda extension: " in (tmp_path / "environment.txt").read_text()  # env's last line
    tail = proc.stdout.strip().splitlines()
    assert any(line.startswith("headline case") for line in tail[-12:]), "\n".join(tail)


def test_hung_stage_is_cut_at_its_budget_and_the_next_one_runs(tmp_path):
    # env hangs and ignores SIGTERM: timeout's kill after 5 s ends it; sanitizer (cheap when rehearsed) runs next
    proc = run_kit(tmp_path, timeout=180, GPU_KIT_STAGES="env,sanitizer,summary", GPU_KIT_HANG="env:ignore-term",
                   GPU_KIT_BUDGET_ENV="3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stages = stage_rows(tmp_path)
    assert stages["env"]["status"] == "timeout"
    assert 3 <= float(stages["env"]["seconds"]) < 15
    assert stages["sanitizer"]["status"] == "ok"
    assert "GPU_KIT_HANG" in (tmp_path / "log").read_text()
    assert "env              timeout" in proc.stdout


def test_pytest_order_puts_small_shapes_first():
    ids = ["t.py::test_a[nchw-torch.float32-2x128x56x56x31]", "t.py::test_b", "t.py::test_c[nchw-torch.float16-k1]"]
    assert sorted(ids, key=gpu_kit.cost) == ["t.py::test_b", "t.py::test_c[nchw-torch.float16-k1]", ids[0]]


def test_env_stage_cut_keeps_what_it_found(tmp_path, monkeypatch):
    """environment.txt gets each line when it is known, so a stage cut late (here: in the install) keeps the rest."""
    import argparse

    def cut():
        raise SystemExit("cut")
    monkeypatch.setattr(gpu_kit, "ensure_installed", cut)
    with pytest.raises(SystemExit):
        gpu_kit.stage_env(argparse.Namespace(out=str(tmp_path), rehearse=True))
    lines = (tmp_path / "environment.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["date:", "nvidia-smi:", "python", "torch", "device:", "nvcc:",
                                                   "compute-sanitizer:"]


# `{gpu}` is filled in when written: the stage runs the test files that hold the marker's text, and this is not one
CRASHING_TESTS = """
import os
import signal

import pytest


def crash():  # faulthandler's innermost frame in the test file is this helper, not the test
    os.kill(os.getpid(), signal.SIGSEGV)


@pytest.mark.{gpu}
def test_passes():
    pass


@pytest.mark.{gpu}
def test_crashes_in_a_helper():
    crash()


@pytest.mark.{gpu}
def test_fails():
    assert False


@pytest.mark.{gpu}
def test_segfaults():
    os.kill(os.getpid(), signal.SIGSEGV)
"""


def test_pytest_stage_reruns_without_a_crashing_test(tmp_path, monkeypatch):
    """A test that segfaults pytest (faulthandler on, as pytest has it) is named in a row at once and deselected, and
    pytest reruns the rest; the stage fails, its note names the crashes and the last run's counts. Without the time
    for a rerun the crash is recorded and the stage ends."""
    import argparse
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_fake_gpu.py").write_text(CRASHING_TESTS.format(gpu="gpu"))
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers = gpu\n")
    monkeypatch.setattr(gpu_kit, "ROOT", tmp_path)  # the stage runs ROOT/tests/test_*.py
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # for `-p bench.gpu_kit` from tmp_path

    def notes(budget_s):
        monkeypatch.setenv("GPU_KIT_STAGE_BUDGET", budget_s)
        out = tmp_path / f"out-{budget_s}"
        out.mkdir()
        gpu_kit.stage_pytest(argparse.Namespace(out=str(out), rehearse=True))
        return [(r["status"], re.sub(r" in [\d.]+s$", "", r["reason"])) for r in gpu_kit.read_rows(out)]

    assert notes("600") == [
        ("FAIL", "test_crashes_in_a_helper crashed pytest (exit -11); rerun without it"),
        ("FAIL", "test_segfaults crashed pytest (exit -11); rerun without it"),
        ("FAIL", "crashed: test_crashes_in_a_helper, test_segfaults; 1 failed, 1 passed, 2 deselected")]
    assert notes("5") == [  # under PYTEST_RERUN_MIN_S left
        ("FAIL", "test_crashes_in_a_helper crashed pytest (exit -11); no rerun"),
        ("FAIL", "crashed: test_crashes_in_a_helper; no pytest tally")]


def test_smoke_flags_a_wrong_or_an_unwritten_output(monkeypatch):
    import torch
    import largeconv.kernels as triton_backend
    case = gpu_kit.smoke_cases(rehearse=True)[0]
    real = triton_backend.dwconv2d_forward

    def check(forward):
        monkeypatch.setattr(triton_backend, "dwconv2d_forward", forward)
        rows = {r["direction"]: r["check"] for r in gpu_kit.smoke_one(case, "fp32", "nchw", "triton",
                                                                      torch.device("cpu"))}
        assert rows == {"forward": "FAIL", "grad_input": "ok", "grad_weight": "ok"}

    check(lambda *args: real(*args) * (1 + 1e-4))  # 10x the fp32 bound

    def unwritten(*args):  # every element but the first, into a fresh (poisoned) allocation
        out = real(*args)
        partial = torch.empty_like(out)
        partial.view(-1)[1:] = out.reshape(-1)[1:]
        return partial
    check(unwritten)


# ---- the fused involution ---------------------------------------------------------------------------------------

def test_fused_smoke_flags_a_wrong_or_an_unwritten_result(monkeypatch):
    """The fused smoke's checks fail: a forward 1e-4 off (10x the fp32 bound) fails the output only; a grad of
    reduced with one element left unwritten (a fresh, poisoned allocation) fails that grad only."""
    import torch
    import largeconv.kernels as triton_backend
    case = gpu_kit.fused_smoke_cases(rehearse=True)[1]  # K7, stride 2
    forward, backward = triton_backend.involution2d_fused_forward, triton_backend.involution2d_fused_backward

    def check(dtype, layout, failing):
        rows = {r["direction"]: r["check"] for r in gpu_kit.fused_smoke_one(case, dtype, layout, "triton",
                                                                            torch.device("cpu"))}
        assert rows == {d: "FAIL" if d == failing else "ok" for d in gpu_kit.FUSED_RESULTS}

    monkeypatch.setattr(triton_backend, "involution2d_fused_forward", lambda *args: forward(*args) * (1 + 1e-4))
    check("fp32", "nchw", "forward")
    monkeypatch.setattr(triton_backend, "involution2d_fused_forward", forward)

    def unwritten(*args):
        grads = list(backward(*args))
        partial = torch.empty_like(grads[1])  # channels_last, as reduced: its memory order is N, H, W, C
        partial.permute(0, 2, 3, 1).view(-1)[1:] = grads[1].permute(0, 2, 3, 1).reshape(-1)[1:]
        grads[1] = partial
        return tuple(grads)
    monkeypatch.setattr(triton_backend, "involution2d_fused_backward", unwritten)
    check("bf16", "channels_last", "grad_reduced")


def test_fused_timings_check_and_cap(monkeypatch, tmp_path):
    """The timing rows' sanity check fails when the fused layer's output is off; with the cap spent, every pair is
    recorded as skipped and the summary says so (no ratio, no "met")."""
    import argparse
    import largeconv.kernels as triton_backend
    forward = triton_backend.involution2d_fused_forward
    monkeypatch.setattr(triton_backend, "involution2d_fused_forward", lambda *args: forward(*args) * (1 + 1e-3))
    args = argparse.Namespace(rehearse=True, out=str(tmp_path))
    rows = gpu_kit.fused_timings(args, ["triton"])
    assert [(r["op"], r["status"], r["check"]) for r in rows] == [("involution2d", "ok", ""),
                                                                   ("involution2d_fused", "ok", "FAIL")]
    assert "check FAIL" in "\n".join(gpu_kit.fused_summary(gpu_kit.read_rows(tmp_path)))

    skipped = tmp_path / "skipped"
    skipped.mkdir()
    args.out = str(skipped)
    rows = gpu_kit.fused_timings(args, ["triton", "auto"], cap_s=0)
    assert len(rows) == 4 and all(r["status"] == "skipped" and "cap" in r["reason"] for r in rows)
    lines = gpu_kit.fused_summary(gpu_kit.read_rows(skipped))
    assert len(lines) == 4 and all("not timed (skipped: " in line for line in lines[2:]), lines


def test_fused_autotuners_are_restricted(monkeypatch):
    """The smoke and the prewarm restrict the fused kernels' autotuners too (built on a GPU only, in a dict)."""
    import triton
    from largeconv.kernels import involution_fused
    configs = [triton.Config({"BLOCK_P": p}, num_warps=4) for p in (16, 32, 64, 128)]
    tuner = triton.autotune(configs, key=["NPIX"])(involution_fused._fused_fwd_kernel)
    monkeypatch.setattr(involution_fused, "_AUTOTUNED", {"_fused_fwd_kernel": tuner})
    assert tuner in gpu_kit.autotuners()
    for each in gpu_kit.autotuners():  # restored after the test: restrict_autotune changes them in place
        monkeypatch.setattr(each, "configs", list(each.configs))
    gpu_kit.restrict_autotune(1, 1 << 30)
    assert tuner.configs == [configs[1]]


def test_sanitizer_fused_case_runs_and_can_fail(monkeypatch):
    """bench/sanitizer_cases.py's fused involution case (interpreter, CPU): every result matches float64; a wrong
    grad of the span bias is caught."""
    import torch
    import largeconv.kernels as triton_backend
    from bench import sanitizer_cases

    def errors():
        results = sanitizer_cases.fused_involution_case(sanitizer_cases.FUSED_CASES[0], torch.float32, "nchw", "cpu")
        return {name: sanitizer_cases.rel_error(got, want) <= sanitizer_cases.TOLERANCE[torch.float32]
                for name, (got, want) in results.items()}

    assert errors() == dict.fromkeys(gpu_kit.FUSED_RESULTS, True)
    backward = triton_backend.involution2d_fused_backward
    monkeypatch.setattr(triton_backend, "involution2d_fused_backward",
                        lambda *args: (*backward(*args)[:3], backward(*args)[3] * 1.01))
    assert errors() == dict(dict.fromkeys(gpu_kit.FUSED_RESULTS, True), grad_span_bias=False)


def test_autotune_picks_are_saved_per_kernel_and_key(tmp_path, monkeypatch):
    """autotune.json names the config each autotuned kernel picked for each key, and is replaced whole."""
    import json
    import types

    import triton
    picked = triton.Config({"BLOCK_P": 32}, num_warps=4, num_stages=1)
    tuner = types.SimpleNamespace(fn=types.SimpleNamespace(__name__="_involution_fwd_kernel"),
                                  cache={(3136, 16, 7, 1): picked})
    untuned = types.SimpleNamespace(fn=types.SimpleNamespace(__name__="_fwd_nchw_kernel"), cache={})
    monkeypatch.setattr(gpu_kit, "autotuners", lambda: [tuner, untuned])
    (tmp_path / "autotune.json").write_text("stale")
    gpu_kit.save_autotune_picks(tmp_path)
    picks = json.loads((tmp_path / "autotune.json").read_text())
    assert picks == {"_involution_fwd_kernel": [{"key": ["3136", "16", "7", "1"], "config": str(picked)}]}
    assert "BLOCK_P: 32" in picks["_involution_fwd_kernel"][0]["config"]
    assert not (tmp_path / "autotune.tmp").exists()


def test_per_call_rows_judge_only_the_targeted_rows(tmp_path, monkeypatch):
    """The kit's per-call rows: auto's rows are checked against 1.3x; the custom-op path's row is information (the
    per-direction cost auto charges), recorded without a check and left out of the worst ratio."""
    import argparse

    from bench import overhead
    rows = [{"kind": "per-call", "case": "c", "direction": "fwd", "auto_ms": 0.012, "reference_ms": 0.010,
             "ratio": 1.2, "target": "<= 1.3", "auto_choice": "forward=torch"},
            {"kind": "per-call", "case": "c", "direction": "fwdbwd", "auto_ms": 0.15, "reference_ms": 0.10,
             "ratio": 1.5, "target": "<= 1.3", "auto_choice": "forward=torch"},
            {"kind": "custom-op path", "case": "c", "direction": "fwdbwd", "auto_ms": 0.40, "reference_ms": 0.10,
             "ratio": 4.0, "target": "none: 0.100 ms per direction", "auto_choice": "torch backend"}]
    monkeypatch.setattr(overhead, "per_call_rows", lambda device, choose_by: rows)
    worst = gpu_kit.per_call_rows(argparse.Namespace(out=str(tmp_path), rehearse=True))
    assert worst == 1.5
    written = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["check"] for r in written] == ["ok", "FAIL", ""]
    assert written[2]["backend"] == "torch" and "0.100 ms per direction" in written[2]["reason"]


@pytest.mark.parametrize("cases", ["NCU_CASES", "INV_NCU_CASES"])
def test_ncu_probe_cases_run(capsys, cases):
    """bench/gpu_probe.py ncu's cases (and `--involution`'s), tiny on CPU tensors (the torch backend): every one
    builds and runs."""
    from bench import gpu_probe
    gpu_probe.ncu_cases(rehearse=True, cases=getattr(gpu_probe, cases))
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(getattr(gpu_probe, cases)) and all(line.endswith(": ok") for line in lines), lines


def test_involution_probe_rehearsal(capsys):
    """bench/gpu_probe.py involution on CPU (torch backend, batch 2): every RedNet-50 layer and dtype prints its
    float64 check and four timed rows, and none fails."""
    from bench import gpu_probe, suites
    gpu_probe.involution_times(rehearse=True)
    lines = capsys.readouterr().out.strip().splitlines()
    checks = [line for line in lines if "batch-2 errors vs float64" in line]
    timed = [line for line in lines if "% of copy" in line]
    assert len(checks) == 2 * len(suites.rednet50()) and len(timed) == 4 * len(checks), lines
    errors = [float(e) for line in checks for e in line.split("float64 ")[1].split(", ")]
    assert max(errors) < 1e-2, checks  # bf16 and fp32 of the torch backend, against float64


def test_followup_rehearsal(tmp_path):
    """bench/gpu_followup.sh --rehearse: the kit's env and build stages, then a probe, each step's exit status in
    followup.txt; no more files than the device tool brings back (8)."""
    proc = subprocess.run(["bash", "bench/gpu_followup.sh", "--rehearse"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, OUT=str(tmp_path)))
    from bench import gpu_probe
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = stage_rows(tmp_path)
    assert {name: row["status"] for name, row in stages.items()} == {"env": "ok", "build": "ok", "wait-build": "ok"}
    text = (tmp_path / "followup.txt").read_text()
    assert "== ncu-cases-involution: exit 0" in text, text[-3000:]
    assert text.count(": ok") == len(gpu_probe.INV_NCU_CASES), text[-3000:]
    assert len(list(tmp_path.iterdir())) <= 8


def test_ncu_table_reads_the_raw_csv():
    """ncu's raw CSV as --csv --page raw --log-file writes it: log lines, a header, a units row, one row per launch,
    the NVTX range in a column of its own."""
    from bench import gpu_probe
    case = gpu_probe.NCU_CASES[0][0]
    text = "\n".join([
        '==PROF== Connected to process 1',
        '"ID","Kernel Name","NVTX","gpu__time_duration.sum","dram__bytes.sum"',
        '"","","","nsecond","byte"',
        f'"0","corr_tf32_kernel","{case}","250,000","40,000"',
        f'"1","fill_kernel","{case}","5,000","1,000"',
        '"2","other","","7","8"'])
    lines = gpu_probe.ncu_table(text, ["gpu__time_duration.sum", "dram__bytes.sum"])
    assert lines[0] == (f"{case}: 2 launches, 255000 nsecond; longest corr_tf32_kernel: dram__bytes.sum 4e+04 byte")
    assert lines[1].startswith("(no range): 1 launches")
    assert gpu_probe.ncu_table("==PROF== nothing", []) == ["ncu wrote no CSV rows"]
