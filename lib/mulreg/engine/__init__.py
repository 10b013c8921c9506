"""Training and running: the plain loop (the specification), the engine, the run store, sweeps
and their two stages (selection, then confirmation), the Ray executor. Imports from
`mulreg.core` and `mulreg`, never from results, report or tools.
"""
