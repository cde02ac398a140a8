"""Baselines the four CRTs are compared with."""
