"""Summaries (medians), the printed tables, machine metadata, JSON and the PNG plot."""

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys

PACKAGES = (
    "aserve",
    "uvicorn",
    "zttp",
    "granian",
    "hypercorn",
    "h2",
    "httptools",
    "uvloop",
    "websockets",
    "wsproto",
    "fastapi",
)
COLORS = {
    "aserve": "#d62728",
    "aserve-py": "#ff9896",
    "uvicorn-httptools": "#1f77b4",
    "uvicorn-zttp": "#6baed6",
    "uvicorn-websockets-sansio": "#1f77b4",
    "uvicorn-websockets": "#6baed6",
    "uvicorn-wsproto": "#9ecae1",
    "granian": "#2ca02c",
    "hypercorn": "#9467bd",
}
SHORT_NAMES = {"uvicorn": "uvi", "granian": "gra", "aserve-py": "py", "hypercorn": "hyp"}
# The families a table has columns for, in this order; uvicorn's column is its best backend.
FAMILIES = ("aserve", "aserve-py", "uvicorn", "granian", "hypercorn")


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _has_errors(run):
    return any(run.get("errors", {}).values())


def family(server):
    return "uvicorn" if server.startswith("uvicorn-") else server


def backend(server):
    """`zttp` for `uvicorn-zttp`."""
    return server.removeprefix("uvicorn-")


def _stats(mine):
    good = [r for r in mine if r["ok"]]
    errors = {}
    for run in good:
        for name, count in run.get("errors", {}).items():
            errors[name] = errors.get(name, 0) + count
    return {
        "median": _median([r["value"] for r in good]),
        "values": [r["value"] for r in good],
        "p50_ms": _median([r.get("p50_ms") for r in good]),
        "p99_ms": _median([r.get("p99_ms") for r in good]),
        "ok": len(good),
        "failed": len(mine) - len(good),
        "flagged": any(_has_errors(r) for r in good),
        "errors": errors,  # summed over the rounds (wrk's socket errors, h2load's failures)
        "unsupported": bool(mine) and all(r.get("unsupported") for r in mine),
        "error": next((r["error"] for r in mine if not r["ok"]), None),
    }


def _best(row, workload):
    """uvicorn's best backend on this workload: its stats, with `backend` naming it."""
    candidates = [
        (server, stats)
        for server, stats in row.items()
        if server.startswith("uvicorn-") and stats["median"] is not None
    ]
    if not candidates:
        return None
    sign = 1 if workload.higher_is_better else -1
    server, stats = max(candidates, key=lambda item: sign * item[1]["median"])
    return {**stats, "backend": backend(server), "server": server}


def summarize(runs, workloads):
    """{workload: {server: {median, p50_ms, p99_ms, ok, failed, flagged, errors, error}}}.

    One entry per server that ran the workload (each uvicorn backend apart), and a
    `uvicorn` entry for the best of its backends there, with `backend` saying which.
    """
    summary = {}
    for workload in workloads:
        mine = [r for r in runs if r["workload"] == workload.name]
        servers = list(dict.fromkeys(r["server"] for r in mine))
        row = {s: _stats([r for r in mine if r["server"] == s]) for s in servers}
        best = _best(row, workload)
        if best is not None:
            row["uvicorn"] = best
        summary[workload.name] = row
    return summary


def ratio(summary_row, server, other):
    mine = summary_row.get(server, {}).get("median")
    theirs = summary_row.get(other, {}).get("median")
    return mine / theirs if mine is not None and theirs else None


