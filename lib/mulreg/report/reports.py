"""Batch execution of the paper notebooks: papermill on the `mulreg` kernel, nbconvert to HTML.

`run_notebooks(profile)` executes the paper's notebooks (`PAPER`, 01-05 and the ledger 08; another one by its
number) with `params/<profile>/<stem>.yaml`, writes the executed copy, two HTML exports (full, and
code hidden) and its outcome (`<stem>.outcome.json`) to `reports/<profile>/`, and rebuilds
`index.html` from every outcome there, so notebooks run one at a time still make one index. A
notebook without a report is listed with its estimated cost and the command that runs it. A failing
notebook is reported with its failing cell and error; the others still run; the return code is
non-zero if any failed.
"""

from __future__ import annotations

import ast
import html
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import jinja2
import nbformat
import pandas as pd
import papermill
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.paths import jupyter_runtime_dir
from nbconvert import HTMLExporter

from mulreg import provenance
from mulreg.config import PROJECT_ROOT, ConfigError, load_yaml
from mulreg.engine.store import writable_folder
from mulreg.progress import reporting
from mulreg.results import ledger

NOTEBOOKS = PROJECT_ROOT / "notebooks"
KERNEL = "mulreg"
PAPER = ("01", "02", "03", "04", "05", "08")  # the paper's figures and tables, then the claims ledger: `make figures`
OUTCOME = ".outcome.json"
LEDGER = "claims_ledger"  # the table notebook 08 saves, shown first in the index


class IPCKernelManager(AsyncKernelManager):
    """Kernels on local IPC sockets rather than TCP ports: nothing listens on the network, and
    ipykernel has no reason to warn about unencrypted TCP once per notebook. The sockets live in
    Jupyter's runtime folder under a name of their own (jupyter_client's default, `kernel-ipc-N` in the
    working folder, left sockets in notebooks/ whenever a kernel was killed)."""

    kernel_log: Path | None = None  # where the kernel's own output goes (`execute` sets it per notebook)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.transport = "ipc"
        runtime = Path(jupyter_runtime_dir())
        runtime.mkdir(parents=True, exist_ok=True)
        self.ip = str(runtime / f"mulreg-{uuid.uuid4().hex[:12]}-ipc")

    async def start_kernel(self, **kwargs):
        """The kernel with its stdout and stderr in `kernel_log`: its messages (an interrupted cell's ZMQ
        traceback, say) go to the log beside the executed notebook, not into the terminal."""
        if self.kernel_log is None:
            return await super().start_kernel(**kwargs)
        with open(self.kernel_log, "wb") as log:
            return await super().start_kernel(stdout=log, stderr=log, **kwargs)


@dataclass
class Outcome:
    stem: str
    seconds: float
    error: str | None
    figures: list[Path]


def notebooks(prefix: str | None = None, every: bool = False) -> list[Path]:
    """The notebooks whose name starts with `prefix`; without one the paper's (`PAPER`), or with
    `every` all of them."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    chosen = [nb for nb in found if (nb.stem.startswith(prefix) if prefix else every or nb.stem[:2] in PAPER)]
    if not chosen:
        raise ConfigError(f"--nb: no notebook in {NOTEBOOKS} starts with {prefix!r}; have: {[n.stem for n in found]}")
    return chosen


def parameters(profile: str, stem: str) -> dict:
    path = PROJECT_ROOT / "params" / profile / f"{stem}.yaml"
    if not path.exists():
        raise ConfigError(f"missing parameter file {path} (profile {profile!r}, notebook {stem})")
    return load_yaml(path) or {}


def checked_parameters(profile: str, chosen: list[Path], overrides: dict | None = None) -> dict[str, dict]:
    """Each notebook's parameters (its profile file, then `overrides` for the names it defines),
    refusing before anything runs a file key the notebook's `parameters` cell lacks, and an
    override that no chosen notebook defines: papermill would only warn, and run the wrong thing."""
    out, used = {}, set()
    for nb in chosen:
        known = papermill.inspect_notebook(nb)  # name → its default (source text) and help
        values = parameters(profile, nb.stem)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"params/{profile}/{nb.stem}.yaml: {', '.join(unknown)} is not a parameter of "
                              f"{nb.stem}; its parameters: {', '.join(sorted(known))}")
        mine = {k: v for k, v in (overrides or {}).items() if k in known}
        for name, value in mine.items():
            _check_type(name, value, known[name].get("default"), nb.stem)
        used |= set(mine)
        out[nb.stem] = values | mine
        spec = _checked_sweep(nb.stem, out[nb.stem], set(mine))
        _check_levels(nb.stem, out[nb.stem], set(mine), profile, spec)
    unused = sorted(set(overrides or {}) - used)
    if unused:
        raise ConfigError(f"-p/--params: {', '.join(unused)} is not a parameter of "
                          f"{', '.join(nb.stem for nb in chosen)}")
    return out


def _check_type(name: str, value, default_source: str | None, stem: str) -> None:
    """An override of the type of the notebook's default (any type where the default is None)."""
    try:
        default = ast.literal_eval(default_source or "None")
    except (ValueError, SyntaxError):
        return
    if default is None or value is None:
        return
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and (isinstance(default, float) or isinstance(value, int))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"-p/--params {name}: {value!r} is a {type(value).__name__}; {stem} takes a "
                          f"{type(default).__name__} (its default: {default!r})")


