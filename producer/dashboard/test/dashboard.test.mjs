// Browser test of GET /dashboard, run by scripts/dashboard-test.sh against a stack it
// started: opens the page in headless Debian chromium, places orders through the API,
// confirms and cancels some of them, and checks that the numbers on the page change (sold
// stock and the holds' outcomes too). Saves a screenshot for the README.
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
  const body = await response.json();
  assert.equal(response.status, 202, `batch accepted: ${JSON.stringify(body)}`);
  return body.orders.map((order) => order.order_id);
}

async function command(orderId, kind) {
  const response = await fetch(`${base}/orders/${orderId}/${kind}`, { method: "POST" });
  assert.equal(response.status, 202, `${kind} ${orderId}: ${await response.text()}`);
}

const number = async (page, selector) => Number((await page.locator(selector).textContent()).replace(/,/g, ""));

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

    // Keep a steady trickle so the rates and the latency show while the picture is taken;
    // each round's buyers confirm 10 of their holds and cancel 5.
    const confirmedBefore = await number(page, "#total-confirmed");
    for (let round = 0; round < 4; round++) {
      const ids = await placeOrders(25, 1);
      await page.waitForTimeout(300);
      for (const id of ids.slice(0, 10)) await command(id, "confirm");
      for (const id of ids.slice(10, 15)) await command(id, "cancel");
      await page.waitForTimeout(300);
    }
    await page.waitForFunction(() => document.querySelector("#latency-p99").textContent !== "n/a", null, { timeout: 10_000 });
    // The 40 confirmed holds show as sold on the product's bar and in the confirmed total;
    // the holds' rates are numbers (reported by the consumer), not n/a.
    await page.waitForFunction(
      ([id, before]) => {
        const row = document.querySelector(`[data-testid="product"][data-product="${id}"]`);
        const confirmed = Number(document.querySelector("#total-confirmed").textContent.replace(/,/g, ""));
        return row && Number(row.dataset.sold) >= 40 && confirmed >= before + 40;
      },
      [product, confirmedBefore],
      { timeout: 20_000 },
    );
    for (const outcome of ["confirmed", "cancelled", "expired", "refused"]) {
      assert.notEqual(await page.locator(`#rate-${outcome}`).textContent(), "n/a", `${outcome} / s is reported`);
    }
    const accepted = await number(page, "#total-accepted");
    assert.ok(accepted >= 300, `accepted total ${accepted}`);
    assert.deepEqual(errors, [], "no script errors on the page");
    await page.screenshot({ path: screenshot, fullPage: true });
  } finally {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