def _fmt(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"


def _cell(stats, digits):
    if stats is None:
        return "-"
    if stats.get("unsupported"):
        return "n/a"
    return _fmt(stats["median"], digits) + ("!" if stats["flagged"] else "")


def _columns(workloads, summary, families):
    """The families of `families` that have a column in a table of `workloads`."""
    present = {family(s) for w in workloads for s in summary[w.name]}
    return [f for f in FAMILIES if f in families and f in present]


def _table(title, workloads, summary, families):
    columns = _columns(workloads, summary, families)
    others = [c for c in columns if c != "aserve"] if "aserve" in columns else []
    header = f"{title:<16}{'unit':<10}" + "".join(f"{c:>13}" for c in columns)
    if "uvicorn" in columns:
        header += f"{'best uvicorn':>20}"
    header += "".join(f"{'aserve/' + SHORT_NAMES.get(o, o):>12}" for o in others)
    lines = [header, "-" * len(header)]
    for w in workloads:
        row = summary[w.name]
        digits = 1 if w.kind == "memory" else 0
        line = f"{w.name:<16}{w.unit:<10}" + "".join(
            f"{_cell(row.get(c), digits):>13}" for c in columns
        )
        if "uvicorn" in columns:
            line += f"{row['uvicorn']['backend'] if 'uvicorn' in row else '-':>20}"
        line += "".join(f"{_fmt(ratio(row, 'aserve', o), 2):>12}" for o in others)
        lines.append(line)
    return lines, columns


def _backend_table(workloads, summary):
    """Every uvicorn backend's median on each workload, the best one marked with *."""
    backends = list(
        dict.fromkeys(s for w in workloads for s in summary[w.name] if s.startswith("uvicorn-"))
    )
    if not backends:
        return []
    header = f"{'uvicorn backends':<26}" + "".join(f"{backend(b):>19}" for b in backends)
    lines = ["", header, "-" * len(header)]
    for w in workloads:
        row = summary[w.name]
        if not any(b in row for b in backends):
            continue
        digits = 1 if w.kind == "memory" else 0
        best = row.get("uvicorn", {}).get("server")
        cells = [
            (_cell(row[b], digits) + ("*" if b == best else "")) if b in row else ""
            for b in backends
        ]
        lines.append(f"{w.name:<26}" + "".join(f"{c:>19}" for c in cells))
    return lines


def _latency_table(workloads, summary, columns):
    with_latency = [w for w in workloads if w.kind in ("http", "h2") and w.latency]
    if not with_latency:
        return []
    lines = ["", f"{'latency ms p50/p99':<24}" + "".join(f"{c:>18}" for c in columns)]
    for w in with_latency:
        row = summary[w.name]
        cells = []
        for c in columns:
            stats = row.get(c)
            if stats is None or stats.get("unsupported"):
                cells.append("-" if stats is None else "n/a")
            else:
                cells.append(f"{_fmt(stats['p50_ms'], 2)}/{_fmt(stats['p99_ms'], 2)}")
        lines.append(f"{w.name:<24}" + "".join(f"{c:>18}" for c in cells))
    return lines


def _failed_requests(workloads, summary, columns):
    """HTTP/2: the requests h2load counted as failed, errored, timed out or not 2xx, summed
    over the rounds, per server."""
    lines = ["", f"{'h2load failed requests':<24}" + "".join(f"{c:>18}" for c in columns)]
    for w in workloads:
        row = summary[w.name]
        cells = []
        for c in columns:
            stats = row.get(c)
            if stats is None or stats.get("unsupported") or not stats["ok"]:
                cells.append("-" if stats is None or not stats.get("unsupported") else "n/a")
            else:
                cells.append(f"{sum(stats['errors'].values()):,}")
        lines.append(f"{w.name:<24}" + "".join(f"{c:>18}" for c in cells))
    return lines


def format_tables(summary, workloads, servers):
    """HTTP/1.1 (with WebSockets and memory) and HTTP/2 apart: a column per server family,
    uvicorn's being its best backend on each row (named beside it), ratios, every uvicorn
    backend, latency, and for HTTP/2 the failed requests."""
    families = {family(s) for s in servers}
    out = []
    for title, chosen in (
        ("HTTP/1.1", [w for w in workloads if not w.http2]),
        ("HTTP/2", [w for w in workloads if w.http2]),
    ):
        if not chosen:
            continue
        lines, columns = _table(title, chosen, summary, families)
        lines += _backend_table(chosen, summary)
        lines += _latency_table(chosen, summary, columns)
        if title == "HTTP/2":
            lines += _failed_requests(chosen, summary, columns)
        out.append("\n".join(lines))
    return "\n\n".join(out)


def format_failures(summary):
    lines = []
    for name, row in summary.items():
        for server, stats in row.items():
            if server == "uvicorn":
                continue  # the best backend: its own row says it
            if stats["error"]:
                lines.append(f"  {server} / {name}: {stats['error']}")
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
                **(
                    {
                        "streams": w.streams,
                        "body_size": w.body_size,
                        "headers": len(w.headers),
                        "tls": w.tls,
                    }
                    if w.http2
                    else {}
                ),
            }
            for w in workloads
        ],
        "summary": summary,
        "runs": runs,
    }
    path.write_text(json.dumps(document, indent=2))


def save_plot(path, summary, workloads, title):
    """One small bar chart per workload: median value per server that ran it, each uvicorn
    backend apart, the best one marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 4
    rows = -(-len(workloads) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows), squeeze=False)
    for ax, workload in zip(axes.flat, workloads, strict=False):
        row = summary[workload.name]
        servers = [s for s in row if s != "uvicorn"]
        best = row.get("uvicorn", {}).get("server")
        values = [row[s]["median"] or 0 for s in servers]
        bars = ax.bar(range(len(servers)), values, color=[COLORS.get(s, "grey") for s in servers])
        digits = 1 if workload.kind == "memory" else 0
        labels = [
            "n/a"
            if row[s]["unsupported"]
            else _fmt(row[s]["median"], digits).replace("-", "failed")
            for s in servers
        ]
        ax.bar_label(bars, labels=labels, fontsize=7)
        if best in servers:  # the best uvicorn backend: outlined, and named so under its bar
            bars[servers.index(best)].set(edgecolor="black", linewidth=1.5)
        ticks = [
            s.replace("uvicorn-", "uvicorn\n").replace("websockets-sansio", "ws-sansio")
            + ("\n(best)" if s == best else "")
            for s in servers
        ]
        ax.set_xticks(range(len(servers)), ticks)
        better = "higher" if workload.higher_is_better else "lower"
        ax.set_title(f"{workload.name} ({workload.unit}, {better} is better)", fontsize=9)
        ax.margins(y=0.15)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(workloads) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
