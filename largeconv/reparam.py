"""Structural re-parameterization from the papers the project grew from (../shared/seeds/).

A training-time structure with extra branches, batch norms or weights is turned into a plain deploy-time structure
that computes the same function (in eval mode) with fewer operations:

- RepLKNet: `fuse_conv_bn`, `pad_kernel`, `ReparamLargeKernelConv` (large DW conv + BN in parallel with a small DW
  conv + BN -> one `LargeDWConv2d` with bias); the official constructor, keys, deploy form and `merge_kernel()`.
- SLaK: `ReparamLargeKernelConv(..., Decom=True)` (K x k and k x K DW convs + BN, plus k x k + BN -> one conv).
- UniRepLKNet: `DilatedReparamBlock` (large DW conv + BN plus dilated small DW convs + BN -> one conv),
  `dilated_to_dense`.
- RefConv: `RefConv2d` (frozen base kernel W_b, trainable refocusing weights W_r, W_t = W_b + conv(W_b, W_r))
  -> a plain conv holding W_t; `refocus_model` swaps a pretrained model's spatial convs for RefConv2d.
- RepMLP: `conv_to_fc` (the fully-connected layer equivalent to a (grouped) conv + BN on an h x w map).
- RMNet: `rm_convert` (ResNet basic block -> conv-ReLU-conv-ReLU without the residual), `rm_convert_model`.
- RepMLP's shared BN (fc3_bn) folds with `fuse_conv_bn`; RefConv2d loads the official checkpoints.

`reparameterize_model(model)` deploys every re-parameterizable module of a model. All fusions are computed in
float64 and cast back to the parameters' dtype, and use the batch norms' running statistics, so they reproduce
the *eval-mode* output: call `model.eval()` first.
"""
from __future__ import annotations

from collections import OrderedDict

import inspect
import math
import warnings

import torch
from torch import nn
import torch.nn.functional as F

from .arguments import conv_geometry, pair
from .dispatch import check_backend_name
from .modules import LargeDWConv2d
from .ops import dwconv2d

__all__ = [
    "fuse_conv_bn", "pad_kernel", "ReparamLargeKernelConv",
    "dilated_to_dense", "DilatedReparamBlock", "DILATED_BRANCHES",
    "RefConv2d", "refocus_model",
    "conv_to_fc",
    "rm_convert", "rm_convert_model",
    "reparameterize_model",
]


# ---- shared helpers --------------------------------------------------------------------------------------------

def _conv_params(conv):
    """(in_channels, out_channels, groups, stride, padding, dilation) of an nn.Conv2d (LargeDWConv2d is one)."""
    if isinstance(conv, nn.Conv2d):
        if conv.padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' convolutions can be re-parameterized, got "
                             f"{conv.padding_mode!r}")
        return (conv.in_channels, conv.out_channels, conv.groups, conv.stride, conv.padding, conv.dilation)
    raise TypeError(f"expected an nn.Conv2d (or LargeDWConv2d), got {type(conv).__name__}")


def _compute_dtype(dtype):
    return torch.float64 if dtype.is_floating_point else dtype


# ---- RepLKNet ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def fuse_conv_bn(conv, bn):
    """Fold an eval-mode batch norm into the layer before it.

    `conv`: an nn.Conv2d (a LargeDWConv2d is one), an nn.Linear, or a bare weight tensor (out_channels first); `bn`:
    the BatchNorm1d/2d that follows it (its running statistics are used), or None. A BN with fewer features than
    the layer has outputs is shared: feature f normalises the out_channels / num_features consecutive outputs
    from f * out_channels / num_features on, as RepMLP's fc3_bn (BatchNorm2d(S) after an FC with S*h*w outputs,
    reshaped to (N, S, h, w)).
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
    if out_channels % bn.num_features:
        raise ValueError(f"fuse_conv_bn: bn has {bn.num_features} features, which does not divide the layer's "
                         f"{out_channels} output channels")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fuse_conv_bn: bn has no running statistics (track_running_stats=False); its output "
                         "depends on the batch, so it cannot be folded into a weight")
    mean = bn.running_mean.to(w.dtype)
    std = torch.sqrt(bn.running_var.to(w.dtype) + bn.eps)
    gamma = torch.ones_like(mean) if bn.weight is None else bn.weight.detach().to(w.dtype)
    beta = torch.zeros_like(mean) if bn.bias is None else bn.bias.detach().to(w.dtype)
    scale = gamma / std
    if bn.num_features != out_channels:  # one BN feature per run of consecutive outputs (RepMLP's fc3_bn)
        repeats = out_channels // bn.num_features
        scale, mean, beta = (t.repeat_interleave(repeats) for t in (scale, mean, beta))
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


def _large_kernel_official_form(in_channels, out_channels, kernel_size, stride, groups, small_kernel,
                                small_kernel_merged=False, Decom=False, bn=True):
    """RepLKNet's (and SLaK's) constructor: ReparamLargeKernelConv(in_channels, out_channels, kernel_size, stride,
    groups, small_kernel, small_kernel_merged=False[, Decom=False, bn=True])."""


def _large_kernel_short_form(channels, kernel_size, small_kernel=5, stride=1, small_kernel_merged=False,
                             Decom=False, bn=True):
    """largeconv's own: ReparamLargeKernelConv(channels, kernel_size, small_kernel=5, stride=1)."""


