// The dashboard at scale, for scripts/bench/bench.py (`dashboard_500`): headless Chromium signs
// in to a controller fed by `controller/examples/simagents.rs --summaries`, and measures
//   - the time from submitting the sign-in to the first rendered region × region heatmap, and
//     from choosing a region pair in the agent view to its first rendered agent × agent heatmap
//     (the page's `meshlat:first-render` User Timing mark; a mesh of 60 agents or fewer is shown
//     whole, without a region pair);
//   - each live update's main-thread time (the page's `meshlat:update` measures: parse, merge,
//     render) over WINDOW_S seconds per view, and every long task (> 50 ms, the Long Tasks API)
//     over the whole run.
// Prints one JSON object on stdout. Usage:
//   MESHLAT_CREDENTIAL=NAME:SECRET node scripts/bench/dashboard.mjs URL SRC_REGION DST_REGION WINDOW_S
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";

// playwright-core is installed under scripts/browser (scripts/browser/setup.sh).
const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "browser", "package.json"));
const { chromium } = require("playwright-core");

const [url, srcRegion, dstRegion, windowArg] = process.argv.slice(2);
const CRED = process.env.MESHLAT_CREDENTIAL;
const windowMs = Number(windowArg || "20") * 1000;
if (!url || !srcRegion || !dstRegion || !CRED || !(windowMs > 0)) {
  console.error("usage: MESHLAT_CREDENTIAL=NAME:SECRET node dashboard.mjs URL SRC_REGION DST_REGION WINDOW_S");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  // The controller's certificate is its own CA's; the bench does not install that CA.
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, ignoreHTTPSErrors: true });
  // Long tasks from the first moment (injected by the browser, not subject to the page's CSP).
  await ctx.addInitScript(() => {
    window.__longtasks = [];
    new PerformanceObserver((l) => {
      for (const e of l.getEntries()) window.__longtasks.push(e.duration);
    }).observe({ type: "longtask", buffered: true });
  });
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(url);
  await page.locator("#credential").waitFor();
  await page.fill("#credential", CRED);
  const firstRender = async (action) => {
    const t0 = await page.evaluate(() => performance.now());
    await action();
    await page.waitForFunction(
      (t) => performance.getEntriesByName("meshlat:first-render").some((e) => e.startTime > t),
      t0, { timeout: 60000, polling: 50 });
    return page.evaluate((t) => {
      const e = performance.getEntriesByName("meshlat:first-render").find((x) => x.startTime > t);
      return e.startTime - t;
    }, t0);
  };
  const updates = async () => {
    const t0 = await page.evaluate(() => performance.now());
    await page.waitForTimeout(windowMs);
    return page.evaluate((t) => {
      const u = performance.getEntriesByName("meshlat:update").filter((e) => e.startTime > t).map((e) => e.duration);
      return {
        updates: u.length,
        update_max_ms: u.length ? Math.max(...u) : null,
        update_mean_ms: u.length ? u.reduce((a, b) => a + b, 0) / u.length : null,
        cells: document.querySelectorAll("#heat td[data-src]").length,
        canvas: !document.getElementById("heat-canvas").hidden,
      };
    }, t0);
  };
  const regionFirst = await firstRender(() => page.click("#signin-form button[type=submit]"));
  const region = await updates();
  // Over 60 agents the agent view asks for a region pair first (a small mesh shows it whole).
  const agentFirst = await firstRender(async () => {
    await page.selectOption("#mesh-view", "agent");
    if (await page.locator("#region-filter").isVisible()) {
      await page.selectOption("#mesh-src-region", srcRegion);
      await page.selectOption("#mesh-dst-region", dstRegion);
    }
  });
  const agent = await updates();
  const longtasks = await page.evaluate(() => window.__longtasks);
  console.log(JSON.stringify({
    first_render_region_ms: regionFirst,
    first_render_agent_ms: agentFirst,
    region,
    agent,
    longtasks: longtasks.length,
    longtask_max_ms: longtasks.length ? Math.max(...longtasks) : 0,
    page_errors: errors,
  }));
} finally {
  await browser.close();
}
