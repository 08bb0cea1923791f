"""Accuracy diff reports: what a rewrite costs, end to end and per attention block."""
