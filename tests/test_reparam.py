"""Re-parameterization toolkit (largeconv.reparam): every training structure, trained a few steps on random data
(so weights and BN running statistics are non-trivial), switched to eval and deployed, gives the eval output of the
training structure within fp32 rounding (relative error <= 1e-5) on fresh random inputs."""
import pathlib
import re

import pytest
import torch

from hypothesis import given, settings, strategies as st
from torch import nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, conv1x1

from largeconv import LargeDWConv2d
from largeconv.arguments import pair
from largeconv.reparam import (DILATED_BRANCHES, DilatedReparamBlock, RefConv2d, ReparamLargeKernelConv, conv_to_fc,
                               dilated_to_dense, fuse_conv_bn, pad_kernel, refocus_model, reparameterize_model,
                               rm_convert, rm_convert_model)
from numerics import randomize_bn, rel_error as rel_err

RTOL = 1e-5
FEW = settings(max_examples=6, deadline=None)
REPO = pathlib.Path(__file__).resolve().parents[1]


def n_params(module, trainable_only=False):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def train_steps(model, make_input, steps=3, lr=0.02):
    """A few SGD steps on random inputs towards a fixed random target; returns the losses."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    x = make_input()
    target = torch.randn_like(model(x)).detach()
    losses = []
    for _ in range(steps):
        x = make_input()
        loss = F.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---- RepLKNet ---------------------------------------------------------------------------------------------------

@FEW
@given(out_channels=st.integers(1, 6), groups_pick=st.integers(0, 2), k=st.sampled_from([1, 3, 5]),
       seed=st.integers(0, 2**16))
def test_fuse_conv_bn_matches_eval_conv_bn(out_channels, groups_pick, k, seed):
    torch.manual_seed(seed)
    groups = [1, out_channels, 1][groups_pick]
    in_channels = groups * 2 if groups > 1 else 3
    conv = nn.Conv2d(in_channels, out_channels * (groups if groups > 1 else 1), k, padding=k // 2, groups=groups,
                     bias=bool(seed % 2))
    bn = nn.BatchNorm2d(conv.out_channels)
    randomize_bn(bn)
    bn.eps = 0.1  # large enough that a fusion ignoring eps fails (1e-5 against variances 0.5-2 is below RTOL)
    bn.eval()
    weight, bias = fuse_conv_bn(conv, bn)
    x = torch.randn(2, in_channels, 7, 6)
    assert rel_err(F.conv2d(x, weight, bias, 1, k // 2, 1, groups), bn(conv(x))) <= RTOL
    # bn=None: the layer's own weight and bias (zeros when it has none)
    w0, b0 = fuse_conv_bn(conv, None)
    assert torch.equal(w0, conv.weight) and (conv.bias is None and not b0.any() or torch.equal(b0, conv.bias))


def test_fuse_conv_bn_linear_and_large_dw_and_errors():
    torch.manual_seed(0)
    fc, bn1d = nn.Linear(6, 5), nn.BatchNorm1d(5)
    randomize_bn(bn1d)
    bn1d.eval()
    x = torch.randn(4, 6)
    weight, bias = fuse_conv_bn(fc, bn1d)
    assert rel_err(F.linear(x, weight, bias), bn1d(fc(x))) <= RTOL
    dw, bn = LargeDWConv2d(4, 9, bias=False), nn.BatchNorm2d(4)
    randomize_bn(bn)
    bn.eval()
    weight, bias = fuse_conv_bn(dw, bn)
    x = torch.randn(2, 4, 12, 12)
    assert rel_err(F.conv2d(x, weight, bias, 1, 4, 1, 4), bn(dw(x))) <= RTOL
    with pytest.raises(ValueError, match="features"):
        fuse_conv_bn(dw, nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="running statistics"):
        fuse_conv_bn(dw, nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(TypeError, match="BatchNorm"):
        fuse_conv_bn(dw, nn.LayerNorm(4))


@FEW
@given(k=st.sampled_from([(1, 1), (3, 3), (5, 3), (3, 1)]), extra=st.sampled_from([(0, 0), (2, 4), (6, 2)]),
       seed=st.integers(0, 2**16))
def test_pad_kernel_is_the_same_conv(k, extra, seed):
    torch.manual_seed(seed)
    size = (k[0] + extra[0], k[1] + extra[1])
    small = torch.randn(3, 1, *k)
    big = pad_kernel(small, size)
    assert big.shape == (3, 1, *size)
    top, left = extra[0] // 2, extra[1] // 2
    assert torch.equal(big[:, :, top:top + k[0], left:left + k[1]], small)
    rest = big.clone()
    rest[:, :, top:top + k[0], left:left + k[1]] = 0
    assert not rest.any()  # zeros elsewhere
    x = torch.randn(2, 3, 11, 9)
    ref = F.conv2d(x, small, None, 1, (k[0] // 2, k[1] // 2), 1, 3)
    assert rel_err(F.conv2d(x, big, None, 1, (size[0] // 2, size[1] // 2), 1, 3), ref) <= RTOL
    if size[0] == size[1]:
        assert torch.equal(pad_kernel(small, size[0]), big)  # an int size


def test_pad_kernel_errors():
    with pytest.raises(ValueError, match="larger"):
        pad_kernel(torch.randn(1, 1, 5, 5), 3)
    with pytest.raises(ValueError, match="centred"):
        pad_kernel(torch.randn(1, 1, 3, 3), 6)


@FEW
@given(channels=st.integers(1, 5), kernel=st.sampled_from([7, 9, 13, (11, 5), (5, 9)]),
       small=st.sampled_from([None, 3, 5]), stride=st.sampled_from([1, 2]), h=st.integers(6, 16),
       w=st.integers(6, 16), seed=st.integers(0, 2**16))
def test_reparam_large_kernel_conv(channels, kernel, small, stride, h, w, seed):
    torch.manual_seed(seed)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    if small is not None and small > min(kh, kw):
        small = 3
    module = ReparamLargeKernelConv(channels, kernel, small_kernel=small, stride=stride)
    randomize_bn(module)
    train_steps(module, lambda: torch.randn(4, channels, h, w))
    module.eval()
    x = torch.randn(3, channels, h, w)
    with torch.no_grad():
        ref = module(x)
    before = n_params(module)
    assert module.reparameterize() is module
    assert module.deployed and isinstance(module.lkb_reparam, LargeDWConv2d) and module.lkb_reparam.bias is not None
    # forward afterwards runs only the merged conv
    assert [name for name, _ in module.named_children()] == ["lkb_reparam"]
    with torch.no_grad():
        out = module(x)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= RTOL
    # parameters: K^2 C + C deployed, vs K^2 C + k^2 C + 2 BN x 2C in training
    small_taps = 0 if small is None else small * small
    assert before == channels * (kh * kw + small_taps + (4 if small else 2))
    assert n_params(module) == channels * (kh * kw + 1) < before
    module.reparameterize()  # idempotent
    assert rel_err(module(x), ref) <= RTOL


def test_reparam_large_kernel_conv_checkpoint_names_and_errors():
    module = ReparamLargeKernelConv(4, 31, small_kernel=5)
    assert {"lkb_origin.conv.weight", "lkb_origin.bn.running_var", "small_conv.conv.weight",
            "small_conv.bn.weight"} <= set(module.state_dict())
    with pytest.raises(ValueError, match="parity"):
        ReparamLargeKernelConv(4, 31, small_kernel=4)
    with pytest.raises(ValueError, match="no larger"):
        ReparamLargeKernelConv(4, 5, small_kernel=7)


# ---- RefConv ----------------------------------------------------------------------------------------------------

@FEW
@given(case=st.sampled_from([(6, 6, 6), (4, 8, 4), (6, 6, 2), (4, 4, 1), (6, 3, 3)]),  # (C_in, C_out, groups)
       kernel=st.sampled_from([3, 5, 7]), map_k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_refconv(case, kernel, map_k, stride, bias, seed):
    torch.manual_seed(seed)
    c_in, c_out, groups = case
    pretrained = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=bias)
    module = RefConv2d.from_conv(pretrained, map_kernel_size=map_k)
    x = torch.randn(2, c_in, 10, 9)
    # W_r starts at zero: W_t = W_b, the pretrained conv's output
    assert rel_err(module(x), pretrained(x)) <= RTOL
    # only the refocusing weights train; W_r has (C_out * C_in/g) x g x k x k entries
    num_kernels = c_out * c_in // groups
    assert n_params(module, trainable_only=True) == n_params(module) == num_kernels * groups * map_k * map_k
    base = module.base_weight.clone()
    train_steps(module, lambda: torch.randn(3, c_in, 10, 9), lr=0.05)
    assert torch.equal(module.base_weight, base)  # frozen
    assert module.refocus_weight.abs().sum() > 0
    module.eval()
    x = torch.randn(2, c_in, 10, 9)
    with torch.no_grad():
        ref = module(x)
    deployed = module.reparameterize()
    expected_type = LargeDWConv2d if groups == c_in else nn.Conv2d
    assert type(deployed) is expected_type
    # deploy parameters: exactly the original conv's
    assert n_params(deployed) == n_params(pretrained)
    with torch.no_grad():
        assert rel_err(deployed(x), ref) <= RTOL


def test_refconv_refocusing_is_a_conv_over_the_kernel_image():
    """W_t = W_b + conv(W_b, W_r) with the kernels as a one-sample image, computed by hand for a DW conv:
    each transformed kernel channel mixes all base kernel channels (dense refocusing conv)."""
    torch.manual_seed(1)
    c, k, mk = 3, 5, 3
    module = RefConv2d(c, k, map_kernel_size=mk, zero_init=False)
    assert module.base_weight.shape == (c, 1, k, k) and module.refocus_weight.shape == (c, c, mk, mk)
    wb, wr = module.base_weight.double(), module.refocus_weight.detach().double()
    padded = F.pad(wb[:, 0], (1, 1, 1, 1))  # (C, K+2, K+2)
    expected = wb.clone()
    for o in range(c):
        for i in range(k):
            for j in range(k):
                expected[o, 0, i, j] += (padded[:, i:i + mk, j:j + mk] * wr[o]).sum()
    assert torch.allclose(module.transformed_weight().double(), expected, atol=1e-6)
    assert module.base_weight.requires_grad is False and "base_weight" in dict(module.named_buffers())


def test_refocus_model_and_reparameterize_model():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1),
                          LargeDWConv2d(8, 9), nn.ReLU(), nn.Conv2d(8, 8, 5, padding=2, groups=4))
    pretrained = [m for m in model]
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        start = model(x)
    refocus_model(model)
    types = [type(m).__name__ for m in model]
    assert types == ["RefConv2d", "ReLU", "Conv2d", "RefConv2d", "ReLU", "RefConv2d"]  # 1x1 left alone
    with torch.no_grad():
        assert rel_err(model(x), start) <= RTOL
    train_steps(model, lambda: torch.randn(2, 3, 12, 12))
    model.eval()
    with torch.no_grad():
        ref = model(x)
    reparameterize_model(model)
    assert [type(m) for m in model] == [type(m) for m in pretrained]
    with torch.no_grad():
        assert rel_err(model(x), ref) <= RTOL


def test_refconv_errors():
    with pytest.raises(ValueError, match="base_weight"):
        RefConv2d(4, 5, base_weight=torch.randn(4, 1, 3, 3))
    with pytest.raises(ValueError, match="odd"):
        RefConv2d(4, 5, map_kernel_size=2)
    with pytest.raises(ValueError, match="divide"):
        RefConv2d(6, 3, groups=4)


# ---- RepMLP -----------------------------------------------------------------------------------------------------

@FEW
@given(groups=st.sampled_from([1, 2, 4]), per_group=st.integers(1, 2), out_per_group=st.integers(1, 2),
       k=st.sampled_from([1, 3, 5]), h=st.integers(3, 6), w=st.integers(3, 6), use_bn=st.booleans(),
       seed=st.integers(0, 2**16))
def test_conv_to_fc(groups, per_group, out_per_group, k, h, w, use_bn, seed):
    torch.manual_seed(seed)
    c_in, c_out = groups * per_group, groups * out_per_group
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=bool(seed % 2))
    bn = None
    if use_bn:
        bn = nn.BatchNorm2d(c_out)
        randomize_bn(bn)
        bn.eval()
    x = torch.randn(3, c_in, h, w)
    with torch.no_grad():
        ref = conv(x) if bn is None else bn(conv(x))
    fc_w, fc_b = conv_to_fc(conv, h, w, bn=bn)
    assert fc_w.shape == (c_out * h * w, c_in * h * w) and fc_b.shape == (c_out * h * w,)
    assert rel_err(F.linear(x.flatten(1), fc_w, fc_b).reshape(ref.shape), ref) <= RTOL
    # grouped form: RepMLP's fc3, a 1x1 grouped conv over the C*h*w "channels"
    g_w, g_b = conv_to_fc(conv, h, w, bn=bn, grouped=True)
    assert g_w.shape == (c_out * h * w, c_in * h * w // groups)
    out = F.conv2d(x.reshape(3, -1, 1, 1), g_w[:, :, None, None], g_b, groups=groups)
    assert rel_err(out.reshape(ref.shape), ref) <= RTOL


def test_conv_to_fc_large_dw_strided_and_valid():
    torch.manual_seed(3)
    for conv in (LargeDWConv2d(3, 7, channel_multiplier=2), LargeDWConv2d(3, 5, stride=2),
                 nn.Conv2d(2, 3, 3, stride=2, padding=0, dilation=1), nn.Conv2d(2, 2, 3, padding=2, dilation=2)):
        in_channels = conv.channels if isinstance(conv, LargeDWConv2d) else conv.in_channels
        x = torch.randn(2, in_channels, 9, 8)
        with torch.no_grad():
            ref = conv(x)
        fc_w, fc_b = conv_to_fc(conv, 9, 8)
        assert rel_err(F.linear(x.flatten(1), fc_w, fc_b).reshape(ref.shape), ref) <= RTOL


class _RepMLPUnit(nn.Module):
    """RepMLP's partition + local perceptrons on one h x w partition: a grouped FC (fc3, as a 1x1 grouped conv on
    the flattened map) + BatchNorm1d, in parallel with grouped k x k conv + BN branches."""

    def __init__(self, channels, h, w, groups, kernels=(1, 3)):
        super().__init__()
        self.shape = (channels, h, w)
        self.groups = groups
        self.fc3 = nn.Conv2d(channels * h * w, channels * h * w, 1, groups=groups, bias=False)
        self.fc3_bn = nn.BatchNorm1d(channels * h * w)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, k, padding=k // 2, groups=groups, bias=False),
                          nn.BatchNorm2d(channels)) for k in kernels)

    def forward(self, x):
        n = x.shape[0]
        out = self.fc3_bn(self.fc3(x.reshape(n, -1, 1, 1)).reshape(n, -1)).reshape(x.shape)
        for branch in self.branches:
            out = out + branch(x)
        return out

    @torch.no_grad()
    def deploy_fc(self):
        """One grouped FC weight (and bias) equal to the whole unit in eval mode."""
        weight, bias = fuse_conv_bn(self.fc3.weight[:, :, 0, 0], self.fc3_bn)
        for branch in self.branches:
            w, b = conv_to_fc(branch[0], *self.shape[1:], bn=branch[1], grouped=True)
            weight, bias = weight + w, bias + b
        return weight, bias


def test_repmlp_unit_merges_into_one_fc():
    torch.manual_seed(4)
    channels, h, w, groups = 4, 5, 5, 2
    unit = _RepMLPUnit(channels, h, w, groups)
    randomize_bn(unit)
    train_steps(unit, lambda: torch.randn(6, channels, h, w))
    unit.eval()
    x = torch.randn(3, channels, h, w)
    with torch.no_grad():
        ref = unit(x)
    weight, bias = unit.deploy_fc()
    out = F.conv2d(x.reshape(3, -1, 1, 1), weight[:, :, None, None], bias, groups=groups).reshape(ref.shape)
    assert rel_err(out, ref) <= RTOL
    # the deployed unit is the fc3 weight plus a bias: the conv branches and the BNs are gone
    assert weight.numel() + bias.numel() == unit.fc3.weight.numel() + channels * h * w < n_params(unit)


# ---- RMNet ------------------------------------------------------------------------------------------------------

def test_rm_convert_dilated_block():
    """The Dirac tap of a dilated conv sits at padding // dilation."""
    torch.manual_seed(0)
    block = BasicBlock(3, 3)
    block.conv1 = nn.Conv2d(3, 3, 3, padding=2, dilation=2, bias=False)
    block.conv2 = nn.Conv2d(3, 3, 3, padding=2, dilation=2, bias=False)
    randomize_bn(block)
    block.eval()
    x = torch.randn(2, 3, 9, 8).relu()
    with torch.no_grad():
        assert rel_err(rm_convert(block)(x), block(x)) <= RTOL


