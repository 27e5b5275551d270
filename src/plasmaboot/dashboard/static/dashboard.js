// plasmaboot dashboard: follow the admin event stream and re-render the page's live part.
// The server renders everything; this only asks it again (at most once a second) when an
// event arrives, and swaps #live. The EventSource is authenticated by the session cookie
// and resumes with Last-Event-ID after a disconnect (the server keeps every event).
// An element with data-every="N" (the fleet page's servers, whose heartbeats make no
// event) is also swapped on its own every N seconds; the rest of the page stays put.
"use strict";
(function () {
  const body = document.body;
  const url = body.dataset.stream;
  const status = document.getElementById("stream-status");
  if (!url || !window.EventSource || !document.getElementById("live")) {
    return;
  }
  const MIN_GAP_MS = 1000;
  let scheduled = false;
  let last = 0;

  function refresh(id) {
    last = Date.now();
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.redirected || !response.ok) {
          throw new Error("the page answered " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(id);
        const current = document.getElementById(id);
        if (fresh && current) {
          current.replaceWith(document.importNode(fresh, true));
          if (id === "live") {
            body.dataset.refreshed = String(Number(body.dataset.refreshed || 0) + 1);
          }
        }
      })
      .catch(function (error) {
        if (status) {
          status.textContent = "stale: " + error.message;
          status.className = "stream off";
        }
      });
  }

  function schedule() {
    if (scheduled) {
      return;
    }
    scheduled = true;
    setTimeout(function () {
      scheduled = false;
      refresh("live");
    }, Math.max(0, MIN_GAP_MS - (Date.now() - last)));
  }

  const periodic = document.querySelector("[data-every]");
  if (periodic && periodic.id && Number(periodic.dataset.every) > 0) {
    const id = periodic.id;
    setInterval(function () {
      if (!scheduled) {
        refresh(id); // a scheduled refresh of #live brings it anyway
      }
    }, Number(periodic.dataset.every) * 1000);
  }

  const source = new EventSource(url);
  (body.dataset.kinds || "").split(" ").forEach(function (kind) {
    if (kind) {
      source.addEventListener(kind, schedule);
    }
  });
  source.onopen = function () {
    if (status) {
      status.textContent = "live";
      status.className = "stream on";
    }
  };
  source.onerror = function () {
    if (status) {
      status.textContent = "reconnecting";
      status.className = "stream off";
    }
  };
})();
