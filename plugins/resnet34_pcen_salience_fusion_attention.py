"""Attention ResNet-34 + salience metadata fused by concatenation (model 4 of the lineage).

Reference: ResNet/resnet34_pcen_salience_fusion_attention.py
(../shared/spec/resnet34_pcen_salience_fusion_attention.md). The attention model (CBAM after every
stage, hidden width max(C // 16, 4); ASP -> BN1d -> Dropout 0.3) with the clip's salience
(1 foreground -> row 0, 2 background -> row 1 of Embedding(2, 64)) concatenated to the 1024-d
pooled vector: Linear(1088, 10); dropout acts on the audio part only. Under mixup the salience
vectors are mixed at embedding level with the batch's lambda and partner index, with gradient, and
recomputed for the second SAM pass. Training: 120 epochs, batch 128 with drop_last, lr 1e-3,
wd 1e-3, rho 0.05, cosine to 1e-6 per epoch, label smoothing 0.1, mixup Beta(1, 1), SpecAugment
freq 20 / time 40, best epoch by validation accuracy. 21,467,095 parameters
(variant _e128: 128-dim embedding, 21,467,863).

Deviations from the reference:
- No silent salience default: the reference made every test clip "foreground" when the test CSV
  had no salience column (and mapped NaN/other values to foreground); here a missing value stops
  the run unless --test-salience is given, and the model rejects values other than 1 and 2.
- CBAM hidden width and spatial padding use integer division (the reference could not be built).
- Centre crop uses integer division; unreadable audio is never zero-filled.
- Precision and storage: CUDA trains under bf16 autocast (fp16 before Ampere), the reference in fp32
  (`--precision fp32` restores it); waveforms are decoded once into a float16 cache (relative error
  below 5e-4 per sample; the predictions match decoding, tested).
"""
from core.recipe import Recipe
from core.registry import register, register_variant


@register(parent="resnet34_attention")
def resnet34_pcen_salience_fusion_attention(parent: Recipe) -> Recipe:
    """Attention ResNet-34 + 64-d salience embedding concatenated to the ASP vector."""
    return parent.derive(
        backbone=dict(cbam_min_hidden=4),
        fusion=dict(kind="concat", dim=64, padding_row=False),
        augment=dict(freq_mask=20, time_mask=40),
        training=dict(epochs=120, weight_decay=1e-3, schedule="cosine", select_metric="accuracy"),
    )


register_variant("resnet34_pcen_salience_fusion_attention_e128", parent="resnet34_pcen_salience_fusion_attention",
                 doc="Salience fusion with a 128-dim salience embedding (Linear(1152, 10)).", fusion=dict(dim=128))