@FEW
@given(in_planes=st.integers(1, 5), grow=st.sampled_from([1, 2]), stride=st.sampled_from([1, 2]),
       h=st.integers(4, 10), seed=st.integers(0, 2**16))
def test_rm_convert_basic_block(in_planes, grow, stride, h, seed):
    torch.manual_seed(seed)
    planes = in_planes * grow
    downsample = None
    if stride != 1 or planes != in_planes:
        downsample = nn.Sequential(conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes))
    block = BasicBlock(in_planes, planes, stride, downsample)
    randomize_bn(block)
    make_input = lambda: torch.randn(4, in_planes, h, h + 1).relu()  # block inputs come out of a ReLU
    train_steps(block, make_input)
    block.eval()
    x = make_input()
    with torch.no_grad():
        ref = block(x)
        plain = rm_convert(block)
        out = plain(x)
    assert isinstance(plain, nn.Sequential) and [type(m) for m in plain] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU]
    assert out.shape == ref.shape and rel_err(out, ref) <= RTOL
    # weights: conv1 C_in -> C_mid + C_in, conv2 C_mid + C_in -> C_out, all 3x3 (C -> 2C: 81 C^2, the seed's
    # variant 2; C -> C: 36 C^2), plus biases
    c = in_planes
    expected = 9 * (planes + c) * c + 9 * planes * (planes + c) + (planes + c) + planes
    assert n_params(plain) == expected
    if grow == 2:
        assert n_params(plain) - (planes + c) - planes == 81 * c * c


