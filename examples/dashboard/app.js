// The modalis monitoring dashboard: subscribes to one controller's topics
// (modalis/v1/<controller>/#, described in schemas/asyncapi.yaml) over MQTT-over-WebSockets
// and shows them. Device ids, channels and sessions are discovered from the messages; field
// names, descriptions and units come from the published JSON Schemas (schemas/mqtt/), where
// every unit is in the field's name (skin_temp_c, power_mw, amplitude_ma, ...).
//
// Everything shown is what the controller or a device said; nothing here decides about
// safety. Text from messages is only ever set with textContent.
'use strict';

const HISTORY_MS = 5 * 60 * 1000; // a few minutes of history per plot
// A session in one of these states delivers nothing (session-status.schema.json, `state`).
const FINAL_STATES = new Set(['completed', 'aborted', 'e-stopped']);
// How long the page waits for the controller to report an e-stop before it warns.
const ESTOP_CONFIRM_MS = 3000;
const SUFFIX_UNITS = { c: '°C', mw: 'mW', ohm: 'Ω', ma: 'mA', w: 'W', hz: 'Hz', us: 'µs', nm: 'nm', cm2: 'cm²', j: 'J', ms: 'ms' };

const app = {
  cfg: null,
  client: null,
  root: '',
  kinds: new Map(), // measurement kind -> { label, unit }
  setpointUnits: new Map(), // setpoint field -> unit
  plots: new Map(), // "device/channel" -> plot
  sessions: new Map(), // session id -> card
  deviceSession: new Map(), // device -> session (from commands)
  limits: new Map(), // session -> { alarm, cutoff } from its dose report
  setpoints: new Map(), // "device/channel" -> last commanded setpoint (or null when stopped)
  alarms: [],
  estopSeq: Date.now(),
  panel: 'dashboard-' + Math.random().toString(36).slice(2, 8),
};

function $(sel, el = document) { return el.querySelector(sel); }

/// The unit in a field name: the part after the last underscore, if it is a unit.
function unitOf(field) {
  const m = /_([a-z0-9]+)$/.exec(field);
  return m && SUFFIX_UNITS[m[1]] ? SUFFIX_UNITS[m[1]] : '';
}

async function loadConfig() {
  const q = new URLSearchParams(location.search);
  let cfg = {};
  try {
    const r = await fetch('config.json', { cache: 'no-store' });
    if (r.ok) cfg = await r.json();
  } catch (e) { /* served without config.json: the query string must say it all */ }
  return {
    ws_url: q.get('ws') || cfg.ws_url || `ws://${location.hostname || '127.0.0.1'}:9001`,
    controller: q.get('controller') || cfg.controller || 'controller-1',
    username: q.get('username') || cfg.username || undefined,
    password: q.get('password') || cfg.password || undefined,
    estop: cfg.estop !== false,
  };
}

/// Measurement kinds and setpoint fields, with descriptions and units, from the schemas.
async function loadSchemas() {
  try {
    const tel = await (await fetch('schemas/mqtt/device-telemetry.schema.json')).json();
    for (const v of tel.$defs.Measurement.oneOf) {
      const kind = v.properties.kind.const;
      app.kinds.set(kind, { label: v.description.replace(/\.$/, ''), unit: unitOf(kind) });
    }
    const cmd = await (await fetch('schemas/mqtt/device-command.schema.json')).json();
    for (const def of Object.values(cmd.$defs || {})) {
      for (const field of Object.keys(def.properties || {})) {
        if (unitOf(field)) app.setpointUnits.set(field, unitOf(field));
      }
    }
  } catch (e) {
    console.warn('schemas not available; labels fall back to field names', e);
  }
}

function kindInfo(kind) {
  return app.kinds.get(kind) || { label: kind, unit: unitOf(kind) };
}

