"""Command line: `python -m mulreg --help` lists the commands, `COMMAND --help` each one's options;
README.md ("Layout") maps the package behind them."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from mulreg.config import ConfigError, MulregError, RunConfig, deep_merge, load_yaml, nest, parse_yaml

# command-line flag → RunConfig field (dotted for nested ones)
TRAIN_FLAGS = {
    "task": str, "penalty": str, "lam": float, "noise": float, "seed": int, "epochs": int,
    "init_scale": float, "lr": float, "momentum": float, "optimizer": str, "batch_size": int,
    "n_train": int, "n_test": int, "val_fraction": float, "device": str,
    "patience": int, "monitor": str, "dropout": float,
}
SWITCHES = {"augment": "random crops (4-pixel padding) and horizontal flips of training images",
            "batch_norm": "batch normalisation after every conv", "weight_norm": "W = g·V/‖V‖ in every layer",
            "compile": "torch.compile the training step (faster after a one-off compilation)"}
FIELD = {"noise": "label_noise", "epochs": "max_epochs", "dropout": "model.dropout", "batch_norm": "model.batch_norm",
         "weight_norm": "model.weight_norm", "patience": "early_stopping.patience", "monitor": "early_stopping.monitor"}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    Stopped.signal = None
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = {sig: signal.signal(sig, _stopped) for sig in STOP_SIGNALS
                if main_thread and signal.getsignal(sig) is not signal.SIG_IGN}  # ignored (a background job's): kept
    try:
        commands = {"train": _train, "sweep": _sweep, "runs": _runs, "figures": _figures, "estimate": _estimate,
                    "record": _record, "verify": _verify, "readme": _readme}
        code = commands[args.command](args)
    except MulregError as err:  # anticipated: bad input, missing data, unavailable device
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PermissionError as err:  # a store, report or data folder of another user, or read-only
        print(f"error: permission denied on {err.filename}: this user needs to read and write there (ask its "
              "owner, or give another folder)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (`_stopped`): workers already stopped
        return _interrupted(args.command)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if Stopped.signal is None else _interrupted(args.command)  # a library swallowed the interrupt


KEPT = "finished runs and checkpoints are kept; rerun the same command to resume"
INTERRUPTED = {"verify": "a retraining (--retrain) trains into a temporary store, now removed: rerun to start again; "
               "the store and the record are unchanged"}


def _interrupted(command: str) -> int:
    print(f"\ninterrupted: {INTERRUPTED.get(command, KEPT)}", file=sys.stderr)
    return 128 + (Stopped.signal or signal.SIGINT)


def parser() -> argparse.ArgumentParser:
    """Every command and its options."""
    parser = argparse.ArgumentParser(prog="mulreg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one run and write its result as JSON")
    t.add_argument("--config", help="YAML file of RunConfig fields (flags override it)")
    for flag, kind in TRAIN_FLAGS.items():
        t.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind)
    t.add_argument("--classes", nargs=2, metavar=("NEG", "POS"),
                   help="binary task: two CIFAR-10 classes (names or indices 0-9) → −1, +1; default cat deer")
    t.add_argument("--no-early-stopping", action="store_true")
    for flag, help_text in SWITCHES.items():
        t.add_argument(f"--{flag.replace('_', '-')}", dest=flag, action="store_true", default=None, help=help_text)
    t.add_argument("--out", default="result.json", help="where to write the result (default: %(default)s)")

    s = sub.add_parser("sweep", help="run a sweep file (its selection grid, then its confirmation stage where it "
                       "has one); completed runs are skipped, so rerunning resumes")
    s.add_argument("file")
    s.add_argument("--executor", choices=["local", "ray"])
    s.add_argument("--ray-address")
    s.add_argument("--store")
    s.add_argument("--selection-only", action="store_true",
                   help="train the selection stage and write the confirmation plan, but train no confirmation run")
    s.add_argument("--record", action="store_true",
                   help="write each stage into the results of record (record/, or $MULREG_RECORD) as it completes")

    rec = sub.add_parser("record", help="write every complete stage of a sweep's store into the results of record "
                         "(record/, or $MULREG_RECORD), with the manifest of sizes and SHA-256 hashes")
    rec.add_argument("file", help="the sweep file whose store to record")

    v = sub.add_parser("verify", help="compare a sweep's store with the results of record, run by run; exit 0 when "
                       "every decision (runs, λ chosen, outcomes) agrees")
    v.add_argument("file", help="the sweep file whose store to compare")
    v.add_argument("--retrain", type=int, metavar="N",
                   help="instead, retrain N recorded runs (a seeded draw) into a temporary store and compare them")
    v.add_argument("--seed", type=int, default=0, help="the draw's seed for --retrain (default: %(default)s)")

    r = sub.add_parser("runs", help="list the runs of a store (one line each), or --check its folders")
    r.add_argument("--store", help="the store folder (default: results/, or env MULREG_RESULTS)")
    r.add_argument("--check", action="store_true", help="verify every run folder; list the unreadable ones")

    f = sub.add_parser("figures", help="execute the notebooks with papermill and export HTML reports")
    f.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"])
    f.add_argument("--nb", help="run only notebooks whose name starts with this, e.g. 03")
    f.add_argument("--params", metavar="FILE", help="YAML file of parameter overrides for a one-off run")
    f.add_argument("-p", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                   help="override one parameter (VALUE read as YAML) in every notebook that defines it")
    f.add_argument("--timeout", type=int, metavar="SECONDS",
                   help="stop a notebook whose cell runs longer than this and report it as timed out (default: none)")

    e = sub.add_parser("estimate", help="what a profile's notebooks would train, and how long it would take here")
    e.add_argument("profile", choices=["smoke", "quick", "paper"])
    e.add_argument("--nb", help="only notebooks whose name starts with this, e.g. 06")
    e.add_argument("--fresh", action="store_true", help="as on a fresh clone: count the runs already stored too")

    rd = sub.add_parser("readme", help="write the claims ledger of record into README.md and figures/ "
                        "(--check: say what no longer matches the record, and exit 1)")
    rd.add_argument("--check", action="store_true")
    return parser


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what a scheduler or `kill` sends


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the sweep stops its workers (or its Ray tasks), keeps what is finished and
    checkpointed, and exits with 128 + the signal's number."""

    signal: int | None = None  # the signal received: the exit code holds even where a library caught the exception