def _large_kernel_arguments(args, kwargs):
    """Bind either constructor form; return (in_channels, out_channels, kernel_size, stride, small_kernel,
    small_kernel_merged, Decom, bn)."""
    official = len(args) >= 5 or not {"in_channels", "out_channels", "groups"}.isdisjoint(kwargs)
    form = _large_kernel_official_form if official else _large_kernel_short_form
    try:
        bound = inspect.signature(form).bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"ReparamLargeKernelConv: {error}; {form.__doc__}") from None
    bound.apply_defaults()
    a = bound.arguments
    if official:
        in_channels, out_channels, groups = a["in_channels"], a["out_channels"], a["groups"]
        if groups != in_channels or out_channels % in_channels:
            raise ValueError(f"ReparamLargeKernelConv is depthwise: groups must equal in_channels and out_channels "
                             f"be a multiple of it, got in_channels={in_channels}, out_channels={out_channels}, "
                             f"groups={groups}")
    else:
        in_channels = out_channels = a["channels"]
    return (in_channels, out_channels, a["kernel_size"], a["stride"], a["small_kernel"], a["small_kernel_merged"],
            a["Decom"], a["bn"])


class ReparamLargeKernelConv(nn.Module):
    """RepLKNet's re-parameterized large-kernel depthwise conv, with SLaK's decomposed variant.

    Constructors: RepLKNet's ``ReparamLargeKernelConv(in_channels, out_channels, kernel_size, stride, groups,
    small_kernel, small_kernel_merged=False)`` (groups == in_channels; SLaK's adds ``Decom=False, bn=True``) and
    the short ``ReparamLargeKernelConv(channels, kernel_size, small_kernel=5, stride=1)``; keyword-only `backend`,
    `device`, `dtype`. kernel_size / small_kernel may be ints or (h, w) pairs; each small size must be no larger
    than the large one and of the same parity. Every conv keeps the size at stride 1 (padding k // 2 per dimension).

    Training (RepLKNet): ``lkb_origin(x) + small_conv(x)``, a K x K depthwise conv + BN in parallel with a small
    k x k depthwise conv + BN (`small_kernel=None`: none). SLaK (``Decom=True``): ``LoRA1(x) + LoRA2(x) +
    small_conv(x)``, K x k and k x K convs + BN plus the k x k one when k < K. ``bn=False`` (SLaK) drops the BNs.
    Each branch is ``Sequential(conv=LargeDWConv2d, bn=BatchNorm2d)``: the official key names, so checkpoints load.

    Deploy: ``small_kernel_merged=True`` builds only ``lkb_reparam`` (one K x K LargeDWConv2d with bias), so deployed
    checkpoints load directly; `reparameterize()` (alias `merge_kernel()`, which the official
    ``structural_reparam()`` calls) merges a training module into that form in place, from the BN running
    statistics: equal to the eval-mode output.
    """

    def __init__(self, *args, backend="auto", device=None, dtype=None, **kwargs):
        super().__init__()
        check_backend_name(backend)
        (in_channels, out_channels, kernel_size, stride, small_kernel, merged, decom,
         bn) = _large_kernel_arguments(args, kwargs)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, in_channels
        self.channels = in_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.small_kernel = None if small_kernel is None else pair(small_kernel, "small_kernel")
        self.stride = pair(stride, "stride")
        self.Decom = bool(decom)  # SLaK's attribute name
        self.backend = backend
        if self.small_kernel is not None:
            for big, small in zip(self.kernel_size, self.small_kernel):
                if small > big or (big - small) % 2:
                    raise ValueError(f"small_kernel {self.small_kernel} must be no larger than kernel_size "
                                     f"{self.kernel_size} and of the same parity in each dimension")
        elif self.Decom:
            raise ValueError("Decom=True (SLaK) needs small_kernel: the narrow side of the K x k and k x K kernels")
        factory = {"device": device, "dtype": dtype}
        if merged:
            self.lkb_reparam = self._conv(self.kernel_size, True, factory)
            return
        if self.Decom:
            (big_h, big_w), (small_h, small_w) = self.kernel_size, self.small_kernel
            self.LoRA1 = self._conv_bn((big_h, small_w), bn, factory)
            self.LoRA2 = self._conv_bn((small_h, big_w), bn, factory)
            if self.small_kernel != self.kernel_size:  # SLaK adds the small branch only when it is smaller
                self.small_conv = self._conv_bn(self.small_kernel, bn, factory)
        else:
            self.lkb_origin = self._conv_bn(self.kernel_size, bn, factory)
            if self.small_kernel is not None:
                self.small_conv = self._conv_bn(self.small_kernel, bn, factory)

    def _conv(self, kernel, bias, factory):
        return LargeDWConv2d(self.in_channels, kernel, self.stride, bias=bias,
                             channel_multiplier=self.out_channels // self.in_channels, backend=self.backend,
                             **factory)

    def _conv_bn(self, kernel, bn, factory):
        layers = OrderedDict(conv=self._conv(kernel, False, factory))
        if bn:
            layers["bn"] = nn.BatchNorm2d(self.out_channels, **factory)
        return nn.Sequential(layers)

    @property
    def deployed(self) -> bool:
        return hasattr(self, "lkb_reparam")

    def _branches(self):
        names = ("LoRA1", "LoRA2") if self.Decom else ("lkb_origin",)
        return [getattr(self, name) for name in (*names, "small_conv") if hasattr(self, name)]

    def forward(self, x):
        if hasattr(self, "lkb_reparam"):
            return self.lkb_reparam(x)
        branches = self._branches()
        out = branches[0](x)
        for branch in branches[1:]:
            out = out + branch(x)
        return out

    @torch.no_grad()
    def fused_weight_bias(self):
        """(weight (C*m, 1, Kh, Kw), bias (C*m,)) of the single conv equal to this module in eval mode."""
        if self.deployed:
            return self.lkb_reparam.weight.detach().clone(), self.lkb_reparam.bias.detach().clone()
        return _merge_branches([(branch.conv, getattr(branch, "bn", None), 1) for branch in self._branches()],
                               self.kernel_size)

    get_equivalent_kernel_bias = fused_weight_bias  # the official name

    @torch.no_grad()
    def reparameterize(self):
        """Merge the branches in place into `self.lkb_reparam` (a LargeDWConv2d with bias) and drop them.
        Uses the BN running statistics: equals the eval-mode output. Returns self. Idempotent."""
        if self.deployed:
            return self
        weight, bias = self.fused_weight_bias()
        conv = self._conv(self.kernel_size, True, {"device": weight.device, "dtype": weight.dtype})
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        for name in ("lkb_origin", "LoRA1", "LoRA2", "small_conv"):
            if hasattr(self, name):
                delattr(self, name)
        self.lkb_reparam = conv
        return self

    merge_kernel = reparameterize  # the official name, called by RepLKNet's structural_reparam()

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"small_kernel={self.small_kernel}, stride={self.stride}")
        if self.Decom:
            text += ", Decom=True"
        return text + f", deployed={self.deployed}"


