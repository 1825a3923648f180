// Demo client for the Complete the Look API. It calls only the public endpoints, so it
// doubles as an example: GET /categories, GET /samples, POST /scenes (the photo, uploaded once),
// then GET /scenes/{id}/complete-the-look (one category; explain=true adds its attention map)
// and GET /scenes/{id}/complete-the-look/all (several categories) for every question about it,
// with filter={"in_stock_only": false} when the "in stock only" switch is off, and the product
// images at /products/{id}/image.

const $ = (id) => document.getElementById(id);

const els = {
  file: $("file"),
  samplesBlock: $("samples-block"),
  samples: $("samples"),
  stage: $("stage"),
  photo: $("photo"),
  heatmap: $("heatmap"),
  caption: $("stage-caption"),
  heatmapControls: $("heatmap-controls"),
  showHeatmap: $("show-heatmap"),
  heatmapCategory: $("heatmap-category"),
  legend: $("legend"),
  legendPeak: $("legend-peak"),
  form: $("query"),
  categories: $("categories"),
  k: $("k"),
  inStock: $("in-stock"),
  go: $("go"),
  message: $("message"),
  status: $("status"),
  results: $("results"),
  productTemplate: $("product-template"),
};

const state = {
  /** @type {Blob|null} the scene bytes exactly as chosen; the model sees the whole photo */
  image: null,
  imageName: "",
  /** the service's id of the current scene (POST /scenes), once uploaded */
  sceneId: null,
  photoUrl: "",
  /** category -> attention weights of the current scene (flat, row-major, grid x grid) */
  attention: new Map(),
  /** bumped by every new scene or query, so late answers to old ones are dropped */
  seq: 0,
};

// ---------------------------------------------------------------- talking to the API

/** An error to show the user: a plain headline and, when the API gave one, its exact reason. */
class ApiError extends Error {
  constructor(title, detail = "", status = 0) {
    super(title);
    this.detail = detail;
    this.status = status;
  }
}

/** A plain-words headline for an HTTP error status; the API's detail is shown beneath it. */
function errorTitle(status) {
  if (status === 413) return "That photo is too large. Please choose a smaller one.";
  if (status === 415) {
    return "That file is not a photo we can read. Please upload a JPEG, PNG or WebP image.";
  }
  if (status === 429) return "The service is busy right now. Please try again in a moment.";
  if (status === 503) return "The service is not ready yet. Please try again in a moment.";
  if (status >= 500) return "The service ran into a problem. Please try again.";
  return "The service could not use that request.";
}

/** The API's own explanation: FastAPI sends a string, or a list of validation errors. */
function detailText(body) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => {
        const field = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
        return field ? `${field}: ${d.msg}` : d.msg;
      })
      .join("; ");
  }
  return "";
}

/** fetch, with a network failure turned into an ApiError. */
async function request(path, init) {
  try {
    return await fetch(path, init);
  } catch {
    throw new ApiError("Could not reach the service. Check your connection and try again.");
  }
}

/** fetch + JSON; any failure becomes an ApiError with a plain message. */
async function api(path, init) {
  const response = await request(path, init);
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new ApiError(errorTitle(response.status), detailText(body), response.status);
  }
  return body;
}

/** The bytes behind a URL (a sample scene), as a Blob. */
async function fetchBlob(url) {
  const response = await request(url);
  if (!response.ok) {
    throw new ApiError(errorTitle(response.status), `GET ${url}: HTTP ${response.status}`);
  }
  return response.blob();
}

/**
 * GET a question about the current scene (path under /scenes/{id}/, query params as pairs),
 * uploading the photo first when the service has no id for it: on the first question, and
 * again once if the service forgot it (404: expired, or a new model since).
 */
async function askScene(path, params) {
  const image = state.image;
  for (let attempt = 0; ; attempt++) {
    let id = state.sceneId;
    if (!id) {
      const form = new FormData();
      form.append("image", image, state.imageName || "photo");
      id = (await api("scenes", { method: "POST", body: form })).scene_id;
      if (state.image === image) state.sceneId = id;
    }
    const query = new URLSearchParams(params.map(([n, v]) => [n, String(v)]));
    try {
      return await api(`scenes/${id}/${path}?${query}`);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404) || attempt > 0) throw err;
      if (state.sceneId === id) state.sceneId = null;
    }
  }
}

