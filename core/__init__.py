"""Urban sound classification engine: data, models, SAM training, blending (see README.md)."""

CLASS_NAMES = (
    "air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
    "engine_idling", "gun_shot", "jackhammer", "siren", "street_music",
)
NUM_CLASSES = len(CLASS_NAMES)
PROB_COLUMNS = [str(k) for k in range(NUM_CLASSES)]
