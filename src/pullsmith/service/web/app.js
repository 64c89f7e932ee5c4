// The web UI of `pullsmith serve`: plain JavaScript over the JSON API (docs/api.md).
// The page was opened through /?token=, so the browser holds the access cookie and every
// same-origin fetch and EventSource carries it. No build step, nothing from the network.
"use strict";

const POLL_MS = 2000;
const SLOW_POLL_MS = 5000;
const LONG_LINES = 12; // outputs longer than this are collapsed
const FINISHED = new Set([
  "passed", "failed", "passed-unfinished", "untested", "error", "cancelled", "interrupted",
]);
const EVENT_TYPES = (document.querySelector('meta[name="pullsmith-event-types"]')?.content || "")
  .split(",").map((t) => t.trim()).filter(Boolean);

// --- small helpers ------------------------------------------------------------------------

function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, value);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid == null || kid === false) continue;
    el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

const $ = (selector, root = document) => root.querySelector(selector);
// Replaces the children of `el` (arrays are flattened; null and false are left out).
const fill = (el, ...kids) => el.replaceChildren(
  ...kids.flat(Infinity).filter((k) => k != null && k !== false));
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const short = (commit) => (commit ? String(commit).slice(0, 8) : "");
const basename = (path) => String(path || "").replace(/\/+$/, "").split("/").pop() || path;
const lines = (text) => (text ? String(text).replace(/\n$/, "").split("\n").length : 0);
const lastLine = (text) =>
  String(text || "").split("\n").map((l) => l.trim()).filter(Boolean).pop() || "";

function age(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.floor(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
  return `${Math.floor(seconds / 86400)} d`;
}

function seconds(value) {
  if (value == null) return "";
  const s = Number(value);
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function badge(value, prefix = "s") {
  return h("span", { class: `badge ${prefix}-${String(value).replace(/[^a-z-]/g, "")}`, text: value });
}

function exitBadge(code) {
  if (code == null) return h("span", { class: "badge s-untested", text: "not run" });
  return h("span", { class: `badge ${code === 0 ? "s-passed" : "s-failed"}`, text: `exit ${code}` });
}

// A command line: shown whole when short, its first line and a fold when long.
function commandLine(command) {
  const text = String(command || "");
  const n = lines(text);
  if (n <= 3 && text.length <= 300) return h("code", { class: "cmd", text: `$ ${text}` });
  return h("details", { class: "fold cmd-fold" },
    h("summary", {}, h("code", { class: "cmd", text: `$ ${text.split("\n")[0].slice(0, 120)} …` }),
      ` command, ${n} lines`),
    h("pre", { class: "out", text }));
}

// A block of program output: shown as it is when short, collapsed when long.
function output(text, label = "output", fold = false) {
  if (!text || !String(text).trim()) return h("span", { class: "muted", text: " (no output)" });
  const n = lines(text);
  const pre = h("pre", { class: "out", text: String(text).replace(/\n$/, "") });
  if (n <= LONG_LINES && !fold) return pre;
  return h("details", { class: "fold" }, h("summary", {}, `${label}, ${n} lines`), pre);
}

// --- the API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// Calls the API; an error response becomes an ApiError carrying the API's own sentence.
async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (_) {
    throw new ApiError(
      `the service at ${location.host} does not answer; is \`pullsmith serve\` still running?`, 0,
    );
  }
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const said = data && typeof data.error === "string" ? data.error
      : `the service answered ${response.status} without saying why.`;
    throw new ApiError(said, response.status);
  }
  return data;
}

// The banner at the top: the last error of a background call (polling, the stream).
const notices = new Map();
function notice(source, message) {
  if (message) notices.set(source, message);
  else notices.delete(source);
  const el = $("#notice");
  const shown = [...notices.values()].pop();
  el.hidden = !shown;
  el.textContent = shown || "";
}

// Runs `fn` now and then every `ms` (the next run starts when the last one ended).
function every(ms, fn) {
  let stopped = false;
  const loop = async () => {
    if (stopped) return;
    try {
      await fn();
    } finally {
      if (!stopped) setTimeout(loop, typeof ms === "function" ? ms() : ms);
    }
  };
  loop();
  return () => { stopped = true; };
}

// An action button's message: the API's sentence when it refused, or what was done.
function say(el, message, ok = false) {
  el.hidden = !message;
  el.className = ok ? "say ok" : "say error";
  el.setAttribute("role", ok ? "status" : "alert");
  el.textContent = message || "";
}

async function pollHealth() {
  const el = $("#health");
  try {
    const health = await api("GET", "/api/health");
    window.pullsmithHealth = health;
    fill(el,
      h("span", { class: `dot ${health.status === "ok" ? "ok" : "warn"}` }),
      `${health.status} · ${health.tasks.running} running · ${health.tasks.queued} queued · `
        + `${plural(health.workers, "worker")} · `,
      h("span", { class: "model", title: health.model, text: health.model }),
    );
    notice("health", null);
  } catch (e) {
    fill(el, h("span", { class: "dot bad" }), "offline");
    notice("health", e.message);
  }
}

// --- the task list and the form ------------------------------------------------------------

const verdictCache = new Map(); // task id -> {key, text, good}

function verdictOf(task) {
  const v = task.verdicts || [];
  if (!v.length) {
    return { text: task.error || (task.state === "cancelled" ? "cancelled" : "no result"), good: null };
  }
  if (v.length === 1) {
    const only = v[0];
    if (only.tests_pass) return { text: "tests pass", good: true };
    if (only.tests_exit_code == null) return { text: "no test run", good: null };
    return { text: `tests fail (exit ${only.tests_exit_code})`, good: false };
  }
  const passing = v.filter((a) => a.tests_pass).length;
  const chosen = v.find((a) => a.chosen);
  return {
    text: `${passing}/${v.length} pass, #${chosen ? chosen.attempt : "?"} chosen`,
    good: passing > 0,
  };
}

function verdictCell(task) {
  if (task.state === "queued") return h("td", { class: "muted", text: "waiting" });
  if (task.state === "running") return h("td", { class: "muted", text: "working…" });
  const cached = verdictCache.get(task.id);
  if (!cached) return h("td", { class: "muted", text: "…" });
  const cls = cached.good === true ? "good" : cached.good === false ? "bad" : "muted";
  return h("td", { class: `verdict ${cls}`, title: cached.text, text: cached.text });
}

