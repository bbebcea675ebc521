"""Figures drawn from run outputs (galleries of flagged training samples)."""
