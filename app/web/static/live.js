// The review page follows the live refits (docs/architecture.md, Live refit): every few seconds it asks
// /ui/api/datasets/<id>/live for the latest refit, the estimate and the tags of the items on the page. An item whose
// tag a refit changed gets the new tag and a mark; the status line shows the refit and the estimate. The order of
// the queue follows on the next page or filter change (the server sorts by the new margins). Same origin only.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  var root = document.querySelector("[data-review]");
  var status = document.querySelector("[data-live]");
  if (!root || !status) return;
  var dataset = root.dataset.dataset;
  var every = parseFloat(status.dataset.pollSeconds || "3") * 1000;
  var seen = null; // the revision of the last refit applied when the page first asked (-1: none)

  function cards() {
    return Array.prototype.slice.call(root.querySelectorAll(".card"));
  }

  function pct(x) {
    return (100 * x).toFixed(1) + "%";
  }

  function describe(body) {
    var parts = [];
    var r = body.refit;
    if (!r) {
      parts.push("Live refit: none yet (each decision starts one once a job has made a model)");
    } else if (r.status === "queued" || r.status === "running") {
      parts.push("Live refit " + r.revision + ": " + r.status + "…");
    } else if (r.status === "failed") {
      parts.push("Live refit " + r.revision + " failed: " + (r.error || r.error_code));
    } else {
      parts.push("Live refit " + r.revision + ": " + r.status + (r.changed_items != null ? ", " + r.changed_items + " tags changed" : ""));
    }
    var e = body.estimate || {};
    if (e.accuracy != null) {
      var ci = e.ci95 ? " (95% interval " + pct(e.ci95[0]) + "–" + pct(e.ci95[1]) + ")" : "";
      parts.push("estimated accuracy " + pct(e.accuracy) + ci);
    }
    parts.push(body.review_count + " need review");
    return parts.join(" · ");
  }

  function apply(card, state, revision) {
    if (card.dataset.source === "reviewer" || state.label_source === "reviewer") return;
    var changed = state.label !== card.dataset.label;
    if (changed) {
      card.dataset.label = state.label || "";
      Array.prototype.forEach.call(card.querySelectorAll(".chips .chip"), function (chip) {
        chip.classList.toggle("current", chip.dataset.tag === state.label);
      });
    }
    var r = state.refit_revision;
    if (r != null && (r === revision || seen === null || r > seen)) { // changed by the latest refit, or since load
      card.classList.add("refit-changed");
      card.dataset.refit = String(r);
      var mark = card.querySelector("[data-refit-mark]");
      if (!mark) {
        mark = tagsift.el("span", "", "refit-mark");
        mark.setAttribute("data-refit-mark", "");
        card.querySelector(".meta").appendChild(mark);
      }
      mark.textContent = "retagged by refit " + r;
      mark.title = "A live refit after review decisions changed this tag";
    }
  }

  function poll() {
    var ids = cards().map(function (c) {
      return c.dataset.id;
    });
    var url = "/ui/api/datasets/" + encodeURIComponent(dataset) + "/live?items=" + encodeURIComponent(ids.join(","));
    return tagsift.call("GET", url).then(function (res) {
      if (!res.ok) return;
      var body = res.body;
      status.textContent = describe(body);
      status.title = status.textContent;  // the line is cut with an ellipsis when the row is narrow
      status.classList.toggle("error", !!(body.refit && body.refit.status === "failed"));
      var offer = document.querySelector("[data-live-offer]");
      if (offer) offer.hidden = !(body.refit && body.refit.error_code === "features_missing");
      var remaining = document.querySelector("[data-remaining]");
      if (remaining && body.review_count != null) remaining.textContent = String(body.review_count);
      var revision = body.applied ? body.applied.revision : null;
      var byId = {};
      body.items.forEach(function (s) {
        byId[s.id] = s;
      });
      cards().forEach(function (card) {
        if (byId[card.dataset.id]) apply(card, byId[card.dataset.id], revision);
      });
      if (seen === null) seen = revision === null ? -1 : revision; // -1: none before the page: mark every change
      document.body.dataset.liveRevision = revision == null ? "" : String(revision);
    });
  }

  function loop() {
    poll().then(
      function () {
        setTimeout(loop, every);
      },
      function () {
        setTimeout(loop, every * 2);
      }
    );
  }
  loop();
});
