"""Training: SAM optimiser, mixed precision, mixup, schedules, the fold loop and its outputs."""
