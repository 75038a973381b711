"""The embedded demo: the synthetic urban-sound generator (synth) and the demo training profile (profile)."""
