// The similarity map: every item of the dataset drawn on a canvas at the place the worker's layout gives it
// (similar images close together), coloured by tag or by doubt; zoom and pan; lasso or box selection; assign one
// tag to the selection (only where the candidates hold it); "similar to this item" selects its neighbours.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  var root = document.querySelector("[data-map]");
  if (!root) return;
  var canvas = root.querySelector("[data-map-canvas]");
  var ctx = canvas.getContext("2d");
  var status = root.querySelector("[data-map-status]");
  var selectedEl = root.querySelector("[data-map-selected]");
  var colourBy = root.querySelector("[data-map-colour]");
  var dragMode = root.querySelector("[data-map-drag]");
  var assignBtn = root.querySelector("[data-map-assign]");
  var tagSel = root.querySelector("[data-map-tag]");
  var result = root.querySelector("[data-map-result]");
  var focusBox = root.querySelector("[data-map-focus]");
  var dataset = root.dataset.dataset;
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"];
  var data = null; // {classes, items: [[id, x, y, tag, margin, needs, source, file]], nn}
  var n = 0;
  var xs, ys, selected; // Float32Array, Float32Array, Uint8Array
  var view = { scale: 1, x: 0, y: 0 }; // screen = (world * scale) + offset (CSS pixels)
  var focus = -1;
  var thumbs = {};
  var frame = 0;
  var dpr = window.devicePixelRatio || 1;

  function resize() {
    var r = canvas.getBoundingClientRect();
    canvas.width = Math.max(1, Math.round(r.width * dpr));
    canvas.height = Math.max(1, Math.round(r.height * dpr));
    redraw();
  }
  function size() {
    return { w: canvas.width / dpr, h: canvas.height / dpr };
  }
  function fit() {
    var s = size();
    view.scale = Math.min(s.w, s.h) * 0.45;
    view.x = s.w / 2;
    view.y = s.h / 2;
    redraw();
  }
  function sx(i) {
    return xs[i] * view.scale + view.x;
  }
  function sy(i) {
    return -ys[i] * view.scale + view.y;
  }
  function colour(i) {
    var it = data.items[i];
    if (colourBy.value === "doubt") {
      if (it[4] === null || it[4] === undefined) return "#9e9e9e";
      var m = Math.max(0, Math.min(1, it[4] / 0.5)); // margin 0 (most doubtful): red, 0.5 and more: blue
      return "hsl(" + Math.round(m * 220) + ", 75%, 45%)";
    }
    return it[3] < 0 ? "#9e9e9e" : PALETTE[it[3] % PALETTE.length];
  }

  function redraw() {
    if (frame) return;
    frame = window.requestAnimationFrame(draw);
  }
  function draw() {
    frame = 0;
    var s = size();
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, s.w, s.h);
    if (!data) return;
    var visible = [];
    for (var i = 0; i < n; i++) {
      var x = sx(i);
      var y = sy(i);
      if (x < -20 || y < -20 || x > s.w + 20 || y > s.h + 20) continue;
      visible.push(i);
    }
    var pictures = visible.length <= 300 && view.scale > Math.min(s.w, s.h) * 1.2;
    var r = pictures ? 22 : n > 3000 ? 2.5 : 4;
    visible.forEach(function (i) {
      var x = sx(i);
      var y = sy(i);
      if (pictures) {
        var img = thumb(i);
        ctx.fillStyle = colour(i);
        ctx.fillRect(x - r - 3, y - r - 3, 2 * r + 6, 2 * r + 6);
        if (img.complete && img.naturalWidth) ctx.drawImage(img, x - r, y - r, 2 * r, 2 * r);
      } else {
        ctx.fillStyle = colour(i);
        ctx.fillRect(x - r, y - r, 2 * r, 2 * r);
      }
      if (selected[i]) {
        ctx.strokeStyle = "#000";
        ctx.lineWidth = 2;
        ctx.strokeRect(x - r - 2, y - r - 2, 2 * r + 4, 2 * r + 4);
      }
    });
    if (focus >= 0) {
      ctx.strokeStyle = "#ffbf47";
      ctx.lineWidth = 3;
      ctx.beginPath();
      ctx.arc(sx(focus), sy(focus), r + 8, 0, 2 * Math.PI);
      ctx.stroke();
    }
    if (lasso && lasso.length > 1) {
      ctx.strokeStyle = "#0a58ca";
      ctx.lineWidth = 1.5;
      ctx.setLineDash([5, 4]);
      ctx.beginPath();
      ctx.moveTo(lasso[0][0], lasso[0][1]);
      lasso.forEach(function (p) { ctx.lineTo(p[0], p[1]); });
      if (dragging === "box") ctx.closePath();
      ctx.stroke();
      ctx.setLineDash([]);
    }
    document.body.dataset.mapDrawn = String(Number(document.body.dataset.mapDrawn || 0) + 1);
  }
  function thumb(i) {
    var id = data.items[i][0];
    if (!thumbs[id]) {
      var img = new Image();
      img.onload = redraw;
      img.src = "/ui/thumbs/" + encodeURIComponent(id) + "/96";
      thumbs[id] = img;
    }
    return thumbs[id];
  }

  // --- selection ---
  function countSelected() {
    var c = 0;
    for (var i = 0; i < n; i++) c += selected[i];
    selectedEl.textContent = String(c);
    assignBtn.disabled = c === 0;
    return c;
  }
  function inPolygon(x, y, poly) {
    var inside = false;
    for (var a = 0, b = poly.length - 1; a < poly.length; b = a++) {
      var xa = poly[a][0], ya = poly[a][1], xb = poly[b][0], yb = poly[b][1];
      if ((ya > y) !== (yb > y) && x < ((xb - xa) * (y - ya)) / (yb - ya) + xa) inside = !inside;
    }
    return inside;
  }
  // Select the items inside ``poly`` (screen points); ``add`` keeps the current selection.
  function selectPolygon(poly, add) {
    var t0 = performance.now();
    if (!add) selected.fill(0);
    var minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    poly.forEach(function (p) {
      minX = Math.min(minX, p[0]); maxX = Math.max(maxX, p[0]);
      minY = Math.min(minY, p[1]); maxY = Math.max(maxY, p[1]);
    });
    for (var i = 0; i < n; i++) {
      var x = sx(i);
      var y = sy(i);
      if (x < minX || x > maxX || y < minY || y > maxY) continue;
      if (inPolygon(x, y, poly)) selected[i] = 1;
    }
    var c = countSelected();
    root.dataset.lassoMs = (performance.now() - t0).toFixed(1);
    tagsift.announce(c + " items selected");
    redraw();
    return c;
  }

  function nearest(px, py) {
    var best = -1;
    var bestD = 400; // within 20 px
    for (var i = 0; i < n; i++) {
      var dx = sx(i) - px;
      var dy = sy(i) - py;
      var d = dx * dx + dy * dy;
      if (d < bestD) {
        bestD = d;
        best = i;
      }
    }
    return best;
  }
  function setFocus(i) {
    focus = i;
    focusBox.hidden = i < 0;
    if (i >= 0) {
      var it = data.items[i];
      focusBox.querySelector("[data-map-focus-img]").src = "/ui/thumbs/" + encodeURIComponent(it[0]) + "/160";
      focusBox.querySelector("[data-map-focus-img]").alt = it[7];
      focusBox.querySelector("[data-map-focus-file]").textContent = it[7];
      focusBox.querySelector("[data-map-focus-tag]").textContent =
        (it[3] >= 0 ? "Tag: " + data.classes[it[3]] : "No tag yet") + (it[6] ? " · " + it[6] : "");
      focusBox.querySelector("[data-map-focus-link]").href = "/ui/items/" + encodeURIComponent(it[0]);
    }
    redraw();
  }
  function selectSimilar() {
    if (focus < 0) return;
    selected.fill(0);
    selected[focus] = 1;
    (data.nn[focus] || []).forEach(function (j) { selected[j] = 1; });
    var c = countSelected();
    status.textContent = "Selected the focused item and its " + (c - 1) + " most similar items.";
    redraw();
  }

  // --- pointer: pan, lasso, box; click focuses ---
  var dragging = null;
  var lasso = null;
  var start = null;
  canvas.addEventListener("pointerdown", function (e) {
    var r = canvas.getBoundingClientRect();
    var p = [e.clientX - r.left, e.clientY - r.top];
    var mode = e.shiftKey ? "lasso" : e.altKey ? "box" : dragMode.value;
    dragging = mode;
    start = { p: p, vx: view.x, vy: view.y, add: e.ctrlKey || e.metaKey, moved: false };
    lasso = mode === "pan" ? null : [p];
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", function (e) {
    if (!dragging) return;
    var r = canvas.getBoundingClientRect();
    var p = [e.clientX - r.left, e.clientY - r.top];
    if (Math.abs(p[0] - start.p[0]) + Math.abs(p[1] - start.p[1]) > 4) start.moved = true;
    if (dragging === "pan") {
      view.x = start.vx + p[0] - start.p[0];
      view.y = start.vy + p[1] - start.p[1];
    } else if (dragging === "box") {
      var a = start.p;
      lasso = [a, [p[0], a[1]], p, [a[0], p[1]]];
    } else {
      lasso.push(p);
    }
    redraw();
  });
  canvas.addEventListener("pointerup", function (e) {
    if (!dragging) return;
    var r = canvas.getBoundingClientRect();
    var p = [e.clientX - r.left, e.clientY - r.top];
    if (!start.moved) {
      setFocus(nearest(p[0], p[1]));
    } else if (dragging !== "pan" && lasso && lasso.length > 2) {
      selectPolygon(lasso, start.add);
    }
    dragging = null;
    lasso = null;
    redraw();
  });
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    var r = canvas.getBoundingClientRect();
    zoomAt(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });
  function zoomAt(f, px, py) {
    view.x = px - (px - view.x) * f;
    view.y = py - (py - view.y) * f;
    view.scale *= f;
    redraw();
  }
  canvas.addEventListener("keydown", function (e) {
    var s = size();
    var k = e.key;
    if (k === "+" || k === "=") zoomAt(1.25, s.w / 2, s.h / 2);
    else if (k === "-") zoomAt(1 / 1.25, s.w / 2, s.h / 2);
    else if (k === "0") fit();
    else if (k === "ArrowLeft") view.x += 60;
    else if (k === "ArrowRight") view.x -= 60;
    else if (k === "ArrowUp") view.y += 60;
    else if (k === "ArrowDown") view.y -= 60;
    else return;
    e.preventDefault();
    redraw();
  });
  root.querySelector("[data-map-fit]").addEventListener("click", fit);
  root.querySelector("[data-map-clear]").addEventListener("click", function () {
    selected.fill(0);
    countSelected();
    redraw();
  });
  root.querySelector("[data-map-similar]").addEventListener("click", selectSimilar);
  colourBy.addEventListener("change", function () {
    legend();
    redraw();
  });

  assignBtn.addEventListener("click", function () {
    var ids = [];
    for (var i = 0; i < n; i++) if (selected[i]) ids.push(data.items[i][0]);
    if (!ids.length) return;
    var tag = tagSel.value;
    assignBtn.disabled = true;
    tagsift.call("POST", "/ui/api/review", { items: ids, action: "assign", label: tag }).then(function (res) {
      assignBtn.disabled = false;
      if (!res.ok) {
        result.textContent = tagsift.problemText(res);
        result.hidden = false;
        return;
      }
      var at = {};
      data.items.forEach(function (it, k) { at[it[0]] = k; });
      var t = data.classes.indexOf(tag);
      res.body.items.forEach(function (st) {
        var k = at[st.id];
        if (k !== undefined) {
          data.items[k][3] = t;
          data.items[k][6] = st.label_source || "";
          data.items[k][5] = st.needs_review;
        }
      });
      var skipped = (res.body.skipped || []).length;
      result.textContent = "Tagged " + res.body.items.length + " item" + (res.body.items.length === 1 ? "" : "s") +
        " " + tag + "; " + skipped + " skipped: their candidates do not hold " + tag + ".";
      result.hidden = false;
      tagsift.announce(result.textContent);
      document.body.dataset.mapAssigned = String(Number(document.body.dataset.mapAssigned || 0) + 1);
      redraw();
    });
  });

  function legend() {
    var ul = root.querySelector("[data-map-legend]");
    ul.textContent = "";
    if (colourBy.value === "doubt") {
      ul.appendChild(swatch("hsl(0, 75%, 45%)", "margin 0: the model hesitates"));
      ul.appendChild(swatch("hsl(220, 75%, 45%)", "margin 0.5 or more: sure"));
      ul.appendChild(swatch("#9e9e9e", "no model tag"));
      return;
    }
    data.classes.slice(0, 40).forEach(function (c, k) { ul.appendChild(swatch(PALETTE[k % PALETTE.length], c)); });
    ul.appendChild(swatch("#9e9e9e", "untagged"));
  }
  function swatch(col, text) {
    var li = document.createElement("li");
    var b = document.createElement("span");
    b.className = "swatch";
    b.style.background = col;
    li.appendChild(b);
    li.appendChild(document.createTextNode(" " + text));
    return li;
  }

  // For tests and the benchmark: where an item is drawn (CSS pixels in the canvas), and the selection.
  window.tagsiftMap = {
    screenOf: function (id) {
      for (var i = 0; i < n; i++) if (data.items[i][0] === id) return [sx(i), sy(i)];
      return null;
    },
    selectedIds: function () {
      var out = [];
      for (var i = 0; i < n; i++) if (selected[i]) out.push(data.items[i][0]);
      return out;
    },
    selectPolygon: selectPolygon,
  };

  var t0 = performance.now();
  tagsift.call("GET", "/ui/api/datasets/" + encodeURIComponent(dataset) + "/map").then(function (res) {
    if (!res.ok) {
      status.textContent = tagsift.problemText(res);
      return;
    }
    data = res.body;
    n = data.items.length;
    xs = new Float32Array(n);
    ys = new Float32Array(n);
    selected = new Uint8Array(n);
    data.items.forEach(function (it, i) {
      xs[i] = it[1];
      ys[i] = it[2];
    });
    if (!data.job) {
      status.textContent = "No map yet: a training job that finishes stores one (start one on the dataset page).";
    } else {
      status.textContent = n + " items, placed by the similarity of their image features (" + (data.method || "") + ").";
    }
    legend();
    resize();
    fit();
    var near = root.dataset.near;
    if (near) {
      for (var i = 0; i < n; i++) if (data.items[i][0] === near) setFocus(i);
      selectSimilar();
    }
    window.requestAnimationFrame(function () {
      root.dataset.readyMs = (performance.now() - t0).toFixed(0);
      document.body.dataset.mapReady = "1";
    });
  });
  window.addEventListener("resize", resize);
});
