"""`trainlab monitor`: a local page that redraws the panels while training runs.

The server answers exactly two paths, `/` (the page) and `/data.json` (the panels' data,
read from the study it was started on); anything else is 404, so no file can be fetched
through it. It binds 127.0.0.1 unless told otherwise, answers only requests addressed to
that host by name or address (a page on another site cannot reach it through DNS
rebinding), escapes every string it puts in its page, serves requests on threads with a real
listen backlog, and lets a client hang up quietly.
"""

import html
import json
import logging
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .data import collect

log = logging.getLogger(__name__)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>trainlab monitor</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.2em; color: #222; }
#panels { display: grid; grid-template-columns: repeat(2, minmax(380px, 1fr)); gap: 1em; }
.panel { border: 1px solid #ddd; border-radius: 6px; padding: .5em; }
.panel h3 { margin: .2em 0 .4em; font-size: 1em; }
svg { width: 100%; height: 240px; }
table { border-collapse: collapse; margin: .8em 0; }
td, th { padding: .2em .8em; border-bottom: 1px solid #eee; text-align: left; }
.live { color: #1a7f37; } .finished { color: #555; } .diverged { color: #c62828; } .stalled { color: #b26a00; }
.legend span { margin-right: 1em; font-size: .85em; }
</style></head>
<body>
<h2>trainlab monitor: __TITLE__</h2>
<div>updated <span id="updated">never</span>; points <span id="points">0</span>; refresh every __INTERVAL__ s</div>
<table id="runs"><thead><tr><th>run</th><th>status</th></tr></thead><tbody></tbody></table>
<div id="panels"></div>
<script>
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                "#17becf"];
function colour(i) {  // ten fixed colours, then hues a golden angle apart: never two lines alike
  return i < COLORS.length ? COLORS[i] : "hsl(" + Math.round((i * 137.508) % 360) + ", 65%, 45%)";
}
function el(tag, attrs, text) {
  const ns = ["svg", "polyline", "polygon", "line", "text", "circle"].includes(tag) ? "http://www.w3.org/2000/svg" : null;
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function transform(scale) {  // values to the drawn axis: log10, or a symmetric log that crosses zero
  if (scale === "log") return y => Math.log10(y);
  if (scale === "symlog") return y => Math.sign(y) * Math.log10(1 + Math.abs(y) / 1e-3);
  return y => y;
}
function ticks(lo, hi, count) {  // about `count` round numbers between lo and hi
  const span = hi - lo || Math.abs(hi) || 1, raw = span / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw);
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}
function label(v) {  // 0.25, 12, 1e+10: short either way
  const a = Math.abs(v);
  return a !== 0 && (a >= 1e4 || a < 1e-3) ? v.toExponential(0) : String(Number(v.toPrecision(3)));
}
function segments(pts, sx, sy) {  // a null value breaks the line: a gap stays a gap
  const out = [[]];
  for (const p of pts) {
    if (p[1] === null) { if (out[out.length - 1].length) out.push([]); }
    else out[out.length - 1].push(sx(p[0]) + "," + sy(p[1]));
  }
  return out.filter(s => s.length);
}
function panel(metric, data, colourOf, banded) {
  const box = el("div", {class: "panel", "data-metric": metric});
  const scale = data.scales[metric];
  box.appendChild(el("h3", {}, metric + (scale === "linear" ? "" : " (" + scale + " axis)")));
  const f = transform(scale), lines = [];
  data.runs.forEach(run => banded.has(run.name) || Object.entries(run.series[metric] || {}).forEach(([name, pts]) =>
    pts.length && lines.push({label: run.name + (name === "train" || name === "held-out" ? " (" + name + ")" : ""),
                              pts, color: colourOf[run.name], dash: name === "train" ? "4 3" : ""})));
  const bands = data.bands[metric].map(b => ({label: b.name + (b.line === "train" || b.line === "held-out" ?
    " (" + b.line + ")" : "") + ", mean of " + b.seeds + " seeds", b, color: colourOf[b.name],
    dash: b.line === "train" ? "4 3" : ""}));
  const ys = [...lines.flatMap(l => l.pts.map(p => p[1])),
              ...bands.flatMap(x => x.b.points.flatMap(p => p[1] === null ? [] : [p[1] - p[2], p[1] + p[2]]))]
    .filter(y => y !== null && (scale !== "log" || y > 0)).map(f);
  const svg = el("svg", {viewBox: "0 0 400 240", preserveAspectRatio: "none"});
  if (ys.length) {
    const [x0, x1] = data.x_range, [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const sx = x => 48 + 342 * (x - x0) / ((x1 - x0) || 1);
    const sy = y => 215 - 200 * (f(scale === "log" ? Math.max(y, 1e-300) : y) - y0) / ((y1 - y0) || 1);
    for (const t of ticks(x0, x1, 5)) {
      svg.appendChild(el("line", {x1: sx(t), x2: sx(t), y1: 15, y2: 215, stroke: "#eee"}));
      svg.appendChild(el("text", {x: sx(t) - 8, y: 232, "font-size": 9, class: "xtick"}, String(t)));
    }
    for (const t of ticks(y0, y1, 5)) {
      const value = scale === "linear" ? t : scale === "log" ? Math.pow(10, t) : Math.sign(t) * 1e-3 * (Math.pow(10, Math.abs(t)) - 1);
      const y = 215 - 200 * (t - y0) / ((y1 - y0) || 1);
      svg.appendChild(el("line", {x1: 48, x2: 390, y1: y, y2: y, stroke: "#eee"}));
      svg.appendChild(el("text", {x: 2, y: y + 3, "font-size": 9, class: "ytick"}, label(value)));
    }
    for (const x of bands) {
      const rows = x.b.points.filter(p => p[1] !== null);
      const upper = rows.map(p => sx(p[0]) + "," + sy(p[1] + p[2]));
      const lower = rows.slice().reverse().map(p => sx(p[0]) + "," + sy(scale === "log" ? Math.max(p[1] - p[2], p[1] / 10) : p[1] - p[2]));
      svg.appendChild(el("polygon", {points: upper.concat(lower).join(" "), fill: x.color, "fill-opacity": 0.2,
                                     stroke: "none", class: "band"}));
      for (const seg of segments(x.b.points, sx, sy))
        svg.appendChild(el("polyline", {points: seg.join(" "), fill: "none", stroke: x.color, "stroke-width": 1.5,
                                        "stroke-dasharray": x.dash, class: "series"}));
    }
    for (const l of lines) {
      for (const seg of segments(l.pts, sx, sy))
        svg.appendChild(el("polyline", {points: seg.join(" "), fill: "none", stroke: l.color, "stroke-width": 1.5,
                                        "stroke-dasharray": l.dash, class: "series", "data-points": l.pts.length}));
    }
  } else {
    svg.appendChild(el("text", {x: 150, y: 120, "font-size": 12}, "no data yet"));
  }
  box.appendChild(svg);
  const legend = el("div", {class: "legend"});
  [...lines, ...bands].forEach(l => legend.appendChild(el("span", {style: "color:" + l.color}, l.label)));
  box.appendChild(legend);
  return box;
}
async function refresh() {
  try {
    const data = await (await fetch("data.json", {cache: "no-store"})).json();
    const body = document.querySelector("#runs tbody");
    body.replaceChildren(...data.runs.map(r => {
      const tr = el("tr", {}); tr.appendChild(el("td", {}, r.name));
      tr.appendChild(el("td", {class: r.status}, r.status)); return tr; }));
    const bandNames = Object.values(data.bands).flat().map(b => b.name);
    const banded = new Set(data.runs.filter(r => r.group !== null && bandNames.includes(r.group)).map(r => r.name));
    const names = [...data.runs.map(r => r.name).filter(n => !banded.has(n)), ...new Set(bandNames)];
    const colourOf = Object.fromEntries(names.map((n, i) => [n, colour(i)]));
    document.getElementById("panels").replaceChildren(...data.metrics.map(m => panel(m, data, colourOf, banded)));
    document.getElementById("points").textContent = data.points;
    document.getElementById("updated").textContent = new Date(data.updated * 1000).toLocaleTimeString();
  } catch (err) {
    document.getElementById("updated").textContent = "error: " + err;
  }
}
refresh();
setInterval(refresh, __INTERVAL__ * 1000);
</script></body></html>
"""


LOCAL_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}


def allowed_hosts(host: str) -> set[str]:
    """Names a request's Host header may carry: the bound address, and the loopback names when
    it is a loopback address (0.0.0.0 listens everywhere: its own names cannot be known)."""
    names = {host, f"[{host}]"}
    return names | LOCAL_NAMES if host in LOCAL_NAMES or host.startswith("127.") else names


def host_name(header: str) -> str:
    """'localhost:8765' -> 'localhost'; '[::1]:8765' -> '[::1]'."""
    if header.startswith("["):
        return header.split("]")[0] + "]"
    return header.rsplit(":", 1)[0]


def make_handler(root: Path, metrics: list[str] | None, interval: float, host: str = "127.0.0.1"):
    page = PAGE.replace("__TITLE__", html.escape(root.resolve().name)).replace("__INTERVAL__", f"{interval:g}").encode()
    hosts = allowed_hosts(host)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if host not in ("0.0.0.0", "::") and host_name(self.headers.get("Host") or "") not in hosts:
                self.reply(403, "text/plain", b"forbidden: unknown host\n")
            elif path == "/":
                self.reply(200, "text/html; charset=utf-8", page)
            elif path == "/data.json":
                body = json.dumps(collect(root, metrics, stale_after=max(30.0, 3 * interval))).encode()
                self.reply(200, "application/json", body)
            else:
                self.reply(404, "text/plain", b"not found\n")

        def reply(self, code: int, kind: str, body: bytes) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client hung up: nothing to tell anyone
                pass

        def log_message(self, *args):  # quiet: the terminal belongs to the user
            pass

    return Handler


class Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops connections when a page and its refreshes arrive together
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up is not an error
            super().handle_error(request, client_address)


def make_server(root: str | Path, host: str = "127.0.0.1", port: int = 8765, metrics=None, interval: float = 5.0):
    return Server((host, port), make_handler(Path(root), metrics, interval, host))


def serve(root: str | Path, host: str = "127.0.0.1", port: int = 8765, metrics=None, interval: float = 5.0) -> None:
    server = make_server(root, host, port, metrics, interval)
    log.info(f"monitoring {root} at http://{host}:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
