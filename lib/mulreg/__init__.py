"""mulreg: reproduce and extend 'Multiplicative Regularization Generalizes Better Than Additive
Regularization' (Dubach, Abdallah, Poggio, 2025).

Modules, one job each: `config` (the typed run configuration), `data` (CIFAR-10 tasks),
`models` (the paper's CNNs), `penalties` (sum vs product of layer norms), `metrics` (margins,
ranks, norms), `train` (the training engine), `store` (the run store), `sweep` (grids, execution,
selection rule), `landscape` (loss surfaces, flatness), `plots`, `paper` (published numbers).
"""

__version__ = "0.1.0"
