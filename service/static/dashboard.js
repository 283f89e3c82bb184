// Handover support dashboard: a job page follows its timeline live, and its action forms
// post without leaving the page. Without JavaScript every page and form still works.
"use strict";

(() => {
  const live = () => document.getElementById("live");
  if (!live()) return;

  const RECONNECT_MS = 5000;
  let source = null;
  let fetching = false;
  let again = false;

  const parse = (html) => new DOMParser().parseFromString(html, "text/html");

  // Replace each section that changed; one that did not keep what is typed into it.
  function swap(fresh) {
    for (const section of fresh.querySelectorAll("[data-section]")) {
      const current = document.querySelector(`[data-section="${section.dataset.section}"]`);
      if (current && current.innerHTML !== section.innerHTML) current.replaceWith(section);
    }
    const root = fresh.getElementById("live");
    if (root) Object.assign(live().dataset, root.dataset);
  }

  function leftForLogin(response) {
    if (!new URL(response.url).pathname.startsWith("/dashboard/login")) return false;
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
        if (leftForLogin(response) || !response.ok) return;
        swap(parse(await response.text()));
      } while (again);
    } finally {
      fetching = false;
    }
    follow();
  }

  // Listen while the job is live; stop once it has ended.
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

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-action")) return;
    event.preventDefault();
    const button = form.querySelector("button");
    if (button) button.disabled = true;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
      });
      if (leftForLogin(response)) return;
      swap(parse(await response.text()));
      follow();
    } finally {
      if (button) button.disabled = false;
    }
  });

  follow();
})();
