"""The data layer: validated metadata (metadata.py), one audio loader (audio.py), the float16
waveform cache shared by every fold and run (cache.py) and the synthetic demo set (synth.py).

Import the submodules directly (`from core.data.metadata import load_source`); this package
imports nothing itself, so `python -m core --help` stays fast.
"""
