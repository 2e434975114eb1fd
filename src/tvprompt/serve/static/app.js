// The tvprompt web front: plain DOM, no build step. Every user string goes through textContent
// (el() below), never innerHTML. The token lives in sessionStorage and travels as a header.
"use strict";

const TOKEN_KEY = "tvp-token";
const FINAL = ["succeeded", "failed", "cancelled"];
const state = { models: null, tryFile: null, watch: null };

// ------------------------------------------------------------------ helpers
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function status(message, ok) {
  const box = document.getElementById("status");
  box.textContent = message || "";
  box.hidden = !message;
  box.className = ok ? "ok" : "";
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  if (token()) opts.headers = Object.assign({ Authorization: "Bearer " + token() }, opts.headers);
  const res = await fetch(path, opts);
  if (!res.ok) {
    let detail = res.status + " " + res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (e) { /* not JSON */ }
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    throw new Error(detail);
  }
  return res;
}

async function json(path, options) { return (await api(path, options)).json(); }

function show(view, ...children) { view.replaceChildren(...children.filter((c) => c !== null && c !== undefined)); }

function fmt(value) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(3);
  if (value === null || value === undefined) return "–";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function sourceIds(p) {
  return (p.sources || []).map((s) => (s && typeof s === "object" ? s.model_id : s)).filter(Boolean).map(String);
}

function headline(metrics) {
  const m = metrics || {};
  for (const key of ["val_accuracy", "accuracy", "last_val_accuracy"]) {
    if (typeof m[key] === "number") return key.replace(/_/g, " ") + " " + m[key].toFixed(3);
  }
  return "no validation metric";
}

function previewUrl(id) { return "/prompts/" + encodeURIComponent(id) + "/download?format=png"; }

// ------------------------------------------------------------------ gallery
async function showGallery(view) {
  const prompts = await json("/prompts?limit=1000");
  const search = el("input", { type: "text", id: "search", class: "wide", placeholder: "search name, task, method, model, owner", "aria-label": "search" });
  const tasks = [...new Set(prompts.map((p) => p.task).filter(Boolean))].sort();
  const methods = [...new Set(prompts.map((p) => p.method).filter(Boolean))].sort();
  const taskSel = el("select", { id: "filter-task", "aria-label": "task" }, el("option", { value: "" }, "all tasks"), tasks.map((t) => el("option", { value: t }, t)));
  const methodSel = el("select", { id: "filter-method", "aria-label": "method" }, el("option", { value: "" }, "all methods"), methods.map((m) => el("option", { value: m }, m)));
  const count = el("span", { class: "muted", id: "count" });
  const grid = el("div", { class: "grid", id: "gallery" });
  const render = () => {
    const q = search.value.trim().toLowerCase();
    const shown = prompts.filter((p) => {
      if (taskSel.value && p.task !== taskSel.value) return false;
      if (methodSel.value && p.method !== methodSel.value) return false;
      const hay = [p.name, p.task, p.method, p.owner, ...sourceIds(p)].join(" ").toLowerCase();
      return !q || hay.includes(q);
    });
    grid.replaceChildren(...shown.map(card));
    count.textContent = shown.length + " of " + prompts.length + " prompts";
  };
  for (const input of [search, taskSel, methodSel]) input.addEventListener("input", render);
  show(view,
    el("h1", {}, "Prompts"),
    el("div", { class: "filters" }, search, taskSel, methodSel, count),
    grid,
    prompts.length ? null : el("p", { class: "muted" }, "No prompts yet: push one (Token, push & train) or start the server with --demo."),
  );
  render();
}

function card(p) {
  return el("a", { class: "card", href: "#/p/" + encodeURIComponent(p.id), "data-prompt-id": p.id },
    el("img", { src: previewUrl(p.id), alt: "preview of " + p.name, loading: "lazy" }),
    el("h3", {}, p.name, " ", el("span", { class: "muted" }, "v" + p.version)),
    el("div", { class: "tags" }, el("span", { class: "tag" }, p.method || "?"), p.task ? el("span", { class: "tag" }, p.task) : null),
    el("div", { class: "metric" }, sourceIds(p).join(", ") || "no source model recorded"),
    el("div", { class: "metric" }, headline(p.metrics)),
  );
}

