"""Batched forward of many clients' copies of a model, the clients folded into the channels.

The vectorized engine stacks every trainable parameter along a first dimension, one row per client.
``vmap(functional_call)`` runs such a model, but on a CPU its per-client convolutions measured slower
than training one client at a time. Here the ``K`` clients' activations are laid out *folded*:
``[B, K * C, ...]``, client ``k``'s channels at ``k * C`` to ``(k + 1) * C``, so that

- a convolution is one ``conv2d`` with ``groups = K * groups`` over the stacked weights reshaped to
  ``[K * out, in / groups, kh, kw]`` (client ``k``'s filters see only client ``k``'s channels);
- a GroupNorm of ``G`` groups is one ``group_norm`` of ``K * G`` groups (a group never spans clients);
- ReLU, pooling and flattening act per channel, so they need nothing new;
- a linear layer is one batched matrix product over the clients.

Each layer type has its batched implementation in ``BATCHED_LAYERS``; ``unsupported_layer`` walks a
model's modules and names the first one without an entry (the engine then falls back to ``vmap``).
Only the exact registered types are accepted: a subclass may override ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from fedml.errors import NotSupportedError
from fedml.model.cnn import CNN, CifarCNN
from fedml.model.linear import MLP, LogisticRegression
from fedml.model.resnet import BasicBlock, ResNet, _PadShortcut


class Folded:
    """One batched forward pass: the stacked parameters and the number of clients ``K``.

    Parameters
    ----------
    params
        Trainable parameters by their full name in the model, each with the clients as first dimension.
    clients
        ``K``, the rows of every stacked parameter.
    workspace
        Gradient buffers kept from one call to the next (see ``gradient_buffer``); ``None``: none.

    """

    def __init__(
        self,
        params: Mapping[str, torch.Tensor],
        clients: int,
        workspace: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.params = params
        self.clients = clients
        self.workspace = workspace
        self._used: set[str] = set()

    def __call__(self, module: nn.Module, prefix: str, h: torch.Tensor) -> torch.Tensor:
        """Run ``module`` (named ``prefix`` in the model) on the folded activations ``h``."""
        implementation = _implementation(type(module))
        if implementation is None:
            raise NotSupportedError(
                f"{prefix.rstrip('.') or 'the model'}: {type(module).__name__} has no batched implementation"
            )
        return implementation(self, module, prefix, h)

    def param(self, prefix: str, name: str) -> torch.Tensor | None:
        """Return the stacked parameter ``name`` of the module at ``prefix`` (``None`` if it has none)."""
        return self.params.get(f"{prefix}{name}")

    def gradient_buffer(self, name: str, like: torch.Tensor) -> torch.Tensor | None:
        """Return a reused buffer shaped as ``like`` for the gradient of parameter ``name``, if any.

        A fresh tensor of tens of MB per step costs the kernel's page faults every time (allocations
        that large are mapped and unmapped by the C allocator): for the FedAvg CNN's first linear layer
        at 10 clients they took about a quarter of the step. A buffer serves one use per forward pass; a
        module called twice gets a fresh tensor for its second use, so the two gradients stay apart.
        """
        if self.workspace is None or name in self._used:
            return None
        self._used.add(name)
        return reused_buffer(self.workspace, name, like)

    def fold_image(self, h: torch.Tensor, image_shape: tuple[int, ...]) -> torch.Tensor:
        """Reshape folded inputs ``[B, K * prod(image_shape)]`` (or images) to ``[B, K * C, H, W]``."""
        channels, *spatial = image_shape
        return h.reshape(h.shape[0], self.clients * channels, *spatial)


def reused_buffer(workspace: dict[str, torch.Tensor], name: str, like: torch.Tensor) -> torch.Tensor:
    """Return ``workspace[name]``'s first ``len(like)`` rows, (re)made contiguous like ``like`` if needed.

    Rows are clients: when clients finish, the buffer's prefix serves the fewer that remain.
    """
    buffer, rows = workspace.get(name), like.shape[0]
    if buffer is None or buffer.shape[1:] != like.shape[1:] or buffer.shape[0] < rows:
        buffer = torch.empty_like(like, memory_format=torch.contiguous_format)
        workspace[name] = buffer
    return buffer if buffer.shape[0] == rows else buffer[:rows]


BatchedLayer = Callable[[Folded, Any, str, torch.Tensor], torch.Tensor]
"""``fn(folded, module, prefix, h)``: the module's output for folded input ``h`` (prefix ends in a dot)."""

