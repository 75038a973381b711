"""A trained model in the form inference runs fastest: BatchNorm folded into its convolutions, channels_last.

In eval mode a BatchNorm2d is a fixed affine map per channel, so one that follows a convolution whose
output nothing else reads folds into that convolution's weight and bias (torch.fx finds the pairs in the
traced backbone; fuse_conv_bn_eval does the maths): one pass over the feature maps less per BatchNorm.
channels_last is the layout oneDNN's and cuDNN's convolution kernels prefer. Same function: the outputs
differ by float rounding only (tests/test_inference_form.py bounds it; speed in benchmarks/README.md).
Used by classify, detect and monitor; training, `predict` and `export` keep the model as trained.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn


def fold_batchnorm(backbone: nn.Module) -> nn.Module:
    """A copy of the eval-mode `backbone` with every conv -> BatchNorm pair folded into one convolution.

    A backbone torch.fx cannot trace (a custom block with data-dependent control flow) is returned as it
    is, with a warning naming why: it computes the same, unfolded.
    """
    if backbone.training:
        raise ValueError("fold_batchnorm needs an eval-mode module (BatchNorm's batch statistics cannot be folded)")
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(backbone)  # works on a deep copy: the trained module is left as it is
    except Exception as error:  # torch.fx's trace errors have no common base class
        warnings.warn(f"BatchNorm not folded into the convolutions ({type(error).__name__}: {error}); the "
                      "backbone runs unfolded (same results, slower)", stacklevel=2)
        return backbone


def inference_form(model: nn.Module) -> nn.Module:
    """`model` (an eval-mode AudioClassifier) with its backbone folded and in channels_last, in place."""
    model.backbone = fold_batchnorm(model.backbone)
    return model.to(memory_format=torch.channels_last)
