// bench/scenario.js: our own k6 version of the two official Rinha de Backend 2025 tests
// (SPEC.md section 4). It runs offline: k6 built-ins only, no remote imports.
//
// How to run (from the repo root; the service listens on :9999, the processors on :8001/:8002):
//
//   k6 run bench/scenario.js                                   # final: 1 -> 603 VUs over 300 s
//   SCENARIO=preview k6 run bench/scenario.js                  # preview: 1 -> 550 VUs over 60 s
//   SCENARIO=preview MAX_REQUESTS=300 k6 run bench/scenario.js # CI smoke run, about 20 s
//
//   `k6 run` passes the shell environment into __ENV; other subcommands (k6 inspect) need
//   `-e SCENARIO=preview`. Add `-q` to drop k6's progress bar in CI logs. Exit code 108 means
//   the test aborted (a processor admin call failed, e.g. it still holds another TOKEN).
//
//   Add per-second time series for a plotter with k6's own outputs, e.g.
//   k6 run --out csv=bench/out/metrics.csv bench/scenario.js   (or --out json=metrics.json)
//   Every sample carries tags: scenario (payments|audit|processor_schedule), name (payments,
//   audit_backend, audit_pp_default, pp_delay, ...), status and expected_response.
//   Custom metrics, one sample per event: transactions_success / transactions_failure (POST
//   outcome), payments_inconsistency (official count per audit), payments_inconsistency_strict,
//   audits, pp_delay_ms / pp_failing (gauges, tag processor=default|fallback, one sample per
//   schedule change).
//
// Environment variables:
//   SCENARIO                final | preview (default final)
//   BASE_URL                our service (default http://127.0.0.1:9999)
//   PROCESSOR_DEFAULT_URL   default processor (default http://127.0.0.1:8001)
//   PROCESSOR_FALLBACK_URL  fallback processor (default http://127.0.0.1:8002)
//   TOKEN                   admin token set on the processors (default 123)
//   MAX_REQUESTS            optional cap on the total payments of the ramp. When it is smaller
//                           than the full scenario's, the ramp runs for about 20 s with fewer
//                           peak VUs, and the processor schedule is compressed in proportion.
//                           (In the official script MAX_REQUESTS is the peak VU count instead.)
//   RESULTS_PATH            where to write the score JSON (default partial-results.json, or
//                           RESULTS_DIR/partial-results.json when RESULTS_DIR is set)
//   RESULTS_DIR             when set, k6's own summary data is also written to
//                           RESULTS_DIR/k6-summary.json
//   PARTICIPANT             name put in "participante" (default anonymous)

import http from "k6/http";
import { sleep } from "k6";
import exec from "k6/execution";
import { Counter, Gauge, Trend } from "k6/metrics";

// ---------------------------------------------------------------------------------------------
// The two official scenarios. Times in seconds from the start of the test. Fees are in units of
// 1/10000 so that money can be computed with integers only.
// ---------------------------------------------------------------------------------------------
const SCENARIOS = {
  final: {
    vus: 603,
    duration: 300,
    amount: "20.05",
    feeUnits: { default: 700n, fallback: 1000n }, // 7% / 10%
    auditToOffsetMs: 2000, // audit window [now-15 s, now-2 s]
    revenueWindowS: 360, // teardown looks at the last 6 minutes...
    revenueSource: "processors", // ...of the processors' own summaries
    // [time, default delay ms, default failing, fallback delay ms, fallback failing]
    // The official test applies its first stage at 1 s (setup has already reset everything).
    schedule: [
      [1, 0, false, 0, false],
      [30, 1000, false, 0, false],
      [60, 500, false, 0, false],
      [90, 2000, true, 1000, false],
      [120, 5000, true, 5, false],
      [150, 0, false, 5, true],
      [180, 100, false, 5, false],
      [210, 50, false, 0, false],
      [240, 103, false, 10, false],
      [270, 2000, false, 0, false],
    ],
  },
  preview: {
    vus: 550,
    duration: 60,
    amount: "19.90",
    feeUnits: { default: 500n, fallback: 1500n }, // 5% / 15%
    auditToOffsetMs: 1500, // audit window [now-15 s, now-1.5 s]
    revenueWindowS: 70, // teardown looks at the last 70 s...
    revenueSource: "backend", // ...of OUR summary (the preview trusted the backend's numbers)
    schedule: [
      [1, 0, false, 0, false],
      [10, 100, false, 0, false],
      [20, 100, true, 0, false],
      [30, 2000, true, 1000, true],
      [40, 20, false, 20, false],
      [50, 0, false, 5000, false],
    ],
  },
};

