"""The paper notebooks: committed clean, parametrised for every profile, and runnable headless.

(a) every notebook is committed without outputs or execution counts and starts its code with a
    cell tagged `parameters`;
(b) every profile has a params file per notebook, each key defined in the notebook's parameters
    cell, and notebooks 01-04 describe one and the same binary sweep;
(c) (slow, real CIFAR-10) the `smoke` profile through `mulreg.report.reports.run_notebooks`, the runner
    `make figures` uses: exit 0, HTML reports (full and code-hidden), index.html, figures, and no
    figure loading a script from a CDN.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import nbformat
import papermill
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
STEMS = tuple(sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")))  # found, not listed
PROFILES = tuple(sorted(p.name for p in (ROOT / "params").iterdir() if p.is_dir()))


def read(stem: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)


def parameters_cell(nb: nbformat.NotebookNode):
    return next(c for c in nb.cells if c.cell_type == "code")


def defaults(stem: str) -> dict:
    """Names and literal values assigned in the notebook's parameters cell."""
    tree = ast.parse(parameters_cell(read(stem)).source)
    out = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, \
            f"{stem}: the parameters cell must hold plain assignments, found {ast.dump(node)[:80]}"
        out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def params(profile: str, stem: str) -> dict:
    from mulreg.report.reports import parameters

    return parameters(profile, stem)


def sweeps() -> dict[str, list[str]]:
    """Sweep file ('binary' for binary_sweep.yaml) → the notebooks whose `sweep` parameter names it."""
    out: dict[str, list[str]] = {}
    for stem in STEMS:
        sweep = defaults(stem).get("sweep")
        if sweep:
            out.setdefault(Path(sweep).stem.removesuffix("_sweep"), []).append(stem)
    return out


SWEEPS = sweeps()


def test_the_notebooks_are_numbered_without_gaps_and_the_papers_read_two_sweep_files():
    assert [int(stem[:2]) for stem in STEMS] == list(range(1, len(STEMS) + 1))
    assert {"binary", "multiclass"} <= set(SWEEPS) and len(SWEEPS["binary"]) >= 4  # 01-04 share one
    assert PROFILES == ("paper", "quick", "smoke")


# ---- (a)
@pytest.mark.parametrize("stem", STEMS)
def test_committed_without_outputs(stem):
    nb = read(stem)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{stem}: cells {dirty} have outputs or execution counts (clear them, e.g. nbstripout)"
    assert nb.metadata.get("kernelspec", {}).get("name") == "mulreg"


@pytest.mark.parametrize("stem", STEMS)
def test_first_code_cell_is_tagged_parameters(stem):
    cell = parameters_cell(read(stem))
    assert "parameters" in cell.metadata.get("tags", []), f"{stem}: first code cell is not tagged 'parameters'"
    assert defaults(stem), f"{stem}: empty parameters cell"


@pytest.mark.parametrize("stem", STEMS)
def test_papermill_reads_every_parameter(stem):
    """papermill's own parser (used to warn about unknown parameters) sees every name; a comment
    with '=' in it, for one, makes it skip the line."""
    assert set(papermill.inspect_notebook(NOTEBOOK_DIR / f"{stem}.ipynb")) == set(defaults(stem))


# ---- (b)
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("stem", STEMS)
def test_params_file_keys_are_notebook_parameters(profile, stem):
    path = ROOT / "params" / profile / f"{stem}.yaml"
    assert path.exists(), f"missing {path}"
    values = params(profile, stem)
    unknown = set(values) - set(defaults(stem))
    assert not unknown, f"{path.name} ({profile}) sets {sorted(unknown)}, not parameters of {stem}"
    assert values.get("profile") == profile


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("task", SWEEPS)
def test_notebooks_read_their_profiles_one_sweep_file(profile, task):
    """01-04 read the same binary sweep file (or a run would be trained once per notebook), 05 the
    multiclass one, and the notebooks restate none of its settings."""
    expected = f"../params/{profile}/{task}_sweep.yaml"
    for stem in SWEEPS[task]:
        values = {**defaults(stem), **params(profile, stem)}
        assert values["sweep"] == expected, f"{stem} ({profile}) reads {values['sweep']}"
        restated = {"store", "seeds", "lam_sum", "lam_mul", "max_epochs", "init_scale"} & set(values)
        restated = {k for k in restated if values[k] is not None}  # `seeds` exists as a one-off override, unset
        assert not restated, f"{stem} ({profile}) restates sweep settings {sorted(restated)}"


