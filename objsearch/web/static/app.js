// objsearch's page: every query source ends as one of two queries, an image blob (upload, drop, webcam, URL, a
// cropped region) or an indexed image's id (example, random, a clicked result). Results come from POST /api/search
// (the `objsearch query --json` object); thumbnails from GET /api/thumbnail/{object_id}.
"use strict";

const $ = (id) => document.getElementById(id);
const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
                 "#469990", "#800000", "#808000", "#000075", "#e6a000", "#2f4f4f"];
const color = (cid) => PALETTE[cid % PALETTE.length];

const state = {
  query: null,     // {kind: "blob", blob, name} | {kind: "media", id, name}
  image: null,     // the query as a decoded HTMLImageElement
  result: null,    // the last search's JSON
  region: null,    // [x1, y1, x2, y2] in image pixels, or null
  highlight: -1,   // query object shown thicker
  seq: 0,          // only the newest search is shown
};

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function status(text) { $("status").textContent = text; }

async function errorText(response) {
  try {
    const data = await response.json();
    if (data && data.error) return data.error;
  } catch (_) { /* not JSON */ }
  return `the server answered ${response.status}`;
}

function params() {
  const p = new URLSearchParams({ k: $("k").value, conf: $("conf").value, same_class: $("same-class").checked });
  if ($("dims").value) p.set("dims", $("dims").value);
  if (!$("mode-box").hidden && $("mode").value) p.set("mode", $("mode").value);
  return p;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show this image"));
    img.src = src;
  });
}

// ------------------------------------------------------------------------------------------------ searching
async function runQuery(query) {
  const seq = ++state.seq;
  showError("");
  status(`searching ${query.name}…`);
  const p = params();
  let request;
  if (query.kind === "media") {
    p.set("media_id", query.id);
    request = fetch(`/api/search?${p}`, { method: "POST" });
  } else {
    const form = new FormData();
    form.append("image", query.blob, query.name);
    request = fetch(`/api/search?${p}`, { method: "POST", body: form });
  }
  let result;
  try {
    const response = await request;
    if (!response.ok) throw new Error(await errorText(response));
    result = await response.json();
  } catch (err) {
    if (seq !== state.seq) return;
    showError(`${query.name}: ${err.message}`);
    status(state.result ? "The previous result is still shown." : "Try another image.");
    return;
  }
  if (seq !== state.seq) return;
  let image = state.image;
  if (!state.query || state.query !== query) {
    const src = query.kind === "media" ? `/api/media/${query.id}` : URL.createObjectURL(query.blob);
    try {
      image = await loadImage(src);
    } catch (err) {
      if (seq !== state.seq) return;
      showError(`${query.name}: ${err.message}`);
      return;
    }
    if (seq !== state.seq) return;
  }
  state.query = query;
  state.image = image;
  state.result = result;
  state.region = null;
  state.highlight = -1;
  updateCropButtons();
  draw();
  renderResults();
  const t = result.timings_ms || {};
  if (!result.objects) {  // whole-image mode: one row of similar images
    status(`${query.name}: ${result.neighbors.length} similar images in ${Math.round(t.total || 0)} ms`);
    return;
  }
  const n = result.objects.length;
  status(`${query.name}: ${n} object${n === 1 ? "" : "s"} in ${Math.round(t.total || 0)} ms` +
         (n ? "" : " (try a lower confidence)"));
}

function rerun() { if (state.query) runQuery(state.query); }

let timer = null;
function rerunSoon() { clearTimeout(timer); timer = setTimeout(rerun, 250); }