const SCENARIO_NAME = (__ENV.SCENARIO || "final").toLowerCase();
const S = SCENARIOS[SCENARIO_NAME];
if (!S) {
  throw new Error(`SCENARIO must be final or preview, got '${__ENV.SCENARIO}'`);
}

const BASE_URL = __ENV.BASE_URL || "http://127.0.0.1:9999";
const PP_URL = {
  default: __ENV.PROCESSOR_DEFAULT_URL || "http://127.0.0.1:8001",
  fallback: __ENV.PROCESSOR_FALLBACK_URL || "http://127.0.0.1:8002",
};
const INITIAL_TOKEN = "123"; // what the processors accept right after they start
const TOKEN = __ENV.TOKEN || INITIAL_TOKEN;
const RESULTS_DIR = __ENV.RESULTS_DIR || "";
const RESULTS_PATH =
  __ENV.RESULTS_PATH || (RESULTS_DIR ? `${RESULTS_DIR}/partial-results.json` : "partial-results.json");
const TIMEOUT = "1500ms"; // the official client gives up on every request after 1500 ms
const AUDIT_EVERY_S = 10;
const AUDIT_FROM_MS = 15000;

// ---------------------------------------------------------------------------------------------
// Scaling for smoke runs. A linear ramp from 1 to V VUs over D s, each VU doing about one
// payment per second, sends about (1 + V) / 2 * D payments. With MAX_REQUESTS below that we keep
// the shape but shrink it: about 20 s and just enough VUs; the schedule shrinks with the ramp so
// every processor phase is still exercised.
// ---------------------------------------------------------------------------------------------
function plan() {
  const full = { vus: S.vus, duration: S.duration };
  const cap = parseInt(__ENV.MAX_REQUESTS || "", 10);
  if (!(cap > 0) || cap >= ((1 + S.vus) / 2) * S.duration) return full;
  let duration = Math.min(S.duration, 20);
  const vus = Math.max(1, Math.min(S.vus, Math.round((2 * cap) / duration - 1)));
  duration = Math.max(1, Math.min(S.duration, Math.ceil((2 * cap) / (1 + vus))));
  return { vus, duration };
}
const PLAN = plan();
const TIME_SCALE = PLAN.duration / S.duration;

export const options = {
  summaryTrendStats: ["avg", "med", "p(95)", "p(99)", "max", "count"],
  // A threshold that always passes: it only makes sure k6 keeps the sub-metric of successful
  // requests, whose p99 is the official p99 (every 2xx/3xx request of the test, any scenario).
  thresholds: {
    "http_req_duration{expected_response:true}": ["max>=0"],
  },
  scenarios: {
    payments: {
      exec: "payments",
      executor: "ramping-vus",
      startVUs: 1,
      gracefulRampDown: "0s",
      stages: [{ target: PLAN.vus, duration: `${PLAN.duration}s` }],
    },
    audit: {
      exec: "audit",
      executor: "constant-vus",
      vus: 1,
      duration: `${PLAN.duration}s`,
    },
    processor_schedule: {
      exec: "processorSchedule",
      executor: "per-vu-iterations",
      vus: 1,
      iterations: 1,
      maxDuration: `${PLAN.duration + 30}s`,
    },
  },
};

// ---------------------------------------------------------------------------------------------
// Metrics. Names of the first four follow the official script so results read the same.
// ---------------------------------------------------------------------------------------------
const transactionsSuccess = new Counter("transactions_success");
const transactionsFailure = new Counter("transactions_failure");
const paymentsInconsistency = new Counter("payments_inconsistency"); // official rule, decides the fine
const paymentsInconsistencyStrict = new Counter("payments_inconsistency_strict"); // |Δ default| + |Δ fallback|
const auditAmountMismatch = new Counter("audit_amount_mismatch"); // audits whose money differs
const audits = new Counter("audits");
const auditErrors = new Counter("audit_errors");
const paymentsOkDuration = new Trend("payments_ok_duration", true); // POST /payments, 2xx only
const ppDelay = new Gauge("pp_delay_ms");
const ppFailing = new Gauge("pp_failing");

