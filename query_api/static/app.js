// The Usage page. Plain ES module, no build step: it reads the /v1/usage/* endpoints of the
// origin that served it, with the API key the user entered once (kept in localStorage).
// Chart.js (MIT) is loaded from our own origin by index.html before this module runs.

import {
  filenameFromDisposition,
  filterLabel,
  filterParams,
  formatAttributes,
  formatDuration,
  formatInteger,
  formatPercent,
  formatRelativeTime,
  formatTokens,
  formatUnpricedNote,
  formatRepricedNote,
  formatCacheSavings,
  formatUsd,
  groupByLabel,
  groupLabel,
  tierLabel,
} from "./format.js";

const STORAGE_KEY = "llmUsage.apiKey";
const STORAGE_PERIOD = "llmUsage.period";
const STORAGE_GROUP_BY = "llmUsage.groupBy";
const GROUP_BY_PATTERN = /^(source|model|attr\.[a-z][a-z0-9_.]{0,63})$/;
const PERIODS = ["24h", "7d", "30d"];
const PAGE_SIZE = 20;
const TOP_LIMIT = 10;
const SEARCH_DEBOUNCE_MS = 300;
const EMPTY_MESSAGE = "No usage in this period";
const SOURCES = {
  chat: { label: "Chat", color: "#2563eb" },
  agent: { label: "Agent", color: "#7c3aed" },
  memory: { label: "Memory", color: "#0d9488" },
};
const TIME_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

const $ = (id) => document.getElementById(id);

// --- storage (localStorage can be unavailable: private modes, blocked storage) ----------
function loadSetting(name) {
  try {
    return window.localStorage.getItem(name);
  } catch {
    return null;
  }
}
function saveSetting(name, value) {
  try {
    if (value == null) window.localStorage.removeItem(name);
    else window.localStorage.setItem(name, value);
  } catch {
    /* the page still works for this visit */
  }
}

// --- first look: a link with the key in its fragment (`/#key=...`, printed by `make run`) --
// The fragment never reaches the server; the key is stored as the key dialog stores it and
// removed from the address bar (and so from history and bookmarks) before anything loads.
(function adoptKeyFromFragment() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  const key = (params.get("key") || "").trim();
  if (!params.has("key")) return;
  if (key) saveSetting(STORAGE_KEY, key);
  params.delete("key");
  const rest = params.toString();
  const url = window.location.pathname + window.location.search + (rest ? `#${rest}` : "");
  window.history.replaceState(window.history.state, "", url);
})();

// --- state ---------------------------------------------------------------------------
const storedPeriod = loadSetting(STORAGE_PERIOD);
const storedGroupBy = loadSetting(STORAGE_GROUP_BY);
const state = {
  period: PERIODS.includes(storedPeriod) ? storedPeriod : "7d",
  granularity: "day",
  topBy: "cost",
  source: "",
  search: "",
  page: 1,
  // the Group by choice, and the page-wide filters (chips): they survive reloads of the data
  // (period changes included); the source one also sets the records table's source filter
  groupBy: GROUP_BY_PATTERN.test(storedGroupBy ?? "") ? storedGroupBy : "source",
  pageSource: "",
  attributes: {}, // attribute key -> value, ANDed
};
state.granularity = defaultGranularity(state.period);

function defaultGranularity(period) {
  return period === "24h" ? "hour" : "day";
}

// --- API -----------------------------------------------------------------------------
class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

const isAuthError = (error) => error instanceof ApiError && (error.status === 401 || error.status === 403);

async function api(path, params, signal) {
  const key = loadSetting(STORAGE_KEY);
  if (!key) throw new ApiError("An API key is needed to show usage.", 401);
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(params)) {
    if (value !== "" && value != null) url.searchParams.set(name, String(value));
  }
  let response;
  try {
    response = await fetch(url, {
      headers: { Authorization: `Bearer ${key}`, Accept: "application/json" },
      cache: "no-store",
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError("The usage API could not be reached. Check your connection.", 0);
  }
  if (!response.ok) {
    let detail = "";
    try {
      const body = await response.json();
      if (typeof body.detail === "string") detail = body.detail;
      else if (Array.isArray(body.detail)) detail = body.detail.map((d) => d.msg).join("; ");
    } catch {
      /* not JSON */
    }
    const prefix = `The usage API failed (HTTP ${response.status})`;
    throw new ApiError(detail ? `${prefix}: ${detail}` : `${prefix}.`, response.status);
  }
  return response.json();
}

// --- panel states: loading / ready / empty / error ------------------------------------
const inflight = new Map();

function setPanelState(panel, panelState, message = "", retry = null) {
  panel.dataset.state = panelState;
  panel.setAttribute("aria-busy", String(panelState === "loading"));
  const box = panel.querySelector(".state-message");
  if (!box) return;
  box.replaceChildren();
  box.classList.toggle("error", panelState === "error");
  box.hidden = !(panelState === "empty" || panelState === "error");
  if (box.hidden) return;
  box.append(document.createTextNode(message));
  if (retry) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link-button";
    button.textContent = "Retry";
    button.addEventListener("click", retry);
    box.append(button);
  }
}

/** Load one panel: abort its previous request, show loading, render, or show the error. */
async function loadPanel(panelId, loader, render) {
  const panel = $(panelId);
  inflight.get(panelId)?.abort();
  const controller = new AbortController();
  inflight.set(panelId, controller);
  setPanelState(panel, "loading");
  try {
    const data = await loader(controller.signal);
    if (controller.signal.aborted) return;
    const emptyMessage = render(data);
    if (emptyMessage) setPanelState(panel, "empty", emptyMessage);
    else setPanelState(panel, "ready");
    // for load-time measurement (tests/browser/measure_page_load.py, real-user monitoring)
    performance.mark(`usage-panel-done:${panelId}`);
  } catch (error) {
    if (controller.signal.aborted || error.name === "AbortError") return;
    if (isAuthError(error)) {
      setPanelState(panel, "error", "The API key was not accepted.");
      // the other panels' requests fail the same way: ask once
      if (!dialog.open) {
        askForKey(
          loadSetting(STORAGE_KEY)
            ? `The API key was rejected (HTTP ${error.status}). Check it and enter it again.`
            : "",
        );
      }
      return;
    }
    console.error(`${panelId}:`, error);
    const message = error instanceof ApiError ? error.message : `Could not show this: ${error.message}`;
    setPanelState(panel, "error", message, () => loadPanel(panelId, loader, render));
  } finally {
    if (inflight.get(panelId) === controller) inflight.delete(panelId);
  }
}