def _checked_sweep(stem: str, params: dict, overridden: set[str]):
    """The notebook's sweep (None for a notebook without one) with its class pair and seeds
    overridden, expanded into run configs: a value no run accepts is refused here, naming the
    parameter, before any kernel starts."""
    if "sweep" not in params:
        return None
    from mulreg.results.analysis import load_sweep

    changed = sorted({"classes", "seeds"} & overridden)
    try:
        spec = load_sweep(str((NOTEBOOKS / params["sweep"]).resolve()), classes=params.get("classes"),
                          seeds=params.get("seeds"))
        spec.configs()
    except (ConfigError, TypeError, ValueError) as err:
        if not changed:
            raise
        shown = ", ".join(f"{k}={params[k]!r}" for k in changed)
        raise ConfigError(f"-p/--params {shown}: not accepted by {stem}: {err}") from None
    return spec


# Parameters whose values must be label-noise levels the notebook's sweep reports.
NOISE_PARAMETERS = ("table_noise", "dynamics_noise", "layer_noise", "landscape_noise")


def _check_levels(stem: str, params: dict, overridden: set[str], profile: str, spec) -> None:
    """Each noise-level parameter names levels the notebook's sweep (`spec`) trains and reports,
    before any kernel starts (a level it lacks would fail inside the notebook with a KeyError)."""
    named = [k for k in NOISE_PARAMETERS if params.get(k) is not None]
    if not named or spec is None:
        return
    from mulreg.results.analysis import reported_levels

    levels = reported_levels(spec)
    for name in named:
        values = params[name] if isinstance(params[name], list) else [params[name]]
        wrong = [v for v in values if not any(math.isclose(v, level) for level in levels)]
        if wrong:
            where = "-p/--params" if name in overridden else f"params/{profile}/{stem}.yaml:"
            raise ConfigError(f"{where} {name} {params[name]!r}: {stem}'s sweep ({params['sweep']}) reports "
                              f"label noise {', '.join(f'{v:g}' for v in levels)} only; choose among those")


def run_notebooks(profile: str, prefix: str | None = None, overrides: dict | None = None,
                  costs: dict[str, str] | None = None, timeout: int | None = None) -> int:
    """Execute the chosen notebooks with their profile's parameters (and `overrides`), export HTML,
    record each outcome and rebuild the index (`costs`: a line per notebook, shown for those without
    a report; `timeout`: the seconds a cell may run); 1 if any notebook failed."""
    chosen = notebooks(prefix)
    params = checked_parameters(profile, chosen, overrides)
    out_dir = preflight(profile, params)
    costs = costs or {}
    outcomes = []
    with reporting():  # kernels inherit it: a line per finished run instead of progress bars
        for i, nb in enumerate(chosen, 1):
            print(f"[{i}/{len(chosen)}] {nb.stem} ({profile}) ...", end=" ", flush=True)
            outcome = _run_one(nb, params[nb.stem], out_dir, profile, costs, timeout)
            outcomes.append(outcome)
            status = "ok" if outcome.error is None else f"FAILED\n{outcome.error}"
            print(f"{status} in {outcome.seconds:.0f} s", flush=True)
    write_index(out_dir, profile, recorded(out_dir), costs)
    failed = [o.stem for o in outcomes if o.error]
    print(f"reports in {out_dir / 'index.html'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _run_one(nb: Path, params: dict, out_dir: Path, profile: str, costs: dict[str, str],
             timeout: int | None) -> Outcome:
    """Execute one notebook and record its outcome; the index calls it unfinished while it runs and
    interrupted if Ctrl-C or SIGTERM stops it."""
    incomplete(nb, out_dir, UNFINISHED)  # what the index says if this process is killed before it ends
    write_index(out_dir, profile, recorded(out_dir), costs)
    start = time.perf_counter()
    try:
        outcome = execute(nb, params, out_dir, timeout)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the index must not keep calling this notebook "ok"
        # the abandoned cell's asyncio task can end in DeadKernelError as papermill shuts the kernel down,
        # and asyncio would log it with a traceback as the task is collected, after "interrupted"
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        incomplete(nb, out_dir, INTERRUPTED, time.perf_counter() - start)
        write_index(out_dir, profile, recorded(out_dir), costs)
        raise
    (out_dir / f"{nb.stem}{OUTCOME}").write_text(json.dumps(asdict(outcome), default=str))
    return outcome


