// tagsift web app: shared helpers, upload forms, job progress, predictions. Plain JavaScript, no dependencies.
// Text from the server is always inserted with textContent (never innerHTML), so tag and file names stay inert.
"use strict";

var tagsift = (function () {
  function csrf() {
    return document.body.dataset.csrf || "";
  }

  function announce(text) {
    var el = document.getElementById("announce");
    if (el) el.textContent = text;
  }

  // fetch with the session's CSRF token; resolves to {ok, status, body} (body parsed as JSON when it is JSON).
  function call(method, url, body) {
    var opts = { method: method, headers: { "X-CSRF-Token": csrf() }, credentials: "same-origin" };
    if (body instanceof FormData) {
      opts.body = body;
    } else if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(url, opts).then(function (r) {
      var type = r.headers.get("content-type") || "";
      var parse = type.indexOf("json") >= 0 ? r.json() : r.text();
      return parse.then(function (b) {
        return { ok: r.ok, status: r.status, body: b };
      });
    });
  }

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function problemText(res) {
    if (res.body && typeof res.body === "object" && res.body.detail) return res.body.detail;
    return "HTTP " + res.status;
  }

  // POST a FormData with XMLHttpRequest, so that the upload's progress can be shown (fetch cannot report it);
  // resolves like call(): {ok, status, body}; onProgress(sent bytes, total bytes).
  function upload(url, body, onProgress) {
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("X-CSRF-Token", csrf());
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable && onProgress) onProgress(e.loaded, e.total);
      });
      xhr.addEventListener("load", function () {
        var type = xhr.getResponseHeader("content-type") || "";
        var parsed = xhr.responseText;
        if (type.indexOf("json") >= 0) {
          try {
            parsed = JSON.parse(xhr.responseText);
          } catch (err) {
            parsed = xhr.responseText;
          }
        }
        resolve({ ok: xhr.status >= 200 && xhr.status < 300, status: xhr.status, body: parsed });
      });
      xhr.addEventListener("error", reject);
      xhr.addEventListener("abort", reject);
      xhr.send(body);
    });
  }

  return { csrf: csrf, call: call, upload: upload, el: el, announce: announce, problemText: problemText };
})();

// --- drop zones: sort dropped files into the form's file inputs --------------------------------------------------
function setupDrop(form) {
  var zone = form.querySelector("[data-drop]");
  if (!zone) return;
  var picked = form.querySelector("[data-picked]");
  var dropped = { images: [], manifest: null, archive: null, image: null };
  form._dropped = dropped;

  function describe() {
    var parts = [];
    var archive = dropped.archive || fileOf("archive");
    var manifest = dropped.manifest || fileOf("manifest");
    var images = dropped.images.length + countOf("images");
    if (archive) parts.push("zip: " + archive.name);
    if (manifest) parts.push("manifest: " + manifest.name);
    if (images) parts.push(images + " image" + (images === 1 ? "" : "s"));
    var single = dropped.image || fileOf("image");
    if (single) parts.push("image: " + single.name);
    var preview = form.querySelector("[data-preview]");
    if (preview) {
      if (preview.src) URL.revokeObjectURL(preview.src);
      preview.hidden = !single;
      if (single) {
        preview.src = URL.createObjectURL(single);
        preview.alt = "The image to predict: " + single.name;
      } else {
        preview.removeAttribute("src");
      }
    }
    picked.textContent = parts.length ? "Chosen: " + parts.join(", ") : "Nothing chosen yet.";
  }
  function input(name) {
    return form.querySelector('input[type=file][name="' + name + '"]');
  }
  function fileOf(name) {
    var i = input(name);
    return i && i.files && i.files.length ? i.files[0] : null;
  }
  function countOf(name) {
    var i = input(name);
    return i && i.files ? i.files.length : 0;
  }
  // A field that holds one file (image, archive, manifest) keeps the latest choice, dropped or picked: a drop
  // clears the field's file input, a file picked in the input forgets the dropped one (else both were sent).
  function replace(name, f) {
    dropped[name] = f;
    var i = input(name);
    if (i) i.value = "";
  }
  function take(files) {
    for (var k = 0; k < files.length; k++) {
      var f = files[k];
      var n = f.name.toLowerCase();
      if (input("image")) {
        replace("image", f);
      } else if (n.endsWith(".zip")) {
        replace("archive", f);
      } else if (n.endsWith(".jsonl") || n.endsWith(".csv") || n.endsWith(".json") || n.endsWith(".txt")) {
        replace("manifest", f);
      } else {
        dropped.images.push(f);
      }
    }
    describe();
  }
  zone.addEventListener("dragover", function (e) {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", function () {
    zone.classList.remove("over");
  });
  zone.addEventListener("drop", function (e) {
    e.preventDefault();
    zone.classList.remove("over");
    var items = e.dataTransfer.items;
    var entries = [];
    for (var k = 0; items && k < items.length; k++) {
      var entry = items[k].webkitGetAsEntry ? items[k].webkitGetAsEntry() : null;
      if (entry) entries.push(entry);
    }
    if (!entries.some(function (en) { return en.isDirectory; })) {
      take(e.dataTransfer.files);
      return;
    }
    picked.textContent = "Reading the folder…";
    Promise.all(entries.map(filesOf)).then(function (lists) {
      take([].concat.apply([], lists));
    });
  });
  zone.addEventListener("keydown", function (e) {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      var first = form.querySelector("input[type=file]");
      if (first) first.click();
    }
  });
  form.addEventListener("change", function (e) {
    var t = e.target;
    if (t && t.type === "file" && t.name !== "images" && t.files && t.files.length) dropped[t.name] = null;
    describe();
  });
}