def _stopped(signum, frame) -> None:
    # a second Ctrl-C interrupts the clean-up as Python's own handler would; a second SIGTERM ends the process
    signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    Stopped.signal = signum
    raise Stopped()


def _train(args) -> int:
    from mulreg.core.data import check_caps
    from mulreg.engine.train import train

    values = load_yaml(args.config) if args.config else {}
    flags = {FIELD.get(k, k): v for k, v in vars(args).items()
             if (k in TRAIN_FLAGS or k in SWITCHES or k == "classes") and v is not None}
    config = RunConfig.parse(deep_merge(values, nest(flags)))
    _check_out(args.out)
    if args.no_early_stopping:
        config = config.replace(early_stopping=None)
    check_caps([config])
    result = train(config)
    out = {"config": config.model_dump(), "stop_reason": result.stop_reason, "metrics": result.metrics,
           "history": result.history.to_dict("list")}
    try:
        Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    except OSError as err:
        raise ConfigError(f"--out {args.out}: the result could not be written ({err.strerror})") from None
    m = result.metrics
    print(f"{result.stop_reason} after {m['epochs']} epochs: test acc {m['test_acc']:.4f} → {args.out}")
    return 0


def _check_out(path: str) -> None:
    """Refuse, before training, an output path that could not be written: a folder, a missing folder,
    or one (or a file) this process cannot write in."""
    out = Path(path)
    if out.is_dir() or (out.parent.exists() and not out.parent.is_dir()) or not out.parent.exists():
        problem = "is a folder" if out.is_dir() else f"its folder {out.parent} does not exist or is a file"
        raise ConfigError(f"--out {path}: {problem}; give a file path in an existing folder")
    try:
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".mulreg-probe-"):
            pass  # a real write: permissions, a read-only file system, a quota
        if out.exists() and not os.access(out, os.W_OK):
            raise PermissionError(13, "the file is read-only")
    except OSError as err:
        raise ConfigError(f"--out {path}: cannot write there ({err.strerror}); give a path in a writable "
                          "folder") from None


