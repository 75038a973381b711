"""Urban sound classification engine: data, models, SAM training, blending (see README.md)."""

# UrbanSound8K's classes under their old names, for existing imports. The code takes a data set's classes from
# the data (DataSource.class_names) or from a model (Recipe.classes, recorded in every checkpoint).
from core.folds import URBANSOUND8K_CLASSES as CLASS_NAMES

NUM_CLASSES = len(CLASS_NAMES)
PROB_COLUMNS = [str(k) for k in range(NUM_CLASSES)]
