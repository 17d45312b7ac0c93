"""Geometry of the overview's two small charts, drawn as inline SVG by the templates: numbers in,
numbers out (no script library, nothing fetched by the browser)."""

import time

WIDTH, HEIGHT = 600, 120
#: Room under the plot for the time labels.
AXIS = 16


def bars(series, unit):
    """``series`` = ``[(start, value), ...]`` -> ``{bars: [{x, y, w, h, title}], top, labels}``, scaled so
    the largest value fills the plot."""
    top = nice_ceiling(max((v for _, v in series), default=0))
    width = WIDTH / max(len(series), 1)
    plot = HEIGHT - AXIS
    out = []
    for i, (start, value) in enumerate(series):
        h = plot * value / top if top else 0
        out.append({"x": round(i * width + 1, 1), "y": round(plot - h, 1), "w": round(max(width - 2, 1), 1),
                    "h": round(h, 1), "title": f"{clock(start)}  {value:.3g} {unit}"})
    return {"bars": out, "top": top, "labels": labels(series, width), "unit": unit,
            "width": WIDTH, "height": HEIGHT, "plot": plot}


def lines(series, names, unit):
    """``series`` = ``[(start, v1, v2, ...), ...]`` (None where a bar has no value) -> ``{lines: [{name,
    points: "x,y ..."}], dots, top, labels}``; a gap where a value is missing starts a new line."""
    top = nice_ceiling(max((v for row in series for v in row[1:len(names) + 1] if v is not None), default=0))
    width = WIDTH / max(len(series), 1)
    plot = HEIGHT - AXIS
    out, dots = [], []
    for n, name in enumerate(names, 1):
        runs, run = [], []
        for i, row in enumerate(series):
            value = row[n]
            if value is None:
                if run:
                    runs.append(run)
                run = []
                continue
            x, y = round((i + 0.5) * width, 1), round(plot - (plot * value / top if top else 0), 1)
            run.append(f"{x},{y}")
            dots.append({"x": x, "y": y, "series": n, "title": f"{clock(row[0])}  {name} {value:.3g} {unit}"})
        if run:
            runs.append(run)
        out += [{"name": name, "series": n, "points": " ".join(r)} for r in runs]
    return {"lines": out, "dots": dots, "top": top, "labels": labels(series, width), "unit": unit,
            "width": WIDTH, "height": HEIGHT, "plot": plot, "names": names}


def labels(series, width):
    """A time label under every fifth bar."""
    return [{"x": round(i * width, 1), "text": clock(row[0])} for i, row in enumerate(series) if i % 5 == 0]


def nice_ceiling(value):
    """The smallest of 1, 2, 5 x 10^n at or above ``value`` (0 stays 0): the chart's round top."""
    if value <= 0:
        return 0
    step = 10 ** int(f"{value:e}".split("e")[1])
    for m in (1, 2, 5, 10):
        if m * step >= value:
            return m * step
    return 10 * step


def clock(ts):
    return time.strftime("%H:%M:%S", time.gmtime(ts))
