// The original image at full size: zoom (wheel, + / -, 0 fits), pan (drag, arrow keys), brightness and contrast
// (sliders, b / B and c / C), Esc closes. Opened by links marked data-viewer-open, or tagsiftViewer.open(url, name).
"use strict";

var tagsiftViewer = (function () {
  var dialog = null;
  var state = { zoom: 1, x: 0, y: 0, brightness: 100, contrast: 100 };
  var img, info, bright, contrast;

  function build() {
    dialog = document.createElement("dialog");
    dialog.className = "viewer";
    dialog.setAttribute("aria-label", "Original image");
    dialog.dataset.viewer = "";
    var bar = document.createElement("div");
    bar.className = "viewer-bar";
    info = tagsift.el("span", "", "viewer-info");
    info.dataset.viewerInfo = "";
    bar.appendChild(info);
    bar.appendChild(button("−", "Zoom out (-)", function () { zoomBy(1 / 1.25); }));
    bar.appendChild(button("+", "Zoom in (+)", function () { zoomBy(1.25); }));
    bar.appendChild(button("Fit", "Fit to the window (0)", fit));
    bar.appendChild(button("1:1", "Actual size (1)", function () { setZoom(1); }));
    bright = slider("Brightness", "brightness");
    contrast = slider("Contrast", "contrast");
    bar.appendChild(bright.label);
    bar.appendChild(contrast.label);
    bar.appendChild(button("Close", "Close (Esc)", close));
    var stage = document.createElement("div");
    stage.className = "viewer-stage";
    img = document.createElement("img");
    img.dataset.viewerImg = "";
    img.draggable = false;
    stage.appendChild(img);
    dialog.appendChild(bar);
    dialog.appendChild(stage);
    dialog.appendChild(tagsift.el("p", "Keys: + / − zoom · arrows pan · 0 fit · 1 actual size · b / B brightness · c / C contrast · Esc close", "viewer-keys"));
    document.body.appendChild(dialog);
    stage.addEventListener("wheel", function (e) {
      e.preventDefault();
      zoomBy(e.deltaY < 0 ? 1.15 : 1 / 1.15);
    }, { passive: false });
    var drag = null;
    stage.addEventListener("pointerdown", function (e) {
      drag = { x: e.clientX - state.x, y: e.clientY - state.y };
      stage.setPointerCapture(e.pointerId);
    });
    stage.addEventListener("pointermove", function (e) {
      if (!drag) return;
      state.x = e.clientX - drag.x;
      state.y = e.clientY - drag.y;
      apply();
    });
    stage.addEventListener("pointerup", function () { drag = null; });
    dialog.addEventListener("keydown", onKey);
    img.addEventListener("load", fit);
  }

  function button(text, title, onClick) {
    var b = tagsift.el("button", text);
    b.type = "button";
    b.title = title;
    b.setAttribute("aria-label", title);
    b.addEventListener("click", onClick);
    return b;
  }
  function slider(name, key) {
    var label = tagsift.el("label", name + " ");
    var input = document.createElement("input");
    input.type = "range";
    input.min = "20";
    input.max = "300";
    input.value = "100";
    input.dataset.viewerFilter = key;
    input.addEventListener("input", function () {
      state[key] = parseInt(input.value, 10);
      apply();
    });
    label.appendChild(input);
    return { label: label, input: input };
  }

  function apply() {
    img.style.transform = "translate(" + state.x + "px, " + state.y + "px) scale(" + state.zoom + ")";
    img.style.filter = "brightness(" + state.brightness + "%) contrast(" + state.contrast + "%)";
    bright.input.value = String(state.brightness);
    contrast.input.value = String(state.contrast);
    dialog.dataset.zoom = state.zoom.toFixed(3);
    info.textContent = (img.naturalWidth ? img.naturalWidth + "×" + img.naturalHeight + " · " : "") +
      Math.round(state.zoom * 100) + " % · brightness " + state.brightness + " % · contrast " + state.contrast + " %";
  }
  function setZoom(z) {
    state.zoom = Math.max(0.05, Math.min(40, z));
    apply();
  }
  function zoomBy(f) {
    state.x *= f;
    state.y *= f;
    setZoom(state.zoom * f);
  }
  function fit() {
    var stage = img.parentNode;
    var w = img.naturalWidth || 1;
    var h = img.naturalHeight || 1;
    state.x = 0;
    state.y = 0;
    setZoom(Math.min(stage.clientWidth / w, stage.clientHeight / h));
  }
  function onKey(e) {
    var step = 60;
    var k = e.key;
    if (k === "+" || k === "=") zoomBy(1.25);
    else if (k === "-" || k === "_") zoomBy(1 / 1.25);
    else if (k === "0") fit();
    else if (k === "1") setZoom(1);
    else if (k === "ArrowLeft") state.x += step;
    else if (k === "ArrowRight") state.x -= step;
    else if (k === "ArrowUp") state.y += step;
    else if (k === "ArrowDown") state.y -= step;
    else if (k === "b") state.brightness = Math.max(20, state.brightness - 10);
    else if (k === "B") state.brightness = Math.min(300, state.brightness + 10);
    else if (k === "c") state.contrast = Math.max(20, state.contrast - 10);
    else if (k === "C") state.contrast = Math.min(300, state.contrast + 10);
    else return;
    e.preventDefault();
    e.stopPropagation();
    apply();
  }

  function open(url, name) {
    if (!dialog) build();
    state = { zoom: 1, x: 0, y: 0, brightness: 100, contrast: 100 };
    img.alt = name || "Original image";
    img.src = url;
    dialog.showModal();
    dialog.focus();
    apply();
  }
  function close() {
    if (dialog && dialog.open) dialog.close();
  }
  function isOpen() {
    return !!(dialog && dialog.open);
  }

  document.addEventListener("click", function (e) {
    var a = e.target.closest && e.target.closest("a[data-viewer-open]");
    if (!a || e.ctrlKey || e.metaKey || e.shiftKey) return;
    e.preventDefault();
    open(a.getAttribute("href"), a.getAttribute("title") || "");
  });

  return { open: open, close: close, isOpen: isOpen };
})();
