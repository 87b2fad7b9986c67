// Conveyor's ops dashboard: queues, failing jobs and job detail, from the public API.
//
// Served with a strict Content-Security-Policy (no inline script or style), so everything
// lives in this file. Every string that comes from the API (kinds, queue names, errors,
// payloads) is rendered with textContent, never parsed as HTML.
'use strict';

const REFRESH_MS = 3000;
const HISTORY = 60; // throughput samples kept per queue for the sparkline
const TOKEN_KEY = 'conveyor.token';
const STATES = ['scheduled', 'queued', 'running', 'retrying', 'succeeded', 'dead', 'cancelled'];

const throughputHistory = new Map();
let openJob = null;
let timer = null;

// ---- token -----------------------------------------------------------------------------

function takeTokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get('token');
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    // Keep the token out of the address bar and the browser history.
    history.replaceState(null, '', location.pathname + location.search);
  }
}

function token() {
  let t = sessionStorage.getItem(TOKEN_KEY);
  if (!t) {
    t = (window.prompt('Conveyor API token (needs jobs:read; jobs:write to retry or cancel)') || '').trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
  }
  return t;
}

// ---- API -------------------------------------------------------------------------------

async function api(path, method = 'GET') {
  const t = token();
  if (!t) throw new Error('no token');
  const response = await fetch(path, {
    method,
    headers: { Authorization: 'Bearer ' + t, Accept: 'application/json' },
    cache: 'no-store',
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
  }
  if (!response.ok) {
    throw new Error(body.detail || body.title || 'HTTP ' + response.status);
  }
  return body;
}

// ---- DOM helpers -----------------------------------------------------------------------

/** An element with attributes and children; string children become text nodes. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function seconds(value) {
  if (value === null || value === undefined) return '–';
  if (value < 1) return Math.round(value * 1000) + ' ms';
  if (value < 120) return value.toFixed(1) + ' s';
  if (value < 7200) return Math.round(value / 60) + ' min';
  return (value / 3600).toFixed(1) + ' h';
}

function count(value) {
  return value === null || value === undefined ? '–' : Number(value).toLocaleString();
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '–';
}

function setStatus(text, bad = false) {
  const status = document.getElementById('status');
  status.textContent = text;
  status.className = bad ? 'error-banner' : 'muted';
}

// ---- queues ----------------------------------------------------------------------------

function sparkline(canvas, values) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 280;
  const height = canvas.clientHeight || 40;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext('2d');
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  if (values.length < 2) return;
  const max = Math.max(1, ...values);
  ctx.strokeStyle = '#2f5bd3';
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = (i / (HISTORY - 1)) * width;
    const y = height - 2 - (v / max) * (height - 4);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function queueCard(q) {
  const samples = throughputHistory.get(q.name) || [];
  samples.push(q.throughput.per_second_1m);
  while (samples.length > HISTORY) samples.shift();
  throughputHistory.set(q.name, samples);

  const pills = el('div', { class: 'states' });
  for (const state of STATES) {
    pills.append(el('span', { class: 'pill ' + state, 'data-state': state }, state + ' ' + count(q.counts[state])));
  }
  const broker = q.ready === null
    ? 'RabbitMQ unreachable'
    : count(q.ready) + ' ready · ' + count(q.consumers) + ' consumers';
  const canvas = el('canvas', { 'aria-label': 'jobs finished per second, last minutes' });
  const card = el('div', { class: 'card', 'data-queue': q.name },
    el('h3', {}, el('span', {}, q.name), el('span', { class: 'muted' }, broker)),
    el('div', { class: 'row' },
      el('div', {}, el('div', { class: 'big', 'data-field': 'backlog' }, count(q.backlog)), el('div', { class: 'muted' }, 'backlog')),
      el('div', {}, el('div', { class: 'big' }, q.throughput.per_second_1m.toFixed(2)), el('div', { class: 'muted' }, 'done / s (1 min)')),
      el('div', {}, el('div', { class: 'big state-dead', 'data-field': 'dead' }, count(q.dead)), el('div', { class: 'muted' }, 'dead'))),
    pills,
    canvas,
    el('dl', {},
      el('dt', {}, 'oldest waiting'), el('dd', {}, seconds(q.oldest_waiting_age_seconds)),
      el('dt', {}, 'finished 1 / 5 min'), el('dd', {}, count(q.throughput.finished_1m) + ' / ' + count(q.throughput.finished_5m)),
      el('dt', {}, 'wait p50 · p95 · p99'), el('dd', {}, [q.queue_wait_seconds.p50, q.queue_wait_seconds.p95, q.queue_wait_seconds.p99].map(seconds).join(' · ')),
      el('dt', {}, 'run p50 · p95 · p99'), el('dd', {}, [q.run_seconds.p50, q.run_seconds.p95, q.run_seconds.p99].map(seconds).join(' · '))));
  return { card, draw: () => sparkline(canvas, samples) };
}

async function loadQueues() {
  const { queues } = await api('/v1/queues');
  const root = document.getElementById('queues');
  const cards = queues.map(queueCard);
  root.replaceChildren(...cards.map((c) => c.card));
  cards.forEach((c) => c.draw());
}

// ---- failing jobs ----------------------------------------------------------------------

async function act(id, action) {
  try {
    await api('/v1/jobs/' + encodeURIComponent(id) + '/' + action, 'POST');
    setStatus(action === 'retry' ? 'retried ' + id : 'cancelled ' + id);
    openJob = id;
  } catch (e) {
    setStatus(action + ' failed: ' + e.message, true);
  }
  await refresh();
}

function failingRow(job) {
  const button = job.state === 'dead'
    ? el('button', { type: 'button', 'data-action': 'retry', onclick: () => act(job.id, 'retry') }, 'Retry')
    : el('button', { type: 'button', 'data-action': 'cancel', onclick: () => act(job.id, 'cancel') }, 'Cancel');
  return el('tr', { 'data-job-id': job.id },
    el('td', {}, el('button', { type: 'button', class: 'link', onclick: () => showJob(job.id) }, el('code', {}, job.id.slice(-12)))),
    el('td', {}, job.kind),
    el('td', {}, job.queue),
    el('td', { class: 'state-' + job.state }, job.state),
    el('td', {}, job.attempts + ' / ' + job.max_attempts),
    el('td', { class: 'error' }, job.last_error || ''),
    el('td', { class: 'muted' }, when(job.updated_at)),
    el('td', {}, button));
}

async function loadFailing() {
  const [dead, retrying] = await Promise.all([
    api('/v1/jobs?state=dead&limit=50'),
    api('/v1/jobs?state=retrying&limit=50'),
  ]);
  const jobs = dead.jobs.concat(retrying.jobs);
  document.querySelector('#failing tbody').replaceChildren(...jobs.map(failingRow));
  document.getElementById('failing-empty').hidden = jobs.length > 0;
}

// ---- job detail ------------------------------------------------------------------------

function showJob(id) {
  openJob = id;
  loadDetail().catch((e) => setStatus(e.message, true));
}

async function loadDetail() {
  const section = document.getElementById('detail');
  if (!openJob) {
    section.hidden = true;
    return;
  }
  const job = await api('/v1/jobs/' + encodeURIComponent(openJob));
  section.hidden = false;
  document.getElementById('detail-id').textContent = job.id;
  const fields = [
    ['state', job.state], ['kind', job.kind], ['queue', job.queue],
    ['attempts', job.attempts + ' of ' + job.max_attempts], ['run at', when(job.run_at)],
    ['created', when(job.created_at)], ['finished', when(job.finished_at)],
    ['last error', job.last_error || '–'], ['trace', job.traceparent || '–'],
    ['result', job.result === undefined ? '–' : JSON.stringify(job.result)],
  ];
  document.getElementById('detail-fields').replaceChildren(...fields.flatMap(([name, value]) => [
    el('dt', {}, name),
    el('dd', { 'data-field': name, class: name === 'state' ? 'state-' + value : null }, value),
  ]));
  document.getElementById('detail-payload').textContent = JSON.stringify(job.payload, null, 2);
  document.querySelector('#detail-attempts tbody').replaceChildren(...(job.attempts_log || []).map((a) =>
    el('tr', {},
      el('td', {}, a.attempt), el('td', {}, a.worker), el('td', {}, when(a.started_at)),
      el('td', {}, when(a.finished_at)), el('td', { class: 'state-' + (a.outcome === 'succeeded' ? 'succeeded' : 'dead') }, a.outcome || 'running'),
      el('td', { class: 'error' }, a.error || ''))));
}

// ---- loop ------------------------------------------------------------------------------

async function refresh() {
  try {
    await Promise.all([loadQueues(), loadFailing(), loadDetail()]);
    setStatus('updated ' + new Date().toLocaleTimeString());
  } catch (e) {
    setStatus(e.message, true);
  }
}

function schedule() {
  clearInterval(timer);
  if (document.getElementById('auto').checked) timer = setInterval(refresh, REFRESH_MS);
}

document.addEventListener('DOMContentLoaded', () => {
  takeTokenFromFragment();
  document.getElementById('auto').addEventListener('change', schedule);
  document.getElementById('signout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  document.getElementById('detail-close').addEventListener('click', () => {
    openJob = null;
    document.getElementById('detail').hidden = true;
  });
  refresh();
  schedule();
});
