// Review page: a grid ordered by margin, a focused item, keys 1-9 / A / Space / U / arrows, bulk selection.
// Every decision is one POST to /ui/api/review (or /undo); the server records who, when and what it replaced.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  var root = document.querySelector("[data-review]");
  if (!root) return;
  var grid = root.querySelector(".grid");
  var cards = Array.prototype.slice.call(grid.querySelectorAll(".card"));
  var focusPanel = root.querySelector("[data-focus]");
  var selectAll = document.querySelector("[data-select-all]");
  var selectedCount = document.querySelector("[data-selected-count]");
  var bulkAccept = document.querySelector("[data-bulk-accept]");
  var bulkAssign = document.querySelector("[data-bulk-assign]");
  var bulkTag = document.querySelector("[data-bulk-tag]");
  var reviewedEl = document.querySelector("[data-reviewed]");
  var remainingEl = document.querySelector("[data-remaining]");
  var index = -1;
  var anchor = -1;
  var undoStack = []; // item ids, most recent last
  var queue = Promise.resolve(); // decisions run one after another, in the order of the keys
  var done = 0;

  // Run ``job`` (which returns a promise) after the decisions already asked for, so no key press is lost.
  function enqueue(job) {
    queue = queue.then(job, job);
  }
  function finished() {
    done += 1;
    document.body.dataset.decisions = String(done);
  }

  function chipsOf(card) {
    return Array.prototype.slice.call(card.querySelectorAll(".chips .chip"));
  }

  function setFocus(i, scroll) {
    if (!cards.length) return;
    i = Math.max(0, Math.min(cards.length - 1, i));
    if (index >= 0 && cards[index]) cards[index].classList.remove("focused");
    index = i;
    var card = cards[i];
    card.classList.add("focused");
    grid.setAttribute("aria-activedescendant", card.id);
    if (scroll !== false) card.scrollIntoView({ block: "nearest" });
    renderFocus(card);
  }

  function renderFocus(card) {
    focusPanel.hidden = false;
    var img = focusPanel.querySelector("[data-focus-img]");
    img.src = "/ui/thumbs/" + encodeURIComponent(card.dataset.id) + "/320";
    var file = card.querySelector(".file").textContent;
    img.alt = file;
    focusPanel.querySelector("[data-focus-file]").textContent = file;
    var chips = focusPanel.querySelector("[data-focus-chips]");
    chips.textContent = "";
    chipsOf(card).forEach(function (chip, k) {
      var b = chip.cloneNode(true);
      b.tabIndex = 0;
      b.addEventListener("click", function () {
        assign([card], chip.dataset.tag);
      });
      chips.appendChild(b);
    });
    var label = card.dataset.label;
    focusPanel.querySelector("[data-focus-meta]").textContent =
      (label ? "Tag: " + label : "No tag yet") + " · " + (card.dataset.source || "untagged");
    focusPanel.querySelector("[data-focus-history]").href = "/ui/items/" + encodeURIComponent(card.dataset.id);
  }

  function update(card, state) {
    card.dataset.label = state.label || "";
    card.dataset.source = state.label_source || "";
    card.classList.toggle("decided", state.label_source === "reviewer");
    card.querySelector("[data-src]").textContent = state.label_source || "untagged";
    chipsOf(card).forEach(function (chip) {
      chip.classList.toggle("current", chip.dataset.tag === state.label);
    });
    var known = chipsOf(card).map(function (c) {
      return c.dataset.tag;
    });
    state.candidates.forEach(function (t) {
      if (known.indexOf(t) < 0) {
        var b = document.createElement("button");
        b.type = "button";
        b.className = "chip" + (t === state.label ? " current" : "");
        b.dataset.tag = t;
        b.tabIndex = -1;
        var n = tagsift.el("span", known.length + 1, "n");
        b.appendChild(n);
        b.appendChild(document.createTextNode(" "));
        b.appendChild(tagsift.el("span", t, "t"));
        card.querySelector(".chips").appendChild(b);
        known.push(t);
      }
    });
    if (cards[index] === card) renderFocus(card);
  }

  function counts(delta) {
    reviewedEl.textContent = String(parseInt(reviewedEl.textContent, 10) + delta);
    remainingEl.textContent = String(Math.max(0, parseInt(remainingEl.textContent, 10) - delta));
  }

  function decide(getList, body, advance) {
    enqueue(function () {
      var list = getList();
      if (!list.length) return Promise.resolve();
      body.items = list.map(function (c) {
        return c.dataset.id;
      });
      var before = list.filter(function (c) {
        return c.dataset.source !== "reviewer";
      }).length;
      return tagsift.call("POST", "/ui/api/review", body).then(function (res) {
        if (!res.ok) {
          tagsift.announce(tagsift.problemText(res));
          flash(tagsift.problemText(res));
          finished();
          return;
        }
        res.body.items.forEach(function (state, k) {
          update(list[k], state);
          undoStack.push(state.id);
        });
        counts(before);
        tagsift.announce(list.length === 1 ? "Tagged " + res.body.items[0].label : "Tagged " + list.length + " items");
        if (advance) setFocus(cards.indexOf(list[0]) + 1);
        finished();
      }, function () {
        flash("The server could not be reached: nothing was stored.");
        finished();
      });
    });
  }

  function focused() {
    return index >= 0 && cards[index] ? [cards[index]] : [];
  }

  function assignFocused(k) {
    decide(function () {
      var card = cards[index];
      var chip = card ? chipsOf(card)[k] : null;
      return chip ? [card] : [];
    }, { action: "assign", get label() {
      var chip = chipsOf(cards[index])[k];
      return chip ? chip.dataset.tag : null;
    } }, true);
  }

  function assign(list, tag) {
    decide(function () {
      return list;
    }, { action: "assign", label: tag }, list.length === 1);
  }

  function accept(getList, advance) {
    decide(getList, { action: "accept" }, advance);
  }

  function undo() {
    enqueue(function () {
      if (!undoStack.length) return Promise.resolve();
      var id = undoStack.pop();
      var card = document.getElementById("it-" + id);
      return tagsift.call("POST", "/ui/api/items/" + encodeURIComponent(id) + "/undo").then(function (res) {
        if (!res.ok) {
          flash(tagsift.problemText(res));
          finished();
          return;
        }
        if (card) {
          update(card, res.body);
          if (res.body.label_source !== "reviewer") counts(-1);
          setFocus(cards.indexOf(card));
        }
        tagsift.announce("Undone: " + (res.body.label || "no tag"));
        finished();
      });
    });
  }

  function flash(text) {
    var p = document.querySelector(".flash") || document.createElement("p");
    p.className = "flash error";
    p.setAttribute("role", "alert");
    p.textContent = text;
    root.parentNode.insertBefore(p, root);
  }

  // --- selection ---
  function selected() {
    return cards.filter(function (c) {
      return c.getAttribute("aria-selected") === "true";
    });
  }
  function select(card, on) {
    card.setAttribute("aria-selected", on ? "true" : "false");
    card.classList.toggle("selected", on);
  }
  function refreshBulk() {
    var n = selected().length;
    selectedCount.textContent = n + " selected";
    bulkAccept.disabled = bulkAssign.disabled = n === 0;
    selectAll.checked = n > 0 && n === cards.length;
    selectAll.indeterminate = n > 0 && n < cards.length;
  }

  grid.addEventListener("click", function (e) {
    var card = e.target.closest(".card");
    if (!card) return;
    if (e.target.closest("a")) return;
    var i = cards.indexOf(card);
    var chip = e.target.closest(".chip");
    if (e.shiftKey) {
      var from = anchor >= 0 ? anchor : i;
      var lo = Math.min(from, i);
      var hi = Math.max(from, i);
      for (var k = lo; k <= hi; k++) select(cards[k], true);
      refreshBulk();
      setFocus(i, false);
      return;
    }
    if (e.ctrlKey || e.metaKey) {
      select(card, card.getAttribute("aria-selected") !== "true");
      anchor = i;
      refreshBulk();
      setFocus(i, false);
      return;
    }
    anchor = i;
    setFocus(i, false);
    if (chip) assign([card], chip.dataset.tag);
  });

  selectAll.addEventListener("change", function () {
    cards.forEach(function (c) {
      select(c, selectAll.checked);
    });
    refreshBulk();
  });
  bulkAccept.addEventListener("click", function () {
    var list = selected();
    accept(function () {
      return list;
    }, false);
  });
  bulkAssign.addEventListener("click", function () {
    assign(selected(), bulkTag.value);
  });
  focusPanel.querySelector('[data-act="accept"]').addEventListener("click", function () {
    accept(focused, true);
  });
  focusPanel.querySelector('[data-act="skip"]').addEventListener("click", function () {
    setFocus(index + 1);
  });
  focusPanel.querySelector('[data-act="undo"]').addEventListener("click", undo);

  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (!cards.length) return;
    if (t && t.tagName === "BUTTON" && (e.key === " " || e.key === "Enter")) return; // the button's own action
    var card = cards[index];
    if (e.key >= "1" && e.key <= "9") {
      assignFocused(parseInt(e.key, 10) - 1);
    } else if (e.key === "a" || e.key === "A") {
      accept(focused, true);
    } else if (e.key === " ") {
      setFocus(index + 1);
    } else if (e.key === "u" || e.key === "U") {
      undo();
    } else if (e.key === "ArrowRight" || e.key === "ArrowDown" || e.key === "j") {
      setFocus(index + 1);
    } else if (e.key === "ArrowLeft" || e.key === "ArrowUp" || e.key === "k") {
      setFocus(index - 1);
    } else if (e.key === "x") {
      if (card) {
        select(card, card.getAttribute("aria-selected") !== "true");
        refreshBulk();
      }
    } else {
      return;
    }
    e.preventDefault();
  });

  if (cards.length) setFocus(0, false);
  refreshBulk();
  document.body.dataset.reviewReady = "1";
});
