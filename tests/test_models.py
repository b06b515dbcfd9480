"""The package inside real models: timm ConvNeXt converted by largeconv.convert, a RepLKNet-style stage, a
RedNet-style involution bottleneck, a torchvision ResNet-18 made plain by RMNet, DistributedDataParallel on two
processes (gloo, CPU) and torch.compile. Tiny shapes: the whole file runs in well under a minute on 2 cores."""
import copy
import os
import socket
import tempfile

import pytest
import torch

from torch import nn
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import largeconv
import largeconv.cpu
from largeconv import Involution2d, LargeDWConv2d
from largeconv.reparam import ReparamLargeKernelConv, reparameterize_model, rm_convert_model
from numerics import randomize_bn, rel_error as rel_err

RTOL = 1e-5
# The CPU involution backend is being written; until it lands, "auto" on CPU tensors cannot run involution.
INVOLUTION_BACKEND = "auto" if hasattr(largeconv.cpu, "involution2d_forward") else "torch"


def fit(model, x, target, steps, lr):
    """Adam on one fixed batch; returns the losses."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def is_depthwise_conv(m):
    return type(m) is nn.Conv2d and m.groups == m.in_channels and m.groups > 1


# ---- timm ConvNeXt ----------------------------------------------------------------------------------------------

def test_convert_timm_convnext_same_outputs_and_gradients():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval()
    n_depthwise = sum(is_depthwise_conv(m) for m in model.modules())
    assert n_depthwise == 12
    converted = largeconv.convert(copy.deepcopy(model), min_kernel_size=1)  # every depthwise conv, 7x7 included
    assert not any(is_depthwise_conv(m) for m in converted.modules())  # every depthwise conv was swapped
    assert sum(isinstance(m, LargeDWConv2d) for m in converted.modules()) == n_depthwise
    assert converted.stages[0].blocks[0].conv_dw.kernel_size == (7, 7)

    x = torch.randn(1, 3, 64, 64)
    results = []
    for net in (model, converted):
        xi = x.clone().requires_grad_()
        out = net(xi)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append((out.detach(), xi.grad, {n: p.grad for n, p in net.named_parameters()}))
    (out_ref, gx_ref, gp_ref), (out, gx, gp) = results
    assert rel_err(out, out_ref) <= RTOL
    assert rel_err(gx, gx_ref) <= RTOL
    assert gp.keys() == gp_ref.keys()  # same parameter names: state_dicts interchange
    for name in gp_ref:
        assert rel_err(gp[name], gp_ref[name]) <= 1e-5, name


# ---- RepLKNet-style stage ---------------------------------------------------------------------------------------

class RepLKBlock(nn.Module):
    """BN -> 1x1 -> ReLU -> ReparamLargeKernelConv -> ReLU -> 1x1, plus the shortcut (RepLKNet's block)."""

    def __init__(self, channels, dw_channels, kernel_size, small_kernel):
        super().__init__()
        self.prelkb_bn = nn.BatchNorm2d(channels)
        self.pw1 = nn.Conv2d(channels, dw_channels, 1)
        self.large_kernel = ReparamLargeKernelConv(dw_channels, kernel_size, small_kernel)
        self.pw2 = nn.Conv2d(dw_channels, channels, 1)

    def forward(self, x):
        y = F.relu(self.pw1(self.prelkb_bn(x)))
        return x + self.pw2(F.relu(self.large_kernel(y)))


def test_replknet_stage_trains_and_reparameterizes():
    torch.manual_seed(1)
    stage = nn.Sequential(RepLKBlock(8, 16, 13, 5), RepLKBlock(8, 16, 9, 3))
    randomize_bn(stage)
    x, target = torch.randn(4, 8, 12, 12), torch.randn(4, 8, 12, 12)
    losses = fit(stage, x, target, steps=4, lr=1e-2)
    assert losses[-1] < losses[0]
    stage.eval()
    fresh = torch.randn(3, 8, 12, 12)
    with torch.no_grad():
        ref = stage(fresh)
    params_before = sum(p.numel() for p in stage.parameters())
    reparameterize_model(stage)
    assert all(block.large_kernel.deployed for block in stage)
    lk_bns = [m for block in stage for m in block.large_kernel.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not lk_bns
    assert sum(p.numel() for p in stage.parameters()) < params_before
    with torch.no_grad():
        assert rel_err(stage(fresh), ref) <= RTOL


# ---- RedNet-style bottleneck --------------------------------------------------------------------------------------

class InvolutionBottleneck(nn.Module):
    """RedNet's bottleneck: 1x1 -> BN -> ReLU -> involution -> BN -> ReLU -> 1x1 -> BN, plus the shortcut."""

    def __init__(self, channels, mid, out_channels, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2 = Involution2d(mid, 7, stride, group_channels=4, reduction_ratio=2, backend=INVOLUTION_BACKEND)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


@pytest.mark.parametrize("stride", [1, 2])
def test_rednet_bottleneck_trains(stride):
    torch.manual_seed(2)
    block = InvolutionBottleneck(16, 8, 16 if stride == 1 else 32, stride)
    x = torch.randn(4, 16, 11, 11)  # odd size: the kernel branch must give exactly Ho x Wo at stride 2
    with torch.no_grad():
        target = torch.rand_like(block(x))
    losses = fit(block, x, target, steps=8, lr=1e-2)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses
    assert block.conv2.conv2.conv.weight.grad.abs().sum() > 0  # the kernel-generating branch learns


# ---- RMNet on a torchvision ResNet --------------------------------------------------------------------------------

def test_rmnet_plain_resnet18():
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=10)
    randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        rm_convert_model(model)
        out = model(x)
    assert not any(isinstance(m, BasicBlock) for m in model.modules())  # no residual connection left
    assert rel_err(out, ref) <= RTOL


# ---- DistributedDataParallel ------------------------------------------------------------------------------------

def _small_model():
    """A model using both modules. Evaluated in eval mode, so Involution2d's BN uses running statistics and the
    result of a shard does not depend on the other shard (batch statistics would differ between the runs)."""
    return nn.Sequential(nn.Conv2d(3, 8, 1), LargeDWConv2d(8, 7), nn.GELU(),
                         Involution2d(8, 3, group_channels=4, reduction_ratio=2, backend=INVOLUTION_BACKEND),
                         nn.Conv2d(8, 4, 1))


def _ddp_worker(rank, world_size, port, folder):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        data = torch.load(os.path.join(folder, "inputs.pt"))
        model = _small_model()
        model.load_state_dict(data["state"])
        model.eval()
        ddp = nn.parallel.DistributedDataParallel(model)
        x, target = data["x"].chunk(world_size)[rank], data["target"].chunk(world_size)[rank]
        F.mse_loss(ddp(x), target).backward()
        torch.save({name: p.grad for name, p in model.named_parameters()}, os.path.join(folder, f"grads{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_ddp_two_processes_match_one_process():
    torch.manual_seed(4)
    model = _small_model()
    randomize_bn(model)
    model.eval()
    x, target = torch.randn(4, 3, 10, 10), torch.randn(4, 4, 10, 10)
    F.mse_loss(model(x), target).backward()  # one process, whole batch
    expected = {name: p.grad for name, p in model.named_parameters()}
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"state": model.state_dict(), "x": x, "target": target}, os.path.join(folder, "inputs.pt"))
        mp.spawn(_ddp_worker, args=(2, _free_port(), folder), nprocs=2, join=True)
        grads = [torch.load(os.path.join(folder, f"grads{rank}.pt")) for rank in range(2)]
    for name, grad in expected.items():
        for rank in range(2):  # DDP averaged the two shards' gradients: both ranks hold the full-batch gradient
            assert rel_err(grads[rank][name], grad) <= RTOL, (rank, name)


# ---- torch.compile ----------------------------------------------------------------------------------------------

def test_torch_compile_matches_eager():
    torch.manual_seed(5)
    model = _small_model()
    randomize_bn(model)
    model.eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 9, 9)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, out = model(xe), compiled(xc)
    assert rel_err(out, ref) <= RTOL
    grad = torch.randn_like(ref)
    ref.backward(grad)
    eager_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    out.backward(grad)
    assert rel_err(xc.grad, xe.grad) <= RTOL
    for name, p in model.named_parameters():
        assert rel_err(p.grad, eager_grads[name]) <= RTOL, name


# ---- bench/models.py --------------------------------------------------------------------------------------------

def test_bench_models_smoke(tmp_path):
    """The end-to-end benchmark on tiny models: both variants built as described (plain PyTorch vs convert's
    defaults), every output written. Timings are not checked (shared CPU)."""
    import csv

    from bench import models as bench_models
    from largeconv.convert import DEFAULT_MIN_KERNEL_SIZE

    rows = bench_models.main(["--smoke", "--models", "replknet31b,rednet50", "--batch", "2", "--resolution", "32",
                              "--repeats", "1", "--threads", "1", "--out", str(tmp_path)])
    assert {p.name for p in tmp_path.iterdir()} == {"models.csv", "models.md", "models.png"}
    with open(tmp_path / "models.csv") as f:
        assert list(csv.DictReader(f)) == [{k: str(v) for k, v in row.items()} for row in rows]
    converted = {(r["model"], r["phase"], r["variant"]): r["converted"] for r in rows}
    large = sum(k * k >= DEFAULT_MIN_KERNEL_SIZE["cpu"] ** 2 for k in (31, 17, 13, 7))  # the smoke RepLKNet's kernels
    assert 0 < large < 4
    assert converted[("replknet31b", "train", "largeconv")] == converted[("replknet31b", "infer", "largeconv")] \
        == large
    assert converted[("rednet50", "train", "largeconv")] == 4  # one involution per (smoke) stage
    assert all(n == 0 for (_, _, variant), n in converted.items() if variant == "pytorch")
    assert all(r["speedup"] > 0 and r["repeats"] == 1 for r in rows)
    assert "| replknet31b | 2 x 32^2 |" in (tmp_path / "models.md").read_text()


def test_bench_models_variants_compute_the_same():
    """The two variants of each phase are the same function (the benchmark compares like with like)."""
    from bench import models as bench_models

    for name in ("replknet31b", "unireplknet_t"):
        phases = bench_models.variants(bench_models.MODELS[name], smoke=True)
        x = torch.randn(2, 3, 32, 32)
        for phase, pair in phases.items():
            with torch.no_grad():
                outs = [model.eval()(x) for model in pair.values()]
            assert rel_err(outs[1], outs[0]) <= RTOL, (name, phase)
        train, infer = phases["train"]["pytorch"].eval(), phases["infer"]["pytorch"]
        with torch.no_grad():
            assert rel_err(infer(x), train(x)) <= RTOL, name  # deployed == training structure in eval mode
