"""Facts about the reference solution that tests check our code against, kept once."""
from __future__ import annotations

# Lineage parent and parameter count (modules used in the forward pass; ../shared/spec/README.md) of
# every registered solution, in lineage order.
REFERENCE = {
    "resnet34_pcen_sam_8fold": (None, 21_283_535),
    "resnet34_pcen_sam_8f_200e": ("resnet34_pcen_sam_8fold", 21_283_535),
    "resnet34_attention": ("resnet34_pcen_sam_8f_200e", 21_466_327),
    "resnet34_pcen_salience_fusion_attention": ("resnet34_attention", 21_467_095),
    "resnet34_pcen_salience_fusion_attention_e128": ("resnet34_pcen_salience_fusion_attention", 21_467_863),
    "resnet34_salience_fusion_film_attention": ("resnet34_pcen_salience_fusion_attention", 21_533_015),
    "resnet34_mr_salience_fusion_film_attention": ("resnet34_salience_fusion_film_attention", 23_835_741),
    "wideresnet": ("resnet34_mr_salience_fusion_film_attention", 67_981_393),
    "res2net50": ("wideresnet", 24_797_273),
}
REFERENCE_PARAMS = {name: params for name, (_, params) in REFERENCE.items()}
REFERENCE_PARENTS = {name: parent for name, (parent, _) in REFERENCE.items()}
