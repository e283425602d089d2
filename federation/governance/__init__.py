"""Governance: policy, review, opinions, disputes."""
