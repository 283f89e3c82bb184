// Handover's live pages (a job on the support dashboard, a request in the privacy center):
// the part of the page with id="live" follows its timeline's event stream and is fetched
// again on each event. Without JavaScript every page works; a reload shows the same.
"use strict";

// Follow the page's live part. `update(fresh)` puts a fetched fragment (a parsed
// document) in place; `signIn` is the path a fetch lands on once the session has ended.
// Returns what a page's own script needs to change the page another way (a posted form).
window.handoverLive = ({ signIn, update }) => {
  const live = () => document.getElementById("live");
  const RECONNECT_MS = 5000;
  let source = null;
  let fetching = false;
  let again = false;

  const parse = (html) => new DOMParser().parseFromString(html, "text/html");

  function leftForSignIn(response) {
    if (!new URL(response.url).pathname.startsWith(signIn)) return false;
    location.assign(response.url);
    return true;
  }

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
        if (leftForSignIn(response) || !response.ok) return;
        update(parse(await response.text()));
      } while (again);
    } finally {
      fetching = false;
    }
    follow();
  }

  // Listen while the page's subject is live; stop once it has ended.
  function follow() {
    if (live().dataset.ended === "true") {
      if (source) source.close();
      source = null;
      return;
    }
    if (source) return;
    // The stream sends every event as a plain message (its type in its data), so this one
    // listener refreshes on each, whatever its type, those added later included.
    source = new EventSource(live().dataset.events);
    source.addEventListener("message", refresh);
    source.addEventListener("error", () => {
      // CLOSED: the browser gave up (signed out, server gone); look again in a while.
      if (source && source.readyState === EventSource.CLOSED) {
        source = null;
        setTimeout(refresh, RECONNECT_MS);
      }
    });
  }

  follow();
  return { follow, leftForSignIn, parse };
};
