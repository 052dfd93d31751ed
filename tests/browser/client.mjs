// Drives the graphex client page in Debian's headless Chromium, the way a
// person uses it. Run by tests/browser.rs, which serves the reference app and
// answers the `@@ ...` requests this script prints (one reply line on stdin):
//   @@ channel <id>   -> the channel's subscription count on the server, or "none"
//   @@ owner <id>     -> the principal owning the channel, "anonymous" or "none"
//   @@ drop           -> the server closes every socket (as on a restart); "ok"
//   @@ forget         -> the server's history starts a new epoch (old cursors expire); "ok"
//
// node client.mjs <base-url> <no-introspection-base-url> <output-dir> <available|refused>
//
// The last argument says whether the server answered a graphql-transport-ws
// handshake on the HTTP endpoint's path; the protocol switch is checked
// against whichever it is. GRAPHEX_BROWSER_ONLY=standard runs only the steps
// tagged "standard" (loading the page and the protocol switch).
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [base, noIntrospectionBase, outputDir, standardOffer] = process.argv.slice(2);
if (!base || !noIntrospectionBase || !outputDir || !["available", "refused"].includes(standardOffer)) {
  console.error("usage: node client.mjs <base-url> <no-introspection-base-url> <output-dir> <available|refused>");
  process.exit(2);
}
const CHROMIUM = process.env.GRAPHEX_CHROMIUM || "/usr/bin/chromium";
const ONLY = process.env.GRAPHEX_BROWSER_ONLY || null;
const STEP_TIMEOUT = 10000;
const TOTAL_TIMEOUT = 90000;
mkdirSync(outputDir, { recursive: true });

const watchdog = setTimeout(() => {
  console.error(`FAIL: the browser test did not finish within ${TOTAL_TIMEOUT / 1000} s`);
  process.exit(3);
}, TOTAL_TIMEOUT);

// ------------------------------------------------------------------ harness requests
const replies = [];
const waiters = [];
createInterface({ input: process.stdin }).on("line", (line) => {
  const waiter = waiters.shift();
  if (waiter) waiter(line);
  else replies.push(line);
});
function ask(command) {
  process.stdout.write(`@@ ${command}\n`);
  return new Promise((resolve, reject) => {
    if (replies.length) { resolve(replies.shift()); return; }
    const timer = setTimeout(() => reject(new Error(`no reply to "${command}"`)), STEP_TIMEOUT);
    waiters.push((line) => { clearTimeout(timer); resolve(line); });
  });
}

// ------------------------------------------------------------------ helpers
function check(condition, message) {
  if (!condition) throw new Error(message);
}
function equal(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  check(a === e, `${what}: expected ${e}, got ${a}`);
}
async function waitFor(what, probe, timeout = STEP_TIMEOUT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (error) {
      last = error.message;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((resolve) => setTimeout(resolve, 40));
  }
}
const steps = [];
async function step(name, body, tags = []) {
  if (ONLY && !tags.includes(ONLY)) return;
  const started = Date.now();
  await body();
  steps.push({ step: name, ms: Date.now() - started });
  console.log(`ok: ${name}`);
}

