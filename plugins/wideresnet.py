"""WideResNet-50-2 with the deep audio stem, CBAM + ASP and salience concatenation (model 7).

Reference: DenseNet&.Res2Net&.WideResNet/wideresnet.py (../shared/spec/wideresnet.md,
params_7to8.md). Single-resolution PCEN (n_fft 2048, 128 mels, no denominator eps) -> BN2d(1) ->
timm wide_resnet50_2 whose 7x7 stem is replaced by the deep audio stem (3x3 convs 1->32->64->64,
the last with stride 2, each + BN + ReLU) with bn1 and max-pool removed (total stride 16, layer4
[B, 2048, 8, 26]) -> CBAM(2048) after layer4 only -> ASP -> BN1d(4096) -> Dropout(0.3) -> concat
Embedding(2, 64) salience -> Linear(4160, 10). Training: 120 epochs, batch 128 with drop_last,
lr 1e-3, wd 1e-3, rho 0.05, cosine to 1e-6 per epoch, label smoothing 0.1, mixup Beta(1, 1) on every
batch, SpecAugment 20 / 40, best epoch by validation accuracy.
67,981,393 parameters (the reference's 70,030,521 include 2,049,128 dead: an unused bn1 and the
1000-way fc, never built here).

Lineage parent: the multi-resolution CRNN (model 6, for ordering and the ablation report); the
configuration derives from resnet34_pcen_salience_fusion_attention (model 4), whose frontend,
head, concat fusion and training it shares: only the backbone changes.

Deviations from the reference:
- timm's wide_resnet50_2 stages (identical modules to torchvision's) with zero_init_last=False
  (torchvision init); the deep stem keeps PyTorch's default init, as in the reference.
- Dead modules of the reference (bn1, fc) do not exist; their weights cannot be loaded as-is.
- CBAM hidden width and spatial padding use integer division (the reference could not be built).
- No silent salience default (missing test salience is an error, not "foreground").
- Centre crop uses integer division; unreadable audio is never zero-filled.
- Precision and storage: CUDA trains under bf16 autocast (fp16 before Ampere), the reference in fp32
  (`--precision fp32` restores it); waveforms are decoded once into a float16 cache (relative error
  below 5e-4 per sample; the predictions match decoding, tested).
"""
from core.recipe import Recipe
from core.registry import register


@register(parent="resnet34_mr_salience_fusion_film_attention", derives_from="resnet34_pcen_salience_fusion_attention")
def wideresnet(base: Recipe) -> Recipe:
    """WideResNet-50-2 + deep audio stem + CBAM(last) + ASP + salience concat."""
    return base.derive(
        backbone=dict(arch="wide_resnet50_2", stem="deep", maxpool=False, cbam="last"),
        # The widest network of the lineage: 4.1 s per clip and SAM step on the 2-core CPU (a smoke run).
        demo=dict(epochs=1, max_clips_per_fold=10, max_test_clips=40),
    )