// ------------------------------------------------------------------ prompt page
async function showPrompt(view, id) {
  const [p, models] = await Promise.all([json("/prompts/" + encodeURIComponent(id)), hostedModels()]);
  state.tryFile = null;
  const metrics = Object.assign({}, p.metrics || {});
  const transfer = metrics.transfer;
  delete metrics.transfer;
  const zip = "/prompts/" + encodeURIComponent(p.id) + "/download";
  show(view,
    el("p", {}, el("a", { href: "#/" }, "← all prompts")),
    el("h1", { id: "prompt-title" }, p.name, " ", el("span", { class: "muted" }, "v" + p.version)),
    el("section", { class: "panel cols", id: "prompt-card" },
      el("div", {}, el("img", { class: "preview", src: previewUrl(p.id), alt: "the prompt on grey" }),
        el("p", {}, el("a", { href: zip, id: "download-zip", download: p.id + ".zip" }, "download (zip)"), " · ",
          el("a", { href: previewUrl(p.id), download: p.id + ".png" }, "preview (png)"))),
      el("dl", { class: "kv" },
        kv("owner", p.owner), kv("method", p.method), kv("task", p.task), kv("shape", p.shape),
        kv("image size", p.image_size.join(" × ")), kv("source models", sourceIds(p).join(", ") || "–"),
        kv("choices", (p.config.choices || []).join(", ") || "–"),
        Object.entries(metrics).map(([k, v]) => kv(k.replace(/_/g, " "), fmt(v))),
        kv("versions", p.versions.map((v) => el("a", { href: "#/p/" + encodeURIComponent(v.id), class: "version" }, "v" + v.version + " "))),
        kv("sha256", el("code", {}, p.sha256)), kv("library", p.library_version), kv("created", p.created_at),
      )),
    transferPanel(transfer),
    tryPanel(p),
    models.length ? askPanel(p, models) : el("section", { class: "panel muted", id: "ask-off" },
      "Ask is off: this server hosts no models (start it with --model ID or --demo)."),
  );
}

function kv(key, value) { return [el("dt", {}, key), el("dd", {}, value === null || value === undefined || value === "" ? "–" : value)]; }

function transferPanel(transfer) {
  if (!transfer || typeof transfer !== "object" || !Object.keys(transfer).length) return null;
  const rows = Object.entries(transfer).map(([model, r]) => {
    const row = r && typeof r === "object" ? r : { prompted: r };
    return el("tr", {}, el("td", {}, model), el("td", {}, fmt(row.clean)), el("td", {}, fmt(row.prompted)),
      el("td", {}, typeof row.prompted === "number" && typeof row.clean === "number" ? (row.prompted - row.clean >= 0 ? "+" : "") + (row.prompted - row.clean).toFixed(3) : "–"));
  });
  return el("section", { class: "panel", id: "transfer" }, el("h2", {}, "Transfer"),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "model"), el("th", {}, "no prompt"), el("th", {}, "with prompt"), el("th", {}, "Δ"))), el("tbody", {}, rows)));
}

function tryPanel(p) {
  const input = el("input", { type: "file", id: "try-file", accept: "image/png,image/jpeg,image/webp,image/bmp,image/gif" });
  const original = el("img", { id: "try-original", alt: "original" });
  const prompted = el("img", { id: "try-prompted", alt: "prompted" });
  const download = el("a", { id: "try-download", hidden: true }, "download the prompted PNG");
  const pair = el("div", { class: "pair", hidden: true },
    el("figure", {}, original, el("figcaption", {}, "original")),
    el("figure", {}, prompted, el("figcaption", {}, "prompted (" + p.image_size.join(" × ") + ")")));
  const drop = el("div", { class: "drop", id: "try-drop" }, "Drop an image here, or ", input);
  const run = async (file) => {
    if (!file) return;
    state.tryFile = file;
    status("");
    original.src = URL.createObjectURL(file);
    const form = new FormData();
    form.append("image", file);
    try {
      const blob = await (await api("/prompts/" + encodeURIComponent(p.id) + "/apply", { method: "POST", body: form })).blob();
      const url = URL.createObjectURL(blob);
      prompted.src = url;
      download.href = url;
      download.download = p.name + "-prompted.png";
      download.hidden = false;
      pair.hidden = false;
      const askRun = document.getElementById("ask-run");
      if (askRun) askRun.disabled = false;
    } catch (e) { status("apply: " + e.message); }
  };
  input.addEventListener("change", () => run(input.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); run(e.dataTransfer.files[0]); });
  return el("section", { class: "panel", id: "try" }, el("h2", {}, "Try it"), drop, pair, el("p", {}, download));
}