async function loadVerdicts(tasks) {
  const missing = tasks.filter((t) => FINISHED.has(t.state)
    && verdictCache.get(t.id)?.key !== t.finished_at).slice(0, 8);
  for (const task of missing) {
    try {
      const detail = await api("GET", `/api/tasks/${encodeURIComponent(task.id)}`);
      verdictCache.set(task.id, { key: task.finished_at, ...verdictOf(detail) });
    } catch (_) {
      // The list's own poll reports the service's errors.
    }
  }
  return missing.length > 0;
}

function taskRow(task) {
  const link = `/tasks/${encodeURIComponent(task.id)}`;
  const row = h("tr", { class: "clickable", "data-id": task.id },
    h("td", {}, badge(task.state)),
    h("td", { class: "repo", title: task.repo }, basename(task.repo),
      task.base ? h("span", { class: "muted" }, ` @ ${task.base}`) : null),
    h("td", { class: "instruction" },
      h("a", { href: link, title: task.instruction, text: task.instruction })),
    h("td", { class: "num" }, task.attempts, task.until_pass ? h("span", { class: "muted", title: "until pass" }, " ⤓") : null),
    verdictCell(task),
    h("td", {}, task.pr ? h("a", { href: `/prs#pr-${task.pr}`, text: `#${task.pr}` }) : h("span", { class: "muted", text: "—" })),
    h("td", { class: "age", title: task.created_at, text: age(task.created_at) }),
  );
  row.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;
    location.href = link;
  });
  return row;
}

function taskForm(onQueued) {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem("pullsmith.form") || "{}");
  } catch (_) {
    saved = {};
  }
  const field = (id, label, input, hint) => h("div", { class: "field" },
    h("label", { for: id, text: label }), input, hint ? h("span", { class: "hint", text: hint }) : null);
  const repo = h("input", { id: "f-repo", name: "repo", type: "text", autocomplete: "off",
    spellcheck: "false", placeholder: "/home/me/project", value: saved.repo || "" });
  const base = h("input", { id: "f-base", name: "base", type: "text", autocomplete: "off",
    spellcheck: "false", placeholder: "HEAD", value: saved.base || "" });
  const instruction = h("textarea", { id: "f-instruction", name: "instruction", rows: "4",
    placeholder: "What to do, in words: the bug, the feature, what should change." });
  const attempts = h("input", { id: "f-attempts", name: "attempts", type: "number", min: "1",
    max: "20", value: "1" });
  const untilPass = h("input", { id: "f-until-pass", name: "until_pass", type: "checkbox" });
  const model = h("input", { id: "f-model", name: "model", type: "text", autocomplete: "off",
    spellcheck: "false", placeholder: "the service's model" });
  const submit = h("button", { type: "submit", class: "primary", text: "Queue task" });
  const message = h("p", { class: "say", hidden: true });
  const form = h("form", { id: "task-form", novalidate: true },
    field("f-repo", "Repository path", repo, "a git repository on the server's machine, or a URL"),
    h("div", { class: "row" },
      field("f-base", "Base", base),
      field("f-attempts", "Attempts", attempts)),
    field("f-instruction", "Instruction", instruction),
    h("div", { class: "check" }, untilPass,
      h("label", { for: "f-until-pass", text: "Until pass: stop at the first attempt whose tests pass" })),
    field("f-model", "Model (optional)", model),
    h("div", { class: "actions" }, submit),
    message,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { repo: repo.value.trim(), instruction: instruction.value };
    if (base.value.trim()) body.base = base.value.trim();
    if (attempts.value !== "") body.attempts = Number(attempts.value);
    if (untilPass.checked) body.until_pass = true;
    if (model.value.trim()) body.model = model.value.trim();
    submit.disabled = true;
    say(message, null);
    try {
      const task = await api("POST", "/api/tasks", body);
      localStorage.setItem("pullsmith.form", JSON.stringify({ repo: body.repo, base: body.base || "" }));
      instruction.value = "";
      message.hidden = false;
      message.className = "say ok";
      message.setAttribute("role", "status");
      fill(message, "Queued ",
        h("a", { href: `/tasks/${encodeURIComponent(task.id)}`, text: task.id }), ".");
      onQueued();
    } catch (e) {
      say(message, e.message);
    } finally {
      submit.disabled = false;
    }
  });
  const setModelHint = () => {
    if (window.pullsmithHealth) model.placeholder = window.pullsmithHealth.model;
  };
  setTimeout(setModelHint, 500);
  return form;
}

function tasksView(main) {
  document.title = "Tasks · pullsmith";
  const body = h("tbody");
  const count = h("span", { class: "count" });
  const empty = h("p", { class: "empty", hidden: true,
    text: "No tasks yet: queue one with the form, and it shows up here." });
  let refresh;
  main.append(h("div", { class: "split" },
    h("section", { class: "card" }, h("h2", { text: "Queue a task" }), taskForm(() => refresh())),
    h("section", { class: "card" },
      h("h2", {}, "Tasks ", count),
      h("table", { class: "list", id: "task-table" },
        h("thead", {}, h("tr", {},
          ["State", "Repository", "Instruction", "Attempts", "Verdict", "PR", "Age"]
            .map((title) => h("th", { text: title })))),
        body),
      empty)));
  refresh = async () => {
    try {
      const page = await api("GET", "/api/tasks?limit=100");
      const render = () => fill(body, ...page.tasks.map(taskRow));
      render();
      count.textContent = page.total > page.tasks.length
        ? `(${page.tasks.length} of ${page.total})` : `(${page.total})`;
      empty.hidden = page.total > 0;
      notice("tasks", null);
      if (await loadVerdicts(page.tasks)) render();
    } catch (e) {
      notice("tasks", e.message);
    }
  };
  every(POLL_MS, refresh);
}

// --- the task page ---------------------------------------------------------------------------

