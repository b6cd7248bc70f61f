"""The LCA paper's networks and a few tiny ones, referenced from configs as ``"lca_cli.training.zoo.models:NAME"``.

Every factory returns a fresh :class:`torch.nn.Module` whose initial weights depend only on ``seed``:
the seed is applied inside :func:`torch.random.fork_rng`, so building a model never disturbs the
caller's global RNG state. Only keyword arguments that TOML can express (str, int, float, bool, lists)
are taken. Modules are named so that ``named_parameters()`` reads well (``fc1.weight``,
``layer2.0.conv1.weight``, ...), since those names label LCA per tensor and per layer.

Parameter counts (measured by the tests):

* ``fc_mnist()``: 84,060 (784-100-50-10, as in the paper)
* ``lenet()``: 431,080 (conv20-conv50-fc500-fc10, 5x5 valid convolutions, 28x28 input)
* ``resnet20()``: 273,066, the paper's count (``variant="lca"``, see :func:`resnet20`)
* ``resnet20(variant="a")``: 269,722 (He et al.'s option A: parameter-free shortcuts, no conv biases)
* ``allcnn()``: 1,369,738 (All-CNN-C, 3x32x32 input)
* ``small_cnn()``: 1,572 (for fast tests)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lca_cli.errors import ConfigError

__all__ = [
    "allcnn",
    "fc_mnist",
    "lenet",
    "linear_regression",
    "mlp",
    "resnet20",
    "small_cnn",
]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}


# --------------------------------------------------------------------------------------------------------
# helpers


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Run ``build`` with the CPU RNG seeded by ``seed``, restoring the global RNG state afterwards."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} must be an integer")
    # devices=[]: models are built on the CPU, so only the CPU generator is forked (and no warning is
    # raised on machines with several GPUs).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _int(value: object, name: str, source: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{source}: {name}={value!r} must be an integer >= {minimum}")
    return value


def _int_list(value: object, name: str, source: str, allow_empty: bool = True) -> list[int]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigError(f"{source}: {name}={value!r} must be a list of positive integers")
    items = [_int(v, name, source) for v in value]
    if not items and not allow_empty:
        raise ConfigError(f"{source}: {name} must not be empty")
    return items


def _activation(name: object, source: str) -> Callable[[], nn.Module]:
    if not isinstance(name, str) or name not in _ACTIVATIONS:
        raise ConfigError(f"{source}: activation={name!r} is not one of {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]


def _probability(value: object, name: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{source}: {name}={value!r} must be a number in [0, 1)")
    return float(value)


def _he_init(module: nn.Module) -> None:
    """He-normal (fan-in, ReLU gain) weights and zero biases for every conv / linear layer of ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------------
# fully connected


def mlp(
    in_features: int = 64,
    hidden: Sequence[int] = (32,),
    out_features: int = 10,
    activation: str = "relu",
    dropout: float = 0.0,
    init: str = "default",
    seed: int = 0,
) -> nn.Module:
    """A multi-layer perceptron: flatten, then Linear / activation (/ dropout) layers, then a Linear.

    Modules are named ``flatten``, ``fc1``, ``act1``, (``drop1``,) ``fc2``, ...; the last Linear has no
    activation (it outputs logits). The leading ``flatten`` lets image batches (N, C, H, W) be fed
    directly. Dropout layers exist only when ``dropout > 0``; LCA evaluation must run the model in
    ``eval()`` mode so that they are off.

    Args:
        in_features: Input size (after flattening).
        hidden: Width of each hidden layer, in order; empty for a single Linear.
        out_features: Output size.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"gelu"``.
        dropout: Dropout probability after each hidden activation; 0 adds no dropout layer.
        init: ``"default"`` (PyTorch's Linear initialisation) or ``"he"`` (He-normal weights, zero biases,
            as the LCA authors' code).
        seed: Seed of the initial weights.

    Returns:
        The module (``nn.Sequential``).

    Raises:
        ConfigError: An argument is invalid.

    """
    source = "mlp"
    widths = [
        _int(in_features, "in_features", source),
        *_int_list(hidden, "hidden", source),
        _int(out_features, "out_features", source),
    ]
    act = _activation(activation, source)
    p = _probability(dropout, "dropout", source)
    if init not in ("default", "he"):
        raise ConfigError(f"{source}: init={init!r} is not one of 'default', 'he'")

    def build() -> nn.Module:
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        for k in range(1, len(widths)):
            layers[f"fc{k}"] = nn.Linear(widths[k - 1], widths[k])
            if k < len(widths) - 1:
                layers[f"act{k}"] = act()
                if p > 0:
                    layers[f"drop{k}"] = nn.Dropout(p)
        net = nn.Sequential(layers)
        if init == "he":
            _he_init(net)
        return net

    return _seeded(seed, build)


