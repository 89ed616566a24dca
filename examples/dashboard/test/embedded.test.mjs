// The dashboard against `modalis demo --dashboard`: the embedded broker's own WebSockets
// listener (rumqttd, MQTT 3.1.1, no ACL) and the page's config.json from the demo's server.
// Started by host/tests/it/dashboard.rs with DASHBOARD_URL and SCREENSHOT set.
import { chromium } from 'playwright-core';

const T = 20000;
const url = process.env.DASHBOARD_URL;
if (!url) throw new Error('DASHBOARD_URL is not set');
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
page.on('pageerror', (e) => console.log('page error:', e.message));
let failed = false;
try {
  await page.goto(url);
  await page.waitForSelector('#controller-state[data-state="online"]', { timeout: T });
  const cfg = await (await page.request.get(new URL('config.json', url).href)).json();
  if (!cfg.ws_url.startsWith('ws://127.0.0.1:')) throw new Error(`config.json ws_url: ${cfg.ws_url}`);
  console.log(`controller online over the embedded broker's ${cfg.ws_url}`);
  await page.waitForSelector('.session-card[data-state="running"]', { timeout: T });
  await page.waitForSelector('.plot[data-kind="skin_temp_c"][data-points]:not([data-points="0"])', { timeout: T });
  console.log('a session running and a temperature plot receiving points');
} catch (e) {
  failed = true;
  console.error('FAILED:', e.message);
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
