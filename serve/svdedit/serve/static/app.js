// The svdedit page: talks to the JSON API of the same server (no framework, nothing from outside).
"use strict";

const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error("The server cannot be reached. Is `svdedit serve` still running?");
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = data && data.error;
    const field = error && error.field ? ` (${error.field})` : "";
    throw new Error(error ? `${error.message}${field}` : `The server answered ${response.status}.`);
  }
  return data;
}

// the LoRA adapter each listed attribute was learned with (null: none); an edit runs on its attributes' adapter
const adapterOf = new Map();

async function loadAdapters() {
  const adapters = await api("GET", "/v1/adapters");
  const select = $("adapter");
  select.textContent = "";
  for (const [value, text] of [["", "none (the engine as exported)"], ...adapters.map((a) => [a.name, `${a.name} (${a.file}, scale ${a.scale})`])]) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = text;
    select.append(option);
  }
  $("adapter-row").hidden = adapters.length === 0;
}

async function loadAttributes(select) {
  const list = await api("GET", "/v1/attributes");
  adapterOf.clear();
  for (const a of list) adapterOf.set(a.id, a.lora || null);
  const box = $("attributes");
  box.textContent = "";
  if (list.length === 0) {
    box.innerHTML = '<p class="muted">No attribute yet: learn one below.</p>';
    $("learn-box").open = true;
    return;
  }
  for (const a of list) {
    const label = document.createElement("label");
    label.className = "attribute";
    const box2 = document.createElement("input");
    box2.type = "checkbox";
    box2.value = a.id;
    box2.checked = a.id === select || list.length === 1;
    label.append(box2, ` ${a.source} \u2192 ${a.target} ` + (a.lora ? `(LoRA ${a.lora}) ` : ""));
    const id = document.createElement("small");
    id.className = "muted";
    id.textContent = a.id;
    label.append(id);
    box.append(label);
  }
}

function chosenAttributes() {
  return [...document.querySelectorAll("#attributes input:checked")].map((e) => e.value);
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.split(",")[1]);
    reader.onerror = () => reject(new Error("The image file cannot be read."));
    reader.readAsDataURL(file);
  });
}

async function learn(event) {
  event.preventDefault();
  showError("");
  $("learn-button").disabled = true;
  $("status").textContent = "Learning the attribute\u2026";
  try {
    const body = { source: $("learn-source").value, target: $("learn-target").value };
    if ($("adapter").value) body.lora = $("adapter").value;
    const a = await api("POST", "/v1/attributes", body);
    await loadAttributes(a.id);
    $("status").textContent = `Learned ${a.source} \u2192 ${a.target}.`;
  } catch (e) {
    showError(e.message);
    $("status").textContent = "";
  } finally {
    $("learn-button").disabled = false;
  }
}

async function edit(event) {
  if (event) event.preventDefault();
  showError("");
  const attributes = chosenAttributes();
  if (attributes.length === 0) {
    showError("Choose at least one attribute (or learn one first).");
    return;
  }
  const adapters = [...new Set(attributes.map((id) => adapterOf.get(id) || null))];
  if (adapters.length > 1) {
    showError("The attributes chosen were learned with different LoRA adapters (" +
              adapters.map((x) => x || "none").sort().join(", ") + "): choose attributes of one adapter.");
    return;
  }
  const body = { prompt: $("prompt").value, attributes, strength: parseFloat($("strength").value) };
  if (adapters[0]) body.lora = adapters[0];
  const upload = document.querySelector("input[name=source]:checked").value === "upload";
  if (upload) {
    const file = $("image").files[0];
    if (!file) {
      showError("Choose an image file to upload.");
      return;
    }
    body.image = await readFile(file);
    $("before").src = URL.createObjectURL(file);
  } else {
    body.seeds = [parseInt($("seed").value || "0", 10)];
  }
  $("edit-button").disabled = true;
  $("status").textContent = "Editing\u2026";
  try {
    const t0 = performance.now();
    const result = await api("POST", "/v1/edits", body);
    const e = result.edits[0];
    if (e.source) $("before").src = "data:image/png;base64," + e.source;
    $("after").src = "data:image/png;base64," + e.image;
    $("before-caption").textContent = `before: ${body.prompt}`;
    $("after-caption").textContent = `after: ${e.target_prompt}`;
    $("download").href = "data:image/png;base64," + e.image;
    $("download").hidden = false;
    $("status").textContent = `Done in ${((performance.now() - t0) / 1000).toFixed(2)} s (a batch of ${result.batch_images}).`;
  } catch (e) {
    showError(e.message);
    $("status").textContent = "";
  } finally {
    $("edit-button").disabled = false;
  }
}

function init() {
  $("learn-form").addEventListener("submit", learn);
  $("edit-form").addEventListener("submit", edit);
  for (const radio of document.querySelectorAll("input[name=source]")) {
    radio.addEventListener("change", () => {
      const upload = radio.value === "upload" && radio.checked;
      $("upload-row").hidden = !upload;
      $("seed-row").hidden = upload;
    });
  }
  $("strength").addEventListener("input", () => { $("strength-value").textContent = parseFloat($("strength").value).toFixed(2); });
  $("strength").addEventListener("change", () => { if ($("after").src) edit(); });
  loadAttributes().catch((e) => showError(e.message));
  loadAdapters().catch((e) => showError(e.message));
}

init();