/** The window and the page-wide filters, for every /v1/usage request of the page. */
const windowParams = () => ({ period: state.period, ...filterParams(state.pageSource, state.attributes) });

// --- summary cards -------------------------------------------------------------------
function setCard(id, display, raw, title, sub = "", warn = false) {
  const card = $(id);
  const value = card.querySelector(".value");
  value.textContent = display;
  value.dataset.value = raw == null ? "" : String(raw);
  value.title = title;
  const subline = card.querySelector(".sub");
  subline.textContent = sub;
  subline.classList.toggle("warn", warn);
}

function renderSummary(s) {
  const unpriced = Number(s.unpriced_calls || 0);
  const models = s.unpriced_models || [];
  setCard(
    "card-total-cost",
    formatUsd(s.total_cost_usd),
    s.total_cost_usd,
    `$${s.total_cost_usd} exactly`,
    formatUnpricedNote(unpriced, models),
    unpriced > 0,
  );
  // every unknown model with its calls, also those the card line leaves out
  $("card-total-cost").querySelector(".sub").title = models.length
    ? "Not in the price book (cost unknown, counted as $0):\n" +
      models.map((m) => `${m.model}: ${formatInteger(m.calls)} calls`).join("\n")
    : "";
  const repriced = $("card-total-cost").querySelector(".repriced");
  repriced.textContent = formatRepricedNote(s.repriced_at, Date.now());
  repriced.title = s.repriced_at ? `llm-usage reprice changed these calls at ${s.repriced_at}` : "";
  repriced.hidden = !repriced.textContent;
  // what prompt caching saved (reads) and cost on top (writes), exact in the tooltip
  const savings = $("cache-savings");
  savings.textContent = formatCacheSavings(s.cache_read_savings_usd, s.cache_write_premium_usd);
  savings.dataset.saved = s.cache_read_savings_usd ?? "";
  savings.dataset.premium = s.cache_write_premium_usd ?? "";
  savings.title = savings.textContent
    ? `Cache reads saved $${s.cache_read_savings_usd} against the input price; ` +
      `cache writes cost $${s.cache_write_premium_usd} more than it (exactly)`
    : "";
  savings.hidden = !savings.textContent;
  const cacheRead = Number(s.cache_read_input_tokens || 0);
  const cacheWrite = Number(s.cache_creation_input_tokens || 0);
  setCard(
    "card-input-tokens",
    formatTokens(s.input_tokens),
    s.input_tokens,
    `${formatInteger(s.input_tokens)} input tokens`,
    cacheRead || cacheWrite
      ? `+ ${formatTokens(cacheRead)} cache read · ${formatTokens(cacheWrite)} cache write`
      : "",
  );
  setCard(
    "card-output-tokens",
    formatTokens(s.output_tokens),
    s.output_tokens,
    `${formatInteger(s.output_tokens)} output tokens`,
  );
  setCard("card-calls", formatInteger(s.calls), s.calls, `${formatInteger(s.calls)} API calls`, periodLabel());
  setCard(
    "card-avg-cost",
    formatUsd(s.avg_cost_per_call_usd),
    s.avg_cost_per_call_usd,
    `$${s.avg_cost_per_call_usd} per call exactly`,
    "total cost ÷ calls",
  );
  return Number(s.calls) === 0 ? EMPTY_MESSAGE : "";
}

function periodLabel() {
  return { "24h": "last 24 hours", "7d": "last 7 days", "30d": "last 30 days" }[state.period];
}

const loadSummary = () =>
  loadPanel("cards", (signal) => api("v1/usage/summary", windowParams(), signal), renderSummary);

// --- cost over time ------------------------------------------------------------------
let costChart = null;
let costPoints = [];

function chartLibrary() {
  if (typeof window.Chart !== "function") throw new Error("the chart library did not load");
  return window.Chart;
}

