"""A trained model in the form inference runs fastest: BatchNorm folded into its convolutions, channels_last.

In eval mode a BatchNorm2d is a fixed affine map per channel, so one that follows a convolution whose
output nothing else reads folds into that convolution's weight and bias (torch.fx finds the pairs in the
traced backbone; fuse_conv_bn_eval does the maths): one pass over the feature maps less per BatchNorm.
channels_last is the layout oneDNN's and cuDNN's convolution kernels prefer. Same function: the outputs
differ by float rounding only (tests/test_inference_form.py bounds it; speed in benchmarks/README.md).
Used by classify, detect, monitor and tune-detect; training, `predict` and `export` keep the model as trained.
"""
from __future__ import annotations

import warnings
from collections import Counter

import torch
from torch import fx, nn


def fold_batchnorm(backbone: nn.Module) -> nn.Module:
    """A copy of the eval-mode `backbone` with every conv -> BatchNorm pair folded into one convolution.

    A backbone torch.fx cannot trace (a custom block with data-dependent control flow), or one that calls a
    convolution or BatchNorm of such a pair at more than one place (folding replaces the module at every
    call, which would change the other calls), is returned as it is, with a warning naming why: it computes
    the same, unfolded.
    """
    if backbone.training:
        raise ValueError("fold_batchnorm needs an eval-mode module (BatchNorm's batch statistics cannot be folded)")
    from torch.fx.experimental.optimization import fuse

    try:
        traced = fx.symbolic_trace(backbone)  # shares backbone's modules: fuse works on a deep copy of it
        shared = shared_pair_modules(traced)
        if not shared:
            return fuse(traced, no_trace=True)  # a deep copy: the trained module is left as it is
        reason = f"{', '.join(shared)} called at more than one place"
    except Exception as error:  # torch.fx's trace errors have no common base class
        reason = f"{type(error).__name__}: {error}"
    warnings.warn(f"BatchNorm not folded into the convolutions ({reason}); the backbone runs unfolded (same "
                  "results, slower)", stacklevel=2)
    return backbone


def shared_pair_modules(traced: fx.GraphModule) -> list[str]:
    """The conv and BatchNorm modules of conv -> BatchNorm pairs that the graph calls more than once."""
    modules = dict(traced.named_modules())
    calls = Counter(node.target for node in traced.graph.nodes if node.op == "call_module")
    shared = set()
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d) or not node.args:
            continue
        source = node.args[0]
        if isinstance(source, fx.Node) and source.op == "call_module" and isinstance(modules[source.target],
                                                                                     nn.Conv2d):
            shared.update(name for name in (source.target, node.target) if calls[name] > 1)
    return sorted(shared)


def inference_form(model: nn.Module) -> nn.Module:
    """`model` (an eval-mode AudioClassifier) with its backbone folded and in channels_last, in place."""
    model.backbone = fold_batchnorm(model.backbone)
    return model.to(memory_format=torch.channels_last)