function parseDiff(text) {
  const files = [];
  let file = null;
  let oldLine = 0;
  let newLine = 0;
  for (const line of String(text || "").replace(/\n$/, "").split("\n")) {
    if (line.startsWith("diff --git ")) {
      const names = line.match(/^diff --git a\/(.*) b\/(.*)$/);
      file = { name: names ? names[2] : line.slice(11), rows: [], added: 0, removed: 0, inHunk: false };
      files.push(file);
      file.rows.push({ kind: "meta", text: line });
      continue;
    }
    if (!file) {
      if (!line) continue;
      file = { name: "(diff)", rows: [], added: 0, removed: 0, inHunk: false };
      files.push(file);
    }
    const hunk = line.match(/^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@(.*)$/);
    if (hunk) {
      file.inHunk = true;
      oldLine = Number(hunk[1]);
      newLine = Number(hunk[2]);
      file.rows.push({ kind: "hunk", text: line, context: hunk[3] });
    } else if (!file.inHunk) {
      if (line.startsWith("+++ ") && !line.endsWith("/dev/null")) file.name = line.replace(/^\+\+\+ b\//, "");
      file.rows.push({ kind: "meta", text: line });
    } else if (line.startsWith("+")) {
      file.added += 1;
      file.rows.push({ kind: "add", text: line, right: newLine++ });
    } else if (line.startsWith("-")) {
      file.removed += 1;
      file.rows.push({ kind: "del", text: line, left: oldLine++ });
    } else if (line.startsWith("\\")) {
      file.rows.push({ kind: "meta", text: line });
    } else {
      file.rows.push({ kind: "ctx", text: line, left: oldLine++, right: newLine++ });
    }
  }
  return files;
}

function diffFile(file, open) {
  const rows = file.rows.filter((r) => r.kind !== "meta").map((r) => {
    const code = r.kind === "hunk"
      ? h("span", { class: "code" }, r.text.slice(0, r.text.length - r.context.length),
        h("span", { class: "fn", text: r.context }))
      : h("span", { class: "code", text: r.text || " " });
    return h("div", { class: `dl ${r.kind}` },
      h("span", { class: "ln", text: r.left ?? "" }),
      h("span", { class: "ln", text: r.right ?? "" }),
      code);
  });
  const meta = file.rows.filter((r) => r.kind === "meta").map((r) => r.text).join("\n");
  return h("details", { class: "file", open },
    h("summary", { title: meta },
      h("span", { class: "fname", text: file.name }),
      h("span", { class: "plus", text: `+${file.added}` }),
      h("span", { class: "minus", text: `−${file.removed}` })),
    h("div", { class: "diff" }, rows));
}

function eventEntry(page, event) {
  const d = event.data || {};
  const t0 = page.t0 ?? event.ts;
  page.t0 = t0;
  const kind = event.type;
  let label = kind;
  const body = [];
  let cls = "";
  switch (kind) {
    case "task.started":
      label = "start";
      body.push(`${d.model} · ${d.protocol} protocol · sandbox ${d.sandbox} · base ${d.base}`);
      break;
    case "workspace.created":
      label = "worktree";
      body.push("branch ", h("code", { text: d.branch }), ` from ${short(d.base_commit)}`,
        d.user_tree_dirty ? " (your working tree had uncommitted changes; they are not in the base)" : "");
      break;
    case "setup.started":
      label = "setup";
      cls = "running";
      body.push(commandLine(d.command), h("span", { class: "muted",
        text: ` running… network ${d.network ? "on" : "off"}${d.secrets && d.secrets.length ? ` · secrets ${d.secrets.join(", ")}` : ""}` }));
      break;
    case "setup.ran":
      label = "setup";
      cls = d.exit_code === 0 ? "good" : "bad";
      body.push(commandLine(d.command), " ", exitBadge(d.exit_code),
        h("span", { class: "muted", text: ` ${seconds(d.seconds)}` }),
        d.timed_out ? h("span", { class: "badge s-failed", text: "timed out" }) : null,
        d.left_out && d.left_out.length
          ? h("div", { class: "muted", text: `kept out of the diff: ${d.left_out.join(", ")}` }) : null,
        output(d.output, "output", true));
      break;
    case "tests.started":
      label = "tests";
      cls = "running";
      body.push(h("span", { class: "phase", text: d.phase }), " ", h("code", { text: d.command }),
        h("span", { class: "muted", text: " running…" }));
      break;
    case "tests.ran":
      label = "tests";
      cls = d.exit_code === 0 ? "good" : "bad";
      body.push(h("span", { class: "phase", text: d.phase }), " ", h("code", { text: d.command }), " ",
        exitBadge(d.exit_code),
        h("span", { class: "muted", text: d.same_as != null
          ? " the check's run stands (nothing changed since)"
          : d.from_attempt != null
            ? ` attempt ${d.from_attempt}'s run stands (the same commit and command)`
            : ` ${seconds(d.seconds)}` }),
        d.timed_out ? h("span", { class: "badge s-failed", text: "timed out" }) : null,
        lastLine(d.output) ? h("div", { class: "gist", text: lastLine(d.output) }) : null,
        output(d.output, "output", true));
      break;
    case "model.reply": {
      label = "model";
      const tokens = d.prompt_tokens || d.completion_tokens
        ? ` · ${d.prompt_tokens} → ${d.completion_tokens} tokens` : "";
      const head = h("span", { class: "muted", text: `turn ${d.turn} · ${seconds(d.seconds)}${tokens}` });
      const text = String(d.text || "").trim();
      const first = text.split("\n")[0];
      if (lines(text) > 4 || text.length > 400) {
        body.push(h("details", { class: "fold" },
          h("summary", {}, head, " ", h("span", { class: "said", text: first })),
          h("pre", { class: "reply", text })));
      } else {
        body.push(head, h("pre", { class: "reply", text: text || "(empty reply)" }));
      }
      if (d.tool_calls && d.tool_calls.length) {
        body.push(h("div", { class: "muted", text: d.tool_calls.map((c) => c.name).join(", ") }));
      }
      break;
    }
    case "command.started":
      label = "command";
      cls = "running";
      body.push(commandLine(d.command), h("span", { class: "muted", text: " running…" }));
      break;
    case "command.finished":
      label = "command";
      cls = d.exit_code === 0 ? "" : "bad";
      body.push(commandLine(d.command), " ", exitBadge(d.exit_code),
        h("span", { class: "muted", text: ` ${seconds(d.seconds)}` }),
        d.timed_out ? h("span", { class: "badge s-failed", text: "timed out" }) : null,
        d.cancelled ? h("span", { class: "badge s-cancelled", text: "cancelled" }) : null,
        d.truncated ? h("span", { class: "muted", text: " (output clipped)" }) : null,
        output(d.output));
      break;
    case "edit":
      label = "edit";
      cls = d.ok ? "good" : "bad";
      body.push(`${d.form} ${d.ok ? "applied" : "failed"}`, d.detail ? `: ${d.detail}` : "");
      break;
    case "format.error":
      label = "format";
      cls = "bad";
      body.push(d.message);
      break;
    case "finish.rejected":
      label = "rejected";
      cls = "bad";
      body.push("the model said it was done, but the tests fail", output(d.reason, "why"));
      break;
    case "agent.finished":
      label = "finished";
      cls = "good";
      body.push(`the model finished: ${d.summary}`);
      break;
    case "limit.reached":
      label = "stopped";
      cls = "bad";
      body.push(`${d.reason} (after ${plural(d.turn, "turn")})`);
      break;
    case "context.compacted":
      label = "compacted";
      body.push(`${plural(d.dropped_turns, "older turn")} became a summary (${d.trigger}) · `
        + `${d.tokens_before} → ${d.tokens_after} tokens · ${seconds(d.seconds)}`,
        d.fallback ? h("div", { class: "muted", text: `pullsmith's own summary: ${d.fallback}` }) : null,
        output(d.summary, "summary"));
      break;
    case "repair.tried":
      label = "repair";
      body.push(`${d.function} in ${d.path} (rank ${d.rank}${(d.sample || 1) > 1 ? `, ask ${d.sample}` : ""}${d.form === "lines" ? ", lines" : ""}): ${d.outcome}`,
        h("span", { class: "muted", text: ` · ${seconds(d.seconds)} · ${d.completion_tokens} tokens` }),
        d.detail ? h("div", { class: "muted", text: d.detail }) : null);
      break;
    case "diff.shrunk": {
      label = "shrink";
      const dropped = d.dropped || [];
      body.push(dropped.length
        ? `${plural(dropped.length, "hunk")} of ${d.hunks} left out: the tests pass without them`
        : `nothing left out (${d.status}): ${d.reason}`,
        h("span", { class: "muted", text: ` · ${plural(d.test_runs, "test run")} · ${seconds(d.seconds)}` }),
        ...dropped.map((hunk) => output(hunk.diff, `${hunk.path} (${hunk.kind})`)));
      break;
    }
    case "summary.written":
      label = "summary";
      body.push(d.source === "diff" ? "written from the final diff: " : "the model's finish summary: ",
        h("span", { class: "said", text: d.summary || "(none)" }),
        d.error ? h("div", { class: "muted", text: `not from the diff: ${d.error}` }) : null,
        d.reason ? h("div", { class: "muted", text: `not asked again: ${d.reason}` }) : null);
      break;
    case "commit.created":
      label = "commit";
      body.push(h("code", { text: short(d.commit) }), " on ", h("code", { text: d.branch }));
      break;
    case "attempt.finished":
      label = "attempt";
      body.push(badge(d.status), ` ${d.exit_reason} · ${plural(d.turns, "turn")} · ${seconds(d.wall_seconds)}`,
        d.diff_stat ? h("div", { class: "gist", text: lastLine(d.diff_stat) }) : null,
        d.error ? h("div", { class: "bad", text: d.error }) : null);
      break;
    case "attempts.started":
      label = "best-of-n";
      body.push(`${plural(d.attempts, "attempt")}${d.until_pass ? ", until one passes" : ""}`);
      break;
    case "attempt.scored":
      label = "scored";
      body.push(`attempt ${d.attempt}: `, badge(d.status),
        ` tests ${d.tests_pass ? "pass" : "fail"} · ${d.failing_tests} failing · ${d.changed_lines} changed lines`);
      break;
    case "attempts.selected":
      label = "chosen";
      cls = "good";
      body.push(`attempt ${d.attempt} of ${d.of}: ${d.reason}`);
      break;
    case "pr.opened":
    case "pr.updated":
      label = "pr";
      body.push(`pull request #${d.number} ${kind === "pr.opened" ? "opened" : "updated"}: ${d.title} `,
        badge(d.checks, "c"));
      break;
    case "pr.published":
      label = "published";
      body.push(h("a", { href: d.url, text: d.url, rel: "noreferrer" }));
      break;
    case "warning":
      label = "warning";
      cls = "warn";
      body.push(d.message);
      break;
    case "error":
      label = "error";
      cls = "bad";
      body.push(d.message);
      break;
    case "task.finished":
      label = "done";
      cls = d.status === "passed" ? "good" : "bad";
      body.push(badge(d.status), ` ${d.summary || d.exit_reason} · ${plural(d.turns, "turn")} · ${seconds(d.wall_seconds)}`,
        d.error ? h("div", { class: "bad", text: d.error }) : null);
      break;
    case "listener.failed":
      label = "listener";
      cls = "warn";
      body.push(`${d.listener} was dropped: ${d.error}`);
      break;
    default:
      body.push(h("pre", { class: "out", text: JSON.stringify(d, null, 1) }));
  }
  return h("li", { class: cls ? `ev is-${cls}` : "ev", "data-type": kind, "data-id": event.id },
    h("span", { class: "t", title: new Date(event.ts * 1000).toLocaleString(), text: `+${(event.ts - t0).toFixed(1)}s` }),
    h("span", { class: "k" }, label,
      d.attempt ? h("span", { class: "att", text: `attempt ${d.attempt}` }) : null),
    h("div", { class: "b" }, body));
}

function taskView(main, id) {
  document.title = `Task ${id} · pullsmith`;
  const path = `/api/tasks/${encodeURIComponent(id)}`;
  const page = {
    id, task: null, pr: null, lastId: 0, t0: null, tests: {}, scored: new Map(),
    diffKey: null, diffAttempt: null, busy: false, message: null, messageOk: false,
    pending: new Map(), // "command:<attempt>:<turn>" -> the entry of a command still running
  };
  const head = h("section", { class: "card head", id: "task-head" }, h("p", { class: "muted", text: "Loading…" }));
  const streamState = h("span", { class: "stream", id: "stream-state", text: "connecting…" });
  const log = h("ol", { class: "log", id: "log" });
  const attempts = h("div", { id: "attempts", class: "attempts" });
  const evidence = h("div", { id: "evidence", class: "evidence" });
  const diff = h("div", { id: "diff" }, h("p", { class: "muted", text: "The diff appears here when the task has run." }));
  const review = h("div", { id: "review", class: "review" });
  main.append(
    h("p", { class: "crumbs" }, h("a", { href: "/", text: "← Tasks" })),
    head,
    h("div", { class: "task-grid" },
      h("section", { class: "card" }, h("h2", {}, "Live log ", streamState), log,
        h("p", { class: "muted empty", id: "log-empty", text: "No events yet: the task is waiting for a worker." })),
      h("div", { class: "side" },
        h("section", { class: "card" }, h("h2", { text: "Attempts" }), attempts),
        h("section", { class: "card" }, h("h2", { text: "Evidence: the tests before and after" }), evidence),
        h("section", { class: "card" }, h("h2", { text: "Diff" }), diff),
        h("section", { class: "card", id: "review-card", hidden: true }, h("h2", { text: "Review" }), review))));

  const setStream = (state) => {
    streamState.textContent = state;
    streamState.className = `stream ${state.replace(/[^a-z]/g, "")}`;
  };

  const addEvent = (event) => {
    if (!event || typeof event.id !== "number" || event.id <= page.lastId) return;
    page.lastId = event.id;
    $("#log-empty")?.remove();
    const d = event.data || {};
    const entry = eventEntry(page, event);
    const key = event.type.startsWith("command.") ? `command:${d.attempt || 0}:${d.turn}`
      : event.type.startsWith("tests.") ? `tests:${d.attempt || 0}:${d.phase}` : null;
    // Follows the log once the reader scrolled down to its end themselves.
    const follow = window.scrollY > 0
      && window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 40;
    const running = key && page.pending.get(key);
    if (running && (event.type === "command.finished" || event.type === "tests.ran")) {
      running.replaceWith(entry);
      page.pending.delete(key);
    } else {
      log.append(entry);
      if (event.type === "command.started" || event.type === "tests.started") page.pending.set(key, entry);
    }
    if (follow) window.scrollTo(0, document.documentElement.scrollHeight);
    if (event.type === "tests.ran") page.tests[d.phase] = { ...d, event_id: event.id };
    if (event.type === "attempt.scored") page.scored.set(d.attempt, d);
    if (["attempt.finished", "attempt.scored", "pr.opened", "pr.updated", "task.finished"].includes(event.type)) {
      refresh();
    } else if (event.type === "tests.ran") {
      renderEvidence();
    }
  };

  // Reads the rest of a finished task's events at once (its stream ends by itself).
  const catchUp = async () => {
    const response = await fetch(`${path}/events?after=${page.lastId}`, { credentials: "same-origin" });
    if (!response.ok) return;
    for (const frame of (await response.text()).split("\n\n")) {
      const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) addEvent(JSON.parse(data));
    }
  };

  const openStream = () => {
    const stream = new EventSource(`${path}/events`);
    const onEvent = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (_) {
        return;
      }
      addEvent(event);
      if (event.type === "task.finished") {
        stream.close();
        setStream("ended");
      }
    };
    for (const type of EVENT_TYPES) stream.addEventListener(type, onEvent);
    stream.addEventListener("message", onEvent);
    stream.addEventListener("open", () => { setStream("live"); notice("stream", null); });
    stream.addEventListener("error", async () => {
      if (stream.readyState === EventSource.CLOSED) {
        setStream("ended");
        try {
          await api("GET", path);
          notice("stream", "the event stream was refused; reload the page to try again.");
        } catch (e) {
          notice("stream", e.message);
        }
        return;
      }
      setStream("reconnecting…");
      try {
        const task = await api("GET", path);
        if (FINISHED.has(task.state)) {
          // It ended without task.finished (cancelled while queued, interrupted): read the rest.
          stream.close();
          await catchUp();
          setStream("ended");
        }
        notice("stream", null);
      } catch (e) {
        notice("stream", e.message);
      }
    });
  };

  const act = async (run) => {
    page.busy = true;
    page.message = null;
    renderHead();
    try {
      page.message = await run();
      page.messageOk = true;
    } catch (e) {
      page.message = e.message;
      page.messageOk = false;
    } finally {
      page.busy = false;
    }
    await refresh();
  };

  const cancel = () => act(async () => {
    const answer = await api("POST", `${path}/cancel`);
    return answer.cancelling ? "Cancelling: the run stops within a second or two." : "Cancelled before it started.";
  });
  const createPr = () => act(async () => {
    const pr = await api("POST", `${path}/pr`);
    return pr.created ? `Recorded pull request #${pr.number}.` : `Pull request #${pr.number} was recorded already.`;
  });
  const merge = () => act(async () => {
    const done = await api("POST", `/api/prs/${page.pr.number}/merge`, {});
    return `Merged pull request #${done.number} into ${done.base} (${done.method}, ${short(done.commit)}).`;
  });

  // The follow-up box: built once, so what is typed survives the head's re-renders.
  const followText = h("textarea", { id: "follow-up-instruction", name: "instruction", rows: "3",
    placeholder: "What to do next on this pull request's branch, e.g. \"add a test for it\"." });
  const followButton = h("button", { type: "submit", class: "primary", text: "Follow up" });
  const followBox = h("form", { id: "follow-up", class: "follow-up", novalidate: true },
    h("div", { class: "field" },
      h("label", { for: "follow-up-instruction", text: "Follow-up instruction" }), followText,
      h("span", { class: "hint", text: "a new task that adds its commits to this task's pull request" })),
    h("div", { class: "actions" }, followButton));
  followBox.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (page.busy) return;
    page.busy = true;
    page.message = null;
    renderHead();
    try {
      const task = await api("POST", `${path}/follow-up`, { instruction: followText.value });
      location.href = `/tasks/${encodeURIComponent(task.id)}`;
      return;
    } catch (e) {
      page.message = e.message;
      page.messageOk = false;
    }
    page.busy = false;
    await refresh();
  });

  function renderHead() {
    const task = page.task;
    if (!task) return;
    const pr = page.pr;
    const finished = FINISHED.has(task.state);
    const buttons = [];
    if (!finished) {
      buttons.push(h("button", { id: "cancel", class: "danger", disabled: page.busy, onclick: cancel, text: "Cancel task" }));
    }
    if (finished && task.commit && !task.pr) {
      buttons.push(h("button", { id: "create-pr", class: "primary", disabled: page.busy, onclick: createPr, text: "Create PR" }));
    }
    // Not while this task runs, nor while a follow-up of its PR is queued or running on the
    // branch (the API refuses that merge with a 409): then a line says what to wait for.
    const working = pr && pr.working && pr.working.length ? pr.working[0] : null;
    if (finished && pr && pr.state === "open" && !working) {
      buttons.push(h("button", { id: "merge-pr", class: "primary", disabled: page.busy, onclick: merge, text: `Merge PR #${pr.number} into ${pr.base}` }));
    }
    const mergeWait = finished && pr && pr.state === "open" && working
      ? h("p", { class: "muted", id: "merge-wait" }, "Merge waits for follow-up ",
        h("a", { href: `/tasks/${encodeURIComponent(working.id)}`, text: working.id }),
        ` (${working.state}) on this branch: let it finish, or cancel it.`)
      : null;
    const usage = task.usage;
    const facts = [
      ["task", h("code", { text: task.id })],
      ["repository", h("code", { title: task.repo, text: task.repo })],
      ["base", task.base || "HEAD"],
      ["model", h("span", { class: "model", title: task.model, text: task.model })],
      ["attempts", `${task.attempts}${task.until_pass ? ", until pass" : ""}`],
      ["queued", `${age(task.created_at)} ago`],
      task.started_at ? ["ran", task.finished_at
        ? seconds((Date.parse(task.finished_at) - Date.parse(task.started_at)) / 1000)
        : `for ${age(task.started_at)}`] : null,
      usage ? ["turns", `${usage.turns}`] : null,
      task.tries > 1 ? ["tries", `${task.tries} (interrupted ${task.interruptions}×)`] : null,
      task.branch ? ["branch", h("code", { text: task.branch })] : null,
    ].filter(Boolean);
    const message = h("p", { id: "action-message" });
    say(message, page.message, page.messageOk);
    const followable = finished && pr && pr.state === "open";
    followButton.disabled = page.busy;
    fill(head,
      h("div", { class: "title" }, badge(task.state), h("h1", { title: task.instruction, text: task.instruction })),
      task.follows ? h("p", { class: "follows", id: "task-follows" }, "follow-up of ",
        h("a", { href: `/tasks/${encodeURIComponent(task.follows)}`, text: task.follows })) : null,
      h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", {}, v)))),
      task.summary ? h("p", { class: "summary" }, "Summary: ", task.summary) : null,
      task.error ? h("p", { class: "say error", text: task.error }) : null,
      h("div", { class: "actions" }, buttons,
        pr ? h("span", { class: "pr", id: "task-pr" },
          h("a", { href: `/prs#pr-${pr.number}`, text: `PR #${pr.number}` }), " ",
          h("span", { class: "muted", text: `${pr.head} → ${pr.base}` }), " ",
          badge(pr.state, "p"), " ", badge(`checks ${pr.checks}`, "c"))
          : null),
      mergeWait,
      message,
      followable ? followBox : null);
  }

  function renderAttempts() {
    const task = page.task;
    let verdicts = task ? task.verdicts || [] : [];
    if (!verdicts.length && page.scored.size) {
      verdicts = [...page.scored.values()].map((s) => ({ ...s, chosen: false }));
    }
    if (!verdicts.length) {
      fill(attempts, h("p", { class: "muted", text: task && FINISHED.has(task.state)
        ? "No attempt ran." : "Each attempt shows here with its test verdict when it ends." }));
      return;
    }
    const many = verdicts.length > 1;
    fill(attempts, ...verdicts.map((v) => {
      const shown = page.diffAttempt === v.attempt;
      const tests = v.tests_pass ? "tests pass"
        : v.tests_exit_code === null ? "no test run after" : "tests fail";
      return h("div", { class: `attempt ${v.chosen ? "chosen" : ""} ${shown && many ? "shown" : ""}`, "data-attempt": v.attempt },
        h("div", { class: "attempt-head" }, h("strong", { text: `Attempt ${v.attempt}` }),
          v.chosen ? h("span", { class: "badge s-chosen", text: "chosen" }) : null),
        h("div", {}, badge(v.status)),
        h("div", { class: v.tests_pass ? "good" : "bad" }, tests,
          v.tests_exit_code != null ? ` (exit ${v.tests_exit_code})` : "",
          v.failing_tests ? ` · ${plural(v.failing_tests, "failing test")}` : ""),
        v.changed_lines != null ? h("div", { class: "muted", text: `${plural(v.changed_lines, "changed line")}` }) : null,
        v.commit ? h("div", { class: "muted" }, "commit ", h("code", { text: short(v.commit) })) : h("div", { class: "muted", text: "no commit" }),
        many && task && task.result ? h("button", { class: "small", onclick: () => loadDiff(v.attempt), text: shown ? "diff shown" : "show diff" }) : null);
    }));
  }

  function testCard(title, run) {
    if (!run) return h("div", { class: "test" }, h("strong", { text: title }), h("p", { class: "muted", text: "not run (yet)" }));
    return h("div", { class: `test ${run.exit_code === 0 ? "pass" : "fail"}` },
      h("div", { class: "attempt-head" }, h("strong", { text: title }), exitBadge(run.exit_code)),
      h("div", {}, h("code", { text: run.command }), h("span", { class: "muted", text: ` · ${seconds(run.seconds)}${run.event_id ? ` · event ${run.event_id}` : ""}` })),
      lastLine(run.output) ? h("div", { class: "gist", text: lastLine(run.output) }) : null,
      h("details", { class: "fold" }, h("summary", {}, `output, ${lines(run.output)} lines`), h("pre", { class: "out", text: run.output || "" })));
  }

  // The pull request's latest review (`pullsmith pr review N`): verdict, then each finding
  // with its location and, for a checked one, the command that demonstrated it (or not).
  function renderReview() {
    const r = page.pr && page.pr.review;
    $("#review-card").hidden = !r;
    if (!r) return;
    const stale = page.pr.head_commit && r.head !== page.pr.head_commit;
    fill(review,
      h("p", {}, h("span", { class: `badge ${r.verdict === "correct" ? "s-passed" : "s-failed"}`, text: r.verdict }),
        " ", r.reasoning),
      h("p", { class: "muted" }, `${plural(r.findings.length, "finding")} · ${r.model} · commit `,
        h("code", { text: short(r.head) }), stale ? " (the branch has moved on since)" : "",
        r.remote_url ? [" · ", h("a", { href: r.remote_url, text: "on GitHub" })] : null),
      r.findings.map((f) => {
        const demo = f.demonstration;
        return h("div", { class: `finding ${f.priority.toLowerCase()}` },
          h("div", { class: "attempt-head" }, h("strong", { text: `[${f.priority}] ${f.title}` }),
            f.check !== "not checked" ? h("span", { class: `badge ${{ demonstrated: "s-passed", "behaviour changed": "s-chosen" }[f.check] || "s-cancelled"}`, text: f.check }) : null),
          h("div", { class: "muted" }, h("code", { text: `${f.location.path}:${f.location.start_line}${f.location.end_line !== f.location.start_line ? `-${f.location.end_line}` : ""}` }),
            ` · confidence ${Number(f.confidence).toFixed(2)}`),
          h("p", { text: f.body }),
          demo && demo.command ? h("details", { class: "fold" }, h("summary", {}, h("code", { text: `$ ${demo.command.split("\n")[0]}` })),
            h("p", { class: "muted", text: demo.reason }),
            demo.runs.map((run) => h("div", {}, h("strong", { text: `on the ${run.tree === "head" ? "change" : "base"}: ` }), exitBadge(run.exit_code),
              run.output ? h("pre", { class: "out", text: run.output }) : null))) : null);
      }));
  }

  function renderEvidence() {
    const result = page.task && page.task.result;
    const before = (result && result.tests_before) || page.tests.before;
    const after = (result && result.tests_after) || page.tests.after;
    if (!before && !after && result && !result.test_command) {
      fill(evidence, h("p", { class: "muted", text: "No test command was found, so nothing was tested." }));
      return;
    }
    fill(evidence, testCard("Before", before), testCard("After", after));
  }

  async function loadDiff(attempt) {
    const task = page.task;
    if (!task || !task.result) return;
    const chosen = Number(task.result.attempt || 1);
    const wanted = attempt ?? page.diffAttempt ?? chosen;
    const key = `${wanted}:${task.commit}:${task.finished_at}`;
    if (key === page.diffKey) return;
    page.diffKey = key;
    page.diffAttempt = wanted;
    renderAttempts();
    try {
      const answer = await api("GET", `${path}/diff${wanted === chosen ? "" : `?attempt=${wanted}`}`);
      const files = parseDiff(answer.diff);
      const total = files.reduce((n, f) => n + f.rows.length, 0);
      fill(diff,
        h("p", { class: "muted" },
          `Attempt ${answer.attempt}${answer.chosen ? " (chosen)" : ""} · `,
          answer.diff_stat ? lastLine(answer.diff_stat) : "no change",
          answer.commit ? [" · commit ", h("code", { text: short(answer.commit) })] : null),
        files.length ? files.map((f) => diffFile(f, total <= 400)) : h("p", { class: "muted", text: "This attempt changed nothing." }));
    } catch (e) {
      page.diffKey = null;
      fill(diff, h("p", { class: "say error", role: "alert", text: e.message }));
    }
  }

  async function refresh() {
    try {
      const task = await api("GET", path);
      page.task = task;
      page.pr = task.pr ? await api("GET", `/api/prs/${task.pr}`) : null;
      notice("task", null);
    } catch (e) {
      notice("task", e.message);
      if (!page.task) fill(head, h("p", { class: "say error", role: "alert", text: e.message }));
      return;
    }
    renderHead();
    renderAttempts();
    renderEvidence();
    renderReview();
    if (page.task.result) await loadDiff();
  }

  openStream();
  every(() => (page.task && FINISHED.has(page.task.state) ? SLOW_POLL_MS : POLL_MS), refresh);
}