function bucketFormatter(granularity) {
  const options =
    granularity === "hour"
      ? { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" }
      : { weekday: "short", month: "short", day: "numeric" };
  return new Intl.DateTimeFormat(undefined, { ...options, timeZone: TIME_ZONE });
}

const reducedMotion = () => window.matchMedia("(prefers-reduced-motion: reduce)").matches;

function axisUsd(value) {
  const n = Number(value);
  if (n === 0) return "$0";
  return new Intl.NumberFormat("en-US", {
    style: "currency",
    currency: "USD",
    maximumSignificantDigits: 3,
  }).format(n);
}

function renderTimeseries(data) {
  const Chart = chartLibrary();
  const points = data.points || [];
  costPoints = points;
  const format = bucketFormatter(state.granularity);
  const labels = points.map((p) => format.format(new Date(p.bucket_start)));
  const values = points.map((p) => Number(p.cost_usd));
  if (!costChart) {
    costChart = new Chart($("cost-chart"), {
      type: "bar",
      data: {
        labels,
        datasets: [
          {
            label: "Cost (USD)",
            data: values,
            backgroundColor: "rgba(29, 78, 216, 0.78)",
            hoverBackgroundColor: "#1d4ed8",
            borderRadius: 3,
            maxBarThickness: 42,
          },
        ],
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: { duration: reducedMotion() ? 0 : 250 },
        interaction: { mode: "index", intersect: false },
        plugins: {
          legend: { display: false },
          tooltip: {
            callbacks: {
              label: (ctx) => {
                const p = costPoints[ctx.dataIndex] || {};
                return [
                  `Cost: ${formatUsd(p.cost_usd)}`,
                  `Calls: ${formatInteger(p.calls)}`,
                  `Tokens: ${formatTokens(p.input_tokens)} in · ${formatTokens(p.output_tokens)} out`,
                  ...(alertsByBucket.get(ctx.dataIndex) || []).map((a) => `⚠ ${ALERT_KINDS[a.kind]}: ${a.name || a.source_id || "tenant"}`),
                ];
              },
            },
          },
        },
        scales: {
          x: { grid: { display: false }, ticks: { autoSkip: true, maxRotation: 0, color: "#667085" } },
          y: {
            beginAtZero: true,
            grid: { color: "#eef0f3" },
            border: { display: false },
            ticks: { callback: axisUsd, color: "#667085", maxTicksLimit: 6 },
          },
        },
      },
    });
  } else {
    costChart.data.labels = labels;
    costChart.data.datasets[0].data = values;
    costChart.update();
  }
  markAlertBuckets();
  $("cost-chart").dataset.points = String(points.length);
  $("tz-note").textContent =
    `${state.granularity === "hour" ? "Hourly" : "Daily"} buckets in your time zone, ${TIME_ZONE}.`;
  return points.some((p) => Number(p.calls) > 0) ? "" : EMPTY_MESSAGE;
}

const loadTimeseries = () =>
  loadPanel(
    "timeseries",
    (signal) =>
      api(
        "v1/usage/timeseries",
        { ...windowParams(), granularity: state.granularity, tz: TIME_ZONE },
        signal,
      ),
    renderTimeseries,
  );

// --- cost by source, model or attribute (the Group by selector) ----------------------
// The donut and the table below it show /v1/usage/breakdown?by=<state.groupBy>. Clicking a
// source or an attribute value filters the whole page (a chip); the API has no model filter,
// so models, "(none)" (calls without the attribute) and "Other" are not clickable.
const GROUP_COLORS = ["#2563eb", "#7c3aed", "#0d9488", "#ea580c", "#db2777", "#ca8a04", "#16a34a", "#0891b2"];
const NONE_COLOR = "#98a2b3";
const OTHER_COLOR = "#d0d5dd";
const BREAKDOWN_LIMIT = 20;
const EXPORT_BREAKDOWN_LIMIT = 1000; // the export lists every group up to the API's maximum
let sourceChart = null;
let shownGroups = []; // the donut's slices, in order
let shownBy = "source"; // and what they group by

function groupColor(group, index, by) {
  if (group.kind === "other") return OTHER_COLOR;
  if (group.key === null || group.key === undefined) return NONE_COLOR;
  if (by === "source" && SOURCES[group.key]) return SOURCES[group.key].color;
  return GROUP_COLORS[index % GROUP_COLORS.length];
}

/** The page filter a click on `group` sets, as [name, value]; null when it cannot filter. */
function groupFilter(group, by) {
  if (!group || group.kind === "other" || group.key === null || group.key === undefined) return null;
  if (by === "source") return ["source", group.key];
  if (by.startsWith("attr.")) return [by, group.key];
  return null;
}

function notClickableReason(group, by) {
  if (group.kind === "other") return `The groups beyond the first ${BREAKDOWN_LIMIT}, summed`;
  if (group.key === null) return `Calls without the attribute ${groupByLabel(by)}`;
  return "The usage API has no model filter";
}

const groupTokens = (g) =>
  Number(g.input_tokens || 0) +
  Number(g.output_tokens || 0) +
  Number(g.cache_read_tokens || 0) +
  Number(g.cache_write_tokens || 0);

function groupName(group, by) {
  if (group.kind === "other") return `Other (${formatInteger(group.groups)} more)`;
  return groupLabel(by, group.key);
}

function breakdownRow(group, by, total) {
  const tr = document.createElement("tr");
  tr.dataset.kind = group.kind === "other" ? "other" : group.key === null ? "none" : "group";
  if (group.key !== null && group.kind !== "other") tr.dataset.key = group.key;
  const keyCell = cell("group-key");
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.background = group.color;
  keyCell.append(swatch);
  const filter = groupFilter(group, by);
  const name = groupName(group, by);
  if (filter) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "group-link";
    button.textContent = name;
    button.title = `Show only ${filterLabel(...filter)} on the whole page`;
    button.addEventListener("click", () => setFilter(...filter));
    keyCell.append(button);
  } else {
    const label = document.createElement("span");
    label.className = "group-name";
    label.textContent = name;
    label.title = notClickableReason(group, by);
    keyCell.append(label);
  }
  const tokens = cell("num tokens", formatTokens(groupTokens(group)));
  tokens.title =
    `${formatInteger(group.input_tokens)} input · ${formatInteger(group.output_tokens)} output · ` +
    `${formatInteger(group.cache_write_tokens)} cache write · ` +
    `${formatInteger(group.cache_read_tokens)} cache read`;
  tr.append(
    keyCell,
    cell("num calls", formatInteger(group.calls)),
    tokens,
    cell("num cost", formatUsd(group.cost_usd), `$${group.cost_usd}`),
    shareCell(group, total),
  );
  return tr;
}

