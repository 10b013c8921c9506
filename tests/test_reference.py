"""Numbers pinned before a refactor: three runs (no penalty, additive, multiplicative) trained as one
vectorised stack on the tiny data set, and one alone with momentum; every history value and final
metric is compared with what the code stored at the commit named in the file.

Same device (CPU model and thread count as written by `mulreg.provenance.device_name`): equal to
the last bit. Another CPU may round differently, so there the check is close, not equal.
Regenerate only for a change meant to alter the numbers: MULREG_WRITE_REFERENCE=1 pytest this file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from mulreg.config import RunConfig
from mulreg.engine.train import train_group
from mulreg.provenance import device_name, git_state

REFERENCE = Path(__file__).parent / "reference" / "three_runs.json"
BASE = dict(device="cpu", init_scale=1.0, lr=0.02, batch_size=4, max_epochs=4, n_train=12, n_test=6,
            label_noise=0.2, seed=3, early_stopping=None, chance_margin=0.0)
GROUP = [dict(penalty="none"), dict(penalty="sum", lam=1e-2), dict(penalty="mul", lam=1e-2)]  # one vmap stack
ALONE = [dict(penalty="mul", lam=1e-2, momentum=0.9)]  # the unbatched path, with heavy-ball momentum


def numbers_of(configs: list[RunConfig], root) -> dict:
    results = train_group(configs, root=root, progress=False)
    return {r.config.key(): {"history": r.history.to_dict(orient="list"),
                             "metrics": {k: v for k, v in r.metrics.items() if isinstance(v, (int, float))},
                             "stop_reason": r.stop_reason} for r in results}


def assert_same(now, then, exact: bool, where: str = "") -> None:
    """`now` holds every number of `then`, equal (to the last bit if `exact`); `now` may add columns."""
    if isinstance(then, dict):
        assert set(then) <= set(now), f"{where}: missing {sorted(set(then) - set(now))}"
        for k in then:
            assert_same(now[k], then[k], exact, f"{where}/{k}")
    elif isinstance(then, list):
        assert len(now) == len(then), where
        for i, (a, b) in enumerate(zip(now, then)):
            assert_same(a, b, exact, f"{where}[{i}]")
    elif isinstance(then, float) and math.isnan(then):
        assert isinstance(now, float) and math.isnan(now), where
    elif exact or not isinstance(then, float):
        assert now == then, f"{where}: {now!r} != {then!r}"
    else:
        assert now == pytest.approx(then, rel=1e-4, abs=1e-6), where


def test_three_runs_give_the_numbers_stored_before_the_refactor(tiny_cifar_image_folder):
    now = {name: numbers_of([RunConfig.parse({**BASE, **c}) for c in configs], tiny_cifar_image_folder)
           for name, configs in (("group", GROUP), ("alone", ALONE))}
    if os.environ.get("MULREG_WRITE_REFERENCE"):
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps({"commit": git_state()[0], "device": device_name("cpu"),
                                         "runs": now}, indent=1) + "\n")
        pytest.skip(f"wrote {REFERENCE}")
    stored = json.loads(REFERENCE.read_text())
    assert_same(json.loads(json.dumps(now)), stored["runs"], exact=stored["device"] == device_name("cpu"))
