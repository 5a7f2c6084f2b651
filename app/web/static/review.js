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
  // One entry per decision (a list of item ids: a bulk action is one entry, undone as a whole), most recent last;
  // kept in this tab's sessionStorage, so U still undoes after a reload.
  var undoKey = "tagsift-undo-" + root.dataset.dataset;
  var undoStack = loadUndo();
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

  function loadUndo() {
    try {
      var v = JSON.parse(window.sessionStorage.getItem(undoKey) || "[]");
      return Array.isArray(v) ? v : [];
    } catch (err) {
      return [];
    }
  }
  function saveUndo() {
    try {
      window.sessionStorage.setItem(undoKey, JSON.stringify(undoStack.slice(-200)));
    } catch (err) {
      /* storage full or disabled: U works until the page is left */
    }
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
    var back = "?back=" + encodeURIComponent(root.dataset.back || "");
    focusPanel.querySelector("[data-focus-history]").href = "/ui/items/" + encodeURIComponent(card.dataset.id) + back;
    var original = focusPanel.querySelector("[data-focus-original]");
    original.href = "/ui/items/" + encodeURIComponent(card.dataset.id) + "/original";
    original.title = file;
    focusPanel.querySelector("[data-focus-similar]").href = "/ui/datasets/" + encodeURIComponent(root.dataset.dataset) +
      "/map?near=" + encodeURIComponent(card.dataset.id);
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

  function decide(getList, body, advance, bulk) {
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
        var byId = {};
        list.forEach(function (c) {
          byId[c.dataset.id] = c;
        });
        var skipped = res.body.skipped || [];
        before = 0;
        res.body.items.forEach(function (state) {
          var card = byId[state.id];
          if (card && card.dataset.source !== "reviewer") before += 1;
          if (card) update(card, state);
        });
        if (res.body.items.length) {
          undoStack.push(res.body.items.map(function (st) { return st.id; }));
          saveUndo();
        }
        counts(before);
        var n = res.body.items.length;
        var text = n === 1 && !skipped.length ? "Tagged " + res.body.items[0].label : "Tagged " + n + " item" + (n === 1 ? "" : "s");
        if (skipped.length) {
          text += "; " + skipped.length + " skipped: their candidates do not hold " + body.label;
          notice(text);
        }
        tagsift.announce(text);
        if (bulk) endBulk();
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

  function assign(list, tag, bulk) {
    decide(function () {
      return list;
    }, { action: "assign", label: tag }, list.length === 1 && !bulk, bulk);
  }

  function accept(getList, advance, bulk) {
    decide(getList, { action: "accept" }, advance, bulk);
  }

  // After a bulk action: the selection is cleared and the keyboard goes back to the grid (so Space skips, it does
  // not press the bulk button again).
  function endBulk() {
    cards.forEach(function (c) {
      select(c, false);
    });
    refreshBulk();
    grid.focus({ preventScroll: true });
  }

  // U: undo the last decision made from this page in this tab (a bulk action as a whole).
  function undo() {
    enqueue(function () {
      if (!undoStack.length) {
        notice("Nothing to undo: U undoes the decisions made on this page in this tab. " +
          "An item's history page (\"history\" on its card) undoes older ones.");
        finished();
        return Promise.resolve();
      }
      var ids = undoStack.pop();
      saveUndo();
      if (!Array.isArray(ids)) ids = [ids];
      var undone = 0;
      var failed = null;
      var last = null;
      var chain = Promise.resolve();
      ids.slice().reverse().forEach(function (id) {
        chain = chain.then(function () {
          return tagsift.call("POST", "/ui/api/items/" + encodeURIComponent(id) + "/undo").then(function (res) {
            if (!res.ok) {
              failed = tagsift.problemText(res);
              return;
            }
            undone += 1;
            last = res.body;
            var card = document.getElementById("it-" + id);
            if (card) {
              update(card, res.body);
              if (res.body.label_source !== "reviewer") counts(-1);
            }
          });
        });
      });
      return chain.then(function () {
        if (failed && !undone) flash(failed);
        var card = ids.length ? document.getElementById("it-" + ids[0]) : null;
        if (card) setFocus(cards.indexOf(card));
        var text = ids.length === 1 && last ? "Undone: " + (last.label || "no tag") : "Undone: " + undone + " items";
        if (failed && undone) text += " (" + (ids.length - undone) + " could not be: " + failed + ")";
        notice(text);
        tagsift.announce(text);
        finished();
      }, function () {
        flash("The server could not be reached: nothing was undone.");
        finished();
      });
    });
  }

  function notice(text) {
    var p = document.querySelector("[data-notice]");
    if (!p) return;
    p.textContent = text;
    p.hidden = false;
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
    }, false, true);
  });
  bulkAssign.addEventListener("click", function () {
    assign(selected(), bulkTag.value, true);
  });
  focusPanel.querySelector('[data-act="accept"]').addEventListener("click", function () {
    accept(focused, true);
  });
  // Skip: recorded in the item's history (never undone by U, it changed nothing), then the next item.
  function skip() {
    var card = cards[index];
    if (card) {
      tagsift.call("POST", "/ui/api/items/" + encodeURIComponent(card.dataset.id) + "/skip").then(function (res) {
        document.body.dataset.skips = String(Number(document.body.dataset.skips || 0) + (res.ok ? 1 : 0));
      }, function () {});
    }
    setFocus(index + 1);
  }
  focusPanel.querySelector('[data-act="skip"]').addEventListener("click", skip);
  focusPanel.querySelector('[data-act="undo"]').addEventListener("click", undo);

  var keysOverlay = document.querySelector("[data-keys-overlay]");
  document.querySelector("[data-keys-open]").addEventListener("click", function () {
    keysOverlay.showModal();
  });
  focusPanel.querySelector("[data-focus-original]").addEventListener("click", function (e) {
    e.preventDefault();
    e.stopPropagation();
    openOriginal();
  });
  function openOriginal() {
    var card = cards[index];
    if (card && window.tagsiftViewer) {
      tagsiftViewer.open("/ui/items/" + encodeURIComponent(card.dataset.id) + "/original", card.querySelector(".file").textContent);
    }
  }

  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (document.querySelector("dialog[open]")) return; // the viewer or the keys overlay has the keyboard
    if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "?") {
      keysOverlay.showModal();
      e.preventDefault();
      return;
    }
    if (!cards.length) return;
    if (t && t.tagName === "BUTTON" && (e.key === " " || e.key === "Enter")) return; // the button's own action
    var card = cards[index];
    if (e.key >= "1" && e.key <= "9") {
      assignFocused(parseInt(e.key, 10) - 1);
    } else if (e.key === "a" || e.key === "A") {
      accept(focused, true);
    } else if (e.key === " ") {
      skip();
    } else if (e.key === "u" || e.key === "U") {
      undo();
    } else if (e.key === "ArrowRight" || e.key === "ArrowDown" || e.key === "j") {
      setFocus(index + 1);
    } else if (e.key === "ArrowLeft" || e.key === "ArrowUp" || e.key === "k") {
      setFocus(index - 1);
    } else if (e.key === "o" || e.key === "O") {
      openOriginal();
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
