// Audit mode: keys 1-9 answer with the nth tag, U undoes the last answer. The page itself works without script.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  var form = document.querySelector("[data-audit-form]");
  var undo = document.querySelector("[data-audit-undo]");
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (form && e.key >= "1" && e.key <= "9") {
      var button = form.querySelectorAll("button[data-answer]")[parseInt(e.key, 10) - 1];
      if (!button) return;
      e.preventDefault();
      button.click();
    } else if (undo && (e.key === "u" || e.key === "U")) {
      e.preventDefault();
      undo.click();
    }
  });
  document.body.dataset.auditReady = "1";
});
