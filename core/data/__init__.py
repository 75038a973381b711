"""The data layer: layout detection and validated metadata (metadata.py for UrbanSound8K's layouts and
the DataSource, layouts.py for ESC-50, a generic CSV and class folders, checks.py for the shared row
checks), fold assignment for data without folds (fold_assignment.py), one audio loader (audio.py) and
the float16 waveform cache shared by every fold and run (cache.py).

Import the submodules directly (`from core.data.metadata import load_source`); this package
imports nothing itself, so `python -m core --help` stays fast.
"""
