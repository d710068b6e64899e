// The page's only script: reads the chosen files, sends them to this server's API and shows the answers.
"use strict";

const drop = document.getElementById("drop");
const input = document.getElementById("files");
const status = document.getElementById("status");
const results = document.getElementById("results");

fetch("/api/model").then((r) => r.json()).then((info) => {
  document.getElementById("model-name").textContent =
    `${info.model} (keras-pneumonia ${info.keras_pneumonia_version}), threshold ${info.threshold.toFixed(3)}`;
});

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function figure(src, caption) {
  const fig = element("figure");
  const img = element("img");
  img.alt = caption;
  img.onerror = () => fig.replaceWith(element("p", "note", "The browser cannot show this file's format."));
  img.src = src;
  fig.append(img, element("figcaption", "", caption));
  return fig;
}

function show(file, result) {
  const card = element("article", "result");
  card.append(element("h2", "", result.file));
  if (result.error) {
    card.append(element("p", "error", `Could not read this file: ${result.error}`));
    results.prepend(card);
    return;
  }
  const verdict = element("p", "verdict");
  verdict.append(element("span", result.decision, result.decision), document.createTextNode(
    `  P(pneumonia) = ${result.probability.toFixed(3)}, threshold ${result.threshold.toFixed(3)}`));
  card.append(verdict);
  if (result.warning) card.append(element("p", "warning", `Warning: ${result.warning}`));
  card.append(figure(URL.createObjectURL(file), "The X-ray as sent"));
  if (result.gradcam && result.gradcam.startsWith("data:image/png")) {
    card.append(figure(result.gradcam, "Grad-CAM: where the model looked"));
  } else {
    card.append(element("p", "note", result.gradcam || "No Grad-CAM overlay."));
  }
  results.prepend(card);
}

async function send(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("file", file);
  status.textContent = `Sending ${files.length} file(s)…`;
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    const body = await response.json();
    if (body.results) body.results.forEach((r, i) => show(files[i], r));
    status.textContent = response.ok ? `Done: ${files.length} file(s).` : `Error ${response.status}: ${body.error}`;
  } catch (err) {
    status.textContent = `The server did not answer: ${err}`;
  }
}

input.addEventListener("change", () => { send(Array.from(input.files)); input.value = ""; });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  send(Array.from(e.dataTransfer.files));
});
