"""mulreg: reproduce and extend 'Multiplicative Regularization Generalizes Better Than Additive
Regularization' (Dubach, Abdallah, Poggio, 2025).

Modules, one job each: `config` (the typed run configuration), `data` (CIFAR-10 tasks),
`models` (the paper's CNNs), `penalties` (sum vs product of layer norms), `metrics` (margins,
ranks, norms), `train` (the training engine), `store` (the run store), `sweep` (grids, execution,
selection rule), `landscape` (loss surfaces, flatness), `plots`, `paper` (published numbers).
"""

import os

__version__ = "0.1.0"
CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS workspaces that make its results deterministic

# cuBLAS reads its workspace configuration once, when CUDA starts (after this import in any script
# or notebook that imports mulreg first): this value makes its results deterministic, which a run
# with `deterministic: true` needs; a value set before Python started is kept
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
