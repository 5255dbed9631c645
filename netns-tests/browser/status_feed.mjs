// Watches the status page's event feed in Debian's headless Chromium, for the integration test of the feed
// (netns-tests/tests/integration/status_feed.rs).
//
//   node status_feed.mjs --url http://127.0.0.1:8000/ --expect TEXT [--expect TEXT…] [--timeout 60]
//
// It prints, from the page's DOM (page.mjs's `read`):
//   {"stage":"loaded", "events", "leader", …} once the page has read the API and its feed has a line;
//   {"stage":"feed", "events"} whenever the feed gains a line;
//   {"stage":"seen", "events", "leader", …, "navigations"} once every --expect is part of a line of the feed,
//     and exits.
// Any failure prints {"stage":"error","message"} and exits 1.
//
// The page's first read of /v1/status is answered a second late, so that the event stream's first list of
// peers always comes before it: the page must not call itself loaded (its "updated" time) on that list alone,
// and the "loaded" stage must hold what the first full read says (the seats refused when it opened).

import { parseArgs } from "node:util";
import { emit, onPage, read } from "./page.mjs";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    expect: { type: "string", multiple: true, default: [] },
    timeout: { type: "string", default: "60" },
  },
});
if (!args.url || !args.expect.length) {
  emit({ stage: "error", message: "--url and at least one --expect are required" });
  process.exit(2);
}
const timeout = Number(args.timeout) * 1000;
const feed = () => [...document.querySelectorAll("#events li")].map((li) => li.lastChild.textContent);

await onPage(args.url, timeout, async (page, watch) => {
  await page.waitForFunction(
    () => document.querySelectorAll("#events li").length > 0 && !/^(never|failed)/.test(document.getElementById("updated").textContent),
    null,
    { timeout, polling: 100 },
  );
  watch.check();
  emit({ stage: "loaded", ...(await page.evaluate(read)) });
  const deadline = Date.now() + timeout;
  let shown = 0;
  for (;;) {
    const events = await page.evaluate(feed);
    if (events.length !== shown) {
      shown = events.length;
      emit({ stage: "feed", events });
    }
    if (args.expect.every((x) => events.some((e) => e.includes(x)))) break;
    if (Date.now() > deadline) throw new Error(`the feed never showed all of ${JSON.stringify(args.expect)}: ${JSON.stringify(events)}`);
    watch.check();
    await page.waitForTimeout(200);
  }
  emit({ stage: "seen", ...(await page.evaluate(read)), navigations: watch.navigations });
}, { before: firstStatusLate });

// Holds the page's first request for /v1/status for a second, then lets every request through.
async function firstStatusLate(page) {
  let first = true;
  await page.route("**/v1/status", async (route) => {
    if (first) {
      first = false;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    await route.continue();
  });
}
