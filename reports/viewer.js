// The image viewer of report.html (inlined by pid_bench/report.py; no network, no libraries).
// Reads the JSON block #viewer-data written by pid_bench/viewer.py and renders one page of
// settings at a time: filters (backbone, noise, size, image), pagination, a before/after
// slider per setting and a zoom that moves together on every image of the setting.
// The DOM is built with createElement / textContent / setAttribute only: no string from a run
// is ever parsed as HTML. When it has initialised it sets data-viewer="ready" on <html>; the
// error counter data-js-errors is kept by the handler in the page's <head>.
(function () {
  "use strict";

  const root = document.documentElement;
  const FILTERS = [
    ["backbone", "backbone"],
    ["noise", "σ / x_t"],
    ["size", "size"],
    ["image", "image"],
  ];
  const PER_PAGE = [1, 2, 4, 8, 16];
  const ZOOMS = [1, 2, 4, 8];

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Paths come from pid_bench/viewer.py, URL-quoted and relative to the run directory; a
  // scheme (javascript:, http:) or an absolute path is refused all the same.
  function safeHref(href) {
    if (typeof href !== "string" || /^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(href) || href.startsWith("/")) {
      return null;
    }
    return href;
  }

  function select(label, options, chosen, onChange) {
    const wrap = el("label", { class: "control" }, label + " ");
    const box = el("select");
    for (const [value, text] of options) {
      const option = el("option", { value: String(value) }, text);
      if (String(value) === String(chosen)) option.selected = true;
      box.append(option);
    }
    box.addEventListener("change", () => onChange(box.value));
    wrap.append(box);
    return wrap;
  }

  function pngLinks(images) {
    const list = el("ul", { class: "links" });
    for (const image of images) {
      const item = el("li", {}, image.name + ": ");
      const href = safeHref(image.href);
      if (href) item.append(el("a", { href: href }, href));
      else item.append(el("span", { class: "missing" }, "no image saved"));
      list.append(item);
    }
    return list;
  }

  // One zoom per setting: every image of the setting (tiles and both slider layers) scales by
  // the same factor about the same point, so the crops always show the same pixels.
  function makeZoom(status) {
    const state = { factor: 4, x: 0.5, y: 0.5, active: false, locked: false, images: [] };
    state.apply = function () {
      for (const img of state.images) {
        if (state.active && state.factor > 1) {
          img.style.transformOrigin = `${100 * state.x}% ${100 * state.y}%`;
          img.style.transform = `scale(${state.factor})`;
        } else {
          img.style.transform = "";
        }
      }
      const where = `${Math.round(100 * state.x)} %, ${Math.round(100 * state.y)} %`;
      status.textContent = state.active
        ? `zoom ${state.factor}× at ${where}${state.locked ? " (locked: click to release)" : ""}`
        : "hover over an image to zoom all of them; click to lock";
    };
    state.track = function (lens) {
      const at = (event) => {
        const box = lens.getBoundingClientRect();
        state.x = Math.min(1, Math.max(0, (event.clientX - box.left) / box.width));
        state.y = Math.min(1, Math.max(0, (event.clientY - box.top) / box.height));
      };
      lens.addEventListener("pointermove", (event) => {
        if (state.locked) return;
        at(event);
        state.active = true;
        state.apply();
      });
      lens.addEventListener("pointerleave", () => {
        if (state.locked) return;
        state.active = false;
        state.apply();
      });
      lens.addEventListener("click", (event) => {
        state.locked = !state.locked;
        at(event);
        state.active = true;
        state.apply();
      });
    };
    return state;
  }

  function makeSlider(setting, zoom) {
    const box = el("div", {
      class: "slider", tabindex: "0", role: "slider", "aria-label": "before/after divider",
      "aria-valuemin": "0", "aria-valuemax": "100",
    });
    box.style.aspectRatio = `${setting.aspect[0]} / ${setting.aspect[1]}`;
    const under = el("img", { class: "layer", alt: "" });
    // The clip sits on a wrapper, not on the image: the image's zoom transform must not move
    // the divider.
    const clip = el("div", { class: "clip" });
    const over = el("img", { class: "layer", alt: "" });
    clip.append(over);
    const handle = el("div", { class: "handle" });
    const tagLeft = el("span", { class: "tag tag-left" });
    const tagRight = el("span", { class: "tag tag-right" });
    box.append(under, clip, handle, tagLeft, tagRight);
    zoom.images.push(under, over);

    let dragging = false;
    const place = (percent) => {
      const p = Math.min(100, Math.max(0, percent));
      clip.style.clipPath = `inset(0 ${100 - p}% 0 0)`;
      handle.style.left = `${p}%`;
      box.setAttribute("aria-valuenow", String(Math.round(p)));
    };
    const fromEvent = (event) => {
      const rect = box.getBoundingClientRect();
      place((100 * (event.clientX - rect.left)) / rect.width);
    };
    box.addEventListener("pointerdown", (event) => {
      dragging = true;
      try {
        box.setPointerCapture(event.pointerId); // keeps the drag when the pointer leaves the box
      } catch (error) {
        // a synthetic event (the browser test's) has no active pointer to capture
      }
      fromEvent(event);
    });
    box.addEventListener("pointermove", (event) => { if (dragging) fromEvent(event); });
    box.addEventListener("pointerup", () => { dragging = false; });
    box.addEventListener("pointercancel", () => { dragging = false; });
    box.addEventListener("keydown", (event) => {
      const now = Number(box.getAttribute("aria-valuenow"));
      if (event.key === "ArrowLeft") place(now - 5);
      else if (event.key === "ArrowRight") place(now + 5);
    });
    place(50);

    const byName = new Map(setting.images.map((image) => [image.name, image]));
    return {
      box: box,
      show: function (left, right) {
        over.src = byName.get(left).preview;
        under.src = byName.get(right).preview;
        over.alt = left;
        under.alt = right;
        tagLeft.textContent = `◀ ${left}`;
        tagRight.textContent = `${right} ▶`;
      },
    };
  }

  function tile(image, zoom, aspect) {
    const figure = el("figure", { class: "tile" });
    const lens = el("div", { class: "lens" });
    lens.style.aspectRatio = `${aspect[0]} / ${aspect[1]}`;
    if (image.preview) {
      const img = el("img", { alt: image.name });
      img.src = image.preview;
      lens.append(img);
      zoom.images.push(img);
      zoom.track(lens);
    } else {
      lens.append(el("div", { class: "missing" }, "no image"));
    }
    const caption = el("figcaption");
    caption.append(el("b", {}, image.name));
    if (image.size) caption.append(document.createTextNode(` · ${image.size} · `));
    const href = safeHref(image.href);
    if (href) caption.append(el("a", { href: href, title: href }, "full-size PNG"));
    figure.append(lens, caption);
    return figure;
  }

  function card(setting, maxEmbedded) {
    const section = el("section", { class: "setting" });
    section.append(el("h3", {}, setting.label));
    if (setting.caption) section.append(el("p", { class: "caption" }, setting.caption));
    const previews = setting.images.filter((image) => image.preview);
    if (!setting.embedded || previews.length === 0) {
      const why = setting.embedded
        ? "No image of this setting could be read."
        : `Preview not embedded: this page embeds ${maxEmbedded} settings. Full-size PNGs:`;
      section.append(el("p", { class: "meta" }, why), pngLinks(setting.images));
      return section;
    }
    const status = el("span", { class: "meta zoom-status" });
    const zoom = makeZoom(status);
    const slider = makeSlider(setting, zoom);
    const names = previews.map((image) => [image.name, image.name]);
    let left = setting.left || previews[0].name;
    let right = setting.right || previews[previews.length - 1].name;
    const controls = el("div", { class: "controls" });
    controls.append(
      select("left", names, left, (value) => { left = value; slider.show(left, right); }),
      select("right", names, right, (value) => { right = value; slider.show(left, right); }),
      select("zoom", ZOOMS.map((z) => [z, `${z}×`]), zoom.factor, (value) => {
        zoom.factor = Number(value);
        zoom.apply();
      }),
      status,
    );
    slider.show(left, right);
    const tiles = el("div", { class: "tiles" });
    for (const image of setting.images) tiles.append(tile(image, zoom, setting.aspect));
    const body = el("div", { class: "setting-body" });
    body.append(slider.box, tiles);
    section.append(controls, body);
    zoom.apply();
    return section;
  }

  function distinct(settings, key) {
    const seen = new Map();
    for (const setting of settings) seen.set(setting[key], (seen.get(setting[key]) || 0) + 1);
    return [...seen.entries()];
  }

  // "#viewer?backbone=...&noise=...&size=...": the settings a recommendation rests on.
  function hashFilters() {
    const hash = window.location.hash;
    if (!hash.startsWith("#viewer?")) return null;
    const params = new URLSearchParams(hash.slice("#viewer?".length));
    const filters = {};
    for (const [key] of FILTERS) if (params.get(key)) filters[key] = params.get(key);
    return filters;
  }

  function viewer(data, mount) {
    const state = { page: 0, perPage: 4, filters: hashFilters() || {} };
    const bar = el("div", { class: "controls viewer-filters" });
    const pager = el("div", { class: "controls pager" });
    const info = el("p", { class: "meta", id: "viewer-showing" });
    const pages = el("div", { id: "viewer-pages" });
    const prev = el("button", { type: "button" }, "◀ previous");
    const next = el("button", { type: "button" }, "next ▶");
    const render = () => {
      const chosen = data.settings.filter((s) =>
        FILTERS.every(([key]) => !state.filters[key] || s[key] === state.filters[key]));
      const count = Math.max(1, Math.ceil(chosen.length / state.perPage));
      state.page = Math.min(state.page, count - 1);
      const first = state.page * state.perPage;
      const shown = chosen.slice(first, first + state.perPage);
      pages.replaceChildren(...shown.map((s) => card(s, data.max_embedded)));
      info.textContent = chosen.length
        ? `Settings ${first + 1}–${first + shown.length} of ${chosen.length} matching the ` +
          `filters (${data.listed} listed); page ${state.page + 1} of ${count}.`
        : "No setting matches the filters.";
      prev.disabled = state.page === 0;
      next.disabled = state.page >= count - 1;
    };
    for (const [key, label] of FILTERS) {
      const options = [["", `all (${data.settings.length})`]];
      for (const [value, n] of distinct(data.settings, key)) options.push([value, `${value} (${n})`]);
      bar.append(select(label, options, state.filters[key] || "", (value) => {
        state.filters[key] = value;
        state.page = 0;
        render();
      }));
    }
    bar.append(select("per page", PER_PAGE.map((n) => [n, String(n)]), state.perPage, (value) => {
      state.perPage = Number(value);
      state.page = 0;
      render();
    }));
    prev.addEventListener("click", () => { state.page -= 1; render(); });
    next.addEventListener("click", () => { state.page += 1; render(); });
    pager.append(prev, next, info);
    mount.replaceChildren(bar, pager, pages);
    render();
  }

  function init() {
    const block = document.getElementById("viewer-data");
    const mount = document.getElementById("viewer-app");
    if (!block || !mount) {
      root.setAttribute("data-viewer", "none");
      return;
    }
    const data = JSON.parse(block.textContent);
    viewer(data, mount);
    const follow = () => {
      if (hashFilters() === null) return;
      viewer(data, mount);
      const heading = document.getElementById("viewer");
      if (heading && heading.scrollIntoView) heading.scrollIntoView();
    };
    window.addEventListener("hashchange", follow);
    follow();
    root.setAttribute("data-viewer-settings", String(data.settings.length));
    root.setAttribute("data-viewer", "ready");
  }

  init();
})();
