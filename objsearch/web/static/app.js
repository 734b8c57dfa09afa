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
  if (query.focusBox && result.objects) focusObject(query.focusBox, result.objects);
  draw();
  renderResults();
  if (state.highlight >= 0) {
    const row = $("results").children[state.highlight];
    if (row) { row.classList.add("focus"); row.scrollIntoView({ block: "nearest" }); }
  }
  const t = result.timings_ms || {};
  if (!result.objects) {  // whole-image mode: one row of similar images
    status(`${query.name}: ${result.neighbors.length} similar images in ${Math.round(t.total || 0)} ms`);
    return;
  }
  const n = result.objects.length;
  status(`${query.name}: ${n} object${n === 1 ? "" : "s"} in ${Math.round(t.total || 0)} ms` +
         (n ? "" : " (try a lower confidence)"));
}

function boxIoU(a, b) {
  const w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]), h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
  const inter = Math.max(0, w) * Math.max(0, h);
  const area = (x) => (x[2] - x[0]) * (x[3] - x[1]);
  return inter / (area(a) + area(b) - inter || 1);
}

function focusObject(box, objects) {  // a map click: highlight the detected object that is the clicked one
  let best = -1, bestIoU = 0.3;
  objects.forEach((obj, i) => { const v = boxIoU(box, obj.box); if (v > bestIoU) { bestIoU = v; best = i; } });
  state.highlight = best;
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

function setInfo(counts) {  // the header line; counts: /api/info or /api/status
  const info = state.info || {};
  const name = (info.index || "").split("/").pop();
  $("info").textContent = `${name} · ${counts.images} images · ${counts.objects} objects · ${info.backend}, ` +
                          `${info.search_dims} dims` + (counts.watch ? " · watching" : "");
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
  box.replaceChildren();
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


// ------------------------------------------------------------------------------------------------ the map
// GET /api/map (state, progress) and GET /api/map/points (binary: n uint32, ids f64[n], media f64[n], xy f32[2n],
// class i16[n]); drawn as pixels on a canvas, so 376k points paint at once. A grid over the screen finds the point
// under the pointer; a drag draws a lasso.
const map = {
  open: false, kind: "objects", version: -1, n: 0, ids: null, media: null, xy: null, cls: null,
  sx: null, sy: null, grid: null, cell: 8, lasso: null, timer: null, loading: false, paintMs: null,
};
const rgb = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
const PALETTE_U32 = PALETTE.map((hex) => { const [r, g, b] = rgb(hex); return (255 << 24) | (b << 16) | (g << 8) | r; });
const GREY_U32 = (255 << 24) | (150 << 16) | (150 << 8) | 150;

function mapColor(cid) { return cid >= 0 ? PALETTE_U32[cid % PALETTE_U32.length] : GREY_U32; }

async function pollMap() {
  clearTimeout(map.timer);
  if (!map.open) return;
  let status;
  try {
    const response = await fetch(`/api/map?kind=${map.kind}&points=false`);
    if (!response.ok) throw new Error(await errorText(response));
    status = await response.json();
  } catch (err) {
    $("map-status").textContent = `map: ${err.message}`;
    map.timer = setTimeout(pollMap, 3000);
    return;
  }
  const bar = $("map-progress");
  bar.hidden = !status.computing;
  bar.value = status.progress;
  if (status.state === "failed") {
    $("map-status").textContent = `the map could not be made: ${status.error}`;
    return;
  }
  if (status.state === "ready" && status.version !== map.version && !map.loading) await loadMapPoints();
  const layout = status.computing ? `laying out: ${status.phase} ${Math.round(status.progress * 100)}%` : "";
  $("map-status").textContent = status.state === "ready"
    ? `${status.n_points} ${map.kind}` + (layout ? ` · a new ${layout}` : "")
    : layout || "starting the layout…";
  map.timer = setTimeout(pollMap, status.computing ? 1000 : 3000);
}

async function loadMapPoints() {
  map.loading = true;
  const t0 = performance.now();
  try {
    const response = await fetch(`/api/map/points?kind=${map.kind}`);
    if (!response.ok) throw new Error(await errorText(response));
    const version = Number(response.headers.get("X-Map-Version"));
    const buf = await response.arrayBuffer();
    const n = new DataView(buf).getUint32(0, true);
    let off = 8;  // 4 bytes of n, 4 of padding so that the float64 arrays start aligned
    map.ids = new Float64Array(buf, off, n); off += 8 * n;
    map.media = new Float64Array(buf, off, n); off += 8 * n;
    map.xy = new Float32Array(buf, off, 2 * n); off += 8 * n;
    map.cls = new Int16Array(buf, off, n);
    map.n = n;
    map.version = version;
    map.lasso = null;
    layoutMap();
    paintMap();
    await new Promise((resolve) => requestAnimationFrame(() => resolve()));
    map.paintMs = performance.now() - t0;
    document.body.dataset.mapPoints = String(n);
    document.body.dataset.mapPaintMs = map.paintMs.toFixed(1);
    document.body.dataset.mapVersion = String(version);
  } catch (err) {
    $("map-status").textContent = `map: ${err.message}`;
  } finally {
    map.loading = false;
  }
}

function layoutMap() {  // data coordinates -> canvas pixels, and the grid of points per cell
  const canvas = $("map");
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(canvas.clientWidth * dpr));
  canvas.height = Math.max(1, Math.round(canvas.clientHeight * dpr));
  const n = map.n, xy = map.xy;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = xy[2 * i], y = xy[2 * i + 1];
    if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
  }
  const pad = 12 * dpr;
  const scale = Math.min((canvas.width - 2 * pad) / Math.max(x1 - x0, 1e-9),
                         (canvas.height - 2 * pad) / Math.max(y1 - y0, 1e-9));
  const ox = (canvas.width - (x1 - x0) * scale) / 2, oy = (canvas.height - (y1 - y0) * scale) / 2;
  map.sx = new Float32Array(n);
  map.sy = new Float32Array(n);
  map.cell = Math.max(4, Math.round(8 * dpr));
  const cols = Math.ceil(canvas.width / map.cell) + 1, rows = Math.ceil(canvas.height / map.cell) + 1;
  const counts = new Uint32Array(cols * rows + 1);
  const cellOf = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const sx = ox + (xy[2 * i] - x0) * scale, sy = oy + (xy[2 * i + 1] - y0) * scale;
    map.sx[i] = sx; map.sy[i] = sy;
    const c = Math.floor(sy / map.cell) * cols + Math.floor(sx / map.cell);
    cellOf[i] = c;
    counts[c + 1]++;
  }
  for (let c = 0; c < cols * rows; c++) counts[c + 1] += counts[c];  // start of each cell's run
  const order = new Uint32Array(n), fill = counts.slice(0, cols * rows);
  for (let i = 0; i < n; i++) order[fill[cellOf[i]]++] = i;
  map.grid = { cols, rows, start: counts, order, dpr };
}

