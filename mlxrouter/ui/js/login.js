// The login page: the key goes to POST /ui/login, which sets an HttpOnly cookie; the key is
// never kept by the page nor put in a URL.
import { csrfHeaders } from "./http.js";

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");
const button = form.querySelector("button[type=submit]");

function showError(message) {
  error.textContent = message;
  error.hidden = false;
  form.key.select();
}

async function login(event) {
  event.preventDefault();
  error.hidden = true;
  button.disabled = true;
  try {
    const response = await fetch("/ui/login", {
      method: "POST",
      headers: { "content-type": "application/json", ...csrfHeaders() },
      body: JSON.stringify({ key: form.key.value }),
    });
    if (response.ok) {
      form.key.value = "";
      window.location.assign("/ui");
      return;
    }
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message;
    } catch {
      // not the error envelope: keep the status line
    }
    showError(message);
  } catch (failure) {
    showError(`The daemon did not answer (${failure.message}).`);
  } finally {
    button.disabled = false;
  }
}

form.addEventListener("submit", login);

// Already logged in (or no key is set): this page has nothing to ask.
fetch("/ui/session")
  .then((response) => response.json())
  .then((session) => {
    if (session.logged_in) window.location.replace("/ui");
  })
  .catch(() => {}); // the form still works; its own errors are shown
