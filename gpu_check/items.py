"""The item functions by item letter: each takes the worker and a planned row's params (plan.py)."""

from __future__ import annotations

from gpu_check.agreement import agreement
from gpu_check.memory import memory
from gpu_check.sweeps import arms, sweep
from gpu_check.throughput import graphs, throughput


def environment(w, **params) -> dict:
    return w.item_env(**params)


FUNCTIONS = {"env": environment, "a": agreement, "b": throughput, "c": graphs, "d": memory, "e": arms, "f": sweep}
