"""The Markdown and JSON reports, and the facts about the machine and the code measured."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.procs import ROOT
from bench.stats import Figure, Section


def _git(*args: str) -> str:
    try:
        return subprocess.run(  # noqa: S603 - fixed arguments, read-only git commands
            ["git", *args],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """CPU count and model, memory, load, Python, date and git commit."""
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory": memory,
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD") or "unknown",
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if abs(value) >= 100 or (unit and float(value).is_integer()):
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def _goal_cell(figure: Figure) -> str:
    cells = []
    for goal, passed in figure.goal_results():
        mark = {True: "✅ met", False: "❌ missed", None: "— not judged"}[passed]
        cells.append(f"{goal.text}: {mark}")
    return "<br>".join(cells)


def markdown(info: dict[str, Any], sections: list[Section], mode: str) -> str:
    figures = [f for s in sections for f in s.figures]
    results = [passed for f in figures for _, passed in f.goal_results()]
    lines = [
        f"# Darkroom benchmark, {info['date']}",
        "",
        "| | |",
        "|---|---|",
        f"| machine | {info['cpus']} CPUs ({info['cpus_usable']} usable), {info['cpu_model']}, "
        f"{info['memory']} |",
        f"| load average at start / end | {_load(info['load_average'])} / "
        f"{_load(info.get('load_average_end', ()))} |",
        f"| commit | `{info['commit']}`"
        f"{' with uncommitted changes' if info['uncommitted_changes'] else ''} |",
        f"| mode | {mode} |",
        f"| Python | {info['python']} on {info['platform']} |",
        f"| servers | {info.get('servers', '')} |",
        "",
        f"Goals: **{results.count(True)} met, {results.count(False)} missed**"
        + (f", {results.count(None)} not judged" if None in results else "")
        + ". Ratio is ours / baseline: above 1 is more throughput or more latency. "
        "Other work on the machine adds noise: compare runs made on the same machine.",
        "",
    ]
    for section in sections:
        lines += [f"## {section.title} ({section.seconds:.0f} s)", ""]
        if section.skipped:
            lines += [f"Not measured: {section.skipped}", ""]
        if section.figures:
            lines += [
                "| figure | ours | baseline | ratio | goal |",
                "|---|---:|---:|---:|---|",
            ]
            lines += [
                f"| {f.name} | {fmt(f.ours, f.unit)} | {fmt(f.baseline, f.unit)}"
                f"{' (computed)' if 'computed' in f.baseline_label else ''} | "
                f"{fmt(f.ratio)} | {_goal_cell(f)} |"
                for f in section.figures
            ]
            lines.append("")
            labels = dict.fromkeys(f.baseline_label for f in section.figures)
            lines += [f"Baseline: {label}." for label in labels]
            lines += [f"{f.name}: {f.note}" for f in section.figures if f.note]
            lines.append("")
        lines += [*section.notes, ""] if section.notes else []
    return "\n".join(lines).rstrip() + "\n"


def _load(values: Any) -> str:
    return ", ".join(f"{v:.2f}" for v in values) if values else "—"


def write(out: Path, info: dict[str, Any], sections: list[Section], mode: str) -> tuple[Path, Path]:
    """Write report.md and report.json into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out / "report.md", out / "report.json"
    md_path.write_text(markdown(info, sections, mode))
    document = {
        "machine": info,
        "mode": mode,
        "sections": [
            {
                "key": s.key,
                "title": s.title,
                "seconds": s.seconds,
                "skipped": s.skipped,
                "notes": s.notes,
                "figures": [f.as_dict() for f in s.figures],
            }
            for s in sections
        ],
    }
    json_path.write_text(json.dumps(_clean(document), indent=2, allow_nan=False) + "\n")
    return md_path, json_path


def _clean(value: Any) -> Any:
    """JSON-ready: NaN becomes null, paths and tuples become strings and lists."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