// ------------------------------------------------------------------------------------------------ drawing
function draw() {
  const canvas = $("query");
  const img = state.image;
  if (!img) return;
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  // line widths and labels in screen pixels: the canvas is shown scaled to its box
  const shown = canvas.getBoundingClientRect().width;
  const scale = Math.max(0.5, img.naturalWidth / (shown > 1 ? shown : img.naturalWidth));
  const objects = state.result && state.result.objects ? state.result.objects : [];
  objects.forEach((obj, i) => {
    const [x1, y1, x2, y2] = obj.box;
    const c = color(obj.class_id);
    ctx.lineWidth = (i === state.highlight ? 5 : 2.5) * scale;
    ctx.strokeStyle = c;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const label = `${i + 1} ${obj.label} ${obj.confidence.toFixed(2)}`;
    ctx.font = `${Math.round(14 * scale)}px system-ui, sans-serif`;
    const w = ctx.measureText(label).width + 8 * scale;
    const h = 18 * scale;
    const y = y1 >= h ? y1 - h : y1;
    const x = Math.max(0, Math.min(x1, canvas.width - w));
    ctx.fillStyle = c;
    ctx.fillRect(x, y, w, h);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x + 4 * scale, y + 14 * scale);
  });
  if (state.region) {
    const [x1, y1, x2, y2] = state.region;
    ctx.save();
    ctx.setLineDash([8 * scale, 6 * scale]);
    ctx.lineWidth = 2 * scale;
    ctx.strokeStyle = "#fff";
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.strokeStyle = "#000";
    ctx.lineDashOffset = 7 * scale;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.restore();
  }
}

function describe(nb) {
  const parts = [["path", nb.path]];
  if (nb.label !== undefined) parts.push(["class", nb.label], ["confidence", nb.confidence.toFixed(3)]);
  parts.push(["distance", nb.distance === null ? "?" : nb.distance.toFixed(4)]);
  if (nb.timestamp_s !== undefined) parts.push(["time", formatTime(nb.timestamp_s)], ["frame", nb.frame_index]);
  if (nb.moment) {  // hits of one video, class and time window, shown by this best frame
    parts.push(["moment", `${formatTime(nb.moment.start_s)}–${formatTime(nb.moment.end_s)}, ` +
                          `${nb.moment.frames} frame${nb.moment.frames === 1 ? "" : "s"}`]);
  }
  return parts;
}

function formatTime(s) {
  const t = Math.max(0, Math.round(s * 10));
  const h = Math.floor(t / 36000), m = Math.floor((t % 36000) / 600), sec = (t % 600) / 10;
  return `${String(h).padStart(2, "0")}:${String(m).padStart(2, "0")}:${sec.toFixed(1).padStart(4, "0")}`;
}

function showDetails(nb) {
  const box = $("details");
  box.replaceChildren();
  describe(nb).forEach(([key, value], i) => {
    if (i) box.append(" · ");
    const b = document.createElement("b");
    b.textContent = `${key} `;
    box.append(b, String(value));
  });
  box.classList.remove("muted");
}

function hitButton(nb, src, label, captionText) {
  const hit = document.createElement("button");
  hit.type = "button";
  hit.className = "hit";
  hit.dataset.label = label;
  hit.dataset.imageId = nb.image_id;
  hit.title = describe(nb).map(([k, v]) => `${k}: ${v}`).join("\n");
  const img = document.createElement("img");
  img.src = src;
  img.alt = label;
  img.loading = "lazy";
  const caption = document.createElement("span");
  caption.textContent = captionText;
  hit.append(img, caption);
  if (nb.timestamp_s !== undefined) {  // a video frame: its time under the distance
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = `@ ${formatTime(nb.timestamp_s)}`;
    hit.append(time);
  }
  hit.addEventListener("mouseenter", () => showDetails(nb));
  hit.addEventListener("focus", () => showDetails(nb));
  hit.addEventListener("click", () => {  // the neighbour's image (or video frame) is the next query
    showDetails(nb);
    const at = nb.timestamp_s !== undefined ? ` @ ${formatTime(nb.timestamp_s)}` : "";
    runQuery({ kind: "media", id: nb.image_id, name: nb.path + at });
  });
  return hit;
}

function renderImageRow(box) {
  const row = document.createElement("div");
  row.className = "row";
  row.dataset.label = "similar images";
  const title = document.createElement("h2");
  title.textContent = "similar images";
  const strip = document.createElement("div");
  strip.className = "strip";
  state.result.neighbors.forEach((nb) => {
    const name = nb.path.split("/").pop() + (nb.timestamp_s !== undefined ? ` @ ${formatTime(nb.timestamp_s)}` : "");
    strip.append(hitButton(nb, `/api/media/${nb.image_id}?max_side=256`, name,
                           `d=${nb.distance === null ? "?" : nb.distance.toFixed(2)}`));
  });
  if (!state.result.neighbors.length) strip.textContent = "no neighbours";
  row.append(title, strip);
  box.append(row);
}