def preflight(profile: str, params: dict[str, dict]) -> Path:
    """Before anything trains or a kernel starts: the `mulreg` kernel is installed and its Python exists,
    and the reports folder and each notebook's figures folder can be written. Returns the reports folder."""
    _check_kernel()
    for stem, values in params.items():
        writable_folder(_figures_dir(values), f"{stem}'s figures_dir")
    return writable_folder(reports_root() / profile, "reports")


def reports_root() -> Path:
    """Where executed notebooks, HTML and the index go: $MULREG_REPORTS, else `reports/` in the checkout."""
    return Path(os.environ.get("MULREG_REPORTS") or PROJECT_ROOT / "reports")


def _check_kernel() -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    install = f"{sys.executable} -m ipykernel install --sys-prefix --name {KERNEL}"
    try:
        python = KernelSpecManager().get_kernel_spec(KERNEL).argv[0]
    except NoSuchKernel:
        raise ConfigError(f"the Jupyter kernel {KERNEL!r} is not installed; `{install}` installs it (as `make setup` "
                          "does)") from None
    if not shutil.which(python):
        raise ConfigError(f"the Jupyter kernel {KERNEL!r} runs {python}, which is not there (a moved or deleted "
                          f"environment); `{install}` installs it again for this one")


def _figures_dir(params: dict) -> Path:
    return (NOTEBOOKS / params.get("figures_dir", "../reports/quick/figures")).resolve()


def recorded_sweeps(profile: str) -> list[Path]:
    """The sweep files the paper's training notebooks (`PAPER`) read whose store the results of
    record hold: what `make figures` retrains and checks against the record (a reproduction check)."""
    from mulreg.engine.sweep import SweepSpec
    from mulreg.results import analysis, record

    found = []
    for nb in notebooks():
        sweep = parameters(profile, nb.stem).get("sweep")
        path = (NOTEBOOKS / sweep).resolve() if sweep else None
        if path and path not in found and analysis.evidence().has(record.store_name(SweepSpec.from_yaml(path)),
                                                                  "selection"):
            found.append(path)
    return found


INTERRUPTED = "interrupted (Ctrl-C or SIGTERM) before its last cell ran: no report"
UNFINISHED = "started, not finished: still running, or its runner was killed: no report"
TIMED_OUT = "timed out"
INCOMPLETE = (INTERRUPTED, UNFINISHED, TIMED_OUT)  # outcomes whose executed copy stops short: only the .ipynb is linked


def incomplete(nb: Path, out_dir: Path, why: str, seconds: float = 0.0) -> None:
    """Record `nb` as not finished (`why`): its outcome says so, and its HTML reports (of an earlier,
    complete run, or none) are removed, so nothing that looks complete is linked; a partial .ipynb is kept."""
    for stale in (out_dir / f"{nb.stem}.html", out_dir / f"{nb.stem}.nocode.html"):
        stale.unlink(missing_ok=True)
    outcome = Outcome(nb.stem, seconds, f"  {why}; rerun `make figures NB={nb.stem[:2]}`", [])
    (out_dir / f"{nb.stem}{OUTCOME}").write_text(json.dumps(asdict(outcome), default=str))