function renderBreakdown(data) {
  const Chart = chartLibrary();
  const by = data.by || state.groupBy;
  const total = Number(data.total_cost_usd || 0);
  const rows = (data.groups || []).map((g) => ({ ...g, kind: "group" }));
  if (data.other) rows.push({ ...data.other, kind: "other" });
  let named = 0; // the palette goes to the named groups, in order
  rows.forEach((g) => (g.color = groupColor(g, g.kind === "other" || g.key === null ? 0 : named++, by)));
  // by source: always the three sources, in their order (a zero slice is simply not drawn)
  const zero = { calls: 0, cost_usd: "0", input_tokens: 0, output_tokens: 0 };
  const slices =
    by === "source"
      ? Object.keys(SOURCES).map(
          (source) =>
            rows.find((g) => g.key === source) ?? { ...zero, key: source, kind: "group", color: SOURCES[source].color },
        )
      : rows;
  shownGroups = slices;
  shownBy = by;
  const labels = slices.map((g) => groupName(g, by));
  const values = slices.map((g) => Number(g.cost_usd));
  const colors = slices.map((g) => g.color);
  if (!sourceChart) {
    sourceChart = new Chart($("source-chart"), {
      type: "doughnut",
      data: { labels, datasets: [{ data: values, backgroundColor: colors, borderWidth: 2 }] },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        cutout: "62%",
        animation: { duration: reducedMotion() ? 0 : 250 },
        onClick: (_event, elements) => {
          const filter = groupFilter(shownGroups[elements[0]?.index], shownBy);
          if (filter) setFilter(...filter);
        },
        onHover: (event, elements) => {
          const target = event.native?.target;
          if (target) target.style.cursor = groupFilter(shownGroups[elements[0]?.index], shownBy) ? "pointer" : "default";
        },
        plugins: {
          legend: { display: false },
          tooltip: {
            callbacks: { label: (ctx) => ` ${ctx.label}: ${formatUsd(shownGroups[ctx.dataIndex]?.cost_usd)}` },
          },
        },
      },
    });
  } else {
    sourceChart.data.labels = labels;
    sourceChart.data.datasets[0].data = values;
    sourceChart.data.datasets[0].backgroundColor = colors;
    sourceChart.update();
  }
  const heading = `Cost by ${by === "source" || by === "model" ? by : groupByLabel(by)}`;
  $("source-chart").setAttribute("aria-label", heading);
  $("source-chart").dataset.by = by;
  $("breakdown-key-head").textContent = groupByLabel(by);
  // the legend of the three sources (by source only: otherwise the table is the legend)
  const legend = $("source-legend");
  legend.hidden = by !== "source";
  legend.replaceChildren(
    ...(by === "source" ? slices : []).map((g) => {
      const li = document.createElement("li");
      li.dataset.source = g.key;
      li.innerHTML =
        '<span class="swatch"></span><span class="label"></span>' +
        '<span class="amount"></span><span class="share"></span>';
      li.querySelector(".swatch").classList.add(g.key);
      li.querySelector(".label").textContent = `${SOURCES[g.key].label} · ${formatInteger(g.calls)} calls`;
      li.querySelector(".amount").textContent = formatUsd(g.cost_usd);
      li.querySelector(".amount").title = `$${g.cost_usd}`;
      li.querySelector(".share").textContent = formatPercent(Number(g.cost_usd), total);
      return li;
    }),
  );
  $("breakdown-body").replaceChildren(...rows.map((g) => breakdownRow(g, by, total)));
  const clickable = by === "source" || by.startsWith("attr.");
  $("breakdown-note").textContent = rows.length
    ? clickable
      ? "Click a group to show only its usage on the whole page."
      : "Models cannot filter the page: the usage API has no model filter."
    : "";
  const calls = rows.reduce((sum, g) => sum + Number(g.calls || 0), 0);
  if (calls === 0) return activeFilters().length ? "No calls match these filters in this period" : EMPTY_MESSAGE;
  return total > 0 ? "" : "No priced usage in this period";
}

const breakdownParams = (limit) => ({ ...windowParams(), by: state.groupBy, limit });

const loadBySource = () =>
  loadPanel(
    "by-source",
    (signal) => api("v1/usage/breakdown", breakdownParams(BREAKDOWN_LIMIT), signal),
    renderBreakdown,
  );

// --- Group by choices: source, model and the attribute keys of the window -------------
let attributeKeys = [];
let attributesSeq = 0;

function option(value, label) {
  const el = document.createElement("option");
  el.value = value;
  el.textContent = label;
  return el;
}

function renderGroupOptions() {
  const keys = attributeKeys.map((k) => ({ key: k.key, values: k.values }));
  const wanted = state.groupBy.startsWith("attr.") ? state.groupBy.slice(5) : null;
  if (wanted && !keys.some((k) => k.key === wanted)) keys.push({ key: wanted, values: null });
  const children = [option("source", "Source"), option("model", "Model")];
  if (keys.length) {
    const group = document.createElement("optgroup");
    group.label = "Attributes";
    group.append(
      ...keys.map((k) =>
        option(
          `attr.${k.key}`,
          k.values === null
            ? `${k.key} (none in this period)`
            : `${k.key} (${formatInteger(k.values)} value${Number(k.values) === 1 ? "" : "s"})`,
        ),
      ),
    );
    children.push(group);
  }
  const select = $("group-by");
  select.replaceChildren(...children);
  select.value = state.groupBy;
  select.dataset.keys = keys.map((k) => k.key).join(",");
}

/** The Group by choices for the window; a failure keeps source and model (and says why). */
async function loadAttributes() {
  const seq = ++attributesSeq;
  try {
    const data = await api("v1/usage/attributes", { period: state.period });
    if (seq !== attributesSeq) return;
    attributeKeys = data.keys || [];
  } catch (error) {
    if (seq !== attributesSeq) return;
    if (!isAuthError(error)) console.error("attributes:", error);
    attributeKeys = [];
  }
  renderGroupOptions();
}

// --- page filters: a source and attribute values, shown as removable chips ------------
function activeFilters() {
  const list = [];
  if (state.pageSource) list.push(["source", state.pageSource]);
  for (const [key, value] of Object.entries(state.attributes)) list.push([`attr.${key}`, value]);
  return list;
}

function setFilter(name, value) {
  if (name === "source") {
    if (state.pageSource === value) return;
    state.pageSource = value;
  } else {
    const key = name.slice(5);
    if (state.attributes[key] === value) return;
    state.attributes = { ...state.attributes, [key]: value };
  }
  filtersChanged();
}

function removeFilter(name) {
  if (name === "source") state.pageSource = "";
  else {
    const { [name.slice(5)]: _removed, ...rest } = state.attributes;
    state.attributes = rest;
  }
  filtersChanged();
}

function filtersChanged() {
  state.page = 1;
  loadAll();
}

function renderChips() {
  const filters = activeFilters();
  $("filter-bar").hidden = filters.length === 0;
  $("clear-filters").hidden = filters.length < 2;
  $("filter-chips").replaceChildren(
    ...filters.map(([name, value]) => {
      const li = document.createElement("li");
      li.className = "chip";
      li.dataset.filter = name;
      li.dataset.value = value;
      const text = document.createElement("span");
      text.className = "chip-text";
      text.textContent = filterLabel(name, value);
      text.title = filterLabel(name, value);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "chip-remove";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `Remove the filter ${filterLabel(name, value)}`);
      remove.addEventListener("click", () => removeFilter(name));
      li.append(text, remove);
      return li;
    }),
  );
  // a page-wide source filter also sets (and locks) the records table's own source filter
  const select = $("source-filter");
  select.disabled = Boolean(state.pageSource);
  select.value = state.pageSource || state.source;
  select.title = state.pageSource ? "The whole page is filtered to this source (remove the chip above)" : "";
}