def linear_regression(in_features: int = 8, out_features: int = 1, seed: int = 0) -> nn.Module:
    """A single affine layer for least-squares regression; parameters ``linear.weight``, ``linear.bias``.

    With an MSE loss the loss is quadratic in the parameters, so Simpson's rule gives LCA exactly.

    Args:
        in_features: Number of input features.
        out_features: Number of regression targets.
        seed: Seed of the initial weights (PyTorch's Linear initialisation).

    Returns:
        The module (``nn.Sequential`` with one child named ``linear``).

    Raises:
        ConfigError: An argument is invalid.

    """
    source = "linear_regression"
    fan_in = _int(in_features, "in_features", source)
    fan_out = _int(out_features, "out_features", source)
    return _seeded(seed, lambda: nn.Sequential(OrderedDict(linear=nn.Linear(fan_in, fan_out))))


def fc_mnist(seed: int = 0, activation: str = "relu", dropout: float = 0.0) -> nn.Module:
    """The paper's MNIST fully connected net: 784-100-50-10 with ReLU, 84,060 parameters.

    He-normal weights and zero biases, like the LCA authors' code. Takes (N, 784) or (N, 1, 28, 28).

    Args:
        seed: Seed of the initial weights.
        activation: Hidden activation (see :func:`mlp`); the paper used ``"relu"``.
        dropout: Dropout probability after each hidden activation (the paper used none).

    Returns:
        The module (see :func:`mlp` for the names: ``fc1``, ``act1``, ``fc2``, ``act2``, ``fc3``).

    """
    return mlp(784, [100, 50], 10, activation=activation, dropout=dropout, init="he", seed=seed)


# --------------------------------------------------------------------------------------------------------
# convolutional


def lenet(
    seed: int = 0,
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: int = 28,
    channels: Sequence[int] = (20, 50),
    hidden: int = 500,
) -> nn.Module:
    """The modified LeNet used on MNIST (28x28 grey images).

    Architecture (defaults), 431,080 parameters::

        conv1  Conv2d(1, 20, 5x5, no padding)   28x28 -> 24x24     520 params
        act1   ReLU; pool1 MaxPool 2x2          -> 12x12
        conv2  Conv2d(20, 50, 5x5, no padding)  -> 8x8          25,050 params
        act2   ReLU; pool2 MaxPool 2x2          -> 4x4
        flatten                                 800 features
        fc1    Linear(800, 500); act3 ReLU                     400,500 params
        fc2    Linear(500, 10)  (logits)                         5,010 params

    This is the classic Caffe LeNet. The LCA authors' code used a variant with 20 and 40 filters,
    'same' padding, a 400-unit hidden layer and dropout; pass ``channels=[20, 40], hidden=400`` for
    its widths (the padding and parameter count still differ). He-normal weights, zero biases.

    Args:
        seed: Seed of the initial weights.
        in_channels: Input channels.
        num_classes: Number of outputs.
        input_size: Input height and width (>= 16 for two conv/pool stages).
        channels: Output channels of the two convolutions.
        hidden: Width of the hidden fully connected layer.

    Returns:
        The module (``nn.Sequential``).

    Raises:
        ConfigError: An argument is invalid or the input is too small.

    """
    source = "lenet"
    c_in = _int(in_channels, "in_channels", source)
    n_out = _int(num_classes, "num_classes", source)
    size = _int(input_size, "input_size", source)
    c1, c2 = _pair(_int_list(channels, "channels", source), "channels", source)
    width = _int(hidden, "hidden", source)
    spatial = ((size - 4) // 2 - 4) // 2
    if spatial < 1:
        raise ConfigError(f"{source}: input_size={size} is too small for two 5x5 conv + 2x2 pool stages (>= 16)")

    def build() -> nn.Module:
        net = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(c_in, c1, 5),
                act1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(c1, c2, 5),
                act2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(c2 * spatial * spatial, width),
                act3=nn.ReLU(),
                fc2=nn.Linear(width, n_out),
            )
        )
        _he_init(net)
        return net

    return _seeded(seed, build)


def _pair(values: list[int], name: str, source: str) -> tuple[int, int]:
    if len(values) != 2:
        raise ConfigError(f"{source}: {name} must list exactly 2 integers, got {values}")
    return values[0], values[1]


