// Follows a deployment without reloads: a list marked data-progress polls its URL every
// second and shows each step as it happens, with the time it took; when the deployment ends,
// the page is loaded once more so everything on it (states, tables) is final.
(function () {
  "use strict";
  var list = document.querySelector("[data-progress]");
  if (!list || list.getAttribute("data-done") === "true") {
    return;
  }
  var url = list.getAttribute("data-progress");
  var state = document.querySelector("[data-progress-state]");

  function took(ms) {
    if (ms === null || ms === undefined) {
      return "";
    }
    return " (" + (ms < 1000 ? ms + " ms" : (ms / 1000).toFixed(1) + " s") + ")";
  }

  function show(steps) {
    var items = steps.map(function (step) {
      var li = document.createElement("li");
      li.className = step.ok ? "step-ok" : "step-failed";
      li.textContent = step.label + took(step.took_ms);
      return li;
    });
    list.replaceChildren.apply(list, items);
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .then(function (progress) {
        if (!progress) {
          setTimeout(poll, 2000);
          return;
        }
        show(progress.steps);
        if (state) {
          state.textContent = progress.state;
          state.className = "badge badge-" + progress.state;
        }
        if (progress.done) {
          window.location.reload();
        } else {
          setTimeout(poll, 1000);
        }
      })
      .catch(function () {
        setTimeout(poll, 2000);
      });
  }

  setTimeout(poll, 1000);
})();
