"""The single page of `renalflow web` (plain HTML, CSS and JavaScript, no build step)."""

# ruff: noqa: E501

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>renalflow: renal mass classification</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
.note { background: #fff4d6; padding: 6px 10px; border-left: 4px solid #e0a800; }
#error { color: #a00; font-weight: bold; white-space: pre-wrap; }
#vote { font-size: 2em; font-weight: bold; }
.malignant { color: #b00; } .benign { color: #070; }
.bar { position: relative; height: 26px; background: #eee; width: 600px; margin: 8px 0; }
.fill { position: absolute; left: 0; top: 0; bottom: 0; background: #d55; }
.line { position: absolute; top: -4px; bottom: -4px; width: 2px; background: #000; }
.heat img { width: 224px; margin: 4px; border: 1px solid #ccc; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 2px 6px; }
</style></head><body>
<h1>Renal mass: benign oncocytoma or renal cell carcinoma?</h1>
<p>Upload the DICOM files of one patient's CT series (several files, or one zip). Each axial
slice is classified; the patient is called malignant when at least the vote threshold
(51%) of the slices are. Model {{MODEL}}.</p>
<p class="note">A research tool, not a diagnosis. {{NOTE}}</p>
<form id="form">
  <input id="files" type="file" name="files" multiple>
  <button id="submit" type="submit">Classify</button>
</form>
<p id="status"></p>
<p id="error"></p>
<div id="result" hidden>
  <p>Vote: <span id="vote"></span></p>
  <p><span id="share"></span></p>
  <div class="bar"><div class="fill" id="fill"></div><div class="line" id="line"></div></div>
  <h2>Probability of malignancy, slice by slice along z</h2>
  <svg id="chart" width="700" height="220"></svg>
  <h2>Slices that decided the vote (<span id="method"></span>)</h2>
  <div class="heat" id="heat"></div>
  <div id="rejects"></div>
</div>
<script>
const form = document.getElementById("form");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const files = document.getElementById("files").files;
  document.getElementById("error").textContent = "";
  document.getElementById("result").hidden = true;
  if (!files.length) { document.getElementById("error").textContent = "Choose files first."; return; }
  const data = new FormData();
  for (const f of files) data.append("files", f, f.name);
  document.getElementById("status").textContent = "Scoring " + files.length + " files...";
  const reply = await fetch("/api/score", { method: "POST", body: data });
  const body = await reply.json();
  document.getElementById("status").textContent = "";
  if (!reply.ok) { document.getElementById("error").textContent = body.error || reply.statusText; return; }
  show(body);
});
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
function show(r) {
  const vote = document.getElementById("vote");
  vote.textContent = r.vote; vote.className = r.vote;
  document.getElementById("share").textContent =
    r.n_malignant + " of " + r.n_images + " slices malignant (" +
    (100 * r.fraction_malignant).toFixed(1) + "%); threshold " + (100 * r.vote_threshold).toFixed(0) + "%";
  document.getElementById("fill").style.width = (100 * r.fraction_malignant) + "%";
  document.getElementById("line").style.left = (100 * r.vote_threshold) + "%";
  const svg = document.getElementById("chart"), w = 700, h = 220, pad = 30;
  const pts = r.slices.map((s, i) => [pad + i * (w - 2 * pad) / Math.max(1, r.slices.length - 1),
                                       h - pad - s.probability * (h - 2 * pad)]);
  const y05 = h - pad - r.image_threshold * (h - 2 * pad);
  svg.innerHTML =
    '<line x1="' + pad + '" x2="' + (w - pad) + '" y1="' + y05 + '" y2="' + y05 + '" stroke="#888" stroke-dasharray="4"/>' +
    '<polyline fill="none" stroke="#b00" stroke-width="2" points="' + pts.map(p => p.join(",")).join(" ") + '"/>' +
    pts.map(p => '<circle r="3" fill="#b00" cx="' + p[0] + '" cy="' + p[1] + '"/>').join("") +
    '<text x="2" y="' + (pad + 4) + '" font-size="11">1.0</text><text x="2" y="' + (h - pad + 4) +
    '" font-size="11">0.0</text><text x="' + (w / 2) + '" y="' + (h - 5) + '" font-size="11">slices, feet to head</text>';
  document.getElementById("method").textContent = r.heatmap_method;
  document.getElementById("heat").innerHTML = r.heatmaps.map(m =>
    '<img alt="heat map, P ' + m.probability.toFixed(2) + '" src="' + m.png + '">').join("");
  document.getElementById("rejects").innerHTML = r.rejects.length ?
    "<h2>Files not used</h2><table><tr><th>file</th><th>reason</th></tr>" +
    r.rejects.map(x => "<tr><td>" + esc(x.file) + "</td><td>" + esc(x.reason) + "</td></tr>").join("") + "</table>" : "";
  document.getElementById("result").hidden = false;
}
</script>
</body></html>
"""