class _OptionAShortcut(nn.Module):
    """He et al.'s option-A shortcut: strided subsampling and zero-padded extra channels, no parameters."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample by ``stride`` and append ``extra_channels`` zero channels (split before and after)."""
        x = x[:, :, :: self.stride, :: self.stride]
        before = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))


class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, variant: str) -> None:
        super().__init__()
        bias = variant == "lca"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module
        if stride == 1 and c_in == c_out:
            self.shortcut = nn.Identity()
        elif variant == "lca":
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=True)
        else:
            self.shortcut = _OptionAShortcut(stride, c_out - c_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (built by :func:`resnet20`)."""

    def __init__(self, in_channels: int, num_classes: int, variant: str) -> None:
        super().__init__()
        bias = variant == "lca"
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(16)
        stages: list[nn.Sequential] = []
        c_in = 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [_BasicBlock(c_in if k == 0 else c_out, c_out, stride if k == 0 else 1, variant) for k in range(3)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch (N, C, H, W)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.pool(out), 1))


def resnet20(seed: int = 0, num_classes: int = 10, in_channels: int = 3, variant: str = "lca") -> nn.Module:
    """ResNet-20 for 32x32 images (He et al. 2016, section 4.2): 3 stages x 3 basic blocks, 16/32/64 channels.

    conv3x3(16)-BN-ReLU, then stages ``layer1`` (16 channels, 32x32), ``layer2`` (32, 16x16) and
    ``layer3`` (64, 8x8) of three basic blocks each (conv3x3-BN-ReLU-conv3x3-BN, add the shortcut,
    ReLU), global average pooling and ``fc`` Linear(64, num_classes). BatchNorm everywhere after a
    3x3 conv (running statistics are buffers, not parameters).

    Two variants, which differ only in parameter count and shortcut:

    * ``"lca"`` (default), **273,066 parameters**, the count the LCA paper reports. Measured: He et al.'s
      option A gives 269,722, so the paper's network is not option A. The 3,344 extra parameters are
      exactly (a) a bias on each of the 19 3x3 convolutions (688) and (b) a 1x1 projection convolution
      with bias, no BatchNorm, on the two downsampling shortcuts (16*32+32 + 32*64+64 = 2,656). That is
      the Keras ``cifar10_resnet`` example's ResNet20v1 (Keras convolutions have biases by default),
      which the LCA authors' code follows; Keras reports it as 273,066 trainable parameters (plus
      1,376 non-trainable BatchNorm statistics).
    * ``"a"``: option A of He et al., **269,722 parameters**: convolutions without bias, parameter-free
      shortcuts that subsample with stride 2 and zero-pad the new channels.

    He-normal conv / linear weights and zero biases; BatchNorm weight 1, bias 0.

    Args:
        seed: Seed of the initial weights.
        num_classes: Number of outputs.
        in_channels: Input channels (3 for CIFAR-10).
        variant: ``"lca"`` or ``"a"`` (see above).

    Returns:
        The module; parameter names like ``conv1.weight``, ``layer2.0.shortcut.weight``, ``fc.bias``.

    Raises:
        ConfigError: An argument is invalid.

    """
    source = "resnet20"
    n_out = _int(num_classes, "num_classes", source)
    c_in = _int(in_channels, "in_channels", source)
    if variant not in ("lca", "a"):
        raise ConfigError(f"{source}: variant={variant!r} is not one of 'lca', 'a'")

    def build() -> nn.Module:
        net = ResNet20(c_in, n_out, variant)
        _he_init(net)
        return net

    return _seeded(seed, build)


def allcnn(
    seed: int = 0,
    in_channels: int = 3,
    num_classes: int = 10,
    width_scale: float = 1.0,
    batch_norm: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """All-CNN-C (Springenberg et al. 2015, "Striving for simplicity"), for 32x32 images.

    Layers (``c1 = round(96 * width_scale)``, ``c2 = round(192 * width_scale)``, at least 1)::

        conv1 3x3 c1, conv2 3x3 c1, conv3 3x3 c1 stride 2         32 -> 16
        conv4 3x3 c2, conv5 3x3 c2, conv6 3x3 c2 stride 2         16 -> 8
        conv7 3x3 c2 (no padding)                                  8 -> 6
        conv8 1x1 c2, conv9 1x1 num_classes, global average pool  -> logits

    ReLU after every convolution but the last (conv9 gives the logits). With the defaults:
    1,369,738 parameters. The original trains with dropout 0.5 after each strided convolution (and 0.2
    on the input); ``dropout`` adds the former (0 adds none). ``batch_norm=True`` puts a BatchNorm
    after each non-final convolution, as the LCA authors' code did. He-normal weights, zero biases.

    Args:
        seed: Seed of the initial weights.
        in_channels: Input channels.
        num_classes: Number of outputs.
        width_scale: Multiplies every width (e.g. 0.1 for fast tests).
        batch_norm: Add BatchNorm2d after each convolution except the last.
        dropout: Dropout probability after the two strided convolutions.

    Returns:
        The module (``nn.Sequential`` named ``conv1``, ``act1``, ... ``conv9``, ``pool``, ``flatten``).

    Raises:
        ConfigError: An argument is invalid.

    """
    source = "allcnn"
    c_in = _int(in_channels, "in_channels", source)
    n_out = _int(num_classes, "num_classes", source)
    if isinstance(width_scale, bool) or not isinstance(width_scale, int | float) or not width_scale > 0:
        raise ConfigError(f"{source}: width_scale={width_scale!r} must be a number > 0")
    p = _probability(dropout, "dropout", source)
    c1 = max(1, round(96 * width_scale))
    c2 = max(1, round(192 * width_scale))
    # (out_channels, kernel, stride, padding)
    spec = [
        (c1, 3, 1, 1),
        (c1, 3, 1, 1),
        (c1, 3, 2, 1),
        (c2, 3, 1, 1),
        (c2, 3, 1, 1),
        (c2, 3, 2, 1),
        (c2, 3, 1, 0),
        (c2, 1, 1, 0),
        (n_out, 1, 1, 0),
    ]

    def build() -> nn.Module:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        prev = c_in
        for k, (c, kernel, stride, pad) in enumerate(spec, start=1):
            layers[f"conv{k}"] = nn.Conv2d(prev, c, kernel, stride=stride, padding=pad)
            prev = c
            if k == len(spec):
                break
            if batch_norm:
                layers[f"bn{k}"] = nn.BatchNorm2d(c)
            layers[f"act{k}"] = nn.ReLU()
            if stride == 2 and p > 0:
                layers[f"drop{k}"] = nn.Dropout(p)
        layers["pool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        net = nn.Sequential(layers)
        _he_init(net)
        return net

    return _seeded(seed, build)


def small_cnn(
    in_channels: int = 1,
    size: int = 12,
    channels: Sequence[int] = (4, 8),
    classes: int = 4,
    hidden: int = 16,
    seed: int = 0,
) -> nn.Module:
    """A tiny ReLU + max-pool CNN for fast tests (1,572 parameters with the defaults).

    For each entry of ``channels``: 3x3 conv (padding 1) ``conv{k}``, ReLU ``act{k}``, 2x2 max-pool
    ``pool{k}``; then ``flatten``, ``fc1`` Linear to ``hidden`` units + ReLU (omitted when
    ``hidden == 0``) and ``fc2`` (or ``fc1`` without hidden layer) to ``classes`` logits. Pairs with
    :func:`lca_cli.training.zoo.data.synthetic_images`. PyTorch's default initialisation.

    Args:
        in_channels: Input channels.
        size: Input height and width (must stay >= 1 after the pools).
        channels: Output channels of each conv stage.
        classes: Number of outputs.
        hidden: Width of the hidden fully connected layer; 0 for none.
        seed: Seed of the initial weights.

    Returns:
        The module (``nn.Sequential``).

    Raises:
        ConfigError: An argument is invalid or the input is too small.

    """
    source = "small_cnn"
    c_in = _int(in_channels, "in_channels", source)
    spatial = _int(size, "size", source)
    widths = _int_list(channels, "channels", source, allow_empty=False)
    n_out = _int(classes, "classes", source)
    width = _int(hidden, "hidden", source, minimum=0)
    for _ in widths:
        spatial //= 2
    if spatial < 1:
        raise ConfigError(f"{source}: size={size} is too small for {len(widths)} 2x2 max-pools")

    def build() -> nn.Module:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        prev = c_in
        for k, c in enumerate(widths, start=1):
            layers[f"conv{k}"] = nn.Conv2d(prev, c, 3, padding=1)
            layers[f"act{k}"] = nn.ReLU()
            layers[f"pool{k}"] = nn.MaxPool2d(2)
            prev = c
        layers["flatten"] = nn.Flatten()
        features = prev * spatial * spatial
        if width:
            layers["fc1"] = nn.Linear(features, width)
            layers[f"act{len(widths) + 1}"] = nn.ReLU()
            layers["fc2"] = nn.Linear(width, n_out)
        else:
            layers["fc1"] = nn.Linear(features, n_out)
        return nn.Sequential(layers)

    return _seeded(seed, build)
