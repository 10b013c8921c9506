"""Offline GPU check: one call on a lent GPU machine measures what docs/PERFORMANCE.md ("Offline GPU
check") lists and writes $OUT/gpu_check.json and $OUT/gpu_check.md (rewritten after every row).

Run it through `gpu_check/gpu_check.sh`, which installs the wheels the GPU image lacks (from .whl/, made
by `make gpu-wheels`) and puts lib/ on the path: mulreg is imported from the checkout, never installed.

    bash gpu_check/gpu_check.sh                 # on a CUDA machine: every item, within 8 minutes
    bash gpu_check/gpu_check.sh --cpu --short   # the dry run tests/test_gpu_check.py makes
    bash gpu_check/gpu_check.sh --items b+,e --budget 240   # what an earlier call had no time for

Items (each a set of rows: item, setting, value, unit, status, notes):
  a  agreement of mulreg.engine.train (the engine) with mulreg.engine.loop.train_plain (the plain loop, on the CPU)
  b  binary throughput, eager and compiled, K runs per stack, each memory_format
  c  CUDA-graph capture with compile_mode "reduce-overhead"
  d  peak GPU memory of a stack against the footprint estimate × K
  e  one epoch of each notebook-06 arm (params/quick/regularisers_sweep.yaml), compiled
  f  the quick binary sweep (params/quick/binary_sweep.yaml, both stages) end to end

The data are synthetic (CIFAR-10's shapes, two classes, random pixels whose brightness depends on
the class), written straight into the decoded-data cache that mulreg.core.data reads: throughput,
memory and engine/loop agreement do not depend on pixel content; accuracies mean nothing.

Modules, one job each: `plan` (what is measured, in which order, with which share of the time),
`parent` (schedules and kills workers, keeps the report), `report` (the JSON and markdown table),
`worker` (a process that measures rows), `environment` (CUDA start, versions, what the engine reads,
the synthetic data), `items` (item letter → function), `agreement` (a), `throughput` (b, c),
`memory` (d), `sweeps` (e, f), `text` (formatting). The parent and the plan import no torch.
"""
