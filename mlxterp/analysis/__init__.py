"""Analysis helpers written on the public trace API: token predictions, logit lens, patching sweeps."""
