// The llm-do page: pick a worker, run it, watch the run tree stream, answer approvals.
// Plain ES module, no build step, no third-party code. All data goes into the DOM via
// textContent (never innerHTML), so worker output cannot inject markup.

const $ = (id) => document.getElementById(id);
const EVENT_TYPES = [
  "run.started", "worker.started", "text.delta", "thinking.delta", "tool.call",
  "tool.result", "approval.requested", "approval.resolved", "worker.finished",
  "run.completed", "run.failed", "run.cancelled",
];
const TERMINAL = new Set(["run.completed", "run.failed", "run.cancelled"]);

class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const err = body && body.error ? body.error : { type: "http_error", message: response.statusText };
    if (response.status === 401) showLogin();
    throw new ApiError(response.status, err.type, err.message);
  }
  return body;
}

function postJSON(path, data) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(data ?? {}),
  });
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function clone(templateId) {
  return $(templateId).content.firstElementChild.cloneNode(true);
}

function pretty(value) {
  if (typeof value === "string") return value;
  return JSON.stringify(value, null, 2);
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function ago(seconds) {
  const d = Date.now() / 1000 - seconds;
  if (d < 60) return `${Math.max(0, Math.round(d))} s ago`;
  if (d < 3600) return `${Math.round(d / 60)} min ago`;
  if (d < 86400) return `${Math.round(d / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleDateString();
}

function showError(box, message) {
  box.textContent = message;
  box.hidden = !message;
}

function setConn(text) {
  $("conn").textContent = text;
}

// ---- login (only when the server asks for a token) ------------------------------------

let loginShown = false;
function showLogin() {
  if (loginShown) return;
  loginShown = true;
  const form = el("form", { class: "card login", method: "post", action: "/login" },
    el("h1", { text: "Sign in" }),
    el("p", { class: "muted", text: "This service needs its API token (LLM_DO_API_TOKEN)." }),
    location.hash === "#login-failed" ? el("p", { class: "error-text", text: "That token is not right." }) : "",
    el("label", { for: "token", text: "Token" }),
    el("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: "" }),
    el("div", { class: "row" }, el("button", { class: "primary", type: "submit", text: "Sign in" })),
  );
  $("main").replaceChildren(form);
}

// ---- workers and history --------------------------------------------------------------

const workers = new Map();
let selected = null;
let attachments = [];

async function loadWorkers() {
  const list = $("workers");
  try {
    const data = await api("/workers");
    list.replaceChildren();
    for (const w of data.workers) {
      workers.set(w.name, w);
      const sub = w.error ? `invalid: ${w.error.message}` : (w.description || "");
      const button = el("button", { type: "button", class: "item", "data-worker": w.name, title: sub },
        el("span", { class: "item-title", text: w.name }),
        el("span", { class: "item-sub", text: sub }),
      );
      if (w.error) button.classList.add("invalid");
      button.addEventListener("click", () => { location.hash = `worker=${encodeURIComponent(w.name)}`; });
      list.append(el("li", {}, button));
    }
    if (!data.workers.length) list.append(el("li", { class: "muted", text: "No workers found." }));
  } catch (err) {
    list.replaceChildren(el("li", { class: "error-text", text: `Cannot list workers: ${err.message}` }));
  }
}

async function loadHistory() {
  const list = $("history");
  try {
    const data = await api("/runs?limit=25");
    list.replaceChildren();
    for (const r of data.runs) {
      const button = el("button", { type: "button", class: "item", "data-run": r.run_id },
        el("span", { class: "item-title" },
          el("span", { text: r.worker }), " ",
          el("span", { class: `badge ${r.status}`, text: r.status.replace("_", " ") })),
        el("span", { class: "item-sub", text: `${ago(r.created_at)} · ${r.run_id.slice(0, 8)}` }),
      );
      button.addEventListener("click", () => { location.hash = `run=${r.run_id}`; });
      list.append(el("li", {}, button));
    }
    if (!data.runs.length) list.append(el("li", { class: "muted", text: "No runs yet." }));
  } catch (err) {
    list.replaceChildren(el("li", { class: "error-text", text: `Cannot list runs: ${err.message}` }));
  }
}

function markSelected(name) {
  for (const button of document.querySelectorAll("#workers .item")) {
    button.classList.toggle("selected", button.dataset.worker === name);
  }
}

function selectWorker(name) {
  const w = workers.get(name);
  if (!w) return;
  selected = w;
  markSelected(name);
  $("empty").hidden = true;
  $("runner").hidden = false;
  $("worker-name").textContent = w.name;
  $("worker-desc").textContent = w.description || "";
  showError($("worker-error"), w.error ? w.error.message : "");
  $("run-btn").disabled = Boolean(w.error);
  const schema = w.input_schema;
  $("schema-box").hidden = !schema;
  $("schema").textContent = schema ? JSON.stringify(schema, null, 2) : "";
  $("input-kind").textContent = schema ? "(JSON matching the schema)" : "(text, or a JSON object)";
  $("input").placeholder = schema ? "{ }" : "Type the input for the worker";
  showError($("form-error"), "");
}

// ---- attachments ----------------------------------------------------------------------

function renderFiles() {
  const list = $("file-list");
  list.replaceChildren();
  attachments.forEach((file, i) => {
    const remove = el("button", { type: "button", class: "chip-x", "aria-label": `Remove ${file.name}`, text: "×" });
    remove.addEventListener("click", (e) => { e.stopPropagation(); attachments.splice(i, 1); renderFiles(); });
    list.append(el("li", { class: "chip" }, `${file.name} (${Math.ceil(file.size / 1024)} KB) `, remove));
  });
}

function addFiles(files) {
  for (const f of files) attachments.push(f);
  renderFiles();
}

function setupDrop() {
  const drop = $("drop");
  const input = $("files");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles(e.dataTransfer.files);
  });
}

async function submitRun(event) {
  event.preventDefault();
  if (!selected) return;
  const box = $("form-error");
  showError(box, "");
  const text = $("input").value;
  const form = new FormData();
  if (selected.input_schema) {
    try {
      form.append("input", JSON.stringify(JSON.parse(text || "{}")));
    } catch (err) {
      showError(box, `The input must be JSON for this worker: ${err.message}`);
      return;
    }
  } else if (text) {
    form.append("input", text);
  }
  const model = $("model").value.trim();
  if (model) form.append("model", model);
  form.append("approval", $("approval").value);
  form.append("background", "true");
  for (const f of attachments) form.append("attachments", f, f.name);
  $("run-btn").disabled = true;
  try {
    const started = await api(`/workers/${encodeURIComponent(selected.name)}/run`, { method: "POST", body: form });
    attachments = [];
    renderFiles();
    keepForm = started.run_id;
    location.hash = `run=${started.run_id}`;
    loadHistory();
  } catch (err) {
    showError(box, err.message);
  } finally {
    $("run-btn").disabled = false;
  }
}

// ---- a run: the live tree -------------------------------------------------------------

class RunView {
  constructor(runId) {
    this.runId = runId;
    this.lastSeq = 0;
    this.nodes = new Map();
    this.toolEls = new Map();
    this.cards = new Map();
    this.startedAt = null;
    this.ended = false;
    this.timer = null;
    this.source = null;
    $("run").hidden = false;
    $("empty").hidden = true;
    $("tree").replaceChildren();
    $("approvals").replaceChildren();
    $("final").hidden = true;
    $("output").textContent = "";
    $("output").classList.remove("error-text");
    this.meta = { id: `run ${runId.slice(0, 8)}`, model: "", time: "", usage: "" };
    $("run-meta").title = `run ${runId}`;
    this.renderMeta();
    $("run-worker").textContent = "…";
    this.setStatus("connecting");
    $("cancel-btn").hidden = true;
  }

  attach() {
    const source = new EventSource(`/runs/${encodeURIComponent(this.runId)}/events`);
    this.source = source;
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (msg) => this.handle(JSON.parse(msg.data)));
    }
    source.addEventListener("open", () => setConn(""));
    source.addEventListener("error", () => {
      if (this.ended) return;
      if (source.readyState === EventSource.CLOSED) {
        setConn("");
        this.fail("Cannot follow this run (it may not exist, or the server refused).");
      } else {
        setConn("connection lost, reconnecting…");
      }
    });
  }

  detach() {
    if (this.source) this.source.close();
    clearInterval(this.timer);
  }

  renderMeta() {
    const m = this.meta;
    $("run-meta").textContent = [m.id, m.model, m.time, m.usage].filter(Boolean).join(" · ");
  }

  setStatus(status) {
    const badge = $("run-status");
    badge.textContent = status.replace("_", " ");
    badge.className = `badge ${status}`;
  }

  fail(message) {
    this.setStatus("failed");
    $("final").hidden = false;
    $("output").textContent = message;
    $("output").classList.add("error-text");
  }

  handle(ev) {
    if (ev.seq <= this.lastSeq) return; // a replay after reconnecting: seen already
    this.lastSeq = ev.seq;
    const method = this[`on_${ev.type.replace(".", "_")}`];
    if (method) method.call(this, ev);
  }

  tick() {
    if (!this.startedAt) return;
    const end = this.endedAt ?? Date.now() / 1000;
    this.meta.time = `${(end - this.startedAt).toFixed(1)} s`;
    this.renderMeta();
  }

  on_run_started(ev) {
    $("run-worker").textContent = ev.worker;
    this.meta.model = `model ${ev.model}`;
    this.renderMeta();
    this.setStatus("running");
    this.startedAt = Date.now() / 1000;
    this.timer = setInterval(() => this.tick(), 200);
    $("cancel-btn").hidden = false;
  }

  on_worker_started(ev) {
    const node = clone("node-tpl");
    node.dataset.callId = ev.call_id;
    node.dataset.depth = String(ev.path.length - 1);
    node.querySelector(".node-name").textContent = ev.worker;
    node.querySelector(".node-model").textContent = ev.model;
    const status = node.querySelector(".node-status");
    status.textContent = "running";
    status.className = "node-status badge running";
    const toggle = node.querySelector(".toggle");
    toggle.addEventListener("click", () => this.collapse(node, toggle.getAttribute("aria-expanded") === "true"));
    const info = {
      el: node,
      stream: node.querySelector(".stream"),
      children: node.querySelector(".children"),
      text: null,
    };
    this.nodes.set(ev.call_id, info);
    const parent = ev.parent_call_id ? this.nodes.get(ev.parent_call_id) : null;
    if (!parent) {
      $("tree").append(node);
      return;
    }
    node.classList.add("child");
    // Show the child right under the worker_call that started it.
    const call = this.toolEls.get(`${ev.parent_call_id}/${ev.tool_call_id}`);
    if (call) call.after(node);
    else parent.children.append(node);
    parent.text = null;
  }

  collapse(node, collapsed) {
    const toggle = node.querySelector(".toggle");
    toggle.setAttribute("aria-expanded", String(!collapsed));
    toggle.textContent = collapsed ? "▸" : "▾";
    node.querySelector(".node-body").hidden = collapsed;
  }

  node(ev) {
    return this.nodes.get(ev.call_id) ?? this.nodes.values().next().value;
  }

  appendText(ev, cls) {
    const info = this.node(ev);
    if (!info) return;
    if (!info.text || info.text.className !== cls) {
      info.text = el("span", { class: cls });
      info.stream.append(info.text);
    }
    info.text.append(ev.delta);
  }

  on_text_delta(ev) { this.appendText(ev, "text"); }

  on_thinking_delta(ev) { this.appendText(ev, "thinking"); }

  on_tool_call(ev) {
    const info = this.node(ev);
    if (!info) return;
    const tool = clone("tool-tpl");
    tool.querySelector(".tool-name").textContent = ev.tool;
    tool.querySelector(".tool-args").textContent = pretty(ev.args);
    info.stream.append(tool);
    info.text = null;
    this.toolEls.set(`${ev.call_id}/${ev.tool_call_id}`, tool);
  }

  on_tool_result(ev) {
    const tool = this.toolEls.get(`${ev.call_id}/${ev.tool_call_id}`);
    if (!tool) return;
    const outcome = tool.querySelector(".tool-outcome");
    outcome.textContent = ev.outcome;
    outcome.className = `tool-outcome badge ${ev.outcome}`;
    tool.querySelector(".tool-result").textContent = pretty(ev.content);
    tool.querySelector(".tool-result-box").hidden = false;
    if (ev.outcome !== "success") tool.open = true;
  }

  on_approval_requested(ev) {
    this.setStatus("waiting_approval");
    this.setNodeStatus(ev.call_id, "waiting_approval");
    const tool = this.toolEls.get(`${ev.call_id}/${ev.tool_call_id}`);
    if (tool) {
      const outcome = tool.querySelector(".tool-outcome");
      outcome.textContent = "waiting for approval";
      outcome.className = "tool-outcome badge waiting";
    }
    const card = clone("approval-tpl");
    card.dataset.approvalId = ev.approval_id;
    card.querySelector(".approval-where").textContent = ev.path.join(" › ");
    card.querySelector(".approval-desc").textContent = ev.description;
    card.querySelector(".approval-tool-name").textContent = ev.tool;
    const expires = new Date(ev.expires_at * 1000);
    card.querySelector(".approval-expiry").textContent = `expires ${expires.toLocaleTimeString()}`;
    const args = { ...ev.args };
    const body = card.querySelector(".approval-args");
    if (ev.tool === "write_file" && typeof args.content === "string") {
      body.textContent = `path: ${args.path}\n──── content ────\n${args.content}`;
    } else {
      body.textContent = pretty(args);
    }
    const details = ev.details || {};
    if (details.file) {
      const file = card.querySelector(".approval-file");
      file.textContent = `${details.path}\n\n${details.file}`;
      file.hidden = false;
    } else if (details.attachments && details.attachments.length) {
      const file = card.querySelector(".approval-file");
      file.textContent = details.attachments.map((a) => `${a.path}  ${a.bytes ?? "?"} bytes`).join("\n");
      file.hidden = false;
    }
    const reason = card.querySelector(".deny-reason");
    const decide = (decision) => this.decide(card, ev.approval_id, decision, reason.value.trim() || null);
    card.querySelector(".act-approve").addEventListener("click", () => decide("approve"));
    card.querySelector(".act-run").addEventListener("click", () => decide("approve_for_run"));
    card.querySelector(".act-deny").addEventListener("click", () => decide("deny"));
    reason.addEventListener("keydown", (e) => { if (e.key === "Enter") decide("deny"); });
    card.dataset.callId = ev.call_id;
    this.cards.set(ev.approval_id, card);
    $("approvals").append(card);
    card.scrollIntoView({ block: "nearest" });
    card.querySelector(".act-approve").focus({ preventScroll: true });
    loadHistory();
  }

  async decide(card, approvalId, decision, reason) {
    for (const b of card.querySelectorAll("button")) b.disabled = true;
    try {
      const body = { decision };
      if (decision === "deny" && reason) body.reason = reason;
      await postJSON(`/runs/${encodeURIComponent(this.runId)}/approvals/${encodeURIComponent(approvalId)}`, body);
    } catch (err) {
      const result = card.querySelector(".approval-result");
      result.textContent = err.message;
      result.hidden = false;
      if (err.status !== 409) for (const b of card.querySelectorAll("button")) b.disabled = false;
    }
  }

  on_approval_resolved(ev) {
    const card = this.cards.get(ev.approval_id);
    if (!card) return;
    const words = { approve: "Approved", approve_for_run: "Approved for this run", deny: "Denied", cancelled: "Cancelled", approve_all: "Approved", deny_all: "Denied" };
    const result = card.querySelector(".approval-result");
    result.textContent = `${words[ev.decision] ?? ev.decision}${ev.reason ? `: ${ev.reason}` : ""}`;
    result.hidden = false;
    card.classList.add("resolved", ev.decision.startsWith("approve") ? "approved" : "denied");
    for (const b of card.querySelectorAll("button, input")) b.disabled = true;
    this.cards.delete(ev.approval_id);
    const waiting = [...this.cards.values()].some((c) => c.dataset.callId === ev.call_id);
    if (!waiting) this.setNodeStatus(ev.call_id, "running");
    if (!this.ended && this.cards.size === 0) {
      this.setStatus("running");
      loadHistory();
    }
  }

  setNodeStatus(callId, status) {
    const info = this.nodes.get(callId);
    if (!info) return;
    const badge = info.el.querySelector(".node-status");
    if (!badge.classList.contains("running") && !badge.classList.contains("waiting_approval")) return;
    badge.textContent = status.replace("_", " ");
    badge.className = `node-status badge ${status}`;
  }

  on_worker_finished(ev) {
    const info = this.nodes.get(ev.call_id);
    if (!info) return;
    const status = info.el.querySelector(".node-status");
    status.textContent = ev.status;
    status.className = `node-status badge ${ev.status}`;
    if (ev.error) info.stream.append(el("div", { class: "error-text", text: `${ev.error.type}: ${ev.error.message}` }));
    if (ev.usage) info.el.querySelector(".node-model").textContent += ` · ${ev.usage.requests} req`;
    if (info.el.classList.contains("child") && ev.status === "succeeded") this.collapse(info.el, true);
  }

  finish(ev, status) {
    this.ended = true;
    this.endedAt = Date.now() / 1000;
    this.tick();
    clearInterval(this.timer);
    this.detach();
    this.setStatus(status);
    $("cancel-btn").hidden = true;
    if (ev.usage) {
      const u = ev.usage;
      this.meta.usage = `${plural(u.requests, "request")} · ${u.input_tokens} in / ${u.output_tokens} out tokens · ${plural(u.tool_calls, "tool call")}`;
      this.renderMeta();
    }
    for (const card of this.cards.values()) card.classList.add("resolved");
    loadHistory();
  }

  on_run_completed(ev) {
    this.finish(ev, "succeeded");
    $("final").hidden = false;
    $("output").textContent = pretty(ev.output);
  }

  on_run_failed(ev) {
    this.finish(ev, ev.error.type === "interrupted" ? "interrupted" : "failed");
    $("final").hidden = false;
    $("output").textContent = `${ev.error.type}: ${ev.error.message}`;
    $("output").classList.add("error-text");
  }

  on_run_cancelled(ev) {
    this.finish(ev, "cancelled");
    $("final").hidden = false;
    $("output").textContent = `cancelled: ${ev.reason}`;
  }

  async cancel() {
    $("cancel-btn").disabled = true;
    try {
      await api(`/runs/${encodeURIComponent(this.runId)}/cancel`, { method: "POST" });
    } catch (err) {
      if (err.status !== 409) this.fail(err.message);
    } finally {
      $("cancel-btn").disabled = false;
    }
  }
}

let current = null;
let keepForm = null; // the run just started from the form: keep the form above it

function openRun(runId) {
  if (current && current.runId === runId) return;
  if (current) current.detach();
  if (keepForm !== runId) {
    markSelected(null);
    $("runner").hidden = true;
  }
  current = new RunView(runId);
  current.attach();
  $("run").scrollIntoView({ block: "start", behavior: "smooth" });
}

// ---- routing (#worker=NAME, #run=ID) ------------------------------------------------------

function route() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("run")) {
    openRun(params.get("run"));
  } else if (params.has("worker")) {
    if (current) { current.detach(); current = null; }
    $("run").hidden = true;
    selectWorker(params.get("worker"));
    $("input").focus();
  }
}

async function main() {
  setupDrop();
  $("run-form").addEventListener("submit", submitRun);
  $("cancel-btn").addEventListener("click", () => current && current.cancel());
  $("refresh-runs").addEventListener("click", loadHistory);
  window.addEventListener("hashchange", route);
  await Promise.all([loadWorkers(), loadHistory()]);
  route();
}

main();
