"""ResNet-34 + trainable PCEN + SAM: the robust baseline (model 1 of the lineage).

Reference: ResNet/resnet34_pcen_sam_8fold.py (../shared/spec/resnet34_pcen_sam_8fold.md).
Magnitude mel (n_fft 1024, hop 320, 64 mels, 20-16000 Hz) -> trainable PCEN (alpha, delta, r;
fixed smoother s = 1/6) -> SpecAugment (freq 20, time 40) -> BatchNorm2d(1) -> ResNet-34 with a
1-channel stem, global average pooling and Linear(512, 10). SAM (rho 0.05) around AdamW (lr 1e-3,
wd 1e-2), cosine to 1e-6 over 100 epochs stepped per epoch, waveform mixup Beta(1, 1) on every
batch, batch 128, no label smoothing, best epoch by validation accuracy. 21,283,535 parameters.

Deviations from the reference:
- The backbone is timm's resnet34 (same modules and count as torchvision's, torchvision-style init
  with zero_init_last=False); the 1-channel stem conv gets timm's kaiming init rather than PyTorch's
  default (the reference replaced it after construction).
- PCEN is the same recursion, vectorised (blocked scan + fused backward) instead of a frame loop.
- Centre crop uses integer division (the reference's `/` crashed on clips longer than 4 s).
- Unreadable audio stops the run (or is dropped with --skip-bad-audio), never zero-filled.
- On CUDA with AMP, both SAM passes step on unscaled gradients and a step with inf is skipped.
- Precision and storage: CUDA trains under bf16 autocast (fp16 before Ampere), the reference in fp32
  (`--precision fp32` restores it); waveforms are decoded once into a float16 cache (relative error
  below 5e-4 per sample; the predictions match decoding, tested).
"""
from core.recipe import Augment, Backbone, Frontend, Head, Recipe, Training
from core.registry import register


@register
def resnet34_pcen_sam_8fold() -> Recipe:
    """ResNet-34 + trainable PCEN (64 mels) + SAM: the robust baseline."""
    return Recipe(
        frontend=Frontend(n_ffts=(1024,), hop_length=320, n_mels=64),
        backbone=Backbone(arch="resnet34", stem="timm", maxpool=True, cbam="none"),
        head=Head(pooling="gap", dropout=0.0),
        augment=Augment(mixup_alpha=1.0, mixup_prob=1.0, freq_mask=20, time_mask=40),
        training=Training(epochs=100, batch_size=128, lr=1e-3, weight_decay=1e-2, rho=0.05,
                          schedule="cosine", eta_min=1e-6, label_smoothing=0.0, drop_last=False,
                          select_metric="accuracy"),
    )