def execute(nb: Path, params: dict, out_dir: Path, timeout: int | None = None) -> Outcome:
    executed = out_dir / nb.name
    start = time.perf_counter()
    error = None
    IPCKernelManager.kernel_log = out_dir / f"{nb.stem}.kernel.log"
    try:
        papermill.execute_notebook(nb, executed, parameters=params, kernel_name=KERNEL, cwd=NOTEBOOKS,
                                   progress_bar=False, log_output=False, kernel_manager_class=IPCKernelManager,
                                   execution_timeout=timeout)
    except papermill.PapermillExecutionError as err:
        error = f"  cell {err.exec_count}: {err.ename}: {err.evalue}"
    except TimeoutError as err:  # nbclient's CellTimeoutError (--timeout), or a kernel that stopped answering
        error = f"  {TIMED_OUT}: {str(err).splitlines()[0]} (--timeout); the executed copy stops there"
    except Exception as err:  # noqa: BLE001 - kernel death, missing kernel...: report, go on
        error = f"  {type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    cut_short = error is not None and error.lstrip().startswith(TIMED_OUT)
    if executed.exists() and not cut_short:  # a notebook stopped mid-way gets no report that looks whole
        export_html(executed)
    figures = sorted(_figures_dir(params).glob(f"{nb.stem[:2]}_*")) if error is None else []
    return Outcome(nb.stem, seconds, error, figures)


# nbconvert's 'lab' template without the scripts it would fetch from CDNs (require.js, MathJax,
# mermaid): the reports must open offline, and our figures need none of them.
OFFLINE_TEMPLATE = jinja2.DictLoader({"offline.html.j2": (
    "{%- extends 'lab/index.html.j2' -%}"
    + "".join(f"{{%- block {b} -%}}{{%- endblock {b} -%}}" for b in
              ("html_head_js_requirejs", "html_head_js_mathjax", "html_head_js_mermaidjs"))
)})


def export_html(executed: Path) -> None:
    """Full HTML and a code-hidden version, both self-contained and offline."""
    notebook = nbformat.read(executed, as_version=4)
    for suffix, hide in ((".html", False), (".nocode.html", True)):
        body, _ = HTMLExporter(extra_loaders=[OFFLINE_TEMPLATE], template_file="offline.html.j2",
                               exclude_input=hide, exclude_input_prompt=hide,
                               exclude_output_prompt=hide, embed_images=True).from_notebook_node(notebook)
        executed.with_suffix(suffix).write_text(body)


VERDICT = "_verdict"  # tables named *_verdict*.html beside the figures (`plots.save_table`) lead the index
THUMBNAIL_PX = 260


def recorded(out_dir: Path) -> list[Outcome]:
    """Every notebook's last outcome recorded in `out_dir`, in notebook order."""
    out = []
    for path in sorted(out_dir.glob(f"*{OUTCOME}")):
        o = json.loads(path.read_text())
        out.append(Outcome(o["stem"], o["seconds"], o["error"], [Path(f) for f in o["figures"]]))
    return out


def write_index(out_dir: Path, profile: str, outcomes: list[Outcome], costs: dict[str, str] | None = None) -> None:
    """index.html: the verdict table first (what a reader opens the reports for), then one row per
    notebook with its status, run time, reports and figure thumbnails, and one per notebook not run
    with its cost (`costs`) and command."""
    rows = []
    done = {o.stem for o in outcomes}
    for nb in notebooks(every=True):
        if nb.stem not in done:
            cost = html.escape((costs or {}).get(nb.stem, "cost: python -m mulreg estimate " + profile))
            rows.append(f"<tr><td>{nb.stem}</td><td>not run</td><td>—</td><td><code>make figures PROFILE={profile} "
                        f"NB={nb.stem[:2]}</code></td><td>{cost}</td></tr>")
    for o in outcomes:
        status = "ok" if o.error is None else f"<b>failed</b><pre>{html.escape(o.error)}</pre>"
        figs = " ".join(_thumbnail(f, out_dir) for f in o.figures if f.suffix == ".png")
        others = " · ".join(f'<a href="{os.path.relpath(f, out_dir)}">{f.name}</a>' for f in o.figures
                            if f.suffix in (".html", ".csv", ".vtp"))
        cut_short = any(why in (o.error or "") for why in INCOMPLETE)
        links = (f'<a href="{o.stem}.ipynb">ipynb (incomplete)</a>' if cut_short else
                 f'<a href="{o.stem}.html">full</a> · <a href="{o.stem}.nocode.html">no code</a>'
                 f' · <a href="{o.stem}.ipynb">ipynb</a>')
        rows.append(f"<tr><td>{o.stem}</td><td>{status}</td><td>{o.seconds:.0f} s</td>"
                    f"<td>{links}</td><td>{figs}<br><small>{others}</small></td></tr>")
    (out_dir / "index.html").write_text(
        f"<!doctype html><meta charset='utf-8'><title>mulreg reports ({profile})</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;"
        "vertical-align:top;text-align:left}img{margin:2px;border:1px solid #ddd}</style>"
        f"<h1>mulreg: paper notebooks, profile <code>{profile}</code></h1>"
        f"<p>{html.escape(provenance.caption(profile))} · {html.escape(provenance.device_name('cpu'))} (this "
        "machine; each notebook states the commit and device of the runs it read)</p>"
        + _ledger_section(outcomes, out_dir, profile)
        + _verdict_section(outcomes, out_dir)
        + "<h2>Notebooks</h2><table><tr><th>notebook</th><th>status</th><th>run time</th><th>report</th>"
        "<th>figures</th></tr>" + "".join(rows) + "</table>"
    )


