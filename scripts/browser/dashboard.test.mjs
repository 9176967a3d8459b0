// The controller's web dashboard in headless Chromium (scripts/test_dashboard.py starts the mesh
// and runs this). Every check prints "ok ..." or throws; exit 0 only when all passed.
//
//   MESHLAT_CREDENTIAL=NAME:SECRET NODE_EXTRA_CA_CERTS=ca.pem node dashboard.test.mjs \
//     --url https://127.0.0.1:PORT/ --out DIR [--chromium /usr/bin/chromium] \
//     --slow eu:us --fast eu:eu --rtt-ms 40 --agents e1,e2,u1 --relay e1:u1:e2 \
//     --job-sources region=eu --job-targets region=us --job-agents e1,e2 [--history N]
//
// --slow SRC:DST is the region pair with the injected delay (RTT --rtt-ms), --fast one without;
// --agents the agents' locations; --relay SRC:DST:VIA (locations) a pair measured through a
// relay; the job started from the form must be acknowledged by the --job-agents.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values: opt } = parseArgs({
  options: {
    url: { type: "string" },
    out: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    slow: { type: "string" },
    fast: { type: "string" },
    "rtt-ms": { type: "string" },
    agents: { type: "string" },
    relay: { type: "string" },
    "job-sources": { type: "string" },
    "job-targets": { type: "string" },
    "job-agents": { type: "string" },
    history: { type: "string", default: "2" },
  },
});
for (const k of ["url", "out", "slow", "fast", "rtt-ms", "agents", "relay", "job-sources", "job-targets", "job-agents"]) {
  if (!opt[k]) {
    console.error(`dashboard.test: --${k} is required`);
    process.exit(2);
  }
}
const CRED = process.env.MESHLAT_CREDENTIAL;
if (!CRED) {
  console.error("dashboard.test: MESHLAT_CREDENTIAL is not set");
  process.exit(2);
}
const BASE = new URL(opt.url);
const RTT = Number(opt["rtt-ms"]);
const [SLOW_SRC, SLOW_DST] = opt.slow.split(":");
const [FAST_SRC, FAST_DST] = opt.fast.split(":");
const LOCATIONS = opt.agents.split(",");
const [RELAY_SRC, RELAY_DST, RELAY_VIA] = opt.relay.split(":");
const JOB_AGENTS = opt["job-agents"].split(",");
// Points in the pair's chart before each heatmap screenshot (more: a longer run, a fuller chart).
const HISTORY = Math.max(2, Number(opt.history));
// The measured p50 of the delayed pair: at least the injected RTT (less 3 % for the sketch's
// quantile error), at most 20 ms more (debug binaries, two loaded cores, the emulator's own hop).
const P50_LOW = RTT * 0.97;
const P50_HIGH = RTT + 20;
const t0 = Date.now();