BATCHED_LAYERS: dict[type[nn.Module], BatchedLayer] = {}
"""Module type -> its batched implementation; a model batches when every module's type is here."""

BATCHED_LAYERS_BY_NAME: dict[str, BatchedLayer] = {}
"""``"module.QualifiedName"`` -> batched implementation, for types of optional packages (torchvision's
MobileNetV2 blocks) that are matched without importing the package."""

LAYER_CHECKS: dict[type[nn.Module], Callable[[Any], str | None]] = {}
"""Module type -> why a module of that type cannot batch (``None``: it can), for options not covered."""


def register_batched_layer(
    module_type: type[nn.Module], fn: BatchedLayer, check: Callable[[Any], str | None] | None = None
) -> None:
    """Make modules of exactly ``module_type`` run batched by ``fn``; ``check`` rejects settings it lacks.

    Examples
    --------
    >>> class Square(nn.Module):
    ...     def forward(self, x):
    ...         return x * x
    >>> register_batched_layer(Square, lambda folded, module, prefix, h: h * h)
    >>> unsupported_layer(nn.Sequential(nn.Conv2d(1, 2, 3), Square())) is None
    True

    """
    BATCHED_LAYERS[module_type] = fn
    if check is not None:
        LAYER_CHECKS[module_type] = check


def _implementation(module_type: type[nn.Module]) -> BatchedLayer | None:
    found = BATCHED_LAYERS.get(module_type)
    if found is None:
        found = BATCHED_LAYERS_BY_NAME.get(f"{module_type.__module__}.{module_type.__qualname__}")
    return found


def unsupported_layer(model: nn.Module) -> str | None:
    """Return the first module of ``model`` that cannot run batched, described in a few words, or ``None``."""
    for name, module in model.named_modules():
        label = f"{name or 'the model'} ({type(module).__name__})"
        if _implementation(type(module)) is None:
            return f"{label} has no batched implementation"
        if module._forward_hooks or module._forward_pre_hooks:
            return f"{label} has forward hooks"
        check = LAYER_CHECKS.get(type(module))
        reason = check(module) if check is not None else None
        if reason is not None:
            return f"{label} {reason}"
    return None


