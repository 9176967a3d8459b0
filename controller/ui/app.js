// meshlat dashboard (issue 14): plain JavaScript, no framework, no build step, nothing fetched
// but this controller's REST API. The page's CSP allows only this file and app.css: no inline
// script, style attributes or handlers; colours are set through the CSSOM (element.style).
"use strict";
(function () {
  // Above this many rows or columns the heatmap is drawn on a canvas instead of a table: a
  // 50 × 50 table took 115 ms a live update (style and layout of 2,500 changing cells) with
  // 500 simulated agents (scripts/bench, dashboard_500), the canvas a few.
  const MAX_TABLE = 32;
  // Above this many agents the agent × agent view needs a source and a destination region.
  const AGENT_VIEW_LIMIT = 60;
  // Points kept per pair (one per matrix event, every 2 s: five minutes).
  const HISTORY_POINTS = 150;
  // Pairs with a history at most (the oldest is dropped).
  const HISTORY_KEYS = 4000;
  const LAT_MIN = 0.1;
  const LAT_MAX = 500;
  // matplotlib's viridis at 0, 0.1, ..., 1 (perceptually uniform, colour-blind safe).
  const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c",
    "#22a884", "#44bf70", "#7ad151", "#bddf26", "#fde725"].map(function (h) {
    return [1, 3, 5].map(function (i) { return parseInt(h.slice(i, i + 2), 16); });
  });
  const NODATA = [184, 184, 184];
  const SEP = "\u0001";

  const $ = function (id) { return document.getElementById(id); };

  const st = {
    signedIn: false,
    csrf: null,
    operator: "",
    tab: "mesh",
    view: "region",
    protocol: "udp",
    metric: "p50",
    srcRegion: "",
    dstRegion: "",
    es: null,
    retry: null,
    matrixAt: 0,
    direct: new Map(),
    relayed: new Map(),
    rows: [],
    cols: [],
    mode: "none",
    shapeKey: "",
    tds: [],
    selected: null,
    hover: null,
    focus: { r: 0, c: 0 },
    canvasCell: 0,
    history: new Map(),
    agents: [],
    agentById: new Map(),
    timers: [],
    jobsTimer: null,
    jobsJson: "",
    editing: null,
    loadEs: null,
    loadJob: null,
  };

  // ---- REST ------------------------------------------------------------------------------

  /** An answer other than 2xx: its status and the API's `{"error": {...}}` if any. */
  class ApiError extends Error {
    constructor(status, body) {
      super("HTTP " + status);
      this.status = status;
      this.api = body && body.error ? body.error : null;
    }
  }

  async function api(method, path, body, headers) {
    const h = Object.assign({ Accept: "application/json" }, headers || {});
    if (body !== undefined) h["Content-Type"] = "application/json";
    if (method !== "GET" && st.csrf) h["X-CSRF-Token"] = st.csrf;
    const r = await fetch(path, {
      method: method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
    let data = null;
    const text = await r.text();
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }

  /** The error as the user sees it: the API's code, field and message verbatim. */
  function describe(e) {
    if (e instanceof ApiError) {
      if (!e.api) return "HTTP " + e.status;
      let s = "HTTP " + e.status + " " + e.api.code;
      if (e.api.field) s += " (field " + e.api.field + ")";
      s += ": " + e.api.message;
      if (e.api.limit !== undefined && e.api.limit !== null) s += " (limit " + e.api.limit + ")";
      return s;
    }
    return String(e && e.message ? e.message : e);
  }

  /** Handles a failed background call: a 401 ends the session in the page. */
  function backgroundError(what, e) {
    if (e instanceof ApiError && e.status === 401) {
      signedOut("Your session ended: sign in again.");
      return;
    }
    setStatus(what + ": " + describe(e));
  }

  function setStatus(msg) {
    const el = $("status");
    if (el.textContent !== msg) el.textContent = msg;
  }

  // ---- session ---------------------------------------------------------------------------

  async function boot() {
    wire();
    try {
      const s = await api("GET", "/api/v1/session");
      signedIn(s);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) signedOut("Not signed in.");
      else signedOut("Could not reach the controller: " + describe(e));
    }
  }

  function signedIn(s) {
    st.signedIn = true;
    st.csrf = s.csrf_token || null;
    st.operator = s.operator || "";
    $("signin").hidden = true;
    $("dash").hidden = false;
    $("signout").hidden = false;
    $("who").textContent = "Signed in as " + st.operator;
    $("signin-error").textContent = "";
    setStatus("Signed in as " + st.operator + ".");
    refreshAgents().then(openStream);
    st.timers.push(setInterval(refreshAgents, 5000));
    showTab(st.tab, false);
  }

  function signedOut(msg) {
    closeStream();
    closeLoad();
    st.timers.forEach(clearInterval);
    st.timers = [];
    stopJobsTimer();
    st.signedIn = false;
    st.csrf = null;
    st.operator = "";
    st.direct.clear();
    st.relayed.clear();
    st.history.clear();
    st.selected = null;
    st.hover = null;
    st.shapeKey = "";
    $("heat").replaceChildren();
    $("dash").hidden = true;
    $("signout").hidden = true;
    $("who").textContent = "";
    $("signin").hidden = false;
    setStatus(msg);
    $("credential").focus();
  }

  async function signIn(ev) {
    ev.preventDefault();
    const input = $("credential");
    const err = $("signin-error");
    err.textContent = "";
    if (!input.value) {
      err.textContent = "Enter the operator credential (NAME:SECRET).";
      input.focus();
      return;
    }
    try {
      const s = await api("POST", "/api/v1/session", { credential: input.value });
      input.value = "";
      signedIn(s);
    } catch (e) {
      err.textContent = "Sign-in refused: " + describe(e);
      input.focus();
    }
  }

  async function signOut() {
    try {
      await api("DELETE", "/api/v1/session");
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) {
        setStatus("Sign-out failed: " + describe(e));
        return;
      }
    }
    signedOut("Signed out.");
  }

  // ---- tabs ------------------------------------------------------------------------------

  const TABS = ["mesh", "agents", "jobs"];

  function showTab(name, focus) {
    st.tab = name;
    TABS.forEach(function (t) {
      const b = $("tab-btn-" + t);
      const on = t === name;
      b.setAttribute("aria-selected", on ? "true" : "false");
      b.tabIndex = on ? 0 : -1;
      $("tab-" + t).hidden = !on;
      if (on && focus) b.focus();
    });
    stopJobsTimer();
    if (name !== "jobs") closeLoad();
    if (name === "jobs" && st.signedIn) {
      refreshJobs();
      st.jobsTimer = setInterval(refreshJobs, 3000);
    }
    if (name === "mesh") renderHeatmap();
  }

  function stopJobsTimer() {
    if (st.jobsTimer) clearInterval(st.jobsTimer);
    st.jobsTimer = null;
  }

  // ---- colours ---------------------------------------------------------------------------

  function viridis(t) {
    const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const f = x - i;
    const a = VIRIDIS[i];
    const b = VIRIDIS[i + 1];
    return [0, 1, 2].map(function (k) { return Math.round(a[k] + (b[k] - a[k]) * f); });
  }

  /** Position on the scale, 0 (good: bright) to 1 (bad: dark). */
  function badness(metric, v) {
    if (metric === "loss") return v;
    const lo = Math.log10(LAT_MIN);
    const hi = Math.log10(LAT_MAX);
    return (Math.log10(Math.max(LAT_MIN, v)) - lo) / (hi - lo);
  }

  function colourOf(metric, v) {
    return viridis(1 - badness(metric, v));
  }

  function rgb(c) { return "rgb(" + c[0] + ", " + c[1] + ", " + c[2] + ")"; }

  function inkOn(c) {
    const lum = (0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]) / 255;
    return lum > 0.45 ? "#111111" : "#ffffff";
  }

  function drawLegend() {
    const cv = $("legend");
    const w = 400;
    const h = 32;
    if (cv.width !== w || cv.height !== h) { cv.width = w; cv.height = h; }
    const ctx = cv.getContext("2d");
    ctx.clearRect(0, 0, w, h);
    for (let x = 0; x < w; x++) {
      const t = x / (w - 1);
      ctx.fillStyle = rgb(viridis(1 - t));
      ctx.fillRect(x, 0, 1, 14);
    }
    ctx.fillStyle = "#1a1a1a";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "top";
    let ticks;
    let text;
    if (st.metric === "loss") {
      ticks = [[0, "0 %"], [0.25, "25 %"], [0.5, "50 %"], [0.75, "75 %"], [1, "100 %"]];
      text = "Colour scale: loss from 0 % (bright yellow) to 100 % (dark purple); grey: no data.";
    } else {
      ticks = [[0.1, "0.1 ms"], [1, "1 ms"], [10, "10 ms"], [100, "100"], [500, "500"]].map(function (p) {
        return [badness("p50", p[0]), p[1]];
      });
      text = "Colour scale: " + st.metric + " RTT on a log scale from 0.1 ms (bright yellow) to 500 ms (dark purple); grey: no data.";
    }
    ticks.forEach(function (p) {
      const x = Math.round(p[0] * (w - 1));
      ctx.fillRect(x, 14, 1, 4);
      const tw = ctx.measureText(p[1]).width;
      ctx.fillText(p[1], Math.min(w - tw, Math.max(0, x - tw / 2)), 19);
    });
    $("legend-text").textContent = text;
  }

  // ---- formatting ------------------------------------------------------------------------

  function fmtMs(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    if (v < 1) return v.toFixed(2);
    if (v < 100) return v.toFixed(1);
    return v.toFixed(0);
  }

  function fmtLoss(l) {
    if (l === null || l === undefined || !isFinite(l)) return "–";
    return (l * 100).toFixed(l < 0.1 ? 1 : 0) + "\u00a0%";
  }

  function metricValue(c) {
    if (!c) return null;
    if (st.metric === "p99") return c.p99_ms;
    if (st.metric === "loss") return c.loss;
    return c.p50_ms;
  }

  function fmtMetric(v) {
    return st.metric === "loss" ? fmtLoss(v) : fmtMs(v);
  }

  /** How an agent id is shown: its location when it has one. */
  function agentLabel(id) {
    const a = st.agentById.get(id);
    if (a && a.location) return a.location;
    // Ids are UUIDv7: the start is a timestamp shared by agents that joined together, the end
    // tells them apart (the full id is in the cell's title and the pair detail's paths).
    return id.length > 12 ? "…" + id.slice(-8) : id;
  }

  /** How a heatmap row or column is shown (a region, or an agent in the agent view). */
  function label(name) {
    return st.view === "agent" ? agentLabel(name) : name;
  }

  function pairKey(src, dst) { return src + SEP + dst; }

  function clock(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false });
  }

  // ---- live stream -----------------------------------------------------------------------

  function regions() {
    const s = new Set();
    st.agents.forEach(function (a) { if (a.region) s.add(a.region); });
    return Array.from(s).sort();
  }

  function needsRegionPair() {
    return st.view === "agent" && st.agents.length > AGENT_VIEW_LIMIT;
  }

  function streamUrl() {
    const q = new URLSearchParams({ by: st.view, protocol: st.protocol });
    if (needsRegionPair()) {
      q.set("src_region", st.srcRegion);
      q.set("dst_region", st.dstRegion);
    }
    return "/api/v1/stream?" + q.toString();
  }

  function closeStream() {
    if (st.retry) clearTimeout(st.retry);
    st.retry = null;
    if (st.es) st.es.close();
    st.es = null;
  }

  function openStream() {
    closeStream();
    if (!st.signedIn) return;
    st.rendered = false;
    updateFilterUi();
    st.direct.clear();
    st.relayed.clear();
    st.matrixAt = 0;
    if (needsRegionPair() && (!st.srcRegion || !st.dstRegion)) {
      $("mesh-note").textContent = "More than " + AGENT_VIEW_LIMIT + " agents: choose a source and a destination region.";
      computeAxes();
      renderHeatmap();
      renderDetail();
      return;
    }
    $("mesh-note").textContent = "Connecting to the live stream…";
    const es = new EventSource(streamUrl());
    st.es = es;
    es.addEventListener("matrix", function (ev) {
      if (st.es !== es) return;
      // User Timing entries (devtools' Performance panel; scripts/bench reads them): each
      // update's main-thread time, parse included, and the first rendered heatmap of a view.
      const t0 = performance.now();
      let m;
      try { m = JSON.parse(ev.data); } catch (_) { return; }
      onMatrix(m);
      performance.measure("meshlat:update", { start: t0 });
      if (!st.rendered) {
        st.rendered = true;
        performance.mark("meshlat:first-render", { detail: st.view });
      }
    });
    es.addEventListener("error", function () {
      if (st.es !== es) return;
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (an error status): find out whether the session is still there.
        api("GET", "/api/v1/session").then(function () {
          setStatus("The live stream closed; reconnecting in 3 s.");
          st.retry = setTimeout(function () { if (st.es === es) openStream(); }, 3000);
        }, function (e) { backgroundError("Live stream", e); });
      } else {
        $("mesh-note").textContent = "The live stream was interrupted; reconnecting…";
      }
    });
  }

  function onMatrix(m) {
    st.matrixAt = m.unix_ms || Date.now();
    st.direct.clear();
    st.relayed.clear();
    let relayedCount = 0;
    (m.cells || []).forEach(function (c) {
      if (c.protocol && c.protocol !== st.protocol) return;
      const k = pairKey(c.src, c.dst);
      if (!c.via) {
        st.direct.set(k, c);
      } else {
        relayedCount++;
        let l = st.relayed.get(k);
        if (!l) { l = []; st.relayed.set(k, l); }
        l.push(c);
      }
    });
    pushHistory();
    computeAxes();
    renderHeatmap();
    renderDetail();
    $("mesh-note").textContent = "Live: matrix of " + clock(st.matrixAt) + ", " + st.rows.length + " × " +
      st.cols.length + ", " + st.direct.size + " direct pairs measured" +
      (relayedCount ? ", " + relayedCount + (relayedCount === 1 ? " relayed path" : " relayed paths") + " (in the pair detail)" : "") + ".";
  }

  function histKey(src, dst) { return st.view + SEP + st.protocol + SEP + src + SEP + dst; }

  function pushHistory() {
    const t = st.matrixAt;
    const add = function (c) {
      const k = histKey(c.src, c.dst);
      let h = st.history.get(k);
      if (!h) {
        if (st.history.size >= HISTORY_KEYS) st.history.delete(st.history.keys().next().value);
        h = [];
        st.history.set(k, h);
      }
      if (h.length && h[h.length - 1].t >= t) return;
      h.push({ t: t, p50: c.p50_ms, p99: c.p99_ms, loss: c.loss });
      if (h.length > HISTORY_POINTS) h.shift();
    };
    if (st.view === "region") {
      st.direct.forEach(add);
    } else {
      [st.selected, st.hover].forEach(function (p) {
        if (!p) return;
        const c = st.direct.get(pairKey(p.src, p.dst));
        if (c) add(c);
      });
    }
  }

  /** The heatmap's rows (sources) and columns (destinations). */
  function computeAxes() {
    const rows = new Set();
    const cols = new Set();
    const addCells = function (m) {
      m.forEach(function (v, k) {
        const i = k.indexOf(SEP);
        rows.add(k.slice(0, i));
        cols.add(k.slice(i + 1));
      });
    };
    if (st.view === "region") {
      regions().forEach(function (r) { rows.add(r); cols.add(r); });
    } else if (needsRegionPair()) {
      st.agents.forEach(function (a) {
        if (a.region === st.srcRegion) rows.add(a.id);
        if (a.region === st.dstRegion) cols.add(a.id);
      });
    } else {
      st.agents.forEach(function (a) { rows.add(a.id); cols.add(a.id); });
    }
    addCells(st.direct);
    addCells(st.relayed);
    const byLabel = function (a, b) {
      const la = label(a);
      const lb = label(b);
      return la < lb ? -1 : la > lb ? 1 : a < b ? -1 : a > b ? 1 : 0;
    };
    st.rows = Array.from(rows).sort(byLabel);
    st.cols = Array.from(cols).sort(byLabel);
  }

  // ---- heatmap ---------------------------------------------------------------------------

  function renderHeatmap() {
    if (st.tab !== "mesh" || $("dash").hidden) return;
    drawLegend();
    const big = st.rows.length > MAX_TABLE || st.cols.length > MAX_TABLE;
    st.mode = st.rows.length === 0 ? "none" : big ? "canvas" : "table";
    $("heat").hidden = st.mode !== "table";
    $("heat-canvas").hidden = st.mode !== "canvas";
    if (st.mode !== "canvas") $("tooltip").hidden = true;
    if (st.mode === "table") renderTable();
    else if (st.mode === "canvas") renderCanvas();
  }

  function renderTable() {
    const table = $("heat");
    const shape = st.view + "|" + st.rows.join(SEP) + "|" + st.cols.join(SEP);
    if (shape !== st.shapeKey) {
      st.shapeKey = shape;
      const thead = document.createElement("thead");
      const hr = document.createElement("tr");
      const corner = document.createElement("th");
      corner.textContent = "src \\ dst";
      corner.scope = "col";
      hr.appendChild(corner);
      st.cols.forEach(function (c) {
        const th = document.createElement("th");
        th.scope = "col";
        th.textContent = label(c);
        th.title = c;
        hr.appendChild(th);
      });
      thead.appendChild(hr);
      const tbody = document.createElement("tbody");
      st.tds = st.rows.map(function (r, ri) {
        const tr = document.createElement("tr");
        const th = document.createElement("th");
        th.scope = "row";
        th.textContent = label(r);
        th.title = r;
        tr.appendChild(th);
        const row = st.cols.map(function (c, ci) {
          const td = document.createElement("td");
          td.setAttribute("role", "gridcell");
          td.dataset.src = r;
          td.dataset.dst = c;
          td.dataset.r = String(ri);
          td.dataset.c = String(ci);
          td.tabIndex = -1;
          tr.appendChild(td);
          return td;
        });
        tbody.appendChild(tr);
        return row;
      });
      table.replaceChildren(thead, tbody);
      st.focus.r = Math.min(st.focus.r, st.rows.length - 1);
      st.focus.c = Math.min(st.focus.c, st.cols.length - 1);
      const f = st.tds[st.focus.r] && st.tds[st.focus.r][st.focus.c];
      if (f) f.tabIndex = 0;
    }
    for (let r = 0; r < st.rows.length; r++) {
      for (let c = 0; c < st.cols.length; c++) {
        updateTd(st.tds[r][c], st.rows[r], st.cols[c]);
      }
    }
  }

  function setData(td, name, v) {
    if (td.dataset[name] !== v) td.dataset[name] = v;
  }

  function updateTd(td, src, dst) {
    const cell = st.direct.get(pairKey(src, dst));
    const sel = !!st.selected && st.selected.src === src && st.selected.dst === dst;
    // What the cell shows; an unchanged cell (most of them between two summaries) is not touched.
    const key = cell
      ? st.metric + SEP + cell.p50_ms + SEP + cell.p99_ms + SEP + cell.loss + SEP + cell.samples + SEP + sel
      : st.metric + SEP + sel;
    if (td.meshlatKey === key) return;
    td.meshlatKey = key;
    const v = metricValue(cell);
    const text = cell ? fmtMetric(v) : "–";
    if (td.textContent !== text) td.textContent = text;
    setData(td, "p50", cell ? String(cell.p50_ms) : "");
    setData(td, "p99", cell ? String(cell.p99_ms) : "");
    setData(td, "loss", cell ? String(cell.loss) : "");
    const aria = label(src) + " to " + label(dst) + ": " + (cell
      ? "p50 " + fmtMs(cell.p50_ms) + " ms, p99 " + fmtMs(cell.p99_ms) + " ms, loss " + fmtLoss(cell.loss) +
        ", " + cell.samples + " samples"
      : "no data");
    if (td.getAttribute("aria-label") !== aria) td.setAttribute("aria-label", aria);
    if (cell) {
      const col = colourOf(st.metric, v);
      const bg = rgb(col);
      if (td.style.backgroundColor !== bg) {
        td.style.backgroundColor = bg;
        td.style.color = inkOn(col);
      }
      td.classList.remove("nodata");
    } else {
      td.style.backgroundColor = "";
      td.style.color = "";
      td.classList.add("nodata");
    }
    td.classList.toggle("selected", sel);
    td.setAttribute("aria-selected", sel ? "true" : "false");
  }

  function moveFocus(dr, dc, abs) {
    const nr = st.rows.length;
    const nc = st.cols.length;
    if (!nr || !nc) return;
    let r = abs ? dr : st.focus.r + dr;
    let c = abs ? dc : st.focus.c + dc;
    r = Math.max(0, Math.min(nr - 1, r));
    c = Math.max(0, Math.min(nc - 1, c));
    if (st.mode === "table") {
      const old = st.tds[st.focus.r] && st.tds[st.focus.r][st.focus.c];
      if (old) old.tabIndex = -1;
      st.focus = { r: r, c: c };
      const td = st.tds[r][c];
      td.tabIndex = 0;
      td.focus();
    } else {
      st.focus = { r: r, c: c };
      drawCanvas();
    }
    st.hover = { src: st.rows[r], dst: st.cols[c] };
    renderDetail();
  }

  function gridKey(ev) {
    const page = 10;
    switch (ev.key) {
      case "ArrowUp": moveFocus(-1, 0); break;
      case "ArrowDown": moveFocus(1, 0); break;
      case "ArrowLeft": moveFocus(0, -1); break;
      case "ArrowRight": moveFocus(0, 1); break;
      case "PageUp": moveFocus(-page, 0); break;
      case "PageDown": moveFocus(page, 0); break;
      case "Home": moveFocus(ev.ctrlKey ? 0 : st.focus.r, 0, true); break;
      case "End": moveFocus(ev.ctrlKey ? st.rows.length - 1 : st.focus.r, st.cols.length - 1, true); break;
      case "Enter":
      case " ":
        select(st.rows[st.focus.r], st.cols[st.focus.c]);
        break;
      case "Escape":
        st.hover = null;
        renderDetail();
        return;
      default: return;
    }
    ev.preventDefault();
  }

  function select(src, dst) {
    if (src === undefined || dst === undefined) return;
    st.selected = { src: src, dst: dst };
    st.hover = null;
    pushHistory();
    renderHeatmap();
    renderDetail();
    setStatus("Selected " + label(src) + " → " + label(dst) + ".");
  }

  // Canvas rendering (more than MAX_TABLE rows or columns).
  function renderCanvas() {
    const cv = $("heat-canvas");
    const n = Math.max(st.rows.length, st.cols.length);
    const avail = Math.max(320, Math.min(1000, window.innerWidth - 560));
    const cs = Math.max(3, Math.min(16, Math.floor(avail / n)));
    st.canvasCell = cs;
    const w = st.cols.length * cs;
    const h = st.rows.length * cs;
    if (cv.width !== w || cv.height !== h) { cv.width = w; cv.height = h; }
    drawCanvas();
  }

  function drawCanvas() {
    const cv = $("heat-canvas");
    const ctx = cv.getContext("2d");
    const cs = st.canvasCell;
    const gap = cs >= 6 ? 1 : 0;
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, cv.width, cv.height);
    for (let r = 0; r < st.rows.length; r++) {
      for (let c = 0; c < st.cols.length; c++) {
        const cell = st.direct.get(pairKey(st.rows[r], st.cols[c]));
        ctx.fillStyle = rgb(cell ? colourOf(st.metric, metricValue(cell)) : NODATA);
        ctx.fillRect(c * cs, r * cs, cs - gap, cs - gap);
      }
    }
    const mark = function (src, dst, colour) {
      const r = st.rows.indexOf(src);
      const c = st.cols.indexOf(dst);
      if (r < 0 || c < 0) return;
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2;
      ctx.strokeRect(c * cs - 1, r * cs - 1, cs + 1, cs + 1);
    };
    if (st.selected) mark(st.selected.src, st.selected.dst, "#000000");
    if (document.activeElement === cv) mark(st.rows[st.focus.r], st.cols[st.focus.c], "#ff8c00");
  }

  function canvasHit(ev) {
    const cv = $("heat-canvas");
    const rect = cv.getBoundingClientRect();
    const sx = cv.width / rect.width;
    const sy = cv.height / rect.height;
    const c = Math.floor(((ev.clientX - rect.left) * sx) / st.canvasCell);
    const r = Math.floor(((ev.clientY - rect.top) * sy) / st.canvasCell);
    if (r < 0 || c < 0 || r >= st.rows.length || c >= st.cols.length) return null;
    return { r: r, c: c };
  }

  function canvasMove(ev) {
    const hit = canvasHit(ev);
    const tip = $("tooltip");
    if (!hit) {
      tip.hidden = true;
      return;
    }
    const src = st.rows[hit.r];
    const dst = st.cols[hit.c];
    const cell = st.direct.get(pairKey(src, dst));
    tip.textContent = label(src) + " → " + label(dst) + ": " + (cell
      ? "p50 " + fmtMs(cell.p50_ms) + " ms, p99 " + fmtMs(cell.p99_ms) + " ms, loss " + fmtLoss(cell.loss)
      : "no data");
    const wrap = $("heat-wrap").getBoundingClientRect();
    tip.style.left = (ev.clientX - wrap.left + $("heat-wrap").scrollLeft + 14) + "px";
    tip.style.top = (ev.clientY - wrap.top + $("heat-wrap").scrollTop + 14) + "px";
    tip.hidden = false;
    if (!st.hover || st.hover.src !== src || st.hover.dst !== dst) {
      st.hover = { src: src, dst: dst };
      renderDetail();
    }
  }

  // ---- pair detail -----------------------------------------------------------------------

  function renderDetail() {
    const p = st.hover || st.selected;
    if (!p || $("dash").hidden) {
      $("detail-empty").hidden = false;
      $("detail-body").hidden = true;
      $("detail-title").textContent = "Pair detail";
      return;
    }
    $("detail-empty").hidden = true;
    $("detail-body").hidden = false;
    const k = pairKey(p.src, p.dst);
    const cell = st.direct.get(k);
    $("detail-title").textContent = label(p.src) + " → " + label(p.dst) + " (" + st.protocol + ")";
    const dl = $("detail-stats");
    const items = [
      ["p50", cell ? fmtMs(cell.p50_ms) + " ms" : "no data"],
      ["p99", cell ? fmtMs(cell.p99_ms) + " ms" : "no data"],
      ["loss", cell ? fmtLoss(cell.loss) : "no data"],
      ["samples", cell ? String(cell.samples) : "0"],
    ];
    const kids = [];
    items.forEach(function (it) {
      const dt = document.createElement("dt");
      dt.textContent = it[0];
      const dd = document.createElement("dd");
      dd.textContent = it[1];
      dd.dataset.stat = it[0];
      kids.push(dt, dd);
    });
    dl.replaceChildren.apply(dl, kids);
    const pts = st.history.get(histKey(p.src, p.dst)) || [];
    $("detail-points").textContent = String(pts.length);
    drawChart($("detail-chart"), pts);
    // Paths: direct and each relay, the best relay (lowest p50) highlighted.
    const tbody = $("relays").tBodies[0];
    const rows = [];
    const relayed = (st.relayed.get(k) || []).slice().sort(function (a, b) { return a.p50_ms - b.p50_ms; });
    const tr = function (name, c, best) {
      const row = document.createElement("tr");
      if (best) row.className = "best";
      row.dataset.via = c && c.via ? c.via : "";
      [name, c ? fmtMs(c.p50_ms) : "–", c ? fmtMs(c.p99_ms) : "–", c ? fmtLoss(c.loss) : "–",
        c && c.relay_penalty_ms !== null && c.relay_penalty_ms !== undefined ? fmtMs(c.relay_penalty_ms) : "–",
      ].forEach(function (t) {
        const td = document.createElement("td");
        td.textContent = t;
        row.appendChild(td);
      });
      return row;
    };
    rows.push(tr("direct", cell, false));
    relayed.forEach(function (c, i) {
      rows.push(tr("via " + agentLabel(c.via) + (i === 0 ? " (best relay)" : ""), c, i === 0));
    });
    tbody.replaceChildren.apply(tbody, rows);
  }

  function drawChart(cv, pts) {
    const ctx = cv.getContext("2d");
    const w = cv.width;
    const h = cv.height;
    const left = 44;
    const right = 8;
    const top = 8;
    const bottom = 20;
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#4a4a4a";
    if (!pts.length) {
      ctx.textBaseline = "middle";
      ctx.fillText(st.view === "agent" ? "No history yet (select the pair to record it)." : "No history yet.", left, h / 2);
      return;
    }
    let max = 0;
    pts.forEach(function (p) { max = Math.max(max, p.p99 || 0, p.p50 || 0); });
    max = niceCeil(max > 0 ? max * 1.1 : 1);
    const t0 = pts[0].t;
    const t1 = Math.max(pts[pts.length - 1].t, t0 + 1);
    const x = function (t) { return left + ((t - t0) / (t1 - t0)) * (w - left - right); };
    const y = function (v) { return top + (1 - v / max) * (h - top - bottom); };
    ctx.strokeStyle = "#d0d0d0";
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(w - right, yy);
      ctx.stroke();
      ctx.fillText(fmtMs(v), 2, yy);
    }
    ctx.textBaseline = "top";
    ctx.fillText(clock(t0), left, h - bottom + 5);
    const end = clock(t1);
    ctx.fillText(end, w - right - ctx.measureText(end).width, h - bottom + 5);
    const line = function (key, colour) {
      ctx.strokeStyle = colour;
      ctx.fillStyle = colour;
      ctx.lineWidth = 2;
      ctx.beginPath();
      pts.forEach(function (p, i) {
        if (i === 0) ctx.moveTo(x(p.t), y(p[key]));
        else ctx.lineTo(x(p.t), y(p[key]));
      });
      ctx.stroke();
      if (pts.length === 1) ctx.fillRect(x(pts[0].t) - 2, y(pts[0][key]) - 2, 5, 5);
    };
    line("p99", "#c2410c");
    line("p50", "#0b57d0");
  }

  function niceCeil(v) {
    const e = Math.pow(10, Math.floor(Math.log10(v)));
    const m = v / e;
    const n = m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10;
    return n * e;
  }

  // ---- controls --------------------------------------------------------------------------

  function fillSelect(sel, values, current) {
    const same = sel.options.length === values.length &&
      values.every(function (v, i) { return sel.options[i].value === v; });
    if (!same) {
      sel.replaceChildren.apply(sel, values.map(function (v) {
        const o = document.createElement("option");
        o.value = v;
        o.textContent = v;
        return o;
      }));
    }
    if (current && values.indexOf(current) >= 0) sel.value = current;
    return sel.value;
  }

  function updateFilterUi() {
    const need = needsRegionPair();
    $("region-filter").hidden = !need;
    if (!need) return;
    const rs = regions();
    if (!st.srcRegion && rs.length) st.srcRegion = rs[0];
    if (!st.dstRegion && rs.length) st.dstRegion = rs[0];
    st.srcRegion = fillSelect($("mesh-src-region"), rs, st.srcRegion) || "";
    st.dstRegion = fillSelect($("mesh-dst-region"), rs, st.dstRegion) || "";
  }

  function viewChanged() {
    st.view = $("mesh-view").value;
    st.protocol = $("mesh-protocol").value;
    st.srcRegion = $("mesh-src-region").value || st.srcRegion;
    st.dstRegion = $("mesh-dst-region").value || st.dstRegion;
    st.selected = null;
    st.hover = null;
    st.focus = { r: 0, c: 0 };
    st.shapeKey = "";
    openStream();
    renderDetail();
  }

  // ---- agents ----------------------------------------------------------------------------

  async function refreshAgents() {
    if (!st.signedIn) return;
    let r;
    try {
      r = await api("GET", "/api/v1/agents");
    } catch (e) {
      backgroundError("Agents", e);
      return;
    }
    const before = needsRegionPair();
    st.agents = (r && r.agents) || [];
    st.agentById = new Map(st.agents.map(function (a) { return [a.id, a]; }));
    renderAgents();
    // Crossing the agent view's size limit changes what the stream is asked for; otherwise the
    // next matrix event (every 2 s) picks up new agents and regions.
    if (before !== needsRegionPair()) openStream();
    else updateFilterUi();
  }

  function ago(ms) {
    if (!ms) return "never";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 120) return s + " s ago";
    if (s < 7200) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  function renderAgents() {
    const tbody = $("agents").tBodies[0];
    const list = st.agents.slice().sort(function (a, b) {
      return (a.region || "").localeCompare(b.region || "") || (a.id || "").localeCompare(b.id || "");
    });
    while (tbody.rows.length > list.length) tbody.deleteRow(-1);
    while (tbody.rows.length < list.length) {
      const row = tbody.insertRow(-1);
      for (let i = 0; i < 8; i++) row.insertCell(-1);
    }
    let connected = 0;
    list.forEach(function (a, i) {
      const row = tbody.rows[i];
      row.dataset.agent = a.id;
      const mode = a.control_mode || (a.connected ? "connected" : "disconnected");
      if (mode === "connected") connected++;
      const vals = [a.id, a.region || "", a.az || "", a.location || "", a.version || "", mode,
        ago(a.last_seen_unix_ms), (a.roles || []).join(", ")];
      vals.forEach(function (v, j) {
        const td = row.cells[j];
        if (td.textContent !== v) td.textContent = v;
      });
      row.cells[5].className = mode === "connected" ? "connected" : "disconnected";
      row.cells[5].dataset.mode = mode;
      row.cells[6].title = a.last_seen_unix_ms ? new Date(a.last_seen_unix_ms).toISOString() : "";
    });
    $("agents-note").textContent = list.length + " agents, " + connected + " connected (refreshed every 5 s, last at " +
      clock(Date.now()) + ").";
  }

  // ---- jobs ------------------------------------------------------------------------------

  async function refreshJobs() {
    if (!st.signedIn) return;
    const q = $("jobs-stopped").checked ? "?include_stopped=true" : "";
    let r;
    try {
      r = await api("GET", "/api/v1/jobs" + q);
    } catch (e) {
      backgroundError("Jobs", e);
      return;
    }
    renderJobs((r && r.jobs) || []);
  }

  function agentName(id) {
    const a = st.agentById.get(id);
    return a && a.location ? a.location + " (" + id + ")" : id;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  /** A load job's schedule: model, levels and steps, duration. */
  function loadMeta(s) {
    const l = s.load || {};
    const steps = l.steps > 1 ? ", +" + l.step + " × " + (l.steps - 1) + " steps of " + (l.step_duration_ms / 1000) + " s" : "";
    const unit = l.model === "open" ? " req/s" : " workers";
    return (l.model ? ", " + l.model + " " + l.start + unit + steps : "") +
      (s.duration_ms ? ", " + (s.duration_ms / 1000) + " s" : "");
  }

  function renderJobs(jobs) {
    const json = JSON.stringify(jobs);
    if (json === st.jobsJson) return;
    st.jobsJson = json;
    const list = $("jobs-list");
    const active = document.activeElement;
    const refocus = active && list.contains(active) ? active.dataset.action + SEP + active.dataset.job : null;
    const cards = jobs.slice().sort(function (a, b) {
      return (a.stopped - b.stopped) || ((b.created_unix_ms || 0) - (a.created_unix_ms || 0));
    }).map(function (j) {
      const s = j.spec || {};
      const card = el("article", "job" + (j.stopped ? " stopped" : ""));
      card.dataset.jobId = j.id;
      card.dataset.jobName = s.name || "";
      const h = el("h3");
      h.appendChild(el("span", "", s.name || "(unnamed)"));
      h.appendChild(el("code", "", j.id));
      h.appendChild(el("span", "note", "version " + j.version + (j.stopped ? ", stopped" : ", running")));
      card.appendChild(h);
      card.appendChild(el("p", "meta", (s.kind || "probe") + " " + (s.protocols || []).join("+") + ": " +
        (s.sources || []).join(", ") + " → " + (s.targets || []).join(", ") +
        ((s.relays || []).length ? " via " + s.relays.join(", ") : "") +
        (s.kind === "load" ? loadMeta(s) : ", every " + s.interval_ms + " ms") +
        ", timeout " + s.timeout_ms + " ms" +
        (s.strategy ? ", " + s.strategy : "")));
      const status = j.agent_status || [];
      if (status.length) {
        const t = el("table", "list");
        const head = el("thead");
        const hr = el("tr");
        ["agent", "region", "state", "reason"].forEach(function (c) {
          const th = el("th", "", c);
          th.scope = "col";
          hr.appendChild(th);
        });
        head.appendChild(hr);
        t.appendChild(head);
        const body = el("tbody");
        status.forEach(function (a) {
          const tr = el("tr");
          tr.dataset.agent = a.agent;
          tr.dataset.state = a.state;
          tr.appendChild(el("td", "", agentName(a.agent)));
          tr.appendChild(el("td", "", a.region || ""));
          tr.appendChild(el("td", "state-" + a.state, a.state));
          tr.appendChild(el("td", "", a.reason || ""));
          body.appendChild(tr);
        });
        t.appendChild(body);
        card.appendChild(t);
      } else if (!j.stopped) {
        card.appendChild(el("p", "note", "No agent is assigned this job yet."));
      }
      if (s.kind === "load") {
        const bar = el("div", "buttons");
        const live = el("button", "", "Live load");
        live.type = "button";
        live.dataset.action = "load";
        live.dataset.job = j.id;
        live.setAttribute("aria-label", "Live load of job " + (s.name || j.id));
        bar.appendChild(live);
        card.appendChild(bar);
      }
      if (!j.stopped) {
        const bar = el("div", "buttons");
        const edit = el("button", "", "Edit as JSON");
        edit.type = "button";
        edit.dataset.action = "edit";
        edit.dataset.job = j.id;
        edit.setAttribute("aria-label", "Edit job " + (s.name || j.id) + " as JSON");
        const stop = el("button", "", "Stop");
        stop.type = "button";
        stop.dataset.action = "stop";
        stop.dataset.job = j.id;
        stop.setAttribute("aria-label", "Stop job " + (s.name || j.id));
        bar.appendChild(edit);
        bar.appendChild(stop);
        card.appendChild(bar);
      }
      card.jobData = j;
      return card;
    });
    if (!cards.length) cards.push(el("p", "note", "No jobs."));
    list.replaceChildren.apply(list, cards);
    if (refocus) {
      const again = list.querySelector("button[data-action=\"" + refocus.split(SEP)[0] + "\"][data-job=\"" +
        refocus.split(SEP)[1] + "\"]");
      if (again) again.focus();
    }
  }

  // ---- load view: a load job's live stats per step and region (its SSE stream) -----------

  function closeLoad() {
    if (st.loadEs) st.loadEs.close();
    st.loadEs = null;
    st.loadJob = null;
    const v = $("load-view");
    if (v) v.hidden = true;
  }

  function openLoad(id, name) {
    closeLoad();
    st.loadJob = id;
    $("load-title").textContent = "Load: " + (name || id);
    $("load-note").textContent = "Waiting for the agents' first second…";
    $("load-table").tBodies[0].replaceChildren();
    $("load-view").hidden = false;
    const es = new EventSource("/api/v1/jobs/" + encodeURIComponent(id) + "/load/stream");
    st.loadEs = es;
    es.addEventListener("load", function (ev) {
      if (st.loadEs !== es) return;
      let v;
      try {
        v = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      renderLoad(v);
    });
    es.addEventListener("end", function () {
      if (st.loadEs !== es) return;
      es.close();
      st.loadEs = null;
      $("load-note").textContent += " The job has ended.";
    });
    es.addEventListener("error", function () {
      if (st.loadEs !== es || es.readyState !== EventSource.CLOSED) return;
      st.loadEs = null;
      $("load-note").textContent = "The live load stream closed (is it a load job you may see?).";
    });
  }

  function fmtNum(v, digits) {
    return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
  }

  function renderLoad(v) {
    const steps = v.steps || [];
    const body = $("load-table").tBodies[0];
    const rows = steps.map(function (s) {
      const tr = el("tr");
      tr.dataset.step = String(s.step);
      tr.dataset.region = s.region;
      const errors = s.error_count + (s.error_share === null || s.error_share === undefined ? ""
        : " (" + (s.error_share * 100).toFixed(1) + " %)");
      [[String(s.step), ""], [s.region, ""], [String(s.agents), "num"],
        [String(Math.round(s.level * 100) / 100), "num"], [fmtNum(s.achieved_rps, 1), "num"],
        [fmtNum(s.p50_ms, 2), "num"], [fmtNum(s.p99_ms, 2), "num"],
        [errors, s.error_count > 0 ? "num bad" : "num"]].forEach(function (c) {
        tr.appendChild(el("td", c[1], c[0]));
      });
      return tr;
    });
    body.replaceChildren.apply(body, rows);
    $("load-note").textContent = (steps.length ? steps.length + " step × region rows" : "No load seconds yet") +
      (v.updated_unix_ms ? ", last second at " + clock(v.updated_unix_ms) : "") +
      (v.done ? "; done." : "; updated every second.");
  }

  function jobError(e) {
    $("job-error").textContent = e ? describe(e) : "";
  }

  function splitList(s) {
    return s.split(",").map(function (x) { return x.trim(); }).filter(function (x) { return x; });
  }

  async function startFromForm(ev) {
    ev.preventDefault();
    jobError(null);
    const protocols = Array.from(document.querySelectorAll("input[name=job-proto]:checked"))
      .map(function (i) { return i.value; });
    const spec = {
      name: $("job-name").value.trim(),
      protocols: protocols,
      sources: splitList($("job-sources").value),
      targets: splitList($("job-targets").value),
      interval_ms: Number($("job-interval").value),
      timeout_ms: Number($("job-timeout").value),
    };
    await startJob(spec);
  }

  async function startJob(spec) {
    try {
      const j = await api("POST", "/api/v1/jobs", spec);
      setStatus("Started job " + ((j.spec && j.spec.name) || "") + " (" + j.id + ").");
      st.jobsJson = "";
      await refreshJobs();
    } catch (e) {
      jobError(e);
      setStatus("Starting the job failed.");
      if (e instanceof ApiError && e.status === 401) backgroundError("Jobs", e);
    }
  }

  function parseJson() {
    try {
      return JSON.parse($("job-json").value);
    } catch (e) {
      $("job-error").textContent = "The job spec is not valid JSON: " + e.message;
      return undefined;
    }
  }

  async function startFromJson(ev) {
    ev.preventDefault();
    jobError(null);
    const spec = parseJson();
    if (spec !== undefined) await startJob(spec);
  }

  function editJob(j) {
    st.editing = { id: j.id, version: j.version };
    $("job-json").value = JSON.stringify(j.spec || {}, null, 2);
    $("json-title").textContent = "Edit job " + ((j.spec && j.spec.name) || "") + " (" + j.id + ", version " + j.version + ")";
    $("json-update").hidden = false;
    $("json-cancel").hidden = false;
    $("json-start").hidden = true;
    jobError(null);
    $("job-json").focus();
  }

  function cancelEdit() {
    st.editing = null;
    $("json-title").textContent = "Or a job spec as JSON";
    $("json-update").hidden = true;
    $("json-cancel").hidden = true;
    $("json-start").hidden = false;
  }

  async function updateJob() {
    jobError(null);
    const e0 = st.editing;
    if (!e0) return;
    const spec = parseJson();
    if (spec === undefined) return;
    try {
      const j = await api("PUT", "/api/v1/jobs/" + encodeURIComponent(e0.id), spec, { "If-Match": String(e0.version) });
      setStatus("Updated job " + j.id + " to version " + j.version + ".");
      cancelEdit();
      st.jobsJson = "";
      await refreshJobs();
    } catch (e) {
      jobError(e);
      setStatus("Updating the job failed.");
    }
  }

  async function stopJob(id) {
    jobError(null);
    try {
      await api("DELETE", "/api/v1/jobs/" + encodeURIComponent(id));
      setStatus("Stopped job " + id + ".");
      if (st.editing && st.editing.id === id) cancelEdit();
      st.jobsJson = "";
      await refreshJobs();
    } catch (e) {
      jobError(e);
      setStatus("Stopping the job failed.");
    }
  }

  // ---- wiring ----------------------------------------------------------------------------

  function wire() {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", signOut);
    TABS.forEach(function (t, i) {
      const b = $("tab-btn-" + t);
      b.addEventListener("click", function () { showTab(t, false); });
      b.addEventListener("keydown", function (ev) {
        let n = null;
        if (ev.key === "ArrowRight") n = TABS[(i + 1) % TABS.length];
        else if (ev.key === "ArrowLeft") n = TABS[(i + TABS.length - 1) % TABS.length];
        else if (ev.key === "Home") n = TABS[0];
        else if (ev.key === "End") n = TABS[TABS.length - 1];
        if (n) {
          ev.preventDefault();
          showTab(n, true);
        }
      });
    });
    ["mesh-view", "mesh-protocol", "mesh-src-region", "mesh-dst-region"].forEach(function (id) {
      $(id).addEventListener("change", viewChanged);
    });
    $("mesh-metric").addEventListener("change", function () {
      st.metric = $("mesh-metric").value;
      renderHeatmap();
    });
    const table = $("heat");
    table.removeAttribute("tabindex");
    table.addEventListener("keydown", gridKey);
    table.addEventListener("click", function (ev) {
      const td = ev.target.closest("td");
      if (!td || !table.contains(td)) return;
      moveFocus(Number(td.dataset.r), Number(td.dataset.c), true);
      select(td.dataset.src, td.dataset.dst);
    });
    table.addEventListener("mouseover", function (ev) {
      const td = ev.target.closest("td");
      if (!td || !table.contains(td)) return;
      st.hover = { src: td.dataset.src, dst: td.dataset.dst };
      renderDetail();
    });
    table.addEventListener("mouseleave", function () {
      st.hover = null;
      renderDetail();
    });
    table.addEventListener("focusin", function (ev) {
      const td = ev.target.closest("td");
      if (!td) return;
      st.hover = { src: td.dataset.src, dst: td.dataset.dst };
      renderDetail();
    });
    const cv = $("heat-canvas");
    cv.addEventListener("mousemove", canvasMove);
    cv.addEventListener("mouseleave", function () {
      $("tooltip").hidden = true;
      st.hover = null;
      renderDetail();
    });
    cv.addEventListener("click", function (ev) {
      const hit = canvasHit(ev);
      if (!hit) return;
      st.focus = hit;
      select(st.rows[hit.r], st.cols[hit.c]);
    });
    cv.addEventListener("keydown", gridKey);
    cv.addEventListener("focus", drawCanvas);
    cv.addEventListener("blur", drawCanvas);
    $("job-form").addEventListener("submit", startFromForm);
    $("json-form").addEventListener("submit", startFromJson);
    $("json-update").addEventListener("click", updateJob);
    $("json-cancel").addEventListener("click", cancelEdit);
    $("load-close").addEventListener("click", closeLoad);
    $("jobs-stopped").addEventListener("change", function () {
      st.jobsJson = "";
      refreshJobs();
    });
    $("jobs-list").addEventListener("click", function (ev) {
      const b = ev.target.closest("button[data-action]");
      if (!b) return;
      const card = b.closest("article");
      if (b.dataset.action === "stop") stopJob(b.dataset.job);
      else if (b.dataset.action === "load") openLoad(b.dataset.job, card && card.dataset.jobName);
      else if (b.dataset.action === "edit" && card && card.jobData) editJob(card.jobData);
    });
    $("job-json").value = JSON.stringify({
      name: "mesh", protocols: ["udp"], sources: ["region=eu"], targets: ["region=eu"],
      interval_ms: 1000, timeout_ms: 500,
    }, null, 2);
    window.addEventListener("resize", function () { if (st.mode === "canvas") renderCanvas(); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