$("clear-filters").addEventListener("click", () => {
  state.pageSource = "";
  state.attributes = {};
  filtersChanged();
});

// --- CSV export: fetch with the key (a link cannot send it), then save the Blob --------
async function responseError(response) {
  let detail = "";
  try {
    const body = await response.json();
    if (typeof body.detail === "string") detail = body.detail;
    else if (Array.isArray(body.detail)) detail = body.detail.map((d) => d.msg).join("; ");
  } catch {
    /* not JSON */
  }
  const prefix = `The export failed (HTTP ${response.status})`;
  return new ApiError(detail ? `${prefix}: ${detail}` : `${prefix}.`, response.status);
}

function exportStatus(button, message) {
  let status = button.parentElement.querySelector(`.export-error[data-for="${button.id}"]`);
  if (!message) {
    status?.remove();
    return;
  }
  if (!status) {
    status = document.createElement("span");
    status.className = "export-error";
    status.dataset.for = button.id;
    status.setAttribute("role", "alert");
    button.after(status);
  }
  status.textContent = message;
}

async function downloadCsv(button, path, params, fallbackName) {
  if (button.getAttribute("aria-busy") === "true") return;
  const key = loadSetting(STORAGE_KEY);
  if (!key) {
    askForKey();
    return;
  }
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(params)) {
    if (value !== "" && value != null) url.searchParams.set(name, String(value));
  }
  const label = button.textContent;
  button.setAttribute("aria-busy", "true");
  button.disabled = true;
  button.textContent = "Exporting…";
  exportStatus(button, "");
  try {
    let response;
    try {
      response = await fetch(url, {
        headers: { Authorization: `Bearer ${key}`, Accept: "text/csv" },
        cache: "no-store",
      });
    } catch {
      throw new ApiError("The usage API could not be reached. Check your connection.", 0);
    }
    if (!response.ok) throw await responseError(response);
    const blob = await response.blob();
    const name = filenameFromDisposition(response.headers.get("Content-Disposition"), fallbackName);
    const href = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = href;
    link.download = name;
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(href), 60_000);
    button.dataset.downloaded = name;
  } catch (error) {
    console.error(`${button.id}:`, error);
    if (isAuthError(error)) askForKey(`The API key was rejected (HTTP ${error.status}). Check it and enter it again.`);
    exportStatus(button, error instanceof ApiError ? error.message : `The export failed: ${error.message}`);
  } finally {
    button.textContent = label;
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

$("export-records").addEventListener("click", (event) =>
  downloadCsv(
    event.currentTarget,
    "v1/usage/records.csv",
    { ...windowParams(), source: state.pageSource || state.source, search: state.search },
    "llm-usage-records.csv",
  ),
);

$("export-breakdown").addEventListener("click", (event) =>
  downloadCsv(
    event.currentTarget,
    "v1/usage/breakdown.csv",
    breakdownParams(EXPORT_BREAKDOWN_LIMIT),
    "llm-usage-breakdown.csv",
  ),
);

$("group-by").addEventListener("change", (event) => {
  state.groupBy = event.target.value;
  saveSetting(STORAGE_GROUP_BY, state.groupBy);
  loadBySource();
});

// --- cost by model -------------------------------------------------------------------
function tierBadge(tier) {
  const label = tierLabel(tier);
  if (!label) return null;
  const span = document.createElement("span");
  span.className = `badge tier tier-${String(tier).toLowerCase()}`;
  span.textContent = label;
  span.title = `Billed at ${String(tier).toLowerCase()} prices`;
  return span;
}

function modelCell(item) {
  const td = cell("model-name");
  const name = document.createElement("span");
  name.className = "title";
  name.textContent = item.model || "(unknown)";
  td.append(name);
  const badge = tierBadge(item.price_tier);
  if (badge) td.append(" ", badge);
  const searches = Number(item.web_search_requests || 0);
  if (searches > 0) {
    const tools = document.createElement("span");
    tools.className = "model";
    tools.textContent = `${formatInteger(searches)} web search${searches === 1 ? "" : "es"} · ${formatUsd(item.tool_cost_usd)}`;
    tools.title = `$${item.tool_cost_usd} of server-tool fees, included in the cost`;
    td.append(tools);
  }
  return td;
}

function costCell(item) {
  const unpriced = Number(item.unpriced_calls || 0);
  if (unpriced > 0 && unpriced >= Number(item.calls)) {
    return cell("num cost unpriced", "unpriced", `${item.model} is not in the price book`);
  }
  const td = cell("num cost", formatUsd(item.cost_usd), `$${item.cost_usd}`);
  if (unpriced > 0) {
    td.classList.add("unpriced");
    td.title += ` + ${formatInteger(unpriced)} calls without a price`;
    td.append(" *");
  }
  return td;
}

function shareCell(item, total) {
  const td = cell("share");
  if (Number(item.unpriced_calls) >= Number(item.calls) && Number(item.calls) > 0) {
    td.textContent = "–"; // a share of an unknown cost
    td.title = "Not priced: its share of the cost is unknown";
    return td;
  }
  const box = document.createElement("span");
  box.className = "share-box";
  const bar = document.createElement("span");
  bar.className = "bar";
  const fill = document.createElement("span");
  const cost = Number(item.cost_usd);
  fill.style.width = `${total > 0 ? Math.min(100, (cost / total) * 100) : 0}%`;
  bar.append(fill);
  const text = document.createElement("span");
  text.className = "pct";
  text.textContent = formatPercent(cost, total);
  box.append(bar, text);
  td.append(box);
  return td;
}

function renderByModel(data) {
  const items = data.items || [];
  const total = Number(data.total_cost_usd || 0);
  $("models-body").replaceChildren(
    ...items.map((item) => {
      const tr = document.createElement("tr");
      tr.dataset.model = item.model;
      tr.dataset.tier = item.price_tier;
      const tokens = cell("num tokens", formatTokens(item.total_tokens));
      tokens.title =
        `${formatInteger(item.input_tokens)} input · ${formatInteger(item.output_tokens)} output · ` +
        `${formatInteger(item.cache_creation_input_tokens)} cache write · ` +
        `${formatInteger(item.cache_read_input_tokens)} cache read`;
      tr.append(
        modelCell(item),
        cell("num calls", formatInteger(item.calls)),
        tokens,
        costCell(item),
        shareCell(item, total),
      );
      return tr;
    }),
  );
  const note = $("models-note");
  const unpriced = Number(data.unpriced_calls || 0);
  note.hidden = unpriced === 0;
  note.textContent = unpriced
    ? `Unpriced: ${formatInteger(unpriced)} calls of models not in the price book; their cost is unknown and counted as $0.`
    : "";
  return items.length ? "" : EMPTY_MESSAGE;
}

const loadByModel = () =>
  loadPanel("by-model", (signal) => api("v1/usage/by-model", windowParams(), signal), renderByModel);

// --- top consumers -------------------------------------------------------------------
const itemTokens = (item) =>
  Number(item.total_tokens ?? item.tokens ?? Number(item.input_tokens || 0) + Number(item.output_tokens || 0));

function badge(source) {
  const span = document.createElement("span");
  span.className = `badge ${source}`;
  span.textContent = SOURCES[source]?.label ?? source;
  return span;
}

function renderTop(data) {
  const items = data.items || [];
  const metric = (item) => (state.topBy === "cost" ? Number(item.cost_usd) : itemTokens(item));
  const max = Math.max(...items.map(metric), 0);
  $("top-list").replaceChildren(
    ...items.map((item, index) => {
      const li = document.createElement("li");
      li.dataset.source = item.source;
      li.dataset.sourceId = item.source_id;
      const rank = document.createElement("span");
      rank.className = "rank";
      rank.textContent = String(index + 1);
      const name = document.createElement("span");
      name.className = "name";
      const link = document.createElement("button");
      link.type = "button";
      link.textContent = item.name || item.source_id || "(unnamed)";
      link.title = `Show the calls of ${link.textContent} (${item.source_id})`;
      link.addEventListener("click", () => showRecordsOf(item));
      name.append(link);
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = `${max > 0 ? Math.max(2, (metric(item) / max) * 100) : 0}%`;
      bar.append(fill);
      const value = document.createElement("span");
      value.className = "metric";
      value.textContent = state.topBy === "cost" ? formatUsd(item.cost_usd) : formatTokens(itemTokens(item));
      value.title =
        state.topBy === "cost" ? `$${item.cost_usd}` : `${formatInteger(itemTokens(item))} tokens`;
      const calls = document.createElement("span");
      calls.className = "calls";
      calls.textContent = `${formatInteger(item.calls)} calls`;
      li.append(rank, badge(item.source), name, bar, value, calls);
      const budget = entityBudgets.get(`${item.source}/${item.source_id}`);
      if (budget) {
        li.classList.add("budgeted");
        li.append(budgetBar(budget));
      }
      return li;
    }),
  );
  return items.length ? "" : EMPTY_MESSAGE;
}

function showRecordsOf(item) {
  $("source-filter").value = item.source;
  $("search").value = item.name || "";
  state.source = item.source;
  state.search = item.name || "";
  state.page = 1;
  loadRecords();
  $("records").scrollIntoView({ behavior: reducedMotion() ? "auto" : "smooth", block: "start" });
}

const loadTop = () =>
  loadPanel(
    "top",
    async (signal) => {
      const [top, budgets] = await Promise.all([
        api("v1/usage/top", { ...windowParams(), by: state.topBy, limit: TOP_LIMIT }, signal),
        budgetsOnce().catch(() => ({ items: [] })), // the bars are extra: never fail the list
      ]);
      entityBudgets = new Map(
        (budgets.items || []).filter((b) => b.scope === "entity").map((b) => [`${b.source}/${b.source_id}`, b]),
      );
      return top;
    },
    renderTop,
  );

// --- budgets -------------------------------------------------------------------------
let entityBudgets = new Map();
let budgetsRequest = null;
const PERIOD_LABELS = { day: "per day", month: "per month", rolling_24h: "per 24 h" };

/** One GET /v1/budgets per page load, shared by the Budgets panel and the top list. */
function budgetsOnce() {
  if (!budgetsRequest) {
    budgetsRequest = api("v1/budgets", {}); // not aborted with either panel: both wait on it
    budgetsRequest.catch(() => (budgetsRequest = null));
  }
  return budgetsRequest;
}

function meter(budget) {
  const pct = Number(budget.spend.percent);
  const box = document.createElement("span");
  box.className = `meter${pct >= 100 ? " over" : pct >= 80 ? " warn" : ""}`;
  box.setAttribute("role", "meter");
  box.setAttribute("aria-valuenow", String(pct));
  box.setAttribute("aria-valuemin", "0");
  box.setAttribute("aria-valuemax", "100");
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.width = `${Math.min(100, pct)}%`;
  box.append(fill);
  for (const threshold of budget.thresholds.filter((t) => t < 100)) {
    const tick = document.createElement("span");
    tick.className = "tick";
    tick.style.left = `${threshold}%`;
    box.append(tick);
  }
  return box;
}

function spendText(budget) {
  const period = PERIOD_LABELS[budget.period] || budget.period;
  return `${formatUsd(budget.spend.cost_usd)} of ${formatUsd(budget.limit_usd)} ${period} · ${Math.round(budget.spend.percent)}%`;
}

function budgetBar(budget) {
  const row = document.createElement("span");
  row.className = "budget-bar";
  row.dataset.budgetId = budget.budget_id;
  const text = document.createElement("span");
  text.textContent = `Budget: ${spendText(budget)}`;
  row.append(meter(budget), text);
  return row;
}

function budgetScope(budget) {
  if (budget.scope === "tenant") return "Whole workspace";
  if (budget.scope === "attribute") {
    const of = budget.source ? ` (${SOURCES[budget.source]?.label ?? budget.source})` : "";
    return `${budget.attr_key} = ${budget.attr_value}${of}`;
  }
  if (budget.scope === "source") return `All of ${SOURCES[budget.source]?.label ?? budget.source}`;
  return `${SOURCES[budget.source]?.label ?? budget.source} ${budget.source_id}`;
}

function renderBudgets(data) {
  const items = data.items || [];
  $("budget-list").replaceChildren(
    ...items.map((budget) => {
      const li = document.createElement("li");
      li.dataset.budgetId = budget.budget_id;
      const head = document.createElement("div");
      head.className = "head";
      const name = document.createElement("strong");
      name.textContent = budget.name || budgetScope(budget);
      const amount = document.createElement("span");
      amount.className = "amount";
      amount.textContent = spendText(budget);
      head.append(name, amount);
      const what = document.createElement("span");
      what.className = "what";
      what.textContent = `${budgetScope(budget)}${budget.hard ? " · hard limit" : ""}`;
      li.append(head, meter(budget), what);
      return li;
    }),
  );
  return items.length ? "" : "No budgets yet: an admin key can add them (POST /v1/budgets)";
}

const loadBudgets = () => loadPanel("budgets", () => budgetsOnce(), renderBudgets);

// --- alerts --------------------------------------------------------------------------
const ALERT_KINDS = { spike_started: "Spike", spike_ended: "Spike over", budget_threshold: "Budget" };
const PERIOD_MS = { "24h": 86_400_000, "7d": 7 * 86_400_000, "30d": 30 * 86_400_000 };
let shownAlerts = [];
let alertsByBucket = new Map();

function renderAlerts(data) {
  shownAlerts = data.items || [];
  const now = new Date();
  $("alert-list").replaceChildren(
    ...shownAlerts.map((alert) => {
      const li = document.createElement("li");
      li.dataset.alertId = alert.alert_id;
      li.dataset.kind = alert.kind;
      const kind = document.createElement("span");
      kind.className = `kind ${alert.kind}`;
      kind.textContent = ALERT_KINDS[alert.kind] || alert.kind;
      const body = document.createElement("div");
      const message = document.createElement("div");
      message.textContent = alert.message;
      const when = document.createElement("div");
      when.className = "when";
      when.textContent = formatRelativeTime(new Date(alert.raised_at), now);
      when.title = absoluteTime.format(new Date(alert.window_start));
      body.append(message, when);
      li.append(kind, body);
      return li;
    }),
  );
  markAlertBuckets();
  return shownAlerts.length ? "" : "No alerts in this period";
}

/** Colour the chart's bars whose bucket holds the start of an alert's window. */
function markAlertBuckets() {
  alertsByBucket = new Map();
  if (!costChart || !costPoints.length) return;
  const starts = costPoints.map((p) => Date.parse(p.bucket_start));
  for (const alert of shownAlerts) {
    if (alert.kind === "spike_ended") continue;
    const at = Date.parse(alert.window_start);
    let index = -1;
    for (let i = 0; i < starts.length && starts[i] <= at; i += 1) index = i;
    if (index < 0) continue;
    alertsByBucket.set(index, [...(alertsByBucket.get(index) || []), alert]);
  }
  const colours = costPoints.map((_, i) => (alertsByBucket.has(i) ? "#d92d20" : "rgba(29, 78, 216, 0.78)"));
  costChart.data.datasets[0].backgroundColor = colours;
  costChart.update();
  $("cost-chart").dataset.alertBuckets = [...alertsByBucket.keys()].sort((a, b) => a - b).join(",");
}

const loadAlerts = () =>
  loadPanel(
    "alerts",
    (signal) =>
      api("v1/alerts", { from: new Date(Date.now() - PERIOD_MS[state.period]).toISOString(), limit: 50 }, signal),
    renderAlerts,
  );

// --- records -------------------------------------------------------------------------
const absoluteTime = new Intl.DateTimeFormat(undefined, {
  dateStyle: "medium",
  timeStyle: "medium",
  timeZone: TIME_ZONE,
});

function cell(className, text, title) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (text != null) td.textContent = text;
  if (title) td.title = title;
  return td;
}

