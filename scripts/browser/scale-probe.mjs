// A manual look at the dashboard with a large mesh (not a test stage): signs in, opens the region
// or agent view (with a source and destination region when given), reads Chromium's performance
// counters over 20 s (10 matrix events of the live stream), hovers and clicks a cell, and saves a
// screenshot. Run against a controller fed by `controller/examples/simagents.rs --summaries`:
//
//   MESHLAT_CREDENTIAL=NAME:SECRET node scripts/browser/scale-probe.mjs https://127.0.0.1:PORT/ OUT.png \
//     agent r00 r01
//
// It prints what the heatmap shows (table or canvas, cells), the script, layout and style time the
// page spent in those 20 s, and any console errors (the 401 of the first GET /api/v1/session,
// before sign-in, is expected).
import { chromium } from "playwright-core";
const [url, out, view, srcR, dstR] = process.argv.slice(2);
const CRED = process.env.MESHLAT_CREDENTIAL;
if (!url || !out || !CRED) {
  console.error("usage: MESHLAT_CREDENTIAL=NAME:SECRET node scale-probe.mjs URL OUT.png [region|agent [SRC_REGION DST_REGION]]");
  process.exit(2);
}
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"] });
const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, ignoreHTTPSErrors: true });
const page = await ctx.newPage();
const errs = [];
page.on("console", (m) => { if (m.type() === "error") errs.push(m.text()); });
page.on("pageerror", (e) => errs.push(e.message));
await page.goto(url);
await page.fill("#credential", CRED);
await page.click("#signin-form button[type=submit]");
await page.locator("#dash").waitFor();
await page.waitForTimeout(3000);
if (view === "agent") {
  await page.selectOption("#mesh-view", "agent");
  await page.waitForTimeout(1000);
  if (srcR) { await page.selectOption("#mesh-src-region", srcR); await page.selectOption("#mesh-dst-region", dstR); }
}
await page.waitForTimeout(5000);
const cdp = await ctx.newCDPSession(page);
await cdp.send("Performance.enable");
const m0 = Object.fromEntries((await cdp.send("Performance.getMetrics")).metrics.map((m) => [m.name, m.value]));
await page.waitForTimeout(20000);
const m1 = Object.fromEntries((await cdp.send("Performance.getMetrics")).metrics.map((m) => [m.name, m.value]));
const info = await page.evaluate(() => ({
  note: document.getElementById("mesh-note").textContent,
  table: !document.getElementById("heat").hidden, canvas: !document.getElementById("heat-canvas").hidden,
  tds: document.querySelectorAll("#heat td").length, filter: !document.getElementById("region-filter").hidden,
}));
console.log(JSON.stringify(info));
console.log(`over 20 s (10 matrix events): script ${((m1.ScriptDuration - m0.ScriptDuration) * 1000).toFixed(0)} ms, layout ${((m1.LayoutDuration - m0.LayoutDuration) * 1000).toFixed(0)} ms, recalc style ${((m1.RecalcStyleDuration - m0.RecalcStyleDuration) * 1000).toFixed(0)} ms, task ${((m1.TaskDuration - m0.TaskDuration) * 1000).toFixed(0)} ms; JS heap ${(m1.JSHeapUsedSize / 1e6).toFixed(1)} MB`);
if (info.canvas) {
  const box = await page.locator("#heat-canvas").boundingBox();
  await page.mouse.move(box.x + box.width * 0.3, box.y + box.height * 0.6);
  await page.waitForTimeout(300);
  console.log("hover tooltip:", await page.textContent("#tooltip"), "| detail:", await page.textContent("#detail-title"));
  await page.mouse.click(box.x + box.width * 0.3, box.y + box.height * 0.6);
  await page.waitForTimeout(4500);
} else if (info.tds) {
  await page.locator("#heat td").nth(Math.floor(info.tds / 3)).click();
  await page.waitForTimeout(4500);
}
await page.screenshot({ path: out });
console.log("errors:", errs);
await browser.close();
