"""Structural re-parameterization from the papers the project grew from (../shared/seeds/).

A training-time structure with extra branches, batch norms or weights is turned into a plain deploy-time structure
that computes the same function (in eval mode) with fewer operations:

- RepLKNet: `fuse_conv_bn`, `pad_kernel`, `ReparamLargeKernelConv` (large DW conv + BN in parallel with a small DW
  conv + BN -> one `LargeDWConv2d` with bias).
- RefConv: `RefConv2d` (frozen base kernel W_b, trainable refocusing weights W_r, W_t = W_b + conv(W_b, W_r))
  -> a plain conv holding W_t; `refocus_model` swaps a pretrained model's spatial convs for RefConv2d.
- RepMLP: `conv_to_fc` (the fully-connected layer equivalent to a (grouped) conv + BN on an h x w map).
- RMNet: `rm_convert` (ResNet basic block -> conv-ReLU-conv-ReLU without the residual), `rm_convert_model`.

`reparameterize_model(model)` deploys every re-parameterizable module of a model. All fusions are computed in
float64 and cast back to the parameters' dtype, and use the batch norms' running statistics, so they reproduce
the *eval-mode* output: call `model.eval()` first.
"""
from __future__ import annotations

from collections import OrderedDict

import math

import torch
from torch import nn
import torch.nn.functional as F

from .arguments import conv_geometry, pair
from .dispatch import check_backend_name
from .modules import LargeDWConv2d
from .ops import dwconv2d

__all__ = [
    "fuse_conv_bn", "pad_kernel", "ReparamLargeKernelConv",
    "RefConv2d", "refocus_model",
    "conv_to_fc",
    "rm_convert", "rm_convert_model",
    "reparameterize_model",
]


# ---- shared helpers --------------------------------------------------------------------------------------------

def _conv_params(conv):
    """(in_channels, out_channels, groups, stride, padding, dilation) of an nn.Conv2d or a LargeDWConv2d."""
    if isinstance(conv, LargeDWConv2d):
        return (conv.channels, conv.channels * conv.channel_multiplier, conv.channels, conv.stride, conv.padding,
                conv.dilation)
    if isinstance(conv, nn.Conv2d):
        if conv.padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' convolutions can be re-parameterized, got "
                             f"{conv.padding_mode!r}")
        return (conv.in_channels, conv.out_channels, conv.groups, conv.stride, conv.padding, conv.dilation)
    raise TypeError(f"expected an nn.Conv2d or a LargeDWConv2d, got {type(conv).__name__}")


def _compute_dtype(dtype):
    return torch.float64 if dtype.is_floating_point else dtype


# ---- RepLKNet ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def fuse_conv_bn(conv, bn):
    """Fold an eval-mode batch norm into the layer before it.

    `conv`: an nn.Conv2d, a LargeDWConv2d, an nn.Linear, or a bare weight tensor (out_channels first); `bn`: the
    BatchNorm1d/2d that follows it (its running statistics are used), or None.
    Returns new tensors `(weight, bias)` (bias always present, zeros if neither layer had one) such that
    ``bn(conv(x)) == conv_with(weight, bias)(x)`` in eval mode. The arithmetic is done in float64 and cast back to
    the weight's dtype. Nothing is modified.
    """
    if isinstance(conv, torch.Tensor):
        weight, bias = conv, None
    else:
        weight, bias = conv.weight, getattr(conv, "bias", None)
    dtype = weight.dtype
    out_channels = weight.shape[0]
    w = weight.detach().to(_compute_dtype(dtype))
    b = w.new_zeros(out_channels) if bias is None else bias.detach().to(w.dtype)
    if bn is None:
        return w.to(dtype), b.to(dtype)
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"fuse_conv_bn: bn must be a BatchNorm layer or None, got {type(bn).__name__}")
    if bn.num_features != out_channels:
        raise ValueError(f"fuse_conv_bn: bn has {bn.num_features} features but the layer has {out_channels} "
                         f"output channels")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fuse_conv_bn: bn has no running statistics (track_running_stats=False); its output "
                         "depends on the batch, so it cannot be folded into a weight")
    mean = bn.running_mean.to(w.dtype)
    std = torch.sqrt(bn.running_var.to(w.dtype) + bn.eps)
    gamma = torch.ones_like(mean) if bn.weight is None else bn.weight.detach().to(w.dtype)
    beta = torch.zeros_like(mean) if bn.bias is None else bn.bias.detach().to(w.dtype)
    scale = gamma / std
    fused_w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    fused_b = beta + (b - mean) * scale
    return fused_w.to(dtype), fused_b.to(dtype)