/**
 * A call's attributes in its Name cell: a toggle ("3 attributes", the pairs as its tooltip)
 * that opens the list of key = value; a value filters the whole page. Null without any.
 */
function attributesOf(record) {
  const pairs = Object.entries(record.attributes || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  if (!pairs.length) return null;
  const toggle = document.createElement("button");
  toggle.type = "button";
  toggle.className = "attr-toggle";
  toggle.textContent = `${pairs.length} attribute${pairs.length === 1 ? "" : "s"}`;
  toggle.title = formatAttributes(record.attributes);
  toggle.setAttribute("aria-expanded", "false");
  const list = document.createElement("dl");
  list.className = "attr-list";
  list.id = `attributes-${record.event_id}`;
  list.hidden = true;
  toggle.setAttribute("aria-controls", list.id);
  for (const [key, value] of pairs) {
    const term = document.createElement("dt");
    term.textContent = key;
    const detail = document.createElement("dd");
    const filter = document.createElement("button");
    filter.type = "button";
    filter.className = "attr-value";
    filter.dataset.key = key;
    filter.textContent = value;
    filter.title = `Show only ${filterLabel(`attr.${key}`, value)} on the whole page`;
    filter.addEventListener("click", () => setFilter(`attr.${key}`, value));
    detail.append(filter);
    list.append(term, detail);
  }
  toggle.addEventListener("click", () => {
    const open = toggle.getAttribute("aria-expanded") !== "true";
    toggle.setAttribute("aria-expanded", String(open));
    list.hidden = !open;
  });
  return [toggle, list];
}

function renderRecords(data) {
  const items = data.items || [];
  const now = Date.now();
  $("records-body").replaceChildren(
    ...items.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.eventId = r.event_id;
      tr.dataset.source = r.source;
      const source = cell("source");
      source.append(badge(r.source));
      const name = cell("name");
      const title = document.createElement("span");
      title.className = "title";
      title.textContent = r.name || r.source_id || "(unnamed)";
      const model = document.createElement("span");
      model.className = "model";
      model.textContent = r.model || "";
      if (r.status === "error") {
        const failed = document.createElement("span");
        failed.className = "failed";
        failed.textContent = "error";
        failed.title = "The call failed; billed tokens, if any, are counted";
        model.append(" ", failed);
      }
      name.append(title, model);
      const attributes = attributesOf(r);
      if (attributes) name.append(...attributes);
      const when = new Date(r.occurred_at);
      const time = cell("time");
      const timeEl = document.createElement("time");
      timeEl.dateTime = when.toISOString();
      timeEl.title = absoluteTime.format(when);
      timeEl.textContent = formatRelativeTime(when, now);
      time.append(timeEl);
      tr.append(
        source,
        name,
        cell("num input", formatInteger(r.input_tokens)),
        cell("num output", formatInteger(r.output_tokens)),
        r.priced === false
          ? cell("num cost unpriced", "unpriced", `${r.model} is not in the price book`)
          : cell("num cost", formatUsd(r.cost_usd), `$${r.cost_usd}`),
        cell("num duration", formatDuration(r.duration_ms)),
        time,
      );
      return tr;
    }),
  );
  renderPager(Number(data.page || state.page), Number(data.total_pages || 0), Number(data.total || 0));
  if (items.length) return "";
  return state.source || state.search || activeFilters().length
    ? "No calls match these filters in this period"
    : EMPTY_MESSAGE;
}

