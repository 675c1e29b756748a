// The login page: the key goes to POST /ui/login, which sets an HttpOnly cookie; the key is
// never kept by the page nor put in a URL.
import { csrfHeaders } from "./http.js";

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  const response = await fetch("/ui/login", {
    method: "POST",
    headers: { "content-type": "application/json", ...csrfHeaders() },
    body: JSON.stringify({ key: form.key.value }),
  });
  if (response.ok) {
    window.location.assign("/ui");
    return;
  }
  let message = `${response.status} ${response.statusText}`;
  try {
    message = (await response.json()).error.message;
  } catch {
    // keep the status line
  }
  error.textContent = message;
  error.hidden = false;
});