function renderResults() {
  const box = $("results");
  box.replaceChildren();
  if (state.result && !state.result.objects) {
    renderImageRow(box);
    return;
  }
  const objects = state.result ? state.result.objects : [];
  objects.forEach((obj, i) => {
    const row = document.createElement("div");
    row.className = "row";
    row.dataset.label = obj.label;
    const title = document.createElement("h2");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = color(obj.class_id);
    const text = document.createElement("span");
    text.className = "object-label";
    text.textContent = `${i + 1} ${obj.label} ${obj.confidence.toFixed(2)}`;
    title.append(swatch, text);
    if (obj.note) {
      const note = document.createElement("span");
      note.className = "note";
      note.textContent = obj.note;
      title.append(note);
    }
    const strip = document.createElement("div");
    strip.className = "strip";
    obj.neighbors.forEach((nb) => {
      strip.append(hitButton(nb, `/api/thumbnail/${nb.object_id}`, nb.label,
                             `${nb.label} d=${nb.distance === null ? "?" : nb.distance.toFixed(2)}`));
    });
    if (!obj.neighbors.length) strip.textContent = "no neighbours";
    row.addEventListener("mouseenter", () => { state.highlight = i; draw(); });
    row.addEventListener("mouseleave", () => { state.highlight = -1; draw(); });
    row.append(title, strip);
    box.append(row);
  });
  if (state.result && !objects.length) {
    const empty = document.createElement("p");
    empty.className = "muted";
    empty.textContent = "No objects were detected in this image.";
    box.append(empty);
  }
}

// ------------------------------------------------------------------------------------------------ cropping
function imagePoint(event) {
  const canvas = $("query");
  const rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * canvas.width / rect.width;
  const y = (event.clientY - rect.top) * canvas.height / rect.height;
  return [Math.min(Math.max(x, 0), canvas.width), Math.min(Math.max(y, 0), canvas.height)];
}

function updateCropButtons() {
  $("crop-search").disabled = !state.region;
  $("crop-clear").disabled = !state.region;
}

function setupCrop() {
  const canvas = $("query");
  let start = null;
  // a finger scrolls the page unless "Crop by touch" is on; a mouse or pen always draws a region
  $("crop-touch").addEventListener("click", () => {
    const on = $("crop-touch").getAttribute("aria-pressed") !== "true";
    $("crop-touch").setAttribute("aria-pressed", String(on));
    canvas.classList.toggle("cropping", on);
  });
  canvas.addEventListener("pointerdown", (e) => {
    if (!state.image || (e.pointerType === "touch" && !canvas.classList.contains("cropping"))) return;
    start = imagePoint(e);
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!start) return;
    const [x, y] = imagePoint(e);
    state.region = [Math.min(start[0], x), Math.min(start[1], y), Math.max(start[0], x), Math.max(start[1], y)];
    draw();
  });
  canvas.addEventListener("pointerup", () => {
    if (!start) return;
    start = null;
    const r = state.region;
    if (r && (r[2] - r[0] < 8 || r[3] - r[1] < 8)) state.region = null;
    updateCropButtons();
    draw();
  });
  $("crop-clear").addEventListener("click", () => { state.region = null; updateCropButtons(); draw(); });
  $("crop-search").addEventListener("click", () => {
    const r = state.region.map(Math.round);
    const crop = document.createElement("canvas");
    crop.width = r[2] - r[0];
    crop.height = r[3] - r[1];
    crop.getContext("2d").drawImage(state.image, r[0], r[1], crop.width, crop.height, 0, 0, crop.width, crop.height);
    const name = `region ${r.join(",")} of ${state.query.name}`.slice(0, 200);
    crop.toBlob((blob) => runQuery({ kind: "blob", blob, name }), "image/jpeg", 0.92);
  });
}

