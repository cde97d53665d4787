"""Reproducible pipeline for micro-enterprise field experiments.

One module per DVC stage (synthetic, ingest, clean, construct, estimate, report);
each is a set of plain functions on DataFrames that a thin notebook narrates.
"""