function pageWindow(page, pages) {
  // 1 … 4 5 [6] 7 8 … 20
  const wanted = new Set([1, pages, page - 2, page - 1, page, page + 1, page + 2]);
  const list = [...wanted].filter((p) => p >= 1 && p <= pages).sort((a, b) => a - b);
  const out = [];
  for (const p of list) {
    if (out.length && p - out[out.length - 1] > 1) out.push(null);
    out.push(p);
  }
  return out;
}

function pagerButton(label, page, { current = false, disabled = false, aria } = {}) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.disabled = disabled;
  if (aria) button.setAttribute("aria-label", aria);
  if (current) button.setAttribute("aria-current", "page");
  button.dataset.page = String(page);
  button.addEventListener("click", () => {
    if (page === state.page) return;
    state.page = page;
    loadRecords();
  });
  return button;
}

function renderPager(page, pages, total) {
  const pager = $("pager");
  pager.hidden = pages <= 1;
  const first = total ? (page - 1) * PAGE_SIZE + 1 : 0;
  const last = Math.min(total, page * PAGE_SIZE);
  $("pager-info").textContent = `${formatInteger(first)}–${formatInteger(last)} of ${formatInteger(total)} calls`;
  const buttons = [pagerButton("‹ Prev", page - 1, { disabled: page <= 1, aria: "Previous page" })];
  for (const p of pageWindow(page, pages)) {
    if (p === null) {
      const gap = document.createElement("span");
      gap.className = "gap";
      gap.textContent = "…";
      buttons.push(gap);
    } else {
      buttons.push(pagerButton(String(p), p, { current: p === page, aria: `Page ${p}` }));
    }
  }
  buttons.push(pagerButton("Next ›", page + 1, { disabled: page >= pages, aria: "Next page" }));
  $("pager-buttons").replaceChildren(...buttons);
}

