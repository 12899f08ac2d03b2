"""The benchmark's report: one table of rows (printed, CSV), the JSON record, the plot, GPU merging.

Result files (``results/bench/`` for the committed full run):

- ``bench.json``: ``schema_version``, ``mode``, ``created``, ``machine``, ``config``, ``results``
  (every raw measurement), ``rows`` (the table), ``seconds_total`` and, once merged, ``gpu``
  (a ``--paper-backbones-only --device cuda`` run: its own ``machine`` and ``rows``).
- ``bench.csv``: the rows (CPU rows, then the merged GPU run's rows), for the book's ``csv-table``.
- ``bench_machine.csv``: the run and its machine (CPU, torch and threads, load), and the GPU's.
- ``bench.png``: :func:`plot_results` of the JSON.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
JSON_NAME, CSV_NAME, PNG_NAME = "bench.json", "bench.csv", "bench.png"
MACHINE_CSV_NAME = "bench_machine.csv"
ROW_FIELDS = ("stage", "measurement", "value", "unit", "compared_with", "ratio", "target", "met")
CSV_HEADER = ("stage", "measurement", "value", "unit", "compared with", "ratio", "target", "met")
#: The ratios every run reports (``--quick`` included), by row ``measurement``.
RATIO_MEASUREMENTS = (
    "end to end / forward only",
    "achieved / matmul GFLOP/s",
    "speed-up over naive step",
    "head / backbone forward",
    "extraction time exponent",
    "SAE epoch time exponent",
    "guide epoch time exponent",
    "peak RSS / cache size",
)


def row(stage: str, measurement: str, value: float | str, unit: str = "", compared_with: str = "",
        ratio: float | None = None, target: str = "", met: bool | None = None) -> dict[str, Any]:
    """One table row (``met`` is None where there is no target)."""
    return {"stage": stage, "measurement": measurement, "value": value, "unit": unit,
            "compared_with": compared_with, "ratio": ratio, "target": target, "met": met}


def check(ratio: float, op: str, bound: float | tuple[float, float]) -> bool:
    """Whether ``ratio`` meets ``op bound`` (``>=``, ``<=`` or ``in`` a closed interval)."""
    if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
        return False
    if op == ">=":
        return ratio >= bound
    if op == "<=":
        return ratio <= bound
    lo, hi = bound  # type: ignore[misc]
    return lo <= ratio <= hi


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def format_table(rows: list[dict[str, Any]], title: str = "") -> str:
    """The rows as one fixed-width text table."""
    cells = [list(CSV_HEADER)] + [[_fmt(r[f]) for f in ROW_FIELDS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(CSV_HEADER))]
    lines = [title] if title else []
    for n, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def csv_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The CPU rows and, when a GPU run was merged, its rows (stage prefixed ``gpu``)."""
    rows = list(data.get("rows", []))
    for r in data.get("gpu", {}).get("rows", []):
        rows.append({**r, "stage": r["stage"] if "gpu" in r["stage"].lower() else f"gpu: {r['stage']}"})
    return rows


def write_csv(data: dict[str, Any], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_HEADER)
        for r in csv_rows(data):
            writer.writerow([_fmt(r[f]) for f in ROW_FIELDS])


def machine_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    """``(item, value)`` pairs describing the run and its machine (and the merged GPU run's)."""
    m = data.get("machine", {})
    items = [
        ("run", f"{data.get('mode')} run, {data.get('created')}, {_fmt(data.get('seconds_total'))} s"),
        ("CPU", f"{m.get('cpu_model')}: {m.get('logical_cpus')} logical CPUs, {m.get('cpus_available')} available"),
        ("torch", f"{m.get('torch')}, {m.get('torch_threads')} intra-op threads, {m.get('torch_interop_threads')} "
                  f"inter-op; MKL {m.get('mkl')}, oneDNN {m.get('mkldnn')}"),
        ("Python / OS", f"{m.get('python')} / {m.get('platform')}"),
        ("load average (1/5/15 min)", f"{m.get('load_average_start')} at start, {m.get('load_average_end')} at end"),
    ]
    share = cpu_obtained(data)
    if share is not None:
        items.append(("CPU obtained", f"{share:.2f} cores on average while the SAE matmul ran on "
                                      f"{m.get('torch_threads')} threads (less: other processes took cores)"))
    gpu = data.get("gpu")
    if gpu:
        g = gpu.get("machine", {})
        items.append(("GPU run", f"{g.get('gpu_name')} ({g.get('gpu_memory_gib')} GiB), CUDA {g.get('cuda')}, "
                                 f"torch {g.get('torch')}, {gpu.get('created')}"))
    return items