function askPanel(p, models) {
  const example = p.config.templates && typeof p.config.templates.example_question === "string" ? p.config.templates.example_question : "";
  const question = el("input", { type: "text", id: "ask-question", class: "wide", value: example, placeholder: "your question about the image" });
  const choices = el("input", { type: "text", id: "ask-choices", class: "wide", value: (p.config.choices || []).join(", "), placeholder: "choices, comma-separated" });
  const button = el("button", { id: "ask-run", disabled: true }, "Ask");
  const result = el("div", { id: "ask-result" });
  button.addEventListener("click", async () => {
    if (!state.tryFile) { status("ask: pick an image under Try it first"); return; }
    const form = new FormData();
    form.append("image", state.tryFile);
    form.append("question", question.value);
    for (const c of choices.value.split(",").map((s) => s.trim()).filter(Boolean)) form.append("choices", c);
    button.disabled = true;
    result.replaceChildren(el("p", { class: "muted" }, "asking " + models.length + " model(s)…"));
    try {
      const out = await json("/prompts/" + encodeURIComponent(p.id) + "/ask", { method: "POST", body: form });
      result.replaceChildren(answersTable(out));
      status("");
    } catch (e) { result.replaceChildren(); status("ask: " + e.message); }
    button.disabled = false;
  });
  return el("section", { class: "panel", id: "ask" }, el("h2", {}, "Ask the hosted models"),
    el("p", { class: "muted" }, "Hosted: " + models.map((m) => m.id).join(", ") + ". Uses the image chosen under Try it."),
    el("form", { class: "stack", onsubmit: (e) => e.preventDefault() },
      el("label", { for: "ask-question" }, "question"), question,
      el("label", { for: "ask-choices" }, "choices"), choices,
      el("span", {}), el("span", {}, button)),
    result);
}

function answersTable(out) {
  const cell = (side, other) => el("td", {},
    el("div", { class: "answer" + (side.answer !== other.answer ? " changed" : "") }, side.answer),
    el("ul", { class: "bars" }, out.choices.map((c, i) => el("li", {},
      el("span", {}, c), el("meter", { min: 0, max: 1, value: side.probabilities[i] }),
      el("span", { title: "mean log-likelihood " + side.scores[i] }, side.probabilities[i].toFixed(2))))));
  return el("table", { id: "ask-table" },
    el("thead", {}, el("tr", {}, el("th", {}, "model"), el("th", {}, "without the prompt"), el("th", {}, "with the prompt"))),
    el("tbody", {}, out.answers.map((a) => el("tr", { "data-model": a.model },
      el("td", {}, a.model), cell(a.without_prompt, a.with_prompt), cell(a.with_prompt, a.without_prompt)))));
}

async function hostedModels() {
  if (state.models === null) {
    try { state.models = await json("/models"); } catch (e) { state.models = []; }
  }
  return state.models;
}