def test_notebook_defaults_are_the_quick_profile():
    for stem in STEMS:
        d = defaults(stem)
        for key, value in params("quick", stem).items():
            assert d[key] == value, f"{stem}: default {key}={d[key]!r} but params/quick says {value!r}"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("task", SWEEPS)
def test_sweeps_of_every_profile_are_valid(profile, task):
    """Every run config of the profile's sweep files validates (without loading any data)."""
    from mulreg.engine.sweep import SweepSpec

    spec = SweepSpec.from_yaml(ROOT / "params" / profile / f"{task}_sweep.yaml")
    configs = spec.configs()
    quick = SweepSpec.from_yaml(ROOT / "params" / "quick" / f"{task}_sweep.yaml").configs()
    assert configs and {c.task for c in configs} == {quick[0].task}  # one task, the same in every profile
    # the profile's store, or one of its own for a separately registered replication (its stage plans apart)
    assert spec.store in (str(ROOT / "results" / profile), str(ROOT / "results" / f"{profile}-{task}"))


def test_quick_binary_sweep_is_in_the_papers_regime():
    """The settings issue 10 fixes for `quick`: the paper's init scale, optimiser and pool, no early
    stopping (epoch rules afterwards), and each λ grid with a value on either side of the middle."""
    from mulreg.engine.sweep import SweepSpec

    configs = SweepSpec.from_yaml(ROOT / "params" / "quick" / "binary_sweep.yaml").configs()
    c = configs[0]
    assert (c.init_scale, c.lr, c.batch_size, c.optimizer, c.momentum) == (0.2, 0.03, 16, "sgd", 0.0)
    assert c.n_train is None and c.n_test is None and c.classes == (3, 4)
    assert all(x.early_stopping is None for x in configs)
    for pen in ("sum", "mul"):
        assert len({x.lam for x in configs if x.penalty == pen}) >= 3


def test_quick_regularisers_sweep_keeps_the_regime_and_changes_one_thing_per_arm():
    """Notebook 06's arms differ from the plain network in one setting each, in the regime of 01-04."""
    from mulreg.engine.sweep import SweepSpec

    configs = SweepSpec.from_yaml(ROOT / "params" / "quick" / "regularisers_sweep.yaml").configs()
    assert {(c.init_scale, c.max_epochs, c.lr, c.early_stopping) for c in configs} == {(0.2, 90, 0.03, None)}
    changed = {(c.penalty == "l1", c.model.dropout > 0, c.augment, c.model.batch_norm, c.model.weight_norm)
               for c in configs}
    assert all(sum(flags) <= 1 for flags in changed) and len(changed) == 6
    assert all(c.effective_lr == (c.model.batch_norm or c.model.weight_norm) for c in configs)


