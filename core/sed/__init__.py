"""Sound event detection data: the field's file formats (DCASE event lists, score tables, URBAN-SED annotations) and
its metrics (sed_eval, sed_scores_eval)."""