def batched_forward(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    workspace: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Return every client's logits ``[K, B, out]`` for stacked ``params`` and inputs ``x`` ``[K, B, ...]``.

    Client ``k``'s row equals ``functional_call(model, {n: p[k]}, (x[k],))`` up to float rounding.
    The model must pass ``unsupported_layer``. With a ``workspace`` (a dict kept between calls), the
    gradients of large linear weights are written into buffers it keeps: such a gradient is valid
    only until the next backward pass of a forward with the same workspace.

    Examples
    --------
    >>> model = CNN((1, 8, 8), 3)
    >>> params = {n: torch.stack([p.detach(), 2 * p.detach()]) for n, p in model.named_parameters()}
    >>> x = torch.randn(2, 5, 1, 8, 8)
    >>> out = batched_forward(model, params, x)
    >>> one = torch.func.functional_call(model, {n: p[1] for n, p in params.items()}, (x[1],))
    >>> out.shape, bool(torch.allclose(out[1], one, atol=1e-5))
    (torch.Size([2, 5, 3]), True)

    """
    clients, batch = x.shape[:2]
    folded = Folded(params, clients, workspace)
    # [K, B, C, ...] -> [B, K, C, ...] -> [B, K * C, ...]: client k's channels stay contiguous.
    h = x.transpose(0, 1).flatten(1, 2)
    out = folded(model, "", h)
    return out.view(batch, clients, -1).transpose(0, 1)


def _prefix(prefix: str, child: str) -> str:
    return f"{prefix}{child}."


_FRESH_OUTPUT = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.GroupNorm)
"""Layers whose folded output is a new tensor that their backward does not keep."""


def _sequential(folded: Folded, module: nn.Sequential, prefix: str, h: torch.Tensor) -> torch.Tensor:
    previous: nn.Module | None = None
    for name, child in module.named_children():
        if type(child) is nn.ReLU and type(previous) in _FRESH_OUTPUT:
            # In a Sequential only this ReLU reads that output, and nothing saved it for the backward:
            # in place, the step allocates (and faults in) one activation fewer of K clients.
            h = F.relu_(h)
        else:
            h = folded(child, _prefix(prefix, name), h)
        previous = child
    return h


def _stateless(folded: Folded, module: nn.Module, prefix: str, h: torch.Tensor) -> torch.Tensor:
    # Elementwise and per-channel layers without parameters: the folded layout is just more channels.
    return module(h)


def _conv(folded: Folded, module: nn.modules.conv._ConvNd, prefix: str, h: torch.Tensor) -> torch.Tensor:
    weight = folded.param(prefix, "weight")
    bias = folded.param(prefix, "bias")
    if weight is None:
        raise NotSupportedError(f"{prefix}weight: a frozen convolution weight is not batched")
    convolve = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 3]
    return convolve(
        h,
        weight.flatten(0, 1),
        None if bias is None else bias.flatten(),
        module.stride,
        module.padding,
        module.dilation,
        folded.clients * module.groups,
    )


def _conv_check(module: nn.modules.conv._ConvNd) -> str | None:
    if module.padding_mode != "zeros":
        return f"has padding_mode {module.padding_mode!r}"
    return _frozen(module)


def _linear(folded: Folded, module: nn.Linear, prefix: str, h: torch.Tensor) -> torch.Tensor:
    weight = folded.param(prefix, "weight")
    bias = folded.param(prefix, "bias")
    if weight is None:
        raise NotSupportedError(f"{prefix}weight: a frozen linear weight is not batched")
    batch = h.shape[0]
    columns = h.view(batch, folded.clients, -1).permute(1, 2, 0)  # [K, in, B]
    buffer = folded.gradient_buffer(f"{prefix}weight", weight)
    out = _BatchedLinear.apply(columns, weight, bias, buffer)
    return out.permute(2, 0, 1).reshape(batch, -1)  # [K, out, B] -> [B, K * out]


class _BatchedLinear(torch.autograd.Function):
    """``weight @ columns + bias`` per client, the weight's gradient written into a reused buffer.

    ``weight @ x^T`` rather than ``x @ weight^T``: the weight's gradient then comes out contiguous
    (the SGD update of a transposed gradient measured ten times slower than the matrix product).
    """

    @staticmethod
    def forward(
        ctx: Any,
        columns: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        buffer: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(columns, weight)
        ctx.buffer = buffer
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(weight, columns)
        return torch.baddbmm(bias.unsqueeze(2), weight, columns)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        columns, weight = ctx.saved_tensors
        grad_columns = None
        if ctx.needs_input_grad[0]:
            # (grad^T @ weight)^T, not weight^T @ grad: the product then reads the weight row by row
            # (1.6x faster for the FedAvg CNN's first linear layer, 10 clients at batch 10).
            grad_columns = torch.bmm(grad.transpose(1, 2), weight).transpose(1, 2)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            transposed = columns.transpose(1, 2)
            if ctx.buffer is None:
                grad_weight = torch.bmm(grad, transposed)
            else:
                grad_weight = torch.bmm(grad, transposed, out=ctx.buffer)
        grad_bias = grad.sum(dim=2) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_columns, grad_weight, grad_bias, None


def _linear_check(module: nn.Linear) -> str | None:
    return _frozen(module)


def _frozen(module: nn.Linear | nn.modules.conv._ConvNd) -> str | None:
    # A frozen parameter is not among the stacked ones, so the batched layer would leave it out.
    if not module.weight.requires_grad:
        return "has a frozen weight"
    if module.bias is not None and not module.bias.requires_grad:
        return "has a frozen bias"
    return None


def _flatten_check(module: nn.Flatten) -> str | None:
    return None if (module.start_dim, module.end_dim) == (1, -1) else "flattens other than dims 1 to -1"


def _group_norm(folded: Folded, module: nn.GroupNorm, prefix: str, h: torch.Tensor) -> torch.Tensor:
    weight = folded.param(prefix, "weight")
    bias = folded.param(prefix, "bias")
    return F.group_norm(
        h,
        folded.clients * module.num_groups,
        None if weight is None else weight.flatten(),
        None if bias is None else bias.flatten(),
        module.eps,
    )


def _group_norm_check(module: nn.GroupNorm) -> str | None:
    frozen = module.affine and not (module.weight.requires_grad and module.bias.requires_grad)
    return "has a frozen affine part" if frozen else None


def _logistic_regression(
    folded: Folded, module: LogisticRegression, prefix: str, h: torch.Tensor
) -> torch.Tensor:
    return folded(module.linear, _prefix(prefix, "linear"), h.flatten(1))


def _mlp(folded: Folded, module: MLP, prefix: str, h: torch.Tensor) -> torch.Tensor:
    return folded(module.layers, _prefix(prefix, "layers"), h)


def _cnn(folded: Folded, module: CNN, prefix: str, h: torch.Tensor) -> torch.Tensor:
    h = folded.fold_image(h, module._image_shape)
    h = folded(module.features, _prefix(prefix, "features"), h)
    return folded(module.classifier, _prefix(prefix, "classifier"), h)


def _cifar_cnn(folded: Folded, module: CifarCNN, prefix: str, h: torch.Tensor) -> torch.Tensor:
    h = folded(module.features, _prefix(prefix, "features"), h)
    return folded(module.classifier, _prefix(prefix, "classifier"), h)


def _resnet(folded: Folded, module: ResNet, prefix: str, h: torch.Tensor) -> torch.Tensor:
    h = folded.fold_image(h, module._image_shape)
    h = folded(module.stem, _prefix(prefix, "stem"), h)
    h = folded(module.blocks, _prefix(prefix, "blocks"), h)
    return folded(module.fc, _prefix(prefix, "fc"), h.mean(dim=(2, 3)))


def _basic_block(folded: Folded, module: BasicBlock, prefix: str, h: torch.Tensor) -> torch.Tensor:
    out = folded(module.conv1, _prefix(prefix, "conv1"), h)
    # In place: the GroupNorm's output and the sum are new tensors that no backward keeps.
    out = F.relu_(folded(module.norm1, _prefix(prefix, "norm1"), out))
    out = folded(module.norm2, _prefix(prefix, "norm2"), folded(module.conv2, _prefix(prefix, "conv2"), out))
    return F.relu_(out + folded(module.shortcut, _prefix(prefix, "shortcut"), h))


def _inverted_residual(folded: Folded, module: Any, prefix: str, h: torch.Tensor) -> torch.Tensor:
    out = folded(module.conv, _prefix(prefix, "conv"), h)
    return h + out if module.use_res_connect else out


def _mobilenet_v2(folded: Folded, module: Any, prefix: str, h: torch.Tensor) -> torch.Tensor:
    h = folded(module.features, _prefix(prefix, "features"), h)
    h = F.adaptive_avg_pool2d(h, (1, 1)).flatten(1)
    return folded(module.classifier, _prefix(prefix, "classifier"), h)


def _pad_shortcut(folded: Folded, module: _PadShortcut, prefix: str, h: torch.Tensor) -> torch.Tensor:
    h = h[:, :, :: module.stride, :: module.stride]
    batch, channels, height, width = h.shape
    # The new zero channels are per client: pad the channel dimension of [B, K, C, H, W].
    h = h.reshape(batch, folded.clients, channels // folded.clients, height, width)
    h = F.pad(h, (0, 0, 0, 0, module.extra // 2, module.extra - module.extra // 2))
    return h.reshape(batch, -1, height, width)


_STATELESS: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardswish,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
)
for _type in _STATELESS:
    register_batched_layer(_type, _stateless)
register_batched_layer(nn.Flatten, lambda folded, module, prefix, h: h.flatten(1), _flatten_check)
register_batched_layer(nn.Sequential, _sequential)
for _type in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_batched_layer(_type, _conv, _conv_check)
register_batched_layer(nn.Linear, _linear, _linear_check)
register_batched_layer(nn.GroupNorm, _group_norm, _group_norm_check)
register_batched_layer(LogisticRegression, _logistic_regression)
register_batched_layer(MLP, _mlp)
register_batched_layer(CNN, _cnn)
register_batched_layer(CifarCNN, _cifar_cnn)
register_batched_layer(ResNet, _resnet)
register_batched_layer(BasicBlock, _basic_block)
register_batched_layer(_PadShortcut, _pad_shortcut)
BATCHED_LAYERS_BY_NAME.update(
    {
        "torchvision.ops.misc.Conv2dNormActivation": _sequential,
        "torchvision.models.mobilenetv2.InvertedResidual": _inverted_residual,
        "torchvision.models.mobilenetv2.MobileNetV2": _mobilenet_v2,
    }
)
