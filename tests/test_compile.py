"""Compiled training in a long-lived process: every kind of run compiles behind its own entry point,
as one whole graph, and a run's numbers do not depend on what its process compiled before."""

from __future__ import annotations

import functools

import pytest
import torch

from mulreg.config import PROJECT_ROOT, RunConfig
from mulreg.engine.sweep import SweepSpec
from mulreg.engine.train import train

TINY = dict(device="cpu", compile=True, batch_size=4, max_epochs=1, early_stopping=None, init_scale=1.0, lr=0.01)


def kind(config: RunConfig) -> tuple:
    """What changes a compiled graph among notebook 06's runs."""
    m = config.model
    return config.penalty, m.dropout, config.augment, m.batch_norm, m.weight_norm, config.effective_lr


def notebook_06_arms() -> list[RunConfig]:
    """One run of each kind that notebook 06's quick sweep trains, shrunk to the tiny data set."""
    spec = SweepSpec.from_yaml(PROJECT_ROOT / "params/quick/regularisers_sweep.yaml")
    first = {}
    for config in spec.configs():
        first.setdefault(kind(config), config)
    return [c.replace(**TINY) for c in first.values()]


def test_notebook_06s_arms_have_at_least_the_kinds_the_issue_names():
    kinds = [kind(c) for c in notebook_06_arms()]
    assert {k[0] for k in kinds} >= {"none", "sum", "mul", "l1"}
    assert any(k[1] for k in kinds) and any(k[2] for k in kinds)  # dropout, augmentation
    assert any(k[3] for k in kinds) and any(k[4] for k in kinds)  # batch norm, weight norm
    assert len(kinds) > torch._dynamo.config.recompile_limit  # more kinds than one code object may hold


def test_every_arm_of_notebook_06_compiles_in_one_process_within_the_default_recompile_limit(
        tiny_cifar_image_folder, monkeypatch):
    """Dynamo keeps compiled graphs per code object for the whole process; were the kinds to share
    one, this process would pass the limit (8) and, with the flag below, raise instead of silently
    training the rest eagerly. The graphs are built with dynamo's eager backend: the cache and its
    limit are dynamo's, whatever backend then compiles a graph, and this keeps the test fast."""
    from torch._dynamo.utils import counters

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": "eager"}))
    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        assert torch._dynamo.config.recompile_limit == 8  # the default
        for config in notebook_06_arms():
            result = train(config, root=tiny_cifar_image_folder, progress=False)
            assert len(result.history) == 1
    assert counters["stats"]["unique_graphs"] - graphs >= 3 * len(notebook_06_arms())  # step, 2 evaluators


def assert_identical(a, b) -> None:
    import pandas as pd

    pd.testing.assert_frame_equal(a.history, b.history, check_exact=True)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert (a.test_correct == b.test_correct).all()


LOWERED_LIMIT = 4  # graphs per code object: three other kinds of step fill it (the default, 8, needs minutes here)


@pytest.mark.slow
def test_a_compiled_run_gives_the_same_numbers_fresh_and_after_its_process_compiled_other_kinds(
        tiny_cifar_image_folder):
    """A run trained first (dynamo's caches empty, as in a fresh process) and trained again after
    its process compiled other kinds of step (L1, momentum, the effective learning rate) gives
    bit-identical numbers on the CPU. Were the kinds to share a code object, the run would meet a
    full cache and be trained eagerly, which changes its last bits. The limit is lowered so that
    three kinds fill it; the compiler is the real one (inductor), whose numbers differ from eager."""
    run = functools.partial(train, root=tiny_cifar_image_folder, progress=False)
    config = RunConfig.parse({**TINY, "penalty": "sum", "lam": 1e-2, "lr": 0.005, "label_noise": 0.2,
                              "max_epochs": 2})
    others = [config.replace(penalty="l1", lam=1e-4), config.replace(momentum=0.9),
              config.replace(effective_lr=True)]
    torch._dynamo.reset()
    fresh = run(config)
    assert all(v.isfinite().all() for v in fresh.state_dict.values())  # NaN would equal nothing
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=LOWERED_LIMIT):
        for other in others:
            run(other)
        after = run(config)
    assert_identical(after, fresh)
