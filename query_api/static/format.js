// Pure display formatters of the Usage page. No DOM, no globals: the page imports them and
// tests/browser/format.test.js runs them under node's test runner.

const TOKEN_UNITS = [
  [1e12, "T"],
  [1e9, "B"],
  [1e6, "M"],
  [1e3, "K"],
];

/** Compact token count: 1500000 -> "1.5M", 45000 -> "45.0K", 999 -> "999". */
export function formatTokens(value) {
  const n = Number(value);
  if (!Number.isFinite(n)) return "–";
  const sign = n < 0 ? "-" : "";
  const abs = Math.abs(Math.round(n));
  if (abs < 1000) return sign + String(abs);
  for (let i = 0; i < TOKEN_UNITS.length; i++) {
    const [unit, suffix] = TOKEN_UNITS[i];
    if (abs < unit) continue;
    // tenths of the unit, rounded half up; abs * 10 / unit is exact for integer inputs
    const tenths = Math.round((abs * 10) / unit);
    if (tenths >= 10000 && i > 0) {
      // 999,950 rounds to "1000.0K": show it in the next unit up ("1.0M")
      const [bigger, biggerSuffix] = TOKEN_UNITS[i - 1];
      return sign + (Math.round((abs * 10) / bigger) / 10).toFixed(1) + biggerSuffix;
    }
    return sign + (tenths / 10).toFixed(1) + suffix;
  }
  return sign + String(abs);
}

/** Integer with thousands separators: 1234567 -> "1,234,567". */
export function formatInteger(value) {
  const n = Number(value);
  if (!Number.isFinite(n)) return "–";
  return Math.round(n).toLocaleString("en-US");
}