/**
 * Recommendations as [{category, products, cached, model_version, index_version}].
 * One category: complete-the-look with its attention map; several: one /all call.
 */
async function fetchRecommendations(categories, k) {
  // The service recommends products in stock unless told otherwise.
  const filter = els.inStock.checked ? [] : [["filter", JSON.stringify({ in_stock_only: false })]];
  if (categories.length === 1) {
    const params = [["category", categories[0]], ["k", k], ["explain", "true"], ...filter];
    return [await askScene("complete-the-look", params)];
  }
  const params = [["k", k], ...categories.map((c) => ["categories", c]), ...filter];
  const body = await askScene("complete-the-look/all", params);
  return Object.entries(body.results).map(([category, products]) => ({
    category,
    products,
    cached: body.cached,
    model_version: body.model_version,
    index_version: body.index_version,
  }));
}

/** The attention map of one category (from the stored scene: no upload, no encoder pass). */
async function fetchAttention(category) {
  const params = [["category", category], ["k", 1], ["explain", "true"]];
  const body = await askScene("complete-the-look", params);
  return body.attention.flat();
}

// ---------------------------------------------------------------- messages

function showError(err) {
  const title = document.createElement("strong");
  title.textContent = err instanceof ApiError ? err.message : `Something went wrong: ${err}`;
  const detail = document.createElement("span");
  detail.className = "detail";
  detail.textContent = err instanceof ApiError ? err.detail : "";
  els.message.replaceChildren(title, detail);
  els.message.hidden = false;
  els.message.scrollIntoView({ block: "nearest" });
}

function clearError() {
  els.message.hidden = true;
  els.message.replaceChildren();
}

function setBusy(text) {
  els.status.textContent = text;
  document.body.classList.toggle("busy", Boolean(text));
}

// ---------------------------------------------------------------- categories and samples

/** Fill the chips from GET /categories, keeping ``checked`` ticked; returns the names. */
async function loadCategories(checked = []) {
  const body = await api("categories");
  const names = body.categories.map((c) => c.name);
  const keep = checked.filter((c) => names.includes(c));
  els.categories.replaceChildren(
    ...body.categories.map((c, i) => {
      const label = document.createElement("label");
      label.className = "chip";
      label.title = `${c.count} products`;
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = "category";
      box.value = c.name;
      box.checked = keep.length ? keep.includes(c.name) : i === 0;
      const text = document.createElement("span");
      text.textContent = c.name;
      label.append(box, text);
      return label;
    }),
  );
  return names;
}

function chosenCategories() {
  return [...els.categories.querySelectorAll("input[name=category]:checked")].map((b) => b.value);
}

/** Sample scenes are a convenience: without them the page still works by upload. */
async function loadSamples() {
  let samples;
  try {
    samples = await api("samples");
  } catch {
    return;
  }
  els.samples.replaceChildren(
    ...samples.map((s) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "sample";
      button.setAttribute("role", "listitem");
      button.dataset.name = s.name;
      button.title = "Use this sample scene";
      const img = document.createElement("img");
      img.src = s.url;
      img.alt = `Sample scene ${s.name}`;
      button.append(img);
      button.addEventListener("click", () => useSample(s));
      return button;
    }),
  );
  els.samplesBlock.hidden = samples.length === 0;
}

function markSample(name) {
  for (const b of els.samples.children) b.classList.toggle("selected", b.dataset.name === name);
}

async function useSample(sample) {
  clearError();
  setBusy("Loading the sample scene…");
  let blob;
  try {
    blob = await fetchBlob(sample.url);
  } catch (err) {
    showError(err);
    return;
  } finally {
    setBusy("");
  }
  markSample(sample.name);
  setScene(blob, sample.name);
  await run();
}

// ---------------------------------------------------------------- the scene

function setScene(blob, name) {
  state.seq++;
  state.image = blob;
  state.imageName = name;
  state.sceneId = null;
  state.attention.clear();
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photoUrl = URL.createObjectURL(blob);
  els.photo.src = state.photoUrl;
  els.stage.classList.remove("empty");
  els.caption.textContent = name;
  els.results.replaceChildren();
  updateHeatmapControls();
  els.go.disabled = false;
}

// A file the browser cannot show is hidden; the API's answer says what is wrong with it.
els.photo.addEventListener("error", () => {
  els.stage.classList.toggle("unreadable", Boolean(state.image));
});
els.photo.addEventListener("load", () => {
  els.stage.classList.remove("unreadable");
  drawHeatmap();
});