async function graphql(url, query, variables, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${url}/graphql`, {
    method: "POST",
    headers,
    body: JSON.stringify({ query, variables }),
    signal: AbortSignal.timeout(STEP_TIMEOUT),
  });
  const body = await response.json();
  check(!body.errors, `GraphQL errors: ${JSON.stringify(body.errors)}`);
  return body.data;
}
let users = 0;
async function createUser() {
  users += 1;
  const username = `browser-${process.pid}-${users}`;
  const data = await graphql(base, "mutation ($u: String!, $e: String!) { createUser(username: $u, email: $e, tenant: \"acme\") { id username email } }",
    { u: username, e: `${username}@example.com` });
  return data.createUser;
}

function luminance(rgb) {
  const [r, g, b] = rgb.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number).map((c) => {
    const v = c / 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}
function contrast(a, b) {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}

// ------------------------------------------------------------------ the browser
const profile = mkdtempSync(join(tmpdir(), "graphex-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
context.setDefaultTimeout(STEP_TIMEOUT);

// Console errors, page errors and failed requests, by phase. A phase may
// expect some (the refused standard handshake logs one).
let phase = "load";
const problems = [];
const foreign = [];
const origins = new Set([new URL(base).origin, new URL(noIntrospectionBase).origin]);
function watch(page) {
  page.on("console", (message) => {
    if (message.type() === "error") problems.push({ phase, kind: "console", text: message.text() });
  });
  page.on("pageerror", (error) => problems.push({ phase, kind: "pageerror", text: String(error) }));
  page.on("requestfailed", (request) => problems.push({ phase, kind: "requestfailed", text: `${request.url()} ${request.failure()?.errorText}` }));
  page.on("request", (request) => {
    const url = new URL(request.url());
    if (url.protocol !== "data:" && !origins.has(url.origin)) foreign.push(request.url());
  });
}

const page = context.pages()[0] ?? (await context.newPage());
watch(page);
const editor = page.locator("#editor");

async function completions() {
  if (await page.locator("#completions").isHidden()) return null;
  return page.locator("#completions li").evaluateAll((items) => items.map((li) => ({
    label: li.dataset.label, selected: li.getAttribute("aria-selected") === "true",
  })));
}
// Waits for the popup to offer `label`, moves the selection to it with the
// arrow keys and accepts it with `key` (Enter or Tab).
async function accept(label, key) {
  const items = await waitFor(`completion "${label}"`, async () => {
    const items = await completions();
    return items && items.some((item) => item.label === label) ? items : null;
  });
  const target = items.findIndex((item) => item.label === label);
  const current = items.findIndex((item) => item.selected);
  for (let i = current; i < target; i += 1) await page.keyboard.press("ArrowDown");
  for (let i = current; i > target; i -= 1) await page.keyboard.press("ArrowUp");
  await page.keyboard.press(key);
  check(await completions() === null, "the popup closes on accept");
}
async function clearEditor(target = page) {
  await target.locator("#editor").click();
  await target.keyboard.press("Control+A");
  await target.keyboard.press("Backspace");
  equal(await target.locator("#editor").inputValue(), "", "editor cleared");
}
async function channelShown(target = page, not = null) {
  return waitFor("a channel id", async () => {
    const id = (await target.locator("#channel").textContent()).trim();
    const state = await target.locator("#state").getAttribute("data-state");
    return /^[0-9a-f]{40}$/.test(id) && id !== not && state === "connected" ? id : null;
  });
}
async function responseJson() {
  return JSON.parse(await page.locator("#response").textContent());
}

let failed = null;
let channel;
try {
  await step("the page loads and shows its channel", async () => {
    const response = await page.goto(`${base}/graphql/client/`);
    equal(response.status(), 200, "page status");
    const headers = response.headers();
    check(headers["content-type"].startsWith("text/html"), `content type ${headers["content-type"]}`);
    check(headers["content-security-policy"].includes("default-src 'none'"), "a CSP forbids loading from elsewhere");
    channel = await channelShown();
    equal(await ask(`channel ${channel}`), "0", "the server knows the channel the page shows");
  }, ["standard"]);

  await step("introspection feeds the example", async () => {
    await waitFor("introspection", async () => (await page.locator("#schema-state").getAttribute("data-schema")) === "introspected");
    const example = await editor.inputValue();
    check(example.includes("userSubscription(") && example.includes("action: ALL_ACTIONS"), `example: ${example}`);
  });

  await step("Tab and Shift+Tab indent", async () => {
    phase = "editor";
    await editor.fill("a {\nb\n}");
    await editor.focus();
    await page.keyboard.press("Control+A");
    await page.keyboard.press("Tab");
    equal(await editor.inputValue(), "  a {\n  b\n  }", "Tab indents every selected line");
    await page.keyboard.press("Shift+Tab");
    equal(await editor.inputValue(), "a {\nb\n}", "Shift+Tab outdents them");
    await page.keyboard.press("Control+Home");
    await page.keyboard.press("ArrowDown");
    await page.keyboard.press("Tab");
    equal(await editor.inputValue(), "a {\n  b\n}", "Tab at a caret inserts an indent");
    await page.keyboard.press("Shift+Tab");
    equal(await editor.inputValue(), "a {\nb\n}", "Shift+Tab outdents the caret's line");
    await page.keyboard.press("Escape");
    await page.keyboard.press("Tab");
    check(await page.evaluate(() => document.activeElement.id) !== "editor", "Esc then Tab leaves the editor");
  });

  await step("autocomplete writes a subscription", async () => {
    await clearEditor();
    await page.keyboard.type("sub");
    await accept("subscription", "Tab");
    equal(await editor.inputValue(), "subscription", "keyword accepted with Tab");
    await page.keyboard.type(" {");
    await page.keyboard.press("Enter");
    await page.keyboard.type("user");
    const roots = await completions();
    check(!roots.some((item) => item.label === "ok"), "root fields, not the confirmation's fields");
    await accept("userSubscription", "Enter");
    await page.keyboard.type("(act");
    await accept("action", "Enter");
    await page.keyboard.type(": ");
    await page.keyboard.press("Control+Space");
    const values = await waitFor("enum values", completions);
    for (const value of ["ALL_ACTIONS", "CREATE", "UPDATE", "DELETE"]) {
      check(values.some((item) => item.label === value), `${value} offered for action: ${JSON.stringify(values)}`);
    }
    await page.keyboard.type("ALL");
    await page.screenshot({ path: join(outputDir, "client-completion.png") });
    await accept("ALL_ACTIONS", "Enter");
    await page.keyboard.type(", operation: SUBSCRIBE, data: [");
    await page.keyboard.press("Control+Space");
    await accept("USERNAME", "Tab");
    await page.keyboard.type(", EMAIL]) { ok error ");
    await page.keyboard.press("Control+Space");
    const rest = await waitFor("the confirmation's fields", completions);
    check(rest.some((item) => item.label === "stream") && !rest.some((item) => item.label === "ok"),
      `fields not yet selected: ${JSON.stringify(rest)}`);
    await page.keyboard.press("Escape");
    await page.keyboard.type("stream operation action }");
    await page.keyboard.press("Enter");
    await page.keyboard.type("}");
    equal(await editor.inputValue(),
      "subscription {\n  userSubscription(action: ALL_ACTIONS, operation: SUBSCRIBE, data: [USERNAME, EMAIL]) { ok error stream operation action }\n}",
      "the typed document");
  });

  await step("subscribe over HTTP with the channel filled in", async () => {
    phase = "subscribe";
    await page.locator("#subscribe").click();
    await waitFor("a confirmation", async () => (await page.locator("#response").getAttribute("data-outcome")) === "ok");
    equal((await responseJson()).data.userSubscription,
      { ok: true, error: null, stream: "users", operation: "SUBSCRIBE", action: "ALL_ACTIONS" }, "confirmation");
    equal(await page.locator("#active li").count(), 1, "one active subscription");
    equal(await page.locator("#active li .mono").textContent(),
      "userSubscription(action: ALL_ACTIONS, data: [USERNAME, EMAIL])", "its label");
    equal(await ask(`channel ${channel}`), "3", "ALL_ACTIONS joined three groups on the page's channel");
  });

  await step("a user created over HTTP appears", async () => {
    const user = await createUser();
    const item = page.locator("#notifications li.notification", { hasText: user.username });
    await item.waitFor();
    equal(await item.locator(".stream").textContent(), "users", "stream");
    equal(await item.locator(".action").textContent(), "create", "action");
    equal(await item.locator(".model").textContent(), "user", "model");
    equal(JSON.parse(await item.locator("pre").textContent()), { username: user.username, email: user.email },
      "the data projected to USERNAME, EMAIL");
    check(/^\d\d:\d\d:\d\d\.\d{3}$/.test(await item.locator("time").textContent()), "a timestamp");
    equal(await page.locator("#count").textContent(), "1", "count");
  });

  await step("readable in light and dark themes", async () => {
    await editor.evaluate((el) => { el.scrollLeft = 0; });
    for (const scheme of ["light", "dark"]) {
      await page.emulateMedia({ colorScheme: scheme });
      const colors = await page.evaluate(() => {
        const style = (selector) => getComputedStyle(document.querySelector(selector));
        return {
          body: [style("body").color, style("body").backgroundColor],
          editor: [style("#editor").color, style("#editor").backgroundColor],
          hint: [style("#editor-hint").color, style("section.pane").backgroundColor],
          button: [style("#subscribe").color, style("#subscribe").backgroundColor],
        };
      });
      const background = luminance(colors.body[1]);
      check(scheme === "dark" ? background < 0.05 : background > 0.8, `${scheme} background ${colors.body[1]}`);
      for (const [name, [fg, bg]] of Object.entries(colors)) {
        check(contrast(fg, bg) >= 4.5, `${scheme}: ${name} contrast ${contrast(fg, bg).toFixed(2)} (${fg} on ${bg})`);
      }
      await page.screenshot({ path: join(outputDir, `client-${scheme}.png`) });
    }
    await page.emulateMedia({ colorScheme: "light" });
  });

  await step("the page reconnects and resumes after its last cursor when the socket drops", async () => {
    phase = "reconnect";
    // The page asked for cursors (`cursors: true`) and remembers the last one.
    equal(await ask("drop"), "ok", "sockets dropped");
    // Made while the page is away (held until the reconnect if the page
    // comes back first, in which case the change arrives live): once either way.
    const missed = await createUser();
    const next = await channelShown(page, channel);
    await page.locator("#notifications li.system", { hasText: "re-subscribed 1 of 1" }).waitFor();
    await page.locator("#notifications li.system", { hasText: "1 resumed after their last cursor" }).waitFor();
    equal(await ask(`channel ${next}`), "3", "the subscription is back on the new channel");
    channel = next;
    await page.locator("#notifications li.notification", { hasText: missed.username }).waitFor();
    const user = await createUser();
    await page.locator("#notifications li.notification", { hasText: user.username }).waitFor();
    equal(await page.locator("#notifications li.notification", { hasText: `"${missed.username}"` }).count(), 1,
      "the change made while disconnected, once");
  });

  await step("a cursor that expired falls back to a plain subscribe, with a note", async () => {
    phase = "expired";
    // The server forgets its history (as after a restart): the page's cursor is of another epoch.
    equal(await ask("forget"), "ok", "history forgotten");
    equal(await ask("drop"), "ok", "sockets dropped");
    const next = await channelShown(page, channel);
    await page.locator("#notifications li.system", { hasText: "cursor expired for" }).waitFor();
    await page.locator("#notifications li.system", { hasText: "re-subscribed 1 of 1" }).nth(1).waitFor();
    equal(await ask(`channel ${next}`), "3", "subscribed again on the new channel");
    channel = next;
    const user = await createUser();
    await page.locator("#notifications li.notification", { hasText: user.username }).waitFor();
  });

  await step("unsubscribe and clear", async () => {
    phase = "unsubscribe";
    await page.locator("#unsubscribe").click();
    await waitFor("an UNSUBSCRIBE confirmation", async () => {
      const body = await responseJson();
      return body.data && body.data.userSubscription.operation === "UNSUBSCRIBE";
    });
    equal((await responseJson()).data.userSubscription,
      { ok: true, error: null, stream: "users", operation: "UNSUBSCRIBE", action: "ALL_ACTIONS" }, "confirmation");
    equal(await page.locator("#active li").count(), 0, "no active subscription");
    equal(await ask(`channel ${channel}`), "0", "the channel holds no subscription");
    await page.locator("#clear").click();
    equal(await page.locator("#notifications li").count(), 0, "cleared");
    equal(await page.locator("#count").textContent(), "0", "count reset");
  });

  await step("a token authenticates the socket and the subscribe", async () => {
    phase = "token";
    const owner = (await createUser()).username;
    await page.locator("#token").fill(owner);
    await page.locator("#token").press("Enter");
    channel = await channelShown(page, channel);
    equal(await ask(`owner ${channel}`), owner, "the new channel belongs to the token's principal");
    await editor.fill("subscription { noteSubscription(action: CREATE, operation: SUBSCRIBE) { ok error stream } }");
    await page.locator("#subscribe").click();
    await waitFor("a confirmation", async () => (await responseJson()).data?.noteSubscription?.ok === true);
    equal(await ask(`channel ${channel}`), "1", "subscribed as the principal");
    const note = await graphql(base, "mutation { createNote(text: \"from the browser test\") { id owner } }", {}, owner);
    const item = page.locator("#notifications li.notification", { hasText: "from the browser test" });
    await item.waitFor();
    equal(JSON.parse(await item.locator("pre").textContent()), { id: note.createNote.id, owner, text: "from the browser test" },
      "the note");
  });

  await step(`the standard-protocol switch (server: ${standardOffer})`, async () => {
    phase = `standard-${standardOffer}`;
    await page.locator("#standard").focus();
    await page.keyboard.press("Space");
    if (standardOffer === "refused") {
      const message = await waitFor("the refusal message", async () => {
        const text = await page.locator("#protocol-message").textContent();
        return text.includes("Handshake refused") ? text : null;
      });
      check(message.includes("graphql-transport-ws") && message.includes("/graphql"), `message: ${message}`);
      equal(await page.locator("#state").getAttribute("data-state"), "unavailable", "state");
      await page.locator("#subscribe").click();
      check((await page.locator("#response").textContent()).includes("Not connected"), "subscribing says why it cannot");
    } else {
      await waitFor("a graphql-transport-ws connection", async () =>
        (await page.locator("#state").getAttribute("data-state")) === "connected");
      await page.locator("#example").click();
      const example = await editor.inputValue();
      check(!example.includes("channelId"), `a native field example: ${example}`);
      await page.locator("#subscribe").click();
      await waitFor("the subscribe sent", async () => (await page.locator("#active li").count()) === 1);
      // The protocol does not acknowledge a subscribe: create users until one
      // is streamed (bounded by the step timeout).
      const payload = await waitFor("a streamed change", async () => {
        await createUser();
        for (let i = 0; i < 10; i += 1) {
          const texts = await page.locator("#notifications li.notification pre").allTextContents();
          const streamed = texts.map((text) => JSON.parse(text)).find((p) => p && p.data && !p.errors);
          if (streamed) return streamed;
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        return null;
      });
      console.log(`streamed over graphql-transport-ws: ${JSON.stringify(payload)}`);
      await page.screenshot({ path: join(outputDir, "client-standard.png") });
      await page.locator("#unsubscribe").click();
      equal(await page.locator("#active li").count(), 0, "completed");
    }
    await page.locator("#standard").focus();
    await page.keyboard.press("Space");
    phase = "back-to-two-channel";
    channel = await channelShown(page, channel);
    equal(await page.locator("#protocol-message").textContent(), "", "no message in two-channel mode");
  }, ["standard"]);

  await step("without introspection, keywords still complete", async () => {
    phase = "keywords";
    const other = await context.newPage();
    watch(other);
    await other.goto(`${noIntrospectionBase}/graphql/client/`);
    await channelShown(other);
    await waitFor("the keyword fallback", async () => (await other.locator("#schema-state").getAttribute("data-schema")) === "keywords");
    check((await other.locator("#editor").inputValue()).includes("Introspection is unavailable"), "the example says so");
    await clearEditor(other);
    await other.keyboard.type("sub");
    const offered = await waitFor("keyword completions", async () => {
      if (await other.locator("#completions").isHidden()) return null;
      return other.locator("#completions li").evaluateAll((items) => items.map((li) => li.dataset.label));
    });
    check(offered.includes("subscription"), `offered: ${offered}`);
    await other.keyboard.press("Tab");
    equal(await other.locator("#editor").inputValue(), "subscription", "keyword accepted");
    await other.keyboard.type(" { ");
    await other.keyboard.press("Control+Space");
    const inside = await waitFor("keywords inside a selection", async () => {
      if (await other.locator("#completions").isHidden()) return null;
      return other.locator("#completions li").evaluateAll((items) => items.map((li) => li.dataset.label));
    });
    check(!inside.includes("userSubscription") && inside.includes("query"), `keywords only: ${inside}`);
    await other.screenshot({ path: join(outputDir, "client-keywords.png") });
    await other.keyboard.press("Escape");
    await other.close();
  });

  await step("no console errors, nothing loaded from elsewhere", async () => {
    const allowed = (p) => p.phase === "standard-refused" && /WebSocket connection to .* failed/.test(p.text);
    const unexpected = problems.filter((p) => !allowed(p));
    check(unexpected.length === 0, `console errors: ${JSON.stringify(unexpected, null, 1)}`);
    check(foreign.length === 0, `requests to other origins: ${foreign}`);
  }, ["standard"]);
} catch (error) {
  failed = error;
  try { await page.screenshot({ path: join(outputDir, "client-failure.png") }); } catch { /* page gone */ }
}

await context.close();
rmSync(profile, { recursive: true, force: true });
clearTimeout(watchdog);
if (failed) {
  console.error(`FAIL (phase ${phase}): ${failed.message}`);
  if (problems.length) console.error(`browser problems: ${JSON.stringify(problems, null, 1)}`);
  process.exit(1);
}
console.log(`browser: ${steps.length} steps passed: ${JSON.stringify(steps)}`);
process.exit(0);
