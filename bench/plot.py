"""Charts (PNG) from the JSON that bench/suite.py writes.

    python bench/plot.py RESULTS.json --out DIR

Needs matplotlib (`pip install 'geventsched[bench]'`). A chart whose scenario is missing from the
JSON (not run, or failed) is skipped.
"""

import argparse
import json
import os
import statistics
import sys

GEVENTSCHED, RAW, PEER = "tab:blue", "tab:gray", "tab:orange"
# One colour per peer in the line charts; blue and grey stay ours and the raw echo's.
PEER_LINES = ("tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
PERCENTILES = ("p50", "p90", "p99", "max")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _log_y(ax):
    """Log scale with plain numbers (40,000 and 0.5, not 4x10^4 and 5x10^-1): these are for reading."""
    from matplotlib.ticker import FuncFormatter

    def plain(value):
        return f"{value:,.0f}" if value >= 1 else f"{value:g}"

    def minor(value, _):
        # Within a decade or two the major ticks are too few to read a value off: label some between.
        low, high = ax.get_ylim()
        wanted = "23456789" if high / low <= 10 else "25" if high / low <= 100 else ""
        return plain(value) if f"{value:e}"[0] in wanted else ""

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: plain(value)))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _scenario(document, name):
    result = document.get("scenarios", {}).get(name)
    return None if result is None or "error" in result else result


def _save(fig, out_dir, name, document):
    env = document.get("environment", {})
    fig.text(0.99, 0.01, f"{env.get('cpus', '?')} CPUs, Redis {env.get('redis', '?')}, Python {env.get('python', '?')}"
             f", {document.get('timestamp', '')}", ha="right", va="bottom", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _systems(document):
    """(label, jobs/s, low, high, colour) for every system measured: our configurations, then the rest."""
    bars = []
    throughput = _scenario(document, "throughput")
    if throughput:
        for config in throughput["configs"].values():
            m = config["median"]
            bars.append((f"geventsched\n{config['label']}", m["jobs_per_s"], m["min_jobs_per_s"],
                         m["max_jobs_per_s"], GEVENTSCHED))
    peers = _scenario(document, "peers")
    if peers:
        if not throughput:
            bars += [(f"geventsched\n{mode}", rate, rate, rate, GEVENTSCHED)
                     for mode, rate in peers["geventsched_jobs_per_s"].items()]
        for s in sorted((s for s in peers["systems"] if "jobs_per_s" in s), key=lambda s: -s["jobs_per_s"]):
            colour = RAW if s["system"] == "raw-echo" else PEER
            bars.append((f"{s['system']}\n{s.get('version', '')}".strip(), s["jobs_per_s"], s["jobs_per_s"],
                         s["jobs_per_s"], colour))
    return bars


def throughput_chart(document, out_dir):
    bars = _systems(document)
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(bars)), 5))
    labels, rates, lows, highs, colours = zip(*bars)
    spans = [[r - lo for r, lo in zip(rates, lows)], [hi - r for r, hi in zip(rates, highs)]]
    ax.bar(range(len(bars)), rates, color=colours, yerr=spans, capsize=3)
    for i, rate in enumerate(rates):
        ax.annotate(f"{rate:,.0f}", (i, rate), ha="center", va="bottom", fontsize=8, xytext=(0, 3),
                    textcoords="offset points")
    ax.set_xticks(range(len(bars)), labels, rotation=30, ha="right", fontsize=8)
    _log_y(ax)
    ax.set_ylabel("no-op jobs per second (log scale)")
    ax.set_title("Throughput: median of interleaved runs (bars: min to max)")
    return _save(fig, out_dir, "throughput.png", document)