def pad_kernel(kernel, size):
    """Zero-pad the last two (spatial) dims of `kernel` (..., kh, kw) to `size` (an int or (H, W)), centred.

    A conv with the small kernel and padding (kh-1)//2 equals a conv with the padded kernel and padding (H-1)//2,
    which is why the difference H - kh must be even (same parity); raises ValueError otherwise.
    """
    height, width = pair(size, "size")
    kh, kw = kernel.shape[-2:]
    dh, dw = height - kh, width - kw
    if dh < 0 or dw < 0:
        raise ValueError(f"pad_kernel: kernel {(kh, kw)} is larger than the target size {(height, width)}")
    if dh % 2 or dw % 2:
        raise ValueError(f"pad_kernel: kernel {(kh, kw)} cannot be centred in {(height, width)}: the size "
                         f"differences must be even")
    return F.pad(kernel, (dw // 2, dw // 2, dh // 2, dh // 2))


class ReparamLargeKernelConv(nn.Module):
    """RepLKNet's re-parameterized large-kernel depthwise conv.

    Training: ``bn(dwconv_K(x)) + bn'(dwconv_k(x))``: a K x K depthwise conv (LargeDWConv2d, no bias) + BN in
    parallel with a small k x k depthwise conv + BN (`small_kernel=None` for none), both with stride `stride` and
    size-keeping padding. `reparameterize()` merges them IN PLACE into one K x K `LargeDWConv2d` with bias
    (`self.lkb_reparam`); afterwards forward runs only that conv. Attribute names follow the official RepLKNet
    (`lkb_origin.conv`, `lkb_origin.bn`, `small_conv.conv`, `small_conv.bn`, `lkb_reparam`), so its checkpoints
    load. kernel_size / small_kernel may be ints or (h, w) pairs; each small size must be <= the large one and of
    the same parity.
    """

    def __init__(self, channels, kernel_size, small_kernel=5, stride=1, backend="auto", device=None, dtype=None):
        super().__init__()
        check_backend_name(backend)
        self.channels = channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.small_kernel = None if small_kernel is None else pair(small_kernel, "small_kernel")
        self.stride = pair(stride, "stride")
        self.backend = backend
        if self.small_kernel is not None:
            for big, small in zip(self.kernel_size, self.small_kernel):
                if small > big or (big - small) % 2:
                    raise ValueError(f"small_kernel {self.small_kernel} must be no larger than kernel_size "
                                     f"{self.kernel_size} and of the same parity in each dimension")
        factory = {"device": device, "dtype": dtype}
        self.lkb_origin = self._conv_bn(self.kernel_size, factory)
        self.add_module("small_conv", None if self.small_kernel is None
                        else self._conv_bn(self.small_kernel, factory))
        self.add_module("lkb_reparam", None)

    def _conv_bn(self, kernel, factory):
        return nn.Sequential(OrderedDict(
            conv=LargeDWConv2d(self.channels, kernel, self.stride, bias=False, backend=self.backend, **factory),
            bn=nn.BatchNorm2d(self.channels, **factory)))

    @property
    def deployed(self) -> bool:
        return self.lkb_reparam is not None

    def forward(self, x):
        if self.lkb_reparam is not None:
            return self.lkb_reparam(x)
        out = self.lkb_origin(x)
        if self.small_conv is not None:
            out = out + self.small_conv(x)
        return out

    @torch.no_grad()
    def fused_weight_bias(self):
        """(weight (C, 1, Kh, Kw), bias (C,)) of the single conv equal to this module in eval mode."""
        if self.lkb_reparam is not None:
            return self.lkb_reparam.weight.detach().clone(), self.lkb_reparam.bias.detach().clone()
        weight, bias = fuse_conv_bn(self.lkb_origin.conv, self.lkb_origin.bn)
        if self.small_conv is not None:
            small_w, small_b = fuse_conv_bn(self.small_conv.conv, self.small_conv.bn)
            # sum in float64 too, then round once
            weight = (weight.double() + pad_kernel(small_w.double(), self.kernel_size)).to(weight.dtype)
            bias = (bias.double() + small_b.double()).to(bias.dtype)
        return weight, bias

    @torch.no_grad()
    def reparameterize(self):
        """Merge the branches in place into `self.lkb_reparam` (a LargeDWConv2d with bias) and drop them.
        Uses the BN running statistics: equals the eval-mode output. Returns self. Idempotent."""
        if self.lkb_reparam is not None:
            return self
        weight, bias = self.fused_weight_bias()
        conv = LargeDWConv2d(self.channels, self.kernel_size, self.stride, bias=True, backend=self.backend,
                             device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.lkb_reparam = conv
        del self.lkb_origin, self.small_conv  # forward returns through lkb_reparam before touching them
        return self

    def extra_repr(self):
        return (f"{self.channels}, kernel_size={self.kernel_size}, small_kernel={self.small_kernel}, "
                f"stride={self.stride}, deployed={self.deployed}")


# ---- RefConv ----------------------------------------------------------------------------------------------------

class RefConv2d(nn.Module):
    """Re-parameterized refocusing convolution (RefConv).

    The conv kernel is W_t = W_b + conv(W_b, W_r), recomputed each forward:
    - W_b, the base kernel (out_channels, channels/groups, K, K), is a frozen buffer `base_weight`: a pretrained
      conv's weight (`base_weight=`, or `RefConv2d.from_conv`), or nn.Conv2d's random initialisation;
    - W_r, the trainable refocusing kernel `refocus_weight`, treats W_b as a one-sample "image" with
      out_channels * channels/groups channels of size K x K and convolves it (map_kernel_size x map_kernel_size,
      padding keeping K x K) with groups = that channel count / groups, i.e. `groups` channels per group: for a
      depthwise conv (groups == channels) a dense conv over all kernel channels, for a dense conv (groups=1) one
      filter per 2-D kernel. W_r starts at zero (`zero_init=True`), so the module starts equal to the base conv.
    - an optional frozen `base_bias` (from a pretrained conv) is added to the output.

    `reparameterize()` returns the deploy conv holding W_t (and the bias): a `LargeDWConv2d` when
    groups == channels, an `nn.Conv2d` otherwise. The module itself is not changed.
    """

    def __init__(self, channels, kernel_size, stride=1, groups=None, base_weight=None, *, out_channels=None,
                 map_kernel_size=3, padding=None, dilation=1, base_bias=None, zero_init=True, backend="auto",
                 device=None, dtype=None):
        super().__init__()
        check_backend_name(backend)
        groups = channels if groups is None else groups
        out_channels = channels if out_channels is None else out_channels
        if channels < 1 or groups < 1 or channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide channels={channels} and out_channels={out_channels}")
        if map_kernel_size < 1 or map_kernel_size % 2 == 0:
            raise ValueError(f"map_kernel_size must be odd (the refocusing conv keeps the kernel size), got "
                             f"{map_kernel_size}")
        self.in_channels, self.out_channels, self.groups = channels, out_channels, groups
        self.kernel_size, self.stride, self.padding, self.dilation = conv_geometry(kernel_size, stride, padding,
                                                                                  dilation)
        self.map_kernel_size = map_kernel_size
        self.backend = backend
        shape = (out_channels, channels // groups, *self.kernel_size)
        if base_weight is None:
            base_weight = torch.empty(shape, device=device, dtype=dtype)
            nn.init.kaiming_uniform_(base_weight, a=math.sqrt(5))  # nn.Conv2d's initialisation
        else:
            base_weight = base_weight.detach().to(device=device, dtype=dtype).clone()
            if tuple(base_weight.shape) != shape:
                raise ValueError(f"base_weight must have shape {shape}, got {tuple(base_weight.shape)}")
        self.register_buffer("base_weight", base_weight)
        if base_bias is not None:
            base_bias = base_bias.detach().to(device=base_weight.device, dtype=base_weight.dtype).clone()
            if tuple(base_bias.shape) != (out_channels,):
                raise ValueError(f"base_bias must have shape ({out_channels},), got {tuple(base_bias.shape)}")
        self.register_buffer("base_bias", base_bias)
        # W_b seen as an image: (1, num_kernels, K, K); refocusing groups of `groups` kernel channels each
        self.num_kernels = out_channels * (channels // groups)
        self.map_groups = self.num_kernels // groups
        self.refocus_weight = nn.Parameter(torch.empty(self.num_kernels, groups, map_kernel_size, map_kernel_size,
                                                       device=base_weight.device, dtype=base_weight.dtype))
        if zero_init:
            nn.init.zeros_(self.refocus_weight)
        else:
            nn.init.xavier_uniform_(self.refocus_weight)

    @classmethod
    def from_conv(cls, conv, map_kernel_size=3, zero_init=True, backend="auto"):
        """A RefConv2d whose frozen base is `conv`'s weight and bias (an nn.Conv2d or LargeDWConv2d)."""
        in_channels, out_channels, groups, stride, padding, dilation = _conv_params(conv)
        return cls(in_channels, conv.weight.shape[2:], stride, groups, conv.weight, out_channels=out_channels,
                   map_kernel_size=map_kernel_size, padding=padding, dilation=dilation, base_bias=conv.bias,
                   zero_init=zero_init, backend=backend)

    @property
    def depthwise(self) -> bool:
        return self.groups == self.in_channels

    def transformed_weight(self):
        """W_t = W_b + conv(W_b, W_r), shape (out_channels, channels/groups, Kh, Kw); differentiable in W_r."""
        image = self.base_weight.reshape(1, self.num_kernels, *self.kernel_size)
        refocused = F.conv2d(image, self.refocus_weight, None, 1, self.map_kernel_size // 2, 1, self.map_groups)
        return self.base_weight + refocused.reshape(self.base_weight.shape)

    def forward(self, x):
        weight = self.transformed_weight()
        if self.depthwise:
            return dwconv2d(x, weight, self.base_bias, self.stride, self.padding, self.dilation, backend=self.backend)
        return F.conv2d(x, weight, self.base_bias, self.stride, self.padding, self.dilation, self.groups)

    @torch.no_grad()
    def reparameterize(self):
        """The deploy conv with weight W_t: LargeDWConv2d if depthwise, else nn.Conv2d (a new module)."""
        weight = self.transformed_weight()
        factory = {"device": weight.device, "dtype": weight.dtype}
        bias = self.base_bias is not None
        if self.depthwise:
            conv = LargeDWConv2d(self.in_channels, self.kernel_size, self.stride, self.padding, self.dilation,
                                 bias=bias, channel_multiplier=self.out_channels // self.in_channels,
                                 backend=self.backend, **factory)
        else:
            conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                             self.dilation, self.groups, bias=bias, **factory)
        conv.weight.copy_(weight)
        if bias:
            conv.bias.copy_(self.base_bias)
        return conv

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, map_kernel_size={self.map_kernel_size}")


def refocus_model(model: nn.Module, map_kernel_size=3, min_kernel_size=3, zero_init=True, backend="auto"):
    """Replace, in place, every nn.Conv2d / LargeDWConv2d of `model` whose kernel is at least `min_kernel_size`
    in both dimensions (1x1 convs are left alone, as in the paper) by a RefConv2d whose frozen base is that conv.
    The conv's own parameters leave the model (its weight becomes a buffer), so only the refocusing weights
    (and whatever else is in the model) train. Returns `model` (a bare conv passed in is returned converted)."""
    def eligible(module):
        if isinstance(module, LargeDWConv2d):
            return min(module.kernel_size) >= min_kernel_size
        return (type(module) is nn.Conv2d and module.padding_mode == "zeros"
                and min(module.kernel_size) >= min_kernel_size)

    if eligible(model):
        return RefConv2d.from_conv(model, map_kernel_size, zero_init, backend)
    for name, child in model.named_children():
        if eligible(child):
            setattr(model, name, RefConv2d.from_conv(child, map_kernel_size, zero_init, backend))
        else:
            refocus_model(child, map_kernel_size, min_kernel_size, zero_init, backend)
    return model


# ---- RepMLP -----------------------------------------------------------------------------------------------------

@torch.no_grad()
def conv_to_fc(conv, h, w, bn=None, grouped=False):
    """The fully-connected layer equal to `conv` (+ eval-mode `bn`) on an h x w input map (RepMLP).

    `conv`: an nn.Conv2d (any groups, stride, padding, dilation; zero padding) or a LargeDWConv2d. The FC acts
    on x.flatten(1) (input order (c, y, x)) and produces the conv output flattened the same way:
    ``F.linear(x.flatten(1), fc_weight, fc_bias).reshape(N, C_out, Ho, Wo) == bn(conv(x))``.
    Returns `(fc_weight, fc_bias)`: fc_weight (C_out*Ho*Wo, C_in*h*w) (block-diagonal over the groups), or with
    `grouped=True` just the diagonal blocks stacked, (C_out*Ho*Wo, C_in*h*w/groups): the weight of the grouped FC
    ``nn.Conv2d(C_in*h*w, C_out*Ho*Wo, 1, groups=groups)`` applied to x.reshape(N, C_in*h*w, 1, 1) (RepMLP's fc3).
    fc_bias is (C_out*Ho*Wo,), zeros if neither conv nor bn has a bias.

    Built with the identity trick: a batch of one-hot maps, the identity matrix reshaped to
    (C_in/groups*h*w, C_in/groups, h, w) and repeated over the groups, goes through the conv; response r of output
    element o is the FC weight [o, r].
    """
    in_channels, out_channels, groups, stride, padding, dilation = _conv_params(conv)
    weight, bias = fuse_conv_bn(conv, bn)
    group_in = in_channels // groups
    n = group_in * h * w
    identity = torch.eye(n, dtype=weight.dtype, device=weight.device).reshape(n, group_in, h, w)
    identity = identity.repeat(1, groups, 1, 1)
    response = F.conv2d(identity, weight, None, stride, padding, dilation, groups)  # (n, C_out, Ho, Wo)
    out_h, out_w = response.shape[2:]
    grouped_weight = response.reshape(n, out_channels * out_h * out_w).t().contiguous()
    fc_bias = bias.repeat_interleave(out_h * out_w)
    if grouped:
        return grouped_weight, fc_bias
    rows = out_channels * out_h * out_w // groups
    return torch.block_diag(*grouped_weight.split(rows)), fc_bias


# ---- RMNet ------------------------------------------------------------------------------------------------------

def _dirac_tap(conv, name):
    """The kernel position (th, tw) at which conv's output pixel o reads input pixel o*stride (offset 0)."""
    if isinstance(conv.padding, str):
        raise ValueError(f"rm_convert: {name} must have integer padding, got {conv.padding!r}")
    taps = []
    for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation):
        if p % d or p // d >= k:
            raise ValueError(f"rm_convert: {name} (kernel {conv.kernel_size}, padding {conv.padding}, dilation "
                             f"{conv.dilation}) has no tap reading the input pixel under each output pixel")
        taps.append(p // d)
    return tuple(taps)


def _check_plain_conv(conv, name):
    if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError(f"rm_convert: {name} must be an nn.Conv2d with groups=1 and zero padding, got {conv!r}")


@torch.no_grad()
def rm_convert(block) -> nn.Sequential:
    """RMNet's reserve-and-merge: a ResNet basic block -> an equivalent plain block without the residual.

    `block` is laid out as torchvision's BasicBlock: conv1, bn1, conv2, bn2, and downsample = None or
    Sequential(1x1 conv (stride s), BN); forward relu(bn2(conv2(relu(bn1(conv1(x))))) + (x or downsample(x))).
    Returns nn.Sequential(conv1', ReLU, conv2', ReLU) (convs with bias, BNs folded in, eval-mode statistics):
    - reserve: conv1' has C_in extra output channels with Dirac kernels (same stride as conv1) that carry the
      input (subsampled by the stride) through the ReLU unchanged, which is exact because the block input is
      non-negative (it comes out of a ReLU in a ResNet);
    - merge: conv2' reads those channels with a Dirac kernel (identity shortcut) or with the 1x1 downsample conv +
      BN placed at the kernel centre (the seed's variant 2, 81C^2 weights for a C -> 2C block instead of 108C^2 for
      routing the downsample output itself through a PReLU), and the downsample BN's bias joins conv2's bias.
    Exact (up to fp rounding) for non-negative inputs only. The block is not modified.
    """
    for attr in ("conv1", "bn1", "conv2", "bn2"):
        if not hasattr(block, attr):
            raise TypeError(f"rm_convert: expected a ResNet basic block with conv1, bn1, conv2, bn2 and "
                            f"downsample, got {type(block).__name__} without {attr!r}")
    conv1, conv2 = block.conv1, block.conv2
    downsample = getattr(block, "downsample", None)
    _check_plain_conv(conv1, "conv1")
    _check_plain_conv(conv2, "conv2")
    if conv2.stride != (1, 1):
        raise ValueError(f"rm_convert: conv2 must have stride 1, got {conv2.stride}")
    in_channels, mid_channels, out_channels = conv1.in_channels, conv1.out_channels, conv2.out_channels
    tap1, tap2 = _dirac_tap(conv1, "conv1"), _dirac_tap(conv2, "conv2")

    w1, b1 = fuse_conv_bn(conv1, block.bn1)
    w2, b2 = fuse_conv_bn(conv2, block.bn2)
    if downsample is None:
        if conv1.stride != (1, 1) or in_channels != out_channels:
            raise ValueError(f"rm_convert: a block without downsample must keep the shape, got stride "
                             f"{conv1.stride}, {in_channels} -> {out_channels} channels")
        shortcut_w = torch.eye(out_channels, dtype=w2.dtype, device=w2.device)
        shortcut_b = torch.zeros_like(b2)
    else:
        if not (isinstance(downsample, nn.Sequential) and len(downsample) == 2):
            raise ValueError(f"rm_convert: downsample must be None or Sequential(1x1 conv, BN), got {downsample!r}")
        down_conv, down_bn = downsample[0], downsample[1]
        _check_plain_conv(down_conv, "downsample[0]")
        if (down_conv.kernel_size != (1, 1) or down_conv.padding != (0, 0) or down_conv.stride != conv1.stride
                or down_conv.in_channels != in_channels or down_conv.out_channels != out_channels):
            raise ValueError(f"rm_convert: downsample[0] must be a 1x1 conv {in_channels} -> {out_channels} "
                             f"with padding 0 and conv1's stride {conv1.stride}, got {down_conv!r}")
        down_w, shortcut_b = fuse_conv_bn(down_conv, down_bn)
        shortcut_w = down_w[:, :, 0, 0]

    # reserve: conv1' = [conv1 ; Dirac] (Dirac at the tap that reads the pixel under each output pixel)
    weight1 = w1.new_zeros(mid_channels + in_channels, in_channels, *conv1.kernel_size)
    weight1[:mid_channels] = w1
    channel = torch.arange(in_channels, device=w1.device)
    weight1[mid_channels + channel, channel, tap1[0], tap1[1]] = 1
    bias1 = torch.cat([b1, b1.new_zeros(in_channels)])
    # merge: conv2' = [conv2 | shortcut at the centre tap]
    weight2 = w2.new_zeros(out_channels, mid_channels + in_channels, *conv2.kernel_size)
    weight2[:, :mid_channels] = w2
    weight2[:, mid_channels:, tap2[0], tap2[1]] = shortcut_w
    bias2 = b2 + shortcut_b

    factory = {"device": w1.device, "dtype": w1.dtype}
    new1 = nn.Conv2d(in_channels, mid_channels + in_channels, conv1.kernel_size, conv1.stride, conv1.padding,
                     conv1.dilation, bias=True, **factory)
    new2 = nn.Conv2d(mid_channels + in_channels, out_channels, conv2.kernel_size, 1, conv2.padding,
                     conv2.dilation, bias=True, **factory)
    new1.weight.copy_(weight1)
    new1.bias.copy_(bias1)
    new2.weight.copy_(weight2)
    new2.bias.copy_(bias2)
    return nn.Sequential(OrderedDict(conv1=new1, relu1=nn.ReLU(inplace=True), conv2=new2, relu2=nn.ReLU(inplace=True)))


def _is_basic_block(module):
    return (all(hasattr(module, a) for a in ("conv1", "bn1", "conv2", "bn2", "downsample"))
            and not hasattr(module, "conv3"))


def rm_convert_model(model: nn.Module) -> nn.Module:
    """Replace, in place, every ResNet basic block of `model` (torchvision BasicBlock layout) by `rm_convert`'s
    plain block. Exact when every block's input is non-negative, as in torchvision's ResNet-18/34 (the stem ends
    with ReLU + max-pool and every block with a ReLU). Call `model.eval()` first. Returns `model`."""
    if _is_basic_block(model):
        return rm_convert(model)
    for name, child in model.named_children():
        if _is_basic_block(child):
            setattr(model, name, rm_convert(child))
        else:
            rm_convert_model(child)
    return model


# ---- whole models -----------------------------------------------------------------------------------------------

def reparameterize_model(model: nn.Module) -> nn.Module:
    """Deploy every re-parameterizable module of `model` (ReparamLargeKernelConv, RefConv2d, or anything with a
    `reparameterize()` method): a module whose `reparameterize()` returns another module is replaced by it; one
    that works in place (returns itself or None) stays. Uses eval-mode statistics: call `model.eval()` first.
    Returns `model` (or its replacement, if `model` itself is re-parameterizable)."""
    method = getattr(model, "reparameterize", None)
    if callable(method):
        result = method()
        return model if result is None else result
    for name, child in model.named_children():
        replacement = reparameterize_model(child)
        if replacement is not child:
            setattr(model, name, replacement)
    return model