def test_rm_convert_needs_nonnegative_input_and_rejects_other_blocks():
    torch.manual_seed(5)
    block = BasicBlock(3, 3).eval()
    randomize_bn(block)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert rel_err(rm_convert(block)(x), block(x)) > 1e-3  # the reserve ReLU clips negative inputs
    bad = BasicBlock(3, 6, 2, nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), nn.BatchNorm2d(6)))
    with pytest.raises(ValueError, match="1x1"):
        rm_convert(bad)
    with pytest.raises(ValueError, match="keep the shape"):
        rm_convert(BasicBlock(3, 6))
    with pytest.raises(TypeError, match="basic block"):
        rm_convert(nn.Conv2d(3, 3, 3))


# ---- docs -------------------------------------------------------------------------------------------------------

def _doc_snippets():
    text = (REPO / "README.md").read_text()
    return [block for block in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "largeconv.reparam" in block]


def test_readme_reparam_snippets_run():
    """Each seed technique has a runnable example in the README, and every one of them runs."""
    snippets = _doc_snippets()
    text = "\n".join(snippets)
    for name in ("ReparamLargeKernelConv", "RefConv2d", "conv_to_fc", "rm_convert"):
        assert name in text, f"README has no runnable example of {name}"
    for index, snippet in enumerate(snippets):
        exec(compile(snippet, f"README snippet {index}", "exec"), {"__name__": "__docs__"})