// ---------------------------------------------------------------- queries

async function run() {
  if (!state.image) return;
  const categories = chosenCategories();
  if (categories.length === 0) {
    showError(new ApiError("Choose at least one category."));
    return;
  }
  const k = Number(els.k.value);
  const maxK = Number(els.k.max);
  if (!Number.isInteger(k) || k < 1 || k > maxK) {
    showError(new ApiError(`Products per category must be a whole number from 1 to ${maxK}.`));
    return;
  }
  const seq = ++state.seq;
  clearError();
  setBusy("Looking at your photo…");
  els.go.disabled = true;
  try {
    const results = await fetchRecommendations(categories, k);
    if (seq !== state.seq) return;
    state.attention.clear();
    for (const r of results) if (r.attention) state.attention.set(r.category, r.attention.flat());
    renderResults(results);
  } catch (err) {
    const stale = err instanceof ApiError && err.status === 422;
    const shown = stale ? await staleCategories(categories, err) : err;
    if (seq !== state.seq) return;
    els.results.replaceChildren();
    state.attention.clear();
    showError(shown);
  } finally {
    if (seq === state.seq) {
      setBusy("");
      els.go.disabled = !state.image;
      updateHeatmapControls();
    }
  }
}

/**
 * A 422 can mean the catalog changed since the page loaded (a category was removed): refresh the
 * list, and if a chosen category is gone say so in plain words.
 */
async function staleCategories(chosen, err) {
  let names;
  try {
    names = await loadCategories(chosen);
  } catch {
    return err;
  }
  const gone = chosen.filter((c) => !names.includes(c));
  if (gone.length === 0) return err;
  const list = gone.map((c) => `“${c}”`).join(", ");
  const verb = gone.length === 1 ? "is" : "are";
  const title =
    `${list} ${verb} not in the catalog any more. ` +
    "The list of categories is up to date now; please choose again.";
  return new ApiError(title, err.detail, err.status);
}

// ---------------------------------------------------------------- results

function renderResults(results) {
  els.results.replaceChildren(
    ...results.map((r) => {
      const section = document.createElement("section");
      section.className = "category-result";
      section.dataset.category = r.category;
      const head = document.createElement("header");
      const title = document.createElement("h3");
      title.textContent = r.category;
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = `${r.products.length} products${r.cached ? " · from cache" : ""}`;
      meta.title = `model ${r.model_version}, index ${r.index_version}`;
      head.append(title, meta);
      const grid = document.createElement("ul");
      grid.className = "grid";
      grid.append(...r.products.map(productCard));
      section.append(head, grid);
      return section;
    }),
  );
}

function productCard(p) {
  const card = els.productTemplate.content.firstElementChild.cloneNode(true);
  card.dataset.productId = p.id;
  const img = card.querySelector("img");
  img.addEventListener("error", () => card.classList.add("no-image"));
  img.src = p.image_url;
  img.alt = `${p.category} product ${p.id}`;
  card.querySelector(".rank").textContent = `#${p.rank}`;
  const score = card.querySelector(".score");
  score.textContent = `d* ${p.d_star.toFixed(3)}`;
  score.title =
    `Distance to the scene, lower is a better match: d* ${p.d_star.toFixed(4)} = ` +
    `global ${p.d_global.toFixed(4)} + local ${p.d_local.toFixed(4)}`;
  card.querySelector(".product-id").textContent = p.id;
  if (p.title) {
    const title = card.querySelector(".product-title");
    title.textContent = p.title;
    title.hidden = false;
    img.alt = p.title;
  }
  if (typeof p.price === "number") {
    const price = card.querySelector(".price");
    price.textContent = formatPrice(p.price, p.currency);
    price.hidden = false;
  }
  if (p.in_stock === false) {
    card.classList.add("out-of-stock");
    card.querySelector(".stock-badge").hidden = false;
  }
  return card;
}

/** A price in the shop's currency where the browser knows it, else the number and its code. */
function formatPrice(value, currency) {
  if (currency) {
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(value);
    } catch {
      return `${value.toFixed(2)} ${currency}`;
    }
  }
  return value.toFixed(2);
}

// ---------------------------------------------------------------- the attention heatmap