function paintMap() {
  const canvas = $("map");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  const image = ctx.createImageData(w, h);
  const px = new Uint32Array(image.data.buffer);
  px.fill((255 << 24) | (253 << 16) | (251 << 8) | 251);
  const r = map.n > 50000 ? 0 : map.n > 5000 ? 1 : 2;  // point radius in pixels: dots for a crowd, squares for few
  for (let i = 0; i < map.n; i++) {
    const x = Math.round(map.sx[i]), y = Math.round(map.sy[i]);
    const color = mapColor(map.cls[i]);
    for (let dy = -r; dy <= r; dy++) {
      const yy = y + dy;
      if (yy < 0 || yy >= h) continue;
      for (let dx = -r; dx <= r; dx++) {
        const xx = x + dx;
        if (xx >= 0 && xx < w) px[yy * w + xx] = color;
      }
    }
  }
  ctx.putImageData(image, 0, 0);
  if (map.lasso && map.lasso.length > 1) {
    ctx.save();
    ctx.lineWidth = 2 * map.grid.dpr;
    ctx.strokeStyle = "#2962ff";
    ctx.fillStyle = "rgba(41, 98, 255, 0.08)";
    ctx.beginPath();
    map.lasso.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.closePath();
    ctx.fill();
    ctx.stroke();
    ctx.restore();
  }
}