// Filled by teardown(), read by handleSummary(): k6 has no other channel between the two.
// Money goes in integer cents and fee rates in 1/10000, so float sums stay exact.
const td = {};
for (const who of ["pp_default", "pp_fallback", "be_default", "be_fallback"]) {
  td[`${who}_requests`] = new Counter(`td_${who}_requests`);
  td[`${who}_cents`] = new Counter(`td_${who}_cents`);
}
td.pp_default_fee_units = new Counter("td_pp_default_fee_units");
td.pp_fallback_fee_units = new Counter("td_pp_fallback_fee_units");
td.errors = new Counter("td_errors");

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------
function adminParams(name, token) {
  return {
    headers: { "Content-Type": "application/json", "X-Rinha-Token": token || TOKEN },
    timeout: TIMEOUT,
    tags: { name },
  };
}

function mustBe(res, status, what) {
  if (res.status !== status) {
    exec.test.abort(`${what}: expected HTTP ${status}, got ${res.status} ${res.error || ""}`);
  }
}

function setProcessor(who, delayMs, failing) {
  const d = http.put(`${PP_URL[who]}/admin/configurations/delay`, JSON.stringify({ delay: delayMs }), adminParams("pp_delay"));
  mustBe(d, 200, `set delay on ${who}`);
  const f = http.put(`${PP_URL[who]}/admin/configurations/failure`, JSON.stringify({ failure: failing }), adminParams("pp_failure"));
  mustBe(f, 200, `set failure on ${who}`);
  ppDelay.add(delayMs, { processor: who });
  ppFailing.add(failing ? 1 : 0, { processor: who });
}

function uuid4() {
  if (typeof crypto !== "undefined" && crypto.randomUUID) return crypto.randomUUID();
  const h = "0123456789abcdef";
  let s = "";
  for (let i = 0; i < 36; i++) {
    if (i === 8 || i === 13 || i === 18 || i === 23) s += "-";
    else if (i === 14) s += "4";
    else if (i === 19) s += h[8 + Math.floor(Math.random() * 4)];
    else s += h[Math.floor(Math.random() * 16)];
  }
  return s;
}

// ISO-8601 UTC with exactly three decimals and Z, the shape the official test sends.
function iso(ms) {
  return new Date(ms).toISOString();
}

function toCents(x) {
  const n = Number(x);
  return Number.isFinite(n) ? Math.round(n * 100) : 0;
}

// Body of a summary answer, or null if the call failed (the official test then uses zeros).
function parseJson(res) {
  if (res.status !== 200) return null;
  try {
    return JSON.parse(res.body);
  } catch (e) {
    return null;
  }
}

function ppView(body) {
  return {
    requests: body ? Number(body.totalRequests) || 0 : 0,
    cents: body ? toCents(body.totalAmount) : 0,
    feeUnits: body ? Math.round((Number(body.feePerTransaction) || 0) * 10000) : 0,
  };
}

function beView(body, who) {
  const part = body && body[who];
  return {
    requests: part ? Number(part.totalRequests) || 0 : 0,
    cents: part ? toCents(part.totalAmount) : 0,
  };
}

// The three summaries over one window, fetched at the same moment like the official test does.
function summaries(fromMs, toMs, tagPrefix) {
  const q = `?from=${iso(fromMs)}&to=${iso(toMs)}`;
  const [be, d, f] = http.batch([
    ["GET", `${BASE_URL}/payments-summary${q}`, null, { timeout: TIMEOUT, tags: { name: `${tagPrefix}_backend` } }],
    ["GET", `${PP_URL.default}/admin/payments-summary${q}`, null, adminParams(`${tagPrefix}_pp_default`)],
    ["GET", `${PP_URL.fallback}/admin/payments-summary${q}`, null, adminParams(`${tagPrefix}_pp_fallback`)],
  ]);
  const beBody = parseJson(be);
  const dBody = parseJson(d);
  const fBody = parseJson(f);
  for (const [res, body, what] of [[be, beBody, "backend"], [d, dBody, "default"], [f, fBody, "fallback"]]) {
    if (!body) console.error(`${what} summary ${q} failed: HTTP ${res.status} ${res.error || ""}`);
  }
  return {
    errors: [beBody, dBody, fBody].filter((b) => !b).length,
    be: { default: beView(beBody, "default"), fallback: beView(beBody, "fallback") },
    pp: { default: ppView(dBody), fallback: ppView(fBody) },
  };
}