def _sweep(args) -> int:
    from mulreg.engine import confirm, stages
    from mulreg.engine.selection import chooses, select
    from mulreg.engine.sweep import SweepSpec

    spec = SweepSpec.from_yaml(args.file)
    overrides = {k: v for k, v in (("executor", args.executor), ("ray_address", args.ray_address),
                                   ("store", args.store)) if v}
    spec = spec.model_copy(update=overrides)
    done = stages.run(spec, train_confirmation=not args.selection_only,
                      on_stage=_recorder(spec) if args.record else None)
    print(f"selection stage: {len(done.selection)} runs in {spec.open_store().root}")
    if "penalty" in done.selection and "lam" in done.selection:
        if chooses(done.selection):
            _print_selection(select(stages.read_rules(spec, done.selection)))
        else:
            _print_fixed(done.selection)
    if done.plan is not None:
        print(f"confirmation plan ({confirm.folder(spec.open_store().root)}):")
        print(confirm.describe(done.plan).to_string(index=False))
        trained = 0 if done.confirmation is None else len(done.confirmation)
        print(f"confirmation stage: {trained} runs stored")
    return 0


def _print_selection(table) -> None:
    """The λ each group's selection chose, and the groups where none qualified."""
    print(table.to_string(index=False))
    for row in table[table["lam"].isna()].itertuples():
        what = "no run of the unregularised baseline" if row.penalty == "none" else f"no λ for {row.penalty}"
        print(f"{what} qualified at noise {row.label_noise:g}: {row.n_excluded} of its {row.n_runs} runs "
              "failed (diverged, or stayed at chance level); as docs/PREREGISTRATION.md says, its claims are "
              "not tested")


def _print_fixed(runs) -> None:
    """A sweep whose every arm has one λ, fixed beforehand, chooses nothing: its runs and failures per
    arm, and no accuracy (its analysis reads them under its registration)."""
    from mulreg.protocols import EXCLUDED

    arms = (runs.assign(failed=runs["stop_reason"].isin(EXCLUDED))
            .groupby(["penalty", "lam", "label_noise"], dropna=False)
            .agg(runs=("failed", "size"), failed=("failed", "sum")).reset_index())
    print("no selection: every arm has one λ, fixed beforehand (failed: diverged, or stayed at chance level)")
    print(arms.to_string(index=False))


def _recorder(spec):
    """Writes a completed stage into the record, and says so."""
    from mulreg.results import record

    def write(stage: str) -> None:
        folder = record.write_stage(spec, stage)
        print(f"recorded the {stage} stage in {folder} (commit it: git add {folder.parent.parent.name})", flush=True)

    return write


def _record(args) -> int:
    from mulreg.engine.sweep import SweepSpec
    from mulreg.results import record

    spec = SweepSpec.from_yaml(args.file)
    written = record.write_complete(spec)
    if not written:
        raise ConfigError(f"{args.file}: its store {spec.store} holds no complete stage; nothing recorded")
    sizes = record.Record().size()
    print(f"recorded {', '.join(written)} of {record.store_name(spec)} in {record.record_root()} "
          f"({sizes[record.store_name(spec)] / 1e6:.2f} MB for this store, {sum(sizes.values()) / 1e6:.2f} MB in all)")
    return 0


def _verify(args) -> int:
    text, differs = _verify_text(args.file, args.retrain, args.seed)
    print(text)
    return 1 if differs else 0


def _verify_text(path, retrain: int | None, seed: int) -> tuple[str, list[str]]:
    """`mulreg verify`'s report of one sweep's store against the record, and the decisions that differ."""
    from mulreg.engine.sweep import SweepSpec
    from mulreg.results import record

    spec = SweepSpec.from_yaml(path)
    patience = record.patience_for(path)
    rec = record.Record()
    if retrain is not None:
        lines, differs = record.retrain(spec, rec, retrain, seed, patience)
    else:
        lines, differs = record.compare(spec, rec, patience)
    verdict = "every decision agrees with the record" if not differs else f"{len(differs)} decision(s) differ"
    compared = "runs retrained here" if retrain is not None else spec.store  # a retraining reads no store
    return "\n".join([f"{compared} against the results of record ({rec.root / record.store_name(spec)}):",
                      *lines, *(f"differs: {line}" for line in differs), verdict]), differs