def _prereg() -> str:
    found = provenance.prereg_commit()
    return (f"Pre-registration ({provenance.PREREGISTRATION}): commit {found.split()[0][:10]} of "
            f"{found.split()[1]}" if found else f"Pre-registration: {provenance.PREREGISTRATION}")


def cost_lines(table) -> dict[str, str]:
    """Per notebook, from `mulreg.tools.estimate.estimate`: its runs to train and hours here, in words."""
    out = {}
    for r in table.to_dict("records"):
        hours = "" if math.isnan(r["hours here"]) else f", about {60 * r['hours here']:.0f} min here"
        out[r["notebook"]] = f"{r['runs to train']} runs to train ({r['run-epochs']:,} run-epochs){hours}"
    return out


def _thumbnail(png: Path, out_dir: Path, width: int = THUMBNAIL_PX) -> str:
    href = html.escape(os.path.relpath(png, out_dir))
    name = html.escape(png.stem)
    return f'<a href="{href}" title="{name}"><img src="{href}" width="{width}" alt="{name}"></a>'


def _ledger_section(outcomes: list[Outcome], out_dir: Path, profile: str) -> str:
    """The claims ledger notebook 08 saved (`plots.save_table`), first: which of the paper's claims hold."""
    tables = [f for o in outcomes for f in o.figures if f.stem.endswith(LEDGER) and f.suffix == ".html" and f.exists()]
    if not tables:
        return (f"<h2>Which of the paper's claims hold?</h2><p>No claims ledger yet: <code>make figures "
                f"PROFILE={profile} NB=08</code> (it trains nothing; it reads the stores of 01 and 07).</p>")
    png = tables[0].with_suffix(".png")
    figure = f"<p>{_thumbnail(png, out_dir, width=900)}</p>" if png.exists() else ""
    csv = tables[0].with_suffix(".csv")
    said = f"<p><b>{html.escape(ledger.summary(pd.read_csv(csv)))}</b></p>" if csv.exists() else ""
    return ("<h2>Which of the paper's claims hold?</h2>" + said + "<p>The claims ledger (notebook 08, "
            '<a href="08_claims_ledger.html">its report</a>): one row per claim, the outcome of its registered test '
            "under the primary rule, what the data exclude, and which pre-registered replication decided it.</p>"
            + figure + tables[0].read_text())


def _verdict_section(outcomes: list[Outcome], out_dir: Path) -> str:
    """The verdict tables notebooks saved (`plots.save_table`), each with its figure when there is one."""
    tables = [f for o in outcomes for f in o.figures if VERDICT in f.stem and f.suffix == ".html" and f.exists()]
    if not tables:
        return "<p>No verdict table: notebook 01 did not run, or failed (see below).</p>"
    parts = []
    for t in tables:
        png = t.with_suffix(".png")
        figure = f"<p>{_thumbnail(png, out_dir, width=900)}</p>" if png.exists() else ""
        parts.append(f"<h3>{html.escape(t.stem)}</h3>" + t.read_text() + figure)
    return ("<h2>Does the paper's Fig. 1 hold here?</h2><p>Notebook 01's verdict on the confirmation runs "
            "(fresh seeds; docs/PREREGISTRATION.md): paired-by-seed differences in test accuracy (points) "
            "with 95 % t intervals, Holm-adjusted outcomes, for each claim under each epoch rule.</p>"
            + "".join(parts))