function connect(cfg) {
  app.root = `modalis/v1/${cfg.controller}/`;
  $('#controller-name').textContent = cfg.controller;
  const client = mqtt.connect(cfg.ws_url, {
    // MQTT 3.1.1: what both mosquitto's and the embedded broker's WebSockets listeners speak.
    protocolVersion: 4,
    clientId: app.panel,
    username: cfg.username,
    password: cfg.password,
    reconnectPeriod: 1000,
    connectTimeout: 5000,
    clean: true,
  });
  app.client = client;
  const conn = $('#connection');
  const setConn = (s) => { conn.textContent = s; conn.dataset.state = s; };
  client.on('connect', () => {
    setConn('connected');
    client.subscribe(app.root + '#', { qos: 1 });
  });
  client.on('reconnect', () => setConn('reconnecting'));
  client.on('offline', () => setConn('offline'));
  client.on('close', () => { if (conn.dataset.state === 'connected') setConn('offline'); });
  client.on('error', (e) => { setConn('error'); console.warn('mqtt', e && e.message); });
  client.on('message', (topic, payload, packet) => {
    let msg;
    try { msg = JSON.parse(new TextDecoder().decode(payload)); } catch (e) { return; }
    $('#last-message').textContent = new Date().toLocaleTimeString();
    try { route(topic.slice(app.root.length), msg, packet.retain); } catch (e) { console.warn(topic, e); }
  });
}

function route(rest, msg, retained) {
  const p = rest.split('/');
  if (rest === 'state') return onState(msg);
  if (rest === 'alarm') return onAlarm(msg);
  if (p[0] === 'session' && p[2] === 'status') return onStatus(p[1], msg);
  if (p[0] === 'session' && p[2] === 'dose-report') return onDoseReport(p[1], msg);
  if (p[0] === 'device' && p[2] === 'telemetry') return onTelemetry(p[1], msg);
  if (p[0] === 'device' && p[2] === 'command') return onCommand(p[1], msg);
}

function onState(s) {
  const el = $('#controller-state');
  el.textContent = s.state;
  el.dataset.state = s.state;
  $('#trust').textContent = s.plugin_trust ? `v${s.version}, plugins: ${s.plugin_trust.replaceAll('_', ' ')}` : '';
}

// ---- sessions ---------------------------------------------------------------------------

function card(session) {
  let c = app.sessions.get(session);
  if (c) return c;
  const el = $('#session-template').content.firstElementChild.cloneNode(true);
  el.dataset.session = session;
  $('.session-id', el).textContent = session;
  $('#sessions').appendChild(el);
  $('#no-sessions').hidden = true;
  c = { el, devices: new Set() };
  app.sessions.set(session, c);
  return c;
}