// Round half away from zero to `dp` decimals the way big.js does it: on the number's shortest
// decimal text, not on its binary value. Returns the result as an integer scaled by 10^dp.
function roundScaled(x, dp) {
  let s = String(x);
  if (/e/i.test(s)) {
    // Only tiny values print in exponent form here; they round to 0 at 2 decimals.
    if (Math.abs(x) < 1) return 0;
    s = BigInt(Math.round(x)).toString();
  }
  const neg = s.startsWith("-");
  if (neg) s = s.slice(1);
  const [ip, fp = ""] = s.split(".");
  const frac = (fp + "0".repeat(dp + 1)).slice(0, dp + 1);
  let n = Number(ip + frac.slice(0, dp));
  if (frac[dp] >= "5") n += 1;
  return neg ? -n : n;
}

// BigInt in units of 10^-scale -> Number with exactly that decimal value.
function dec(n, scale) {
  const neg = n < 0n;
  const digits = (neg ? -n : n).toString().padStart(scale + 1, "0");
  const text = scale ? `${digits.slice(0, -scale)}.${digits.slice(-scale)}` : digits;
  return Number((neg ? "-" : "") + text);
}

function metricCount(data, name) {
  const m = data.metrics[name];
  return m && m.values && typeof m.values.count === "number" ? m.values.count : 0;
}

// ---------------------------------------------------------------------------------------------
// setup: a clean slate on both processors and on our service, like the official test.
// ---------------------------------------------------------------------------------------------
export function setup() {
  for (const who of ["default", "fallback"]) {
    // The token is set using the processor's initial token; if an earlier run already set
    // TOKEN, that one is accepted instead.
    const body = JSON.stringify({ token: TOKEN });
    let r = http.put(`${PP_URL[who]}/admin/configurations/token`, body, adminParams("pp_token", INITIAL_TOKEN));
    if (r.status !== 204 && TOKEN !== INITIAL_TOKEN) {
      r = http.put(`${PP_URL[who]}/admin/configurations/token`, body, adminParams("pp_token", TOKEN));
    }
    mustBe(r, 204, `set token on ${who}`);
    // An earlier run may have left a processor slow or failing.
    setProcessor(who, 0, false);
    mustBe(http.post(`${PP_URL[who]}/admin/purge-payments`, null, adminParams("pp_purge")), 200, `purge ${who}`);
  }
  // The official test ignores a failure here (purging is optional for the backend).
  const r = http.post(`${BASE_URL}/purge-payments`, null, { timeout: TIMEOUT, tags: { name: "purge_backend" } });
  if (r.status < 200 || r.status > 299) console.warn(`POST /purge-payments answered ${r.status} ${r.error || ""}`);
  return { scenario: SCENARIO_NAME, vus: PLAN.vus, duration: PLAN.duration };
}

// ---------------------------------------------------------------------------------------------
// payments: one POST per iteration, then one second of sleep.
// ---------------------------------------------------------------------------------------------
const AMOUNT_NUMBER = Number(S.amount); // sent as a JSON number (19.9 / 20.05), like the official

export function payments() {
  const body = JSON.stringify({ correlationId: uuid4(), amount: AMOUNT_NUMBER });
  const res = http.post(`${BASE_URL}/payments`, body, {
    headers: { "Content-Type": "application/json" },
    timeout: TIMEOUT,
    responseType: "none", // the body is never read; don't keep 90k of them in memory
    tags: { name: "payments" },
  });
  // The official test treats exactly these statuses as success.
  if (res.status === 200 || res.status === 201 || res.status === 202 || res.status === 204) {
    transactionsSuccess.add(1);
    paymentsOkDuration.add(res.timings.duration);
  } else {
    transactionsFailure.add(1);
  }
  sleep(1);
}

