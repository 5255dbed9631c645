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

import { parseArgs } from "node:util";
import { emit, onPage, read } from "./page.mjs";

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
    emit({ stage: "error", message: `--${required} is required` });
    process.exit(2);
  }
}
const timeout = Number(args.timeout) * 1000;
const seats = args.seats.split(",").map((s) => s.trim());

await onPage(args.url, timeout, async (page, watch) => {
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
  watch.check();
  emit({ stage: "loaded", ...(await page.evaluate(read)), navigations: watch.navigations });

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
  watch.check();
  emit({ stage: "gone", seat: args.gone, ...(await page.evaluate(read)), navigations: watch.navigations, screenshot: args.screenshot });
});
