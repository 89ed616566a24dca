// The dashboard in a real browser (headless Chromium from Debian, driven by playwright-core),
// against a running controller with simulated devices on a real broker. Started by the Rust
// test host/tests/it/dashboard.rs, which starts mosquitto (with a WebSockets listener and the
// example ACL) and `modalis run --simulate --dashboard`, and passes:
//
//   DASHBOARD_URL   the page, with ?username=panel&password=... (a panel user may e-stop)
//   MQTT_URL        mqtt://127.0.0.1:PORT, for this script's own eyes on the broker
//   MQTT_USER, MQTT_PASSWORD   a user that may write the simulator's fault topic
//   VIEWER_USER, VIEWER_PASSWORD   a read-only dashboard user (its e-stop must be refused)
//   CONTROLLER      the controller id
//   CONTROLLER_PID  the controller's process
//   DOOMED, DOOMED_PID, DOOMED_URL  a second controller (id, process, its page with a
//                   read-only user), SIGKILLed at the end
//   SCREENSHOT      where the mid-session screenshot goes
//
// Every step waits for what a person would see on the page, with a deadline, and the script
// checks the devices themselves over MQTT where the page could be wrong.
import { chromium } from 'playwright-core';
import mqtt from 'mqtt';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const T = 20000;
const started = Date.now();
const log = (...a) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s]`, ...a);

const controller = env('CONTROLLER');
const root = `modalis/v1/${controller}/`;
const watcher = await mqtt.connectAsync(env('MQTT_URL'), {
  username: env('MQTT_USER'),
  password: env('MQTT_PASSWORD'),
  clientId: `dashboard-test-${process.pid}`,
  protocolVersion: 5,
});
// What the devices themselves say: the latest telemetry of every channel, the stop commands
// the controller sent, and the devices' acks of them.
const delivering = new Map(); // "device/channel" -> { on, at }
const stops = new Map(); // command id -> "device/channel", for stop commands
const stopped = new Map(); // "device/channel" -> when a device acked a stop with no lease held
const seen = {}; // messages per topic kind, for a failure's message
watcher.on('message', (topic, payload) => {
  let m;
  try { m = JSON.parse(payload.toString()); } catch (e) { return; /* not ours to judge */ }
  const now = Date.now();
  const kind = topic.split('/').pop();
  seen[kind] = (seen[kind] || 0) + 1;
  if (topic.endsWith('/telemetry')) {
    delivering.set(`${m.device}/${m.channel}`, { on: m.delivering, at: now });
  } else if (topic.endsWith('/command') && m.action?.kind === 'stop') {
    stops.set(m.command_id, `${topic.split('/')[4]}/${m.channel}`);
  } else if (topic.endsWith('/ack') && stops.has(m.command_id)
    && m.outcome === 'accepted' && m.lease_id == null) {
    // A stop accepted with no lease held: the simulator's channel is off (a device with the
    // ignore-stop fault acks the stop but still names its lease).
    stopped.set(stops.get(m.command_id), now);
  }
});
await watcher.subscribeAsync([root + 'device/+/telemetry', root + 'device/+/command', root + 'device/+/ack']);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 1600 } });
page.on('console', (m) => { if (m.type() === 'error') log('page console:', m.text()); });
page.on('pageerror', (e) => log('page error:', e.message));
// Requests still open, named in a failure (a hung file explains a page that never loads).
const pending = new Set();
page.on('request', (r) => pending.add(r.url()));
page.on('requestfinished', (r) => pending.delete(r.url()));
page.on('requestfailed', (r) => { pending.delete(r.url()); log('request failed:', r.url(), r.failure()?.errorText); });

let failed = false;
try {
  await page.goto(env('DASHBOARD_URL'));

  await page.waitForSelector('#controller-state[data-state="online"]', { timeout: T });
  log('controller online');
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: T });

  const card = page.locator('.session-card[data-state="running"]').first();
  await card.waitFor({ timeout: T });
  const session = await card.getAttribute('data-session');
  const progress = async () => Number(await card.locator('progress').getAttribute('value')) || Number(await card.locator('progress').evaluate((e) => e.value));
  const p0 = await progress();
  await page.waitForFunction(
    ([s, p]) => Number(document.querySelector(`.session-card[data-session="${s}"] progress`).value) > p,
    [session, p0], { timeout: T });
  log(`session ${session} advancing (from ${p0.toFixed(2)} %)`);
  const block = await card.locator('.block').textContent();
  if (!block || block === '—') throw new Error('the session card shows no current block');

  const temp = page.locator('.plot[data-kind="skin_temp_c"][data-delivering="true"]').first();
  await temp.waitFor({ timeout: T });
  const where = `${await temp.getAttribute('data-device')}/${await temp.getAttribute('data-channel')}`;
  const n0 = Number(await temp.getAttribute('data-points'));
  await page.waitForFunction(
    ([w, n]) => {
      const [d, c] = w.split('/');
      const el = document.querySelector(`.plot[data-device="${d}"][data-channel="${c}"][data-kind="skin_temp_c"]`);
      return el && Number(el.dataset.points) >= n + 5;
    }, [where, n0], { timeout: T });
  log(`temperature plot ${where} receiving points`);
  await page.waitForFunction(() => document.querySelector('.session-card .verdict').textContent !== 'not received', null, { timeout: T });
  log('dose report shown');

  await page.screenshot({ path: env('SCREENSHOT'), fullPage: true });
  log(`screenshot: ${env('SCREENSHOT')}`);

  // An over-temperature fault in the heat pads' simulator: the skin heats 50 times faster
  // than the pad believes, so it overshoots the 41 C cut-off before the heat plugin's closed
  // loop can turn the power down (at 10 times the loop held it near the 40 C alarm level); the
  // controller cuts the pad off and raises a high-priority alarm, which the page shows in red.
  const device = where.split('/')[0];
  await watcher.publishAsync(root + `sim/${device}/fault`, JSON.stringify({
    seq: 1, ts_ms: Date.now(), device, faults: { overheating_gain: 50.0 },
  }), { qos: 1, retain: false });
  await page.locator('.alarm[data-priority="high"]').first().waitFor({ timeout: T });
  // A handle on this alarm, not a locator: newer alarms are prepended, and `.first()` would
  // move to one of them between the click and the check.
  const high = await page.$('.alarm[data-priority="high"]');
  const rule = await high.getAttribute('data-rule');
  const colour = await high.evaluate((e) => getComputedStyle(e).animationName);
  if (colour !== 'flash') throw new Error(`a high alarm must flash; animation is ${colour}`);
  log(`high-priority alarm shown: ${rule}`);
  await (await high.$('button.ack')).click();
  if ((await high.getAttribute('data-acked')) !== 'true') throw new Error('acknowledging did not stick');
  log('alarm acknowledged');

  // E-stop from a read-only `dashboard` user: the broker's ACL refuses it (over MQTT 3.1.1
  // silently), the session keeps running, and the page must not claim a stop.
  const viewer = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await viewer.goto(env('DASHBOARD_URL').replace(/username=[^&]*&password=[^&]*/,
    `username=${env('VIEWER_USER')}&password=${env('VIEWER_PASSWORD')}`));
  await viewer.waitForSelector(`.session-card[data-session="${session}"][data-state="running"]`, { timeout: T });
  await viewer.click('#estop');
  await viewer.click('#estop-yes');
  await viewer.waitForSelector('#estop-status[data-confirmed="false"]', { timeout: T });
  log(`read-only user's e-stop: "${await viewer.locator('#estop-status').textContent()}"`);
  await viewer.close();
  if ((await card.getAttribute('data-state')) !== 'running') {
    throw new Error(`a read-only user's e-stop changed the session to ${await card.getAttribute('data-state')}`);
  }

  // E-stop from the page (the panel user): every simulated source stops.
  await page.click('#estop');
  // Before the click: the devices' acks can arrive before the page's own confirmation does.
  const pressed = Date.now();
  await page.click('#estop-yes');
  await page.waitForSelector('#estop-status[data-sent="true"]', { timeout: T });
  log('e-stop pressed and sent');
  await page.waitForSelector(`.session-card[data-session="${session}"][data-state="e-stopped"]`, { timeout: T });
  await page.waitForSelector('#estop-status[data-confirmed="true"]', { timeout: T });
  log(`the page says: "${await page.locator('#estop-status').textContent()}"`);
  // The devices themselves: every channel that ever reported telemetry acknowledges a stop
  // sent after the press, and any reading after its stop says it is not delivering. (`modalis
  // run --simulate` ends, with its simulated devices, once its session has ended, so the
  // devices' acks are the evidence, not readings that may never come.)
  for (;;) {
    const chans = [...delivering.keys()];
    const missing = chans.filter((k) => !(stopped.get(k) > pressed));
    const on = chans.filter((k) => stopped.get(k) && delivering.get(k).at > stopped.get(k) + 250 && delivering.get(k).on);
    if (on.length > 0) throw new Error(`delivering after its stop: ${on}`);
    if (chans.length > 0 && missing.length === 0) break;
    if (Date.now() - pressed > T) {
      throw new Error(`no accepted stop after the e-stop from ${missing} (of ${chans}; ${stops.size} stop commands seen; messages seen: ${JSON.stringify(seen)})`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const last = Math.max(...stopped.values());
  log(`every device channel acknowledged its stop (${delivering.size} channels, the last ${last - pressed} ms after the press)`);

  // Killing a controller: the broker publishes its last will and the page turns it offline.
  // The one above has ended by itself with its session (and said "offline" itself), so this is
  // a second controller on the same broker, alive until the kill.
  const doomed = env('DOOMED');
  const dpid = Number(env('DOOMED_PID'));
  const other = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await other.goto(env('DOOMED_URL'));
  await other.waitForSelector('#controller-state[data-state="online"]', { timeout: 2 * T });
  process.kill(dpid, 0); // throws if it is not running: then the will would prove nothing
  process.kill(dpid, 'SIGKILL');
  const killedAt = Date.now();
  await other.waitForSelector('#controller-state[data-state="offline"]', { timeout: T });
  log(`controller ${doomed} killed: the page shows it offline ${Date.now() - killedAt} ms later`);
} catch (e) {
  failed = true;
  console.error('FAILED:', e.message);
  if (pending.size) console.error('requests still open:', [...pending].join(', '));
  const shot = env('SCREENSHOT').replace(/\.png$/, '-failure.png');
  await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
  console.error(`failure screenshot: ${shot}`);
} finally {
  await browser.close();
  await watcher.endAsync();
}
process.exit(failed ? 1 : 0);
