// Drives the agent's status page in Debian's headless Chromium, through playwright-core, for the status_page
// scenario (netns-tests/tests/scenarios/status_page.rs), which runs it inside a node's namespace.
//
//   node status_page.mjs --url http://127.0.0.1:8000/ --seats 1,2,3 --gone 3 --screenshot out.png [--timeout 90]
//
// It prints one JSON line per stage, read from the page's DOM:
//   {"stage":"loaded", "rows":[...], "leader":{"seat","term","state"}, "live", "navigations"}
//     once a row shows for every seat of --seats, the leader is named and the event stream is live;
//   {"stage":"filtered", "rows", "summary"}
//     with "10.0.1.2" typed into the filter (this node's row always shows), read before the filter is cleared;
//   {"stage":"gone", "seat", "rows", "navigations", "screenshot", "events"}
//     once the row of --gone has left the table (the test revokes that seat after "loaded"), with the count of
//     navigations, which stays 1: the page changed without a reload.
// Any failure prints {"stage":"error","message"} and exits 1.

import { chromium } from "playwright-core";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    seats: { type: "string" },
    gone: { type: "string" },
    screenshot: { type: "string" },
    timeout: { type: "string", default: "90" },
  },
});
for (const required of ["url", "seats", "gone", "screenshot"]) {
  if (!args[required]) {
    console.log(JSON.stringify({ stage: "error", message: `--${required} is required` }));
    process.exit(2);
  }
}
const timeout = Number(args.timeout) * 1000;
const seats = args.seats.split(",").map((s) => s.trim());
const emit = (o) => console.log(JSON.stringify(o));

// What the page shows, from its DOM only.
const read = () => ({
  rows: [...document.querySelectorAll("#peers tbody tr")].map((r) => ({
    seat: r.dataset.seat,
    cells: [...r.cells].map((c) => c.textContent),
  })),
  leader: {
    seat: document.getElementById("leader-seat").dataset.seat ?? "",
    text: document.getElementById("leader-seat").textContent,
    term: document.getElementById("leader-term").textContent,
    state: document.getElementById("leader-state").textContent,
  },
  live: document.getElementById("live").textContent,
  chainHead: document.getElementById("chain-head").textContent,
  chainPrefix: document.getElementById("chain-prefix").textContent,
  summary: document.getElementById("cluster-summary").textContent,
  events: [...document.querySelectorAll("#events li")].map((li) => li.lastChild.textContent),
});

let browser;
try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    // Root in a test namespace, and nothing but the page may be fetched: Chromium's own background
    // requests would go to the internet, which the tests never reach. Playwright gives it a fresh profile.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout,
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  let navigations = 0;
  page.on("framenavigated", (frame) => {
    if (frame === page.mainFrame()) navigations++;
  });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));
  await page.goto(args.url, { waitUntil: "load", timeout });

  await page.waitForFunction(
    (seats) => {
      const shown = [...document.querySelectorAll("#peers tbody tr")].map((r) => r.dataset.seat);
      return (
        seats.every((s) => shown.includes(s)) &&
        document.getElementById("leader-seat").dataset.seat &&
        document.getElementById("live").textContent === "live"
      );
    },
    seats,
    { timeout, polling: 200 },
  );
  if (problems.length) throw new Error(problems.join("; "));
  emit({ stage: "loaded", ...(await page.evaluate(read)), navigations });

  await page.fill("#filter", "10.0.1.2");
  await page.waitForFunction(() => document.querySelectorAll("#peers tbody tr").length === 2, null, { timeout, polling: 100 });
  emit({ stage: "filtered", ...(await page.evaluate(read)) });
  await page.fill("#filter", "");

  await page.waitForFunction(
    (gone) => ![...document.querySelectorAll("#peers tbody tr")].some((r) => r.dataset.seat === gone),
    args.gone,
    { timeout, polling: 200 },
  );
  await page.screenshot({ path: args.screenshot, fullPage: true });
  if (problems.length) throw new Error(problems.join("; "));
  emit({ stage: "gone", seat: args.gone, ...(await page.evaluate(read)), navigations, screenshot: args.screenshot });
} catch (e) {
  emit({ stage: "error", message: String(e && e.message ? e.message : e) });
  process.exitCode = 1;
} finally {
  await browser?.close();
}
