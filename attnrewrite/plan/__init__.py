"""`--method auto`: a calibrated per-block, per-head plan that meets an error budget."""
