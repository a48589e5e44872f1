"""Uncertainty-weighted fusion of geometry sources (fits, UV geometry maps)."""
