"""ResNet-34 + PCEN + SAM with the Optuna-tuned settings, 200 epochs (model 2 of the lineage).

Reference: ResNet/optuna/resnet34_pcen_sam_8f_200e.py (../shared/spec/resnet34_pcen_sam_8f_200e.md,
optuna.md). Same network as the baseline on a finer frontend (n_fft 2048, 128 mels) with the best
trial of the study: batch 256, lr 1.28e-3, wd 2.67e-4, rho 0.0724, mixup Beta(1.8855, 1.8855),
SpecAugment freq 18 (= int(128 * 0.1455)) / time 84, dropout 0.0 before the classifier, linear
warm-up 0.01 -> 1 over 2 epochs then cosine to 1e-6 (per epoch), label smoothing 0.1, best epoch
by the composite score (0.8 acc + 0.2 macro-F1). These are the defaults users get without a search.
21,283,535 parameters (dropout 0.0 adds none).

Deviations from the reference:
- The reference trained under fp16 autocast with the second SAM pass stepping on still-scaled
  gradients and no inf guard; precision here is a run option (--precision), and with fp16 both
  passes use unscaled gradients and an overflowing step is skipped.
- The test ensemble averages over the folds actually present (the reference always divided by 8).
- Centre crop uses integer division; unreadable audio is never zero-filled (as in the baseline).
- Precision and storage: CUDA trains under bf16 autocast, the reference under fp16 autocast
  (`--precision fp16` restores it, with the loss scaling above); waveforms are decoded once into a
  float16 cache (relative error below 5e-4 per sample; the predictions match decoding, tested).
"""
from core.recipe import Recipe
from core.registry import register


@register(parent="resnet34_pcen_sam_8fold")
def resnet34_pcen_sam_8f_200e(parent: Recipe) -> Recipe:
    """Baseline with the Optuna-tuned settings (128 mels, n_fft 2048), 200 epochs."""
    return parent.derive(
        frontend=dict(n_ffts=(2048,), n_mels=128),
        augment=dict(mixup_alpha=1.8855049141520537, freq_mask=18, time_mask=84),
        training=dict(epochs=200, batch_size=256, lr=0.0012817574949798138,
                      weight_decay=0.00026743110625072756, rho=0.0724398361671321,
                      schedule="warmup_cosine", warmup_epochs=2, label_smoothing=0.1,
                      select_metric="composite"),
        demo=dict(epochs=5),  # 128 mels: twice the baseline's cost per clip
    )