function groupThousands(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** Round a non-negative decimal given as digit strings, half up, to `places` decimals. */
function roundDigits(intPart, fracPart, places) {
  const padded = (fracPart + "0".repeat(places + 1)).slice(0, places + 1);
  let digits = (intPart + padded.slice(0, places)).split("").map(Number);
  if (Number(padded[places]) >= 5) {
    let i = digits.length - 1;
    while (i >= 0) {
      if (digits[i] === 9) {
        digits[i] = 0;
        i--;
      } else {
        digits[i]++;
        break;
      }
    }
    if (i < 0) digits = [1, ...digits];
  }
  const all = digits.join("");
  const whole = all.slice(0, all.length - places).replace(/^0+(?=\d)/, "") || "0";
  return [whole, all.slice(all.length - places)];
}

/**
 * US dollars from the API's exact decimal string ("12.345678901"), rounded half up without
 * going through a binary float: "$12.35"; amounts under a dollar keep 4 decimals ("$0.0034");
 * a non-zero amount that would show as zero reads "<$0.0001"; zero is "$0.00".
 */
export function formatUsd(value) {
  const text = String(value ?? "").trim();
  const match = /^(-)?(\d+)(?:\.(\d*))?$/.exec(text);
  if (!match) return "–";
  const [, minus, rawInt, rawFrac = ""] = match;
  const intPart = rawInt.replace(/^0+(?=\d)/, "");
  let [whole, frac] = roundDigits(intPart, rawFrac, intPart === "0" ? 4 : 2);
  if (whole !== "0" && frac.length === 4) [whole, frac] = roundDigits(intPart, rawFrac, 2);
  if (/^0*$/.test(intPart + rawFrac)) return "$0.00";
  if (whole === "0" && /^0*$/.test(frac)) return "<$0.0001";
  return (minus ? "-" : "") + "$" + groupThousands(whole) + "." + frac;
}

/** Call duration: 850 -> "850 ms", 1234 -> "1.2 s", 75000 -> "1m 15s". */
export function formatDuration(ms) {
  const n = Number(ms);
  if (!Number.isFinite(n) || n < 0) return "–";
  if (n < 1000) return `${Math.round(n)} ms`;
  if (n < 59950) return `${(n / 1000).toFixed(1)} s`;
  const totalSeconds = Math.round(n / 1000);
  const minutes = Math.floor(totalSeconds / 60);
  if (minutes < 60) return `${minutes}m ${totalSeconds % 60}s`;
  return `${Math.floor(minutes / 60)}h ${minutes % 60}m`;
}

function plural(n, unit) {
  return `${n} ${unit}${n === 1 ? "" : "s"} ago`;
}

/** Relative time of `then` seen at `now` (both ms or Date): "just now", "3 min ago", "2 hours ago". */
export function formatRelativeTime(then, now) {
  const seconds = Math.floor((Number(now) - Number(then)) / 1000);
  if (!Number.isFinite(seconds)) return "–";
  if (seconds < 60) return "just now";
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return plural(hours, "hour");
  const days = Math.floor(hours / 24);
  if (days < 60) return plural(days, "day");
  return plural(Math.floor(days / 30), "month");
}

/** Share of a part in a whole as a percentage string: (1, 3) -> "33.3%". */
export function formatPercent(part, whole) {
  const p = Number(part);
  const w = Number(whole);
  if (!Number.isFinite(p) || !Number.isFinite(w) || w <= 0) return "0%";
  return `${((p / w) * 100).toFixed(1)}%`;
}

const TIER_LABELS = { batch: "Batch", fast: "Fast", priority: "Priority" };

/** Badge text of a price tier: "batch" -> "Batch"; standard (or none) gets no badge: "". */
export function tierLabel(tier) {
  const key = String(tier ?? "").toLowerCase();
  if (key === "" || key === "standard") return "";
  return TIER_LABELS[key] ?? key.charAt(0).toUpperCase() + key.slice(1);
}

/**
 * The Total Cost card's warning when calls of models without a price are in the window:
 * (3, [{model: "a", calls: 2}, {model: "b", calls: 1}]) ->
 * "cost incomplete: 3 calls of unknown models (a, b)"; the first `shown` models are named,
 * the rest counted ("a, b, c and 2 more"). No unpriced calls: "".
 */
export function formatUnpricedNote(unpricedCalls, models, shown = 3) {
  const calls = Number(unpricedCalls);
  if (!Number.isFinite(calls) || calls <= 0) return "";
  const names = (Array.isArray(models) ? models : [])
    .map((m) => String(m?.model ?? m ?? ""))
    .filter((name) => name !== "");
  const what = calls === 1 ? "call of an unknown model" : "calls of unknown models";
  let list = names.slice(0, shown).join(", ");
  if (names.length > shown) list += ` and ${names.length - shown} more`;
  return `cost incomplete: ${formatInteger(calls)} ${what}${list ? ` (${list})` : ""}`;
}

/** The Total Cost card's reprice line, while the last reprice is recent (7 days), else "". */
export function formatRepricedNote(repricedAt, now, recentDays = 7) {
  if (!repricedAt) return "";
  const then = Date.parse(repricedAt);
  if (!Number.isFinite(then) || Number(now) - then > recentDays * 86400000) return "";
  return `history repriced ${formatRelativeTime(then, now)}`;
}

const ZERO_AMOUNT = /^-?0*(\.0*)?$/;

/**
 * The line under the Total Cost card from the summary's exact prompt-cache figures:
 * ("12.5", "1.25") -> "Prompt cache saved $12.50 (writes cost $1.25 more)"; without write
 * premium the parenthesis is left out; both zero (or missing): "" (the line is hidden).
 */
export function formatCacheSavings(saved, premium) {
  const s = String(saved ?? "").trim() || "0";
  const p = String(premium ?? "").trim() || "0";
  const savedZero = ZERO_AMOUNT.test(s);
  const premiumZero = ZERO_AMOUNT.test(p);
  if (savedZero && premiumZero) return "";
  const line = `Prompt cache saved ${formatUsd(savedZero ? "0" : s)}`;
  return premiumZero ? line : `${line} (writes cost ${formatUsd(p)} more)`;
}

const SOURCE_LABELS = { chat: "Chat", agent: "Agent", memory: "Memory" };

/** The Group by choice as a heading: "source" -> "Source", "model" -> "Model", "attr.user" -> "user". */
export function groupByLabel(by) {
  const text = String(by ?? "");
  if (text === "source") return "Source";
  if (text === "model") return "Model";
  return text.startsWith("attr.") ? text.slice(5) : text;
}

/**
 * One breakdown group's name: a source's label ("agent" -> "Agent"), a model or an attribute
 * value as is; the calls without the attribute (key null) read "(none)", an empty key "(empty)".
 */
export function groupLabel(by, key) {
  if (key === null || key === undefined) return "(none)";
  const text = String(key);
  if (by === "source") return SOURCE_LABELS[text] ?? text;
  return text === "" ? "(empty)" : text;
}

/** A filter chip's text: ("source", "agent") -> "Source: Agent", ("attr.user", "u-42") -> "user: u-42". */
export function filterLabel(name, value) {
  if (name === "source") return `Source: ${groupLabel("source", value)}`;
  return `${groupByLabel(name)}: ${value}`;
}

/**
 * The query parameters of the page-wide filters: a source ("" for none) and attribute values
 * by key -> {source: "agent", "attr.user": "u-42", ...}; keys in the order given.
 */
export function filterParams(source, attributes) {
  const params = {};
  if (source) params.source = source;
  for (const [key, value] of Object.entries(attributes || {})) params[`attr.${key}`] = value;
  return params;
}

/**
 * The file name a Content-Disposition header gives, else `fallback`: RFC 6266's
 * `filename*=UTF-8''...` (percent-encoded) wins over `filename="..."`; any path is dropped.
 */
export function filenameFromDisposition(header, fallback = "download.csv") {
  const text = String(header ?? "");
  let name = "";
  const extended = /filename\*\s*=\s*([^']*)'[^']*'([^;]+)/i.exec(text);
  if (extended) {
    try {
      name = decodeURIComponent(extended[2].trim().replace(/^"|"$/g, ""));
    } catch {
      name = "";
    }
  }
  if (!name) {
    const quoted = /filename\s*=\s*"((?:[^"\\]|\\.)*)"/i.exec(text);
    const bare = /filename\s*=\s*([^;"\s]+)/i.exec(text);
    if (quoted) name = quoted[1].replace(/\\(.)/g, "$1");
    else if (bare) name = bare[1];
  }
  name = name.split(/[\\/]/).pop().trim();
  return name && name !== "." && name !== ".." ? name : fallback;
}

/** A call's attributes as one line, keys sorted: {user: "u-42", customer: "acme"} -> "customer=acme · user=u-42". */
export function formatAttributes(attributes) {
  return Object.keys(attributes || {})
    .sort()
    .map((key) => `${key}=${attributes[key]}`)
    .join(" · ");
}