// ---------------------------------------------------------------------------------------------
// processor_schedule: one VU walks through the schedule, sleeping until each moment.
// ---------------------------------------------------------------------------------------------
export function processorSchedule() {
  const t0 = exec.scenario.startTime; // ms since epoch; the scenario starts with the test
  for (const [t, dDelay, dFail, fDelay, fFail] of S.schedule) {
    const wait = t0 + t * TIME_SCALE * 1000 - Date.now();
    if (wait > 0) sleep(wait / 1000);
    setProcessor("default", dDelay, dFail);
    setProcessor("fallback", fDelay, fFail);
    console.info(`t=${((Date.now() - t0) / 1000).toFixed(1)}s default ${dDelay}ms${dFail ? " failing" : ""} | fallback ${fDelay}ms${fFail ? " failing" : ""}`);
  }
}

// ---------------------------------------------------------------------------------------------
// audit: every ~10 s, our summary against each processor's over the same recent window.
// ---------------------------------------------------------------------------------------------
export function audit() {
  const now = Date.now();
  const s = summaries(now - AUDIT_FROM_MS, now - S.auditToOffsetMs, "audit");
  const dd = s.be.default.requests - s.pp.default.requests;
  const df = s.be.fallback.requests - s.pp.fallback.requests;
  // final: every payment counted on the wrong side or missing counts.
  // preview: the official preview took the absolute value of the NET difference, so a payment
  // we put under default that the fallback processed cancelled out.
  const official = SCENARIO_NAME === "final" ? Math.abs(dd) + Math.abs(df) : Math.abs(dd + df);
  const strict = Math.abs(dd) + Math.abs(df);
  const moneyDiffers =
    s.be.default.cents !== s.pp.default.cents || s.be.fallback.cents !== s.pp.fallback.cents;
  audits.add(1);
  if (s.errors) auditErrors.add(1);
  paymentsInconsistency.add(official);
  paymentsInconsistencyStrict.add(strict);
  if (moneyDiffers) auditAmountMismatch.add(1);
  if (official > 0 || strict > 0 || moneyDiffers) {
    console.warn(
      `audit inconsistent (official ${official}, strict ${strict}): ` +
        `default ours ${s.be.default.requests}/${s.be.default.cents}c vs processor ${s.pp.default.requests}/${s.pp.default.cents}c, ` +
        `fallback ours ${s.be.fallback.requests}/${s.be.fallback.cents}c vs processor ${s.pp.fallback.requests}/${s.pp.fallback.cents}c`,
    );
  }
  sleep(AUDIT_EVERY_S);
}

// ---------------------------------------------------------------------------------------------
// teardown: fetch the numbers the score is computed from and hand them to handleSummary.
// ---------------------------------------------------------------------------------------------
export function teardown() {
  const to = Date.now();
  const from = to - S.revenueWindowS * 1000;
  console.info(`teardown summaries from ${iso(from)} to ${iso(to)}`);
  const s = summaries(from, to, "teardown");
  if (s.errors) td.errors.add(s.errors);
  for (const who of ["default", "fallback"]) {
    td[`pp_${who}_requests`].add(s.pp[who].requests);
    td[`pp_${who}_cents`].add(s.pp[who].cents);
    td[`pp_${who}_fee_units`].add(s.pp[who].feeUnits);
    td[`be_${who}_requests`].add(s.be[who].requests);
    td[`be_${who}_cents`].add(s.be[who].cents);
  }
}

