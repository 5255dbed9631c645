// What the browser tests share: Debian's headless Chromium through playwright-core, opened on the agent's
// status page, and the page's DOM read as JSON. Each script prints one JSON line per stage (`emit`).

import { chromium } from "playwright-core";

export const emit = (o) => console.log(JSON.stringify(o));

// Runs `body(page, watch)` on a fresh page at `url`, then closes the browser; any failure, the page's own
// errors included, prints {"stage":"error","message"} and sets exit code 1. `watch.navigations` counts the
// page's loads, which stays 1 when the page changes by itself. `before(page)`, if given, runs before the
// page is opened (to route its requests).
export async function onPage(url, timeout, body, { before } = {}) {
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
    const watch = { navigations: 0, problems: [] };
    page.on("framenavigated", (frame) => {
      if (frame === page.mainFrame()) watch.navigations++;
    });
    page.on("pageerror", (e) => watch.problems.push(`page error: ${e.message}`));
    page.on("console", (m) => m.type() === "error" && watch.problems.push(`console: ${m.text()}`));
    if (before) await before(page);
    await page.goto(url, { waitUntil: "load", timeout });
    watch.check = () => {
      if (watch.problems.length) throw new Error(watch.problems.join("; "));
    };
    await body(page, watch);
    watch.check();
  } catch (e) {
    emit({ stage: "error", message: String(e && e.message ? e.message : e) });
    process.exitCode = 1;
  } finally {
    await browser?.close();
  }
}

// What the page shows, from its DOM only: run in the page (`page.evaluate(read)`).
export const read = () => {
  const t = (id) => document.getElementById(id).textContent;
  return {
    rows: [...document.querySelectorAll("#peers tbody tr")].map((r) => ({
      seat: r.dataset.seat,
      cells: [...r.cells].map((c) => c.textContent),
    })),
    leader: {
      seat: document.getElementById("leader-seat").dataset.seat ?? "",
      text: t("leader-seat"),
      term: t("leader-term"),
      state: t("leader-state"),
      vote: t("leader-vote"),
      ballot: t("leader-ballot"),
    },
    live: t("live"),
    chainHead: t("chain-head"),
    chainPrefix: t("chain-prefix"),
    chainVerified: t("chain-verified"),
    summary: t("cluster-summary"),
    ports: document.getElementById("ports-section").hidden ? []
      : [...document.querySelectorAll("#ports tbody tr")].map((r) => [...r.cells].map((c) => c.textContent)),
    events: [...document.querySelectorAll("#events li")].map((li) => li.lastChild.textContent),
  };
};
