// dicomlake gallery: the filter bar, the paged series grid and the list of failed files.
"use strict";

(() => {
  const { el, getJSON, formatBytes } = window.dicomlake;
  const form = document.getElementById("filters");
  const grid = document.getElementById("grid");
  const failures = document.getElementById("failures");
  const failureRows = failures.querySelector("tbody");
  const more = document.getElementById("more");
  const sentinel = document.getElementById("sentinel");
  const message = document.getElementById("message");
  const summary = document.getElementById("summary");
  const counts = document.getElementById("counts");
  const FIELDS = ["status", "modality", "body_part", "date_from", "date_to", "q", "where"];
  const SERIES_ONLY = new Set(["modality", "body_part", "date_from", "date_to"]);
  const state = { next: null, loading: false, generation: 0, shown: 0 };

  const failedMode = () => (form.elements.status.value || "ok") !== "ok";

  function filterParams() {
    const params = new URLSearchParams();
    const failed = failedMode();
    for (const name of FIELDS) {
      const value = (form.elements[name].value || "").trim();
      if (!value || (failed && SERIES_ONLY.has(name))) continue;
      if (name === "status" && value === "ok") continue;
      params.set(name, value);
    }
    return params;
  }

  function ensureOption(select, value) {
    if (!value || [...select.options].some((o) => o.value === value)) return;
    select.append(el("option", { value }, value));
  }

  function readLocation() {
    const params = new URLSearchParams(location.search);
    for (const name of FIELDS) {
      const field = form.elements[name];
      const value = params.get(name) || (name === "status" ? "ok" : "");
      if (field.tagName === "SELECT") ensureOption(field, value);
      field.value = value;
    }
    if (params.get("where")) document.getElementById("advanced").open = true;
    syncDisabled();
  }

  function syncDisabled() {
    const failed = failedMode();
    for (const name of SERIES_ONLY) {
      const field = form.elements[name];
      field.disabled = failed;
      field.closest("label").classList.toggle("disabled", failed);
    }
  }

  function showMessage(text) {
    message.textContent = text;
    message.hidden = !text;
  }

  function seriesCard(item) {
    const title = item.SeriesDescription || (item.SeriesNumber !== null && item.SeriesNumber !== undefined
      ? `Series ${item.SeriesNumber}` : "(no description)");
    const thumb = el("div", { className: "thumb" });
    if (item.thumbnail) {
      const img = el("img", { src: item.thumbnail, alt: title, loading: "lazy", decoding: "async" });
      img.addEventListener("error", () => img.replaceWith(el("div", { className: "placeholder" }, "no image")));
      thumb.append(img);
    } else {
      thumb.append(el("div", { className: "placeholder" }, "no image"));
    }
    if (item.Modality) thumb.append(el("span", { className: "badge" }, item.Modality));
    const sub = [item.BodyPartExamined, item.StudyDescription].filter(Boolean).join(" · ");
    const plural = (n, word) => `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;
    let images = plural(item.n_instances, "instance");
    if (item.n_frames > item.n_instances) {
      images = item.n_instances === 1 ? plural(item.n_frames, "frame")
        : `${item.n_instances.toLocaleString()} inst · ${item.n_frames.toLocaleString()} fr`;
    }
    const card = el(
      "a",
      { className: "card", href: `/series/${encodeURIComponent(item.SeriesInstanceUID)}`,
        title: item.SeriesInstanceUID },
      thumb,
      el("div", { className: "body" },
        el("div", { className: "title" }, title),
        el("div", { className: "sub" }, sub || "\u00a0"),
        el("div", { className: "meta" },
          el("span", {}, item.study_date || "no date"),
          el("span", {}, images))),
    );
    // a link may not sit inside the card's link: the two share a wrapper
    const ohif = item.StudyInstanceUID ? el(
      "a",
      { className: "button ohif", title: "The whole study in the OHIF viewer",
        href: `/ohif/viewer?StudyInstanceUIDs=${encodeURIComponent(item.StudyInstanceUID)}` },
      "Open in OHIF",
    ) : null;
    return el("div", { className: "card-wrap" }, card, ohif);
  }

  function failureRow(item) {
    return el("tr", {},
      el("td", { className: "path", title: item.path }, item.relative_path || item.path),
      el("td", {}, el("span", { className: `status ${item.status}` }, item.status)),
      el("td", { className: "err" }, item.error || ""),
      el("td", { className: "num" }, formatBytes(item.size)));
  }

  async function load(reset) {
    if (!reset && (state.loading || state.next === null)) return;
    const generation = reset ? ++state.generation : state.generation;
    state.loading = true;
    const failed = failedMode();
    const params = filterParams();
    params.set("offset", reset ? 0 : state.next);
    try {
      const data = await getJSON(`${failed ? "/api/errors" : "/api/series"}?${params}`);
      if (generation !== state.generation) return;
      if (reset) {
        grid.replaceChildren();
        failureRows.replaceChildren();
        state.shown = 0;
        showMessage("");
      }
      grid.hidden = failed;
      failures.hidden = !failed;
      for (const item of data.items) {
        if (failed) failureRows.append(failureRow(item));
        else grid.append(seriesCard(item));
      }
      state.shown += data.items.length;
      state.next = data.next_offset;
      const noun = failed ? "failed file" : "series";
      const plural = failed && data.total !== 1 ? "s" : "";
      summary.textContent = data.total
        ? `Showing ${state.shown.toLocaleString()} of ${data.total.toLocaleString()} ${noun}${plural}`
        : `No ${failed ? "failed files" : "series"} match these filters.`;
      more.hidden = state.next === null;
    } catch (error) {
      if (generation !== state.generation) return;
      grid.replaceChildren();
      failureRows.replaceChildren();
      failures.hidden = true;
      state.next = null;
      more.hidden = true;
      summary.textContent = "";
      showMessage(error.message);
    } finally {
      if (generation === state.generation) state.loading = false;
    }
    if (generation === state.generation && state.next !== null && nearBottom()) load(false);
  }

  function nearBottom() {
    return sentinel.getBoundingClientRect().top < window.innerHeight + 600;
  }

  function apply() {
    const params = filterParams();
    const query = params.toString();
    history.replaceState(null, "", query ? `/?${query}` : "/");
    sessionStorage.setItem("dicomlake.gallery", query ? `?${query}` : "");
    load(true);
  }

  async function loadFacets() {
    try {
      const facets = await getJSON("/api/facets");
      for (const [name, values] of [["modality", facets.modality], ["body_part", facets.body_part]]) {
        const select = form.elements[name];
        const current = select.value;
        select.replaceChildren(el("option", { value: "" }, "any"));
        for (const { value, count } of values) {
          select.append(el("option", { value }, `${value} (${count.toLocaleString()})`));
        }
        ensureOption(select, current);
        select.value = current;
      }
      const status = facets.status || {};
      const labels = { ok: "ok", error: "error", not_dicom: "not DICOM" };
      for (const option of form.elements.status.options) {
        const n = option.value === "failed"
          ? (status.error || 0) + (status.not_dicom || 0) : status[option.value] || 0;
        const label = option.value === "failed" ? "error + not DICOM" : labels[option.value];
        option.textContent = `${label} (${n.toLocaleString()})`;
      }
      const total = Object.values(status).reduce((a, b) => a + b, 0);
      counts.textContent = `${total.toLocaleString()} files · ${(status.error || 0).toLocaleString()} errors · ${(status.not_dicom || 0).toLocaleString()} not DICOM`;
    } catch (error) {
      showMessage(error.message);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    apply();
  });
  for (const name of ["status", "modality", "body_part", "date_from", "date_to"]) {
    form.elements[name].addEventListener("change", () => {
      syncDisabled();
      apply();
    });
  }
  form.elements.where.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      apply();
    }
  });
  document.getElementById("clear").addEventListener("click", () => {
    for (const name of FIELDS) form.elements[name].value = name === "status" ? "ok" : "";
    syncDisabled();
    apply();
  });
  more.addEventListener("click", () => load(false));
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) load(false);
  }, { rootMargin: "600px" }).observe(sentinel);

  readLocation();
  sessionStorage.setItem("dicomlake.gallery", location.search);
  loadFacets();
  load(true);
})();