# ---- (c)
SCRIPT_SRC = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?([^\"' >]+)", re.I)
JS_IMPORT = re.compile(r"\bimport\s*(?:[^;]*?\bfrom\s*)?[\"'](https?://[^\"']+)[\"']")


def external_scripts(html: str) -> list[str]:
    """URLs the page loads code from: <script src=...> and ES-module imports of http(s) URLs.
    (URLs that merely appear inside embedded code, e.g. in plotly.js's own bundle, do not count.)"""
    return [u for u in SCRIPT_SRC.findall(html) + JS_IMPORT.findall(html) if u.startswith(("http:", "https:", "//"))]


@pytest.fixture(scope="module")
def smoke_run():
    if not os.environ.get("MULREG_DATA"):
        pytest.skip("MULREG_DATA is not set (the smoke profile trains on real CIFAR-10)")
    # the runner executes the notebooks in kernels that inherit this environment; use the
    # project's decoded-data cache (as `make figures` does) rather than the per-test temp cache
    saved = os.environ.pop("MULREG_CACHE", None)
    try:
        from mulreg.report.reports import run_notebooks

        # `NB=07` and `NB=09` (the replications, on request), then `make figures` (01-05 and the ledger), then `NB=06`
        code = sum(run_notebooks("smoke", nb) for nb in ("07", "09", None, "06"))
    finally:
        if saved is not None:
            os.environ["MULREG_CACHE"] = saved
    return code, ROOT / "reports" / "smoke"


@pytest.mark.slow
@pytest.mark.cifar
def test_smoke_profile_runs_every_notebook(smoke_run):
    from mulreg.progress import in_report

    code, out = smoke_run
    assert code == 0, f"run_notebooks('smoke') failed; see {out / 'index.html'}"
    assert not in_report()  # the runner's switch to plain lines ends with it: later work in this process shows bars
    index = (out / "index.html").read_text()
    for stem in STEMS:
        for suffix in (".html", ".nocode.html", ".ipynb"):
            assert (out / f"{stem}{suffix}").exists(), f"missing {stem}{suffix}"
        assert stem in index
        figures_dir = (NOTEBOOK_DIR / params("smoke", stem).get("figures_dir", "../figures")).resolve()
        pngs = sorted(figures_dir.glob(f"{stem[:2]}_*.png"))
        assert pngs, f"{stem} wrote no PNG figure into {figures_dir}"
        for png in pngs:
            assert png.with_suffix(".svg").exists(), f"{png.name} has no SVG twin"


@pytest.mark.slow
@pytest.mark.cifar
def test_smoke_reports_load_no_plotly_from_a_cdn(smoke_run):
    """The figures do not depend on a CDN: no page loads plotly.js from cdn.plot.ly, and no cell
    output (where the figures are) loads any script from the network."""
    _, out = smoke_run
    for stem in STEMS:
        for suffix in (".html", ".nocode.html"):
            html = (out / f"{stem}{suffix}").read_text()
            scripts = external_scripts(html)
            assert not [s for s in scripts if "plot.ly" in s or "plotly" in s], f"{stem}{suffix}: {scripts}"
        nb = nbformat.read(out / f"{stem}.ipynb", as_version=4)
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                html = output.get("data", {}).get("text/html", "")
                assert not external_scripts(html if isinstance(html, str) else "".join(html)), \
                    f"{stem}: a cell output loads a script from the network"
        figures_dir = (NOTEBOOK_DIR / params("smoke", stem).get("figures_dir", "../figures")).resolve()
        for html_file in sorted(figures_dir.glob(f"{stem[:2]}_*.html")):
            assert not external_scripts(html_file.read_text()), f"{html_file.name} is not self-contained"


@pytest.mark.slow
@pytest.mark.cifar
def test_smoke_reports_load_no_script_from_a_cdn(smoke_run):
    _, out = smoke_run
    for stem in STEMS:
        for suffix in (".html", ".nocode.html"):
            scripts = external_scripts((out / f"{stem}{suffix}").read_text())
            assert not [s for s in scripts if "cdn" in s], f"{stem}{suffix} loads {scripts}"


@pytest.mark.slow
@pytest.mark.cifar
def test_smoke_reports_hold_no_warning_box_and_no_escape_codes(smoke_run):
    """What a reader sees: no stderr box (a TqdmWarning, a library warning) and no progress-bar
    redraws; the sweep cells log one line per finished run instead."""
    _, out = smoke_run
    for stem in STEMS:
        nb = nbformat.read(out / f"{stem}.ipynb", as_version=4)
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                text = output.get("text", "")
                assert not (output.get("output_type") == "stream" and output.get("name") == "stderr"), \
                    f"{stem}: stderr output in a report: {text[:200]!r}"
                assert "\x1b[" not in text and "\r" not in text, f"{stem}: escape codes in {text[:200]!r}"
    log = "".join(o.get("text", "") for c in nbformat.read(out / f"{STEMS[0]}.ipynb", as_version=4).cells
                  if "run_stages" in c.source for o in c.get("outputs", []))
    trained = re.search(r"(\d+) trained now", log)
    assert trained, log[:500]
    assert log.count("seed=") == int(trained.group(1)), log[:500]  # one line per run trained here


@pytest.mark.parametrize("stem", STEMS)
def test_no_notebook_rebinds_a_module_it_imports(stem):
    """`stats = stats.group_stats(...)` runs once top to bottom, then breaks the next call of a cell
    above it in JupyterLab: no imported mulreg module name is assigned to."""
    tree = ast.parse("\n".join(c.source for c in read(stem).cells if c.cell_type == "code"))
    modules = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module.startswith("mulreg") for a in node.names}
    assigned = {t.id for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.For, ast.AugAssign))
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                for t in ast.walk(target) if isinstance(t, ast.Name)}
    assert modules and not modules & assigned, f"{stem} rebinds {sorted(modules & assigned)}"