function canvasPoint(event) {
  const canvas = $("map");
  const rect = canvas.getBoundingClientRect();
  return [(event.clientX - rect.left) * canvas.width / rect.width, (event.clientY - rect.top) * canvas.height / rect.height];
}

function nearestPoint(x, y, radius) {  // index of the point nearest (x, y) within radius canvas pixels, or -1
  const g = map.grid;
  if (!g) return -1;
  let best = -1, bestD = radius * radius;
  const c0 = Math.floor(x / map.cell), r0 = Math.floor(y / map.cell), reach = Math.ceil(radius / map.cell);
  for (let r = r0 - reach; r <= r0 + reach; r++) {
    if (r < 0 || r >= g.rows) continue;
    for (let c = c0 - reach; c <= c0 + reach; c++) {
      if (c < 0 || c >= g.cols) continue;
      const cell = r * g.cols + c;
      for (let k = g.start[cell]; k < g.start[cell + 1]; k++) {
        const i = g.order[k], dx = map.sx[i] - x, dy = map.sy[i] - y, d = dx * dx + dy * dy;
        if (d <= bestD) { bestD = d; best = i; }
      }
    }
  }
  return best;
}

function pictureOf(i) {
  return map.kind === "objects" ? `/api/thumbnail/${map.ids[i]}` : `/api/media/${map.ids[i]}?max_side=128`;
}

function className(cid) { return cid >= 0 && state.classNames ? (state.classNames[cid] || String(cid)) : "no objects"; }

function showTip(i, event) {
  const tip = $("map-tip");
  if (i < 0) { tip.hidden = true; tip.dataset.index = ""; return; }
  if (tip.dataset.index !== String(i)) {
    tip.dataset.index = String(i);
    $("map-tip-img").src = pictureOf(i);
    $("map-tip-text").textContent = `${className(map.cls[i])} · ${map.kind === "objects" ? "object" : "image"} ${map.ids[i]}`;
  }
  const stage = $("map-stage").getBoundingClientRect();
  tip.style.left = `${Math.min(event.clientX - stage.left + 14, stage.width - 150)}px`;
  tip.style.top = `${event.clientY - stage.top + 14}px`;
  tip.hidden = false;
}

async function searchPoint(i) {  // the point's object (or image) becomes the query
  let item;
  try {
    const response = await fetch(`/api/map/item/${map.ids[i]}?kind=${map.kind}`);
    if (!response.ok) throw new Error(await errorText(response));
    item = await response.json();
  } catch (err) {
    showError(`map: ${err.message}`);
    return;
  }
  const at = item.timestamp_s !== undefined ? ` @ ${formatTime(item.timestamp_s)}` : "";
  await runQuery({ kind: "media", id: item.media_id, name: item.path + at, focusBox: item.box || null });
}

function insidePolygon(x, y, poly) {  // even-odd rule
  let inside = false;
  for (let a = 0, b = poly.length - 1; a < poly.length; b = a++) {
    const [xa, ya] = poly[a], [xb, yb] = poly[b];
    if ((ya > y) !== (yb > y) && x < ((xb - xa) * (y - ya)) / (yb - ya) + xa) inside = !inside;
  }
  return inside;
}

function listLasso() {
  const poly = map.lasso;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  poly.forEach(([x, y]) => { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); });
  const chosen = [];
  for (let i = 0; i < map.n; i++) {
    const x = map.sx[i], y = map.sy[i];
    if (x >= x0 && x <= x1 && y >= y0 && y <= y1 && insidePolygon(x, y, poly)) chosen.push(i);
  }
  const counts = new Map();
  chosen.forEach((i) => counts.set(map.cls[i], (counts.get(map.cls[i]) || 0) + 1));
  const parts = [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8)
    .map(([cid, count]) => `${className(cid)} ${count}`);
  $("lasso-summary").textContent = `${chosen.length} ${map.kind} in the lasso` + (parts.length ? `: ${parts.join(", ")}` : "") +
    (chosen.length > 60 ? " (the first 60 below)" : "");
  const box = $("lasso-items");
  box.replaceChildren();
  chosen.slice(0, 60).forEach((i) => {
    const hit = document.createElement("button");
    hit.type = "button";
    hit.className = "hit";
    hit.dataset.id = String(map.ids[i]);
    const img = document.createElement("img");
    img.src = pictureOf(i);
    img.alt = className(map.cls[i]);
    img.loading = "lazy";
    const caption = document.createElement("span");
    caption.textContent = className(map.cls[i]);
    hit.append(img, caption);
    hit.addEventListener("click", () => searchPoint(i));
    box.append(hit);
  });
  $("lasso").hidden = false;
  $("lasso").dataset.count = String(chosen.length);
}