// --- pull requests -----------------------------------------------------------------------------

function prsView(main) {
  document.title = "Pull requests · pullsmith";
  const body = h("tbody");
  const message = h("p", { class: "say", hidden: true, id: "pr-message" });
  const empty = h("p", { class: "empty", hidden: true, text: "No pull requests yet: a task that commits opens one." });
  const filter = h("select", { id: "pr-state", "aria-label": "state" },
    ["all", "open", "merged", "closed"].map((s) => h("option", { value: s, text: s })));
  let taskOfPr = new Map();
  let refresh;
  const merge = async (pr, button) => {
    button.disabled = true;
    try {
      const done = await api("POST", `/api/prs/${pr.number}/merge`, {});
      say(message, `Merged pull request #${done.number} into ${done.base} (${done.method}, ${short(done.commit)}).`, true);
    } catch (e) {
      say(message, e.message);
    }
    await refresh();
  };
  const row = (pr) => {
    const task = taskOfPr.get(pr.number) || pr.task_id;
    const working = pr.working && pr.working.length ? pr.working[0] : null;
    const button = pr.state === "open" && !working ? h("button", { class: "small primary", text: "Merge" }) : null;
    if (button) button.addEventListener("click", () => merge(pr, button));
    const waiting = pr.state === "open" && working
      ? h("a", { class: "muted", href: `/tasks/${encodeURIComponent(working.id)}`, title: "merge once this follow-up has finished", text: `follow-up ${working.state}` })
      : null;
    return h("tr", { id: `pr-${pr.number}`, "data-number": pr.number },
      h("td", { class: "num", text: `#${pr.number}` }),
      h("td", { class: "instruction" }, h("a", { href: `/tasks/${encodeURIComponent(task)}`, title: pr.title, text: pr.title })),
      h("td", { class: "repo", title: pr.repo, text: basename(pr.repo) }),
      h("td", { class: "branch" }, h("code", { title: pr.head, text: pr.head }), ` → ${pr.base}`),
      h("td", {}, badge(pr.state, "p")),
      h("td", {}, badge(pr.checks, "c")),
      h("td", { class: "age", title: pr.created_at, text: age(pr.created_at) }),
      h("td", { class: "muted", title: pr.merged_at || "" },
        pr.merged_at ? `${age(pr.merged_at)} ago${pr.merge_method ? ` (${pr.merge_method})` : ""}` : "—"),
      h("td", {}, button || waiting));
  };
  main.append(h("section", { class: "card" },
    h("div", { class: "card-head" }, h("h2", { text: "Pull requests" }), h("label", { class: "muted" }, "state ", filter)),
    message,
    h("table", { class: "list", id: "pr-table" },
      h("thead", {}, h("tr", {}, ["#", "Title (its task)", "Repository", "Branch", "State", "Checks", "Opened", "Merged", ""]
        .map((title) => h("th", { text: title })))),
      body),
    empty));
  refresh = async () => {
    try {
      const state = filter.value;
      const [prs, tasks] = await Promise.all([
        api("GET", `/api/prs${state === "all" ? "" : `?state=${state}`}`),
        api("GET", "/api/tasks?limit=500"),
      ]);
      taskOfPr = new Map(tasks.tasks.filter((t) => t.pr).map((t) => [t.pr, t.id]));
      fill(body, ...prs.prs.map(row));
      empty.hidden = prs.prs.length > 0;
      notice("prs", null);
      const target = location.hash && document.getElementById(location.hash.slice(1));
      if (target) target.classList.add("target");
    } catch (e) {
      notice("prs", e.message);
    }
  };
  filter.addEventListener("change", () => refresh());
  every(POLL_MS, refresh);
}

