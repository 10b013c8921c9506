"""`python -m gpu_check` (from the repository root; gpu_check/gpu_check.sh runs it): the parent, or with
--worker one worker process."""

from __future__ import annotations

import argparse
import sys

import gpu_check


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=gpu_check.__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="a dry run without CUDA: GPU rows say 'skipped: no CUDA', "
                   "the rest runs on the CPU (without it, a machine where CUDA does not start stops at once, exit 3)")
    p.add_argument("--short", action="store_true", help="tiny sizes (CI; well under a minute on a 2-core CPU)")
    p.add_argument("--items", default="a,b,c,d,e,f", help="items (both passes) or units (b+: an item's second pass), "
                   "comma-separated (default: %(default)s)")
    p.add_argument("--budget", type=float, help="seconds for everything (default 480; 180 with --short)")
    p.add_argument("--out", help="where gpu_check.json/.md/.log go (default: $OUT, else /tmp/gpu_check_out)")
    p.add_argument("--work", help="scratch folder: data, cache, store (default: a new one under /tmp)")
    p.add_argument("--cache", help="compile caches shared by the workers, thrown away after a kill "
                   "(default: /tmp/mulreg-gpu-check-cache: a later call on a warm machine compiles less)")
    p.add_argument("--isolate", action="store_true", help="one worker process per unit also on a CPU (always on CUDA)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--events", help=argparse.SUPPRESS)
    p.add_argument("--deadline", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = 180.0 if args.short else 480.0
    return args


def main(argv: list[str] | None = None) -> int:
    from gpu_check.plan import UNITS, item_of

    args = arguments(argv)
    names = [i for i in args.items.split(",") if i]
    unknown = [i for i in names if i not in UNITS and i not in {item_of(u) for u in UNITS}]
    if unknown:
        print(f"unknown items {unknown}; known: {', '.join(UNITS)}", file=sys.stderr)
        return 2
    if args.worker:
        from gpu_check.worker import Worker

        return Worker(args).run(names)
    from gpu_check.parent import Parent

    return Parent(args).run()


if __name__ == "__main__":
    sys.exit(main())
