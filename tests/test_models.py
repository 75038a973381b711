"""The eight solutions' networks: parameter counts and shapes from the reference specs, forward and
backward, SAM steps, salience handling (validation, embedding-level mixup, FiLM), precision."""
from __future__ import annotations

import pytest
import torch
from reference import REFERENCE_PARAMS
from torch import nn

from core import registry
from core.model.backbone import AudioBackbone
from core.model.blocks import (
    CBAM,
    AttentiveStatsPooling,
    BiGRU,
    DeepAudioStem,
    FiLM,
    SalienceEmbedding,
    TemporalAttentiveStatsPooling,
)
from core.model.frontend import SpecAugment
from core.model.network import AudioClassifier, build_model, count_parameters
from core.recipe import Augment, Backbone
from core.train.sam import SAM

CLIP = 128000  # 4 s at 32 kHz

# Frontend output and last feature map for a [2, 128000] batch (spec shape tables).
REFERENCE_SHAPES = {
    "resnet34_pcen_sam_8fold": ((2, 1, 64, 401), (2, 512, 2, 13)),
    "resnet34_pcen_sam_8f_200e": ((2, 1, 128, 401), (2, 512, 4, 13)),
    "resnet34_attention": ((2, 1, 128, 401), (2, 512, 4, 13)),
    "resnet34_pcen_salience_fusion_attention": ((2, 1, 128, 401), (2, 512, 4, 13)),
    "resnet34_pcen_salience_fusion_attention_e128": ((2, 1, 128, 401), (2, 512, 4, 13)),
    "resnet34_salience_fusion_film_attention": ((2, 1, 128, 401), (2, 512, 8, 26)),
    "resnet34_mr_salience_fusion_film_attention": ((2, 2, 128, 401), (2, 512, 8, 26)),
    "wideresnet": ((2, 1, 128, 401), (2, 2048, 8, 26)),
    "res2net50": ((2, 1, 128, 401), (2, 2048, 8, 26)),
}
LINEAGE = ["resnet34_pcen_sam_8fold", "resnet34_pcen_sam_8f_200e", "resnet34_attention",
           "resnet34_pcen_salience_fusion_attention", "resnet34_salience_fusion_film_attention",
           "resnet34_mr_salience_fusion_film_attention", "wideresnet", "res2net50"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def waveforms(batch: int = 2, samples: int = CLIP, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, samples, generator=generator)


def capture_outputs(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Forward hooks recording the outputs of the named submodules."""
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for name in names:
        modules[name].register_forward_hook(lambda _m, _i, output, name=name: captured.__setitem__(name, output))
    return captured


# ------------------------------------------------------------------ registry and lineage

def test_every_documented_solution_is_registered_in_lineage_order():
    names = registry.names()
    assert set(names) == set(REFERENCE_PARAMS)
    assert [name for name in names if name in LINEAGE] == LINEAGE
    for child, parent in zip(LINEAGE[1:], LINEAGE, strict=False):  # consecutive pairs
        assert registry.get(child).parent == parent
    assert registry.get("resnet34_pcen_salience_fusion_attention_e128").parent == \
        "resnet34_pcen_salience_fusion_attention"


# Settings copied by hand from each spec's CONFIG / Training sections:
# epochs, batch, lr, weight decay, rho, schedule, warm-up epochs, label smoothing, grad clip, drop_last,
# checkpoint metric, mixup alpha, mixup prob, freq mask, time mask, head dropout, FFT sizes, mels,
# PCEN denominator eps, waveform-augmentation probability.
WRN_SETTINGS = (120, 128, 1e-3, 1e-3, 0.05, "cosine", 0, 0.1, 0.0, True, "accuracy", 1.0, 1.0, 20, 40, 0.3,
                (2048,), 128, 0.0, 0.0)
SPEC_SETTINGS = {
    "resnet34_pcen_sam_8fold": (100, 128, 1e-3, 1e-2, 0.05, "cosine", 0, 0.0, 0.0, False, "accuracy", 1.0, 1.0,
                                20, 40, 0.0, (1024,), 64, 0.0, 0.0),
    "resnet34_pcen_sam_8f_200e": (200, 256, 0.0012817574949798138, 0.00026743110625072756, 0.0724398361671321,
                                  "warmup_cosine", 2, 0.1, 0.0, False, "composite", 1.8855049141520537, 1.0, 18, 84,
                                  0.0, (2048,), 128, 0.0, 0.0),
    "resnet34_attention": (150, 128, 1e-3, 1e-4, 0.05, "warm_restarts", 0, 0.1, 0.0, True, "composite", 1.0, 1.0,
                           19, 80, 0.3, (2048,), 128, 0.0, 0.0),
    "resnet34_pcen_salience_fusion_attention": (120, 128, 1e-3, 1e-3, 0.05, "cosine", 0, 0.1, 0.0, True, "accuracy",
                                                1.0, 1.0, 20, 40, 0.3, (2048,), 128, 0.0, 0.0),
    "resnet34_salience_fusion_film_attention": (160, 256, 1e-3, 1e-2, 0.05, "onecycle_per_epoch", 0, 0.1, 2.0, True,
                                                "accuracy", 2.0, 1.0, 20, 40, 0.4, (2048,), 128, 1e-6, 0.6),
    "resnet34_mr_salience_fusion_film_attention": (160, 128, 1e-3, 1e-4, 0.05, "warmup_cosine_per_step", 5, 0.1, 2.0,
                                                   True, "composite", 1.0, 0.9, 20, 80, 0.4, (2048, 1024), 128,
                                                   1e-6, 0.0),
    "wideresnet": WRN_SETTINGS,
    "res2net50": WRN_SETTINGS,
}


@pytest.mark.parametrize("name", LINEAGE)
def test_training_and_augmentation_settings_match_the_spec(name):
    recipe = registry.get(name)
    training, augment = recipe.training, recipe.augment
    actual = (training.epochs, training.batch_size, training.lr, training.weight_decay, training.rho,
              training.schedule, training.warmup_epochs, training.label_smoothing, training.grad_clip,
              training.drop_last, training.select_metric, augment.mixup_alpha, augment.mixup_prob,
              augment.freq_mask, augment.time_mask, recipe.head.dropout, recipe.frontend.n_ffts,
              recipe.frontend.n_mels, recipe.frontend.pcen.denominator_eps, augment.wave_prob)
    assert actual == SPEC_SETTINGS[name]
    assert (recipe.frontend.hop_length, recipe.frontend.sample_rate, recipe.frontend.num_samples) == (320, 32000, CLIP)


def test_schedule_details_and_waveform_amplitudes_match_the_spec():
    attention = registry.get("resnet34_attention").training
    assert (attention.restart_period, attention.restart_mult, attention.eta_min) == (10, 2, 1e-6)
    film = registry.get("resnet34_salience_fusion_film_attention")
    assert (film.training.pct_start, film.augment.noise_max, film.augment.gain_min, film.augment.gain_max) == \
        (0.1, 0.02, 0.8, 1.2)
    assert registry.get("resnet34_pcen_sam_8fold").training.eta_min == 1e-6


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_count_equals_the_reference(name):
    assert count_parameters(registry.get(name)) == REFERENCE_PARAMS[name]


def test_count_parameters_matches_a_real_build():
    recipe = registry.get("resnet34_mr_salience_fusion_film_attention")
    assert count_parameters(recipe) == sum(p.numel() for p in build_model(recipe).parameters())


# ------------------------------------------------------------------ blocks against spec breakdowns

@pytest.mark.parametrize("module,expected", [
    (CBAM(64), 610), (CBAM(128), 2_146), (CBAM(256), 8_290), (CBAM(512), 32_866), (CBAM(2048), 524_386),
    (AttentiveStatsPooling(512, 128), 131_712), (AttentiveStatsPooling(2048, 128), 526_464),
    (TemporalAttentiveStatsPooling(512, 128), 65_793), (BiGRU(512, 256, 2, 0.2), 2_365_440),
    (FiLM(512, 64), 66_560), (DeepAudioStem(1), 55_904),
], ids=["cbam64", "cbam128", "cbam256", "cbam512", "cbam2048", "asp512", "asp2048", "tasp", "bigru", "film",
        "deepstem"])
def test_block_parameter_counts_match_the_spec_breakdowns(module, expected):
    assert sum(p.numel() for p in module.parameters()) == expected


def test_attentive_stats_pooling_is_a_weighted_mean_and_std_over_time():
    torch.manual_seed(0)
    pooling = AttentiveStatsPooling(6, 4)
    sequence = torch.randn(3, 6, 5)
    weights = torch.softmax(pooling.attn(sequence), dim=-1)
    mean = (sequence * weights).sum(-1)
    std = torch.sqrt((weights * sequence ** 2).sum(-1) - mean ** 2 + 1e-6)  # E_w[x^2] - mu^2 form
    torch.testing.assert_close(pooling(sequence), torch.cat([mean, std], dim=1), rtol=1e-5, atol=1e-5)


def test_temporal_pooling_uses_one_weight_per_frame_shared_by_all_channels():
    torch.manual_seed(0)
    pooling = TemporalAttentiveStatsPooling(4, 3)
    sequence = torch.randn(2, 4, 7)
    first, _, second = pooling.attn
    scores = torch.stack([second(torch.tanh(first(sequence[:, :, t]))) for t in range(7)], dim=-1)  # [B, 1, T]
    weights = torch.softmax(scores, dim=-1)
    mean = (sequence * weights).sum(-1)
    std = torch.sqrt((weights * (sequence - mean[..., None]) ** 2).sum(-1) + 1e-6)
    torch.testing.assert_close(pooling(sequence), torch.cat([mean, std], dim=1))
    constant_in_time = sequence[:, :, :1].expand(2, 4, 7)
    torch.testing.assert_close(pooling(constant_in_time)[:, 4:], torch.full((2, 4), 1e-3))  # sqrt(0 + 1e-6)


def test_film_starts_as_the_identity_and_modulates_channels():
    film = FiLM(3, 2)
    maps = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(film(maps, torch.randn(2, 2)), maps)
    with torch.no_grad():
        film.generator.bias.copy_(torch.tensor([2.0, 1.0, 1.0, 0.5, 0.0, 0.0]))
    expected = maps.clone()
    expected[:, 0] = 2 * maps[:, 0] + 0.5
    torch.testing.assert_close(film(maps, torch.zeros(2, 2)), expected)


def test_spec_augment_masks_one_band_and_one_span_shared_by_the_batch():
    torch.manual_seed(3)
    augment = SpecAugment(Augment(freq_mask=20, time_mask=40)).train()
    features = torch.rand(4, 2, 64, 401) + 1.0   # strictly positive: zeros can only come from masks
    masked = augment(features)
    zero = masked == 0
    assert torch.equal(zero, zero[:1, :1].expand_as(zero))            # same mask for every clip and channel
    rows, columns = zero[0, 0].all(dim=1), zero[0, 0].all(dim=0)
    assert torch.equal(zero[0, 0], rows[:, None] | columns[None, :])   # a full band plus a full span
    for line, limit in ((rows, 20), (columns, 40)):
        where = line.nonzero().flatten()
        assert len(where) < limit
        if len(where):
            assert where.max() - where.min() + 1 == len(where)        # contiguous
    assert torch.equal(augment.eval()(features), features)


def test_res2net_first_block_uses_the_hierarchical_add_like_the_reference():
    body = AudioBackbone(Backbone(arch="res2net50_26w_4s", stem="deep", maxpool=False,
                                  seed_first_block=True), 1).body
    assert body.layer1[0].is_first is False and body.layer1[0].pool is None
    assert all(getattr(body, stage)[0].is_first for stage in ("layer2", "layer3", "layer4"))


def test_backbone_init_is_torchvision_style():
    body = AudioBackbone(Backbone(arch="wide_resnet50_2", stem="deep", maxpool=False), 1).body
    assert torch.equal(body.layer1[0].bn3.weight, torch.ones(256))     # timm would zero it
    assert isinstance(body.maxpool, nn.Identity) and isinstance(body.bn1, nn.Identity)


# ------------------------------------------------------------------ full models: shapes, SAM

def baseline_stage_shapes() -> dict[str, tuple[int, ...]]:
    """The baseline spec's shape table for [2, 1, 128000]."""
    return {"backbone.body.conv1": (2, 64, 32, 201), "backbone.body.maxpool": (2, 64, 16, 101),
            "backbone.body.layer1": (2, 64, 16, 101), "backbone.body.layer2": (2, 128, 8, 51),
            "backbone.body.layer3": (2, 256, 4, 26), "backbone.body.layer4": (2, 512, 2, 13)}


def test_baseline_intermediate_shapes_match_the_spec():
    model = build_model(registry.get("resnet34_pcen_sam_8fold")).eval()
    expected = baseline_stage_shapes()
    captured = capture_outputs(model, ["audio_input.frontend", "pooling", *expected])
    with torch.no_grad():
        logits = model(waveforms().unsqueeze(1))  # [B, 1, L] is accepted too
    assert captured["audio_input.frontend"].shape == (2, 1, 64, 401)
    assert {name: tuple(captured[name].shape) for name in expected} == expected
    assert captured["pooling"].shape == (2, 512)
    assert logits.shape == (2, 10)


def forward_backward(model: AudioClassifier, batch: torch.Tensor, salience: torch.Tensor,
                     mix: tuple[float, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    logits = model(batch, salience, mix)
    nn.functional.cross_entropy(logits, targets).backward()
    return logits


def check_sam_step(model: AudioClassifier, recipe, batch: torch.Tensor) -> None:
    """One SAM step (two forward/backward passes) changes the weights and keeps them finite."""
    salience, mix, targets = torch.tensor([1, 2]), (0.6, torch.tensor([1, 0])), torch.tensor([3, 7])
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=recipe.training.rho, lr=1e-3,
              weight_decay=recipe.training.weight_decay)
    before = {key: value.detach().clone() for key, value in model.named_parameters()}
    forward_backward(model, batch, salience, mix, targets)
    sam.first_step(zero_grad=True)
    forward_backward(model, batch, salience, mix, targets)
    sam.second_step(zero_grad=True)
    changed = {key for key, value in model.named_parameters() if not torch.equal(value, before[key])}
    assert "classifier.weight" in changed and "audio_input.frontend.pcens.0.alpha" in changed
    if recipe.fusion.uses_salience:
        assert "salience.embedding.weight" in changed
    assert all(torch.isfinite(value).all() for value in model.parameters())


def check_full_clip_forward_backward(name: str, model: AudioClassifier) -> None:
    """Forward + backward on [2, 128000] (+ salience): spec shapes, finite logits and gradients, no dead parameter."""
    frontend_shape, map_shape = REFERENCE_SHAPES[name]
    captured = capture_outputs(model, ["audio_input", "backbone"])
    logits = forward_backward(model, waveforms(), torch.tensor([1, 2]), (0.6, torch.tensor([1, 0])),
                              torch.tensor([3, 7]))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert tuple(captured["audio_input"].shape) == frontend_shape
    assert tuple(captured["backbone"].shape) == map_shape
    dead = [key for key, p in model.named_parameters() if p.grad is None]
    assert dead == []  # count_parameters counts every parameter, so all must take part in the forward pass
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_full_clip_forward_backward(name):
    torch.manual_seed(0)
    check_full_clip_forward_backward(name, build_model(registry.get(name)).train())


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_one_sam_step_changes_the_weights(name):
    # 0.5 s clips keep the default suite fast; the slow suite repeats this on full 4 s clips.
    torch.manual_seed(0)
    recipe = registry.get(name)
    check_sam_step(build_model(recipe).train(), recipe, waveforms(samples=16000))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_one_sam_step_on_full_clips(name):
    torch.manual_seed(0)
    recipe = registry.get(name)
    check_sam_step(build_model(recipe).train(), recipe, waveforms())


# ------------------------------------------------------------------ salience

@pytest.mark.parametrize("name", ["resnet34_pcen_salience_fusion_attention", "resnet34_salience_fusion_film_attention",
                                  "resnet34_mr_salience_fusion_film_attention", "wideresnet"])
def test_salience_is_required_and_validated(name):
    model = build_model(registry.get(name)).eval()
    with pytest.raises(ValueError, match=name):
        model(waveforms(samples=3200))
    with pytest.raises(ValueError, match="1 .foreground. or 2 .background., got \\[0, 3\\]"):
        model(waveforms(samples=3200), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer tensor"):
        model(waveforms(samples=3200), torch.tensor([1.0, 2.0]))


def test_models_without_salience_ignore_it():
    torch.manual_seed(0)
    model = build_model(registry.get("resnet34_attention")).eval()
    batch = waveforms(samples=16000)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(batch, torch.tensor([2, 2])))


@pytest.mark.parametrize("padding_row", [False, True])
def test_salience_index_mapping(padding_row):
    embedding = SalienceEmbedding(4, padding_row)
    table = embedding.embedding.weight
    vectors = embedding(torch.tensor([1, 2, 1]))
    foreground, background = (table[1], table[2]) if padding_row else (table[0], table[1])
    torch.testing.assert_close(vectors, torch.stack([foreground, background, foreground]))
    if padding_row:
        assert embedding.embedding.padding_idx == 0 and torch.equal(table[0], torch.zeros(4))


def test_concat_fusion_feeds_the_hand_mixed_salience_vector_to_the_classifier():
    torch.manual_seed(0)
    model = build_model(registry.get("resnet34_pcen_salience_fusion_attention")).train()
    captured = {}
    model.classifier.register_forward_hook(lambda _m, inputs, _o: captured.__setitem__("input", inputs[0]))
    salience, index, lam = torch.tensor([1, 2, 2]), torch.tensor([2, 0, 1]), 0.3
    model(waveforms(batch=3, samples=16000), salience, (lam, index))
    table = model.salience.embedding.weight
    rows = table[salience - 1]
    expected = lam * rows + (1 - lam) * rows[index]
    assert captured["input"].shape == (3, 1024 + 64)
    torch.testing.assert_close(captured["input"][:, 1024:], expected)


@pytest.mark.parametrize("name", ["resnet34_salience_fusion_film_attention",
                                  "resnet34_mr_salience_fusion_film_attention"])
def test_film_salience_embedding_receives_gradient(name):
    # The reference built the FiLM embedding under no_grad, so it never trained.
    torch.manual_seed(0)
    model = build_model(registry.get(name)).train()
    with torch.no_grad():  # leave the identity init so gamma/beta depend on the embedding
        model.film.generator.weight.normal_(0, 0.1)
    model(waveforms(samples=16000), torch.tensor([1, 2]), (0.7, torch.tensor([1, 0]))).square().sum().backward()
    grad = model.salience.embedding.weight.grad
    used = grad[1:] if model.salience.padding_row else grad
    assert grad is not None and (used.abs().sum(dim=1) > 0).all()
    if model.salience.padding_row:
        assert torch.equal(grad[0], torch.zeros_like(grad[0]))


# ------------------------------------------------------------------ precision and layout

def pcen_dtype_under_bf16(name: str) -> tuple[torch.dtype, torch.Tensor]:
    model = build_model(registry.get(name)).eval()
    captured = capture_outputs(model, ["audio_input.frontend.pcens.0", "audio_input"])
    salience = torch.tensor([1, 2]) if model.uses_salience else None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(waveforms(samples=16000), salience)
    assert captured["audio_input"].dtype == torch.float32
    return captured["audio_input.frontend.pcens.0"].dtype, logits


@pytest.mark.parametrize("name", ["resnet34_pcen_sam_8fold", "resnet34_mr_salience_fusion_film_attention"])
def test_bf16_autocast_forward_keeps_the_frontend_in_float32(name):
    pcen_dtype, logits = pcen_dtype_under_bf16(name)
    assert pcen_dtype == torch.float32
    assert logits.shape == (2, 10) and torch.isfinite(logits.float()).all()


def test_bf16_autocast_training_step_reaches_pcen():
    torch.manual_seed(0)
    model = build_model(registry.get("resnet34_pcen_sam_8fold")).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(waveforms(samples=16000))
    logits.float().square().sum().backward()
    pcen = model.audio_input.frontend.pcens[0]
    assert all(p.grad is not None and torch.isfinite(p.grad) and p.grad != 0 for p in pcen.parameters())


def test_channels_last_model_gives_the_same_logits():
    torch.manual_seed(0)
    model = build_model(registry.get("resnet34_salience_fusion_film_attention")).eval()
    batch, salience = waveforms(samples=16000), torch.tensor([2, 1])
    with torch.no_grad():
        expected = model(batch, salience)
        actual = model.to(memory_format=torch.channels_last)(batch, salience)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_spec_augment_runs_inside_the_model_only_in_training():
    torch.manual_seed(1)
    audio_input = build_model(registry.get("resnet34_pcen_sam_8fold")).audio_input
    batch = waveforms(samples=16000)
    with torch.no_grad():
        train_outputs = [audio_input.train()(batch) for _ in range(3)]
        eval_outputs = [audio_input.eval()(batch) for _ in range(2)]
    assert not all(torch.equal(output, train_outputs[0]) for output in train_outputs[1:])  # new masks per call
    torch.testing.assert_close(eval_outputs[0], eval_outputs[1], rtol=0, atol=0)


def test_unknown_recipe_values_are_refused_with_the_field_named():
    base = registry.get("resnet34_pcen_sam_8fold")
    for changes, field in [(dict(head=dict(pooling="max")), "pooling"), (dict(backbone=dict(cbam="all")), "cbam"),
                           (dict(fusion=dict(kind="sum")), "fusion"), (dict(backbone=dict(stem="wide")), "stem"),
                           (dict(head=dict(temporal="lstm")), "temporal")]:
        with pytest.raises(ValueError, match=field):
            AudioClassifier(base.derive(**changes))
    with pytest.raises(ValueError, match="ResNet-family"):
        AudioClassifier(base.derive(backbone=dict(arch="efficientnet_b0")))
    with pytest.raises(ValueError, match="not a timm model"):
        AudioClassifier(base.derive(backbone=dict(arch="resnet35")))