// ------------------------------------------------------------------ token, push, jobs
function showAccount(view) {
  const tokenInput = el("input", { type: "password", id: "token", class: "wide", placeholder: "tvp_…", autocomplete: "off", value: token() });
  const save = el("button", { id: "token-save" }, "Use this token");
  const forget = el("button", { id: "token-forget", class: "secondary" }, "Forget it");
  save.addEventListener("click", () => { sessionStorage.setItem(TOKEN_KEY, tokenInput.value.trim()); whoami(); showAccount(view); });
  forget.addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); whoami(); showAccount(view); });
  const parts = [el("h1", {}, "Token, push & train"),
    el("section", { class: "panel" }, el("h2", {}, "Token"),
      el("p", { class: "muted" }, "Kept in this tab only (sessionStorage) and sent as an Authorization header. Create one on the server: ",
        el("code", {}, "tvp serve token create --owner NAME")),
      el("div", { class: "filters" }, tokenInput, save, forget))];
  if (token()) parts.push(pushPanel(), jobPanel());
  view.replaceChildren(...parts);
  if (token()) listJobs();
}

function pushPanel() {
  const file = el("input", { type: "file", id: "push-file", accept: ".zip,application/zip" });
  const name = el("input", { type: "text", id: "push-name", placeholder: "registry name (default: the task)" });
  const button = el("button", { id: "push-run" }, "Push");
  const result = el("div", { id: "push-result" });
  button.addEventListener("click", async () => {
    if (!file.files[0]) { status("push: choose the zip of a prompt directory"); return; }
    const form = new FormData();
    form.append("file", file.files[0]);
    if (name.value.trim()) form.append("name", name.value.trim());
    try {
      const p = await json("/prompts", { method: "POST", body: form });
      result.replaceChildren(el("p", {}, "Registered ", el("a", { href: "#/p/" + encodeURIComponent(p.id), id: "pushed-link" }, p.name + " v" + p.version), " (" + p.id + ")."));
      status("pushed " + p.name + " v" + p.version, true);
    } catch (e) { status("push: " + e.message); }
  });
  return el("section", { class: "panel", id: "push" }, el("h2", {}, "Push a prompt"),
    el("p", { class: "muted" }, "A zip of a prompt directory (prompt_config.json, prompt.safetensors, preview.png, README.md)."),
    el("form", { class: "stack", onsubmit: (e) => e.preventDefault() },
      el("label", { for: "push-file" }, "zip"), file, el("label", { for: "push-name" }, "name"), name, el("span", {}), el("span", {}, button)),
    result);
}

