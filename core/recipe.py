"""A solution's recipe: every modelling and training choice, as frozen dataclasses.

Plugins build a `Recipe` (the root of the lineage) or `derive` one from their parent, naming only
what changes. The engine (model builder, data pipeline, trainer) reads nothing but the recipe.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from core.errors import UserError
from core.folds import URBANSOUND8K_CLASSES

Stem = Literal["timm", "deep"]                       # timm's own 7x7/2 stem | three 3x3 convs (32, 64, 64)
CbamPlacement = Literal["none", "stages", "last"]    # no CBAM | after every stage | after the last stage
Pooling = Literal["gap", "asp", "temporal_asp"]      # global average | channel-wise attentive stats | one weight per frame
Temporal = Literal["none", "bigru"]
FusionKind = Literal["none", "concat", "film"]
Schedule = Literal["cosine", "warmup_cosine", "warm_restarts", "onecycle_per_epoch", "warmup_cosine_per_step"]
SelectMetric = Literal["accuracy", "macro_f1", "composite"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class RecipeError(UserError, ValueError):
    """A recipe field holds a value outside its allowed choices (raised when the recipe is made or derived)."""


@functools.cache
def _choice_fields(cls: type) -> dict[str, tuple[Any, ...]]:
    """{field: allowed values} for the Literal-typed fields of a recipe section."""
    hints = typing.get_type_hints(cls)
    return {name: get_args(hint) for name, hint in hints.items() if get_origin(hint) is Literal}


class Checked:
    """Mixin: every Literal field is checked once, when the section is created (also by `replace`)."""

    def __post_init__(self) -> None:
        for name, allowed in _choice_fields(type(self)).items():
            value = getattr(self, name)
            if value not in allowed:
                raise RecipeError(f"{type(self).__name__.lower()}.{name} = {value!r} is not allowed; "
                                  f"choose one of {', '.join(map(repr, allowed))}")


@dataclass(frozen=True)
class PCEN(Checked):
    """Trainable per-channel energy normalisation (shared scalars alpha, delta, r; fixed smoother s)."""

    T: float = 0.06            # smoother time constant (s); s = hop / (sample_rate * T), a fixed buffer
    alpha: float = 0.98
    delta: float = 2.0
    r: float = 0.5
    eps: float = 1e-6
    denominator_eps: float = 0.0  # scripts 5-6 add 1e-6 to (eps + M)^alpha; 1-4 and 7-8 do not


@dataclass(frozen=True)
class Frontend(Checked):
    """Waveform -> mel magnitude -> PCEN; one input channel per FFT size (multi-resolution)."""

    sample_rate: int = 32000
    clip_seconds: float = 4.0
    n_ffts: tuple[int, ...] = (1024,)
    hop_length: int = 320
    n_mels: int = 64
    f_min: float = 20.0
    f_max: float = 16000.0
    power: float = 1.0
    pcen: PCEN = field(default_factory=PCEN)

    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def channels(self) -> int:
        return len(self.n_ffts)


@dataclass(frozen=True)
class Backbone(Checked):
    """A timm CNN used as a feature extractor, with the audio-specific edits of the lineage."""

    arch: str = "resnet34"       # timm model name
    stem: Stem = "timm"          # "timm": its own 7x7/2 conv + bn + act | "deep": three 3x3 convs (32, 64, 64; last stride 2)
    maxpool: bool = True         # False replaces the stem max-pool by Identity
    cbam: CbamPlacement = "none" # "none" | "stages": after every stage | "last": after the last stage only
    cbam_ratio: int = 16
    cbam_kernel: int = 7
    cbam_min_hidden: int = 1     # hidden width = max(C // ratio, cbam_min_hidden)
    seed_first_block: bool = False  # res2net: layer1[0] uses the hierarchical add, no pool (reference quirk)
    zero_init_last: bool = False # timm's zero-init of each block's last BN; False = torchvision init (the reference)


@dataclass(frozen=True)
class Head(Checked):
    """Feature map -> vector -> logits."""

    pooling: Pooling = "gap"     # "gap" | "asp": channel-wise attentive stats | "temporal_asp": one weight per frame
    asp_channels: int = 128
    temporal: Temporal = "none"  # "none" | "bigru": bidirectional GRU over time before pooling
    gru_hidden: int = 256
    gru_layers: int = 2
    gru_dropout: float = 0.2
    embedding_bn: bool = False   # BatchNorm1d on the pooled vector
    dropout: float = 0.0


@dataclass(frozen=True)
class Fusion(Checked):
    """How salience (metadata: 1 foreground, 2 background) enters the model."""

    kind: FusionKind = "none"    # "none" | "concat": embedding joins the pooled vector | "film": modulates the last stage
    dim: int = 64
    padding_row: bool = False    # True: Embedding(3, dim, padding_idx=0) indexed by the raw 1/2 value

    @property
    def uses_salience(self) -> bool:
        return self.kind != "none"


@dataclass(frozen=True)
class Augment(Checked):
    """Training-time augmentation."""

    mixup_alpha: float = 1.0     # Beta(alpha, alpha); 0 disables mixup
    mixup_prob: float = 1.0      # probability a batch is mixed
    freq_mask: int = 20          # SpecAugment widths (torchaudio semantics, batch-shared masks)
    time_mask: int = 40
    wave_prob: float = 0.0       # probability of waveform noise + gain for a clip (audiomentations)
    noise_max: float = 0.0       # Gaussian noise amplitude ~ U[0, noise_max)
    gain_min: float = 1.0        # linear gain range
    gain_max: float = 1.0


@dataclass(frozen=True)
class Training(Checked):
    """Optimiser, schedule, loss and the checkpoint rule."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-2
    rho: float = 0.05            # SAM neighbourhood radius
    adaptive: bool = False       # ASAM
    # Learning-rate schedules (core/train/schedules.py), all as in the reference scripts:
    #   "cosine": CosineAnnealingLR(T_max=epochs) per epoch
    #   "warmup_cosine": LinearLR(0.01 -> 1 over warmup_epochs) then cosine over the rest, per epoch
    #   "warm_restarts": CosineAnnealingWarmRestarts(restart_period, restart_mult) per epoch
    #   "onecycle_per_epoch": OneCycleLR sized in batches but stepped once per epoch (reference quirk)
    #   "warmup_cosine_per_step": linear warm-up from 0 over warmup_epochs, cosine to 0, per batch
    schedule: Schedule = "cosine"
    warmup_epochs: int = 0
    eta_min: float = 1e-6
    restart_period: int = 10
    restart_mult: int = 2
    pct_start: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float = 0.0       # 0: no clipping
    drop_last: bool = False
    select_metric: SelectMetric = "accuracy"  # which validation score picks the best epoch
    trainer: str = "sam"         # the registered trainer (core/train/trainer.py) whose loop and objective train it
    folds: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    seed: int = 42


