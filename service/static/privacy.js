// Handover privacy center: a request's page follows its timeline live. Without
// JavaScript every page and form works; a reload shows the same.
"use strict";

(() => {
  const live = () => document.getElementById("live");
  if (!live()) return;

  // The privacy center's stream sends every event unnamed: each one, whatever its type,
  // refreshes the page.
  const RECONNECT_MS = 5000;
  let source = null;
  let fetching = false;
  let again = false;

  async function refresh() {
    if (fetching) {
      again = true;
      return;
    }
    fetching = true;
    try {
      do {
        again = false;
        const response = await fetch(live().dataset.fragment, { cache: "no-store" });
        if (new URL(response.url).pathname.startsWith("/privacy/sign-in")) {
          location.assign(response.url);
          return;
        }
        if (!response.ok) return;
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        const root = fresh.getElementById("live");
        if (root && root.innerHTML !== live().innerHTML) live().replaceWith(root);
      } while (again);
    } finally {
      fetching = false;
    }
    follow();
  }

  // Listen while the request is live; stop once it has ended.
  function follow() {
    if (live().dataset.ended === "true") {
      if (source) source.close();
      source = null;
      return;
    }
    if (source) return;
    source = new EventSource(live().dataset.events);
    source.addEventListener("message", refresh);
    source.addEventListener("error", () => {
      if (source && source.readyState === EventSource.CLOSED) {
        source = null;
        setTimeout(refresh, RECONNECT_MS);
      }
    });
  }

  follow();
})();