# ---- official constructors and key names (RepLKNet, SLaK, UniRepLKNet) -------------------------------------------

def bn_keys(prefix):
    return {f"{prefix}.{name}" for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


def train_eval_deploy(module, channels, h, w, deploy):
    """Train a few steps, switch to eval, deploy with `deploy(module)`; return (eval output, deployed output) on
    fresh inputs."""
    randomize_bn(module)
    train_steps(module, lambda: torch.randn(4, channels, h, w))
    module.eval()
    x = torch.randn(3, channels, h, w)
    with torch.no_grad():
        ref = module(x)
        deploy(module)
        return ref, module(x)


def official_structural_reparam(model):
    """What RepLKNet's structural_reparam() does: merge_kernel() on every module that has it."""
    for m in model.modules():
        if hasattr(m, "merge_kernel"):
            m.merge_kernel()


def test_replknet_official_constructor_keys_and_deploy_form():
    torch.manual_seed(7)
    kwargs = dict(in_channels=6, out_channels=6, kernel_size=13, stride=1, groups=6, small_kernel=5)
    module = ReparamLargeKernelConv(**kwargs)
    assert set(module.state_dict()) == ({"lkb_origin.conv.weight", "small_conv.conv.weight"}
                                        | bn_keys("lkb_origin.bn") | bn_keys("small_conv.bn"))
    assert set(ReparamLargeKernelConv(6, 6, 13, 1, 6, None).state_dict()) == {"lkb_origin.conv.weight"} | bn_keys(
        "lkb_origin.bn")  # positional official form, no small kernel
    model = nn.Sequential(module)
    ref, out = train_eval_deploy(model, 6, 14, 15, official_structural_reparam)
    assert module.deployed and rel_err(out, ref) <= RTOL
    # a deployed checkpoint loads strictly into the deploy form (built without the training branches)
    deployed = ReparamLargeKernelConv(**kwargs, small_kernel_merged=True)
    assert set(deployed.state_dict()) == {"lkb_reparam.weight", "lkb_reparam.bias"}
    deployed.load_state_dict(module.state_dict())
    x = torch.randn(2, 6, 14, 15)
    with torch.no_grad():
        assert rel_err(deployed(x), module(x)) <= RTOL
    with pytest.raises(ValueError, match="depthwise"):
        ReparamLargeKernelConv(in_channels=6, out_channels=6, kernel_size=13, stride=1, groups=1, small_kernel=5)
    with pytest.raises(TypeError, match="ReparamLargeKernelConv: .*in_channels, out_channels"):
        ReparamLargeKernelConv(in_channels=6, kernel_size=13)


@pytest.mark.parametrize("kernel, small, stride, bn", [(13, 5, 1, True), ((11, 9), 3, 2, True), (9, 3, 1, False)])
def test_slak_decomposed_block(kernel, small, stride, bn):
    torch.manual_seed(8)
    module = ReparamLargeKernelConv(in_channels=5, out_channels=5, kernel_size=kernel, stride=stride, groups=5,
                                    small_kernel=small, Decom=True, bn=bn)
    kh, kw = pair(kernel, "kernel")
    assert module.LoRA1.conv.weight.shape == (5, 1, kh, small) and module.LoRA2.conv.weight.shape == (5, 1, small, kw)
    expected_keys = {"LoRA1.conv.weight", "LoRA2.conv.weight", "small_conv.conv.weight"}
    if bn:
        expected_keys |= bn_keys("LoRA1.bn") | bn_keys("LoRA2.bn") | bn_keys("small_conv.bn")
    assert set(module.state_dict()) == expected_keys
    ref, out = train_eval_deploy(module, 5, 13, 12, lambda m: reparameterize_model(m))
    assert list(dict(module.named_children())) == ["lkb_reparam"]
    assert module.lkb_reparam.weight.shape == (5, 1, kh, kw)
    assert rel_err(out, ref) <= RTOL


def test_dilated_to_dense_is_the_same_conv():
    torch.manual_seed(9)
    kernel = torch.randn(4, 1, 3, 5)
    for dilation in (1, 2, (3, 2)):
        dense = dilated_to_dense(kernel, dilation)
        dh, dw = pair(dilation, "dilation")
        assert dense.shape == (4, 1, 2 * dh + 1, 4 * dw + 1)
        x = torch.randn(2, 4, 13, 14)
        ref = F.conv2d(x.double(), kernel.double(), None, 1, (dh, 2 * dw), (dh, dw), 4)
        assert rel_err(F.conv2d(x.double(), dense.double(), None, 1, (dh, 2 * dw), 1, 4), ref) <= 1e-12
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        dilated_to_dense(kernel, 0)


@pytest.mark.parametrize("kernel, branches", [(13, None), (7, None), (9, ((3, 5), (4, 1)))])
def test_unireplknet_dilated_reparam_block(kernel, branches):
    torch.manual_seed(10)
    extra = {} if branches is None else dict(kernel_sizes=branches[0], dilates=branches[1])
    block = DilatedReparamBlock(4, kernel, deploy=False, **extra)
    sizes, dilates = DILATED_BRANCHES[kernel] if branches is None else branches
    expected = {"lk_origin.weight"} | bn_keys("origin_bn")
    for k, r in zip(sizes, dilates):
        expected |= {f"dil_conv_k{k}_{r}.weight"} | bn_keys(f"dil_bn_k{k}_{r}")
    assert set(block.state_dict()) == expected
    assert isinstance(block.lk_origin, LargeDWConv2d)
    ref, out = train_eval_deploy(block, 4, 15, 16, lambda m: m.merge_dilated_branches())
    assert block.deployed and list(dict(block.named_children())) == ["lk_origin"]
    assert rel_err(out, ref) <= RTOL
    # UniRepLKNet's block then folds its BN into lk_origin through the nn.Conv2d attributes (weight.data, bias)
    norm = nn.BatchNorm2d(4)
    randomize_bn(norm)
    norm.eval()
    x = torch.randn(2, 4, 15, 16)
    with torch.no_grad():
        ref = norm(block(x))
        std = (norm.running_var + norm.eps).sqrt()
        block.lk_origin.weight.data *= (norm.weight / std).view(-1, 1, 1, 1)
        block.lk_origin.bias.data = norm.bias + (block.lk_origin.bias - norm.running_mean) * norm.weight / std
        assert rel_err(block(x), ref) <= RTOL
    deployed = DilatedReparamBlock(4, kernel, deploy=True, **extra)
    deployed.load_state_dict(block.state_dict())  # strict: the deploy form has the deployed keys
    with torch.no_grad():
        assert rel_err(deployed(x), block(x)) <= RTOL


def test_dilated_reparam_block_errors():
    with pytest.raises(ValueError, match="no default branches for kernel_size=21"):
        DilatedReparamBlock(4, 21)
    with pytest.raises(ValueError, match="covers 13 pixels"):
        DilatedReparamBlock(4, 9, kernel_sizes=(5,), dilates=(3,))
    with pytest.raises(ValueError, match="given together"):
        DilatedReparamBlock(4, 9, kernel_sizes=(5, 3), dilates=(1,))


# ---- RepMLP's shared BN, RMNet's official block, RefConv's official checkpoints ----------------------------------

def test_fuse_conv_bn_shared_bn_of_repmlp():
    """RepMLP's fc3: a grouped 1x1 conv with S*h*w outputs followed by BatchNorm2d(S) on the (N, S, h, w) view."""
    torch.manual_seed(11)
    sets, h, w = 3, 4, 5
    fc3 = nn.Conv2d(sets * h * w, sets * h * w, 1, groups=sets, bias=False)
    fc3_bn = nn.BatchNorm2d(sets)
    randomize_bn(fc3_bn)
    fc3_bn.eval()
    x = torch.randn(6, sets * h * w, 1, 1)
    with torch.no_grad():
        ref = fc3_bn(fc3(x).reshape(-1, sets, h, w))
    weight, bias = fuse_conv_bn(fc3, fc3_bn)
    assert rel_err(F.conv2d(x, weight, bias, groups=sets).reshape(ref.shape), ref) <= RTOL
    with pytest.raises(ValueError, match="does not divide"):
        fuse_conv_bn(fc3, nn.BatchNorm2d(7))


class OfficialStyleResBlock(nn.Module):
    """Laid out as RMNet's official ResBlock: an empty nn.Sequential() as identity shortcut, and statistics-only
    BNs (running1, running2) that the forward updates but does not use."""

    def __init__(self, planes):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes)
        self.downsample = nn.Sequential()
        self.running1, self.running2 = nn.BatchNorm2d(planes, affine=False), nn.BatchNorm2d(planes, affine=False)

    def forward(self, x):
        self.running1(x)
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.downsample(x)
        self.running2(out)
        return F.relu(out)


