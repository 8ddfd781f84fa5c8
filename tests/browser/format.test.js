// Unit tests of the page's pure formatters, run by node's built-in test runner
// (`node --test tests/browser/`; tests/browser/test_page_format.py runs it under pytest).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  filenameFromDisposition,
  filterLabel,
  filterParams,
  formatAttributes,
  formatCacheSavings,
  formatDuration,
  formatInteger,
  formatPercent,
  formatRelativeTime,
  formatRepricedNote,
  formatTokens,
  formatUnpricedNote,
  formatUsd,
  groupByLabel,
  groupLabel,
  tierLabel,
} from "../../query_api/static/format.js";

test("tokens are compact, as the spec's examples say", () => {
  assert.equal(formatTokens(1_500_000), "1.5M");
  assert.equal(formatTokens(45_000), "45.0K");
});

test("tokens: small, edges, rounding and unit promotion", () => {
  assert.equal(formatTokens(0), "0");
  assert.equal(formatTokens(999), "999");
  assert.equal(formatTokens(1000), "1.0K");
  assert.equal(formatTokens(1049), "1.0K");
  assert.equal(formatTokens(1050), "1.1K"); // half up
  assert.equal(formatTokens(999_949), "999.9K");
  assert.equal(formatTokens(999_950), "1.0M"); // not "1000.0K"
  assert.equal(formatTokens(2_345_678_901), "2.3B");
  assert.equal(formatTokens(1_250_000_000_000), "1.3T");
  assert.equal(formatTokens("45000"), "45.0K"); // API may send numbers as strings
  assert.equal(formatTokens(-45_000), "-45.0K");
  assert.equal(formatTokens(undefined), "–");
  assert.equal(formatTokens("abc"), "–");
});

test("integers get thousands separators", () => {
  assert.equal(formatInteger(1_234_567), "1,234,567");
  assert.equal(formatInteger(0), "0");
  assert.equal(formatInteger(null), "0");
});

test("money is rounded from the exact decimal string, half up", () => {
  assert.equal(formatUsd("12.345678901"), "$12.35");
  assert.equal(formatUsd("12.344999999"), "$12.34");
  assert.equal(formatUsd("1234567.995"), "$1,234,568.00");
  assert.equal(formatUsd("9.995"), "$10.00");
  assert.equal(formatUsd("0.00345"), "$0.0035");
  assert.equal(formatUsd("0.99996"), "$1.00");
  assert.equal(formatUsd("0"), "$0.00");
  assert.equal(formatUsd("0.000000000000"), "$0.00");
  assert.equal(formatUsd("-1.005"), "-$1.01");
  assert.equal(formatUsd("0.00000001"), "<$0.0001");
  assert.equal(formatUsd("5"), "$5.00");
  assert.equal(formatUsd("007.1"), "$7.10");
  // beyond a double's precision: still exact
  assert.equal(formatUsd("90071992547409931.005"), "$90,071,992,547,409,931.01");
  assert.equal(formatUsd("not money"), "–");
  assert.equal(formatUsd(null), "–");
});

test("durations", () => {
  assert.equal(formatDuration(850), "850 ms");
  assert.equal(formatDuration(1234), "1.2 s");
  assert.equal(formatDuration(59_940), "59.9 s");
  assert.equal(formatDuration(75_000), "1m 15s");
  assert.equal(formatDuration(3_726_000), "1h 2m");
  assert.equal(formatDuration(-1), "–");
});

test("relative time", () => {
  const now = Date.parse("2026-11-25T12:00:00Z");
  const ago = (seconds) => now - seconds * 1000;
  assert.equal(formatRelativeTime(ago(5), now), "just now");
  assert.equal(formatRelativeTime(ago(-30), now), "just now"); // clock skew
  assert.equal(formatRelativeTime(ago(180), now), "3 min ago");
  assert.equal(formatRelativeTime(ago(59 * 60 + 59), now), "59 min ago");
  assert.equal(formatRelativeTime(ago(3600), now), "1 hour ago");
  assert.equal(formatRelativeTime(ago(5 * 3600 + 10), now), "5 hours ago");
  assert.equal(formatRelativeTime(ago(86400), now), "1 day ago");
  assert.equal(formatRelativeTime(ago(29 * 86400), now), "29 days ago");
  assert.equal(formatRelativeTime(ago(90 * 86400), now), "3 months ago");
  assert.equal(formatRelativeTime(new Date(ago(180)), new Date(now)), "3 min ago");
});

test("percent", () => {
  assert.equal(formatPercent(1, 3), "33.3%");
  assert.equal(formatPercent(1, 0), "0%");
});

test("price tier badges: none for standard", () => {
  assert.equal(tierLabel("batch"), "Batch");
  assert.equal(tierLabel("fast"), "Fast");
  assert.equal(tierLabel("priority"), "Priority");
  assert.equal(tierLabel("standard"), "");
  assert.equal(tierLabel(""), "");
  assert.equal(tierLabel(null), "");
  assert.equal(tierLabel("flex"), "Flex"); // a tier the page does not know yet still shows
});

