"""Summaries (medians), the printed tables, machine metadata, JSON and the PNG plot."""

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys

PACKAGES = ("aserve", "uvicorn", "granian", "httptools", "uvloop", "websockets", "fastapi")
COLORS = {"aserve": "#d62728", "aserve-py": "#ff9896", "uvicorn": "#1f77b4", "granian": "#2ca02c"}
SHORT_NAMES = {"uvicorn": "uvi", "granian": "gra", "aserve-py": "py"}


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _has_errors(run):
    return any(run.get("errors", {}).values())


def summarize(runs, workloads, servers):
    """{workload: {server: {median, p50_ms, p99_ms, ok, failed, flagged, error}}}."""
    summary = {}
    for workload in workloads:
        summary[workload.name] = {}
        for server in servers:
            mine = [r for r in runs if r["workload"] == workload.name and r["server"] == server]
            good = [r for r in mine if r["ok"]]
            summary[workload.name][server] = {
                "median": _median([r["value"] for r in good]),
                "values": [r["value"] for r in good],
                "p50_ms": _median([r.get("p50_ms") for r in good]),
                "p99_ms": _median([r.get("p99_ms") for r in good]),
                "ok": len(good),
                "failed": len(mine) - len(good),
                "flagged": any(_has_errors(r) for r in good),
                "error": next((r["error"] for r in mine if not r["ok"]), None),
            }
    return summary


def ratio(summary_row, server, other):
    mine, theirs = summary_row[server]["median"], summary_row.get(other, {}).get("median")
    return mine / theirs if mine is not None and theirs else None


def _fmt(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"


def _cell(stats, digits):
    return _fmt(stats["median"], digits) + ("!" if stats["flagged"] else "")


def format_tables(summary, workloads, servers):
    others = [s for s in servers if s != "aserve"] if "aserve" in servers else []
    header = f"{'workload':<14}{'unit':<10}" + "".join(f"{s:>13}" for s in servers)
    header += "".join(f"{'aserve/' + SHORT_NAMES.get(s, s):>12}" for s in others)
    lines = [header, "-" * len(header)]
    for w in workloads:
        row = summary[w.name]
        digits = 1 if w.kind == "memory" else 0
        line = f"{w.name:<14}{w.unit:<10}" + "".join(
            f"{_cell(row[s], digits):>13}" for s in servers
        )
        line += "".join(f"{_fmt(ratio(row, 'aserve', o), 2):>12}" for o in others)
        lines.append(line)
    with_latency = [w for w in workloads if w.kind == "http" and w.latency]
    if with_latency:
        lines += ["", f"{'latency ms p50/p99':<24}" + "".join(f"{s:>18}" for s in servers)]
    for w in with_latency:
        row = summary[w.name]
        cells = [f"{_fmt(row[s]['p50_ms'], 2)}/{_fmt(row[s]['p99_ms'], 2)}" for s in servers]
        lines.append(f"{w.name:<24}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def format_failures(summary, servers):
    lines = []
    for name, row in summary.items():
        for server in servers:
            if row[server]["error"]:
                lines.append(f"  {server} / {name}: {row[server]['error']}")
    return "\n".join(lines)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _wrk_version():
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0] if (done.stdout or done.stderr) else None


def _aserve_hot_path():
    """Whether `aserve` ran its compiled hot path (the servers run with this interpreter)."""
    from aserve.protocols import http

    return "compiled (mypyc)" if http.COMPILED else "Python source"


def metadata(config):
    return {
        "aserve_hot_path": _aserve_hot_path(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": {
            "version": sys.version,
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "packages": {name: _version(name) for name in PACKAGES},
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "hostname": platform.node(),
        },
        "wrk": _wrk_version(),
        "config": config,
    }


def save_json(path, meta, workloads, runs, summary):
    document = {
        "meta": meta,
        "workloads": [
            {
                "name": w.name,
                "kind": w.kind,
                "unit": w.unit,
                "connections": w.connections,
                "app": w.app,
                "higher_is_better": w.higher_is_better,
            }
            for w in workloads
        ],
        "summary": summary,
        "runs": runs,
    }
    path.write_text(json.dumps(document, indent=2))


def save_plot(path, summary, workloads, servers, title):
    """One small bar chart per workload: median value per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 4
    rows = -(-len(workloads) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for ax, workload in zip(axes.flat, workloads, strict=False):
        values = [summary[workload.name][s]["median"] or 0 for s in servers]
        bars = ax.bar(servers, values, color=[COLORS.get(s, "grey") for s in servers])
        digits = 1 if workload.kind == "memory" else 0
        labels = [
            _fmt(summary[workload.name][s]["median"], digits).replace("-", "failed")
            for s in servers
        ]
        ax.bar_label(bars, labels=labels, fontsize=8)
        better = "higher" if workload.higher_is_better else "lower"
        ax.set_title(f"{workload.name} ({workload.unit}, {better} is better)", fontsize=9)
        ax.margins(y=0.15)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(workloads) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