def latency_chart(document, out_dir):
    """Sequential round-trip percentiles: ours per mode, plus the raw echo and the peers."""
    series = []
    latency = _scenario(document, "latency")
    if latency:
        series += [(f"geventsched ({mode})", lat, GEVENTSCHED, "-" if mode == "redis" else "--")
                   for mode, lat in latency["sequential_ms"].items()]
    peers = _scenario(document, "peers")
    if peers:
        others = [s for s in peers["systems"] if s.get("latency_ms")]
        colours = iter(PEER_LINES * len(others))
        series += [(s["system"], s["latency_ms"], RAW if s["system"] == "raw-echo" else next(colours), ":")
                   for s in others]
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for label, lat, colour, style in series:
        ax.plot(PERCENTILES, [lat.get(p) for p in PERCENTILES], marker="o", linestyle=style, color=colour,
                label=label)
    _log_y(ax)
    ax.set_ylabel("round trip, ms (log scale)")
    ax.set_title("Latency of sequential round trips (submit one job, wait for its result)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, out_dir, "latency.png", document)


def load_chart(document, out_dir):
    """Open-loop latency (from each job's scheduled time) against the offered rate."""
    latency = _scenario(document, "latency")
    if not latency:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for mode, loops in latency["open_loop"].items():
        colour = GEVENTSCHED if mode == "redis" else "tab:green"
        rates = [loop["rate"] for loop in loops]
        for p, style in (("p50", "-"), ("p99", "--")):
            ax.plot(rates, [loop["latency_ms"][p] for loop in loops], marker="o", linestyle=style, color=colour,
                    label=f"{mode} {p}")
        for loop in loops:
            ax.annotate(f"{loop['load']:.0%}", (loop["rate"], loop["latency_ms"]["p99"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points", color=colour)
    _log_y(ax)
    ax.set_xlabel("offered load, jobs/s (labels: share of the measured maximum)")
    ax.set_ylabel("latency from scheduled time, ms (log scale)")
    ax.set_title("Latency vs offered load (open loop)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, out_dir, "latency_vs_load.png", document)


def _panel(ax, xs, xlabel, ylabel, title):
    """Log x labelled at ``xs`` in plain numbers, y from 0, a grid: the layout of every panel in the
    density and concurrency charts."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:,}" for x in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def _median_with_span(ax, xs, rows, key):
    """The median over each row's runs of ``key``, with a bar from the lowest run to the highest."""
    runs = [[run[key] for run in row["runs"]] for row in rows]
    medians = [statistics.median(values) for values in runs]
    spans = [[m - min(r) for m, r in zip(medians, runs)], [max(r) - m for m, r in zip(medians, runs)]]
    ax.errorbar(xs, medians, yerr=spans, marker="o", capsize=3, color=GEVENTSCHED)


def _lines(ax, xs, rows, series):
    """One line per ``{label: row -> value}`` in ``series``."""
    for (label, value), (style, colour) in zip(series.items(), LINE_STYLES):
        ax.plot(xs, [value(row) for row in rows], marker="o", linestyle=style, color=colour, label=label)


CHANNELS_AXIS = "dispatch channels on the worker"
N_AXIS = "N jobs at once = worker concurrency"
LINE_STYLES = (("-", GEVENTSCHED), ("--", "tab:green"), (":", "tab:red"))
RATE_PANEL = ("no-op jobs/s (median; bars: min to max)", "Throughput vs channels per worker")


def density_chart(document, out_dir):
    density = _scenario(document, "density")
    if not density:
        return None
    rows = density["channels"]
    channels = [row["channels"] for row in rows]
    fig, (rate, start, memory) = _pyplot().subplots(1, 3, figsize=(14, 4.5))
    _median_with_span(rate, channels, rows, "jobs_per_s")
    _panel(rate, channels, CHANNELS_AXIS, *RATE_PANEL)
    _lines(start, channels, rows, {"all subscribed": lambda row: row["subscribed_s"],
                                   "registered": lambda row: row["registered_s"]})
    _panel(start, channels, CHANNELS_AXIS, "seconds from process start", "Worker start-up vs channels")
    start.legend(fontsize=8)
    memory.plot(channels, [row["idle_rss_mib"] for row in rows], marker="o", color=GEVENTSCHED)
    _panel(memory, channels, CHANNELS_AXIS, "worker RSS, MiB (idle, subscribed)", "Worker memory vs channels")
    return _save(fig, out_dir, "density.png", document)


def fanout_chart(document, out_dir):
    """For JSON written before the density scenario replaced the fan-out one."""
    fanout = _scenario(document, "fanout")
    if not fanout:
        return None
    rows = fanout["channels"]
    channels = [row["channels"] for row in rows]
    fig, (left, right) = _pyplot().subplots(1, 2, figsize=(10, 4.5))
    _median_with_span(left, channels, rows, "jobs_per_s")
    _panel(left, channels, CHANNELS_AXIS, *RATE_PANEL)
    right.plot(channels, [row["worker_ready_s"] for row in rows], marker="o", color=GEVENTSCHED)
    _panel(right, channels, CHANNELS_AXIS, "seconds from process start to registered", "Worker start-up vs channels")
    return _save(fig, out_dir, "fanout.png", document)


def concurrency_chart(document, out_dir):
    result = _scenario(document, "concurrency")
    if not result:
        return None
    rows = result["sizes"]
    jobs = [row["jobs"] for row in rows]
    fig, (drain, memory, lag) = _pyplot().subplots(1, 3, figsize=(14, 4.5))
    _median_with_span(drain, jobs, rows, "seconds")
    drain.axhline(result["seconds"], linestyle=":", color=RAW, label=f"the sleep itself ({result['seconds']} s)")
    _panel(drain, jobs, N_AXIS, "seconds, first submit to last result",
           f"Drain time of N `{result['task']} {result['seconds']}` jobs")
    _lines(memory, jobs, rows, {"peak": lambda row: row["peak_rss_mib"],
                                "idle, before the jobs": lambda row: row["idle_rss_mib"]})
    _panel(memory, jobs, N_AXIS, "worker RSS, MiB", "Worker memory vs concurrency")
    _lines(lag, jobs, rows, {"max": lambda row: row["loop_lag"]["max_ms"],
                             "p99": lambda row: row["loop_lag"]["p99_ms"]})
    _panel(lag, jobs, N_AXIS, "hub lag, ms (upper bound of the histogram bucket)", "Worker hub lag during the runs")
    for ax in (drain, memory, lag):
        ax.legend(fontsize=8)
    return _save(fig, out_dir, "concurrency.png", document)


def payload_chart(document, out_dir):
    payload = _scenario(document, "payload")
    if not payload:
        return None
    plt = _pyplot()
    rows = payload["sizes"]
    labels = [f"{_size(row['bytes'])}\nconcurrency {row.get('concurrency', '?')}" for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    left.bar(labels, [row["median"]["jobs_per_s"] for row in rows], color=GEVENTSCHED)
    _log_y(left)
    left.set_ylabel("echo jobs/s (median, log scale)")
    left.set_title("Throughput vs argument size")
    right.bar(labels, [row["mib_per_s"] for row in rows], color=GEVENTSCHED)
    right.set_ylabel("MiB/s of arguments (results carry as much back)")
    right.set_title("Payload bandwidth")
    return _save(fig, out_dir, "payload.png", document)


def _size(n):
    return f"{n // 1024} KiB" if n >= 1024 else f"{n} B"


CHARTS = (throughput_chart, latency_chart, load_chart, density_chart, fanout_chart, concurrency_chart,
          payload_chart)


def plot_all(document, out_dir):
    """Every chart the document has data for; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    return [path for chart in CHARTS if (path := chart(document, out_dir))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="JSON written by bench/suite.py")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for the PNG files")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.exit(1, "plot.py needs matplotlib: pip install 'geventsched[bench]'\n")
    with open(args.results) as f:
        document = json.load(f)
    for path in plot_all(document, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