test("unpriced note names the models", () => {
  const models = [
    { model: "claude-future-9", calls: 1200 },
    { model: "acme-llm-2", calls: 34 },
  ];
  assert.equal(
    formatUnpricedNote(1234, models),
    "cost incomplete: 1,234 calls of unknown models (claude-future-9, acme-llm-2)",
  );
  assert.equal(
    formatUnpricedNote(1, [{ model: "x", calls: 1 }]),
    "cost incomplete: 1 call of an unknown model (x)",
  );
  const many = ["a", "b", "c", "d", "e"].map((model) => ({ model, calls: 1 }));
  assert.equal(formatUnpricedNote(5, many), "cost incomplete: 5 calls of unknown models (a, b, c and 2 more)");
  assert.equal(formatUnpricedNote(7, []), "cost incomplete: 7 calls of unknown models");
  assert.equal(formatUnpricedNote(0, models), "");
  assert.equal(formatUnpricedNote(undefined, undefined), "");
});

test("the reprice note shows while the last reprice is recent", () => {
  const now = Date.parse("2026-12-01T12:00:00Z");
  assert.equal(formatRepricedNote("2026-12-01T09:00:00+00:00", now), "history repriced 3 hours ago");
  assert.equal(formatRepricedNote("2026-11-20T12:00:00+00:00", now), "");
  assert.equal(formatRepricedNote(null, now), "");
});

// --- attribution: Group by labels, filter chips and CSV file names -----------------------

test("Group by choices read as headings", () => {
  assert.equal(groupByLabel("source"), "Source");
  assert.equal(groupByLabel("model"), "Model");
  assert.equal(groupByLabel("attr.user"), "user");
  assert.equal(groupByLabel("attr.prompt_version"), "prompt_version");
});

test("group names: source labels, values as is, (none) for calls without the attribute", () => {
  assert.equal(groupLabel("source", "agent"), "Agent");
  assert.equal(groupLabel("source", "chat"), "Chat");
  assert.equal(groupLabel("model", "claude-sonnet-4-5"), "claude-sonnet-4-5");
  assert.equal(groupLabel("attr.user", "u-42"), "u-42");
  assert.equal(groupLabel("attr.user", null), "(none)");
  assert.equal(groupLabel("attr.user", undefined), "(none)");
  assert.equal(groupLabel("attr.user", ""), "(empty)");
  assert.equal(groupLabel("attr.user", "<b>x</b>"), "<b>x</b>"); // text, never markup
});

test("filter chips and their query parameters", () => {
  assert.equal(filterLabel("source", "memory"), "Source: Memory");
  assert.equal(filterLabel("attr.customer", 'Globex, "Inc"'), 'customer: Globex, "Inc"');
  assert.deepEqual(filterParams("", {}), {});
  assert.deepEqual(filterParams("agent", { user: "u-1", customer: "acme" }), {
    source: "agent",
    "attr.user": "u-1",
    "attr.customer": "acme",
  });
  assert.deepEqual(filterParams("", undefined), {});
});

test("a call's attributes as one line, keys sorted", () => {
  assert.equal(formatAttributes({ user: "u-42", customer: "acme" }), "customer=acme · user=u-42");
  assert.equal(formatAttributes({}), "");
  assert.equal(formatAttributes(null), "");
});

test("the CSV's file name comes from Content-Disposition", () => {
  const name = "llm-usage-records-20261201T000000Z-20261208T000000Z.csv";
  assert.equal(filenameFromDisposition(`attachment; filename="${name}"`), name);
  assert.equal(filenameFromDisposition(`attachment; filename=${name}`), name);
  assert.equal(filenameFromDisposition('attachment; FILENAME="a b.csv"'), "a b.csv");
  // RFC 6266: filename* (UTF-8, percent-encoded) wins over filename
  assert.equal(
    filenameFromDisposition("attachment; filename=\"plain.csv\"; filename*=UTF-8''k%C3%A4se%20report.csv"),
    "käse report.csv",
  );
  assert.equal(filenameFromDisposition('attachment; filename="say \\"hi\\".csv"'), 'say "hi".csv');
  // no name, or one that is a path: the fallback, or the last segment
  assert.equal(filenameFromDisposition("attachment", "export.csv"), "export.csv");
  assert.equal(filenameFromDisposition(null, "export.csv"), "export.csv");
  assert.equal(filenameFromDisposition('attachment; filename="../../etc/passwd"'), "passwd");
  assert.equal(filenameFromDisposition('attachment; filename=".."', "x.csv"), "x.csv");
  assert.equal(filenameFromDisposition("attachment; filename*=UTF-8''%E0%A4%A", "x.csv"), "x.csv");
});

test("formatCacheSavings: the line under the Total Cost card, hidden (\"\") when both are 0", () => {
  assert.equal(
    formatCacheSavings("12.500000000000", "1.250000000000"),
    "Prompt cache saved $12.50 (writes cost $1.25 more)",
  );
  assert.equal(formatCacheSavings("0.001234000000", "0.000000000000"), "Prompt cache saved $0.0012");
  assert.equal(formatCacheSavings("0.000000000000", "3.5"), "Prompt cache saved $0.00 (writes cost $3.50 more)");
  assert.equal(formatCacheSavings("0.000000000000", "0.000000000000"), "");
  assert.equal(formatCacheSavings(undefined, null), "");
});