function ok(msg) {
  console.log(`dashboard.test: ok ${msg} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function rest(path, init = {}) {
  const headers = Object.assign({}, init.headers || {});
  if (!init.cookie) headers.Authorization = `Bearer ${CRED}`;
  else headers.Cookie = init.cookie;
  const r = await fetch(new URL(path, BASE), { method: init.method || "GET", headers });
  const text = await r.text();
  let body = null;
  try { body = JSON.parse(text); } catch { body = text; }
  return { status: r.status, body };
}

async function until(what, fn, ms) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`${what}: not within ${ms / 1000} s (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const profile = mkdtempSync(join(tmpdir(), "meshlat-chromium-"));
mkdirSync(opt.out, { recursive: true });
const browser = await chromium.launch({
  executablePath: opt.chromium,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
  // Playwright passes its own fresh --user-data-dir per launch; this one is for crash dumps and the like.
  env: Object.assign({}, process.env, { HOME: profile }),
});
const problems = [];
// Requests the test makes fail on purpose: their "Failed to load resource" console lines are expected.
const expectedStatus = new Set();
let status = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, ignoreHTTPSErrors: true });
  // CSP violations are reported to the page as events; collect them from the first script on.
  await context.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) => {
      window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  const watch = (p) => {
    p.on("console", (m) => {
      if (m.type() !== "error" && m.type() !== "warning") return;
      const text = m.text();
      const failed = /Failed to load resource: the server responded with a status of (\d+)/.exec(text);
      if (failed && expectedStatus.has(Number(failed[1]))) return;
      if (m.type() === "warning" && !/Content Security Policy|Refused/i.test(text)) return;
      problems.push(`console ${m.type()}: ${text}`);
    });
    p.on("pageerror", (e) => problems.push(`uncaught: ${e.message}`));
    return p;
  };
  const page = watch(await context.newPage());

  // ---- not signed in; a wrong credential -------------------------------------------------
  expectedStatus.add(401);
  await page.goto(BASE.href);
  await page.locator("#signin").waitFor({ state: "visible", timeout: 10000 });
  check(await page.locator("#dash").isHidden(), "the dashboard shows before sign-in");
  check((await page.locator("#credential").getAttribute("type")) === "password", "the credential input is not a password input");
  ok("a fresh page shows the sign-in form only");
  await page.fill("#credential", "nobody:wrong-secret");
  await page.click("#signin-form button[type=submit]");
  await until("the refused sign-in's error", async () => /401/.test(await page.textContent("#signin-error")), 5000);
  check(await page.locator("#dash").isHidden(), "a wrong credential showed the dashboard");
  ok(`a wrong credential is refused: "${await page.textContent("#signin-error")}"`);

  // ---- sign in; reload keeps the session -------------------------------------------------
  await page.fill("#credential", CRED);
  await page.click("#signin-form button[type=submit]");
  await page.locator("#dash").waitFor({ state: "visible", timeout: 10000 });
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "meshlat_session");
  check(session && session.httpOnly, "no HttpOnly session cookie after sign-in");
  check(!(await page.evaluate(() => document.cookie)).includes("meshlat_session"), "the session cookie is readable from script");
  await page.reload();
  await page.locator("#dash").waitFor({ state: "visible", timeout: 10000 });
  check(await page.locator("#signin").isHidden(), "after a reload the sign-in form shows again");
  ok("signed in (HttpOnly cookie); a reload keeps the session (GET /api/v1/session)");

  // ---- region heatmap --------------------------------------------------------------------
  const cellSel = (src, dst) => `#heat td[data-src="${src}"][data-dst="${dst}"]`;
  const slow = page.locator(cellSel(SLOW_SRC, SLOW_DST));
  const fast = page.locator(cellSel(FAST_SRC, FAST_DST));
  await until(`region cells ${opt.slow} and ${opt.fast} with data`, async () =>
    (await slow.count()) === 1 && (await slow.getAttribute("data-p50")) !== "" &&
    (await fast.count()) === 1 && (await fast.getAttribute("data-p50")) !== "", 60000);
  // The page and the REST matrix agree once both read the same summary: retry over a few updates.
  let pageP50;
  let restP50;
  await until("the page's p50 equal to GET /api/v1/matrix", async () => {
    pageP50 = Number(await slow.getAttribute("data-p50"));
    const m = await rest(`/api/v1/matrix?by=region&protocol=udp`);
    check(m.status === 200, `GET /api/v1/matrix: ${m.status}`);
    const c = m.body.cells.find((x) => x.src === SLOW_SRC && x.dst === SLOW_DST && !x.via);
    restP50 = c ? c.p50_ms : NaN;
    return Math.abs(pageP50 - restP50) <= Math.max(0.05, restP50 * 0.01);
  }, 15000);
  check(pageP50 >= P50_LOW && pageP50 <= P50_HIGH,
    `the ${opt.slow} p50 is ${pageP50} ms, not within [${P50_LOW}, ${P50_HIGH}] ms of the injected ${RTT} ms RTT`);
  ok(`${opt.slow} p50 ${pageP50.toFixed(2)} ms on the page (injected RTT ${RTT} ms; bound [${P50_LOW.toFixed(1)}, ${P50_HIGH}] ms), REST ${restP50.toFixed(2)} ms`);
  const fastP50 = Number(await fast.getAttribute("data-p50"));
  check(fastP50 < RTT / 4, `the undelayed ${opt.fast} p50 is ${fastP50} ms`);
  const bg = (l) => l.evaluate((e) => getComputedStyle(e).backgroundColor);
  const slowBg = await bg(slow);
  const fastBg = await bg(fast);
  check(slowBg !== fastBg, `slow and fast cells share the colour ${slowBg}`);
  const label = await slow.getAttribute("aria-label");
  check(label && label.includes("p50") && label.includes(SLOW_SRC), `the slow cell's aria-label is ${label}`);
  ok(`slow cell ${slowBg}, fast cell ${fastBg} (${opt.fast} p50 ${fastP50.toFixed(2)} ms); aria-label "${label}"`);

  // ---- keyboard: one tab stop, arrows, Enter --------------------------------------------
  check((await page.locator("#heat td[tabindex='0']").count()) === 1, "the heatmap is not exactly one tab stop");
  await page.locator("#mesh-metric").focus();
  // Tab from the controls reaches the heatmap's one focusable cell.
  await page.keyboard.press("Tab");
  let active = await page.evaluate(() => document.activeElement && document.activeElement.tagName);
  check(active === "TD", `Tab from the metric select focused ${active}, not a heatmap cell`);
  await page.keyboard.press("ArrowRight");
  await page.keyboard.press("ArrowDown");
  await page.keyboard.press("ArrowLeft");
  await page.keyboard.press("ArrowUp");
  const rows = await page.locator("#heat tbody tr").count();
  const cols = await page.locator("#heat thead th").count() - 1;
  // Move to the slow pair's row and column, then select it.
  const target = await slow.evaluate((e) => [Number(e.dataset.r), Number(e.dataset.c)]);
  for (let i = 0; i < target[0]; i++) await page.keyboard.press("ArrowDown");
  for (let i = 0; i < target[1]; i++) await page.keyboard.press("ArrowRight");
  active = await page.evaluate(() => document.activeElement && `${document.activeElement.dataset.src}>${document.activeElement.dataset.dst}`);
  check(active === `${SLOW_SRC}>${SLOW_DST}`, `arrow keys reached ${active}, not ${SLOW_SRC}>${SLOW_DST}`);
  check((await page.locator("#heat td[tabindex='0']").count()) === 1, "roving focus left more than one tab stop");
  await page.keyboard.press("Enter");
  await until("the selected cell", async () => (await slow.getAttribute("class") || "").includes("selected"), 3000);
  await page.locator("#detail-body").waitFor({ state: "visible", timeout: 3000 });
  const title = await page.textContent("#detail-title");
  check(title.includes(SLOW_SRC) && title.includes(SLOW_DST), `the detail shows ${title}`);
  const p50Stat = await page.textContent("#detail-stats dd[data-stat=p50]");
  check(/ms/.test(p50Stat), `the detail's p50 is ${p50Stat}`);
  await until(`${HISTORY} points in the detail chart`, async () => Number(await page.textContent("#detail-points")) >= HISTORY, 10000 + 2500 * HISTORY);
  await page.mouse.move(0, 0);
  ok(`keyboard: ${rows}×${cols} table, Tab, arrows and Enter select ${title} (p50 ${p50Stat})`);
  await page.screenshot({ path: join(opt.out, "heatmap-region.png") });

  // ---- agent view, relay path in the detail -----------------------------------------------
  const agents = await until("every agent listed by GET /api/v1/agents", async () => {
    const r = await rest("/api/v1/agents");
    return r.body.agents.length === LOCATIONS.length ? r.body.agents : null;
  }, 10000);
  const idOf = Object.fromEntries(agents.map((a) => [a.location, a.id]));
  await page.selectOption("#mesh-view", "agent");
  const relayCell = page.locator(cellSel(idOf[RELAY_SRC], idOf[RELAY_DST]));
  await until("the agent view's cells", async () =>
    (await page.locator("#heat tbody tr").count()) === LOCATIONS.length &&
    (await relayCell.count()) === 1 && (await relayCell.getAttribute("data-p50")) !== "", 20000);
  const agentP50 = Number(await relayCell.getAttribute("data-p50"));
  check(agentP50 >= P50_LOW && agentP50 <= P50_HIGH, `${RELAY_SRC}->${RELAY_DST} p50 ${agentP50} ms outside [${P50_LOW}, ${P50_HIGH}]`);
  await relayCell.click();
  await page.mouse.move(0, 0);
  const viaRow = page.locator(`#relays tbody tr[data-via="${idOf[RELAY_VIA]}"]`);
  await until(`the relay path ${RELAY_SRC} -> ${RELAY_DST} via ${RELAY_VIA} in the detail`, async () => (await viaRow.count()) === 1, 40000);
  check((await viaRow.getAttribute("class")) === "best", "the only relay is not highlighted as the best");
  check((await page.locator("#relays tbody tr").first().textContent()).startsWith("direct"), "the detail lists no direct path first");
  await until(`${HISTORY} points in the agent pair's chart`, async () => Number(await page.textContent("#detail-points")) >= HISTORY, 10000 + 2500 * HISTORY);
  const viaText = await viaRow.textContent();
  ok(`agent view: ${LOCATIONS.length} rows, ${RELAY_SRC}->${RELAY_DST} p50 ${agentP50.toFixed(2)} ms; detail lists "${viaText}"`);
  await page.screenshot({ path: join(opt.out, "heatmap-agent-detail.png") });

  // ---- agents tab ------------------------------------------------------------------------
  await page.click("#tab-btn-agents");
  await until("every agent connected in the agents tab", async () => {
    const modes = await page.locator("#agents tbody td[data-mode]").evaluateAll((tds) => tds.map((t) => t.dataset.mode));
    return modes.length === LOCATIONS.length && modes.every((m) => m === "connected");
  }, 10000);
  const listed = await page.locator("#agents tbody tr td:nth-child(4)").allTextContents();
  check(LOCATIONS.every((l) => listed.includes(l)), `the agents tab lists ${listed}`);
  ok(`agents tab: ${listed.join(", ")} all connected`);

  // ---- jobs tab: an error with its field, start, acked, stop --------------------------------
  await page.click("#tab-btn-jobs");
  const name = `ui-${Date.now().toString(36)}`;
  await page.fill("#job-name", name);
  await page.fill("#job-sources", opt["job-sources"]);
  await page.fill("#job-targets", opt["job-targets"]);
  await page.fill("#job-interval", "1000");
  await page.fill("#job-timeout", "5000");
  expectedStatus.add(400);
  await page.click("#job-start");
  await until("the API's error with its field", async () => /400 invalid_argument \(field [^)]*timeout_ms\)/.test(await page.textContent("#job-error")), 5000);
  ok(`a bad job's error is shown verbatim: "${await page.textContent("#job-error")}"`);
  await page.fill("#job-timeout", "500");
  await page.click("#job-start");
  const card = page.locator(`article[data-job-name="${name}"]`);
  await card.waitFor({ state: "visible", timeout: 5000 });
  check((await page.textContent("#job-error")) === "", "the error stayed after a good start");
  const jobAgentIds = JOB_AGENTS.map((l) => idOf[l]);
  await until(`job ${name} acked by ${JOB_AGENTS}`, async () => {
    const states = await card.locator("tr[data-state]").evaluateAll((trs) => trs.map((t) => [t.dataset.agent, t.dataset.state]));
    const m = Object.fromEntries(states);
    return jobAgentIds.every((id) => m[id] === "acked");
  }, 20000);
  ok(`job ${name} started from the form and acked by ${JOB_AGENTS.join(", ")}`);
  await page.screenshot({ path: join(opt.out, "jobs.png") });
  const jobId = await card.getAttribute("data-job-id");
  // Update: edit the spec as JSON (interval 1000 -> 2000 ms), PUT with If-Match: version 1.
  await card.locator("button[data-action=edit]").click();
  const spec = JSON.parse(await page.inputValue("#job-json"));
  check(spec.name === name && spec.interval_ms === 1000, `the edit form holds ${JSON.stringify(spec)}`);
  spec.interval_ms = 2000;
  await page.fill("#job-json", JSON.stringify(spec, null, 2));
  await page.click("#json-update");
  await until(`job ${name} at version 2`, async () => /version 2/.test(await card.locator("h3").textContent()), 5000);
  const updated = await rest(`/api/v1/jobs/${jobId}`);
  check(updated.body.version === 2 && updated.body.spec.interval_ms === 2000, `GET the job after Update: ${JSON.stringify(updated.body)}`);
  check((await page.textContent("#job-error")) === "", `the update showed an error: ${await page.textContent("#job-error")}`);
  ok(`job ${name} updated from the JSON editor (If-Match: 1 -> version 2, interval 2000 ms)`);
  await card.locator("button[data-action=stop]").click();
  await until(`job ${name} gone from the running list`, async () => (await card.count()) === 0, 10000);
  const stopped = await rest(`/api/v1/jobs/${jobId}`);
  check(stopped.status === 200 && stopped.body.stopped === true, `GET the job after Stop: ${JSON.stringify(stopped)}`);
  ok(`job ${name} (${jobId}) stopped from the page`);

  // ---- scale (synthetic): more than 60 agents ---------------------------------------------
  // A second tab of the same session whose /api/v1/agents and /api/v1/stream answers are replaced
  // by 130 made-up agents in two regions: the agent view must ask for a region pair (never the
  // whole agent matrix), and a 65 × 65 block is drawn on the canvas with hover hit-testing.
  const SIM = 130;
  const fake = Array.from({ length: SIM }, (_, i) => ({
    id: `sim-${String(i).padStart(3, "0")}`, region: i % 2 ? "sim-b" : "sim-a", az: "", location: "",
    version: "sim", connected: true, control_mode: "connected", last_seen_unix_ms: Date.now(), roles: [],
  }));
  const simP50 = (a, b) => 0.1 + ((Number(a.slice(4)) * 7 + Number(b.slice(4)) * 3) % 400);
  const streams = [];
  const page2 = watch(await context.newPage());
  await page2.route((u) => u.pathname === "/api/v1/agents", (route) => route.fulfill({
    status: 200, contentType: "application/json", body: JSON.stringify({ agents: fake }),
  }));
  await page2.route((u) => u.pathname === "/api/v1/stream", (route) => {
    const q = new URL(route.request().url()).searchParams;
    streams.push(q.toString());
    const cell = (src, dst, p50) => ({ src, dst, protocol: "udp", p50_ms: p50, p99_ms: p50 * 1.5, loss: 0, samples: 20, via: "", relay_penalty_ms: null });
    let cells;
    if (q.get("by") === "region") {
      cells = [cell("sim-a", "sim-b", 30), cell("sim-b", "sim-a", 31), cell("sim-a", "sim-a", 1), cell("sim-b", "sim-b", 1)];
    } else {
      const from = fake.filter((a) => a.region === q.get("src_region"));
      const to = fake.filter((a) => a.region === q.get("dst_region"));
      cells = from.flatMap((a) => to.filter((b) => b.id !== a.id).map((b) => cell(a.id, b.id, simP50(a.id, b.id))));
    }
    route.fulfill({
      status: 200, headers: { "content-type": "text/event-stream", "cache-control": "no-store" },
      body: `retry: 60000\nevent: matrix\ndata: ${JSON.stringify({ unix_ms: Date.now(), cells })}\n\n`,
    });
  });
  await page2.goto(BASE.href);
  await page2.locator("#dash").waitFor({ state: "visible", timeout: 10000 });
  // (Each faked stream answer is one event, then the stream ends: the note then says it reconnects.)
  await until("the synthetic region view", async () =>
    (await page2.locator("#heat tbody tr").count()) === 2 &&
    (await page2.getAttribute(`#heat td[data-src="sim-a"][data-dst="sim-b"]`, "data-p50")) === "30", 10000);
  await page2.selectOption("#mesh-view", "agent");
  await page2.locator("#region-filter").waitFor({ state: "visible", timeout: 5000 });
  await page2.selectOption("#mesh-dst-region", "sim-b");
  await until("the 65 × 65 canvas", async () => await page2.locator("#heat-canvas").isVisible() &&
    (await page2.locator("#heat-canvas").evaluate((c) => c.width === c.height && c.width % 65 === 0 && c.width > 0)), 10000);
  check(await page2.locator("#heat").isHidden(), "the table shows beside the canvas");
  const agentStreams = streams.filter((q) => q.includes("by=agent"));
  check(agentStreams.length >= 1 && agentStreams.every((q) => /src_region=sim-/.test(q) && /dst_region=sim-/.test(q)),
    `the agent view of ${SIM} agents asked for ${JSON.stringify(agentStreams)}`);
  check(agentStreams[agentStreams.length - 1].includes("src_region=sim-a") && agentStreams[agentStreams.length - 1].includes("dst_region=sim-b"),
    `the last agent stream is ${agentStreams[agentStreams.length - 1]}`);
  const box = await page2.locator("#heat-canvas").boundingBox();
  const cs = box.width / 65;
  const [hr, hc] = [3, 5]; // rows sim-a sorted (sim-000, sim-002, ...), columns sim-b (sim-001, ...)
  const [hs, hd] = [`sim-${String(hr * 2).padStart(3, "0")}`, `sim-${String(hc * 2 + 1).padStart(3, "0")}`];
  await page2.mouse.move(box.x + (hc + 0.5) * cs, box.y + (hr + 0.5) * cs);
  await until("the canvas tooltip", async () => await page2.locator("#tooltip").isVisible(), 3000);
  const tip = await page2.textContent("#tooltip");
  check(tip.startsWith(`${hs} → ${hd}: p50 ${simP50(hs, hd) < 100 ? simP50(hs, hd).toFixed(1) : simP50(hs, hd).toFixed(0)} ms`),
    `hovering row ${hr} column ${hc} shows "${tip}" (expected ${hs} → ${hd}, p50 ${simP50(hs, hd)})`);
  check((await page2.textContent("#detail-title")).startsWith(`${hs} → ${hd}`), "the hovered pair's detail is not shown");
  await page2.mouse.move(0, 0);
  await page2.locator("#heat-canvas").focus();
  await page2.keyboard.press("ArrowDown");
  await page2.keyboard.press("Enter");
  await until("the canvas pair selected by keyboard", async () => (await page2.textContent("#status")) === "Selected sim-002 → sim-001.", 3000);
  ok(`${SIM} synthetic agents: the agent view asks for a region pair (${agentStreams.length} streams, last ${agentStreams[agentStreams.length - 1]}), 65 × 65 canvas, hover "${tip}", keyboard selection`);
  await page2.close();

  // ---- load view (synthetic): a load job's live stats per step and region ---------------------
  // A third tab whose job list holds one load job and whose load stream answers one view (two
  // steps, one with errors), then `event: end`: the "Live load" button opens the view, its
  // table shows the figures, and the end of the job is said.
  const LOAD_ID = "load-sim-1";
  const loadJob = {
    id: LOAD_ID, version: 1, stopped: false, created_unix_ms: Date.now(), agent_status: [],
    spec: { name: "load-sim", kind: "load", protocols: ["http"], sources: ["region=eu"], targets: ["http://127.0.0.1:9/"], timeout_ms: 1000,
      duration_ms: 600000, load: { model: "closed", start: 10, step: 10, steps: 2, step_duration_ms: 300000 } },
  };
  const loadStep = (step, region, p50, p99, errors) => ({
    step, region, agents: 2, sources: 2, seconds: 4, level: 10 * (step + 1), workers: 20 * (step + 1),
    intended_rps: 200, achieved_rps: 199.5, requests: 400, responses: 400 - errors,
    status: { "2xx": 400 - errors, "3xx": 0, "4xx": 0, "429": 0, "5xx": errors, other: 0 },
    errors: { connect: 0, timeout: 0, tls: 0, io: 0 }, error_count: errors, error_share: errors / 400,
    p50_ms: p50, p90_ms: p99, p99_ms: p99, p999_ms: p99, max_ms: p99,
    uncorrected_p50_ms: p50, uncorrected_p99_ms: p50, uncorrected_max_ms: p99, last_unix_ms: Date.now(),
  });
  const loadView = { job_id: LOAD_ID, stopped: true, done: true, updated_unix_ms: Date.now(),
    steps: [loadStep(0, "eu", 12, 40, 0), loadStep(1, "eu", 250, 900.5, 8)] };
  const page3 = watch(await context.newPage());
  await page3.route((u) => u.pathname === "/api/v1/jobs", (route) => route.fulfill({
    status: 200, contentType: "application/json", body: JSON.stringify({ jobs: [loadJob] }),
  }));
  let loadStreams = 0;
  await page3.route((u) => u.pathname === `/api/v1/jobs/${LOAD_ID}/load/stream`, (route) => {
    loadStreams++;
    route.fulfill({
      status: 200, headers: { "content-type": "text/event-stream", "cache-control": "no-store" },
      body: `retry: 60000\nevent: load\ndata: ${JSON.stringify(loadView)}\n\nevent: end\ndata: {"done":true}\n\n`,
    });
  });
  await page3.goto(BASE.href);
  await page3.locator("#dash").waitFor({ state: "visible", timeout: 10000 });
  await page3.click("#tab-btn-jobs");
  const loadBtn = page3.locator(`article[data-job-id="${LOAD_ID}"] button[data-action=load]`);
  await loadBtn.waitFor({ state: "visible", timeout: 5000 });
  const meta = await page3.textContent(`article[data-job-id="${LOAD_ID}"] .meta`);
  check(meta.includes("closed 10 workers, +10 × 1 steps of 300 s, 600 s") && !meta.includes("every"), `the load job's line: ${meta}`);
  await loadBtn.click();
  await until("the load view's rows", async () => (await page3.locator("#load-table tbody tr").count()) === 2, 5000);
  const loadRows = await page3.locator("#load-table tbody tr").evaluateAll((trs) =>
    trs.map((tr) => Array.from(tr.cells).map((td) => td.textContent)));
  check(JSON.stringify(loadRows[0]) === JSON.stringify(["0", "eu", "2", "10", "199.5", "12.00", "40.00", "0 (0.0 %)"]),
    `load row 0: ${JSON.stringify(loadRows[0])}`);
  check(JSON.stringify(loadRows[1]) === JSON.stringify(["1", "eu", "2", "20", "199.5", "250.00", "900.50", "8 (2.0 %)"]),
    `load row 1: ${JSON.stringify(loadRows[1])}`);
  check(await page3.locator("#load-table tbody tr:nth-child(2) td.bad").count() === 1, "the errors of step 1 are not marked");
  await until("the end of the load job said", async () => /The job has ended\./.test(await page3.textContent("#load-note")), 5000);
  check(loadStreams === 1, `the load stream was opened ${loadStreams} times`);
  await page3.screenshot({ path: join(opt.out, "load.png") });
  await page3.click("#load-close");
  check(await page3.locator("#load-view").isHidden(), "the load view stays after Close");
  const csp3 = await page3.evaluate(() => window.__csp);
  check(csp3.length === 0, `CSP violations in the load view: ${csp3.join("; ")}`);
  ok(`load view: a load job's steps from its stream (${loadRows.map((r) => r.join(" ")).join(" | ")}), its end said`);
  await page3.close();

  // ---- console, CSP ----------------------------------------------------------------------
  const csp = await page.evaluate(() => window.__csp);
  check(csp.length === 0, `CSP violations: ${csp.join("; ")}`);
  check(problems.length === 0, `console errors: ${problems.join(" | ")}`);
  // The detector itself: an inline style attribute planted now must be reported (and is then
  // forgotten, with its console line).
  await page.evaluate(() => {
    const d = document.createElement("div");
    d.setAttribute("style", "color: red");
    document.body.appendChild(d);
    d.remove();
  });
  await until("the CSP violation of a planted inline style reported", async () =>
    (await page.evaluate(() => window.__csp.length)) > 0, 5000);
  await page.evaluate(() => { window.__csp.length = 0; });
  await new Promise((r) => setTimeout(r, 200));
  for (let i = problems.length - 1; i >= 0; i--) if (/inline style/i.test(problems[i])) problems.splice(i, 1);
  ok("no console errors, no CSP violations (and a planted inline style is caught)");

  // ---- sign out --------------------------------------------------------------------------
  const cookie = `meshlat_session=${session.value}`;
  check((await rest("/api/v1/session", { cookie })).status === 200, "the session cookie does not work before sign-out");
  await page.click("#signout");
  await page.locator("#signin").waitFor({ state: "visible", timeout: 5000 });
  check(await page.locator("#dash").isHidden(), "the dashboard still shows after sign-out");
  const after = await rest("/api/v1/session", { cookie });
  check(after.status === 401, `GET /api/v1/session with the old cookie: ${after.status}`);
  const agentsAfter = await rest("/api/v1/agents", { cookie });
  check(agentsAfter.status === 401, `GET /api/v1/agents with the old cookie: ${agentsAfter.status}`);
  check(problems.length === 0, `console errors: ${problems.join(" | ")}`);
  ok("signed out: the sign-in form again, the old cookie gets 401");
  console.log(`dashboard.test: PASS in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
} catch (e) {
  console.error(`dashboard.test: FAIL: ${e.message}`);
  if (problems.length) console.error(`dashboard.test: console: ${problems.join(" | ")}`);
  status = 1;
  try {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages.length) await pages[0].screenshot({ path: join(opt.out, "failure.png") });
  } catch {
    // the screenshot is a help only
  }
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(status);
