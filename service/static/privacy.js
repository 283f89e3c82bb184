// Handover privacy center: a request's page follows its timeline live (live.js). Without
// JavaScript every page and form works; a reload shows the same.
"use strict";

(() => {
  const live = () => document.getElementById("live");
  if (!live()) return;

  window.handoverLive({
    signIn: "/privacy/sign-in",
    update(fresh) {
      const root = fresh.getElementById("live");
      if (root && root.innerHTML !== live().innerHTML) live().replaceWith(root);
    },
  });
})();