def cpu_obtained(data: dict[str, Any]) -> float | None:
    """Cores the process got while the SAE step's reference matmul ran (median CPU seconds per
    wall second): about the thread count on an idle machine, less when other work took cores."""
    timing = data.get("results", {}).get("sae", {}).get("timings", {}).get("matmul")
    return None if not timing or timing.get("cpu_share") is None else float(timing["cpu_share"])


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item"):
        return obj.item()
    return obj


def write_results(data: dict[str, Any], out: Path, *, plot: bool = True) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.csv`` and (``plot``) ``bench.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / JSON_NAME, "csv": out / CSV_NAME}
    paths["json"].write_text(json.dumps(_json_safe(data), indent=1) + "\n")
    write_csv(data, paths["csv"])
    paths["machine_csv"] = out / MACHINE_CSV_NAME
    with open(paths["machine_csv"], "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("item", "value"))
        writer.writerows(machine_rows(data))
    if plot:
        paths["png"] = out / PNG_NAME
        plot_results(data, paths["png"])
    return paths


def merge_gpu(results_dir: Path, gpu_json: Path) -> dict[str, Path]:
    """Put the JSON of a ``--paper-backbones-only --device cuda`` run into ``results_dir/bench.json``
    as its ``gpu`` section and rewrite the CSV and the plot."""
    data = json.loads((Path(results_dir) / JSON_NAME).read_text())
    gpu = json.loads(Path(gpu_json).read_text())
    if gpu.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{gpu_json}: schema {gpu.get('schema_version')} != {SCHEMA_VERSION}")
    if not str(gpu.get("machine", {}).get("device", "")).startswith("cuda"):
        raise ValueError(f"{gpu_json}: not a GPU run (machine.device = {gpu.get('machine', {}).get('device')})")
    data["gpu"] = {k: gpu[k] for k in ("created", "machine", "config", "results", "rows") if k in gpu}
    return write_results(data, results_dir)


def plot_results(data: dict[str, Any], path: Path) -> None:
    """Two panels from the JSON: every ratio against its target, and time against image count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_s) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.3, 1]})
    ratios = [r for r in data.get("rows", []) if r.get("ratio") is not None and r.get("met") is not None
              and "exponent" not in r["measurement"]]
    labels = [f"{r['stage']}: {r['measurement']}" for r in ratios]
    values = [r["ratio"] for r in ratios]
    colours = ["tab:green" if r["met"] else "tab:red" for r in ratios]
    ax_r.barh(range(len(ratios)), values, color=colours)
    for i, r in enumerate(ratios):
        bound = _target_value(r["target"])
        if bound is not None:
            ax_r.plot([bound, bound], [i - 0.4, i + 0.4], color="black", lw=2)
        ax_r.text(max(r["ratio"], bound or 0) * 1.05, i, f"{r['ratio']:.3g} (target {r['target']})", va="center", fontsize=8)
    ax_r.set_yticks(range(len(ratios)), labels, fontsize=8)
    ax_r.invert_yaxis()
    ax_r.set_xscale("log")
    if values:
        ax_r.set_xlim(right=max(values + [1.0]) * 8)
    ax_r.set_xlabel("ratio (log scale); black tick: target; green: met")
    ax_r.set_title("Ratios measured side by side")
    scaling = data.get("results", {}).get("scaling") or {}
    mult = scaling.get("multipliers", [1, 2, 4])
    for stage, marker in (("extract", "o"), ("sae", "s"), ("guides", "^")):
        s = scaling.get(stage)
        if s:
            ax_s.plot(mult, [v / s["seconds"][0] for v in s["seconds"]], marker=marker,
                      label=f"{stage}: {s['images'][0]} images at 1x, exponent {s['exponent']:.2f}")
    if scaling:
        ax_s.plot(mult, mult, "k--", lw=1, label="linear")
        ax_s.set_xscale("log", base=2)
        ax_s.set_yscale("log", base=2)
        ax_s.set_xticks(mult, [f"{m}x" for m in mult])
        ax_s.set_yticks(mult, [f"{m}x" for m in mult])
        ax_s.legend(fontsize=8)
    ax_s.set_xlabel("images, relative to 1x")
    ax_s.set_ylabel("time, relative to 1x")
    ax_s.set_title("Scaling with the image count")
    machine = data.get("machine", {})
    fig.suptitle(f"spg bench ({data.get('mode')}): {machine.get('cpu_model')}, {machine.get('cpus_available')} CPUs, "
                 f"torch {machine.get('torch')}, {machine.get('torch_threads')} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _target_value(target: str) -> float | None:
    """The number in a target such as ``>= 0.85`` or ``<= 0.05``."""
    for op in (">=", "<="):
        if target.startswith(op):
            try:
                return float(target[len(op):].strip().rstrip("x"))
            except ValueError:
                return None
    return None
