"""The rows so far, written to $OUT as gpu_check.json and gpu_check.md after every change, and the
follow-up call that would measure what this one had no time for (no torch here)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from gpu_check.plan import ITEMS, item_of
from gpu_check.text import atomic, flat, fmt, md, stamp

SYNTHETIC = ("synthetic: CIFAR-10-shaped uint8 images (3×32×32) of two classes (cat, deer), random pixels "
             "whose brightness depends on the class, written into mulreg's decoded-data cache; throughput, "
             "memory and engine/loop agreement do not depend on pixel content, accuracies mean nothing")
FOR_LACK_OF_TIME = ("pending", "skipped: allowance spent", "skipped: timeout", "skipped: total budget",
                    "skipped: not reached")


class Report:
    """The table: one row per (item, setting), each with value, unit, status, notes."""

    def __init__(self, out: Path, args, device: str):
        self.out, self.args, self.device = out, args, device
        self.t0 = time.time()
        self.environment: dict = {}
        self.rows: list[dict] = []
        self.units: dict[str, dict] = {}  # unit: state, seconds, allowance

    def set_plan(self, rows: list[dict], unit: str) -> None:
        for r in rows:
            self.rows.append({"item": r["item"], "unit_name": unit, "title": ITEMS[r["item"]],
                              "setting": r["setting"], "value": None, "unit": r["unit"], "status": "pending",
                              "notes": ""})

    def whole(self, unit: str, status: str) -> None:
        """A row standing for all of `unit`, when its rows were never planned (no worker got that far)."""
        self.rows.append({"item": item_of(unit), "unit_name": unit, "title": ITEMS[item_of(unit)],
                          "setting": "(whole item)" if unit == item_of(unit) else "(second pass)", "value": None,
                          "unit": "", "status": status, "notes": ""})

    def put(self, row: dict) -> None:
        for i, r in enumerate(self.rows):
            if r["item"] == row["item"] and r["setting"] == row["setting"]:
                self.rows[i] = {**r, **row}
                return
        self.rows.append({"title": ITEMS.get(row["item"], ""), "value": None, "unit": "", "notes": "", **row})

    def settle(self, unit: str, status: str) -> None:
        """Every row of `unit` still pending gets `status` (a "skipped: <why>")."""
        for r in self.rows:
            if r.get("unit_name") == unit and r["status"] == "pending":
                r["status"] = status

    def settle_all(self, status: str) -> None:
        for r in self.rows:
            if r["status"] == "pending":
                r["status"] = status

    def follow_up(self) -> str | None:
        """The call that measures the rows this one had no time for, or None."""
        units = [u for u in dict.fromkeys(r.get("unit_name") for r in self.rows if r["item"] != "env")
                 if u and any(r.get("unit_name") == u and r["status"].startswith(FOR_LACK_OF_TIME)
                              for r in self.rows)]
        flags = " --cpu" * self.args.cpu + " --short" * self.args.short
        return f"bash gpu_check/gpu_check.sh --items {','.join(units)}{flags} --budget SECONDS" if units else None

    def write(self) -> None:
        data = {"title": "mulreg offline GPU check", "data": SYNTHETIC,
                "args": {"cpu": self.args.cpu, "short": self.args.short, "budget_s": self.args.budget,
                         "items": self.args.items},
                "device": self.device, "started": stamp(self.t0), "written": stamp(time.time()),
                "wall_s": round(time.time() - self.t0, 1), "environment": self.environment,
                "units": self.units, "follow_up": self.follow_up(),
                "rows": [{k: v for k, v in r.items() if k != "title"} for r in self.rows]}
        atomic(self.out / "gpu_check.json", json.dumps(data, indent=1, default=str))
        atomic(self.out / "gpu_check.md", self.markdown(data))

    def markdown(self, data: dict) -> str:
        lines = ["# mulreg offline GPU check", "",
                 f"{data['started']}, {data['wall_s']} s so far; device {self.device}; "
                 f"arguments {' '.join(sys.argv[1:]) or '(none)'}.", "",
                 f"**Data are synthetic** ({SYNTHETIC}).", "", "## Environment", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {md(v)} |" for k, v in flat(self.environment)]
        lines += ["", "## Results", "", "| item | setting | value | unit | status | notes |",
                  "|---|---|---:|---|---|---|"]
        for r in sorted(self.rows, key=lambda r: r["item"]):  # by item; within one, in the order planned
            if r["item"] != "env":
                lines.append(f"| {r['item']}. {r.get('title', '')} | {md(r['setting'])} | {fmt(r.get('value'))} | "
                             f"{r.get('unit', '')} | {md(r.get('status', ''))} | {md(r.get('notes', ''))} |")
        lines += ["", "Units (in the order run): " + "; ".join(_unit_line(k, v) for k, v in self.units.items()), ""]
        if data["follow_up"]:
            lines += [f"Follow-up call for what had no time (docs/PERFORMANCE.md): `{data['follow_up']}`", ""]
        return "\n".join(lines)


def _unit_line(unit: str, v: dict) -> str:
    took = f" in {v['seconds']} s" if "seconds" in v else ""
    allowed = f" of {v['allowance_s']} s allowed" if "allowance_s" in v else ""
    return f"{unit} {v.get('state', '')}{took}{allowed}"
