// Browser test of GET /dashboard, run by scripts/dashboard-test.sh against a stack it
// started: opens the page in headless Debian chromium, places orders through the API, and
// checks that the numbers on the page change. Saves a screenshot for the README.
//
// Environment: PRODUCER_URL (the stack's producer), SCREENSHOT (where to save it),
// CHROMIUM (default /usr/bin/chromium), PRODUCT (a seeded product to order).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const base = process.env.PRODUCER_URL ?? "http://127.0.0.1:38080";
const screenshot = process.env.SCREENSHOT ?? "dashboard.png";
const product = process.env.PRODUCT ?? "PROD002";
const watchedProduct = "PROD003";

async function placeOrders(count, quantity) {
  const orders = Array.from({ length: count }, (_, i) => ({
    customer_id: `DASH-${i % 50}`, product_id: product, quantity, amount: 9.99,
  }));
  const response = await fetch(`${base}/orders/batch`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(orders),
  });
  assert.equal(response.status, 202, `batch accepted: ${await response.text()}`);
}

test("the dashboard shows orders as they are placed", { timeout: 120_000 }, async () => {
  const profile = mkdtempSync(join(tmpdir(), "orderflow-dashboard-chromium-"));
  // A fresh --user-data-dir: Playwright takes it as the persistent context's directory.
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    viewport: { width: 1400, height: 1100 },
    timeout: 60_000,
  });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    await page.goto(`${base}/dashboard?products=${watchedProduct}`);

    // The chart library loaded from the producer's own npm install, and the stream is live.
    assert.equal(await page.evaluate(() => typeof uPlot), "function", "uPlot was served by the producer");
    await page.locator("#conn.live").waitFor({ timeout: 15_000 });
    // A consumer reports itself within a few seconds.
    await page.locator('[data-testid="consumer"]').first().waitFor({ timeout: 20_000 });
    // The watched product is shown before any order for it.
    const watched = page.locator(`[data-testid="product"][data-product="${watchedProduct}"]`);
    await watched.waitFor({ timeout: 10_000 });
    const reservedBefore = Number((await page.locator("#total-reserved").textContent()).replace(/,/g, ""));

    // A flash sale in small steps: the product becomes hot and its stock goes down.
    for (let round = 0; round < 5; round++) {
      await placeOrders(40, 1);
      await page.waitForTimeout(400);
    }
    const hot = page.locator(`[data-testid="product"][data-product="${product}"]`);
    await hot.waitFor({ timeout: 20_000 });
    await page.waitForFunction(
      ([id, before]) => {
        const row = document.querySelector(`[data-testid="product"][data-product="${id}"]`);
        const reserved = Number(document.querySelector("#total-reserved").textContent.replace(/,/g, ""));
        return row && Number(row.dataset.reserved) >= 200 && reserved >= before + 200;
      },
      [product, reservedBefore],
      { timeout: 20_000 },
    );
    const available = Number(await hot.getAttribute("data-available"));
    const reserved = Number(await hot.getAttribute("data-reserved"));
    assert.ok(reserved >= 200, `reserved rose to ${reserved}`);
    assert.ok(available >= 0, `available ${available}`);
    const reservedAfter = Number((await page.locator("#total-reserved").textContent()).replace(/,/g, ""));
    assert.ok(reservedAfter >= reservedBefore + 200, `reserved total ${reservedBefore} -> ${reservedAfter}`);

    // Keep a steady trickle so the rates and the latency show while the picture is taken.
    for (let round = 0; round < 4; round++) {
      await placeOrders(25, 1);
      await page.waitForTimeout(500);
    }
    await page.waitForFunction(() => document.querySelector("#latency-p99").textContent !== "n/a", null, { timeout: 10_000 });
    const accepted = Number((await page.locator("#total-accepted").textContent()).replace(/,/g, ""));
    assert.ok(accepted >= 300, `accepted total ${accepted}`);
    assert.deepEqual(errors, [], "no script errors on the page");
    await page.screenshot({ path: screenshot, fullPage: true });
  } finally {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
