"""The style sheet and the chart script of report/index.html, inlined into the page.

The script draws every chart as SVG from the JSON embedded in the page (no library, no network).
It only ever sets text with `textContent` and attributes with `setAttribute`, so no string of the
data is parsed as HTML. Each chart marks its container `data-rendered="1"` when drawn (tests look
for it); a chart that fails says so in place and logs the error.
"""

CSS = r"""
:root { --fg: #1f2430; --muted: #667085; --line: #e4e7ec; --bg: #f6f7f9; --card: #fff; --accent: #2f5d9b; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); background: var(--bg); }
header.top { background: #17202e; color: #fff; padding: 22px 32px 16px; }
header.top h1 { margin: 0 0 2px; font-size: 24px; font-weight: 650; letter-spacing: -0.01em; }
header.top .sub { color: #aab4c3; font-size: 13px; }
header.top .sub code { color: #d6dde8; }
header.top a { color: #9cc3ff; }
nav { position: sticky; top: 0; z-index: 5; background: #fff; border-bottom: 1px solid var(--line);
      padding: 8px 32px; display: flex; gap: 18px; flex-wrap: wrap; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; font-weight: 500; }
main { max-width: 1240px; margin: 0 auto; padding: 18px 32px 48px; }
section { margin-top: 26px; }
h2 { font-size: 18px; margin: 0 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 14px; margin: 14px 0 6px; color: #344054; }
p.note { color: var(--muted); margin: 4px 0 10px; font-size: 13px; }
.stats { display: grid; grid-template-columns: repeat(auto-fit, minmax(132px, 1fr)); gap: 10px; margin-top: 14px; }
.stat { background: var(--card); color: var(--fg); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.stat .k { color: var(--muted); font-size: 11px; text-transform: uppercase; letter-spacing: .05em; }
.stat .v { font-size: 20px; font-weight: 650; margin-top: 2px; white-space: nowrap; overflow: hidden;
           text-overflow: ellipsis; }
.stat .d { color: var(--muted); font-size: 12px; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 14px; }
.grid3 { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card h3 { margin: 0 0 4px; }
.chart { position: relative; min-height: 120px; }
.chart svg { width: 100%; height: auto; display: block; }
.chart .tip { position: absolute; pointer-events: none; background: rgba(23, 32, 46, .92); color: #fff;
              font-size: 12px; padding: 5px 8px; border-radius: 4px; white-space: pre; display: none; z-index: 3; }
.chart .failed { color: #b42318; font-size: 13px; padding: 20px; }
.legend { display: flex; flex-wrap: wrap; gap: 12px; font-size: 12px; color: #475467; margin: 4px 0 0; }
.legend span.sw { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px;
                  vertical-align: -1px; }
table { border-collapse: collapse; width: 100%; background: var(--card); font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #f2f4f7; font-weight: 600; color: #344054; position: sticky; top: 37px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td code, p code, li code { font-size: 12px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.hash { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; color: #475467; }
.scroll { max-height: 420px; overflow: auto; border: 1px solid var(--line); border-radius: 8px; }
.scroll table th { top: 0; }
.sample { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px;
          margin-bottom: 8px; }
.sample .meta { color: var(--muted); font-size: 12px; margin-bottom: 4px; }
.sample pre { margin: 0; white-space: pre-wrap; word-break: break-word; font-size: 12.5px; background: #f9fafb;
              padding: 6px 8px; border-radius: 4px; }
.tag { display: inline-block; padding: 0 6px; border-radius: 10px; font-size: 11px; font-weight: 600; color: #fff; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
figure img { max-width: 100%; display: block; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 12px; text-align: center; margin-top: 4px; }
details { margin-top: 8px; }
details pre { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px;
              overflow: auto; max-height: 420px; font-size: 12px; }
.empty { color: var(--muted); font-style: italic; }
footer { color: var(--muted); font-size: 12px; margin-top: 36px; border-top: 1px solid var(--line); padding-top: 10px; }
"""