def _merge_branches(branches, size):
    """Sum of conv + BN branches (conv, bn or None, dilation) as one (weight, bias) of spatial `size`: each fused
    kernel is made dense (dilation) and zero-padded to the centre. Summed in float64, rounded once."""
    weight = bias = None
    for conv, bn, dilation in branches:
        w, b = fuse_conv_bn(conv, bn)
        w = pad_kernel(dilated_to_dense(w.double(), dilation), size)
        weight = w if weight is None else weight + w
        bias = b.double() if bias is None else bias + b.double()
    dtype = branches[0][0].weight.dtype
    return weight.to(dtype), bias.to(dtype)


# ---- UniRepLKNet ------------------------------------------------------------------------------------------------

def dilated_to_dense(kernel, dilation):
    """The dense kernel equal to `kernel` (..., kh, kw) applied with `dilation` (int or pair): the taps spread
    `dilation` apart with zeros between them, size (d*(kh-1)+1, d*(kw-1)+1). A conv with the dilated kernel and
    padding p equals a conv with this one, dilation 1 and the same padding."""
    dh, dw = pair(dilation, "dilation")
    if min(dh, dw) < 1:
        raise ValueError(f"dilated_to_dense: dilation must be >= 1, got {(dh, dw)}")
    kh, kw = kernel.shape[-2:]
    dense = kernel.new_zeros(*kernel.shape[:-2], dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    dense[..., ::dh, ::dw] = kernel
    return dense


# UniRepLKNet's default dilated branches per kernel size: (kernel sizes, dilations)
DILATED_BRANCHES = {
    5: ((3, 3), (1, 2)),
    7: ((5, 3, 3), (1, 2, 3)),
    9: ((5, 5, 3, 3), (1, 2, 3, 4)),
    11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
    13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
    15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
    17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
}


class DilatedReparamBlock(nn.Module):
    """UniRepLKNet's dilated re-parameterization block, with its constructor and key names.

    ``DilatedReparamBlock(channels, kernel_size, deploy=False, use_sync_bn=False, attempt_use_lk_impl=True)``;
    keyword-only `kernel_sizes`/`dilates` (default: UniRepLKNet's table, DILATED_BRANCHES), `backend`, `device`,
    `dtype`. `attempt_use_lk_impl` is accepted and ignored: the large conv is always a LargeDWConv2d.

    Training: ``origin_bn(lk_origin(x)) + sum_i dil_bn_k{k}_{r}(dil_conv_k{k}_{r}(x))``: a K x K depthwise conv
    + BN in parallel with small depthwise convs of kernel k and dilation r (each with BN), all size-keeping at
    stride 1. ``deploy=True`` builds only `lk_origin` (with bias); `merge_dilated_branches()` (the official name)
    or `reparameterize()` merges a training block into that form in place: every dilated kernel becomes a dense
    one (`dilated_to_dense`), zero-padded to K x K, and all are summed with the BNs folded in.
    """

    def __init__(self, channels, kernel_size, deploy=False, use_sync_bn=False, attempt_use_lk_impl=True, *,
                 kernel_sizes=None, dilates=None, backend="auto", device=None, dtype=None):
        super().__init__()
        check_backend_name(backend)
        if kernel_sizes is None and dilates is None:
            if kernel_size not in DILATED_BRANCHES:
                raise ValueError(f"DilatedReparamBlock: no default branches for kernel_size={kernel_size} (have "
                                 f"{sorted(DILATED_BRANCHES)}); pass kernel_sizes= and dilates=")
            kernel_sizes, dilates = DILATED_BRANCHES[kernel_size]
        if kernel_sizes is None or dilates is None or len(kernel_sizes) != len(dilates):
            raise ValueError(f"DilatedReparamBlock: kernel_sizes and dilates must be given together, of one length, "
                             f"got {kernel_sizes} and {dilates}")
        for k, r in zip(kernel_sizes, dilates):
            extent = r * (k - 1) + 1
            if extent > kernel_size or (kernel_size - extent) % 2:
                raise ValueError(f"DilatedReparamBlock: branch k={k}, r={r} covers {extent} pixels, which must be "
                                 f"no more than kernel_size={kernel_size} and of the same parity")
        self.channels, self.kernel_size, self.backend = channels, kernel_size, backend
        self.kernel_sizes, self.dilates = list(kernel_sizes), list(dilates)
        self.attempt_use_lk_impl = attempt_use_lk_impl
        factory = {"device": device, "dtype": dtype}
        norm = nn.SyncBatchNorm if use_sync_bn else nn.BatchNorm2d
        self.lk_origin = LargeDWConv2d(channels, kernel_size, bias=deploy, backend=backend, **factory)
        if not deploy:
            self.origin_bn = norm(channels, **factory)
            for k, r in zip(self.kernel_sizes, self.dilates):
                setattr(self, f"dil_conv_k{k}_{r}", nn.Conv2d(channels, channels, k, padding=(r * (k - 1) + 1) // 2,
                                                             dilation=r, groups=channels, bias=False, **factory))
                setattr(self, f"dil_bn_k{k}_{r}", norm(channels, **factory))

    @property
    def deployed(self) -> bool:
        return not hasattr(self, "origin_bn")

    def forward(self, x):
        if self.deployed:
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for k, r in zip(self.kernel_sizes, self.dilates):
            out = out + getattr(self, f"dil_bn_k{k}_{r}")(getattr(self, f"dil_conv_k{k}_{r}")(x))
        return out

    @torch.no_grad()
    def fused_weight_bias(self):
        """(weight (C, 1, K, K), bias (C,)) of the single conv equal to this block in eval mode."""
        if self.deployed:
            bias = self.lk_origin.bias
            return (self.lk_origin.weight.detach().clone(),
                    torch.zeros_like(self.lk_origin.weight[:, 0, 0, 0]) if bias is None else bias.detach().clone())
        branches = [(self.lk_origin, self.origin_bn, 1)]
        branches += [(getattr(self, f"dil_conv_k{k}_{r}"), getattr(self, f"dil_bn_k{k}_{r}"), r)
                     for k, r in zip(self.kernel_sizes, self.dilates)]
        return _merge_branches(branches, self.kernel_size)

    @torch.no_grad()
    def merge_dilated_branches(self):
        """Merge in place: `lk_origin` becomes the one K x K conv with bias; the BN and the branches are dropped."""
        if self.deployed:
            return self
        weight, bias = self.fused_weight_bias()
        conv = LargeDWConv2d(self.channels, self.kernel_size, bias=True, backend=self.backend,
                             device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.lk_origin = conv
        del self.origin_bn
        for k, r in zip(self.kernel_sizes, self.dilates):
            delattr(self, f"dil_conv_k{k}_{r}")
            delattr(self, f"dil_bn_k{k}_{r}")
        return self

    reparameterize = merge_dilated_branches

    def extra_repr(self):
        return (f"{self.channels}, kernel_size={self.kernel_size}, kernel_sizes={self.kernel_sizes}, "
                f"dilates={self.dilates}, deployed={self.deployed}")


# ---- RefConv ----------------------------------------------------------------------------------------------------

REFOCUS_INITS = ("zeros", "kaiming", "xavier")


class RefConv2d(nn.Module):
    """Re-parameterized refocusing convolution (RefConv).

    The conv kernel is W_t = W_b + conv(W_b, W_r), recomputed each forward:
    - W_b, the base kernel (out_channels, channels/groups, K, K), is a frozen buffer `base_weight`: a pretrained
      conv's weight (`base_weight=`, or `RefConv2d.from_conv`), or nn.Conv2d's random initialisation;
    - W_r, the trainable refocusing kernel `refocus_weight`, treats W_b as a one-sample "image" with
      out_channels * channels/groups channels of size K x K and convolves it (map_kernel_size x map_kernel_size,
      padding keeping K x K) with groups = that channel count / groups, i.e. `groups` channels per group: for a
      depthwise conv (groups == channels) a dense conv over all kernel channels, for a dense conv (groups=1) one
      filter per 2-D kernel. `init` sets W_r's start: "zeros" (the default), so the module starts equal to the
      base conv; "kaiming", the official code's (its refocusing conv keeps nn.Conv2d's default initialisation);
      "xavier" (what zero_init=False gave).
    - an optional frozen `base_bias` (from a pretrained conv) is added to the output.

    State-dict keys are `base_weight`, `refocus_weight` (and `base_bias`); checkpoints of the official module, with
    `weight` (W_b) and `convmap.weight` (W_r, the same layout), load too.

    `reparameterize()` returns the deploy conv holding W_t (and the bias): a `LargeDWConv2d` when
    groups == channels, an `nn.Conv2d` otherwise. The module itself is not changed.
    """

    def __init__(self, channels, kernel_size, stride=1, groups=None, base_weight=None, *, out_channels=None,
                 map_kernel_size=3, padding=None, dilation=1, base_bias=None, zero_init=True, init=None,
                 backend="auto", device=None, dtype=None):
        super().__init__()
        check_backend_name(backend)
        init = ("zeros" if zero_init else "xavier") if init is None else init
        if init not in REFOCUS_INITS:
            raise ValueError(f"init must be one of {REFOCUS_INITS}, got {init!r}")
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
        if init == "zeros":
            nn.init.zeros_(self.refocus_weight)
        elif init == "kaiming":  # nn.Conv2d's default, which the official refocusing conv keeps
            nn.init.kaiming_uniform_(self.refocus_weight, a=math.sqrt(5))
        else:
            nn.init.xavier_uniform_(self.refocus_weight)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the official module's names: W_b is the buffer `weight`, W_r the weight of the conv `convmap`
        for official, ours in (("weight", "base_weight"), ("convmap.weight", "refocus_weight")):
            if prefix + official in state_dict and prefix + ours not in state_dict:
                state_dict[prefix + ours] = state_dict.pop(prefix + official)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def from_conv(cls, conv, map_kernel_size=3, zero_init=True, backend="auto", init=None):
        """A RefConv2d whose frozen base is `conv`'s weight and bias (an nn.Conv2d or LargeDWConv2d)."""
        in_channels, out_channels, groups, stride, padding, dilation = _conv_params(conv)
        return cls(in_channels, conv.weight.shape[2:], stride, groups, conv.weight, out_channels=out_channels,
                   map_kernel_size=map_kernel_size, padding=padding, dilation=dilation, base_bias=conv.bias,
                   zero_init=zero_init, init=init, backend=backend)

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


def refocus_model(model: nn.Module, map_kernel_size=3, min_kernel_size=3, zero_init=True, backend="auto",
                  init=None):
    """Replace, in place, every nn.Conv2d / LargeDWConv2d of `model` whose kernel is at least `min_kernel_size`
    in both dimensions (1x1 convs are left alone, as in the paper) by a RefConv2d whose frozen base is that conv.
    The conv's own parameters leave the model (its weight becomes a buffer), so only the refocusing weights
    (and whatever else is in the model) train. `init`: see RefConv2d. Returns `model` (a bare conv passed in is
    returned converted)."""
    def eligible(module):
        if isinstance(module, LargeDWConv2d):
            return min(module.kernel_size) >= min_kernel_size
        return (type(module) is nn.Conv2d and module.padding_mode == "zeros"
                and min(module.kernel_size) >= min_kernel_size)

    def refocused(conv):
        return RefConv2d.from_conv(conv, map_kernel_size, zero_init, backend, init)

    if eligible(model):
        return refocused(model)
    for name, child in model.named_children():
        if eligible(child):
            setattr(model, name, refocused(child))
        else:
            refocus_model(child, map_kernel_size, min_kernel_size, zero_init, backend, init)
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

    `block` is laid out as torchvision's BasicBlock: conv1, bn1, conv2, bn2, and downsample = None (or an empty
    nn.Sequential() / nn.Identity(), the official RMNet ResBlock's identity shortcut) or Sequential(1x1 conv
    (stride s), BN); forward relu(bn2(conv2(relu(bn1(conv1(x))))) + (x or downsample(x))).
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
    if isinstance(downsample, nn.Identity) or (isinstance(downsample, nn.Sequential) and len(downsample) == 0):
        downsample = None  # an identity shortcut written as a module
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
    """Replace, in place, every ResNet basic block of `model` (torchvision BasicBlock layout, or the official
    RMNet ResBlock) by `rm_convert`'s plain block; a block it cannot convert (another layout, a conv with groups,
    ...) stays as it is, with a warning saying why. Exact when every block's input is non-negative, as in
    torchvision's ResNet-18/34 (the stem ends with ReLU + max-pool and every block with a ReLU). Call
    `model.eval()` first. Returns `model` (or the plain block, if `model` itself is a block)."""
    def plain(block, name):
        try:
            return rm_convert(block)
        except (TypeError, ValueError) as error:
            warnings.warn(f"rm_convert_model: left {name or 'the model'} ({type(block).__name__}) as it is: "
                          f"{error}", stacklevel=3)
            return block

    def walk(module, prefix):
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if _is_basic_block(child):
                setattr(module, name, plain(child, path))
            else:
                walk(child, path)

    if _is_basic_block(model):
        return plain(model, "")
    walk(model, "")
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
