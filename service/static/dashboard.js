// Handover support dashboard: a job page follows its timeline live (live.js), and its
// action forms post without leaving the page. Without JavaScript every page and form still works.
"use strict";

(() => {
  const live = () => document.getElementById("live");
  if (!live()) return;

  // Replace each section that changed; one that did not keep what is typed into it.
  function swap(fresh) {
    for (const section of fresh.querySelectorAll("[data-section]")) {
      const current = document.querySelector(`[data-section="${section.dataset.section}"]`);
      if (current && current.innerHTML !== section.innerHTML) current.replaceWith(section);
    }
    const root = fresh.getElementById("live");
    if (root) Object.assign(live().dataset, root.dataset);
  }

  const { follow, leftForSignIn, parse } = window.handoverLive({
    signIn: "/dashboard/login",
    update: swap,
  });

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
      if (leftForSignIn(response)) return;
      swap(parse(await response.text()));
      follow();
    } finally {
      if (button) button.disabled = false;
    }
  });
})();