// ---------------------------------------------------------------------------------------------
// handleSummary: the official score, computed exactly.
// Money is carried as BigInt: amounts in cents (10^-2), fee rates in 10^-4, so gross and fees
// are in 10^-6 and the final total (times a percentage in 10^-2) in 10^-8. No float rounding.
// ---------------------------------------------------------------------------------------------
export function handleSummary(data) {
  const succeeded = metricCount(data, "transactions_success");
  const failed = metricCount(data, "transactions_failure");
  const inconsistencies = metricCount(data, "payments_inconsistency");

  // Where the revenue is read: final = the processors' admin summaries, preview = our summary.
  const src = S.revenueSource === "processors" ? "pp" : "be";
  const processed = {};
  for (const who of ["default", "fallback"]) {
    const cents = BigInt(metricCount(data, `td_${src}_${who}_cents`));
    const gross6 = cents * 10000n;
    const fee6 = cents * S.feeUnits[who];
    processed[who] = { requests: metricCount(data, `td_${src}_${who}_requests`), gross6, fee6 };
  }
  const gross6 = processed.default.gross6 + processed.fallback.gross6;
  const fee6 = processed.default.fee6 + processed.fallback.fee6;
  const partial6 = gross6 - fee6;

  // p99 of every successful request, rounded to 2 decimals first, then the bonus from that,
  // also rounded to 2 decimals (half away from zero, as big.js rounds).
  const okDur = data.metrics["http_req_duration{expected_response:true}"];
  const p99Raw = okDur && okDur.values ? okDur.values["p(99)"] : undefined;
  // The threshold keeps the sub-metric alive even with no sample; then there is no p99 at all.
  const hasP99 = okDur && okDur.values && okDur.values.count > 0 && Number.isFinite(p99Raw);
  const p99 = hasP99 ? roundScaled(p99Raw, 2) / 100 : null;
  const bonusPct = hasP99 ? Math.max(roundScaled((11 - p99) * 0.02, 2), 0) : 0; // in %
  const finePct = inconsistencies > 0 ? 35 : 0; // in %

  const liquid8 = partial6 * BigInt(100 + bonusPct - finePct);
  const fine8 = partial6 * BigInt(finePct);

  const numProcessed = processed.default.requests + processed.fallback.requests;
  const lag = succeeded - numProcessed;

  // Diagnostics that the official file does not have, kept apart under "bench".
  const ppCount = (who) => metricCount(data, `td_pp_${who}_requests`);
  const beCount = (who) => metricCount(data, `td_be_${who}_requests`);
  const ppCents = (who) => metricCount(data, `td_pp_${who}_cents`);
  const beCents = (who) => metricCount(data, `td_be_${who}_cents`);
  const postDur = data.metrics.payments_ok_duration;
  const amountCents = BigInt(toCents(S.amount));
  // Best case for this run: every accepted payment processed by default with p99 <= 1 ms.
  const ceiling8 = BigInt(succeeded) * amountCents * (10000n - S.feeUnits.default) * 120n;

  const result = {
    timestamp: new Date().toISOString(),
    participante: __ENV.PARTICIPANT || "anonymous",
    total_liquido: dec(liquid8, 8),
    total_bruto: dec(gross6, 6),
    total_taxas: dec(fee6, 6),
    descricao:
      "total_liquido é a pontuação: (total_bruto - total_taxas) * (1 + p99.bonus - multa.porcentagem).",
    p99: {
      valor: hasP99 ? `${p99}ms` : "sem requisições bem sucedidas",
      bonus: `${bonusPct}%`,
      max_requests: String(PLAN.vus),
      descricao: "Bônus: max((11 - p99.valor) * 0.02, 0), arredondado a 2 casas.",
    },
    multa: {
      porcentagem: finePct / 100,
      total: dec(fine8, 8),
      composicao: {
        num_inconsistencias: inconsistencies,
        descricao: "Multa de 35% se num_inconsistencias > 0.",
      },
    },
    caixa_dois: {
      detectado: lag < 0,
      descricao: "Lag negativo: mais pagamentos registrados do que solicitados (desclassifica).",
    },
    lag: {
      num_pagamentos_total: numProcessed,
      num_pagamentos_solicitados: succeeded,
      lag,
      descricao: "Pagamentos aceitos que não foram computados (não rendem nada).",
    },
    pagamentos_solicitados: {
      qtd_sucesso: succeeded,
      qtd_falha: failed,
      descricao: "Respostas de POST /payments com sucesso (200/201/202/204) e com erro ou timeout.",
    },
    pagamentos_realizados_default: {
      total_bruto: dec(processed.default.gross6, 6),
      num_pagamentos: processed.default.requests,
      total_taxas: dec(processed.default.fee6, 6),
      descricao: `Pagamentos no Payment Processor Default (fonte: ${S.revenueSource === "processors" ? "processador" : "nosso resumo"}).`,
    },
    pagamentos_realizados_fallback: {
      total_bruto: dec(processed.fallback.gross6, 6),
      num_pagamentos: processed.fallback.requests,
      total_taxas: dec(processed.fallback.fee6, 6),
      descricao: `Pagamentos no Payment Processor Fallback (fonte: ${S.revenueSource === "processors" ? "processador" : "nosso resumo"}).`,
    },
    bench: {
      cenario: SCENARIO_NAME,
      vus_max: PLAN.vus,
      duracao_s: PLAN.duration,
      escala_tempo: TIME_SCALE,
      valor_pagamento: Number(S.amount),
      taxas: { default: Number(S.feeUnits.default) / 10000, fallback: Number(S.feeUnits.fallback) / 10000 },
      taxas_informadas_processadores: {
        default: metricCount(data, "td_pp_default_fee_units") / 10000,
        fallback: metricCount(data, "td_pp_fallback_fee_units") / 10000,
      },
      fonte_receita: S.revenueSource,
      janela_receita_s: S.revenueWindowS,
      p99_bruto_ms: hasP99 ? p99Raw : null,
      p99_post_payments_ms: postDur ? postDur.values["p(99)"] : null,
      auditorias: metricCount(data, "audits"),
      auditorias_com_erro: metricCount(data, "audit_errors"),
      inconsistencias_estritas: metricCount(data, "payments_inconsistency_strict"),
      auditorias_valor_divergente: metricCount(data, "audit_amount_mismatch"),
      erros_teardown: metricCount(data, "td_errors"),
      // Both views over the revenue window: any difference here is an end-of-test inconsistency.
      processadores: {
        default: { num_pagamentos: ppCount("default"), total_bruto: ppCents("default") / 100 },
        fallback: { num_pagamentos: ppCount("fallback"), total_bruto: ppCents("fallback") / 100 },
      },
      backend: {
        default: { num_pagamentos: beCount("default"), total_bruto: beCents("default") / 100 },
        fallback: { num_pagamentos: beCount("fallback"), total_bruto: beCents("fallback") / 100 },
      },
      lag_processadores: succeeded - ppCount("default") - ppCount("fallback"),
      teto_total_liquido: dec(ceiling8, 8),
      descricao:
        "Diagnóstico nosso, fora do arquivo oficial. teto_total_liquido: todos os pagamentos aceitos no default com p99 <= 1 ms.",
    },
  };

  const out = {};
  out[RESULTS_PATH] = JSON.stringify(result, null, 2) + "\n";
  if (RESULTS_DIR) out[`${RESULTS_DIR}/k6-summary.json`] = JSON.stringify(data, null, 2) + "\n";
  out.stdout = textReport(result, data);
  return out;
}