const loadRecords = () =>
  loadPanel(
    "records",
    (signal) =>
      api(
        "v1/usage/records",
        {
          ...windowParams(),
          source: state.pageSource || state.source,
          search: state.search,
          page: state.page,
          page_size: PAGE_SIZE,
        },
        signal,
      ),
    renderRecords,
  );

// keep "3 min ago" true while the page stays open
setInterval(() => {
  const now = Date.now();
  for (const el of document.querySelectorAll("#records-body time")) {
    el.textContent = formatRelativeTime(new Date(el.dateTime), now);
  }
}, 30_000);

// --- API key -------------------------------------------------------------------------
const dialog = $("key-dialog");

function askForKey(message = "") {
  const error = $("key-error");
  error.textContent = message;
  error.hidden = !message;
  if (message) saveSetting(STORAGE_KEY, null); // a rejected key is not kept
  $("key-input").value = "";
  if (!dialog.open) dialog.showModal();
  $("key-input").focus();
}

function showBanner(text) {
  const banner = $("banner");
  banner.hidden = !text;
  banner.replaceChildren();
  if (!text) return;
  banner.append(document.createTextNode(`${text} `));
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link-button";
  button.textContent = "Enter API key";
  button.addEventListener("click", () => askForKey());
  banner.append(button);
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  saveSetting(STORAGE_KEY, key);
  dialog.close();
  showBanner("");
  loadAll();
});

function cancelKeyDialog() {
  dialog.close();
  if (!loadSetting(STORAGE_KEY)) showBanner("An API key is needed to show usage.");
}
$("key-cancel").addEventListener("click", cancelKeyDialog);
dialog.addEventListener("cancel", (event) => {
  event.preventDefault();
  cancelKeyDialog();
});
$("change-key").addEventListener("click", () => askForKey());

// --- controls ------------------------------------------------------------------------
function markPressed(groupId, attribute, value) {
  for (const button of $(groupId).querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset[attribute] === value));
  }
}

$("period-switch").addEventListener("click", (event) => {
  const period = event.target.closest("button")?.dataset.period;
  if (!period || period === state.period) return;
  state.period = period;
  state.granularity = defaultGranularity(period);
  state.page = 1;
  saveSetting(STORAGE_PERIOD, period);
  loadAll();
});

$("granularity-switch").addEventListener("click", (event) => {
  const granularity = event.target.closest("button")?.dataset.granularity;
  if (!granularity || granularity === state.granularity) return;
  state.granularity = granularity;
  markPressed("granularity-switch", "granularity", granularity);
  loadTimeseries();
});

$("top-switch").addEventListener("click", (event) => {
  const by = event.target.closest("button")?.dataset.by;
  if (!by || by === state.topBy) return;
  state.topBy = by;
  markPressed("top-switch", "by", by);
  loadTop();
});

$("source-filter").addEventListener("change", (event) => {
  state.source = event.target.value;
  state.page = 1;
  loadRecords();
});

let searchTimer = 0;
$("search").addEventListener("input", (event) => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    const search = event.target.value.trim();
    if (search === state.search) return;
    state.search = search;
    state.page = 1;
    loadRecords();
  }, SEARCH_DEBOUNCE_MS);
});

function loadAll() {
  markPressed("period-switch", "period", state.period);
  markPressed("granularity-switch", "granularity", state.granularity);
  markPressed("top-switch", "by", state.topBy);
  if (!loadSetting(STORAGE_KEY)) {
    askForKey();
    return;
  }
  budgetsRequest = null;
  renderChips();
  loadAttributes();
  loadSummary();
  loadTimeseries();
  loadBySource();
  loadBudgets();
  loadAlerts();
  loadByModel();
  loadTop();
  loadRecords();
}

document.documentElement.dataset.timeZone = TIME_ZONE;
loadAll();