function jobPanel() {
  const f = {
    method: el("select", { id: "job-method" }, ["tvp", "evp", "vp"].map((m) => el("option", { value: m }, m))),
    sources: el("input", { type: "text", id: "job-sources", class: "wide", placeholder: "zoo:llava-p8, hf:…" }),
    guide: el("input", { type: "text", id: "job-guide", placeholder: "tvp: CLIP guide, e.g. zoo:clip-guide" }),
    task: el("input", { type: "text", id: "job-task", placeholder: "e.g. shapeworld_shape" }),
    dataset: el("input", { type: "text", id: "job-dataset", class: "wide", placeholder: "manifest path under the server's data root" }),
    steps: el("input", { type: "number", id: "job-steps", min: 1, value: 100 }),
    name: el("input", { type: "text", id: "job-name", placeholder: "registry name of the result" }),
  };
  const button = el("button", { id: "job-run" }, "Start training");
  button.addEventListener("click", async () => {
    const body = { method: f.method.value, sources: f.sources.value.split(",").map((s) => s.trim()).filter(Boolean),
      task: f.task.value.trim(), dataset: f.dataset.value.trim(), steps: Number(f.steps.value) || undefined };
    if (f.guide.value.trim()) body.guide = f.guide.value.trim();
    if (f.name.value.trim()) body.name = f.name.value.trim();
    try {
      const job = await json("/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      status("job " + job.id + " queued", true);
      watchJob(job.id);
    } catch (e) { status("job: " + e.message); }
  });
  const rows = Object.entries(f).flatMap(([k, input]) => [el("label", { for: input.id }, k), input]);
  return el("section", { class: "panel", id: "jobs" }, el("h2", {}, "Train a prompt"),
    el("form", { class: "stack", onsubmit: (e) => e.preventDefault() }, rows, el("span", {}), el("span", {}, button)),
    el("div", { id: "job-watch" }), el("h2", {}, "My jobs"), el("div", { id: "job-list" }));
}

function jobView(job) {
  return el("div", { class: "job", "data-job-id": job.id, "data-state": job.state },
    el("p", {}, "Job ", el("code", {}, job.id), ": ", el("strong", { class: "job-state" }, job.state),
      job.step !== null && job.total_steps ? " — step " + job.step + " / " + job.total_steps : ""),
    el("progress", { max: 1, value: job.progress || (job.state === "succeeded" ? 1 : 0) }),
    job.error ? el("pre", { class: "job-error" }, job.error) : null,
    job.prompt_id ? el("p", {}, "Prompt: ", el("a", { href: "#/p/" + encodeURIComponent(job.prompt_id), class: "job-prompt" }, job.prompt_id)) : null);
}

function watchJob(id) {
  if (state.watch) clearTimeout(state.watch);
  const tick = async () => {
    const box = document.getElementById("job-watch");
    if (!box) return;
    try {
      const job = await json("/jobs/" + encodeURIComponent(id));
      box.replaceChildren(jobView(job));
      if (!FINAL.includes(job.state)) state.watch = setTimeout(tick, 700);
      else listJobs();
    } catch (e) { status("job: " + e.message); }
  };
  tick();
}

async function listJobs() {
  const box = document.getElementById("job-list");
  if (!box) return;
  try {
    const jobs = await json("/jobs");
    box.replaceChildren(jobs.length ? el("table", {}, el("tbody", {}, jobs.map((j) => el("tr", {},
      el("td", {}, el("code", {}, j.id)), el("td", {}, j.request.name || j.request.task || ""), el("td", {}, j.state),
      el("td", {}, j.prompt_id ? el("a", { href: "#/p/" + encodeURIComponent(j.prompt_id) }, "prompt") : ""))))) : el("p", { class: "muted" }, "none yet"));
  } catch (e) { status("jobs: " + e.message); }
}

// ------------------------------------------------------------------ request a prompt for my task
function showRequest(view) {
  const parts = [el("h1", {}, "Request a prompt for my task"),
    el("p", { class: "muted" }, "Upload a small labelled set; the server trains a prompt for it on its own white-box models. ",
      "Your set stays private to your token and can be deleted; you keep your own model.")];
  if (!token()) {
    parts.push(el("p", {}, "This needs a token: ", el("a", { href: "#/account" }, "set it first"), "."));
    view.replaceChildren(...parts);
    return;
  }
  parts.push(requestPanel(), el("section", { class: "panel" }, el("h2", {}, "My datasets"), el("div", { id: "dataset-list" })));
  view.replaceChildren(...parts);
  listDatasets();
}

function requestPanel() {
  const models = el("datalist", { id: "request-model-list" });
  hostedModels().then((ms) => models.replaceChildren(...ms.map((m) => el("option", { value: m.id }, m.name))));
  const f = {
    zip: el("input", { type: "file", id: "request-file", accept: ".zip,application/zip" }),
    name: el("input", { type: "text", id: "request-name", placeholder: "task name, e.g. my-birds" }),
    instruction: el("input", { type: "text", id: "request-instruction", class: "wide", placeholder: "default: What is in this image? Answer with one of: {choices}." }),
    choices: el("input", { type: "text", id: "request-choices", class: "wide", placeholder: "comma-separated (default: the labels found)" }),
    method: el("select", { id: "request-method" }, ["evp", "vp", "tvp"].map((m) => el("option", { value: m }, m))),
    models: el("input", { type: "text", id: "request-models", class: "wide", list: "request-model-list", placeholder: "zoo:llava-p8, …" }),
    steps: el("input", { type: "number", id: "request-steps", min: 1, value: 100 }),
  };
  const button = el("button", { id: "request-run" }, "Upload and start");
  button.addEventListener("click", async () => {
    if (!f.zip.files[0]) { status("request: choose a zip (images + manifest.jsonl, or one folder per class)"); return; }
    const form = new FormData();
    form.append("file", f.zip.files[0]);
    form.append("name", f.name.value.trim());
    if (f.instruction.value.trim()) form.append("instruction", f.instruction.value.trim());
    if (f.choices.value.trim()) form.append("choices", f.choices.value.trim());
    try {
      const ds = await json("/datasets", { method: "POST", body: form });
      status("dataset " + ds.name + ": " + ds.images + " images, choices " + ds.choices.join(", "), true);
      const body = { method: f.method.value, sources: f.models.value.split(",").map((x) => x.trim()).filter(Boolean),
        dataset_id: ds.id, steps: Number(f.steps.value) || undefined };
      const job = await json("/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      watchRequest(job.id);
      listDatasets();
    } catch (e) { status("request: " + e.message); }
  });
  const rows = Object.entries(f).flatMap(([k, input]) => [el("label", { for: input.id }, k), input]);
  return el("section", { class: "panel", id: "request" }, el("h2", {}, "Upload and train"),
    el("p", { class: "muted" }, "A zip of images with manifest.jsonl ({\"image\": \"a.png\", \"answer\": \"cat\"} per line), or one folder per class."),
    el("form", { class: "stack", onsubmit: (e) => e.preventDefault() }, rows, models, el("span", {}), el("span", {}, button)),
    el("div", { id: "request-watch" }));
}

function watchRequest(id) {
  if (state.watch) clearTimeout(state.watch);
  const tick = async () => {
    const box = document.getElementById("request-watch");
    if (!box) return;
    try {
      const job = await json("/jobs/" + encodeURIComponent(id));
      const parts = [jobView(job)];
      if (job.state === "succeeded" && job.prompt_id) {
        const p = await json("/prompts/" + encodeURIComponent(job.prompt_id));
        const m = p.metrics || {};
        parts.push(el("p", { id: "request-result" }, "Validation accuracy: ",
          el("strong", {}, m.val_accuracy === undefined || m.val_accuracy === null ? "–" : fmt(m.val_accuracy)),
          m.selected_step ? " (step " + m.selected_step + " of " + m.steps + ")" : ""),
        el("p", {}, el("a", { href: "/prompts/" + encodeURIComponent(p.id) + "/download", id: "request-download" }, "Download the prompt (zip)"),
          " · ", el("a", { href: "#/p/" + encodeURIComponent(p.id) }, "its page")));
      }
      box.replaceChildren(...parts);
      if (!FINAL.includes(job.state)) state.watch = setTimeout(tick, 700);
    } catch (e) { status("request: " + e.message); }
  };
  tick();
}

async function listDatasets() {
  const box = document.getElementById("dataset-list");
  if (!box) return;
  try {
    const sets = await json("/datasets");
    box.replaceChildren(sets.length ? el("table", {}, el("tbody", {}, sets.map((d) => el("tr", { "data-dataset-id": d.id },
      el("td", {}, el("code", {}, d.id)), el("td", {}, d.name), el("td", {}, d.images + " images"),
      el("td", {}, d.choices.join(", ")),
      el("td", {}, el("button", { class: "secondary", onclick: async () => {
        try { await api("/datasets/" + encodeURIComponent(d.id), { method: "DELETE" }); status("deleted " + d.name, true); listDatasets(); }
        catch (e) { status("delete: " + e.message); }
      } }, "Delete")))))) : el("p", { class: "muted" }, "none yet"));
  } catch (e) { status("datasets: " + e.message); }
}

function whoami() {
  document.getElementById("whoami").textContent = token() ? "token set" : "";
}

// ------------------------------------------------------------------ routing
async function route() {
  const view = document.getElementById("view");
  const hash = location.hash.replace(/^#/, "") || "/";
  status("");
  try {
    if (hash.startsWith("/p/")) await showPrompt(view, decodeURIComponent(hash.slice(3)));
    else if (hash === "/account") showAccount(view);
    else if (hash === "/request") showRequest(view);
    else await showGallery(view);
  } catch (e) {
    view.replaceChildren(el("p", {}, el("a", { href: "#/" }, "← all prompts")));
    status(e.message);
  }
}

window.addEventListener("hashchange", route);
whoami();
route();