function setupMap() {
  const canvas = $("map");
  let drag = null;
  $("map-open").addEventListener("click", () => {
    map.open = !map.open;
    $("map-open").setAttribute("aria-pressed", String(map.open));
    $("map-box").hidden = !map.open;
    if (map.open) { if (map.n) { layoutMap(); paintMap(); } pollMap(); } else clearTimeout(map.timer);
  });
  $("map-kind").addEventListener("change", () => {
    map.kind = $("map-kind").value;
    map.version = -1; map.n = 0; map.grid = null; map.lasso = null;
    $("lasso").hidden = true;
    paintMap();
    pollMap();
  });
  canvas.addEventListener("pointerdown", (e) => {
    if (!map.n) return;
    drag = { start: canvasPoint(e), points: [canvasPoint(e)], moved: false };
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    const [x, y] = canvasPoint(e);
    if (drag) {
      const [x0, y0] = drag.start;
      if (!drag.moved && Math.hypot(x - x0, y - y0) > 6 * (window.devicePixelRatio || 1)) drag.moved = true;
      if (drag.moved) { drag.points.push([x, y]); map.lasso = drag.points; paintMap(); showTip(-1); }
      return;
    }
    showTip(nearestPoint(x, y, 8 * (window.devicePixelRatio || 1)), e);
  });
  canvas.addEventListener("pointerleave", () => showTip(-1));
  canvas.addEventListener("pointerup", (e) => {
    if (!drag) return;
    const done = drag;
    drag = null;
    if (done.moved && done.points.length > 2) { map.lasso = done.points; paintMap(); listLasso(); return; }
    const [x, y] = canvasPoint(e);
    const i = nearestPoint(x, y, 8 * (window.devicePixelRatio || 1));
    if (i >= 0) searchPoint(i);
  });
  window.addEventListener("resize", () => { if (map.open && map.n) { layoutMap(); paintMap(); } });
  window.objsearchMap = {  // for tests and tools: where point i is drawn, in page (CSS) pixels
    pagePoint(i) {
      const rect = canvas.getBoundingClientRect();
      return [rect.left + map.sx[i] * rect.width / canvas.width, rect.top + map.sy[i] * rect.height / canvas.height];
    },
    get n() { return map.n; },
    id(i) { return map.ids[i]; },
  };
}

// ------------------------------------------------------------------------------------------------ live status
// GET /api/status every few seconds: new items (objsearch serve --watch, or another writer) show without a reload.
const live = { generation: null };

async function pollStatus() {
  try {
    const response = await fetch("/api/status");
    if (response.ok) {
      const s = await response.json();
      state.classNames = s.class_names;
      if (s.generation !== live.generation) {
        setInfo(s);
        if (live.generation !== null) {  // something was added or removed since the page loaded
          setupExamples();
          if (map.open) pollMap();
        }
      }
      live.generation = s.generation;
      document.body.dataset.generation = String(s.generation);
      document.body.dataset.images = String(s.images);
    }
  } catch (_) { /* the server is restarting: try again later */ }
  setTimeout(pollStatus, document.hidden ? 10000 : 2000);
}

async function start() {
  setupSources();
  setupCrop();
  try {
    const response = await fetch("/api/info");
    if (!response.ok) throw new Error(await errorText(response));
    const info = await response.json();
    state.info = info;
    setInfo(info);
    setupSettings(info);
  } catch (err) {
    showError(`cannot read the index's description: ${err.message}`);
  }
  setupExamples();
  setupMap();
  pollStatus();
  document.body.dataset.ready = "1";
}

start();