function mmss(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

function onStatus(session, s) {
  const c = card(session);
  const el = c.el;
  el.dataset.state = s.state;
  $('.state', el).textContent = s.state;
  $('.block', el).textContent = s.block || '—';
  $('progress', el).value = s.progress_percent || 0;
  $('.percent', el).textContent = `${(s.progress_percent || 0).toFixed(1)} %`;
  $('.remaining', el).textContent = mmss((s.total_ms || 0) - (s.elapsed_ms || 0));
  const n = s.next_step;
  $('.next', el).textContent = n ? `next: ${n.label} on ${n.device}/${n.channel} in ${mmss(n.due_in_ms)}` : '';
  el.dataset.elapsedMs = s.elapsed_ms;
  estopProgress(session, s.state);
}

function onDoseReport(session, m) {
  const r = m.report || {};
  const el = card(session).el;
  $('.verdict', el).textContent = `${(r.verdict || '?').replaceAll('_', ' ')} (${JSON.stringify(r.counts || {})})`;
  const body = $('.dose-report tbody', el);
  body.replaceChildren();
  let alarm = Infinity;
  let cutoff = Infinity;
  for (const s of r.sites || []) {
    const tr = document.createElement('tr');
    const cells = [
      s.site, s.sensation, (s.modalities || []).join(', '),
      s.energy_j != null ? `${s.energy_j.toFixed(1)} ${unitOf('energy_j')}` : '',
      s.fluence_j_per_cm2 != null ? `${s.fluence_j_per_cm2.toFixed(2)} J/cm²` : '',
      s.max_target_temp_c != null ? `${s.max_target_temp_c} ${unitOf('max_target_temp_c')}` : '',
      s.max_tens_rms_ma != null ? `${s.max_tens_rms_ma.toFixed(1)} ${unitOf('max_tens_rms_ma')}` : '',
      s.skin_alarm_c != null ? `${s.skin_alarm_c} / ${s.skin_cutoff_c} ${unitOf('skin_alarm_c')}` : '',
    ];
    for (const v of cells) {
      const td = document.createElement('td');
      td.textContent = v;
      tr.appendChild(td);
    }
    body.appendChild(tr);
    // The plot lines: the lowest limits among the session's heated sites (the dose report
    // does not say which channel lies on which site, so the strictest one is drawn).
    if ((s.modalities || []).some((x) => x.includes('heat')) && s.skin_alarm_c != null) {
      alarm = Math.min(alarm, s.skin_alarm_c);
      cutoff = Math.min(cutoff, s.skin_cutoff_c);
    }
  }
  if (Number.isFinite(alarm)) app.limits.set(session, { alarm, cutoff });
}

function onCommand(device, c) {
  if (c.session) {
    app.deviceSession.set(device, c.session);
    const sc = card(c.session);
    if (!sc.devices.has(device)) {
      sc.devices.add(device);
      $('.devices', sc.el).textContent = [...sc.devices].sort().join(', ');
    }
  }
  const key = `${device}/${c.channel}`;
  const a = c.action || {};
  if (a.kind === 'set') app.setpoints.set(key, a.setpoint);
  else if (a.kind === 'stop') app.setpoints.set(key, null);
}

// ---- telemetry plots -------------------------------------------------------------------

function plotFor(device, channel, kind) {
  // One plot per reading kind: a Class IV handpiece reports skin temperature and power.
  const key = `${device}/${channel}/${kind}`;
  let p = app.plots.get(key);
  if (p) return p;
  const info = kindInfo(kind);
  const el = document.createElement('div');
  el.className = 'plot';
  el.dataset.device = device;
  el.dataset.channel = channel;
  el.dataset.kind = kind;
  el.dataset.points = '0';
  const h = document.createElement('h3');
  h.textContent = `${device} / ${channel}: ${info.label} (${info.unit})`;
  el.appendChild(h);
  const state = document.createElement('div');
  state.className = 'delivering muted';
  el.appendChild(state);
  $('#plots').appendChild(el);
  $('#no-devices').hidden = true;

  const series = [{}, { label: `measured (${info.unit})`, stroke: '#2563eb', width: 2 }];
  if (kind === 'skin_temp_c') {
    series.push({ label: `alarm (${info.unit})`, stroke: '#ca8a04', dash: [6, 4] });
    series.push({ label: `cut-off (${info.unit})`, stroke: '#dc2626', dash: [6, 4] });
  } else if (kind === 'optical_power_mw') {
    series.push({ label: `set (${app.setpointUnits.get('power_mw') || 'mW'})`, stroke: '#16a34a', dash: [4, 3] });
  } else if (kind === 'impedance_ohm') {
    series.push({ label: `amplitude (${app.setpointUnits.get('amplitude_ma') || 'mA'})`, stroke: '#9333ea', scale: 'ma' });
  }
  const axes = [{}, { label: info.unit }];
  if (kind === 'impedance_ohm') axes.push({ side: 1, scale: 'ma', label: 'mA', grid: { show: false } });
  const width = Math.max(360, Math.min(640, window.innerWidth - 80));
  const u = new uPlot({ width, height: 200, series, axes, scales: { x: { time: true } } },
    series.map(() => []), el);
  p = { el, state, u, kind, t: [], ys: series.slice(1).map(() => []), dirty: false };
  app.plots.set(key, p);
  return p;
}

function onTelemetry(device, t) {
  const m = t.measurement || {};
  if (typeof m.value !== 'number') return;
  const p = plotFor(device, t.channel, m.kind);
  const now = Date.now();
  const session = app.deviceSession.get(device);
  const limits = session && app.limits.get(session);
  const sp = app.setpoints.get(`${device}/${t.channel}`);
  const extra = [];
  if (p.kind === 'skin_temp_c') extra.push(limits ? limits.alarm : null, limits ? limits.cutoff : null);
  // The set value: from the last set command seen, 0 after a stop, a gap while unknown (the
  // page opened after the command).
  const set = (field) => (sp === undefined ? null : sp === null ? 0 : (sp[field] ?? null));
  if (p.kind === 'optical_power_mw') extra.push(set('power_mw'));
  else if (p.kind === 'impedance_ohm') extra.push(set('amplitude_ma'));
  p.t.push(now / 1000);
  [m.value, ...extra].forEach((v, i) => p.ys[i] && p.ys[i].push(v));
  while (p.t.length && now / 1000 - p.t[0] > HISTORY_MS / 1000) {
    p.t.shift();
    p.ys.forEach((y) => y.shift());
  }
  p.el.dataset.points = String(Number(p.el.dataset.points) + 1);
  p.el.dataset.delivering = String(t.delivering);
  p.el.dataset.last = String(m.value);
  p.state.textContent = `${t.delivering ? 'delivering' : 'not delivering'}, last ${m.value.toFixed(1)} ${kindInfo(m.kind).unit}`;
  p.dirty = true;
}

function redraw() {
  for (const p of app.plots.values()) {
    if (!p.dirty) continue;
    p.dirty = false;
    p.u.setData([p.t, ...p.ys]);
  }
}

// ---- alarms -----------------------------------------------------------------------------

function onAlarm(a) {
  const li = document.createElement('li');
  li.className = 'alarm';
  li.dataset.priority = a.priority;
  li.dataset.rule = a.rule;
  if (a.session) li.dataset.session = a.session;
  const when = document.createElement('span');
  when.textContent = new Date(a.ts_ms || Date.now()).toLocaleTimeString();
  const what = document.createElement('span');
  what.className = 'what';
  const where = [a.session, a.device, a.channel].filter(Boolean).join(' / ');
  what.textContent = `${a.priority.toUpperCase()} ${a.rule}${where ? ' (' + where + ')' : ''}: ${a.reason}`;
  const ack = document.createElement('button');
  ack.type = 'button';
  ack.className = 'ack';
  ack.textContent = 'Acknowledge';
  ack.addEventListener('click', () => {
    // Acknowledging silences this dashboard's display of it; the condition and its record
    // stay with the controller.
    li.classList.add('acked');
    li.dataset.acked = 'true';
    ack.disabled = true;
    ack.textContent = 'Acknowledged';
  });
  li.append(when, what, ack);
  $('#alarms').prepend(li);
  $('#no-alarms').hidden = true;
}

// ---- e-stop -----------------------------------------------------------------------------

function setupEstop(cfg) {
  const button = $('#estop');
  const dialog = $('#estop-confirm');
  const status = $('#estop-status');
  if (!cfg.estop) { button.hidden = true; return; }
  button.addEventListener('click', () => dialog.showModal());
  dialog.addEventListener('close', () => {
    if (dialog.returnValue !== 'yes') return;
    app.estopSeq += 1;
    const msg = {
      seq: app.estopSeq,
      ts_ms: Date.now(),
      panel: app.panel,
      reason: `e-stop pressed on the dashboard (${app.panel})`,
    };
    if (!app.client || !app.client.connected) {
      status.textContent = 'E-STOP NOT SENT: not connected to the broker. Use the device stop buttons.';
      return;
    }
    // The sessions that should turn e-stopped. Over MQTT 3.1.1 a broker that refuses the
    // publish (a `dashboard` user, not a `panel` one) still acknowledges it, so "sent" is not
    // "stopped": the page says stopped only when the controller's session status says so.
    const live = [...app.sessions.entries()]
      .filter(([, c]) => !FINAL_STATES.has(c.el.dataset.state))
      .map(([id]) => id);
    app.client.publish(app.root + 'estop', JSON.stringify(msg), { qos: 1 }, (err) => {
      status.dataset.sent = err ? 'false' : 'true';
      if (err) {
        status.textContent = `E-STOP NOT SENT: ${err.message}. Use the device stop buttons.`;
        return;
      }
      if (live.length === 0) {
        status.textContent = 'E-stop sent; no session was running.';
        return;
      }
      status.textContent = `E-stop sent; waiting for the controller to stop ${live.join(', ')}...`;
      status.dataset.confirmed = 'pending';
      app.estopWaiting = new Set(live);
      clearTimeout(app.estopTimer);
      app.estopTimer = setTimeout(() => {
        if (status.dataset.confirmed !== 'pending') return;
        status.dataset.confirmed = 'false';
        status.textContent = `NO CONFIRMATION: ${[...app.estopWaiting].join(', ')} not e-stopped after ${ESTOP_CONFIRM_MS / 1000} s. The broker may refuse e-stops from this user. Use the device stop buttons.`;
      }, ESTOP_CONFIRM_MS);
    });
  });
}

/// Called for every session status: ticks off the sessions an e-stop from this page waits for.
function estopProgress(session, state) {
  const status = $('#estop-status');
  if (!app.estopWaiting || !app.estopWaiting.has(session) || !FINAL_STATES.has(state)) return;
  app.estopWaiting.delete(session);
  if (app.estopWaiting.size === 0 && status.dataset.confirmed === 'pending') {
    clearTimeout(app.estopTimer);
    status.dataset.confirmed = 'true';
    status.textContent = 'E-stop confirmed by the controller: every session stopped.';
  }
}

async function main() {
  const cfg = await loadConfig();
  app.cfg = cfg;
  await loadSchemas();
  setupEstop(cfg);
  connect(cfg);
  setInterval(redraw, 250);
}

main();