// --- environments ------------------------------------------------------------------------------

// Secrets typed as NAME=value lines; null when the box is empty (the saved values stay).
function parseSecrets(text) {
  const found = {};
  const rows = String(text || "").split("\n").map((l) => l.trim()).filter(Boolean);
  if (!rows.length) return null;
  for (const row of rows) {
    const at = row.indexOf("=");
    if (at < 1) throw new Error(`"${row.slice(0, 40)}" is not NAME=value; write one secret a line.`);
    found[row.slice(0, at).trim()] = row.slice(at + 1);
  }
  return found;
}

function environmentsView(main) {
  document.title = "Environments · pullsmith";
  const body = h("tbody");
  const empty = h("p", { class: "empty", hidden: true,
    text: "No environments yet: a task's attempts then start the agent right away." });
  const listMessage = h("p", { class: "say", hidden: true, id: "env-list-message" });
  const field = (id, label, input, hint) => h("div", { class: "field" },
    h("label", { for: id, text: label }), input, hint ? h("span", { class: "hint", text: hint }) : null);
  const repo = h("input", { id: "e-repo", name: "repo", type: "text", autocomplete: "off",
    spellcheck: "false", placeholder: "/home/me/project" });
  const setup = h("textarea", { id: "e-setup", name: "setup", rows: "3", spellcheck: "false",
    placeholder: "pip install -e '.[test]'" });
  const network = h("input", { id: "e-network", name: "network", type: "checkbox" });
  const secrets = h("textarea", { id: "e-secrets", name: "secrets", rows: "2", spellcheck: "false",
    autocomplete: "off", placeholder: "PIP_INDEX_TOKEN=…" });
  const clear = h("input", { id: "e-clear", name: "clear", type: "checkbox" });
  const timeout = h("input", { id: "e-timeout", name: "timeout_s", type: "number", min: "1", value: "600" });
  const submit = h("button", { type: "submit", class: "primary", text: "Save environment" });
  const message = h("p", { class: "say", hidden: true, id: "env-message" });
  const form = h("form", { id: "env-form", novalidate: true },
    field("e-repo", "Repository path", repo, "as tasks name it: a git repository on the server's machine, or a URL"),
    field("e-setup", "Setup command", setup, "runs in the sandbox on each attempt's fresh worktree, before the agent"),
    h("div", { class: "check" }, network,
      h("label", { for: "e-network", text: "Network during setup (the agent never has it)" })),
    field("e-secrets", "Secrets (NAME=value, one a line)", secrets,
      "given to the setup command only; empty keeps the values saved before"),
    h("div", { class: "check" }, clear, h("label", { for: "e-clear", text: "Remove the saved secrets" })),
    field("e-timeout", "Timeout (seconds)", timeout),
    h("div", { class: "actions" }, submit),
    message);
  let refresh;
  const edit = (env) => {
    repo.value = env.repo;
    setup.value = env.setup;
    network.checked = env.network;
    timeout.value = String(env.timeout_s);
    secrets.value = "";
    clear.checked = false;
    say(message, env.secrets.length
      ? `Editing: secrets ${env.secrets.join(", ")} are kept unless you type new ones.` : "Editing.", true);
    repo.focus();
  };
  const remove = async (env, button) => {
    button.disabled = true;
    try {
      await api("DELETE", `/api/environments/${env.id}`);
      say(listMessage, `Removed the environment of ${env.repo}.`, true);
    } catch (e) {
      say(listMessage, e.message);
    }
    await refresh();
  };
  const row = (env) => {
    const editButton = h("button", { class: "small", text: "Edit" });
    const removeButton = h("button", { class: "small", text: "Remove" });
    editButton.addEventListener("click", () => edit(env));
    removeButton.addEventListener("click", () => remove(env, removeButton));
    return h("tr", { id: `env-${env.id}`, "data-repo": env.repo },
      h("td", { class: "repo", title: env.repo, text: basename(env.repo) }),
      h("td", {}, h("code", { class: "setup", text: env.setup })),
      h("td", { text: env.network ? "on" : "off" }),
      h("td", { class: "muted", text: env.secrets.length ? env.secrets.join(", ") : "—" }),
      h("td", { text: seconds(env.timeout_s) }),
      h("td", { class: "age", title: env.updated_at, text: age(env.updated_at) }),
      h("td", {}, editButton, " ", removeButton));
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let body;
    try {
      body = { repo: repo.value.trim(), setup: setup.value, network: network.checked,
        timeout_s: Number(timeout.value || 600) };
      const typed = parseSecrets(secrets.value);
      if (typed) body.secrets = typed;
      else if (clear.checked) body.secrets = {};
    } catch (e) {
      say(message, e.message);
      return;
    }
    submit.disabled = true;
    try {
      const env = await api("POST", "/api/environments", body);
      secrets.value = "";
      clear.checked = false;
      say(message, `${env.created ? "Saved" : "Updated"} the environment of ${env.repo}${
        env.secrets.length ? ` (secrets: ${env.secrets.join(", ")})` : ""}.`, true);
      await refresh();
    } catch (e) {
      say(message, e.message);
    } finally {
      submit.disabled = false;
    }
  });
  main.append(h("div", { class: "split" },
    h("section", { class: "card" }, h("h2", { text: "Set a repository's environment" }), form),
    h("section", { class: "card" },
      h("h2", { text: "Environments" }),
      h("p", { class: "muted", text: "A repository without one here may have [environment] in its own pullsmith.toml." }),
      listMessage,
      h("table", { class: "list", id: "env-table" },
        h("thead", {}, h("tr", {}, ["Repository", "Setup", "Network", "Secrets", "Timeout", "Changed", ""]
          .map((title) => h("th", { text: title })))),
        body),
      empty)));
  refresh = async () => {
    try {
      const page = await api("GET", "/api/environments");
      fill(body, ...page.environments.map(row));
      empty.hidden = page.environments.length > 0;
      notice("environments", null);
    } catch (e) {
      notice("environments", e.message);
    }
  };
  refresh();
}

// --- the page ----------------------------------------------------------------------------------

function route() {
  const main = $("#main");
  fill(main);
  const path = location.pathname.replace(/\/+$/, "") || "/";
  const task = path.match(/^\/tasks\/([^/]+)$/);
  let nav = null;
  if (path === "/") {
    nav = "tasks";
    tasksView(main);
  } else if (task) {
    nav = "tasks";
    taskView(main, decodeURIComponent(task[1]));
  } else if (path === "/prs") {
    nav = "prs";
    prsView(main);
  } else if (path === "/environments") {
    nav = "environments";
    environmentsView(main);
  } else {
    main.append(h("p", { class: "say error", text: `there is no page ${path}; see the Tasks, Pull requests and Environments pages.` }));
  }
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("current", link.dataset.nav === nav);
  }
  every(POLL_MS, pollHealth);
}

route();