/** The heatmap can be shown for any category that has results for the current scene. */
function updateHeatmapControls() {
  const cats = [...els.results.querySelectorAll(".category-result")].map((s) => s.dataset.category);
  const previous = els.heatmapCategory.value;
  els.heatmapCategory.replaceChildren(
    ...cats.map((c) => {
      const o = document.createElement("option");
      o.value = c;
      o.textContent = c;
      return o;
    }),
  );
  if (cats.includes(previous)) els.heatmapCategory.value = previous;
  els.heatmapControls.hidden = cats.length === 0;
  els.showHeatmap.disabled = cats.length === 0;
  els.heatmapCategory.disabled = cats.length < 2;
  showHeatmap();
}

/** Draw the map for the chosen category, asking the API for it first when needed. */
async function showHeatmap() {
  const category = els.heatmapCategory.value;
  if (els.showHeatmap.checked && category && !state.attention.has(category)) {
    const seq = state.seq;
    setBusy("Loading the attention map…");
    try {
      const weights = await fetchAttention(category);
      if (seq === state.seq) state.attention.set(category, weights);
    } catch (err) {
      if (seq === state.seq) showError(err);
    } finally {
      if (seq === state.seq) setBusy("");
    }
  }
  drawHeatmap();
}

/**
 * RGBA for a min-max scaled weight t in [0, 1]: a dark veil where the model looks least, fading
 * to a light warm tint where it looks most, so the attended part of the photo stays visible.
 */
function heatColor(t) {
  const stops = [
    [0.0, [20, 10, 50, 165]],
    [0.45, [150, 35, 110, 95]],
    [0.75, [245, 110, 40, 60]],
    [1.0, [255, 225, 60, 70]],
  ];
  let i = 1;
  while (i < stops.length - 1 && t > stops[i][0]) i++;
  const [t0, c0] = stops[i - 1];
  const [t1, c1] = stops[i];
  const u = Math.min(1, Math.max(0, (t - t0) / (t1 - t0)));
  return c0.map((v, j) => Math.round(v + (c1[j] - v) * u));
}

function drawHeatmap() {
  const weights = state.attention.get(els.heatmapCategory.value);
  const visible =
    els.showHeatmap.checked && !els.showHeatmap.disabled && weights && els.photo.naturalWidth > 0;
  els.heatmap.hidden = !visible;
  els.legend.hidden = !visible;
  if (!visible) return;

  // One pixel per region, min-max scaled, then smoothly upscaled over the photo.
  const grid = Math.round(Math.sqrt(weights.length));
  const lo = Math.min(...weights);
  const hi = Math.max(...weights);
  const cells = document.createElement("canvas");
  cells.width = grid;
  cells.height = grid;
  const cctx = cells.getContext("2d");
  const pixels = cctx.createImageData(grid, grid);
  weights.forEach((w, i) => {
    pixels.data.set(heatColor(hi > lo ? (w - lo) / (hi - lo) : 0.5), i * 4);
  });
  cctx.putImageData(pixels, 0, 0);
  // How peaked the map is: min-max scaling makes even a nearly flat map look contrasted.
  els.legendPeak.textContent = `(peak ${(hi * weights.length).toFixed(2)}× the average region)`;

  // The encoder sees the whole photo stretched to a square, so the grid spans the whole photo.
  const rect = els.photo.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  els.heatmap.width = Math.max(1, Math.round(rect.width * dpr));
  els.heatmap.height = Math.max(1, Math.round(rect.height * dpr));
  const ctx = els.heatmap.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.clearRect(0, 0, els.heatmap.width, els.heatmap.height);
  ctx.drawImage(cells, 0, 0, els.heatmap.width, els.heatmap.height);
}

// ---------------------------------------------------------------- wiring

els.file.addEventListener("change", async () => {
  const file = els.file.files[0];
  if (!file) return;
  els.file.value = ""; // so choosing the same file again is a change too
  markSample("");
  clearError();
  setScene(file, file.name);
  await run();
});

els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  run();
});
els.inStock.addEventListener("change", () => {
  if (state.image && els.results.childElementCount > 0) run();
});
els.showHeatmap.addEventListener("change", showHeatmap);
els.heatmapCategory.addEventListener("change", showHeatmap);
new ResizeObserver(drawHeatmap).observe(els.photo);

async function init() {
  try {
    await loadCategories();
  } catch (err) {
    els.categories.replaceChildren();
    showError(err);
  }
  await loadSamples();
  document.body.dataset.ready = "true";
}

init();