function textReport(r, data) {
  const b = r.bench;
  const n = (x) => (typeof x === "number" ? x.toFixed(2) : String(x));
  const share = b.teto_total_liquido > 0 ? ((100 * r.total_liquido) / b.teto_total_liquido).toFixed(1) : "-";
  const reqs = data.metrics.http_reqs ? data.metrics.http_reqs.values.count : 0;
  return [
    "",
    `== rinha bench: ${b.cenario} (${b.vus_max} VUs, ${b.duracao_s} s ramp) ==`,
    `POST /payments   ok ${r.pagamentos_solicitados.qtd_sucesso}  failed ${r.pagamentos_solicitados.qtd_falha}   (all HTTP requests: ${reqs})`,
    `p99              ${r.p99.valor} -> bonus ${r.p99.bonus}   (POST only: ${b.p99_post_payments_ms === null ? "-" : b.p99_post_payments_ms.toFixed(2) + "ms"})`,
    `audits           ${b.auditorias} (errors ${b.auditorias_com_erro})  inconsistencies official ${r.multa.composicao.num_inconsistencias}, strict ${b.inconsistencias_estritas}, money-mismatch audits ${b.auditorias_valor_divergente}`,
    `processed        default ${r.pagamentos_realizados_default.num_pagamentos}  fallback ${r.pagamentos_realizados_fallback.num_pagamentos}  lag ${r.lag.lag}${r.caixa_dois.detectado ? "  ** MORE THAN REQUESTED: disqualified **" : ""}`,
    `end check        processors ${b.processadores.default.num_pagamentos}/${b.processadores.fallback.num_pagamentos} vs ours ${b.backend.default.num_pagamentos}/${b.backend.fallback.num_pagamentos} (default/fallback, last ${b.janela_receita_s} s)`,
    `money            gross ${n(r.total_bruto)}  fees ${n(r.total_taxas)}  fine ${r.multa.porcentagem * 100}%`,
    `SCORE            total_liquido ${n(r.total_liquido)}   (${share}% of the ${n(b.teto_total_liquido)} ceiling)`,
    `written          ${RESULTS_PATH}${RESULTS_DIR ? `, ${RESULTS_DIR}/k6-summary.json` : ""}`,
    "",
  ].join("\n");
}
