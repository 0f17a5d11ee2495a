// dicomlake series page: frame sliders and tag tables loaded when opened.
"use strict";

(() => {
  const { el, getJSON } = window.dicomlake;

  const back = document.getElementById("back");
  const gallery = sessionStorage.getItem("dicomlake.gallery");
  if (back && gallery) back.href = `/${gallery}`;

  for (const item of document.querySelectorAll(".instance")) {
    const slider = item.querySelector(".frames input");
    const img = item.querySelector("img.frame");
    if (!slider || !img) continue;
    const frames = item.dataset.frames.split(",").map(Number);
    const output = item.querySelector(".frames output");
    const rowId = item.dataset.rowId;
    const token = item.dataset.token;
    slider.addEventListener("input", () => {
      const frame = frames[Number(slider.value)];
      img.src = `/api/thumbnail/${rowId}?frame=${frame}&v=${encodeURIComponent(token)}`;
      output.textContent = `frame ${frame + 1} / ${frames.length}`;
    });
  }

  function valueCell(row) {
    const cell = el("td", { className: row.bytes !== undefined ? "value bulk" : "value" });
    if (!row.items) {
      cell.textContent = row.value;
      return cell;
    }
    const details = el("details", { className: "sequence" }, el("summary", {}, row.value));
    row.items.forEach((item, index) => {
      details.append(el("div", { className: "item" },
        el("div", { className: "item-label" }, `Item ${index + 1}`),
        tagTable(item)));
    });
    cell.append(details);
    return cell;
  }

  function tagTable(rows) {
    const body = el("tbody");
    for (const row of rows) {
      body.append(el("tr", {},
        el("td", { className: "kw" }, row.keyword || (parseInt(row.tag.slice(1, 5), 16) % 2 ? "(private)" : "")),
        el("td", { className: "tag" }, row.tag),
        el("td", { className: "vr" }, row.vr),
        valueCell(row)));
    }
    return el("table", { className: "tags" },
      el("thead", {}, el("tr", {},
        el("th", {}, "Keyword"), el("th", {}, "Tag"), el("th", {}, "VR"), el("th", {}, "Value"))),
      body);
  }

  for (const details of document.querySelectorAll("details.tags")) {
    details.addEventListener("toggle", async () => {
      if (!details.open || details.dataset.loaded) return;
      details.dataset.loaded = "1";
      const target = details.querySelector(".tag-table");
      try {
        const instance = await getJSON(`/api/instances/${details.dataset.rowId}`);
        target.replaceChildren(tagTable(instance.tags));
      } catch (error) {
        delete details.dataset.loaded;
        target.replaceChildren(el("p", { className: "message" }, error.message));
      }
    });
  }
})();
