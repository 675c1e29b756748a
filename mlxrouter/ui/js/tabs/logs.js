// The logs tab (to be built): mount(root, ui) fills root; it may return a cleanup function.
export function mount(root, ui) {
  root.append(ui.h("section", { class: "panel" }, ui.h("h2", {}, "Logs"), ui.h("p", { class: "muted" }, "Not built yet.")));
}