def test_rm_convert_official_block_and_model_skips_what_it_cannot_convert():
    torch.manual_seed(12)
    grouped = BasicBlock(4, 4)
    grouped.conv1 = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)  # rm_convert needs groups=1
    model = nn.Sequential(OfficialStyleResBlock(4), grouped)
    randomize_bn(nn.ModuleList([model[0].bn1, model[0].bn2, grouped]))  # (randomize_bn needs affine BNs)
    model.eval()
    x = torch.randn(2, 4, 8, 7).relu()
    with torch.no_grad():
        ref = model(x)
        with pytest.warns(UserWarning, match=r"left 1 \(BasicBlock\) as it is: rm_convert: conv1 must"):
            rm_convert_model(model)
        assert isinstance(model[0], nn.Sequential) and model[1] is grouped
        assert rel_err(model(x), ref) <= RTOL


def test_refconv_loads_official_keys_and_kaiming_init():
    torch.manual_seed(13)
    c, k, mk = 4, 5, 3
    base, refocus = torch.randn(c, 1, k, k), torch.randn(c, c, mk, mk)
    module = RefConv2d(c, k, map_kernel_size=mk)
    module.load_state_dict({"weight": base, "convmap.weight": refocus})  # the official module's keys, strict
    assert torch.equal(module.base_weight, base) and torch.equal(module.refocus_weight, refocus)
    expected = base + F.conv2d(base.reshape(1, c, k, k), refocus, None, 1, mk // 2).reshape(base.shape)
    assert rel_err(module.transformed_weight(), expected) <= RTOL
    model = nn.Sequential(nn.Identity(), RefConv2d(c, k, map_kernel_size=mk))
    model.load_state_dict({"1.weight": base, "1.convmap.weight": refocus})  # inside a model
    model.load_state_dict(model.state_dict())  # and its own keys still
    kaiming = RefConv2d(c, k, map_kernel_size=mk, init="kaiming")
    bound = 1 / (c * mk * mk) ** 0.5  # nn.Conv2d's default: kaiming_uniform(a=sqrt(5)), fan_in = c * mk * mk
    assert kaiming.refocus_weight.abs().max() <= bound and kaiming.refocus_weight.std() > bound / 4
    assert not RefConv2d(c, k).refocus_weight.any()
    with pytest.raises(ValueError, match="init must be one of"):
        RefConv2d(c, k, init="ones")