def _readme(args) -> int:
    from mulreg.report import readme

    if args.check:
        stale = readme.stale()
        for line in stale:
            print(f"stale: {line}; `python -m mulreg readme` writes it again from the record")
        return 1 if stale else 0
    for path in readme.render():
        print(f"wrote {path}")
    return 0


def _runs(args) -> int:
    import warnings

    from mulreg.engine.store import Store
    from mulreg.report.listing import runs_listing

    if args.store is not None and not Path(args.store).is_dir():
        problem = "is a file, not a folder" if Path(args.store).exists() else "no such folder"
        raise ConfigError(f"--store {args.store}: {problem}")
    store = Store(args.store, create=False)  # listing reads only: an archived store, or a folder that is none
    if not store.keys():
        none = "" if (store.root / "runs").is_dir() else " (no runs/ folder: not a store, or none trained yet)"
        print(f"no runs in {store.root}{none}")
        return 0
    if args.check:
        broken = store.unreadable()
        for key, problem in broken.items():
            print(f"{key}  {store.run_dir(key)}: {problem}")
        print(f"{len(store.keys())} run folders in {store.root}: {len(broken)} unreadable"
              + (" (the next sweep trains them again)" if broken else ""))
        return 1 if broken else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable runs: `--check` lists them
        table = store.load_runs()
    print(runs_listing(table))
    left_out = len(store.keys()) - len(table)
    if left_out:
        print(f"{left_out} run folder(s) left out: they cannot be read; `mulreg runs --check` says why")
    return 1 if left_out else 0  # a listing that leaves runs out is not a clean one


def _figures(args) -> int:
    from mulreg.engine import stages
    from mulreg.engine.sweep import SweepSpec
    from mulreg.report import reports
    from mulreg.tools.estimate import estimate, of_chosen, report

    overrides = load_yaml(args.params) if args.params else {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"--params {args.params}: expected a mapping of parameter names to values")
    for name, value in args.p:
        overrides[name] = parse_yaml(value, f"-p {name} {value!r}")
    if args.timeout is not None and not args.timeout > 0:
        raise ConfigError(f"--timeout {args.timeout}: give the seconds a cell may run, a whole number above 0")
    params = reports.checked_parameters(args.profile, reports.notebooks(args.nb), overrides)
    reports.preflight(args.profile, params)  # bad input, a missing kernel or read-only folder: before any training
    reproduced = [] if args.nb or overrides else reports.recorded_sweeps(args.profile)
    table = estimate(args.profile, every=True, overrides=overrides, retrained=_stores(reproduced))  # the index's costs
    print(report(of_chosen(args.profile, args.nb, table, overrides), args.profile), flush=True)
    for path in reproduced:  # trained here first, so the notebooks read this machine's runs, not the record's
        print(f"reproduction check: training {path.name} here, to compare with the results of record", flush=True)
        stages.run(SweepSpec.from_yaml(path))
    code = reports.run_notebooks(args.profile, args.nb, overrides, costs=reports.cost_lines(table),
                                 timeout=args.timeout)
    for path in reproduced:
        print(_verify_text(path, retrain=None, seed=0)[0])
    return code


def _estimate_text(profile: str, prefix: str | None, fresh: bool = False) -> str:
    """What `make figures` (`prefix`: `NB=`) would train, and its cost: the full run retrains the sweeps
    of record it reproduces; a chosen notebook reads the record."""
    from mulreg.report import reports
    from mulreg.tools.estimate import estimate, report

    retrained = _stores(reports.recorded_sweeps(profile)) if prefix is None else set()
    return report(estimate(profile, prefix, fresh, every=prefix is None, retrained=retrained), profile, fresh)


def _stores(paths: list) -> set:
    """The stores of the sweep files `paths` (those `make figures` reproduces, so the estimate prices them)."""
    from mulreg.engine.sweep import SweepSpec

    return {SweepSpec.from_yaml(path).store for path in paths}


def _estimate(args) -> int:
    print(_estimate_text(args.profile, args.nb, args.fresh))
    return 0


if __name__ == "__main__":
    sys.exit(main())
