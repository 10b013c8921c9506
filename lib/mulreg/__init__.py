"""mulreg: reproduce and extend 'Multiplicative Regularization Generalizes Better Than Additive
Regularization' (Dubach, Abdallah, Poggio, 2025).

The package's map (its folders are its layers, imports point down) is the "Layout" section of
README.md, the one description kept up to date.
"""

import os

__version__ = "0.1.0"
CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS workspaces that make its results deterministic

# cuBLAS reads its workspace configuration once, when CUDA starts (after this import in any script
# or notebook that imports mulreg first): this value makes its results deterministic, which a run
# with `deterministic: true` needs; a value set before Python started is kept
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