def test_the_index_is_built_from_every_recorded_report_and_lists_the_others_with_their_cost(tmp_path):
    """Notebooks run one at a time (`make figures NB=01`, then `NB=02`) make one index; a notebook
    without a report is listed with its cost and the command that runs it."""
    import json

    from mulreg.report.reports import OUTCOME, recorded, write_index

    table = tmp_path / "01_verdict.html"
    table.write_text("<table><tr><td>the verdict</td></tr></table>")
    for stem, figures in (("01_noise_robustness", [str(table)]), ("02_training_dynamics", [])):
        (tmp_path / f"{stem}{OUTCOME}").write_text(json.dumps({"stem": stem, "seconds": 3.0, "error": None,
                                                               "figures": figures}))
    write_index(tmp_path, "quick", recorded(tmp_path), {"06_beyond_the_paper": "40 runs to train, about 150 min here"})
    index = (tmp_path / "index.html").read_text()
    assert "the verdict" in index and "No verdict table" not in index
    assert "01_noise_robustness" in index and "02_training_dynamics" in index
    assert "make figures PROFILE=quick NB=06" in index and "40 runs to train, about 150 min here" in index
    assert "make figures PROFILE=quick NB=03" in index  # not run either: listed, not silently left out
    assert "PREREGISTRATION.md" in index
    assert "No claims ledger yet" in index and "make figures PROFILE=quick NB=08" in index
    ledger = tmp_path / "08_claims_ledger.html"
    ledger.write_text("<table><tr><td>the ledger row</td></tr></table>")
    (tmp_path / f"08_claims_ledger{OUTCOME}").write_text(json.dumps({"stem": "08_claims_ledger", "seconds": 1.0,
                                                                     "error": None, "figures": [str(ledger)]}))
    write_index(tmp_path, "quick", recorded(tmp_path))
    index = (tmp_path / "index.html").read_text()
    assert index.index("the ledger row") < index.index("the verdict")  # the ledger opens the index
    import pandas as pd  # issue 38: the index opens with the ledger's own sentence, counted from its table

    rows = [("a (noise 0)", "Fig. 1", "holds", "the paper's gap excluded (Holm p 0.01)"),
            ("a (noise 0, authors' rule)", "Fig. 1", "reversed (x)", "—"),
            ("B1: b (noise 0)", "Fig. 2", "not resolved", "the paper's value not excluded")]
    pd.DataFrame(rows, columns=["claim", "where", "outcome", "what the data exclude"]).to_csv(
        ledger.with_suffix(".csv"), index=False)
    write_index(tmp_path, "quick", recorded(tmp_path))
    index = (tmp_path / "index.html").read_text()
    said = ("2 claims under the primary reading (the model at its best validation-loss epoch): 1 holds, 1 not "
            "resolved. Fig. 1 under the paper&#x27;s own reading (the authors&#x27; rule): 1 reversed. The data "
            "exclude the paper&#x27;s own number for 1 claim(s): a (noise 0).")
    assert said in index and index.index(said) < index.index("the ledger row")


def test_make_figures_runs_the_papers_notebooks_and_another_by_its_number():
    from mulreg.report.reports import notebooks

    assert [nb.stem for nb in notebooks()] == list(STEMS[:5]) + ["08_claims_ledger"]  # the ledger reads, trains nothing
    assert [nb.stem for nb in notebooks("06")] == ["06_beyond_the_paper"]
    assert [nb.stem for nb in notebooks(every=True)] == list(STEMS)


def test_kernel_sockets_live_in_the_runtime_folder_under_names_of_their_own():
    """jupyter_client's default for IPC kernels is `kernel-ipc-N` in the working folder: every kernel killed
    during a run (a stopped `make figures`, the fault tests) left its sockets in notebooks/."""
    from jupyter_core.paths import jupyter_runtime_dir

    from mulreg.report.reports import IPCKernelManager

    first = Path(IPCKernelManager().ip)
    second = Path(IPCKernelManager().ip)
    assert first.is_absolute() and first.parent == Path(jupyter_runtime_dir())
    assert first != second