// Every file under a dropped entry (a folder is read recursively; hidden files are left out).
function filesOf(entry) {
  if (entry.name.charAt(0) === ".") return Promise.resolve([]);
  if (entry.isFile) {
    return new Promise(function (resolve) {
      entry.file(function (f) { resolve([f]); }, function () { resolve([]); });
    });
  }
  return new Promise(function (resolve) {
    var reader = entry.createReader();
    var all = [];
    (function next() {
      reader.readEntries(function (batch) {
        if (!batch.length) {
          Promise.all(all.map(filesOf)).then(function (lists) { resolve([].concat.apply([], lists)); });
          return;
        }
        all = all.concat(batch);
        next();
      }, function () { resolve([]); });
    })();
  });
}

// Build the multipart body: text fields and chosen files, plus dropped files.
function formBody(form) {
  var body = new FormData();
  var d = form._dropped || { images: [] };
  Array.prototype.forEach.call(form.elements, function (e) {
    if (!e.name || e.disabled) return;
    if (e.type === "file") {
      for (var k = 0; k < e.files.length; k++) body.append(e.name, e.files[k], e.files[k].name);
    } else if (e.value !== "") {
      body.append(e.name, e.value);
    }
  });
  if (d.archive) body.append("archive", d.archive, d.archive.name);
  if (d.manifest) body.append("manifest", d.manifest, d.manifest.name);
  d.images.forEach(function (f) {
    body.append("images", f, f.name);
  });
  if (d.image) body.append("image", d.image, d.image.name);
  return body;
}

// --- upload forms (new dataset, add items): per-item errors shown next to their rows -----------------------------
function setupUpload(form) {
  setupDrop(form);
  var status = form.querySelector("[data-status]");
  var box = form.querySelector("[data-errors]");
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    box.hidden = true;
    status.textContent = "Uploading…";
    var bar = form.querySelector("[data-upload-progress]");
    if (bar) {
      bar.value = 0;
      bar.hidden = false;
    }
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    tagsift.upload(form.dataset.upload, formBody(form), function (sent, total) {
      if (bar) bar.value = total ? sent / total : 0;
      status.textContent = sent < total
        ? "Uploading… " + Math.round((100 * sent) / total) + " % (" + mb(sent) + " of " + mb(total) + ")"
        : "Uploaded " + mb(total) + "; checking and storing the items…";
    }).then(function (res) {
      button.disabled = false;
      if (bar) bar.hidden = true;
      if (res.ok) {
        status.textContent = "Stored " + res.body.added + " items.";
        tagsift.announce(status.textContent);
        window.location.assign(res.body.url || window.location.pathname);
        return;
      }
      status.textContent = "";
      showErrors(box, res);
    }, function () {
      button.disabled = false;
      if (bar) bar.hidden = true;
      status.textContent = "The upload failed: the server could not be reached.";
    });
  });
}

function mb(bytes) {
  return bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + " MB" : Math.max(1, Math.round(bytes / 1024)) + " kB";
}

function showErrors(box, res) {
  var rows = box.querySelector("[data-error-rows]");
  rows.textContent = "";
  box.querySelector("[data-error-detail]").textContent = tagsift.problemText(res);
  var errors = (res.body && res.body.errors) || [];
  errors.sort(function (a, b) {
    return (a.line || 0) - (b.line || 0);
  });
  errors.forEach(function (er) {
    var tr = document.createElement("tr");
    tr.className = "bad-row";
    tr.appendChild(tagsift.el("td", er.line === undefined ? "" : er.line));
    tr.appendChild(tagsift.el("td", er.item || ""));
    tr.appendChild(tagsift.el("td", er.field || ""));
    tr.appendChild(tagsift.el("td", er.message || ""));
    rows.appendChild(tr);
  });
  box.hidden = false;
  box.querySelector("h2").focus();
}

