"""Hyper-parameter search with Optuna (the search behind resnet34_pcen_sam_8f_200e).

space.py: the 12 searched parameters and space files; study.py: storage, sampler, pruner, shared
studies; objective.py: a trial = mean over folds of the best validation composite; search.py: the
worker loop (budget, interrupts); live.py: the live trial view; report.py: best/top trials,
importances, plots, export.
"""