@dataclass(frozen=True)
class Demo(Checked):
    """The demo profile: how `train` shrinks this solution when no --data is given (synthetic set).

    Same architecture; fewer folds, epochs and clips so that it finishes on a laptop CPU.
    """

    folds: tuple[int, ...] = (1,)
    epochs: int = 8
    batch_size: int = 16
    precision: Precision = "auto" # the platform default: fp32 on CPU (bf16 without AMX was 1.4x slower here), bf16 on GPU
    mixup_alpha: float = 0.2     # a softer mixup learns the small set faster
    max_clips_per_fold: int | None = None
    max_test_clips: int | None = None


@dataclass(frozen=True)
class Recipe:
    """Everything that defines one solution."""

    name: str = ""
    parent: str | None = None
    summary: str = ""
    classes: tuple[str, ...] = URBANSOUND8K_CLASSES  # what the head predicts (classID = index); `train` sets the data's
    frontend: Frontend = field(default_factory=Frontend)
    backbone: Backbone = field(default_factory=Backbone)
    head: Head = field(default_factory=Head)
    fusion: Fusion = field(default_factory=Fusion)
    augment: Augment = field(default_factory=Augment)
    training: Training = field(default_factory=Training)
    demo: Demo = field(default_factory=Demo)

    @property
    def num_classes(self) -> int:
        """The width of the head: how many classes the model predicts."""
        return len(self.classes)

    def derive(self, **changes: Any) -> Recipe:
        """A copy with `changes` applied; a dict for a section updates only the named fields.

        >>> base.derive(frontend=dict(n_mels=128), training=dict(epochs=200))
        """
        return replace_nested(self, changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def replace_nested(obj: Any, changes: dict[str, Any]) -> Any:
    """dataclasses.replace, recursing into nested dataclasses when given a dict; unknown keys raise."""
    names = {f.name for f in dataclasses.fields(obj)}
    updates: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in names:
            raise TypeError(f"{type(obj).__name__} has no field {key!r}; fields: {sorted(names)}")
        current = getattr(obj, key)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            value = replace_nested(current, value)
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        updates[key] = value
    return dataclasses.replace(obj, **updates)


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Inverse of Recipe.to_dict (used to rebuild a model from a checkpoint)."""
    return replace_nested(Recipe(), data)