JS = r"""
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#bab0ac"];
  var EVENT_COLORS = {spike: "#e15759", nonfinite: "#b42318", skip_batch: "#f28e2b", rollback: "#7a3e9d",
                      resume: "#2f5d9b", corrupt_checkpoint: "#101828"};
  var W = 640, H = 270;
  var DATA = JSON.parse(document.getElementById("report-data").textContent);

  function svgEl(tag, attrs, parent) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) { if (attrs[k] !== undefined && attrs[k] !== null) e.setAttribute(k, attrs[k]); }
    if (parent) parent.appendChild(e);
    return e;
  }
  function label(parent, x, y, s, attrs) {
    var t = svgEl("text", Object.assign({x: x, y: y, "font-size": 11, fill: "#475467"}, attrs || {}), parent);
    t.textContent = s;
    return t;
  }
  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "-";
    var a = Math.abs(v);
    if (a >= 1e12) return (v / 1e12).toPrecision(3) + "T";
    if (a >= 1e9) return (v / 1e9).toPrecision(3) + "B";
    if (a >= 1e6) return (v / 1e6).toPrecision(3) + "M";
    if (a >= 1e4) return (v / 1e3).toPrecision(3) + "K";
    if (a >= 100) return v.toFixed(0);
    if (a === 0) return "0";
    if (a < 1e-3) return v.toExponential(1);
    return String(+v.toPrecision(3));
  }
  function pct(v) { return fmt(100 * v) + "%"; }
  function ticks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    var err = (hi - lo) / n / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }
  function extent(arrays, pad) {
    var lo = Infinity, hi = -Infinity;
    arrays.forEach(function (a) { a.forEach(function (v) { if (v !== null && isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; } }); });
    if (lo === Infinity) return [0, 1];
    if (lo === hi) { var d = Math.abs(lo) * 0.1 || 1; return [lo - d, hi + d]; }
    var p = (hi - lo) * (pad || 0);
    return [lo - p, hi + p];
  }
  function pathOf(xs, ys, sx, sy) {
    var d = "", pen = false;
    for (var i = 0; i < xs.length; i++) {
      var y = ys[i];
      if (y === null || y === undefined || !isFinite(y) || xs[i] === null) { pen = false; continue; }
      d += (pen ? "L" : "M") + sx(xs[i]).toFixed(1) + " " + sy(y).toFixed(1);
      pen = true;
    }
    return d;
  }
  function nearest(xs, x) {
    var lo = 0, hi = xs.length - 1;
    if (hi < 0) return -1;
    while (hi - lo > 1) { var mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid; else hi = mid; }
    return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
  }
  function tipAt(host, svg, evt, lines) {
    var tip = host.querySelector(".tip");
    if (!lines) { tip.style.display = "none"; return; }
    tip.textContent = lines.join("\n");
    tip.style.display = "block";
    var r = host.getBoundingClientRect();
    var x = evt.clientX - r.left + 12, y = evt.clientY - r.top + 12;
    if (x + tip.offsetWidth > r.width) x = evt.clientX - r.left - tip.offsetWidth - 12;
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function frame(host, o) {
    host.textContent = "";
    W = Math.max(300, Math.round(host.getBoundingClientRect().width || 640));
    var svg = svgEl("svg", {viewBox: "0 0 " + W + " " + (o.height || H), role: "img"}, host);
    var tip = document.createElement("div");
    tip.className = "tip";
    host.appendChild(tip);
    return svg;
  }
  function axes(svg, m, xs, ys, sx, sy, o) {
    var g = svgEl("g", {}, svg);
    var h = (o.height || H);
    ys.forEach(function (v) {
      svgEl("line", {x1: m.l, x2: W - m.r, y1: sy(v), y2: sy(v), stroke: "#eef0f3"}, g);
      label(g, m.l - 6, sy(v) + 3.5, o.yFormat ? o.yFormat(v) : fmt(v), {"text-anchor": "end"});
    });
    xs.forEach(function (v) {
      svgEl("line", {x1: sx(v), x2: sx(v), y1: h - m.b, y2: h - m.b + 4, stroke: "#98a2b3"}, g);
      label(g, sx(v), h - m.b + 15, o.xFormat ? o.xFormat(v) : fmt(v), {"text-anchor": "middle"});
    });
    svgEl("line", {x1: m.l, x2: W - m.r, y1: h - m.b, y2: h - m.b, stroke: "#98a2b3"}, g);
    svgEl("line", {x1: m.l, x2: m.l, y1: m.t, y2: h - m.b, stroke: "#98a2b3"}, g);
    if (o.xLabel) label(g, (m.l + W - m.r) / 2, h - 4, o.xLabel, {"text-anchor": "middle", fill: "#667085"});
    if (o.yLabel) label(g, 12, (m.t + h - m.b) / 2, o.yLabel,
                        {"text-anchor": "middle", fill: "#667085", transform: "rotate(-90 12 " + ((m.t + h - m.b) / 2) + ")"});
  }
  function stageBands(svg, m, sx, o, lo, hi) {
    var h = (o.height || H);
    (o.bands || []).forEach(function (b, i) {
      var x0 = Math.max(sx(Math.max(b.x0, lo)), m.l), x1 = Math.min(sx(Math.min(b.x1, hi)), W - m.r);
      if (x1 <= x0) return;
      if (i % 2 === 1) svgEl("rect", {x: x0, y: m.t, width: x1 - x0, height: h - m.b - m.t, fill: "#f4f6fa"}, svg);
      if (i > 0) svgEl("line", {x1: x0, x2: x0, y1: m.t, y2: h - m.b, stroke: "#98a2b3", "stroke-dasharray": "4 3"}, svg);
      if (o.bands.length > 1) label(svg, x0 + 3, m.t - 16, b.label, {fill: "#667085", "font-size": 10});
    });
  }
  function markers(svg, m, sx, o) {
    (o.markers || []).forEach(function (e) {
      var x = sx(e.x), y = m.t - 2;
      var color = EVENT_COLORS[e.kind] || "#667085";
      var g = svgEl("g", {"class": "marker", "data-kind": e.kind}, svg);
      svgEl("line", {x1: x, x2: x, y1: m.t, y2: (o.height || H) - m.b, stroke: color, "stroke-opacity": 0.35}, g);
      svgEl("path", {d: "M" + (x - 5) + " " + (y - 8) + "L" + (x + 5) + " " + (y - 8) + "L" + x + " " + y + "Z", fill: color}, g);
      var t = svgEl("title", {}, g);
      t.textContent = e.text;
    });
  }

  // a line chart: o.series = [{name, x: [...], y: [...], color, width, opacity, dots}]
  function lineChart(host, o) {
    var h = o.height || H;
    var m = {l: 54, r: 14, t: (o.markers && o.markers.length) || (o.bands && o.bands.length > 1) ? 30 : 14, b: o.xLabel ? 38 : 24};
    var svg = frame(host, o);
    var allX = [], allY = [];
    o.series.forEach(function (s) { allX.push(s.x); allY.push(s.y); if (s.lo) allY.push(s.lo); if (s.hi) allY.push(s.hi); });
    var dotted = o.series.some(function (s) { return s.dots; });
    var xe = o.xDomain || extent(allX, dotted ? 0.04 : 0), ye = o.yDomain || extent(allY, 0.06);
    if (o.yZero && extent(allY, 0)[0] >= 0) { ye[0] = 0; if (!(ye[1] > 0)) ye[1] = 1; }
    var sx = function (v) { return m.l + (v - xe[0]) / (xe[1] - xe[0] || 1) * (W - m.l - m.r); };
    var sy = function (v) { return h - m.b - (v - ye[0]) / (ye[1] - ye[0] || 1) * (h - m.t - m.b); };
    stageBands(svg, m, sx, o, xe[0], xe[1]);
    axes(svg, m, o.xTicks || ticks(xe[0], xe[1], 6), ticks(ye[0], ye[1], 5), sx, sy, o);
    var paths = 0;
    o.series.forEach(function (s, i) {
      var color = s.color || PALETTE[i % PALETTE.length];
      if (s.lo && s.hi) {
        for (var j = 0; j < s.x.length; j++) {
          if (s.lo[j] === null || s.hi[j] === null) continue;
          svgEl("line", {x1: sx(s.x[j]), x2: sx(s.x[j]), y1: sy(s.lo[j]), y2: sy(s.hi[j]), stroke: color, "stroke-width": 1.2}, svg);
        }
      }
      var d = pathOf(s.x, s.y, sx, sy);
      if (d) {
        svgEl("path", {d: d, fill: "none", stroke: color, "stroke-width": s.width || 1.6, "stroke-opacity": s.opacity || 1,
                       "stroke-linejoin": "round", "class": "series", "data-series": s.name}, svg);
        paths++;
      }
      if (s.dots) {
        for (var k = 0; k < s.x.length; k++) {
          if (s.y[k] === null) continue;
          var filled = !s.hollow || !s.hollow[k];
          svgEl("circle", {cx: sx(s.x[k]), cy: sy(s.y[k]), r: s.x.length > 40 ? 2 : 3.2, fill: filled ? color : "#fff", stroke: color, "stroke-width": 1.4}, svg);
        }
      }
    });
    markers(svg, m, sx, o);
    var cross = svgEl("line", {y1: m.t, y2: h - m.b, stroke: "#344054", "stroke-opacity": 0, "pointer-events": "none"}, svg);
    var hit = svgEl("rect", {x: m.l, y: m.t, width: W - m.l - m.r, height: h - m.t - m.b, fill: "transparent"}, svg);
    var base = o.series[0];
    hit.addEventListener("mousemove", function (evt) {
      var r = svg.getBoundingClientRect();
      var xv = xe[0] + ((evt.clientX - r.left) * W / r.width - m.l) / (W - m.l - m.r) * (xe[1] - xe[0]);
      var i = nearest(base.x, xv);
      if (i < 0) return;
      var x = base.x[i];
      cross.setAttribute("x1", sx(x)); cross.setAttribute("x2", sx(x)); cross.setAttribute("stroke-opacity", 0.5);
      var lines = [(o.xName || "x") + " " + (o.xFormat ? o.xFormat(x) : fmt(x))];
      if (o.extraTip) lines = lines.concat(o.extraTip(i, x));
      o.series.forEach(function (s) {
        var j = s === base ? i : nearest(s.x, x);
        if (j >= 0 && s.x[j] === x && !s.noTip) lines.push(s.name + ": " + fmt(s.y[j]));
      });
      tipAt(host, svg, evt, lines);
    });
    hit.addEventListener("mouseleave", function (evt) { cross.setAttribute("stroke-opacity", 0); tipAt(host, svg, evt, null); });
    host.setAttribute("data-rendered", "1");
    host.setAttribute("data-paths", String(paths));
  }

  // stacked bars: o.categories (x labels), o.stacks = [{name, values: [...], color}]
  function barChart(host, o) {
    var h = o.height || H;
    var m = {l: 54, r: 14, t: o.bands && o.bands.length > 1 ? 30 : 14, b: o.xLabel ? 38 : 24};
    var svg = frame(host, o);
    var n = o.categories.length;
    var totals = o.categories.map(function (_, i) {
      return o.stacks.reduce(function (acc, s) { return acc + (s.values[i] || 0); }, 0);
    });
    var ye = [0, Math.max.apply(null, totals.concat([1])) * 1.05];
    var bw = (W - m.l - m.r) / Math.max(n, 1);
    var sx = function (v) { return m.l + (v + 0.5) * bw; };
    var sy = function (v) { return h - m.b - (v - ye[0]) / (ye[1] - ye[0]) * (h - m.t - m.b); };
    stageBands(svg, m, function (v) { return m.l + v * bw; }, o, 0, n);
    var every = Math.max(1, Math.ceil(n / 12));
    var xt = [];
    for (var i = 0; i < n; i += every) xt.push(i);
    axes(svg, m, xt, ticks(ye[0], ye[1], 5), sx, sy, Object.assign({}, o, {xFormat: function (v) { return o.categories[v]; }}));
    var nbars = 0;
    for (var c = 0; c < n; c++) {
      var acc = 0;
      o.stacks.forEach(function (s, si) {
        var v = s.values[c] || 0;
        if (!v) return;
        svgEl("rect", {x: m.l + c * bw + bw * 0.1, width: Math.max(bw * 0.8, 0.5), y: sy(acc + v), height: sy(acc) - sy(acc + v),
                       fill: s.color || PALETTE[si % PALETTE.length], "class": "bar"}, svg);
        acc += v;
        nbars++;
      });
    }
    var hit = svgEl("rect", {x: m.l, y: m.t, width: W - m.l - m.r, height: h - m.t - m.b, fill: "transparent"}, svg);
    hit.addEventListener("mousemove", function (evt) {
      var r = svg.getBoundingClientRect();
      var c = Math.floor(((evt.clientX - r.left) * W / r.width - m.l) / bw);
      if (c < 0 || c >= n) { tipAt(host, svg, evt, null); return; }
      var lines = [o.categoryName + " " + o.categories[c] + (o.categoryNote ? o.categoryNote(c) : "")];
      o.stacks.forEach(function (s) { if (s.values[c]) lines.push(s.name + ": " + fmt(s.values[c])); });
      tipAt(host, svg, evt, lines);
    });
    hit.addEventListener("mouseleave", function (evt) { tipAt(host, svg, evt, null); });
    host.setAttribute("data-rendered", "1");
    host.setAttribute("data-bars", String(nbars));
  }

  function legend(host, items) {
    var box = document.createElement("div");
    box.className = "legend";
    items.forEach(function (it) {
      var span = document.createElement("span");
      var sw = document.createElement("span");
      sw.className = "sw";
      sw.style.background = it.color;
      if (it.hollow) { sw.style.background = "#fff"; sw.style.border = "2px solid " + it.color; }
      span.appendChild(sw);
      span.appendChild(document.createTextNode(it.name));
      box.appendChild(span);
    });
    host.parentNode.insertBefore(box, host.nextSibling);
  }
  function gradient(i, n) {  // light blue -> dark purple, like viridis' ends
    var t = n > 1 ? i / (n - 1) : 1;
    var a = [253, 200, 70], b = [68, 1, 84], mid = [33, 145, 140];
    var c = t < 0.5 ? a.map(function (v, k) { return Math.round(v + (mid[k] - v) * t * 2); })
                    : mid.map(function (v, k) { return Math.round(v + (b[k] - v) * (t - 0.5) * 2); });
    return "rgb(" + c.join(",") + ")";
  }
  var drawn = [];
  function safely(id, fn) {
    var host = document.getElementById(id);
    if (!host) return;
    drawn.push([id, fn]);
    draw(host, id, fn);
  }
  function draw(host, id, fn) {
    var next = host.nextSibling;
    if (next && next.className === "legend") next.parentNode.removeChild(next);
    try { fn(host); }
    catch (err) {
      host.textContent = "";
      var p = document.createElement("div");
      p.className = "failed";
      p.textContent = "this chart could not be drawn: " + err;
      host.appendChild(p);
      host.setAttribute("data-rendered", "error");
      console.error("llm360 report: chart " + id + " failed: " + err);
    }
  }

  // -- the charts of the page -----------------------------------------------------------------
  var T = DATA.train;
  var stageBandsSteps = DATA.stages.map(function (s) { return {x0: s.first_step, x1: s.end_step, label: s.name}; });
  var eventMarks = DATA.events.map(function (e) { return {x: e.step, kind: e.kind, text: "step " + e.step + " " + e.kind + ": " + e.text}; });
  function stepTip(i) { return T.tokens && T.tokens[i] !== null ? ["tokens " + fmt(T.tokens[i])] : []; }
  function trainChart(id, key, name, extra) {
    safely(id, function (host) {
      var series = [{name: name, x: T.step, y: T[key], color: extra && extra.color, width: extra && extra.smooth ? 1 : 1.6,
                     opacity: extra && extra.smooth ? 0.35 : 1}];
      if (extra && extra.smooth) series.push({name: name + " (EMA)", x: T.step, y: T[extra.smooth], color: extra.color, width: 2});
      lineChart(host, Object.assign({series: series, xLabel: "step", xName: "step", bands: stageBandsSteps, markers: eventMarks,
                                     extraTip: stepTip}, extra || {}));
    });
  }
  if (T.step.length) {
    trainChart("chart-loss", "loss", "loss", {smooth: "loss_ema", color: "#2f5d9b"});
    trainChart("chart-lr", "lr", "learning rate", {color: "#59a14f", yZero: true});
    trainChart("chart-grad", "grad_norm", "gradient norm", {color: "#e15759", yZero: true});
    trainChart("chart-tps", "tokens_per_s", "tokens/s", {color: "#f28e2b", yZero: true});
    if (T.mfu && T.mfu.some(function (v) { return v !== null; })) {
      trainChart("chart-mfu", "mfu", "MFU", {color: "#b07aa1", yZero: true, yFormat: pct});
    }
  }

  DATA.evals.forEach(function (ev, i) {
    safely("chart-eval-" + i, function (host) {
      var xs = ev.points.map(function (p) { return p.tokens; });
      var ys = ev.points.map(function (p) { return p.value; });
      var lo = ev.points.map(function (p) { return p.stderr === null || p.value === null ? null : p.value - p.stderr; });
      var hi = ev.points.map(function (p) { return p.stderr === null || p.value === null ? null : p.value + p.stderr; });
      lineChart(host, {height: 200, series: [{name: ev.metric, x: xs, y: ys, lo: lo, hi: hi, dots: true, color: PALETTE[i % PALETTE.length]}],
                       xLabel: "tokens trained", xName: "tokens",
                       extraTip: function (j) { return [ev.points[j].checkpoint]; }});
    });
  });

  (DATA.contamination || []).forEach(function (ct, i) {
    if (!ct.points.length) return;
    safely("chart-contam-" + i, function (host) {
      var xs = ct.points.map(function (p) { return p.step; });
      var series = [{name: "clean", x: xs, y: ct.points.map(function (p) { return p.clean; }), dots: true, color: "#4e79a7"},
                    {name: "contaminated", x: xs, y: ct.points.map(function (p) { return p.contaminated; }), dots: true, color: "#e15759"}];
      lineChart(host, {height: 200, series: series, xLabel: "step", xName: "step", yZero: true,
                       extraTip: function (j) { return [ct.points[j].checkpoint]; }});
      legend(host, series.map(function (s) { return {name: s.name, color: s.color}; }));
    });
  });

  var C = DATA.composition;
  if (C.chunks.length) {
    safely("chart-composition", function (host) {
      var stacks = C.sources.map(function (name, si) {
        return {name: name, color: PALETTE[si % PALETTE.length], values: C.chunks.map(function (c) { return c.counts[name] || 0; })};
      });
      barChart(host, {categories: C.chunks.map(function (c) { return String(c.index); }), stacks: stacks,
                      categoryName: "chunk", xLabel: "chunk (training order)", yLabel: "rows",
                      categoryNote: function (i) { return " (stage " + C.chunks[i].stage + ")"; },
                      bands: DATA.stages.map(function (s) { return {x0: s.first_chunk, x1: s.first_chunk + s.chunks, label: s.name}; })});
      legend(host, stacks.map(function (s) { return {name: s.name, color: s.color}; }));
    });
  }

  var M = DATA.memorization;
  if (M.checkpoints.length) {
    ["mean_score", "extractable_frac"].forEach(function (key) {
      safely("chart-mem-" + key, function (host) {
        var n = M.checkpoints.length;
        var total = M.checkpoints.reduce(function (acc, ck) { return acc + ck.points.length; }, 0);
        var series = M.checkpoints.map(function (ck, i) {
          return {name: ck.name, x: ck.points.map(function (p) { return p.chunk; }), y: ck.points.map(function (p) { return p[key]; }),
                  hollow: ck.points.map(function (p) { return !p.seen; }), dots: total < 3000, color: gradient(i, n), width: 1.6};
        });
        var xt = ticks(0, Math.max(1, M.chunks - 1), Math.min(8, M.chunks)).filter(function (v) { return v === Math.round(v); });
        lineChart(host, {series: series, xLabel: "chunk", xName: "chunk", xTicks: xt, yZero: true, height: 250,
                         xDomain: [-0.5, Math.max(M.chunks - 0.5, 0.5)],
                         yFormat: key === "extractable_frac" ? pct : null});
        legend(host, series.map(function (s) { return {name: s.name, color: s.color}; })
                      .concat([{name: "filled: chunk seen by the checkpoint, hollow: not yet (control)", color: "#667085", hollow: true}]));
      });
    });
    if (M.histogram && M.histogram.counts.length) {
      safely("chart-mem-hist", function (host) {
        var h = M.histogram;
        barChart(host, {categories: h.counts.map(function (_, i) { return String(i); }), height: 220,
                        stacks: [{name: "rows", values: h.counts, color: "#76b7b2"}], categoryName: "tokens matched",
                        xLabel: "continuation tokens matched (of " + (h.counts.length - 1) + ") - " + h.checkpoint, yLabel: "rows"});
      });
    }
  }
  var lastWidth = window.innerWidth, timer = null;
  window.addEventListener("resize", function () {  // redraw at the new width, so text keeps its size
    if (window.innerWidth === lastWidth) return;
    lastWidth = window.innerWidth;
    clearTimeout(timer);
    timer = setTimeout(function () {
      drawn.forEach(function (d) { var host = document.getElementById(d[0]); if (host) draw(host, d[0], d[1]); });
    }, 150);
  });
  document.body.setAttribute("data-report", "ready");
})();
"""
