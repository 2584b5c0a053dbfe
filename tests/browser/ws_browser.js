// issue #10 item 1: MQTT.js (its browser bundle, dist/mqtt.min.js) in headless Chromium against
// brokerd's WebSocket listener.
//
//   node ws_browser.js --ws-port N --tcp-port M [--chromium /usr/bin/chromium]
//
// Serves a page on 127.0.0.1 (port 0) that loads MQTT.js and connects to
// ws://127.0.0.1:N/mqtt; the page subscribes, publishes to itself, and records what arrives.
// The script also publishes with mosquitto_pub over plain TCP (port M) and checks the page got
// that message too. Prints one "PASS <case>" or "FAIL <case>: <why>" line per case and exits 1
// if any failed. Every wait is bounded; the browser and the page server are closed on exit.
"use strict";

const http = require("http");
const fs = require("fs");
const os = require("os");
const path = require("path");
const { execFile } = require("child_process");
const { chromium } = require("playwright-core");

const WAIT_MS = 10000;

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  if (fallback !== undefined) return fallback;
  console.error(`usage: node ws_browser.js --ws-port N --tcp-port M [--chromium PATH]`);
  process.exit(2);
}

const wsPort = Number(arg("--ws-port"));
const tcpPort = Number(arg("--tcp-port"));
const chromiumPath = arg("--chromium", "/usr/bin/chromium");
// By path: the package's "exports" map does not expose dist/.
const bundle = fs.readFileSync(path.join(__dirname, "node_modules", "mqtt", "dist", "mqtt.min.js"));

// The page: connects, subscribes to browser/#, publishes browser/self, and keeps every message
// (and every error) in window.results for the test to read.
const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>brokerd ws test</title>
<script src="/mqtt.min.js"></script></head>
<body><pre id="log"></pre>
<script>
window.results = { connected: false, subscribed: false, messages: [], errors: [] };
const client = mqtt.connect("ws://127.0.0.1:${wsPort}/mqtt", {
  clientId: "browser-" + Math.random().toString(16).slice(2, 10),
  protocolVersion: 4,
  reconnectPeriod: 0,
  connectTimeout: 5000,
});
client.on("connect", () => {
  window.results.connected = true;
  client.subscribe("browser/#", { qos: 1 }, (err, granted) => {
    if (err) { window.results.errors.push("subscribe: " + err.message); return; }
    window.results.granted = granted.map((g) => g.qos);
    window.results.subscribed = true;
    client.publish("browser/self", "hello from the page", { qos: 1 }, (err) => {
      if (err) window.results.errors.push("publish: " + err.message);
    });
  });
});
client.on("message", (topic, payload) => {
  window.results.messages.push(topic + " " + payload.toString());
  document.getElementById("log").textContent += topic + " " + payload.toString() + "\\n";
});
client.on("error", (e) => window.results.errors.push("error: " + e.message));
</script></body></html>`;

const server = http.createServer((req, res) => {
  if (req.url === "/") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(page);
  } else if (req.url === "/mqtt.min.js") {
    res.writeHead(200, { "content-type": "text/javascript" });
    res.end(bundle);
  } else {
    res.writeHead(404);
    res.end();
  }
});

let failed = 0;
function pass(name) {
  console.log(`PASS ${name}`);
}
function fail(name, why) {
  failed += 1;
  console.log(`FAIL ${name}: ${why}`);
}

function mosquittoPub(topic, message) {
  return new Promise((resolve) => {
    execFile(
      "mosquitto_pub",
      ["-h", "127.0.0.1", "-p", String(tcpPort), "-q", "1", "-t", topic, "-m", message],
      { timeout: WAIT_MS },
      (err, stdout, stderr) => resolve(err ? `${err.message} ${stderr}` : null),
    );
  });
}

async function main() {
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const pagePort = server.address().port;
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "brokerd-chromium-"));
  let browser;
  try {
    // A fresh profile directory (playwright passes it as --user-data-dir).
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: chromiumPath,
      headless: true,
      timeout: WAIT_MS * 3,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    const tab = await browser.newPage();
    tab.setDefaultTimeout(WAIT_MS);
    await tab.goto(`http://127.0.0.1:${pagePort}/`);
    const name1 = "MQTT.js in Chromium connects over WebSocket, subscribes, and gets its own QoS 1 publish";
    try {
      await tab.waitForFunction(() => window.results.messages.includes("browser/self hello from the page"));
      const r = await tab.evaluate(() => window.results);
      if (r.connected && r.subscribed && r.granted && r.granted[0] === 1 && r.errors.length === 0) {
        pass(name1);
      } else {
        fail(name1, JSON.stringify(r));
      }
    } catch (e) {
      fail(name1, `${e.message}; page state ${JSON.stringify(await tab.evaluate(() => window.results))}`);
    }
    const name2 = "mosquitto_pub over TCP -> MQTT.js subscriber in Chromium";
    const err = await mosquittoPub("browser/from-tcp", "hello from mosquitto_pub");
    if (err) {
      fail(name2, `mosquitto_pub failed: ${err}`);
    } else {
      try {
        await tab.waitForFunction(() =>
          window.results.messages.includes("browser/from-tcp hello from mosquitto_pub"),
        );
        pass(name2);
      } catch (e) {
        fail(name2, `${e.message}; page state ${JSON.stringify(await tab.evaluate(() => window.results))}`);
      }
    }
  } catch (e) {
    fail("headless Chromium runs the page", e.message);
  } finally {
    if (browser) await browser.close().catch(() => {});
    server.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.exit(failed > 0 ? 1 : 0);
}

main();
