"""Parameter and multiply–accumulate counts.

The counter is :class:`torch.utils.flop_counter.FlopCounterMode`, a dispatcher-level mode: it sees every matrix
multiplication and convolution that actually runs (``mm``, ``bmm``, ``addmm``, ``baddbmm``, convolutions,
scaled-dot-product attention), wherever it is written: inside ``torch.no_grad``, autograd Functions, einsum, the
``@`` operator. So SOFT's landmark kernels and all 20 Newton–Schulz iterations (2 m×m×m products each), SeT's
Nyström embedding and root, the row and column sums of its streamed Sinkhorn (matrix–vector products) and its
plan-weighted aggregations, are counted. Element-wise work (norms, activations, exponentials, pooling) is not, as
in fvcore and the papers' tables. MACs = FLOPs / 2. tests/test_flops_by_hand.py holds the counts of
``setformer_mini`` and ``soft_tiny`` to sums written out by hand from their shapes.

Work done once per call, not per image (SeT's Nyström root depends on the parameters alone) makes a batch's
FLOPs less than batch × one image's: ``sofa bench models`` counts the whole batch it times.

Parameters need no forward pass: :func:`create_on_meta` builds a model's structure on the meta device, without
memory and without running its weight initialisation.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["count_params", "count_macs", "macs_by_module", "flop_counter", "model_macs", "create_on_meta"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class _SkipMetaWrites(TorchDispatchMode):
    """Returns ``self`` for in-place writes to a meta tensor (``uniform_``, ``erfinv_``, ``mul_``, ``copy_``, ...).

    A meta tensor holds no values, so such a write has nothing to compute and keeps its shape, dtype and
    strides; yet torch runs the meta versions of the random and arithmetic ops the weight initialisers use as
    Python decompositions, which makes initialisation most of the time of a build on the meta device. Writes that
    change the tensor's metadata (``resize_``, ``set_`` and the views tagged ``inplace_view``: ``t_``,
    ``squeeze_``, ``as_strided_``, ...) run as usual.
    """

    _METADATA_WRITES = (torch.ops.aten.resize_, torch.ops.aten.set_)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        arguments = func._schema.arguments
        if (
            args
            and isinstance(args[0], torch.Tensor)
            and args[0].is_meta
            and arguments
            and arguments[0].alias_info is not None
            and arguments[0].alias_info.is_write
            and torch.Tag.inplace_view not in func.tags
            and func.overloadpacket not in self._METADATA_WRITES
        ):
            return args[0]
        return func(*args, **(kwargs or {}))


def create_on_meta(name: str, **kwargs) -> nn.Module:
    """Registered model ``name`` on the meta device, its weight initialisation skipped: every parameter and
    buffer with its shape and dtype but no memory and no values, for counting parameters or reading the
    architecture (all the models in a second or so)."""
    from sofa.models import create_model

    with torch.device("meta"), _SkipMetaWrites():
        return create_model(name, **kwargs)


def _extra_formulas() -> Dict:
    """Formulas the stock counter lacks: the CPU fused attention kernels (their GPU siblings are counted)."""
    from torch.utils.flop_counter import sdpa_flop_count

    aten = torch.ops.aten

    def sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    ops = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")
    formulas = {getattr(aten, n): sdpa for n in ops if hasattr(aten, n)}
    formulas[aten.convolution_backward] = conv_backward_flops
    mkldnn = torch.ops.mkldnn
    for name in ("_convolution_pointwise", "_convolution_pointwise_"):
        if hasattr(mkldnn, name):
            formulas[getattr(mkldnn, name)] = onednn_conv_flops
    return formulas


def onednn_conv_flops(*args, out_shape=None, **kwargs) -> int:
    """FLOPs of oneDNN's fused convolution (``mkldnn::_convolution_pointwise``, its ``.binary`` form and the
    in-place ``_convolution_pointwise_.binary``): the convolution's own, as for ``aten.convolution``; the post-op
    (an activation, or the sum into ``other``) is element-wise and not counted. sofa's fast CPU paths run their
    GEMMs through it (``sofa.ops.linear``: a Linear as a 1×1 convolution, with GELU fused into the MLP's first);
    the stock counter has no formula for it and would count them as nothing. The forms differ in where the weight
    is: (X, W, B, padding, stride, dilation, groups, ...) or, with a second operand, (X|other, other|X, W, B,
    padding, stride, dilation, groups, ...): in the first, position 6 holds the groups (an int)."""
    from torch.utils.flop_counter import conv_flop_count

    binary = not isinstance(args[6], int)
    x_shape, w_shape = (args[1], args[2]) if binary else (args[0], args[1])
    return conv_flop_count(list(x_shape), list(w_shape), list(out_shape), False)


def conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    groups,
    output_mask,
    out_shape=None,
) -> int:
    """FLOPs of a convolution's backward: the input's gradient (a transposed convolution of the output's gradient,
    as many FLOPs as the forward) and the weight's (a correlation of input and output gradient, again as many).
    The stock formula (torch 2.x ``conv_backward_flop``) counts the weight's gradient of a grouped convolution as
    if every output channel read every input channel: ``groups`` times too much (a 64-channel depthwise filter's
    backward 64× its forward); here it is divided by ``groups``."""
    from torch.utils.flop_counter import conv_flop_count

    def t(shape):
        return [shape[1], shape[0]] + list(shape[2:])

    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, list(x_shape), not transposed)
    if output_mask[1]:
        flops += conv_flop_count(t(x_shape), t(grad_out_shape), t(w_shape), transposed) // groups
    return flops


def flop_counter(**kwargs):
    """A :class:`~torch.utils.flop_counter.FlopCounterMode` that also counts CPU fused attention, and counts the
    algorithms' own products: inside it the ``SOFA_ONE_PASS`` switch is on, so every op runs its one-pass form
    (SOFT's kernel once, not the streamed inference path that builds it twice to stay in the cache: 1.4% more
    in soft_tiny; the PoolFormer block's MLP as convolutions the counter sees, not the fused custom operator,
    whose inside no dispatch mode sees). oneDNN's fused convolution, which sofa's fast linears run through with
    the switch off, has a formula (:func:`onednn_conv_flops`) so that it is counted either way."""
    from torch.utils.flop_counter import FlopCounterMode

    from sofa import switches

    class _Counter(FlopCounterMode):
        def __enter__(self):
            self._one_pass = switches.ONE_PASS.override(True)
            self._one_pass.__enter__()
            return super().__enter__()

        def __exit__(self, *exc):
            try:
                return super().__exit__(*exc)
            finally:
                self._one_pass.__exit__(None, None, None)

    return _Counter(display=False, custom_mapping=_extra_formulas(), **kwargs)


def _input(model: nn.Module, input_size: Union[int, Tuple[int, ...]], batch: int, device, dtype) -> torch.Tensor:
    if isinstance(input_size, int):
        input_size = (3, input_size, input_size)
    if len(input_size) == 2:
        input_size = (3, *input_size)
    return torch.randn(batch, *input_size, device=device, dtype=dtype)


@torch.no_grad()
def count_macs(
    model: nn.Module,
    input_size: Union[int, Tuple[int, ...]] = 224,
    batch: int = 1,
    device: Optional[Union[str, torch.device]] = None,
    x: Optional[torch.Tensor] = None,
) -> int:
    """Multiply–accumulates of one forward pass per image (eval mode), at ``input_size`` ((C,) H, W or an int).
    Work done once per call (SeT's Nyström root) is shared among the ``batch`` images."""
    was_training = model.training
    model.eval()
    p = next(model.parameters(), None)
    device = device or (p.device if p is not None else "cpu")
    if x is None:
        x = _input(model, input_size, batch, device, torch.float32)
    try:
        with flop_counter() as counter:
            model(x)
    finally:
        model.train(was_training)
    first = x[0] if isinstance(x, (tuple, list)) else x  # a pair of documents for two-tower models
    return counter.get_total_flops() // 2 // first.shape[0]


@torch.no_grad()
def macs_by_module(
    model: nn.Module, input_size: Union[int, Tuple[int, ...]] = 224, depth: int = 2
) -> Dict[str, Dict[str, int]]:
    """{module name: {op: MACs}} for modules up to ``depth`` levels deep (batch 1)."""
    model.eval()
    x = _input(model, input_size, 1, next(model.parameters()).device, torch.float32)
    with flop_counter(depth=depth) as counter:
        model(x)
    return {mod: {str(op): n // 2 for op, n in ops.items()} for mod, ops in counter.get_flop_counts().items()}


@torch.no_grad()
def model_macs(name: str, input_size: Union[int, Tuple[int, ...]] = 224, per_block: bool = True, **kwargs) -> int:
    """MACs of registered model ``name`` for one image.

    With ``per_block`` (fast) the counter runs on a copy with one block per stage, and each stage's remaining
    blocks are added as copies of the measured one: every block of a stage sees the same input shape, so the
    count is the same as measuring the full model (tested), at a fraction of the time for deep models.
    A sequence model (one with ``example_input()``, e.g. the LRA classifiers) is counted whole on its own
    example input; ``input_size`` does not apply to it.
    """
    from sofa.models import create_model

    probe = create_on_meta(name, **kwargs)
    if hasattr(probe, "example_input"):
        model = create_model(name, **kwargs)
        return count_macs(model, x=model.example_input())
    full = create_model(name, **kwargs) if not per_block else None
    if full is not None:
        return count_macs(full, input_size)
    depths = tuple(probe.depths)
    small = create_model(name, **{**kwargs, "depths": (1,) * len(depths)}).eval()
    x = _input(small, input_size, 1, "cpu", torch.float32)
    with flop_counter(depth=6) as counter:
        small(x)
    total = counter.get_total_flops()
    counts = counter.get_flop_counts()
    root = type(small).__name__
    for i, d in enumerate(depths):
        block = counts.get(f"{root}.stages.{i}.blocks.0", {})
        total += (d - 1) * sum(block.values())
    return total // 2
