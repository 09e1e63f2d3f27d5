// The page of `splice serve`: send an image to /v1/caption, show the caption word by word (and, with several beams,
// every beam with its score under it), and on hover show that word's attention heatmap over the image.
"use strict";

const $ = (id) => document.getElementById(id);
let heatmapsAvailable = false;

async function loadHealth() {
  const health = await (await fetch("/health")).json();
  heatmapsAvailable = health.heatmaps;
  $("model").textContent = `${health.model} on ${health.device}` + (health.heatmaps ? "" : " (no heatmaps for this model)");
  if (!health.heatmaps) {
    $("heatmap-input").checked = false;
    $("heatmap-input").disabled = true;
  }
}

function showCaption(result) {
  const caption = $("caption");
  caption.replaceChildren();
  const maps = result.heatmaps || [];
  result.tokens.forEach((token, i) => {
    const span = document.createElement("span");
    span.className = "token";
    span.textContent = token;
    span.dataset.index = i;
    if (maps[i]) {
      span.addEventListener("mouseenter", () => {
        $("overlay").src = maps[i];
        $("overlay").classList.add("shown");
        span.classList.add("active");
      });
      span.addEventListener("mouseleave", () => {
        $("overlay").classList.remove("shown");
        span.classList.remove("active");
      });
    }
    caption.appendChild(span);
  });
  caption.dataset.text = result.caption;
  if (!result.tokens.length) caption.textContent = "(the model generated no words for this image)";
}

function showBeams(result, beams) {
  const list = $("beams");
  list.replaceChildren();
  if (beams <= 1) return;
  const title = document.createElement("p");
  title.textContent = `beam search, ${beams} beams, best first (score: length-penalised log-probability)`;
  list.appendChild(title);
  const items = document.createElement("ol");
  (result.beams || []).forEach((beam, i) => {
    const item = document.createElement("li");
    item.className = "beam" + (i === 0 ? " best" : "");
    const score = typeof beam.score === "number" ? beam.score.toFixed(3) : "no score";
    item.textContent = `${beam.caption || "(no words)"}  (${score})`;
    item.dataset.caption = beam.caption;
    items.appendChild(item);
  });
  list.appendChild(items);
}

async function caption(file) {
  $("error").textContent = "";
  $("caption").textContent = "…";
  $("beams").replaceChildren();
  $("image").src = URL.createObjectURL(file);
  $("stage").hidden = false;
  $("overlay").classList.remove("shown");
  const beams = Math.max(1, Math.min(8, parseInt($("beams-input").value, 10) || 1));
  const form = new FormData();
  form.append("image", file);
  form.append("num_beams", String(beams));
  form.append("heatmap", String(heatmapsAvailable && $("heatmap-input").checked));
  if (beams > 1) form.append("return_beams", "true");
  const response = await fetch("/v1/caption", { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) {
    $("caption").textContent = "";
    $("error").textContent = `${response.status}: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`;
    return;
  }
  showCaption(body);
  showBeams(body, beams);
}

$("file").addEventListener("change", (event) => {
  if (event.target.files.length) caption(event.target.files[0]);
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) caption(event.dataTransfer.files[0]);
});
loadHealth();
