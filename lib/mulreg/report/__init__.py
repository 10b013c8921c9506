"""Presenting: sentences, colours, figures (static and interactive), the notebook runner and
the runs listing. Reads numbers from `mulreg.results`; computes none of its own.
"""