// ------------------------------------------------------------------------------------------------ sources
function setupSources() {
  const fromFile = (file) => { if (file) runQuery({ kind: "blob", blob: file, name: file.name || "upload" }); };
  $("file").addEventListener("change", (e) => { fromFile(e.target.files[0]); e.target.value = ""; });
  $("camera-file").addEventListener("change", (e) => { fromFile(e.target.files[0]); e.target.value = ""; });
  document.addEventListener("dragover", (e) => { e.preventDefault(); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) fromFile(file);
  });
  $("url-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const url = $("url").value.trim();
    if (!url) return;
    showError("");
    status(`fetching ${url}…`);
    try {
      const response = await fetch("/api/fetch", { method: "POST", headers: { "Content-Type": "application/json" },
                                                   body: JSON.stringify({ url }) });
      if (!response.ok) throw new Error(await errorText(response));
      runQuery({ kind: "blob", blob: await response.blob(), name: url });
    } catch (err) {
      showError(`${url}: ${err.message}`);
      status("");
    }
  });
  $("random").addEventListener("click", async () => {
    const response = await fetch("/api/random");
    if (!response.ok) { showError(await errorText(response)); return; }
    const item = await response.json();
    runQuery({ kind: "media", id: item.media_id, name: item.path });
  });
  let stream = null;
  const closeCamera = () => {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    $("camera-box").hidden = true;
  };
  $("webcam").addEventListener("click", async () => {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("this browser gives no webcam to an http page here; use Camera or Upload (or serve over https)");
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (err) {
      showError(`webcam: ${err.message}`);
      return;
    }
    $("video").srcObject = stream;
    $("camera-box").hidden = false;
  });
  $("camera-close").addEventListener("click", closeCamera);
  $("capture").addEventListener("click", () => {
    const video = $("video");
    if (!video.videoWidth) { showError("the webcam has no picture yet"); return; }
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => runQuery({ kind: "blob", blob, name: "webcam" }), "image/jpeg", 0.92);
  });
}

function setupSettings(info) {
  const dims = $("dims");
  info.dims.forEach((d) => {
    const option = document.createElement("option");
    option.value = d;
    option.textContent = d;
    option.selected = d === info.search_dims;
    dims.append(option);
  });
  if (info.modes.length > 1) {
    info.modes.forEach((m) => {
      const option = document.createElement("option");
      option.value = m;
      option.textContent = m === "image" ? "whole image" : m;
      $("mode").append(option);
    });
    $("mode-box").hidden = false;
  }
  $("conf").value = info.conf;
  $("conf-out").textContent = Number(info.conf).toFixed(2);
  $("k").addEventListener("input", () => { $("k-out").textContent = $("k").value; rerunSoon(); });
  $("conf").addEventListener("input", () => { $("conf-out").textContent = Number($("conf").value).toFixed(2); rerunSoon(); });
  ["same-class", "dims", "mode"].forEach((id) => $(id).addEventListener("change", rerun));
}

async function setupExamples() {
  const response = await fetch("/api/examples?n=16");
  if (!response.ok) return;
  const box = $("examples");
  (await response.json()).images.forEach((item) => {
    const button = document.createElement("button");
    button.type = "button";
    button.title = item.path;
    const img = document.createElement("img");
    img.alt = item.path;
    img.loading = "lazy";
    img.src = item.object_id !== null ? `/api/thumbnail/${item.object_id}` : `/api/media/${item.media_id}?max_side=96`;
    button.append(img);
    button.addEventListener("click", () => runQuery({ kind: "media", id: item.media_id, name: item.path }));
    box.append(button);
  });
}

async function start() {
  setupSources();
  setupCrop();
  try {
    const response = await fetch("/api/info");
    if (!response.ok) throw new Error(await errorText(response));
    const info = await response.json();
    const name = info.index.split("/").pop();
    $("info").textContent = `${name} · ${info.images} images · ${info.objects} objects · ${info.backend}, ` +
                            `${info.search_dims} dims`;
    setupSettings(info);
  } catch (err) {
    showError(`cannot read the index's description: ${err.message}`);
  }
  setupExamples();
  document.body.dataset.ready = "1";
}

start();