// A job event's data in words, as app/web/quality.py's event_text writes it ("epoch 2 · pll loss 0.4312").
function eventValue(v) {
  if (v === null || v === undefined) return "–";
  if (v === true) return "yes";
  if (v === false) return "no";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
  if (Array.isArray(v)) return v.map(eventValue).join(", ");
  if (typeof v === "object") return Object.keys(v).map(function (k) { return k.replace(/_/g, " ") + " " + eventValue(v[k]); }).join(", ");
  return String(v);
}
function eventText(data) {
  if (!data || typeof data !== "object") return "";
  return Object.keys(data).map(function (k) { return k.replace(/_/g, " ") + " " + eventValue(data[k]); }).join(" · ");
}

// A server time (ISO 8601; the server's are UTC, with or without a zone) in ms, or null.
function parseTime(text) {
  if (!text) return null;
  var t = /[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : text + "Z";
  var ms = Date.parse(t);
  return isNaN(ms) ? null : ms;
}
function duration(ms) {
  var s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + " s";
  var m = Math.floor(s / 60);
  if (m < 60) return m + " min " + (s % 60) + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
}

// --- job page: progress per stage, events, quality; polls until the job ends -------------------------------------
var STAGES = ["encoding", "training", "labelling", "exporting"];

function setupJob(root) {
  var id = root.dataset.job;
  var after = parseInt(root.dataset.after || "0", 10);
  var events = document.querySelector("[data-events]");
  var seen = {};
  // the page was served while the job ran: it reloads (once) when the job ends, to show what the server renders
  var live = root.dataset.status === "queued" || root.dataset.status === "running";

  var stageAt = {}; // stage -> when it started (ms)
  var timeEl = root.querySelector("[data-job-time]");
  var times = { started: parseTime(timeEl && timeEl.dataset.started), finished: parseTime(timeEl && timeEl.dataset.finished) };

  // Elapsed time and, while a stage runs, how long it has left (its pace so far; a guess, labelled so).
  function renderTime(job, value) {
    if (!timeEl) return;
    var elapsed = timeEl.querySelector("[data-elapsed]");
    var eta = timeEl.querySelector("[data-eta]");
    if (!times.started) {
      elapsed.textContent = job.status === "queued" ? "Waiting for a worker." : "";
      eta.textContent = "";
      return;
    }
    var end = times.finished || Date.now();
    var verb = job.status === "running" ? "Running for " : job.status + " after ";
    elapsed.textContent = verb + duration(end - times.started) + ".";
    var p = job.progress || {};
    var since = stageAt[p.stage];
    if (job.status === "running" && since && value > 0.02 && value < 1) {
      var left = ((Date.now() - since) / value) * (1 - value);
      eta.textContent = "This stage: about " + duration(left) + " left (at its pace so far).";
    } else {
      eta.textContent = "";
    }
  }

  function stageRow(name) {
    return root.querySelector('[data-stage="' + name + '"]');
  }
  function render(job) {
    var st = root.querySelector("[data-job-status]");
    st.textContent = job.status;
    st.className = "status-" + job.status;
    root.dataset.status = job.status;
    var p = job.progress || {};
    var current = STAGES.indexOf(p.stage);
    var finished = job.status === "succeeded";
    STAGES.forEach(function (name, i) {
      var row = stageRow(name);
      var bar = row.querySelector("progress");
      var detail = row.querySelector(".stage-detail");
      var value = 0;
      if (finished || (current >= 0 && i < current) || seen[STAGES[i + 1]]) value = 1;
      else if (i === current) value = name === "training" && p.epochs ? (p.epoch || 0) / p.epochs : p.fraction || 0;
      bar.value = value;
      row.classList.toggle("active", i === current && !finished);
      if (name === "training" && p.epochs) detail.textContent = "epoch " + (finished ? p.epochs : p.epoch || 0) + " of " + p.epochs;
      else detail.textContent = value >= 1 ? "done" : i === current ? Math.round(value * 100) + " %" : "";
    });
    var running = current >= 0 ? stageRow(STAGES[current]).querySelector("progress").value : 0;
    if (job.started_at) times.started = parseTime(job.started_at);
    if (job.finished_at) times.finished = parseTime(job.finished_at);
    renderTime(job, running);
    var note = root.querySelector("[data-cancel-note]");
    if (note) note.hidden = !(job.cancel_requested && (job.status === "queued" || job.status === "running"));
    var err = root.querySelector("[data-job-error]");
    if (job.error) {
      err.textContent = job.error.code + ": " + job.error.message;
      err.hidden = false;
    }
    root.querySelector("[data-job-done]").hidden = !finished;
    var cancel = document.querySelector("form[data-cancel]");
    if (cancel && job.status !== "queued" && job.status !== "running") cancel.hidden = true;
    // the quality report is at the top level of the job (not in metrics); the server renders it (words and SVG
    // charts, app/web/quality.py), so a job that finishes while the page is open reloads the page once
    var slot = document.querySelector("[data-quality-slot]");
    var final = job.status !== "queued" && job.status !== "running";
    if (live && final && job.quality && slot && slot.dataset.hasQuality !== "1") {
      live = false;
      window.location.reload();
    }
  }
  function addEvents(list) {
    list.forEach(function (e) {
      if (e.kind === "stage" && e.data && e.data.stage) {
        seen[e.data.stage] = true;
        stageAt[e.data.stage] = parseTime(e.created_at);
      }
      var tr = document.createElement("tr");
      tr.appendChild(tagsift.el("td", e.id));
      tr.appendChild(tagsift.el("td", new Date(parseTime(e.created_at)).toISOString().slice(11, 19)));
      tr.appendChild(tagsift.el("td", e.kind));
      var td = tagsift.el("td", eventText(e.data));
      if (e.kind === "stage" && e.data && e.data.stage) td.dataset.eventStage = e.data.stage;
      tr.appendChild(td);
      events.appendChild(tr);
    });
  }
  function poll() {
    tagsift.call("GET", "/ui/api/jobs/" + encodeURIComponent(id) + "?after=" + after).then(function (res) {
      if (!res.ok) {
        setTimeout(poll, 3000);
        return;
      }
      addEvents(res.body.events);
      if (res.body.next_after) after = res.body.next_after;
      render(res.body.job);
      var s = res.body.job.status;
      if (s === "queued" || s === "running") setTimeout(poll, 700);
      else tagsift.announce("Job " + s);
    }, function () {
      setTimeout(poll, 3000);
    });
  }
  Array.prototype.forEach.call(events.querySelectorAll("td[data-event-stage]"), function (td) {
    if (td.dataset.eventStage) {
      seen[td.dataset.eventStage] = true;
      stageAt[td.dataset.eventStage] = parseTime(td.dataset.at);
    }
  });
  poll();
}

// --- job form: placeholders show the chosen method's default values, the help line follows the method ----------
function setupJobForm(form) {
  var defaults = JSON.parse(form.dataset.defaults || "{}");
  var help = JSON.parse(form.dataset.methodHelp || "{}");
  var method = form.querySelector("select[name=method]");
  var helpLine = form.querySelector("[data-help-method]");
  function update() {
    var d = defaults[method.value] || {};
    ["epochs", "lr"].forEach(function (k) {
      var i = form.querySelector('input[name="' + k + '"]');
      if (i) i.placeholder = d[k] !== undefined ? d[k] + " (default)" : "";
    });
    var loss = form.querySelector("select[name=loss] option[value='']");
    if (loss) loss.textContent = d.loss ? "method default (" + d.loss + ")" : "method default";
    if (helpLine && help[method.value]) helpLine.textContent = help[method.value];
  }
  method.addEventListener("change", update);
  update();
}

// --- models page: try /predict on a dropped image -------------------------------------------------------------
function setupPredict(form) {
  setupDrop(form);
  var out = form.querySelector("[data-prediction]");
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    out.textContent = "Predicting…";
    tagsift.call("POST", "/ui/api/predict", formBody(form)).then(function (res) {
      out.textContent = "";
      if (!res.ok) {
        out.appendChild(tagsift.el("p", tagsift.problemText(res), "error"));
        return;
      }
      (res.body.predictions || []).forEach(function (p) {
        out.appendChild(tagsift.el("p", (p.file || "image") + ": " + p.label));
        var ul = document.createElement("ul");
        (p.top_k || []).forEach(function (s) {
          ul.appendChild(tagsift.el("li", s.label + " " + s.score.toFixed(3)));
        });
        out.appendChild(ul);
      });
    });
  });
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("form[data-upload]").forEach(setupUpload);
  document.querySelectorAll("form[data-predict]").forEach(setupPredict);
  document.querySelectorAll("form.jobform").forEach(setupJobForm);
  document.querySelectorAll("[data-job]").forEach(setupJob);
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (e) {
      if (!window.confirm(f.dataset.confirm)) e.preventDefault();
    });
  });
});
